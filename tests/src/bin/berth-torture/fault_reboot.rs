//! `--faults reboot`: a simulated node reboot. Each round: pods with a running counter
//! and a container created but never started; the daemon killed; the reboot simulated
//! by `berth_tests::reboot` (every shim and pod process killed -9 by pid; cgroups,
//! runtime state, shim sockets, mounts and the state dir's contents with the netns pins
//! removed, as a reboot removes them). Then the daemon starts (time
//! to ready printed, with the number of pods), and the checks: every old pod NotReady,
//! every old container exited with a reason, the old pods' IPs released without any
//! stop (host-local files under `--ipam-dir`), kubelet's stop and removal of all of them,
//! no leftovers beyond the baseline, and new pods run.

use anyhow::{Context, Result};
use berth_cri::v1 as cri;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::checks::{leftovers, Scope};
use crate::daemon::Daemon;
use crate::report::Report;
use crate::workload::{self, Rs, Shape};

/// Pods each round makes before its reboot.
const PODS: usize = 3;
/// How long the old pods' IPs may take to be released after the restart.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);

type Snapshot = BTreeMap<&'static str, Vec<String>>;

/// What the node had before the reboot.
struct Old {
    /// Pod id → its IP ("" for none).
    pods: Vec<(String, String)>,
    containers: Vec<String>,
}

/// Round `n`'s pods: each with a running counter and a container never started.
pub async fn workload(rs: &mut Rs, shape: &Shape, n: usize) -> Result<()> {
    for i in 0..PODS {
        let cfg = shape.pod(&format!("reboot{n}-{i}"), "reboot")?;
        let pod = workload::run_pod(rs, &cfg).await?;
        let id = workload::start(
            rs,
            &pod,
            &cfg,
            shape.container("counter", workload::COUNTER),
        )
        .await?;
        rs.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(shape.container("idle", "sleep 1000")),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .context("CreateContainer")?;
        let (st, _) = workload::status(rs, &id).await?;
        anyhow::ensure!(
            st.state == cri::ContainerState::ContainerRunning as i32,
            "counter {id} of pod {pod} is not running: state {}",
            st.state
        );
    }
    Ok(())
}

/// One reboot round; `baseline` is what leftovers are counted against (updated).
pub async fn round(
    d: &mut Daemon,
    rs: &mut Rs,
    shape: &Shape,
    scope: &Scope,
    report: &mut Report,
    n: usize,
    baseline: &mut Snapshot,
) -> Result<()> {
    workload(rs, shape, n).await?;
    let old = old_world(rs).await?;
    d.kill9();
    berth_tests::reboot::simulate(&berth_tests::reboot::Node {
        socket: &scope.socket,
        state: scope.state.as_deref(),
        root: scope.root.as_deref(),
        cgroup_parent: &scope.cgroup_parent,
        runc_root: &scope.runc_root,
        pods: &old
            .pods
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        containers: &old.containers,
    })?;
    let ready = d.start(None).await?;
    println!(
        "reboot {n}: ready in {ready:?} with {} pods and {} containers from before the reboot",
        old.pods.len(),
        old.containers.len()
    );
    report.ready.push(ready);
    *rs = d.client().await?;
    check_settled(rs, &old, report, n).await?;
    check_released(scope, &old, report, n).await;
    // kubelet: containers stopped and removed, then the pods.
    for id in &old.containers {
        let stopped = rs
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await;
        let removed = rs
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await;
        if let Err(e) = stopped.and(removed) {
            report.add("removable", format!("reboot {n}: container {id}: {e}"));
        }
    }
    for (id, _) in &old.pods {
        if let Err(e) = workload::remove_pod(rs, id).await {
            report.add("removable", format!("reboot {n}: pod {id}: {e:#}"));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = scope.snapshot();
    for (kind, extra) in leftovers(baseline, &now) {
        report.add(
            &format!("leftover {kind}"),
            format!(
                "reboot {n}: {} more: {:?}",
                extra.len(),
                &extra[..extra.len().min(3)]
            ),
        );
    }
    // New pods run on the rebooted node (they are the next round's old pods).
    if let Err(e) = workload(rs, shape, n + 1000).await {
        report.add("reboot: new pods", format!("reboot {n}: {e:#}"));
    }
    *baseline = scope.snapshot();
    Ok(())
}

/// The harness's pods (with their IPs) and their containers.
async fn old_world(rs: &mut Rs) -> Result<Old> {
    let mut pods = Vec::new();
    for p in workload::pods_with(rs, "").await? {
        let st = rs
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        let ip = st
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        pods.push((p.id, ip));
    }
    let containers = rs
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers
        .into_iter()
        .filter(|c| pods.iter().any(|(id, _)| *id == c.pod_sandbox_id))
        .map(|c| c.id)
        .collect();
    Ok(Old { pods, containers })
}

/// Every old pod NotReady, every old container exited with a reason.
async fn check_settled(rs: &mut Rs, old: &Old, report: &mut Report, n: usize) -> Result<()> {
    for (id, _) in &old.pods {
        let st = rs
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no pod status")?;
        if st.state != cri::PodSandboxState::SandboxNotready as i32 {
            report.add(
                "reboot: pod ready",
                format!("reboot {n}: pod {id} is ready after the reboot"),
            );
        }
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for id in &old.containers {
        let (st, _) = workload::status(rs, id).await?;
        if st.state != cri::ContainerState::ContainerExited as i32 || st.reason.is_empty() {
            report.add(
                "reboot: container",
                format!(
                    "reboot {n}: container {id}: state {} reason {:?} (want exited with a reason)",
                    st.state, st.reason
                ),
            );
        }
        *reasons
            .entry(format!("{} (exit {})", st.reason, st.exit_code))
            .or_default() += 1;
    }
    println!("reboot {n}: old containers' reasons: {reasons:?}");
    Ok(())
}

/// The old pods' IPs are released without any stop (host-local's files under --ipam-dir).
async fn check_released(scope: &Scope, old: &Old, report: &mut Report, n: usize) {
    let Some(ipam) = &scope.ipam_dir else { return };
    let ips: Vec<&str> = old
        .pods
        .iter()
        .map(|(_, ip)| ip.as_str())
        .filter(|ip| !ip.is_empty())
        .collect();
    let t0 = Instant::now();
    loop {
        let held: Vec<&&str> = ips.iter().filter(|ip| ipam.join(ip).exists()).collect();
        if held.is_empty() {
            println!(
                "reboot {n}: {} IPs of the previous boot released {:?} after ready",
                ips.len(),
                t0.elapsed()
            );
            return;
        }
        if t0.elapsed() > RELEASE_WITHIN {
            report.add(
                "reboot: ipam",
                format!("reboot {n}: IPs of the previous boot still held: {held:?}"),
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
