//! A full disk (issue 15): berthd's root, state and a pod's log dir on small tmpfs
//! filesystems the test mounts (`Builder::tmpfs`) and fills with a file of its own. A pull
//! or a create on a full disk fails with ResourceExhausted naming the path and the space
//! left, and leaves nothing half-made; a container printing to a full log is never held
//! up, and the log says what was dropped once space is back; removing the filler makes
//! everything work again without a restart.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::container_config;
use berth_tests::cri_calls::CriCalls;
use berth_tests::cri_images::{content_files, pull_err, pull_ok, status};
use berth_tests::image::{with_own_layer, BUSYBOX_IMAGE};
use berth_tests::pod::Pod;
use berth_tests::procs;
use berth_tests::registry::Registry;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

const MIB: u64 = 1 << 20;

/// Fills the filesystem of `dir` with `dir/filler` until ENOSPC, then gives `leave` bytes
/// back. Returns the filler (remove it to free the space).
fn fill(dir: &Path, leave: u64) -> Result<PathBuf> {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e).context("fill"),
        }
    }
    let len = f.metadata()?.len();
    f.set_len(len.saturating_sub(leave))?;
    Ok(path)
}

fn free_bytes(dir: &Path) -> Result<u64> {
    let out = berth_tests::cmd::run(
        std::process::Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(dir),
        Duration::from_secs(10),
    )?
    .ok("stat -f")?;
    let v: Vec<u64> = out
        .stdout
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    ensure!(v.len() == 2, "stat -f: {}", out.stdout);
    Ok(v[0] * v[1])
}

/// The names in `dir` (none when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn check_no_space(s: &tonic::Status, what: &str) -> Result<()> {
    ensure!(
        s.code() == Code::ResourceExhausted
            && s.message().contains("no space left on device: ")
            && s.message().contains(" bytes free"),
        "{what} on a full disk: {:?}: {}",
        s.code(),
        s.message()
    );
    println!("{what} on a full disk: {:?}: {}", s.code(), s.message());
    Ok(())
}

#[test]
fn a_pull_onto_a_full_root_fails_with_the_space_left_and_leaves_no_partial_blob() -> Result<()> {
    let reg = Registry::start()?;
    // An 8 MiB layer of random bytes (stored, not compressed): it cannot fit in 2 MiB.
    let img = with_own_layer(reg.dir.path(), "big", "big.bin", 8 << 20, 15)?;
    reg.push(&img.path, "full/big:1")?;
    let layer = img.host().layers[1].clone();
    berthd_test(Berthd::builder().tmpfs("root", 48 * MIB), async |d| {
        let (_, is) = d.client().await?;
        let root = d.dir.path().join("root");
        let name = reg.image("full/big:1");
        let filler = fill(&root, 2 * MIB)?;
        let s = pull_err(&is, &name, None).await?;
        check_no_space(&s, "PullImage")?;
        ensure!(
            s.message().contains(&root.display().to_string()),
            "the message names the full filesystem's path: {}",
            s.message()
        );
        // Nothing of the pull is left: no download, no blob, no snapshot being made.
        ensure!(
            content_files(&root, "ingest").is_empty(),
            "ingest: {:?}",
            content_files(&root, "ingest")
        );
        let blobs = content_files(&root, "blobs/sha256");
        ensure!(
            !blobs.iter().any(|(n, _)| layer.ends_with(n.as_str())),
            "the layer blob was kept: {blobs:?}"
        );
        let snaps = names(&root.join("snapshots"));
        ensure!(
            !snaps.iter().any(|n| n.starts_with("ingest")),
            "a snapshot in the making was left: {snaps:?}"
        );
        ensure!(status(&is, &name).await?.is_none(), "the image is listed");

        // Space is back: the same berthd pulls it.
        std::fs::remove_file(&filler)?;
        let id = pull_ok(d, &is, &name, None).await?;
        ensure!(id == img.host().config, "pulled {id}");
        let blobs = content_files(&root, "blobs/sha256");
        ensure!(
            blobs.iter().any(|(n, _)| layer.ends_with(n.as_str())),
            "{blobs:?}"
        );
        Ok(())
    })
}

