//! What berthd reports about the node and keeps for it: its version, whether the pod
//! network is configured (NetworkReady), whether recursive read-only mounts and user
//! namespaces work (probed once), and the pod CIDR kubelet last set.

pub mod userns;

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::error::{Error, Result};

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

/// At startup, with runc configured: says so when crun is installed and answers, and
/// what choosing it would change (docs/berthd.md#runc-or-crun). Blocking (one short
/// command), before the server serves.
pub fn note_crun(binary: &str) {
    if Path::new(binary).file_name().and_then(|n| n.to_str()) != Some("runc") {
        return;
    }
    let version = std::process::Command::new("crun")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string));
    if let Some(v) = version {
        tracing::info!(
            crun = %v,
            "crun is installed: runtime.binary = \"crun\" starts containers faster \
             (about 10 ms instead of 30 per create + start here) but is not the tested \
             default; see docs/berthd.md#runc-or-crun"
        );
    }
}

pub struct Node {
    cni_conf_dir: PathBuf,
    /// Whether the built-in network stands in while the conf dir holds no config.
    builtin_network: bool,
    /// The OCI runtime binary (asked for its features).
    runtime_binary: String,
    /// Whether recursive read-only mounts work (kernel and OCI runtime), probed once.
    rro: std::sync::OnceLock<bool>,
    /// How user-namespaced pods get their rootfs here, or why they cannot run here; set
    /// once at startup.
    userns: std::sync::OnceLock<Result<userns::RootfsWay, String>>,
    /// The pod CIDR kubelet last set through UpdateRuntimeConfig (handed to CNI).
    pod_cidr: RwLock<String>,
}

impl Node {
    pub fn new(cni_conf_dir: PathBuf, builtin_network: bool, runtime_binary: String) -> Node {
        Node {
            cni_conf_dir,
            builtin_network,
            runtime_binary,
            rro: Default::default(),
            userns: Default::default(),
            pod_cidr: RwLock::new(String::new()),
        }
    }

    pub fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// NetworkReady: a CNI network configuration exists in the configured directory, or
    /// the built-in network stands in for it.
    pub fn network_condition(&self) -> Condition {
        let dir = &self.cni_conf_dir;
        let found = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten().any(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json")
                })
            })
            .unwrap_or(false);
        if found || self.builtin_network {
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
            std::process::Command::new(&self.runtime_binary)
                .arg("features")
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .and_then(|v| v["mountOptions"].as_array().cloned())
                .is_some_and(|opts| opts.iter().any(|o| o == "rro"))
        })
    }

    /// Records the startup probe's answer ([`userns::probe`]); later calls are ignored.
    pub fn set_userns(&self, way: Result<userns::RootfsWay, String>) {
        let _ = self.userns.set(way);
    }

    /// Why a pod cannot have its own user namespace here; None when it can. Unprobed
    /// (unit tests' cores) means not available.
    pub fn userns_unavailable(&self) -> Option<String> {
        match self.userns.get() {
            Some(r) => r.clone().err(),
            None => Some("user namespace support was not probed".into()),
        }
    }

    /// How a user-namespaced container's rootfs is made here (None: it cannot be).
    pub fn userns_rootfs(&self) -> Option<userns::RootfsWay> {
        self.userns.get().and_then(|r| r.clone().ok())
    }

    pub fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        if !cidr.is_empty() && !cidr.contains('/') {
            return Err(Error::InvalidArgument(format!(
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

    #[test]
    fn network_ready_follows_the_conf_dir() {
        let d = tempfile::tempdir().unwrap();
        let node = Node::new(d.path().to_path_buf(), false, "runc".into());
        let c = node.network_condition();
        assert!(!c.ready);
        assert_eq!(c.reason, "NetworkPluginNotReady");
        std::fs::write(d.path().join("10-test.conflist"), "{}").unwrap();
        assert!(node.network_condition().ready);
        let empty = tempfile::tempdir().unwrap();
        let with_builtin = Node::new(empty.path().join("missing"), true, "runc".into());
        assert!(with_builtin.network_condition().ready);
    }

    #[test]
    fn pod_cidr_is_validated() {
        let node = Node::new(PathBuf::from("/nonexistent"), false, "runc".into());
        node.set_pod_cidr("10.1.0.0/16").unwrap();
        assert_eq!(node.pod_cidr(), "10.1.0.0/16");
        assert!(node.set_pod_cidr("bogus").is_err());
        assert_eq!(node.pod_cidr(), "10.1.0.0/16");
    }
}
