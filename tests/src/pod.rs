//! The one pod handle of the berthd suites: a running pod sandbox with its own CRI client,
//! running containers in it (to their exit, with their log decoded) and removing it.

use anyhow::{Context, Result};
use berth_cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::berthd::Berthd;
use crate::cri::Rs;
use crate::cri_calls::CriCalls;
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

impl Exited {
    /// The value of a `key=value` line the container printed.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.log
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

impl Pod {
    /// RunPodSandbox of `cfg` on `d` (through a client of the pod's own).
    pub async fn run(d: &Berthd, cfg: cri::PodSandboxConfig) -> Result<Pod> {
        let (rs, _) = d.client().await?;
        let id = rs
            .run_pod(&cfg)
            .await
            .with_context(|| format!("RunPodSandbox; berthd log:\n{}", d.log()))?;
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
        let st = self.rs.pod_status(&self.id, true).await?;
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
        self.rs.create_ctr(&self.id, &self.cfg, cfg).await
    }

    /// Create + start; returns the container id.
    pub async fn start(&self, cfg: cri::ContainerConfig) -> Result<String> {
        self.rs
            .run_ctr(&self.id, &self.cfg, cfg)
            .await
            .with_context(|| format!("berthd log:\n{}", self.log()))
    }

    /// A busybox container `name` logging `line-1`, `line-2`, ... every 50 ms (for log
    /// rotation checks); returns its id.
    pub async fn start_line_counter(&self, name: &str) -> Result<String> {
        let script = "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.05; done";
        self.start(crate::cri::container_config(
            name,
            crate::image::BUSYBOX_IMAGE,
            &["sh", "-c", script],
        ))
        .await
    }

    pub async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        Ok(self.rs.ctr_status(id).await?)
    }

    /// ExecSync of `cmd` in container `id` (10 s).
    pub async fn exec(&self, id: &str, cmd: &[&str]) -> Result<cri::ExecSyncResponse> {
        Ok(self.rs.exec_sync_of(id, cmd, 10).await?)
    }

    /// Waits (30 s at most) for the container to exit and reads its CRI log.
    pub async fn wait_exit(&self, id: &str) -> Result<Exited> {
        let s = self
            .rs
            .wait_ctr_state(id, cri::ContainerState::ContainerExited, EXIT_WITHIN)
            .await?;
        let raw = read_log(&self.cfg, &s.log_path);
        Ok(Exited {
            id: id.to_string(),
            code: s.exit_code,
            stdout: cri_log::stream(&raw, "stdout"),
            stderr: cri_log::stream(&raw, "stderr"),
            log: cri_log::text(&raw),
            status: s,
        })
    }

    /// Create, start, wait for the exit, read the log; the container stays.
    pub async fn run_to_exit(&self, cfg: cri::ContainerConfig) -> Result<Exited> {
        let id = self.start(cfg).await?;
        self.wait_exit(&id).await
    }

    /// `run_to_exit`, then RemoveContainer (which frees the container's name).
    pub async fn run_and_remove(&self, cfg: cri::ContainerConfig) -> Result<Exited> {
        let e = self.run_to_exit(cfg).await?;
        self.rs.remove_ctr(&e.id).await?;
        Ok(e)
    }

    /// All containers berthd lists (any pod).
    pub async fn list_all(&self) -> Result<Vec<cri::Container>> {
        Ok(self.rs.list_ctrs(None).await?)
    }

    /// Stop and remove the pod (and so its containers).
    /// The same pod over another connection (a restarted berthd's).
    pub fn reconnect(self, rs: Rs) -> Pod {
        Pod { rs, ..self }
    }

    pub async fn remove(self) -> Result<()> {
        Ok(self.rs.stop_and_remove_pod(&self.id).await?)
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
    for p in rs.list_pods(None).await? {
        rs.stop_and_remove_pod(&p.id).await?;
    }
    Ok(())
}
