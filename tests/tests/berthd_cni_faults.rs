//! CNI plugins that misbehave (issue 15), through a fault-injecting plugin that wraps the
//! real bridge plugin (`berth_tests::faulty_cni`), with `[cni] plugin_timeout = 2`:
//! an ADD that hangs after the bridge wired the pod, and one that fails after it, make
//! RunPodSandbox fail with the plugin's message and leave nothing (no pod, netns pin,
//! shim, veth, IP reservation, hung process); a DEL that crashes is retried by
//! StopPodSandbox, and one that never stops crashing still lets kubelet stop and remove
//! the pod (the failure logged). Each test has its own bridge and /24.

use anyhow::{ensure, Result};
use berth_tests::berthd::{reserved_ips, Berthd};
use berth_tests::cri::{block_on, pod_network};
use berth_tests::cri_calls::CriCalls;
use berth_tests::faulty_cni::{self, Add, Faulty};
use berth_tests::{leaks, procs};
use std::time::{Duration, Instant};

/// The bound configured for each plugin call.
const TIMEOUT_S: u64 = 2;

/// A berthd whose pod network runs through the faulty plugin, each plugin call bounded
/// by TIMEOUT_S.
fn faulty_berthd(slot: u32) -> Result<(Berthd, Faulty)> {
    let d = Berthd::builder().busybox().cni_bridge(slot).configure()?;
    let faulty = faulty_cni::use_in(&d, TIMEOUT_S)?;
    Ok((d.start()?, faulty))
}

/// What a failed RunPodSandbox must not leave: a pod, an IP reservation, a veth on the
/// bridge, a netns pin, a shim, a mount under the state dir.
async fn nothing_left(d: &Berthd) -> Result<()> {
    let (rs, _) = d.client().await?;
    let pods = rs.list_pods(None).await?;
    ensure!(pods.is_empty(), "pods left: {pods:?}");
    let ips = reserved_ips(&d.dir.path().join("ipam"));
    ensure!(ips.is_empty(), "IPs still reserved: {ips:?}");
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &d.bridge().name])
        .output()?;
    let veths = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(veths.trim().is_empty(), "veths left on the bridge: {veths}");
    let pins = leaks::leftover_entries(&d.dir.path().join("state/netns"));
    ensure!(pins.is_empty(), "netns pins left: {pins:?}");
    let shims = procs::shims_of(&d.socket.display().to_string());
    ensure!(shims.is_empty(), "shims left: {shims:?}");
    let mounts = leaks::mounts_under(&d.dir.path().join("state"));
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    Ok(())
}

/// RunPodSandbox of a pod-network pod named `name`: its id, or the status it failed with,
/// and how long it took (printed, not asserted).
async fn run_pod(d: &Berthd, name: &str) -> Result<(Result<String, tonic::Status>, Duration)> {
    let (rs, _) = d.client().await?;
    let mut cfg = d.pod_config(name);
    cfg.hostname = name.into();
    pod_network(&mut cfg);
    let t0 = Instant::now();
    let r = rs.run_pod(&cfg).await;
    Ok((r, t0.elapsed()))
}

#[test]
fn a_hung_add_fails_at_the_configured_bound_and_leaves_nothing() -> Result<()> {
    let (d, faulty) = faulty_berthd(5)?;
    let r = block_on(async {
        faulty.set_add(Add::Hang)?;
        let (r, took) = run_pod(&d, "hung").await?;
        println!(
            "RunPodSandbox with a hung ADD failed after {took:?} (plugin_timeout {TIMEOUT_S} s)"
        );
        let e = r
            .err()
            .ok_or_else(|| anyhow::anyhow!("RunPodSandbox succeeded"))?;
        ensure!(e.code() == tonic::Code::Internal, "{e:?}");
        ensure!(
            e.message().contains(&format!(
                "\"{}\" ADD timed out after {TIMEOUT_S}s",
                faulty_cni::PLUGIN
            )),
            "{e:?}"
        );
        // The plugin was killed with its process group: its sleeping child too.
        let child = faulty
            .hung_child()
            .ok_or_else(|| anyhow::anyhow!("the plugin did not hang"))?;
        procs::poll(
            Duration::from_secs(5),
            "the hung plugin's child to die",
            || (!procs::alive(child)).then_some(()),
        )?;
        nothing_left(&d).await?;
        // The rollback released what the bridge had wired (DEL of the same pod).
        let calls = faulty.calls();
        ensure!(
            calls.len() >= 2
                && calls[0].starts_with("ADD ")
                && calls[1..].iter().any(|c| c.starts_with("DEL ")),
            "{calls:?}"
        );
        // A working plugin again: the same pod runs (its name was released too).
        faulty.set_add(Add::Pass)?;
        let (r, _) = run_pod(&d, "hung").await?;
        let id = r?;
        let (rs, _) = d.client().await?;
        rs.stop_and_remove_pod(&id).await?;
        nothing_left(&d).await
    });
    d.with_log(r.and_then(|r| r))?;
    d.finish()
}

