//! The namespaces of a pod without an infra process: berthd makes its IPC and UTS
//! namespaces, sets the pod's hostname and namespaced sysctls in them (and in its pinned
//! network namespace), and pins them on files under `<state>/podns/<pod id>/`, as CRI-O's
//! `pinns` does. Containers join them by path; StopPodSandbox unpins them.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Error, Result};
use crate::records::PodPins;

/// The longest sysctl value accepted (the kernel's own limit for most is a page).
const MAX_SYSCTL_VALUE: usize = 4096;

/// What to make: `ipc` unless the pod uses the host's IPC namespace, `hostname` (a UTS
/// namespace) unless it uses the host's network, the sysctls to set.
#[derive(Debug, Default)]
pub struct PinRequest {
    pub ipc: bool,
    pub hostname: Option<String>,
    /// The pod's pinned network namespace (None: the host's).
    pub netns: Option<PathBuf>,
    pub sysctls: Vec<(String, String)>,
}

/// Which namespace a sysctl belongs to (runc's and the kernel's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SysctlNs {
    Ipc,
    Uts,
    Net,
}

fn sysctl_ns(key: &str) -> Option<SysctlNs> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(SysctlNs::Ipc)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(SysctlNs::Uts)
    } else if key.starts_with("net.") {
        Some(SysctlNs::Net)
    } else {
        None
    }
}

/// The sysctl's file under /proc/sys, after checking its name: dot-separated words of
/// `[A-Za-z0-9_-]` only, so a key can never walk out of /proc/sys (`..`, `/`).
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let ok = !key.is_empty()
        && key.len() <= 256
        && key.split('.').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "invalid sysctl name {key:?}"
        )));
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

/// Checks every sysctl before anything is made: its name, its value's size, and that
/// the pod has its own namespace of the sysctl's kind.
fn check_sysctls(req: &PinRequest) -> Result<Vec<(SysctlNs, PathBuf, String)>> {
    let mut out = Vec::new();
    for (k, v) in &req.sysctls {
        let path = sysctl_path(k)?;
        let ns = sysctl_ns(k).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "sysctl {k:?} is not in a separate kernel namespace"
            ))
        })?;
        let own = match ns {
            SysctlNs::Ipc => req.ipc,
            SysctlNs::Uts => req.hostname.is_some(),
            SysctlNs::Net => req.netns.is_some(),
        };
        if !own {
            return Err(Error::InvalidArgument(format!(
                "sysctl {k:?} is not allowed: the pod shares the host's {} namespace",
                match ns {
                    SysctlNs::Ipc => "IPC",
                    SysctlNs::Uts => "UTS",
                    SysctlNs::Net => "network",
                }
            )));
        }
        if v.len() > MAX_SYSCTL_VALUE || v.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "sysctl {k:?}: value too long or not text"
            )));
        }
        out.push((ns, path, v.clone()));
    }
    Ok(out)
}

/// The pod's pin dir.
pub fn dir(state: &Path, id: &str) -> PathBuf {
    state.join("podns").join(id)
}

