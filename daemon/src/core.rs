//! berthd's core: the services, each with its own state, wired together once. Imports
//! point one way: `recovery` → `pod` → `container` → (`shim_client`, `image`,
//! `network`, `events`, `records`, `store`); the CRI and streaming adapters sit on top.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::container::Containers;
use crate::error::{Error, Result};
use crate::events::EventHub;
use crate::image::{ImageStore, Puller};
use crate::metrics::{Census, Metrics};
use crate::network::Cni;
use crate::node::Node;
use crate::nri::Nri;
use crate::pod::{Pods, PodsDeps};
use crate::records::{CtrState, PodState, Records};
use crate::recovery::{Recovery, RecoveryDeps};
use crate::shim_client::{Launcher, ShimLauncher, Shims, TaskOptions};
use crate::store::Store;

/// The dirs berthd keeps in `paths.root` (made private at startup).
const ROOT_DIRS: &[&str] = &["content", "snapshots", "pods", "containers", "pause"];
/// The dirs berthd keeps in `paths.state`.
const STATE_DIRS: &[&str] = &["pods", "containers", "netns", "exec", "cni"];

pub struct Core {
    pub config: Arc<Config>,
    /// Kept for tests, which write records directly; services own their reads/writes.
    #[cfg_attr(not(test), allow(dead_code))]
    store: Arc<Store>,
    pub node: Arc<Node>,
    pub images: Arc<ImageStore>,
    /// Registry access for PullImage (mirrors, plain-HTTP hosts, clients).
    pub puller: Arc<Puller>,
    /// Lifecycle events for GetContainerEvents.
    pub events: Arc<EventHub>,
    pub containers: Arc<Containers>,
    pub pods: Arc<Pods>,
    pub recovery: Arc<Recovery>,
    /// The metrics every service records into (served when `[metrics] address` is set).
    pub metrics: Arc<Metrics>,
    /// NRI plugins (`[nri]`), started by [`Nri::start`] once recovery is done.
    pub nri: Arc<Nri>,
}

/// Pods and containers by state, from the records (for the metrics' census).
fn census(store: &Store) -> Option<Census> {
    let read = || -> Result<Census> {
        let pods = store.pods()?;
        let ctrs = store.containers()?;
        let pods_in = |s: PodState| pods.iter().filter(|p| p.state == s).count() as i64;
        let ctrs_in = |s: CtrState| ctrs.iter().filter(|c| c.state == s).count() as i64;
        Ok(Census {
            pods: vec![
                ("ready", pods_in(PodState::Ready)),
                ("notready", pods_in(PodState::NotReady)),
            ],
            containers: vec![
                ("created", ctrs_in(CtrState::Created)),
                ("running", ctrs_in(CtrState::Running)),
                ("exited", ctrs_in(CtrState::Exited)),
            ],
        })
    };
    read()
        .map_err(|e| tracing::warn!(error = %e, "metrics: reading the records"))
        .ok()
}

/// What berthd learns of the node before it serves, started first thing: the user-
/// namespace probe (a process in a new user namespace, an idmapped overlay mounted and
/// unmounted: about 30 ms) runs on a thread of its own while the store is checked,
/// opened and its record copies synced, instead of before them.
pub struct NodeProbes {
    shim_binary: PathBuf,
    pause_rootfs: PathBuf,
    userns: std::thread::JoinHandle<std::result::Result<crate::node::userns::RootfsWay, String>>,
}

impl NodeProbes {
    pub fn start(config: &Config) -> Result<NodeProbes> {
        // The root and state dirs are made by `pause_rootfs` and `with_parts`.
        let shim_binary = crate::shim_client::locate(&config.runtime.shim)?;
        let pause_rootfs = crate::pod::pause_rootfs(&config.paths.root)?;
        let (scratch, pause) = (
            config.paths.root.join("userns-probe"),
            pause_rootfs.join("pause"),
        );
        let (mode, runtime) = (config.userns.rootfs, config.runtime.binary.clone());
        // Startup, before the server serves: blocking here stalls no call.
        let userns = std::thread::Builder::new()
            .name("berth-probe".into())
            .spawn(move || {
                crate::node::note_crun(&runtime);
                crate::node::userns::probe(&scratch, &pause, &[], mode)
            })
            .map_err(|e| Error::io("spawn the user-namespace probe", e))?;
        Ok(NodeProbes {
            shim_binary,
            pause_rootfs,
            userns,
        })
    }
}

impl Core {
    pub fn open(config: Config, probes: NodeProbes) -> Result<Arc<Core>> {
        let launcher = ShimLauncher::new(probes.shim_binary, config.server.socket.clone());
        let core = Core::with_parts(config, launcher, probes.pause_rootfs)?;
        let userns = probes
            .userns
            .join()
            .unwrap_or_else(|_| Err("the user-namespace probe panicked".into()));
        match &userns {
            Ok(crate::node::userns::RootfsWay::Idmap) => {
                tracing::info!("user namespaces: available (overlay rootfs on idmapped layers)")
            }
            Ok(crate::node::userns::RootfsWay::Copy) => {
                tracing::info!(
                    "user namespaces: available (overlay rootfs on remapped copies of the layers)"
                )
            }
            Err(why) => tracing::info!(reason = %why, "user namespaces: not available"),
        }
        core.node.set_userns(userns);
        Ok(core)
    }

