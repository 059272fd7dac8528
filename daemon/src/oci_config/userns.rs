//! A user-namespaced pod in the spec: the id mappings, the `user` namespace (made by the
//! infra, joined by path by each container, as containerd does), idmapped volumes (CRI
//! `Mount.uid_mappings`), and the bind options that must change because the pod's root
//! is not the host's root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxIdMapping, LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceType, Mount,
};

use super::{invalid, namespace, oci};
use crate::error::Result;
use crate::workload::{IdMapping, Mount as AskedMount, Propagation, UserNamespace};

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

/// True if the CRI mount asks for an idmapped mount.
pub(crate) fn idmapped(m: &AskedMount) -> bool {
    !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty()
}

/// Checks the idmapped mounts a container asks for, before anything is made: Berth makes
/// them through the pod's user namespace, so the mappings must be the pod's (uid and gid
/// both) and the pod must have one; the clone is private, so is its propagation.
pub(crate) fn check_mount_mappings(
    mounts: &[AskedMount],
    pod: Option<&UserNamespace>,
) -> Result<()> {
    for m in mounts.iter().filter(|m| idmapped(m)) {
        let path = &m.container_path;
        let Some(u) = pod else {
            return Err(invalid(format!(
                "mount {path:?}: id-mapped mounts need a pod with a user namespace (mode POD)"
            )));
        };
        if m.uid_mappings != u.uids || m.gid_mappings != u.gids {
            return Err(invalid(format!(
                "mount {path:?}: id mappings must equal the pod's user namespace mappings \
                 (uids {:?}, gids {:?}); other mappings are not supported",
                u.uids, u.gids
            )));
        }
        if m.image.is_some() {
            return Err(invalid(format!(
                "mount {path:?}: an image volume cannot be id-mapped"
            )));
        }
        if m.propagation != Propagation::Private {
            return Err(invalid(format!(
                "mount {path:?}: an id-mapped mount needs private propagation"
            )));
        }
    }
    Ok(())
}

/// The container's mounts with each idmapped one's host path replaced by the point where
/// the shim attaches its idmapped clone ([`berth_proto::idmap::volume_point`], under the
/// bundle, numbered by the mount's place in the list), and its mappings consumed.
pub(crate) fn point_idmapped(mounts: &[AskedMount], bundle: &Path) -> Vec<AskedMount> {
    mounts
        .iter()
        .enumerate()
        .map(|(n, m)| {
            let mut m = m.clone();
            if idmapped(&m) {
                m.host_path = berth_proto::idmap::volume_point(bundle, n)
                    .display()
                    .to_string();
                m.uid_mappings.clear();
                m.gid_mappings.clear();
            }
            m
        })
        .collect()
}

/// The options a bind must repeat because its source mount locks them, from the source's
/// `statvfs` flags: a remount from inside a user namespace must keep the source's
/// read-only, nosuid, nodev, noexec and atime flags, or the kernel refuses it (EPERM).
pub(crate) fn locked_options(flags: nix::sys::statvfs::FsFlags) -> Vec<String> {
    use nix::sys::statvfs::FsFlags as F;
    let mut out = Vec::new();
    for (f, word) in [
        (F::ST_RDONLY, "ro"),
        (F::ST_NOSUID, "nosuid"),
        (F::ST_NODEV, "nodev"),
        (F::ST_NOEXEC, "noexec"),
        (F::ST_NOATIME, "noatime"),
        (F::ST_NODIRATIME, "nodiratime"),
    ] {
        if flags.contains(f) {
            out.push(word.to_string());
        }
    }
    // A remount without an atime word is relatime: a strictatime source must say so.
    if !flags.intersects(F::ST_NOATIME | F::ST_RELATIME) {
        out.push("strictatime".into());
    }
    out
}

