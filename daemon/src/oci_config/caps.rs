//! Capabilities: containerd's default set for CRI containers, "ALL" add/drop and
//! individual add/drop by CRI name, rendered into the OCI capability sets.

use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder};

use super::{invalid, oci};
use crate::error::Result;
/// containerd's default capability set for CRI containers.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability Linux defines (through CAP_CHECKPOINT_RESTORE); runc skips the ones
/// the running kernel does not know.
const ALL_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A CRI capability name ("NET_ADMIN", "net_admin", "CAP_NET_ADMIN") → Capability.
pub(crate) fn parse_cap(name: &str) -> Result<Capability> {
    let up = name.trim().to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up);
    Capability::from_str(bare).map_err(|_| invalid(format!("unknown capability {name:?}")))
}

fn set_of(names: &[&str]) -> Capabilities {
    names.iter().filter_map(|n| parse_cap(n).ok()).collect()
}

pub(crate) fn default_caps() -> Capabilities {
    set_of(&DEFAULT_CAPABILITIES)
}

/// Every capability berthd itself can grant: the kernel's list limited to berthd's own
/// bounding set, as containerd's `WithAllCurrentCapabilities` (a node without, say,
/// CAP_SYS_RESOURCE cannot hand it to a privileged container).
pub(crate) fn all_caps() -> Capabilities {
    let bounding = current_bounding_set();
    let names: Vec<&str> = ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding.is_none_or(|b| b & (1u64 << bit) != 0))
        .map(|(_, n)| *n)
        .collect();
    set_of(&names)
}

/// `CapBnd` of this process (ALL_CAPABILITIES is in kernel bit order).
fn current_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The effective capability set: all caps when privileged (add/drop ignored, as
/// containerd); otherwise the default set, then "ALL" add/drop, then individual add/drop.
pub(crate) fn capability_set(
    caps: Option<&crate::workload::Capabilities>,
    privileged: bool,
) -> Result<Capabilities> {
    if privileged {
        return Ok(all_caps());
    }
    let mut set = default_caps();
    let Some(c) = caps else { return Ok(set) };
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    if c.add_capabilities.iter().any(is_all) {
        set = all_caps();
    }
    if c.drop_capabilities.iter().any(is_all) {
        set.clear();
    }
    for n in c.add_capabilities.iter().filter(|n| !is_all(n)) {
        set.insert(parse_cap(n)?);
    }
    for n in c.drop_capabilities.iter().filter(|n| !is_all(n)) {
        set.remove(&parse_cap(n)?);
    }
    for n in &c.add_ambient_capabilities {
        parse_cap(n)?; // validated; ambient caps are cleared like containerd 1.6 does
    }
    Ok(set)
}

/// Bounding, permitted and effective get the set; inheritable and ambient stay empty.
pub(crate) fn linux_capabilities(set: &Capabilities) -> Result<LinuxCapabilities> {
    oci(LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .permitted(set.clone())
        .effective(set.clone())
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn caps(add: &[&str], drop: &[&str]) -> crate::workload::Capabilities {
        crate::workload::Capabilities {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: vec![],
        }
    }

    #[test]
    fn constant_lists_all_parse() {
        assert_eq!(default_caps().len(), DEFAULT_CAPABILITIES.len());
        assert_eq!(set_of(&ALL_CAPABILITIES).len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn all_is_limited_to_our_bounding_set() {
        let bnd = current_bounding_set().expect("CapBnd readable");
        let expect = (0..ALL_CAPABILITIES.len())
            .filter(|b| bnd & (1u64 << b) != 0)
            .count();
        assert_eq!(all_caps().len(), expect);
        assert!(all_caps().is_subset(&set_of(&ALL_CAPABILITIES)));
    }

    #[test]
    fn capability_table() {
        let n_default = DEFAULT_CAPABILITIES.len();
        let n_all = all_caps().len();
        type Check = fn(&Capabilities) -> bool;
        let cases: Vec<(
            &str,
            Option<crate::workload::Capabilities>,
            bool,
            usize,
            Check,
        )> = vec![
            ("none", None, false, n_default, |s| {
                s.contains(&Capability::Chown)
            }),
            (
                "add one",
                Some(caps(&["NET_ADMIN"], &[])),
                false,
                n_default + 1,
                |s| s.contains(&Capability::NetAdmin),
            ),
            (
                "add with prefix, lowercase",
                Some(caps(&["cap_sys_time"], &[])),
                false,
                n_default + 1,
                |s| s.contains(&Capability::SysTime),
            ),
            (
                "drop one",
                Some(caps(&[], &["CHOWN"])),
                false,
                n_default - 1,
                |s| !s.contains(&Capability::Chown),
            ),
            ("add ALL", Some(caps(&["ALL"], &[])), false, n_all, |s| {
                s.contains(&Capability::SysAdmin)
            }),
            (
                "add ALL drop one",
                Some(caps(&["ALL"], &["SYS_ADMIN"])),
                false,
                n_all - 1,
                |s| !s.contains(&Capability::SysAdmin),
            ),
            ("drop ALL", Some(caps(&[], &["ALL"])), false, 0, |s| {
                s.is_empty()
            }),
            (
                "drop ALL add one",
                Some(caps(&["NET_BIND_SERVICE"], &["all"])),
                false,
                1,
                |s| s.contains(&Capability::NetBindService),
            ),
            (
                "privileged ignores drop",
                Some(caps(&[], &["ALL"])),
                true,
                n_all,
                |s| s.contains(&Capability::SysAdmin),
            ),
        ];
        for (what, c, privileged, len, check) in cases {
            let s = capability_set(c.as_ref(), privileged).unwrap();
            assert_eq!(s.len(), len, "{what}");
            assert!(check(&s), "{what}");
        }
    }

    #[test]
    fn unknown_capabilities_are_invalid() {
        for c in [
            caps(&["NET_WIZARD"], &[]),
            caps(&[], &["CAP_"]),
            caps(&[""], &[]),
        ] {
            assert!(matches!(
                capability_set(Some(&c), false),
                Err(Error::InvalidArgument(_))
            ));
        }
        let amb = crate::workload::Capabilities {
            add_ambient_capabilities: vec!["BOGUS".into()],
            ..Default::default()
        };
        assert!(capability_set(Some(&amb), false).is_err());
    }

    #[test]
    fn capability_sets_shape() {
        let lc = linux_capabilities(&default_caps()).unwrap();
        assert_eq!(
            lc.bounding().as_ref().unwrap().len(),
            DEFAULT_CAPABILITIES.len()
        );
        assert_eq!(lc.bounding(), lc.effective());
        assert_eq!(lc.bounding(), lc.permitted());
        assert!(lc.inheritable().as_ref().unwrap().is_empty());
        assert!(lc.ambient().as_ref().unwrap().is_empty());
    }
}
