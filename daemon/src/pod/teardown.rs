//! StopPodSandbox and RemovePodSandbox: the infra task (or the pinned namespaces), the
//! network and the pod's directories go, also for a pod a crash cut half-made or whose shim died.

use std::path::Path;
use std::time::Duration;

use tracing::Instrument;

use crate::error::{Error, Result};
use crate::events::Kind;
use crate::intent::Op;
use crate::network::{Cni, NetNs, NetworkConfigList, PodNetArgs};
use crate::records::{PodRecord, PodState, Records};
use crate::shim_client::forget_task;
use crate::store::PODS;

use super::sandbox::{net_args, STOP_WAIT};
use super::Pods;

impl Pods {
    /// Stops the pod: kills its infra process, tears down its network. Idempotent; an
    /// unknown id succeeds (kubelet retries stops of pods it no longer knows).
    pub async fn stop(&self, id: &str) -> Result<()> {
        // The intent first (a removal's or a cut run's stays: it is the stronger one).
        let marked = self
            .store
            .update_async(PODS, id, |r: &mut PodRecord| {
                r.op.get_or_insert(Op::Stop);
                true
            })
            .await?;
        let Some(mut rec) = marked else {
            return Ok(());
        };
        // NRI plugins hear of a pod's stop once: a running pod's.
        let announce = crate::nri::convert::pod_running(&rec);
        let span = tracing::info_span!("stop_pod_sandbox", pod_id = %id);
        let res = async {
            // The pin's path is fixed by the pod id, so a cut run's netns is found too.
            let pinned = self.config.paths.state.join("netns").join(id);
            if rec.netns.is_none() && pinned.exists() {
                rec.netns = Some(pinned);
            }
            // Containers are killed side by side, not one after another (a pod's stop
            // kills without a grace period: kubelet has given its containers theirs).
            let containers = async {
                let stops = self
                    .store
                    .containers_of(id)?
                    .into_iter()
                    .map(|c| async move { self.containers.stop(&c.id, 0).await });
                for r in futures_util::future::join_all(stops).await {
                    r?;
                }
                crate::failpoint!("pod.stop.after_containers");
                // Its containers are stopped, its infra is still there.
                if announce {
                    self.nri.stop_pod_sandbox(&rec).await;
                }
                Ok::<(), Error>(())
            };
            // The stopped containers' tasks are deleted (`runc delete`) as containerd
            // deletes a task once it exits, then the infra goes: all while CNI unwires
            // the netns, so the removal has no runtime call left to wait for.
            let tasks_and_infra = async {
                let deleted = self.delete_tasks(&rec).await;
                self.stop_infra(&rec, deleted).await
            };
            let (infra, network) = if announce && self.nri.hears_pod_stops() {
                // NRI plugins hear of the stop before the network goes (containerd's
                // order).
                containers.await?;
                tokio::join!(tasks_and_infra, self.unwire(&rec))
            } else {
                // CNI DEL (the bridge plugin's veth teardown: most of a stop) runs while
                // the containers die: they are being killed, and the plugin releases the
                // IP only once the interface is gone.
                let infra = async {
                    containers.await?;
                    tasks_and_infra.await
                };
                tokio::join!(infra, self.unwire(&rec))
            };
            infra?;
            // The pod's /dev/shm goes with its processes (containerd unmounts it at the
            // stop too): its memory is freed now, not when kubelet removes the pod. By
            // its fixed path, so a cut run's is found too.
            super::files::unmount_shm(&rec.files);
            let released = network?;
            crate::failpoint!("pod.stop.after_infra");
            // Written through `update`: a removal may have marked the record meanwhile.
            let mut was_ready = false;
            let mut stopped_at = 0;
            self.store
                .update_async(PODS, id, |r: &mut PodRecord| {
                    was_ready = r.state == PodState::Ready;
                    if was_ready {
                        r.set_not_ready();
                    }
                    stopped_at = r.stopped_at;
                    r.pid = 0;
                    // A network whose DEL kept failing stays named (its pin is gone): the
                    // next stop, or the removal, tries DEL again, without a netns.
                    if released {
                        r.netns = None;
                    }
                    if r.op == Some(Op::Stop) {
                        r.op = None;
                    }
                    true
                })
                .await?;
            if was_ready {
                self.events.emit(Kind::Stopped, id, id, stopped_at);
            }
            tracing::info!("pod stopped");
            Ok(())
        }
        .instrument(span)
        .await;
        if res.is_err() {
            // A failed stop is retried by kubelet; its mark must not outlive it.
            let _ = self
                .store
                .update_async(PODS, id, |r: &mut PodRecord| {
                    let ours = r.op == Some(Op::Stop);
                    if ours {
                        r.op = None;
                    }
                    ours
                })
                .await;
        }
        res
    }

