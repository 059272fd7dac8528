//! Pod statistics: the pod's cpu, memory and process count (its infra process, if any, plus every
//! running container, each sampled from its cgroup through the pod's shim), the network
//! counters of the pod's namespace, and each container's own stats.

use crate::error::Result;
use crate::shim_client::{Detail, Sample};

use super::Pods;
use crate::container::ContainerUsage;
use crate::records::{ContainerRecord, PodRecord, PodState, Records};

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

/// The pod's interfaces: net/dev as the infra process sees it, or read from inside the
/// pinned network namespace of a pod without one. Host-network and stopped pods report
/// none (a host-network pod's traffic is the node's).
pub async fn pod_ifaces(rec: &PodRecord) -> Vec<IfaceCounters> {
    if rec.host_network() || rec.state != PodState::Ready {
        return Vec::new();
    }
    let (pid, netns) = (rec.pid, rec.netns.clone());
    let read = move || match (pid, netns) {
        (0, Some(ns)) => super::pins::read_net_dev(&ns).ok(),
        (0, None) => None,
        (pid, _) => std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok(),
    };
    // File reads (and a thread for setns): off the async workers.
    tokio::task::spawn_blocking(read)
        .await
        .ok()
        .flatten()
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

/// The pod's sample, its network counters and each container's usage.
pub struct PodSample {
    /// When it was taken (ns since the epoch).
    pub at: i64,
    pub total: Option<Sample>,
    pub ifaces: Vec<IfaceCounters>,
    pub containers: Vec<(ContainerRecord, ContainerUsage)>,
}

impl Pods {
    pub async fn sample(&self, rec: &PodRecord) -> Result<PodSample> {
        let at = crate::util::now_ns();
        let mut containers = Vec::new();
        for c in self.store.containers_of(&rec.id)? {
            let usage = self.containers.usage(&c).await?;
            containers.push((c, usage));
        }
        if rec.state != PodState::Ready || (rec.pid == 0 && !rec.infra_less()) {
            return Ok(PodSample {
                at,
                total: None,
                ifaces: Vec::new(),
                containers,
            });
        }
        // A pod without an infra process is the sum of its containers.
        let mut total = if rec.infra_less() {
            Default::default()
        } else {
            self.shim_of(rec)
                .await?
                .stats(&rec.id, Detail::Full)
                .await?
        };
        for s in containers.iter().filter_map(|(_, u)| u.sample.as_ref()) {
            total.add(s);
        }
        let ifaces = pod_ifaces(rec).await;
        Ok(PodSample {
            at,
            total: Some(total),
            ifaces,
            containers,
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
