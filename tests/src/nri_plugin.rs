//! A small NRI plugin for the tests (the plugin side of `berth-nri`): it connects to a
//! runtime's NRI socket, registers under a name and index, records every event it is
//! sent, and answers CreateContainer with a given adjustment and UpdateContainer with a
//! given update, validates (or refuses) adjustments, or fails, hangs or drops its
//! connection on one event, as a test asks.
//!
//! ```ignore
//! let p = TestPlugin::connect(&sock, "adjust", "10", Behavior { adjust: Some(a), ..Default::default() }).await?;
//! // ... CRI calls ...
//! assert!(p.saw("CreateContainer", &ctr_id));
//! ```

use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_nri::api;
use berth_nri::api_ttrpc::Plugin;
use berth_nri::conn::Connection;
use tokio::sync::Notify;

use crate::berthd::{Berthd, Builder};
use ttrpc::r#async::TtrpcContext;

/// What the plugin does on one event.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Fault {
    /// Answers normally.
    #[default]
    None,
    /// Returns this error.
    Fail(String),
    /// Never answers (until its connection goes).
    Hang,
    /// Drops its connection in the middle of the call (a plugin that crashes).
    Crash,
}

/// How the plugin behaves.
#[derive(Clone, Debug, Default)]
pub struct Behavior {
    /// The adjustment it answers CreateContainer with.
    pub adjust: Option<api::ContainerAdjustment>,
    /// Its answer to RunPodSandbox.
    pub on_run_pod: Fault,
    /// Its answer to CreateContainer.
    pub on_create: Fault,
    /// Its answer to UpdateContainer and UpdatePodSandbox.
    pub on_update: Fault,
    pub on_update_pod: Fault,
    /// The resources it answers UpdateContainer with (an update of that container).
    pub update: Option<api::LinuxResources>,
    /// As a validator: the reason it rejects every container's adjustments with.
    pub reject: Option<String>,
    /// Its events subscription (0: all).
    pub events: i32,
    /// Adds to every container the env its configuration names (`KEY=VALUE` lines, as
    /// a pre-installed plugin's `.conf` holds).
    pub env_from_config: bool,
}

/// One event as the plugin received it.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: &'static str,
    pub pod_id: String,
    pub container_id: String,
    pub container_name: String,
    /// The container's annotations and env as sent (PostCreateContainer shows them
    /// adjusted).
    pub annotations: std::collections::HashMap<String, String>,
    pub env: Vec<String>,
    /// The resources UpdateContainer and UpdatePodSandbox asked for.
    pub resources: Option<api::LinuxResources>,
}

struct State {
    behavior: Behavior,
    events: Mutex<Vec<Event>>,
    synced: Notify,
    synced_ids: Mutex<Option<(Vec<String>, Vec<String>)>>,
    conn: OnceLock<Arc<Connection>>,
    config: Mutex<String>,
    validations: Mutex<Vec<api::ValidateContainerAdjustmentRequest>>,
}

impl State {
    fn record(&self, kind: &'static str, pod: &api::PodSandbox, c: Option<&api::Container>) {
        self.record_with(kind, pod, c, None)
    }

    fn record_with(
        &self,
        kind: &'static str,
        pod: &api::PodSandbox,
        c: Option<&api::Container>,
        resources: Option<&api::LinuxResources>,
    ) {
        let c = c.cloned().unwrap_or_default();
        self.events.lock().unwrap().push(Event {
            kind,
            pod_id: pod.id.clone(),
            container_id: c.id.clone(),
            container_name: c.name.clone(),
            annotations: c.annotations.clone(),
            env: c.env.clone(),
            resources: resources.cloned(),
        });
    }

    async fn fault(&self, f: &Fault) -> ttrpc::Result<()> {
        match f {
            Fault::None => Ok(()),
            Fault::Fail(msg) => Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::UNKNOWN,
                msg.clone(),
            ))),
            Fault::Hang => std::future::pending().await,
            Fault::Crash => {
                if let Some(c) = self.conn.get() {
                    c.close();
                }
                std::future::pending().await
            }
        }
    }
}

struct Service(Arc<State>);

#[async_trait::async_trait]
impl Plugin for Service {
    async fn configure(
        &self,
        _: &TtrpcContext,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        *self.0.config.lock().unwrap() = req.config;
        Ok(api::ConfigureResponse {
            events: self.0.behavior.events,
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _: &TtrpcContext,
        req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        *self.0.synced_ids.lock().unwrap() = Some((
            req.pods.iter().map(|p| p.id.clone()).collect(),
            req.containers.iter().map(|c| c.id.clone()).collect(),
        ));
        self.0.synced.notify_one();
        Ok(api::SynchronizeResponse::new())
    }

    async fn run_pod_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::RunPodSandboxRequest,
    ) -> ttrpc::Result<api::RunPodSandboxResponse> {
        self.0.record("RunPodSandbox", &req.pod, None);
        self.0.fault(&self.0.behavior.on_run_pod).await?;
        Ok(api::RunPodSandboxResponse::new())
    }

    async fn stop_pod_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::StopPodSandboxRequest,
    ) -> ttrpc::Result<api::StopPodSandboxResponse> {
        self.0.record("StopPodSandbox", &req.pod, None);
        Ok(api::StopPodSandboxResponse::new())
    }

