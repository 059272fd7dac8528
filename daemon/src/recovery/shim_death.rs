//! A pod's shim died (kill -9, crash). berthd learns it at once from a broken Wait on the
//! pod's infra or a broken journal read (`watch`, `journal`), confirms the shim
//! no longer answers, then settles the pod: an exit the shim recorded in the bundle
//! (`berth-exit.json`, written before the shim published it) is reported with its real
//! status and time; a process the dead shim left running is killed through its cgroup and
//! reported as exit 137 with reason ShimDied; the runtime's state for those tasks goes;
//! the pod is NotReady. Mounts and dirs go with the usual RemoveContainer/RemovePodSandbox.

use std::sync::Arc;
use std::time::Duration;

use super::Recovery;
use crate::error::Result;
use crate::events::Kind;
use crate::records::{CtrState, PodRecord, PodState, Records};
use crate::shim_client::{kill_task_cgroup, runc_delete};
use crate::store::PODS;

/// How long a shim that broke a Wait gets to answer a fresh connection.
const PROBE: Duration = Duration::from_millis(500);

impl Recovery {
    /// Called when a Wait on the pod's shim failed: settles the pod if the shim is gone.
    pub(super) fn on_wait_failed(self: &Arc<Self>, pod_id: &str) {
        let rt = self.clone();
        let pod_id = pod_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = rt.settle_if_dead(&pod_id).await {
                tracing::warn!(pod_id = %pod_id, error = %e, "settling a dead shim");
            }
        });
    }

    async fn settle_if_dead(&self, pod_id: &str) -> Result<()> {
        let Some(pod) = self.store.get::<PodRecord>(PODS, pod_id)? else {
            return Ok(());
        };
        // A pod still being made has no shim of record; stops and removals in flight
        // are exactly what a dead shim would wedge, so those are settled too.
        if pod.shim_address.is_empty() || pod.op == Some(crate::intent::Op::Run) {
            return Ok(());
        }
        let alive = tokio::time::timeout(PROBE, self.shims.connect(&pod.shim_address))
            .await
            .is_ok_and(|r| r.is_ok());
        if alive {
            return Ok(());
        }
        // Only one settler per death: the first to drop the cached client.
        if self.shims.forget(pod_id).await.is_none() {
            return Ok(());
        }
        self.settle_dead_pod(&pod).await
    }

    /// Settles a pod whose shim is known to be gone (also at startup).
    pub(super) async fn settle_dead_pod(&self, pod: &PodRecord) -> Result<()> {
        let pod_id = pod.id.as_str();
        tracing::warn!(pod_id = %pod_id, "the pod's shim is gone; settling its tasks");
        self.metrics.shim_deaths.inc();
        // The pod first: a client that finds a container settled must find the pod
        // NotReady too, not in the while the runtime cleanup below takes.
        let updated = self
            .store
            .update_async(PODS, pod_id, |r: &mut PodRecord| {
                let was = r.state == PodState::Ready;
                if was {
                    r.set_not_ready();
                }
                was
            })
            .await?;
        if let Some(r) = updated {
            self.events
                .emit(Kind::Stopped, pod_id, pod_id, r.stopped_at);
        }
        for c in self.store.containers_of(pod_id)? {
            if c.state == CtrState::Running {
                self.containers.settle_without_shim(&c).await?;
            }
        }
        // The infra process: killed if the shim left it running.
        kill_task_cgroup(&pod.bundle).await;
        // The dead shim cannot delete its tasks' runtime state.
        runc_delete(pod_id).await;
        Ok(())
    }
}
