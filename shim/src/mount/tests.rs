//! Mount tests: option parsing, lowerdir compaction, and real mounts (as root).

use super::*;
use std::fs;

/// Runs [`mount_rootfs`] to completion. The reaper is never started: none of these mounts
/// runs a helper, and a started reaper would collect other tests' children.
fn mount_sync(mounts: &[Mount], rootfs: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(mount_rootfs(mounts, rootfs, &Arc::new(Reaper::default())))
}

fn opts(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn mnt(type_: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        type_: type_.into(),
        source: source.into(),
        options: opts(options),
        ..Default::default()
    }
}

#[test]
fn parse_mount_options_table() {
    use MsFlags as F;
    let cases: &[(&[&str], MsFlags, &str, bool)] = &[
        (
            &["ro", "nosuid", "nodev"],
            F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV,
            "",
            false,
        ),
        (&["ro", "rw"], F::empty(), "", false),
        (
            &["rbind", "ro"],
            F::MS_BIND | F::MS_REC | F::MS_RDONLY,
            "",
            false,
        ),
        (
            &["noexec", "exec", "nosuid", "suid", "sync", "async"],
            F::empty(),
            "",
            false,
        ),
        (
            &["noatime", "atime", "relatime", "strictatime"],
            F::MS_RELATIME | F::MS_STRICTATIME,
            "",
            false,
        ),
        (
            &["norelatime", "nostrictatime", "dirsync", "mand", "nomand"],
            F::MS_DIRSYNC,
            "",
            false,
        ),
        (
            &["nodiratime", "remount"],
            F::MS_NODIRATIME | F::MS_REMOUNT,
            "",
            false,
        ),
        (&["dev", "diratime"], F::empty(), "", false),
        (&["defaults"], F::empty(), "defaults", false),
        (&["loop", "ro"], F::MS_RDONLY, "", true),
        (
            &[
                "index=off",
                "workdir=/w",
                "upperdir=/u",
                "lowerdir=/a:/b",
                "shared",
            ],
            F::empty(),
            "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b,shared",
            false,
        ),
    ];
    for (words, flags, data, losetup) in cases {
        let want = ParsedOptions {
            flags: *flags,
            data: data.to_string(),
            losetup: *losetup,
        };
        assert_eq!(parse_mount_options(&opts(words)), want, "{words:?}");
    }
}

#[test]
fn compact_lowerdirs() {
    let o = opts(&[
        "workdir=a",
        "lowerdir=/s/snapshots/1/fs:/s/snapshots/10/fs",
        "upperdir=b",
    ]);
    let (dir, out) = compact_lowerdir_option(&o).expect("compacted");
    assert_eq!(dir, "/s/snapshots/");
    assert_eq!(
        out,
        opts(&["workdir=a", "upperdir=b", "lowerdir=1/fs:10/fs"])
    );
    let o = opts(&["lowerdir=/s/snapshots/2/fs:/s/snapshots/3/fs:/s/snapshots/1/fs"]);
    let (dir, out) = compact_lowerdir_option(&o).expect("compacted");
    assert_eq!(
        (dir.as_str(), out),
        ("/s/snapshots/", opts(&["lowerdir=2/fs:3/fs:1/fs"]))
    );
    assert_eq!(compact_lowerdir_option(&opts(&["lowerdir=/s/1/fs"])), None);
    assert_eq!(
        compact_lowerdir_option(&opts(&["lowerdir=/a/1:/b/1"])),
        None
    );
    assert_eq!(compact_lowerdir_option(&opts(&["upperdir=/a"])), None);
    assert_eq!(longest_common_prefix(&["/x/é1", "/x/é2"]), "/x/é");
    assert_eq!(longest_common_prefix(&["/x/\u{e9}", "/x/\u{e8}"]), "/x/");
}

fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root");
    }
    root
}

fn mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = unmount_all(&self.0);
    }
}

fn layer(base: &Path, name: &str, files: &[(&str, &str)]) -> String {
    let d = base.join(name);
    fs::create_dir_all(&d).expect("mkdir layer");
    for (f, body) in files {
        fs::write(d.join(f), body).expect("write layer file");
    }
    d.to_string_lossy().into_owned()
}

