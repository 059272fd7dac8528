//! Typed reads of pod and container records: one place that knows which table holds
//! what and how a missing record is reported.

use crate::error::{Error, Result};
use crate::store::{Store, CONTAINERS, PODS};

use super::{ContainerRecord, PodRecord};

pub trait Records {
    /// The pod's record; NotFound names it.
    fn pod(&self, id: &str) -> Result<PodRecord>;
    fn pods(&self) -> Result<Vec<PodRecord>>;
    /// The container's record; NotFound names it.
    fn container(&self, id: &str) -> Result<ContainerRecord>;
    fn containers(&self) -> Result<Vec<ContainerRecord>>;
    /// Every container of a pod.
    fn containers_of(&self, pod_id: &str) -> Result<Vec<ContainerRecord>>;
}

impl Records for Store {
    fn pod(&self, id: &str) -> Result<PodRecord> {
        self.get(PODS, id)?
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))
    }

    fn pods(&self) -> Result<Vec<PodRecord>> {
        self.list(PODS)
    }

    fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.get(CONTAINERS, id)?
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    fn containers(&self) -> Result<Vec<ContainerRecord>> {
        self.list(CONTAINERS)
    }

    fn containers_of(&self, pod_id: &str) -> Result<Vec<ContainerRecord>> {
        Ok(self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == pod_id)
            .collect())
    }
}
