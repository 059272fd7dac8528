//! Leak checks run at teardown: shim processes, mounts, shim sockets and bundle directories.

use crate::procs;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The shim socket containerd's runc.v2 scheme derives: `/run/containerd/s/<sha256(join(address, ns, key))>`.
pub fn shim_socket(address: &str, namespace: &str, group_key: &str) -> PathBuf {
    let joined = format!(
        "{}/{}/{}",
        address.trim_end_matches('/'),
        namespace,
        group_key
    );
    PathBuf::from(format!(
        "/run/containerd/s/{:x}",
        Sha256::digest(joined.as_bytes())
    ))
}

/// The debug socket containerd 2.x's Go shim also binds when containerd runs at debug level:
/// the same scheme over `join(address, ns, key, "debug")` (containerd 1.6's shim has none).
pub fn shim_debug_socket(address: &str, namespace: &str, group_key: &str) -> PathBuf {
    shim_socket(address, namespace, &format!("{group_key}/debug"))
}

/// Every shim socket a grouping key may have: the task socket and the debug socket.
pub fn shim_sockets(address: &str, namespace: &str, group_key: &str) -> [PathBuf; 2] {
    [
        shim_socket(address, namespace, group_key),
        shim_debug_socket(address, namespace, group_key),
    ]
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// berthd's runc state dir (`runc --root`; the shim's namespace is "berth").
pub const BERTH_RUNC_ROOT: &str = "/run/containerd/runc/berth";

/// Ids of runc containers whose bundle lies under `dir` (runc's state.json names it).
pub fn runc_states_under(dir: &Path) -> Vec<String> {
    let needle = format!("bundle={}/", dir.display());
    leftover_entries(Path::new(BERTH_RUNC_ROOT))
        .into_iter()
        .filter(|s| {
            std::fs::read_to_string(s.join("state.json")).is_ok_and(|t| t.contains(&needle))
        })
        .filter_map(|s| s.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Entries left in a per-namespace bundle or work directory.
pub fn leftover_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Every leak found for one containerd instance, as human-readable lines.
pub struct Scope<'a> {
    pub address: &'a str,
    pub namespace: &'a str,
    pub dir: &'a Path,
    pub state: &'a Path,
    pub root: &'a Path,
    pub group_keys: &'a [String],
}

impl Scope<'_> {
    pub fn find(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in procs::shims_of(self.address) {
            out.push(format!("leaked shim process {} {:?}", p.pid, p.argv));
        }
        for m in mounts_under(self.dir) {
            out.push(format!("leaked mount {}", m.display()));
        }
        for k in self.group_keys {
            for s in shim_sockets(self.address, self.namespace, k) {
                if s.exists() {
                    out.push(format!(
                        "leaked shim socket {} (group key {k})",
                        s.display()
                    ));
                }
            }
        }
        for base in [self.state, self.root] {
            let d = base
                .join("io.containerd.runtime.v2.task")
                .join(self.namespace);
            for e in leftover_entries(&d) {
                out.push(format!("leaked bundle/work dir {}", e.display()));
            }
            // CRI's per-sandbox and per-container dirs (same layout in 1.6 and 2.x).
            for kind in ["sandboxes", "containers"] {
                let d = base.join("io.containerd.grpc.v1.cri").join(kind);
                for e in leftover_entries(&d) {
                    out.push(format!("leaked CRI {kind} dir {}", e.display()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_socket_hashes_the_debug_path() {
        // containerd 2.x: sha256("<address>/<ns>/<id>/debug").
        let want = format!(
            "/run/containerd/s/{:x}",
            Sha256::digest(b"/x/c.sock/ns/id/debug")
        );
        assert_eq!(
            shim_debug_socket("/x/c.sock", "ns", "id"),
            PathBuf::from(want)
        );
    }
}
