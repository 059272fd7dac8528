//! Rebuilding a store from record copies: what is put back, what is left out and why,
//! and that the startup recovery then follows the shims as after any restart.

use std::sync::Arc;

use super::*;
use crate::records::copies::{RecordCopies, FILE};
use crate::records::{CtrState, PodState, Records};
use crate::shim_client::TaskStatus;
use crate::store::{LEASES, SNAPSHOTS};
use crate::testkit::{kit, Kit};

/// A kit with a Ready pod "p1" (its shim says the infra runs) and a running container
/// "c1" with a lease, snapshot and image, all copied.
fn node() -> (Kit, Arc<crate::shim_client::fake::FakeShim>) {
    let k = kit();
    let root = k.dir.path().join("root");
    let s = k.core.store();
    std::fs::create_dir_all(root.join("snapshots/1/fs")).unwrap();
    let blob = "ab".repeat(32);
    std::fs::create_dir_all(root.join("content/blobs/sha256")).unwrap();
    std::fs::write(root.join("content/blobs/sha256").join(&blob), b"x").unwrap();
    s.put(LEASES, "c1", &vec!["sha256:chain1".to_string()])
        .unwrap();
    s.put(
        SNAPSHOTS,
        "sha256:chain1",
        &serde_json::json!({"dir": "1", "parent": null, "size": 5}),
    )
    .unwrap();
    let image = crate::image::ImageRecord {
        id: "sha256:0".into(),
        repo_tags: vec!["docker.io/library/busybox:latest".into()],
        repo_digests: vec![],
        size: 1,
        config: Default::default(),
        chain_ids: vec!["sha256:chain1".into()],
        manifest_digest: format!("sha256:{blob}"),
        blobs: vec![format!("sha256:{blob}")],
    };
    s.put(IMAGES, "sha256:0", &image).unwrap();
    let (mut pod, shim) = k.ready_pod("p1");
    std::fs::create_dir_all(&pod.files).unwrap();
    pod.journal_seq = 4;
    s.put(PODS, "p1", &pod).unwrap();
    let mut c = k.container("c1", "p1", CtrState::Running);
    c.config.labels.insert("app".into(), "counter".into());
    c.log_path = "/var/log/pods/x/c1.log".into();
    std::fs::create_dir_all(&c.dir).unwrap();
    k.put_container(&c);
    shim.set_state("c1", TaskStatus::Running, 0, 0);
    (k, shim)
}

fn fresh(k: &Kit) -> (Store, Rebuilt) {
    let root = k.dir.path().join("root");
    let s = Store::open(&k.dir.path().join("new.redb")).unwrap();
    let copies = RecordCopies::new(&root).read_all();
    let r = rebuild(&s, &root, &k.dir.path().join("state"), copies).unwrap();
    (s, r)
}

#[test]
fn pods_containers_leases_snapshots_and_images_come_back() {
    let (k, _) = node();
    let (s, r) = fresh(&k);
    assert_eq!((r.pods.len(), r.containers.len()), (1, 1), "{r:?}");
    assert_eq!((r.images.len(), r.snapshots), (1, 1));
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    let pod = s.pod("p1").unwrap();
    assert_eq!(
        (pod.state, pod.pid, pod.journal_seq),
        (PodState::Ready, 4242, 4)
    );
    let c = s.container("c1").unwrap();
    let was = k.core.store().container("c1").unwrap();
    assert_eq!(
        serde_json::to_value(&c).unwrap(),
        serde_json::to_value(&was).unwrap()
    );
    assert_eq!(c.config.labels["app"], "counter");
    // Names are reserved again, the rootfs' snapshots held, the image listed.
    assert!(matches!(
        s.create(PODS, "other", &pod.name_key, &pod),
        Err(Error::AlreadyExists(_))
    ));
    let lease: Vec<String> = s.get(LEASES, "c1").unwrap().unwrap();
    assert_eq!(lease, ["sha256:chain1"]);
    assert!(s
        .get::<serde_json::Value>(SNAPSHOTS, "sha256:chain1")
        .unwrap()
        .is_some());
    let img: serde_json::Value = s.get(IMAGES, "sha256:0").unwrap().unwrap();
    assert_eq!(img["repo_tags"][0], "docker.io/library/busybox:latest");
}

