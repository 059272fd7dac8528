//! Remapped copies: ids shifted, special files and overlay markers kept, symlinks never
//! followed, shared per (layer, mapping) and removed with the last user (as root).

use super::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

fn maps(host: u32) -> Vec<IdMapping> {
    vec![IdMapping {
        host_id: host,
        container_id: 0,
        length: 65536,
    }]
}

#[test]
fn ids_shift_through_the_mapping_or_overflow() {
    let m = maps(196608);
    assert_eq!(map_id(0, &m), 196608);
    assert_eq!(map_id(1000, &m), 197608);
    assert_eq!(map_id(65535, &m), 262143);
    assert_eq!(map_id(65536, &m), OVERFLOW_ID);
    let from_one = vec![IdMapping {
        host_id: u32::MAX - 1,
        container_id: 1,
        length: 10,
    }];
    assert_eq!(map_id(0, &from_one), OVERFLOW_ID);
    assert_eq!(map_id(1, &from_one), u32::MAX - 1);
    assert_eq!(map_id(3, &from_one), OVERFLOW_ID, "overflowing u32");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A layer as unpack leaves one: files of several owners, a setuid binary, links, a
/// whiteout, an opaque dir and a FIFO.
fn layer(d: &Path) {
    fs::create_dir_all(d.join("etc/opaque")).unwrap();
    fs::write(d.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    fs::write(d.join("user-file"), "u").unwrap();
    std::os::unix::fs::chown(d.join("user-file"), Some(1000), Some(2000)).unwrap();
    fs::write(d.join("suid"), "s").unwrap();
    fs::set_permissions(d.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(d.join("user-file"), d.join("hardlink")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", d.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../../../etc", d.join("up-link")).unwrap();
    nix::sys::stat::mknod(
        &d.join("gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    xattr::set(&d.join("etc/opaque"), "trusted.overlay.opaque", b"y").unwrap();
    nix::unistd::mkfifo(
        &d.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::write(d.join("ping"), "p").unwrap();
    fs::set_permissions(d.join("ping"), fs::Permissions::from_mode(0o755)).unwrap();
    xattr::set(&d.join("ping"), "security.capability", &V2_NET_RAW).unwrap();
}

/// `vfs_cap_data` v2 with CAP_NET_RAW (13) permitted and the effective bit.
const V2_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, // magic: v2 | effective
    0, 0x20, 0, 0, // permitted[0]: 1 << 13
    0, 0, 0, 0, // inheritable[0]
    0, 0, 0, 0, // permitted[1]
    0, 0, 0, 0, // inheritable[1]
];

#[test]
fn only_v2_capabilities_are_rewritten() {
    assert_eq!(namespaced_caps(b"junk", 7), b"junk");
    let mut v3 = V2_NET_RAW.to_vec();
    v3[3] = 3;
    v3.extend_from_slice(&5u32.to_le_bytes());
    assert_eq!(namespaced_caps(&v3, 7), v3);
    assert_eq!(namespaced_caps(&V2_NET_RAW, 7)[20..], 7u32.to_le_bytes());
}

#[test]
fn a_copy_keeps_the_layer_with_its_ids_shifted() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("layer");
    layer(&src);
    let dst = t.path().join("copy");
    copy_tree(&src, &dst, &maps(196608), &maps(262144)).unwrap();
    let ids = |p: &str| {
        let m = fs::symlink_metadata(dst.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(ids(""), (196608, 262144));
    assert_eq!(ids("etc/passwd"), (196608, 262144));
    assert_eq!(ids("user-file"), (197608, 264144));
    assert_eq!(ids("abs-link"), (196608, 262144));
    assert_eq!(
        fs::read_to_string(dst.join("etc/passwd")).unwrap(),
        "root:x:0:0::/:/bin/sh\n"
    );
    let suid = fs::metadata(dst.join("suid")).unwrap();
    assert_eq!(
        suid.mode() & 0o7777,
        0o4755,
        "set-id bits survive the chown"
    );
    let (a, b) = (
        fs::metadata(dst.join("user-file")).unwrap(),
        fs::metadata(dst.join("hardlink")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard links stay links");
    assert_eq!(
        fs::read_link(dst.join("abs-link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert_eq!(
        fs::read_link(dst.join("up-link")).unwrap(),
        Path::new("../../../../etc")
    );
    let gone = fs::symlink_metadata(dst.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert_eq!(
        xattr::get(&dst.join("etc/opaque"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(fs::symlink_metadata(dst.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // A v2 file capability (cap_net_raw, effective) becomes v3 owned by the mapped root.
    let caps = fs::symlink_metadata(dst.join("ping")).unwrap();
    assert_eq!(caps.mode() & 0o7777, 0o755);
    let v3 = xattr::get(&dst.join("ping"), "security.capability")
        .unwrap()
        .expect("the capability is kept");
    assert_eq!(v3.len(), 24);
    assert_eq!(v3[..4], [1, 0, 0, 3], "v3, effective");
    assert_eq!(v3[4..20], V2_NET_RAW[4..20]);
    assert_eq!(v3[20..], 196608u32.to_le_bytes());
    // The layer itself is untouched.
    assert_eq!(fs::metadata(src.join("etc/passwd")).unwrap().uid(), 0);
    assert_eq!(
        xattr::get(&src.join("ping"), "security.capability").unwrap(),
        Some(V2_NET_RAW.to_vec())
    );

    // A socket is refused.
    let bad = t.path().join("bad");
    fs::create_dir(&bad).unwrap();
    let _s = std::os::unix::net::UnixListener::bind(bad.join("sock")).unwrap();
    let e = copy_tree(&bad, &t.path().join("bad-copy"), &maps(1), &maps(1)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

#[test]
fn copies_are_shared_per_mapping_and_go_with_their_last_user() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (l1, l2) = (t.path().join("l1"), t.path().join("l2"));
    layer(&l1);
    fs::create_dir(&l2).unwrap();
    fs::write(l2.join("top"), "t").unwrap();
    fs::create_dir(t.path().join("root")).unwrap();
    let c = Copies::new(&t.path().join("root"));
    let lowers = vec![l1.clone(), l2.clone()];
    let a = c
        .acquire("a", &lowers, &maps(196608), &maps(196608))
        .unwrap();
    let b = c
        .acquire("b", &lowers, &maps(196608), &maps(196608))
        .unwrap();
    assert_eq!(a, b, "the same mapping shares the copies");
    assert_eq!(a.len(), 2);
    assert_eq!(fs::read_to_string(a[1].join("top")).unwrap(), "t");
    let other = c
        .acquire("c", &lowers[1..], &maps(65536), &maps(65536))
        .unwrap();
    assert_ne!(other[0], a[1], "another mapping, another copy");
    assert_eq!(c.list().len(), 3);
    c.release("a");
    assert!(a[0].exists(), "b still uses it");
    c.release("b");
    assert!(!a[0].exists() && !a[1].exists());
    assert_eq!(c.list(), other);
    // After a crash: users that are no recorded container are dropped with their copies.
    assert_eq!(c.sweep(&HashSet::from(["c".to_string()])), 0);
    assert_eq!(c.sweep(&HashSet::new()), 1);
    assert!(c.list().is_empty());
    // A layer that cannot be copied: the owner holds nothing, no copy is left.
    let bad = t.path().join("bad");
    fs::create_dir(&bad).unwrap();
    let _s = std::os::unix::net::UnixListener::bind(bad.join("sock")).unwrap();
    assert!(c
        .acquire("d", &[l2.clone(), bad], &maps(1), &maps(1))
        .is_err());
    assert!(c.list().is_empty());
    assert!(c.acquire("../x", &[l2], &maps(1), &maps(1)).is_err());
}
