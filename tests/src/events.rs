//! `ctr events` in the background, parsed into (topic, payload) pairs.

use crate::ctr::Ctr;
use crate::procs;
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One event line: `<timestamp> <namespace> <topic> <json>`.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub payload: String,
}

/// A running `ctr events` whose lines are collected as they arrive. Killed (by pid) on drop.
pub struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<Event>>>,
}

impl Events {
    /// Starts `ctr events` and waits until it is subscribed (a short settle delay).
    pub fn start(ctr: &Ctr) -> Result<Events> {
        let mut child = ctr
            .command(&["events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("events stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let ns = ctr.namespace.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(e) = parse(&line, &ns) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                }
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        Ok(Events { child, lines })
    }

    /// Task topics (`/tasks/...`) seen so far for container `id`, in arrival order.
    pub fn task_topics(&self, id: &str) -> Vec<String> {
        let needle = format!("\"container_id\":\"{id}\"");
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.topic.starts_with("/tasks/") && e.payload.contains(&needle))
            .map(|e| e.topic.clone())
            .collect()
    }

    /// All events seen so far.
    pub fn all(&self) -> Vec<Event> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `id` has produced `topic` `count` times.
    pub fn wait_for(&self, id: &str, topic: &str, count: usize, timeout: Duration) -> Result<()> {
        procs::poll(timeout, &format!("{count}x {topic} for {id}"), || {
            (self.task_topics(id).iter().filter(|t| *t == topic).count() >= count).then_some(())
        })
        .with_context(|| format!("topics seen for {id}: {:?}", self.task_topics(id)))
    }
}

/// Parses one `ctr events` line; the topic follows the namespace token.
pub fn parse(line: &str, ns: &str) -> Option<Event> {
    let mut it = line
        .split(' ')
        .filter(|s| !s.is_empty())
        .skip_while(|t| *t != ns);
    it.next()?;
    let topic = it.next()?.to_string();
    let payload = it.collect::<Vec<_>>().join(" ");
    topic.starts_with('/').then_some(Event { topic, payload })
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_ctr_events_line() {
        let l = r#"2024-01-01 10:00:00.1 +0000 UTC bt-x /tasks/exit {"container_id":"c","id":"c","pid":7,"exit_status":3}"#;
        let e = super::parse(l, "bt-x").expect("parsed");
        assert_eq!(e.topic, "/tasks/exit");
        assert!(e.payload.contains("\"exit_status\":3"));
    }

    #[test]
    fn parses_ctr_2_1_events_line() {
        // ctr 2.x prints the same columns; exited_at is a protobuf Timestamp object.
        let l = r#"2026-12-05 16:37:10.154946509 +0000 UTC bt-x /tasks/exit {"container_id":"c","id":"e1","pid":30090,"exit_status":5,"exited_at":{"seconds":1796488630,"nanos":153771654}}"#;
        let e = super::parse(l, "bt-x").expect("parsed");
        assert_eq!(e.topic, "/tasks/exit");
        assert!(e.payload.contains("\"id\":\"e1\""));
        assert!(e.payload.contains("\"exit_status\":5"));
    }
}
