//! Container and pod lifecycle events (CREATED, STARTED, STOPPED, DELETED) for CRI's
//! GetContainerEvents. The domain emits an event after the state change is committed;
//! the CRI layer turns each into a response with the statuses current at delivery.
//!
//! Events emitted while no client is subscribed (berthd just restarted and replayed the
//! exits that happened while it was down, or kubelet is between two subscriptions) are
//! kept, bounded, and handed to the next subscriber first: they are delivered late,
//! never dropped silently.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// How many undelivered events are kept while nobody listens, and how far a slow
/// subscriber may fall behind before it loses events (it is told how many).
const BACKLOG: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One lifecycle transition of a container, or of a pod (then `id == pod_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    pub id: String,
    pub pod_id: String,
    /// When it happened (ns since the epoch): an exit's own time, not its delivery's.
    pub at: i64,
}

pub struct EventHub {
    tx: broadcast::Sender<Event>,
    /// Events nobody has received yet; guarded together with the subscribe step so an
    /// event is either in here or sent to a live receiver, never lost in between.
    pending: Mutex<VecDeque<Event>>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            tx: broadcast::channel(BACKLOG).0,
            pending: Mutex::new(VecDeque::new()),
        }
    }
}

impl EventHub {
    pub fn emit(&self, kind: Kind, id: &str, pod_id: &str, at: i64) {
        let e = Event {
            kind,
            id: id.to_string(),
            pod_id: pod_id.to_string(),
            at,
        };
        tracing::debug!(container_id = %id, pod_id = %pod_id, kind = ?kind, "event");
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(e);
            return;
        }
        if pending.len() >= BACKLOG {
            pending.pop_front();
            tracing::warn!("event backlog full: the oldest undelivered event is dropped");
        }
        pending.push_back(e);
    }

    /// A new subscription: the events nobody received yet, then everything from now on.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        (pending.drain(..).collect(), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_without_a_subscriber_reach_the_next_one_in_order() {
        let hub = EventHub::default();
        hub.emit(Kind::Stopped, "c1", "p", 1);
        hub.emit(Kind::Deleted, "c1", "p", 2);
        let (backlog, mut rx) = hub.subscribe();
        assert_eq!(
            backlog.iter().map(|e| (e.kind, e.at)).collect::<Vec<_>>(),
            [(Kind::Stopped, 1), (Kind::Deleted, 2)]
        );
        hub.emit(Kind::Created, "c2", "p", 3);
        assert_eq!(rx.try_recv().unwrap().id, "c2");
        // Delivered once: a second subscriber gets no replay of what the first received.
        let (again, _rx2) = hub.subscribe();
        assert!(again.is_empty());
    }

    #[test]
    fn the_backlog_is_bounded() {
        let hub = EventHub::default();
        for i in 0..(BACKLOG as i64 + 10) {
            hub.emit(Kind::Started, "c", "p", i);
        }
        let (backlog, _rx) = hub.subscribe();
        assert_eq!(backlog.len(), BACKLOG);
        assert_eq!(backlog[0].at, 10);
    }

    #[test]
    fn events_after_the_last_subscriber_left_are_kept() {
        let hub = EventHub::default();
        let (_, rx) = hub.subscribe();
        drop(rx);
        hub.emit(Kind::Stopped, "c", "p", 7);
        let (backlog, _rx) = hub.subscribe();
        assert_eq!(backlog.len(), 1);
    }
}
