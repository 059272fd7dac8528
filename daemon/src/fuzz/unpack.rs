//! Layer tars, generated (names with `..` and absolute paths, symlinks and hard links
//! pointing out, whiteouts, opaque markers, devices) and then mutated: unpacking never
//! panics and never writes outside its directory. The targets point at a canary inside
//! the test's temp dir, so a bug shows there and never touches the host.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::image::oci::LayerKind;
use crate::image::unpack::unpack_layer;

#[derive(Debug, Clone)]
enum Entry {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
    CharDev(String),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{1,3}(/[a-c]{1,3}){0,2}",
        Just("../canary/evil".to_string()),
        Just("../../../../canary/evil".to_string()),
        Just("a/../../../../../canary/evil".to_string()),
        Just("./a/./b".to_string()),
        Just("link/escaped".to_string()),
        Just("abs/escaped".to_string()),
        Just(".wh.a".to_string()),
        Just("a/.wh.b".to_string()),
        Just("a/.wh..wh..opq".to_string()),
        Just(".wh...".to_string()),
        Just("/canary/evil".to_string()),
        "[a-z./]{0,300}",
    ]
}

fn target(canary: &Path) -> impl Strategy<Value = String> {
    let abs = canary.display().to_string();
    prop_oneof![
        Just("../../../../canary".to_string()),
        Just("../../../../canary/secret".to_string()),
        Just(abs.clone()),
        Just(format!("{abs}/secret")),
        Just("a".to_string()),
        Just("a/b".to_string()),
        "[a-c./]{0,12}",
    ]
}

fn entry(canary: &Path) -> impl Strategy<Value = Entry> {
    let (t, t2) = (target(canary), target(canary));
    prop_oneof![
        (name(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(n, d)| Entry::File(n, d)),
        name().prop_map(Entry::Dir),
        (
            prop_oneof![name(), Just("link".to_string()), Just("abs".to_string())],
            t,
        )
            .prop_map(|(n, t)| Entry::Symlink(n, t)),
        (name(), t2).prop_map(|(n, t)| Entry::Hardlink(n, t)),
        name().prop_map(Entry::CharDev),
    ]
}

/// The archive's bytes; names the tar crate refuses to write are written raw.
fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_mtime(1);
        let (path, data): (&str, &[u8]) = match e {
            Entry::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                (n, d)
            }
            Entry::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                (n, &[])
            }
            Entry::Symlink(n, t) | Entry::Hardlink(n, t) => {
                let ty = if matches!(e, Entry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(ty);
                h.set_size(0);
                if h.set_link_name(t).is_err() {
                    continue;
                }
                (n, &[])
            }
            Entry::CharDev(n) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_size(0);
                let _ = h.set_device_major(1);
                let _ = h.set_device_minor(3);
                (n, &[])
            }
        };
        // Header::set_path refuses `..`; an attacker's archive does not: write the raw
        // name into the header (GNU long names aside, 100 bytes).
        let raw = path.as_bytes();
        let n = raw.len().min(99);
        h.as_old_mut().name[..n].copy_from_slice(&raw[..n]);
        h.as_old_mut().name[n..].fill(0);
        h.set_cksum();
        let _ = b.append(&h, data);
    }
    b.into_inner().unwrap_or_default()
}

/// Every path under `top`, as a sorted list.
fn tree(top: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

fn run(
    root: &Path,
    entries: Vec<Entry>,
    edits: Vec<(prop::sample::Index, u8)>,
    gzip: bool,
) -> Result<(), TestCaseError> {
    let canary = root.join("canary");
    std::fs::write(canary.join("secret"), b"secret").unwrap();
    let t = tempfile::tempdir_in(root).unwrap();
    let dest = t.path().join("x/y/dest");
    std::fs::create_dir_all(&dest).unwrap();
    let before = tree(root);

    let mut bytes = archive(&entries);
    for (i, v) in edits {
        if !bytes.is_empty() {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
    }
    if gzip {
        use std::io::Write as _;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&bytes).unwrap();
        bytes = z.finish().unwrap();
    }
    let _ = unpack_layer(bytes.as_slice(), LayerKind::Tar, &dest);

    let outside: Vec<_> = tree(root)
        .into_iter()
        .filter(|p| !p.starts_with(&dest) && !before.contains(p))
        .collect();
    prop_assert!(
        outside.is_empty(),
        "written outside the layer dir: {:?}",
        outside
    );
    prop_assert_eq!(
        std::fs::read(canary.join("secret")).unwrap(),
        b"secret".to_vec()
    );
    prop_assert_eq!(std::fs::metadata(canary.join("secret")).unwrap().nlink(), 1);
    Ok(())
}

/// Half the archives start by laying traps: symlinks out of the layer dir, which later
/// entries (`link/escaped`, `abs/escaped`, hard links) try to write through.
fn traps(canary: &Path) -> impl Strategy<Value = Vec<Entry>> {
    let abs = canary.display().to_string();
    prop_oneof![
        Just(vec![]),
        Just(vec![
            Entry::Symlink("link".into(), abs),
            Entry::Symlink("abs".into(), "../../../../canary".into()),
        ]),
    ]
}

/// Written with a runner of its own rather than `proptest!`: the canary's dir must exist
/// before the strategies are made (absolute targets name it) and be removed after the
/// last case, which a `static` (never dropped) could not do.
#[test]
fn generated_and_mutated_layers_never_write_outside_their_dir() {
    let root = tempfile::Builder::new()
        .prefix("berth-fuzz-")
        .tempdir()
        .unwrap();
    let canary = root.path().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    let strategy = (
        traps(&canary),
        proptest::collection::vec(entry(&canary), 0..12),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<bool>(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(super::costly(20_000));
    let result = runner.run(&strategy, |(traps, entries, edits, gzip)| {
        run(
            root.path(),
            traps.into_iter().chain(entries).collect(),
            edits,
            gzip,
        )
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(super::config())]

    #[test]
    fn random_bytes_are_no_layer_and_no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        let _ = unpack_layer(bytes.as_slice(), LayerKind::Tar, &dest);
        let _ = unpack_layer(bytes.as_slice(), LayerKind::Zstd, &dest);
    }
}
