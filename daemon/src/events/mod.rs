//! Container and pod lifecycle events (CREATED, STARTED, STOPPED, DELETED) for CRI's
//! GetContainerEvents. The domain emits an event after the state change is committed;
//! the CRI layer turns each into a response with the statuses current at delivery.
//!
//! Events emitted while no client is subscribed (kubelet is between two subscriptions)
//! are kept, bounded, and handed to the next subscriber first: they are delivered late,
//! never dropped silently. What clients received is marked in the store (`ledger`), so a
//! restarted berthd first delivers what its records show happened and nobody received:
//! every transition reaches a client once, except the last ones in flight when berthd was
//! killed, which may arrive again, identical (CRI streams have no acknowledgement).

pub mod ledger;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

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
    /// Events nobody has received yet; guarded together with the subscribe and leave
    /// steps so an event is either in here or sent to a subscriber's receiver, never lost
    /// in between.
    pending: Mutex<VecDeque<Event>>,
    /// Subscribers that take events (observers do not count): changed only while
    /// `pending` is locked. With none, events are kept for the next one.
    subscribers: std::sync::atomic::AtomicUsize,
    /// Where received events are marked (None: not kept, in unit tests).
    store: Option<Arc<crate::store::Store>>,
    /// Serializes marking (a read-modify-write of the ledger).
    marking: Mutex<()>,
    /// Pods and containers whose creation a crash cut: no client ever heard of them, so
    /// their rollback at startup is not announced either.
    unannounced: Mutex<std::collections::HashSet<String>>,
    /// Events dropped from a full backlog since the last subscription (said once in the
    /// log when it starts, counted, and reported to the next subscriber's log line).
    dropped: std::sync::atomic::AtomicU64,
    metrics: crate::metrics::EventMetrics,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            tx: broadcast::channel(BACKLOG).0,
            pending: Mutex::new(VecDeque::new()),
            subscribers: Default::default(),
            store: None,
            marking: Mutex::new(()),
            unannounced: Default::default(),
            dropped: Default::default(),
            metrics: Default::default(),
        }
    }
}

impl EventHub {
    pub fn new(store: Arc<crate::store::Store>, metrics: crate::metrics::EventMetrics) -> EventHub {
        EventHub {
            store: Some(store),
            metrics,
            ..Default::default()
        }
    }

