//! A Ready pod is watched: its infra process's exit makes it NotReady at once (a broken
//! Wait may mean the shim died, `shim_death`), and its containers' exits come through
//! the shim's journal (`journal`).

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::records::Records;
use crate::shim_client::ShimHandle;

use super::Recovery;

impl Recovery {
    /// Starts watching pod `id` through its shim.
    pub fn watch(self: &Arc<Self>, id: String, shim: ShimHandle) {
        self.watch_from(id, shim, false);
    }

    /// `recovering`: the pod was reconnected at startup, and what its journal holds
    /// beyond the record's position happened while berthd was down.
    pub(super) fn watch_from(self: &Arc<Self>, id: String, shim: ShimHandle, recovering: bool) {
        self.follow_journal(id.clone(), shim.clone(), recovering);
        let rec = self.clone();
        tokio::spawn(async move {
            // A pod without an infra process has no task to wait on: its shim's death
            // reaches it through the journal's follower.
            if rec.store.pod(&id).is_ok_and(|p| p.infra_less()) {
                return;
            }
            match shim
                .wait(&id, None, Duration::from_secs(365 * 24 * 3600))
                .await
            {
                Ok(_) => match rec.pods.mark_not_ready(&id) {
                    Ok(Some(_)) => {
                        tracing::warn!(pod_id = %id, "infra process exited; pod is NotReady")
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(pod_id = %id, error = %e, "marking NotReady"),
                },
                Err(Error::NotFound(_)) => {}
                Err(_) => rec.on_wait_failed(&id),
            }
        });
    }
}
