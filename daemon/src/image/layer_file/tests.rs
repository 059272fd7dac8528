//! layer_file over hand-made layer dirs (as `unpack` leaves them: 0:0 character devices
//! for whiteouts, `trusted.overlay.opaque` for opaque dirs), one test per attack shape.
//! Run as root (mknod, trusted.* xattrs), as the whole suite is.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::{read, MAX_SIZE};
use crate::error::ImageFileError;
use crate::image::xattr;

/// An image of `n` empty layer dirs; `layer(0)` is the top one, as `lower_dirs` orders them.
struct Image {
    _dir: tempfile::TempDir,
    layers: Vec<PathBuf>,
}

impl Image {
    fn new(n: usize) -> Image {
        let dir = tempfile::tempdir().expect("tempdir");
        let layers: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("l{i}"))).collect();
        for l in &layers {
            fs::create_dir(l).expect("layer dir");
        }
        Image { _dir: dir, layers }
    }

    /// `rel` in layer `i`, its parent dirs made.
    fn at(&self, i: usize, rel: &str) -> PathBuf {
        let p = self.layers[i].join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("parents");
        }
        p
    }

    fn file(&self, i: usize, rel: &str, body: &[u8]) -> &Self {
        fs::write(self.at(i, rel), body).expect("write");
        self
    }

    fn dir(&self, i: usize, rel: &str) -> &Self {
        fs::create_dir_all(self.at(i, rel)).expect("mkdir");
        self
    }

    fn link(&self, i: usize, rel: &str, target: &str) -> &Self {
        symlink(target, self.at(i, rel)).expect("symlink");
        self
    }

    fn node(&self, i: usize, rel: &str, kind: SFlag, major: u64, minor: u64) -> &Self {
        mknod(
            &self.at(i, rel),
            kind,
            Mode::from_bits_truncate(0o644),
            makedev(major, minor),
        )
        .expect("mknod (run as root)");
        self
    }

    /// Overlay's whiteout: a 0:0 character device.
    fn whiteout(&self, i: usize, rel: &str) -> &Self {
        self.node(i, rel, SFlag::S_IFCHR, 0, 0)
    }

    fn opaque(&self, i: usize, rel: &str) -> &Self {
        xattr::set(&self.at(i, rel), "trusted.overlay.opaque", b"y").expect("opaque xattr");
        self
    }

    /// `read` on a thread of its own: a read that blocks fails the test instead of hanging it.
    fn read(&self, rel: &str) -> Result<Option<String>, ImageFileError> {
        let (tx, rx) = mpsc::channel();
        let layers = self.layers.clone();
        let rel = rel.to_string();
        std::thread::spawn(move || {
            let _ = tx.send(read(&layers, &rel));
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("layer_file::read blocked for 5 s")
            .map(|o| o.map(|b| String::from_utf8(b).expect("utf-8")))
    }
}

fn found(r: Result<Option<String>, ImageFileError>) -> String {
    match r {
        Ok(Some(s)) => s,
        other => panic!("expected the file, got {other:?}"),
    }
}

fn absent(r: Result<Option<String>, ImageFileError>) {
    assert!(matches!(r, Ok(None)), "expected no file, got {r:?}");
}

fn not_regular(r: Result<Option<String>, ImageFileError>, want: &str) {
    match r {
        Err(ImageFileError::NotRegular { kind, path }) => {
            assert_eq!(kind, want);
            assert_eq!(path, "etc/passwd");
        }
        other => panic!("expected {want}, got {other:?}"),
    }
}

/// Some host file that holds `needle`, for the escapes to aim at.
fn host_has(p: &Path, needle: &str) -> bool {
    fs::read_to_string(p).is_ok_and(|s| s.contains(needle))
}

#[test]
fn a_file_in_a_lower_layer_is_found_and_the_topmost_wins() {
    let img = Image::new(3);
    img.file(2, "etc/passwd", b"bottom\n")
        .dir(1, "etc")
        .file(1, "etc/other", b"x");
    assert_eq!(found(img.read("etc/passwd")), "bottom\n");
    img.file(0, "etc/passwd", b"top\n");
    assert_eq!(found(img.read("etc/passwd")), "top\n");
    absent(img.read("etc/group"));
    absent(Image::new(0).read("etc/passwd"));
}

#[test]
fn a_fifo_is_refused_at_once() {
    let img = Image::new(2);
    img.file(1, "etc/passwd", b"root:x:0:0::/:/bin/sh\n");
    nix::unistd::mkfifo(&img.at(0, "etc/passwd"), Mode::from_bits_truncate(0o644)).expect("mkfifo");
    not_regular(img.read("etc/passwd"), "a FIFO");
    // Through a symlink to it, too.
    let img = Image::new(1);
    nix::unistd::mkfifo(&img.at(0, "fifo"), Mode::from_bits_truncate(0o644)).expect("mkfifo");
    img.link(0, "etc/passwd", "/fifo");
    not_regular(img.read("etc/passwd"), "a FIFO");
}

#[test]
fn dev_zero_as_a_device_is_refused_and_as_a_symlink_stays_in_the_image() {
    let img = Image::new(1);
    img.node(0, "etc/passwd", SFlag::S_IFCHR, 1, 5);
    not_regular(img.read("etc/passwd"), "a character device");

    // A symlink to /dev/zero is the image's /dev/zero: none here...
    let img = Image::new(2);
    img.dir(1, "dev").link(0, "etc/passwd", "/dev/zero");
    absent(img.read("etc/passwd"));
    // ...and a device when the image has one (in another layer).
    img.node(1, "dev/zero", SFlag::S_IFCHR, 1, 5);
    not_regular(img.read("etc/passwd"), "a character device");
    let img = Image::new(1);
    img.node(0, "dev/sda", SFlag::S_IFBLK, 8, 0)
        .link(0, "etc/passwd", "../dev/sda");
    not_regular(img.read("etc/passwd"), "a block device");
}

#[test]
fn etc_as_a_symlink_to_the_hosts_etc_never_reads_the_host() {
    assert!(host_has(Path::new("/etc/passwd"), "root:"));
    // `etc -> /etc` in the top layer: in the image that is itself, a loop.
    let img = Image::new(2);
    img.file(1, "etc/passwd", b"image\n").link(0, "etc", "/etc");
    assert!(
        matches!(
            img.read("etc/passwd"),
            Err(ImageFileError::TooManyLinks { .. })
        ),
        "etc -> /etc"
    );
    // The same by `..`s.
    let img = Image::new(1);
    img.link(0, "etc", "../../../../../../../../../../etc");
    assert!(matches!(
        img.read("etc/passwd"),
        Err(ImageFileError::TooManyLinks { .. })
    ));
    // A symlink to the host's files is the image's files of that name.
    let img = Image::new(2);
    img.dir(1, "host")
        .file(1, "host/etc/passwd", b"image's own\n");
    img.link(0, "etc", "/host/etc");
    assert_eq!(found(img.read("etc/passwd")), "image's own\n");
}

#[test]
fn absolute_and_dotdot_symlinks_resolve_inside_the_image() {
    // etc/passwd -> /etc/shadow: the image has no shadow, so no passwd (not the host's).
    let img = Image::new(2);
    img.dir(1, "etc").link(0, "etc/passwd", "/etc/shadow");
    absent(img.read("etc/passwd"));
    img.file(1, "etc/shadow", b"image shadow\n");
    assert_eq!(found(img.read("etc/passwd")), "image shadow\n");

    // `..` past the root stays at the root; /proc/self/root is no magic link in an image.
    let img = Image::new(1);
    img.dir(0, "proc").link(
        0,
        "etc/passwd",
        "../../../../../../../../../../proc/self/root/etc/passwd",
    );
    absent(img.read("etc/passwd"));
    img.link(0, "etc/group", "../../../../../../../../../../../x")
        .file(0, "x", b"x at the image root\n");
    assert_eq!(found(img.read("etc/group")), "x at the image root\n");
    // The path asked for itself cannot climb out either.
    assert_eq!(found(img.read("../../../../x")), "x at the image root\n");
}

#[test]
fn symlinks_resolve_across_layers_as_in_the_merged_view() {
    let img = Image::new(3);
    // Relative, to a file of a lower layer.
    img.file(2, "etc/passwd.real", b"lower\n")
        .link(0, "etc/passwd", "passwd.real");
    assert_eq!(found(img.read("etc/passwd")), "lower\n");
    // A directory symlink in the middle layer to a dir of the bottom one.
    let img = Image::new(3);
    img.file(2, "real/etc/group", b"group\n")
        .link(1, "etc", "real/etc")
        .dir(0, "real");
    assert_eq!(found(img.read("etc/group")), "group\n");
    // The target as the merged view has it: whited out above, it is gone.
    img.whiteout(0, "real/etc");
    absent(img.read("etc/group"));
}

#[test]
fn whiteouts_hide_the_file_and_whatever_is_under_a_dir() {
    let img = Image::new(3);
    img.file(2, "etc/passwd", b"lower\n")
        .whiteout(1, "etc/passwd");
    absent(img.read("etc/passwd"));
    // Re-added above the whiteout.
    img.file(0, "etc/passwd", b"re-added\n");
    assert_eq!(found(img.read("etc/passwd")), "re-added\n");

    // A whiteout of a parent dir hides everything under it in the layers below.
    let img = Image::new(2);
    img.file(1, "etc/passwd", b"lower\n").whiteout(0, "etc");
    absent(img.read("etc/passwd"));
    // So does a non-directory of that name.
    let img = Image::new(2);
    img.file(1, "etc/passwd", b"lower\n")
        .file(0, "etc", b"a file");
    absent(img.read("etc/passwd"));
    // A directory hides a lower non-directory of its name (and everything below that).
    let img = Image::new(3);
    img.file(2, "etc/passwd", b"bottom\n")
        .file(1, "etc", b"a file")
        .file(0, "etc/group", b"g");
    absent(img.read("etc/passwd"));
}

#[test]
fn an_opaque_dir_hides_the_layers_below() {
    let img = Image::new(3);
    img.file(2, "etc/passwd", b"bottom\n")
        .file(1, "etc/group", b"middle\n")
        .opaque(1, "etc");
    absent(img.read("etc/passwd"));
    assert_eq!(found(img.read("etc/group")), "middle\n");
    // Only what is under it: a file of the layers below elsewhere still shows.
    img.file(2, "other", b"o");
    assert_eq!(found(img.read("other")), "o");
    // A dir above the opaque one still merges with it.
    img.file(0, "etc/passwd", b"top\n");
    assert_eq!(found(img.read("etc/passwd")), "top\n");
}

#[test]
fn more_than_a_mebibyte_is_refused_and_a_directory_is_no_file() {
    let img = Image::new(1);
    img.file(0, "etc/passwd", &vec![b'a'; MAX_SIZE as usize + 1]);
    assert!(matches!(
        img.read("etc/passwd"),
        Err(ImageFileError::TooLarge { limit, .. }) if limit == MAX_SIZE
    ));
    img.file(0, "etc/group", &vec![b'a'; MAX_SIZE as usize]);
    assert_eq!(found(img.read("etc/group")).len(), MAX_SIZE as usize);

    let img = Image::new(1);
    img.dir(0, "etc/passwd");
    not_regular(img.read("etc/passwd"), "a directory");
    // A file in the middle of a path names nothing.
    img.file(0, "etc/group", b"g");
    absent(img.read("etc/group/x"));
}

#[test]
fn a_symlink_loop_ends() {
    let img = Image::new(2);
    img.link(0, "etc/passwd", "group")
        .link(1, "etc/group", "passwd");
    assert!(matches!(
        img.read("etc/passwd"),
        Err(ImageFileError::TooManyLinks { .. })
    ));
}

/// What a path gives, in the same terms on both sides of the overlay cross-check.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    File(Vec<u8>),
    Absent,
    NotRegular(&'static str),
    Loop,
}

/// `rel` resolved by the kernel in a mounted overlay of the layers, inside its root.
fn in_overlay(root: &Path, rel: &str) -> Outcome {
    use nix::errno::Errno;
    use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::AsFd;
    let mnt = open(root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).expect("open mount");
    let how = |f: OFlag| {
        OpenHow::new()
            .flags(f | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT)
    };
    let fd = match openat2(mnt.as_fd(), rel, how(OFlag::O_PATH)) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Outcome::Absent,
        Err(Errno::ELOOP) => return Outcome::Loop,
        Err(e) => panic!("openat2 {rel} in the overlay: {e}"),
    };
    let kind = super::kind_of(&nix::sys::stat::fstat(fd.as_fd()).expect("fstat"));
    if kind != SFlag::S_IFREG {
        return Outcome::NotRegular(super::describe(kind));
    }
    let f = openat2(mnt.as_fd(), rel, how(OFlag::O_RDONLY)).expect("open file");
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(f), &mut body).expect("read");
    Outcome::File(body)
}

