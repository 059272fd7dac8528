//! Rootfs mounts applied by the shim: containerd's `Mount` list stacked onto `<bundle>/rootfs`.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_proto::types::mount::Mount;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};
use crate::reaper::Reaper;

mod helper;
mod idmap;

pub use idmap::{attach_volumes, detach_volumes, split_volumes};
mod loopdev;

/// Mounts every entry, in order, onto `rootfs`, or onto `rootfs/<target>` when the entry
/// names a target (containerd 2.x; 1.6 never sets one, so its mounts stack on `rootfs`).
/// `fuse.*` types go through their mount helper ([`helper`]). On failure, whatever was
/// mounted here is unmounted again.
pub async fn mount_rootfs(mounts: &[Mount], rootfs: &Path, reaper: &Arc<Reaper>) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o711).create(rootfs) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            return Err(Error::io(format!("mkdir {}", rootfs.display()), e))
        }
        _ => {}
    }
    // Absolute, because an overlay mount may run with another working directory.
    let root = std::path::absolute(rootfs).map_err(|e| Error::io("resolve rootfs path", e))?;
    let mut done: Vec<PathBuf> = Vec::new();
    for m in mounts {
        let (m, userns) = idmap::split(m)?;
        let result = match mount_point(&root, &m.target) {
            Ok(point) => if helper::helper_for(&m.type_).is_some() {
                helper::mount(&m, &point.path, reaper).await
            } else if let Some(userns) = &userns {
                // Beside the rootfs, so it goes with the bundle; unmounted once the
                // overlay holds the layers (or failed).
                let scratch = root.with_file_name("idmapped-lowers");
                idmap::Lowers::attach(&m, userns, &scratch)
                    .and_then(|(m, _lowers)| mount_one(&m, &point.path))
            } else {
                mount_one(&m, &point.path)
            }
            .map(|()| point.path),
            Err(e) => Err(e),
        };
        match result {
            Ok(p) => done.push(p),
            Err(e) => {
                // Only our own mounts come off, newest first: a rootfs that was already a
                // mount point stays.
                for p in done.iter().rev() {
                    if let Err(u) = umount2(p, MntFlags::MNT_DETACH) {
                        tracing::warn!(error = %u, path = %p.display(), "rollback unmount");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Where one mount goes: `root` itself, or `target` resolved inside `root` as if `root` were
/// `/` (symlinks and `..` in the image can never lead out of it, as containerd's secure join).
struct MountPoint {
    path: PathBuf,
}

fn mount_point(root: &Path, target: &str) -> Result<MountPoint> {
    let rel = target.trim_start_matches('/');
    if rel.is_empty() {
        return Ok(MountPoint {
            path: root.to_path_buf(),
        });
    }
    use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    // Opened now, not before: an earlier entry may have mounted over `root`, and the target
    // lives in what is visible there now.
    let dir = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {}", root.display()), e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(&dir, rel, how).map_err(|e| {
        Error::sys(
            format!("resolve mount target {target:?} in {}", root.display()),
            e,
        )
    })?;
    // The kernel's name for what was resolved: a path under `root` with no symlink left, so
    // mounting on it walks to the same place (nothing else writes into the rootfs before the
    // container starts). The string, not `/proc/self/fd/N`, is what the mount gets: a
    // read-only remount through the fd would reach the directory under the new mount.
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| Error::io("read resolved mount target", e))?;
    let canonical_root = std::fs::canonicalize(root)
        .map_err(|e| Error::io(format!("resolve {}", root.display()), e))?;
    if !path.starts_with(&canonical_root) {
        return Err(Error::InvalidArgument(format!(
            "mount target {target:?} resolves outside the rootfs"
        )));
    }
    Ok(MountPoint { path })
}

/// Unmounts everything stacked on `target` (lazily); a missing path or no mount is Ok.
pub fn unmount_all(target: &Path) -> Result<()> {
    if let Err(e) = std::fs::symlink_metadata(target) {
        if e.kind() == ErrorKind::NotFound {
            return Ok(());
        }
    }
    // Bounded so a path that keeps getting remounted cannot spin us forever.
    for _ in 0..4096 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::sys(format!("unmount {}", target.display()), e)),
        }
    }
    Err(Error::State(format!(
        "{} is still mounted after 4096 unmounts",
        target.display()
    )))
}