    /// At startup, before anything changes: queues what the records show happened and no
    /// client received (the most recent `BACKLOG` of them).
    /// `unannounced`: ids whose creation a crash cut (their events are not emitted).
    pub fn restore(
        &self,
        records: &[ledger::History],
        unannounced: Vec<String>,
    ) -> crate::error::Result<()> {
        self.unannounced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(unannounced);
        let Some(store) = &self.store else {
            return Ok(());
        };
        let missed = ledger::undelivered(store, records, crate::util::now_ns())?;
        if !missed.is_empty() {
            tracing::info!(events = missed.len(), "events not yet delivered are queued");
            self.metrics.redelivered.inc_by(missed.len() as u64);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let skip = missed.len().saturating_sub(BACKLOG);
        for e in missed.into_iter().skip(skip).rev() {
            pending.push_front(e);
        }
        pending.truncate(BACKLOG);
        Ok(())
    }

    /// A subscriber's end: its receiver comes back with what it did not deliver, under
    /// the lock `emit` takes, so an event sent to it after its last look is drained here
    /// instead of dropped with the receiver. All of it goes first in line for the next.
    pub fn leave(&self, mut live: broadcast::Receiver<Event>, mut unsent: Vec<Event>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match live.try_recv() {
                Ok(e) => unsent.push(e),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        drop(live);
        self.subscribers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if !unsent.is_empty() {
            tracing::info!(
                events = unsent.len(),
                "an event subscriber left: its undelivered events are kept for the next"
            );
            self.metrics.redelivered.inc_by(unsent.len() as u64);
        }
        for e in unsent.into_iter().rev() {
            pending.push_front(e);
        }
        pending.truncate(BACKLOG);
    }

    /// Marks events as received by a client (the stream took them).
    pub fn delivered(&self, events: &[Event]) {
        self.metrics.delivered.inc_by(events.len() as u64);
        let Some(store) = &self.store else {
            return;
        };
        let _one = self.marking.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = ledger::mark(store, events) {
            tracing::warn!(error = %e, "marking events delivered failed");
        }
    }

    pub fn emit(&self, kind: Kind, id: &str, pod_id: &str, at: i64) {
        {
            let mut quiet = self.unannounced.lock().unwrap_or_else(|p| p.into_inner());
            if !quiet.is_empty() && quiet.contains(id) {
                if kind == Kind::Deleted {
                    quiet.remove(id);
                }
                return;
            }
        }
        let e = Event {
            kind,
            id: id.to_string(),
            pod_id: pod_id.to_string(),
            at,
        };
        tracing::debug!(container_id = %id, pod_id = %pod_id, kind = ?kind, "event");
        self.metrics.emitted.inc();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if self.subscribers.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            let _ = self.tx.send(e);
            return;
        }
        // Nobody takes it now: kept for the next subscriber, and shown to observers.
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(e.clone());
        }
        if pending.len() >= BACKLOG {
            pending.pop_front();
            self.metrics.dropped.inc();
            // Normal on a node without an event subscriber (kubelet's evented PLEG is
            // off by default): said once, not for every event.
            use std::sync::atomic::Ordering;
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::info!(
                    backlog = BACKLOG,
                    "no GetContainerEvents subscriber: the oldest undelivered events are dropped from now on"
                );
            }
        }
        pending.push_back(e);
    }

    /// A new subscription: the events nobody received yet, then everything from now on.
    /// The receiver goes back through [`EventHub::leave`] when the subscriber ends.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let others = self
            .subscribers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dropped = self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            backlog = pending.len(),
            dropped,
            others,
            "an event subscriber"
        );
        (pending.drain(..).collect(), rx)
    }

    /// An observer's subscription (`berthctl events`): a copy of the backlog, which stays
    /// for the next real subscriber (kubelet), and live events. What an observer takes is
    /// never marked delivered, so it takes nothing from kubelet, also across a restart.
    pub fn observe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        (pending.iter().cloned().collect(), rx)
    }

    /// Events dropped from the full backlog since the last subscription.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_backlog_drops_the_oldest_and_counts_them_until_a_subscriber_comes() {
        let hub = EventHub::default();
        for i in 0..(BACKLOG + 10) {
            hub.emit(Kind::Created, &format!("c{i}"), "p", i as i64);
        }
        assert_eq!(hub.dropped(), 10);
        let (backlog, _rx) = hub.subscribe();
        assert_eq!(backlog.len(), BACKLOG);
        assert_eq!(backlog[0].id, "c10", "the oldest went first");
        assert_eq!(hub.dropped(), 0);
    }

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
        hub.leave(rx, Vec::new());
        hub.emit(Kind::Stopped, "c", "p", 7);
        let (backlog, _rx) = hub.subscribe();
        assert_eq!(backlog.len(), 1);
    }

    #[test]
    fn an_event_sent_to_a_leaving_subscriber_after_its_last_look_is_kept() {
        let hub = EventHub::default();
        let (_, rx) = hub.subscribe();
        // Sent to the subscriber's receiver, which it never reads again.
        hub.emit(Kind::Created, "c1", "p", 1);
        hub.leave(
            rx,
            vec![Event {
                kind: Kind::Created,
                id: "c0".into(),
                pod_id: "p".into(),
                at: 0,
            }],
        );
        hub.emit(Kind::Started, "c1", "p", 2);
        let (backlog, _rx) = hub.subscribe();
        assert_eq!(
            backlog
                .iter()
                .map(|e| (e.id.as_str(), e.at))
                .collect::<Vec<_>>(),
            [("c0", 0), ("c1", 1), ("c1", 2)],
            "what it did not take, then what came while none listened, in order"
        );
    }

    #[test]
    fn an_observer_takes_nothing_from_the_next_subscriber() {
        let hub = EventHub::default();
        let (_, mut watching) = hub.observe();
        hub.emit(Kind::Created, "c1", "p", 1);
        assert_eq!(
            watching.try_recv().unwrap().id,
            "c1",
            "the observer sees it live"
        );
        let (backlog, _rx) = hub.subscribe();
        assert_eq!(backlog.len(), 1, "and the next subscriber still gets it");
    }
}
