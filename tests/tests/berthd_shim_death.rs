//! A pod's shim killed with SIGKILL, with berthd running and with berthd down: berthd
//! notices at once (running), reports an exit the shim had recorded with its real status
//! and time, kills what the dead shim left running (exit 137, reason ShimDied), marks the
//! pod NotReady, and the pod can then be stopped and removed with nothing left behind
//! (the teardown's leak check: shims, mounts, socket).

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config};
use berth_tests::pod::Pod;
use berth_tests::streaming::eventually;
use berth_tests::{image, procs};
use std::time::{Duration, Instant};

async fn pid_of(pod: &Pod, id: &str) -> Result<i32> {
    let r = pod
        .rs
        .clone()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(r.info.get("info").context("no info")?)?;
    Ok(info["pid"].as_i64().context("no pid")? as i32)
}

async fn pod_state(pod: &Pod) -> Result<i32> {
    Ok(pod.status().await?.0.state)
}

#[test]
fn a_shim_killed_under_a_running_berthd_is_noticed_and_its_pod_settled() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("live", &logs.join("live"))).await?;
        let cid = pod
            .start(container_config(
                "sleeper",
                image::BUSYBOX_IMAGE,
                &["sleep", "1000"],
            ))
            .await?;
        let pid = pid_of(&pod, &cid).await?;
        let shim = d.shim_of_pod(&pod.id)?;
        let t0 = Instant::now();
        procs::signal(shim, libc::SIGKILL)?;
        let mut st = pod.container_status(&cid).await?;
        while st.state != cri::ContainerState::ContainerExited as i32
            && t0.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            st = pod.container_status(&cid).await?;
        }
        let took = t0.elapsed();
        ensure!(
            st.state == cri::ContainerState::ContainerExited as i32,
            "the container is still {} 5 s after its shim died",
            st.state
        );
        // A figure, not an assertion: how soon berthd noticed on this machine.
        eprintln!("berthd settled the dead shim's container in {took:?}");
        ensure!(
            st.exit_code == 137 && st.reason == "ShimDied",
            "exit {} reason {:?}",
            st.exit_code,
            st.reason
        );
        ensure!(
            eventually(Duration::from_secs(5), || !procs::alive(pid)).await,
            "the process the dead shim left ({pid}) still runs"
        );
        let mut state = pod_state(&pod).await?;
        for _ in 0..50 {
            if state == cri::PodSandboxState::SandboxNotready as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = pod_state(&pod).await?;
        }
        ensure!(
            state == cri::PodSandboxState::SandboxNotready as i32,
            "the pod is still ready"
        );
        Ok(())
    })
}

#[test]
fn a_shim_killed_while_berthd_is_down_keeps_recorded_exits_and_kills_the_rest() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("down", &logs.join("down"))).await?;
        let quitter = pod
            .start(container_config(
                "quitter",
                image::BUSYBOX_IMAGE,
                &["sh", "-c", "sleep 1; exit 3"],
            ))
            .await?;
        let sleeper = pod
            .start(container_config(
                "sleeper",
                image::BUSYBOX_IMAGE,
                &["sleep", "1000"],
            ))
            .await?;
        // Killed by the OOM killer while berthd is down: the shim's record says so.
        let mut hog = container_config(
            "hog",
            image::BUSYBOX_IMAGE,
            &["sh", "-c", "sleep 0.5; head -c 209715200 /dev/zero | tail"],
        );
        hog.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 16 << 20,
                memory_swap_limit_in_bytes: 16 << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        let hog = pod.start(hog).await?;
        let sleeper_pid = pid_of(&pod, &sleeper).await?;
        let shim = d.shim_of_pod(&pod.id)?;
        d.kill9()?;
        // The quitter exits and the hog is OOM-killed (both recorded by their shim), then
        // the shim dies. Waited for by their records, not a fixed time: a loaded machine
        // takes longer to fill the hog's 16 MiB.
        let record = |id: &str| {
            d.dir
                .path()
                .join("state/containers")
                .join(id)
                .join("berth-exit.json")
        };
        procs::poll(
            Duration::from_secs(20),
            "the quitter's and hog's exits",
            || (record(&quitter).exists() && record(&hog).exists()).then_some(()),
        )?;
        let quit_by = berth_tests_now_ns();
        // The shim's exit record (what berthd reads once the shim is gone) carries the
        // OOM kill: the cgroup that would tell goes with the dead shim's task.
        let rec = d
            .dir
            .path()
            .join("state/containers")
            .join(&hog)
            .join("berth-exit.json");
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec)?)?;
        ensure!(
            rec["status"] == 137 && rec["oom_killed"] == true && rec["exited_at_ns"].is_i64(),
            "exit record {rec}"
        );
        procs::signal(shim, libc::SIGKILL)?;
        d.restart()?;
        let (rs, _) = d.client().await?;
        let mut pod = pod;
        pod.rs = rs.clone();
        let q = pod.container_status(&quitter).await?;
        ensure!(
            q.state == cri::ContainerState::ContainerExited as i32 && q.exit_code == 3,
            "quitter: state {} exit {} reason {:?}",
            q.state,
            q.exit_code,
            q.reason
        );
        ensure!(
            q.finished_at > q.started_at && q.finished_at < quit_by,
            "quitter's exit time {} (started {}, shim killed at {quit_by})",
            q.finished_at,
            q.started_at
        );
        let h = pod.container_status(&hog).await?;
        ensure!(
            h.exit_code == 137 && h.reason == "OOMKilled",
            "hog: state {} exit {} reason {:?}",
            h.state,
            h.exit_code,
            h.reason
        );
        let s = pod.container_status(&sleeper).await?;
        ensure!(
            s.state == cri::ContainerState::ContainerExited as i32
                && s.exit_code == 137
                && s.reason == "ShimDied",
            "sleeper: state {} exit {} reason {:?}",
            s.state,
            s.exit_code,
            s.reason
        );
        ensure!(
            eventually(Duration::from_secs(5), || !procs::alive(sleeper_pid)).await,
            "the sleeper ({sleeper_pid}) still runs"
        );
        ensure!(
            pod_state(&pod).await? == cri::PodSandboxState::SandboxNotready as i32,
            "the pod is still ready"
        );
        Ok(())
    })
}

fn berth_tests_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
