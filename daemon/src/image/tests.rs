//! Image store tests on real files: archives built in the test, imported, and checked
//! through a real read-only overlay mount of the image's lower dirs (run as root).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::testutil::{self, archive, image, LayerTar, TestImage, Top};
use super::*;
use crate::store::SNAPSHOTS;

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<Store>,
    images: ImageStore,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let store = Arc::new(Store::open(&dir.path().join("state.redb")).expect("store"));
    let images = ImageStore::open(&root, store.clone()).expect("image store");
    Env {
        _dir: dir,
        root,
        store,
        images,
    }
}

impl Env {
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.root.parent().expect("parent").join(name);
        fs::write(&p, bytes).expect("write archive");
        p
    }

    fn blob_count(&self) -> usize {
        fs::read_dir(self.root.join("content/blobs/sha256"))
            .expect("blobs")
            .count()
    }

    /// Snapshot directories on disk and records in the table.
    fn snapshot_counts(&self) -> (usize, usize) {
        let dirs = fs::read_dir(self.root.join("snapshots"))
            .expect("snapshots")
            .count();
        let recs = self
            .store
            .entries::<snapshot::SnapshotRecord>(SNAPSHOTS)
            .expect("table")
            .len();
        (dirs, recs)
    }

    fn assert_empty(&self) {
        assert_eq!(self.blob_count(), 0, "blobs left");
        assert_eq!(self.snapshot_counts(), (0, 0), "snapshots left");
        assert_eq!(
            fs::read_dir(self.root.join("content/ingest"))
                .expect("ingest")
                .count(),
            0,
            "ingest files left"
        );
    }
}

/// The pull's leases as the sweep sees them.
type Leases = std::sync::Mutex<std::collections::HashMap<String, usize>>;
/// What races a sweep: given each unreferenced blob and the leases.
type Racer = Box<dyn FnMut(&str, &Leases)>;

thread_local! {
    /// Test seam in `sweep`: runs before each blob no image references is looked up and
    /// deleted, as a pull racing the sweep would.
    pub(super) static SWEEP_RACE: std::cell::RefCell<Option<Racer>> =
        const { std::cell::RefCell::new(None) };
}

const BUSYBOX1: &[(&str, &str)] = &[("org.opencontainers.image.ref.name", "busybox:1")];

fn bottom_layer() -> Vec<u8> {
    let mut t = LayerTar::new();
    t.dir("./", 0o755)
        .dir("etc/", 0o755)
        .file("etc/gone", "bye")
        .file("etc/stays", "here")
        .dir("opq/", 0o755)
        .file("opq/old1", "1")
        .dir("opq/sub/", 0o700)
        .file("opq/sub/old2", "2")
        .file_owned("keep", "keep", 0o640, 1000, 1001)
        .dir("data/", 0o755)
        .file_xattr("data/target", "T", &[("user.test", "hello")])
        .hardlink("data/hard", "data/target")
        .symlink("data/sym", "target")
        .symlink("abs", "/etc/stays")
        .dir("dev/", 0o755)
        .char_dev("dev/null2", 1, 3)
        .dir("bin/", 0o755)
        .file_owned("bin/su", "#!", 0o4755, 0, 0);
    t.finish()
}

fn top_layer() -> Vec<u8> {
    let mut t = LayerTar::new();
    t.dir("etc/", 0o755)
        .file(".wh.abs", "")
        .file("etc/.wh.gone", "")
        .dir("opq/", 0o755)
        .file("opq/.wh..wh..opq", "")
        .file("opq/new", "new")
        .file("added", "A");
    t.finish()
}

/// A read-only overlay of `lower`, unmounted on drop even when an assertion fails.
pub(super) struct Overlay(PathBuf);

