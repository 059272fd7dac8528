//! berthd containers: images imported from an OCI archive (`berthd image import`), then
//! CreateContainer/StartContainer/StopContainer/RemoveContainer in a pod's shim, exit codes
//! and reasons in ContainerStatus, CRI-format logs written by the shim, list filters, and
//! the error codes for bad input.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::pod::Pod;
use berth_tests::{image, procs};
use k8s_cri::v1 as cri;
use std::time::Duration;
use tonic::Code;

#[test]
fn containers_run_exit_log_and_are_removed() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (mut rs, mut is) = d.client().await?;
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

        let pod_cfg = pod_config("app", &logs);
        let pod = Pod::run(&d, pod_cfg.clone()).await?.id;
        let creator = rs.clone();
        let create = |cfg: cri::ContainerConfig| {
            let (mut rs, pod, pod_cfg) = (creator.clone(), pod.clone(), pod_cfg.clone());
            async move {
                rs.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(cfg),
                    sandbox_config: Some(pod_cfg),
                })
                .await
            }
        };
        let short = create(container_config(
            "short",
            image::BUSYBOX_IMAGE,
            &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
        ))
        .await
        .with_context(|| format!("CreateContainer; log:\n{}", d.log()))?
        .into_inner()
        .container_id;
        let st = rs
            .container_status(cri::ContainerStatusRequest {
                container_id: short.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        ensure!(
            st.status.as_ref().map(|s| s.state)
                == Some(cri::ContainerState::ContainerCreated as i32),
            "{st:?}"
        );
        rs.start_container(cri::StartContainerRequest {
            container_id: short.clone(),
        })
        .await?;
        let mut exited = None;
        for _ in 0..100 {
            let s = rs
                .container_status(cri::ContainerStatusRequest {
                    container_id: short.clone(),
                    verbose: false,
                })
                .await?
                .into_inner();
            let s = s.status.context("no status")?;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                exited = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = exited.context("container never exited")?;
        ensure!(s.exit_code == 3 && s.reason == "Error", "{s:?}");
        ensure!(s.started_at > 0 && s.finished_at >= s.started_at, "{s:?}");
        let log = std::fs::read_to_string(logs.join("short.log")).context("container log")?;
        ensure!(
            log.contains(" stdout F hello\n") && log.contains(" stderr F oops\n"),
            "log:\n{log}"
        );

        // A long-running one, stopped with a grace period.
        let long = create(container_config(
            "long",
            image::BUSYBOX_IMAGE,
            &["sleep", "600"],
        ))
        .await?
        .into_inner()
        .container_id;
        rs.start_container(cri::StartContainerRequest {
            container_id: long.clone(),
        })
        .await?;
        let again = rs
            .start_container(cri::StartContainerRequest {
                container_id: long.clone(),
            })
            .await;
        ensure!(
            matches!(&again, Err(s) if s.code() == Code::FailedPrecondition),
            "second start: {again:?}"
        );
        let running = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        };
        let list = rs
            .list_containers(cri::ListContainersRequest {
                filter: Some(running),
            })
            .await?
            .into_inner()
            .containers;
        ensure!(list.len() == 1 && list[0].id == long, "running: {list:?}");
        let by_pod = cri::ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        };
        ensure!(
            rs.list_containers(cri::ListContainersRequest {
                filter: Some(by_pod)
            })
            .await?
            .into_inner()
            .containers
            .len()
                == 2
        );
        rs.stop_container(cri::StopContainerRequest {
            container_id: long.clone(),
            timeout: 2,
        })
        .await?;
        let s = rs
            .container_status(cri::ContainerStatusRequest {
                container_id: long.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("status")?;
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
        let r = create(container_config("ghost", "berth.test/nope:1", &["true"])).await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::NotFound),
            "unknown image: {r:?}"
        );
        let r = create(container_config("short", image::BUSYBOX_IMAGE, &["true"])).await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::AlreadyExists),
            "duplicate name: {r:?}"
        );
        let mut bad_log = container_config("badlog", image::BUSYBOX_IMAGE, &["true"]);
        bad_log.log_path = "../../etc/x.log".into();
        let r = create(bad_log).await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::InvalidArgument),
            "bad log path: {r:?}"
        );
        let r = rs
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

        rs.remove_container(cri::RemoveContainerRequest {
            container_id: short.clone(),
        })
        .await?;
        rs.remove_container(cri::RemoveContainerRequest {
            container_id: short.clone(),
        })
        .await?;
        let gone = rs
            .container_status(cri::ContainerStatusRequest {
                container_id: short.clone(),
                verbose: false,
            })
            .await;
        ensure!(
            matches!(&gone, Err(s) if s.code() == Code::NotFound),
            "{gone:?}"
        );
        // Removing the pod removes its remaining container and its shim.
        rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        let left = rs
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers;
        ensure!(left.is_empty(), "containers left: {left:?}");
        Ok(())
    })??;
    d.finish()
}

