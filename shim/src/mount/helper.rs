//! `fuse.*` / `fuse3.*` mounts through the `mount.fuse` / `mount.fuse3` helper, as
//! containerd's mount package does (the fuse-overlayfs snapshotter sends
//! `fuse3.fuse-overlayfs` rootfs mounts): `mount.fuse3 <source> <target> -o <opt>… -t <type>`.
//!
//! Why through the reaper: the shim is a subreaper that collects every child with
//! `wait4(-1)`, so a plain `Command::wait` would lose the helper's status (containerd's Go
//! shim retries on ECHILD instead). The helper is subscribed for before it forks, bounded in
//! time, and its stderr goes to a memfd, not a pipe: the filesystem daemon it starts may keep
//! a pipe open for its whole life.

use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::types::mount::Mount;

use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// A helper that has not mounted within this is hung (a FUSE daemon waiting on its backend).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// What of the helper's stderr goes into an error message.
const MAX_STDERR: u64 = 16 << 10;

/// The helper binary and the filesystem type it is given, for a FUSE mount type.
pub fn helper_for(fstype: &str) -> Option<(&'static str, &str)> {
    if let Some(t) = fstype.strip_prefix("fuse3.") {
        Some(("mount.fuse3", t))
    } else {
        fstype.strip_prefix("fuse.").map(|t| ("mount.fuse", t))
    }
}

/// The helper's argv after its name.
fn helper_args(m: &Mount, target: &Path, subtype: &str) -> Vec<String> {
    let mut args = vec![m.source.clone(), target.display().to_string()];
    for o in &m.options {
        args.push("-o".into());
        args.push(o.clone());
    }
    args.push("-t".into());
    args.push(subtype.into());
    args
}

/// Mounts `m` on `target` with its helper.
pub async fn mount(m: &Mount, target: &Path, reaper: &Arc<Reaper>) -> Result<()> {
    let (helper, subtype) = helper_for(&m.type_)
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a FUSE type", m.type_)))?;
    let args = helper_args(m, target, subtype);
    let errfd = nix::sys::memfd::memfd_create(
        c"berth-mount-helper",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .map_err(|e| Error::sys("memfd for the mount helper's stderr", e))?;
    let mut errfile = std::fs::File::from(errfd);
    let mut cmd = Command::new(helper);
    cmd.args(&args)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            errfile.try_clone().map_err(|e| Error::io("dup memfd", e))?,
        ));
    // Subscribe before fork: the reaper may collect the helper before spawn() returns.
    let mut sub = reaper.subscribe();
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("exec {helper} (install fuse3)"), e))?;
    drop(cmd);
    let pid = child.id() as i32;
    let exit = match tokio::time::timeout(HELPER_TIMEOUT, sub.wait_for(pid)).await {
        Ok(e) => e,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = sub.wait_for(pid).await;
            return Err(Error::Runtime(format!(
                "mount helper [{helper} {args:?}] did not finish within {HELPER_TIMEOUT:?}"
            )));
        }
    };
    let status = exit.map_or(u32::MAX, |e| e.status);
    if status == 0 {
        return Ok(());
    }
    let mut stderr = String::new();
    let _ = errfile.rewind();
    let _ = (&mut errfile).take(MAX_STDERR).read_to_string(&mut stderr);
    Err(Error::Runtime(format!(
        "mount helper [{helper} {args:?}] failed with status {status}: {:?}",
        stderr.trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_and_argv_as_containerd_builds_them() {
        assert_eq!(
            helper_for("fuse3.fuse-overlayfs"),
            Some(("mount.fuse3", "fuse-overlayfs"))
        );
        assert_eq!(helper_for("fuse.sshfs"), Some(("mount.fuse", "sshfs")));
        assert_eq!(helper_for("overlay"), None);
        let m = Mount {
            type_: "fuse3.fuse-overlayfs".into(),
            source: "overlay".into(),
            options: vec!["lowerdir=/a:/b".into(), "upperdir=/u".into()],
            ..Default::default()
        };
        assert_eq!(
            helper_args(&m, Path::new("/r/rootfs"), "fuse-overlayfs"),
            [
                "overlay",
                "/r/rootfs",
                "-o",
                "lowerdir=/a:/b",
                "-o",
                "upperdir=/u",
                "-t",
                "fuse-overlayfs"
            ]
        );
    }
}
