//! Remapped copies of image layers: the rootfs of a user-namespaced pod's container on a
//! host where overlay cannot be mounted on idmapped layers (`[userns] rootfs = "copy"`,
//! or "auto" when the startup probe says idmapping fails). Each snapshot layer is copied
//! once per (layer, id mappings) under `<root>/userns-copies/<key>/fs`, every id shifted
//! through the pod's mapping (ids outside it become the overflow id 65534), and shared by
//! every container using it; `<key>/users/<container id>` counts its users, and the copy
//! goes with its last user, or at startup when no recorded container uses it any more.
//!
//! Copying is blocking I/O: callers run these on the blocking pool. One copy or release
//! runs at a time in berthd ([`LOCK`]), so two creates never copy the same layer twice
//! and never race a removal. A copy is made in `<key>/tmp` and renamed to `fs` once
//! complete, so a crash never leaves a half copy that looks whole.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use super::xattr;
use crate::error::{Error, Result};
use crate::workload::IdMapping;

/// The dir under berthd's root holding the copies.
pub const COPIES_DIR: &str = "userns-copies";

/// The host id a file whose id is outside the mapping gets (the kernel's overflow id).
const OVERFLOW_ID: u32 = 65534;

/// Serializes copies, releases and the startup sweep within berthd.
static LOCK: Mutex<()> = Mutex::new(());

/// The remapped copies under one berthd root.
#[derive(Debug, Clone)]
pub struct Copies {
    dir: PathBuf,
}

/// The host id of file id `id` under `maps` (as the pod sees it: `id` is a container id).
pub fn map_id(id: u32, maps: &[IdMapping]) -> u32 {
    maps.iter()
        .find_map(|m| {
            let off = id.checked_sub(m.container_id)?;
            (off < m.length)
                .then(|| m.host_id.checked_add(off))
                .flatten()
        })
        .unwrap_or(OVERFLOW_ID)
}

fn key(lower: &Path, uids: &[IdMapping], gids: &[IdMapping]) -> String {
    let mut h = Sha256::new();
    h.update(lower.as_os_str().as_encoded_bytes());
    for (tag, maps) in [(b'u', uids), (b'g', gids)] {
        for m in maps {
            h.update([tag]);
            for v in [m.container_id, m.host_id, m.length] {
                h.update(v.to_le_bytes());
            }
        }
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::io(what.to_string(), e)
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

impl Copies {
    pub fn new(root: &Path) -> Copies {
        Copies {
            dir: root.join(COPIES_DIR),
        }
    }

    /// The copies of `lowers` (in order) under the mappings, made where missing, with
    /// `owner` (a container id) recorded as a user of each. Blocking. On a failure,
    /// `owner` uses none of them.
    pub fn acquire(
        &self,
        owner: &str,
        lowers: &[PathBuf],
        uids: &[IdMapping],
        gids: &[IdMapping],
    ) -> Result<Vec<PathBuf>> {
        crate::util::validate_name("container id", owner)?;
        let _g = lock();
        let r = self.acquire_locked(owner, lowers, uids, gids);
        if r.is_err() {
            self.release_locked(owner);
        }
        r
    }

    fn acquire_locked(
        &self,
        owner: &str,
        lowers: &[PathBuf],
        uids: &[IdMapping],
        gids: &[IdMapping],
    ) -> Result<Vec<PathBuf>> {
        // Root's alone: overlay resolves its lower dirs with the mounter's (root's) rights.
        mkdir(&self.dir)?;
        let mut out = Vec::with_capacity(lowers.len());
        for lower in lowers {
            let d = self.dir.join(key(lower, uids, gids));
            let users = d.join("users");
            mkdir(&d)?;
            mkdir(&users)?;
            // The user first: a crash mid-copy leaves a copy whose user the sweep judges.
            std::fs::write(users.join(owner), lower.as_os_str().as_encoded_bytes())
                .map_err(|e| io(format!("record a user of {}", d.display()), e))?;
            let fs = d.join("fs");
            if !fs.exists() {
                let tmp = d.join("tmp");
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp)
                        .map_err(|e| io(format!("remove {}", tmp.display()), e))?;
                }
                let started = std::time::Instant::now();
                copy_tree(lower, &tmp, uids, gids)?;
                std::fs::rename(&tmp, &fs)
                    .map_err(|e| io(format!("rename {}", tmp.display()), e))?;
                tracing::info!(layer = %lower.display(), copy = %fs.display(), took = ?started.elapsed(), "remapped copy of a layer made");
            }
            out.push(fs);
        }
        Ok(out)
    }

    /// `owner` uses no copy any more; copies left without a user are removed. Blocking.
    pub fn release(&self, owner: &str) {
        let _g = lock();
        self.release_locked(owner);
    }

    fn release_locked(&self, owner: &str) {
        for d in subdirs(&self.dir) {
            let users = d.join("users");
            match std::fs::remove_file(users.join(owner)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(error = %e, copy = %d.display(), "unrecord a user");
                    continue;
                }
            }
            remove_if_unused(&d);
        }
    }

    /// Startup: every user that is not in `live` (the recorded containers) is dropped,
    /// and every copy without users (or left half made) is removed. Blocking.
    pub fn sweep(&self, live: &HashSet<String>) -> usize {
        let _g = lock();
        let mut removed = 0;
        for d in subdirs(&self.dir) {
            for u in entries(&d.join("users")) {
                let name = u.file_name().map(|n| n.to_string_lossy().into_owned());
                if name.is_none_or(|n| !live.contains(&n)) {
                    let _ = std::fs::remove_file(&u);
                }
            }
            if remove_if_unused(&d) {
                removed += 1;
            }
        }
        removed
    }

    /// The copies (their `fs` dirs) that exist, for tests and leak checks.
    pub fn list(&self) -> Vec<PathBuf> {
        subdirs(&self.dir)
            .into_iter()
            .map(|d| d.join("fs"))
            .collect()
    }
}

