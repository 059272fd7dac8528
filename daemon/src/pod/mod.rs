//! Pod sandboxes: their stored record, lifecycle (run, stop, remove) and status. Each
//! pod runs in one shim; its infra process (berth-pause) holds the pod's namespaces.

mod files;
mod intents;
mod journal;
mod orphans;
mod recover;
mod sandbox;
mod shim_death;
mod shim_log;
pub mod stats;
mod teardown;

use std::path::PathBuf;

use k8s_cri::v1::PodSandboxConfig;
use serde::{Deserialize, Serialize};

pub use sandbox::pause_rootfs;

/// CRI sandbox states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

/// What the store keeps about a pod (committed before any RPC is acknowledged).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    /// kubelet's unique pod name: name_namespace_uid_attempt (the reserved name).
    pub name_key: String,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub state: PodState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub bundle: PathBuf,
    /// Per-pod files shared with its containers (hostname, hosts, resolv.conf).
    pub files: PathBuf,
    pub netns: Option<PathBuf>,
    pub ips: Vec<String>,
    pub pid: u32,
    pub shim_address: String,
    /// The operation in progress (intent record), None when none is.
    #[serde(default)]
    pub op: Option<crate::intent::Op>,
    /// When it became NotReady (ns; 0 while Ready): its STOPPED event's time.
    #[serde(default)]
    pub stopped_at: i64,
    /// The number of the last entry of the shim's event journal applied (`journal`).
    #[serde(default)]
    pub journal_seq: u64,
}

impl PodRecord {
    /// Ready → NotReady, timed.
    pub fn set_not_ready(&mut self) {
        self.state = PodState::NotReady;
        self.stopped_at = crate::util::now_ns();
    }

    pub fn host_network(&self) -> bool {
        use k8s_cri::v1::NamespaceMode;
        self.config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == NamespaceMode::Node as i32)
    }
}
