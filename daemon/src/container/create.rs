//! CreateContainer: the record (with the intent and the image's lease) first, then the
//! bundle, writable layer, spec and the task in the pod's shim; a failure undoes every
//! step, so nothing is left half-made.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, ImageFileError, Result};
use crate::events::Kind;
use crate::image::layer_file;
use crate::intent::Op;
use crate::records::{ContainerRecord, CtrState, PodRecord, PodState, ProcessUser, Records};
use crate::shim_client::{forget_task, NewTask, RootfsMount};
use crate::store::CONTAINERS;
use crate::util::{new_id, now_ns, validate_name};
use crate::workload::{ContainerSpec, Mount, Profile, Propagation};

use super::Containers;

/// As containerd: a missing host path of a bind mount is created (0755); bidirectional
/// propagation needs a shared source mount, host-to-container needs shared or slave,
/// otherwise it could never work and the user is told so.
fn prepare_host_paths(mounts: &[Mount]) -> Result<()> {
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
        if m.propagation == Propagation::Bidirectional && !prop.contains("shared:") {
            return Err(Error::FailedPrecondition(format!(
                "path {} is not on a shared mount: bidirectional propagation is impossible",
                host.display()
            )));
        }
        if m.propagation == Propagation::HostToContainer
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
pub(crate) fn load_localhost_profile(profile: Option<&Profile>) -> Result<Option<String>> {
    let Some(path) = crate::oci_config::seccomp_localhost_path(profile)? else {
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

/// How long reading the flags of a user-namespaced container's bind sources may take.
const SOURCE_FLAGS_DEADLINE: Duration = Duration::from_secs(5);

/// The options each bind (by container path) must repeat because its source mount locks
/// them in a user namespace (`oci_config::locked_options` of the source's statvfs). On
/// the blocking pool, under a deadline: a host path on a hung network filesystem stalls
/// statvfs. A source that cannot be read is left to runc, which reports it.
async fn locked_bind_options(
    mounts: &[Mount],
) -> Result<std::collections::HashMap<PathBuf, Vec<String>>> {
    let sources: Vec<(PathBuf, PathBuf)> = mounts
        .iter()
        .map(|m| {
            (
                PathBuf::from(&m.container_path),
                PathBuf::from(&m.host_path),
            )
        })
        .collect();
    let read = tokio::task::spawn_blocking(move || {
        sources
            .into_iter()
            .filter_map(|(dst, src)| {
                let flags = nix::sys::statvfs::statvfs(&src).ok()?.flags();
                Some((dst, crate::oci_config::locked_options(flags)))
            })
            .collect()
    });
    match tokio::time::timeout(SOURCE_FLAGS_DEADLINE, read).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(Error::Internal(format!("read bind source flags: {e}"))),
        Err(_) => Err(Error::DeadlineExceeded(format!(
            "reading the mount flags of the bind sources took over {SOURCE_FLAGS_DEADLINE:?}"
        ))),
    }
}

/// How long reading the image's /etc/passwd and /etc/group may take in all.
const USER_FILES_DEADLINE: Duration = Duration::from_secs(1);

/// The image's /etc/passwd and /etc/group (None for one the image does not have), read as
/// the container will see them (`image::layer_file`: inside the image, whiteouts honoured,
/// regular files of at most 1 MiB).
///
/// The image is untrusted: the read runs on the blocking pool, never on one of berthd's
/// async workers (a read that blocked there would stall every call that worker serves), and
/// under a deadline. layer_file opens nothing that can block (a FIFO or device is refused
/// from its O_PATH stat), so the deadline only ever fires on a stalled disk; the abandoned
/// thread then ends with the read.
///
/// A file that exists but is refused (not regular, over 1 MiB, a symlink loop) fails the
/// create with InvalidArgument, whatever the user, rather than counting as "no passwd".
/// That is containerd's rule: its WithUser/WithUserID/WithAdditionalGIDs treat only a
/// missing /etc/passwd as absent (a numeric uid then runs with gid 0) and fail the create on
/// any other error reading it, for numeric users too (it reads /etc/passwd for every
/// container). Silently ignoring a sabotaged file would run the process with a gid the
/// image never meant. A symlink pointing out of the image is not refused: it resolves
/// inside the image as in the container, and a target the image lacks is a missing file.
async fn image_user_files(lowers: &[PathBuf]) -> Result<(Option<String>, Option<String>)> {
    let lowers = lowers.to_vec();
    let read = tokio::task::spawn_blocking(move || -> Result<_, ImageFileError> {
        let text = |rel: &str| -> Result<Option<String>, ImageFileError> {
            // Lossy, as libc's parser is byte-based: a bad byte spoils one line, not the file.
            Ok(layer_file::read(&lowers, rel)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        Ok((text("etc/passwd")?, text("etc/group")?))
    });
    match tokio::time::timeout(USER_FILES_DEADLINE, read).await {
        Ok(Ok(files)) => Ok(files?),
        Ok(Err(e)) => Err(Error::Internal(format!(
            "read the image's /etc/passwd and /etc/group: {e}"
        ))),
        Err(_) => Err(ImageFileError::TimedOut {
            path: "etc/passwd and /etc/group".into(),
            after: USER_FILES_DEADLINE,
        }
        .into()),
    }
}

impl Containers {
    /// The container uses no remapped copy of a layer any more (those without another
    /// user go); on the blocking pool, since a copy's removal walks its tree.
    pub(super) async fn release_copies(&self, id: &str) {
        let copies = crate::image::remap::Copies::new(&self.config.paths.root);
        let id = id.to_string();
        if let Err(e) = tokio::task::spawn_blocking(move || copies.release(&id)).await {
            tracing::warn!(error = %e, "releasing remapped copies");
        }
    }

    pub async fn create(&self, pod_id: &str, cfg: ContainerSpec) -> Result<String> {
        if self.nri.is_hidden(pod_id) {
            return Err(Error::NotFound(format!("pod sandbox {pod_id:?} not found")));
        }
        let pod: PodRecord = self.store.pod(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        validate_name("container name", &cfg.name)?;
        let image_name = cfg.image.clone();
        if image_name.is_empty() {
            return Err(Error::InvalidArgument("container image is required".into()));
        }
        if cfg.mounts.iter().any(|m| m.recursive_read_only) && !self.node.rro_supported() {
            return Err(Error::InvalidArgument(format!(
                "recursive read-only mounts need kernel 5.12 and an OCI runtime with \"rro\" ({} has none)",
                self.config.runtime.binary
            )));
        }
        // Idmapped volumes need the pod's own mappings: refused before anything is made.
        crate::oci_config::check_mount_mappings(
            &cfg.mounts,
            pod.config.security.namespaces.pod_userns(),
        )?;
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
        let p = &pod.config;
        let name_key = format!(
            "{}_{}_{}_{}_{}",
            cfg.name, p.name, p.namespace, p.uid, cfg.attempt
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
            // kubelet's (a pod's lifecycle.stopSignal) wins over the image's.
            stop_signal: cfg
                .stop_signal
                .clone()
                .unwrap_or_else(|| image.config.stop_signal.clone()),
            user: None,
            op: Some(Op::Create),
        };
        // No NRI plugin synchronizes while a container is made (it sees it there, or
        // gets its CreateContainer); the container is not shown while its hook runs.
        let sync = self.nri.block_sync().await;
        let hidden = self.nri.hide(&id);
        if let Err(e) = self
            .store
            .create_async(CONTAINERS, &id, &name_key, &rec)
            .await
        {
            let _ = self.images.release(&id);
            return Err(e);
        }
        let undo_rec = rec.clone();
        match self.create_steps(&pod, rec, &image).await {
            Ok(rec) => {
                drop(hidden);
                drop(sync);
                self.nri.post_create_container(&pod, &rec).await;
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e, "CreateContainer failed; rolling back");
                // The shim finishes a create its caller gave up on (a timeout): the task goes
                // too, or it would hold the rootfs mount and the shim.
                if let Ok(shim) = self.shim_of(&pod).await {
                    let _ = shim.delete(&id, None).await;
                }
                let bundle = self.config.paths.state.join("containers").join(&id);
                // The shim may have died in the create.
                forget_task(&bundle, &id).await;
                let _ = crate::util::unmount_under(&bundle);
                let _ = std::fs::remove_dir_all(bundle);
                let _ =
                    std::fs::remove_dir_all(self.config.paths.root.join("containers").join(&id));
                self.store.remove_eventually(CONTAINERS, &id, &name_key);
                let _ = self.images.release(&id);
                self.release_copies(&id).await;
                drop(hidden);
                drop(sync);
                self.nri.undo_create_container(&pod, &undo_rec).await;
                Err(e)
            }
        }
    }

    async fn create_steps(
        &self,
        pod: &PodRecord,
        mut rec: ContainerRecord,
        image: &crate::image::ImageRecord,
    ) -> Result<ContainerRecord> {
        crate::failpoint!("ctr.create.after_record");
        let upper = rec.dir.join("upper");
        let work = rec.dir.join("work");
        for d in [&rec.bundle, &upper, &work] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io_at(format!("mkdir {}", d.display()), d, e))?;
        }
        // Root's alone: `containers/` above it is traversable (for user-namespaced pods,
        // whose bundles are opened a little further below), so each bundle closes itself.
        crate::util::modes::private_dir(&rec.bundle)?;
        prepare_host_paths(&rec.config.mounts)?;
        let lowers = self.images.lower_dirs(image)?;
        // The spec sees image volumes as read-only binds of the images mounted here.
        let mut spec_cfg = rec.config.clone();
        spec_cfg.mounts = self.mount_image_volumes(&rec.id, &rec.bundle, &mut rec.config.mounts)?;
        let host_devices = if rec.config.security.privileged {
            Some(crate::oci_config::host_devices()?)
        } else {
            None
        };
        let locked_options = match pod.config.security.namespaces.pod_userns() {
            Some(_) => locked_bind_options(&spec_cfg.mounts).await?,
            None => Default::default(),
        };
        let localhost_profile = load_localhost_profile(rec.config.security.seccomp.as_ref())?;
        let (passwd, group) = image_user_files(&lowers).await?;
        let ic = &image.config;
        let mut spec = crate::oci_config::container_spec(
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
                pinned: pod.pins.as_ref().map(|p| crate::oci_config::PinnedNs {
                    net: pod.netns.clone(),
                    ipc: p.ipc.clone(),
                    uts: p.uts.clone(),
                }),
                rootfs: rec.bundle.join("rootfs"),
                cgroup_parent: pod.cgroup_parent(&self.config.runtime.cgroup_parent),
                systemd_cgroup: self.config.runtime.cgroup_driver.is_systemd(),
                passwd,
                group,
                node_hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                sandbox_hostname: Some(pod.files.join("hostname")),
                sandbox_resolv: Some(pod.files.join("resolv.conf")),
                sandbox_hosts: Some(pod.files.join("hosts")),
                sandbox_shm: pod.shm.clone(),
                image_name: rec.image_name.clone(),
                host_devices,
                localhost_profile,
                locked_options,
                ..Default::default()
            },
        )?;
        // CDI devices asked for by CRI (before the NRI plugins, which see them).
        if !rec.config.cdi_devices.is_empty() {
            spec = inject_cdi(&self.config, &rec.config.cdi_devices, spec).await?;
        }
        // The NRI plugins' CreateContainer: their adjustments go into the spec.
        self.nri.create_container(pod, &rec, &mut spec).await?;
        rec.user = spec.process().as_ref().map(|p| ProcessUser {
            uid: p.user().uid(),
            gid: p.user().gid(),
            additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        });
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| Error::Internal(format!("encode spec: {e}")))?;
        // The spec holds the container's env (Secret values): root's alone.
        crate::util::modes::write_private(&rec.bundle.join("config.json"), &json)?;
        // The pod's root is a mapped id: the overlay's lower dirs must show the image's
        // files owned by it, through idmapped layers (the shim's) or remapped copies.
        let mut lowers = lowers;
        let mut idmap_option = None;
        if let Some(u) = pod.config.security.namespaces.pod_userns() {
            match self.node.userns_rootfs() {
                Some(crate::node::userns::RootfsWay::Idmap) => {
                    // The shim idmaps the overlay's lower dirs through the pod's user
                    // namespace.
                    idmap_option = Some(format!(
                        "{}/proc/{}/ns/user",
                        berth_proto::idmap::USERNS_OPTION,
                        pod.pid
                    ));
                }
                Some(crate::node::userns::RootfsWay::Copy) => {
                    let copies = crate::image::remap::Copies::new(&self.config.paths.root);
                    let (id, uids, gids) = (rec.id.clone(), u.uids.clone(), u.gids.clone());
                    lowers = tokio::task::spawn_blocking(move || {
                        copies.acquire(&id, &lowers, &uids, &gids)
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("remapped copies: {e}")))??;
                }
                None => {
                    return Err(Error::FailedPrecondition(format!(
                        "pod {} has a user namespace, which this node cannot give a rootfs",
                        pod.id
                    )))
                }
            }
        }
        let lowerdir = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut options = vec![
            "index=off".into(),
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={lowerdir}"),
        ];
        if let Some(u) = pod.config.security.namespaces.pod_userns() {
            // The upper dir (the rootfs' own root dir) is the mapped root's, and what the
            // container writes is stored with its host ids. The container's root walks to
            // the rootfs: its bundle must be traversable.
            let (Some(uid), Some(gid)) = (u.uids.first(), u.gids.first()) else {
                return Err(Error::FailedPrecondition(format!(
                    "pod {} has a user namespace without id mappings",
                    pod.id
                )));
            };
            let (uid, gid) = (uid.host_id, gid.host_id);
            std::os::unix::fs::chown(&upper, Some(uid), Some(gid))
                .map_err(|e| Error::io(format!("chown {}", upper.display()), e))?;
            options.extend(idmap_option);
            crate::util::modes::traversable_dir(&rec.bundle)?;
        }
        let mut rootfs = vec![RootfsMount::overlay(options)];
        // Idmapped volumes ride along: the shim attaches each one's idmapped clone where
        // the spec's bind of it looks (`oci_config::userns::point_idmapped`).
        for (n, m) in spec_cfg.mounts.iter().enumerate() {
            if crate::oci_config::idmapped(m) {
                rootfs.push(RootfsMount::idmapped_volume(&m.host_path, pod.pid, n));
            }
        }
        let task = NewTask {
            id: rec.id.clone(),
            bundle: rec.bundle.clone(),
            rootfs,
            io: self.container_io(&rec)?,
            options: self.shims.options().clone(),
        };
        let shim = self.shim_of(pod).await?;
        crate::failpoint!("ctr.create.after_bundle");
        rec.pid = shim.create(&task).await?;
        crate::failpoint!("ctr.create.after_task");
        rec.op = None;
        self.store.put_async(CONTAINERS, &rec.id, &rec).await?;
        self.events
            .emit(Kind::Created, &rec.id, &pod.id, rec.created_at);
        tracing::info!(container_id = %rec.id, pod_id = %pod.id, "container created");
        Ok(rec)
    }
}

/// Applies the edits of CDI devices to `spec`; reading the spec dirs is blocking I/O.
async fn inject_cdi(
    config: &crate::config::Config,
    names: &[String],
    spec: oci_spec::runtime::Spec,
) -> Result<oci_spec::runtime::Spec> {
    let reg = crate::cdi::Registry::new(config.cdi.spec_dirs.clone());
    let names = names.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut json =
            serde_json::to_value(&spec).map_err(|e| Error::Internal(format!("spec: {e}")))?;
        reg.inject(&names, &mut json)?;
        serde_json::from_value(json).map_err(|e| {
            Error::InvalidArgument(format!("CDI devices make an invalid OCI spec: {e}"))
        })
    })
    .await
    .map_err(|e| Error::Internal(format!("CDI: {e}")))?
}
