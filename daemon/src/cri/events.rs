//! Lifecycle events → CRI `ContainerEventResponse`s, streamed to a GetContainerEvents
//! client: first what nobody has received yet, then live events, until it hangs up.

use std::sync::Arc;

use berth_cri::v1::{ContainerEventResponse, ContainerEventType};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::core::Core;
use crate::events::{Event, Kind};

/// The event with the pod's status and its containers' statuses as they are now
/// (kubelet's evented PLEG reads them instead of relisting).
fn response(core: &Core, e: &Event) -> ContainerEventResponse {
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
        pod_sandbox_status: core
            .pods
            .get(&e.pod_id)
            .ok()
            .as_ref()
            .map(super::pod::status),
        containers_statuses: core
            .containers
            .of_pod(&e.pod_id)
            .unwrap_or_default()
            .iter()
            .map(super::container::status)
            .collect(),
    }
}

/// Marks are written in batches of at most this many events.
const MARK_BATCH: usize = 64;

/// gRPC metadata key of a GetContainerEvents call that only watches (`berthctl events`):
/// see [`crate::events::EventHub::observe`].
pub const OBSERVER: &str = "berth-observer";

/// Starts feeding one subscriber; the returned receiver ends when berthd stops. An
/// `observer` takes nothing from the next subscriber: no marks, no requeue.
pub fn subscribe(
    core: Arc<Core>,
    observer: bool,
) -> mpsc::Receiver<Result<ContainerEventResponse, Status>> {
    // One slot: room again means tonic took the event for the wire, and only then is it
    // marked delivered (a restart redelivers what was not taken).
    let (tx, rx) = mpsc::channel(1);
    let (backlog, mut live) = if observer {
        core.events.observe()
    } else {
        core.events.subscribe()
    };
    tokio::spawn(async move {
        let mut backlog = backlog.into_iter();
        let mut taken: Vec<Event> = Vec::new();
        let mut unsent: Vec<Event> = Vec::new();
        loop {
            let next = match backlog.next() {
                Some(e) => Ok(e),
                None => match live.try_recv() {
                    Ok(e) => Ok(e),
                    Err(broadcast::error::TryRecvError::Empty) => {
                        // Idle: what was taken is marked before waiting.
                        if !taken.is_empty() && !observer {
                            mark(&core, std::mem::take(&mut taken)).await;
                        }
                        // Ending at once when the client hangs up drops our receiver, so
                        // events after that go to the backlog for the next subscriber.
                        tokio::select! {
                            _ = tx.closed() => break,
                            next = live.recv() => next,
                        }
                    }
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                },
            };
            let e = match next {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "an event subscriber fell behind");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if tx.send(Ok(response(&core, &e))).await.is_err() {
                unsent.push(e); // the client hung up
                break;
            }
            match tx.reserve().await {
                Ok(permit) => drop(permit),
                Err(_) => {
                    unsent.push(e);
                    break;
                }
            }
            if observer {
                continue;
            }
            taken.push(e);
            if taken.len() >= MARK_BATCH {
                mark(&core, std::mem::take(&mut taken)).await;
            }
        }
        if observer {
            return;
        }
        if !taken.is_empty() {
            mark(&core, taken).await;
        }
        // What this client did not take goes to the next subscriber.
        unsent.extend(backlog);
        core.events.leave(live, unsent);
    });
    rx
}

/// Marks events delivered: a store write (fsync), so off the async workers.
async fn mark(core: &Arc<Core>, taken: Vec<Event>) {
    let core = core.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || core.events.delivered(&taken)).await {
        tracing::warn!(error = %e, "marking events delivered did not finish");
    }
}
