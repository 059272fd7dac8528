//! Exit handling and the order containerd expects of task events: TaskCreate/TaskStart
//! before the process's TaskExit, and the init's TaskExit after every exec's.

use std::sync::{Arc, Mutex};

use berth_proto::events::task::TaskExit;
use berth_proto::topics::TASK_EXIT_EVENT_TOPIC;
use tracing::Instrument;

use crate::events::{timestamp, Publisher};
use crate::reaper::{Exit, Subscription};

use super::state::{Status, Table};

/// Where an exit belongs.
enum Match {
    Init(String),
    Exec(String, String),
    Buffer,
    Ignore,
}

fn classify(t: &Table, e: &Exit) -> Match {
    for c in t.containers.values() {
        if c.init.pid == e.pid && c.init.status != Status::Stopped && c.pending_init_exit.is_none()
        {
            return if c.init.starting {
                Match::Buffer
            } else {
                Match::Init(c.id.clone())
            };
        }
        for x in c.execs.values() {
            if x.pid == e.pid && x.status != Status::Stopped {
                return if x.starting {
                    Match::Buffer
                } else {
                    Match::Exec(c.id.clone(), x.id.clone())
                };
            }
        }
    }
    if t.in_flight > 0 {
        Match::Buffer
    } else {
        Match::Ignore
    }
}

/// Consumes every reaped exit for the life of the daemon.
pub async fn run(table: Arc<Mutex<Table>>, events: Publisher, mut sub: Subscription) {
    while let Some(e) = sub.rx.recv().await {
        let job = {
            let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
            match classify(&t, &e) {
                Match::Buffer => {
                    t.early_exits.push(e);
                    None
                }
                Match::Ignore => None,
                Match::Exec(c, x) => {
                    exec_exited(&mut t, &events, &c, &x, e);
                    None
                }
                Match::Init(c) => init_exited(&mut t, &events, &c, e),
            }
        };
        if let Some(job) = job {
            job.spawn(table.clone(), events.clone());
        }
    }
}

/// Work an init's exit needs outside the table lock before it is published: resuming a
/// container that was paused (its other processes stay frozen otherwise, and `runc delete`
/// would wait on them; the Go shim resumes too) and killing what remains of a container
/// that shares a PID namespace.
pub struct InitJob {
    id: String,
    runc: crate::runc::Runc,
    resume: bool,
    kill_all: bool,
}

impl InitJob {
    /// Runs the job on its own task, then publishes the init's exit.
    ///
    /// Why a separate task: `runc resume`/`runc kill` are themselves children whose exits
    /// the exit loop must deliver; awaiting them on that loop would deadlock.
    pub fn spawn(self, table: Arc<Mutex<Table>>, events: Publisher) {
        let span = tracing::info_span!("init_exit", container_id = %self.id);
        tokio::spawn(
            async move {
                if self.resume {
                    if let Err(err) = self.runc.resume(&self.id).await {
                        tracing::warn!(error = %err, "resuming exited container from paused state");
                    }
                }
                if self.kill_all {
                    if let Err(err) = self.runc.kill(&self.id, libc::SIGKILL as u32, true).await {
                        tracing::debug!(error = %err, "kill --all after init exit");
                    }
                }
                let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
                maybe_finish_init(&mut t, &events, &self.id);
            }
            .instrument(span),
        );
    }
}

/// Dispatches an exit that is already known to belong to a process (also used by Start
/// and Create for buffered early exits). Returns a kill-all job for the caller to spawn.
pub fn deliver(t: &mut Table, events: &Publisher, e: Exit) -> Option<InitJob> {
    match classify(t, &e) {
        Match::Init(c) => init_exited(t, events, &c, e),
        Match::Exec(c, x) => {
            exec_exited(t, events, &c, &x, e);
            None
        }
        _ => None,
    }
}

fn exec_exited(t: &mut Table, events: &Publisher, cid: &str, xid: &str, e: Exit) {
    let Some(c) = t.containers.get_mut(cid) else {
        return;
    };
    let Some(x) = c.execs.get_mut(xid) else {
        return;
    };
    x.set_exited(e.status, e.at);
    publish_exit(events, cid, xid, e);
    c.running_execs = c.running_execs.saturating_sub(1);
    if c.running_execs == 0 && c.pending_init_exit.is_some() {
        maybe_finish_init(t, events, cid);
    }
}

