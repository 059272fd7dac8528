//! Isolation: namespaces, the sandbox files and IPC, privileged against unprivileged.

use super::*;

#[test]
fn namespace_modes_table() {
    let cases = [
        (NamespaceMode::Pod, None, Some("/proc/4242/ns/pid")),
        (NamespaceMode::Container, None, None),
        (NamespaceMode::Target, Some(777), Some("/proc/777/ns/pid")),
        (NamespaceMode::Node, None, Some("/proc/4242/ns/pid")),
    ];
    for (mode, target, want) in cases {
        let c = ctr(ContainerSecurity {
            namespaces: Namespaces {
                pid: mode,
                target_id: "other".into(),
                ..Default::default()
            },
            ..Default::default()
        });
        let mut o = opts();
        o.target_pid = target;
        let s = container_spec(&c, &pod(false), &image(), &o).unwrap();
        let got = ns(&s);
        assert_eq!(
            got[0],
            (LinuxNamespaceType::Pid, want.map(PathBuf::from)),
            "{mode:?}"
        );
        assert!(got.contains(&(
            LinuxNamespaceType::Network,
            Some("/proc/4242/ns/net".into())
        )));
        assert!(got.contains(&(LinuxNamespaceType::Ipc, Some("/proc/4242/ns/ipc".into()))));
        assert!(got.contains(&(LinuxNamespaceType::Uts, Some("/proc/4242/ns/uts".into()))));
        assert!(got.contains(&(LinuxNamespaceType::Mount, None)));
    }
    let c = ctr(ContainerSecurity {
        namespaces: Namespaces {
            pid: NamespaceMode::Target,
            ..Default::default()
        },
        ..Default::default()
    });
    assert!(is_invalid(container_spec(
        &c,
        &pod(false),
        &image(),
        &opts()
    )));
    let mut o = opts();
    o.cgroupns = true;
    let s = container_spec(&ctr(Default::default()), &pod(false), &image(), &o).unwrap();
    assert!(ns(&s).contains(&(LinuxNamespaceType::Cgroup, None)));
    o.sandbox_pid = 0;
    assert!(matches!(
        container_spec(&ctr(Default::default()), &pod(false), &image(), &o),
        Err(Error::FailedPrecondition(_))
    ));
}

#[test]
fn sandbox_files_and_host_ipc_shm() {
    let s = build(&ctr(ContainerSecurity {
        readonly_rootfs: true,
        ..Default::default()
    }));
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    let ms = s.mounts().as_ref().unwrap();
    let get = |d: &str| ms.iter().find(|m| m.destination() == Path::new(d)).unwrap();
    assert_eq!(
        get("/etc/hosts").source().as_deref(),
        Some(Path::new("/var/lib/berth/sb1/hosts"))
    );
    assert!(get("/etc/resolv.conf")
        .options()
        .as_ref()
        .unwrap()
        .contains(&"ro".to_string()));
    assert!(get("/etc/hostname")
        .options()
        .as_ref()
        .unwrap()
        .contains(&"ro".to_string()));
    assert!(get("/dev/shm")
        .options()
        .as_ref()
        .unwrap()
        .contains(&"rw".to_string()));
    assert_eq!(
        get("/dev/shm").source().as_deref(),
        Some(Path::new("/run/berth/sb1/shm"))
    );

    let c = ctr(ContainerSecurity {
        namespaces: Namespaces {
            ipc: NamespaceMode::Node,
            ..Default::default()
        },
        ..Default::default()
    });
    let s = build(&c);
    let shm = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/dev/shm"))
        .unwrap();
    assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));
}

