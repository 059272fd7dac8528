//! Container and pod usage → CRI ContainerStats / PodSandboxStats, and the List calls
//! that gather them (one container or pod that cannot be sampled is left out and logged,
//! never failing the whole list).

use berth_cri::v1::{
    ContainerAttributes, ContainerStats, CpuUsage, FilesystemIdentifier, FilesystemUsage,
    LinuxPodSandboxStats, MemoryUsage, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes,
    PodSandboxStats, ProcessUsage, UInt64Value,
};

use futures_util::{stream, StreamExt};

use super::convert::{container_metadata, pod_metadata};
use crate::container::ContainerUsage;
use crate::core::Core;
use crate::error::Result;
use crate::pod::stats::{IfaceCounters, PodSample};
use crate::records::{ContainerRecord, PodRecord};
use crate::shim_client::Sample;

fn v(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

fn cpu(s: &Sample, now: i64) -> CpuUsage {
    CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: v(s.cpu_ns),
        usage_nano_cores: None,
        psi: None,
    }
}

fn memory(s: &Sample, now: i64) -> MemoryUsage {
    MemoryUsage {
        timestamp: now,
        working_set_bytes: v(s.working_set),
        usage_bytes: v(s.memory_usage),
        rss_bytes: v(s.rss),
        page_faults: v(s.page_faults),
        major_page_faults: v(s.major_page_faults),
        available_bytes: None,
        psi: None,
    }
}

pub fn container_stats(rec: &ContainerRecord, u: &ContainerUsage) -> ContainerStats {
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: rec.id.clone(),
            metadata: Some(container_metadata(&rec.config)),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
        }),
        cpu: u.sample.as_ref().map(|s| cpu(s, u.at)),
        memory: u.sample.as_ref().map(|s| memory(s, u.at)),
        writable_layer: Some(FilesystemUsage {
            timestamp: u.at,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: u.writable_layer.display().to_string(),
            }),
            used_bytes: v(u.writable_bytes),
            inodes_used: v(u.writable_inodes),
        }),
        ..Default::default()
    }
}

pub fn pod_stats(rec: &PodRecord, s: &PodSample) -> PodSandboxStats {
    let now = s.at;
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
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: rec.id.clone(),
            metadata: Some(pod_metadata(&rec.config)),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: s.total.as_ref().map(|t| cpu(t, now)),
            memory: s.total.as_ref().map(|t| memory(t, now)),
            network,
            io: None,
            process: s.total.as_ref().map(|t| ProcessUsage {
                timestamp: now,
                process_count: v(t.pids),
            }),
            containers: s
                .containers
                .iter()
                .map(|(c, u)| container_stats(c, u))
                .collect(),
        }),
        windows: None,
    }
}

/// How many pods are sampled at once by ListPodSandboxStats: each sample is a round
/// trip to a shim plus walks of writable layers, mostly waiting (in sequence, 200 took
/// 80 ms); a bound keeps a node of many pods from asking every shim at once.
const SAMPLED_AT_ONCE: usize = 32;

/// ListContainerStats: the containers `keep` selects. A container whose shim does not
/// answer (dead, or gone between the listing and its sampling) is left out and logged.
pub async fn list_container_stats(
    core: &Core,
    keep: impl Fn(&ContainerRecord) -> bool,
) -> Result<Vec<ContainerStats>> {
    let picked: Vec<_> = core
        .containers
        .list()?
        .into_iter()
        .filter(|c| keep(c))
        .collect();
    let usages = core
        .containers
        .usages(&picked, crate::shim_client::Detail::Cri)
        .await?;
    Ok(picked
        .iter()
        .zip(usages)
        .filter_map(|(c, u)| match u {
            Ok(u) => Some(container_stats(c, &u)),
            Err(e) => {
                tracing::warn!(container_id = %c.id, error = %e, "no stats: left out of the list");
                None
            }
        })
        .collect())
}

/// ListPodSandboxStats: the pods `keep` selects; a pod that cannot be sampled is left
/// out and logged.
pub async fn list_pod_stats(
    core: &Core,
    keep: impl Fn(&PodRecord) -> bool,
) -> Result<Vec<PodSandboxStats>> {
    let picked = core.pods.list()?.into_iter().filter(|p| keep(p));
    Ok(stream::iter(picked)
        .map(|p| async move {
            match core.pods.sample(&p).await {
                Ok(s) => Some(pod_stats(&p, &s)),
                Err(e) => {
                    tracing::warn!(pod_id = %p.id, error = %e, "no stats: left out of the list");
                    None
                }
            }
        })
        .buffered(SAMPLED_AT_ONCE)
        .filter_map(std::future::ready)
        .collect()
        .await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::CtrState;
    use crate::testkit::kit;

    #[tokio::test]
    async fn a_container_whose_shim_fails_is_left_out_of_the_list() {
        let k = kit();
        let (_, good) = k.ready_pod("p1");
        let (_, bad) = k.ready_pod("p2");
        k.container("c1", "p1", CtrState::Running);
        k.container("c2", "p2", CtrState::Running);
        good.set_state("c1", crate::shim_client::TaskStatus::Running, 0, 0);
        bad.set_state("c2", crate::shim_client::TaskStatus::Running, 0, 0);
        bad.fail("stats");
        let all = list_container_stats(&k.core, |_| true).await.unwrap();
        let ids: Vec<_> = all
            .iter()
            .map(|s| s.attributes.as_ref().unwrap().id.as_str())
            .collect();
        assert_eq!(ids, ["c1"]);
        assert!(all[0].cpu.is_some(), "the answering one is sampled");
        let pods = list_pod_stats(&k.core, |_| true).await.unwrap();
        let ids: Vec<_> = pods
            .iter()
            .map(|s| s.attributes.as_ref().unwrap().id.as_str())
            .collect();
        assert_eq!(ids, ["p1"]);
    }
}
