//! Helpers for the berthd feature suite: image import, a private CNI bridge, running a
//! container to its exit and reading its CRI log, and finding a container's process and
//! cgroup from the host.

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

use crate::berthd::{binary, Berthd};
use crate::cri::RuntimeServiceClient;
use crate::image::ImageTar;
use crate::procs;

/// `berthd image import` of `tar` into a configured (not yet started) berthd.
pub fn import(d: &Berthd, tar: &ImageTar) -> Result<()> {
    let out = std::process::Command::new(binary()?)
        .arg("--config")
        .arg(&d.config)
        .args(["image", "import"])
        .arg(&tar.path)
        .output()?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(tar.name),
        "import {}: {}{}",
        tar.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Removes the test's bridge (and its portmap chains' target) even when the test fails.
pub struct Bridge {
    pub name: String,
    /// First three octets of the /24, e.g. "10.234.57".
    pub prefix: String,
}

impl Bridge {
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Writes a bridge + portmap conflist (own bridge name and /24, ipMasq off) into `d`'s
/// CNI dir. `slot` (0..=9) keeps tests of one process apart.
pub fn cni_bridge(d: &Berthd, slot: u32) -> Result<Bridge> {
    let n = std::process::id() % 200 + 20;
    let bridge = Bridge {
        name: format!("bf{slot}x{n}"),
        prefix: format!("10.{}.{n}", 240 + slot),
    };
    let ipam = d.dir.path().join("ipam");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "berth-feat",
        "plugins": [
            {"type": "bridge", "bridge": bridge.name, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "dataDir": ipam,
                      "ranges": [[{"subnet": format!("{}.0/24", bridge.prefix)}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(
        d.cni_dir.join("10-berth-feat.conflist"),
        conflist.to_string(),
    )?;
    Ok(bridge)
}

/// Makes `cfg` a pod-network (CNI) pod.
pub fn pod_network(cfg: &mut cri::PodSandboxConfig) {
    ns_options(cfg).network = cri::NamespaceMode::Pod as i32;
}

/// The pod's namespace options, created when absent.
pub fn ns_options(cfg: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
}

/// The stdout of a CRI log (`<time> <stream> <P|F> <text>`), partial lines joined.
pub fn stdout_of(log: &str) -> String {
    stream_of(log, "stdout")
}

/// One stream of a CRI log, partial lines joined.
pub fn stream_of(log: &str, stream: &str) -> String {
    let mut out = String::new();
    for line in log.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, s, tag) = (parts.next(), parts.next(), parts.next());
        let text = parts.next().unwrap_or("");
        if s != Some(stream) {
            continue;
        }
        out.push_str(text);
        if tag == Some("F") {
            out.push('\n');
        }
    }
    out
}

/// A pod the test runs containers in.
pub struct Pod {
    pub rs: RuntimeServiceClient<Channel>,
    pub id: String,
    pub cfg: cri::PodSandboxConfig,
}

/// A container that ran to its exit.
#[derive(Debug)]
pub struct Exited {
    pub id: String,
    pub status: cri::ContainerStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Pod {
    pub async fn run(
        d: &Berthd,
        rs: &RuntimeServiceClient<Channel>,
        cfg: cri::PodSandboxConfig,
    ) -> Result<Pod> {
        let mut rs = rs.clone();
        let id = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox; berthd log:\n{}", d.log()))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod { rs, id, cfg })
    }

    /// PodSandboxStatus with its verbose info parsed.
    pub async fn status(&self) -> Result<(cri::PodSandboxStatus, serde_json::Value)> {
        let st = self
            .rs
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: self.id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info = st
            .info
            .get("info")
            .map(|i| serde_json::from_str(i))
            .transpose()?
            .unwrap_or(serde_json::Value::Null);
        Ok((st.status.context("no pod status")?, info))
    }

    /// The pod's IP from PodSandboxStatus.
    pub async fn ip(&self) -> Result<String> {
        let (s, _) = self.status().await?;
        Ok(s.network.map(|n| n.ip).unwrap_or_default())
    }

    /// The infra process' pid from the verbose status.
    pub async fn infra_pid(&self) -> Result<i32> {
        let (_, info) = self.status().await?;
        Ok(info["pid"].as_i64().context("no pid in pod info")? as i32)
    }

    pub async fn create(
        &self,
        cfg: cri::ContainerConfig,
    ) -> std::result::Result<String, tonic::Status> {
        Ok(self
            .rs
            .clone()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(cfg),
                sandbox_config: Some(self.cfg.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    /// Create + start; returns the container id.
    pub async fn start(&self, d: &Berthd, cfg: cri::ContainerConfig) -> Result<String> {
        let name = cfg.metadata.as_ref().map(|m| m.name.clone());
        let id = self
            .create(cfg)
            .await
            .with_context(|| format!("CreateContainer {name:?}; berthd log:\n{}", d.log()))?;
        self.rs
            .clone()
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {name:?}; berthd log:\n{}", d.log()))?;
        Ok(id)
    }

    pub async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        self.rs
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no container status")
    }

    /// Waits (bounded) for the container to exit and reads its CRI log.
    pub async fn wait_exit(&self, id: &str) -> Result<Exited> {
        for _ in 0..400 {
            let s = self.container_status(id).await?;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                // The shim writes the log before it reports the exit; allow a short settle.
                let log = read_log(&self.cfg, &s.log_path);
                return Ok(Exited {
                    id: id.to_string(),
                    stdout: stdout_of(&log),
                    stderr: stream_of(&log, "stderr"),
                    status: s,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("container {id} did not exit within 20 s")
    }

    /// Create, start, wait for the exit, read the log.
    pub async fn run_to_exit(&self, d: &Berthd, cfg: cri::ContainerConfig) -> Result<Exited> {
        let id = self.start(d, cfg).await?;
        self.wait_exit(&id).await
    }

    /// Stop and remove the pod (and so its containers).
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

/// The container log: ContainerStatus.log_path is absolute in berthd; fall back to the pod dir.
fn read_log(pod: &cri::PodSandboxConfig, log_path: &str) -> String {
    let p = if Path::new(log_path).is_absolute() {
        PathBuf::from(log_path)
    } else {
        Path::new(&pod.log_directory).join(log_path)
    };
    std::fs::read_to_string(p).unwrap_or_default()
}

fn ppid_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The pid of the container process running exactly `argv` as a child of one of `d`'s shims.
pub fn container_pid(d: &Berthd, argv: &[&str]) -> Option<i32> {
    let shims = procs::shims_of(&d.socket.display().to_string());
    procs::all().into_iter().find_map(|p| {
        let same = p.argv.len() == argv.len() && p.argv.iter().zip(argv).all(|(a, b)| a == b);
        let under = ppid_of(p.pid).is_some_and(|pp| shims.iter().any(|s| s.pid == pp));
        (same && under).then_some(p.pid)
    })
}

/// The cgroup v1 directory of `pid` for `controller` (e.g. "memory", "cpu", "cpuset"),
/// from /proc/<pid>/cgroup and the host's hierarchy under /sys/fs/cgroup.
pub fn cgroup_dir(pid: i32, controller: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next(), f.next());
        let (Some(ctrls), Some(path)) = (ctrls, path) else {
            continue;
        };
        if ctrls.split(',').any(|c| c == controller) {
            let mount = ["/sys/fs/cgroup", controller].iter().collect::<PathBuf>();
            let mount = if mount.exists() {
                mount
            } else {
                Path::new("/sys/fs/cgroup").join(ctrls)
            };
            return Ok(mount.join(path.trim_start_matches('/')));
        }
    }
    bail!("no {controller} cgroup for pid {pid}:\n{text}")
}

/// Reads one cgroup file of `pid`, trimmed.
pub fn cgroup_value(pid: i32, controller: &str, file: &str) -> Result<String> {
    let p = cgroup_dir(pid, controller)?.join(file);
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_string())
}

/// The test's own /proc/self/ns/<ns> link ("net:[4026531992]").
pub fn own_ns(ns: &str) -> Result<String> {
    Ok(std::fs::read_link(format!("/proc/self/ns/{ns}"))?
        .display()
        .to_string())
}

/// `pid`'s /proc/<pid>/ns/<ns> link.
pub fn ns_of(pid: i32, ns: &str) -> Result<String> {
    Ok(std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))?
        .display()
        .to_string())
}

/// Stops and removes every pod of the berthd behind `rs` (a test's cleanup on any path).
pub async fn remove_all_pods(rs: &RuntimeServiceClient<Channel>) -> Result<()> {
    let mut rs = rs.clone();
    let items = rs
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    for p in items {
        rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await?;
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id,
        })
        .await?;
    }
    Ok(())
}
