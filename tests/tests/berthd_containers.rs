//! berthd containers: images imported from an OCI archive (`berthd image import`), then
//! CreateContainer/StartContainer/StopContainer/RemoveContainer in a pod's shim, exit codes
//! and reasons in ContainerStatus, CRI-format logs written by the shim, list filters, and
//! the error codes for bad input.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_cri::v1::ContainerState::ContainerExited as Exited;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::cri_calls::{in_state, CriCalls};
use berth_tests::pod::Pod;
use berth_tests::{image, procs};
use std::time::Duration;
use tonic::Code;

#[test]
fn containers_run_exit_log_and_are_removed() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, mut is) = d.client().await?;
        let imgs = is
            .list_images(cri::ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images;
        ensure!(
            imgs.iter()
                .any(|i| i.repo_tags.iter().any(|t| t == image::BUSYBOX_IMAGE)),
            "{imgs:?}"
        );
        let st = is
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image::BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner();
        ensure!(
            st.image
                .as_ref()
                .is_some_and(|i| i.id.starts_with("sha256:")),
            "{st:?}"
        );

        let pod = Pod::run(d, pod_config("app", &logs)).await?;
        let short = pod
            .create(container_config(
                "short",
                image::BUSYBOX_IMAGE,
                &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
            ))
            .await
            .with_context(|| format!("CreateContainer; log:\n{}", d.log()))?;
        let st = rs.ctr_status(&short).await?;
        ensure!(
            st.state == cri::ContainerState::ContainerCreated as i32,
            "{st:?}"
        );
        rs.start_ctr(&short).await?;
        let s = rs
            .wait_ctr_state(&short, Exited, Duration::from_secs(5))
            .await?;
        ensure!(s.exit_code == 3 && s.reason == "Error", "{s:?}");
        ensure!(s.started_at > 0 && s.finished_at >= s.started_at, "{s:?}");
        let log = std::fs::read_to_string(logs.join("short.log")).context("container log")?;
        ensure!(
            log.contains(" stdout F hello\n") && log.contains(" stderr F oops\n"),
            "log:\n{log}"
        );

        // A long-running one, stopped with a grace period.
        let long = pod
            .start(container_config(
                "long",
                image::BUSYBOX_IMAGE,
                &["sleep", "600"],
            ))
            .await?;
        let again = rs.start_ctr(&long).await;
        ensure!(
            matches!(&again, Err(s) if s.code() == Code::FailedPrecondition),
            "second start: {again:?}"
        );
        let list = rs
            .list_ctrs(Some(in_state(cri::ContainerState::ContainerRunning)))
            .await?;
        ensure!(list.len() == 1 && list[0].id == long, "running: {list:?}");
        let by_pod = cri::ContainerFilter {
            pod_sandbox_id: pod.id.clone(),
            ..Default::default()
        };
        ensure!(rs.list_ctrs(Some(by_pod)).await?.len() == 2);
        rs.stop_ctr(&long, 2).await?;
        let s = rs.ctr_status(&long).await?;
        ensure!(
            s.state == cri::ContainerState::ContainerExited as i32 && s.exit_code != 0,
            "after stop: {s:?}"
        );
        // Both containers ran in the pod's one shim.
        ensure!(
            procs::shims_of(&d.socket.display().to_string()).len() == 1,
            "one shim per pod"
        );

        // Bad input: unknown image and pod, duplicate name, escaping log path.
        let r = pod
            .create(container_config("ghost", "berth.test/nope:1", &["true"]))
            .await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::NotFound),
            "unknown image: {r:?}"
        );
        let r = pod
            .create(container_config("short", image::BUSYBOX_IMAGE, &["true"]))
            .await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::AlreadyExists),
            "duplicate name: {r:?}"
        );
        let mut bad_log = container_config("badlog", image::BUSYBOX_IMAGE, &["true"]);
        bad_log.log_path = "../../etc/x.log".into();
        let r = pod.create(bad_log).await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::InvalidArgument),
            "bad log path: {r:?}"
        );
        let r = rs
            .clone()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: "nope".into(),
                config: Some(container_config("x", image::BUSYBOX_IMAGE, &["true"])),
                sandbox_config: None,
            })
            .await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::NotFound),
            "unknown pod: {r:?}"
        );

        rs.remove_ctr(&short).await?;
        rs.remove_ctr(&short).await?;
        let gone = rs.ctr_status(&short).await;
        ensure!(
            matches!(&gone, Err(s) if s.code() == Code::NotFound),
            "{gone:?}"
        );
        // Removing the pod removes its remaining container and its shim.
        pod.remove().await?;
        let left = rs.list_ctrs(None).await?;
        ensure!(left.is_empty(), "containers left: {left:?}");
        Ok(())
    })
}

