//! The shipped torture harness (`berth-torture`) against a real berthd with pod-network
//! pods on its own CNI bridge: 20 random kill -9s under churn, then every failpoint once
//! (berthd aborts exactly there), each followed by the harness's checks (nothing unknown,
//! untouched counters, victims' exit codes and every line they printed, everything
//! removable, no leftovers). A third churn loop pulls and removes an image of its own
//! from a local registry. Zero violations expected; the harness's table is printed.
//! The long soak is the same binary with more iterations (README).

use anyhow::{ensure, Result};
use berth_tests::berthd::{binary, Berthd};
use berth_tests::image;
use berth_tests::registry::Registry;

#[test]
fn twenty_random_kills_and_every_failpoint_leave_nothing_lost_or_leaked() -> Result<()> {
    // Configured only: the torture binary starts (and kills) berthd itself.
    let d = Berthd::builder().cni_bridge(9).busybox().configure()?;
    let work = d.dir.path().join("torture");
    std::fs::create_dir_all(&work)?;
    // BERTH_TORTURE_ITERATIONS: more (or fewer) random kills than CI's 20.
    let iterations = std::env::var("BERTH_TORTURE_ITERATIONS").unwrap_or_else(|_| "20".into());
    // BERTH_TORTURE_FAILPOINTS: a comma-separated subset instead of every failpoint.
    let failpoints = std::env::var("BERTH_TORTURE_FAILPOINTS").unwrap_or_else(|_| "all".into());
    // An image with a layer of its own (1 MiB), so pulling and removing it makes and
    // frees snapshots and blobs nothing else holds.
    let reg = Registry::start()?;
    let img = image::with_own_layer(reg.dir.path(), "torture", "own.bin", 1 << 20, 6)?;
    reg.push(&img.path, "torture/pull:1")?;
    let pull = reg.image("torture/pull:1");
    let daemon = format!("{} --config {}", binary()?.display(), d.config.display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth-torture"))
        .args(["--socket", &d.socket.display().to_string()])
        .args(["--daemon", &daemon])
        .args(["--image", image::BUSYBOX_IMAGE])
        .args(["--pull", &pull])
        .args([
            "--iterations",
            &iterations,
            "--failpoints",
            &failpoints,
            "--pod-network",
        ])
        .arg("--root")
        .arg(d.dir.path().join("root"))
        .arg("--state")
        .arg(d.dir.path().join("state"))
        .arg("--ipam-dir")
        .arg(d.dir.path().join("ipam").join("berth-feat"))
        .arg("--work")
        .arg(&work)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    for l in String::from_utf8_lossy(&out.stderr).lines() {
        if l.contains("ready again") || l.contains("VIOLATION") {
            println!("{l}");
        }
    }
    let log = std::fs::read_to_string(work.join("daemon.log")).unwrap_or_default();
    if let Ok(keep) = std::env::var("BERTH_TORTURE_KEEP_LOG") {
        std::fs::write(keep, &log)?;
    }
    ensure!(
        out.status.success(),
        "berth-torture found violations ({}):\n{stdout}\nstderr:\n{}\nberthd log tail:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        log.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(stdout.contains("| (none) | 0 |"), "{stdout}");
    d.finish()
}
