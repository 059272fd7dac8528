//! The streaming server's backend: its narrow view of the core (sessions in running
//! containers, a pod's network namespace). Lives with the adapters so that `stream`
//! depends only on its own trait, never on the core's type.

use std::path::PathBuf;

use crate::container::session::{AttachTarget, ConsoleSize, ProcessSession, SessionIo};
use crate::core::Core;
use crate::error::Result;
use crate::stream::Backend;

#[async_trait::async_trait]
impl Backend for Core {
    async fn exec_session(
        &self,
        container_id: &str,
        cmd: &[String],
        io: SessionIo,
        console: Option<ConsoleSize>,
    ) -> Result<ProcessSession> {
        self.containers
            .exec_session(container_id, cmd, io, console)
            .await
    }

    async fn attach_session(
        &self,
        container_id: &str,
        io: SessionIo,
    ) -> Result<(ProcessSession, AttachTarget)> {
        self.containers.attach_session(container_id, io).await
    }

    fn pod_netns(&self, pod_id: &str) -> Result<Option<PathBuf>> {
        Ok(self.pods.get(pod_id)?.netns)
    }
}
