//! Exit handling and the event-order rules of the contract §7.5: TaskCreate/TaskStart
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
        let kill_all = {
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
        if let Some((id, runc)) = kill_all {
            // Why a separate task: `runc kill` is itself a child whose exit this very loop
            // must deliver; awaiting it here would deadlock.
            let table = table.clone();
            let events = events.clone();
            let span = tracing::info_span!("init_exit", container_id = %id);
            tokio::spawn(
                async move {
                    if let Err(err) = runc.kill(&id, libc::SIGKILL as u32, true).await {
                        tracing::debug!(error = %err, "kill --all after init exit");
                    }
                    {
                        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
                        maybe_finish_init(&mut t, &events, &id);
                    }
                }
                .instrument(span),
            );
        }
    }
}

/// Dispatches an exit that is already known to belong to a process (also used by Start
/// and Create for buffered early exits). Returns a kill-all job for the caller to spawn.
pub fn deliver(t: &mut Table, events: &Publisher, e: Exit) -> Option<(String, crate::runc::Runc)> {
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

/// Records the init exit; returns the kill-all job when the container shares a PID
/// namespace (the exit is then finished after the kill).
fn init_exited(
    t: &mut Table,
    events: &Publisher,
    cid: &str,
    e: Exit,
) -> Option<(String, crate::runc::Runc)> {
    let c = t.containers.get_mut(cid)?;
    c.pending_init_exit = Some(e);
    if c.kill_all_on_exit {
        return Some((c.id.clone(), c.runc.clone()));
    }
    maybe_finish_init(t, events, cid);
    None
}

/// Called once a kill-all job has run.
pub fn finish_after_kill_all(t: &mut Table, events: &Publisher, cid: &str) {
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
    c.init.set_exited(e.status, e.at);
    publish_exit(events, cid, cid, e);
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
