//! Tasks whose shim is gone (it died, or a rollback gave up on it): what runs in the
//! task's cgroup is killed and the OCI runtime's state for it deleted, which a live
//! shim's Delete would have done.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::NAMESPACE;

/// A task given up on (a rollback, a dead shim): what runs in its cgroup is killed and
/// its runc state deleted.
pub async fn forget_task(bundle: &Path, id: &str) {
    kill_task_cgroup(bundle).await;
    runc_delete(id).await;
}

/// Kills what is left in the cgroup a task's config.json names.
pub async fn kill_task_cgroup(bundle: &Path) {
    let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(cg) = spec["linux"]["cgroupsPath"].as_str().map(str::to_string) {
        // Sleeps while processes die: off the async workers.
        let _ = tokio::task::spawn_blocking(move || kill_cgroup(&cg)).await;
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Kills every process left in a cgroupfs path (each v1 controller, or the v2 tree) and
/// removes the cgroup. Only a task's own leaf cgroup is ever passed here.
pub fn kill_cgroup(path: &str) {
    if path.contains(':') || path.split('/').any(|c| c == "..") {
        tracing::warn!(cgroup = path, "not a cgroupfs path; left alone");
        return;
    }
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let base = Path::new("/sys/fs/cgroup");
    let mut dirs: Vec<PathBuf> = if base.join("cgroup.controllers").exists() {
        vec![base.join(rel)]
    } else {
        subdirs(base).into_iter().map(|c| c.join(rel)).collect()
    };
    dirs.retain(|d| d.is_dir());
    for d in &dirs {
        for _ in 0..50 {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                tracing::warn!(pid, cgroup = %d.display(), "killing a process no record owns");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = std::fs::remove_dir(d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove cgroup");
            }
        }
    }
}

/// `runc delete --force` of a task whose shim is gone (its state dir would leak).
pub async fn runc_delete(id: &str) {
    let root = format!("/run/containerd/runc/{NAMESPACE}");
    if !Path::new(&root).join(id).exists() {
        return;
    }
    let _ = tokio::process::Command::new("runc")
        .args(["--root", &root, "delete", "--force", id])
        .output()
        .await;
}
