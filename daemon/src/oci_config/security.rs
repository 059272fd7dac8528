//! Security context → spec: seccomp (RuntimeDefault / Localhost / Unconfined, new and
//! deprecated CRI forms), AppArmor, and masked / read-only /proc paths.

use std::path::PathBuf;

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::SecurityProfile;
use oci_spec::runtime::{Capabilities, LinuxSeccomp};

use super::{invalid, seccomp};
use crate::error::Result;

/// The name of the AppArmor profile RuntimeDefault asks for when the caller does not name
/// one; the daemon is expected to load it before starting containers.
pub const APPARMOR_DEFAULT_PROFILE: &str = "berth-default";

/// The seccomp profile a CRI security context asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SeccompChoice {
    Unconfined,
    RuntimeDefault,
    Localhost(PathBuf),
}

/// The new `seccomp` field wins; otherwise the deprecated `seccomp_profile_path`
/// ("runtime/default", "docker/default", "localhost/<abs path>", "unconfined", "").
/// Nothing at all means unconfined, as containerd 1.6 without `unset_seccomp_profile`.
pub(crate) fn seccomp_choice(
    sp: Option<&SecurityProfile>,
    deprecated: &str,
) -> Result<SeccompChoice> {
    if let Some(sp) = sp {
        let t = ProfileType::try_from(sp.profile_type)
            .map_err(|_| invalid(format!("unknown seccomp profile type {}", sp.profile_type)))?;
        if t != ProfileType::Localhost && !sp.localhost_ref.is_empty() {
            return Err(invalid(
                "seccomp localhost_ref is only valid with a Localhost profile",
            ));
        }
        return Ok(match t {
            ProfileType::Unconfined => SeccompChoice::Unconfined,
            ProfileType::RuntimeDefault => SeccompChoice::RuntimeDefault,
            ProfileType::Localhost => SeccompChoice::Localhost(localhost_path(
                sp.localhost_ref
                    .strip_prefix("localhost/")
                    .unwrap_or(&sp.localhost_ref),
            )?),
        });
    }
    match deprecated {
        "" | "unconfined" => Ok(SeccompChoice::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompChoice::RuntimeDefault),
        p => match p.strip_prefix("localhost/") {
            Some(path) => Ok(SeccompChoice::Localhost(localhost_path(path)?)),
            None => Err(invalid(format!("unsupported seccomp profile {p:?}"))),
        },
    }
}

fn localhost_path(p: &str) -> Result<PathBuf> {
    super::clean_abs_path("seccomp localhost profile", p)
}

/// The Localhost seccomp profile file a container security context names, if any: the
/// caller reads it and passes its contents as `ContainerOpts::localhost_profile`.
pub fn seccomp_localhost_path(
    sp: Option<&SecurityProfile>,
    deprecated: &str,
) -> Result<Option<PathBuf>> {
    Ok(match seccomp_choice(sp, deprecated)? {
        SeccompChoice::Localhost(p) => Some(p),
        _ => None,
    })
}

/// The spec's `linux.seccomp`: none for privileged or unconfined, the built-in profile
/// rendered for `caps` for RuntimeDefault, the caller-loaded file for Localhost.
pub(crate) fn seccomp_spec(
    choice: &SeccompChoice,
    privileged: bool,
    caps: &Capabilities,
    localhost_profile: Option<&str>,
) -> Result<Option<LinuxSeccomp>> {
    if privileged {
        return Ok(None);
    }
    match choice {
        SeccompChoice::Unconfined => Ok(None),
        SeccompChoice::RuntimeDefault => Ok(Some(seccomp::default_seccomp_for(
            caps,
            std::env::consts::ARCH,
        ))),
        SeccompChoice::Localhost(path) => {
            let contents = localhost_profile.ok_or_else(|| {
                invalid(format!("seccomp profile {} was not loaded", path.display()))
            })?;
            Ok(Some(seccomp::parse_localhost(
                &path.to_string_lossy(),
                contents,
            )?))
        }
    }
}

