//! Berth's `berth.shim.v1.Journal` extension: reading the shim's event journal
//! (`crate::journal`). containerd never calls it.

use std::time::Duration;

use async_trait::async_trait;
use berth_proto::berth_shim::{Journal, ReadRequest, ReadResponse};
use berth_proto::ttrpc::r#async::TtrpcContext;
use berth_proto::ttrpc::Result as TResult;

use super::Service;

/// A reader waits at most this long in one call, whatever it asks.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[async_trait]
impl Journal for Service {
    async fn read(&self, _: &TtrpcContext, req: ReadRequest) -> TResult<ReadResponse> {
        let wait = Duration::from_millis(req.wait_ms.into()).min(MAX_WAIT);
        let (entries, first) = self.events.journal().read(req.after, wait).await;
        let mut r = ReadResponse::new();
        r.entries = entries;
        r.first = first;
        Ok(r)
    }
}
