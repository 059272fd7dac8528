//! berth-torture's `reboot` fault against a real berthd with pod-network pods on its own
//! CNI bridge (host-local IPAM in the test's dir, which survives the reboot as an
//! operator's /var/lib/cni/networks would): 3 simulated reboots (every shim and container
//! killed -9, the state dir unmounted and emptied), each checked by the harness (old pods
//! NotReady, containers exited with a reason, their IPs released, everything removable,
//! no leftovers, new pods run). Zero violations expected; the harness's table is printed.

use anyhow::{ensure, Result};
use berth_tests::berthd::{binary, Berthd};
use berth_tests::image;

#[test]
fn simulated_reboots_leave_every_pod_settled_removable_and_nothing_behind() -> Result<()> {
    // A cgroup parent of this test's own: the harness counts (and a reboot removes) the
    // pods' cgroups there, apart from other berthds on the machine.
    let parent = format!("/berth-reboot-{}", std::process::id());
    let d = Berthd::builder()
        .cni_bridge(8)
        .busybox()
        .config(&format!("[runtime]\ncgroup_parent = \"{parent}\"\n"))
        .configure()?;
    let work = d.dir.path().join("torture");
    std::fs::create_dir_all(&work)?;
    // BERTH_TORTURE_REBOOTS: more (or fewer) reboots than CI's 3.
    let rounds = std::env::var("BERTH_TORTURE_REBOOTS").unwrap_or_else(|_| "3".into());
    let daemon = format!("{} --config {}", binary()?.display(), d.config.display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth-torture"))
        .args(["--socket", &d.socket.display().to_string()])
        .args(["--daemon", &daemon])
        .args(["--image", image::BUSYBOX_IMAGE])
        .args([
            "--faults",
            "reboot",
            "--iterations",
            &rounds,
            "--pod-network",
        ])
        .args(["--cgroup-parent", &parent, "--counters", "2"])
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
    let log = std::fs::read_to_string(work.join("daemon.log")).unwrap_or_default();
    if let Ok(keep) = std::env::var("BERTH_TORTURE_KEEP_LOG") {
        std::fs::write(keep, &log)?;
    }
    remove_cgroup_parent(&parent);
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
    ensure!(stdout.contains("reboot 0: ready in"), "{stdout}");
    d.finish()
}

/// The test's own cgroup parent, in every hierarchy (empty by now).
fn remove_cgroup_parent(parent: &str) {
    let rel = parent.trim_start_matches('/');
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(e.path().join(rel));
    }
    let _ = std::fs::remove_dir(std::path::Path::new("/sys/fs/cgroup").join(rel));
}