    /// Builds the core from already-made parts (how shims are launched, the pause
    /// rootfs): unit tests pass fake shims.
    pub fn with_parts(
        config: Config,
        launcher: Arc<dyn Launcher>,
        pause_rootfs: PathBuf,
    ) -> Result<Arc<Core>> {
        // Root's alone below the top dirs; corrects a tree made with default modes.
        crate::util::modes::secure_top(&config.paths.root, ROOT_DIRS)?;
        crate::util::modes::secure_top(&config.paths.state, STATE_DIRS)?;
        // A user-namespaced pod's root walks to its rootfs: the infra's under pause/ (or,
        // from a sandbox image, in its bundle under pods/), a container's in its bundle
        // under containers/. Traversable, never listable; each bundle is 0700 unless its
        // pod has a user namespace (then 0711).
        crate::util::modes::traversable_dir(&config.paths.root.join("pause"))?;
        crate::util::modes::traversable_dir(&config.paths.state.join("containers"))?;
        crate::util::modes::traversable_dir(&config.paths.state.join("pods"))?;
        let config = Arc::new(config);
        let mut store = Store::open(&config.store_path())?;
        crate::records::migrate::ensure_current(&store)?;
        // Every pod and container record is kept as a copy too (a lost store is rebuilt
        // from them, `salvage`); records a berthd without copies wrote get theirs now.
        let copies = Arc::new(crate::records::copies::RecordCopies::new(
            &config.paths.root,
        ));
        let began = std::time::Instant::now();
        match copies.sync(&store) {
            Ok(n) => tracing::info!(
                written = n,
                ms = %format!("{:.1}", began.elapsed().as_secs_f64() * 1e3),
                "record copies checked"
            ),
            Err(e) => tracing::warn!(error = %e, "record copies not brought up to date"),
        }
        store.set_copies(copies);
        let store = Arc::new(store);
        let images = Arc::new(ImageStore::open(&config.paths.root, store.clone())?);
        let census_store = store.clone();
        let metrics = Arc::new(Metrics::new(Box::new(move || census(&census_store))));
        // The built-in network's copy is written only when it is in use.
        let builtin_on = config.cni.default.enabled;
        let builtin =
            crate::network::builtin::load(&config.cni.default, &config.paths.state, builtin_on)?;
        let cni = Arc::new(
            Cni::new(config.cni.conf_dir.clone(), config.cni.bin_dirs.clone())
                .with_timeout(std::time::Duration::from_secs(config.cni.plugin_timeout))
                .with_builtin(builtin, builtin_on),
        );
        let puller = Arc::new(Puller::new(config.registry.clone(), metrics.pull.clone()));
        let node = Arc::new(Node::new(
            config.cni.conf_dir.clone(),
            builtin_on,
            config.runtime.binary.clone(),
        ));
        let shims = Arc::new(Shims::new(
            launcher,
            TaskOptions {
                binary: config.runtime.binary.clone(),
                systemd_cgroup: config.runtime.cgroup_driver.is_systemd(),
            },
            metrics.shims_alive.clone(),
        ));
        let events = Arc::new(EventHub::new(store.clone(), metrics.events.clone()));
        let nri = Nri::new(
            config.nri.clone(),
            store.clone(),
            config.runtime.cgroup_parent.clone(),
            config.runtime.binary.clone(),
            Arc::new(crate::cdi::Registry::new(config.cdi.spec_dirs.clone())),
        );
        let containers = Arc::new(Containers::new(
            config.clone(),
            store.clone(),
            images.clone(),
            shims.clone(),
            events.clone(),
            node.clone(),
            nri.clone(),
        ));
        let host: Arc<dyn crate::nri::Host> = containers.clone();
        nri.set_host(Arc::downgrade(&host));
        let pods = Arc::new(Pods::new(PodsDeps {
            config: config.clone(),
            store: store.clone(),
            images: images.clone(),
            puller: puller.clone(),
            cni: cni.clone(),
            node: node.clone(),
            shims: shims.clone(),
            events: events.clone(),
            containers: containers.clone(),
            pause_rootfs,
            nri: nri.clone(),
        }));
        let recovery = Recovery::new(RecoveryDeps {
            config: config.clone(),
            store: store.clone(),
            images: images.clone(),
            cni,
            node: node.clone(),
            shims,
            events: events.clone(),
            pods: pods.clone(),
            containers: containers.clone(),
            metrics: metrics.recovery.clone(),
        });
        Ok(Arc::new(Core {
            config,
            store,
            node,
            images,
            puller,
            events,
            containers,
            pods,
            recovery,
            metrics,
            nri,
        }))
    }

    /// RunPodSandbox: the pod is made Ready, then watched for as long as it runs.
    pub async fn run_pod_sandbox(
        &self,
        cfg: crate::workload::PodSpec,
        handler: String,
    ) -> Result<String> {
        let (id, shim) = self.pods.run(cfg, handler).await?;
        self.recovery.watch(id.clone(), shim);
        Ok(id)
    }
}

#[cfg(test)]
impl Core {
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }
}
