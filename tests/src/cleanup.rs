//! Forced cleanup after a test (also on failure): containers, shims, mounts, sockets, cgroups.

use crate::{leaks, procs};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What one instance may have left behind.
pub struct Target<'a> {
    pub address: &'a str,
    pub namespace: &'a str,
    pub dir: &'a Path,
    /// Container ids to force-delete in a shared namespace; `None`: the namespace is private.
    pub ids: Option<&'a [String]>,
    /// Shim grouping keys whose sockets must go.
    pub group_keys: &'a [String],
}

/// Best effort: every step runs even when an earlier one fails.
pub fn everything(t: &Target) {
    let runc_root = Path::new("/run/containerd/runc").join(t.namespace);
    let ids: Vec<String> = match t.ids {
        Some(ids) => ids.to_vec(),
        None => leaks::leftover_entries(&runc_root)
            .iter()
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect(),
    };
    for id in &ids {
        for bin in ["runc", "crun"] {
            let _ = crate::cmd::run(
                Command::new(bin)
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force", id]),
                Duration::from_secs(10),
            );
        }
    }
    for p in procs::shims_of(t.address) {
        let _ = procs::signal(p.pid, libc::SIGKILL);
    }
    let _ = procs::poll(Duration::from_secs(5), "killed shims to go", || {
        procs::shims_of(t.address).is_empty().then_some(())
    });
    for m in leaks::mounts_under(t.dir) {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    for key in ids.iter().chain(t.group_keys) {
        for s in leaks::shim_sockets(t.address, t.namespace, key) {
            let _ = std::fs::remove_file(s);
        }
    }
    if t.ids.is_none() {
        let _ = std::fs::remove_dir(&runc_root);
        remove_cgroups(t.namespace);
    }
}

/// `ctr run` puts containers in `/<namespace>/<id>`; remove the emptied `/<namespace>` parents.
fn remove_cgroups(namespace: &str) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for ctl in rd.flatten() {
        let d = ctl.path().join(namespace);
        if let Ok(children) = std::fs::read_dir(&d) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
            let _ = std::fs::remove_dir(&d);
        }
    }
}
