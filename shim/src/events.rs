//! Task events: one ordered queue per shim, forwarded over ttrpc to containerd's
//! `Events/Forward` with a per-call timeout and a bounded retry queue.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::well_known_types::timestamp::Timestamp;
use berth_proto::protobuf::Message;
use berth_proto::shim::event::Envelope;
use berth_proto::shim::events::ForwardRequest;
use berth_proto::shim_async::{Client, EventsClient};
use berth_proto::topics::*;
use berth_proto::ttrpc::context;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;

/// Go's values: 5 s per call, queue of 2048, an event dropped after 5 requeues.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_CAPACITY: usize = 2048;
const MAX_REQUEUE: u32 = 5;

/// One event on its way to containerd.
#[derive(Debug, Clone)]
pub struct Envelope_ {
    pub topic: &'static str,
    pub event: Any,
    pub at: SystemTime,
}

/// The sending side, cloned into every place that emits events. Sends are synchronous
/// and never block, so callers can emit while holding the state lock, which is what keeps
/// the queue order (and the journal's numbering) equal to the order of state transitions.
#[derive(Clone)]
pub struct Publisher {
    tx: UnboundedSender<Envelope_>,
    journal: std::sync::Arc<crate::journal::Journal>,
}

/// The forwarder task; await [`Forwarder::drain`] at shutdown.
pub struct Forwarder {
    handle: JoinHandle<()>,
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// Packs a message under the bare type url containerd's typeurl registry expects. The url
/// is given, not looked up through protobuf reflection, which would build descriptor
/// tables in every shim process.
pub fn pack<M: Message>(type_url: &str, m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = type_url.to_string();
    a.value = m.write_to_bytes().unwrap_or_default();
    a
}

/// The event message type published under each task topic.
pub fn event_type(topic: &str) -> &'static str {
    match topic {
        TASK_CREATE_EVENT_TOPIC => "containerd.events.TaskCreate",
        TASK_START_EVENT_TOPIC => "containerd.events.TaskStart",
        TASK_EXIT_EVENT_TOPIC => "containerd.events.TaskExit",
        TASK_DELETE_EVENT_TOPIC => "containerd.events.TaskDelete",
        TASK_EXEC_ADDED_EVENT_TOPIC => "containerd.events.TaskExecAdded",
        TASK_EXEC_STARTED_EVENT_TOPIC => "containerd.events.TaskExecStarted",
        TASK_OOM_EVENT_TOPIC => "containerd.events.TaskOOM",
        TASK_PAUSED_EVENT_TOPIC => "containerd.events.TaskPaused",
        TASK_RESUMED_EVENT_TOPIC => "containerd.events.TaskResumed",
        TASK_CHECKPOINTED_EVENT_TOPIC => "containerd.events.TaskCheckpointed",
        _ => "",
    }
}

impl Publisher {
    /// Starts the forwarder. Without a ttrpc address (our own daemon may start the shim
    /// that way) events are logged at debug level and dropped.
    pub fn start(ttrpc_address: Option<String>, namespace: String) -> (Publisher, Forwarder) {
        let (tx, rx) = unbounded_channel();
        let handle = tokio::spawn(forward_loop(rx, ttrpc_address, namespace));
        let journal = Default::default();
        (Publisher { tx, journal }, Forwarder { handle })
    }

    /// Asks the forwarder to finish: send what is queued, then stop.
    pub fn close(&self) {
        let _ = self.tx.send(Envelope_ {
            topic: "",
            event: Any::new(),
            at: SystemTime::now(),
        });
    }

    pub fn publish<M: Message>(&self, topic: &'static str, m: &M) {
        let event = pack(event_type(topic), m);
        let at = SystemTime::now();
        self.journal.push(topic, &event, at);
        let _ = self.tx.send(Envelope_ { topic, event, at });
    }

    /// Every event published, numbered (Berth's Journal service reads it).
    pub fn journal(&self) -> &crate::journal::Journal {
        &self.journal
    }

    /// A publisher whose events go nowhere (tests).
    #[cfg(test)]
    pub fn channel() -> (Publisher, UnboundedReceiver<Envelope_>) {
        let (tx, rx) = unbounded_channel();
        let journal = Default::default();
        (Publisher { tx, journal }, rx)
    }
}

