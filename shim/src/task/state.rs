//! The shim's in-memory task table: containers, their init and exec processes, and the
//! lifecycle state machine each process follows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::io::{ProcessIo, StdioSpec};
use crate::options::RuncOptions;
use crate::reaper::Exit;
use crate::runc::Runc;

/// containerd's `containerd.v1.types.Status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Pausing,
    Stopped,
}

impl Status {
    pub fn wire(self) -> berth_proto::types::task::Status {
        use berth_proto::types::task::Status as W;
        match self {
            Status::Created => W::CREATED,
            Status::Running => W::RUNNING,
            Status::Paused => W::PAUSED,
            Status::Pausing => W::PAUSING,
            Status::Stopped => W::STOPPED,
        }
    }
}

/// Exit status and time, once known.
pub type ExitInfo = Option<(u32, SystemTime)>;

/// One process: a container's init or one of its execs.
pub struct Process {
    pub id: String,
    pub stdio: StdioSpec,
    pub status: Status,
    pub pid: i32,
    pub exit: ExitInfo,
    /// A Start is running the runtime for this process: its exit must wait for the start event.
    pub starting: bool,
    pub io: Option<ProcessIo>,
    /// Wakes every Wait caller when `exit` is set.
    pub exited: watch::Sender<ExitInfo>,
    /// Exec only: the OCI Process JSON to run.
    pub spec: Option<Vec<u8>>,
}

impl Process {
    pub fn new(id: &str, stdio: StdioSpec) -> Process {
        Process {
            id: id.to_string(),
            stdio,
            status: Status::Created,
            pid: 0,
            exit: None,
            starting: false,
            io: None,
            exited: watch::channel(None).0,
            spec: None,
        }
    }

    /// Marks the process exited and releases its waiters.
    pub fn set_exited(&mut self, status: u32, at: SystemTime) {
        self.status = Status::Stopped;
        self.exit = Some((status, at));
        self.exited.send_replace(self.exit);
    }
}

/// One container served by this shim.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub opts: RuncOptions,
    pub runc: Runc,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// Execs started and not yet exited (the init's TaskExit waits for theirs).
    pub running_execs: usize,
    /// The init exit, held back until every exec has exited.
    pub pending_init_exit: Option<Exit>,
    pub kill_all_on_exit: bool,
    pub cgroup: Option<Cgroup>,
    pub rootfs_mounted: bool,
    /// Create came with a checkpoint: Start restores instead of starting.
    pub checkpoint: Option<(String, String)>,
}

impl Container {
    /// The init's exit has been seen (it may still be held back for execs).
    pub fn init_gone(&self) -> bool {
        self.init.status == Status::Stopped || self.pending_init_exit.is_some()
    }

    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::NotFound(format!("process does not exist {exec_id}")))
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("process does not exist {exec_id}")))
    }
}

/// The whole table, behind one lock. Runtime calls happen outside it; every transition
/// and the event it emits happen inside it, so event order equals transition order.
#[derive(Default)]
pub struct Table {
    pub containers: HashMap<String, Container>,
    /// Creates and Starts currently running the runtime.
    pub in_flight: usize,
    /// Exits seen while something was in flight that matched no known process yet.
    pub early_exits: Vec<Exit>,
}

impl Table {
    pub fn get(&self, id: &str) -> Result<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| Error::NotFound("container not created".into()))
    }

    pub fn get_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound("container not created".into()))
    }

    /// Ends an in-flight operation; the buffer is only needed while one runs.
    pub fn end_in_flight(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.early_exits.clear();
        }
    }

    /// Takes a buffered exit for `pid`, if one arrived early.
    pub fn take_early_exit(&mut self, pid: i32) -> Option<Exit> {
        let i = self.early_exits.iter().position(|e| e.pid == pid)?;
        Some(self.early_exits.remove(i))
    }
}
