//! Pod statistics: the pod's cpu, memory and process count (its infra process plus every
//! running container, each sampled from its cgroup through the pod's shim), the network
//! counters of the pod's namespace, and each container's own stats.

use k8s_cri::v1::{
    ContainerStats, LinuxPodSandboxStats, NetworkInterfaceUsage, NetworkUsage,
    PodSandboxAttributes, PodSandboxStats, ProcessUsage, UInt64Value,
};

use crate::error::Result;
use crate::shim_client::Sample;

use super::Pods;
use crate::records::{PodRecord, PodState, Records};

/// One interface's counters from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Parses `/proc/net/dev` text, leaving out the loopback interface.
pub fn parse_net_dev(text: &str) -> Vec<IfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            (f.len() >= 16 && name.trim() != "lo").then(|| IfaceCounters {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                rx_packets: f[1],
                rx_errors: f[2],
                rx_dropped: f[3],
                tx_bytes: f[8],
                tx_packets: f[9],
                tx_errors: f[10],
                tx_dropped: f[11],
            })
        })
        .collect()
}

/// The pod's interfaces. The infra process lives in the pod's network namespace: its
/// view of net/dev is the pod's. Host-network and stopped pods report none (a
/// host-network pod's traffic is the node's).
pub fn pod_ifaces(rec: &PodRecord) -> Vec<IfaceCounters> {
    if rec.host_network() || rec.state != PodState::Ready || rec.pid == 0 {
        return Vec::new();
    }
    std::fs::read_to_string(format!("/proc/{}/net/dev", rec.pid))
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

/// The pod's sample, its network counters and each container's stats.
pub struct PodSample {
    pub total: Option<Sample>,
    pub ifaces: Vec<IfaceCounters>,
    pub containers: Vec<(ContainerStats, Option<Sample>)>,
}

impl Pods {
    pub async fn sample(&self, rec: &PodRecord) -> Result<PodSample> {
        let mut containers = Vec::new();
        for c in self.store.containers_of(&rec.id)? {
            containers.push(self.containers.stats_sampled(&c).await?);
        }
        if rec.state != PodState::Ready || rec.pid == 0 {
            return Ok(PodSample {
                total: None,
                ifaces: Vec::new(),
                containers,
            });
        }
        let mut total = self.shim_of(rec).await?.stats(&rec.id).await?;
        for s in containers.iter().filter_map(|(_, s)| s.as_ref()) {
            total.add(s);
        }
        let ifaces = pod_ifaces(rec);
        Ok(PodSample {
            total: Some(total),
            ifaces,
            containers,
        })
    }

    pub async fn stats(&self, rec: &PodRecord) -> Result<PodSandboxStats> {
        let now = crate::util::now_ns();
        let s = self.sample(rec).await?;
        let v = |value| Some(UInt64Value { value });
        let usage = |i: &IfaceCounters| NetworkInterfaceUsage {
            name: i.name.clone(),
            rx_bytes: v(i.rx_bytes),
            rx_errors: v(i.rx_errors),
            tx_bytes: v(i.tx_bytes),
            tx_errors: v(i.tx_errors),
        };
        let network = (!s.ifaces.is_empty()).then(|| NetworkUsage {
            timestamp: now,
            default_interface: s
                .ifaces
                .iter()
                .find(|i| i.name == "eth0")
                .or(s.ifaces.first())
                .map(usage),
            interfaces: s.ifaces.iter().map(usage).collect(),
        });
        Ok(PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu: s.total.map(|t| t.cpu(now)),
                memory: s.total.map(|t| t.memory(now)),
                network,
                process: s.total.map(|t| ProcessUsage {
                    timestamp: now,
                    process_count: v(t.pids),
                }),
                containers: s.containers.into_iter().map(|(c, _)| c).collect(),
            }),
            windows: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_counters_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    4242      17    3    0    0     0          0         0     2121      12    5    0    0     0       0          0\n";
        let got = parse_net_dev(text);
        assert_eq!(
            got,
            [IfaceCounters {
                name: "eth0".into(),
                rx_bytes: 4242,
                rx_packets: 17,
                rx_errors: 3,
                tx_bytes: 2121,
                tx_packets: 12,
                tx_errors: 5,
                ..Default::default()
            }]
        );
    }
}