#[test]
fn overlay_two_lowerdirs_and_unmount_all() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let top = layer(t.path(), "l1", &[("f", "top")]);
    let bottom = layer(t.path(), "l2", &[("f", "bottom"), ("only-bottom", "b")]);
    let (up, work) = (layer(t.path(), "up", &[]), layer(t.path(), "work", &[]));
    let rootfs = t.path().join("rootfs");
    let _c = Cleanup(rootfs.clone());
    let o = [
        "index=off".to_string(),
        format!("workdir={work}"),
        format!("upperdir={up}"),
        format!("lowerdir={top}:{bottom}"),
    ];
    let o: Vec<&str> = o.iter().map(String::as_str).collect();
    mount_sync(&[mnt("overlay", "overlay", &o)], &rootfs).expect("mount overlay");
    assert_eq!(fs::read_to_string(rootfs.join("f")).expect("read f"), "top");
    assert!(rootfs.join("only-bottom").exists());
    fs::write(rootfs.join("new"), "x").expect("write to upper");
    assert!(Path::new(&up).join("new").exists());
    unmount_all(&rootfs).expect("unmount_all");
    assert!(!mounted(&rootfs));
    unmount_all(&rootfs).expect("second unmount_all is a no-op");
    unmount_all(&t.path().join("missing")).expect("missing path is ok");
}

#[test]
fn readonly_bind_refuses_writes() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let src = layer(t.path(), "src", &[("f", "data")]);
    let rootfs = t.path().join("rootfs");
    let _c = Cleanup(rootfs.clone());
    mount_sync(&[mnt("bind", &src, &["rbind", "ro"])], &rootfs).expect("mount bind");
    assert_eq!(fs::read_to_string(rootfs.join("f")).expect("read"), "data");
    let err = fs::write(rootfs.join("g"), "x").expect_err("write must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    unmount_all(&rootfs).expect("unmount_all");
    assert!(!mounted(&rootfs));
}

#[test]
fn targets_mount_inside_the_rootfs_and_never_outside() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let src = layer(t.path(), "src", &[("f", "data")]);
    let base = layer(t.path(), "base", &[]);
    let outside = layer(t.path(), "outside", &[]);
    fs::create_dir_all(Path::new(&base).join("data")).expect("mkdir data");
    // The image's `escape` points at a host dir: it must resolve inside the rootfs.
    std::os::unix::fs::symlink(&outside, Path::new(&base).join("escape")).expect("symlink");
    let rootfs = t.path().join("rootfs");
    let _c = Cleanup(rootfs.clone());
    let mut data = mnt("bind", &src, &["rbind", "ro"]);
    data.target = "/data".into();
    mount_sync(&[mnt("bind", &base, &["rbind"]), data], &rootfs).expect("mount");
    assert_eq!(
        fs::read_to_string(rootfs.join("data/f")).expect("read"),
        "data"
    );
    let err = fs::write(rootfs.join("data/g"), "x").expect_err("ro target");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    unmount_all(&rootfs).expect("unmount_all");
    assert!(!mounted(&rootfs) && !mounted(&rootfs.join("data")));

    // `escape/..` and an absolute host path stay in the rootfs; a missing target fails
    // and takes the mounts made before it off again.
    let mut esc = mnt("bind", &src, &["rbind"]);
    esc.target = "/escape".into();
    let e = mount_sync(&[mnt("bind", &base, &["rbind"]), esc], &rootfs).unwrap_err();
    assert!(e.to_string().contains("escape"), "{e}");
    assert!(!mounted(&rootfs), "rollback left the base mount");
    assert!(!mounted(Path::new(&outside)));
    assert!(fs::read_dir(&outside).expect("outside").next().is_none());
    let mut dotdot = mnt("bind", &src, &["rbind"]);
    dotdot.target = "../../data".into();
    mount_sync(&[mnt("bind", &base, &["rbind"]), dotdot], &rootfs).expect("dotdot");
    assert_eq!(
        fs::read_to_string(rootfs.join("data/f")).expect("read"),
        "data"
    );
    unmount_all(&rootfs).expect("unmount_all");
}

