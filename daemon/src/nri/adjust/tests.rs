//! Unit tests of the adjustments: what plugins ask applied to a spec, and conflicts.

use super::*;

fn spec() -> Value {
    json!({
        "process": { "args": ["sh"], "env": ["PATH=/bin", "A=1"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
        "mounts": [{ "destination": "/proc", "type": "proc", "source": "proc" }],
        "linux": { "resources": {} },
    })
}

#[test]
fn env_annotations_mounts_rlimits_resources() {
    let mut s = spec();
    let mut o = Owners::default();
    let mut a = api::ContainerAdjustment::new();
    a.env.push(api::KeyValue {
        key: "A".into(),
        value: "2".into(),
        ..Default::default()
    });
    a.env.push(api::KeyValue {
        key: "B".into(),
        value: "x".into(),
        ..Default::default()
    });
    a.annotations.insert("k".into(), "v".into());
    a.mounts.push(api::Mount {
        destination: "/data".into(),
        type_: "bind".into(),
        source: "/tmp".into(),
        options: vec!["rbind".into(), "ro".into()],
        ..Default::default()
    });
    a.rlimits.push(api::POSIXRlimit {
        type_: "RLIMIT_NOFILE".into(),
        hard: 512,
        soft: 256,
        ..Default::default()
    });
    let mut l = api::LinuxContainerAdjustment::new();
    let mut r = api::LinuxResources::new();
    let mut m = api::LinuxMemory::new();
    m.limit = protobuf::MessageField::some(api::OptionalInt64 {
        value: 64 << 20,
        ..Default::default()
    });
    r.memory = protobuf::MessageField::some(m);
    r.pids = protobuf::MessageField::some(api::LinuxPids {
        limit: 42,
        ..Default::default()
    });
    l.resources = protobuf::MessageField::some(r);
    l.oom_score_adj = protobuf::MessageField::some(api::OptionalInt {
        value: 500,
        ..Default::default()
    });
    a.linux = protobuf::MessageField::some(l);
    apply(&mut s, &a, "00-a", &mut o, Caps::default()).unwrap();
    assert_eq!(s["process"]["env"], json!(["PATH=/bin", "A=2", "B=x"]));
    assert_eq!(s["annotations"]["k"], "v");
    assert_eq!(s["mounts"][1]["destination"], "/data");
    assert_eq!(s["process"]["rlimits"][0]["soft"], 256);
    assert_eq!(s["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(s["linux"]["resources"]["pids"]["limit"], 42);
    assert_eq!(s["process"]["oomScoreAdj"], 500);
    // The spec stays a valid OCI spec.
    let _: oci_spec::runtime::Spec = serde_json::from_value(json!({
        "ociVersion": "1.0.2",
        "process": s["process"],
        "mounts": s["mounts"],
        "linux": s["linux"],
        "annotations": s["annotations"],
    }))
    .unwrap();

    // A second plugin setting the same env name conflicts, naming both.
    let mut b = api::ContainerAdjustment::new();
    b.env.push(api::KeyValue {
        key: "B".into(),
        value: "y".into(),
        ..Default::default()
    });
    let e = apply(&mut s, &b, "10-b", &mut o, Caps::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("00-a") && e.contains("10-b") && e.contains("env"),
        "{e}"
    );
    // ...unless it removes it first.
    let mut c = api::ContainerAdjustment::new();
    c.env.push(api::KeyValue {
        key: "-B".into(),
        ..Default::default()
    });
    apply(&mut s, &c, "10-b", &mut o, Caps::default()).unwrap();
    assert_eq!(s["process"]["env"], json!(["PATH=/bin", "A=2"]));
    apply(&mut s, &b, "10-b", &mut o, Caps::default()).unwrap();
    assert_eq!(s["process"]["env"], json!(["PATH=/bin", "A=2", "B=y"]));
}

#[test]
fn unsupported_adjustments_fail() {
    let mut s = spec();
    let mut a = api::ContainerAdjustment::new();
    a.linux = protobuf::MessageField::some(api::LinuxContainerAdjustment {
        scheduler: protobuf::MessageField::some(api::LinuxScheduler::new()),
        ..Default::default()
    });
    let e = apply(&mut s, &a, "00-a", &mut Owners::default(), Caps::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("00-a") && e.contains("scheduling policy"), "{e}");
    // Two plugins asking for one CDI device conflict (it is resolved later).
    let mut o = Owners::default();
    let mut c = api::ContainerAdjustment::new();
    c.CDI_devices.push(api::CDIDevice {
        name: "vendor.com/gpu=0".into(),
        ..Default::default()
    });
    apply(&mut s, &c, "00-a", &mut o, Caps::default()).unwrap();
    let e = apply(&mut s, &c, "10-b", &mut o, Caps::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("CDI device"), "{e}");
}

#[test]
fn seccomp_hooks_and_resource_conflicts() {
    let mut s = spec();
    let mut o = Owners::default();
    let mut a = api::ContainerAdjustment::new();
    a.hooks = protobuf::MessageField::some(api::Hooks {
        prestart: vec![api::Hook {
            path: "/bin/true".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut l = api::LinuxContainerAdjustment::new();
    l.seccomp_policy = protobuf::MessageField::some(api::LinuxSeccomp {
        default_action: "SCMP_ACT_ALLOW".into(),
        syscalls: vec![api::LinuxSyscall {
            names: vec!["mkdir".into()],
            action: "SCMP_ACT_ERRNO".into(),
            errno_ret: protobuf::MessageField::some(api::OptionalUInt32 {
                value: 1,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut r = api::LinuxResources::new();
    r.cpu = protobuf::MessageField::some(api::LinuxCPU {
        shares: protobuf::MessageField::some(api::OptionalUInt64 {
            value: 512,
            ..Default::default()
        }),
        ..Default::default()
    });
    l.resources = protobuf::MessageField::some(r.clone());
    a.linux = protobuf::MessageField::some(l);
    apply(&mut s, &a, "00-a", &mut o, Caps::default()).unwrap();
    assert_eq!(s["hooks"]["prestart"][0]["path"], "/bin/true");
    assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    assert_eq!(s["linux"]["seccomp"]["syscalls"][0]["errnoRet"], 1);
    assert_eq!(s["linux"]["resources"]["cpu"]["shares"], 512);
    let _: oci_spec::runtime::LinuxSeccomp =
        serde_json::from_value(s["linux"]["seccomp"].clone()).unwrap();

    // Hooks accumulate; a second seccomp policy or CPU shares conflict.
    let mut b = api::ContainerAdjustment::new();
    b.hooks = a.hooks.clone();
    apply(&mut s, &b, "10-b", &mut o, Caps::default()).unwrap();
    assert_eq!(o.owner(api::Field::OciHooks, ""), Some("00-a,10-b"));
    let mut c = api::ContainerAdjustment::new();
    c.linux = protobuf::MessageField::some(api::LinuxContainerAdjustment {
        resources: protobuf::MessageField::some(r),
        ..Default::default()
    });
    let e = apply(&mut s, &c, "10-b", &mut o, Caps::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("00-a and 10-b both adjust CPU shares"), "{e}");
    let owners = o.to_proto("ctr");
    assert_eq!(
        owners.owners["ctr"].simple[&(api::Field::SeccompPolicy as i32)],
        "00-a"
    );
}

#[test]
fn io_priority_needs_a_runtime_spec_1_2_runtime() {
    let mut a = api::ContainerAdjustment::new();
    a.linux = protobuf::MessageField::some(api::LinuxContainerAdjustment {
        io_priority: protobuf::MessageField::some(api::LinuxIOPriority {
            class: api::IOPrioClass::IOPRIO_CLASS_BE.into(),
            priority: 4,
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut s = spec();
    let e = apply(&mut s, &a, "00-a", &mut Owners::default(), Caps::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("00-a") && e.contains("I/O priority"), "{e}");
    let caps = Caps { io_priority: true };
    apply(&mut s, &a, "00-a", &mut Owners::default(), caps).unwrap();
    assert_eq!(s["process"]["ioPriority"]["class"], "IOPRIO_CLASS_BE");
}
