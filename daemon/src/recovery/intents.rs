//! Startup: operations a crash cut (records still carrying an intent, `crate::intent`)
//! are completed or rolled back before berthd serves, so no pod or container is left
//! half-made or in a state nobody can explain: a cut RunPodSandbox or CreateContainer is
//! undone with everything it had made; a cut StartContainer takes the task's state from
//! the shim; cut stops and removals are finished.

use std::sync::Arc;

use super::Recovery;
use crate::error::{Error, Result};
use crate::intent::Op;
use crate::records::{ContainerRecord, CtrState, Records};
use crate::shim_client::{kill_task_cgroup, TaskState, TaskStatus};
use crate::store::CONTAINERS;

impl Recovery {
    pub(super) async fn resolve_intents(self: &Arc<Self>) -> Result<()> {
        // Containers first: a pod's own removal deals with its containers anyway.
        for c in self.store.containers()? {
            let Some(op) = c.op else { continue };
            tracing::warn!(container_id = %c.id, ?op, "finishing an operation a crash cut");
            let r = match op {
                Op::Create | Op::Remove => self.containers.remove(&c.id).await,
                Op::Start => self.resolve_start(&c).await,
                Op::Stop => match self.containers.stop(&c.id, 0).await {
                    // Already exited (e.g. settled with a dead shim): the mark just goes.
                    Ok(()) => self.clear_op(&c.id, Op::Stop),
                    Err(e) => Err(e),
                },
                Op::Run => Ok(()),
            };
            if let Err(e) = &r {
                tracing::warn!(container_id = %c.id, ?op, error = %e, "could not finish it");
            }
            if op != Op::Run {
                self.count_intent(op, Op::Create, r.is_ok());
            }
        }
        for p in self.store.pods()? {
            let Some(op) = p.op else { continue };
            tracing::warn!(pod_id = %p.id, ?op, "finishing an operation a crash cut");
            let r = match op {
                Op::Run | Op::Remove => self.pods.remove(&p.id).await,
                Op::Stop => self.pods.stop(&p.id).await,
                Op::Create | Op::Start => Ok(()),
            };
            if let Err(e) = &r {
                tracing::warn!(pod_id = %p.id, ?op, error = %e, "could not finish it");
            }
            if !matches!(op, Op::Create | Op::Start) {
                self.count_intent(op, Op::Run, r.is_ok());
            }
        }
        Ok(())
    }

    /// Counts a resolved intent; `undone`: the operation whose cut is rolled back (a
    /// container's create, a pod's run).
    fn count_intent(&self, op: Op, undone: Op, ok: bool) {
        use crate::metrics::IntentOutcome;
        let name = match op {
            Op::Run => "run",
            Op::Create => "create",
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Remove => "remove",
        };
        let outcome = match (ok, op == undone) {
            (false, _) => IntentOutcome::Failed,
            (true, true) => IntentOutcome::RolledBack,
            (true, false) => IntentOutcome::Finished,
        };
        self.metrics.intent(name, outcome);
    }

    fn clear_op(&self, id: &str, op: Op) -> Result<()> {
        self.store
            .update(CONTAINERS, id, |r: &mut ContainerRecord| {
                let ours = r.op == Some(op);
                if ours {
                    r.op = None;
                }
                ours
            })?;
        Ok(())
    }

    /// A cut start: the shim knows whether the process runs, ran, or never started.
    async fn resolve_start(self: &Arc<Self>, c: &ContainerRecord) -> Result<()> {
        let query = || async {
            let pod = self.store.pod(&c.pod_id)?;
            self.pods.shim_of(&pod).await?.state(&c.id).await
        };
        let mut state = query().await;
        // The shim finishes a start its caller vanished from: one still in flight shows
        // as created for a few milliseconds more.
        if state
            .as_ref()
            .is_ok_and(|s| s.status == TaskStatus::Created)
        {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            state = query().await;
        }
        // Unknown: the shim could not be asked.
        let st = state.unwrap_or(TaskState {
            status: TaskStatus::Unknown,
            pid: 0,
            exit_status: 255,
            exited_at: crate::util::now_ns(),
        });
        let status = st.status;
        self.store
            .update(CONTAINERS, &c.id, |r: &mut ContainerRecord| {
                r.op = None;
                match status {
                    TaskStatus::Created => r.started_at = 0,
                    TaskStatus::Running | TaskStatus::Stopped => {
                        r.state = CtrState::Running;
                        r.pid = st.pid;
                    }
                    _ => {
                        // Nothing to ask: whatever may run is killed below.
                        r.state = CtrState::Running;
                    }
                }
                true
            })?
            .ok_or_else(|| Error::NotFound(format!("container {}", c.id)))?;
        // Recorded Running (also when unknowable): announced as started, as a restart
        // would derive it from the record.
        if status != TaskStatus::Created {
            self.events
                .emit(crate::events::Kind::Started, &c.id, &c.pod_id, c.started_at);
        }
        match status {
            TaskStatus::Created => {}
            TaskStatus::Running => self.containers.became_running(&c.id)?,
            TaskStatus::Stopped => {
                self.containers
                    .record_exit(&c.id, st.exit_status, st.exited_at)?
            }
            _ => {
                kill_task_cgroup(&c.bundle).await;
                self.containers
                    .record_exit_with(&c.id, 255, st.exited_at, "StartInterrupted")?;
            }
        }
        tracing::info!(container_id = %c.id, ?status, "cut start resolved");
        Ok(())
    }
}
