//! Whole-spec tests for `container_spec` and `sandbox_spec`, by idea: the process
//! (`process`), isolation (`isolation`), the spec's shape and bad input (`shape`). The
//! per-rule tables live next to each rule (user.rs, mounts.rs, security.rs, ...).

mod isolation;
mod process;
mod shape;

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxDevice, LinuxNamespaceType, Spec};

use super::devices::tests::fake_lookup;
use super::*;
use crate::workload::{
    Capabilities, ContainerSecurity, ContainerSpec, Device, Mount, NamespaceMode, Namespaces,
    PodSecurity, PodSpec, Propagation, Resources,
};

pub(super) fn pod(privileged: bool) -> PodSpec {
    PodSpec {
        name: "web".into(),
        uid: "uid-1".into(),
        namespace: "team".into(),
        attempt: 1,
        hostname: "web-0".into(),
        security: PodSecurity {
            privileged,
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(super) fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/bin/entry".into()],
        cmd: vec!["serve".into(), "--port=80".into()],
        env: vec!["PATH=/opt/bin:/bin".into(), "LANG=C".into()],
        working_dir: "/srv".into(),
        user: "app".into(),
        stop_signal: "SIGTERM".into(),
    }
}

pub(super) fn ctr(sc: ContainerSecurity) -> ContainerSpec {
    ContainerSpec {
        name: "app".into(),
        envs: vec![
            ("LANG".into(), "C.UTF-8".into()),
            ("MODE".into(), "prod".into()),
        ],
        security: sc,
        resources: Some(Resources {
            cpu_shares: 256,
            memory_limit_in_bytes: 32 << 20,
            oom_score_adj: 999,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn opts() -> ContainerOpts {
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

pub(super) fn build(c: &ContainerSpec) -> Spec {
    container_spec(c, &pod(false), &image(), &opts()).unwrap()
}

pub(super) fn ns(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
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

pub(super) fn is_invalid(r: Result<Spec>) -> bool {
    matches!(r, Err(Error::InvalidArgument(_)))
}
