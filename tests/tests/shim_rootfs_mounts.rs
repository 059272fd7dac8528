//! Rootfs mounts beyond CRI's overlay, as containerd 2.x's snapshotters send them: a second
//! mount at `Mount.target` (read-only data inside the image, symlinks never leading out), an
//! image file mounted through a loop device, and a `fuse3.fuse-overlayfs` rootfs through
//! `mount.fuse3`. Each container proves from inside what it sees (its exit code); Delete
//! leaves no mount, loop device or FUSE daemon.

use anyhow::{ensure, Context, Result};
use berth_proto::api;
use berth_tests::direct::Direct;
use berth_tests::{leaks, procs, task_api, task_reqs};
use std::path::Path;
use std::time::Duration;

fn mount(type_: &str, source: &Path, options: &[&str], target: &str) -> api::Mount {
    api::Mount {
        type_: type_.into(),
        source: source.display().to_string(),
        target: target.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    }
}

/// Creates `id` with `rootfs`, runs it to its exit, deletes it and shuts its shim down:
/// the exit status, or the Create error.
fn run(d: &Direct, id: &str, script: &str, rootfs: Vec<api::Mount>) -> Result<Result<u32, String>> {
    d.bundle(id, &["sh", "-c", script], &[])?;
    let addr = d.start_ok(id, id)?;
    let daemon = d.daemons().first().context("no shim daemon")?.pid;
    let out = task_api::block_on(async {
        let cl = task_api::connect(&addr).await?;
        let mut req = d.create_req(id, "", "");
        req.rootfs = rootfs;
        let created = d
            .rpc::<_, api::CreateTaskResponse>(&cl, "Create", &req)
            .await;
        let res = match created {
            Err(e) => Err(format!("{e:?}")),
            Ok(_) => {
                d.rpc::<_, api::StartResponse>(&cl, "Start", &task_reqs::start_req(id, ""))
                    .await
                    .context("Start")?;
                let w: api::WaitResponse = d
                    .rpc(&cl, "Wait", &task_reqs::wait_req(id, ""))
                    .await
                    .context("Wait")?;
                d.rpc::<_, api::DeleteResponse>(&cl, "Delete", &task_reqs::delete_req(id, ""))
                    .await
                    .context("Delete")?;
                Ok(w.exit_status)
            }
        };
        let _ = d
            .rpc::<_, api::Empty>(&cl, "Shutdown", &task_reqs::shutdown_req(id))
            .await;
        anyhow::Ok(res)
    })??;
    procs::poll(Duration::from_secs(5), "shim daemon exit", || {
        (!procs::alive(daemon)).then_some(())
    })?;
    let left = d.rootfs_mounts(id);
    ensure!(left.is_empty(), "{id}: mounts left on its rootfs: {left:?}");
    Ok(out)
}

#[test]
fn a_mount_at_a_target_lands_inside_the_rootfs() -> Result<()> {
    Direct::run(|d| {
        let data = d.dir.join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::write(data.join("f"), "hello\n")?;
        // The image's /escape points at a host dir; a target through it must stay inside.
        let outside = d.dir.join("outside");
        std::fs::create_dir_all(&outside)?;
        let base = d.dir.join("base");
        std::fs::create_dir_all(&base)?;
        let src = d.rootfs_src().to_path_buf();
        let cp = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(&base)
            .status()?;
        ensure!(cp.success(), "copy the rootfs");
        std::fs::create_dir_all(base.join("data"))?;
        std::os::unix::fs::symlink(&outside, base.join("escape"))?;

        let rootfs = vec![
            mount("bind", &base, &["rbind", "rw"], ""),
            mount("bind", &data, &["rbind", "ro"], "/data"),
        ];
        let script = r#"read x < /data/f; [ "$x" = hello ] || exit 10
            (echo > /data/new) 2>/dev/null && exit 11; exit 3"#;
        let st = run(d, "target", script, rootfs)?;
        ensure!(st == Ok(3), "container with /data: {st:?}");

        let rootfs = vec![
            mount("bind", &base, &["rbind", "rw"], ""),
            mount("bind", &data, &["rbind"], "/escape"),
        ];
        let st = run(d, "escape", "exit 0", rootfs)?;
        let err = st
            .err()
            .context("a target through an outward symlink was mounted")?;
        ensure!(err.contains("escape"), "error names the target: {err}");
        ensure!(
            std::fs::read_dir(&outside)?.next().is_none()
                && leaks::mounts_under(&outside).is_empty(),
            "something landed on the host dir"
        );
        Ok(())
    })
}

