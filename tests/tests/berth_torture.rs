//! The shipped torture harness (`berth-torture`) against a real berthd with pod-network
//! pods on its own CNI bridge: 20 random kill -9s under churn, then every failpoint once
//! (berthd aborts exactly there), each followed by the harness's checks (nothing unknown,
//! untouched counters, victims' exit codes and every line they printed, everything
//! removable, no leftovers). A third churn loop pulls and removes an image of its own
//! from a local registry. Half the churn pods have a user namespace of their own. Zero
//! violations expected; the harness's table is printed.
//! The long soak is the same binary with more iterations (README).

use anyhow::Result;
use berth_tests::berthd::Berthd;
use berth_tests::image;
use berth_tests::registry::Registry;
use berth_tests::torture::{cgroup_parent_config, own_cgroup_parent, Torture};

#[test]
fn twenty_random_kills_and_every_failpoint_leave_nothing_lost_or_leaked() -> Result<()> {
    // Configured only: the torture binary starts (and kills) berthd itself. A pod cgroup
    // parent of its own: other berthds on the node (tests side by side) share /berth and
    // the runtime's state dir, and their containers are not this run's leftovers.
    let parent = own_cgroup_parent("torture");
    let d = Berthd::builder()
        .cni_bridge(9)
        .busybox()
        .config(&cgroup_parent_config(&parent))
        .configure()?;
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
    let run = Torture::new(&d, env!("CARGO_BIN_EXE_berth-torture"), "torture")?
        .args(["--pull", &pull])
        // Half the churn pods user-namespaced (idmapped rootfs, joined user namespace).
        .args(["--userns"])
        .args(["--iterations", &iterations, "--failpoints", &failpoints])
        .cgroup_parent(&parent)
        .run(&["ready again"])?;
    run.ensure_clean()?;
    d.finish()
}