/// The loop devices bound to `file` (from sysfs).
fn loops_of(file: &Path) -> Vec<String> {
    let want = file.to_string_lossy().into_owned();
    fs::read_dir("/sys/block")
        .expect("sysfs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            fs::read_to_string(e.path().join("loop/backing_file")).is_ok_and(|b| b.trim() == want)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn unbound_soon(file: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !loops_of(file).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    loops_of(file).is_empty()
}

#[test]
fn loop_mount_of_an_image_file_and_autoclear() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let content = layer(t.path(), "content", &[("hello", "from the image file")]);
    let img = t.path().join("layer.ext4");
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", &content])
        .arg(&img)
        .arg("8M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "{out:?}");
    let rootfs = t.path().join("rootfs");
    let _c = Cleanup(rootfs.clone());
    let m = mnt("ext4", &img.to_string_lossy(), &["ro", "loop", "direct-io"]);
    mount_sync(&[m], &rootfs).expect("loop mount");
    assert_eq!(
        fs::read_to_string(rootfs.join("hello")).expect("read"),
        "from the image file"
    );
    let err = fs::write(rootfs.join("x"), "x").expect_err("ro loop");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(loops_of(&img).len(), 1, "one device bound while mounted");
    unmount_all(&rootfs).expect("unmount_all");
    // Autoclear: the device is released with the last mount (possibly a little later).
    assert!(unbound_soon(&img), "loop device left bound");
    // A file that is not a filesystem: the mount fails and leaves no device behind.
    let junk = t.path().join("junk");
    fs::write(&junk, vec![0u8; 1 << 20]).expect("junk");
    let m = mnt("ext4", &junk.to_string_lossy(), &["ro", "loop"]);
    assert!(mount_sync(&[m], &rootfs).is_err());
    assert!(unbound_soon(&junk), "failed mount left a loop device");
}

#[test]
fn long_lowerdir_list_is_compacted() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let snaps = t
        .path()
        .join("io.containerd.snapshotter.v1.overlayfs")
        .join("snapshots");
    let pad = "p".repeat(40);
    let dirs: Vec<String> = (0..60)
        .map(|i| {
            let files: &[(&str, &str)] = if i == 59 { &[("lowest", "yes")] } else { &[] };
            layer(&snaps, &format!("{i}{pad}/fs"), files)
        })
        .collect();
    let lower = format!("lowerdir={}", dirs.join(":"));
    assert!(
        lower.len() > page_size() - 512,
        "test data too short: {}",
        lower.len()
    );
    let rootfs = t.path().join("rootfs");
    let _c = Cleanup(rootfs.clone());
    mount_sync(&[mnt("overlay", "overlay", &[&lower])], &rootfs).expect("mount overlay");
    assert_eq!(
        fs::read_to_string(rootfs.join("lowest")).expect("read"),
        "yes"
    );
    unmount_all(&rootfs).expect("unmount_all");
    assert!(!mounted(&rootfs));
}

#[test]
fn failure_unmounts_earlier_layers() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let src = layer(t.path(), "src", &[]);
    let rootfs = t.path().join("rootfs");
    let _c = Cleanup(rootfs.clone());
    let bad = mnt(
        "overlay",
        "overlay",
        &["lowerdir=/nonexistent/berth/a:/nonexistent/b"],
    );
    let e = mount_sync(&[mnt("bind", &src, &["bind"]), bad], &rootfs).unwrap_err();
    assert!(matches!(e, Error::Sys { .. }), "{e}");
    assert!(!mounted(&rootfs));
    let e = mount_sync(&[mnt("ext4", "/nonexistent/x.img", &["loop"])], &rootfs).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.img"), "{e}");
    assert!(!mounted(&rootfs));
}

