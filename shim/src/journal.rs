//! The shim's event journal: every task event it publishes, numbered from 1 in
//! publication order (events are published under the state lock, so this is the order of
//! the transitions), kept in a bounded ring that drops the oldest first. Berth's
//! `berth.shim.v1.Journal` service reads it (`task/journal.rs`): a manager that was away
//! asks for what came after the last number it applied.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use berth_proto::berth_shim::Entry;
use berth_proto::protobuf::well_known_types::any::Any;
use tokio::sync::watch;

/// Entries kept: far more than a pod's transitions between two reads of its manager.
pub const CAPACITY: usize = 1024;

pub struct Journal {
    ring: Mutex<VecDeque<Entry>>,
    /// The newest number published (readers wait on it).
    last: watch::Sender<u64>,
    /// Set at shutdown: waiting readers answer at once, so the server can stop.
    closed: std::sync::atomic::AtomicBool,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            ring: Mutex::new(VecDeque::new()),
            last: watch::channel(0).0,
            closed: Default::default(),
        }
    }
}

impl Journal {
    pub fn push(&self, topic: &str, event: &Any, at: SystemTime) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let seq = ring.back().map_or(*self.last.borrow() + 1, |e| e.seq + 1);
        let mut e = Entry::new();
        e.seq = seq;
        e.topic = topic.to_string();
        e.type_url = event.type_url.clone();
        e.event = event.value.clone();
        e.published_ns = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        if ring.len() >= CAPACITY {
            ring.pop_front();
        }
        ring.push_back(e);
        self.last.send_replace(seq);
    }

    /// Ends every wait (the shim is shutting down; a reader's call would hold it up).
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.last.send_modify(|_| {});
    }

    /// The entries after `after` and the oldest number kept (0: none published yet).
    pub fn after(&self, after: u64) -> (Vec<Entry>, u64) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let first = ring.front().map_or(0, |e| e.seq);
        let out = ring.iter().filter(|e| e.seq > after).cloned().collect();
        (out, first)
    }

    /// Like `after`, waiting up to `wait` for an entry when there is none yet.
    pub async fn read(&self, after: u64, wait: Duration) -> (Vec<Entry>, u64) {
        // Subscribed before looking: a push after the look wakes us.
        let mut rx = self.last.subscribe();
        let found = self.after(after);
        let closed = || self.closed.load(std::sync::atomic::Ordering::SeqCst);
        if !found.0.is_empty() || wait.is_zero() || closed() {
            return found;
        }
        let _ = tokio::time::timeout(wait, rx.wait_for(|last| *last > after || closed())).await;
        self.after(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(n: u8) -> Any {
        let mut a = Any::new();
        a.type_url = "t".into();
        a.value = vec![n];
        a
    }

    #[tokio::test]
    async fn numbered_in_order_bounded_and_waited_for() {
        let j = std::sync::Arc::new(Journal::default());
        assert_eq!(j.after(0), (vec![], 0));
        for n in 0..(CAPACITY + 2) {
            j.push("/tasks/exit", &any(n as u8), SystemTime::now());
        }
        let (all, first) = j.after(0);
        // The two oldest were dropped: a reader that had applied none sees the gap.
        assert_eq!(first, 3);
        assert_eq!(all.len(), CAPACITY);
        assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let last = all.last().unwrap().seq;
        assert!(j.after(last).0.is_empty());
        let waiter = {
            let j = j.clone();
            tokio::spawn(async move { j.read(last, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        j.push("/tasks/oom", &any(9), SystemTime::now());
        let (got, _) = waiter.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].seq, got[0].topic.as_str()),
            (last + 1, "/tasks/oom")
        );
        // Nothing new: answered after the wait, empty.
        let (none, _) = j.read(last + 1, Duration::from_millis(20)).await;
        assert!(none.is_empty());
        // Closing answers a waiting reader at once.
        let waiter = {
            let j = j.clone();
            tokio::spawn(async move { j.read(last + 1, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        j.close();
        let (none, _) = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("a closed journal answers")
            .unwrap();
        assert!(none.is_empty());
    }
}
