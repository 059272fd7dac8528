//! A container as asked for: process, image, mounts, devices, stdio, labels, resources
//! and its security context.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{IdMapping, Namespaces, Profile, Resources, SupplementalGroupsPolicy};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSpec {
    pub name: String,
    pub attempt: u32,
    /// The image as asked for (a reference or an id).
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    /// (name, value), in order: a later one wins.
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<Device>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// Relative to the pod's log directory; "" = no log.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// The signal that stops the container ("SIGUSR1", "SIGRTMIN+3"); None: the image's,
    /// else SIGTERM.
    pub stop_signal: Option<String>,
    pub resources: Option<Resources>,
    pub security: ContainerSecurity,
    /// CDI devices by qualified name (`vendor.com/class=name`).
    pub cdi_devices: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    pub container_path: String,
    /// The host path; unused for an image volume.
    pub host_path: String,
    pub readonly: bool,
    pub selinux_relabel: bool,
    pub propagation: Propagation,
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
    pub recursive_read_only: bool,
    /// An image volume: the image whose content is mounted (never "").
    pub image: Option<String>,
    /// An image volume's directory (or file) to mount instead of the image's root,
    /// relative to it ("" = the root).
    pub image_sub_path: String,
    /// An image volume's image id as create resolved it (ContainerStatus reports it).
    pub image_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Device {
    pub container_path: String,
    pub host_path: String,
    /// A subset of "rwm"; "" = all.
    pub permissions: String,
}

/// Capability names as sent (with or without `CAP_`, or "ALL").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub add_ambient_capabilities: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSecurity {
    pub capabilities: Option<Capabilities>,
    pub privileged: bool,
    pub namespaces: Namespaces,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub seccomp: Option<Profile>,
    pub apparmor: Option<Profile>,
}
