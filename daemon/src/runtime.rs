//! The runtime's domain core: configuration, the state store and the node-level answers
//! (version, status, runtime config). The CRI layer (`cri/`) calls into it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::error::Result;
use crate::network::Cni;
use crate::shim_client::{Launcher, ShimLauncher, Shims, TaskOptions};
use crate::store::Store;

/// The name and API version berthd reports.
pub const RUNTIME_NAME: &str = "berth";
pub const RUNTIME_API_VERSION: &str = "v1";

/// One network condition as kubelet reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

pub struct Runtime {
    pub config: Config,
    pub store: Arc<Store>,
    pub images: crate::image::ImageStore,
    /// Registry access for PullImage (mirrors, plain-HTTP hosts, clients).
    pub puller: crate::image::Puller,
    pub cni: Cni,
    /// The read-only rootfs of every sandbox's berth-pause.
    pub pause_rootfs: PathBuf,
    /// The pods' shims (containerd-shim-berth-v2, one per pod), by pod id.
    pub shims: Shims,
    /// Lifecycle events for GetContainerEvents.
    pub events: crate::events::EventHub,
    /// Exits a shim's journal delivered before StartContainer recorded the container
    /// Running (`pod::journal`), by container id: (status, time).
    pub(crate) early_exits: std::sync::Mutex<HashMap<String, (u32, i64)>>,
    /// Whether recursive read-only mounts work (kernel and OCI runtime), probed once.
    rro: std::sync::OnceLock<bool>,
    /// The pod CIDR kubelet last set through UpdateRuntimeConfig (handed to CNI).
    pod_cidr: RwLock<String>,
}

impl Runtime {
    pub fn open(config: Config) -> Result<Arc<Runtime>> {
        for dir in [&config.paths.root, &config.paths.state] {
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::error::Error::io(format!("mkdir {}", dir.display()), e))?;
        }
        let shim_binary = crate::shim_client::locate(&config.runtime.shim)?;
        let pause_rootfs = crate::pod::pause_rootfs(&config.paths.root)?;
        let launcher = ShimLauncher::new(shim_binary, config.server.socket.clone());
        Runtime::with_parts(config, launcher, pause_rootfs)
    }

    /// Builds the runtime from already-made parts (how shims are launched, the pause
    /// rootfs).
    pub fn with_parts(
        config: Config,
        launcher: Arc<dyn Launcher>,
        pause_rootfs: PathBuf,
    ) -> Result<Arc<Runtime>> {
        for dir in [&config.paths.root, &config.paths.state] {
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::error::Error::io(format!("mkdir {}", dir.display()), e))?;
        }
        let store = Arc::new(Store::open(&config.store_path())?);
        let images = crate::image::ImageStore::open(&config.paths.root, store.clone())?;
        let cni = Cni::new(config.cni.conf_dir.clone(), config.cni.bin_dirs.clone());
        let puller = crate::image::Puller::new(config.registry.clone());
        let options = TaskOptions {
            binary: config.runtime.binary.clone(),
            systemd_cgroup: config.runtime.cgroup_driver.is_systemd(),
        };
        Ok(Arc::new(Runtime {
            events: crate::events::EventHub::new(store.clone()),
            config,
            store,
            images,
            puller,
            cni,
            pause_rootfs,
            shims: Shims::new(launcher, options),
            early_exits: Default::default(),
            rro: Default::default(),
            pod_cidr: RwLock::new(String::new()),
        }))
    }

    pub fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// NetworkReady: a CNI network configuration exists in the configured directory.
    pub fn network_condition(&self) -> Condition {
        let dir = &self.config.cni.conf_dir;
        let found = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten().any(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json")
                })
            })
            .unwrap_or(false);
        if found {
            Condition {
                ready: true,
                reason: String::new(),
                message: String::new(),
            }
        } else {
            Condition {
                ready: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("no network config found in {}", dir.display()),
            }
        }
    }

    /// Recursive read-only mounts need `mount_setattr` (Linux 5.12) and an OCI runtime
    /// whose `features` lists the "rro" mount option (runc 1.1+; crun 1.8 has none).
    pub fn rro_supported(&self) -> bool {
        *self.rro.get_or_init(|| {
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let mut v = kernel
                .trim()
                .split(['.', '-'])
                .map(|x| x.parse::<u32>().unwrap_or(0));
            let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
            if (major, minor) < (5, 12) {
                return false;
            }
            std::process::Command::new(&self.config.runtime.binary)
                .arg("features")
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .and_then(|v| v["mountOptions"].as_array().cloned())
                .is_some_and(|opts| opts.iter().any(|o| o == "rro"))
        })
    }

    pub fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        if !cidr.is_empty() && !cidr.contains('/') {
            return Err(crate::error::Error::InvalidArgument(format!(
                "pod CIDR {cidr:?} is not a CIDR"
            )));
        }
        if let Ok(mut c) = self.pod_cidr.write() {
            *c = cidr.to_string();
        }
        tracing::info!(pod_cidr = cidr, "runtime config updated");
        Ok(())
    }

    pub fn pod_cidr(&self) -> String {
        self.pod_cidr.read().map(|c| c.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(conf_dir: &std::path::Path, root: &std::path::Path) -> Arc<Runtime> {
        let text = format!(
            "[paths]\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[cni]\nconf_dir = \"{1}\"\n",
            root.display(),
            conf_dir.display()
        );
        let cfg = Config::from_toml(&text).unwrap();
        Runtime::with_parts(
            cfg,
            crate::shim_client::fake::FakeLauncher::new(),
            root.join("pause"),
        )
        .unwrap()
    }

    #[test]
    fn network_ready_follows_the_conf_dir() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("net.d");
        std::fs::create_dir(&conf).unwrap();
        let rt = runtime(&conf, d.path());
        let c = rt.network_condition();
        assert!(!c.ready);
        assert_eq!(c.reason, "NetworkPluginNotReady");
        std::fs::write(conf.join("10-test.conflist"), "{}").unwrap();
        assert!(rt.network_condition().ready);
    }

    #[test]
    fn pod_cidr_is_validated() {
        let d = tempfile::tempdir().unwrap();
        let rt = runtime(d.path(), d.path());
        rt.set_pod_cidr("10.1.0.0/16").unwrap();
        assert_eq!(rt.pod_cidr(), "10.1.0.0/16");
        assert!(rt.set_pod_cidr("bogus").is_err());
    }
}
