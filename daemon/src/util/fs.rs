//! Small filesystem helpers: unique temp names, cleanup guards, directory fsync and
//! disk usage.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other writer uses: pid, time and a process-wide counter.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Removes a temp file or directory when dropped unless disarmed: every early return
/// of an ingest or unpack cleans up after itself.
pub struct RemoveOnDrop {
    path: Option<PathBuf>,
    dir: bool,
}

impl RemoveOnDrop {
    pub fn file(path: PathBuf) -> Self {
        RemoveOnDrop {
            path: Some(path),
            dir: false,
        }
    }

    pub fn dir(path: PathBuf) -> Self {
        RemoveOnDrop {
            path: Some(path),
            dir: true,
        }
    }

    pub fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = if self.dir {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// Removes each directory tree; one already gone is fine. Blocking (a walk of any
/// size): call it off the async workers.
pub fn remove_dirs(dirs: &[&Path]) -> Result<()> {
    for d in dirs {
        if let Err(e) = fs::remove_dir_all(d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Error::io(format!("remove {}", d.display()), e));
            }
        }
    }
    Ok(())
}

/// Makes a rename in `dir` durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}

/// Bytes (allocated blocks) and inodes used under `root`, each inode counted once
/// however many hard links it has, the root included (as containerd's snapshotters count
/// a writable layer's usage). A missing root uses nothing.
///
/// The walk goes by directory fds (`openat` with `O_NOFOLLOW`, `fstatat` without
/// following): a container can rename a dir of its writable layer to a symlink while we
/// walk it, and a path-based walk would then follow it onto the host. Blocking: call it
/// off the async workers.
pub fn disk_usage(root: &Path) -> Result<(u64, u64)> {
    use nix::fcntl::AtFlags;
    use nix::fcntl::{openat, OFlag, AT_FDCWD};
    use nix::sys::stat::{fstatat, Mode};
    use std::os::fd::{AsFd, OwnedFd};

    let io_err = |what: &str, p: &Path, e: nix::errno::Errno| {
        Error::io(format!("{what} {}", p.display()), std::io::Error::from(e))
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let md = match fstatat(AT_FDCWD, root, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(m) => m,
        Err(nix::errno::Errno::ENOENT) => return Ok((0, 0)),
        Err(e) => return Err(io_err("stat", root, e)),
    };
    let mut seen = HashSet::new();
    seen.insert((md.st_dev, md.st_ino));
    let (mut bytes, mut inodes) = (md.st_blocks as u64 * 512, 1u64);
    if md.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Ok((bytes, inodes));
    }
    let mut stack: Vec<OwnedFd> = match openat(AT_FDCWD, root, dir_flags, Mode::empty()) {
        Ok(fd) => vec![fd],
        Err(nix::errno::Errno::ENOENT) => return Ok((0, 0)),
        Err(e) => return Err(io_err("open", root, e)),
    };
    while let Some(fd) = stack.pop() {
        let names: Vec<std::ffi::CString> = {
            let dup = fd
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::io("dup", e))?;
            let mut dir = match nix::dir::Dir::from_fd(dup) {
                Ok(d) => d,
                Err(e) => return Err(io_err("read", root, e)),
            };
            dir.iter()
                .flatten()
                .map(|e| e.file_name().to_owned())
                .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
                .collect()
        };
        for name in names {
            let md = match fstatat(&fd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(m) => m,
                // Removed while we walk (a concurrent GC): it uses nothing any more.
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => return Err(io_err("stat in", root, e)),
            };
            if seen.insert((md.st_dev, md.st_ino)) {
                bytes += md.st_blocks as u64 * 512;
                inodes += 1;
            }
            if md.st_mode & libc::S_IFMT == libc::S_IFDIR {
                // O_NOFOLLOW: swapped for a symlink since the stat, it is not entered.
                match openat(&fd, name.as_c_str(), dir_flags, Mode::empty()) {
                    Ok(child) => stack.push(child),
                    Err(
                        nix::errno::Errno::ENOENT
                        | nix::errno::Errno::ELOOP
                        | nix::errno::Errno::ENOTDIR,
                    ) => {}
                    Err(e) => return Err(io_err("open in", root, e)),
                }
            }
        }
    }
    Ok((bytes, inodes))
}

/// [`disk_usage`] for a figure that is reported, not acted on (stats, ImageFsInfo): an
/// error is logged and counts as nothing used.
pub fn reported_usage(root: &Path) -> (u64, u64) {
    disk_usage(root).unwrap_or_else(|e| {
        tracing::warn!(path = %root.display(), error = %e, "disk usage");
        (0, 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_each_inode_once_and_never_follows_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("upper");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), vec![1u8; 64 << 10]).unwrap();
        std::fs::hard_link(root.join("a/b/f"), root.join("a/hard")).unwrap();
        let (bytes, inodes) = disk_usage(&root).unwrap();
        // upper, a, b, f (the hard link is the same inode).
        assert_eq!(inodes, 4);
        assert!(bytes >= 64 << 10, "{bytes}");
        // A symlink to a big host dir counts as one small inode, its target nothing.
        std::os::unix::fs::symlink("/usr", root.join("a/usr")).unwrap();
        let (bytes2, inodes2) = disk_usage(&root).unwrap();
        assert_eq!(inodes2, 5);
        assert!(bytes2 < bytes + (64 << 10), "{bytes2} vs {bytes}");
        // The root itself a symlink: only the link.
        std::os::unix::fs::symlink("/usr", d.path().join("link")).unwrap();
        assert_eq!(disk_usage(&d.path().join("link")).unwrap().1, 1);
        assert_eq!(disk_usage(&d.path().join("missing")).unwrap(), (0, 0));
    }
}