/// The result of containerd's `parseMountOptions`.
#[derive(Debug, PartialEq, Eq)]
struct ParsedOptions {
    flags: MsFlags,
    data: String,
    losetup: bool,
}

/// containerd's flag-word table: (clear?, flag). "defaults" is in the table with flag 0,
/// which containerd treats as "not a flag", so it falls through into the data string.
fn flag_word(word: &str) -> Option<(bool, MsFlags)> {
    use MsFlags as F;
    Some(match word {
        "async" => (true, F::MS_SYNCHRONOUS),
        "atime" => (true, F::MS_NOATIME),
        "bind" => (false, F::MS_BIND),
        "dev" => (true, F::MS_NODEV),
        "diratime" => (true, F::MS_NODIRATIME),
        "dirsync" => (false, F::MS_DIRSYNC),
        "exec" => (true, F::MS_NOEXEC),
        "mand" => (false, F::MS_MANDLOCK),
        "noatime" => (false, F::MS_NOATIME),
        "nodev" => (false, F::MS_NODEV),
        "nodiratime" => (false, F::MS_NODIRATIME),
        "noexec" => (false, F::MS_NOEXEC),
        "nomand" => (true, F::MS_MANDLOCK),
        "norelatime" => (true, F::MS_RELATIME),
        "nostrictatime" => (true, F::MS_STRICTATIME),
        "nosuid" => (false, F::MS_NOSUID),
        "rbind" => (false, F::MS_BIND | F::MS_REC),
        "relatime" => (false, F::MS_RELATIME),
        "remount" => (false, F::MS_REMOUNT),
        "ro" => (false, F::MS_RDONLY),
        "rw" => (true, F::MS_RDONLY),
        "strictatime" => (false, F::MS_STRICTATIME),
        "suid" => (true, F::MS_NOSUID),
        "sync" => (false, F::MS_SYNCHRONOUS),
        _ => return None,
    })
}

fn parse_mount_options(options: &[String]) -> ParsedOptions {
    let mut p = ParsedOptions {
        flags: MsFlags::empty(),
        data: String::new(),
        losetup: false,
    };
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        match flag_word(o) {
            Some((true, f)) => p.flags.remove(f),
            Some((false, f)) => p.flags.insert(f),
            None if o == "loop" => p.losetup = true,
            None => data.push(o),
        }
    }
    p.data = data.join(",");
    p
}

/// containerd's `compactLowerdirOption`: the common parent of all lowerdirs (with a trailing
/// '/') and the options with `lowerdir=` rewritten relative to it, moved to the end.
fn compact_lowerdir_option(opts: &[String]) -> Option<(String, Vec<String>)> {
    let idx = opts.iter().position(|o| o.starts_with("lowerdir="))?;
    let dirs: Vec<&str> = opts[idx]["lowerdir=".len()..].split(':').collect();
    if dirs.len() == 1 {
        return None;
    }
    let common = longest_common_prefix(&dirs);
    if common.is_empty() {
        return None;
    }
    // Snapshot ids are digits ("snapshots/1", "snapshots/10"): back off to the parent dir.
    let common = match common.rfind('/') {
        Some(0) | None => return None,
        Some(i) => format!("{}/", &common[..i]),
    };
    let rel: Vec<&str> = dirs.iter().map(|d| &d[common.len()..]).collect();
    let mut out: Vec<String> = opts.to_vec();
    out.remove(idx);
    out.push(format!("lowerdir={}", rel.join(":")));
    Some((common, out))
}

