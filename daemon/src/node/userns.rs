//! Whether this node can run user-namespaced pods, probed once at startup: the kernel
//! has user namespaces, and an overlay (what a container's rootfs is) can be mounted on
//! idmapped layers (`mount_setattr(MOUNT_ATTR_IDMAP)`, Linux 5.12; overlayfs takes them
//! from 5.19), or else (`[userns] rootfs`) on remapped copies of the layers. The OCI runtime only has to put the pod in a user namespace with the given
//! mappings, which runc and crun have long done; the idmapped layers are the shim's.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::config::UsernsRootfs;

/// The mapping the probe's namespace gets (any mapping would do).
const PROBE_MAP: &str = "0 100000 65536\n";

/// How a user-namespaced container's rootfs is made here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsWay {
    /// An overlay on idmapped lower dirs (the shim's `X-berth.idmap-userns`).
    Idmap,
    /// An overlay on remapped copies of the layers (`image::remap`).
    Copy,
}

/// How user-namespaced pods get their rootfs here under the configured `mode`, or why
/// they cannot run here. `scratch`: a private dir under berthd's root, made and removed
/// here; `pause` and `args`: a program that waits for a signal (berth-pause), run in the
/// probe's new user namespace. Copies need only the user namespace; idmapped layers also
/// need the kernel to mount an overlay on them, which the probe tries.
pub fn probe(
    scratch: &Path,
    pause: &Path,
    args: &[&str],
    mode: UsernsRootfs,
) -> Result<RootfsWay, String> {
    if !Path::new("/proc/self/ns/user").exists() {
        return Err("the kernel has no user namespaces".into());
    }
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if max.trim() == "0" {
        return Err("user.max_user_namespaces is 0".into());
    }
    let mut child =
        spawn_in_userns(pause, args).map_err(|e| format!("cannot make a user namespace: {e}"))?;
    let result = match mode {
        UsernsRootfs::Copy => Ok(()),
        UsernsRootfs::Idmap | UsernsRootfs::Auto => idmap_overlay(scratch, child.id()),
    };
    // Ours, by pid: berth-pause would exit on SIGTERM, KILL needs no cooperation.
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(scratch);
    match (mode, result) {
        (UsernsRootfs::Copy, _) => Ok(RootfsWay::Copy),
        (_, Ok(())) => Ok(RootfsWay::Idmap),
        (UsernsRootfs::Idmap, Err(why)) => Err(why),
        (_, Err(why)) => {
            tracing::info!(reason = %why, "idmapped layers do not work here: user-namespaced rootfs on remapped copies");
            Ok(RootfsWay::Copy)
        }
    }
}

fn spawn_in_userns(pause: &Path, args: &[&str]) -> std::io::Result<Child> {
    let mut cmd = Command::new(pause);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: unshare is async-signal-safe, and the child is single-threaded after fork
    // (which CLONE_NEWUSER needs); nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| unshare(CloneFlags::CLONE_NEWUSER).map_err(std::io::Error::from));
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    for f in ["uid_map", "gid_map"] {
        if let Err(e) = std::fs::write(format!("/proc/{pid}/{f}"), PROBE_MAP) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    Ok(child)
}

/// Mounts a one-layer overlay in `scratch` on an idmapped copy of its lower dir (made
/// through the namespace of `pid`), as the shim mounts a user-namespaced container's
/// rootfs; everything is unmounted again.
fn idmap_overlay(scratch: &Path, pid: u32) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(scratch);
    let [l, lm, u, w, m] = ["l", "lm", "u", "w", "m"].map(|d| scratch.join(d));
    for d in [&l, &lm, &u, &w, &m] {
        std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let userns = std::path::PathBuf::from(format!("/proc/{pid}/ns/user"));
    let tree = berth_proto::idmap::idmapped_copy(&l, &userns)
        .map_err(|e| format!("idmap a bind mount (Linux 5.12+): {e}"))?;
    berth_proto::idmap::attach(&tree, &lm).map_err(|e| format!("move_mount: {e}"))?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lm.display(),
        u.display(),
        w.display()
    );
    let r = mount(
        Some("overlay"),
        &m,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| format!("an overlay on an idmapped layer (Linux 5.19+): {e}"));
    if r.is_ok() {
        let _ = umount2(&m, MntFlags::MNT_DETACH);
    }
    let _ = umount2(&lm, MntFlags::MNT_DETACH);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This host (root, Linux 6.x) can; the probe says so and leaves nothing behind.
    #[test]
    fn probe_on_this_host() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let scratch = d.path().join("probe");
        let sleep = Path::new("/bin/sleep");
        for (mode, way) in [
            (UsernsRootfs::Auto, RootfsWay::Idmap),
            (UsernsRootfs::Idmap, RootfsWay::Idmap),
            (UsernsRootfs::Copy, RootfsWay::Copy),
        ] {
            assert_eq!(probe(&scratch, sleep, &["60"], mode), Ok(way), "{mode:?}");
            assert!(!scratch.exists());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(d.path().to_str().unwrap()));
        // A namespace that is gone before it is used: idmap says no, auto falls back to
        // copies; nothing is left.
        let r = probe(&scratch, Path::new("/bin/true"), &[], UsernsRootfs::Idmap);
        assert!(r.is_err() || !scratch.exists());
        assert!(!scratch.exists());
    }
}