#[test]
fn a_create_on_a_full_root_or_state_is_resource_exhausted_and_leaves_nothing() -> Result<()> {
    berthd_test(
        Berthd::builder()
            .tmpfs("root", 64 * MIB)
            .tmpfs("state", 16 * MIB)
            .busybox(),
        async |d| {
            let pod = Pod::run(d, d.pod_config("full")).await?;
            for (n, fs) in ["root", "state"].into_iter().enumerate() {
                let dir = d.dir.path().join(fs);
                let filler = fill(&dir, 0)?;
                let cfg = container_config(
                    &format!("c{n}"),
                    BUSYBOX_IMAGE,
                    &["echo", "written after space came back"],
                );
                let s = pod
                    .create(cfg.clone())
                    .await
                    .err()
                    .with_context(|| format!("CreateContainer succeeded on a full {fs}"))?;
                check_no_space(&s, &format!("CreateContainer (full {fs})"))?;
                // Nothing half-made: no record, no bundle, no writable layer.
                let listed = pod.list_all().await?;
                ensure!(listed.is_empty(), "containers listed: {listed:?}");
                for sub in ["root/containers", "state/containers"] {
                    let left = names(&d.dir.path().join(sub));
                    ensure!(left.is_empty(), "{sub} after the failed create: {left:?}");
                }
                // A second pod fails the same way and leaves only the first one's dirs.
                let s = pod
                    .rs
                    .run_pod(&d.pod_config(&format!("p{n}")))
                    .await
                    .err()
                    .with_context(|| format!("RunPodSandbox succeeded on a full {fs}"))?;
                check_no_space(&s, &format!("RunPodSandbox (full {fs})"))?;
                for sub in ["root/pods", "state/pods"] {
                    let left = names(&d.dir.path().join(sub));
                    ensure!(
                        left.iter().all(|p| *p == pod.id),
                        "{sub} after the failed RunPodSandbox: {left:?}"
                    );
                }
                // Space is back: the same berthd creates and runs it.
                std::fs::remove_file(&filler)?;
                // The failed pod's record (whose removal may have failed on the full disk
                // too) goes, and its name is free for kubelet's retry.
                let t0 = Instant::now();
                loop {
                    let pods = pod.rs.list_pods(None).await?;
                    if pods.len() == 1 {
                        break;
                    }
                    ensure!(
                        t0.elapsed() < Duration::from_secs(20),
                        "the failed pod's record stays: {pods:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let again = pod.rs.run_pod(&d.pod_config(&format!("p{n}"))).await?;
                pod.rs.stop_and_remove_pod(&again).await?;
                let e = pod.run_and_remove(cfg).await?;
                if fs == "root" {
                    ensure!(
                        d.log().contains("state store reopened after an I/O error"),
                        "the store's failed commit did not make it reopen"
                    );
                }
                ensure!(
                    e.code == 0 && e.stdout == "written after space came back\n",
                    "{e:?}"
                );
            }
            Ok(())
        },
    )
}

/// The content of each CRI log record of `text` (`<time> <stream> <tag> <content>`).
fn contents(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect()
}

#[test]
fn a_container_printing_to_a_full_log_is_never_held_up_and_the_log_counts_what_was_lost(
) -> Result<()> {
    berthd_test(
        Berthd::builder().busybox().tmpfs("logs/chatty", 2 * MIB),
        async |d| {
            let log_dir = d.dir.path().join("logs/chatty");
            // 64 KiB left: the container fills that within its first lines.
            let filler = fill(&log_dir, 64 << 10)?;
            let pod = Pod::run(d, d.pod_config("chatty")).await?;
            let script = "i=0; while true; do i=$((i+1)); echo line-$i; echo $i > /tmp/n; done";
            let id = pod
                .start(container_config(
                    "talker",
                    BUSYBOX_IMAGE,
                    &["sh", "-c", script],
                ))
                .await?;
            // The counter file is rewritten each line: a read that finds it empty is
            // retried.
            let count = async || -> Result<u64> {
                for _ in 0..100 {
                    let r = pod.exec(&id, &["cat", "/tmp/n"]).await?;
                    if let Ok(n) = String::from_utf8_lossy(&r.stdout).trim().parse() {
                        return Ok(n);
                    }
                }
                anyhow::bail!("the container's counter could not be read")
            };
            procs::poll(Duration::from_secs(30), "the log filesystem full", || {
                (free_bytes(&log_dir).ok()? < 4096).then_some(())
            })?;
            // A pipe holds 64 KiB (some 5,000 of these lines): a container whose output
            // is not drained stops within that. 50,000 more lines prove it is drained.
            let (n0, t0) = (count().await?, Instant::now());
            let mut n1 = n0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while n1 < n0 + 50_000 {
                ensure!(
                    Instant::now() < deadline,
                    "the container stopped printing on a full log: line {n0}, then {n1}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
                n1 = count().await?;
            }
            println!(
                "full log: the container printed lines {n0}..{n1} in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            let log_path = log_dir.join("talker.log");
            let before = std::fs::read_to_string(&log_path)?;
            ensure!(
                !before.contains("berth: "),
                "a note while still full: {before}"
            );

            // Space is back: the note comes first, then the output goes on, same file.
            std::fs::remove_file(&filler)?;
            let text = procs::poll(Duration::from_secs(30), "the log going on", || {
                let t = std::fs::read_to_string(&log_path).ok()?;
                let c = contents(&t);
                let at = c.iter().position(|l| l.starts_with("berth: "))?;
                (c.len() > at + 2).then_some(t)
            })?;
            let c = contents(&text);
            let at = c.iter().position(|l| l.starts_with("berth: ")).unwrap();
            let num = |l: &str| -> Result<u64> {
                l.strip_prefix("line-")
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("not a counter line: {l:?}"))
            };
            // Every line before the note is whole and in order: none was cut.
            for (i, l) in c[..at].iter().enumerate() {
                ensure!(num(l)? == i as u64 + 1, "line {i} before the note: {l:?}");
            }
            let (last, next) = (num(c[at - 1])?, num(c[at + 1])?);
            let lost = next - last - 1;
            let lost_bytes: u64 = (last + 1..next)
                .map(|i| format!("line-{i}").len() as u64)
                .sum();
            let want = format!("berth: {lost} log lines ({lost_bytes} bytes) were dropped: ");
            ensure!(
                c[at].starts_with(&want),
                "the note {:?}, lines {last} and {next} around it (want {want:?})",
                c[at]
            );
            println!("{}", c[at]);
            ensure!(
                text.lines()
                    .nth(at)
                    .is_some_and(|l| l.contains(" stderr F berth: ")),
                "the note is a whole stderr line"
            );
            Ok(())
        },
    )
}
