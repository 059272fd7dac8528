//! In-memory shims for unit tests of the logic above the shim (rollback, recovery, exit
//! recording): tasks with scripted states, calls recorded, chosen calls failing.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

use super::{
    Detail, ExecIo, Exit, JournalRead, Launcher, NewTask, Sample, ShimHandle, TaskShim, TaskState,
    TaskStatus,
};

/// One fake shim: `tasks` holds each task's init state.
#[derive(Default)]
pub struct FakeShim {
    pub address: String,
    pub tasks: Mutex<HashMap<String, TaskState>>,
    /// "create c1", "kill c1 9", ... in call order.
    pub calls: Mutex<Vec<String>>,
    /// Calls (by method name: "create", "start", ...) that fail with Internal.
    pub failing: Mutex<HashSet<&'static str>>,
}

impl FakeShim {
    pub fn new(address: &str) -> Arc<FakeShim> {
        Arc::new(FakeShim {
            address: address.into(),
            ..Default::default()
        })
    }

    pub fn fail(&self, method: &'static str) {
        self.failing.lock().unwrap().insert(method);
    }

    pub fn set_state(&self, id: &str, status: TaskStatus, exit_status: u32, exited_at: i64) {
        self.tasks.lock().unwrap().insert(
            id.into(),
            TaskState {
                status,
                pid: 4242,
                exit_status,
                exited_at,
            },
        );
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, method: &'static str, what: String) -> Result<()> {
        self.calls.lock().unwrap().push(format!("{method} {what}"));
        if self.failing.lock().unwrap().contains(method) {
            return Err(Error::Internal(format!("fake {method} fails")));
        }
        Ok(())
    }

    fn task(&self, id: &str) -> Result<TaskState> {
        self.tasks
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("task {id}")))
    }
}

#[async_trait::async_trait]
impl TaskShim for FakeShim {
    fn address(&self) -> &str {
        &self.address
    }
    async fn create(&self, t: &NewTask) -> Result<u32> {
        self.call("create", t.id.clone())?;
        self.set_state(&t.id, TaskStatus::Created, 0, 0);
        Ok(4242)
    }
    async fn start(&self, id: &str, exec: Option<&str>) -> Result<u32> {
        self.call("start", format!("{id} {exec:?}"))?;
        let mut t = self.task(id)?;
        t.status = TaskStatus::Running;
        self.tasks.lock().unwrap().insert(id.into(), t);
        Ok(t.pid)
    }
    async fn kill(&self, id: &str, exec: Option<&str>, signal: u32, _all: bool) -> Result<()> {
        self.call("kill", format!("{id} {exec:?} {signal}"))?;
        let mut t = self.task(id)?;
        if t.status == TaskStatus::Running {
            t.status = TaskStatus::Stopped;
            t.exit_status = 128 + signal;
            t.exited_at = crate::util::now_ns();
        }
        self.tasks.lock().unwrap().insert(id.into(), t);
        Ok(())
    }
    async fn wait(&self, id: &str, exec: Option<&str>, _limit: Duration) -> Result<Exit> {
        self.call("wait", format!("{id} {exec:?}"))?;
        let t = self.task(id)?;
        Ok(Exit {
            status: t.exit_status,
            at: t.exited_at,
        })
    }
    async fn state(&self, id: &str) -> Result<TaskState> {
        self.call("state", id.into())?;
        self.task(id)
    }
    async fn delete(&self, id: &str, exec: Option<&str>) -> Result<()> {
        self.call("delete", format!("{id} {exec:?}"))?;
        // As the real shim: a missing task is deleted; execs are not tracked here.
        if exec.is_none() {
            self.tasks.lock().unwrap().remove(id);
        }
        Ok(())
    }
    async fn exec(&self, id: &str, exec_id: &str, _spec: Vec<u8>, _io: &ExecIo) -> Result<()> {
        self.call("exec", format!("{id} {exec_id}"))
    }
    async fn close_stdin(&self, id: &str, exec: Option<&str>) -> Result<()> {
        self.call("close_stdin", format!("{id} {exec:?}"))
    }
    async fn resize(&self, id: &str, exec: Option<&str>, w: u32, h: u32) -> Result<()> {
        self.call("resize", format!("{id} {exec:?} {w}x{h}"))
    }
    async fn attach(&self, id: &str, exec: Option<&str>, _o: &str, _e: &str) -> Result<()> {
        self.call("attach", format!("{id} {exec:?}"))
    }
    async fn stats(&self, id: &str, _detail: Detail) -> Result<Sample> {
        self.call("stats", id.into())?;
        Ok(Sample::default())
    }
    async fn update(&self, id: &str, _resources_json: Vec<u8>) -> Result<()> {
        self.call("update", id.into())
    }
    async fn read_journal(&self, _after: u64, wait: Duration) -> Result<JournalRead> {
        // Nothing ever happens in a fake shim on its own.
        tokio::time::sleep(wait).await;
        Ok(JournalRead::default())
    }
    async fn shutdown(&self, _wait: bool) {
        let _ = self.call("shutdown", String::new());
    }
}

/// Hands out fake shims: one per started pod, found again by address; addresses in
/// `dead` refuse connections, `fail_start` makes every start fail, and every shim
/// started from now on fails the calls in `fail_new`.
#[derive(Default)]
pub struct FakeLauncher {
    pub shims: Mutex<HashMap<String, Arc<FakeShim>>>,
    pub dead: Mutex<HashSet<String>>,
    pub fail_start: Mutex<bool>,
    pub fail_new: Mutex<HashSet<&'static str>>,
}

impl FakeLauncher {
    pub fn new() -> Arc<FakeLauncher> {
        Arc::new(FakeLauncher::default())
    }

    pub fn shim(&self, address: &str) -> Arc<FakeShim> {
        self.shims
            .lock()
            .unwrap()
            .entry(address.into())
            .or_insert_with(|| FakeShim::new(address))
            .clone()
    }
}

#[async_trait::async_trait]
impl Launcher for FakeLauncher {
    async fn start(&self, _bundle: &Path, id: &str) -> Result<ShimHandle> {
        if *self.fail_start.lock().unwrap() {
            return Err(Error::Internal(format!("fake shim start for {id} fails")));
        }
        let shim = self.shim(&format!("unix:///fake/{id}"));
        for m in self.fail_new.lock().unwrap().iter() {
            shim.fail(m);
        }
        Ok(shim)
    }
    async fn connect(&self, address: &str) -> Result<ShimHandle> {
        if self.gone(address) {
            return Err(Error::Internal(format!("connect {address}: refused")));
        }
        Ok(self.shim(address))
    }

    fn gone(&self, address: &str) -> bool {
        self.dead.lock().unwrap().contains(address)
    }
    async fn put_down(&self, id: &str) -> bool {
        self.dead
            .lock()
            .unwrap()
            .insert(format!("unix:///fake/{id}"));
        true
    }
}
