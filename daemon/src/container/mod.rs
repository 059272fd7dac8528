//! The containers service: lifecycle (create, start, stop, remove), exits, exec and
//! attach sessions, stats and resources. A container runs in its pod's shim; its rootfs
//! is an overlay of the image's layer snapshots mounted by the shim, and its log is
//! written by the shim (`cri-log://`).

mod create;
mod exec;
mod exits;
mod lifecycle;
mod resources;
pub mod session;
pub mod stats;
mod stdio;
mod streaming;
mod volumes;

pub(crate) use create::load_localhost_profile;
pub use stats::ContainerUsage;
pub(crate) use stdio::stdin_fifo;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::events::EventHub;
use crate::image::ImageStore;
use crate::node::Node;
use crate::nri::Nri;
use crate::records::{ContainerRecord, PodRecord, Records};
use crate::shim_client::{ShimHandle, Shims};
use crate::store::Store;

/// The containers service: every container transition and the one path a container's
/// exit is recorded by (`exits`).
pub struct Containers {
    config: Arc<Config>,
    store: Arc<Store>,
    images: Arc<ImageStore>,
    shims: Arc<Shims>,
    events: Arc<EventHub>,
    node: Arc<Node>,
    /// Exits a shim's journal delivered before StartContainer recorded the container
    /// Running, by container id (`exits`).
    early_exits: Mutex<HashMap<String, crate::shim_client::Exit>>,
    nri: Arc<Nri>,
}

impl Containers {
    pub fn new(
        config: Arc<Config>,
        store: Arc<Store>,
        images: Arc<ImageStore>,
        shims: Arc<Shims>,
        events: Arc<EventHub>,
        node: Arc<Node>,
        nri: Arc<Nri>,
    ) -> Containers {
        Containers {
            config,
            store,
            images,
            shims,
            events,
            node,
            early_exits: Mutex::default(),
            nri,
        }
    }

    /// The container's record (not one whose CreateContainer hook is under way).
    pub fn get(&self, id: &str) -> crate::error::Result<ContainerRecord> {
        if self.nri.is_hidden(id) {
            return Err(crate::error::Error::NotFound(format!(
                "container {id:?} not found"
            )));
        }
        self.store.container(id)
    }

    /// Every container for a List call (a record that cannot be read is logged and left
    /// out, as is a container whose NRI CreateContainer hook is under way).
    pub fn list(&self) -> crate::error::Result<Vec<std::sync::Arc<ContainerRecord>>> {
        let mut ctrs = self.store.listed_containers()?;
        ctrs.retain(|c| !self.nri.is_hidden(&c.id));
        Ok(ctrs)
    }

    /// Every container of a pod.
    pub fn of_pod(&self, pod_id: &str) -> crate::error::Result<Vec<ContainerRecord>> {
        self.store.containers_of(pod_id)
    }

    /// The shim of the pod a container belongs to.
    async fn shim_of(&self, pod: &PodRecord) -> crate::error::Result<ShimHandle> {
        self.shims.of(&pod.id, &pod.shim_address).await
    }
}

#[cfg(test)]
mod tests;
