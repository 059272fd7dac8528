//! The task service: the plain domain operations behind `containerd.task.v2/v3.Task`.
//! `service.rs` is the thin ttrpc layer; the operations live in `lifecycle.rs` and `ops.rs`.

mod attach;
mod exits;
mod journal;
mod lifecycle;
mod ops;
mod service;
mod state;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::error::Result;
use crate::events::Publisher;
use crate::reaper::Reaper;

pub use exits::run as run_exit_loop;
pub use state::Table;

/// Shared by every connection of this shim.
#[derive(Clone)]
pub struct Service {
    pub table: Arc<Mutex<Table>>,
    pub events: Publisher,
    pub reaper: Arc<Reaper>,
    pub namespace: String,
    /// Notified when Shutdown finds no container left.
    pub shutdown: Arc<Notify>,
}

impl Service {
    pub fn new(events: Publisher, reaper: Arc<Reaper>, namespace: String) -> Service {
        Service {
            table: Arc::new(Mutex::new(Table::default())),
            events,
            reaper,
            namespace,
            shutdown: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Table>> {
        // A panic elsewhere must not take every later RPC down with it: the table's
        // invariants are restored by each operation, so a poisoned lock is still usable.
        Ok(self.table.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
