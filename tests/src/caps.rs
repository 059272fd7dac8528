//! Capability sets as a container sees them in `/proc/<pid>/status`: masks to names,
//! containerd's default set, and reading `Key:\tvalue` fields.

use anyhow::{Context, Result};
use std::collections::BTreeSet;

/// Capability numbers → names (without `CAP_`), as in linux/capability.h.
pub const CAP_NAMES: [&str; 41] = [
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

/// containerd's default capability set for CRI containers.
pub const CONTAINERD_DEFAULT_CAPS: [&str; 14] = [
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

/// A `/proc/<pid>/status` capability mask (hex) → names; unknown bits become `bit<N>`.
pub fn caps_from_hex(hex: &str) -> Result<BTreeSet<String>> {
    let mask = u64::from_str_radix(hex.trim(), 16).with_context(|| format!("cap mask {hex:?}"))?;
    Ok((0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            CAP_NAMES
                .get(b)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("bit{b}"))
        })
        .collect())
}

/// The value of a `Key:\tvalue` line of a /proc status dump inside `text`.
pub fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Names → set.
pub fn cap_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The capability set in `field` (`CapEff`, `CapBnd`, ...) of a `/proc/self/status` a
/// container printed into `log`.
pub fn cap_field(log: &str, field: &str) -> Result<BTreeSet<String>> {
    let hex = status_field(log, field).with_context(|| format!("no {field} in:\n{log}"))?;
    caps_from_hex(hex)
}

/// `field` of the test process' own `/proc/self/status` (what the runtime itself holds).
pub fn own_status_field(field: &str) -> Result<String> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    Ok(status_field(&s, field)
        .context(field.to_string())?
        .to_string())
}

/// A CRI capability change: `add` and `drop` (names without `CAP_`, or `ALL`).
pub fn caps(add: &[&str], drop: &[&str]) -> Option<berth_cri::v1::Capability> {
    Some(berth_cri::v1::Capability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_status_fields_decode() {
        let s = caps_from_hex("00000000a80425fb").unwrap();
        assert_eq!(s, cap_set(&CONTAINERD_DEFAULT_CAPS));
        assert!(caps_from_hex("0").unwrap().is_empty());
        assert_eq!(
            status_field("CapEff:\t00ff\nX: 1\n", "CapEff"),
            Some("00ff")
        );
    }
}