/// The whole contract in one: for every path of a stack with whiteouts, opaque dirs and
/// symlinks within and across layers, layer_file answers what the kernel's own overlayfs
/// (mounted over the same layer dirs) answers when the path is resolved inside its root.
#[test]
fn the_same_answers_as_a_mounted_overlay() {
    let img = Image::new(3);
    img.file(2, "etc/passwd", b"bottom\n")
        .file(2, "etc/group", b"group bottom\n")
        .file(2, "real/etc/hosts", b"hosts\n")
        .node(2, "dev/zero", SFlag::S_IFCHR, 1, 5)
        .file(2, "opq/a", b"a")
        .file(2, "gone/x", b"x")
        .file(2, "data/file", b"f")
        .link(2, "etc/to-shadow", "shadow");
    img.whiteout(1, "etc/passwd")
        .file(1, "etc/shadow", b"shadow\n")
        .file(1, "opq/b", b"b")
        .opaque(1, "opq")
        .whiteout(1, "gone")
        .link(1, "linkdir", "real/etc")
        .link(1, "abs", "/etc/shadow")
        .link(1, "loop1", "loop2")
        .link(1, "etc-loop", "/etc-loop");
    img.file(0, "etc/group", b"group top\n")
        .link(0, "loop2", "loop1")
        .link(0, "zero", "/dev/zero")
        .link(0, "sub/up", "../../../../../etc/shadow")
        .link(0, "sub/host", "/proc/self/root/etc/hostname")
        .link(0, "sub/linkdir", "/linkdir/../etc/group");
    let m = img._dir.path().join("merged");
    let _ov = crate::image::tests::Overlay::mount(&img.layers, &m);
    let paths = [
        "etc/passwd",
        "etc/group",
        "etc/shadow",
        "etc/to-shadow",
        "etc/",
        "linkdir/hosts",
        "abs",
        "opq/a",
        "opq/b",
        "gone/x",
        "data/file/x",
        "dev/zero",
        "zero",
        "loop1",
        "etc-loop/passwd",
        "sub/up",
        "sub/host",
        "sub/linkdir",
        "../../etc/group",
        "missing",
    ];
    for rel in paths {
        let ours = match read(&img.layers, rel) {
            Ok(Some(b)) => Outcome::File(b),
            Ok(None) => Outcome::Absent,
            Err(ImageFileError::NotRegular { kind, .. }) => Outcome::NotRegular(kind),
            Err(ImageFileError::TooManyLinks { .. }) => Outcome::Loop,
            Err(e) => panic!("{rel}: {e}"),
        };
        assert_eq!(ours, in_overlay(&m, rel), "{rel}");
    }
}