#[test]
fn privileged_vs_unprivileged() {
    let mut c = ctr(ContainerSecurity {
        privileged: true,
        seccomp: Some(crate::workload::Profile::RuntimeDefault),
        capabilities: Some(Capabilities {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    c.devices = vec![Device {
        container_path: "/dev/f".into(),
        host_path: "/dev/fuse".into(),
        permissions: "r".into(),
    }];
    assert!(
        is_invalid(container_spec(&c, &pod(false), &image(), &opts())),
        "privileged container needs a privileged pod"
    );

    let mut o = opts();
    o.host_devices = Some(vec![fake_lookup(Path::new("/dev/sda")).unwrap()]);
    let s = container_spec(&c, &pod(true), &image(), &o).unwrap();
    let linux = s.linux().as_ref().unwrap();
    assert!(linux.masked_paths().as_ref().unwrap().is_empty());
    assert!(linux.readonly_paths().as_ref().unwrap().is_empty());
    assert!(linux.seccomp().is_none());
    let caps = s
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    assert!(caps
        .bounding()
        .as_ref()
        .unwrap()
        .contains(&Capability::SysAdmin));
    let devs: Vec<LinuxDevice> = linux.devices().clone().unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].path(), Path::new("/dev/sda"));
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow() && rules[0].major().is_none());
    let sys = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/sys"))
        .unwrap();
    assert!(!sys.options().as_ref().unwrap().contains(&"ro".to_string()));

    c.security.privileged = false;
    let s = container_spec(&c, &pod(true), &image(), &opts()).unwrap();
    let linux = s.linux().as_ref().unwrap();
    assert!(!linux.masked_paths().as_ref().unwrap().is_empty());
    assert!(linux.seccomp().is_some());
    assert!(s
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .as_ref()
        .unwrap()
        .is_empty());
    assert_eq!(
        linux.devices().as_ref().unwrap()[0].path(),
        Path::new("/dev/f")
    );
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(!rules[0].allow(), "deny-all first");
    assert_eq!(
        (
            rules[1].major(),
            rules[1].minor(),
            rules[1].access().as_deref()
        ),
        (Some(10), Some(229), Some("r"))
    );
}

fn pod_userns() -> crate::workload::UserNamespace {
    let m = vec![crate::workload::IdMapping {
        host_id: 65536,
        container_id: 0,
        length: 65536,
    }];
    crate::workload::UserNamespace {
        mode: NamespaceMode::Pod,
        uids: m.clone(),
        gids: m,
    }
}

#[test]
fn a_user_namespaced_pod_makes_its_namespaces_and_containers_join_them() {
    let mut p = pod(false);
    p.security.namespaces.userns = Some(pod_userns());
    let so = SandboxOpts {
        id: "sb1".into(),
        netns_path: Some("/run/berth/netns/sb1".into()),
        rootfs: "/var/lib/berth/pause/rootfs".into(),
        args: vec!["/pause".into()],
        hosts: Some("/var/lib/berth/pods/sb1/hosts".into()),
        ..Default::default()
    };
    let s = sandbox_spec(&p, &so).unwrap();
    let got = ns(&s);
    // The user namespace first and new; the network namespace new too (owned by it),
    // pinned by berthd afterwards.
    assert_eq!(got[0], (LinuxNamespaceType::User, None));
    assert!(
        got.contains(&(LinuxNamespaceType::Network, None)),
        "{got:?}"
    );
    let linux = s.linux().as_ref().unwrap();
    assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), 65536);
    assert_eq!(linux.gid_mappings().as_ref().unwrap()[0].size(), 65536);
    let hosts = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/etc/hosts"))
        .unwrap();
    assert!(hosts.options().as_ref().unwrap().contains(&"nodev".into()));

    // A container says nothing or repeats the pod's request: it joins by path.
    for asked in [None, Some(pod_userns())] {
        let c = ctr(ContainerSecurity {
            namespaces: Namespaces {
                userns: asked,
                ..Default::default()
            },
            ..Default::default()
        });
        let s = container_spec(&c, &p, &image(), &opts()).unwrap();
        let got = ns(&s);
        assert_eq!(
            got[0],
            (LinuxNamespaceType::User, Some("/proc/4242/ns/user".into()))
        );
        let linux = s.linux().as_ref().unwrap();
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), 65536);
    }
    // Another user namespace than the pod's is refused.
    let mut other = pod_userns();
    other.uids[0].host_id = 131072;
    let c = ctr(ContainerSecurity {
        namespaces: Namespaces {
            userns: Some(other.clone()),
            ..Default::default()
        },
        ..Default::default()
    });
    assert!(is_invalid(container_spec(&c, &p, &image(), &opts())));
    // So is a POD request in a pod without a user namespace; NODE there is fine.
    assert!(is_invalid(container_spec(
        &c,
        &pod(false),
        &image(),
        &opts()
    )));
    other.mode = NamespaceMode::Node;
    other.uids.clear();
    other.gids.clear();
    let c = ctr(ContainerSecurity {
        namespaces: Namespaces {
            userns: Some(other),
            ..Default::default()
        },
        ..Default::default()
    });
    let s = container_spec(&c, &pod(false), &image(), &opts()).unwrap();
    assert!(!ns(&s).iter().any(|(t, _)| *t == LinuxNamespaceType::User));
}