/// Makes and pins the pod's namespaces. Blocking (a thread spawn, a few syscalls and
/// writes): called on a blocking thread. On error nothing is left.
pub fn create(state: &Path, id: &str, req: &PinRequest) -> Result<PodPins> {
    let sysctls = check_sysctls(req)?;
    if !req.ipc && req.hostname.is_none() && sysctls.is_empty() {
        return Ok(PodPins::default());
    }
    let top = state.join("podns");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&top)
        .map_err(|e| Error::io(format!("mkdir {}", top.display()), e))?;
    let d = dir(state, id);
    // A leftover dir of the same id is refused rather than shared.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&d)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                Error::AlreadyExists(format!("pod namespaces {} exist", d.display()))
            }
            _ => Error::io(format!("mkdir {}", d.display()), e),
        })?;
    let pins = PodPins {
        ipc: req.ipc.then(|| d.join("ipc")),
        uts: req.hostname.as_ref().map(|_| d.join("uts")),
    };
    let made = (|| {
        for p in pins.ipc.iter().chain(&pins.uts) {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(p)
                .map_err(|e| Error::io(format!("create {}", p.display()), e))?;
        }
        let (pins2, hostname, netns) = (pins.clone(), req.hostname.clone(), req.netns.clone());
        // Why a dedicated, short-lived thread: unshare and setns move only the calling
        // thread into the namespaces, and a tokio thread would carry them into every task
        // it runs later. This thread exits after the bind mounts; the mounts alone keep
        // the namespaces alive.
        std::thread::Builder::new()
            .name("berth-podns".into())
            .spawn(move || pin_in_thread(&pins2, hostname.as_deref(), netns.as_deref(), &sysctls))
            .map_err(|e| Error::io("spawn podns thread", e))?
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("podns thread panicked".into())))
    })();
    if let Err(e) = made {
        let _ = remove(state, id);
        return Err(e);
    }
    Ok(pins)
}

/// Runs on its own thread: new IPC/UTS namespaces, the hostname, the sysctls (the
/// network's after joining the pod's network namespace), then the pins.
fn pin_in_thread(
    pins: &PodPins,
    hostname: Option<&str>,
    netns: Option<&Path>,
    sysctls: &[(SysctlNs, PathBuf, String)],
) -> Result<()> {
    let mut flags = CloneFlags::empty();
    if pins.ipc.is_some() {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if pins.uts.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(|e| Error::io("unshare(IPC|UTS)", e.into()))?;
    }
    if let Some(h) = hostname {
        nix::unistd::sethostname(h).map_err(|e| Error::io("sethostname", e.into()))?;
    }
    let write = |path: &Path, v: &str| {
        std::fs::write(path, v)
            .map_err(|e| Error::InvalidArgument(format!("sysctl {}: {e}", path.display())))
    };
    for (ns, path, v) in sysctls {
        if *ns != SysctlNs::Net {
            write(path, v)?;
        }
    }
    for (what, pin) in [("ipc", &pins.ipc), ("uts", &pins.uts)] {
        if let Some(p) = pin {
            mount(
                Some(format!("/proc/thread-self/ns/{what}").as_str()),
                p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                Error::io(
                    format!("bind {what} namespace onto {}", p.display()),
                    e.into(),
                )
            })?;
        }
    }
    if let (Some(ns), true) = (netns, sysctls.iter().any(|s| s.0 == SysctlNs::Net)) {
        // Last: after this the thread is in the pod's network, nothing else is done here.
        let f =
            std::fs::File::open(ns).map_err(|e| Error::io(format!("open {}", ns.display()), e))?;
        setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| Error::io("setns(net)", e.into()))?;
        for (n, path, v) in sysctls {
            if *n == SysctlNs::Net {
                write(path, v)?;
            }
        }
    }
    Ok(())
}

/// Unpins the pod's namespaces and removes its pin dir. Idempotent.
pub fn remove(state: &Path, id: &str) -> Result<()> {
    let d = dir(state, id);
    for f in ["ipc", "uts"] {
        let p = d.join(f);
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(Error::io(format!("umount {}", p.display()), e.into())),
        }
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", p.display()), e)),
        }
    }
    match std::fs::remove_dir(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("rmdir {}", d.display()), e)),
    }
}