fn container_pid(d: &Berthd, name: &str) -> Option<i32> {
    // The container's process runs `sleep <name-specific seconds>` under this berthd's shim.
    procs::shim_children(&d.socket.display().to_string(), |argv| {
        argv.len() == 2 && argv[0] == "sleep" && argv[1] == name
    })
    .first()
    .copied()
}

#[test]
fn exits_while_berthd_is_down_are_kept_and_survivors_keep_running() -> Result<()> {
    let mut d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    let (pod, survivor, victim) = block_on(async {
        let pod = Pod::run(&d, pod_config("restart", &logs)).await?;
        let mut ids = vec![];
        for (name, secs) in [("survivor", "601"), ("victim", "602")] {
            ids.push(
                pod.start(container_config(
                    name,
                    image::BUSYBOX_IMAGE,
                    &["sleep", secs],
                ))
                .await?,
            );
        }
        Ok::<_, anyhow::Error>((pod.id, ids[0].clone(), ids[1].clone()))
    })??;
    let survivor_pid = procs::poll(Duration::from_secs(5), "survivor pid", || {
        container_pid(&d, "601")
    })?;
    let victim_pid = procs::poll(Duration::from_secs(5), "victim pid", || {
        container_pid(&d, "602")
    })?;
    d.kill9()?;
    procs::signal(victim_pid, libc::SIGKILL)?;
    procs::poll(Duration::from_secs(5), "victim exit", || {
        (!procs::alive(victim_pid)).then_some(())
    })?;
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    std::thread::sleep(Duration::from_millis(300));
    d.restart()?;
    block_on(async {
        let (rs, _) = d.client().await?;
        // Waits 2.5 s at most; the state is checked below.
        let v = match rs
            .wait_ctr_state(&victim, Exited, Duration::from_millis(2500))
            .await
        {
            Ok(v) => v,
            Err(_) => rs.ctr_status(&victim).await?,
        };
        ensure!(
            v.state == cri::ContainerState::ContainerExited as i32 && v.exit_code == 137,
            "victim after restart: {v:?}\n{}",
            d.log()
        );
        ensure!(
            v.finished_at <= killed_at,
            "finish time {} is the restart time, not the exit time ({killed_at})",
            v.finished_at
        );
        let s = rs.ctr_status(&survivor).await?;
        ensure!(
            s.state == cri::ContainerState::ContainerRunning as i32,
            "survivor: {s:?}"
        );
        ensure!(
            container_pid(&d, "601") == Some(survivor_pid),
            "survivor pid changed"
        );
        rs.stop_pod(&pod).await?;
        let s = rs.ctr_status(&survivor).await?;
        ensure!(
            s.state == cri::ContainerState::ContainerExited as i32,
            "survivor after pod stop: {s:?}"
        );
        rs.remove_pod(&pod).await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn exec_sync_update_stats_and_log_rotation() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (mut rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("ops", &logs)).await?;
        let id = pod.start_line_counter("ops").await?;
        let exec_rs = rs.clone();
        let ex =
            |cmd: &'static [&'static str], timeout: i64| exec_rs.exec_sync_of(&id, cmd, timeout);
        let r = ex(&["sh", "-c", "echo out; echo err >&2; exit 7"], 10).await?;
        ensure!(
            r.stdout == b"out\n" && r.stderr == b"err\n" && r.exit_code == 7,
            "{r:?}"
        );
        let r = ex(&["sleep", "30"], 1).await;
        ensure!(r.is_err(), "an exec past its timeout must fail: {r:?}");
        let r = ex(&[], 1).await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::InvalidArgument),
            "empty cmd: {r:?}"
        );

        // UpdateContainerResources reaches the container's cgroup.
        rs.update_memory_limit(&id, 96 << 20).await?;
        let r = ex(&["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"], 10).await?;
        let in_ctr = String::from_utf8_lossy(&r.stdout).trim().to_string();
        if !in_ctr.is_empty() && r.exit_code == 0 {
            ensure!(
                in_ctr == (96u64 << 20).to_string(),
                "limit seen inside: {in_ctr}"
            );
        }

        // Stats: memory in use, and the writable layer grows with a file written into it.
        ex(&["sh", "-c", "head -c 200000 /dev/zero > /big"], 10).await?;
        let s = rs
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await?
            .into_inner()
            .stats
            .context("stats")?;
        let mem = s
            .memory
            .and_then(|m| m.usage_bytes)
            .map(|u| u.value)
            .unwrap_or(0);
        ensure!(mem > 0, "memory usage {mem}");
        let wl = s
            .writable_layer
            .and_then(|w| w.used_bytes)
            .map(|u| u.value)
            .unwrap_or(0);
        ensure!(wl >= 200_000, "writable layer {wl}");
        let all = rs
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await?
            .into_inner()
            .stats;
        ensure!(all.len() == 1, "{all:?}");

        // kubelet's rotation: rename, ReopenContainerLog, new lines land in a new file.
        let log = logs.join("ops.log");
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::rename(&log, logs.join("ops.log.1"))?;
        rs.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let old = std::fs::read_to_string(logs.join("ops.log.1"))?;
        let new = std::fs::read_to_string(&log).context("no log after rotation")?;
        let n = |l: &str| {
            l.rsplit("line-")
                .next()
                .and_then(|x| x.trim().parse::<u64>().ok())
        };
        let last_old = old.lines().filter_map(n).max().context("old log empty")?;
        let first_new = new.lines().filter_map(n).min().context("new log empty")?;
        ensure!(
            first_new == last_old + 1,
            "gap across rotation: old ends at {last_old}, new starts at {first_new}"
        );

        rs.stop_ctr(&id, 1).await?;
        let r = rs
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::FailedPrecondition),
            "reopen on a stopped container: {r:?}"
        );
        rs.remove_pod(&pod.id).await?;
        Ok(())
    })
}