/// `process.apparmorProfile`, as containerd: the `apparmor` field wins over the deprecated
/// string; unset or RuntimeDefault → the default profile (none when privileged);
/// "unconfined" → none; Localhost → that profile name. Without AppArmor on the host only
/// Localhost is an error. `default_profile` None means RuntimeDefault applies no profile.
pub(crate) fn apparmor_profile(
    sp: Option<&SecurityProfile>,
    deprecated: &str,
    privileged: bool,
    available: bool,
    default_profile: Option<&str>,
) -> Result<Option<String>> {
    enum Want {
        Default,
        Unconfined,
        Named(String),
    }
    let want = match sp {
        Some(sp) => {
            let t = ProfileType::try_from(sp.profile_type).map_err(|_| {
                invalid(format!("unknown apparmor profile type {}", sp.profile_type))
            })?;
            if t != ProfileType::Localhost && !sp.localhost_ref.is_empty() {
                return Err(invalid(
                    "apparmor localhost_ref is only valid with a Localhost profile",
                ));
            }
            match t {
                ProfileType::RuntimeDefault => Want::Default,
                ProfileType::Unconfined => Want::Unconfined,
                ProfileType::Localhost => {
                    let name = sp
                        .localhost_ref
                        .strip_prefix("localhost/")
                        .unwrap_or(&sp.localhost_ref);
                    if name.is_empty() {
                        return Err(invalid("apparmor Localhost profile without a name"));
                    }
                    Want::Named(name.to_string())
                }
            }
        }
        None => match deprecated {
            "" | "runtime/default" => Want::Default,
            "unconfined" => Want::Unconfined,
            p => match p.strip_prefix("localhost/") {
                Some(name) if !name.is_empty() => Want::Named(name.to_string()),
                _ => return Err(invalid(format!("unsupported apparmor profile {p:?}"))),
            },
        },
    };
    match want {
        Want::Unconfined => Ok(None),
        Want::Named(n) if available => Ok(Some(n)),
        Want::Named(n) => Err(invalid(format!(
            "apparmor profile {n:?} requested but AppArmor is not available on this host"
        ))),
        Want::Default if privileged || !available => Ok(None),
        Want::Default => Ok(default_profile.map(String::from)),
    }
}

