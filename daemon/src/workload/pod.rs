//! A pod sandbox as asked for: identity, hostname and DNS, ports, labels, cgroup parent,
//! sysctls, the pod-level security context and resources.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Namespaces, Profile, Resources, SupplementalGroupsPolicy};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSpec {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub hostname: String,
    /// Where the pod's container logs go (kubelet's /var/log/pods/...); "" = no logs.
    pub log_directory: String,
    /// None: the node's resolv.conf.
    pub dns: Option<Dns>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// "" = the configured default parent.
    pub cgroup_parent: String,
    pub sysctls: HashMap<String, String>,
    pub security: PodSecurity,
    pub overhead: Option<Resources>,
    pub resources: Option<Resources>,
}

impl PodSpec {
    pub fn host_network(&self) -> bool {
        self.security.namespaces.network == super::NamespaceMode::Node
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// The pod-level security context (applies to the infra process; containers have their
/// own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSecurity {
    pub namespaces: Namespaces,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    pub privileged: bool,
    pub seccomp: Option<Profile>,
    pub apparmor: Option<Profile>,
}
