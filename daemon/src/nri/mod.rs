//! berthd as an NRI runtime (containerd/nri v0.12.1's protocol, `berth-nri`): plugins
//! connect to the NRI socket or are started from the plugin dir, register, are
//! configured and synchronized with the pods and containers there are, and from then on
//! are called on every pod and container lifecycle event, in index order, each call
//! bounded by the request timeout (docs/nri.md).
//!
//! What the lifecycle gets from here:
//! * RunPodSandbox and CreateContainer call their plugins before the pod or container is
//!   shown (List and Status do not see it while its hook runs, [`Nri::hide`]); a plugin
//!   that fails, hangs past the timeout or dies fails the call, which then undoes what it
//!   made. A plugin that hangs or dies is disconnected.
//! * CreateContainer applies the adjustments plugins return to the container's OCI spec
//!   (`adjust`); their updates to other containers and evictions are carried out.
//! * Stop and remove events are notifications: a failing plugin is logged, never stops
//!   a pod or a container from going.
//! * A plugin's registration takes the sync lock for writing; pod and container
//!   creations hold it for reading from their hook to their record: a plugin sees every
//!   container either in its Synchronize or through its CreateContainer, never neither.

mod adjust;
pub mod convert;
mod plugin;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use berth_nri::api;
use serde_json::Value;
use tokio::sync::{watch, RwLock, RwLockReadGuard};

use crate::config;
use crate::error::{Error, Result};
use crate::records::{ContainerRecord, PodRecord, Records};
use crate::store::Store;
use crate::workload::Resources;

pub use plugin::Plugin;

/// What the plugins may ask of berthd outside an event: updating a container's
/// resources, evicting (stopping) a container.
#[async_trait::async_trait]
pub trait Host: Send + Sync {
    async fn update_container(&self, id: &str, r: &api::LinuxResources) -> Result<()>;
    async fn evict_container(&self, id: &str, reason: &str) -> Result<()>;
}

pub struct Nri {
    cfg: config::Nri,
    store: Arc<Store>,
    default_cgroup_parent: String,
    /// Registered plugins, in index (then name) order.
    plugins: Mutex<Vec<Arc<Plugin>>>,
    /// Held for writing while a plugin synchronizes, for reading by creations.
    sync: RwLock<()>,
    /// Pods and containers whose RunPodSandbox/CreateContainer hook is under way.
    hidden: Mutex<HashSet<String>>,
    /// StopContainer notifications under way, by container id (done = true).
    stops: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Containers plugins were told of in CreateContainer whose creation is not over.
    announced: Mutex<HashSet<String>>,
    host: OnceLock<Weak<dyn Host>>,
}

/// Hides an id from List and Status until dropped.
pub struct Hidden<'a> {
    nri: &'a Nri,
    id: String,
}