fn container_pid(d: &Berthd, name: &str) -> Option<i32> {
    // The container's process runs `sleep <name-specific seconds>` under this berthd's shim.
    let shims = procs::shims_of(&d.socket.display().to_string());
    procs::all().into_iter().find_map(|p| {
        let is = p.argv.len() == 2 && p.argv[0] == "sleep" && p.argv[1] == name;
        let ppid = std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1))
                    .and_then(|x| x.parse::<i32>().ok())
            });
        (is && ppid.is_some_and(|pp| shims.iter().any(|s| s.pid == pp))).then_some(p.pid)
    })
}

#[test]
fn exits_while_berthd_is_down_are_kept_and_survivors_keep_running() -> Result<()> {
    let mut d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    let (pod, survivor, victim) = block_on(async {
        let (mut rs, _) = d.client().await?;
        let pod_cfg = pod_config("restart", &logs);
        let pod = Pod::run(&d, pod_cfg.clone()).await?.id;
        let mut ids = vec![];
        for (name, secs) in [("survivor", "601"), ("victim", "602")] {
            let id = rs
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config(
                        name,
                        image::BUSYBOX_IMAGE,
                        &["sleep", secs],
                    )),
                    sandbox_config: Some(pod_cfg.clone()),
                })
                .await?
                .into_inner()
                .container_id;
            rs.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            ids.push(id);
        }
        Ok::<_, anyhow::Error>((pod, ids[0].clone(), ids[1].clone()))
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
        let (mut rs, _) = d.client().await?;
        let status_client = rs.clone();
        let st = |id: String| {
            let mut rs = status_client.clone();
            async move {
                rs.container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .context("status")
            }
        };
        let mut v = st(victim.clone()).await?;
        for _ in 0..50 {
            if v.state == cri::ContainerState::ContainerExited as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            v = st(victim.clone()).await?;
        }
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
        let s = st(survivor.clone()).await?;
        ensure!(
            s.state == cri::ContainerState::ContainerRunning as i32,
            "survivor: {s:?}"
        );
        ensure!(
            container_pid(&d, "601") == Some(survivor_pid),
            "survivor pid changed"
        );
        rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        let s = st(survivor.clone()).await?;
        ensure!(
            s.state == cri::ContainerState::ContainerExited as i32,
            "survivor after pod stop: {s:?}"
        );
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn exec_sync_update_stats_and_log_rotation() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (mut rs, _) = d.client().await?;
        let pod_cfg = pod_config("ops", &logs);
        let pod = Pod::run(&d, pod_cfg.clone()).await?.id;
        let script = "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.05; done";
        let id = rs
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(
                    "ops",
                    image::BUSYBOX_IMAGE,
                    &["sh", "-c", script],
                )),
                sandbox_config: Some(pod_cfg),
            })
            .await?
            .into_inner()
            .container_id;
        rs.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;

        let exec_client = rs.clone();
        let ex = |cmd: &[&str], timeout: i64| {
            let mut rs = exec_client.clone();
            let req = cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            };
            async move { rs.exec_sync(req).await }
        };
        let r = ex(&["sh", "-c", "echo out; echo err >&2; exit 7"], 10)
            .await?
            .into_inner();
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
        rs.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
        let r = ex(&["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"], 10)
            .await?
            .into_inner();
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

        rs.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await?;
        let r = rs
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::FailedPrecondition),
            "reopen on a stopped container: {r:?}"
        );
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn a_container_over_its_memory_limit_is_oomkilled() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (mut rs, _) = d.client().await?;
        let pod_cfg = pod_config("oom", &logs);
        let pod = Pod::run(&d, pod_cfg.clone()).await?.id;
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
        let id = rs
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg),
            })
            .await?
            .into_inner()
            .container_id;
        rs.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        let mut last = None;
        for _ in 0..200 {
            let s = rs
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status;
            if s.as_ref()
                .is_some_and(|s| s.state == cri::ContainerState::ContainerExited as i32)
            {
                last = s;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = last.context("the memory hog never exited")?;
        ensure!(s.reason == "OOMKilled" && s.exit_code == 137, "{s:?}");
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
        Ok(())
    })??;
    d.finish()
}
