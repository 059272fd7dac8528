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
    /// Every pod whose record decodes, for a List call; undecodable ones are logged.
    fn listed_pods(&self) -> Result<Vec<PodRecord>>;
    /// Every container whose record decodes, for a List call; undecodable ones are logged.
    fn listed_containers(&self) -> Result<Vec<ContainerRecord>>;
    /// Every container of a pod.
    fn containers_of(&self, pod_id: &str) -> Result<Vec<ContainerRecord>>;
}

fn readable<T: serde::de::DeserializeOwned>(
    store: &Store,
    table: redb::TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>> {
    let (records, bad) = store.list_readable(table)?;
    for key in bad {
        tracing::error!(%table, key = %key, "undecodable record left out of the list");
    }
    Ok(records)
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

    fn listed_pods(&self) -> Result<Vec<PodRecord>> {
        readable(self, PODS)
    }

    fn listed_containers(&self) -> Result<Vec<ContainerRecord>> {
        readable(self, CONTAINERS)
    }

    fn containers_of(&self, pod_id: &str) -> Result<Vec<ContainerRecord>> {
        Ok(self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == pod_id)
            .collect())
    }
}
