//! Container statistics: a task's cgroup sample (through the pod's shim), the writable
//! layer's usage, the container's processes and open files, and the CRI ContainerStats
//! built from them.

use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, CpuUsage, FilesystemIdentifier, FilesystemUsage,
    MemoryUsage, UInt64Value,
};

use super::Containers;
use crate::error::Result;

use crate::records::{ContainerRecord, CtrState, Records};
use crate::shim_client::Sample;

impl Sample {
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

impl Containers {
    /// The cgroup sample of a task in a pod's shim (a container, or the pod's infra).
    pub async fn sample(&self, pod_id: &str, task_id: &str) -> Result<Sample> {
        let pod = self.store.pod(pod_id)?;
        self.shim_of(&pod).await?.stats(task_id).await
    }

    pub async fn stats(&self, rec: &ContainerRecord) -> Result<ContainerStats> {
        Ok(self.stats_sampled(rec).await?.0)
    }

    /// The CRI stats and the sample they came from (None when not running).
    pub async fn stats_sampled(
        &self,
        rec: &ContainerRecord,
    ) -> Result<(ContainerStats, Option<Sample>)> {
        let now = crate::util::now_ns();
        let (used, inodes) = crate::util::reported_usage(&rec.dir.join("upper"));
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

/// What the host sees of a running container besides its cgroup figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    pub processes: u64,
    pub fds: u64,
    pub sockets: u64,
    /// The writable layer: bytes used, and its filesystem's size and inodes.
    pub fs_usage: u64,
    pub fs_limit: u64,
    pub fs_inodes_total: u64,
    pub fs_inodes_free: u64,
}

/// The processes in the same cgroup as `pid` (its pids cgroup, or the v2 tree).
fn cgroup_procs(pid: u32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let base = std::path::Path::new("/sys/fs/cgroup");
    let dir = text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let rel = path.trim_start_matches('/');
        if ctrls.split(',').any(|c| c == "pids") {
            Some(base.join("pids").join(rel))
        } else if ctrls.is_empty() && base.join("cgroup.controllers").exists() {
            Some(base.join(rel))
        } else {
            None
        }
    });
    dir.and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// (open fds, of which sockets) of the given processes.
fn open_files(pids: &[u32]) -> (u64, u64) {
    let (mut fds, mut sockets) = (0, 0);
    for pid in pids {
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    (fds, sockets)
}

impl Containers {
    /// Processes, open files and writable-layer figures of a running container.
    pub fn extras(&self, rec: &ContainerRecord) -> Extras {
        let procs = if rec.state == CtrState::Running && rec.pid != 0 {
            cgroup_procs(rec.pid)
        } else {
            Vec::new()
        };
        let (fds, sockets) = open_files(&procs);
        let (fs_usage, _) = crate::util::reported_usage(&rec.dir.join("upper"));
        let mut x = Extras {
            processes: procs.len() as u64,
            fds,
            sockets,
            fs_usage,
            ..Default::default()
        };
        // statvfs field types differ between platforms (u32 on some 32-bit ones).
        #[allow(clippy::unnecessary_cast)]
        if let Ok(v) = nix::sys::statvfs::statvfs(&rec.dir) {
            x.fs_limit = v.blocks() as u64 * v.fragment_size() as u64;
            x.fs_inodes_total = v.files() as u64;
            x.fs_inodes_free = v.files_free() as u64;
        }
        x
    }
}
