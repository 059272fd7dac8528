//! The ttrpc face of the task service: each method opens a span keyed by container id,
//! calls the plain operation and encodes its result. Registered as task v2 and v3.
//!
//! State-changing operations run detached (`detached`): ttrpc drops a handler's future
//! when its connection closes, and a client killed mid-call (berthd or containerd under
//! kill -9) would otherwise cut an operation half-way — a start left marked in progress
//! for ever, a runc container created but never recorded.

use async_trait::async_trait;
use berth_proto::api::*;
use berth_proto::protobuf::well_known_types::empty::Empty;
use berth_proto::shim_async::Task;
use berth_proto::ttrpc::r#async::TtrpcContext;
use berth_proto::ttrpc::Result as TResult;
use tracing::Instrument;

use super::Service;

macro_rules! span {
    ($name:literal, $req:expr) => {
        tracing::info_span!($name, container_id = %$req.id)
    };
}

fn empty(r: crate::error::Result<()>) -> TResult<Empty> {
    r.map(|_| Empty::new()).map_err(Into::into)
}

/// Runs an operation to its end whatever happens to the caller's connection.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
) -> crate::error::Result<T> {
    tokio::spawn(f)
        .await
        .unwrap_or_else(|e| Err(crate::error::Error::Runtime(format!("operation task: {e}"))))
}

#[async_trait]
impl Task for Service {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> TResult<StateResponse> {
        let _g = span!("state", req).entered();
        Ok(self.state(req)?)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TResult<CreateTaskResponse> {
        let span = span!("create", req);
        let s = self.clone();
        let pid = detached(async move { s.create(req).await }.instrument(span)).await?;
        let mut r = CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TResult<StartResponse> {
        let span = span!("start", req);
        let s = self.clone();
        let pid = detached(async move { s.start(req).await }.instrument(span)).await?;
        let mut r = StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TResult<DeleteResponse> {
        let span = span!("delete", req);
        let s = self.clone();
        Ok(detached(async move { s.delete(req).await }.instrument(span)).await?)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TResult<PidsResponse> {
        let span = span!("pids", req);
        Ok(self.pids(req).instrument(span).await?)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TResult<Empty> {
        let span = span!("pause", req);
        let s = self.clone();
        empty(detached(async move { s.pause(req).await }.instrument(span)).await)
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TResult<Empty> {
        let span = span!("resume", req);
        let s = self.clone();
        empty(detached(async move { s.resume(req).await }.instrument(span)).await)
    }

    async fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> TResult<Empty> {
        let span = span!("checkpoint", req);
        empty(self.checkpoint(req).instrument(span).await)
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TResult<Empty> {
        let span = span!("kill", req);
        let s = self.clone();
        empty(detached(async move { s.kill(req).await }.instrument(span)).await)
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        let _g = span!("exec", req).entered();
        empty(self.exec(req))
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TResult<Empty> {
        let _g = span!("resize_pty", req).entered();
        empty(self.resize_pty(req))
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TResult<Empty> {
        let _g = span!("close_io", req).entered();
        empty(self.close_io(req))
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TResult<Empty> {
        let span = span!("update", req);
        let s = self.clone();
        empty(detached(async move { s.update(req).await }.instrument(span)).await)
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TResult<WaitResponse> {
        let span = span!("wait", req);
        Ok(self.wait(req).instrument(span).await?)
    }

    async fn stats(&self, ctx: &TtrpcContext, req: StatsRequest) -> TResult<StatsResponse> {
        let _g = span!("stats", req).entered();
        use berth_proto::berth_shim::{STATS_CRI, STATS_DETAIL};
        let brief = ctx
            .metadata
            .get(STATS_DETAIL)
            .is_some_and(|v| v.iter().any(|v| v == STATS_CRI));
        let detail = match brief {
            true => crate::cgroup::Detail::Cri,
            false => crate::cgroup::Detail::Full,
        };
        Ok(self.stats(req, detail)?)
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TResult<ConnectResponse> {
        Ok(self.connect(req)?)
    }

    async fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> TResult<Empty> {
        empty(self.shutdown(req))
    }
}
