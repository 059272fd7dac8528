//! The pods service: RunPodSandbox (`sandbox`), StopPodSandbox and RemovePodSandbox
//! (`teardown`), a pod's live state and stats. Each pod runs in one shim. A pod that
//! shares its PID namespace (or is user-namespaced) has an infra process (berth-pause, or
//! the configured sandbox image) holding its namespaces; any other pod has none, its
//! namespaces are pinned by berthd (`pins`).
//! Stopping or removing a pod stops and removes its containers through the containers
//! service; watching a running pod is the recovery service's.

mod files;
pub mod pins;
mod sandbox;
pub mod shim_log;
pub mod stats;
mod teardown;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::container::Containers;
use crate::error::Result;
use crate::events::EventHub;
use crate::image::{ImageStore, Puller};
use crate::network::Cni;
use crate::node::Node;
use crate::nri::Nri;
use crate::records::{PodRecord, Records};
use crate::shim_client::{ShimHandle, Shims};
use crate::store::{Store, PODS};
use crate::workload::Resources;

pub use sandbox::{net_args, pause_rootfs};

pub struct Pods {
    config: Arc<Config>,
    store: Arc<Store>,
    images: Arc<ImageStore>,
    puller: Arc<Puller>,
    cni: Arc<Cni>,
    node: Arc<Node>,
    shims: Arc<Shims>,
    events: Arc<EventHub>,
    containers: Arc<Containers>,
    /// The read-only rootfs of every sandbox's berth-pause.
    pause_rootfs: PathBuf,
    nri: Arc<Nri>,
}

/// What the pods service is made of.
pub struct PodsDeps {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub images: Arc<ImageStore>,
    pub puller: Arc<Puller>,
    pub cni: Arc<Cni>,
    pub node: Arc<Node>,
    pub shims: Arc<Shims>,
    pub events: Arc<EventHub>,
    pub containers: Arc<Containers>,
    pub pause_rootfs: PathBuf,
    pub nri: Arc<Nri>,
}

impl Pods {
    pub fn new(d: PodsDeps) -> Pods {
        Pods {
            config: d.config,
            store: d.store,
            images: d.images,
            puller: d.puller,
            cni: d.cni,
            node: d.node,
            shims: d.shims,
            events: d.events,
            containers: d.containers,
            pause_rootfs: d.pause_rootfs,
            nri: d.nri,
        }
    }

    /// The pod's record (not one whose RunPodSandbox hook is under way).
    pub fn get(&self, id: &str) -> Result<PodRecord> {
        self.visible(id)?;
        self.store.pod(id)
    }

    /// NotFound for a pod whose NRI RunPodSandbox hook is under way.
    fn visible(&self, id: &str) -> Result<()> {
        if self.nri.is_hidden(id) {
            return Err(crate::error::Error::NotFound(format!(
                "pod sandbox {id:?} not found"
            )));
        }
        Ok(())
    }

    /// Every pod for a List call (a record that cannot be read is logged and left out,
    /// as is a pod whose NRI RunPodSandbox hook is under way).
    pub fn list(&self) -> Result<Vec<std::sync::Arc<PodRecord>>> {
        let mut pods = self.store.listed_pods()?;
        pods.retain(|p| !self.nri.is_hidden(&p.id));
        Ok(pods)
    }

    /// UpdatePodSandboxResources: kubelet has set the pod-level resources on the pod's
    /// cgroup (its own doing); berthd tells the NRI plugins (their UpdatePodSandbox may
    /// refuse it: the call fails, nothing changes), records the new overhead and
    /// resources (what plugins and PodSandboxStatus see of the pod), and tells them
    /// it is done (PostUpdatePodSandbox).
    pub async fn update_resources(
        &self,
        id: &str,
        overhead: Option<Resources>,
        resources: Option<Resources>,
    ) -> Result<()> {
        let rec = self.get(id)?;
        self.nri
            .update_pod_sandbox(&rec, overhead.as_ref(), resources.as_ref())
            .await?;
        self.store.update(PODS, id, |r: &mut PodRecord| {
            if overhead.is_some() {
                r.config.overhead = overhead.clone();
            }
            if resources.is_some() {
                r.config.resources = resources.clone();
            }
            overhead.is_some() || resources.is_some()
        })?;
        let rec = self.store.pod(id)?;
        self.nri.post_update_pod_sandbox(&rec).await;
        Ok(())
    }

    /// The pod's shim client, reconnecting from the stored address after a restart.
    pub async fn shim_of(&self, rec: &PodRecord) -> Result<ShimHandle> {
        self.shims.of(&rec.id, &rec.shim_address).await
    }
}

#[cfg(test)]
mod tests;
