//! Mounts: containerd's default set (/proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys,
//! cgroup), CRI bind mounts with their propagation, and the sandbox-provided files
//! (/etc/hosts, /etc/resolv.conf, /etc/hostname, /dev/shm) unless the container mounts
//! over them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::workload::{Mount as AskedMount, Propagation};
use oci_spec::runtime::{Mount, MountBuilder};

use super::{clean_abs_path, invalid, oci};
use crate::error::{Error, Result};

fn mount(dst: &str, typ: &str, src: &str, opts: &[&str]) -> Result<Mount> {
    oci(MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build())
}

/// containerd's default Unix mounts without `/run` (CRI removes it). `/sys` is read-only
/// unless the container is privileged.
pub(crate) fn default_mounts(privileged: bool) -> Result<Vec<Mount>> {
    let sys: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount("/sys", "sysfs", "sysfs", sys)?,
    ])
}

/// The cgroup filesystem CRI adds to app containers (read-only unless privileged).
pub(crate) fn cgroup_mount(privileged: bool) -> Result<Mount> {
    let opts: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev", "relatime"]
    } else {
        &["nosuid", "noexec", "nodev", "relatime", "ro"]
    };
    mount("/sys/fs/cgroup", "cgroup", "cgroup", opts)
}

/// A bind mount after validation: the common form of CRI mounts and sandbox files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bind {
    pub dst: PathBuf,
    pub src: PathBuf,
    pub readonly: bool,
    pub recursive_readonly: bool,
    pub propagation: Propagation,
}

impl Bind {
    /// A private bind of a sandbox-provided file or directory.
    pub fn private(dst: &str, src: &Path, readonly: bool) -> Bind {
        Bind {
            dst: PathBuf::from(dst),
            src: src.to_path_buf(),
            readonly,
            recursive_readonly: false,
            propagation: Propagation::Private,
        }
    }

    pub fn from_mount(m: &AskedMount) -> Result<Bind> {
        let dst = clean_abs_path("mount container_path", &m.container_path)?;
        let src = clean_abs_path("mount host_path", &m.host_path)?;
        let propagation = m.propagation;
        if m.image.is_some() {
            return Err(Error::Internal(format!(
                "mount {:?}: an image volume reached spec generation unmounted",
                m.container_path
            )));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            // `userns::point_idmapped` turns them into binds of the shim's idmapped clones.
            return Err(Error::Internal(format!(
                "mount {:?}: an id-mapped mount reached spec generation unresolved",
                m.container_path
            )));
        }
        if m.recursive_read_only {
            if !m.readonly {
                return Err(invalid(format!(
                    "mount {:?}: recursive_read_only requires readonly",
                    m.container_path
                )));
            }
            if propagation != Propagation::Private {
                return Err(invalid(format!(
                    "mount {:?}: recursive_read_only requires private propagation",
                    m.container_path
                )));
            }
        }
        // selinux_relabel is ignored: Berth does not label.
        Ok(Bind {
            dst,
            src,
            readonly: m.readonly,
            recursive_readonly: m.recursive_read_only,
            propagation,
        })
    }

    pub fn options(&self) -> Vec<String> {
        let prop = match self.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        };
        let ro = match (self.readonly, self.recursive_readonly) {
            (true, true) => "rro",
            (true, false) => "ro",
            (false, _) => "rw",
        };
        vec!["rbind".into(), prop.into(), ro.into()]
    }

    pub fn to_oci(&self) -> Result<Mount> {
        oci(MountBuilder::default()
            .destination(&self.dst)
            .typ("bind")
            .source(&self.src)
            .options(self.options())
            .build())
    }
}

