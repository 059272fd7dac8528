//! User-namespaced pods in tests: the id mappings kubelet would send, a pod asking for
//! them, and the ids a host process runs as.

use anyhow::{Context, Result};
use berth_cri::v1 as cri;

use crate::berthd::Berthd;
use crate::cri::{ns_options, pod_network};

/// The host ids the pod's 65536 ids map to (kubelet's ranges are multiples of 65536).
pub const HOST_UID: u32 = 3 * 65536;
pub const HOST_GID: u32 = 4 * 65536;

pub fn mapping(host_id: u32) -> Vec<cri::IdMapping> {
    vec![cri::IdMapping {
        host_id,
        container_id: 0,
        length: 65536,
    }]
}

pub fn userns(
    mode: cri::NamespaceMode,
    uids: Vec<cri::IdMapping>,
    gids: Vec<cri::IdMapping>,
) -> cri::UserNamespace {
    cri::UserNamespace {
        mode: mode as i32,
        uids,
        gids,
    }
}

/// A pod-network pod `name` with user namespace `u`.
pub fn pod_with(d: &Berthd, name: &str, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    let mut cfg = d.pod_config(name);
    pod_network(&mut cfg);
    ns_options(&mut cfg).userns_options = Some(u);
    cfg
}

/// The `Uid:` (real, effective, saved, fs) of a host process.
pub fn host_uids(pid: i32) -> Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid: line")?;
    Ok(line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect())
}
