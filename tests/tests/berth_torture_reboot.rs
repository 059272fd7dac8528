//! berth-torture's `reboot` fault against a real berthd with pod-network pods on its own
//! CNI bridge (host-local IPAM in the test's dir, which survives the reboot as an
//! operator's /var/lib/cni/networks would): 3 simulated reboots (every shim and container
//! killed -9, the state dir unmounted and emptied), each checked by the harness (old pods
//! NotReady, containers exited with a reason, their IPs released, everything removable,
//! no leftovers, new pods run). Zero violations expected; the harness's table is printed.

use anyhow::{ensure, Result};
use berth_tests::berthd::Berthd;
use berth_tests::torture::{cgroup_parent_config, own_cgroup_parent, Torture};

#[test]
fn simulated_reboots_leave_every_pod_settled_removable_and_nothing_behind() -> Result<()> {
    // A cgroup parent of this test's own: the harness counts (and a reboot removes) the
    // pods' cgroups there, apart from other berthds on the machine.
    let parent = own_cgroup_parent("reboot");
    let d = Berthd::builder()
        .cni_bridge(8)
        .busybox()
        .config(&cgroup_parent_config(&parent))
        .configure()?;
    // BERTH_TORTURE_REBOOTS: more (or fewer) reboots than CI's 3.
    let rounds = std::env::var("BERTH_TORTURE_REBOOTS").unwrap_or_else(|_| "3".into());
    let run = Torture::new(&d, env!("CARGO_BIN_EXE_berth-torture"), "torture")?
        .args([
            "--faults",
            "reboot",
            "--iterations",
            &rounds,
            "--counters",
            "2",
        ])
        .cgroup_parent(&parent)
        .run(&[])?;
    run.ensure_clean()?;
    ensure!(run.stdout.contains("reboot 0: ready in"), "{}", run.stdout);
    d.finish()
}
