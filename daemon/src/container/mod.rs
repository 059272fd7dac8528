//! Containers: their stored record, lifecycle (create, start, stop, remove) and status.
//! A container runs in its pod's shim; its rootfs is an overlay of the image's layer
//! snapshots mounted by the shim, and its log is written by the shim (`cri-log://`).

mod exec;
mod lifecycle;
mod resources;
pub mod session;
pub mod stats;
mod stdio;
mod streaming;
mod volumes;

pub(crate) use lifecycle::load_localhost_profile;
pub(crate) use stdio::stdin_fifo;

use std::path::PathBuf;

use k8s_cri::v1::ContainerConfig;
use serde::{Deserialize, Serialize};

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
    pub config: ContainerConfig,
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
