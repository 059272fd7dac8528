//! Which lifecycle events GetContainerEvents clients have received, kept in the store, so
//! that a restarted berthd delivers the transitions nobody received, and not the others
//! again. What happened is read from the records (a record's state implies its events and
//! their times); what was received is marked here once the stream took it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Event, Kind};
use crate::error::Result;
use crate::store::{Store, DELIVERED};

#[cfg(test)]
use crate::store::CONTAINERS;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Delivered {
    pod_id: String,
    /// One bit per kind received (DELETED ends the entry instead).
    mask: u8,
}

fn bit(kind: Kind) -> u8 {
    match kind {
        Kind::Created => 1,
        Kind::Started => 2,
        Kind::Stopped => 4,
        Kind::Deleted => 8,
    }
}

/// The transitions a record shows happened, with their times (from the record).
#[derive(Debug, Clone)]
pub struct History {
    pub id: String,
    pub pod_id: String,
    pub happened: Vec<(Kind, i64)>,
}

/// The events to deliver after a restart, oldest first: what each record shows happened
/// and no client received, then DELETED for each id a client knew of that has no record
/// any more (timed by its tombstone, else `now`).
pub fn undelivered(store: &Store, records: &[History], now: i64) -> Result<Vec<Event>> {
    let mut delivered: HashMap<String, Delivered> =
        store.entries::<Delivered>(DELIVERED)?.into_iter().collect();
    let tombstones = store.tombstones()?;
    let mut out = Vec::new();
    for h in records {
        let mask = delivered.remove(&h.id).map(|d| d.mask).unwrap_or(0);
        for &(kind, at) in &h.happened {
            if mask & bit(kind) == 0 {
                out.push(Event {
                    kind,
                    id: h.id.clone(),
                    pod_id: h.pod_id.clone(),
                    at,
                });
            }
        }
    }
    for (id, d) in delivered {
        out.push(Event {
            kind: Kind::Deleted,
            at: tombstones.get(&id).copied().unwrap_or(now),
            id,
            pod_id: d.pod_id,
        });
    }
    // One container's events are in transition order (their times never go backwards);
    // across containers, in the order they happened.
    out.sort_by_key(|e| (e.at, bit(e.kind)));
    Ok(out)
}

/// Marks events as received by a client, in one transaction.
pub fn mark(store: &Store, events: &[Event]) -> Result<()> {
    let mut entries: HashMap<&str, Option<Delivered>> = HashMap::new();
    for e in events {
        let slot = match entries.get_mut(e.id.as_str()) {
            Some(s) => s,
            None => {
                let cur = store.get::<Delivered>(DELIVERED, &e.id)?;
                entries.entry(e.id.as_str()).or_insert(cur)
            }
        };
        if e.kind == Kind::Deleted {
            *slot = None;
            continue;
        }
        let d = slot.get_or_insert_with(|| Delivered {
            pod_id: e.pod_id.clone(),
            mask: 0,
        });
        d.mask |= bit(e.kind);
    }
    let puts: Vec<(&str, &Delivered)> = entries
        .iter()
        .filter_map(|(id, d)| d.as_ref().map(|d| (*id, d)))
        .collect();
    let deletes: Vec<&str> = entries
        .iter()
        .filter(|(_, d)| d.is_none())
        .map(|(id, _)| *id)
        .collect();
    store.mark_delivered(&puts, &deletes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, id: &str, at: i64) -> Event {
        Event {
            kind,
            id: id.into(),
            pod_id: "p".into(),
            at,
        }
    }

    fn hist(id: &str, happened: &[(Kind, i64)]) -> History {
        History {
            id: id.into(),
            pod_id: "p".into(),
            happened: happened.to_vec(),
        }
    }

    #[test]
    fn a_restart_delivers_what_was_not_received_and_deleted_for_records_gone() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.redb")).unwrap();
        mark(
            &s,
            &[
                ev(Kind::Created, "a", 1),
                ev(Kind::Started, "a", 2),
                ev(Kind::Created, "gone", 3),
                ev(Kind::Created, "done", 4),
                ev(Kind::Deleted, "done", 5),
            ],
        )
        .unwrap();
        s.remove(CONTAINERS, "gone", "n").unwrap();
        let removed_at = *s.tombstones().unwrap().get("gone").unwrap();
        let records = [
            // Exited while nobody listened.
            hist(
                "a",
                &[(Kind::Created, 1), (Kind::Started, 2), (Kind::Stopped, 9)],
            ),
            // Never received at all.
            hist("b", &[(Kind::Created, 6)]),
        ];
        let got = undelivered(&s, &records, 100).unwrap();
        let got: Vec<(Kind, &str, i64)> =
            got.iter().map(|e| (e.kind, e.id.as_str(), e.at)).collect();
        assert_eq!(
            got,
            [
                (Kind::Created, "b", 6),
                (Kind::Stopped, "a", 9),
                (Kind::Deleted, "gone", removed_at)
            ]
        );
        // Once those are received too, nothing is left to deliver.
        mark(
            &s,
            &[
                ev(Kind::Created, "b", 6),
                ev(Kind::Stopped, "a", 9),
                ev(Kind::Deleted, "gone", removed_at),
            ],
        )
        .unwrap();
        assert!(undelivered(&s, &records, 100).unwrap().is_empty());
        assert!(s.tombstones().unwrap().is_empty());
    }
}
