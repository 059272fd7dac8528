//! RunPodSandbox: each step records its state in the store and undoes what it made when a
//! later step fails, so nothing is left half-made; the pod's record and live state.
//! Stopping and removing a pod is `teardown`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::Instrument;

use crate::error::{Error, Result};
use crate::events::Kind;
use crate::intent::Op;
use crate::network::{NetNs, PodNetArgs, PortMapping};
use crate::store::PODS;

use super::{files, Pods};
use crate::records::{PodRecord, PodState, Records};
use crate::shim_client::{forget_task, NewTask, RootfsMount, ShimHandle, TaskStatus};
use crate::util::{new_id, now_ns, validate_name};
use crate::workload::{PodSpec, Protocol};

/// How long Stop waits for the infra process to die after SIGKILL.
pub(super) const STOP_WAIT: Duration = Duration::from_secs(10);

/// The read-only rootfs every sandbox runs berth-pause from: one file plus the mount
/// points runc needs. Rebuilt at startup from the berth-pause next to berthd.
pub fn pause_rootfs(root: &Path) -> Result<PathBuf> {
    let rootfs = root.join("pause").join("rootfs");
    for d in ["proc", "dev", "sys", "etc"] {
        std::fs::create_dir_all(rootfs.join(d))
            .map_err(|e| Error::io(format!("mkdir pause rootfs {d}"), e))?;
    }
    // The mount points of the pod files, made here: a user-namespaced pod's root cannot
    // create them in this root-owned rootfs.
    for f in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(rootfs.join(f))
            .map_err(|e| Error::io(format!("create pause rootfs {f}"), e))?;
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
    let src = exe.with_file_name("berth-pause");
    let dst = rootfs.join("pause");
    let tmp = rootfs.join(".pause.tmp");
    std::fs::copy(&src, &tmp).map_err(|e| Error::io(format!("copy {}", src.display()), e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io("install pause", e))?;
    Ok(rootfs)
}

pub fn net_args(id: &str, cfg: &PodSpec, pod_cidr: String) -> PodNetArgs {
    PodNetArgs {
        sandbox_id: id.to_string(),
        pod_name: cfg.name.clone(),
        pod_namespace: cfg.namespace.clone(),
        pod_uid: cfg.uid.clone(),
        ifname: "eth0".into(),
        port_mappings: cfg
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: match p.protocol {
                    Protocol::Tcp => "tcp".into(),
                    Protocol::Udp => "udp".into(),
                    Protocol::Sctp => "sctp".into(),
                },
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        dns: cfg.dns.as_ref().map(|d| crate::network::DnsArgs {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        pod_cidr,
    }
}

/// Undo steps collected while a RunPodSandbox progresses.
#[derive(Default)]
struct Undo {
    netns: Option<NetNs>,
    cni: Option<(crate::network::NetworkConfigList, PodNetArgs)>,
    dirs: Vec<PathBuf>,
    /// The shim, the infra's id and bundle.
    shim: Option<(ShimHandle, String, PathBuf)>,
    /// The state dir and pod id of pinned IPC/UTS namespaces.
    pins: Option<(PathBuf, String)>,
    /// The root dir and pod id holding remapped copies of a sandbox image's layers.
    copies: Option<(PathBuf, String)>,
    /// The files dir whose /dev/shm tmpfs was mounted.
    shm: Option<PathBuf>,
}

impl Undo {
    async fn run(self, cni: &crate::network::Cni) {
        if let Some((shim, id, bundle)) = self.shim {
            let _ = shim.kill(&id, None, libc::SIGKILL as u32, true).await;
            let _ = shim.wait(&id, None, STOP_WAIT).await;
            let _ = shim.delete(&id, None).await;
            shim.shutdown(true).await;
            // The shim may have died in the infra's create or start.
            forget_task(&bundle, &id).await;
        }
        if let Some((list, args)) = self.cni {
            let netns = self.netns.as_ref().map(|n| n.path.clone());
            if let Err(e) = super::teardown::del_retried(cni, &list, netns.as_deref(), &args).await
            {
                tracing::warn!(error = %e, "rollback: CNI DEL failed; the plugin may keep the IP");
            }
        }
        if let Some((root, id)) = self.copies {
            let copies = crate::image::remap::Copies::new(&root);
            let _ = tokio::task::spawn_blocking(move || copies.release(&id)).await;
        }
        if let Some((state, id)) = self.pins {
            let _ = tokio::task::spawn_blocking(move || super::pins::remove(&state, &id)).await;
        }
        if let Some(n) = self.netns {
            let _ = n.remove();
        }
        if let Some(f) = self.shm {
            files::unmount_shm(&f);
        }
        for d in self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// How long a status call waits for the shim's word on the infra process.
const LIVE_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

impl Pods {
    /// Makes a pod Ready; returns its id and shim (the caller starts watching it).
    pub async fn run(&self, cfg: PodSpec, handler: String) -> Result<(String, ShimHandle)> {
        let md = &cfg;
        validate_name("sandbox name", &md.name)?;
        validate_name("sandbox namespace", &md.namespace)?;
        validate_name("sandbox uid", &md.uid)?;
        // Before anything is made: a bad user namespace leaves nothing behind.
        md.security
            .namespaces
            .check_pod_userns()
            .map_err(Error::InvalidArgument)?;
        if md.security.namespaces.pod_userns().is_some() {
            if let Some(why) = self.node.userns_unavailable() {
                return Err(Error::FailedPrecondition(format!(
                    "user namespaces are not available on this node: {why}"
                )));
            }
        }
        if !handler.is_empty() && handler != "berth" {
            return Err(Error::NotFound(format!(
                "no runtime handler {handler:?} is configured"
            )));
        }
        let id = new_id()?;
        let span = tracing::info_span!("run_pod_sandbox", pod_id = %id, pod = %md.name, namespace = %md.namespace);
        async {
            let name_key = format!("{}_{}_{}_{}", md.name, md.namespace, md.uid, md.attempt);
            let rec = PodRecord {
                id: id.clone(),
                name_key: name_key.clone(),
                config: cfg.clone(),
                runtime_handler: handler.clone(),
                state: PodState::NotReady,
                created_at: now_ns(),
                bundle: self.config.paths.state.join("pods").join(&id),
                files: self.config.paths.root.join("pods").join(&id),
                netns: None,
                network: String::new(),
                ips: vec![],
                pid: 0,
                shim_address: String::new(),
                op: Some(Op::Run),
                stopped_at: 0,
                journal_seq: 0,
                pins: None,
                shm: None,
            };
            // Not shown while its NRI hook runs (and its RunPodSandbox until then).
            let _hidden = self.nri.hide(&id);
            // The name is reserved first (with the intent): a duplicate fails here with
            // nothing made; a crash from here on is rolled back at startup.
            self.store.create_async(PODS, &id, &name_key, &rec).await?;
            let mut undo = Undo::default();
            match self.run_steps(rec, &mut undo).await {
                Ok((rec, shim)) => {
                    tracing::info!(ips = ?rec.ips, pid = rec.pid, "pod ready");
                    self.events
                        .emit(Kind::Created, &rec.id, &rec.id, rec.created_at);
                    // Timed like a restart would derive it from the record.
                    self.events
                        .emit(Kind::Started, &rec.id, &rec.id, rec.created_at);
                    Ok((rec.id, shim))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "RunPodSandbox failed; rolling back");
                    undo.run(&self.cni).await;
                    self.store.remove_eventually(PODS, &id, &name_key);
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn run_steps(
        &self,
        mut rec: PodRecord,
        undo: &mut Undo,
    ) -> Result<(PodRecord, ShimHandle)> {
        crate::failpoint!("pod.run.after_record");
        for d in [&rec.bundle, &rec.files] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io_at(format!("mkdir {}", d.display()), d, e))?;
            undo.dirs.push(d.clone());
        }
        let host_network = rec.host_network();
        let nso = &rec.config.security.namespaces;
        let own_netns = nso.pod_userns().is_some();
        // Without a process to hold them, a pod's namespaces are pinned by berthd: not
        // for a pod that shares its PID namespace (the infra is its PID 1) nor for a
        // user-namespaced one (its namespaces must be made inside its user namespace).
        let infra_less = self.config.runtime.pod_infra == crate::config::PodInfra::Auto
            && nso.pid != crate::workload::NamespaceMode::Pod
            && !own_netns;
        files::write_all(&rec.files, &rec.config, host_network)?;
        if nso.ipc == crate::workload::NamespaceMode::Pod {
            let dir = rec.files.clone();
            undo.shm = Some(dir.clone());
            let shm = tokio::task::spawn_blocking(move || files::mount_shm(&dir))
                .await
                .map_err(|e| Error::Internal(format!("pod /dev/shm: {e}")))??;
            rec.shm = Some(shm);
        }
        let mut cni_job = None;
        if !host_network {
            let list = self.cni.load()?.ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "network not ready: no CNI config in {}",
                    self.config.cni.conf_dir.display()
                ))
            })?;
            rec.network = list.name.clone();
            let (dir, id) = (self.config.paths.state.join("netns"), rec.id.clone());
            // A user-namespaced pod's infra makes its own network namespace (it must belong
            // to the pod's user namespace: the containers, already in that one, could not
            // join one of the host's); only the pin file is made now. Otherwise a thread
            // spawn, unshare and a mount: off the async workers either way.
            let ns = tokio::task::spawn_blocking(move || {
                if own_netns {
                    NetNs::reserve(&dir, &id)
                } else {
                    NetNs::create(&dir, &id)
                }
            })
            .await
            .map_err(|e| Error::Internal(format!("netns: {e}")))??;
            rec.netns = Some(ns.path.clone());
            let nsp = ns.path.clone();
            undo.netns = Some(ns);
            crate::failpoint!("pod.run.after_netns");
            let args = net_args(&rec.id, &rec.config, self.node.pod_cidr());
            // Registered before the ADD: a half-done ADD is undone too (DEL is idempotent).
            if !own_netns {
                undo.cni = Some((list.clone(), args.clone()));
            }
            cni_job = Some((list, nsp, args));
        }
        if infra_less {
            let nso = &rec.config.security.namespaces;
            let req = super::pins::PinRequest {
                ipc: nso.ipc != crate::workload::NamespaceMode::Node,
                hostname: (!host_network).then(|| files::hostname(&rec.config, false)),
                netns: rec.netns.clone(),
                sysctls: rec
                    .config
                    .sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            };
            let (state, id) = (self.config.paths.state.clone(), rec.id.clone());
            undo.pins = Some((state.clone(), id.clone()));
            let pins = tokio::task::spawn_blocking(move || super::pins::create(&state, &id, &req))
                .await
                .map_err(|e| Error::Internal(format!("pod namespaces: {e}")))??;
            rec.pins = Some(pins);
            crate::failpoint!("pod.run.after_pins");
        }
        let localhost_profile =
            crate::container::load_localhost_profile(rec.config.security.seccomp.as_ref())?;
        // A pod without an infra process still has its sandbox spec made: the checks of
        // what kubelet asked for are the same either way.
        let (rootfs, args, rootfs_mounts) = if infra_less {
            (self.pause_rootfs.clone(), vec!["/pause".into()], Vec::new())
        } else {
            self.infra_root(&rec, undo).await?
        };
        let spec = crate::oci_config::sandbox_spec(
            &rec.config,
            &crate::oci_config::SandboxOpts {
                id: rec.id.clone(),
                netns_path: rec.netns.clone(),
                rootfs,
                args,
                cgroup_parent: rec.cgroup_parent(&self.config.runtime.cgroup_parent),
                systemd_cgroup: self.config.runtime.cgroup_driver.is_systemd(),
                // A host-network pod shares the host's UTS namespace: no hostname to set.
                hostname: if host_network {
                    String::new()
                } else {
                    files::hostname(&rec.config, false)
                },
                resolv_conf: Some(rec.files.join("resolv.conf")),
                hosts: Some(rec.files.join("hosts")),
                hostname_file: Some(rec.files.join("hostname")),
                shm: None,
                oom_score_adj: None,
                localhost_profile,
            },
        )?;
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| Error::Internal(format!("encode spec: {e}")))?;
        // The spec holds the container's env (Secret values): root's alone.
        if !infra_less {
            crate::util::modes::write_private(&rec.bundle.join("config.json"), &json)?;
        }
        // CNI wires the pinned netns while the shim starts the infra process in it: the
        // two only share the netns path, and a pod's start takes the longer of the two.
        let network = async {
            match &cni_job {
                Some((list, nsp, args)) => self.cni.add(list, nsp, args).await.map(Some),
                None => Ok(None),
            }
        };
        let infra = async {
            super::shim_log::follow(&rec.bundle, &rec.id);
            let shim = self.shims.start(&rec.bundle, &rec.id).await?;
            if infra_less {
                return Ok::<_, Error>((shim, Ok(0)));
            }
            let pid = async {
                let task = NewTask {
                    id: rec.id.clone(),
                    bundle: rec.bundle.clone(),
                    rootfs: rootfs_mounts,
                    io: Default::default(),
                    options: self.shims.options().clone(),
                };
                shim.create(&task).await?;
                shim.start(&rec.id, None).await
            }
            .await;
            Ok::<_, Error>((shim, pid))
        };
        let (net, started) = if own_netns {
            // The infra first: CNI needs the network namespace it makes, pinned.
            let started = infra.await;
            let net = match (&started, &cni_job, &undo.netns) {
                (Ok((_, Ok(pid))), Some((list, nsp, args)), Some(ns)) => match ns.pin_from(*pid) {
                    Ok(()) => {
                        undo.cni = Some((list.clone(), args.clone()));
                        self.cni.add(list, nsp, args).await.map(Some)
                    }
                    Err(e) => Err(e),
                },
                _ => Ok(None),
            };
            (net, started)
        } else {
            tokio::join!(network, infra)
        };
        let (shim, pid) = match started {
            Ok(s) => s,
            Err(e) => return Err(e),
        };
        undo.shim = Some((shim.clone(), rec.id.clone(), rec.bundle.clone()));
        rec.pid = pid?;
        if let Some(net) = net? {
            rec.ips = net.ips.iter().map(|ip| ip.to_string()).collect();
        }
        crate::failpoint!("pod.run.after_infra");
        rec.shim_address = shim.address().to_string();
        // The NRI plugins' RunPodSandbox: the pod runs, it is not Ready (nor shown) yet; a
        // plugin that fails it undoes the pod. No plugin synchronizes until it is Ready.
        let _sync = self.nri.block_sync().await;
        self.nri.run_pod_sandbox(&rec).await?;
        rec.state = PodState::Ready;
        rec.op = None;
        self.store.put_async(PODS, &rec.id, &rec).await?;
        self.shims.insert(&rec.id, shim.clone()).await;
        Ok((rec, shim))
    }

    /// The infra process' root, command and rootfs mounts: Berth's own pause program, or
    /// the configured sandbox image (pulled when absent) as an overlay of its layers that
    /// the shim mounts at the bundle's rootfs.
    async fn infra_root(
        &self,
        rec: &PodRecord,
        undo: &mut Undo,
    ) -> Result<(PathBuf, Vec<String>, Vec<RootfsMount>)> {
        let name = &self.config.runtime.sandbox_image;
        if name.is_empty() {
            return Ok((self.pause_rootfs.clone(), vec!["/pause".into()], Vec::new()));
        }
        let image = match self.images.get(name) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => {
                self.images
                    .pull(&self.puller, name, &Default::default())
                    .await?
            }
            Err(e) => return Err(e),
        };
        let args: Vec<String> = image
            .config
            .entrypoint
            .iter()
            .chain(&image.config.cmd)
            .cloned()
            .collect();
        if args.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "sandbox image {name} has neither entrypoint nor cmd"
            )));
        }
        let mut lowers = self.images.lower_dirs(&image)?;
        // A private upper layer lets the OCI runtime create the mount points of the
        // pod's hosts/resolv.conf files; the root is read-only for the process itself.
        let (upper, work) = (rec.files.join("upper"), rec.files.join("work"));
        for d in [&upper, &work] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io_at(format!("mkdir {}", d.display()), d, e))?;
        }
        if let Some(u) = rec.config.security.namespaces.pod_userns() {
            // The infra makes the pod's user namespace, so none exists yet to idmap the
            // image's layers through: the infra's rootfs is an overlay on copies of them
            // owned by the pod's mapped ids (`image::remap`, used by the pod's id and
            // released with the pod), its upper and work dirs the mapped root's, and the
            // bundle traversable by it (runc mounts the rootfs from inside).
            let root = self.config.paths.root.clone();
            undo.copies = Some((root.clone(), rec.id.clone()));
            let copies = crate::image::remap::Copies::new(&root);
            let (id, uids, gids) = (rec.id.clone(), u.uids.clone(), u.gids.clone());
            lowers =
                tokio::task::spawn_blocking(move || copies.acquire(&id, &lowers, &uids, &gids))
                    .await
                    .map_err(|e| Error::Internal(format!("remapped copies: {e}")))??;
            let (Some(uid), Some(gid)) = (u.uids.first(), u.gids.first()) else {
                return Err(Error::InvalidArgument(
                    "a user namespace without id mappings".into(),
                ));
            };
            for d in [&upper, &work] {
                std::os::unix::fs::chown(d, Some(uid.host_id), Some(gid.host_id))
                    .map_err(|e| Error::io(format!("chown {}", d.display()), e))?;
            }
            crate::util::modes::traversable_dir(&rec.bundle)?;
        }
        let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let mount = RootfsMount::overlay(vec![
            format!("lowerdir={}", lowers.join(":")),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ]);
        Ok((rec.bundle.join("rootfs"), args, vec![mount]))
    }

    /// The pod's record with its state checked against the shim: a Ready pod whose
    /// infra process has exited (or whose shim is gone) is NotReady from then on.
    pub async fn live(&self, id: &str) -> Result<PodRecord> {
        self.visible(id)?;
        let mut rec = self.store.pod(id)?;
        // A pod without an infra process has nothing to ask its shim about: its shim's
        // death is learnt from the shim's journal (`recovery::journal`) and settles it.
        if rec.state != PodState::Ready || rec.infra_less() {
            return Ok(rec);
        }
        let running = match self.shim_of(&rec).await {
            Ok(shim) => match tokio::time::timeout(LIVE_PROBE, shim.state(id)).await {
                Ok(Ok(s)) => s.status == TaskStatus::Running,
                // A shim that does not answer (stopped, wedged) says nothing about the
                // infra: the pod stays as recorded, and the status call does not wait on it.
                Err(_) | Ok(Err(Error::DeadlineExceeded(_))) => {
                    tracing::warn!(pod_id = %id, "the pod's shim does not answer; reporting the pod as recorded");
                    return Ok(rec);
                }
                Ok(Err(_)) => false,
            },
            Err(_) => false,
        };
        if !running {
            match self.mark_not_ready(id)? {
                Some(r) => {
                    tracing::warn!(pod_id = %id, "infra process is gone; pod is NotReady");
                    rec = r;
                }
                None => rec = self.store.pod(id)?,
            }
        }
        Ok(rec)
    }

    /// A Ready pod nobody is changing becomes NotReady and its STOPPED event goes out;
    /// None when it was not Ready or an operation on it is under way (that one decides).
    pub fn mark_not_ready(&self, id: &str) -> Result<Option<PodRecord>> {
        let updated = self.store.update(PODS, id, |r: &mut PodRecord| {
            let ready = r.state == PodState::Ready && r.op.is_none();
            if ready {
                r.set_not_ready();
            }
            ready
        })?;
        if let Some(r) = &updated {
            self.events.emit(Kind::Stopped, id, id, r.stopped_at);
        }
        Ok(updated)
    }

    /// PortForward needs a Ready pod.
    pub async fn check_port_forward(&self, pod_id: &str) -> Result<()> {
        let pod = self.live(pod_id).await?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        Ok(())
    }
}
