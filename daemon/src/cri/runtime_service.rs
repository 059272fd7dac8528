//! `runtime.v1.RuntimeService`: each call decodes, asks the domain core and encodes.
//! Exec/Attach/PortForward answer with a streaming URL (`stream`); CheckpointContainer
//! answers Unimplemented (criu cannot checkpoint on this kernel).

use crate::stream::Pending;
use std::pin::Pin;
use std::sync::Arc;

use berth_cri::v1::runtime_service_server::RuntimeService;
use berth_cri::v1::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::list_stream::{chunked, ListStream};
use crate::core::Core;
use crate::node::{RUNTIME_API_VERSION, RUNTIME_NAME};

pub struct Service {
    pub core: Arc<Core>,
    /// Hands out the single-use URLs of Exec, Attach and PortForward.
    pub streaming: Arc<crate::stream::Streaming>,
}

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not implemented by berthd yet"))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for Service {
    type GetContainerEventsStream = EventStream;
    type StreamPodSandboxesStream = ListStream<StreamPodSandboxesResponse>;
    type StreamContainersStream = ListStream<StreamContainersResponse>;
    type StreamContainerStatsStream = ListStream<StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = ListStream<StreamPodSandboxStatsResponse>;
    type StreamPodSandboxMetricsStream = ListStream<StreamPodSandboxMetricsResponse>;

    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: self.core.node.version().into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // A read of the CNI config dir, and the first time a `runc features` run: off the
        // async workers (kubelet asks every few seconds).
        let node = self.core.node.clone();
        let (net, rro, userns) = tokio::task::spawn_blocking(move || {
            (
                node.network_condition(),
                node.rro_supported(),
                node.userns_unavailable().is_none(),
            )
        })
        .await
        .map_err(|e| Status::internal(format!("status: {e}")))?;
        let conditions = vec![
            RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: net.ready,
                reason: net.reason,
                message: net.message,
            },
        ];
        let features = RuntimeHandlerFeatures {
            recursive_read_only_mounts: rro,
            user_namespaces: userns,
        };
        // The default handler ("") and its name: both run the configured OCI runtime.
        let runtime_handlers = ["", RUNTIME_NAME]
            .into_iter()
            .map(|name| RuntimeHandler {
                name: name.to_string(),
                features: Some(features),
            })
            .collect();
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            runtime_handlers,
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: true,
                // A user-namespaced pod needs its own network namespace (see
                // Namespaces::check_pod_userns).
                user_namespaces_host_network: false,
            }),
            ..Default::default()
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        let driver = match self.core.config.runtime.cgroup_driver {
            crate::config::CgroupDriver::Systemd => CgroupDriver::Systemd,
            crate::config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        self.core.node.set_pod_cidr(&cidr)?;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let r = req.into_inner();
        let cfg = r
            .config
            .ok_or_else(|| Status::invalid_argument("sandbox config is required"))?;
        if cfg.metadata.is_none() {
            return Err(Status::invalid_argument("sandbox metadata is required"));
        }
        let spec = super::convert::pod_from_cri(&cfg)?;
        let id = self.core.run_pod_sandbox(spec, r.runtime_handler).await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        self.core
            .pods
            .stop(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        self.core
            .pods
            .remove(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let r = req.into_inner();
        let rec = self.core.pods.live(&r.pod_sandbox_id).await?;
        let status = super::pod::status(&rec);
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            info.insert("info".to_string(), super::pod::verbose_info(&rec));
        }
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(status),
            info,
            ..Default::default()
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = req.into_inner().filter;
        let items = self
            .core
            .pods
            .list()?
            .iter()
            .filter(|p| super::pod::matches(p, filter.as_ref()))
            .map(|p| super::pod::summary(p))
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let r = req.into_inner();
        let cfg = r
            .config
            .ok_or_else(|| Status::invalid_argument("container config is required"))?;
        if cfg.metadata.is_none() {
            return Err(Status::invalid_argument("container metadata is required"));
        }
        // r.sandbox_config repeats what the pod's record already holds.
        let spec = super::convert::container_from_cri(&cfg)?;
        let id = self.core.containers.create(&r.pod_sandbox_id, spec).await?;
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        self.core
            .containers
            .start(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let r = req.into_inner();
        self.core
            .containers
            .stop(&r.container_id, r.timeout)
            .await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.core
            .containers
            .remove(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = req.into_inner().filter;
        let containers = self
            .core
            .containers
            .list()?
            .iter()
            .filter(|c| super::container::matches(c, filter.as_ref()))
            .map(|c| super::container::summary(c))
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let r = req.into_inner();
        let rec = self.core.containers.get(&r.container_id)?;
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            info.insert("info".to_string(), super::container::verbose_info(&rec));
        }
        Ok(Response::new(ContainerStatusResponse {
            status: Some(super::container::status(&rec)),
            info,
        }))
    }

    async fn exec_sync(
        &self,
        req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let r = req.into_inner();
        let (stdout, stderr, exit_code) = self
            .core
            .containers
            .exec_sync(&r.container_id, r.cmd, r.timeout)
            .await?;
        Ok(Response::new(ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        }))
    }

    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let r = req.into_inner();
        let resources = super::convert::resources_from_cri(&r.linux.unwrap_or_default());
        self.core
            .containers
            .update_resources(&r.container_id, &resources)
            .await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        self.core
            .containers
            .reopen_log(&req.into_inner().container_id)?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let rec = self.core.containers.get(&req.into_inner().container_id)?;
        let usage = self.core.containers.usage(&rec).await?;
        Ok(Response::new(ContainerStatsResponse {
            stats: Some(super::stats::container_stats(&rec, &usage)),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let f = req.into_inner().filter;
        let stats = super::stats::list_container_stats(&self.core, |c| {
            f.as_ref().is_none_or(|f| {
                (f.id.is_empty() || c.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
                    && f.label_selector
                        .iter()
                        .all(|(k, v)| c.config.labels.get(k) == Some(v))
            })
        })
        .await?;
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    async fn get_container_events(
        &self,
        req: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let observer = req.metadata().contains_key(super::events::OBSERVER);
        let rx = super::events::subscribe(self.core.clone(), observer);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let r = req.into_inner();
        let req = crate::stream::ExecReq {
            container_id: r.container_id,
            cmd: r.cmd,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        };
        self.core
            .containers
            .check_exec(&req.container_id, &req.cmd, req.flags())?;
        let url = self.streaming.url(Pending::Exec(req))?;
        Ok(Response::new(ExecResponse { url }))
    }

    async fn attach(
        &self,
        req: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        let r = req.into_inner();
        let req = crate::stream::AttachReq {
            container_id: r.container_id,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        };
        self.core
            .containers
            .check_remote_command(&req.container_id, req.flags())?;
        let url = self.streaming.url(Pending::Attach(req))?;
        Ok(Response::new(AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let pod_id = req.into_inner().pod_sandbox_id;
        self.core.pods.check_port_forward(&pod_id).await?;
        let url = self.streaming.url(Pending::PortForward { pod_id })?;
        Ok(Response::new(PortForwardResponse { url }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let rec = self
            .core
            .pods
            .live(&req.into_inner().pod_sandbox_id)
            .await?;
        let sample = self.core.pods.sample(&rec).await?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(super::stats::pod_stats(&rec, &sample)),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let f = req.into_inner().filter;
        let stats = super::stats::list_pod_stats(&self.core, |p| {
            f.as_ref().is_none_or(|f| {
                (f.id.is_empty() || p.id.starts_with(&f.id))
                    && f.label_selector
                        .iter()
                        .all(|(k, v)| p.config.labels.get(k) == Some(v))
            })
        })
        .await?;
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        Err(not_yet("checkpoint_container"))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(ListMetricDescriptorsResponse {
            descriptors: super::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        let now = crate::util::now_ns();
        let now_s = (now / 1_000_000_000) as u64;
        let mut pod_metrics = Vec::new();
        for p in self.core.pods.list()? {
            let mut containers = Vec::new();
            for c in self.core.containers.of_pod(&p.id)? {
                if c.state != crate::records::CtrState::Running {
                    continue;
                }
                // A container that exits between the listing and its sampling is left out.
                let Ok(s) = self.core.containers.sample(&p.id, &c.id).await else {
                    continue;
                };
                let x = self.core.containers.extras_of(&c).await;
                let v = super::metrics::View {
                    rec: &c,
                    s: &s,
                    x: &x,
                    now_s,
                };
                containers.push(super::metrics::container_metrics(&p, &v, now));
            }
            let ifaces = crate::pod::stats::pod_ifaces(&p).await;
            pod_metrics.push(super::metrics::pod_metrics(&p, &ifaces, containers, now));
        }
        Ok(Response::new(ListPodSandboxMetricsResponse { pod_metrics }))
    }
    async fn stream_pod_sandboxes(
        &self,
        req: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = req.into_inner().filter;
        let list = ListPodSandboxRequest { filter };
        let items = self.list_pod_sandbox(Request::new(list)).await?;
        Ok(Response::new(chunked(
            items.into_inner().items,
            |pod_sandboxes| StreamPodSandboxesResponse { pod_sandboxes },
        )))
    }

    async fn stream_containers(
        &self,
        req: Request<StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = req.into_inner().filter;
        let list = ListContainersRequest { filter };
        let items = self.list_containers(Request::new(list)).await?;
        Ok(Response::new(chunked(
            items.into_inner().containers,
            |containers| StreamContainersResponse { containers },
        )))
    }

    async fn stream_container_stats(
        &self,
        req: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = req.into_inner().filter;
        let list = ListContainerStatsRequest { filter };
        let items = self.list_container_stats(Request::new(list)).await?;
        Ok(Response::new(chunked(
            items.into_inner().stats,
            |container_stats| StreamContainerStatsResponse { container_stats },
        )))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = req.into_inner().filter;
        let list = ListPodSandboxStatsRequest { filter };
        let items = self.list_pod_sandbox_stats(Request::new(list)).await?;
        Ok(Response::new(chunked(
            items.into_inner().stats,
            |pod_sandbox_stats| StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let list = ListPodSandboxMetricsRequest {};
        let items = self.list_pod_sandbox_metrics(Request::new(list)).await?;
        Ok(Response::new(chunked(
            items.into_inner().pod_metrics,
            |pod_sandbox_metrics| StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }

    /// kubelet tells the runtime the pod-level resources it has just set on the pod's
    /// cgroup (best effort, kubelet goes on whatever the answer). The cgroup is
    /// kubelet's doing; berthd records them and passes them to the NRI plugins
    /// (UpdatePodSandbox, whose refusal fails the call, then PostUpdatePodSandbox).
    async fn update_pod_sandbox_resources(
        &self,
        req: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        let r = req.into_inner();
        let conv =
            |r: Option<LinuxContainerResources>| r.map(|r| super::convert::resources_from_cri(&r));
        self.core
            .pods
            .update_resources(&r.pod_sandbox_id, conv(r.overhead), conv(r.resources))
            .await?;
        tracing::debug!(pod_id = %r.pod_sandbox_id, "pod-level resources updated by kubelet");
        Ok(Response::new(UpdatePodSandboxResourcesResponse {}))
    }
}
