//! Container statistics: one cgroup sample from the pod's shim (cgroup v1 or v2 metrics),
//! the writable layer's usage, and the CRI ContainerStats built from them.

use berth_proto::protobuf::Message;
use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, CpuUsage, FilesystemIdentifier, FilesystemUsage,
    MemoryUsage, UInt64Value,
};

use crate::error::{Error, Result};
use crate::runtime::Runtime;

use super::{ContainerRecord, CtrState};

/// What one cgroup reported, in cgroup-version-neutral units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub cpu_ns: u64,
    pub memory_usage: u64,
    /// usage minus inactive file pages (what the kubelet evicts on).
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub pids: u64,
}

impl Sample {
    /// Decodes the `Any` a shim's Stats call returns.
    pub fn decode(type_url: &str, bytes: &[u8]) -> Result<Sample> {
        let bad = |e: berth_proto::protobuf::Error| Error::Internal(format!("decode metrics: {e}"));
        if type_url.ends_with("io.containerd.cgroups.v1.Metrics") {
            let m = berth_proto::cgroups::metrics::Metrics::parse_from_bytes(bytes).map_err(bad)?;
            let mut s = Sample::default();
            if let Some(cpu) = m.cpu.as_ref() {
                s.cpu_ns = cpu.usage.total;
            }
            if let Some(mem) = m.memory.as_ref() {
                s.memory_usage = mem.usage.usage;
                s.working_set = mem.usage.usage.saturating_sub(mem.total_inactive_file);
                s.rss = mem.total_rss;
                s.page_faults = mem.total_pg_fault;
                s.major_page_faults = mem.total_pg_maj_fault;
            }
            s.pids = m.pids.as_ref().map(|p| p.current).unwrap_or(0);
            Ok(s)
        } else if type_url.ends_with("io.containerd.cgroups.v2.Metrics") {
            let m =
                berth_proto::cgroups_v2::metrics::Metrics::parse_from_bytes(bytes).map_err(bad)?;
            let mut s = Sample::default();
            if let Some(cpu) = m.cpu.as_ref() {
                s.cpu_ns = cpu.usage_usec * 1000;
            }
            if let Some(mem) = m.memory.as_ref() {
                s.memory_usage = mem.usage;
                s.working_set = mem.usage.saturating_sub(mem.inactive_file);
                s.rss = mem.anon;
                s.page_faults = mem.pgfault;
                s.major_page_faults = mem.pgmajfault;
            }
            s.pids = m.pids.as_ref().map(|p| p.current).unwrap_or(0);
            Ok(s)
        } else {
            Err(Error::Internal(format!("unknown metrics type {type_url}")))
        }
    }

    pub fn add(&mut self, o: &Sample) {
        self.cpu_ns += o.cpu_ns;
        self.memory_usage += o.memory_usage;
        self.working_set += o.working_set;
        self.rss += o.rss;
        self.page_faults += o.page_faults;
        self.major_page_faults += o.major_page_faults;
        self.pids += o.pids;
    }

    pub fn cpu(&self, now: i64) -> CpuUsage {
        CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: Some(UInt64Value { value: self.cpu_ns }),
            usage_nano_cores: None,
        }
    }

    pub fn memory(&self, now: i64) -> MemoryUsage {
        let v = |value| Some(UInt64Value { value });
        MemoryUsage {
            timestamp: now,
            working_set_bytes: v(self.working_set),
            usage_bytes: v(self.memory_usage),
            rss_bytes: v(self.rss),
            page_faults: v(self.page_faults),
            major_page_faults: v(self.major_page_faults),
            available_bytes: None,
        }
    }
}

/// Bytes and inodes under `dir` (the writable layer's upper dir).
pub fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            inodes += 1;
            if let Ok(m) = e.path().symlink_metadata() {
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    bytes += m.len();
                }
            }
        }
    }
    (bytes, inodes)
}

impl Runtime {
    /// The cgroup sample of a task in a pod's shim (a container, or the pod's infra).
    pub async fn sample(&self, pod_id: &str, task_id: &str) -> Result<Sample> {
        let pod = self.pod(pod_id)?;
        let any = self.shim_of(&pod).await?.stats(task_id).await?;
        Sample::decode(&any.type_url, &any.value)
    }

    pub async fn container_stats(&self, rec: &ContainerRecord) -> Result<ContainerStats> {
        Ok(self.container_stats_sampled(rec).await?.0)
    }

    /// The CRI stats and the sample they came from (None when not running).
    pub async fn container_stats_sampled(
        &self,
        rec: &ContainerRecord,
    ) -> Result<(ContainerStats, Option<Sample>)> {
        let now = crate::pod::now_ns();
        let (used, inodes) = dir_usage(&rec.dir.join("upper"));
        let mut stats = ContainerStats {
            attributes: Some(ContainerAttributes {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
            }),
            writable_layer: Some(FilesystemUsage {
                timestamp: now,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: rec.dir.join("upper").display().to_string(),
                }),
                used_bytes: Some(UInt64Value { value: used }),
                inodes_used: Some(UInt64Value { value: inodes }),
            }),
            ..Default::default()
        };
        if rec.state != CtrState::Running {
            return Ok((stats, None));
        }
        let s = self.sample(&rec.pod_id, &rec.id).await?;
        stats.cpu = Some(s.cpu(now));
        stats.memory = Some(s.memory(now));
        Ok((stats, Some(s)))
    }
}
