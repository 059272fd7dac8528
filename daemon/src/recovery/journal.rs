//! Following a pod shim's event journal (Berth's `berth.shim.v1.Journal`): container
//! exits are applied from it in the order they happened, and the number of the last entry
//! applied is kept in the pod record, so a restarted berthd reads exactly the transitions
//! it missed. If the shim's bounded journal has dropped some of those, each running
//! container's state is asked instead. A broken read may mean the shim died
//! (`shim_death`). The infra process has its own watch (`watch`).

use std::sync::Arc;
use std::time::Duration;

use super::Recovery;
use crate::error::Result;
use crate::records::{CtrState, PodRecord, Records};
use crate::shim_client::{JournalEntry, ShimHandle, TaskStatus};
use crate::store::PODS;

/// One read waits this long for the next entry.
const WAIT: Duration = Duration::from_secs(30);

impl Recovery {
    /// `recovering`: berthd has just reconnected the shim, and the first read takes what
    /// the journal holds now, without waiting: exactly what happened while berthd was
    /// down (counted as replayed).
    pub(super) fn follow_journal(
        self: &Arc<Self>,
        pod_id: String,
        shim: ShimHandle,
        recovering: bool,
    ) {
        let rt = self.clone();
        tokio::spawn(async move {
            let Ok(Some(pod)) = rt.store.get::<PodRecord>(PODS, &pod_id) else {
                return;
            };
            let mut after = pod.journal_seq;
            let mut caught_up = false;
            let mut wait = if recovering { Duration::ZERO } else { WAIT };
            loop {
                let read = shim.read_journal(after, wait).await;
                wait = WAIT;
                let (entries, first) = match read {
                    Ok(r) => (r.entries, r.first),
                    // A shim that does not answer (stopped, wedged) is not a dead one: it is
                    // read again, and whatever it journals meanwhile comes when it answers.
                    Err(crate::error::Error::DeadlineExceeded(e)) => {
                        if !rt.shims.gone(&pod.shim_address) {
                            tracing::warn!(pod_id = %pod_id, error = %e, "the pod's shim does not answer; still following it");
                            continue;
                        }
                        rt.on_wait_failed(&pod_id);
                        return;
                    }
                    Err(_) => {
                        rt.on_wait_failed(&pod_id);
                        return;
                    }
                };
                if first > after + 1 {
                    tracing::warn!(pod_id = %pod_id, after, first, "journal entries were dropped; asking the tasks");
                    if let Err(e) = rt.resync(&pod_id, &shim).await {
                        tracing::warn!(pod_id = %pod_id, error = %e, "resync from task state");
                    }
                }
                // The first read after a reconnect at startup: what berthd missed.
                let replaying = recovering && !caught_up;
                if !caught_up {
                    // What berthd missed (while it was down): exactly these entries.
                    caught_up = true;
                    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                    tracing::info!(pod_id = %pod_id, after, replayed = ?seqs, "journal followed");
                }
                let Some(last) = entries.last().map(|e| e.seq) else {
                    continue;
                };
                for e in &entries {
                    match rt.apply_entry(&pod_id, e) {
                        Ok(true) if replaying => {
                            rt.metrics.exits_replayed.inc();
                        }
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(pod_id = %pod_id, seq = e.seq, error = %err, "applying a journal entry")
                        }
                    }
                }
                after = last;
                let kept = rt
                    .store
                    .update_async(PODS, &pod_id, |r: &mut PodRecord| {
                        let newer = last > r.journal_seq;
                        if newer {
                            r.journal_seq = last;
                        }
                        newer
                    })
                    .await;
                if let Ok(None) = rt.store.get::<PodRecord>(PODS, &pod_id) {
                    return; // the pod is gone
                }
                if let Err(e) = kept {
                    tracing::warn!(pod_id = %pod_id, error = %e, "keeping the journal position");
                }
            }
        });
    }

    /// Applies one entry: an init's exit is the container's exit (true: it was one).
    fn apply_entry(&self, pod_id: &str, e: &JournalEntry) -> Result<bool> {
        let Some(x) = &e.exit else {
            return Ok(false);
        };
        // Execs' exits are the exec calls' business; the infra's is watched on its own.
        if x.exec_id.is_some() || x.container_id == pod_id {
            return Ok(false);
        }
        self.containers.exit_seen(&x.container_id, x.exit)?;
        Ok(true)
    }

    /// The journal lost entries: every container recorded Running is asked its state.
    async fn resync(&self, pod_id: &str, shim: &ShimHandle) -> Result<()> {
        for c in self.store.containers_of(pod_id)? {
            if c.state != CtrState::Running {
                continue;
            }
            let st = shim.state(&c.id).await?;
            if st.status == TaskStatus::Stopped {
                self.containers
                    .record_exit(&c.id, st.exit_status, st.exited_at)?;
            }
        }
        Ok(())
    }
}
