//! The built-in RuntimeDefault seccomp profile (data in `seccomp_default.json`), rendered
//! for a host architecture and a capability set like containerd's `seccomp.DefaultProfile`,
//! and parsing of Localhost profiles (OCI `LinuxSeccomp` JSON, as containerd reads them).

use std::collections::HashMap;
use std::sync::OnceLock;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompBuilder, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

use super::invalid;
use crate::error::Result;

const DEFAULT_PROFILE: &str = include_str!("seccomp_default.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Profile {
    // Accepted (profiles carry them) but never used.
    #[serde(default)]
    #[allow(dead_code)]
    comment: String,
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    arch_map: HashMap<String, Vec<Arch>>,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    // Accepted (profiles carry them) but never used.
    #[serde(default)]
    #[allow(dead_code)]
    comment: String,
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    if_caps: Vec<Capability>,
    #[serde(default)]
    unless_caps: Vec<Capability>,
}

impl Rule {
    fn applies(&self, caps: &Capabilities, arch: &str) -> bool {
        (self.arches.is_empty() || self.arches.iter().any(|a| a == arch))
            && self.if_caps.iter().all(|c| caps.contains(c))
            && !self.unless_caps.iter().any(|c| caps.contains(c))
    }
}

fn profile() -> &'static Profile {
    static PROFILE: OnceLock<Profile> = OnceLock::new();
    PROFILE.get_or_init(|| {
        // The data is compiled in and its parse is covered by a unit test.
        serde_json::from_str(DEFAULT_PROFILE).expect("seccomp_default.json is a valid profile")
    })
}

/// RuntimeDefault for containerd's default capability set on this host's architecture.
pub fn default_seccomp() -> LinuxSeccomp {
    let caps: Capabilities = super::caps::default_caps();
    default_seccomp_for(&caps, std::env::consts::ARCH)
}

/// RuntimeDefault for a process whose bounding set is `caps`, on host arch `arch`
/// (`std::env::consts::ARCH` names). Unknown arches get the native architecture only.
pub fn default_seccomp_for(caps: &Capabilities, arch: &str) -> LinuxSeccomp {
    let p = profile();
    let syscalls: Vec<LinuxSyscall> = p
        .rules
        .iter()
        .filter(|r| r.applies(caps, arch))
        .map(|r| {
            let mut s = LinuxSyscallBuilder::default()
                .names(r.names.clone())
                .action(r.action);
            if let Some(e) = r.errno_ret {
                s = s.errno_ret(e);
            }
            if !r.args.is_empty() {
                s = s.args(r.args.clone());
            }
            s.build().unwrap_or_default()
        })
        .collect();
    let mut b = LinuxSeccompBuilder::default()
        .default_action(p.default_action)
        .syscalls(syscalls);
    if let Some(e) = p.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    if let Some(arches) = p.arch_map.get(arch) {
        b = b.architectures(arches.clone());
    }
    b.build().unwrap_or_default()
}

/// A Localhost profile's contents, read by the caller from the node.
pub(crate) fn parse_localhost(path: &str, contents: &str) -> Result<LinuxSeccomp> {
    serde_json::from_str(contents).map_err(|e| {
        invalid(format!(
            "seccomp profile {path:?} is not a valid profile: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci_config::caps::default_caps;

    fn allowed(s: &LinuxSeccomp, name: &str) -> bool {
        s.syscalls().as_ref().unwrap().iter().any(|r| {
            r.names().iter().any(|n| n == name)
                && r.action() == LinuxSeccompAction::ScmpActAllow
                && r.args().is_none()
        })
    }

    #[test]
    fn embedded_profile_parses_and_has_the_basics() {
        let s = default_seccomp_for(&default_caps(), "x86_64");
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(s.default_errno_ret(), Some(1));
        assert_eq!(
            s.architectures().clone().unwrap(),
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        for name in [
            "read",
            "write",
            "execve",
            "openat",
            "exit_group",
            "arch_prctl",
            "chroot",
        ] {
            assert!(allowed(&s, name), "{name} allowed");
        }
        for name in [
            "mount",
            "unshare",
            "setns",
            "reboot",
            "kexec_load",
            "init_module",
            "bpf",
        ] {
            assert!(!allowed(&s, name), "{name} denied");
        }
        let clone3 = s
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.names() == &["clone3"])
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(38));
    }

    #[test]
    fn arch_and_caps_shape_the_profile() {
        let arm = default_seccomp_for(&default_caps(), "aarch64");
        assert_eq!(
            arm.architectures().clone().unwrap(),
            vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        );
        assert!(!allowed(&arm, "arch_prctl"));
        assert!(allowed(&arm, "cacheflush"));
        assert!(arm.architectures().is_some());
        assert!(default_seccomp_for(&default_caps(), "riscv64")
            .architectures()
            .is_none());

        let mut caps = default_caps();
        caps.insert(Capability::SysAdmin);
        caps.remove(&Capability::SysChroot);
        let admin = default_seccomp_for(&caps, "x86_64");
        assert!(allowed(&admin, "mount") && allowed(&admin, "clone3"));
        assert!(!allowed(&admin, "chroot"));
        // No errno rule for clone3 once CAP_SYS_ADMIN is held.
        assert!(!admin
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActErrno));
    }

    #[test]
    fn default_seccomp_matches_host_arch() {
        let s = default_seccomp();
        assert!(allowed(&s, "read"));
    }

    #[test]
    fn localhost_profiles_parse_or_fail_as_invalid_argument() {
        let ok = r#"{"defaultAction":"SCMP_ACT_LOG","architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#;
        let s = parse_localhost("/p.json", ok).unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActLog);
        assert!(matches!(
            parse_localhost("/p.json", "{not json"),
            Err(crate::error::Error::InvalidArgument(_))
        ));
    }
}
