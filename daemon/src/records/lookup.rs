//! Typed reads of pod and container records: one place that knows which table holds
//! what and how a missing record is reported.

use std::sync::Arc;

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
    fn listed_pods(&self) -> Result<Vec<Arc<PodRecord>>>;
    /// Every container whose record decodes, for a List call; undecodable ones are logged.
    fn listed_containers(&self) -> Result<Vec<Arc<ContainerRecord>>>;
    /// Every container of a pod.
    fn containers_of(&self, pod_id: &str) -> Result<Vec<ContainerRecord>>;
}

type Table = redb::TableDefinition<'static, &'static str, &'static [u8]>;

fn readable<T: serde::de::DeserializeOwned + Send + Sync + 'static>(
    store: &Store,
    table: Table,
) -> Result<Vec<Arc<T>>> {
    let (records, bad) = store.list_shared(table)?;
    for key in bad {
        tracing::error!(%table, key = %key, "undecodable record left out of the list");
    }
    Ok(records)
}

/// Every record of `table`, owned; an undecodable one fails the call (the callers act on
/// every record: recovery, teardown).
fn every<T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static>(
    store: &Store,
    table: Table,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>> {
    let (records, bad) = store.list_shared::<T>(table)?;
    if let Some(key) = bad.first() {
        return Err(Error::Store(format!(
            "undecodable record {key:?} in table {table}"
        )));
    }
    Ok(records
        .iter()
        .filter(|r| keep(r))
        .map(|r| T::clone(r))
        .collect())
}

impl Records for Store {
    fn pod(&self, id: &str) -> Result<PodRecord> {
        self.get(PODS, id)?
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))
    }

    fn pods(&self) -> Result<Vec<PodRecord>> {
        every(self, PODS, |_| true)
    }

    fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.get(CONTAINERS, id)?
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    fn containers(&self) -> Result<Vec<ContainerRecord>> {
        every(self, CONTAINERS, |_| true)
    }

    fn listed_pods(&self) -> Result<Vec<Arc<PodRecord>>> {
        readable(self, PODS)
    }

    fn listed_containers(&self) -> Result<Vec<Arc<ContainerRecord>>> {
        readable(self, CONTAINERS)
    }

    fn containers_of(&self, pod_id: &str) -> Result<Vec<ContainerRecord>> {
        every(self, CONTAINERS, |c: &ContainerRecord| c.pod_id == pod_id)
    }
}