    /// Deletes the tasks of the pod's exited containers in its shim, side by side (their
    /// records stay until RemoveContainer, whose delete then finds none). Whether every
    /// container's task is gone; a failure is logged (the removal deletes again).
    async fn delete_tasks(&self, rec: &PodRecord) -> bool {
        let Ok(ctrs) = self.store.containers_of(&rec.id) else {
            return false;
        };
        if ctrs.is_empty() {
            return true;
        }
        let Ok(shim) = self.shim_of(rec).await else {
            return false;
        };
        let deletes = ctrs.iter().map(|c| {
            let shim = shim.clone();
            async move {
                if c.state != crate::records::CtrState::Exited {
                    return false;
                }
                match shim.delete(&c.id, None).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(container_id = %c.id, error = %e, "deleting a stopped container's task; its removal tries again");
                        false
                    }
                }
            }
        });
        futures_util::future::join_all(deletes)
            .await
            .into_iter()
            .all(|d| d)
    }

    /// Kills and deletes the infra task. A RunPodSandbox cut by a crash may have started
    /// the shim and the infra process without recording them: they are found through the
    /// bundle's address.
    ///
    /// `tasks_gone`: no container task is left in the shim, so once the infra goes the
    /// shim exits, and the stop waits for that (bounded): a shim left exiting on its own
    /// would take the next call's connection and drop it (the removal's).
    async fn stop_infra(&self, rec: &PodRecord, tasks_gone: bool) -> Result<()> {
        let id = rec.id.as_str();
        // Pinned namespaces (a pod without an infra process) go; the pin dir is named by
        // the pod id, so a cut run's is found too. Unmounts: off the async workers.
        let (state, pod) = (self.config.paths.state.clone(), rec.id.clone());
        tokio::task::spawn_blocking(move || super::pins::remove(&state, &pod))
            .await
            .map_err(|e| Error::Internal(format!("pod namespaces: {e}")))??;
        let shim = if rec.pid != 0 || !rec.shim_address.is_empty() {
            self.shim_of(rec).await.ok()
        } else {
            self.shims.leftover(&rec.bundle).await
        };
        if rec.infra_less() {
            // No infra task; the shim goes once it holds no container task (else at the
            // removal, `remove`). Forgotten after: a client forgotten first would keep the
            // journal's follower from settling a pod whose shim really died meanwhile (it
            // settles only a cached shim); the follower may take this exit for a death and
            // settle the pod too, which only marks it NotReady as this stop does.
            if let Some(shim) = shim {
                shim.shutdown(tasks_gone || self.store.containers_of(id)?.is_empty())
                    .await;
            }
            self.shims.forget(id).await;
            return Ok(());
        }
        if let Some(shim) = shim {
            match shim.kill(id, None, libc::SIGKILL as u32, true).await {
                Ok(()) | Err(Error::NotFound(_)) => {}
                // A cached client of a shim that has died since (its settling may still be
                // under way), or one that did not answer and has been put down: the task
                // is cleaned here instead.
                Err(e)
                    if self.shims.gone_or_put_down(id, &rec.shim_address, &e).await
                        || !self.shims.answers(&rec.shim_address, id).await =>
                {
                    tracing::warn!(pod_id = %id, error = %e, "the pod's shim is gone");
                    self.shims.forget(id).await;
                    forget_task(&rec.bundle, id).await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            let _ = shim.wait(id, None, STOP_WAIT).await;
            shim.delete(id, None).await?;
            self.shims.forget(id).await;
            shim.shutdown(tasks_gone || self.store.containers_of(id)?.is_empty())
                .await;
        } else {
            // No shim answers (it died, maybe inside the infra's create or start): what
            // runs in the infra's cgroup is killed and its runc state deleted here.
            forget_task(&rec.bundle, id).await;
        }
        self.shims.forget(id).await;
        Ok(())
    }

    /// CNI DEL (retried) and the netns pin's removal; whether the network was released.
    /// A DEL that keeps failing is logged and the pin removed anyway (the namespace and
    /// its interfaces go with it): kubelet must always be able to stop and remove a pod,
    /// and what a broken plugin may keep is its own IPAM allocation (docs/berthd.md).
    async fn unwire(&self, rec: &PodRecord) -> Result<bool> {
        let Some(ns) = rec.netns.clone() else {
            return Ok(true);
        };
        let released = match self.cni.load_for(&rec.network) {
            Ok(Some(list)) => {
                let args = net_args(&rec.id, &rec.config, self.node.pod_cidr());
                // A pin without its namespace (a crash) is DEL'd without one: IPAM only.
                let present = NetNs::is_pinned(&ns).then_some(ns.as_path());
                del_retried(&self.cni, &list, present, &args).await.is_ok()
            }
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(pod_id = %rec.id, error = %e, "no CNI config to unwire the pod with");
                false
            }
        };
        if !released {
            tracing::warn!(
                pod_id = %rec.id,
                network = %rec.network,
                "CNI DEL keeps failing: the netns goes, the network is released again at the next stop or removal"
            );
        }
        // A lazy unmount and an unlink: off the async workers.
        tokio::task::spawn_blocking(move || NetNs { path: ns }.remove())
            .await
            .map_err(|e| Error::Internal(format!("netns: {e}")))??;
        Ok(released)
    }

    /// Removes the pod (stopping it first). Idempotent; an unknown id succeeds.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let marked = self
            .store
            .update_async(PODS, id, |r: &mut PodRecord| {
                r.op = Some(Op::Remove);
                true
            })
            .await?;
        let Some(rec) = marked else {
            return Ok(());
        };
        // Side by side: each is its own `runc delete` through the shim.
        let removals = self
            .store
            .containers_of(id)?
            .into_iter()
            .map(|c| async move { self.containers.remove(&c.id).await });
        for r in futures_util::future::join_all(removals).await {
            r?;
        }
        self.stop(id).await?;
        crate::failpoint!("pod.remove.after_stop");
        // The shim stayed up while containers were recorded; with none left it may go.
        let shim = match rec.shim_address.as_str() {
            "" => self.shims.leftover(&rec.bundle).await,
            a => self.shims.connect(a).await.ok(),
        };
        if let Some(shim) = shim {
            shim.shutdown(true).await;
        }
        self.shims.forget(id).await;
        // A sandbox image's rootfs the shim did not get to unmount goes first, then the
        // remapped copies of its layers a user-namespaced pod's infra used.
        // Unmounts and directory walks: off the async workers.
        let copies = crate::image::remap::Copies::new(&self.config.paths.root);
        let (owner, bundle, files) = (id.to_string(), rec.bundle.clone(), rec.files.clone());
        tokio::task::spawn_blocking(move || {
            let _ = crate::util::unmount_under(&bundle);
            super::files::unmount_shm(&files);
            copies.release(&owner);
            crate::util::remove_dirs(&[&bundle, &files])
        })
        .await
        .map_err(|e| Error::Internal(format!("pod directories: {e}")))??;
        if let Some(r) = self
            .store
            .get::<PodRecord>(PODS, id)?
            .filter(|r| r.netns.is_some())
        {
            // The last chance to release it went by (logged by `unwire`): kubelet removes.
            tracing::error!(pod_id = %id, network = %r.network, ips = ?r.ips, "pod removed with its CNI DEL failing: the plugin may keep its IP allocation");
        }
        let at = self.store.remove(PODS, id, &rec.name_key)?;
        self.nri.remove_pod_sandbox(&rec).await;
        self.events.emit(Kind::Deleted, id, id, at);
        tracing::info!(pod_id = %id, "pod removed");
        Ok(())
    }
}

/// How many times one stop (or rollback) tries a failing CNI DEL, and the pause before
/// each retry (doubled every time).
const DEL_ATTEMPTS: u32 = 3;
const DEL_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// CNI DEL, tried DEL_ATTEMPTS times (each plugin call bounded by the configured
/// plugin timeout); the last error when every attempt failed.
pub(super) async fn del_retried(
    cni: &Cni,
    list: &NetworkConfigList,
    netns: Option<&Path>,
    args: &PodNetArgs,
) -> Result<()> {
    let mut pause = DEL_RETRY_PAUSE;
    let mut attempt = 1;
    loop {
        match cni.del(list, netns, args).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= DEL_ATTEMPTS => {
                tracing::warn!(pod_id = %args.sandbox_id, error = %e, attempts = attempt, "CNI DEL failed");
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(pod_id = %args.sandbox_id, error = %e, attempt, "CNI DEL failed; retrying");
            }
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
        attempt += 1;
    }
}
