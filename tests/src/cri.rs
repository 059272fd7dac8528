//! The one CRI v1 client (berth-cri over tonic on a unix socket: containerd's or berthd's),
//! berthd's client library's (`berthd::cri::client`, berthctl's too), plus pod/container
//! config builders.

use anyhow::Result;
use berth_cri::v1 as cri;
use std::path::Path;

pub use berthd::cri::client::{
    connect, ImageServiceClient, Is, Rs, RuntimeServiceClient, CALL_TIMEOUT,
};

/// A host-network pod (no CNI involved) logging under `log_dir`.
pub fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        // Host network shares the host UTS namespace, so no hostname may be set.
        hostname: String::new(),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                // As kubelet sends it for a pod that does not share its process namespace
                // (the default): such a pod runs without an infra process.
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Makes `cfg` a pod-network (CNI) pod.
pub fn pod_network(cfg: &mut cri::PodSandboxConfig) {
    ns_options(cfg).network = cri::NamespaceMode::Pod as i32;
}

/// Makes `cfg` a pod whose containers share one PID namespace (kubelet's
/// `shareProcessNamespace`): such a pod runs an infra process as its PID 1.
pub fn share_pid(cfg: &mut cri::PodSandboxConfig) {
    ns_options(cfg).pid = cri::NamespaceMode::Pod as i32;
}

/// Makes `cfg` a privileged pod.
pub fn privileged(mut cfg: cri::PodSandboxConfig) -> cri::PodSandboxConfig {
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    cfg
}

/// The pod's namespace options, created when absent.
pub fn ns_options(cfg: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
}

/// A container running `command` from `image`, logging to `<pod log dir>/<name>.log`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// A busybox-style container running `sh -c script` with security context `sc`.
pub fn secured(
    name: &str,
    image: &str,
    script: &str,
    sc: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    let mut c = container_config(name, image, &["sh", "-c", script]);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    });
    c
}

/// A seccomp profile of type `t` (`localhost_ref` for `Localhost`).
pub fn seccomp(
    t: cri::security_profile::ProfileType,
    localhost_ref: &str,
) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// Runs `f` on a fresh multi-thread tokio runtime (tonic needs a reactor).
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f))
}
