//! Unit tests of the store: records and names, and state across a reopen.

use super::*;
use serde::Deserialize;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Rec {
    id: String,
    n: u32,
}

#[test]
fn create_get_list_remove() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("s.redb")).unwrap();
    let a = Rec {
        id: "a".into(),
        n: 1,
    };
    s.create(PODS, "a", "pod_a", &a).unwrap();
    assert_eq!(s.get::<Rec>(PODS, "a").unwrap(), Some(a));
    assert!(matches!(
        s.create(
            PODS,
            "b",
            "pod_a",
            &Rec {
                id: "b".into(),
                n: 2
            }
        ),
        Err(Error::AlreadyExists(_))
    ));
    // A refused create left nothing behind.
    assert_eq!(s.get::<Rec>(PODS, "b").unwrap(), None);
    s.put(
        PODS,
        "a",
        &Rec {
            id: "a".into(),
            n: 3,
        },
    )
    .unwrap();
    assert_eq!(s.list::<Rec>(PODS).unwrap().len(), 1);
    s.remove(PODS, "a", "pod_a").unwrap();
    assert!(s.list::<Rec>(PODS).unwrap().is_empty());
    // The name is free again.
    s.create(
        PODS,
        "c",
        "pod_a",
        &Rec {
            id: "c".into(),
            n: 4,
        },
    )
    .unwrap();
    s.remove(PODS, "missing", "nobody").unwrap();
}

#[test]
fn state_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.redb");
    {
        let s = Store::open(&p).unwrap();
        s.create(
            CONTAINERS,
            "x",
            "ctr_x",
            &Rec {
                id: "x".into(),
                n: 9,
            },
        )
        .unwrap();
    }
    // A store left world-readable (an older berthd) is root's alone once opened.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = Store::open(&p).unwrap();
    assert_eq!(s.get::<Rec>(CONTAINERS, "x").unwrap().unwrap().n, 9);
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Counts the record copies the store asks for (each is one per committed change).
#[derive(Default)]
struct CountingCopies(std::sync::atomic::AtomicUsize);

impl Copies for CountingCopies {
    fn written(&self, _: &Store, _: &str, _: &str, _: &[u8]) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn removed(&self, _: &str, _: &str) {}
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Labelled {
    labels: std::collections::HashMap<String, String>,
    op: Option<String>,
}

#[test]
fn an_update_that_changes_nothing_commits_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(&d.path().join("s.redb")).unwrap();
    let copies = std::sync::Arc::new(CountingCopies::default());
    s.set_copies(copies.clone());
    let labels = (0..16)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    let rec = Labelled { labels, op: None };
    s.create(PODS, "p", "pod_p", &rec).unwrap();
    let written = || copies.0.load(std::sync::atomic::Ordering::SeqCst);
    let before = written();
    // A mark that is already there (a removal's stop of a stopped pod): the record is
    // returned, nothing is written, though its map serializes in another order.
    let got = s
        .update(PODS, "p", |r: &mut Labelled| {
            r.op.get_or_insert_with(|| "stop".into());
            r.op = None;
            true
        })
        .unwrap();
    assert_eq!(got.as_ref(), Some(&rec));
    assert_eq!(written(), before, "no copy for an unchanged record");
    // A real change is written and seen.
    s.update(PODS, "p", |r: &mut Labelled| {
        r.op = Some("stop".into());
        true
    })
    .unwrap();
    assert_eq!(written(), before + 1);
    let now: Labelled = s.get(PODS, "p").unwrap().unwrap();
    assert_eq!(now.op.as_deref(), Some("stop"));
}

#[test]
fn shared_lists_follow_every_write_and_removal() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("s.redb")).unwrap();
    let rec = |id: &str, n| Rec { id: id.into(), n };
    s.create(PODS, "a", "pod_a", &rec("a", 1)).unwrap();
    s.create(PODS, "b", "pod_b", &rec("b", 2)).unwrap();
    let (first, bad) = s.list_shared::<Rec>(PODS).unwrap();
    assert!(bad.is_empty());
    assert_eq!(first.iter().map(|r| r.n).collect::<Vec<_>>(), [1, 2]);
    // Unchanged records are the same decoded values; a changed one is decoded again.
    s.put(PODS, "b", &rec("b", 3)).unwrap();
    let (second, _) = s.list_shared::<Rec>(PODS).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first[0], &second[0]));
    assert_eq!(second[1].n, 3);
    // A removed record is gone from the next list; a new one with its id is the new one.
    s.remove(PODS, "a", "pod_a").unwrap();
    assert_eq!(s.list_shared::<Rec>(PODS).unwrap().0.len(), 1);
    s.create(PODS, "a", "pod_a", &rec("a", 7)).unwrap();
    let (third, _) = s.list_shared::<Rec>(PODS).unwrap();
    assert_eq!(third.iter().map(|r| r.n).collect::<Vec<_>>(), [7, 3]);
    // An undecodable record is named, the others still listed.
    s.put(PODS, "c", &"not a record").unwrap();
    let (fourth, bad) = s.list_shared::<Rec>(PODS).unwrap();
    assert_eq!((fourth.len(), bad), (2, vec!["c".to_string()]));
}
