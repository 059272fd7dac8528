//! Idmapped overlay lower dirs for a user-namespaced pod's container rootfs, and its
//! idmapped volumes (CRI `Mount.uid_mappings`).
//!
//! berthd marks such an overlay with [`USERNS_OPTION`]: before mounting it, the shim
//! attaches an idmapped copy of each lower dir (`open_tree(OPEN_TREE_CLONE)`,
//! `mount_setattr(MOUNT_ATTR_IDMAP)` through the pod's user namespace, `move_mount`) in a
//! scratch dir beside the rootfs and mounts the overlay on those; once it is mounted they
//! come off again (overlayfs keeps private clones of its layers). The image's root-owned
//! files then show owned by the pod's mapped root; berthd gives the upper dir to the mapped
//! root, so what the container writes is stored with its host ids.
//!
//! Why the lower dirs and not the overlay itself: overlayfs cannot be idmapped (no
//! FS_ALLOW_IDMAP), its layers can (Linux 5.19), as containerd 2.x does. Why the shim and
//! not the OCI runtime: runc 1.1 has no idmapped mounts, and the shim mounts the rootfs.
//!
//! A volume comes as a `bind` rootfs entry carrying [`VOLUME_OPTION`]: the shim attaches
//! an idmapped clone of its source tree at `<bundle>/idmapped-volumes/<n>` before `runc
//! create` (the spec's bind names that path) and detaches it once runc holds its own copy
//! (and again at delete; berthd unmounts whatever a crash left under the bundle).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use berth_proto::idmap::{
    attach, idmapped_copy, idmapped_tree, volume_point, USERNS_OPTION, VOLUMES_DIR, VOLUME_OPTION,
};
use berth_proto::types::mount::Mount;
use nix::mount::{umount2, MntFlags};
use std::os::unix::fs::OpenOptionsExt;

use crate::error::{Error, Result};

/// The mount without Berth's idmap option, and the user namespace that option names.
pub(super) fn split(m: &Mount) -> Result<(Mount, Option<PathBuf>)> {
    let mut out = m.clone();
    let mut userns = None;
    out.options.retain(|o| match o.strip_prefix(USERNS_OPTION) {
        Some(p) => {
            userns = Some(PathBuf::from(p));
            false
        }
        None => true,
    });
    if let Some(p) = &userns {
        if !p.is_absolute() || m.type_ != "overlay" {
            return Err(Error::InvalidArgument(format!(
                "mount option {USERNS_OPTION}{}: needs an absolute path and an overlay mount",
                p.display()
            )));
        }
    }
    Ok((out, userns))
}

/// Idmapped copies of an overlay's lower dirs, attached under `dir` until dropped.
pub(super) struct Lowers {
    dir: PathBuf,
    points: Vec<PathBuf>,
}

impl Lowers {
    /// Attaches an idmapped copy of each lower dir of overlay `m` under `dir` (made here,
    /// 0700) and returns `m` with its `lowerdir=` naming them.
    pub fn attach(m: &Mount, userns: &Path, dir: &Path) -> Result<(Mount, Lowers)> {
        let mut lowers = Lowers {
            dir: dir.to_path_buf(),
            points: Vec::new(),
        };
        // One a failed earlier attempt left: only empty dirs go, never through a mount.
        remove_empty(dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        let mut out = m.clone();
        let idx = out
            .options
            .iter()
            .position(|o| o.starts_with("lowerdir="))
            .ok_or_else(|| Error::InvalidArgument("an idmapped overlay needs lowerdir=".into()))?;
        let mut names = Vec::new();
        for (i, lower) in out.options[idx]["lowerdir=".len()..].split(':').enumerate() {
            let point = dir.join(i.to_string());
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&point)
                .map_err(|e| Error::io(format!("mkdir {}", point.display()), e))?;
            let what = || format!("idmap {lower} with {}", userns.display());
            let tree = idmapped_copy(Path::new(lower), userns).map_err(|e| Error::io(what(), e))?;
            attach(&tree, &point).map_err(|e| Error::io(what(), e))?;
            lowers.points.push(point.clone());
            names.push(point.display().to_string());
        }
        out.options[idx] = format!("lowerdir={}", names.join(":"));
        Ok((out, lowers))
    }
}

impl Drop for Lowers {
    /// Detaches the copies (the overlay holds its own) and removes the scratch dir.
    fn drop(&mut self) {
        for p in &self.points {
            if let Err(e) = umount2(p, MntFlags::MNT_DETACH) {
                tracing::warn!(error = %e, path = %p.display(), "unmount an idmapped lower dir");
            }
        }
        remove_empty(&self.dir);
    }
}