impl Overlay {
    pub(super) fn mount(lower: &[PathBuf], at: &Path) -> Overlay {
        fs::create_dir_all(at).expect("mountpoint");
        let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        let opts = format!("lowerdir={}", lowers.join(":"));
        mount(
            Some("overlay"),
            at,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(opts.as_str()),
        )
        .expect("mount overlay");
        Overlay(at.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn import_two_layers_and_mount_the_merged_view() {
    let e = env();
    let img = image(&[bottom_layer(), top_layer()], true, false);
    let (bytes, _) = archive(&img, Top::Manifest(BUSYBOX1), None);
    let recs = e
        .images
        .import_oci_archive(&e.write("a.tar", &bytes))
        .expect("import");
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.id, img.config_digest);
    assert_eq!(rec.repo_tags, ["docker.io/library/busybox:1"]);
    assert_eq!(
        rec.repo_digests,
        [format!("docker.io/library/busybox@{}", img.manifest_digest)]
    );
    assert_eq!(rec.config.user, "1000:1000");
    assert_eq!(rec.config.entrypoint, ["/bin/sh"]);
    assert_eq!(rec.config.exposed_ports, ["80/tcp"]);
    assert_eq!(rec.chain_ids.len(), 2);

    let lowers = e.images.lower_dirs(rec).expect("lower dirs");
    assert_eq!(lowers.len(), 2);
    // The top layer's own dir carries overlay's markers.
    let top = &lowers[0];
    let wh = fs::symlink_metadata(top.join("etc/gone")).expect("whiteout");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr::get(&top.join("opq"), "trusted.overlay.opaque").expect("xattr"),
        Some(b"y".to_vec())
    );

    let m = e.root.parent().expect("parent").join("merged");
    let _ov = Overlay::mount(&lowers, &m);
    assert_eq!(
        names(&m),
        set(&["added", "bin", "data", "dev", "etc", "keep", "opq"])
    );
    assert_eq!(names(&m.join("etc")), set(&["stays"]));
    assert_eq!(names(&m.join("opq")), set(&["new"]));
    assert_eq!(fs::read_to_string(m.join("opq/new")).expect("new"), "new");
    assert_eq!(fs::read_to_string(m.join("added")).expect("added"), "A");

    let keep = fs::metadata(m.join("keep")).expect("keep");
    assert_eq!(
        (keep.mode() & 0o7777, keep.uid(), keep.gid()),
        (0o640, 1000, 1001)
    );
    assert_eq!(
        fs::metadata(m.join("bin/su")).expect("su").mode() & 0o7777,
        0o4755
    );
    assert_eq!(keep.mtime(), 1_700_000_000);

    let target = fs::metadata(m.join("data/target")).expect("target");
    let hard = fs::metadata(m.join("data/hard")).expect("hard");
    assert_eq!(hard.ino(), target.ino());
    assert_eq!(target.nlink(), 2);
    assert_eq!(
        fs::read_link(m.join("data/sym")).expect("sym"),
        Path::new("target")
    );
    assert_eq!(
        fs::read_to_string(m.join("data/sym")).expect("via sym"),
        "T"
    );
    assert_eq!(
        xattr::get(&m.join("data/target"), "user.test").expect("xattr"),
        Some(b"hello".to_vec())
    );

    let dev = fs::symlink_metadata(m.join("dev/null2")).expect("dev");
    assert!(dev.file_type().is_char_device());
    assert_eq!((libc::major(dev.rdev()), libc::minor(dev.rdev())), (1, 3));
    assert_eq!(
        fs::metadata(m.join("opq")).expect("opq").mode() & 0o7777,
        0o755
    );
}

#[test]
fn lookup_by_id_prefix_tag_and_digest() {
    let e = env();
    let img = image(&[top_layer()], false, false);
    let annots = [
        ("io.containerd.image.name", "localhost:5000/app:v1"),
        ("org.opencontainers.image.ref.name", "v1"),
    ];
    let decoy = image(&[bottom_layer()], false, false);
    let (bytes, target) = archive(&img, Top::Nested(&annots, &decoy), None);
    let recs = e
        .images
        .import_oci_archive(&e.write("a.tar", &bytes))
        .expect("import");
    assert_eq!(recs.len(), 1);
    let id = &img.config_digest;
    let hex = id.trim_start_matches("sha256:");
    for r in [
        id.clone(),
        hex.to_string(),
        hex[..12].to_string(),
        format!("sha256:{}", &hex[..20]),
        "localhost:5000/app:v1".to_string(),
        format!("localhost:5000/app@{target}"),
    ] {
        assert_eq!(
            &e.images.get(&r).unwrap_or_else(|x| panic!("{r}: {x}")).id,
            id
        );
    }
    for r in [
        "busybox",
        "localhost:5000/app:v2",
        format!("app@{target}").as_str(),
    ] {
        assert!(matches!(e.images.get(r), Err(Error::NotFound(_))), "{r}");
    }
    assert!(matches!(
        e.images.get("Bad Ref"),
        Err(Error::InvalidArgument(_))
    ));
    // Only the host platform's blobs stayed: the decoy's layer and the index were swept.
    assert_eq!(e.blob_count(), 3);
    assert_eq!(e.images.list().expect("list").len(), 1);
    let (bytes_used, inodes) = e.images.fs_usage().expect("usage");
    assert!(bytes_used > 0 && inodes > 0);
}

#[test]
fn digest_mismatch_names_the_digest_and_leaves_nothing() {
    let e = env();
    let img = image(&[bottom_layer(), top_layer()], true, false);
    let layer = img
        .blobs
        .keys()
        .find(|d| **d != img.config_digest && **d != img.manifest_digest)
        .expect("a layer")
        .clone();
    let (bytes, _) = archive(&img, Top::Manifest(BUSYBOX1), Some(&layer));
    let err = e
        .images
        .import_oci_archive(&e.write("bad.tar", &bytes))
        .expect_err("tampered blob");
    assert!(err.to_string().contains(&layer), "{err}");
    e.assert_empty();

    // A layer whose content does not match the config's diff id.
    let img = image(&[bottom_layer(), top_layer()], true, true);
    let (bytes, _) = archive(&img, Top::Manifest(BUSYBOX1), None);
    let err = e
        .images
        .import_oci_archive(&e.write("bad2.tar", &bytes))
        .expect_err("bad diff id");
    assert!(err.to_string().contains("diff id"), "{err}");
    e.assert_empty();
    assert!(e.images.list().expect("list").is_empty());
}

#[test]
fn escaping_entries_are_invalid_and_leave_nothing() {
    let e = env();
    let outside = e.root.parent().expect("parent").to_path_buf();
    let mut cases = Vec::new();
    let mut t = LayerTar::new();
    t.file("ok", "x").file("../escape", "x");
    cases.push(t.finish());
    let mut t = LayerTar::new();
    t.file("/abs-escape", "x");
    cases.push(t.finish());
    let mut t = LayerTar::new();
    t.symlink("link", outside.to_str().expect("utf8"))
        .file("link/escape", "x");
    cases.push(t.finish());
    let mut t = LayerTar::new();
    t.hardlink("h", "../../etc/passwd");
    cases.push(t.finish());
    for (i, layer) in cases.into_iter().enumerate() {
        let img = image(&[layer], false, false);
        let (bytes, _) = archive(&img, Top::Manifest(BUSYBOX1), None);
        let err = e
            .images
            .import_oci_archive(&e.write("esc.tar", &bytes))
            .expect_err("escape");
        assert!(matches!(err, Error::InvalidArgument(_)), "case {i}: {err}");
        assert!(!outside.join("escape").exists(), "case {i}");
        e.assert_empty();
    }
}

#[test]
fn second_import_reuses_blobs_and_snapshots() {
    let e = env();
    let img = image(&[bottom_layer(), top_layer()], true, false);
    let (bytes, _) = archive(&img, Top::Manifest(BUSYBOX1), None);
    let p = e.write("a.tar", &bytes);
    let first = e.images.import_oci_archive(&p).expect("first");
    let counts = (e.blob_count(), e.snapshot_counts());
    let dirs = e.images.lower_dirs(&first[0]).expect("dirs");
    let second = e.images.import_oci_archive(&p).expect("second");
    assert_eq!(first, second);
    assert_eq!((e.blob_count(), e.snapshot_counts()), counts);
    assert_eq!(counts, (4, (2, 2)));
    assert_eq!(e.images.lower_dirs(&second[0]).expect("dirs"), dirs);
    assert_eq!(e.images.list().expect("list").len(), 1);
}

fn import_named(e: &Env, img: &TestImage, name: &str) -> ImageRecord {
    let annots = [("org.opencontainers.image.ref.name", name)];
    let (bytes, _) = archive(img, Top::Manifest(&annots), None);
    let mut recs = e
        .images
        .import_oci_archive(&e.write("n.tar", &bytes))
        .expect("import");
    recs.remove(0)
}

#[test]
fn removing_the_last_tag_frees_snapshots_and_blobs() {
    let e = env();
    let base = bottom_layer();
    let a = image(&[base.clone(), top_layer()], true, false);
    let mut t = LayerTar::new();
    t.file("other", "o");
    let b = image(&[base, t.finish()], true, false);
    import_named(&e, &a, "busybox:1");
    let rec = import_named(&e, &a, "busybox:2");
    assert_eq!(
        rec.repo_tags,
        ["docker.io/library/busybox:1", "docker.io/library/busybox:2"]
    );
    let rb = import_named(&e, &b, "other:1");
    // The shared bottom layer is one snapshot.
    assert_eq!(rb.chain_ids[0], rec.chain_ids[0]);
    assert_eq!(e.snapshot_counts(), (3, 3));

    e.images.remove("busybox:1").expect("untag");
    let left = e.images.get("busybox:2").expect("still tagged");
    assert_eq!(left.repo_tags, ["docker.io/library/busybox:2"]);
    assert!(matches!(e.images.get("busybox:1"), Err(Error::NotFound(_))));
    assert_eq!(e.snapshot_counts(), (3, 3));

    let before = e.images.fs_usage().expect("usage");
    e.images
        .remove("docker.io/library/busybox:2")
        .expect("last tag");
    assert!(matches!(e.images.get(&rec.id), Err(Error::NotFound(_))));
    // Only image b's layers and blobs are left; the shared layer survived.
    assert_eq!(e.snapshot_counts(), (2, 2));
    assert_eq!(e.blob_count(), 4);
    assert!(e
        .images
        .lower_dirs(&rb)
        .expect("b intact")
        .iter()
        .all(|d| d.is_dir()));
    assert!(e.images.fs_usage().expect("usage").0 < before.0);

    e.images.remove(&rb.id).expect("by id");
    e.assert_empty();
    assert!(matches!(e.images.remove(&rb.id), Err(Error::NotFound(_))));
}

#[test]
fn zstd_layers_are_unpacked() {
    let e = env();
    let img = testutil::image_with(&[top_layer()], testutil::zstd, false);
    let (bytes, _) = archive(&img, Top::Manifest(BUSYBOX1), None);
    let recs = e
        .images
        .import_oci_archive(&e.write("z.tar", &bytes))
        .expect("zstd import");
    let lowers = e.images.lower_dirs(&recs[0]).expect("lowers");
    assert_eq!(
        fs::read_to_string(lowers[0].join("opq/new")).expect("opq/new"),
        "new"
    );
}

#[test]
fn export_then_import_elsewhere_gives_the_same_image() {
    let e = env();
    let img = image(&[top_layer()], true, false);
    let (bytes, _) = archive(&img, Top::Manifest(BUSYBOX1), None);
    let recs = e
        .images
        .import_oci_archive(&e.write("in.tar", &bytes))
        .expect("import");
    let out = e.root.parent().expect("parent").join("out.tar");
    let exported = e
        .images
        .export_oci_archive(&["busybox:1".to_string()], &out)
        .expect("export");
    assert_eq!(exported[0].id, recs[0].id);
    // Unknown names fail and leave no file.
    let bad = e.root.parent().expect("parent").join("bad.tar");
    assert!(matches!(
        e.images.export_oci_archive(&["nope:1".to_string()], &bad),
        Err(Error::NotFound(_))
    ));
    assert!(!bad.exists() && !bad.with_extension("partial").exists());

    let other = env();
    let again = other.images.import_oci_archive(&out).expect("re-import");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, recs[0].id);
    assert_eq!(again[0].repo_tags, recs[0].repo_tags);
    assert_eq!(again[0].chain_ids, recs[0].chain_ids);
    let lowers = other.images.lower_dirs(&again[0]).expect("lowers");
    assert_eq!(
        fs::read_to_string(lowers[0].join("opq/new")).expect("opq/new"),
        "new"
    );
}

#[test]
fn a_blob_a_pull_leases_while_a_removal_sweeps_is_kept() {
    let e = env();
    let rec = import_named(&e, &image(&[bottom_layer()], true, false), "busybox:1");
    let layer = rec.blobs.last().expect("a layer blob").clone();
    // A pull of another image with the same layer, while busybox:1 is removed: it leases
    // the layer and finds it present (`pull::Lease`, `fetch_leased`) after the sweep began.
    let content = e.root.join("content/blobs/sha256");
    let racing = layer.clone();
    SWEEP_RACE.with(|h| {
        *h.borrow_mut() = Some(Box::new(move |d, leases| {
            if d == racing {
                *leases.lock().unwrap().entry(d.to_string()).or_default() += 1;
                assert!(content.join(&d["sha256:".len()..]).exists());
            }
        }))
    });
    e.images.remove("busybox:1").expect("remove");
    SWEEP_RACE.with(|h| *h.borrow_mut() = None);
    assert!(
        e.images.content.contains(&layer).expect("contains"),
        "the sweep deleted a blob a pull holds"
    );
}
