//! `PodSandboxConfig` ↔ [`PodSpec`].

use berth_cri::v1 as cri;

use super::known;
use super::resources::{resources_from_cri, resources_to_cri};
use super::security::{
    namespaces_from_cri, namespaces_to_cri, policy_from_cri, policy_to_cri, profile_from_cri,
    profile_to_cri, ProfileKind,
};
use crate::error::Result;
use crate::workload::{Dns, PodSecurity, PodSpec, PortMapping, Protocol};

pub fn pod_from_cri(c: &cri::PodSandboxConfig) -> Result<PodSpec> {
    let md = c.metadata.clone().unwrap_or_default();
    let linux = c.linux.clone().unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    #[allow(deprecated)] // older kubelets still send the string form
    let seccomp = profile_from_cri(
        ProfileKind::Seccomp,
        sc.seccomp.as_ref(),
        &sc.seccomp_profile_path,
    )?;
    Ok(PodSpec {
        name: md.name,
        uid: md.uid,
        namespace: md.namespace,
        attempt: md.attempt,
        hostname: c.hostname.clone(),
        log_directory: c.log_directory.clone(),
        dns: c.dns_config.as_ref().map(|d| Dns {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        port_mappings: c
            .port_mappings
            .iter()
            .map(|p| -> Result<PortMapping> {
                Ok(PortMapping {
                    protocol: match known::<cri::Protocol>("port protocol", p.protocol)? {
                        cri::Protocol::Tcp => Protocol::Tcp,
                        cri::Protocol::Udp => Protocol::Udp,
                        cri::Protocol::Sctp => Protocol::Sctp,
                    },
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: p.host_ip.clone(),
                })
            })
            .collect::<Result<_>>()?,
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        cgroup_parent: linux.cgroup_parent,
        sysctls: linux.sysctls,
        security: PodSecurity {
            namespaces: namespaces_from_cri(sc.namespace_options.as_ref())?,
            run_as_user: sc.run_as_user.map(|v| v.value),
            run_as_group: sc.run_as_group.map(|v| v.value),
            readonly_rootfs: sc.readonly_rootfs,
            supplemental_groups: sc.supplemental_groups,
            supplemental_groups_policy: policy_from_cri(sc.supplemental_groups_policy)?,
            privileged: sc.privileged,
            seccomp,
            apparmor: profile_from_cri(ProfileKind::AppArmor, sc.apparmor.as_ref(), "")?,
        },
        overhead: linux.overhead.as_ref().map(resources_from_cri),
        resources: linux.resources.as_ref().map(resources_from_cri),
    })
}

/// The CRI form of a pod spec: metadata, labels and annotations for the status calls, and
/// the whole config for a verbose status.
pub fn pod_to_cri(p: &PodSpec) -> cri::PodSandboxConfig {
    let s = &p.security;
    cri::PodSandboxConfig {
        metadata: Some(pod_metadata(p)),
        hostname: p.hostname.clone(),
        log_directory: p.log_directory.clone(),
        dns_config: p.dns.as_ref().map(|d| cri::DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        port_mappings: p
            .port_mappings
            .iter()
            .map(|m| cri::PortMapping {
                protocol: (match m.protocol {
                    Protocol::Tcp => cri::Protocol::Tcp,
                    Protocol::Udp => cri::Protocol::Udp,
                    Protocol::Sctp => cri::Protocol::Sctp,
                }) as i32,
                container_port: m.container_port,
                host_port: m.host_port,
                host_ip: m.host_ip.clone(),
            })
            .collect(),
        labels: p.labels.clone(),
        annotations: p.annotations.clone(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: p.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces_to_cri(&s.namespaces)),
                run_as_user: s.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: s.run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: s.readonly_rootfs,
                supplemental_groups: s.supplemental_groups.clone(),
                supplemental_groups_policy: policy_to_cri(s.supplemental_groups_policy),
                privileged: s.privileged,
                seccomp: profile_to_cri(&s.seccomp),
                apparmor: profile_to_cri(&s.apparmor),
                ..Default::default()
            }),
            sysctls: p.sysctls.clone(),
            overhead: p.overhead.as_ref().map(resources_to_cri),
            resources: p.resources.as_ref().map(resources_to_cri),
        }),
        windows: None,
    }
}

pub fn pod_metadata(p: &PodSpec) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: p.name.clone(),
        uid: p.uid.clone(),
        namespace: p.namespace.clone(),
        attempt: p.attempt,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pod config with every field Berth keeps set to a non-default value.
    pub(crate) fn full_pod() -> cri::PodSandboxConfig {
        let res = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 1 << 30,
            oom_score_adj: -10,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "1G".to_string())].into(),
            memory_swap_limit_in_bytes: 2 << 30,
        };
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "uid-1".into(),
                namespace: "ns".into(),
                attempt: 2,
            }),
            hostname: "web-0".into(),
            log_directory: "/var/log/pods/ns_web_uid-1".into(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.0.0.10".into()],
                searches: vec!["ns.svc".into()],
                options: vec!["ndots:5".into()],
            }),
            port_mappings: vec![cri::PortMapping {
                protocol: cri::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            }],
            labels: [("app".to_string(), "web".to_string())].into(),
            annotations: [("a".to_string(), "b".to_string())].into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/pod-uid-1".into(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Node as i32,
                        target_id: String::new(),
                        userns_options: Some(cri::UserNamespace {
                            mode: cri::NamespaceMode::Pod as i32,
                            uids: vec![cri::IdMapping {
                                host_id: 65536,
                                container_id: 0,
                                length: 65536,
                            }],
                            gids: vec![cri::IdMapping {
                                host_id: 131072,
                                container_id: 0,
                                length: 65536,
                            }],
                        }),
                    }),
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    run_as_group: Some(cri::Int64Value { value: 3000 }),
                    readonly_rootfs: true,
                    supplemental_groups: vec![4000],
                    supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
                    privileged: true,
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::Localhost as i32,
                        localhost_ref: "/var/lib/kubelet/seccomp/p.json".into(),
                    }),
                    apparmor: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
                sysctls: [("net.core.somaxconn".to_string(), "1024".to_string())].into(),
                overhead: Some(cri::LinuxContainerResources {
                    cpu_shares: 10,
                    ..Default::default()
                }),
                resources: Some(res),
            }),
            windows: None,
        }
    }
}