/// Loop devices bound to `file`.
fn loops_of(file: &Path) -> Vec<String> {
    let want = file.display().to_string();
    std::fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("loop/backing_file"))
                        .is_ok_and(|b| b.trim() == want)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_image_file_is_mounted_through_a_loop_device() -> Result<()> {
    Direct::run(|d| {
        let img = d.dir.join("rootfs.ext4");
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(d.rootfs_src())
            .arg(&img)
            .arg("16M")
            .output()
            .context("mkfs.ext4 (e2fsprogs)")?;
        ensure!(out.status.success(), "mkfs.ext4: {out:?}");
        let st = run(
            d,
            "loop",
            "echo from-loop > /written && exit 3",
            vec![mount("ext4", &img, &["loop"], "")],
        )?;
        ensure!(st == Ok(3), "container on the loop mount: {st:?}");
        procs::poll(Duration::from_secs(5), "loop device release", || {
            loops_of(&img).is_empty().then_some(())
        })
        .with_context(|| format!("loop devices left: {:?}", loops_of(&img)))?;
        // What the container wrote is in the image file.
        let check = std::process::Command::new("debugfs")
            .args(["-R", "cat /written"])
            .arg(&img)
            .output()?;
        let text = String::from_utf8_lossy(&check.stdout);
        ensure!(
            text.trim() == "from-loop",
            "written into the image: {text:?}"
        );
        Ok(())
    })
}

#[test]
fn a_fuse_overlayfs_rootfs_is_mounted_through_its_helper() -> Result<()> {
    Direct::run(|d| {
        let (upper, work) = (d.dir.join("upper"), d.dir.join("work"));
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&work)?;
        let lower = format!("lowerdir={}", d.rootfs_src().display());
        let (up, wk) = (
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        );
        let m = mount(
            "fuse3.fuse-overlayfs",
            Path::new("overlay"),
            &[&lower, &up, &wk],
            "",
        );
        let st = run(d, "fuse", "echo from-fuse > /written && exit 3", vec![m])?;
        ensure!(st == Ok(3), "container on fuse-overlayfs: {st:?}");
        let written = std::fs::read_to_string(upper.join("written"))?;
        ensure!(
            written == "from-fuse\n",
            "upper dir holds the write: {written:?}"
        );
        ensure!(
            !d.rootfs_src().join("written").exists(),
            "the write reached the lower dir"
        );
        // The FUSE daemon ends with its mount.
        let up = upper.display().to_string();
        procs::poll(Duration::from_secs(5), "fuse-overlayfs exit", || {
            procs::all()
                .iter()
                .all(|p| {
                    let argv = p.argv.join(" ");
                    !(argv.contains("fuse-overlayfs") && argv.contains(&up))
                })
                .then_some(())
        })?;

        // A helper that fails: Create fails with its message and nothing stays mounted.
        let bad = mount(
            "fuse3.fuse-overlayfs",
            Path::new("overlay"),
            &["lowerdir=/nonexistent/berth"],
            "",
        );
        let st = run(d, "fuse-bad", "exit 0", vec![bad])?;
        let err = st.err().context("a failing helper created a task")?;
        ensure!(err.contains("mount.fuse3"), "error names the helper: {err}");
        Ok(())
    })
}
