//! Idmapped mounts: the rootfs mount options with which berthd asks the shim for them, and
//! the three syscalls that make one (`open_tree`, `mount_setattr`, `move_mount`). The shim
//! uses them on the lower dirs of a user-namespaced container's overlay and on its
//! idmapped volumes; berthd uses them to probe, once at startup, whether the kernel can
//! mount an overlay on idmapped layers.
//!
//! Hand-written over `libc::syscall`: libc has the syscall numbers but keeps
//! `struct mount_attr` crate-private, and neither nix nor rustix wraps `mount_setattr`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// An overlay rootfs `Mount` option: the shim mounts the overlay on idmapped copies of its
/// lower dirs, mapped through the user namespace at this path (`/proc/<pid>/ns/user` of
/// the pod's infra process). Stripped before mount(2); the `X-` prefix is libmount's mark
/// for options the kernel never sees.
pub const USERNS_OPTION: &str = "X-berth.idmap-userns=";

/// A rootfs `Mount` option on a `bind` entry: not a layer of the rootfs but a volume (CRI
/// `Mount.uid_mappings`) the shim attaches, idmapped through [`USERNS_OPTION`]'s user
/// namespace, at [`volume_point`]`(bundle, n)`, where the spec's bind mount finds it.
pub const VOLUME_OPTION: &str = "X-berth.idmap-volume=";

/// The dir under a bundle where idmapped volumes are attached.
pub const VOLUMES_DIR: &str = "idmapped-volumes";

/// Where the shim attaches the container's idmapped volume number `n` (berthd names it
/// as the source of the volume's bind in the spec).
pub fn volume_point(bundle: &Path, n: usize) -> std::path::PathBuf {
    bundle.join(VOLUMES_DIR).join(n.to_string())
}

// <linux/mount.h>; stable kernel ABI.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A detached copy of the mount at `path` (not of its submounts), closed with the fd.
pub fn clone_mount(path: &Path) -> io::Result<OwnedFd> {
    open_tree(path, false)
}

/// A detached copy of the mount at `path`, with its submounts when `recursive`.
fn open_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let p = cpath(path)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: `p` is a valid NUL-terminated string for the call; the result is a new fd
    // that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a fresh fd (checked non-negative above).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the detached mount `tree` idmapped through the user namespace `userns`: a file
/// owned by id N on disk shows as the host id N maps to (container root's files appear
/// owned by the mapped root), and writes map back. Only a detached mount can get one.
pub fn set_idmap(tree: &OwnedFd, userns: BorrowedFd<'_>) -> io::Result<()> {
    setattr_idmap(tree, userns, false)
}

/// [`set_idmap`], on every mount of the tree when `recursive`.
fn setattr_idmap(tree: &OwnedFd, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` lives across the call and its size is passed; "" with AT_EMPTY_PATH
    // names the fd itself.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches the detached mount `tree` at `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let t = cpath(target)?;
    // SAFETY: `t` is a valid NUL-terminated string; "" with F_EMPTY_PATH names the fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An idmapped, detached copy of the mount at `target` (`userns`: a
/// `/proc/<pid>/ns/user` path); `target` itself is left as it is. Attach it with
/// [`attach`] once the original is off: the superblock stays alive through the copy's fd.
pub fn idmapped_copy(target: &Path, userns: &Path) -> io::Result<OwnedFd> {
    let ns = std::fs::File::open(userns)?;
    let tree = clone_mount(target)?;
    set_idmap(&tree, std::os::fd::AsFd::as_fd(&ns))?;
    Ok(tree)
}

/// An idmapped, detached copy of the tree at `path` (the mount it is on from `path` down,
/// with every submount: what an `rbind` of it would show), mapped through `userns`. Every
/// mount in the tree must allow idmapping, or this is EINVAL.
pub fn idmapped_tree(path: &Path, userns: &Path) -> io::Result<OwnedFd> {
    let ns = std::fs::File::open(userns)?;
    let tree = open_tree(path, true)?;
    setattr_idmap(&tree, std::os::fd::AsFd::as_fd(&ns), true)?;
    Ok(tree)
}
