//! PullImage from a hostile registry (`hostile_registry`): an endless manifest, an endless
//! token body, a manifest at 1 byte per second, a 100 MB config, an endless config and a
//! layer at 1 byte per second. Each pull fails with an error naming the problem within
//! the `registry.timeout` deadline (plus slack), berthd keeps answering meanwhile, its RSS
//! grows less than 16 MiB, and nothing is left in content/ingest.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri_images::{content_files, list, pull};
use berth_tests::hostile_registry::{
    HostileRegistry, ENDLESS_CONFIG, ENDLESS_MANIFEST, ENDLESS_TOKEN, HUGE_CONFIG, SLOW_LAYER,
    SLOW_MANIFEST,
};
use std::time::{Duration, Instant};
use tonic::Code;

/// `registry.timeout` for these pulls (seconds).
const TIMEOUT: u64 = 3;

/// A memory figure of berthd's (`VmRSS`, `VmHWM`) in KiB.
fn mem_kib(pid: i32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

#[test]
fn hostile_registries_fail_each_pull_in_time_with_memory_bounded() -> Result<()> {
    let reg = HostileRegistry::start()?;
    let b = Berthd::builder().config(&format!("[registry]\ntimeout = {TIMEOUT}\n"));
    berthd_test(b, async |d| {
        let (rs, is) = d.client().await?;
        let root = d.dir.path().join("root");
        let version = move || {
            let mut rs = rs.clone();
            async move {
                rs.version(cri::VersionRequest {
                    version: "v1".into(),
                })
                .await
            }
        };
        version().await?;
        // A first pull (of an image the registry does not have) sets up what every pull
        // shares once per process and registry (client, TLS library, blocking threads):
        // what is measured is the growth the hostile answers cause.
        let missing = pull(&is, &reg.image("missing"), None).await;
        ensure!(
            matches!(&missing, Err(s) if s.code() == Code::NotFound),
            "PullImage of a missing image: {missing:?}"
        );
        // The peak is what counts (a buffer freed before the end would hide in VmRSS):
        // reset berthd's high-water mark, then read it after the pulls.
        std::fs::write(format!("/proc/{}/clear_refs", d.pid()), "5")?;
        let rss0 = mem_kib(d.pid(), "VmRSS")?;
        // (repo, code, words the message must hold)
        let cases: [(&str, Code, &[&str]); 6] = [
            (
                ENDLESS_MANIFEST,
                Code::InvalidArgument,
                &["manifest", "exceeds 8 MiB"],
            ),
            (ENDLESS_TOKEN, Code::InvalidArgument, &["token", "exceeds"]),
            (SLOW_MANIFEST, Code::DeadlineExceeded, &["manifest", "3 s"]),
            (
                HUGE_CONFIG,
                Code::InvalidArgument,
                &["config", "exceeds 8 MiB"],
            ),
            (
                ENDLESS_CONFIG,
                Code::InvalidArgument,
                &["larger than its descriptor"],
            ),
            (SLOW_LAYER, Code::DeadlineExceeded, &["blob", "3 s"]),
        ];
        // Every shortcoming is reported, not just the first.
        let mut wrong = Vec::new();
        let limit = Duration::from_secs(4 * TIMEOUT);
        for (repo, code, words) in cases {
            let name = reg.image(repo);
            let t0 = Instant::now();
            let pulling = {
                let (is, name) = (is.clone(), name.clone());
                tokio::spawn(async move { pull(&is, &name, None).await })
            };
            // berthd answers other calls while the pull is under way.
            let mut slowest = Duration::ZERO;
            while !pulling.is_finished() && t0.elapsed() < Duration::from_secs(30) {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), version()).await {
                    Ok(Ok(_)) => slowest = slowest.max(t.elapsed()),
                    Ok(Err(e)) => wrong.push(format!("{repo}: Version failed: {e}")),
                    Err(_) => wrong.push(format!("{repo}: Version took over 5 s")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if slowest > Duration::from_secs(1) {
                wrong.push(format!("{repo}: Version took {slowest:?} during the pull"));
            }
            if !pulling.is_finished() {
                wrong.push(format!("{repo}: PullImage had no answer after 30 s"));
                pulling.abort();
                continue;
            }
            let took = t0.elapsed();
            match pulling.await? {
                Ok(id) => wrong.push(format!("{repo}: PullImage succeeded ({id})")),
                Err(s) => {
                    let msg = s.message();
                    eprintln!(
                        "{repo}: {:?} {msg:?} after {took:?}; peak RSS {} KiB",
                        s.code(),
                        mem_kib(d.pid(), "VmHWM")?
                    );
                    if s.code() != code || !words.iter().all(|w| msg.contains(w)) {
                        wrong.push(format!(
                            "{repo}: {:?} {msg:?} (want {code:?} with {words:?})",
                            s.code()
                        ));
                    }
                    if !msg.contains(&reg.host()) && !msg.contains(repo) {
                        wrong.push(format!(
                            "{repo}: {msg:?} names neither the registry nor the image"
                        ));
                    }
                }
            }
            if took > limit {
                wrong.push(format!("{repo}: PullImage took {took:?} (limit {limit:?})"));
            }
            let ingest = content_files(&root, "ingest");
            if !ingest.is_empty() {
                wrong.push(format!("{repo}: ingest files left: {ingest:?}"));
            }
        }
        let peak = mem_kib(d.pid(), "VmHWM")?;
        eprintln!("berthd's RSS: {rss0} KiB at the start, a peak of {peak} KiB");
        if peak > rss0 + (16 << 10) {
            wrong.push(format!(
                "berthd's RSS grew by {} KiB (from {rss0} KiB to a peak of {peak} KiB)",
                peak - rss0
            ));
        }
        if !list(&is).await?.is_empty() {
            wrong.push("an image was recorded".to_string());
        }
        let blobs = content_files(&root, "blobs/sha256");
        if !blobs.is_empty() {
            wrong.push(format!("blobs left in the content store: {blobs:?}"));
        }
        ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
        Ok(())
    })
}
