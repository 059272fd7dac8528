//! Leftovers without an owner are removed when berthd starts: here every pod and container
//! loses its record at once (the state store and the record copies it would be rebuilt
//! from, docs/crash-recovery.md, are deleted while berthd is down), so each
//! shim, container process, cgroup, rootfs mount, bundle, netns pin and IP allocation left
//! behind is an orphan that the next berthd must clean up.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config, pod_network};
use berth_tests::host::{cgroup_dir, container_pid};
use berth_tests::pod::Pod;
use berth_tests::{image, leaks, procs};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// host-local's allocation files (one per IP) in the test's IPAM dir.
fn ip_allocations(ipam: &Path) -> Vec<PathBuf> {
    entries(ipam)
        .into_iter()
        .flat_map(|net| entries(&net))
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
        })
        .collect()
}

#[test]
fn leftovers_of_a_lost_state_store_are_removed_at_startup() -> Result<()> {
    let mut d = Berthd::builder().busybox().cni_bridge(0).start()?;
    let logs = d.dir.path().join("logs");
    let state = d.dir.path().join("state");
    let root = d.dir.path().join("root");
    let ipam = d.dir.path().join("ipam");
    let socket = d.socket.display().to_string();

    let (ctr_pids, cgroups) = block_on(async {
        let mut cfg = pod_config("lost-net", &logs.join("a"));
        pod_network(&mut cfg);
        let net_pod = Pod::run(&d, cfg).await?;
        net_pod
            .start(container_config(
                "a",
                image::BUSYBOX_IMAGE,
                &["sleep", "1001"],
            ))
            .await?;
        let host_pod = Pod::run(&d, pod_config("lost-host", &logs.join("b"))).await?;
        host_pod
            .start(container_config(
                "b",
                image::BUSYBOX_IMAGE,
                &["sleep", "1002"],
            ))
            .await?;
        let mut pids = Vec::new();
        let mut cgroups = Vec::new();
        for argv in [["sleep", "1001"], ["sleep", "1002"]] {
            let pid = procs::poll(Duration::from_secs(5), "container pid", || {
                container_pid(&d, &argv)
            })?;
            pids.push(pid);
            cgroups.push(cgroup_dir(pid, "memory")?);
        }
        Ok::<_, anyhow::Error>((pids, cgroups))
    })??;
    let shims: Vec<i32> = procs::shims_of(&socket).iter().map(|p| p.pid).collect();
    ensure!(shims.len() == 2, "expected 2 shims, found {shims:?}");
    ensure!(
        !leaks::mounts_under(d.dir.path()).is_empty(),
        "no rootfs mounts to lose"
    );
    ensure!(
        ip_allocations(&ipam).len() == 1,
        "no IP allocated: {:?}",
        entries(&ipam)
    );
    ensure!(entries(&state.join("netns")).len() == 1);

    d.kill9()?;
    std::fs::remove_file(root.join("berth.redb")).context("remove the state store")?;
    let copies: Vec<PathBuf> = [root.join("pods"), root.join("containers")]
        .iter()
        .flat_map(|d| entries(d))
        .map(|d| d.join("berth-record.json"))
        .filter(|f| f.exists())
        .collect();
    ensure!(copies.len() == 4, "record copies: {copies:?}");
    for f in copies {
        std::fs::remove_file(f)?;
    }
    d.restart()?;

    block_on(async {
        let (mut rs, _) = d.client().await?;
        let pods = rs
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        ensure!(
            pods.is_empty(),
            "a lost store came back with pods: {pods:?}"
        );
        Ok(())
    })??;
    // Startup cleanup runs before berthd serves: everything is gone by now.
    for pid in shims.iter().chain(&ctr_pids) {
        ensure!(!procs::alive(*pid), "pid {pid} survived; log:\n{}", d.log());
    }
    for cg in &cgroups {
        ensure!(!cg.exists(), "cgroup {} left", cg.display());
    }
    let mounts = leaks::mounts_under(d.dir.path());
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    for dir in [
        state.join("pods"),
        state.join("containers"),
        state.join("netns"),
        root.join("pods"),
        root.join("containers"),
    ] {
        let left = entries(&dir);
        ensure!(left.is_empty(), "{} still holds {left:?}", dir.display());
    }
    let ips = ip_allocations(&ipam);
    ensure!(ips.is_empty(), "IP allocations left: {ips:?}");
    let runc_state: Vec<PathBuf> = entries(Path::new("/run/containerd/runc/berth"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| d.log().contains(n))
        })
        .collect();
    ensure!(runc_state.is_empty(), "runc state left: {runc_state:?}");
    d.finish()
}
