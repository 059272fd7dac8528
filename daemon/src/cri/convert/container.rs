//! `ContainerConfig` ↔ [`ContainerSpec`], mounts and devices.

use berth_cri::v1 as cri;

use super::known;
use super::resources::{resources_from_cri, resources_to_cri};
use super::security::{
    id_mappings_from_cri, id_mappings_to_cri, namespaces_from_cri, namespaces_to_cri,
    policy_from_cri, policy_to_cri, profile_from_cri, profile_to_cri, ProfileKind,
};
use crate::error::{Error, Result};
use crate::workload::{Capabilities, ContainerSecurity, ContainerSpec, Device, Mount, Propagation};

fn mount_from_cri(m: &cri::Mount) -> Result<Mount> {
    Ok(Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation: match known::<cri::MountPropagation>(
            &format!("propagation of mount {:?}:", m.container_path),
            m.propagation,
        )? {
            cri::MountPropagation::PropagationPrivate => Propagation::Private,
            cri::MountPropagation::PropagationHostToContainer => Propagation::HostToContainer,
            cri::MountPropagation::PropagationBidirectional => Propagation::Bidirectional,
        },
        uid_mappings: id_mappings_from_cri(&m.uid_mappings),
        gid_mappings: id_mappings_from_cri(&m.gid_mappings),
        recursive_read_only: m.recursive_read_only,
        image: m
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty()),
        image_sub_path: m.image_sub_path.clone(),
        image_id: None,
    })
}

/// An env variable: its value is bytes on the wire since Kubernetes 1.34, but the OCI
/// config that carries it is JSON, whose strings are UTF-8; refused rather than mangled.
fn env_from_cri(kv: &cri::KeyValue) -> Result<(String, String)> {
    let value = String::from_utf8(kv.value.clone()).map_err(|_| {
        Error::InvalidArgument(format!("env {:?}: value is not valid UTF-8", kv.key))
    })?;
    Ok((kv.key.clone(), value))
}

/// kubelet's stop signal as a signal name ("SIGRTMIN+3"), None for the runtime's default.
pub fn stop_signal_from_cri(n: i32) -> Result<Option<String>> {
    let sig = known::<cri::Signal>("stop_signal:", n)?;
    if sig == cri::Signal::RuntimeDefault {
        return Ok(None);
    }
    let name = sig
        .as_str_name()
        .replace("RTMINPLUS", "RTMIN+")
        .replace("RTMAXMINUS", "RTMAX-");
    Ok(Some(name))
}

/// A signal name (as kept in records: "SIGUSR1", "SIGRTMIN+3", or an image's "TERM"/"15")
/// as kubelet's enum; RUNTIME_DEFAULT when it names no signal the enum has.
pub fn stop_signal_to_cri(name: &str) -> cri::Signal {
    let Some(canonical) =
        crate::workload::signal::number(name).and_then(crate::workload::signal::name)
    else {
        return cri::Signal::RuntimeDefault;
    };
    let enum_name = canonical
        .replace("RTMIN+", "RTMINPLUS")
        .replace("RTMAX-", "RTMAXMINUS");
    cri::Signal::from_str_name(&enum_name).unwrap_or(cri::Signal::RuntimeDefault)
}

/// A mount as ContainerStatus reports it.
pub fn mount_to_cri(m: &Mount) -> cri::Mount {
    cri::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation: (match m.propagation {
            Propagation::Private => cri::MountPropagation::PropagationPrivate,
            Propagation::HostToContainer => cri::MountPropagation::PropagationHostToContainer,
            Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
        }) as i32,
        uid_mappings: id_mappings_to_cri(&m.uid_mappings),
        gid_mappings: id_mappings_to_cri(&m.gid_mappings),
        recursive_read_only: m.recursive_read_only,
        image: m.image.as_ref().map(|image| cri::ImageSpec {
            image: image.clone(),
            image_ref: m.image_id.clone().unwrap_or_default(),
            ..Default::default()
        }),
        image_sub_path: m.image_sub_path.clone(),
    }
}

