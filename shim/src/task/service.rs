//! The ttrpc face of the task service: each method opens a span keyed by container id,
//! calls the plain operation and encodes its result. Registered as task v2 and v3.

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
        let pid = self.create(req).instrument(span).await?;
        let mut r = CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TResult<StartResponse> {
        let span = span!("start", req);
        let pid = self.start(req).instrument(span).await?;
        let mut r = StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TResult<DeleteResponse> {
        let span = span!("delete", req);
        Ok(self.delete(req).instrument(span).await?)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TResult<PidsResponse> {
        let span = span!("pids", req);
        Ok(self.pids(req).instrument(span).await?)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TResult<Empty> {
        let span = span!("pause", req);
        empty(self.pause(req).instrument(span).await)
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TResult<Empty> {
        let span = span!("resume", req);
        empty(self.resume(req).instrument(span).await)
    }

    async fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> TResult<Empty> {
        let span = span!("checkpoint", req);
        empty(self.checkpoint(req).instrument(span).await)
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TResult<Empty> {
        let span = span!("kill", req);
        empty(self.kill(req).instrument(span).await)
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
        empty(self.update(req).instrument(span).await)
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TResult<WaitResponse> {
        let span = span!("wait", req);
        Ok(self.wait(req).instrument(span).await?)
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TResult<StatsResponse> {
        let _g = span!("stats", req).entered();
        Ok(self.stats(req)?)
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TResult<ConnectResponse> {
        Ok(self.connect(req)?)
    }

    async fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> TResult<Empty> {
        empty(self.shutdown(req))
    }
}
