//! CreateContainer, StartContainer, StopContainer, RemoveContainer: each records its state
//! before answering and undoes what it made when a later step fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};

use crate::error::{Error, Result};
use crate::events::Kind;
use crate::intent::Op;
use crate::pod::{PodRecord, PodState};
use crate::runtime::Runtime;
use crate::shim_client::{NewTask, RootfsMount, ShimHandle};
use crate::store::CONTAINERS;
use crate::util::{new_id, now_ns, validate_name};

use super::{ContainerRecord, CtrState};

fn signal_number(name: &str) -> u32 {
    let n = name.trim_start_matches("SIG");
    match n {
        "" | "TERM" => 15,
        "KILL" => 9,
        "INT" => 2,
        "QUIT" => 3,
        "HUP" => 1,
        "USR1" => 10,
        "USR2" => 12,
        "WINCH" => 28,
        other => other.parse().unwrap_or(15),
    }
}

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

/// As containerd: a missing host path of a bind mount is created (0755); bidirectional
/// propagation needs a shared source mount, host-to-container needs shared or slave,
/// otherwise it could never work and the user is told so.
fn prepare_host_paths(mounts: &[k8s_cri::v1::Mount]) -> Result<()> {
    use k8s_cri::v1::MountPropagation as P;
    for m in mounts.iter().filter(|m| m.image.is_none()) {
        let host = std::path::Path::new(&m.host_path);
        if !host.is_absolute()
            || host
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Error::InvalidArgument(format!(
                "mount host path {:?} must be absolute without '..'",
                m.host_path
            )));
        }
        if std::fs::symlink_metadata(host).is_err() {
            std::fs::create_dir_all(host)
                .map_err(|e| Error::io(format!("create host path {}", host.display()), e))?;
        }
        let prop = crate::util::mount_of(host)
            .map(|m| m.optional)
            .unwrap_or_default();
        if m.propagation == P::PropagationBidirectional as i32 && !prop.contains("shared:") {
            return Err(Error::FailedPrecondition(format!(
                "path {} is not on a shared mount: bidirectional propagation is impossible",
                host.display()
            )));
        }
        if m.propagation == P::PropagationHostToContainer as i32
            && !prop.contains("shared:")
            && !prop.contains("master:")
        {
            return Err(Error::FailedPrecondition(format!("path {} is not on a shared or slave mount: host-to-container propagation is impossible", host.display())));
        }
    }
    Ok(())
}

/// Reads a Localhost seccomp profile named by the security context, if any. A missing
/// file is NotFound, naming it.
pub(crate) fn load_localhost_profile(
    sp: Option<&k8s_cri::v1::SecurityProfile>,
    deprecated: &str,
) -> Result<Option<String>> {
    let Some(path) = crate::oci_config::seccomp_localhost_path(sp, deprecated)? else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(format!(
            "seccomp profile {} does not exist",
            path.display()
        ))),
        Err(e) => Err(Error::io(
            format!("read seccomp profile {}", path.display()),
            e,
        )),
    }
}

/// Reads a file of the image, searching its layers from the top.
fn image_file(lowers: &[PathBuf], rel: &str) -> Option<String> {
    lowers
        .iter()
        .find_map(|l| std::fs::read_to_string(l.join(rel)).ok())
}

