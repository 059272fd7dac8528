//! Pinned network namespaces: a new netns bind-mounted onto a file, like `ip netns add`.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};

/// A network namespace kept alive by a bind mount at `path`, independent of any process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    pub path: PathBuf,
}

impl NetNs {
    /// Makes `dir/name` and pins a fresh network namespace on it. Blocking but short (a
    /// thread spawn, unshare and one mount). Only `lo` exists inside, still down: bringing it
    /// up is the loopback plugin's job.
    pub fn create(dir: &Path, name: &str) -> Result<NetNs> {
        let ns = NetNs::reserve(dir, name)?;
        let target = ns.path.clone();
        // Why a dedicated, short-lived thread: unshare(CLONE_NEWNET) moves only the calling
        // thread into the new namespace. On a tokio worker every later task scheduled on
        // that thread would run inside the pod's network. This thread exits right after the
        // bind mount and its reference to the namespace goes with it; the mount alone keeps
        // the namespace alive. The join is bounded by two syscalls.
        let pinned = std::thread::Builder::new()
            .name("berth-netns".into())
            .spawn(move || pin_new_netns(&target))
            .map_err(|e| Error::io("spawn netns thread", e))
            .and_then(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("netns thread panicked".into())))
            });
        if let Err(e) = pinned {
            let _ = std::fs::remove_file(&ns.path);
            return Err(e);
        }
        Ok(ns)
    }

    /// Pins the network namespace process `pid` made (a user-namespaced pod's infra, whose
    /// network namespace must belong to the pod's user namespace) on a pin file from
    /// [`NetNs::reserve`]. One mount; [`NetNs::remove`] undoes it.
    pub fn pin_from(&self, pid: u32) -> Result<()> {
        mount(
            Some(format!("/proc/{pid}/ns/net").as_str()),
            &self.path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            Error::io(
                format!("bind the netns of pid {pid} onto {}", self.path.display()),
                e.into(),
            )
        })
    }

    /// Makes the pin file `dir/name` without a namespace on it yet.
    pub fn reserve(dir: &Path, name: &str) -> Result<NetNs> {
        validate_name(name)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        let path = dir.join(name);
        // The mount point is an empty file. create_new: a leftover or a second pod with the
        // same id is refused rather than silently sharing a namespace.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    Error::AlreadyExists(format!("network namespace {} exists", path.display()))
                }
                _ => Error::io(format!("create {}", path.display()), e),
            })?;
        Ok(NetNs { path })
    }

    /// Whether a namespace is mounted at `path`. A crash can leave the pin file without its
    /// mount (between the file's creation and the mount, or the unmount and the unlink),
    /// and CNI plugins refuse such a path as a netns.
    pub fn is_pinned(path: &Path) -> bool {
        use nix::sys::statfs::{statfs, NSFS_MAGIC};
        statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
    }

    /// Unmounts and unlinks the pin. Idempotent: a missing or unmounted file is fine. The
    /// namespace itself dies when nothing else (a process, another mount) holds it.
    pub fn remove(&self) -> Result<()> {
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (already unmounted); ENOENT: already gone.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(Error::io(
                    format!("umount {}", self.path.display()),
                    e.into(),
                ))
            }
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", self.path.display()), e)),
        }
    }
}

/// Runs on its own thread: leaves the host network and pins the new namespace on `target`.
fn pin_new_netns(target: &Path) -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::io("unshare(CLONE_NEWNET)", e.into()))?;
    mount(
        Some("/proc/thread-self/ns/net"),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::io(format!("bind netns onto {}", target.display()), e.into()))
}

fn validate_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.contains(['/', '\0']);
    if bad {
        return Err(Error::InvalidArgument(format!(
            "invalid network namespace name {name:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Removes the netns even when an assertion fails.
    struct Guard(Option<NetNs>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(ns) = self.0.take() {
                let _ = ns.remove();
            }
        }
    }

    fn mount_fstype(path: &Path) -> Option<String> {
        crate::util::mount_of(path)
            .filter(|m| m.point == path)
            .map(|m| m.fstype)
    }

    #[test]
    fn create_pins_an_empty_netns_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let nsdir = dir.path().join("netns");
        let ns = NetNs::create(&nsdir, "pod-1").unwrap();
        let guard = Guard(Some(ns.clone()));
        assert_eq!(ns.path, nsdir.join("pod-1"));
        assert_eq!(mount_fstype(&ns.path).as_deref(), Some("nsfs"));

        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.path.display()))
            .args(["ip", "-o", "link"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let links = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(str::trim))
            .collect();
        assert_eq!(names, ["lo"], "{links}");

        // A second namespace with the same name is refused, the first is untouched.
        assert!(matches!(
            NetNs::create(&nsdir, "pod-1"),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(mount_fstype(&ns.path).as_deref(), Some("nsfs"));

        ns.remove().unwrap();
        assert!(!ns.path.exists());
        assert_eq!(mount_fstype(&ns.path), None);
        ns.remove().unwrap();
        drop(guard);
    }

    #[test]
    fn bad_names_are_refused_and_nothing_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let nsdir = dir.path().join("netns");
        for name in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(
                matches!(NetNs::create(&nsdir, name), Err(Error::InvalidArgument(_))),
                "{name:?}"
            );
        }
        assert!(!nsdir.exists());
    }
}
