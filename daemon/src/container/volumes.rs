//! Image volumes: a CRI mount that names an image (kubelet's `image` volume source). The
//! image's layers are mounted read-only (overlay) under the container's bundle, where
//! removal and startup cleanup unmount everything, and bind-mounted read-only into the
//! container (the whole image, or the directory or file its `image_sub_path` names,
//! resolved inside the image). The container's lease holds the image's snapshots while it
//! exists.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

use super::Containers;
use crate::error::{Error, Result};
use crate::workload::{Mount, Propagation};

impl Containers {
    /// Mounts the image volumes among `mounts` (noting each one's image id in it) and
    /// returns the mounts the spec is built from: each image volume replaced by a
    /// read-only bind of its mounted image (or of its `image_sub_path` inside it).
    pub(super) fn mount_image_volumes(
        &self,
        owner: &str,
        bundle: &Path,
        mounts: &mut [Mount],
    ) -> Result<Vec<Mount>> {
        let mut out = Vec::with_capacity(mounts.len());
        for (n, m) in mounts.iter_mut().enumerate() {
            let Some(image_ref) = m.image.clone() else {
                out.push(m.clone());
                continue;
            };
            if !m.readonly {
                return Err(Error::InvalidArgument(format!(
                    "mount {:?}: image volumes are read-only; readonly must be set",
                    m.container_path
                )));
            }
            let sub_path = checked_sub_path(m)?.map(str::to_string);
            // Held by the container's lease, like its rootfs' image.
            let image = self.images.lease_image(owner, &image_ref)?;
            m.image_id = Some(image.id.clone());
            let mut lowers: Vec<String> = self
                .images
                .lower_dirs(&image)?
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let dir = bundle.join("imagevol");
            let target = dir.join(n.to_string());
            // A read-only overlay needs two lower layers: an empty one makes up a
            // single-layer image.
            let empty = dir.join("empty");
            for d in [&target, &empty] {
                std::fs::create_dir_all(d)
                    .map_err(|e| Error::io(format!("mkdir {}", d.display()), e))?;
            }
            lowers.push(empty.display().to_string());
            let data = format!("lowerdir={}", lowers.join(":"));
            mount(
                Some("overlay"),
                &target,
                Some("overlay"),
                MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
                Some(data.as_str()),
            )
            .map_err(|e| {
                Error::Internal(format!("mount image volume {:?}: {e}", m.container_path))
            })?;
            tracing::info!(image = %image.id, path = %m.container_path, "image volume mounted");
            let source = match sub_path {
                None => target,
                Some(sub) => resolve_in(&target, &sub).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "mount {:?}: image_sub_path {sub:?} in image {image_ref}: {e}",
                        m.container_path
                    ))
                })?,
            };
            out.push(Mount {
                container_path: m.container_path.clone(),
                host_path: source.display().to_string(),
                readonly: true,
                propagation: Propagation::Private,
                image: None,
                ..Default::default()
            });
        }
        Ok(out)
    }
}

/// The image volume's sub path, None for the image's root. kubelet sends a clean relative
/// path; anything else (absolute, `..`) is refused rather than normalised.
fn checked_sub_path(m: &Mount) -> Result<Option<&str>> {
    let sub = m.image_sub_path.as_str();
    if sub.is_empty() {
        return Ok(None);
    }
    if sub.starts_with('/') || sub.split('/').any(|c| c == "..") || sub.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "mount {:?}: image_sub_path {sub:?} must be relative, without '..'",
            m.container_path
        )));
    }
    Ok(Some(sub))
}

/// `sub` inside the mounted image `root`, with the image's symlinks resolved as they would
/// be inside the image (`RESOLVE_IN_ROOT`: an absolute or `..` link stays in the image);
/// a path that does not exist is an error. The mount is read-only and private to the
/// bundle, so the resolved path cannot be swapped before the runtime binds it.
fn resolve_in(root: &Path, sub: &str) -> std::result::Result<PathBuf, String> {
    let dir = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {}: {e}", root.display()))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(dir.as_fd(), sub, how).map_err(|e| match e {
        nix::errno::Errno::ENOENT => "no such file or directory in the image".to_string(),
        e => e.to_string(),
    })?;
    let path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .map_err(|e| format!("resolve: {e}"))?;
    if !path.starts_with(root) {
        return Err(format!("resolved outside the image: {}", path.display()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_path_resolves_inside_the_image_even_through_an_outward_symlink() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/ssl")).unwrap();
        std::fs::write(r.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        // Inside the image these point at its own /etc; on the host they would escape.
        std::os::unix::fs::symlink("/etc", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc", r.join("up")).unwrap();
        assert_eq!(resolve_in(r, "etc").unwrap(), r.join("etc"));
        assert_eq!(resolve_in(r, "etc/passwd").unwrap(), r.join("etc/passwd"));
        assert_eq!(resolve_in(r, "abs/ssl").unwrap(), r.join("etc/ssl"));
        assert_eq!(resolve_in(r, "up").unwrap(), r.join("etc"));
        let e = resolve_in(r, "not-existing").unwrap_err();
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn a_sub_path_must_be_relative_without_dotdot() {
        let mut m = Mount {
            container_path: "/v".into(),
            image: Some("img".into()),
            readonly: true,
            ..Default::default()
        };
        for bad in ["/etc", "../etc", "etc/../../x"] {
            m.image_sub_path = bad.into();
            let e = checked_sub_path(&m).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e:?}");
        }
        m.image_sub_path = "etc/ssl".into();
        assert_eq!(checked_sub_path(&m).unwrap(), Some("etc/ssl"));
        m.image_sub_path = String::new();
        assert_eq!(checked_sub_path(&m).unwrap(), None);
    }
}
