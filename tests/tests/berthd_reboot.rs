//! A node reboot (simulated by `berth_tests::reboot`: berthd killed, every shim and
//! container killed -9, the state dir unmounted and emptied) under a berthd whose pod
//! network runs through the counting fault-injecting plugin (`faulty_cni`), host-local
//! IPAM in the test's dir surviving as an operator's would: the restarted berthd reports
//! the old pods NotReady and their containers exited 255 NodeRebooted, releases each old
//! pod's IP once by itself (StopPodSandbox then does not DEL again), or, when that DEL
//! fails, leaves it to StopPodSandbox; stop and removal leave nothing.

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{reserved_ips, Berthd};
use berth_tests::cri::{block_on, container_config, pod_network};
use berth_tests::cri_calls::CriCalls;
use berth_tests::faulty_cni::{self, Faulty};
use berth_tests::pod::Pod;
use berth_tests::{image, leaks, procs, reboot};
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs two pod-network pods with a container each, reboots the node (the next
/// `crash_dels` DELs crash), restarts berthd; returns the old pods and containers.
async fn reboot_with_pods(
    d: &mut Berthd,
    faulty: &Faulty,
    crash_dels: u32,
) -> Result<(Vec<String>, Vec<String>)> {
    let (mut pods, mut ctrs) = (Vec::new(), Vec::new());
    for name in ["web-a", "web-b"] {
        let mut cfg = d.pod_config(name);
        cfg.hostname = name.into();
        pod_network(&mut cfg);
        let pod = Pod::run(d, cfg).await?;
        let c = pod
            .start(container_config(
                "sleeper",
                image::BUSYBOX_IMAGE,
                &["sleep", "1000"],
            ))
            .await?;
        pods.push(pod.id.clone());
        ctrs.push(c);
    }
    ensure!(reserved_ips(&d.dir.path().join("ipam")).len() == 2);
    faulty.crash_dels(crash_dels)?;
    d.kill9()?;
    let state = d.dir.path().join("state");
    let root = d.dir.path().join("root");
    reboot::simulate(&reboot::Node {
        socket: &d.socket.display().to_string(),
        state: Some(&state),
        root: Some(&root),
        cgroup_parent: "/berth",
        runc_root: Path::new(leaks::BERTH_RUNC_ROOT),
        pods: &pods,
        containers: &ctrs,
    })?;
    let t0 = Instant::now();
    d.restart()?;
    println!(
        "berthd answered {:?} after its restart on the rebooted node (2 pods, 2 containers)",
        t0.elapsed()
    );
    let (rs, _) = d.client().await?;
    for id in &pods {
        let st = rs.pod_state(id).await?;
        ensure!(
            st == cri::PodSandboxState::SandboxNotready as i32,
            "pod {id}: state {st}"
        );
    }
    for id in &ctrs {
        let st = rs.ctr_status(id).await?;
        ensure!(
            (st.state, st.exit_code, st.reason.as_str())
                == (
                    cri::ContainerState::ContainerExited as i32,
                    255,
                    "NodeRebooted"
                ),
            "container {id}: {st:?}"
        );
    }
    Ok((pods, ctrs))
}

fn dels_of(faulty: &Faulty, id: &str) -> usize {
    let want = format!("DEL {id}");
    faulty.calls().iter().filter(|c| **c == want).count()
}

#[test]
fn a_reboot_releases_each_old_pods_network_once_and_leaves_them_removable() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(2).configure()?;
    let faulty = faulty_cni::use_in(&d, 5)?;
    let mut d = d.start()?;
    let r = block_on(async {
        let (pods, _) = reboot_with_pods(&mut d, &faulty, 0).await?;
        let ipam = d.dir.path().join("ipam");
        // Released by berthd itself, in the background after startup: before any stop.
        procs::poll(
            Duration::from_secs(10),
            "the old pods' IPs released",
            || reserved_ips(&ipam).is_empty().then_some(()),
        )?;
        let (rs, _) = d.client().await?;
        for id in &pods {
            rs.stop_and_remove_pod(id).await?;
            ensure!(
                dels_of(&faulty, id) == 1,
                "DELs of {id}: {:?}",
                faulty.calls()
            );
        }
        ensure!(rs.list_pods(None).await?.is_empty());
        Ok(())
    });
    d.with_log(r.and_then(|r| r))?;
    d.finish()
}

#[test]
fn a_release_failing_after_a_reboot_is_left_to_stop_pod_sandbox() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(3).configure()?;
    let faulty = faulty_cni::use_in(&d, 5)?;
    let mut d = d.start()?;
    let r = block_on(async {
        let (pods, _) = reboot_with_pods(&mut d, &faulty, 1000).await?;
        // Each release was tried (and crashed); the IPs are still held.
        procs::poll(
            Duration::from_secs(10),
            "a release DEL of each old pod",
            || {
                pods.iter()
                    .all(|id| dels_of(&faulty, id) >= 1)
                    .then_some(())
            },
        )?;
        ensure!(reserved_ips(&d.dir.path().join("ipam")).len() == 2);
        faulty.crash_dels(0)?;
        let (rs, _) = d.client().await?;
        for id in &pods {
            rs.stop_pod(id).await?;
        }
        let ips = reserved_ips(&d.dir.path().join("ipam"));
        ensure!(
            ips.is_empty(),
            "IPs still reserved after the stops: {ips:?}"
        );
        for id in &pods {
            rs.remove_pod(id).await?;
        }
        ensure!(rs.list_pods(None).await?.is_empty());
        Ok(())
    });
    d.with_log(r.and_then(|r| r))?;
    d.finish()
}
