//! Helpers for berthd suites that run a container to its exit and read what it printed:
//! image import, a pod handle, `run_to_exit`, CRI log decoding and capability masks.

use anyhow::{ensure, Context, Result};
use k8s_cri::v1 as cri;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

use crate::berthd::Berthd;
use crate::cri::{pod_config, RuntimeServiceClient};
use crate::image;

/// Imports the busybox test image into a configured (not yet started) berthd.
pub fn import_busybox(d: &Berthd) -> Result<()> {
    crate::berthd_feat::import(d, &image::busybox(d.dir.path())?)
}

/// The text a container wrote, from its CRI log (`<time> <stream> <P|F> <text>` lines):
/// both streams in file order, partial lines joined.
pub fn decode_cri_log(raw: &str) -> String {
    let mut out = String::new();
    for line in raw.lines() {
        let mut f = line.splitn(4, ' ');
        let (_ts, _stream, tag) = (f.next(), f.next(), f.next());
        let text = f.next().unwrap_or("");
        out.push_str(text);
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

/// How a container ended.
#[derive(Debug, Clone)]
pub struct Exit {
    pub code: i32,
    /// Decoded log text (stdout and stderr).
    pub log: String,
}

/// A running pod sandbox in a berthd, with a CRI client.
pub struct Pod {
    pub rs: RuntimeServiceClient<Channel>,
    pub id: String,
    pub cfg: cri::PodSandboxConfig,
    pub logs: PathBuf,
}

impl Pod {
    /// Runs a host-network pod named `name` (privileged when asked) logging under the
    /// berthd's temp dir.
    pub async fn run(d: &Berthd, name: &str, privileged: bool) -> Result<Pod> {
        let (mut rs, _) = d.client().await?;
        let logs = d.dir.path().join("logs").join(name);
        let mut cfg = pod_config(name, &logs);
        if let Some(sc) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.privileged = privileged;
        }
        let id = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox; log:\n{}", d.log()))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod { rs, id, cfg, logs })
    }

    pub async fn create(&mut self, cfg: cri::ContainerConfig) -> Result<String, tonic::Status> {
        Ok(self
            .rs
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(cfg),
                sandbox_config: Some(self.cfg.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    /// Creates, starts and waits (30 s) for the container to exit; returns its exit code
    /// and log text, and removes it.
    pub async fn run_to_exit(&mut self, cfg: cri::ContainerConfig) -> Result<Exit> {
        let name = cfg.metadata.as_ref().map(|m| m.name.clone());
        let log_file = self.logs.join(&cfg.log_path);
        let id = self
            .create(cfg)
            .await
            .with_context(|| format!("CreateContainer {name:?}"))?;
        self.rs
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {name:?}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let s = self
                .rs
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .context("no status")?;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                break s;
            }
            ensure!(
                Instant::now() < deadline,
                "container {name:?} did not exit within 30 s: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let raw = std::fs::read_to_string(&log_file)
            .with_context(|| format!("read {}", log_file.display()))?;
        self.rs
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        Ok(Exit {
            code: status.exit_code,
            log: decode_cri_log(&raw),
        })
    }

    /// All containers berthd lists (any pod).
    pub async fn list_all(&mut self) -> Result<Vec<cri::Container>> {
        Ok(self
            .rs
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers)
    }

    /// Stops and removes the pod.
    pub async fn remove(mut self) -> Result<()> {
        self.rs
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            })
            .await?;
        self.rs
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            })
            .await?;
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_and_caps_decode() {
        let raw = "2024-01-01T00:00:00.1Z stdout P ab\n2024-01-01T00:00:00.2Z stdout F c d\n\
                   2024-01-01T00:00:00.3Z stderr F e\n";
        assert_eq!(decode_cri_log(raw), "abc d\ne\n");
        let s = caps_from_hex("00000000a80425fb").unwrap();
        assert_eq!(s, cap_set(&CONTAINERD_DEFAULT_CAPS));
        assert!(caps_from_hex("0").unwrap().is_empty());
        assert_eq!(
            status_field("CapEff:\t00ff\nX: 1\n", "CapEff"),
            Some("00ff")
        );
    }
}