    async fn remove_pod_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::RemovePodSandboxRequest,
    ) -> ttrpc::Result<api::RemovePodSandboxResponse> {
        self.0.record("RemovePodSandbox", &req.pod, None);
        Ok(api::RemovePodSandboxResponse::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        self.0
            .record("CreateContainer", &req.pod, req.container.as_ref());
        self.0.fault(&self.0.behavior.on_create).await?;
        let mut adjust = self.0.behavior.adjust.clone();
        if self.0.behavior.env_from_config {
            let a = adjust.get_or_insert_with(api::ContainerAdjustment::new);
            for line in self.0.config.lock().unwrap().lines() {
                if let Some((k, v)) = line.trim().split_once('=') {
                    a.env.push(api::KeyValue {
                        key: k.into(),
                        value: v.into(),
                        ..Default::default()
                    });
                }
            }
        }
        Ok(api::CreateContainerResponse {
            adjust: adjust.into(),
            ..Default::default()
        })
    }

    async fn post_create_container(
        &self,
        _: &TtrpcContext,
        req: api::PostCreateContainerRequest,
    ) -> ttrpc::Result<api::PostCreateContainerResponse> {
        self.0
            .record("PostCreateContainer", &req.pod, req.container.as_ref());
        Ok(api::PostCreateContainerResponse::new())
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: api::StartContainerRequest,
    ) -> ttrpc::Result<api::StartContainerResponse> {
        self.0
            .record("StartContainer", &req.pod, req.container.as_ref());
        Ok(api::StartContainerResponse::new())
    }

    async fn post_start_container(
        &self,
        _: &TtrpcContext,
        req: api::PostStartContainerRequest,
    ) -> ttrpc::Result<api::PostStartContainerResponse> {
        self.0
            .record("PostStartContainer", &req.pod, req.container.as_ref());
        Ok(api::PostStartContainerResponse::new())
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::UpdateContainerResponse> {
        self.0.record_with(
            "UpdateContainer",
            &req.pod,
            req.container.as_ref(),
            req.linux_resources.as_ref(),
        );
        self.0.fault(&self.0.behavior.on_update).await?;
        let mut rpl = api::UpdateContainerResponse::new();
        if let Some(r) = &self.0.behavior.update {
            rpl.update.push(api::ContainerUpdate {
                container_id: req.container.id.clone(),
                linux: protobuf::MessageField::some(api::LinuxContainerUpdate {
                    resources: protobuf::MessageField::some(r.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        Ok(rpl)
    }

    async fn post_update_container(
        &self,
        _: &TtrpcContext,
        req: api::PostUpdateContainerRequest,
    ) -> ttrpc::Result<api::PostUpdateContainerResponse> {
        self.0
            .record("PostUpdateContainer", &req.pod, req.container.as_ref());
        Ok(api::PostUpdateContainerResponse::new())
    }

    async fn update_pod_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::UpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::UpdatePodSandboxResponse> {
        self.0.record_with(
            "UpdatePodSandbox",
            &req.pod,
            None,
            req.linux_resources.as_ref(),
        );
        self.0.fault(&self.0.behavior.on_update_pod).await?;
        Ok(api::UpdatePodSandboxResponse::new())
    }

    async fn post_update_pod_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::PostUpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::PostUpdatePodSandboxResponse> {
        let r = req
            .pod
            .linux
            .as_ref()
            .and_then(|l| l.pod_resources.as_ref());
        self.0
            .record_with("PostUpdatePodSandbox", &req.pod, None, r);
        Ok(api::PostUpdatePodSandboxResponse::new())
    }

    async fn validate_container_adjustment(
        &self,
        _: &TtrpcContext,
        req: api::ValidateContainerAdjustmentRequest,
    ) -> ttrpc::Result<api::ValidateContainerAdjustmentResponse> {
        self.0.validations.lock().unwrap().push(req);
        Ok(match &self.0.behavior.reject {
            Some(reason) => api::ValidateContainerAdjustmentResponse {
                reject: true,
                reason: reason.clone(),
                ..Default::default()
            },
            None => api::ValidateContainerAdjustmentResponse::new(),
        })
    }

    async fn stop_container(
        &self,
        _: &TtrpcContext,
        req: api::StopContainerRequest,
    ) -> ttrpc::Result<api::StopContainerResponse> {
        self.0
            .record("StopContainer", &req.pod, req.container.as_ref());
        Ok(api::StopContainerResponse::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::RemoveContainerResponse> {
        self.0
            .record("RemoveContainer", &req.pod, req.container.as_ref());
        Ok(api::RemoveContainerResponse::new())
    }
}

/// A connected, registered and synchronized test plugin.
pub struct TestPlugin {
    state: Arc<State>,
    conn: Arc<Connection>,
    pub runtime: berth_nri::api_ttrpc::RuntimeClient,
    /// The pod and container ids its Synchronize listed.
    pub synced: (Vec<String>, Vec<String>),
}

impl TestPlugin {
    /// Connects to the runtime's NRI socket as `IDX-NAME` and waits (5 s at most) for
    /// its Synchronize.
    pub async fn connect(socket: &Path, name: &str, idx: &str, b: Behavior) -> Result<TestPlugin> {
        let trunk = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connect to {}", socket.display()))?;
        TestPlugin::over(trunk, name, idx, b).await
    }

    /// A plugin that only adjusts every container it is asked to create with `a`.
    pub async fn adjusting(
        socket: &Path,
        name: &str,
        idx: &str,
        a: api::ContainerAdjustment,
    ) -> Result<TestPlugin> {
        let b = Behavior {
            adjust: Some(a),
            ..Default::default()
        };
        TestPlugin::connect(socket, name, idx, b).await
    }

    /// The same over an already-connected socket (a pre-installed plugin's fd 3).
    pub async fn over(
        trunk: tokio::net::UnixStream,
        name: &str,
        idx: &str,
        b: Behavior,
    ) -> Result<TestPlugin> {
        let state = Arc::new(State {
            behavior: b,
            events: Mutex::default(),
            synced: Notify::new(),
            synced_ids: Mutex::default(),
            conn: OnceLock::new(),
            config: Mutex::default(),
            validations: Mutex::default(),
        });
        let (conn, runtime) =
            berth_nri::conn::plugin_side(trunk, Arc::new(Service(state.clone()))).await?;
        let conn = Arc::new(conn);
        let _ = state.conn.set(conn.clone());
        let req = api::RegisterPluginRequest {
            plugin_name: name.into(),
            plugin_idx: idx.into(),
            NRI_version: berth_nri::NRI_VERSION.into(),
            ..Default::default()
        };
        runtime
            .register_plugin(ttrpc::context::with_duration(Duration::from_secs(5)), &req)
            .await
            .context("RegisterPlugin")?;
        let synced = state.synced.notified();
        if tokio::time::timeout(Duration::from_secs(5), synced)
            .await
            .is_err()
        {
            bail!("plugin {idx}-{name}: no Synchronize within 5 s");
        }
        let synced = state.synced_ids.lock().unwrap().clone().unwrap_or_default();
        Ok(TestPlugin {
            state,
            conn,
            runtime,
            synced,
        })
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Event> {
        self.state.events.lock().unwrap().clone()
    }

    /// The ValidateContainerAdjustment requests it was sent.
    pub fn validations(&self) -> Vec<api::ValidateContainerAdjustmentRequest> {
        self.state.validations.lock().unwrap().clone()
    }

    /// The kinds of the events about `id` (a pod's or a container's), in order.
    pub fn kinds_of(&self, id: &str) -> Vec<&'static str> {
        self.events()
            .iter()
            .filter(|e| {
                if e.container_id.is_empty() {
                    e.pod_id == id
                } else {
                    e.container_id == id
                }
            })
            .map(|e| e.kind)
            .collect()
    }

    /// The first `kind` event about container `id`.
    pub fn event(&self, kind: &str, container_id: &str) -> Option<Event> {
        self.events()
            .into_iter()
            .find(|e| e.kind == kind && e.container_id == container_id)
    }

    /// Whether its connection is gone (closed by the runtime, or by a Crash).
    pub fn is_closed(&self) -> bool {
        self.conn.mux.is_closed()
    }

    /// Resolves once its connection is gone.
    pub async fn closed(&self) {
        self.conn.mux.closed().await
    }

    /// Disconnects it.
    pub fn close(&self) {
        self.conn.close();
    }
}

impl Drop for TestPlugin {
    fn drop(&mut self) {
        self.close();
    }
}

/// A berthd with NRI on a socket of its own (request timeout `timeout_ms`) and no
/// pre-installed plugins; the socket's path.
pub fn nri_berthd(timeout_ms: u64) -> Result<(Builder, tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("berth-nri-")
        .tempdir_in("/tmp")?;
    let sock = dir.path().join("nri.sock");
    let toml = format!(
        "[nri]\nenable = true\nsocket_path = \"{}\"\nplugin_path = \"{}\"\nplugin_config_path = \"{}\"\nrequest_timeout_ms = {timeout_ms}\n",
        sock.display(),
        dir.path().join("plugins").display(),
        dir.path().join("conf.d").display(),
    );
    Ok((Berthd::builder().busybox().config(&toml), dir, sock))
}

pub fn opt_i64(v: i64) -> protobuf::MessageField<api::OptionalInt64> {
    protobuf::MessageField::some(api::OptionalInt64 {
        value: v,
        ..Default::default()
    })
}

/// Polls `f` every 50 ms until it gives a value, for `within` at most.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        ensure!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
