//! Berth's records of pods and containers as the state store keeps them (committed
//! before any CRI call is answered), and their typed lookup in the store (`lookup`).
//! The services own the transitions; this module only the shapes, and the copies of the
//! records kept outside the store (`copies`) to rebuild a lost one from.

pub mod copies;
mod lookup;
pub mod migrate;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use lookup::Records;

use crate::workload::{ContainerSpec, PodSpec};

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
    /// What kubelet asked for.
    pub config: PodSpec,
    pub runtime_handler: String,
    pub state: PodState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub bundle: PathBuf,
    /// Per-pod files shared with its containers (hostname, hosts, resolv.conf).
    pub files: PathBuf,
    pub netns: Option<PathBuf>,
    /// The CNI network it was wired to ("" for a host-network pod, or a record from an
    /// older berthd): its unwiring goes through the same network.
    #[serde(default)]
    pub network: String,
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
    /// Some: the pod runs without an infra process; its IPC and UTS namespaces are pinned
    /// by berthd (`pod::pins`), the network's is `netns`. None: an infra process (`pid`)
    /// holds the pod's namespaces (a pod sharing its PID namespace, a user-namespaced
    /// pod, `runtime.pod_infra = "always"`, or a record of an older berthd).
    #[serde(default)]
    pub pins: Option<PodPins>,
    /// The pod's /dev/shm tmpfs, which its containers bind (`pod::files::mount_shm`);
    /// None: each container gets its own (a pod in the host's IPC namespace binds the
    /// host's, and a record of an older berthd had none).
    #[serde(default)]
    pub shm: Option<PathBuf>,
}

/// The pinned namespaces of a pod without an infra process; None is the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPins {
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl PodRecord {
    /// Whether the pod runs without an infra process.
    pub fn infra_less(&self) -> bool {
        self.pins.is_some()
    }

    /// Ready → NotReady, timed.
    pub fn set_not_ready(&mut self) {
        self.state = PodState::NotReady;
        self.stopped_at = crate::util::now_ns();
    }

    /// The cgroup parent of the pod's tasks: its own, else `default` (the configured).
    pub fn cgroup_parent(&self, default: &str) -> String {
        match self.config.cgroup_parent.as_str() {
            "" => default.to_string(),
            p => p.to_string(),
        }
    }

    pub fn host_network(&self) -> bool {
        self.config.host_network()
    }
}

/// CRI container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtrState {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    /// kubelet's unique name: name_podname_podnamespace_poduid_attempt (reserved).
    pub name_key: String,
    /// What kubelet asked for.
    pub config: ContainerSpec,
    /// The image as asked for, and the image id (config digest) it resolved to.
    pub image_name: String,
    pub image_id: String,
    pub state: CtrState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub pid: u32,
    pub bundle: PathBuf,
    /// upper/ and work/ of the writable layer.
    pub dir: PathBuf,
    /// Absolute log path ("" = no log).
    pub log_path: String,
    pub stop_signal: String,
    /// The identity the process runs as (from the generated spec), for ContainerStatus.
    #[serde(default)]
    pub user: Option<ProcessUser>,
    /// The operation in progress (intent record), None when none is.
    #[serde(default)]
    pub op: Option<crate::intent::Op>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}
