//! Image volumes: a CRI mount that names an image (kubelet's `image` volume source). The
//! image's layers are mounted read-only (overlay) under the container's bundle, where
//! removal and startup cleanup unmount everything, and bind-mounted read-only into the
//! container. The container's lease holds the image's snapshots while it exists.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::Containers;
use crate::error::{Error, Result};
use crate::workload::{Mount, Propagation};

impl Containers {
    /// Mounts the image volumes among `mounts` and returns the mounts the spec is built
    /// from: each image volume replaced by a read-only bind of its mounted image.
    pub(super) fn mount_image_volumes(
        &self,
        owner: &str,
        bundle: &Path,
        mounts: &[Mount],
    ) -> Result<Vec<Mount>> {
        let mut out = Vec::with_capacity(mounts.len());
        for (n, m) in mounts.iter().enumerate() {
            let Some(image_ref) = m.image.as_ref() else {
                out.push(m.clone());
                continue;
            };
            if !m.readonly {
                return Err(Error::InvalidArgument(format!(
                    "mount {:?}: image volumes are read-only; readonly must be set",
                    m.container_path
                )));
            }
            // Held by the container's lease, like its rootfs' image.
            let image = self.images.lease_image(owner, image_ref)?;
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
            out.push(Mount {
                container_path: m.container_path.clone(),
                host_path: target.display().to_string(),
                readonly: true,
                propagation: Propagation::Private,
                image: None,
                ..Default::default()
            });
        }
        Ok(out)
    }
}