fn mkdir(d: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(d) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            Err(io(format!("mkdir {}", d.display()), e))
        }
        _ => Ok(()),
    }
}

fn entries(d: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(d)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn subdirs(d: &Path) -> Vec<PathBuf> {
    entries(d).into_iter().filter(|p| p.is_dir()).collect()
}

/// Removes copy dir `d` if no user is recorded; true if it went.
fn remove_if_unused(d: &Path) -> bool {
    if !entries(&d.join("users")).is_empty() {
        return false;
    }
    match std::fs::remove_dir_all(d) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, copy = %d.display(), "remove an unused remapped copy");
            false
        }
    }
}

/// Copies the layer `src` to `dst` (made here) with every uid and gid shifted through the
/// mappings. Regular files, dirs, symlinks (copied as links, never followed), hard links
/// (kept as links), FIFOs and device nodes (overlay's whiteouts are char devices 0:0) are
/// copied with their mode and extended attributes (overlay's `trusted.overlay.opaque`
/// among them; file capabilities made namespaced, [`namespaced_caps`]); a socket, or a
/// walk that would leave the layer's filesystem, is refused.
fn copy_tree(src: &Path, dst: &Path, uids: &[IdMapping], gids: &[IdMapping]) -> Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for entry in WalkDir::new(src).follow_links(false).same_file_system(true) {
        let entry =
            entry.map_err(|e| Error::Internal(format!("walk layer {}: {e}", src.display())))?;
        let from = entry.path();
        let rel = from
            .strip_prefix(src)
            .map_err(|_| Error::Internal(format!("{} left the layer", from.display())))?;
        let to = dst.join(rel);
        let md = std::fs::symlink_metadata(from)
            .map_err(|e| io(format!("stat {}", from.display()), e))?;
        let ft = md.file_type();
        let what = || format!("copy {} to {}", from.display(), to.display());
        if ft.is_dir() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&to)
                .map_err(|e| io(what(), e))?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    std::fs::hard_link(first, &to).map_err(|e| io(what(), e))?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), to.clone());
            }
            let mut r = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(from)
                .map_err(|e| io(what(), e))?;
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&to)
                .map_err(|e| io(what(), e))?;
            std::io::copy(&mut r, &mut w).map_err(|e| io(what(), e))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(from).map_err(|e| io(what(), e))?;
            std::os::unix::fs::symlink(target, &to).map_err(|e| io(what(), e))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            use nix::sys::stat::{mknod, Mode, SFlag};
            let kind = SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
            mknod(&to, kind, Mode::from_bits_truncate(0o600), md.rdev())
                .map_err(|e| io(what(), e.into()))?;
        } else {
            return Err(Error::InvalidArgument(format!(
                "layer {}: {} is a socket, which a remapped copy does not take",
                src.display(),
                rel.display()
            )));
        }
        let (uid, gid) = (map_id(md.uid(), uids), map_id(md.gid(), gids));
        std::os::unix::fs::lchown(&to, Some(uid), Some(gid)).map_err(|e| io(what(), e))?;
        // After the chown, which drops set-id bits and file capabilities.
        if !ft.is_symlink() {
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(|e| io(what(), e))?;
        }
        for name in xattr::list(from)? {
            if let Some(mut v) = xattr::get(from, &name)? {
                if name == "security.capability" {
                    v = namespaced_caps(&v, map_id(0, uids));
                }
                xattr::set(&to, &name, &v)?;
            }
        }
    }
    Ok(())
}

/// A file capability as the pod's root can use it: a v2 `security.capability` (which the
/// kernel honours only in the initial user namespace) becomes v3 with the pod's mapped
/// root as its root id (namespaced file capabilities, Linux 4.14), as an idmapped layer
/// would show it. Anything else is kept as it is.
fn namespaced_caps(v: &[u8], rootid: u32) -> Vec<u8> {
    const V2: u32 = 0x0200_0000;
    const V3: u32 = 0x0300_0000;
    const VERSION_MASK: u32 = 0xFF00_0000;
    let Some(magic) = v
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return v.to_vec();
    };
    if v.len() != 20 || magic & VERSION_MASK != V2 {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&((magic & !VERSION_MASK) | V3).to_le_bytes());
    out.extend_from_slice(&v[4..20]);
    out.extend_from_slice(&rootid.to_le_bytes());
    out
}

#[cfg(test)]
mod tests;
