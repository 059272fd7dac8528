//! PullImage through a fault-injecting proxy (`fault_proxy`) in front of a real registry
//! (issue 15): blob bodies cut by connection resets are resumed where they broke; a
//! registry that keeps cutting them, answers 500, stops answering or stalls mid-blob fails
//! the pull with a status and message that say so, within its `registry.timeout`, and
//! leaves no partial content; a retry once the fault clears yields the right image.

use anyhow::{ensure, Result};
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri_images::{content_files, list, pull, pull_ok};
use berth_tests::fault_proxy::{Fault, FaultProxy};
use berth_tests::image::{with_own_layer, Layout};
use berth_tests::registry::Registry;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

/// `registry.timeout` for these pulls (seconds).
const TIMEOUT: u64 = 3;

/// A registry holding an image with a 4 MiB layer of random bytes, and the proxy in front.
fn setup() -> Result<(Registry, Layout, FaultProxy)> {
    let reg = Registry::start()?;
    let img = with_own_layer(reg.dir.path(), "big", "big.bin", 4 << 20, 15)?;
    reg.push(&img.path, "faults/big:1")?;
    let proxy = FaultProxy::start(reg.port)?;
    Ok((reg, img, proxy))
}

fn builder() -> berth_tests::berthd::Builder {
    Berthd::builder().config(&format!("[registry]\ntimeout = {TIMEOUT}\n"))
}

/// Nothing of a failed pull is kept: no download, no blob, no image.
async fn nothing_left(root: &Path, is: &berth_tests::cri::Is, what: &str) -> Result<()> {
    let ingest = content_files(root, "ingest");
    ensure!(ingest.is_empty(), "{what}: ingest files left: {ingest:?}");
    let blobs = content_files(root, "blobs/sha256");
    ensure!(blobs.is_empty(), "{what}: blobs left: {blobs:?}");
    ensure!(list(is).await?.is_empty(), "{what}: an image was recorded");
    Ok(())
}

/// PullImage that must fail with `code` and every one of `words` in its message, within
/// a bound far over the deadline (a pull that never fails is the bug); prints how long.
async fn pull_fails(
    is: &berth_tests::cri::Is,
    name: &str,
    what: &str,
    code: Code,
    words: &[&str],
) -> Result<()> {
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10 * TIMEOUT), pull(is, name, None)).await;
    let took = t0.elapsed();
    let Ok(r) = r else {
        anyhow::bail!("{what}: PullImage had no answer after {took:?}");
    };
    let s = match r {
        Ok(id) => anyhow::bail!("{what}: PullImage succeeded ({id})"),
        Err(s) => s,
    };
    println!(
        "{what}: {:?} {:?} after {:.1} s (registry.timeout {TIMEOUT} s)",
        s.code(),
        s.message(),
        took.as_secs_f64()
    );
    ensure!(
        s.code() == code && words.iter().all(|w| s.message().contains(w)),
        "{what}: {:?} {:?} (want {code:?} with {words:?})",
        s.code(),
        s.message()
    );
    Ok(())
}

#[test]
fn blob_bodies_cut_by_resets_are_resumed_where_they_broke() -> Result<()> {
    let (_reg, img, proxy) = setup()?;
    berthd_test(builder(), async |d| {
        let (_, is) = d.client().await?;
        let name = format!("{}/faults/big:1", proxy.host());
        // Two blob answers cut after 1 MiB of body each.
        proxy.set(Fault::ResetBlob {
            after: 1 << 20,
            times: 2,
        });
        let id = pull_ok(d, &is, &name, None).await?;
        ensure!(id == img.host().config, "pulled {id}");
        let seen = proxy.seen();
        println!("resets: {seen:?}");
        // Each cut was followed by a request for the rest, none by a whole blob again:
        // one GET per blob, plus one ranged GET per cut.
        let blobs = 1 + img.host().layers.len() as u32;
        ensure!(
            seen.resets == 2 && seen.range_gets == 2 && seen.blob_gets == blobs + 2,
            "{seen:?} for {blobs} blobs"
        );
        ensure!(content_files(&d.dir.path().join("root"), "ingest").is_empty());
        Ok(())
    })
}

#[test]
fn a_registry_that_keeps_cutting_or_answers_500_fails_the_pull_cleanly_and_a_retry_succeeds(
) -> Result<()> {
    let (_reg, img, proxy) = setup()?;
    berthd_test(builder(), async |d| {
        let (_, is) = d.client().await?;
        let root = d.dir.path().join("root");
        let name = format!("{}/faults/big:1", proxy.host());

        // Every answer cut before a byte of body: three resumes without progress, then
        // the pull gives up.
        proxy.set(Fault::ResetBlob {
            after: 0,
            times: u32::MAX,
        });
        pull_fails(
            &is,
            &name,
            "blob bodies always cut",
            Code::Unknown,
            &[
                "blob sha256:",
                &proxy.host(),
                "after 3 resumes without progress",
            ],
        )
        .await?;
        nothing_left(&root, &is, "always cut").await?;

        proxy.set(Fault::Status500);
        pull_fails(
            &is,
            &name,
            "500s",
            Code::Unknown,
            &[&proxy.host(), "500 Internal Server Error", "injected fault"],
        )
        .await?;
        nothing_left(&root, &is, "500s").await?;

        // The fault clears: the next pull starts over cleanly and yields the image.
        proxy.set(Fault::None);
        let id = pull_ok(d, &is, &name, None).await?;
        ensure!(id == img.host().config, "pulled {id}");
        Ok(())
    })
}

#[test]
fn a_registry_that_stops_answering_or_stalls_mid_blob_fails_within_its_deadline() -> Result<()> {
    let (_reg, img, proxy) = setup()?;
    berthd_test(builder(), async |d| {
        let (_, is) = d.client().await?;
        let root = d.dir.path().join("root");
        let name = format!("{}/faults/big:1", proxy.host());

        proxy.set(Fault::Silent);
        pull_fails(
            &is,
            &name,
            "no answer",
            Code::DeadlineExceeded,
            &[&proxy.host(), "sent nothing", "3 s"],
        )
        .await?;
        nothing_left(&root, &is, "no answer").await?;

        proxy.set(Fault::StallBlob { after: 1 << 20 });
        pull_fails(
            &is,
            &name,
            "stalled mid-blob",
            Code::DeadlineExceeded,
            &[&proxy.host(), "blob sha256:", "3 s"],
        )
        .await?;
        nothing_left(&root, &is, "stalled mid-blob").await?;

        proxy.set(Fault::None);
        let id = pull_ok(d, &is, &name, None).await?;
        ensure!(id == img.host().config, "pulled {id}");
        Ok(())
    })
}