impl Forwarder {
    /// Waits up to 5 s for queued events to go out (after every Publisher is dropped).
    pub async fn drain(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.handle).await;
    }
}

struct Pending {
    env: Envelope_,
    count: u32,
    due: Instant,
}

async fn forward_loop(mut rx: UnboundedReceiver<Envelope_>, address: Option<String>, ns: String) {
    let Some(address) = address.filter(|a| !a.is_empty()) else {
        while let Some(e) = rx.recv().await {
            if e.topic.is_empty() {
                return;
            }
            tracing::debug!(topic = e.topic, "no TTRPC_ADDRESS; event dropped");
        }
        return;
    };
    let address = if address.contains("://") {
        address
    } else {
        format!("unix://{address}")
    };
    let mut client: Option<EventsClient> = None;
    let mut retry: VecDeque<Pending> = VecDeque::new();
    let mut open = true;
    while open || !retry.is_empty() {
        let next_due = retry.front().map(|p| p.due);
        let item = tokio::select! {
            e = rx.recv(), if open => match e {
                Some(e) if e.topic.is_empty() => { open = false; None }
                Some(e) => Some(Pending { env: e, count: 0, due: Instant::now() }),
                None => { open = false; None }
            },
            _ = sleep_until(next_due) => retry.pop_front(),
        };
        let Some(mut p) = item else { continue };
        if send(&mut client, &address, &ns, &p.env).await {
            continue;
        }
        p.count += 1;
        if p.count > MAX_REQUEUE || retry.len() >= RETRY_CAPACITY || !open {
            tracing::warn!(topic = p.env.topic, "event dropped after retries");
            continue;
        }
        p.due = Instant::now() + Duration::from_secs(p.count as u64);
        retry.push_back(p);
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// One attempt, reconnecting once if the connection is closed.
async fn send(client: &mut Option<EventsClient>, address: &str, ns: &str, e: &Envelope_) -> bool {
    let mut env = Envelope::new();
    env.timestamp = Some(timestamp(e.at)).into();
    env.namespace = ns.to_string();
    env.topic = e.topic.to_string();
    env.event = Some(e.event.clone()).into();
    let mut req = ForwardRequest::new();
    req.envelope = Some(env).into();
    for _ in 0..2 {
        if client.is_none() {
            match tokio::time::timeout(CALL_TIMEOUT, Client::connect(address)).await {
                Ok(Ok(c)) => *client = Some(EventsClient::new(c)),
                _ => return false,
            }
        }
        let Some(c) = client.as_ref() else {
            return false;
        };
        let ctx = context::with_timeout(CALL_TIMEOUT.as_nanos() as i64);
        match c.forward(ctx, &req).await {
            Ok(_) => return true,
            Err(err) => {
                tracing::debug!(topic = e.topic, error = %err, "forward failed");
                *client = None;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::events::task::{TaskExit, TaskOOM};
    use berth_proto::protobuf::MessageFull;

    #[test]
    fn event_type_urls_match_the_proto_names() {
        assert_eq!(
            event_type(TASK_EXIT_EVENT_TOPIC),
            TaskExit::descriptor().full_name()
        );
        assert_eq!(
            event_type(TASK_OOM_EVENT_TOPIC),
            TaskOOM::descriptor().full_name()
        );
        for t in [
            TASK_CREATE_EVENT_TOPIC,
            TASK_START_EVENT_TOPIC,
            TASK_DELETE_EVENT_TOPIC,
            TASK_EXEC_ADDED_EVENT_TOPIC,
            TASK_EXEC_STARTED_EVENT_TOPIC,
            TASK_PAUSED_EVENT_TOPIC,
            TASK_RESUMED_EVENT_TOPIC,
            TASK_CHECKPOINTED_EVENT_TOPIC,
        ] {
            let name = event_type(t);
            assert!(name.starts_with("containerd.events.Task"), "{t}");
        }
    }

    #[test]
    fn timestamps_are_never_zero() {
        let t = timestamp(SystemTime::now());
        assert!(t.seconds > 1_700_000_000);
    }
}