/// The pod ids that have a pin dir (for the orphan sweep).
pub fn pinned_ids(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("podns"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// `/proc/net/dev` as seen from inside the network namespace pinned at `netns` (a pod
/// without an infra process has no process of its own to read it through). Blocking.
pub fn read_net_dev(netns: &Path) -> Result<String> {
    let ns = netns.to_path_buf();
    std::thread::Builder::new()
        .name("berth-netdev".into())
        .spawn(move || {
            // Its own thread, for setns (see `create`).
            let f = std::fs::File::open(&ns)
                .map_err(|e| Error::io(format!("open {}", ns.display()), e))?;
            setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| Error::io("setns(net)", e.into()))?;
            std::fs::read_to_string("/proc/thread-self/net/dev")
                .map_err(|e| Error::io("read net/dev", e))
        })
        .map_err(|e| Error::io("spawn netdev thread", e))?
        .join()
        .unwrap_or_else(|_| Err(Error::Internal("netdev thread panicked".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn req() -> PinRequest {
        PinRequest {
            ipc: true,
            hostname: Some("pinned-pod".into()),
            netns: None,
            sysctls: vec![("kernel.shmmni".into(), "1234".into())],
        }
    }

    fn nsenter(args: &[&str]) -> String {
        let out = Command::new("nsenter").args(args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn pins_carry_the_hostname_and_sysctls_and_remove_leaves_nothing() {
        let state = tempfile::tempdir().unwrap();
        let pins = create(state.path(), "pod1", &req()).unwrap();
        let (ipc, uts) = (pins.ipc.clone().unwrap(), pins.uts.clone().unwrap());
        let uts_arg = format!("--uts={}", uts.display());
        assert_eq!(nsenter(&[&uts_arg, "hostname"]), "pinned-pod");
        let ipc_arg = format!("--ipc={}", ipc.display());
        assert_eq!(
            nsenter(&[&ipc_arg, "cat", "/proc/sys/kernel/shmmni"]),
            "1234"
        );
        // The host's are untouched.
        assert_ne!(
            std::fs::read_to_string("/proc/sys/kernel/shmmni")
                .unwrap()
                .trim(),
            "1234"
        );
        assert_eq!(pinned_ids(state.path()), ["pod1"]);
        // A second pod with the same id is refused, the first untouched.
        assert!(matches!(
            create(state.path(), "pod1", &req()),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(nsenter(&[&uts_arg, "hostname"]), "pinned-pod");
        remove(state.path(), "pod1").unwrap();
        assert!(!dir(state.path(), "pod1").exists());
        assert!(crate::util::mount_of(&ipc).is_none_or(|m| m.point != ipc));
        remove(state.path(), "pod1").unwrap();
    }

    #[test]
    fn bad_sysctls_are_refused_before_anything_is_made() {
        let state = tempfile::tempdir().unwrap();
        for (k, v) in [
            ("kernel.shmmni/../../x", "1"),
            ("../../etc/passwd", "1"),
            ("kernel..shmmni", "1"),
            ("vm.swappiness", "1"),
            ("net.ipv4.ip_forward", "1"),
            ("kernel.shmmni", "bad\0value"),
        ] {
            let mut r = req();
            r.sysctls = vec![(k.into(), v.into())];
            assert!(
                matches!(
                    create(state.path(), "p", &r),
                    Err(Error::InvalidArgument(_))
                ),
                "{k}"
            );
        }
        // A sysctl the kernel refuses fails the pod, with nothing left either.
        let mut r = req();
        r.sysctls = vec![("kernel.shmmni".into(), "not-a-number".into())];
        assert!(matches!(
            create(state.path(), "p", &r),
            Err(Error::InvalidArgument(_))
        ));
        assert!(!dir(state.path(), "p").exists());
    }

    #[test]
    fn net_sysctls_are_set_in_the_pods_network_namespace() {
        let state = tempfile::tempdir().unwrap();
        let ns = crate::network::NetNs::create(&state.path().join("netns"), "p").unwrap();
        let mut r = req();
        r.netns = Some(ns.path.clone());
        r.sysctls = vec![("net.ipv4.ip_unprivileged_port_start".into(), "77".into())];
        let made = create(state.path(), "p", &r);
        let net_arg = format!("--net={}", ns.path.display());
        let seen = nsenter(&[
            &net_arg,
            "cat",
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        ]);
        let dev = read_net_dev(&ns.path).unwrap();
        remove(state.path(), "p").unwrap();
        ns.remove().unwrap();
        made.unwrap();
        assert_eq!(seen, "77");
        assert!(dev.contains("lo:"), "{dev}");
    }
}
