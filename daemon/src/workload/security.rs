//! The security vocabulary pods and containers share: namespace modes, user namespace
//! mappings, seccomp/AppArmor profiles and the supplemental groups policy.

use serde::{Deserialize, Serialize};

/// Where a namespace comes from (CRI's `NamespaceMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// Shared by the pod's containers (the default).
    #[default]
    Pod,
    /// The container's own.
    Container,
    /// The host's.
    Node,
    /// Another container's (`Namespaces::target_id`); PID only.
    Target,
}

/// The namespaces a pod or container asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Namespaces {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    /// The container whose PID namespace `Target` means.
    pub target_id: String,
    /// None: the host's user namespace.
    pub userns: Option<UserNamespace>,
}

/// A user namespace request: its mode and id mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserNamespace {
    pub mode: NamespaceMode,
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

/// `length` ids from `container_id` inside map to `host_id` outside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub host_id: u32,
    pub container_id: u32,
    pub length: u32,
}

/// A seccomp or AppArmor profile as asked for (CRI's new field or its deprecated string
/// form, folded into one by the adapter). "Not set" is `None` where it is held: what it
/// means differs (seccomp: unconfined; AppArmor: the runtime default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Profile {
    Unconfined,
    RuntimeDefault,
    /// A seccomp profile's absolute path or an AppArmor profile's name, without the
    /// `localhost/` prefix; checked where it is used.
    Localhost(String),
}

/// How the image's /etc/group adds groups to the process (CRI's
/// `SupplementalGroupsPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupplementalGroupsPolicy {
    /// The user's groups from the image plus the asked-for ones (the default).
    #[default]
    Merge,
    /// Only the asked-for groups.
    Strict,
}