#[test]
fn a_container_over_its_memory_limit_is_oomkilled() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("oom", &logs)).await?;
        let mut cfg = container_config(
            "hog",
            image::BUSYBOX_IMAGE,
            &["sh", "-c", "head -c 209715200 /dev/zero | tail"],
        );
        cfg.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 16 << 20,
                memory_swap_limit_in_bytes: 16 << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = pod.start(cfg).await?;
        let s = pod
            .rs
            .wait_ctr_state(&id, Exited, Duration::from_secs(10))
            .await
            .context("the memory hog never exited")?;
        ensure!(s.reason == "OOMKilled" && s.exit_code == 137, "{s:?}");
        pod.rs.remove_pod(&pod.id).await?;
        Ok(())
    })
}

/// kubelet's stop signal (a container's `lifecycle.stopSignal`, Kubernetes 1.33+) is what
/// StopContainer sends, also a real-time one, and ContainerStatus reports the effective
/// signal (SIGTERM when neither kubelet nor the image names one).
#[test]
fn stop_container_sends_kubelets_stop_signal_and_status_reports_it() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let pod = Pod::run(&d, pod_config("sig", &logs.join("sig"))).await?;
        let rtmin3 = libc::SIGRTMIN() + 3;
        let cases = [
            ("usr1", cri::Signal::Sigusr1, 7),
            ("rt", cri::Signal::Sigrtminplus3, 33),
            ("default", cri::Signal::RuntimeDefault, 15),
        ];
        for (name, signal, code) in cases {
            // Each trap exits with its own code, so the exit code says which signal came.
            let script = format!(
                "trap 'exit 7' USR1; trap 'exit 33' {rtmin3}; trap 'exit 15' TERM; \
                 touch /ready; while true; do sleep 0.1; done"
            );
            let mut c = container_config(name, image::BUSYBOX_IMAGE, &["sh", "-c", &script]);
            c.stop_signal = signal as i32;
            let id = pod.start(c).await?;
            let mut ready = false;
            for _ in 0..100 {
                if pod.exec(&id, &["test", "-e", "/ready"]).await?.exit_code == 0 {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ensure!(ready, "{name}: the traps were never set");
            let st = pod.container_status(&id).await?;
            let effective = if signal == cri::Signal::RuntimeDefault {
                cri::Signal::Sigterm
            } else {
                signal
            };
            ensure!(
                st.stop_signal == effective as i32,
                "{name}: status stop_signal {} (want {effective:?})",
                st.stop_signal
            );
            pod.rs
                .clone()
                .stop_container(cri::StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 10,
                })
                .await?;
            let st = pod.container_status(&id).await?;
            ensure!(
                st.exit_code == code,
                "{name}: exit code {} (want {code}: the trap of {effective:?})",
                st.exit_code
            );
        }
        pod.remove().await
    })??;
    d.finish()
}
