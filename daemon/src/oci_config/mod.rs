//! OCI runtime spec generation for pod sandboxes and app containers from Berth's
//! `workload` specs, mirroring what containerd 1.6's CRI writes into `config.json`.
//! Everything here is a pure function of its inputs: the caller reads files (image
//! /etc/passwd, Localhost seccomp profiles, host devices) and passes their contents in.

mod caps;
mod container;
mod devices;
mod mounts;
mod resources;
mod sandbox;
mod seccomp;
mod security;
mod user;
mod userns;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType,
};

use crate::error::{Error, Result};

pub use caps::DEFAULT_CAPABILITIES;
pub use container::{container_spec, ContainerOpts, ImageConfig, PinnedNs};
pub use devices::{device_from_path, host_devices, DeviceLookup};
pub use sandbox::{sandbox_spec, SandboxOpts};
pub use seccomp::{default_seccomp, default_seccomp_for};
pub use security::{seccomp_localhost_path, APPARMOR_DEFAULT_PROFILE};
pub(crate) use userns::{check_mount_mappings, idmapped, locked_options};

/// The runtime-spec version containerd 1.6 writes.
pub const OCI_VERSION: &str = "1.0.2-dev";
/// containerd's default `PATH` (`oci.WithDefaultPathEnv`).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// RLIMIT_NOFILE for every process: containerd's default spec value (1024/1024). Raising
/// the hard limit above berthd's own would need CAP_SYS_RESOURCE, which a node may lack.
pub const DEFAULT_NOFILE: u64 = 1024;

/// The `io.kubernetes.cri.*` annotation keys containerd writes (the shim groups a pod's
/// containers by the sandbox id one; see docs/shim.md).
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    /// The shim's grouping key: every container of a pod carries its pod's id.
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
    pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
    pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
    pub const SANDBOX_CPU_SHARES: &str = "io.kubernetes.cri.sandbox-cpu-shares";
    pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// oci-spec builders only fail on programming errors; keep them out of the InvalidArgument space.
pub(crate) fn oci<T>(r: std::result::Result<T, oci_spec::OciSpecError>) -> Result<T> {
    r.map_err(|e| Error::Internal(format!("building OCI spec: {e}")))
}

/// An absolute path without `..` components, normalised (no `.`, no doubled or trailing `/`).
pub(crate) fn clean_abs_path(what: &str, p: &str) -> Result<PathBuf> {
    if p.is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if !p.starts_with('/') {
        return Err(invalid(format!("{what} {p:?} must be an absolute path")));
    }
    if Path::new(p).components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!("{what} {p:?} must not contain \"..\"")));
    }
    Ok(Path::new(p).components().collect())
}

/// `linux.cgroupsPath` as containerd derives it: `<parent>/<id>` for cgroupfs,
/// `<slice>:berth:<id>` for the systemd driver; none when no parent is given.
pub(crate) fn cgroups_path(parent: &str, id: &str, systemd: bool) -> Result<Option<PathBuf>> {
    if parent.is_empty() {
        return Ok(None);
    }
    if Path::new(parent)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(invalid(format!(
            "cgroup parent {parent:?} must not contain \"..\""
        )));
    }
    if systemd {
        let slice = Path::new(parent)
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if !slice.ends_with(".slice") {
            return Err(invalid(format!(
                "cgroup parent {parent:?} is not a systemd slice"
            )));
        }
        return Ok(Some(PathBuf::from(format!("{slice}:berth:{id}"))));
    }
    Ok(Some(Path::new(parent).join(id)))
}

/// containerd's `replaceOrAppendEnvValues`: a later `KEY=v` replaces an earlier `KEY`
/// in place, a bare `KEY` removes it.
pub(crate) fn merge_env(env: &mut Vec<String>, add: impl IntoIterator<Item = String>) {
    fn key(e: &str) -> &str {
        e.split_once('=').map_or(e, |(k, _)| k)
    }
    for e in add {
        let k = key(&e).to_string();
        let pos = env.iter().position(|x| key(x) == k);
        match (pos, e.contains('=')) {
            (Some(i), true) => env[i] = e,
            (Some(i), false) => {
                env.remove(i);
            }
            (None, true) => env.push(e),
            (None, false) => {}
        }
    }
}

pub(crate) fn nofile_rlimit() -> Result<Vec<PosixRlimit>> {
    Ok(vec![oci(PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(DEFAULT_NOFILE)
        .hard(DEFAULT_NOFILE)
        .build())?])
}

pub(crate) fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> Result<LinuxNamespace> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    oci(match path {
        Some(p) => b.path(p).build(),
        None => b.build(),
    })
}

pub(crate) fn string_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests;
