//! The recovery service: everything that keeps berthd's records true to what the shims
//! and the kernel say, across crashes. At startup (`startup`): shims reconnected,
//! operations a crash cut finished or undone (`intents`), leftovers no record owns
//! removed (`orphans`). While pods run: each pod's infra process and event journal are
//! followed (`watch`, `journal`), and a shim that died is settled (`shim_death`). Every
//! exit found here is recorded through the containers service's one exit path. Pods a
//! node's reboot ended are settled at startup without their shims (`reboot`).

mod intents;
mod journal;
mod orphans;
mod reboot;
mod shim_death;
mod startup;
mod watch;

use std::sync::Arc;

use crate::config::Config;
use crate::container::Containers;
use crate::events::EventHub;
use crate::image::ImageStore;
use crate::metrics::RecoveryMetrics;
use crate::network::Cni;
use crate::node::Node;
use crate::pod::Pods;
use crate::shim_client::Shims;
use crate::store::Store;

pub struct Recovery {
    config: Arc<Config>,
    store: Arc<Store>,
    images: Arc<ImageStore>,
    cni: Arc<Cni>,
    node: Arc<Node>,
    shims: Arc<Shims>,
    events: Arc<EventHub>,
    pods: Arc<Pods>,
    containers: Arc<Containers>,
    metrics: RecoveryMetrics,
}

/// What the recovery service is made of.
pub struct RecoveryDeps {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub images: Arc<ImageStore>,
    pub cni: Arc<Cni>,
    pub node: Arc<Node>,
    pub shims: Arc<Shims>,
    pub events: Arc<EventHub>,
    pub pods: Arc<Pods>,
    pub containers: Arc<Containers>,
    pub metrics: RecoveryMetrics,
}

impl Recovery {
    pub fn new(d: RecoveryDeps) -> Arc<Recovery> {
        Arc::new(Recovery {
            config: d.config,
            store: d.store,
            images: d.images,
            cni: d.cni,
            node: d.node,
            shims: d.shims,
            events: d.events,
            pods: d.pods,
            containers: d.containers,
            metrics: d.metrics,
        })
    }
}

#[cfg(test)]
mod tests;
