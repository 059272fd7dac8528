//! GetContainerEvents as kubelet's evented PLEG consumes it: one subscription at a time,
//! renewed whenever the stream breaks (the daemon was killed). At the end: every
//! pod and container the run saw announced from CREATED to DELETED, each transition once
//! and in order. An identical copy of an event in a later subscription (it was in flight
//! when the daemon died; CRI streams have no acknowledgement) is counted, not a violation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_cri::v1 as cri;

type Kind = cri::ContainerEventType;

#[derive(Debug, Clone)]
struct Received {
    id: String,
    kind: i32,
    at: i64,
    /// Which subscription delivered it (a new one after each break).
    session: u32,
}

#[derive(Clone, Default)]
pub struct Watcher {
    got: Arc<Mutex<Vec<Received>>>,
    /// What the watcher is doing now (told with violations).
    doing: Arc<Mutex<String>>,
}

impl Watcher {
    /// Subscribes now and again after every break, until the task is aborted.
    pub fn start(socket: String) -> (Watcher, tokio::task::JoinHandle<()>) {
        let w = Watcher::default();
        let got = w.got.clone();
        let doing = w.doing.clone();
        let task = tokio::spawn(async move {
            let mut session = 0;
            let t0 = std::time::Instant::now();
            loop {
                let Ok((mut rs, _)) = berth_tests::cri::connect(&socket).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let asked = t0.elapsed();
                *doing.lock().unwrap() = format!("subscribing since {asked:?}");
                let stream = match rs.get_container_events(cri::GetEventsRequest {}).await {
                    Ok(s) => s,
                    Err(e) => {
                        // Said when it took long: a subscription that waited for its
                        // answer missed everything meanwhile.
                        if t0.elapsed() - asked > Duration::from_secs(1) {
                            eprintln!(
                                "[torture] events: subscribing at {asked:?} failed after {:?}: {}",
                                t0.elapsed() - asked,
                                e.message()
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                session += 1;
                *doing.lock().unwrap() = format!(
                    "in session {session} since {asked:?} (answered at {:?})",
                    t0.elapsed()
                );
                let mut stream = stream.into_inner();
                let mut n = 0;
                let end = loop {
                    match stream.message().await {
                        Ok(Some(e)) => {
                            n += 1;
                            got.lock().unwrap().push(Received {
                                id: e.container_id,
                                kind: e.container_event_type,
                                at: e.created_at,
                                session,
                            });
                        }
                        Ok(None) => break "ended".to_string(),
                        Err(e) => break e.message().to_string(),
                    }
                };
                eprintln!(
                    "[torture] events: session {session} ({asked:?} to {:?}): {n} events, {end}",
                    t0.elapsed()
                );
            }
        });
        (w, task)
    }

    /// What the watcher is doing now: subscribing, or in which session since when.
    pub fn doing(&self) -> String {
        self.doing.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// (violations, identical redeliveries across a break, ids seen).
    pub fn check(&self, must_have_lived: &[String]) -> (Vec<String>, usize, usize) {
        let got = self.got.lock().unwrap().clone();
        let mut by_id: BTreeMap<&str, Vec<&Received>> = BTreeMap::new();
        for r in &got {
            by_id.entry(r.id.as_str()).or_default().push(r);
        }
        let mut bad = Vec::new();
        let mut redelivered = 0;
        for (id, evs) in &by_id {
            let mut seen: Vec<&Received> = Vec::new();
            for r in evs {
                if let Some(first) = seen.iter().find(|s| s.kind == r.kind) {
                    if first.at == r.at && first.session < r.session {
                        redelivered += 1;
                    } else {
                        bad.push(format!("{}: {} twice", short(id), name(r.kind)));
                    }
                    continue;
                }
                if let Some(last) = seen.last() {
                    if rank(r.kind) < rank(last.kind) {
                        bad.push(format!(
                            "{}: {} after {}",
                            short(id),
                            name(r.kind),
                            name(last.kind)
                        ));
                    }
                }
                seen.push(r);
            }
            let kinds: Vec<i32> = seen.iter().map(|r| r.kind).collect();
            if kinds.first() != Some(&(Kind::ContainerCreatedEvent as i32)) {
                bad.push(format!(
                    "{}: no CREATED first ({})",
                    short(id),
                    names(&kinds)
                ));
            }
            if kinds.last() != Some(&(Kind::ContainerDeletedEvent as i32)) {
                bad.push(format!(
                    "{}: no DELETED last ({})",
                    short(id),
                    names(&kinds)
                ));
            }
        }
        for id in must_have_lived {
            let kinds: Vec<i32> = by_id
                .get(id.as_str())
                .map(|v| v.iter().map(|r| r.kind).collect())
                .unwrap_or_default();
            for k in [
                Kind::ContainerCreatedEvent,
                Kind::ContainerStartedEvent,
                Kind::ContainerStoppedEvent,
                Kind::ContainerDeletedEvent,
            ] {
                if !kinds.contains(&(k as i32)) {
                    bad.push(format!(
                        "{}: no {} ({})",
                        short(id),
                        name(k as i32),
                        names(&kinds)
                    ));
                }
            }
        }
        (bad, redelivered, by_id.len())
    }
}

fn rank(kind: i32) -> i32 {
    // CREATED 0, STARTED 1, STOPPED 2, DELETED 3 in CRI's numbering too.
    kind
}

fn name(kind: i32) -> &'static str {
    match Kind::try_from(kind) {
        Ok(Kind::ContainerCreatedEvent) => "CREATED",
        Ok(Kind::ContainerStartedEvent) => "STARTED",
        Ok(Kind::ContainerStoppedEvent) => "STOPPED",
        Ok(Kind::ContainerDeletedEvent) => "DELETED",
        Err(_) => "?",
    }
}

fn names(kinds: &[i32]) -> String {
    kinds.iter().map(|k| name(*k)).collect::<Vec<_>>().join(",")
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