/// The pod files (and a bound /dev/shm) of a user-namespaced process get
/// nosuid,nodev,noexec, and the binds named in `locked` (by container path) the options
/// their source mount locks ([`locked_options`]): a bind's read-only remount made from
/// inside a user namespace must keep the flags the source mount locks, or the kernel
/// refuses it (EPERM).
pub(crate) fn adjust_mounts(
    mounts: &mut [Mount],
    locked: &HashMap<PathBuf, Vec<String>>,
) -> Result<()> {
    for m in mounts.iter_mut() {
        let dst = m.destination().to_string_lossy().into_owned();
        let bind = m
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o.ends_with("bind")));
        if !bind {
            continue;
        }
        let add: Vec<String> = if POD_FILES.contains(&dst.as_str()) {
            ["nosuid", "nodev", "noexec"].map(String::from).to_vec()
        } else {
            match locked.get(m.destination()) {
                Some(words) => words.clone(),
                None => continue,
            }
        };
        let mut opts = m.options().clone().unwrap_or_default();
        for f in add {
            if f == "ro" {
                // The source is read-only: so is the bind, whatever was asked.
                opts.retain(|o| o != "rw");
            }
            if !opts.contains(&f) {
                opts.push(f);
            }
        }
        m.set_options(Some(opts));
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
        adjust_mounts(&mut mounts, &HashMap::new()).unwrap();
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

    fn pod_ns() -> UserNamespace {
        UserNamespace {
            mode: NamespaceMode::Pod,
            uids: vec![IdMapping {
                host_id: 196608,
                container_id: 0,
                length: 65536,
            }],
            gids: vec![IdMapping {
                host_id: 262144,
                container_id: 0,
                length: 65536,
            }],
        }
    }

    fn vol(path: &str, u: &UserNamespace) -> AskedMount {
        AskedMount {
            container_path: path.into(),
            host_path: format!("/srv{path}"),
            uid_mappings: u.uids.clone(),
            gid_mappings: u.gids.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn idmapped_mounts_need_the_pods_mappings() {
        let u = pod_ns();
        let plain = AskedMount {
            container_path: "/plain".into(),
            host_path: "/srv/plain".into(),
            ..Default::default()
        };
        let good = vol("/v", &u);
        check_mount_mappings(&[plain.clone(), good.clone()], Some(&u)).unwrap();
        check_mount_mappings(std::slice::from_ref(&plain), None).unwrap();
        let mut other = good.clone();
        other.uid_mappings[0].host_id = 65536;
        let mut only_uids = good.clone();
        only_uids.gid_mappings.clear();
        let mut slave = good.clone();
        slave.propagation = Propagation::HostToContainer;
        let mut image = good.clone();
        image.image = Some("busybox".into());
        for (what, m, pod) in [
            ("no pod userns", good.clone(), None),
            ("other mappings", other, Some(&u)),
            ("uids only", only_uids, Some(&u)),
            ("rslave", slave, Some(&u)),
            ("image volume", image, Some(&u)),
        ] {
            match check_mount_mappings(&[m], pod) {
                Err(crate::error::Error::InvalidArgument(msg)) => {
                    assert!(msg.contains("\"/v\""), "{what}: {msg}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn idmapped_mounts_are_bound_from_their_points_under_the_bundle() {
        let u = pod_ns();
        let plain = AskedMount {
            container_path: "/plain".into(),
            host_path: "/srv/plain".into(),
            ..Default::default()
        };
        let bundle = Path::new("/run/berth/containers/c1");
        let out = point_idmapped(&[plain.clone(), vol("/v", &u)], bundle);
        assert_eq!(out[0], plain);
        assert_eq!(
            out[1].host_path,
            "/run/berth/containers/c1/idmapped-volumes/1"
        );
        assert!(!idmapped(&out[1]));
    }

    #[test]
    fn locked_source_flags_become_bind_options() {
        use nix::sys::statvfs::FsFlags as F;
        assert!(locked_options(F::ST_RELATIME).is_empty());
        assert_eq!(
            locked_options(
                F::ST_RDONLY | F::ST_NOSUID | F::ST_NODEV | F::ST_NOEXEC | F::ST_RELATIME
            ),
            ["ro", "nosuid", "nodev", "noexec"]
        );
        assert_eq!(
            locked_options(F::ST_NOATIME | F::ST_NODIRATIME),
            ["noatime", "nodiratime"]
        );
        assert_eq!(locked_options(F::empty()), ["strictatime"]);

        let rw = super::super::mounts::Bind {
            dst: "/data".into(),
            src: "/srv/data".into(),
            readonly: false,
            recursive_readonly: false,
            propagation: Propagation::Private,
        };
        let mut other = rw.clone();
        other.dst = "/other".into();
        let mut mounts = vec![rw.to_oci().unwrap(), other.to_oci().unwrap()];
        let locked = HashMap::from([(
            PathBuf::from("/data"),
            locked_options(F::ST_RDONLY | F::ST_NODEV | F::ST_RELATIME),
        )]);
        adjust_mounts(&mut mounts, &locked).unwrap();
        assert_eq!(
            mounts[0].options().clone().unwrap(),
            ["rbind", "rprivate", "ro", "nodev"]
        );
        assert_eq!(
            mounts[1].options().clone().unwrap(),
            ["rbind", "rprivate", "rw"]
        );
    }
}