/// A `sleep` in a user namespace of its own mapping 0..65536 to 100000..; killed on drop.
struct UsernsHolder(std::process::Child);
impl UsernsHolder {
    fn start() -> UsernsHolder {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("60");
        // SAFETY: unshare is async-signal-safe; the child is single-threaded after fork.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(std::io::Error::from)
            });
        }
        let h = UsernsHolder(cmd.spawn().expect("spawn sleep"));
        for f in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{}/{f}", h.0.id()), "0 100000 65536\n").expect(f);
        }
        h
    }
    fn ns(&self) -> String {
        format!("/proc/{}/ns/user", self.0.id())
    }
}
impl Drop for UsernsHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn overlay_on_idmapped_lowers_shows_files_through_the_mapping() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let low = layer(t.path(), "low", &[("root-owned", "r"), ("user-owned", "u")]);
    std::os::unix::fs::chown(Path::new(&low).join("user-owned"), Some(1000), Some(1000))
        .expect("chown");
    let (up, work) = (layer(t.path(), "up", &[]), layer(t.path(), "work", &[]));
    let rootfs = t.path().join("rootfs");
    let _c = Cleanup(rootfs.clone());
    let holder = UsernsHolder::start();
    let idmap = format!("{}{}", berth_proto::idmap::USERNS_OPTION, holder.ns());
    let o = [
        format!("workdir={work}"),
        format!("upperdir={up}"),
        format!("lowerdir={low}"),
        idmap.clone(),
    ];
    let o: Vec<&str> = o.iter().map(String::as_str).collect();
    mount_sync(&[mnt("overlay", "overlay", &o)], &rootfs).expect("idmapped overlay");
    let m = fs::metadata(rootfs.join("root-owned")).expect("stat");
    assert_eq!((m.uid(), m.gid()), (100_000, 100_000));
    let m = fs::metadata(rootfs.join("user-owned")).expect("stat");
    assert_eq!((m.uid(), m.gid()), (101_000, 101_000));
    // The idmapped lower dirs came off once the overlay held them.
    let scratch = t.path().join("idmapped-lowers");
    assert!(!scratch.exists());
    assert!(!mounted(&scratch.join("0")));
    unmount_all(&rootfs).expect("unmount_all");
    assert!(!mounted(&rootfs));
    // The layer itself is untouched.
    let m = fs::metadata(Path::new(&low).join("root-owned")).expect("stat");
    assert_eq!((m.uid(), m.gid()), (0, 0));

    // A user namespace that is not there: an error, and nothing left mounted.
    let o = [
        format!("workdir={work}"),
        format!("upperdir={up}"),
        format!("lowerdir={low}"),
        format!("{}/proc/0/ns/user", berth_proto::idmap::USERNS_OPTION),
    ];
    let o: Vec<&str> = o.iter().map(String::as_str).collect();
    assert!(mount_sync(&[mnt("overlay", "overlay", &o)], &rootfs).is_err());
    assert!(!mounted(&rootfs));
    assert!(!scratch.exists());
    assert!(Path::new(&low).join("root-owned").exists());
    let o = [
        format!("lowerdir={low}"),
        format!("{}relative", berth_proto::idmap::USERNS_OPTION),
    ];
    let o: Vec<&str> = o.iter().map(String::as_str).collect();
    assert!(mount_sync(&[mnt("overlay", "overlay", &o)], &rootfs).is_err());
    assert!(!mounted(&rootfs));
}

fn volume_entry(source: &str, words: &[String]) -> Mount {
    let mut m = mnt("bind", source, &["rbind"]);
    m.options.extend(words.iter().cloned());
    m
}