fn longest_common_prefix<'a>(strs: &[&'a str]) -> &'a str {
    let (Some(min), Some(max)) = (strs.iter().min(), strs.iter().max()) else {
        return "";
    };
    let mut n = min
        .bytes()
        .zip(max.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    while !min.is_char_boundary(n) {
        n -= 1;
    }
    &min[..n]
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value; it has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let pagesize = page_size();
    let mut chdir = None;
    let mut options = m.options.clone();
    let size: usize = options.iter().map(String::len).sum();
    if m.type_ == "overlay" && size >= pagesize - 512 {
        if let Some((dir, compacted)) = compact_lowerdir_option(&options) {
            chdir = Some(PathBuf::from(dir));
            options = compacted;
        }
    }
    let mut p = parse_mount_options(&options);
    let mut loop_params = None;
    if p.losetup {
        // containerd's hasDirectIO: a loop-only word, never passed to the filesystem.
        let words: Vec<&str> = p.data.split(',').filter(|w| !w.is_empty()).collect();
        let direct_io = words.contains(&"direct-io");
        p.data = words
            .into_iter()
            .filter(|w| *w != "direct-io")
            .collect::<Vec<_>>()
            .join(",");
        loop_params = Some(loopdev::Params {
            readonly: p.flags.contains(MsFlags::MS_RDONLY),
            direct_io,
        });
    }
    if p.data.len() > pagesize {
        return Err(Error::InvalidArgument("mount options is too long".into()));
    }
    // The option table has no propagation words, so containerd's propagation mount(2) is
    // unreachable and left out here.
    let mounted = !p.flags.contains(MsFlags::MS_REMOUNT) || !p.data.is_empty();
    if mounted {
        let data = (!p.data.is_empty()).then_some(p.data.as_str());
        // Held until the mount is made (autoclear frees an unreferenced device).
        let device = match loop_params {
            Some(lp) => Some(loopdev::attach(&m.source, lp)?),
            None => None,
        };
        let src = match &device {
            Some(d) => d.path.to_str().unwrap_or_default(),
            None => m.source.as_str(),
        };
        let fstype = m.type_.as_str();
        match chdir {
            None => mount(Some(src), target, Some(fstype), p.flags, data),
            Some(dir) => mount_in_dir(dir, src, target, fstype, p.flags, data),
        }
        .map_err(|e| {
            Error::sys(
                format!("mount {} {:?} on {}", m.type_, m.source, target.display()),
                e,
            )
        })?;
    }
    let ro_bind = MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    if p.flags.contains(ro_bind) {
        // MS_RDONLY is ignored on the initial bind; it only takes effect on a remount.
        let flags = p.flags | MsFlags::MS_REMOUNT;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            if mounted {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(Error::sys(
                format!("remount {} read-only", target.display()),
                e,
            ));
        }
    }
    Ok(())
}

/// mount(2) with relative lowerdirs, resolved against `dir`.
///
/// Why a dedicated thread: the kernel resolves relative overlay lowerdirs against the cwd,
/// and the cwd is process-wide. `unshare(CLONE_FS)` gives this one thread a private cwd, so
/// the chdir cannot race with the rest of the shim. A fork is avoided because the daemon's
/// SIGCHLD reaper (`wait4(-1)`) would steal the child's exit status. The thread must not be a
/// pooled one (e.g. tokio's blocking pool): its fs state cannot be undone, so it has to exit.
fn mount_in_dir(
    dir: PathBuf,
    src: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    let (src, target, fstype) = (src.to_owned(), target.to_owned(), fstype.to_owned());
    let data = data.map(str::to_owned);
    let worker = std::thread::Builder::new()
        .name("berth-mount".into())
        .spawn(move || {
            unshare(CloneFlags::CLONE_FS)?;
            nix::unistd::chdir(&dir)?;
            mount(
                Some(src.as_str()),
                &target,
                Some(fstype.as_str()),
                flags,
                data.as_deref(),
            )
        });
    match worker {
        Ok(handle) => handle.join().unwrap_or(Err(Errno::EIO)),
        Err(e) => Err(e.raw_os_error().map_or(Errno::EAGAIN, Errno::from_raw)),
    }
}

#[cfg(test)]
mod tests;
