//! A lost or damaged state store (issue 15). `berth-torture --faults store` against a real
//! berthd with pod-network pods on its own CNI bridge: each round kills berthd under
//! churn, deletes, truncates or garbles `berth.redb` in turn, restarts it and checks that
//! every pod and container it knew is listed again as it was (ids, metadata, labels,
//! annotations, IPs, times, states, exit codes), the counters run on with their pids and
//! every line, the damage is reported and the damaged file set aside, and nothing leaks.
//! And a garbled store with no pods: berthd starts, serves and says what it did.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::block_on;
use berth_tests::torture::{cgroup_parent_config, own_cgroup_parent, Torture};
use std::os::unix::fs::PermissionsExt as _;

#[test]
fn rounds_of_a_lost_or_damaged_store_lose_no_pod_and_leak_nothing() -> Result<()> {
    // A cgroup parent of its own: the leftover check counts the cgroups under it.
    let parent = own_cgroup_parent("store");
    let d = Berthd::builder()
        .cni_bridge(8)
        .busybox()
        .config(&cgroup_parent_config(&parent))
        .configure()?;
    // BERTH_TORTURE_STORE_ITERATIONS: more rounds than CI's 6 (two of each damage).
    let iterations = std::env::var("BERTH_TORTURE_STORE_ITERATIONS").unwrap_or_else(|_| "6".into());
    let run = Torture::new(&d, env!("CARGO_BIN_EXE_berth-torture"), "torture")?
        .args([
            "--iterations",
            &iterations,
            "--faults",
            "store",
            "--failpoints",
            "none",
        ])
        .cgroup_parent(&parent)
        .run(&["ready again", "store "])?;
    run.ensure_clean()?;
    ensure!(
        run.stdout.contains(&format!("store damages: {iterations}")),
        "{}",
        run.stdout
    );
    ensure!(
        !run.log.contains("panicked"),
        "berthd panicked:\n{}",
        run.log
    );
    d.finish()
}

#[test]
fn a_garbled_store_without_pods_is_set_aside_and_berthd_serves() -> Result<()> {
    let mut d = Berthd::builder().start()?;
    let root = d.dir.path().join("root");
    d.stop()?;
    let store = root.join("berth.redb");
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&store, &garbage)?;
    d.restart()?;
    block_on(async {
        let (mut rs, _) = d.client().await?;
        let st = rs
            .status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner()
            .status
            .context("no status")?;
        ensure!(
            st.conditions
                .iter()
                .any(|c| c.r#type == "RuntimeReady" && c.status),
            "{st:?}"
        );
        let pods = rs
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        ensure!(pods.is_empty(), "{pods:?}");
        Ok(())
    })??;
    let aside: Vec<_> = std::fs::read_dir(&root)?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("berth.redb.damaged-")
        })
        .map(|e| e.path())
        .collect();
    ensure!(aside.len() == 1, "set aside: {aside:?}");
    ensure!(
        std::fs::read(&aside[0])? == garbage,
        "the damaged file is kept as it was"
    );
    ensure!(std::fs::metadata(&aside[0])?.permissions().mode() & 0o777 == 0o600);
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("the state store was lost or damaged"))
        .with_context(|| format!("no report in the log:\n{log}"))?;
    println!("{line}");
    ensure!(
        line.contains("ERROR") && line.contains(&aside[0].display().to_string()),
        "{line}"
    );
    ensure!(!log.contains("panicked"), "{log}");
    d.finish()
}