#[test]
fn volume_entries_are_split_from_the_rootfs_and_checked() {
    use berth_proto::idmap::{USERNS_OPTION, VOLUME_OPTION};
    let ns = format!("{USERNS_OPTION}/proc/7/ns/user");
    let overlay = mnt("overlay", "overlay", &["lowerdir=/a"]);
    let v = volume_entry("/srv/v", &[ns.clone(), format!("{VOLUME_OPTION}3")]);
    let (rootfs, volumes) = idmap::split_volumes(&[overlay.clone(), v]).expect("split");
    assert_eq!(rootfs, vec![overlay]);
    assert_eq!(
        volumes,
        vec![idmap::Volume {
            source: "/srv/v".into(),
            userns: "/proc/7/ns/user".into(),
            n: 3
        }]
    );
    let bad = [
        volume_entry("/srv/v", &[ns.clone(), format!("{VOLUME_OPTION}../x")]),
        volume_entry("/srv/v", &[ns.clone(), format!("{VOLUME_OPTION}12345")]),
        volume_entry("/srv/v", &[ns.clone(), VOLUME_OPTION.to_string()]),
        volume_entry("/srv/v", &[format!("{VOLUME_OPTION}1")]),
        volume_entry(
            "/srv/v",
            &[format!("{USERNS_OPTION}rel"), format!("{VOLUME_OPTION}1")],
        ),
        volume_entry("relative", &[ns.clone(), format!("{VOLUME_OPTION}1")]),
        {
            let mut m = volume_entry("/srv/v", &[ns.clone(), format!("{VOLUME_OPTION}1")]);
            m.type_ = "overlay".into();
            m
        },
    ];
    for b in bad {
        let e = idmap::split_volumes(std::slice::from_ref(&b)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{b:?}: {e}");
    }
    let twice = volume_entry("/srv/v", &[ns.clone(), format!("{VOLUME_OPTION}1")]);
    assert!(idmap::split_volumes(&[twice.clone(), twice]).is_err());
}

#[test]
fn idmapped_volumes_show_disk_ids_through_the_mapping_and_come_off() {
    use berth_proto::idmap::{volume_point, USERNS_OPTION, VOLUME_OPTION};
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let vol = layer(t.path(), "vol", &[("root-owned", "r"), ("user-owned", "u")]);
    std::os::unix::fs::chown(Path::new(&vol).join("user-owned"), Some(1000), Some(1000))
        .expect("chown");
    // A submount inside the volume comes along (rbind), idmapped too.
    let sub = Path::new(&vol).join("sub");
    fs::create_dir(&sub).expect("mkdir sub");
    mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("tmpfs");
    let _sub = Cleanup(sub.clone());
    fs::write(sub.join("in-sub"), "s").expect("write");
    let file = layer(t.path(), "files", &[("one", "1")]);
    let file = format!("{file}/one");
    let bundle = t.path().join("bundle");
    fs::create_dir(&bundle).expect("bundle");
    let holder = UsernsHolder::start();
    let ns = format!("{USERNS_OPTION}{}", holder.ns());
    let entries = [
        volume_entry(&vol, &[ns.clone(), format!("{VOLUME_OPTION}0")]),
        volume_entry(&file, &[ns.clone(), format!("{VOLUME_OPTION}2")]),
    ];
    let (_, volumes) = idmap::split_volumes(&entries).expect("split");
    let (p0, p2) = (volume_point(&bundle, 0), volume_point(&bundle, 2));
    let _c0 = Cleanup(p0.clone());
    let _c2 = Cleanup(p2.clone());
    idmap::attach_volumes(&volumes, &bundle).expect("attach");
    let ids = |p: &Path| {
        let m = fs::metadata(p).expect("stat");
        (m.uid(), m.gid())
    };
    assert_eq!(ids(&p0.join("root-owned")), (100_000, 100_000));
    assert_eq!(ids(&p0.join("user-owned")), (101_000, 101_000));
    assert_eq!(ids(&p0.join("sub/in-sub")), (100_000, 100_000));
    assert_eq!(ids(&p2), (100_000, 100_000));
    assert_eq!(fs::read_to_string(&p2).expect("read"), "1");
    // Ids set through it are stored unmapped on disk (host root, unmapped there, could
    // not create a file through it: the kernel refuses ids the idmap cannot store).
    fs::write(Path::new(&vol).join("new"), "n").expect("write");
    std::os::unix::fs::chown(p0.join("new"), Some(100_005), Some(100_006)).expect("chown");
    assert_eq!(ids(&Path::new(&vol).join("new")), (5, 6));
    idmap::detach_volumes(&bundle);
    assert!(!mounted(&p0) && !mounted(&p2));
    assert!(!bundle.join("idmapped-volumes").exists());
    assert!(Path::new(&vol).join("root-owned").exists());
    idmap::detach_volumes(&bundle); // again: nothing to do

    // One that cannot be made leaves none of the others mounted.
    let entries = [
        volume_entry(&vol, &[ns.clone(), format!("{VOLUME_OPTION}0")]),
        volume_entry("/nonexistent/berth", &[ns, format!("{VOLUME_OPTION}1")]),
    ];
    let (_, volumes) = idmap::split_volumes(&entries).expect("split");
    assert!(idmap::attach_volumes(&volumes, &bundle).is_err());
    assert!(!mounted(&p0));
    assert!(!bundle.join("idmapped-volumes").exists());
}
