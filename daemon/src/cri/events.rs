//! Lifecycle events → CRI `ContainerEventResponse`s, streamed to a GetContainerEvents
//! client: first what nobody has received yet, then live events, until it hangs up.

use std::sync::Arc;

use k8s_cri::v1::{ContainerEventResponse, ContainerEventType};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::events::{Event, Kind};
use crate::runtime::Runtime;

/// The event with the pod's status and its containers' statuses as they are now
/// (kubelet's evented PLEG reads them instead of relisting).
fn response(rt: &Runtime, e: &Event) -> ContainerEventResponse {
    let kind = match e.kind {
        Kind::Created => ContainerEventType::ContainerCreatedEvent,
        Kind::Started => ContainerEventType::ContainerStartedEvent,
        Kind::Stopped => ContainerEventType::ContainerStoppedEvent,
        Kind::Deleted => ContainerEventType::ContainerDeletedEvent,
    };
    ContainerEventResponse {
        container_id: e.id.clone(),
        container_event_type: kind as i32,
        created_at: e.at,
        pod_sandbox_status: rt.pod(&e.pod_id).ok().as_ref().map(super::pod::status),
        containers_statuses: rt
            .containers_of(&e.pod_id)
            .unwrap_or_default()
            .iter()
            .map(super::container::status)
            .collect(),
    }
}

/// Starts feeding one subscriber; the returned receiver ends when berthd stops.
pub fn subscribe(rt: Arc<Runtime>) -> mpsc::Receiver<Result<ContainerEventResponse, Status>> {
    let (tx, rx) = mpsc::channel(64);
    let (backlog, mut live) = rt.events.subscribe();
    tokio::spawn(async move {
        for e in backlog {
            if tx.send(Ok(response(&rt, &e))).await.is_err() {
                return;
            }
        }
        loop {
            // Ending at once when the client hangs up drops our receiver, so events after
            // that go to the backlog for the next subscriber instead of to nobody.
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = live.recv() => next,
            };
            let e = match next {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "an event subscriber fell behind");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(response(&rt, &e))).await.is_err() {
                return; // the client hung up
            }
        }
    });
    rx
}
