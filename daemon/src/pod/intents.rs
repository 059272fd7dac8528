//! Startup: operations a crash cut (records still carrying an intent, `crate::intent`)
//! are completed or rolled back before berthd serves, so no pod or container is left
//! half-made or in a state nobody can explain: a cut RunPodSandbox or CreateContainer is
//! undone with everything it had made; a cut StartContainer takes the task's state from
//! the shim; cut stops and removals are finished.

use std::sync::Arc;

use crate::container::{ContainerRecord, CtrState};
use crate::error::{Error, Result};
use crate::intent::Op;
use crate::runtime::Runtime;
use crate::store::CONTAINERS;

impl Runtime {
    pub(super) async fn resolve_intents(self: &Arc<Self>) -> Result<()> {
        // Containers first: a pod's own removal deals with its containers anyway.
        for c in self.containers()? {
            let Some(op) = c.op else { continue };
            tracing::warn!(container_id = %c.id, ?op, "finishing an operation a crash cut");
            let r = match op {
                Op::Create | Op::Remove => self.remove_container(&c.id).await,
                Op::Start => self.resolve_start(&c).await,
                Op::Stop => self.stop_container(&c.id, 0).await,
                Op::Run => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(container_id = %c.id, ?op, error = %e, "could not finish it");
            }
        }
        for p in self.pods()? {
            let Some(op) = p.op else { continue };
            tracing::warn!(pod_id = %p.id, ?op, "finishing an operation a crash cut");
            let r = match op {
                Op::Run | Op::Remove => self.remove_pod_sandbox(&p.id).await,
                Op::Stop => self.stop_pod_sandbox(&p.id).await,
                Op::Create | Op::Start => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(pod_id = %p.id, ?op, error = %e, "could not finish it");
            }
        }
        Ok(())
    }

    /// A cut start: the shim knows whether the process runs, ran, or never started.
    async fn resolve_start(self: &Arc<Self>, c: &ContainerRecord) -> Result<()> {
        let state = match self.pod(&c.pod_id) {
            Ok(pod) => match self.shim_of(&pod).await {
                Ok(shim) => shim.state(&c.id).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        // containerd's task status: 1 created, 2 running, 3 stopped.
        let (status, pid, code, exited_at) = match &state {
            Ok(st) => (
                st.status.value(),
                st.pid,
                st.exit_status,
                crate::pod::shim::ts_ns(&st.exited_at),
            ),
            Err(_) => (0, 0, 255, crate::pod::now_ns()),
        };
        self.store
            .update(CONTAINERS, &c.id, |r: &mut ContainerRecord| {
                r.op = None;
                match status {
                    1 => r.started_at = 0,
                    2 | 3 => {
                        r.state = CtrState::Running;
                        r.pid = pid;
                    }
                    _ => {
                        // Nothing to ask: the start cannot be completed.
                        r.state = CtrState::Exited;
                        r.exit_code = code as i32;
                        r.finished_at = exited_at;
                        r.reason = "StartInterrupted".into();
                    }
                }
                true
            })?
            .ok_or_else(|| Error::NotFound(format!("container {}", c.id)))?;
        if status == 3 {
            self.record_exit(&c.id, code, exited_at)?;
        }
        tracing::info!(container_id = %c.id, status, "cut start resolved");
        Ok(())
    }
}