impl Drop for Hidden<'_> {
    fn drop(&mut self) {
        self.nri
            .hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Nri {
    pub fn new(cfg: config::Nri, store: Arc<Store>, default_cgroup_parent: String) -> Arc<Nri> {
        Arc::new(Nri {
            cfg,
            store,
            default_cgroup_parent,
            plugins: Mutex::default(),
            sync: RwLock::new(()),
            hidden: Mutex::default(),
            stops: Mutex::default(),
            announced: Mutex::default(),
            host: OnceLock::new(),
        })
    }

    /// Who carries out plugin-requested updates and evictions (the containers service).
    pub fn set_host(&self, host: Weak<dyn Host>) {
        let _ = self.host.set(host);
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enable
    }

    pub fn registration_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.registration_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms)
    }

    /// Whether `id`'s creation hook is under way (List and Status leave it out).
    pub fn is_hidden(&self, id: &str) -> bool {
        self.hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Hides `id` while the guard lives.
    pub fn hide(&self, id: &str) -> Hidden<'_> {
        self.hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        Hidden {
            nri: self,
            id: id.to_string(),
        }
    }

    /// Held by a creation from its hook until its record is final: no plugin
    /// synchronizes meanwhile.
    pub async fn block_sync(&self) -> Option<RwLockReadGuard<'_, ()>> {
        if !self.cfg.enable {
            return None;
        }
        Some(self.sync.read().await)
    }

    /// The registered plugins that are still connected, in call order.
    fn active(&self) -> Vec<Arc<Plugin>> {
        let mut list = self.plugins.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|p| !p.is_closed());
        list.clone()
    }

    /// The connected plugins' names, in call order.
    pub fn plugin_names(&self) -> Vec<String> {
        self.active().iter().map(|p| p.name()).collect()
    }

    /// One call to a plugin, bounded by `timeout`. A plugin that does not answer in time,
    /// or whose connection fails, is disconnected; the error names the plugin and the
    /// call.
    async fn invoke<T, F, Fut>(
        &self,
        p: &Plugin,
        what: &str,
        timeout: Duration,
        call: F,
    ) -> Result<T>
    where
        F: FnOnce(ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        let name = p.name();
        let ctx = ttrpc::context::with_duration(timeout);
        let grace = timeout + Duration::from_millis(200);
        let hung = || {
            p.close();
            Error::DeadlineExceeded(format!(
                "NRI plugin {name} did not answer {what} within {} ms; it is disconnected",
                timeout.as_millis()
            ))
        };
        match tokio::time::timeout(grace, call(ctx)).await {
            Ok(Ok(v)) => Ok(v),
            Err(_) => Err(hung()),
            Ok(Err(ttrpc::Error::Others(m))) if m.contains("deadline") => Err(hung()),
            Ok(Err(ttrpc::Error::RpcStatus(s))) => {
                if s.code() == ttrpc::Code::DEADLINE_EXCEEDED {
                    return Err(hung());
                }
                Err(Error::Internal(format!(
                    "NRI plugin {name} failed {what}: {}",
                    s.message()
                )))
            }
            Ok(Err(e)) => {
                p.close();
                Err(Error::Internal(format!(
                    "NRI plugin {name} failed {what}: {e} (its connection is gone; it is disconnected)"
                )))
            }
        }
    }

    // ---- startup, registration, synchronization ----

    /// Starts the pre-installed plugins and listens on the NRI socket (when enabled).
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        if !self.cfg.enable {
            tracing::info!("NRI is disabled");
            return Ok(());
        }
        for (idx, base) in self.discover()? {
            let name = berth_nri::plugin_name(&idx, &base);
            let config = match self.plugin_config(&idx, &base) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(plugin = %name, error = %e, "NRI plugin not started");
                    continue;
                }
            };
            let started = async {
                let (trunk, child) = plugin::launch(&self.cfg.plugin_path, &idx, &base)?;
                let preset = plugin::Preset {
                    idx: idx.clone(),
                    base: base.clone(),
                    config,
                    child: Some(child),
                };
                let p = plugin::connect(self, trunk, Some(preset)).await?;
                self.synchronize_and_add(Arc::new(p)).await
            };
            match started.await {
                Ok(()) => tracing::info!(plugin = %name, "pre-installed NRI plugin started"),
                Err(e) => {
                    tracing::warn!(plugin = %name, error = %e, "pre-installed NRI plugin failed to start")
                }
            }
        }
        let path = &self.cfg.socket_path;
        if path.as_os_str().is_empty() {
            tracing::info!("NRI: external plugin connections disabled");
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        }
        // A socket another runtime serves is left to it (NRI plugins of that runtime keep
        // working); a stale one is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            tracing::error!(socket = %path.display(), "NRI socket is served by another process: external NRI plugins cannot connect to berthd");
            return Ok(());
        }
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| Error::io(format!("bind NRI socket {}", path.display()), e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        tracing::info!(socket = %path.display(), nri_version = berth_nri::NRI_VERSION, "serving NRI");
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        // Out of fds, say: not a reason to spin.
                        tracing::warn!(error = %e, "NRI socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(nri) = me.upgrade() else { return };
                // Plugins register one at a time, as containerd's NRI does.
                match plugin::connect(&nri, conn, None).await {
                    Ok(p) => {
                        let name = p.name();
                        match nri.synchronize_and_add(Arc::new(p)).await {
                            Ok(()) => {
                                tracing::info!(plugin = %name, "NRI plugin connected and synchronized")
                            }
                            Err(e) => {
                                tracing::warn!(plugin = %name, error = %e, "NRI plugin failed to synchronize")
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "NRI plugin failed to register"),
                }
            }
        });
        Ok(())
    }

    /// The pre-installed plugins: executables named `IDX-NAME` in the plugin dir.
    fn discover(&self) -> Result<Vec<(String, String)>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = &self.cfg.plugin_path;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() || md.permissions().mode() & 0o111 == 0 {
                continue;
            }
            let file = e.file_name().to_string_lossy().into_owned();
            match berth_nri::parse_plugin_name(&file) {
                Ok(p) => found.push(p),
                Err(why) => tracing::warn!(file, why, "NRI plugin dir: not a plugin name"),
            }
        }
        found.sort();
        Ok(found)
    }

    /// A pre-installed plugin's configuration: `IDX-NAME.conf`, else `NAME.conf`.
    fn plugin_config(&self, idx: &str, base: &str) -> Result<String> {
        for f in [
            format!("{}.conf", berth_nri::plugin_name(idx, base)),
            format!("{base}.conf"),
        ] {
            let p = self.cfg.plugin_config_path.join(f);
            match std::fs::read_to_string(&p) {
                Ok(t) => return Ok(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
            }
        }
        Ok(String::new())
    }

    /// The pods and containers a synchronizing plugin is told of.
    fn snapshot(&self) -> Result<(Vec<api::PodSandbox>, Vec<api::Container>)> {
        let pods = self
            .store
            .pods()?
            .iter()
            .filter(|p| p.op != Some(crate::intent::Op::Run) && !self.is_hidden(&p.id))
            .map(|p| convert::pod(p, &self.default_cgroup_parent))
            .collect();
        let ctrs = self
            .store
            .containers()?
            .iter()
            .filter(|c| c.op != Some(crate::intent::Op::Create) && !self.is_hidden(&c.id))
            .map(|c| convert::container(c, None))
            .collect();
        Ok((pods, ctrs))
    }

    /// Synchronizes a configured plugin with every pod and container, then adds it to
    /// the plugins called from then on; creations wait meanwhile (the sync lock).
    async fn synchronize_and_add(&self, p: Arc<Plugin>) -> Result<()> {
        let updates = {
            let _sync = self.sync.write().await;
            let (pods, containers) = self.snapshot()?;
            let req = api::SynchronizeRequest {
                pods,
                containers,
                more: false,
                ..Default::default()
            };
            let rpl = self
                .invoke(&p, "Synchronize", plugin::sync_timeout(self), |ctx| {
                    p.client.synchronize(ctx, &req)
                })
                .await
                .inspect_err(|_| p.close())?;
            let mut list = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
            list.push(p.clone());
            list.sort_by(|a, b| (&a.idx, &a.base).cmp(&(&b.idx, &b.base)));
            tracing::info!(order = ?list.iter().map(|p| p.name()).collect::<Vec<_>>(), "NRI plugin invocation order");
            rpl.update
        };
        if !updates.is_empty() {
            let failed = self.apply_updates(&p.name(), updates, Vec::new()).await;
            if !failed.is_empty() {
                tracing::warn!(plugin = %p.name(), failed = failed.len(), "NRI: updates requested at Synchronize failed");
            }
        }
        Ok(())
    }

    /// Carries out container updates and evictions a plugin asked for; returns the
    /// updates that failed.
    pub async fn apply_updates(
        &self,
        plugin: &str,
        updates: Vec<api::ContainerUpdate>,
        evictions: Vec<api::ContainerEviction>,
    ) -> Vec<api::ContainerUpdate> {
        let host = self.host.get().and_then(Weak::upgrade);
        let mut failed = Vec::new();
        for u in updates {
            let res = match (&host, u.linux.as_ref().and_then(|l| l.resources.as_ref())) {
                (Some(h), Some(r)) => h.update_container(&u.container_id, r).await,
                (None, _) => Err(Error::Internal("no container service".into())),
                (_, None) => Ok(()),
            };
            if let Err(e) = res {
                tracing::warn!(plugin, container_id = %u.container_id, error = %e, "NRI container update failed");
                if !u.ignore_failure {
                    failed.push(u);
                }
            }
        }
        for ev in evictions {
            tracing::info!(plugin, container_id = %ev.container_id, reason = %ev.reason, "NRI plugin evicts a container");
            let res = match &host {
                Some(h) => h.evict_container(&ev.container_id, &ev.reason).await,
                None => Err(Error::Internal("no container service".into())),
            };
            if let Err(e) = res {
                tracing::warn!(plugin, container_id = %ev.container_id, error = %e, "NRI eviction failed");
            }
        }
        failed
    }

    // ---- events ----

    /// Calls every plugin subscribed to `event`, in order; the first failure ends it.
    async fn fan_out<T, F, Fut>(
        &self,
        event: api::Event,
        what: &str,
        call: F,
    ) -> Result<Vec<(String, T)>>
    where
        F: Fn(Arc<Plugin>, ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        let mut out = Vec::new();
        if !self.cfg.enable {
            return Ok(out);
        }
        for p in self.active() {
            if !p.subscribed(event) {
                continue;
            }
            let q = p.clone();
            let v = self
                .invoke(&p, what, self.request_timeout(), |ctx| call(q, ctx))
                .await?;
            out.push((p.name(), v));
        }
        Ok(out)
    }

    /// A notification: failures are logged, never returned.
    async fn notify<T, F, Fut>(&self, event: api::Event, what: &str, id: &str, call: F)
    where
        F: Fn(Arc<Plugin>, ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        if let Err(e) = self.fan_out(event, what, call).await {
            tracing::warn!(id, error = %e, "NRI {what} notification failed");
        }
    }

    fn pod(&self, rec: &PodRecord) -> api::PodSandbox {
        convert::pod(rec, &self.default_cgroup_parent)
    }

    /// RunPodSandbox's hook: the pod is running, not yet Ready. An error fails (and so
    /// undoes) the RunPodSandbox.
    pub async fn run_pod_sandbox(&self, rec: &PodRecord) -> Result<()> {
        let req = api::RunPodSandboxRequest {
            pod: protobuf::MessageField::some(self.pod(rec)),
            ..Default::default()
        };
        self.fan_out(api::Event::RUN_POD_SANDBOX, "RunPodSandbox", |p, ctx| {
            let req = req.clone();
            async move { p.client.run_pod_sandbox(ctx, &req).await }
        })
        .await
        .map(drop)
    }

    /// StopPodSandbox's: its containers are stopped, its infra still there.
    pub async fn stop_pod_sandbox(&self, rec: &PodRecord) {
        let req = api::StopPodSandboxRequest {
            pod: protobuf::MessageField::some(self.pod(rec)),
            ..Default::default()
        };
        self.notify(
            api::Event::STOP_POD_SANDBOX,
            "StopPodSandbox",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.stop_pod_sandbox(ctx, &req).await }
            },
        )
        .await
    }

    pub async fn remove_pod_sandbox(&self, rec: &PodRecord) {
        let req = api::RemovePodSandboxRequest {
            pod: protobuf::MessageField::some(self.pod(rec)),
            ..Default::default()
        };
        self.notify(
            api::Event::REMOVE_POD_SANDBOX,
            "RemovePodSandbox",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.remove_pod_sandbox(ctx, &req).await }
            },
        )
        .await
    }

    /// CreateContainer's hook: each plugin in order may adjust the container (applied to
    /// `spec` at once: the next plugin sees the container adjusted) and update or evict
    /// others (carried out once every plugin has answered). An error fails the create.
    pub async fn create_container(
        &self,
        pod: &PodRecord,
        rec: &ContainerRecord,
        spec: &mut oci_spec::runtime::Spec,
    ) -> Result<()> {
        if !self.cfg.enable || self.active().is_empty() {
            return Ok(());
        }
        let mut json: Value =
            serde_json::to_value(&*spec).map_err(|e| Error::Internal(format!("spec: {e}")))?;
        let mut owners = adjust::Owners::default();
        let mut updates = Vec::new();
        let mut evictions = Vec::new();
        let pod_msg = self.pod(pod);
        let mut adjusted = false;
        for p in self.active() {
            if !p.subscribed(api::Event::CREATE_CONTAINER) {
                continue;
            }
            self.announced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rec.id.clone());
            let req = api::CreateContainerRequest {
                pod: protobuf::MessageField::some(pod_msg.clone()),
                container: protobuf::MessageField::some(convert::container(rec, Some(&json))),
                ..Default::default()
            };
            let rpl = self
                .invoke(&p, "CreateContainer", self.request_timeout(), |ctx| {
                    p.client.create_container(ctx, &req)
                })
                .await?;
            if let Some(a) = rpl.adjust.as_ref() {
                adjust::apply(&mut json, a, &p.name(), &mut owners)?;
                adjusted = true;
            }
            updates.extend(rpl.update.into_iter().map(|u| (p.name(), u)));
            evictions.extend(rpl.evict.into_iter().map(|e| (p.name(), e)));
        }
        if adjusted {
            *spec = serde_json::from_value(json).map_err(|e| {
                Error::InvalidArgument(format!(
                    "NRI plugins' adjustments make an invalid OCI spec: {e}"
                ))
            })?;
        }
        for (plugin, u) in updates {
            if u.container_id == rec.id {
                continue;
            }
            let failed = self.apply_updates(&plugin, vec![u], Vec::new()).await;
            if let Some(f) = failed.first() {
                return Err(Error::FailedPrecondition(format!(
                    "NRI plugin {plugin}: updating container {} failed",
                    f.container_id
                )));
            }
        }
        for (plugin, e) in evictions {
            self.apply_updates(&plugin, Vec::new(), vec![e]).await;
        }
        Ok(())
    }

    /// A creation that failed after plugins were told of it (by CreateContainer): they
    /// hear RemoveContainer, so what they set aside for it can go (containerd's undo).
    pub async fn undo_create_container(&self, pod: &PodRecord, rec: &ContainerRecord) {
        let told = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.id);
        if told {
            self.remove_container(Some(pod), rec).await;
        }
    }

    fn ctr_req(&self, pod: &PodRecord, rec: &ContainerRecord) -> (api::PodSandbox, api::Container) {
        (self.pod(pod), convert::container(rec, None))
    }

    pub async fn post_create_container(&self, pod: &PodRecord, rec: &ContainerRecord) {
        if !self.cfg.enable {
            return;
        }
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.id);
        let (pod, ctr) = self.ctr_req(pod, rec);
        let req = api::PostCreateContainerRequest {
            pod: protobuf::MessageField::some(pod),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_CREATE_CONTAINER,
            "PostCreateContainer",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.post_create_container(ctx, &req).await }
            },
        )
        .await
    }

    /// StartContainer's hook, before the process starts: an error fails the start (the
    /// container stays Created).
    pub async fn start_container(&self, pod: &PodRecord, rec: &ContainerRecord) -> Result<()> {
        if !self.cfg.enable {
            return Ok(());
        }
        let (pod, ctr) = self.ctr_req(pod, rec);
        let req = api::StartContainerRequest {
            pod: protobuf::MessageField::some(pod),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        self.fan_out(api::Event::START_CONTAINER, "StartContainer", |p, ctx| {
            let req = req.clone();
            async move { p.client.start_container(ctx, &req).await }
        })
        .await
        .map(drop)
    }

    pub async fn post_start_container(&self, pod: &PodRecord, rec: &ContainerRecord) {
        if !self.cfg.enable {
            return;
        }
        let (pod, ctr) = self.ctr_req(pod, rec);
        let req = api::PostStartContainerRequest {
            pod: protobuf::MessageField::some(pod),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_START_CONTAINER,
            "PostStartContainer",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.post_start_container(ctx, &req).await }
            },
        )
        .await
    }

    /// UpdateContainerResources' hook: plugins may change the resources asked for (their
    /// update of this container wins) and update others. Returns the resources to apply.
    pub async fn update_container(
        &self,
        pod: &PodRecord,
        rec: &ContainerRecord,
        asked: &Resources,
    ) -> Result<Resources> {
        if !self.cfg.enable || self.active().is_empty() {
            return Ok(asked.clone());
        }
        let (pod_msg, ctr) = self.ctr_req(pod, rec);
        let req = api::UpdateContainerRequest {
            pod: protobuf::MessageField::some(pod_msg),
            container: protobuf::MessageField::some(ctr),
            linux_resources: protobuf::MessageField::some(convert::resources(asked)),
            ..Default::default()
        };
        let answers = self
            .fan_out(api::Event::UPDATE_CONTAINER, "UpdateContainer", |p, ctx| {
                let req = req.clone();
                async move { p.client.update_container(ctx, &req).await }
            })
            .await?;
        let mut res = asked.clone();
        for (plugin, a) in answers {
            for u in a.update {
                if u.container_id == rec.id {
                    if let Some(r) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) {
                        res = convert::merge_resources(&res, r);
                    }
                } else {
                    self.apply_updates(&plugin, vec![u], Vec::new()).await;
                }
            }
            self.apply_updates(&plugin, Vec::new(), a.evict).await;
        }
        Ok(res)
    }

    pub async fn post_update_container(&self, pod: &PodRecord, rec: &ContainerRecord) {
        if !self.cfg.enable {
            return;
        }
        let (pod, ctr) = self.ctr_req(pod, rec);
        let req = api::PostUpdateContainerRequest {
            pod: protobuf::MessageField::some(pod),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_UPDATE_CONTAINER,
            "PostUpdateContainer",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.post_update_container(ctx, &req).await }
            },
        )
        .await
    }

    /// A container has stopped (whoever learnt it first): StopContainer goes to the
    /// plugins in the background; [`Nri::stopped`] waits for it.
    pub fn container_stopped(self: &Arc<Self>, id: &str) {
        if !self.cfg.enable || self.active().is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tx, rx) = watch::channel(false);
        self.stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), rx);
        let me = self.clone();
        let id = id.to_string();
        rt.spawn(async move {
            me.stop_container(&id).await;
            let _ = tx.send(true);
            me.stops
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    async fn stop_container(&self, id: &str) {
        let Ok(rec) = self.store.container(id) else {
            return;
        };
        let Ok(pod) = self.store.pod(&rec.pod_id) else {
            return;
        };
        let (pod_msg, ctr) = self.ctr_req(&pod, &rec);
        let req = api::StopContainerRequest {
            pod: protobuf::MessageField::some(pod_msg),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        match self
            .fan_out(api::Event::STOP_CONTAINER, "StopContainer", |p, ctx| {
                let req = req.clone();
                async move { p.client.stop_container(ctx, &req).await }
            })
            .await
        {
            Ok(answers) => {
                for (plugin, a) in answers {
                    let failed = self.apply_updates(&plugin, a.update, Vec::new()).await;
                    if !failed.is_empty() {
                        tracing::warn!(plugin, "NRI: updates requested at StopContainer failed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(container_id = id, error = %e, "NRI StopContainer notification failed")
            }
        }
    }

    /// Waits until the StopContainer notification of `id` (if one is under way) is done.
    pub async fn stopped(&self, id: &str) {
        let rx = self
            .stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    pub async fn remove_container(&self, pod: Option<&PodRecord>, rec: &ContainerRecord) {
        if !self.cfg.enable {
            return;
        }
        self.stopped(&rec.id).await;
        let pod_msg = match pod {
            Some(p) => self.pod(p),
            None => api::PodSandbox {
                id: rec.pod_id.clone(),
                ..Default::default()
            },
        };
        let req = api::RemoveContainerRequest {
            pod: protobuf::MessageField::some(pod_msg),
            container: protobuf::MessageField::some(convert::container(rec, None)),
            ..Default::default()
        };
        self.notify(
            api::Event::REMOVE_CONTAINER,
            "RemoveContainer",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.remove_container(ctx, &req).await }
            },
        )
        .await
    }
}
