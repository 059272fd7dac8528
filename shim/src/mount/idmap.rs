//! Idmapped overlay lower dirs for a user-namespaced pod's container rootfs.
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

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use berth_proto::idmap::{attach, idmapped_copy, USERNS_OPTION};
use berth_proto::types::mount::Mount;
use nix::mount::{umount2, MntFlags};

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
