//! Reading a CNI result (0.3.0 and later): the pod's interfaces and IPs, primary first.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// An interface a plugin reported; `sandbox` is the netns path, empty on the host side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Interface {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub sandbox: String,
}

/// The outcome of a CNI ADD.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetwork {
    /// The pod's IPs: those on its own interface (IPv4 first), the primary one first.
    /// Empty when the chain assigned none.
    pub ips: Vec<IpAddr>,
    pub interfaces: Vec<Interface>,
    /// The final result as the last plugin returned it; keep it with the pod and pass it to
    /// `Cni::del` (it is the prevResult of DEL since CNI 0.4.0).
    pub result_json: Value,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<RawIp>,
}

#[derive(Deserialize)]
struct RawIp {
    address: String,
    interface: Option<usize>,
}

impl PodNetwork {
    /// Picks the IPs of the sandbox interface named `ifname` (all IPs when none is tagged
    /// with it), IPv4 before IPv6, each family in the plugin's order.
    pub(super) fn from_result(result: Value, ifname: &str) -> Result<PodNetwork> {
        let raw = RawResult::deserialize(&result)
            .map_err(|e| Error::Network(format!("unreadable CNI result: {e}")))?;
        let mut tagged = Vec::new();
        let mut all = Vec::new();
        for ip in &raw.ips {
            // "10.1.2.3/24": the address is what comes before the prefix length.
            let addr = ip.address.split('/').next().unwrap_or("");
            let addr: IpAddr = addr.parse().map_err(|_| {
                Error::Network(format!("CNI result has a bad address {:?}", ip.address))
            })?;
            let ours = ip
                .interface
                .and_then(|i| raw.interfaces.get(i))
                .is_some_and(|i| i.name == ifname && !i.sandbox.is_empty());
            if ours {
                tagged.push(addr);
            }
            all.push(addr);
        }
        let mut ips = if tagged.is_empty() { all } else { tagged };
        // Stable: keeps the plugin's order within each family.
        ips.sort_by_key(|ip| ip.is_ipv6());
        Ok(PodNetwork {
            ips,
            interfaces: raw.interfaces,
            result_json: result,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sandbox_interface_ips_ipv4_first() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "10.0.0.1/24", "interface": 0},
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 2}
            ]
        });
        let n = PodNetwork::from_result(r.clone(), "eth0").unwrap();
        let want: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(n.ips, want);
        assert_eq!(n.interfaces.len(), 3);
        assert_eq!(n.interfaces[2].sandbox, "/run/netns/x");
        assert_eq!(n.result_json, r);
    }

    #[test]
    fn untagged_ips_are_all_taken() {
        let r = json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.0.9/16"}]});
        let n = PodNetwork::from_result(r, "eth0").unwrap();
        assert_eq!(n.ips, vec!["10.1.0.9".parse::<IpAddr>().unwrap()]);
        let n = PodNetwork::from_result(json!({"cniVersion": "1.0.0"}), "eth0").unwrap();
        assert!(n.ips.is_empty());
    }

    #[test]
    fn bad_results_are_errors() {
        for r in [
            json!({"ips": [{"address": "nope/24"}]}),
            json!({"ips": "x"}),
            json!([1]),
        ] {
            assert!(matches!(
                PodNetwork::from_result(r, "eth0"),
                Err(Error::Network(_))
            ));
        }
    }
}
