//! UpdateContainerResources, ContainerStats and ReopenContainerLog: calls on a running
//! container that go to its pod's shim.

use berth_proto::protobuf::Message;
use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, CpuUsage, FilesystemIdentifier, FilesystemUsage,
    LinuxContainerResources, MemoryUsage, UInt64Value,
};

use crate::error::{Error, Result};
use crate::runtime::Runtime;

use super::{ContainerRecord, CtrState};

/// CRI resources → OCI LinuxResources JSON (what `runc update --resources -` reads).
pub fn oci_resources(r: &LinuxContainerResources) -> serde_json::Value {
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), r.cpu_shares.into());
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), r.cpu_quota.into());
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), r.cpu_period.into());
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), r.cpuset_cpus.clone().into());
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), r.cpuset_mems.clone().into());
    }
    let mut out = serde_json::json!({ "cpu": cpu });
    if r.memory_limit_in_bytes > 0 {
        out["memory"] = serde_json::json!({ "limit": r.memory_limit_in_bytes });
        if r.memory_swap_limit_in_bytes > 0 {
            out["memory"]["swap"] = r.memory_swap_limit_in_bytes.into();
        }
    }
    if !r.hugepage_limits.is_empty() {
        out["hugepageLimits"] = r
            .hugepage_limits
            .iter()
            .map(|h| serde_json::json!({ "pageSize": h.page_size, "limit": h.limit }))
            .collect();
    }
    out
}

fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
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
    pub async fn update_container_resources(
        &self,
        id: &str,
        r: &LinuxContainerResources,
    ) -> Result<()> {
        let rec = self.container(id)?;
        if rec.state == CtrState::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {id} has exited"
            )));
        }
        let pod = self.pod(&rec.pod_id)?;
        let json =
            serde_json::to_vec(&oci_resources(r)).map_err(|e| Error::Internal(e.to_string()))?;
        self.shim_of(&pod).await?.update(id, json).await
    }

    pub async fn container_stats(&self, rec: &ContainerRecord) -> Result<ContainerStats> {
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
            return Ok(stats);
        }
        let pod = self.pod(&rec.pod_id)?;
        let any = self.shim_of(&pod).await?.stats(&rec.id).await?;
        if any.type_url.ends_with("io.containerd.cgroups.v1.Metrics") {
            let m = berth_proto::cgroups::metrics::Metrics::parse_from_bytes(&any.value)
                .map_err(|e| Error::Internal(format!("decode metrics: {e}")))?;
            if let Some(cpu) = m.cpu.as_ref() {
                stats.cpu = Some(CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: Some(UInt64Value {
                        value: cpu.usage.total,
                    }),
                    usage_nano_cores: None,
                });
            }
            if let Some(mem) = m.memory.as_ref() {
                let usage = mem.usage.usage;
                let working_set = usage.saturating_sub(mem.total_inactive_file);
                stats.memory = Some(MemoryUsage {
                    timestamp: now,
                    working_set_bytes: Some(UInt64Value { value: working_set }),
                    usage_bytes: Some(UInt64Value { value: usage }),
                    rss_bytes: Some(UInt64Value {
                        value: mem.total_rss,
                    }),
                    page_faults: Some(UInt64Value {
                        value: mem.total_pg_fault,
                    }),
                    major_page_faults: Some(UInt64Value {
                        value: mem.total_pg_maj_fault,
                    }),
                    available_bytes: None,
                });
            }
        }
        Ok(stats)
    }

    /// kubelet calls this after renaming the log for rotation. The shim's CRI log writer
    /// notices the rename on its next line and opens a new file, so nothing else is due;
    /// as containerd, it is refused for a container that is not running.
    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        if rec.state != CtrState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_resources_become_oci_json() {
        let r = LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50000,
            cpu_period: 100000,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let v = oci_resources(&r);
        assert_eq!(v["cpu"]["shares"], 512);
        assert_eq!(v["cpu"]["quota"], 50000);
        assert_eq!(v["cpu"]["cpus"], "0");
        assert_eq!(v["memory"]["limit"], 64 << 20);
        assert!(v.get("hugepageLimits").is_none());
    }
}
