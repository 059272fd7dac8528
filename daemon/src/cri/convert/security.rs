//! Namespace options, user namespaces, seccomp/AppArmor profiles (new and deprecated
//! forms) and the supplemental groups policy.

use berth_cri::v1 as cri;
use berth_cri::v1::security_profile::ProfileType;

use super::{invalid, known};
use crate::error::Result;
use crate::workload::{
    IdMapping, NamespaceMode, Namespaces, Profile, SupplementalGroupsPolicy, UserNamespace,
};

pub(super) fn mode_from_cri(what: &str, v: i32) -> Result<NamespaceMode> {
    Ok(match known::<cri::NamespaceMode>(what, v)? {
        cri::NamespaceMode::Pod => NamespaceMode::Pod,
        cri::NamespaceMode::Container => NamespaceMode::Container,
        cri::NamespaceMode::Node => NamespaceMode::Node,
        cri::NamespaceMode::Target => NamespaceMode::Target,
    })
}

fn mode_to_cri(m: NamespaceMode) -> i32 {
    (match m {
        NamespaceMode::Pod => cri::NamespaceMode::Pod,
        NamespaceMode::Container => cri::NamespaceMode::Container,
        NamespaceMode::Node => cri::NamespaceMode::Node,
        NamespaceMode::Target => cri::NamespaceMode::Target,
    }) as i32
}

pub(super) fn id_mappings_from_cri(m: &[cri::IdMapping]) -> Vec<IdMapping> {
    m.iter()
        .map(|m| IdMapping {
            host_id: m.host_id,
            container_id: m.container_id,
            length: m.length,
        })
        .collect()
}

pub(super) fn id_mappings_to_cri(m: &[IdMapping]) -> Vec<cri::IdMapping> {
    m.iter()
        .map(|m| cri::IdMapping {
            host_id: m.host_id,
            container_id: m.container_id,
            length: m.length,
        })
        .collect()
}

pub(super) fn namespaces_from_cri(n: Option<&cri::NamespaceOption>) -> Result<Namespaces> {
    let Some(n) = n else {
        return Ok(Namespaces::default());
    };
    Ok(Namespaces {
        network: mode_from_cri("network namespace mode", n.network)?,
        pid: mode_from_cri("pid namespace mode", n.pid)?,
        ipc: mode_from_cri("ipc namespace mode", n.ipc)?,
        target_id: n.target_id.clone(),
        userns: n
            .userns_options
            .as_ref()
            .map(|u| -> Result<UserNamespace> {
                Ok(UserNamespace {
                    mode: mode_from_cri("user namespace mode", u.mode)?,
                    uids: id_mappings_from_cri(&u.uids),
                    gids: id_mappings_from_cri(&u.gids),
                })
            })
            .transpose()?,
    })
}

/// The namespace options as CRI reports them (PodSandboxStatus).
pub fn namespaces_to_cri(n: &Namespaces) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: mode_to_cri(n.network),
        pid: mode_to_cri(n.pid),
        ipc: mode_to_cri(n.ipc),
        target_id: n.target_id.clone(),
        userns_options: n.userns.as_ref().map(|u| cri::UserNamespace {
            mode: mode_to_cri(u.mode),
            uids: id_mappings_to_cri(&u.uids),
            gids: id_mappings_to_cri(&u.gids),
        }),
    }
}

/// Which deprecated strings a profile kind accepts, and what "" means for it.
#[derive(Clone, Copy)]
pub(super) enum ProfileKind {
    Seccomp,
    AppArmor,
}

/// The new `SecurityProfile` field wins; otherwise the deprecated string: seccomp takes
/// "runtime/default", "docker/default", "unconfined", "localhost/<path>"; AppArmor takes
/// "runtime/default", "unconfined", "localhost/<name>". "" is not set.
pub(super) fn profile_from_cri(
    kind: ProfileKind,
    sp: Option<&cri::SecurityProfile>,
    deprecated: &str,
) -> Result<Option<Profile>> {
    let what = match kind {
        ProfileKind::Seccomp => "seccomp",
        ProfileKind::AppArmor => "apparmor",
    };
    if let Some(sp) = sp {
        let t: ProfileType = known(&format!("{what} profile type"), sp.profile_type)?;
        if t != ProfileType::Localhost && !sp.localhost_ref.is_empty() {
            return Err(invalid(format!(
                "{what} localhost_ref is only valid with a Localhost profile"
            )));
        }
        return Ok(Some(match t {
            ProfileType::Unconfined => Profile::Unconfined,
            ProfileType::RuntimeDefault => Profile::RuntimeDefault,
            ProfileType::Localhost => Profile::Localhost(
                sp.localhost_ref
                    .strip_prefix("localhost/")
                    .unwrap_or(&sp.localhost_ref)
                    .to_string(),
            ),
        }));
    }
    Ok(Some(match (kind, deprecated) {
        (_, "") => return Ok(None),
        (_, "unconfined") => Profile::Unconfined,
        (_, "runtime/default") | (ProfileKind::Seccomp, "docker/default") => {
            Profile::RuntimeDefault
        }
        (_, p) => match p.strip_prefix("localhost/") {
            Some(rest) => Profile::Localhost(rest.to_string()),
            None => return Err(invalid(format!("unsupported {what} profile {p:?}"))),
        },
    }))
}

/// Profiles go back in the new form only.
pub(super) fn profile_to_cri(p: &Option<Profile>) -> Option<cri::SecurityProfile> {
    p.as_ref().map(|p| {
        let (t, r) = match p {
            Profile::Unconfined => (ProfileType::Unconfined, String::new()),
            Profile::RuntimeDefault => (ProfileType::RuntimeDefault, String::new()),
            Profile::Localhost(r) => (ProfileType::Localhost, r.clone()),
        };
        cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r,
        }
    })
}

pub(super) fn policy_from_cri(v: i32) -> Result<SupplementalGroupsPolicy> {
    Ok(
        match known::<cri::SupplementalGroupsPolicy>("supplemental_groups_policy", v)? {
            cri::SupplementalGroupsPolicy::Merge => SupplementalGroupsPolicy::Merge,
            cri::SupplementalGroupsPolicy::Strict => SupplementalGroupsPolicy::Strict,
        },
    )
}

pub(super) fn policy_to_cri(p: SupplementalGroupsPolicy) -> i32 {
    (match p {
        SupplementalGroupsPolicy::Merge => cri::SupplementalGroupsPolicy::Merge,
        SupplementalGroupsPolicy::Strict => cri::SupplementalGroupsPolicy::Strict,
    }) as i32
}
