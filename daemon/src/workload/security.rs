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

/// How many id mappings of each kind a pod may ask for. kubelet sends one; containerd
/// refuses more too (its idmapped snapshots take one), and so does Berth's idmapped rootfs.
pub const MAX_ID_MAPPINGS: usize = 1;

impl Namespaces {
    /// The pod's own user namespace (POD mode), if it asks for one.
    pub fn pod_userns(&self) -> Option<&UserNamespace> {
        self.userns
            .as_ref()
            .filter(|u| u.mode == NamespaceMode::Pod)
    }

    /// A pod's user namespace request checked as a whole, before anything is made: NODE
    /// (or none) keeps the host's; POD needs one uid and one gid mapping that map container
    /// id 0 without overflowing, and the pod's own network, PID and IPC namespaces (kubelet
    /// refuses hostUsers=false with hostNetwork/hostPID/hostIPC too). CONTAINER and TARGET
    /// are not modes a user namespace can have.
    pub fn check_pod_userns(&self) -> Result<(), String> {
        let Some(u) = &self.userns else { return Ok(()) };
        match u.mode {
            NamespaceMode::Node => {
                if !u.uids.is_empty() || !u.gids.is_empty() {
                    return Err("user namespace mode NODE takes no id mappings".into());
                }
                Ok(())
            }
            NamespaceMode::Container | NamespaceMode::Target => Err(format!(
                "user namespace mode {:?} is not supported (only POD and NODE)",
                u.mode
            )),
            NamespaceMode::Pod => {
                check_mappings("uid", &u.uids)?;
                check_mappings("gid", &u.gids)?;
                for (what, mode) in [
                    ("network", self.network),
                    ("pid", self.pid),
                    ("ipc", self.ipc),
                ] {
                    if mode == NamespaceMode::Node {
                        return Err(format!(
                            "a pod with its own user namespace cannot use the host's {what} namespace"
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// One mapping (see [`MAX_ID_MAPPINGS`]) of container id 0, not empty, within u32 on
/// both sides. Lengths need not be multiples of 65536: that is kubelet's own rule for the
/// ranges it allocates, not the kernel's (critest asks for 100000).
fn check_mappings(what: &str, m: &[IdMapping]) -> Result<(), String> {
    if m.is_empty() {
        return Err(format!("user namespace mode POD needs a {what} mapping"));
    }
    if m.len() > MAX_ID_MAPPINGS {
        return Err(format!(
            "{} {what} mappings given; at most {MAX_ID_MAPPINGS} is supported",
            m.len()
        ));
    }
    let one = m[0];
    if one.length == 0 {
        return Err(format!("{what} mapping has length 0"));
    }
    if one.container_id != 0 {
        return Err(format!(
            "{what} mapping must map container id 0 (it starts at {})",
            one.container_id
        ));
    }
    if one.host_id.checked_add(one.length - 1).is_none() {
        return Err(format!(
            "{what} mapping {}+{} overflows the id space",
            one.host_id, one.length
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(mode: NamespaceMode, uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> Namespaces {
        Namespaces {
            userns: Some(UserNamespace { mode, uids, gids }),
            ..Default::default()
        }
    }

    fn m(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    #[test]
    fn userns_requests() {
        use NamespaceMode::*;
        let ok = vec![m(0, 65536, 65536)];
        assert!(Namespaces::default().check_pod_userns().is_ok());
        assert!(pod(Node, vec![], vec![]).check_pod_userns().is_ok());
        // critest's mapping: not a multiple of 65536, still fine.
        assert!(
            pod(Pod, vec![m(0, 1000, 100_000)], vec![m(0, 1000, 100_000)])
                .check_pod_userns()
                .is_ok()
        );
        let bad = [
            pod(Node, ok.clone(), ok.clone()),
            pod(Container, vec![], vec![]),
            pod(Target, vec![], vec![]),
            pod(Pod, vec![], ok.clone()),
            pod(Pod, ok.clone(), vec![]),
            pod(
                Pod,
                vec![m(0, 1000, 100_000), m(0, 2000, 100_000)],
                ok.clone(),
            ),
            pod(Pod, ok.clone(), vec![m(1, 1000, 100_000)]),
            pod(Pod, vec![m(0, 1000, 0)], ok.clone()),
            pod(Pod, vec![m(0, u32::MAX - 10, 65536)], ok.clone()),
        ];
        for ns in bad {
            assert!(ns.check_pod_userns().is_err(), "{ns:?}");
        }
        let mut host_net = pod(Pod, ok.clone(), ok.clone());
        host_net.network = Node;
        assert!(host_net.check_pod_userns().is_err());
        let mut host_pid = pod(Pod, ok.clone(), ok);
        host_pid.pid = Node;
        assert!(host_pid.check_pod_userns().is_err());
    }
}