/// Records the init exit; returns the job to run first when the container was paused or
/// shares a PID namespace (the exit is then finished by the job).
fn init_exited(t: &mut Table, events: &Publisher, cid: &str, e: Exit) -> Option<InitJob> {
    let c = t.containers.get_mut(cid)?;
    c.pending_init_exit = Some(e);
    let resume = matches!(c.init.status, Status::Paused | Status::Pausing);
    if resume || c.kill_all_on_exit {
        return Some(InitJob {
            id: c.id.clone(),
            runc: c.runc.clone(),
            resume,
            kill_all: c.kill_all_on_exit,
        });
    }
    maybe_finish_init(t, events, cid);
    None
}

/// Called once an init job has run (tests drive the job's steps by hand).
#[cfg(test)]
fn finish_after_job(t: &mut Table, events: &Publisher, cid: &str) {
    maybe_finish_init(t, events, cid);
}

/// Publishes the init's exit once no exec is running any more.
fn maybe_finish_init(t: &mut Table, events: &Publisher, cid: &str) {
    let Some(c) = t.containers.get_mut(cid) else {
        return;
    };
    if c.running_execs > 0 {
        return;
    }
    let Some(e) = c.pending_init_exit.take() else {
        return;
    };
    // Read before anything deletes the cgroup: the kernel counts the kill before the
    // process is reaped.
    let oom = c.cgroup.as_ref().and_then(|cg| cg.oom_kills()).unwrap_or(0) > 0;
    crate::failpoint!("shim.exit.before_record");
    record_exit(&c.bundle, &e, oom);
    crate::failpoint!("shim.exit.after_record");
    c.init.set_exited(e.status, e.at);
    publish_exit(events, cid, cid, e);
}

/// The exit record a manager reads when this shim is gone (berthd after a shim's death):
/// written whole before the exit is published anywhere.
fn record_exit(bundle: &std::path::Path, e: &Exit, oom_killed: bool) {
    let record = berth_proto::exit::ExitRecord {
        status: e.status,
        exited_at_ns: e
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        oom_killed,
    };
    if let Err(err) = record.write(bundle) {
        // A bundle that is gone (tests, or a manager that removed it) records nothing.
        tracing::debug!(bundle = %bundle.display(), error = %err, "exit record");
    }
}

