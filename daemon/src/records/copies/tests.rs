//! Record copies: written with the record once its dir exists, carrying a container's
//! lease, snapshots and image, removed before the record, root's alone, bounded.

use std::os::unix::fs::PermissionsExt as _;

use super::*;
use crate::records::{CtrState, Records};
use crate::store::{CONTAINERS, IMAGES, LEASES, PODS, SNAPSHOTS};
use crate::testkit::kit;

fn read(path: &Path) -> RecordCopy {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_record_is_copied_only_once_its_dir_exists_and_goes_before_the_record() {
    let k = kit();
    let (mut pod, _) = k.ready_pod("p1");
    let copy = pod.files.join(FILE);
    assert!(
        !copy.exists(),
        "the dir is made after the record: no copy yet"
    );
    std::fs::create_dir_all(&pod.files).unwrap();
    pod.ips = vec!["10.1.2.3".into()];
    k.core.store().put(PODS, "p1", &pod).unwrap();
    let c = read(&copy);
    assert_eq!((c.copy_format, c.record_format), (COPY_FORMAT, 3));
    assert_eq!(c.table, "pods");
    assert_eq!(c.record["ips"][0], "10.1.2.3");
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Every change is copied.
    k.core
        .store()
        .update(PODS, "p1", |r: &mut crate::records::PodRecord| {
            r.journal_seq = 9;
            true
        })
        .unwrap();
    assert_eq!(read(&copy).record["journal_seq"], 9);
    // A removal takes the copy first; a record whose dir is gone gets none again.
    k.core.store().remove(PODS, "p1", &pod.name_key).unwrap();
    assert!(!copy.exists());
    assert!(k.core.store().pod("p1").is_err());
}

#[test]
fn a_container_copy_carries_its_lease_snapshots_and_image() {
    let k = kit();
    k.ready_pod("p1");
    let s = k.core.store();
    s.put(LEASES, "c1", &vec!["sha256:chain1".to_string()])
        .unwrap();
    s.put(
        SNAPSHOTS,
        "sha256:chain1",
        &serde_json::json!({"dir": "1", "parent": null, "size": 5}),
    )
    .unwrap();
    s.put(
        IMAGES,
        "sha256:0",
        &serde_json::json!({"id": "sha256:0", "repo_tags": ["busybox:latest"]}),
    )
    .unwrap();
    let rec = k.container("c1", "p1", CtrState::Running);
    std::fs::create_dir_all(&rec.dir).unwrap();
    k.put_container(&rec);
    let c = read(&rec.dir.join(FILE));
    assert_eq!(c.table, "containers");
    assert_eq!(c.record["id"], "c1");
    assert_eq!(c.lease, Some(serde_json::json!(["sha256:chain1"])));
    assert_eq!(c.snapshots["sha256:chain1"]["dir"], "1");
    assert_eq!(c.image.unwrap()["repo_tags"][0], "busybox:latest");
    let _ = s
        .get::<serde_json::Value>(CONTAINERS, "c1")
        .unwrap()
        .unwrap();
}

#[test]
fn sync_writes_missing_and_stale_copies_only() {
    let k = kit();
    let (pod, _) = k.ready_pod("p1");
    std::fs::create_dir_all(&pod.files).unwrap();
    let copies = RecordCopies::new(&k.dir.path().join("root"));
    assert_eq!(copies.sync(k.core.store()).unwrap(), 1);
    assert_eq!(copies.sync(k.core.store()).unwrap(), 0);
    std::fs::write(pod.files.join(FILE), b"{}").unwrap();
    assert_eq!(copies.sync(k.core.store()).unwrap(), 1);
    assert_eq!(read(&pod.files.join(FILE)).record["id"], "p1");
}

#[test]
fn unreadable_copies_are_reported_not_trusted() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let dir = |id: &str| {
        let p = root.join("pods").join(id);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    std::fs::write(dir("a").join(FILE), b"garbage").unwrap();
    std::fs::write(
        dir("b").join(FILE),
        br#"{"copy_format": 99, "record_format": 3, "table": "pods", "record": {}}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir("c").join(FILE)).unwrap();
    let f = std::fs::File::create(dir("d").join(FILE)).unwrap();
    f.set_len(MAX_COPY + 1).unwrap();
    dir("e");
    let all = RecordCopies::new(root).read_all();
    let why: Vec<String> = all.iter().map(|(_, r)| r.clone().unwrap_err()).collect();
    assert_eq!(all.len(), 4, "{why:?}");
    assert!(why[0].starts_with("decode"), "{why:?}");
    assert!(why[1].contains("copy format 99"), "{why:?}");
    assert!(why[2].starts_with("open"), "{why:?}");
    assert!(why[3].contains("larger than"), "{why:?}");
}
