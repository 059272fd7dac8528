//! Startup: reconnect the shims of recorded pods (in parallel, each bounded, so a wedged
//! shim never blocks startup), finish the operations a crash cut (`intents`), give
//! running containers their exit watch back, then remove leftovers that no record owns
//! (`orphans`).

use std::sync::Arc;
use std::time::Duration;

use super::Recovery;
use crate::error::{Error, Result};
use crate::events::Kind;
use crate::metrics::PodOutcome;
use crate::records::{PodRecord, PodState, Records};
use crate::store::PODS;

use crate::shim_client::TaskStatus;

const RECONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Recovery {
    /// Brings the records in line with what survived, before berthd serves.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        let began = std::time::Instant::now();
        let res = self.recover_all().await;
        self.metrics.duration.set(began.elapsed().as_secs_f64());
        res
    }

    async fn recover_all(self: &Arc<Self>) -> Result<()> {
        let t0 = std::time::Instant::now();
        let pods: Vec<PodRecord> = self.store.list(PODS)?;
        self.restore_events(&pods)?;
        let read = t0.elapsed();
        // A reboot ended some pods (or all): settled without waiting on their shims.
        let boot = super::reboot::current_boot();
        let new_boot = super::reboot::booted_since(&self.config.paths.root, boot.as_deref());
        if new_boot {
            tracing::warn!("the node rebooted since berthd last ran: settling every pod");
        }
        let (lost, pods): (Vec<PodRecord>, Vec<PodRecord>) = pods
            .into_iter()
            .partition(|p| self.lost_to_reboot(p, new_boot));
        let wired = self.settle_rebooted(&lost).await?;
        let mut tasks = Vec::new();
        for rec in &pods {
            if rec.bundle.join("log").exists() {
                crate::pod::shim_log::follow(&rec.bundle, &rec.id);
            }
        }
        for rec in pods.iter().filter(|p| p.state == PodState::Ready).cloned() {
            let rt = self.clone();
            tasks.push(tokio::spawn(async move {
                // Connect and ask, each bounded. A shim that took the connection but does
                // not answer is hung (stopped, wedged), not dead: the pod and its
                // containers stay as recorded and are followed until it answers again
                // (SIGCONT), and startup does not wait for it.
                let shim = match tokio::time::timeout(
                    RECONNECT_TIMEOUT,
                    rt.shims.connect(&rec.shim_address),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(Error::DeadlineExceeded("connect".into())),
                };
                let res = match shim {
                    // No infra task to ask about: the shim took the connection, and its
                    // journal's follower (started below) reads it next; a hung shim is
                    // noticed there and followed until it answers, as below.
                    Ok(shim) if rec.infra_less() => Ok(Ok((shim, true))),
                    Ok(shim) => {
                        match tokio::time::timeout(RECONNECT_TIMEOUT, shim.state(&rec.id)).await {
                            Err(_) | Ok(Err(Error::DeadlineExceeded(_))) => {
                                tracing::warn!(pod_id = %rec.id, "the pod's shim does not answer; its pod is kept as recorded and followed");
                                rt.shims.insert(&rec.id, shim.clone()).await;
                                rt.watch(rec.id.clone(), shim);
                                return;
                            }
                            Ok(st) => Ok(st.map(|st| (shim, st.status == TaskStatus::Running))),
                        }
                    }
                    Err(Error::DeadlineExceeded(_)) => Err(()),
                    Err(e) => Ok(Err(e)),
                };
                match res {
                    Ok(Ok((shim, true))) => {
                        rt.shims.insert(&rec.id, shim.clone()).await;
                        rt.watch_from(rec.id.clone(), shim, true);
                        rt.metrics.pod(PodOutcome::Reconnected);
                        tracing::info!(pod_id = %rec.id, "shim reconnected");
                    }
                    Ok(Err(e)) if rt.shims.gone(&rec.shim_address) => {
                        // The shim died while berthd was down: its tasks are settled from
                        // the exits it recorded, what it left running is killed.
                        tracing::warn!(pod_id = %rec.id, error = %e, "shim is gone");
                        rt.metrics.pod(PodOutcome::ShimGone);
                        if let Err(e) = rt.settle_dead_pod(&rec).await {
                            tracing::warn!(pod_id = %rec.id, error = %e, "settling a dead shim");
                        }
                    }
                    other => {
                        if let Ok(Ok((shim, false))) = &other {
                            // The shim lives and so may the pod's containers.
                            rt.shims.insert(&rec.id, shim.clone()).await;
                            rt.follow_journal(rec.id.clone(), shim.clone(), true);
                        }
                        rt.metrics.pod(PodOutcome::NotReady);
                        let why = match other {
                            Ok(Ok(_)) => "infra process exited while berthd was down".to_string(),
                            Ok(Err(e)) => format!("shim unreachable: {e}"),
                            Err(_) => "shim did not answer in time".to_string(),
                        };
                        tracing::warn!(pod_id = %rec.id, reason = %why, "pod is NotReady");
                        let mut rec = rec;
                        rec.set_not_ready();
                        if rt.store.put(PODS, &rec.id.clone(), &rec).is_ok() {
                            rt.events
                                .emit(Kind::Stopped, &rec.id, &rec.id, rec.stopped_at);
                        }
                    }
                }
            }));
        }
        let count = tasks.len();
        for t in tasks {
            let _ = t.await;
        }
        let reconnected = t0.elapsed();
        self.resolve_intents().await?;
        self.recover_containers().await?;
        let settled = t0.elapsed();
        self.remove_orphans().await?;
        self.release_networks(wired);
        super::reboot::remember_boot(&self.config.paths.root, boot.as_deref())?;
        // Where a slow restart's time went (records read, shims reconnected, cut
        // operations and containers settled, leftovers swept), each since the start.
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        tracing::info!(
            pods = count,
            records_ms = %ms(read),
            reconnected_ms = %ms(reconnected),
            settled_ms = %ms(settled),
            total_ms = %ms(t0.elapsed()),
            "recovered"
        );
        Ok(())
    }

    /// Before anything changes: the transitions the records show and no GetContainerEvents
    /// client received are queued for the next one. Pods and containers whose creation a
    /// crash cut were never announced, and their rollback is not either.
    fn restore_events(&self, pods: &[PodRecord]) -> Result<()> {
        use crate::events::ledger::History;
        use crate::intent::Op;
        use crate::records::CtrState;
        let mut histories = Vec::new();
        let mut unannounced = Vec::new();
        for p in pods {
            if p.op == Some(Op::Run) {
                unannounced.push(p.id.clone());
                continue;
            }
            let mut happened = vec![(Kind::Created, p.created_at), (Kind::Started, p.created_at)];
            if p.state == PodState::NotReady {
                let at = if p.stopped_at != 0 {
                    p.stopped_at
                } else {
                    crate::util::now_ns()
                };
                happened.push((Kind::Stopped, at));
            }
            histories.push(History {
                id: p.id.clone(),
                pod_id: p.id.clone(),
                happened,
            });
        }
        for c in self.store.containers()? {
            if c.op == Some(Op::Create) {
                unannounced.push(c.id.clone());
                continue;
            }
            let mut happened = vec![(Kind::Created, c.created_at)];
            if c.state != CtrState::Created && c.started_at != 0 {
                happened.push((Kind::Started, c.started_at));
            }
            if c.state == CtrState::Exited {
                happened.push((Kind::Stopped, c.finished_at));
            }
            histories.push(History {
                id: c.id.clone(),
                pod_id: c.pod_id.clone(),
                happened,
            });
        }
        self.events.restore(&histories, unannounced)
    }

    /// Running containers' exits come through their pod shim's journal, which replays
    /// those that happened while berthd was down with their real status and time. A
    /// container whose pod shim does not answer is marked exited (ShimUnreachable).
    pub(super) async fn recover_containers(self: &Arc<Self>) -> Result<()> {
        use crate::records::CtrState;
        for c in self.store.containers()? {
            if c.state != CtrState::Running {
                continue;
            }
            if self.shims.cached(&c.pod_id).await.is_none() {
                tracing::warn!(container_id = %c.id, "pod shim does not answer; exit unknown");
                let now = crate::util::now_ns();
                self.containers
                    .record_exit_with(&c.id, 255, now, "ShimUnreachable")?;
            }
        }
        Ok(())
    }
}
