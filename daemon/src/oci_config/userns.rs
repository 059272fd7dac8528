//! A user-namespaced pod in the spec: the id mappings, the `user` namespace (made by the
//! infra, joined by path by each container, as containerd does), and the bind options
//! that must change because the pod's root is not the host's root.

use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxIdMapping, LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceType, Mount,
};

use super::{namespace, oci};
use crate::error::Result;
use crate::workload::{IdMapping, UserNamespace};

/// The pod files and /dev/shm: bound from berthd's mounts.
const POD_FILES: &[&str] = &[
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/hostname",
    "/dev/shm",
];

fn mappings(m: &[IdMapping]) -> Result<Vec<LinuxIdMapping>> {
    m.iter()
        .map(|m| {
            oci(LinuxIdMappingBuilder::default()
                .container_id(m.container_id)
                .host_id(m.host_id)
                .size(m.length)
                .build())
        })
        .collect()
}

/// What a user namespace adds to a spec.
pub(crate) struct UsernsSpec {
    pub uid_mappings: Vec<LinuxIdMapping>,
    pub gid_mappings: Vec<LinuxIdMapping>,
    pub namespace: LinuxNamespace,
}

/// The user namespace entry and mappings: `join` None makes a new namespace (the infra),
/// Some joins the infra's (`/proc/<pid>/ns/user`). runc wants the mappings either way.
pub(crate) fn userns_spec(u: &UserNamespace, join: Option<PathBuf>) -> Result<UsernsSpec> {
    Ok(UsernsSpec {
        uid_mappings: mappings(&u.uids)?,
        gid_mappings: mappings(&u.gids)?,
        namespace: namespace(LinuxNamespaceType::User, join)?,
    })
}

/// The pod files (and a bound /dev/shm) of a user-namespaced process get
/// nosuid,nodev,noexec: a bind's read-only remount made from inside a user namespace must
/// keep the flags the source mount locks, or the kernel refuses it (EPERM).
pub(crate) fn adjust_mounts(mounts: &mut [Mount]) -> Result<()> {
    for m in mounts.iter_mut() {
        let dst = m.destination().to_string_lossy().into_owned();
        let bind = m
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o.ends_with("bind")));
        if POD_FILES.contains(&dst.as_str()) && bind {
            let mut opts = m.options().clone().unwrap_or_default();
            for f in ["nosuid", "nodev", "noexec"] {
                if !opts.iter().any(|o| o == f) {
                    opts.push(f.to_string());
                }
            }
            m.set_options(Some(opts));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::NamespaceMode;

    #[test]
    fn pod_files_keep_locked_flags() {
        let mut mounts = super::super::mounts::default_mounts(false).unwrap();
        let hosts = super::super::mounts::Bind::private(
            "/etc/hosts",
            std::path::Path::new("/var/lib/berth/pods/p/hosts"),
            true,
        );
        mounts.push(hosts.to_oci().unwrap());
        adjust_mounts(&mut mounts).unwrap();
        let h = mounts
            .iter()
            .find(|m| m.destination().to_str() == Some("/etc/hosts"))
            .unwrap();
        let o = h.options().clone().unwrap();
        for f in ["nosuid", "nodev", "noexec", "ro"] {
            assert!(o.contains(&f.to_string()), "{o:?}");
        }
        // The private /dev/shm tmpfs is not a bind: left alone.
        let shm = mounts
            .iter()
            .find(|m| m.destination().to_str() == Some("/dev/shm"))
            .unwrap();
        assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
    }

    #[test]
    fn mappings_and_namespace() {
        let u = UserNamespace {
            mode: NamespaceMode::Pod,
            uids: vec![IdMapping {
                host_id: 65536,
                container_id: 0,
                length: 65536,
            }],
            gids: vec![IdMapping {
                host_id: 131072,
                container_id: 0,
                length: 65536,
            }],
        };
        let s = userns_spec(&u, Some("/proc/7/ns/user".into())).unwrap();
        assert_eq!(s.uid_mappings[0].host_id(), 65536);
        assert_eq!(s.gid_mappings[0].host_id(), 131072);
        assert_eq!(s.gid_mappings[0].size(), 65536);
        assert_eq!(s.namespace.typ(), LinuxNamespaceType::User);
        assert_eq!(
            s.namespace.path().as_deref(),
            Some(std::path::Path::new("/proc/7/ns/user"))
        );
    }
}
