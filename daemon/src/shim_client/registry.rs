//! The shims berthd is connected to, by pod id: started or connected through the
//! [`Launcher`], cached for every call on the pod, forgotten when the pod or its shim
//! goes. Owns the task options every task is created with.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::Mutex;

const LEFTOVER_CONNECT: std::time::Duration = std::time::Duration::from_secs(1);

use crate::error::{Error, Result};

use super::{Launcher, ShimHandle, TaskOptions};

pub struct Shims {
    launcher: Arc<dyn Launcher>,
    options: TaskOptions,
    connected: Mutex<HashMap<String, ShimHandle>>,
    /// How many are connected (the metrics' shims alive).
    alive: crate::metrics::Gauge,
}

impl Shims {
    pub fn new(
        launcher: Arc<dyn Launcher>,
        options: TaskOptions,
        alive: crate::metrics::Gauge,
    ) -> Shims {
        Shims {
            launcher,
            options,
            connected: Mutex::default(),
            alive,
        }
    }

    /// The options every task is created with (OCI runtime binary, cgroup driver).
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }

    /// Starts a new shim for pod `pod_id` in its bundle (not yet cached: the pod is not
    /// recorded Ready before its infra runs).
    pub async fn start(&self, bundle: &Path, pod_id: &str) -> Result<ShimHandle> {
        self.launcher.start(bundle, pod_id).await
    }

    /// A fresh connection, not cached (probes whether a shim still answers).
    pub async fn connect(&self, address: &str) -> Result<ShimHandle> {
        self.launcher.connect(address).await
    }

    /// The pod's shim: the cached client, else a connection to its recorded address
    /// (after a restart), cached from then on.
    pub async fn of(&self, pod_id: &str, address: &str) -> Result<ShimHandle> {
        if let Some(s) = self.cached(pod_id).await {
            return Ok(s);
        }
        if address.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "pod {pod_id} has no shim"
            )));
        }
        let s = self.launcher.connect(address).await?;
        self.insert(pod_id, s.clone()).await;
        Ok(s)
    }

    /// The shim a bundle's `address` file names (a RunPodSandbox cut before it recorded
    /// the shim), if it answers within a second.
    pub async fn leftover(&self, pod_bundle: &Path) -> Option<ShimHandle> {
        let address = std::fs::read_to_string(pod_bundle.join("address")).ok()?;
        tokio::time::timeout(LEFTOVER_CONNECT, self.connect(address.trim()))
            .await
            .ok()?
            .ok()
    }

    /// Whether a fresh connection to the shim at `address` gets an answer about task
    /// `task_id` (a cached client may belong to a shim that has died since).
    pub async fn answers(&self, address: &str, task_id: &str) -> bool {
        match self.connect(address).await {
            Ok(s) => matches!(s.state(task_id).await, Ok(_) | Err(Error::NotFound(_))),
            Err(_) => false,
        }
    }

    /// Whether the shim at `address` is gone (dead), not merely wedged: a wedged shim's
    /// tasks must be left alone.
    pub fn gone(&self, address: &str) -> bool {
        self.launcher.gone(address)
    }

    /// Whether a stop or removal that got `err` from pod `pod_id`'s shim at `address` may
    /// settle the pod's tasks without it: the shim is gone, or it did not answer in time and
    /// has now been killed (its processes are then settled as after a shim's death).
    pub async fn gone_or_put_down(&self, pod_id: &str, address: &str, err: &Error) -> bool {
        if self.gone(address) {
            return true;
        }
        // The connection broke under the call: the shim is most likely dying (a crash
        // closes its connections a moment before its listener is gone). Given a bounded
        // moment to finish; a shim that still listens after it keeps its tasks.
        if lost_connection(err) {
            for _ in 0..20 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if self.gone(address) {
                    return true;
                }
            }
            return false;
        }
        if !matches!(err, Error::DeadlineExceeded(_)) {
            return false;
        }
        // The death is then noticed and settled as any shim's (the pod's watch).
        self.launcher.put_down(pod_id).await && self.gone(address)
    }

    pub async fn cached(&self, pod_id: &str) -> Option<ShimHandle> {
        self.connected.lock().await.get(pod_id).cloned()
    }

    pub async fn insert(&self, pod_id: &str, shim: ShimHandle) {
        let mut m = self.connected.lock().await;
        m.insert(pod_id.to_string(), shim);
        self.alive.set(m.len() as i64);
    }

    /// Forgets the pod's client; Some if it was cached (the first to forget a dead
    /// shim's client is the one that settles it).
    pub async fn forget(&self, pod_id: &str) -> Option<ShimHandle> {
        let mut m = self.connected.lock().await;
        let gone = m.remove(pod_id);
        self.alive.set(m.len() as i64);
        gone
    }
}

/// Whether `err` is a shim call whose connection broke (as opposed to an answer): what the
/// ttrpc client says when the peer closed or reset the connection.
fn lost_connection(err: &Error) -> bool {
    let Error::Internal(m) = err else {
        return false;
    };
    ["channel closed", "socket err", "stream closed", ": eof"]
        .iter()
        .any(|s| m.contains(s))
}

#[cfg(test)]
mod lost_connection_tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_told_from_an_answer() {
        let closed = Error::Internal(
            "task state: ttrpc err: reserve channel capacity failed: channel closed".into(),
        );
        assert!(lost_connection(&closed));
        assert!(lost_connection(&Error::Internal(
            "task kill: socket err: EPIPE".into()
        )));
        assert!(!lost_connection(&Error::Internal(
            "task kill: runc failed".into()
        )));
        assert!(!lost_connection(&Error::NotFound("channel closed".into())));
    }
}
