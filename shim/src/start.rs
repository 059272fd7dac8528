//! The `start` action: group this container with its pod, bind (or reuse) the pod's
//! socket, spawn the daemon, and print only the address.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::args::Args;
use crate::error::{Error, Result};
use crate::options::RuncOptions;
use crate::socket::{self, Bound};

/// Grouping annotations, in containerd's order of precedence.
const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// The grouping key: the group annotation, else the CRI sandbox id, else the id.
pub fn group_key(bundle: &Path, id: &str) -> String {
    crate::spec::annotation(bundle, &GROUP_LABELS).unwrap_or_else(|| id.to_string())
}

/// Runs `start`; returns the address to print.
pub fn run(args: &Args) -> Result<String> {
    let bundle = std::env::current_dir().map_err(|e| Error::io("getcwd", e))?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| Error::io("read stdin", e))?;
    let start_input = crate::bootstrap::decode(&input)?;
    let opts = RuncOptions::from_any(start_input.options.as_ref())?;
    let group = group_key(&bundle, &args.id);
    let dir = start_input
        .socket_dir
        .as_deref()
        .unwrap_or(socket::SOCKET_DIR);
    let address = socket::socket_address(dir, &args.address, &args.namespace, &group)?;
    let listener = match socket::bind(&address)? {
        Bound::Existing => {
            socket::write_address(&bundle, &address)?;
            return Ok(address);
        }
        Bound::New(l) => l,
    };
    if let Err(e) = socket::write_address(&bundle, &address) {
        let _ = std::fs::remove_file(socket::socket_path(&address));
        return Err(e);
    }
    if let Err(e) = sched_core_from_env() {
        let _ = std::fs::remove_file(socket::socket_path(&address));
        return Err(e);
    }
    let child = match spawn_daemon(args, &address, &listener) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(socket::socket_path(&address));
            return Err(e);
        }
    };
    drop(listener);
    let pid = child.id() as i32;
    if !opts.shim_cgroup.is_empty() {
        // As the Go shim: a shim that cannot join the cgroup it was given is an error, and
        // the daemon just spawned must not outlive it.
        if let Err(e) = move_to_cgroup(pid, &opts.shim_cgroup) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(socket::socket_path(&address));
            return Err(e);
        }
    }
    adjust_oom_score(pid);
    Ok(address)
}

/// `SCHED_CORE` set (containerd's `sched_core`, or 2.x's shim env): give this process group
/// a core-scheduling cookie before the daemon forks, so the shim, runc and every container
/// of the pod inherit it and never share an SMT core with other pods' tasks. As the Go shim,
/// a kernel without core scheduling fails the start rather than silently running without.
fn sched_core_from_env() -> Result<()> {
    if std::env::var_os("SCHED_CORE").is_none_or(|v| v.is_empty()) {
        return Ok(());
    }
    const PR_SCHED_CORE: libc::c_int = 62;
    const PR_SCHED_CORE_CREATE: libc::c_ulong = 1;
    const PIDTYPE_PGID: libc::c_ulong = 2;
    // SAFETY: prctl with integer arguments only; `start` is single-threaded, so the cookie
    // covers every thread this process will ever have.
    let r = unsafe { libc::prctl(PR_SCHED_CORE, PR_SCHED_CORE_CREATE, 0, PIDTYPE_PGID, 0) };
    if r != 0 {
        return Err(Error::sys(
            "enable sched core support",
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

/// Re-executes this binary as the daemon: cwd = bundle, listener on fd 3, stdio on
/// /dev/null (containerd waits for EOF on the start pipe, so the daemon must never hold
/// it), its own process group.
fn spawn_daemon(
    args: &Args,
    address: &str,
    listener: &std::os::unix::net::UnixListener,
) -> Result<std::process::Child> {
    let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &args.namespace,
        "-id",
        &args.id,
        "-address",
        &args.address,
    ]);
    if args.debug {
        cmd.arg("-debug");
    }
    cmd.env("BERTH_SHIM_SOCKET", address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec. dup2 onto fd 3 clears
    // close-on-exec; if the listener already is fd 3, clear the flag by hand instead.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setpgid(0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| Error::io("spawn shim daemon", e))
}

fn move_to_cgroup(pid: i32, path: &str) -> Result<()> {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return Err(Error::InvalidArgument(format!(
            "invalid shim cgroup {path}"
        )));
    }
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let targets: Vec<std::path::PathBuf> = if unified {
        vec![Path::new("/sys/fs/cgroup").join(rel)]
    } else {
        std::fs::read_dir("/sys/fs/cgroup")
            .map_err(|e| Error::io("read /sys/fs/cgroup", e))?
            .flatten()
            .filter(|e| e.path().join("cgroup.procs").exists() && e.file_name() != "unified")
            .map(|e| e.path().join(rel))
            .collect()
    };
    if targets.is_empty() {
        return Err(Error::NotFound(format!(
            "no cgroup hierarchy for shim cgroup {path}"
        )));
    }
    for dir in targets {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| Error::io(format!("failed to join cgroup {}", dir.display()), e))?;
    }
    Ok(())
}

/// containerd's oom_score_adj + 1 for the daemon. Raising is always allowed; lowering
/// needs CAP_SYS_RESOURCE, so EPERM/EACCES is only worth a warning.
fn adjust_oom_score(pid: i32) {
    let parent = nix::unistd::getppid();
    let Ok(cur) = std::fs::read_to_string(format!("/proc/{parent}/oom_score_adj")) else {
        return;
    };
    let Ok(v) = cur.trim().parse::<i32>() else {
        return;
    };
    let want = (v + 1).clamp(-1000, 1000);
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), want.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(ann: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let spec = format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"annotations":{{{ann}}}}}"#
        );
        std::fs::write(d.path().join("config.json"), spec).unwrap();
        d
    }

    #[test]
    fn grouping_precedence() {
        let d = bundle_with(
            r#""io.kubernetes.cri.sandbox-id":"sb","io.containerd.runc.v2.group":"grp""#,
        );
        assert_eq!(group_key(d.path(), "c1"), "grp");
        let d = bundle_with(r#""io.kubernetes.cri.sandbox-id":"sb""#);
        assert_eq!(group_key(d.path(), "c1"), "sb");
        let d = bundle_with("");
        assert_eq!(group_key(d.path(), "c1"), "c1");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(group_key(empty.path(), "c1"), "c1");
    }

    #[test]
    fn shim_cgroup_rejects_escape() {
        assert!(move_to_cgroup(1, "/a/../../b").is_err());
    }
}