pub fn container_from_cri(c: &cri::ContainerConfig) -> Result<ContainerSpec> {
    let md = c.metadata.clone().unwrap_or_default();
    let linux = c.linux.clone().unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    #[allow(deprecated)] // older kubelets still send the string forms
    let (seccomp, apparmor) = (
        profile_from_cri(
            ProfileKind::Seccomp,
            sc.seccomp.as_ref(),
            &sc.seccomp_profile_path,
        )?,
        profile_from_cri(
            ProfileKind::AppArmor,
            sc.apparmor.as_ref(),
            &sc.apparmor_profile,
        )?,
    );
    Ok(ContainerSpec {
        name: md.name,
        attempt: md.attempt,
        image: c
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default(),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs: c.envs.iter().map(env_from_cri).collect::<Result<_>>()?,
        mounts: c.mounts.iter().map(mount_from_cri).collect::<Result<_>>()?,
        stop_signal: stop_signal_from_cri(c.stop_signal)?,
        cdi_devices: c.cdi_devices.iter().map(|d| d.name.clone()).collect(),
        devices: c
            .devices
            .iter()
            .map(|d| Device {
                container_path: d.container_path.clone(),
                host_path: d.host_path.clone(),
                permissions: d.permissions.clone(),
            })
            .collect(),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        log_path: c.log_path.clone(),
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        resources: linux.resources.as_ref().map(resources_from_cri),
        security: ContainerSecurity {
            capabilities: sc.capabilities.map(|c| Capabilities {
                add_capabilities: c.add_capabilities,
                drop_capabilities: c.drop_capabilities,
                add_ambient_capabilities: c.add_ambient_capabilities,
            }),
            privileged: sc.privileged,
            namespaces: namespaces_from_cri(sc.namespace_options.as_ref())?,
            run_as_user: sc.run_as_user.map(|v| v.value),
            run_as_group: sc.run_as_group.map(|v| v.value),
            run_as_username: sc.run_as_username,
            readonly_rootfs: sc.readonly_rootfs,
            supplemental_groups: sc.supplemental_groups,
            supplemental_groups_policy: policy_from_cri(sc.supplemental_groups_policy)?,
            no_new_privs: sc.no_new_privs,
            masked_paths: sc.masked_paths,
            readonly_paths: sc.readonly_paths,
            seccomp,
            apparmor,
        },
    })
}

pub fn container_metadata(c: &ContainerSpec) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.name.clone(),
        attempt: c.attempt,
    }
}

/// The CRI form of a container spec (a verbose ContainerStatus shows it).
pub fn container_to_cri(c: &ContainerSpec) -> cri::ContainerConfig {
    let s = &c.security;
    cri::ContainerConfig {
        metadata: Some(container_metadata(c)),
        image: Some(cri::ImageSpec {
            image: c.image.clone(),
            ..Default::default()
        }),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs: c
            .envs
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone().into_bytes(),
            })
            .collect(),
        mounts: c.mounts.iter().map(mount_to_cri).collect(),
        stop_signal: c
            .stop_signal
            .as_deref()
            .map_or(cri::Signal::RuntimeDefault, stop_signal_to_cri) as i32,
        devices: c
            .devices
            .iter()
            .map(|d| cri::Device {
                container_path: d.container_path.clone(),
                host_path: d.host_path.clone(),
                permissions: d.permissions.clone(),
            })
            .collect(),
        cdi_devices: c
            .cdi_devices
            .iter()
            .map(|name| cri::CdiDevice { name: name.clone() })
            .collect(),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        log_path: c.log_path.clone(),
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        linux: Some(cri::LinuxContainerConfig {
            resources: c.resources.as_ref().map(resources_to_cri),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: s.capabilities.as_ref().map(|c| cri::Capability {
                    add_capabilities: c.add_capabilities.clone(),
                    drop_capabilities: c.drop_capabilities.clone(),
                    add_ambient_capabilities: c.add_ambient_capabilities.clone(),
                }),
                privileged: s.privileged,
                namespace_options: Some(namespaces_to_cri(&s.namespaces)),
                run_as_user: s.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: s.run_as_group.map(|value| cri::Int64Value { value }),
                run_as_username: s.run_as_username.clone(),
                readonly_rootfs: s.readonly_rootfs,
                supplemental_groups: s.supplemental_groups.clone(),
                supplemental_groups_policy: policy_to_cri(s.supplemental_groups_policy),
                no_new_privs: s.no_new_privs,
                masked_paths: s.masked_paths.clone(),
                readonly_paths: s.readonly_paths.clone(),
                seccomp: profile_to_cri(&s.seccomp),
                apparmor: profile_to_cri(&s.apparmor),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}
