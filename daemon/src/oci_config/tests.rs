//! Whole-spec tests for `container_spec` and the shared helpers; the per-rule tables live
//! next to each rule (user.rs, mounts.rs, security.rs, ...).

use std::path::{Path, PathBuf};

use k8s_cri::v1::{
    Capability as CriCapability, ContainerConfig, ContainerMetadata, Device, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, Mount,
    MountPropagation, NamespaceMode, NamespaceOption, PodSandboxConfig,
};
use oci_spec::runtime::{Capability, LinuxDevice, LinuxNamespaceType, Spec};

use super::devices::tests::fake_lookup;
use super::*;

fn pod(privileged: bool) -> PodSandboxConfig {
    use k8s_cri::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext, PodSandboxMetadata};
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "team".into(),
            attempt: 1,
        }),
        hostname: "web-0".into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                privileged,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/bin/entry".into()],
        cmd: vec!["serve".into(), "--port=80".into()],
        env: vec!["PATH=/opt/bin:/bin".into(), "LANG=C".into()],
        working_dir: "/srv".into(),
        user: "app".into(),
        stop_signal: "SIGTERM".into(),
    }
}

fn ctr(sc: LinuxContainerSecurityContext) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        envs: vec![
            KeyValue {
                key: "LANG".into(),
                value: "C.UTF-8".into(),
            },
            KeyValue {
                key: "MODE".into(),
                value: "prod".into(),
            },
        ],
        linux: Some(LinuxContainerConfig {
            security_context: Some(sc),
            resources: Some(LinuxContainerResources {
                cpu_shares: 256,
                memory_limit_in_bytes: 32 << 20,
                oom_score_adj: 999,
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn opts() -> ContainerOpts {
    ContainerOpts {
        id: "c1".into(),
        sandbox_id: "sb1".into(),
        sandbox_pid: 4242,
        rootfs: "/run/berth/c1/rootfs".into(),
        cgroup_parent: "/kubepods/pod-uid-1".into(),
        passwd: Some("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".into()),
        group: Some("root:x:0:\nwheel:x:10:app\napp:x:1000:\n".into()),
        node_hostname: "node-a".into(),
        sandbox_hostname: Some("/var/lib/berth/sb1/hostname".into()),
        sandbox_resolv: Some("/var/lib/berth/sb1/resolv.conf".into()),
        sandbox_hosts: Some("/var/lib/berth/sb1/hosts".into()),
        sandbox_shm: Some("/run/berth/sb1/shm".into()),
        image_name: "docker.io/library/busybox:1.36".into(),
        device_lookup: fake_lookup,
        ..Default::default()
    }
}

fn build(c: &ContainerConfig) -> Spec {
    container_spec(c, &pod(false), &image(), &opts()).unwrap()
}

fn ns(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    s.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .clone()
        .unwrap()
        .iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}

fn is_invalid(r: Result<Spec>) -> bool {
    matches!(r, Err(Error::InvalidArgument(_)))
}

#[test]
fn entrypoint_cmd_table() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let img = |ep: &[&str], cmd: &[&str]| ImageConfig {
        entrypoint: s(ep),
        cmd: s(cmd),
        ..Default::default()
    };
    let cases = [
        (
            "image only",
            s(&[]),
            s(&[]),
            img(&["/e"], &["c1", "c2"]),
            s(&["/e", "c1", "c2"]),
        ),
        (
            "args replace cmd",
            s(&[]),
            s(&["a"]),
            img(&["/e"], &["c1"]),
            s(&["/e", "a"]),
        ),
        (
            "command drops cmd",
            s(&["/x"]),
            s(&[]),
            img(&["/e"], &["c1"]),
            s(&["/x"]),
        ),
        (
            "command and args",
            s(&["/x"]),
            s(&["a", "b"]),
            img(&["/e"], &["c1"]),
            s(&["/x", "a", "b"]),
        ),
        (
            "cmd only image",
            s(&[]),
            s(&[]),
            img(&[], &["/bin/sh", "-c", "x"]),
            s(&["/bin/sh", "-c", "x"]),
        ),
        (
            "empty-string entrypoint",
            s(&[]),
            s(&[]),
            img(&[""], &["/c"]),
            s(&["/c"]),
        ),
        (
            "args only",
            s(&[]),
            s(&["/bin/true"]),
            img(&[], &[]),
            s(&["/bin/true"]),
        ),
    ];
    for (what, command, args, image, want) in cases {
        let c = ContainerConfig {
            command,
            args,
            ..Default::default()
        };
        assert_eq!(container::process_args(&c, &image).unwrap(), want, "{what}");
    }
    let c = ContainerConfig::default();
    assert!(matches!(
        container::process_args(&c, &img(&[], &[])),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn process_env_cwd_user_terminal() {
    let mut c = ctr(Default::default());
    c.tty = true;
    c.stdin = true;
    let s = build(&c);
    let p = s.process().as_ref().unwrap();
    assert_eq!(
        p.args().clone().unwrap(),
        vec!["/bin/entry", "serve", "--port=80"]
    );
    assert_eq!(
        p.env().clone().unwrap(),
        vec![
            "PATH=/opt/bin:/bin",
            "HOSTNAME=web-0",
            "LANG=C.UTF-8",
            "MODE=prod"
        ]
    );
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!(p.terminal(), Some(true));
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    assert_eq!(p.user().additional_gids().clone().unwrap(), vec![10, 1000]);
    assert_eq!(p.no_new_privileges(), Some(false));
    assert_eq!(p.oom_score_adj(), Some(999));
    let rl = p.rlimits().clone().unwrap();
    assert_eq!(
        (rl[0].soft(), rl[0].hard()),
        (DEFAULT_NOFILE, DEFAULT_NOFILE)
    );
    assert!(s.hostname().is_none(), "the UTS namespace is the pod's");

    c.working_dir = "/work".into();
    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .no_new_privs = true;
    let s = build(&c);
    assert_eq!(s.process().as_ref().unwrap().cwd(), Path::new("/work"));
    assert_eq!(
        s.process().as_ref().unwrap().no_new_privileges(),
        Some(true)
    );
    c.working_dir = "work".into();
    assert!(is_invalid(container_spec(
        &c,
        &pod(false),
        &image(),
        &opts()
    )));

    // Host-network pods have no hostname in their config: HOSTNAME is the node's.
    let mut p = pod(false);
    p.hostname.clear();
    let s = container_spec(&ctr(Default::default()), &p, &image(), &opts()).unwrap();
    assert!(s
        .process()
        .as_ref()
        .unwrap()
        .env()
        .as_ref()
        .unwrap()
        .contains(&"HOSTNAME=node-a".to_string()));
}

#[test]
fn namespace_modes_table() {
    let cases = [
        (NamespaceMode::Pod, None, Some("/proc/4242/ns/pid")),
        (NamespaceMode::Container, None, None),
        (NamespaceMode::Target, Some(777), Some("/proc/777/ns/pid")),
        (NamespaceMode::Node, None, Some("/proc/4242/ns/pid")),
    ];
    for (mode, target, want) in cases {
        let c = ctr(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: mode as i32,
                target_id: "other".into(),
                ..Default::default()
            }),
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
    let c = ctr(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Target as i32,
            ..Default::default()
        }),
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
    let s = build(&ctr(LinuxContainerSecurityContext {
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

    let c = ctr(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            ipc: NamespaceMode::Node as i32,
            ..Default::default()
        }),
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
#[allow(deprecated)]
fn privileged_vs_unprivileged() {
    let mut c = ctr(LinuxContainerSecurityContext {
        privileged: true,
        seccomp_profile_path: "runtime/default".into(),
        capabilities: Some(CriCapability {
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

    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = false;
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

#[test]
fn annotations_and_cgroups_paths() {
    let s = build(&ctr(Default::default()));
    let ann = s.annotations().as_ref().unwrap();
    for (k, v) in [
        (annotations::CONTAINER_TYPE, "container"),
        (annotations::SANDBOX_ID, "sb1"),
        (annotations::SANDBOX_NAME, "web"),
        (annotations::SANDBOX_NAMESPACE, "team"),
        (annotations::SANDBOX_UID, "uid-1"),
        (annotations::CONTAINER_NAME, "app"),
        (annotations::IMAGE_NAME, "docker.io/library/busybox:1.36"),
    ] {
        assert_eq!(ann.get(k).map(String::as_str), Some(v), "{k}");
    }
    let cases = [
        ("/kubepods/pod1", false, Ok(Some("/kubepods/pod1/c1"))),
        ("kubepods", false, Ok(Some("kubepods/c1"))),
        ("", false, Ok(None)),
        ("", true, Ok(None)),
        (
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice",
            true,
            Ok(Some("kubepods-besteffort-pod1.slice:berth:c1")),
        ),
        ("system.slice", true, Ok(Some("system.slice:berth:c1"))),
        ("/kubepods/pod1", true, Err(())),
        ("/kubepods/../etc", false, Err(())),
    ];
    for (parent, systemd, want) in cases {
        let got = cgroups_path(parent, "c1", systemd).map_err(|_| ());
        assert_eq!(
            got,
            want.map(|o| o.map(PathBuf::from)),
            "{parent:?} systemd={systemd}"
        );
    }
}

#[test]
fn env_merge_rules() {
    let mut env = vec![
        "PATH=/bin".to_string(),
        "A=1".to_string(),
        "B=2".to_string(),
    ];
    merge_env(
        &mut env,
        [
            "A=3".to_string(),
            "C=4".to_string(),
            "B".to_string(),
            "D".to_string(),
        ],
    );
    assert_eq!(env, vec!["PATH=/bin", "A=3", "C=4"]);
}

#[test]
#[allow(deprecated)]
fn bad_input_is_invalid_argument() {
    let ok = ctr(Default::default());
    let mut no_name = ok.clone();
    no_name.metadata = None;
    let mut bad_mount = ok.clone();
    bad_mount.mounts = vec![Mount {
        container_path: "/data/../../etc".into(),
        host_path: "/srv".into(),
        propagation: MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    }];
    let mut bad_cap = ok.clone();
    bad_cap.linux.as_mut().unwrap().security_context = Some(LinuxContainerSecurityContext {
        capabilities: Some(CriCapability {
            add_capabilities: vec!["FLY".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut bad_seccomp = ok.clone();
    bad_seccomp.linux.as_mut().unwrap().security_context = Some(LinuxContainerSecurityContext {
        seccomp_profile_path: "my-profile".into(),
        ..Default::default()
    });
    let mut bad_user = ok.clone();
    bad_user.linux.as_mut().unwrap().security_context = Some(LinuxContainerSecurityContext {
        run_as_username: "nobody-here".into(),
        ..Default::default()
    });
    let mut bad_env = ok.clone();
    bad_env.envs.push(KeyValue {
        key: String::new(),
        value: "x".into(),
    });
    let mut bad_oom = ok.clone();
    bad_oom
        .linux
        .as_mut()
        .unwrap()
        .resources
        .as_mut()
        .unwrap()
        .oom_score_adj = -1001;
    let mut bad_device = ok.clone();
    bad_device.devices = vec![Device {
        container_path: "dev/x".into(),
        host_path: "/dev/fuse".into(),
        permissions: "rw".into(),
    }];
    for (what, c) in [
        ("no name", no_name),
        ("mount escapes", bad_mount),
        ("unknown cap", bad_cap),
        ("seccomp form", bad_seccomp),
        ("unknown user", bad_user),
        ("empty env key", bad_env),
        ("oom out of range", bad_oom),
        ("relative device", bad_device),
    ] {
        assert!(
            is_invalid(container_spec(&c, &pod(false), &image(), &opts())),
            "{what}"
        );
    }
}

/// The spec as runc will read it: JSON that parses back, with the fields runc requires.
#[test]
fn full_container_spec_round_trips_as_json() {
    let mut c = ctr(LinuxContainerSecurityContext {
        seccomp: Some(k8s_cri::v1::SecurityProfile {
            profile_type: 0,
            localhost_ref: String::new(),
        }),
        capabilities: Some(CriCapability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["MKNOD".into()],
            ..Default::default()
        }),
        masked_paths: vec!["/proc/kcore".into()],
        ..Default::default()
    });
    c.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: "/srv/data".into(),
        propagation: MountPropagation::PropagationHostToContainer as i32,
        readonly: true,
        ..Default::default()
    }];
    c.devices = vec![Device {
        container_path: "/dev/fuse".into(),
        host_path: "/dev/fuse".into(),
        permissions: "rwm".into(),
    }];
    let spec = build(&c);
    let json = serde_json::to_string_pretty(&spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);

    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ociVersion"], OCI_VERSION);
    assert_eq!(v["root"]["path"], "/run/berth/c1/rootfs");
    assert!(!v["process"]["args"].as_array().unwrap().is_empty());
    assert!(v["process"]["cwd"].as_str().unwrap().starts_with('/'));
    assert_eq!(v["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
    assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(v["linux"]["rootfsPropagation"], "rslave");
    assert_eq!(v["linux"]["cgroupsPath"], "/kubepods/pod-uid-1/c1");
    assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 256);
    assert_eq!(v["linux"]["resources"]["memory"]["limit"], 32 << 20);
    assert_eq!(
        v["linux"]["maskedPaths"],
        serde_json::json!(["/proc/kcore"])
    );
    let bounding: Vec<&str> = v["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(bounding.contains(&"CAP_NET_ADMIN") && !bounding.contains(&"CAP_MKNOD"));
    for m in v["mounts"].as_array().unwrap() {
        assert!(m["destination"].as_str().unwrap().starts_with('/'));
        assert!(m["type"].is_string());
    }
    for n in v["linux"]["namespaces"].as_array().unwrap() {
        assert!(["pid", "network", "ipc", "uts", "mount", "cgroup"]
            .contains(&n["type"].as_str().unwrap()));
    }
}
