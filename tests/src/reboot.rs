//! A simulated node reboot for the suites and berth-torture: what a reboot does to a
//! runtime's pods, done by pid and by path, never by name. Every shim of the daemon's
//! socket and every process of its pods (the shims' descendants, found before the shims
//! die, and the processes in the pods' and containers' cgroups) killed -9; then what a
//! reboot takes with it removed: those cgroups, the runtime's state of those ids, the
//! shims' sockets, every mount under the state and root dirs, the state dir's contents
//! (bundles, netns pins, the built-in network's IPAM). The daemon must be down.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The runtime's namespace for its shims' sockets (berthd's).
const NAMESPACE: &str = "berth";

/// The node's runtime and the pods (and their containers) a reboot ends.
pub struct Node<'a> {
    /// The daemon's CRI socket (its shims' `-address`).
    pub socket: &'a str,
    pub state: Option<&'a Path>,
    pub root: Option<&'a Path>,
    /// The pods' cgroup parent (cgroupfs: `<parent>/<id>`).
    pub cgroup_parent: &'a str,
    /// The OCI runtime's state root (e.g. /run/containerd/runc/berth).
    pub runc_root: &'a Path,
    pub pods: &'a [String],
    pub containers: &'a [String],
}

/// Reboots `node` (simulated).
pub fn simulate(node: &Node) -> Result<()> {
    let ids: Vec<&str> = node
        .pods
        .iter()
        .chain(node.containers)
        .map(String::as_str)
        .collect();
    let shims: Vec<i32> = crate::procs::shims_of(node.socket)
        .iter()
        .map(|p| p.pid)
        .collect();
    // The shims' children first found, then everything in the pods' cgroups.
    let mut pids = crate::procs::descendants(&shims);
    for id in &ids {
        for dir in cgroup_dirs(node.cgroup_parent, id) {
            pids.extend(cgroup_procs(&dir));
        }
    }
    for pid in shims.iter().chain(&pids) {
        let _ = crate::procs::signal(*pid, libc::SIGKILL);
    }
    let all: Vec<i32> = shims.iter().chain(&pids).copied().collect();
    crate::procs::poll(Duration::from_secs(10), "killed processes to die", || {
        all.iter().all(|p| !crate::procs::alive(*p)).then_some(())
    })?;
    // A reboot leaves no cgroup, no runtime state in /run, no shim socket.
    for id in &ids {
        for dir in cgroup_dirs(node.cgroup_parent, id) {
            remove_cgroup(&dir);
        }
        let _ = std::fs::remove_dir_all(node.runc_root.join(id));
    }
    for pod in node.pods {
        for s in crate::leaks::shim_sockets(node.socket, NAMESPACE, pod) {
            let _ = std::fs::remove_file(s);
        }
    }
    // Every mount (rootfs overlays, netns pins), then the state dir's contents.
    for dir in [node.state, node.root].into_iter().flatten() {
        for m in crate::leaks::mounts_under(dir) {
            umount_detach(&m);
        }
    }
    if let Some(state) = node.state {
        for e in std::fs::read_dir(state)?.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
                    .with_context(|| format!("empty the state dir: {}", p.display()))?;
            } else {
                std::fs::remove_file(&p)
                    .with_context(|| format!("empty the state dir: {}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// The task's cgroup in every hierarchy (each v1 controller, or the v2 tree).
fn cgroup_dirs(parent: &str, id: &str) -> Vec<PathBuf> {
    let rel = Path::new(parent.trim_start_matches('/')).join(id);
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.join(rel)];
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        // cpu and cpuacct are links to cpu,cpuacct: each hierarchy once.
        let Ok(real) = std::fs::canonicalize(e.path()) else {
            continue;
        };
        if seen.contains(&real) {
            continue;
        }
        seen.push(real.clone());
        let d = real.join(&rel);
        if d.is_dir() {
            out.push(d);
        }
    }
    out
}

fn cgroup_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// rmdir of an emptied cgroup (and its children), retried while the kernel lets go.
fn remove_cgroup(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&e.path());
        }
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn umount_detach(p: &Path) {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}
