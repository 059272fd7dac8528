//! UpdateContainerResources and ReopenContainerLog: calls on a running container that go
//! to its pod's shim.

use super::Containers;
use crate::error::{Error, Result};

use crate::records::{ContainerRecord, CtrState, Records};
use crate::store::CONTAINERS;
use crate::workload::Resources;

/// Resources → OCI LinuxResources JSON (what `runc update --resources -` reads).
pub fn oci_resources(r: &Resources) -> serde_json::Value {
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

impl Containers {
    pub async fn update_resources(&self, id: &str, r: &Resources) -> Result<()> {
        let rec = self.store.container(id)?;
        if rec.state == CtrState::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {id} has exited"
            )));
        }
        let pod = self.store.pod(&rec.pod_id)?;
        // The NRI plugins' UpdateContainer may change what is applied.
        let r = self.nri.update_container(&pod, &rec, r).await?;
        self.apply_resources(id, &r).await?;
        if let Ok(rec) = self.store.container(id) {
            self.nri.post_update_container(&pod, &rec).await;
        }
        Ok(())
    }

    /// Applies resources to a created or running container (no NRI hook: also what an
    /// NRI plugin's own update comes through).
    async fn apply_resources(&self, id: &str, r: &Resources) -> Result<()> {
        let rec = self.store.container(id)?;
        if rec.state == CtrState::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {id} has exited"
            )));
        }
        let pod = self.store.pod(&rec.pod_id)?;
        let json =
            serde_json::to_vec(&oci_resources(r)).map_err(|e| Error::Internal(e.to_string()))?;
        self.shim_of(&pod).await?.update(id, json).await?;
        // ContainerStatus reports the resources in force (kubelet's in-place resize).
        self.store
            .update_async(CONTAINERS, id, |c: &mut ContainerRecord| {
                c.config.resources = Some(r.clone());
                true
            })
            .await?;
        Ok(())
    }

    /// kubelet calls this after renaming the log for rotation, and expects the log path
    /// to exist again when it returns. berthd creates the new file (as the shim would:
    /// append, 0640); the shim's CRI log writer sees on its next line that the path is no
    /// longer the file it holds and reopens it. As containerd, refused for a container
    /// that is not running.
    pub fn reopen_log(&self, id: &str) -> Result<()> {
        let rec = self.store.container(id)?;
        if rec.state != CtrState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if !rec.log_path.is_empty() {
            // As the shim's writer: never through a symlink or into a FIFO someone put
            // at the path (berthd runs as root); only a regular file is kept.
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&rec.log_path)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ELOOP) | Some(libc::ENXIO) => Error::FailedPrecondition(format!(
                        "log path {} is not a regular file",
                        rec.log_path
                    )),
                    _ => Error::io(format!("reopen log {}", rec.log_path), e),
                })?;
            let regular = f.metadata().is_ok_and(|m| m.is_file());
            if !regular {
                return Err(Error::FailedPrecondition(format!(
                    "log path {} is not a regular file",
                    rec.log_path
                )));
            }
        }
        Ok(())
    }
}

/// What NRI plugins ask of the containers service outside an event.
#[async_trait::async_trait]
impl crate::nri::Host for Containers {
    async fn update_container(&self, id: &str, r: &berth_nri::api::LinuxResources) -> Result<()> {
        let rec = self.store.container(id)?;
        let base = rec.config.resources.clone().unwrap_or_default();
        self.apply_resources(id, &crate::nri::convert::merge_resources(&base, r))
            .await
    }

    async fn evict_container(&self, id: &str, reason: &str) -> Result<()> {
        tracing::warn!(container_id = %id, reason, "evicted by an NRI plugin: stopping it");
        self.stop(id, 0).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_become_oci_json() {
        let r = Resources {
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
