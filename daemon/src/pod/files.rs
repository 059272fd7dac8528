//! The per-pod files every container of the pod mounts: /etc/hostname, /etc/hosts and
//! /etc/resolv.conf, generated from the PodSpec, and the pod's /dev/shm tmpfs.

use std::path::{Path, PathBuf};

use crate::workload::PodSpec;

use crate::error::{Error, Result};

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::write(dir.join(name), text)
        .map_err(|e| Error::io_at(format!("write {name}"), &dir.join(name), e))
}

/// The hostname a pod gets: its configured hostname, else the host's for host-network pods.
pub fn hostname(cfg: &PodSpec, host_network: bool) -> String {
    if host_network {
        return std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
    }
    cfg.hostname.clone()
}

/// Writes hostname, hosts and resolv.conf into `dir`.
pub fn write_all(dir: &Path, cfg: &PodSpec, host_network: bool) -> Result<()> {
    let host = hostname(cfg, host_network);
    write(dir, "hostname", &format!("{host}\n"))?;
    let hosts = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n".to_string()
    };
    write(dir, "hosts", &hosts)?;
    write(dir, "resolv.conf", &resolv_conf(cfg)?)
}

/// The size of a pod's /dev/shm: 64 MiB, as containerd and Docker give one.
const SHM_OPTIONS: &str = "mode=1777,size=65536k";

/// Where a pod's /dev/shm tmpfs is mounted, in its files dir.
pub fn shm_dir(files: &Path) -> PathBuf {
    files.join("shm")
}

/// Mounts the pod's /dev/shm: one tmpfs every container of the pod binds, so POSIX
/// shared memory (shm_open) works between them as SysV IPC does in their shared IPC
/// namespace. nosuid,nodev,noexec as containerd mounts it (a user-namespaced container's
/// bind keeps these locked flags). Blocking (a mount): off the async workers.
pub fn mount_shm(files: &Path) -> Result<PathBuf> {
    use nix::mount::{mount, MsFlags};
    let dir = shm_dir(files);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io_at("mkdir shm", &dir, e))?;
    mount(
        Some("shm"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(SHM_OPTIONS),
    )
    .map_err(|e| Error::io_at("mount the pod's /dev/shm", &dir, e.into()))?;
    Ok(dir)
}

/// Unmounts the pod's /dev/shm (its memory is freed); not mounted or gone is fine.
pub fn unmount_shm(files: &Path) {
    let dir = shm_dir(files);
    match nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "unmounting a pod's /dev/shm"),
    }
}

/// resolv.conf from the pod's DNSConfig, or the host's when it has none.
pub fn resolv_conf(cfg: &PodSpec) -> Result<String> {
    let Some(dns) = cfg
        .dns
        .as_ref()
        .filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())
    else {
        return Ok(std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    };
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        if s.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::InvalidArgument(format!(
                "DNS server {s:?} is not an IP address"
            )));
        }
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Dns;

    #[test]
    fn resolv_conf_from_dns_config() {
        let cfg = PodSpec {
            dns: Some(Dns {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&cfg).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let bad = PodSpec {
            dns: Some(Dns {
                servers: vec!["nope".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(resolv_conf(&bad).is_err());
    }

    #[test]
    fn files_are_written() {
        let d = tempfile::tempdir().unwrap();
        let cfg = PodSpec {
            hostname: "web-1".into(),
            ..Default::default()
        };
        write_all(d.path(), &cfg, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("hostname")).unwrap(),
            "web-1\n"
        );
        assert!(std::fs::read_to_string(d.path().join("hosts"))
            .unwrap()
            .contains("localhost"));
    }
}
