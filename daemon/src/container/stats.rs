//! Container statistics: a task's cgroup sample (through the pod's shim), the writable
//! layer's usage, the container's processes and open files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::Containers;
use crate::error::{Error, Result};

use crate::records::{ContainerRecord, CtrState, PodRecord, Records};
use crate::shim_client::{Detail, Sample};

/// A container's usage at one moment: its writable layer and, while it runs, its cgroup
/// sample. The CRI adapter turns it into ContainerStats.
#[derive(Debug, Clone)]
pub struct ContainerUsage {
    /// When it was taken (ns since the epoch).
    pub at: i64,
    /// The writable layer's directory, its bytes and inodes used.
    pub writable_layer: PathBuf,
    pub writable_bytes: u64,
    pub writable_inodes: u64,
    /// None when the container is not running.
    pub sample: Option<Sample>,
}

impl Containers {
    /// The cgroup sample of a task in a pod's shim (a container, or the pod's infra).
    pub async fn sample(&self, pod_id: &str, task_id: &str) -> Result<Sample> {
        let pod = self.store.pod(pod_id)?;
        self.shim_of(&pod).await?.stats(task_id, Detail::Full).await
    }

    /// One container's usage, with every figure of its cgroup (ContainerStats, pod
    /// stats).
    pub async fn usage(&self, rec: &ContainerRecord) -> Result<ContainerUsage> {
        let one = [Arc::new(rec.clone())];
        self.usages(&one, Detail::Full)
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("no usage sampled".into())))
    }
}

/// How many shims a batch of samples ([`Containers::usages`]) asks at once: each is a
/// round trip, mostly waiting; the bound keeps a node of many pods from holding a call
/// open to every shim at once.
const ASKED_AT_ONCE: usize = 32;

impl Containers {
    /// The usage of many containers (ListContainerStats), in their order: their writable
    /// layers are walked on one blocking thread while their shims are asked for their
    /// samples (`detail`), [`ASKED_AT_ONCE`] at a time. One that cannot be sampled is its
    /// Err.
    pub async fn usages(
        &self,
        recs: &[Arc<ContainerRecord>],
        detail: Detail,
    ) -> Result<Vec<Result<ContainerUsage>>> {
        use futures_util::{stream, StreamExt};
        let at = crate::util::now_ns();
        let layers: Vec<PathBuf> = recs.iter().map(|r| r.dir.join("upper")).collect();
        let walked = layers.clone();
        // Walks of the containers' files: blocking, off the async workers, one thread.
        let walks = tokio::task::spawn_blocking(move || {
            walked
                .iter()
                .map(|l| crate::util::reported_usage(l))
                .collect::<Vec<_>>()
        });
        // The pods' records (their shims' addresses): all of them once for many
        // containers, the one pod's for one.
        let pods: HashMap<String, Arc<PodRecord>> = match recs {
            [one] => self
                .store
                .get::<PodRecord>(crate::store::PODS, &one.pod_id)?
                .map(|p| (p.id.clone(), Arc::new(p)))
                .into_iter()
                .collect(),
            _ => self
                .store
                .listed_pods()?
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect(),
        };
        let asks: Vec<_> = recs
            .iter()
            .map(|r| (r.clone(), pods.get(&r.pod_id).cloned()))
            .collect();
        let samples: Vec<Result<Option<Sample>>> = stream::iter(asks)
            .map(|(rec, pod)| async move {
                if rec.state != CtrState::Running {
                    return Ok(None);
                }
                let pod = pod.ok_or_else(|| {
                    Error::NotFound(format!("pod sandbox {:?} not found", rec.pod_id))
                })?;
                Ok(Some(
                    self.shim_of(&pod).await?.stats(&rec.id, detail).await?,
                ))
            })
            .buffered(ASKED_AT_ONCE)
            .collect()
            .await;
        let walks = walks.await.unwrap_or_default();
        Ok(samples
            .into_iter()
            .zip(layers)
            .enumerate()
            .map(|(i, (sample, writable_layer))| {
                let (writable_bytes, writable_inodes) = walks.get(i).copied().unwrap_or_default();
                Ok(ContainerUsage {
                    at,
                    writable_layer,
                    writable_bytes,
                    writable_inodes,
                    sample: sample?,
                })
            })
            .collect())
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
    /// Processes, open files and writable-layer figures of a running container. Blocking
    /// (it walks /proc and the writable layer): async callers use [`Self::extras_of`].
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

impl Containers {
    /// [`Self::extras`] on the blocking pool.
    pub async fn extras_of(self: &std::sync::Arc<Self>, rec: &ContainerRecord) -> Extras {
        let (this, rec) = (self.clone(), rec.clone());
        tokio::task::spawn_blocking(move || this.extras(&rec))
            .await
            .unwrap_or_default()
    }
}
