//! Table tests of the CRI ↔ Berth conversions: a full config goes there and back
//! unchanged, the deprecated string forms fold into one profile, unknown enum numbers
//! are InvalidArgument naming the field.

use berth_cri::v1 as cri;
use berth_cri::v1::security_profile::ProfileType;

use super::container::stop_signal_from_cri;
use super::*;
use crate::error::Error;
use crate::workload::{NamespaceMode, Profile, Propagation, Protocol, SupplementalGroupsPolicy};

pub(crate) fn full_container() -> cri::ContainerConfig {
    let pod = full_pod();
    let pod_linux = pod.linux.unwrap();
    let mut sc_ns = pod_linux
        .security_context
        .clone()
        .unwrap()
        .namespace_options
        .unwrap();
    sc_ns.pid = cri::NamespaceMode::Target as i32;
    sc_ns.target_id = "c0".into();
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 3,
        }),
        image: Some(cri::ImageSpec {
            image: "busybox:1".into(),
            ..Default::default()
        }),
        command: vec!["sh".into()],
        args: vec!["-c".into(), "true".into()],
        working_dir: "/w".into(),
        envs: vec![
            cri::KeyValue {
                key: "A".into(),
                value: "1".into(),
            },
            cri::KeyValue {
                key: "A".into(),
                value: "2".into(),
            },
        ],
        mounts: vec![
            cri::Mount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                selinux_relabel: true,
                propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                uid_mappings: vec![cri::IdMapping {
                    host_id: 1,
                    container_id: 2,
                    length: 3,
                }],
                gid_mappings: vec![],
                recursive_read_only: true,
                image: None,
                image_sub_path: String::new(),
            },
            cri::Mount {
                container_path: "/img".into(),
                readonly: true,
                image: Some(cri::ImageSpec {
                    image: "registry/vol:1".into(),
                    ..Default::default()
                }),
                image_sub_path: "etc/ssl".into(),
                ..Default::default()
            },
        ],
        devices: vec![cri::Device {
            container_path: "/dev/x".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rw".into(),
        }],
        labels: [("l".to_string(), "1".to_string())].into(),
        annotations: [("an".to_string(), "2".to_string())].into(),
        log_path: "app/3.log".into(),
        stop_signal: cri::Signal::Sigrtmaxminus2 as i32,
        stdin: true,
        stdin_once: true,
        tty: true,
        linux: Some(cri::LinuxContainerConfig {
            resources: pod_linux.resources.clone(),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["ALL".into()],
                    add_ambient_capabilities: vec!["CAP_KILL".into()],
                }),
                privileged: true,
                namespace_options: Some(sc_ns),
                run_as_user: Some(cri::Int64Value { value: 7 }),
                run_as_group: Some(cri::Int64Value { value: 8 }),
                run_as_username: "nobody".into(),
                readonly_rootfs: true,
                supplemental_groups: vec![9, 10],
                supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
                no_new_privs: true,
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                seccomp: Some(cri::SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                apparmor: Some(cri::SecurityProfile {
                    profile_type: ProfileType::Localhost as i32,
                    localhost_ref: "my-profile".into(),
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

#[test]
fn a_full_pod_config_goes_there_and_back_unchanged() {
    let c = full_pod();
    let p = pod_from_cri(&c).unwrap();
    assert_eq!(p.name, "web");
    assert!(p.host_network());
    assert_eq!(p.security.namespaces.pid, NamespaceMode::Container);
    assert_eq!(p.port_mappings[0].protocol, Protocol::Udp);
    assert_eq!(
        p.security.seccomp,
        Some(Profile::Localhost("/var/lib/kubelet/seccomp/p.json".into()))
    );
    assert_eq!(
        p.security.supplemental_groups_policy,
        SupplementalGroupsPolicy::Strict
    );
    assert_eq!(
        p.security.namespaces.userns.as_ref().unwrap().uids[0].host_id,
        65536
    );
    assert_eq!(pod_to_cri(&p), c);
}

#[test]
fn a_full_container_config_goes_there_and_back_unchanged() {
    let c = full_container();
    let s = container_from_cri(&c).unwrap();
    assert_eq!((s.name.as_str(), s.attempt), ("app", 3));
    assert_eq!(
        s.envs,
        vec![("A".into(), "1".into()), ("A".into(), "2".into())]
    );
    assert_eq!(s.stop_signal.as_deref(), Some("SIGRTMAX-2"));
    assert_eq!(s.mounts[0].propagation, Propagation::HostToContainer);
    assert_eq!(s.mounts[0].image, None);
    assert_eq!(s.mounts[1].image.as_deref(), Some("registry/vol:1"));
    assert_eq!(s.security.namespaces.pid, NamespaceMode::Target);
    assert_eq!(
        s.security.apparmor,
        Some(Profile::Localhost("my-profile".into()))
    );
    assert_eq!(container_to_cri(&s), c);
}

#[test]
fn empty_configs_are_the_default_specs() {
    assert_eq!(
        pod_from_cri(&cri::PodSandboxConfig::default()).unwrap(),
        Default::default()
    );
    assert_eq!(
        container_from_cri(&cri::ContainerConfig::default()).unwrap(),
        Default::default()
    );
    // An image volume without an image is a plain bind.
    let c = cri::ContainerConfig {
        mounts: vec![cri::Mount {
            image: Some(cri::ImageSpec::default()),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(container_from_cri(&c).unwrap().mounts[0].image, None);
}

#[test]
#[allow(deprecated)]
fn deprecated_profile_strings_fold_into_one_profile() {
    let seccomp = |s: &str| {
        let mut c = full_container();
        let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.seccomp = None;
        sc.seccomp_profile_path = s.into();
        container_from_cri(&c).map(|s| s.security.seccomp)
    };
    let apparmor = |s: &str| {
        let mut c = full_container();
        let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.apparmor = None;
        sc.apparmor_profile = s.into();
        container_from_cri(&c).map(|s| s.security.apparmor)
    };
    let local = |p: &str| Some(Profile::Localhost(p.into()));
    for (s, want) in [
        ("", None),
        ("unconfined", Some(Profile::Unconfined)),
        ("runtime/default", Some(Profile::RuntimeDefault)),
        ("docker/default", Some(Profile::RuntimeDefault)),
        ("localhost//etc/p.json", local("/etc/p.json")),
    ] {
        assert_eq!(seccomp(s).unwrap(), want, "seccomp {s:?}");
    }
    for (s, want) in [
        ("", None),
        ("unconfined", Some(Profile::Unconfined)),
        ("runtime/default", Some(Profile::RuntimeDefault)),
        ("localhost/p", local("p")),
    ] {
        assert_eq!(apparmor(s).unwrap(), want, "apparmor {s:?}");
    }
    for bad in ["docker/default", "bogus"] {
        let e = apparmor(bad).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
    }
    let e = seccomp("bogus").unwrap_err();
    assert!(e.to_string().contains("unsupported seccomp profile"), "{e}");
    // The new field wins over the string.
    let mut c = full_container();
    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .seccomp_profile_path = "unconfined".into();
    assert_eq!(
        container_from_cri(&c).unwrap().security.seccomp,
        Some(Profile::RuntimeDefault)
    );
}

#[test]
fn unknown_enum_numbers_are_invalid_argument_naming_the_field() {
    type Edit = fn(&mut cri::ContainerConfig);
    let cases: Vec<(&str, Edit)> = vec![
        ("propagation", |c| c.mounts[0].propagation = 9),
        ("pid namespace mode", |c| {
            let s = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
            s.namespace_options.as_mut().unwrap().pid = 9;
        }),
        ("user namespace mode", |c| {
            let s = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
            let n = s.namespace_options.as_mut().unwrap();
            n.userns_options.as_mut().unwrap().mode = 9;
        }),
        ("seccomp profile type", |c| {
            let s = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
            s.seccomp.as_mut().unwrap().profile_type = 9;
        }),
        ("supplemental_groups_policy", |c| {
            let s = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
            s.supplemental_groups_policy = 9;
        }),
        ("localhost_ref is only valid", |c| {
            let s = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
            s.seccomp.as_mut().unwrap().localhost_ref = "x".into();
        }),
    ];
    for (what, edit) in cases {
        let mut c = full_container();
        edit(&mut c);
        let e = container_from_cri(&c).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains(what)),
            "{what}: {e}"
        );
    }
    let mut p = full_pod();
    p.port_mappings[0].protocol = 7;
    let e = pod_from_cri(&p).unwrap_err();
    assert!(e.to_string().contains("port protocol 7"), "{e}");
}

#[test]
fn an_env_value_that_is_not_utf8_is_invalid_argument_naming_the_variable() {
    let mut c = full_container();
    c.envs.push(cri::KeyValue {
        key: "BIN".into(),
        value: vec![0xff, 0xfe],
    });
    let e = container_from_cri(&c).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("\"BIN\"")),
        "{e:?}"
    );
}

#[test]
fn stop_signals_map_to_names_and_back() {
    assert_eq!(stop_signal_from_cri(0).unwrap(), None);
    assert_eq!(
        stop_signal_from_cri(cri::Signal::Sigrtminplus3 as i32)
            .unwrap()
            .as_deref(),
        Some("SIGRTMIN+3")
    );
    assert!(matches!(
        stop_signal_from_cri(999),
        Err(Error::InvalidArgument(_))
    ));
    // An image's forms of a name come back as kubelet's enum.
    for (name, sig) in [
        ("SIGUSR1", cri::Signal::Sigusr1),
        ("TERM", cri::Signal::Sigterm),
        ("9", cri::Signal::Sigkill),
        ("SIGRTMIN+3", cri::Signal::Sigrtminplus3),
        ("SIGRTMAX", cri::Signal::Sigrtmax),
        ("SIGBOGUS", cri::Signal::RuntimeDefault),
    ] {
        assert_eq!(stop_signal_to_cri(name), sig, "{name}");
    }
}
