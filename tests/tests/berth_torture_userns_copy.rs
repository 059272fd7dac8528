//! The torture harness with user-namespaced pods on remapped layer copies (`[userns]
//! rootfs = "copy"`, the fallback for hosts that cannot idmap an overlay's layers): random
//! kill -9s of berthd and the creation and removal failpoints while half the churn pods
//! make, share and release copies. Zero violations, and no copy, mount or pin left when
//! everything is removed (the guard's leak check counts `root/userns-copies`).

use anyhow::Result;
use berth_tests::berthd::Berthd;
use berth_tests::torture::{cgroup_parent_config, own_cgroup_parent, Torture};

#[test]
fn kills_while_pods_make_and_release_remapped_copies_leave_nothing() -> Result<()> {
    let parent = own_cgroup_parent("torture-copy");
    let d = Berthd::builder()
        .cni_bridge(10)
        .busybox()
        .config(&format!(
            "{}\n[userns]\nrootfs = \"copy\"\n",
            cgroup_parent_config(&parent)
        ))
        .configure()?;
    let iterations = std::env::var("BERTH_TORTURE_ITERATIONS").unwrap_or_else(|_| "8".into());
    // The steps around a container's layers: its record and lease, its bundle (the
    // copies acquired), its task, its removal.
    let failpoints = std::env::var("BERTH_TORTURE_FAILPOINTS").unwrap_or_else(|_| {
        "ctr.create.after_record,ctr.create.after_bundle,ctr.create.after_task,ctr.remove.after_delete"
            .into()
    });
    let run = Torture::new(&d, env!("CARGO_BIN_EXE_berth-torture"), "torture-copy")?
        .args(["--userns"])
        .args(["--iterations", &iterations, "--failpoints", &failpoints])
        .cgroup_parent(&parent)
        .run(&["ready again"])?;
    run.ensure_clean()?;
    d.finish()
}
