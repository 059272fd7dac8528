//! Security context → spec: seccomp (RuntimeDefault / Localhost / Unconfined), AppArmor,
//! and masked / read-only /proc paths.

use std::path::PathBuf;

use oci_spec::runtime::{Capabilities, LinuxSeccomp};

use super::{invalid, seccomp};
use crate::error::Result;
use crate::workload::Profile;

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

/// Not set means unconfined, as containerd 1.6 without `unset_seccomp_profile`.
pub(crate) fn seccomp_choice(profile: Option<&Profile>) -> Result<SeccompChoice> {
    Ok(match profile {
        None | Some(Profile::Unconfined) => SeccompChoice::Unconfined,
        Some(Profile::RuntimeDefault) => SeccompChoice::RuntimeDefault,
        Some(Profile::Localhost(p)) => SeccompChoice::Localhost(localhost_path(p)?),
    })
}

fn localhost_path(p: &str) -> Result<PathBuf> {
    super::clean_abs_path("seccomp localhost profile", p)
}

/// The Localhost seccomp profile file a container security context names, if any: the
/// caller reads it and passes its contents as `ContainerOpts::localhost_profile`.
pub fn seccomp_localhost_path(profile: Option<&Profile>) -> Result<Option<PathBuf>> {
    Ok(match seccomp_choice(profile)? {
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

/// `process.apparmorProfile`, as containerd: unset or RuntimeDefault → the default
/// profile (none when privileged); Unconfined → none; Localhost → that profile name.
/// Without AppArmor on the host only Localhost is an error. `default_profile` None means
/// RuntimeDefault applies no profile.
pub(crate) fn apparmor_profile(
    profile: Option<&Profile>,
    privileged: bool,
    available: bool,
    default_profile: Option<&str>,
) -> Result<Option<String>> {
    enum Want {
        Default,
        Unconfined,
        Named(String),
    }
    let want = match profile {
        None | Some(Profile::RuntimeDefault) => Want::Default,
        Some(Profile::Unconfined) => Want::Unconfined,
        Some(Profile::Localhost(name)) if name.is_empty() => {
            return Err(invalid("apparmor Localhost profile without a name"))
        }
        Some(Profile::Localhost(name)) => Want::Named(name.clone()),
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

    fn local(p: &str) -> Option<Profile> {
        Some(Profile::Localhost(p.into()))
    }

    #[test]
    fn seccomp_choice_table() {
        use SeccompChoice::*;
        let cases: Vec<(Option<Profile>, SeccompChoice)> = vec![
            (None, Unconfined),
            (Some(Profile::Unconfined), Unconfined),
            (Some(Profile::RuntimeDefault), RuntimeDefault),
            (local("/p/b.json"), Localhost(PathBuf::from("/p/b.json"))),
            (local("/p//c.json"), Localhost(PathBuf::from("/p/c.json"))),
        ];
        for (p, want) in cases {
            assert_eq!(seccomp_choice(p.as_ref()).unwrap(), want, "{p:?}");
        }
        for bad in ["", "relative.json", "/p/../etc/x.json"] {
            assert!(
                matches!(
                    seccomp_choice(local(bad).as_ref()),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad:?}"
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
        let l = SeccompChoice::Localhost(PathBuf::from("/p.json"));
        assert!(matches!(
            seccomp_spec(&l, false, &caps, None),
            Err(Error::InvalidArgument(_))
        ));
        let s = seccomp_spec(
            &l,
            false,
            &caps,
            Some(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#),
        )
        .unwrap()
        .unwrap();
        assert!(s.syscalls().is_none());
        assert_eq!(
            seccomp_localhost_path(local("/p.json").as_ref()).unwrap(),
            Some(PathBuf::from("/p.json"))
        );
        assert_eq!(
            seccomp_localhost_path(Some(&Profile::RuntimeDefault)).unwrap(),
            None
        );
    }

    #[test]
    fn apparmor_table() {
        let d = Some(APPARMOR_DEFAULT_PROFILE);
        // (profile, privileged, apparmor available, expected profile)
        type Case<'a> = (Option<Profile>, bool, bool, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (None, false, true, d),
            (Some(Profile::RuntimeDefault), false, true, d),
            (Some(Profile::RuntimeDefault), true, true, None),
            (None, false, false, None),
            (Some(Profile::Unconfined), false, true, None),
            (local("my-prof"), false, true, Some("my-prof")),
            (local("my-prof"), true, true, Some("my-prof")),
        ];
        for (p, privileged, available, want) in cases {
            let got = apparmor_profile(p.as_ref(), privileged, available, d).unwrap();
            assert_eq!(
                got.as_deref(),
                want,
                "{p:?} privileged={privileged} available={available}"
            );
        }
        assert!(apparmor_profile(local("x").as_ref(), false, false, d).is_err());
        assert!(apparmor_profile(local("").as_ref(), false, true, d).is_err());
        assert_eq!(apparmor_profile(None, false, true, None).unwrap(), None);
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