/// containerd's default masked paths.
pub(crate) const DEFAULT_MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// containerd's default read-only paths.
pub(crate) const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// (masked, readonly): none when privileged; otherwise CRI's lists when given (kubelet
/// sends them for the Default proc mount), containerd's defaults when empty.
pub(crate) fn masked_and_readonly(
    masked: &[String],
    readonly: &[String],
    privileged: bool,
) -> Result<(Vec<String>, Vec<String>)> {
    if privileged {
        return Ok((vec![], vec![]));
    }
    let pick = |given: &[String], default: &[&str], what: &str| -> Result<Vec<String>> {
        if given.is_empty() {
            return Ok(default.iter().map(|s| s.to_string()).collect());
        }
        given
            .iter()
            .map(|p| super::clean_abs_path(what, p).map(|_| p.clone()))
            .collect()
    };
    Ok((
        pick(masked, &DEFAULT_MASKED_PATHS, "masked path")?,
        pick(readonly, &DEFAULT_READONLY_PATHS, "readonly path")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::oci_config::caps::default_caps;

    fn sp(t: ProfileType, r: &str) -> SecurityProfile {
        SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        }
    }

    #[test]
    fn seccomp_forms_table() {
        use SeccompChoice::*;
        let p = |s: &str| Localhost(PathBuf::from(s));
        let cases: Vec<(Option<SecurityProfile>, &str, SeccompChoice)> = vec![
            (None, "", Unconfined),
            (None, "unconfined", Unconfined),
            (None, "runtime/default", RuntimeDefault),
            (None, "docker/default", RuntimeDefault),
            (
                None,
                "localhost//var/lib/kubelet/seccomp/a.json",
                p("/var/lib/kubelet/seccomp/a.json"),
            ),
            (
                Some(sp(ProfileType::RuntimeDefault, "")),
                "unconfined",
                RuntimeDefault,
            ),
            (
                Some(sp(ProfileType::Unconfined, "")),
                "runtime/default",
                Unconfined,
            ),
            (
                Some(sp(ProfileType::Localhost, "/p/b.json")),
                "",
                p("/p/b.json"),
            ),
            (
                Some(sp(ProfileType::Localhost, "localhost//p/c.json")),
                "",
                p("/p/c.json"),
            ),
        ];
        for (sp, dep, want) in cases {
            assert_eq!(
                seccomp_choice(sp.as_ref(), dep).unwrap(),
                want,
                "{sp:?} {dep:?}"
            );
        }
        let bad: Vec<(Option<SecurityProfile>, &str)> = vec![
            (None, "foo"),
            (None, "localhost/relative.json"),
            (None, "localhost//p/../etc/x.json"),
            (Some(sp(ProfileType::Localhost, "")), ""),
            (Some(sp(ProfileType::RuntimeDefault, "/p/x.json")), ""),
            (
                Some(SecurityProfile {
                    profile_type: 7,
                    localhost_ref: String::new(),
                }),
                "",
            ),
        ];
        for (sp, dep) in bad {
            assert!(
                matches!(
                    seccomp_choice(sp.as_ref(), dep),
                    Err(Error::InvalidArgument(_))
                ),
                "{sp:?} {dep:?}"
            );
        }
    }

    #[test]
    fn seccomp_spec_by_choice() {
        let caps = default_caps();
        assert!(seccomp_spec(&SeccompChoice::Unconfined, false, &caps, None)
            .unwrap()
            .is_none());
        assert!(
            seccomp_spec(&SeccompChoice::RuntimeDefault, true, &caps, None)
                .unwrap()
                .is_none()
        );
        assert!(
            seccomp_spec(&SeccompChoice::RuntimeDefault, false, &caps, None)
                .unwrap()
                .is_some()
        );
        let local = SeccompChoice::Localhost(PathBuf::from("/p.json"));
        assert!(matches!(
            seccomp_spec(&local, false, &caps, None),
            Err(Error::InvalidArgument(_))
        ));
        let s = seccomp_spec(
            &local,
            false,
            &caps,
            Some(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#),
        )
        .unwrap()
        .unwrap();
        assert!(s.syscalls().is_none());
        assert_eq!(
            seccomp_localhost_path(None, "localhost//p.json").unwrap(),
            Some(PathBuf::from("/p.json"))
        );
        assert_eq!(
            seccomp_localhost_path(None, "runtime/default").unwrap(),
            None
        );
    }

    #[test]
    fn apparmor_table() {
        let d = Some(APPARMOR_DEFAULT_PROFILE);
        let s = |t, r: &str| Some(sp(t, r));
        // (profile, deprecated string, privileged, apparmor available, expected profile)
        type Case<'a> = (
            Option<SecurityProfile>,
            &'a str,
            bool,
            bool,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (None, "", false, true, d),
            (None, "runtime/default", false, true, d),
            (None, "runtime/default", true, true, None),
            (None, "", false, false, None),
            (None, "unconfined", false, true, None),
            (None, "localhost/my-prof", false, true, Some("my-prof")),
            (None, "localhost/my-prof", true, true, Some("my-prof")),
            (
                s(ProfileType::Localhost, "my-prof"),
                "unconfined",
                false,
                true,
                Some("my-prof"),
            ),
            (s(ProfileType::Unconfined, ""), "", false, true, None),
            (s(ProfileType::RuntimeDefault, ""), "", false, true, d),
        ];
        for (sp, dep, privileged, available, want) in cases {
            let got = apparmor_profile(sp.as_ref(), dep, privileged, available, d).unwrap();
            assert_eq!(
                got.as_deref(),
                want,
                "{sp:?} {dep:?} privileged={privileged} available={available}"
            );
        }
        assert!(apparmor_profile(None, "localhost/x", false, false, d).is_err());
        assert!(apparmor_profile(None, "bogus", false, true, d).is_err());
        assert_eq!(apparmor_profile(None, "", false, true, None).unwrap(), None);
    }

    #[test]
    fn masked_paths_privileged_vs_not() {
        let (m, r) = masked_and_readonly(&[], &[], false).unwrap();
        assert_eq!(m.len(), DEFAULT_MASKED_PATHS.len());
        assert!(m.contains(&"/proc/kcore".to_string()));
        assert_eq!(r.len(), DEFAULT_READONLY_PATHS.len());
        let (m, r) = masked_and_readonly(&[], &[], true).unwrap();
        assert!(m.is_empty() && r.is_empty());
        let (m, r) = masked_and_readonly(&["/proc/x".into()], &["/proc/y".into()], false).unwrap();
        assert_eq!(
            (m, r),
            (vec!["/proc/x".to_string()], vec!["/proc/y".to_string()])
        );
        let (m, _) = masked_and_readonly(&["/proc/x".into()], &[], true).unwrap();
        assert!(m.is_empty());
        assert!(masked_and_readonly(&["proc/x".into()], &[], false).is_err());
    }
}
