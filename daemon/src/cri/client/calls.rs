//! Short forms of the CRI runtime calls berthctl and the black-box suites make again and
//! again (pods, containers, ExecSync, status polling) on any runtime client, berthd's or
//! containerd's: one line a call instead of a request struct, the `tonic::Status` kept
//! for the error-code checks.

use anyhow::{bail, Context, Result};
use berth_cri::v1 as cri;
use std::time::{Duration, Instant};
use tonic::Status;

use super::Rs;

/// A call's answer, with the status the runtime gave on failure.
pub type Answer<T> = std::result::Result<T, Status>;

/// The calls, on a runtime service client (each clones the client, so `&self` will do).
#[allow(async_fn_in_trait)]
pub trait CriCalls {
    /// RunPodSandbox with the default handler; the pod id.
    async fn run_pod(&self, cfg: &cri::PodSandboxConfig) -> Answer<String> {
        self.run_pod_with(cfg, "").await
    }
    /// RunPodSandbox with `handler`; the pod id.
    async fn run_pod_with(&self, cfg: &cri::PodSandboxConfig, handler: &str) -> Answer<String>;
    /// PodSandboxStatus (the whole answer, with its verbose info).
    async fn pod_status(&self, id: &str, verbose: bool) -> Answer<cri::PodSandboxStatusResponse>;
    /// The pod's state (`cri::PodSandboxState` as i32).
    async fn pod_state(&self, id: &str) -> Result<i32> {
        let st = self.pod_status(id, false).await?;
        Ok(st.status.context("no pod status")?.state)
    }
    /// The pod's verbose info, parsed.
    async fn pod_info(&self, id: &str) -> Result<serde_json::Value> {
        let st = self.pod_status(id, true).await?;
        Ok(serde_json::from_str(
            st.info.get("info").context("no verbose pod info")?,
        )?)
    }
    async fn stop_pod(&self, id: &str) -> Answer<()>;
    async fn remove_pod(&self, id: &str) -> Answer<()>;
    /// StopPodSandbox, then RemovePodSandbox.
    async fn stop_and_remove_pod(&self, id: &str) -> Answer<()> {
        self.stop_pod(id).await?;
        self.remove_pod(id).await
    }
    async fn list_pods(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Answer<Vec<cri::PodSandbox>>;

    /// CreateContainer of `cfg` in pod `pod` (configured as `pod_cfg`); the container id.
    async fn create_ctr(
        &self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Answer<String>;
    async fn start_ctr(&self, id: &str) -> Answer<()>;
    /// CreateContainer + StartContainer; the container id.
    async fn run_ctr(
        &self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Result<String> {
        let name = cfg.metadata.as_ref().map(|m| m.name.clone());
        let id = self
            .create_ctr(pod, pod_cfg, cfg)
            .await
            .with_context(|| format!("CreateContainer {name:?}"))?;
        self.start_ctr(&id)
            .await
            .with_context(|| format!("StartContainer {name:?}"))?;
        Ok(id)
    }
    async fn stop_ctr(&self, id: &str, timeout: i64) -> Answer<()>;
    async fn remove_ctr(&self, id: &str) -> Answer<()>;
    /// ContainerStatus (not verbose).
    async fn ctr_status(&self, id: &str) -> Answer<cri::ContainerStatus>;
    /// Polls ContainerStatus every 50 ms until the container is in `state`
    /// (`cri::ContainerState`), for `within` at most.
    async fn wait_ctr_state(
        &self,
        id: &str,
        state: cri::ContainerState,
        within: Duration,
    ) -> Result<cri::ContainerStatus> {
        let deadline = Instant::now() + within;
        loop {
            let s = self.ctr_status(id).await?;
            if s.state == state as i32 {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!("container {id} not {state:?} within {within:?}: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    async fn list_ctrs(&self, filter: Option<cri::ContainerFilter>) -> Answer<Vec<cri::Container>>;
    /// ExecSync of `cmd` in container `id`, `timeout` seconds.
    async fn exec_sync_of(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Answer<cri::ExecSyncResponse>;
    /// UpdateContainerResources of container `id` setting only its memory limit.
    async fn update_memory_limit(&self, id: &str, bytes: i64) -> Answer<()>;
    /// Exec's streaming URL for `cmd` in container `id` (stdout always; stderr unless a
    /// terminal).
    async fn exec_url(&self, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> Result<String>;
}

impl CriCalls for Rs {
    async fn run_pod_with(&self, cfg: &cri::PodSandboxConfig, handler: &str) -> Answer<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .clone()
            .run_pod_sandbox(req)
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    async fn pod_status(&self, id: &str, verbose: bool) -> Answer<cri::PodSandboxStatusResponse> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose,
        };
        Ok(self.clone().pod_sandbox_status(req).await?.into_inner())
    }

    async fn stop_pod(&self, id: &str) -> Answer<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.clone().stop_pod_sandbox(req).await.map(drop)
    }

    async fn remove_pod(&self, id: &str) -> Answer<()> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.clone().remove_pod_sandbox(req).await.map(drop)
    }

    async fn list_pods(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Answer<Vec<cri::PodSandbox>> {
        let req = cri::ListPodSandboxRequest { filter };
        Ok(self.clone().list_pod_sandbox(req).await?.into_inner().items)
    }

    async fn create_ctr(
        &self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Answer<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        };
        Ok(self
            .clone()
            .create_container(req)
            .await?
            .into_inner()
            .container_id)
    }

    async fn start_ctr(&self, id: &str) -> Answer<()> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.clone().start_container(req).await.map(drop)
    }

    async fn stop_ctr(&self, id: &str, timeout: i64) -> Answer<()> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.clone().stop_container(req).await.map(drop)
    }

    async fn remove_ctr(&self, id: &str) -> Answer<()> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.clone().remove_container(req).await.map(drop)
    }

    async fn ctr_status(&self, id: &str) -> Answer<cri::ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.clone()
            .container_status(req)
            .await?
            .into_inner()
            .status
            .ok_or_else(|| Status::internal(format!("no status for container {id}")))
    }

    async fn list_ctrs(&self, filter: Option<cri::ContainerFilter>) -> Answer<Vec<cri::Container>> {
        let req = cri::ListContainersRequest { filter };
        Ok(self
            .clone()
            .list_containers(req)
            .await?
            .into_inner()
            .containers)
    }

    async fn exec_sync_of(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Answer<cri::ExecSyncResponse> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        Ok(self.clone().exec_sync(req).await?.into_inner())
    }

    async fn update_memory_limit(&self, id: &str, bytes: i64) -> Answer<()> {
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.clone().update_container_resources(req).await?;
        Ok(())
    }

    async fn exec_url(&self, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> Result<String> {
        let req = cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        let answer = self.clone().exec(req).await;
        Ok(answer
            .with_context(|| format!("Exec {cmd:?}"))?
            .into_inner()
            .url)
    }
}

/// A container filter on state.
pub fn in_state(state: cri::ContainerState) -> cri::ContainerFilter {
    cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: state as i32,
        }),
        ..Default::default()
    }
}