/// The container's full mount list and the rootfs propagation it needs.
///
/// Order as containerd: the defaults (minus any the CRI or sandbox mounts override, and
/// everything under /dev when /dev itself is mounted), then the binds sorted by depth so a
/// parent never shadows a child. CRI mounts win over sandbox files on the same path.
pub(crate) fn container_mounts(
    asked: &[AskedMount],
    sandbox_files: Vec<Bind>,
    privileged: bool,
) -> Result<(Vec<Mount>, Option<String>)> {
    let mut binds = asked
        .iter()
        .map(Bind::from_mount)
        .collect::<Result<Vec<_>>>()?;
    for b in sandbox_files {
        if !binds.iter().any(|c| c.dst == b.dst) {
            binds.push(b);
        }
    }
    binds.sort_by_key(|b| b.dst.components().count());

    let targets: HashSet<&Path> = binds.iter().map(|b| b.dst.as_path()).collect();
    let dev_mounted = targets.contains(Path::new("/dev"));
    let mut defaults = default_mounts(privileged)?;
    defaults.push(cgroup_mount(privileged)?);
    let mut out: Vec<Mount> = defaults
        .into_iter()
        .filter(|m| {
            let d = m.destination().as_path();
            let under_dev = d.starts_with("/dev") && d != Path::new("/dev");
            let shadowed = targets.contains(d) || (dev_mounted && under_dev);
            !shadowed
        })
        .collect();
    for b in &binds {
        out.push(b.to_oci()?);
    }
    let rootfs_propagation = if binds
        .iter()
        .any(|b| b.propagation == Propagation::Bidirectional)
    {
        Some("rshared".to_string())
    } else if binds
        .iter()
        .any(|b| b.propagation == Propagation::HostToContainer)
    {
        Some("rslave".to_string())
    } else {
        None
    };
    Ok((out, rootfs_propagation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri(dst: &str, src: &str, ro: bool, prop: Propagation) -> AskedMount {
        AskedMount {
            container_path: dst.into(),
            host_path: src.into(),
            readonly: ro,
            propagation: prop,
            ..Default::default()
        }
    }

    fn find<'a>(ms: &'a [Mount], dst: &str) -> Option<&'a Mount> {
        ms.iter().find(|m| m.destination() == Path::new(dst))
    }

    #[test]
    fn propagation_options_table() {
        use Propagation::*;
        let cases = [
            (Private, false, false, vec!["rbind", "rprivate", "rw"], None),
            (Private, true, false, vec!["rbind", "rprivate", "ro"], None),
            (Private, true, true, vec!["rbind", "rprivate", "rro"], None),
            (
                HostToContainer,
                false,
                false,
                vec!["rbind", "rslave", "rw"],
                Some("rslave"),
            ),
            (
                Bidirectional,
                true,
                false,
                vec!["rbind", "rshared", "ro"],
                Some("rshared"),
            ),
        ];
        for (prop, ro, rro, want, rootfs) in cases {
            let mut m = cri("/data", "/srv/data", ro, prop);
            m.recursive_read_only = rro;
            m.selinux_relabel = true; // ignored
            let (ms, rp) = container_mounts(&[m], vec![], false).unwrap();
            let got = find(&ms, "/data").unwrap();
            assert_eq!(got.typ().as_deref(), Some("bind"));
            assert_eq!(got.source().as_deref(), Some(Path::new("/srv/data")));
            assert_eq!(
                got.options().clone().unwrap(),
                want,
                "{prop:?} ro={ro} rro={rro}"
            );
            assert_eq!(rp.as_deref(), rootfs, "{prop:?}");
        }
    }

    #[test]
    fn rshared_wins_over_rslave() {
        use Propagation::*;
        let ms = [
            cri("/a", "/a", false, HostToContainer),
            cri("/b", "/b", false, Bidirectional),
        ];
        assert_eq!(
            container_mounts(&ms, vec![], false).unwrap().1.as_deref(),
            Some("rshared")
        );
    }

    #[test]
    fn bad_mounts_are_rejected() {
        use Propagation::*;
        let mut rro_rw = cri("/x", "/x", false, Private);
        rro_rw.recursive_read_only = true;
        let mut rro_slave = cri("/x", "/x", true, HostToContainer);
        rro_slave.recursive_read_only = true;
        let cases = [
            ("relative container path", cri("data", "/x", false, Private)),
            ("relative host path", cri("/data", "x", false, Private)),
            (
                "dotdot container",
                cri("/data/../etc", "/x", false, Private),
            ),
            ("dotdot host", cri("/data", "/srv/../etc", false, Private)),
            ("empty container path", cri("", "/x", false, Private)),
            ("rro without ro", rro_rw),
            ("rro with rslave", rro_slave),
        ];
        for (what, m) in cases {
            match container_mounts(&[m], vec![], false) {
                Err(Error::InvalidArgument(_)) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn defaults_sys_ro_unless_privileged() {
        let (ms, _) = container_mounts(&[], vec![], false).unwrap();
        let dsts: Vec<_> = ms
            .iter()
            .map(|m| m.destination().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            dsts,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert!(find(&ms, "/sys")
            .unwrap()
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".into()));
        assert!(find(&ms, "/sys/fs/cgroup")
            .unwrap()
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".into()));
        let (ms, _) = container_mounts(&[], vec![], true).unwrap();
        assert!(!find(&ms, "/sys")
            .unwrap()
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".into()));
        assert!(!find(&ms, "/sys/fs/cgroup")
            .unwrap()
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".into()));
    }

    #[test]
    fn sandbox_files_not_duplicated_and_defaults_overridden() {
        use Propagation::*;
        let files = vec![
            Bind::private("/etc/hosts", Path::new("/run/berth/p/hosts"), false),
            Bind::private(
                "/etc/resolv.conf",
                Path::new("/run/berth/p/resolv.conf"),
                true,
            ),
            Bind::private("/dev/shm", Path::new("/run/berth/p/shm"), false),
        ];
        let user = [cri("/etc/hosts/", "/my/hosts", true, Private)];
        let (ms, _) = container_mounts(&user, files, false).unwrap();
        let hosts: Vec<_> = ms
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/my/hosts")));
        let shm: Vec<_> = ms
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .collect();
        assert_eq!(
            shm.len(),
            1,
            "default tmpfs /dev/shm replaced by the sandbox's"
        );
        assert_eq!(shm[0].typ().as_deref(), Some("bind"));
        assert_eq!(
            find(&ms, "/etc/resolv.conf")
                .unwrap()
                .options()
                .clone()
                .unwrap(),
            vec!["rbind", "rprivate", "ro"]
        );
    }

    #[test]
    fn dev_mount_drops_everything_under_dev_and_binds_sorted_by_depth() {
        use Propagation::*;
        let user = [
            cri("/a/b/c", "/x", false, Private),
            cri("/dev", "/dev", false, Private),
            cri("/a", "/y", false, Private),
        ];
        let (ms, _) = container_mounts(&user, vec![], true).unwrap();
        let under_dev: Vec<_> = ms
            .iter()
            .filter(|m| m.destination().starts_with("/dev"))
            .collect();
        assert_eq!(under_dev.len(), 1, "only the user's /dev bind");
        assert_eq!(under_dev[0].typ().as_deref(), Some("bind"));
        let binds: Vec<_> = ms
            .iter()
            .filter(|m| m.typ().as_deref() == Some("bind"))
            .map(|m| m.destination().to_str().unwrap().to_string())
            .collect();
        assert_eq!(binds, ["/dev", "/a", "/a/b/c"]);
    }
}
