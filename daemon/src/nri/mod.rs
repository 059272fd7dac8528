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
//!   (`adjust`) once the default validator and the validator plugins accept them all
//!   (`validate`); their updates to other containers and evictions are carried out.
//! * UpdateContainerResources and UpdatePodSandboxResources ask the plugins first; a
//!   refusal fails the call before anything changes.
//! * Stop and remove events are notifications: a failing plugin is logged, never stops
//!   a pod or a container from going.
//! * A plugin's registration takes the sync lock for writing; pod and container
//!   creations hold it for reading from their hook to their record: a plugin sees every
//!   container either in its Synchronize or through its CreateContainer, never neither.

mod adjust;
pub mod convert;
mod lifecycle;
mod plugin;
mod registration;
mod validate;

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

/// The newest OCI runtime-spec version `binary` implements (its `features`'
/// `ociVersionMax`; (0, 0, 0) if it cannot tell, as runc before 1.1 cannot).
fn spec_version_max(binary: &str) -> (u32, u32, u32) {
    let v = std::process::Command::new(binary)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v["ociVersionMax"].as_str().map(str::to_string))
        .unwrap_or_default();
    let mut n = v
        .split(['.', '-', '+'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    (
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
    )
}

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
    /// The OCI runtime binary, and whether it honours what runtime-spec 1.2 added
    /// (`process.ioPriority`), asked once (`runc features`).
    runtime_binary: String,
    spec_1_2: OnceLock<bool>,
    /// Where the CDI devices plugins ask for are resolved.
    cdi: Arc<crate::cdi::Registry>,
    /// Registered plugins, in index (then name) order.
    plugins: Mutex<Vec<Arc<Plugin>>>,
    /// Held for writing while a plugin synchronizes, for reading by creations.
    sync: RwLock<()>,
    /// Pods and containers whose RunPodSandbox/CreateContainer hook is under way.
    hidden: Mutex<HashSet<String>>,
    /// StopContainer notifications under way, by container id (done = true).
    stops: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Containers being started whose PostStartContainer is not sent yet (done = true): a
    /// fast container's StopContainer waits for it, so plugins hear them in order.
    starting: Mutex<HashMap<String, watch::Receiver<bool>>>,
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

/// A container's start under way (from its StartContainer hook until its
/// PostStartContainer was sent, or the start failed): dropped, it lets the container's
/// StopContainer notification go.
pub struct Starting<'a> {
    nri: &'a Nri,
    id: String,
    done: Option<watch::Sender<bool>>,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            self.nri
                .starting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.id);
            let _ = tx.send(true);
        }
    }
}

impl Nri {
    pub fn new(
        cfg: config::Nri,
        store: Arc<Store>,
        default_cgroup_parent: String,
        runtime_binary: String,
        cdi: Arc<crate::cdi::Registry>,
    ) -> Arc<Nri> {
        Arc::new(Nri {
            cfg,
            store,
            default_cgroup_parent,
            runtime_binary,
            cdi,
            spec_1_2: OnceLock::new(),
            plugins: Mutex::default(),
            sync: RwLock::new(()),
            hidden: Mutex::default(),
            stops: Mutex::default(),
            starting: Mutex::default(),
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

    /// What the OCI runtime can honour of the adjustments (asked once, off the async
    /// workers: `runc features` is a process to wait for).
    pub(super) async fn runtime_caps(&self) -> adjust::Caps {
        if let Some(v) = self.spec_1_2.get() {
            return adjust::Caps { io_priority: *v };
        }
        let bin = self.runtime_binary.clone();
        let v = tokio::task::spawn_blocking(move || spec_version_max(&bin) >= (1, 2, 0))
            .await
            .unwrap_or(false);
        let _ = self.spec_1_2.set(v);
        adjust::Caps { io_priority: v }
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

    /// Whether a connected plugin subscribes to the pod-stop notification: a pod's stop
    /// then tears its network down only after the plugins heard of the stop (containerd's
    /// order); else the teardown runs beside the containers' kill (`pod::teardown`).
    pub fn hears_pod_stops(&self) -> bool {
        self.cfg.enable
            && self
                .active()
                .iter()
                .any(|p| p.subscribed(api::Event::STOP_POD_SANDBOX))
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
}
