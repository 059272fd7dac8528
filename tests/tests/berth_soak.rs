//! The soak under load, briefly (issue 15): berth-torture with 4 churners (pods with a
//! container from an image each pulls for itself, ExecSync, its log, ContainerStats,
//! PodSandboxStats, ListContainerStats, removal) plus the pull loop, for 75 s, with kill -9s
//! of berthd and of churn pods' shims (`--faults kill,shim-kill`), pod-network pods on a
//! CNI bridge of its own, images from a local registry. Zero violations expected: every
//! error a churner saw is explained by an injected fault, nothing leaked, berthd's RSS and
//! fds flat after warm-up. The harness's table and resource figures are printed.
//!
//! The recorded 30-minute soak is this test with BERTH_SOAK_CHURNERS=20
//! BERTH_SOAK_DURATION=30m (docs/berth-torture.md).

use anyhow::{ensure, Result};
use berth_tests::berthd::Berthd;
use berth_tests::image;
use berth_tests::registry::Registry;
use berth_tests::torture::{cgroup_parent_config, own_cgroup_parent, Torture};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

#[test]
fn churners_with_berthd_and_shim_kills_see_only_injected_errors_and_stay_flat() -> Result<()> {
    // Configured only: the torture binary starts (and kills) berthd itself.
    // A pod cgroup parent of its own: other berthds on the node (tests side by side)
    // share the runtime's state dir and /berth, and their pods are not this run's leaks.
    let parent = own_cgroup_parent("soak");
    let d = Berthd::builder()
        .cni_bridge(7)
        .busybox()
        .config(&cgroup_parent_config(&parent))
        .configure()?;
    // BERTH_SOAK_CHURNERS, BERTH_SOAK_DURATION, BERTH_SOAK_FAULTS, BERTH_SOAK_SEED:
    // the long soak's settings instead of CI's.
    let churners: usize = env_or("BERTH_SOAK_CHURNERS", "4").parse()?;
    let duration = env_or("BERTH_SOAK_DURATION", "75s");
    let faults = env_or("BERTH_SOAK_FAULTS", "kill,shim-kill");
    let every = env_or("BERTH_SOAK_SAMPLE_EVERY", "2");
    // Images with a layer of their own, pushed to a local registry: the pull loop's
    // (1 MiB), then one per churner (64 KiB), so no two loops pull or remove the same.
    let reg = Registry::start()?;
    let mut pulls = Vec::new();
    for i in 0..=churners {
        let size = if i == 0 { 1 << 20 } else { 64 << 10 };
        let img = image::with_own_layer(
            reg.dir.path(),
            &format!("soak{i}"),
            "own.bin",
            size,
            100 + i as u64,
        )?;
        reg.push(&img.path, &format!("soak/pull{i}:1"))?;
        pulls.push(reg.image(&format!("soak/pull{i}:1")));
    }
    // BERTH_TORTURE_BIN: a copy of the harness (a long soak keeps running while the
    // tree is rebuilt); BERTHD likewise for berthd, whose shim is found next to it.
    let torture = std::env::var("BERTH_TORTURE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_berth-torture").into());
    let mut t = Torture::new(&d, &torture, "soak")?
        .args(["--pull", &pulls.join(",")])
        .args(["--churners", &churners.to_string()])
        .args(["--duration", &duration, "--faults", &faults])
        .args(["--sample-every", &every])
        .args(["--failpoints", "none"])
        .cgroup_parent(&parent);
    if let Ok(seed) = std::env::var("BERTH_SOAK_SEED") {
        t = t.args(["--seed", &seed]);
    }
    let work = t.work.clone();
    let run = t.run(&["shim-kill"])?;
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    // BERTH_SOAK_KEEP=DIR: keep the samples, the chart and the report.
    if let Ok(keep) = std::env::var("BERTH_SOAK_KEEP") {
        std::fs::create_dir_all(&keep)?;
        for f in ["samples.csv", "samples.svg"] {
            let _ = std::fs::copy(work.join(f), std::path::Path::new(&keep).join(f));
        }
        std::fs::write(
            std::path::Path::new(&keep).join("report.txt"),
            stdout.as_bytes(),
        )?;
        std::fs::write(
            std::path::Path::new(&keep).join("stderr.txt"),
            stderr.as_bytes(),
        )?;
    }
    run.ensure_clean()?;
    // The load really ran: pods went through whole cycles, shims were killed, and the
    // resource verdict was reached.
    ensure!(!stdout.contains(" 0 cycles completed"), "{stdout}");
    if faults.contains("shim-kill") {
        ensure!(!stdout.contains("shim kills 0,"), "{stdout}");
    }
    ensure!(stdout.contains("; flat;"), "{stdout}");
    d.finish()
}
