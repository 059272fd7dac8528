//! Berth's `berth.shim.v1.Attach` extension: more readers of a running process's output
//! (CRI Attach goes through here). containerd never calls it.

use async_trait::async_trait;
use berth_proto::berth_shim::{Attach, AttachRequest, AttachResponse};
use berth_proto::ttrpc::r#async::TtrpcContext;
use berth_proto::ttrpc::Result as TResult;

use super::state::Status;
use super::Service;
use crate::error::{Error, Result};

impl Service {
    pub fn attach(&self, req: &AttachRequest) -> Result<()> {
        let t = self.lock()?;
        let p = t.get(&req.id)?.process(&req.exec_id)?;
        if p.status != Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "process {} of {} is not running",
                req.exec_id, req.id
            )));
        }
        match &p.io {
            Some(io) => io.attach(&req.stdout, &req.stderr),
            None => Err(Error::FailedPrecondition(
                "the process has no stdio to attach to".into(),
            )),
        }
    }
}

#[async_trait]
impl Attach for Service {
    async fn attach(&self, _: &TtrpcContext, req: AttachRequest) -> TResult<AttachResponse> {
        let _g = tracing::info_span!("attach", container_id = %req.id).entered();
        Service::attach(self, &req)?;
        tracing::info!(exec_id = %req.exec_id, "attached");
        Ok(AttachResponse::new())
    }
}
