//! What a run found: violations by kind, restart times, counts, and the printed table.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Default)]
pub struct Report {
    pub violations: BTreeMap<String, Vec<String>>,
    pub ready: Vec<Duration>,
    pub kills: usize,
    pub failpoints_hit: usize,
    pub failpoints_missed: Vec<String>,
    pub lines: u64,
    /// GetContainerEvents: events received, ids they concerned, identical redeliveries.
    pub events: usize,
    pub event_ids: usize,
    pub redelivered: usize,
    /// Errors the churners and pull loop saw that an injected fault explains, by cause.
    pub injected: BTreeMap<String, usize>,
    /// Further figure lines printed before the table (load, resources).
    pub extra: Vec<String>,
}

impl Report {
    pub fn add(&mut self, kind: &str, detail: String) {
        eprintln!("[torture] VIOLATION {kind}: {detail}");
        self.violations
            .entry(kind.to_string())
            .or_default()
            .push(detail);
    }
}

pub fn print_report(r: &Report, iterations: usize) {
    let mut ready: Vec<Duration> = r.ready.clone();
    ready.sort();
    let med = ready.get(ready.len() / 2).copied().unwrap_or_default();
    let max = ready.last().copied().unwrap_or_default();
    println!();
    println!(
        "iterations {iterations}: {} random kills, {} failpoints hit",
        r.kills, r.failpoints_hit
    );
    if !r.failpoints_missed.is_empty() {
        println!(
            "failpoints not reached (killed instead): {:?}",
            r.failpoints_missed
        );
    }
    println!(
        "restart to ready: median {med:?}, max {max:?}; log lines checked: {}",
        r.lines
    );
    println!(
        "GetContainerEvents: {} events for {} pods and containers; {} identical \
         redeliveries of events in flight at a kill",
        r.events, r.event_ids, r.redelivered
    );
    println!(
        "errors explained by injected faults: {}",
        if r.injected.is_empty() {
            "none".to_string()
        } else {
            r.injected
                .iter()
                .map(|(k, n)| format!("{n} by {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    for l in &r.extra {
        println!("{l}");
    }
    println!();
    println!("| violation | count | first |");
    println!("|---|---|---|");
    if r.violations.is_empty() {
        println!("| (none) | 0 | |");
    }
    for (k, v) in &r.violations {
        println!("| {k} | {} | {} |", v.len(), v[0].replace('|', "/"));
    }
}