/// Removes `dir` and the dirs in it if they are empty. Never `remove_dir_all`: a dir that
/// is still a mount point shows an image layer, whose files must not be deleted.
fn remove_empty(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// An idmapped volume asked for by a `bind` rootfs entry with [`VOLUME_OPTION`]: the tree
/// at `source`, idmapped through `userns`, attached at [`volume_point`]`(bundle, n)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    pub userns: PathBuf,
    pub n: usize,
}

/// Splits the Create request's rootfs entries into the rootfs' own mounts and the
/// idmapped volumes. A volume entry must be a `bind` or `rbind` with an absolute source,
/// an absolute user namespace path and a number of at most four digits.
pub fn split_volumes(mounts: &[Mount]) -> Result<(Vec<Mount>, Vec<Volume>)> {
    let (mut rootfs, mut volumes) = (Vec::new(), Vec::new());
    for m in mounts {
        let Some(n) = m.options.iter().find_map(|o| o.strip_prefix(VOLUME_OPTION)) else {
            rootfs.push(m.clone());
            continue;
        };
        let bad =
            |why: &str| Error::InvalidArgument(format!("idmapped volume {:?}: {why}", m.source));
        let n = (n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse::<usize>().ok())
            .flatten()
            .ok_or_else(|| bad("its number must be at most four digits"))?;
        let userns = m
            .options
            .iter()
            .find_map(|o| o.strip_prefix(USERNS_OPTION))
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .ok_or_else(|| bad("needs an absolute user namespace path"))?;
        let source = PathBuf::from(&m.source);
        if m.type_ != "bind" || !source.is_absolute() || !m.target.is_empty() {
            return Err(bad("needs type bind, an absolute source and no target"));
        }
        if volumes.iter().any(|v: &Volume| v.n == n) {
            return Err(bad("its number is given twice"));
        }
        volumes.push(Volume { source, userns, n });
    }
    Ok((rootfs, volumes))
}

/// Attaches every volume under `bundle`; on a failure, those attached come off again.
///
/// Why under the bundle: runc binds the volume from there (the spec names
/// [`volume_point`] as its source), and everything mounted under a bundle is unmounted
/// when the bundle is removed, by berthd even after a crash of the shim or of berthd.
/// The dir is root's alone (0700): runc opens bind sources before it enters the user
/// namespace.
pub fn attach_volumes(volumes: &[Volume], bundle: &Path) -> Result<()> {
    if volumes.is_empty() {
        return Ok(());
    }
    let dir = bundle.join(VOLUMES_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(Error::io(format!("mkdir {}", dir.display()), e))
        }
        _ => {}
    }
    for v in volumes {
        if let Err(e) = attach_volume(v, bundle) {
            detach_volumes(bundle);
            return Err(e);
        }
    }
    Ok(())
}

fn attach_volume(v: &Volume, bundle: &Path) -> Result<()> {
    let point = volume_point(bundle, v.n);
    let what = || {
        format!(
            "idmap volume {} with {}",
            v.source.display(),
            v.userns.display()
        )
    };
    // The source's kind decides the mount point's: a file is bound onto a file.
    let meta = std::fs::metadata(&v.source).map_err(|e| Error::io(what(), e))?;
    let made = if meta.is_dir() {
        std::fs::DirBuilder::new().mode(0o700).create(&point)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&point)
            .map(drop)
    };
    made.map_err(|e| Error::io(format!("create {}", point.display()), e))?;
    // Recursive, as the spec's `rbind` of the source would be.
    let tree = idmapped_tree(&v.source, &v.userns).map_err(|e| Error::io(what(), e))?;
    attach(&tree, &point).map_err(|e| Error::io(what(), e))
}

/// Detaches every idmapped volume under `bundle` and removes their mount points. Safe to
/// call again and on a bundle without any: runc holds its own copies once it made the
/// container's mounts, so this runs right after `runc create` and again at delete.
pub fn detach_volumes(bundle: &Path) {
    let dir = bundle.join(VOLUMES_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match super::unmount_all(&p) {
            // Our own empty dir or file once nothing is mounted on it; never recursively.
            Ok(()) => {
                let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
            }
            Err(e) => tracing::warn!(error = %e, path = %p.display(), "unmount an idmapped volume"),
        }
    }
    let _ = std::fs::remove_dir(&dir);
}
