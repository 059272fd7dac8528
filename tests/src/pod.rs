//! The one pod handle of the berthd suites: a running pod sandbox with its own CRI client,
//! running containers in it (to their exit, with their log decoded) and removing it.

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::berthd::Berthd;
use crate::cri::Rs;
use crate::cri_log;

/// How long `wait_exit` waits for a container to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

/// A running pod sandbox in a berthd.
pub struct Pod {
    pub rs: Rs,
    pub id: String,
    pub cfg: cri::PodSandboxConfig,
    /// berthd's log file, quoted in errors.
    berthd_log: PathBuf,
}

/// A container that ran to its exit, with what it wrote.
#[derive(Debug)]
pub struct Exited {
    pub id: String,
    pub status: cri::ContainerStatus,
    /// `status.exit_code`.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Both streams in the order written.
    pub log: String,
}

impl Pod {
    /// RunPodSandbox of `cfg` on `d` (through a client of the pod's own).
    pub async fn run(d: &Berthd, cfg: cri::PodSandboxConfig) -> Result<Pod> {
        let (mut rs, _) = d.client().await?;
        let id = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox; berthd log:\n{}", d.log()))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            rs,
            id,
            cfg,
            berthd_log: d.log_path(),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.berthd_log).unwrap_or_default()
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

    /// CreateContainer in this pod; the status as berthd answered it.
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
    pub async fn start(&self, cfg: cri::ContainerConfig) -> Result<String> {
        let name = cfg.metadata.as_ref().map(|m| m.name.clone());
        let id = self
            .create(cfg)
            .await
            .with_context(|| format!("CreateContainer {name:?}; berthd log:\n{}", self.log()))?;
        self.rs
            .clone()
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {name:?}; berthd log:\n{}", self.log()))?;
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

    /// Waits (30 s at most) for the container to exit and reads its CRI log.
    pub async fn wait_exit(&self, id: &str) -> Result<Exited> {
        let deadline = Instant::now() + EXIT_WITHIN;
        loop {
            let s = self.container_status(id).await?;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                let raw = read_log(&self.cfg, &s.log_path);
                return Ok(Exited {
                    id: id.to_string(),
                    code: s.exit_code,
                    stdout: cri_log::stream(&raw, "stdout"),
                    stderr: cri_log::stream(&raw, "stderr"),
                    log: cri_log::text(&raw),
                    status: s,
                });
            }
            if Instant::now() >= deadline {
                bail!("container {id} did not exit within {EXIT_WITHIN:?}: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Create, start, wait for the exit, read the log; the container stays.
    pub async fn run_to_exit(&self, cfg: cri::ContainerConfig) -> Result<Exited> {
        let id = self.start(cfg).await?;
        self.wait_exit(&id).await
    }

    /// `run_to_exit`, then RemoveContainer (which frees the container's name).
    pub async fn run_and_remove(&self, cfg: cri::ContainerConfig) -> Result<Exited> {
        let e = self.run_to_exit(cfg).await?;
        self.rs
            .clone()
            .remove_container(cri::RemoveContainerRequest {
                container_id: e.id.clone(),
            })
            .await?;
        Ok(e)
    }

    /// All containers berthd lists (any pod).
    pub async fn list_all(&self) -> Result<Vec<cri::Container>> {
        Ok(self
            .rs
            .clone()
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers)
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

/// The container log: ContainerStatus.log_path is absolute in berthd; else it is relative
/// to the pod's log directory. A missing log reads as empty.
fn read_log(pod: &cri::PodSandboxConfig, log_path: &str) -> String {
    let p = if Path::new(log_path).is_absolute() {
        PathBuf::from(log_path)
    } else {
        Path::new(&pod.log_directory).join(log_path)
    };
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Stops and removes every pod of the berthd behind `rs`.
pub async fn remove_all(rs: &Rs) -> Result<()> {
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
