//! berthd's side of a pod's shim: launching `containerd-shim-berth-v2` (`launch`), the
//! task client (`ttrpc`) behind the [`TaskShim`] trait with typed task states and
//! `Option` exec ids (None = the task's init process), the registry of connected shims
//! (`registry`), and the decoding of the metrics a shim reports (`metrics`). Nothing
//! outside this module sees a protobuf type of the task API.

#[cfg(test)]
pub mod fake;
mod launch;
mod leftovers;
pub mod metrics;
mod registry;
mod ttrpc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;

pub use launch::{locate, Launcher, ShimLauncher, NAMESPACE};
pub use leftovers::{forget_task, kill_cgroup, kill_task_cgroup, runc_delete};
pub use metrics::{Detail, Sample};
pub use registry::Shims;
pub use ttrpc::Shim;

/// A connected shim, shared by every caller working on its pod.
pub type ShimHandle = Arc<dyn TaskShim>;

/// A task process's status as the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

/// What the shim knows of a task's init process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskState {
    pub status: TaskStatus,
    pub pid: u32,
    pub exit_status: u32,
    /// Nanoseconds since the epoch (0 while it runs).
    pub exited_at: i64,
}

/// A process's exit: its status (128+signal for a signal death) and time (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: i64,
}

/// What every task of berthd's runs with: the OCI runtime binary and cgroup driver
/// (sent as `containerd.runc.v1.Options`, as containerd's CRI does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskOptions {
    pub binary: String,
    pub systemd_cgroup: bool,
}

/// A process's stdio as the shim takes it: stdin a FIFO path, stdout/stderr FIFO paths
/// or a `cri-log://` URI ("" = none), and whether it has a terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A mount the shim makes at the bundle's rootfs before it creates the task (an
/// overlay of image layers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

impl RootfsMount {
    pub fn overlay(options: Vec<String>) -> RootfsMount {
        RootfsMount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options,
        }
    }

    /// An idmapped volume (not a rootfs layer): the shim attaches an idmapped clone of
    /// `source`, mapped through the user namespace of the pod's infra `pid`, at
    /// `berth_proto::idmap::volume_point(bundle, n)`.
    pub fn idmapped_volume(source: &str, pid: u32, n: usize) -> RootfsMount {
        use berth_proto::idmap::{USERNS_OPTION, VOLUME_OPTION};
        RootfsMount {
            fstype: "bind".into(),
            source: source.into(),
            options: vec![
                "rbind".into(),
                format!("{USERNS_OPTION}/proc/{pid}/ns/user"),
                format!("{VOLUME_OPTION}{n}"),
            ],
        }
    }
}

/// A task to create: its id, bundle, rootfs mounts (none: the bundle's rootfs is used
/// as it is), stdio (all empty: none) and options.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub io: ExecIo,
    pub options: TaskOptions,
}

/// One entry of the shim's event journal, numbered in publication order; `exit` is set
/// for a process's exit (the only event berthd acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub seq: u64,
    pub exit: Option<ProcessExit>,
}

/// A process's exit as the journal reports it: an init's when `exec_id` is None.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessExit {
    pub container_id: String,
    pub exec_id: Option<String>,
    pub exit: Exit,
}

/// What one journal read returned, and the oldest entry number the shim still keeps.
#[derive(Debug, Clone, Default)]
pub struct JournalRead {
    pub entries: Vec<JournalEntry>,
    pub first: u64,
}

/// The task API of one pod's shim, as berthd uses it. `exec` None means the task's init
/// process. Implemented over ttrpc by [`Shim`]; tests use `fake::FakeShim`.
#[async_trait::async_trait]
pub trait TaskShim: Send + Sync {
    /// The shim's socket address (`unix://...`), kept in the pod's record.
    fn address(&self) -> &str;
    /// Creates a task; returns its init's pid.
    async fn create(&self, task: &NewTask) -> Result<u32>;
    /// Starts the init or a registered exec; returns its pid.
    async fn start(&self, id: &str, exec: Option<&str>) -> Result<u32>;
    /// Signals the init (`all`: every process of the task) or an exec.
    async fn kill(&self, id: &str, exec: Option<&str>, signal: u32, all: bool) -> Result<()>;
    /// Waits for the process's exit, at most `limit`.
    async fn wait(&self, id: &str, exec: Option<&str>, limit: Duration) -> Result<Exit>;
    /// The init's state.
    async fn state(&self, id: &str) -> Result<TaskState>;
    /// Deletes the task (one that does not exist is not an error) or an exec (NotFound
    /// when it does not exist).
    async fn delete(&self, id: &str, exec: Option<&str>) -> Result<()>;
    /// Registers an exec process (`spec`: an OCI Process as JSON) with its stdio.
    async fn exec(&self, id: &str, exec_id: &str, spec: Vec<u8>, io: &ExecIo) -> Result<()>;
    /// Closes a process's stdin (the shim holds the FIFO open until told).
    async fn close_stdin(&self, id: &str, exec: Option<&str>) -> Result<()>;
    /// Resizes a process's terminal.
    async fn resize(&self, id: &str, exec: Option<&str>, width: u32, height: u32) -> Result<()>;
    /// Adds FIFOs (read ends open, "" = none) that get a copy of a running process's
    /// output from now on (Berth's `berth.shim.v1.Attach`).
    async fn attach(&self, id: &str, exec: Option<&str>, stdout: &str, stderr: &str) -> Result<()>;
    /// The task's cgroup sample, with every figure or only CRI's ([`Detail`]).
    async fn stats(&self, id: &str, detail: Detail) -> Result<Sample>;
    /// Applies new resources (OCI LinuxResources JSON) to a running task.
    async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()>;
    /// The journal entries after `after` (waiting up to `wait` for one).
    async fn read_journal(&self, after: u64, wait: Duration) -> Result<JournalRead>;
    /// Asks the shim to exit (it does only once it serves no task). With `wait` (the
    /// caller knows no task is left) returns once its socket is gone, bounded.
    async fn shutdown(&self, wait: bool);
}
