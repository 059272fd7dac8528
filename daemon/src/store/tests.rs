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