fn publish_exit(events: &Publisher, cid: &str, id: &str, e: Exit) {
    tracing::info!(
        container_id = cid,
        id,
        pid = e.pid,
        status = e.status,
        "process exited"
    );
    let mut ev = TaskExit::new();
    ev.container_id = cid.to_string();
    ev.id = id.to_string();
    ev.pid = e.pid as u32;
    ev.exit_status = e.status;
    ev.exited_at = Some(timestamp(e.at)).into();
    events.publish(TASK_EXIT_EVENT_TOPIC, &ev);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdioSpec;
    use crate::options::RuncOptions;
    use crate::reaper::Reaper;
    use crate::runc::Runc;
    use crate::task::state::{Container, Process};
    use berth_proto::protobuf::Message;
    use std::path::PathBuf;
    use std::time::SystemTime;

    fn container(id: &str, init_pid: i32) -> Container {
        let mut init = Process::new(id, StdioSpec::default());
        init.pid = init_pid;
        init.status = Status::Running;
        let opts = RuncOptions::default();
        Container {
            id: id.into(),
            bundle: PathBuf::from("/nonexistent"),
            runc: Runc::new(
                &opts,
                "ns",
                &PathBuf::from("/nonexistent"),
                Arc::new(Reaper::default()),
            ),
            opts,
            init,
            execs: Default::default(),
            running_execs: 0,
            pending_init_exit: None,
            kill_all_on_exit: false,
            cgroup: None,
            rootfs_mounted: false,
            checkpoint: None,
        }
    }

    fn exit(pid: i32, status: u32) -> Exit {
        Exit {
            pid,
            status,
            at: SystemTime::now(),
        }
    }

    fn drain(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<crate::events::Envelope_>,
    ) -> Vec<(String, u32)> {
        let mut out = vec![];
        while let Ok(e) = rx.try_recv() {
            let ex = TaskExit::parse_from_bytes(&e.event.value).unwrap();
            out.push((ex.id, ex.exit_status));
        }
        out
    }

    #[test]
    fn init_exit_waits_for_running_execs() {
        let (events, mut rx) = Publisher::channel();
        let mut t = Table::default();
        let mut c = container("c", 100);
        let mut x = Process::new("x", StdioSpec::default());
        x.pid = 101;
        x.status = Status::Running;
        c.execs.insert("x".into(), x);
        c.running_execs = 1;
        t.containers.insert("c".into(), c);
        // The init dies first: nothing is published and Wait(init) is not released.
        assert!(deliver(&mut t, &events, exit(100, 137)).is_none());
        assert!(drain(&mut rx).is_empty());
        assert!(t.containers["c"].init.exit.is_none());
        // The exec's exit releases both, exec first.
        deliver(&mut t, &events, exit(101, 0));
        assert_eq!(
            drain(&mut rx),
            [("x".to_string(), 0), ("c".to_string(), 137)]
        );
        assert_eq!(t.containers["c"].init.exit.map(|e| e.0), Some(137));
        assert_eq!(t.containers["c"].init.status, Status::Stopped);
    }

    #[test]
    fn exits_of_starting_processes_are_buffered() {
        let (events, mut rx) = Publisher::channel();
        let mut t = Table::default();
        let mut c = container("c", 200);
        c.init.starting = true;
        t.containers.insert("c".into(), c);
        t.in_flight = 1;
        assert!(matches!(classify(&t, &exit(200, 0)), Match::Buffer));
        // Unknown pids are buffered only while something is in flight.
        assert!(matches!(classify(&t, &exit(999, 0)), Match::Buffer));
        t.early_exits.push(exit(200, 0));
        t.containers.get_mut("c").unwrap().init.starting = false;
        let e = t.take_early_exit(200).unwrap();
        deliver(&mut t, &events, e);
        assert_eq!(drain(&mut rx), [("c".to_string(), 0)]);
        t.end_in_flight();
        assert!(t.early_exits.is_empty());
        assert!(matches!(classify(&t, &exit(999, 0)), Match::Ignore));
    }

    #[test]
    fn kill_all_defers_the_init_exit() {
        let (events, mut rx) = Publisher::channel();
        let mut t = Table::default();
        let mut c = container("c", 300);
        c.kill_all_on_exit = true;
        t.containers.insert("c".into(), c);
        assert!(deliver(&mut t, &events, exit(300, 0)).is_some());
        assert!(drain(&mut rx).is_empty());
        finish_after_job(&mut t, &events, "c");
        assert_eq!(drain(&mut rx), [("c".to_string(), 0)]);
        // A second exit for a reused pid of a stopped init is not delivered again.
        assert!(matches!(classify(&t, &exit(300, 1)), Match::Ignore));
    }

    #[test]
    fn a_paused_init_is_resumed_before_its_exit_is_published() {
        let (events, mut rx) = Publisher::channel();
        let mut t = Table::default();
        for (id, pid, status) in [("p", 400, Status::Paused), ("q", 401, Status::Pausing)] {
            let mut c = container(id, pid);
            c.init.status = status;
            t.containers.insert(id.into(), c);
            let job = deliver(&mut t, &events, exit(pid, 137)).expect("a job");
            assert!(job.resume && !job.kill_all, "{id}");
            // Still paused until the job has run: State and Wait see no exit yet.
            assert!(drain(&mut rx).is_empty());
            assert_eq!(t.containers[id].init.status, status);
            finish_after_job(&mut t, &events, id);
            assert_eq!(drain(&mut rx), [(id.to_string(), 137)]);
            assert_eq!(t.containers[id].init.status, Status::Stopped);
        }
        // A running init without a shared PID namespace needs no job.
        t.containers.insert("r".into(), container("r", 402));
        assert!(deliver(&mut t, &events, exit(402, 0)).is_none());
    }
}