#[test]
fn copies_that_fail_a_check_are_left_out_with_a_reason() {
    let (k, _) = node();
    let root = k.dir.path().join("root");
    // A container whose pod has no copy; a copy in another record's dir; an image
    // whose blob is gone; a snapshot whose dir is gone.
    let orphan = k.container("c2", "gone", CtrState::Running);
    std::fs::create_dir_all(&orphan.dir).unwrap();
    k.put_container(&orphan);
    let moved = root.join("pods/p9");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::copy(root.join("pods/p1").join(FILE), moved.join(FILE)).unwrap();
    let mut bad_paths = k.core.store().container("c1").unwrap();
    bad_paths.id = "c3".into();
    bad_paths.name_key = "c3_name".into();
    let c3 = root.join("containers/c3");
    std::fs::create_dir_all(&c3).unwrap();
    k.put_container(&bad_paths);
    std::fs::remove_dir_all(root.join("content/blobs")).unwrap();
    std::fs::remove_dir_all(root.join("snapshots/1")).unwrap();
    let (s, r) = fresh(&k);
    assert_eq!(r.pods, ["p1"]);
    assert_eq!(r.containers, ["c1"]);
    assert_eq!((r.images.len(), r.snapshots), (0, 0));
    let skipped = r.skipped.join("\n");
    assert!(skipped.contains("its pod gone is not rebuilt"), "{skipped}");
    assert!(skipped.contains("in the dir of p9"), "{skipped}");
    assert!(skipped.contains("containers/c3"), "{skipped}");
    assert!(s.container("c2").is_err());
}

#[test]
fn of_two_copies_with_one_name_the_newer_wins_and_tags_go_to_the_newest_image() {
    let (k, _) = node();
    let mut old = k.core.store().container("c1").unwrap();
    old.id = "c0".into();
    old.created_at = 1;
    old.dir = k.dir.path().join("root/containers/c0");
    old.bundle = k.dir.path().join("state/containers/c0");
    std::fs::create_dir_all(&old.dir).unwrap();
    k.core.store().put(CONTAINERS, "c0", &old).unwrap();
    let (s, r) = fresh(&k);
    assert_eq!(r.containers, ["c1"]);
    assert!(s.container("c0").is_err());
    let tags = untangle_tags(
        [
            (
                "sha256:a".to_string(),
                (
                    1,
                    serde_json::json!({"repo_tags": ["x:1", "y:1"], "blobs": []}),
                ),
            ),
            (
                "sha256:b".to_string(),
                (2, serde_json::json!({"repo_tags": ["x:1"], "blobs": []})),
            ),
        ]
        .into_iter()
        .collect(),
        k.dir.path(),
    );
    assert_eq!(tags[0].1["repo_tags"], serde_json::json!(["y:1"]));
    assert_eq!(tags[1].1["repo_tags"], serde_json::json!(["x:1"]));
}

#[tokio::test]
async fn after_a_lost_store_the_recovery_follows_the_shims_of_the_rebuilt_pods() {
    let (k, shim) = node();
    let cfg = (*k.core.config).clone();
    let launcher = k.launcher.clone();
    let dir = k.dir;
    drop(k.core);
    // The store is deleted; the shim saw the container exit meanwhile.
    std::fs::remove_file(cfg.store_path()).unwrap();
    shim.set_state("c1", TaskStatus::Stopped, 3, 900);
    let r = crate::salvage::prepare(&cfg, std::path::Path::new("/nonexistent"))
        .unwrap()
        .expect("a rebuild");
    assert_eq!((r.pods.len(), r.containers.len()), (1, 1));
    let core = crate::core::Core::with_parts(cfg, launcher, dir.path().join("pause")).unwrap();
    core.recovery.recover().await.unwrap();
    // Nothing rebuilt was removed as an orphan: records, their dirs and copies, the
    // image and the snapshot under the container's rootfs.
    let pod = core.store().pod("p1").unwrap();
    assert!(pod.files.join(FILE).exists());
    let c = core.store().container("c1").unwrap();
    assert!(c.dir.join(FILE).exists());
    assert_ne!(c.reason, "ShimUnreachable");
    assert!(core.images.get("busybox:latest").is_ok());
    assert!(dir.path().join("root/snapshots/1/fs").is_dir());
    // The fake shim was asked about the rebuilt pod (reconnected, not killed as an orphan).
    assert!(
        shim.calls().iter().any(|c| c.starts_with("state p1")),
        "{:?}",
        shim.calls()
    );
    assert!(
        !shim.calls().iter().any(|c| c.starts_with("kill")),
        "{:?}",
        shim.calls()
    );
}
