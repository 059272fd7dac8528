//! The spec's shape: annotations and cgroup paths, bad input, the JSON round trip.

use super::*;

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
fn bad_input_is_invalid_argument() {
    let ok = ctr(Default::default());
    let mut no_name = ok.clone();
    no_name.name.clear();
    let mut bad_mount = ok.clone();
    bad_mount.mounts = vec![Mount {
        container_path: "/data/../../etc".into(),
        host_path: "/srv".into(),
        propagation: Propagation::Private,
        ..Default::default()
    }];
    let mut bad_cap = ok.clone();
    bad_cap.security = ContainerSecurity {
        capabilities: Some(Capabilities {
            add_capabilities: vec!["FLY".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut bad_seccomp = ok.clone();
    bad_seccomp.security = ContainerSecurity {
        seccomp: Some(crate::workload::Profile::Localhost("my-profile".into())),
        ..Default::default()
    };
    let mut bad_user = ok.clone();
    bad_user.security = ContainerSecurity {
        run_as_username: "nobody-here".into(),
        ..Default::default()
    };
    let mut bad_env = ok.clone();
    bad_env.envs.push((String::new(), "x".into()));
    let mut bad_oom = ok.clone();
    bad_oom.resources.as_mut().unwrap().oom_score_adj = -1001;
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
    let mut c = ctr(ContainerSecurity {
        seccomp: Some(crate::workload::Profile::RuntimeDefault),
        capabilities: Some(Capabilities {
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
        propagation: Propagation::HostToContainer,
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