impl Runtime {
    pub async fn create_container(
        self: &Arc<Self>,
        pod_id: &str,
        cfg: ContainerConfig,
        _pod_cfg: Option<PodSandboxConfig>,
    ) -> Result<String> {
        let pod: PodRecord = self.pod(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        let md = cfg
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("container metadata is required".into()))?;
        validate_name("container name", &md.name)?;
        let image_name = cfg
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::InvalidArgument("container image is required".into()));
        }
        if cfg.mounts.iter().any(|m| m.recursive_read_only) && !self.rro_supported() {
            return Err(Error::InvalidArgument(format!(
                "recursive read-only mounts need kernel 5.12 and an OCI runtime with \"rro\" ({} has none)",
                self.config.runtime.binary
            )));
        }
        let log_rel = cfg.log_path.clone();
        let pod_log_dir = pod.config.log_directory.clone();
        let log_path = if log_rel.is_empty() || pod_log_dir.is_empty() {
            String::new()
        } else {
            if log_rel.starts_with('/') || log_rel.split('/').any(|c| c == "..") {
                return Err(Error::InvalidArgument(format!(
                    "log path {log_rel:?} must be relative without '..'"
                )));
            }
            format!("{}/{}", pod_log_dir.trim_end_matches('/'), log_rel)
        };
        let id = new_id()?;
        // The image's snapshots are held for this container from here on.
        let image = self.images.lease_image(&id, &image_name)?;
        let pmd = pod.config.metadata.clone().unwrap_or_default();
        let name_key = format!(
            "{}_{}_{}_{}_{}",
            md.name, pmd.name, pmd.namespace, pmd.uid, md.attempt
        );
        let rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod_id.to_string(),
            name_key: name_key.clone(),
            config: cfg.clone(),
            image_name: image_name.clone(),
            image_id: image.id.clone(),
            state: CtrState::Created,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            pid: 0,
            bundle: self.config.paths.state.join("containers").join(&id),
            dir: self.config.paths.root.join("containers").join(&id),
            log_path,
            stop_signal: image.config.stop_signal.clone(),
            user: None,
            op: Some(Op::Create),
        };
        if let Err(e) = self.store.create(CONTAINERS, &id, &name_key, &rec) {
            let _ = self.images.release(&id);
            return Err(e);
        }
        match self.create_steps(&pod, rec, &image).await {
            Ok(()) => Ok(id),
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e, "CreateContainer failed; rolling back");
                // The shim finishes a create its caller gave up on (a timeout): the task goes
                // too, or it would hold the rootfs mount and the shim.
                if let Ok(shim) = self.shim_of(&pod).await {
                    let _ = shim.delete(&id, None).await;
                }
                let bundle = self.config.paths.state.join("containers").join(&id);
                // The shim may have died in the create.
                self.forget_task(&bundle, &id).await;
                let _ = crate::util::unmount_under(&bundle);
                let _ = std::fs::remove_dir_all(bundle);
                let _ =
                    std::fs::remove_dir_all(self.config.paths.root.join("containers").join(&id));
                let _ = self.store.remove(CONTAINERS, &id, &name_key);
                let _ = self.images.release(&id);
                Err(e)
            }
        }
    }

    async fn create_steps(
        &self,
        pod: &PodRecord,
        mut rec: ContainerRecord,
        image: &crate::image::ImageRecord,
    ) -> Result<()> {
        crate::failpoint!("ctr.create.after_record");
        let upper = rec.dir.join("upper");
        let work = rec.dir.join("work");
        for d in [&rec.bundle, &upper, &work] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("mkdir {}", d.display()), e))?;
        }
        prepare_host_paths(&rec.config.mounts)?;
        let lowers = self.images.lower_dirs(image)?;
        // The spec sees image volumes as read-only binds of the images mounted here.
        let mut spec_cfg = rec.config.clone();
        spec_cfg.mounts = self.mount_image_volumes(&rec.id, &rec.bundle, &rec.config.mounts)?;
        let sc = rec
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let host_devices = if sc.privileged {
            Some(crate::oci_config::host_devices()?)
        } else {
            None
        };
        // Older kubelets still send the deprecated string form.
        #[allow(deprecated)]
        let localhost_profile =
            load_localhost_profile(sc.seccomp.as_ref(), &sc.seccomp_profile_path)?;
        let ic = &image.config;
        let spec = crate::oci_config::container_spec(
            &spec_cfg,
            &pod.config,
            &crate::oci_config::ImageConfig {
                entrypoint: ic.entrypoint.clone(),
                cmd: ic.cmd.clone(),
                env: ic.env.clone(),
                working_dir: ic.working_dir.clone(),
                user: ic.user.clone(),
                stop_signal: ic.stop_signal.clone(),
            },
            &crate::oci_config::ContainerOpts {
                id: rec.id.clone(),
                sandbox_id: pod.id.clone(),
                sandbox_pid: pod.pid,
                rootfs: rec.bundle.join("rootfs"),
                cgroup_parent: self.cgroup_parent(&pod.config),
                systemd_cgroup: self.config.runtime.cgroup_driver.is_systemd(),
                passwd: image_file(&lowers, "etc/passwd"),
                group: image_file(&lowers, "etc/group"),
                node_hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                sandbox_hostname: Some(pod.files.join("hostname")),
                sandbox_resolv: Some(pod.files.join("resolv.conf")),
                sandbox_hosts: Some(pod.files.join("hosts")),
                image_name: rec.image_name.clone(),
                host_devices,
                localhost_profile,
                ..Default::default()
            },
        )?;
        rec.user = spec.process().as_ref().map(|p| super::ProcessUser {
            uid: p.user().uid(),
            gid: p.user().gid(),
            additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        });
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| Error::Internal(format!("encode spec: {e}")))?;
        std::fs::write(rec.bundle.join("config.json"), json)
            .map_err(|e| Error::io("write config.json", e))?;
        let lowerdir = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mount = RootfsMount::overlay(vec![
            "index=off".into(),
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={lowerdir}"),
        ]);
        let task = NewTask {
            id: rec.id.clone(),
            bundle: rec.bundle.clone(),
            rootfs: vec![mount],
            io: self.container_io(&rec)?,
            options: self.shims.options().clone(),
        };
        let shim = self.shim_of(pod).await?;
        crate::failpoint!("ctr.create.after_bundle");
        rec.pid = shim.create(&task).await?;
        crate::failpoint!("ctr.create.after_task");
        rec.op = None;
        self.store.put(CONTAINERS, &rec.id, &rec)?;
        self.events
            .emit(Kind::Created, &rec.id, &pod.id, rec.created_at);
        tracing::info!(container_id = %rec.id, pod_id = %pod.id, "container created");
        Ok(())
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.store
            .get(CONTAINERS, id)?
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        self.store.list(CONTAINERS)
    }

    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        if rec.state != CtrState::Created || rec.op.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {:?}, not created",
                rec.state
            )));
        }
        let pod = self.pod(&rec.pod_id)?;
        let shim = self.shim_of(&pod).await?;
        // Stamped before the start: a fast process can exit (and be timed by the shim)
        // before the start call even returns. Recorded with the intent, so a start a
        // crash cuts is completed with this time.
        let started = now_ns();
        let marked = self
            .store
            .update(CONTAINERS, id, |r: &mut ContainerRecord| {
                if r.state != CtrState::Created || r.op.is_some() {
                    return false;
                }
                r.op = Some(Op::Start);
                r.started_at = started;
                true
            })?;
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
                    .update(CONTAINERS, id, |r: &mut ContainerRecord| {
                        r.op = None;
                        r.started_at = 0;
                        true
                    })?;
                return Err(e);
            }
        };
        self.store
            .update(CONTAINERS, id, |r: &mut ContainerRecord| {
                r.pid = pid;
                r.state = CtrState::Running;
                r.op = None;
                true
            })?;
        self.events.emit(Kind::Started, id, &rec.pod_id, started);
        // Its exit comes through the pod shim's journal (`pod::journal`), maybe already.
        self.became_running(id)?;
        tracing::info!(container_id = %id, pid, "container started");
        Ok(())
    }

    /// Records a Running container's exit once: the exit watcher and StopContainer may
    /// both learn of it, and only the first records it and emits STOPPED.
    pub(crate) fn record_exit(&self, id: &str, code: u32, at: i64) -> Result<()> {
        let rec = self.container(id)?;
        if rec.state != CtrState::Running {
            return Ok(());
        }
        let reason = self.exit_reason(&rec, code);
        self.record_exit_with(id, code, at, &reason)
    }

    /// Marks a Running container Exited with `reason`, once (the first caller wins and
    /// emits STOPPED).
    pub(crate) fn record_exit_with(
        &self,
        id: &str,
        code: u32,
        at: i64,
        reason: &str,
    ) -> Result<()> {
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
        }
        Ok(())
    }

    /// Completed, Error, or OOMKilled when the kernel's OOM killer fired in the
    /// container's memory cgroup (read while the task, and so its cgroup, still exists).
    pub(crate) fn exit_reason(&self, rec: &ContainerRecord, code: u32) -> String {
        let pod_parent = self
            .pod(&rec.pod_id)
            .map(|p| self.cgroup_parent(&p.config))
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

    /// Stop signal, then SIGKILL after `timeout` seconds. Idempotent: an unknown id
    /// succeeds (kubelet retries stops of containers that are already gone).
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(rec) = self.store.get::<ContainerRecord>(CONTAINERS, id)? else {
            return Ok(());
        };
        if rec.state != CtrState::Running {
            return Ok(());
        }
        let pod = self.pod(&rec.pod_id)?;
        let shim = self.shim_of(&pod).await?;
        // The intent, unless a removal's is there already; cleared on every way out below.
        self.store
            .update(CONTAINERS, id, |r: &mut ContainerRecord| {
                r.op.get_or_insert(Op::Stop);
                true
            })?;
        let stopped = async {
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
                    return self.mark_exited(id, &shim).await;
                }
            }
            match shim.kill(id, None, 9, true).await {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            crate::failpoint!("ctr.stop.after_kill");
            let _ = shim.wait(id, None, Duration::from_secs(10)).await;
            self.mark_exited(id, &shim).await
        }
        .await;
        self.store
            .update(CONTAINERS, id, |r: &mut ContainerRecord| {
                let ours = r.op == Some(Op::Stop);
                if ours {
                    r.op = None;
                }
                ours
            })?;
        stopped
    }

    async fn mark_exited(&self, id: &str, shim: &ShimHandle) -> Result<()> {
        if self.container(id)?.state == CtrState::Running {
            let st = shim.state(id).await?;
            self.record_exit(id, st.exit_status, st.exited_at)?;
        }
        Ok(())
    }

    /// Removes the container (stopping it first). Idempotent; unknown ids succeed.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let marked = self
            .store
            .update(CONTAINERS, id, |r: &mut ContainerRecord| {
                r.op = Some(Op::Remove);
                true
            })?;
        let Some(rec) = marked else {
            return Ok(());
        };
        self.stop_container(id, 0).await?;
        let shim = match self.pod(&rec.pod_id) {
            Ok(pod) => self.shim_of(&pod).await.ok(),
            Err(_) => None,
        };
        match shim {
            Some(shim) => shim.delete(id, None).await?,
            // Its shim is gone: the task's processes and runc state are removed here.
            None => self.forget_task(&rec.bundle, id).await,
        }
        crate::failpoint!("ctr.remove.after_delete");
        let _ = crate::util::unmount_under(&rec.bundle);
        for d in [&rec.bundle, &rec.dir] {
            if let Err(e) = std::fs::remove_dir_all(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::io(format!("remove {}", d.display()), e));
                }
            }
        }
        let at = self.store.remove(CONTAINERS, id, &rec.name_key)?;
        // Snapshots of images removed while this container used them go now.
        if let Err(e) = self.images.release(id) {
            tracing::warn!(container_id = %id, error = %e, "releasing the container's snapshots");
        }
        self.events.emit(Kind::Deleted, id, &rec.pod_id, at);
        tracing::info!(container_id = %id, "container removed");
        Ok(())
    }

    /// Every container of a pod.
    pub fn containers_of(&self, pod_id: &str) -> Result<Vec<ContainerRecord>> {
        Ok(self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == pod_id)
            .collect())
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
    }
}
