//! StartContainer, StopContainer and RemoveContainer: each marks its intent before its
//! first side effect and clears it with its last commit.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::events::Kind;
use crate::intent::Op;
use crate::records::{ContainerRecord, CtrState, Records};
use crate::shim_client::{forget_task, ShimHandle};
use crate::store::CONTAINERS;
use crate::util::now_ns;

use super::Containers;

/// The signal that stops a container: its recorded stop signal, SIGTERM when there is
/// none or the image named one that does not exist.
fn signal_number(name: &str) -> u32 {
    if name.is_empty() {
        return 15;
    }
    match crate::workload::signal::number(name) {
        Some(n) => n as u32,
        None => {
            tracing::warn!(signal = name, "unknown stop signal; stopping with SIGTERM");
            15
        }
    }
}

impl Containers {
    pub async fn start(&self, id: &str) -> Result<()> {
        let rec = self.store.container(id)?;
        if rec.state != CtrState::Created || rec.op.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {:?}, not created",
                rec.state
            )));
        }
        let pod = self.store.pod(&rec.pod_id)?;
        let shim = self.shim_of(&pod).await?;
        // The NRI plugins' StartContainer: one that fails it leaves the container Created.
        let _starting = self.nri.start_container(&pod, &rec).await?;
        // Stamped before the start: a fast process can exit (and be timed by the shim)
        // before the start call even returns. Recorded with the intent, so a start a
        // crash cuts is completed with this time.
        let started = now_ns();
        let marked = self
            .store
            .update_async(CONTAINERS, id, |r: &mut ContainerRecord| {
                if r.state != CtrState::Created || r.op.is_some() {
                    return false;
                }
                r.op = Some(Op::Start);
                r.started_at = started;
                true
            })
            .await?;
        if marked.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is being started or changed"
            )));
        }
        let res = async {
            crate::failpoint!("ctr.start.before_task");
            let pid = shim.start(id, None).await?;
            crate::failpoint!("ctr.start.after_task");
            Ok::<_, Error>(pid)
        }
        .await;
        let pid = match res {
            Ok(pid) => pid,
            Err(e) => {
                self.store
                    .update_async(CONTAINERS, id, |r: &mut ContainerRecord| {
                        r.op = None;
                        r.started_at = 0;
                        true
                    })
                    .await?;
                return Err(e);
            }
        };
        self.store
            .update_async(CONTAINERS, id, |r: &mut ContainerRecord| {
                r.pid = pid;
                r.state = CtrState::Running;
                r.op = None;
                true
            })
            .await?;
        self.events.emit(Kind::Started, id, &rec.pod_id, started);
        // Its exit comes through the pod shim's journal (`pod::journal`), maybe already.
        self.became_running(id)?;
        tracing::info!(container_id = %id, pid, "container started");
        if let Ok(rec) = self.store.container(id) {
            self.nri.post_start_container(&pod, &rec).await;
        }
        Ok(())
    }

    /// Stop signal, then SIGKILL after `timeout` seconds. Idempotent: an unknown id
    /// succeeds (kubelet retries stops of containers that are already gone).
    pub async fn stop(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(rec) = self.store.get::<ContainerRecord>(CONTAINERS, id)? else {
            return Ok(());
        };
        if rec.state != CtrState::Running {
            return Ok(());
        }
        let pod = self.store.pod(&rec.pod_id)?;
        // The intent, unless a removal's is there already; cleared on every way out below.
        self.store
            .update_async(CONTAINERS, id, |r: &mut ContainerRecord| {
                r.op.get_or_insert(Op::Stop);
                true
            })
            .await?;
        let stopped = match self.shim_of(&pod).await {
            Ok(shim) => self.signal_and_wait(&rec, &shim, timeout).await,
            Err(e) => Err(e),
        };
        // The shim died before or during the stop (the pod's settling may still be under
        // way), or it did not answer and has been put down: this container is settled
        // here, as the shim-death path does. A shim that fails otherwise keeps its tasks,
        // and the stop fails.
        let stopped = match stopped {
            Err(e)
                if self
                    .shims
                    .gone_or_put_down(&pod.id, &pod.shim_address, &e)
                    .await =>
            {
                tracing::warn!(container_id = %id, error = %e, "the pod's shim is gone; settling the container");
                match self.store.get::<ContainerRecord>(CONTAINERS, id)? {
                    Some(c) => self.settle_without_shim(&c).await,
                    None => Ok(()),
                }
            }
            other => other,
        };
        self.store
            .update_async(CONTAINERS, id, |r: &mut ContainerRecord| {
                let ours = r.op == Some(Op::Stop);
                if ours {
                    r.op = None;
                }
                ours
            })
            .await?;
        // The NRI plugins have heard of the stop when StopContainer returns.
        self.nri.stopped(id).await;
        stopped
    }

    /// The stop signal, a bounded wait, then SIGKILL for every process of the task.
    async fn signal_and_wait(
        &self,
        rec: &ContainerRecord,
        shim: &ShimHandle,
        timeout: i64,
    ) -> Result<()> {
        let id = rec.id.as_str();
        if timeout > 0 {
            match shim
                .kill(id, None, signal_number(&rec.stop_signal), false)
                .await
            {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            crate::failpoint!("ctr.stop.after_kill");
            if shim
                .wait(id, None, Duration::from_secs(timeout as u64))
                .await
                .is_ok()
            {
                return self.mark_exited(id, shim).await;
            }
        }
        match shim.kill(id, None, 9, true).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        crate::failpoint!("ctr.stop.after_kill");
        let _ = shim.wait(id, None, Duration::from_secs(10)).await;
        self.mark_exited(id, shim).await
    }

    async fn mark_exited(&self, id: &str, shim: &ShimHandle) -> Result<()> {
        if self.store.container(id)?.state == CtrState::Running {
            let st = shim.state(id).await?;
            self.record_exit(id, st.exit_status, st.exited_at)?;
        }
        Ok(())
    }

    /// Removes the container (stopping it first). Idempotent; unknown ids succeed.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let marked = self
            .store
            .update_async(CONTAINERS, id, |r: &mut ContainerRecord| {
                r.op = Some(Op::Remove);
                true
            })
            .await?;
        let Some(rec) = marked else {
            return Ok(());
        };
        self.stop(id, 0).await?;
        let pod_rec = self.store.pod(&rec.pod_id).ok();
        let shim = match &pod_rec {
            Some(pod) => self.shim_of(pod).await.ok().map(|s| (s, pod.clone())),
            None => None,
        };
        match shim {
            Some((shim, pod)) => match shim.delete(id, None).await {
                Ok(()) => {}
                // A cached client of a shim that has died since, or a hung one put down.
                Err(e)
                    if self
                        .shims
                        .gone_or_put_down(&pod.id, &pod.shim_address, &e)
                        .await =>
                {
                    tracing::warn!(container_id = %id, error = %e, "the pod's shim is gone");
                    forget_task(&rec.bundle, id).await;
                }
                Err(e) => return Err(e),
            },
            // Its shim is gone: the task's processes and runc state are removed here.
            None => forget_task(&rec.bundle, id).await,
        }
        crate::failpoint!("ctr.remove.after_delete");
        // Unmounts and a walk of the writable layer (any size): off the async workers.
        let (bundle, dir) = (rec.bundle.clone(), rec.dir.clone());
        tokio::task::spawn_blocking(move || {
            let _ = crate::util::unmount_under(&bundle);
            crate::util::remove_dirs(&[&bundle, &dir])
        })
        .await
        .map_err(|e| Error::Internal(format!("container directories: {e}")))??;
        let at = self.store.remove(CONTAINERS, id, &rec.name_key)?;
        // Snapshots of images removed while this container used them go now.
        if let Err(e) = self.images.release(id) {
            tracing::warn!(container_id = %id, error = %e, "releasing the container's snapshots");
        }
        self.release_copies(id).await;
        self.nri.remove_container(pod_rec.as_ref(), &rec).await;
        self.events.emit(Kind::Deleted, id, &rec.pod_id, at);
        tracing::info!(container_id = %id, "container removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals() {
        assert_eq!(signal_number(""), 15);
        assert_eq!(signal_number("SIGKILL"), 9);
        assert_eq!(signal_number("SIGQUIT"), 3);
        assert_eq!(signal_number("2"), 2);
        assert_eq!(signal_number("SIGPWR"), 30);
        assert_eq!(signal_number("SIGRTMIN+3") as i32, libc::SIGRTMIN() + 3);
        assert_eq!(signal_number("SIGBOGUS"), 15);
    }
}
