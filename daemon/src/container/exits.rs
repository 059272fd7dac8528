//! A container's exit, recorded exactly once whoever learns of it first: the shim's
//! journal (`recovery::journal`), StopContainer, a cut start resolved at startup, or a
//! dead shim's exit record (`recovery::shim_death`). Every one of them ends in
//! [`Containers::record_exit_with`], which marks the record Exited and emits STOPPED.

use std::path::PathBuf;

use crate::error::Result;
use crate::events::Kind;
use crate::intent::Op;
use crate::records::{ContainerRecord, CtrState, Records};
use berth_proto::exit::ExitRecord;

use crate::shim_client::{kill_task_cgroup, runc_delete, Exit};
use crate::store::CONTAINERS;

use super::Containers;

/// True when the cgroup (v1 `memory.oom_control` or v2 `memory.events`) counted an OOM kill.
fn oom_killed(parent: &str, id: &str) -> bool {
    let rel = format!("{}/{id}", parent.trim_matches('/'));
    let v1 = PathBuf::from("/sys/fs/cgroup/memory")
        .join(&rel)
        .join("memory.oom_control");
    let v2 = PathBuf::from("/sys/fs/cgroup")
        .join(&rel)
        .join("memory.events");
    [v1, v2].iter().any(|f| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .is_some_and(|n| n > 0)
    })
}

impl Containers {
    /// Records a Running container's exit once: the exit watcher and StopContainer may
    /// both learn of it, and only the first records it and emits STOPPED.
    pub fn record_exit(&self, id: &str, code: u32, at: i64) -> Result<()> {
        let rec = self.store.container(id)?;
        if rec.state != CtrState::Running {
            return Ok(());
        }
        let reason = self.exit_reason(&rec, code);
        self.record_exit_with(id, code, at, &reason)
    }

    /// Marks a Running container Exited with `reason`, once (the first caller wins and
    /// emits STOPPED).
    pub fn record_exit_with(&self, id: &str, code: u32, at: i64, reason: &str) -> Result<()> {
        let updated = self
            .store
            .update(CONTAINERS, id, |r: &mut ContainerRecord| {
                if r.state != CtrState::Running {
                    return false;
                }
                r.state = CtrState::Exited;
                r.exit_code = code as i32;
                r.finished_at = at;
                r.reason = reason.to_string();
                true
            })?;
        if let Some(r) = updated {
            self.events.emit(Kind::Stopped, id, &r.pod_id, at);
            tracing::info!(container_id = %id, exit_code = code, reason, "container exited");
            self.nri.container_stopped(id);
        }
        Ok(())
    }

    /// Marks a Created or Running container Exited with `code` and `reason` when its
    /// process is known to be gone but its exit is not (a reboot ended it), once.
    pub fn record_lost(&self, id: &str, code: u32, at: i64, reason: &str) -> Result<()> {
        let updated = self
            .store
            .update(CONTAINERS, id, |r: &mut ContainerRecord| {
                if !matches!(r.state, CtrState::Created | CtrState::Running) {
                    return false;
                }
                r.state = CtrState::Exited;
                r.exit_code = code as i32;
                r.finished_at = at;
                r.pid = 0;
                r.reason = reason.to_string();
                true
            })?;
        if let Some(r) = updated {
            self.events.emit(Kind::Stopped, id, &r.pod_id, at);
            tracing::info!(container_id = %id, exit_code = code, reason, "container lost");
            self.nri.container_stopped(id);
        }
        Ok(())
    }

    /// Completed, Error, or OOMKilled when the kernel's OOM killer fired in the
    /// container's memory cgroup (read while the task, and so its cgroup, still exists).
    pub fn exit_reason(&self, rec: &ContainerRecord, code: u32) -> String {
        let pod_parent = self
            .store
            .pod(&rec.pod_id)
            .map(|p| p.cgroup_parent(&self.config.runtime.cgroup_parent))
            .unwrap_or_default();
        if code != 0 && oom_killed(&pod_parent, &rec.id) {
            return "OOMKilled".into();
        }
        if code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        }
    }

    /// An exit from the journal. A container whose StartContainer has not yet recorded it
    /// Running keeps the exit until it does (`became_running`); the gate makes the look
    /// and the keep one step against that update.
    pub fn exit_seen(&self, id: &str, exit: Exit) -> Result<()> {
        let mut early = self.early_exits.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rec) = self.store.get::<ContainerRecord>(CONTAINERS, id)? else {
            return Ok(());
        };
        match rec.state {
            CtrState::Running => {
                drop(early);
                self.record_exit(id, exit.status, exit.at)
            }
            CtrState::Created if rec.op == Some(Op::Start) => {
                early.insert(id.to_string(), exit);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Called right after a container is recorded Running: an exit the journal delivered
    /// before that is recorded now.
    pub fn became_running(&self, id: &str) -> Result<()> {
        let kept = self
            .early_exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        match kept {
            Some(exit) => self.record_exit(id, exit.status, exit.at),
            None => Ok(()),
        }
    }

    /// A Running container whose shim is gone: the exit the shim recorded in the bundle
    /// (written before it published it) with its real status and time; else what the
    /// dead shim left running is killed through its cgroup and reported as 137
    /// ShimDied. The runtime's state for the task goes either way.
    pub async fn settle_without_shim(&self, c: &ContainerRecord) -> Result<()> {
        match ExitRecord::read(&c.bundle) {
            Some(ExitRecord {
                status,
                exited_at_ns: at,
                oom_killed: oom,
            }) => {
                tracing::info!(container_id = %c.id, status, oom, "exit recorded by the dead shim");
                if oom && status != 0 {
                    self.record_exit_with(&c.id, status, at, "OOMKilled")?;
                } else {
                    self.record_exit(&c.id, status, at)?;
                }
            }
            None => {
                tracing::warn!(container_id = %c.id, "killing a process its dead shim left");
                kill_task_cgroup(&c.bundle).await;
                self.record_exit_with(&c.id, 137, crate::util::now_ns(), "ShimDied")?;
            }
        }
        runc_delete(&c.id).await;
        Ok(())
    }
}