#[test]
fn an_add_failing_after_the_bridge_is_rolled_back_with_the_plugins_message() -> Result<()> {
    let (d, faulty) = faulty_berthd(6)?;
    let r = block_on(async {
        faulty.set_add(Add::Fail)?;
        let (r, took) = run_pod(&d, "failing").await?;
        println!("RunPodSandbox with a failing ADD failed after {took:?}");
        let e = r
            .err()
            .ok_or_else(|| anyhow::anyhow!("RunPodSandbox succeeded"))?;
        ensure!(e.code() == tonic::Code::Internal, "{e:?}");
        ensure!(e.message().contains(faulty_cni::ADD_FAILURE), "{e:?}");
        nothing_left(&d).await?;
        faulty.set_add(Add::Pass)?;
        let (r, _) = run_pod(&d, "failing").await?;
        let id = r?;
        let (rs, _) = d.client().await?;
        rs.stop_and_remove_pod(&id).await?;
        nothing_left(&d).await
    });
    d.with_log(r.and_then(|r| r))?;
    d.finish()
}

#[test]
fn a_crashing_del_is_retried_and_never_makes_the_pod_unremovable() -> Result<()> {
    let (d, faulty) = faulty_berthd(7)?;
    let r = block_on(async {
        let (rs, _) = d.client().await?;
        // Crashes twice, then works: StopPodSandbox's own retries release the IP.
        let (r, _) = run_pod(&d, "flaky-del").await?;
        let id = r?;
        ensure!(reserved_ips(&d.dir.path().join("ipam")).len() == 1);
        faulty.crash_dels(2)?;
        rs.stop_pod(&id).await?;
        let dels = faulty
            .calls()
            .iter()
            .filter(|c| **c == format!("DEL {id}"))
            .count();
        ensure!(
            dels == 3,
            "DELs of {id}: {dels}, calls {:?}",
            faulty.calls()
        );
        let ips = reserved_ips(&d.dir.path().join("ipam"));
        ensure!(ips.is_empty(), "IPs still reserved after the stop: {ips:?}");
        rs.remove_pod(&id).await?;
        nothing_left(&d).await?;

        // Never stops crashing: stop and removal still succeed; the netns goes, the
        // failure is logged, the IP is what the broken plugin keeps.
        let (r, _) = run_pod(&d, "broken-del").await?;
        let id = r?;
        let ip = reserved_ips(&d.dir.path().join("ipam"));
        faulty.crash_dels(1000)?;
        rs.stop_pod(&id).await?;
        ensure!(
            leaks::leftover_entries(&d.dir.path().join("state/netns")).is_empty(),
            "the stopped pod's netns pin is left"
        );
        // A second stop (kubelet retries) tries DEL again; the removal too.
        rs.stop_pod(&id).await?;
        rs.remove_pod(&id).await?;
        let dels = faulty
            .calls()
            .iter()
            .filter(|c| **c == format!("DEL {id}"))
            .count();
        println!("DELs of a pod whose DEL always crashes, over 2 stops and a removal: {dels}");
        ensure!(dels == 9, "DELs of {id}: {dels}");
        ensure!(
            rs.list_pods(None).await?.is_empty(),
            "the pod is still listed"
        );
        let log = d.log();
        ensure!(
            log.contains("pod removed with its CNI DEL failing") && log.contains("SIGSEGV"),
            "the failed DEL is not in the log"
        );
        ensure!(reserved_ips(&d.dir.path().join("ipam")) == ip, "{ip:?}");
        // What the broken plugin kept, released by hand (the operator's job).
        faulty.crash_dels(0)?;
        for net in std::fs::read_dir(d.dir.path().join("ipam"))?.flatten() {
            for i in &ip {
                let _ = std::fs::remove_file(net.path().join(i));
            }
        }
        nothing_left(&d).await
    });
    d.with_log(r.and_then(|r| r))?;
    d.finish()
}
