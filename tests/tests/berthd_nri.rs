//! berthd as an NRI runtime, with the test crate's NRI plugin (`nri_plugin`) on the
//! berthd's own NRI socket: the adjustments a plugin makes, checked from inside the
//! container; the events and their order; Synchronize; and a plugin that fails, hangs
//! or crashes: a clear error within the request timeout, nothing left half-made (the
//! guard's leak check), and the next try working.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use berth_nri::api;
use berth_tests::berthd::berthd_test;
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image;
use berth_tests::nri_plugin::{nri_berthd, opt_i64, wait_for, Behavior, Fault, TestPlugin};
use berth_tests::pod::Pod;

/// Every adjustment the test plugin makes: env, annotation, a bind mount, an rlimit,
/// memory and pids limits, the OOM score.
fn adjustment(host_dir: &std::path::Path) -> api::ContainerAdjustment {
    let mut a = api::ContainerAdjustment::new();
    a.env.push(api::KeyValue {
        key: "NRI_ENV".into(),
        value: "from-plugin".into(),
        ..Default::default()
    });
    a.annotations
        .insert("berth.test/nri".into(), "adjusted".into());
    a.mounts.push(api::Mount {
        destination: "/nri-data".into(),
        type_: "bind".into(),
        source: host_dir.display().to_string(),
        options: vec!["rbind".into(), "ro".into()],
        ..Default::default()
    });
    a.rlimits.push(api::POSIXRlimit {
        type_: "RLIMIT_NOFILE".into(),
        hard: 1001,
        soft: 1000,
        ..Default::default()
    });
    let mut mem = api::LinuxMemory::new();
    mem.limit = opt_i64(48 << 20);
    let res = api::LinuxResources {
        memory: protobuf::MessageField::some(mem),
        pids: protobuf::MessageField::some(api::LinuxPids {
            limit: 77,
            ..Default::default()
        }),
        ..Default::default()
    };
    a.linux = protobuf::MessageField::some(api::LinuxContainerAdjustment {
        resources: protobuf::MessageField::some(res),
        oom_score_adj: protobuf::MessageField::some(api::OptionalInt {
            value: 321,
            ..Default::default()
        }),
        ..Default::default()
    });
    a
}

const PROBE: &str = "echo env=$NRI_ENV; echo file=$(cat /nri-data/hello); \
    echo nofile=$(ulimit -n)/$(ulimit -Hn); echo oom=$(cat /proc/self/oom_score_adj); \
    echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); \
    echo pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)";

#[test]
fn adjustments_reach_the_container_and_events_come_in_order() -> Result<()> {
    let (builder, dir, sock) = nri_berthd(2000)?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("hello"), "mounted")?;
    berthd_test(builder, async |d| {
        let adjuster = TestPlugin::connect(
            &sock,
            "adjust",
            "10",
            Behavior {
                adjust: Some(adjustment(&data)),
                ..Default::default()
            },
        )
        .await?;
        // Called after the adjuster (index order): sees the container adjusted.
        let observer = TestPlugin::connect(&sock, "observer", "20", Behavior::default()).await?;
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("nri", &logs.join("nri"))).await?;
        let e = pod
            .run_to_exit(container_config(
                "probe",
                image::BUSYBOX_IMAGE,
                &["sh", "-c", PROBE],
            ))
            .await?;
        ensure!(e.code == 0, "probe failed: {e:?}");
        for (k, want) in [
            ("env", "from-plugin".to_string()),
            ("file", "mounted".into()),
            ("nofile", "1000/1001".into()),
            ("oom", "321".into()),
            ("mem", (48u64 << 20).to_string()),
            ("pids", "77".into()),
        ] {
            ensure!(
                e.var(k) == Some(want.as_str()),
                "{k} inside the container: {:?}, want {want:?}; log:\n{}",
                e.var(k),
                e.log
            );
        }
        // The annotation is in the container's spec: the next plugin sees it.
        let post = observer
            .event("PostCreateContainer", &e.id)
            .context("no PostCreateContainer")?;
        ensure!(
            post.annotations.get("berth.test/nri").map(String::as_str) == Some("adjusted"),
            "annotations after creation: {:?}",
            post.annotations
        );
        ensure!(
            post.env.iter().any(|v| v == "NRI_ENV=from-plugin"),
            "env after creation: {:?}",
            post.env
        );
        let create = observer
            .event("CreateContainer", &e.id)
            .context("no CreateContainer")?;
        ensure!(
            create.env.iter().any(|v| v == "NRI_ENV=from-plugin"),
            "the second plugin is not shown the first one's adjustment: {:?}",
            create.env
        );
        // A plugin joining now is synchronized with the pod and the container.
        let late = TestPlugin::connect(&sock, "late", "30", Behavior::default()).await?;
        ensure!(
            late.synced.0.contains(&pod.id) && late.synced.1.contains(&e.id),
            "Synchronize: {:?}",
            late.synced
        );
        pod.rs.remove_ctr(&e.id).await?;
        let pod_id = pod.id.clone();
        pod.remove().await?;
        let want = [
            "CreateContainer",
            "PostCreateContainer",
            "StartContainer",
            "PostStartContainer",
            "StopContainer",
            "RemoveContainer",
        ];
        wait_for(Duration::from_secs(5), "container events", || async {
            (observer.kinds_of(&e.id) == want).then_some(())
        })
        .await
        .with_context(|| format!("events: {:?}", observer.kinds_of(&e.id)))?;
        ensure!(
            adjuster.kinds_of(&pod_id) == ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"],
            "pod events: {:?}",
            adjuster.kinds_of(&pod_id)
        );
        ensure!(
            late.kinds_of(&pod_id) == ["StopPodSandbox", "RemovePodSandbox"],
            "late plugin's pod events: {:?}",
            late.kinds_of(&pod_id)
        );
        Ok(())
    })
}

#[test]
fn a_failing_plugin_fails_the_call_and_leaves_nothing() -> Result<()> {
    let (builder, _dir, sock) = nri_berthd(2000)?;
    berthd_test(builder, async |d| {
        let logs = d.dir.path().join("logs");
        let refuser = TestPlugin::connect(
            &sock,
            "refuser",
            "10",
            Behavior {
                on_run_pod: Fault::Fail("no slot for this pod".into()),
                ..Default::default()
            },
        )
        .await?;
        let (rs, _) = d.client().await?;
        let cfg = pod_config("refused", &logs.join("refused"));
        let err = rs.run_pod(&cfg).await.expect_err("RunPodSandbox passed");
        ensure!(
            err.message()
                .contains("NRI plugin 10-refuser failed RunPodSandbox: no slot for this pod"),
            "RunPodSandbox's error: {err:?}"
        );
        ensure!(
            rs.list_pods(None).await?.is_empty(),
            "a refused pod is listed"
        );
        refuser.close();
        // The plugin is gone: the same pod now runs.
        let pod = wait_for(Duration::from_secs(5), "RunPodSandbox", || async {
            Pod::run(d, cfg.clone()).await.ok()
        })
        .await?;

        let refuser = TestPlugin::connect(
            &sock,
            "refuser",
            "10",
            Behavior {
                on_create: Fault::Fail("no GPU left".into()),
                ..Default::default()
            },
        )
        .await?;
        let c = container_config("refused", image::BUSYBOX_IMAGE, &["sleep", "3600"]);
        let err = pod
            .create(c.clone())
            .await
            .expect_err("CreateContainer passed");
        ensure!(
            err.message()
                .contains("NRI plugin 10-refuser failed CreateContainer: no GPU left"),
            "CreateContainer's error: {err:?}"
        );
        ensure!(
            pod.list_all().await?.is_empty(),
            "a refused container is listed"
        );
        // The plugins told of the container hear that it is gone.
        let refused = refuser
            .events()
            .iter()
            .find(|e| e.kind == "CreateContainer")
            .map(|e| e.container_id.clone())
            .context("no CreateContainer")?;
        ensure!(
            refuser.kinds_of(&refused) == ["CreateContainer", "RemoveContainer"],
            "the refused container's events: {:?}",
            refuser.kinds_of(&refused)
        );
        refuser.close();
        let id = wait_for(Duration::from_secs(5), "CreateContainer", || async {
            pod.create(c.clone()).await.ok()
        })
        .await?;
        pod.rs.start_ctr(&id).await?;
        pod.remove().await?;
        Ok(())
    })
}

#[test]
fn a_hanging_or_crashing_plugin_fails_the_call_within_the_timeout() -> Result<()> {
    let (builder, _dir, sock) = nri_berthd(1000)?;
    berthd_test(builder, async |d| {
        let logs = d.dir.path().join("logs");
        let hung = TestPlugin::connect(
            &sock,
            "hung",
            "10",
            Behavior {
                on_run_pod: Fault::Hang,
                ..Default::default()
            },
        )
        .await?;
        let (rs, _) = d.client().await?;
        let cfg = pod_config("hung", &logs.join("hung"));
        let t = Instant::now();
        let err = rs.run_pod(&cfg).await.expect_err("RunPodSandbox passed");
        let took = t.elapsed();
        ensure!(
            err.code() == tonic::Code::DeadlineExceeded
                && err
                    .message()
                    .contains("NRI plugin 10-hung did not answer RunPodSandbox within 1000 ms"),
            "RunPodSandbox's error: {err:?}"
        );
        ensure!(took < Duration::from_secs(5), "RunPodSandbox took {took:?}");
        ensure!(
            rs.list_pods(None).await?.is_empty(),
            "a half-made pod is listed"
        );
        // The hung plugin is disconnected; the pod runs without it.
        wait_for(
            Duration::from_secs(5),
            "the hung plugin's disconnection",
            || async { hung.is_closed().then_some(()) },
        )
        .await?;
        let pod = Pod::run(d, cfg).await?;

        for (name, fault, says) in [
            (
                "hung",
                Fault::Hang,
                "did not answer CreateContainer within 1000 ms",
            ),
            ("crashing", Fault::Crash, "its connection is gone"),
        ] {
            let p = TestPlugin::connect(
                &sock,
                name,
                "10",
                Behavior {
                    on_create: fault,
                    ..Default::default()
                },
            )
            .await?;
            let c = container_config(name, image::BUSYBOX_IMAGE, &["sleep", "3600"]);
            let t = Instant::now();
            let err = pod
                .create(c.clone())
                .await
                .expect_err("CreateContainer passed");
            let took = t.elapsed();
            ensure!(
                err.message().contains(&format!("NRI plugin 10-{name}"))
                    && err.message().contains(says),
                "CreateContainer's error with a {name} plugin: {err:?}"
            );
            ensure!(
                took < Duration::from_secs(5),
                "CreateContainer took {took:?}"
            );
            ensure!(
                pod.list_all().await?.is_empty(),
                "a half-made container is listed"
            );
            wait_for(
                Duration::from_secs(5),
                "the plugin's disconnection",
                || async { p.is_closed().then_some(()) },
            )
            .await?;
            // Without it, the same container is made.
            let id = pod.create(c).await.context("CreateContainer again")?;
            pod.rs.remove_ctr(&id).await?;
        }
        pod.remove().await?;
        Ok(())
    })
}

/// The test crate's pre-installed plugin (`berth-nri-plugin`), next to the test binary.
fn preinstalled_plugin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .and_then(std::path::Path::parent)
        .context("no <target>/<profile> dir")?
        .join("berth-nri-plugin");
    ensure!(
        p.is_file(),
        "{} not built (cargo build --workspace)",
        p.display()
    );
    Ok(p)
}

#[test]
fn a_preinstalled_plugin_is_started_with_its_configuration() -> Result<()> {
    let (builder, dir, _sock) = nri_berthd(2000)?;
    let plugins = dir.path().join("plugins");
    let conf = dir.path().join("conf.d");
    std::fs::create_dir_all(&plugins)?;
    std::fs::create_dir_all(&conf)?;
    std::fs::copy(preinstalled_plugin()?, plugins.join("05-preset"))?;
    std::fs::write(conf.join("05-preset.conf"), "PRESET_ENV=from-config\n")?;
    berthd_test(builder, async |d| {
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("preset", &logs.join("preset"))).await?;
        let e = pod
            .run_to_exit(container_config(
                "env",
                image::BUSYBOX_IMAGE,
                &["sh", "-c", "echo preset=$PRESET_ENV"],
            ))
            .await?;
        ensure!(
            e.var("preset") == Some("from-config"),
            "the pre-installed plugin's env: {:?}",
            e.log
        );
        pod.remove().await?;
        Ok(())
    })
}

#[test]
fn a_plugin_updates_and_evicts_running_containers() -> Result<()> {
    let (builder, _dir, sock) = nri_berthd(2000)?;
    berthd_test(builder, async |d| {
        let p = TestPlugin::connect(&sock, "updater", "10", Behavior::default()).await?;
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("upd", &logs.join("upd"))).await?;
        let id = pod
            .start(container_config(
                "sleeper",
                image::BUSYBOX_IMAGE,
                &["sleep", "3600"],
            ))
            .await?;
        let mut mem = api::LinuxMemory::new();
        mem.limit = opt_i64(40 << 20);
        let update = |id: &str| api::ContainerUpdate {
            container_id: id.into(),
            linux: protobuf::MessageField::some(api::LinuxContainerUpdate {
                resources: protobuf::MessageField::some(api::LinuxResources {
                    memory: protobuf::MessageField::some(mem.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ctx = || ttrpc::context::with_duration(Duration::from_secs(10));
        let rpl = p
            .runtime
            .update_containers(
                ctx(),
                &api::UpdateContainersRequest {
                    update: vec![update(&id), update("no-such-container")],
                    ..Default::default()
                },
            )
            .await?;
        let failed: Vec<&str> = rpl.failed.iter().map(|u| u.container_id.as_str()).collect();
        ensure!(
            failed == ["no-such-container"],
            "failed updates: {failed:?}"
        );
        let out = pod
            .exec(
                &id,
                &["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"],
            )
            .await?;
        let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(
            seen == (40u64 << 20).to_string(),
            "memory limit inside: {seen:?}"
        );
        // Evicted: the container is stopped, and plugins hear of it.
        p.runtime
            .update_containers(
                ctx(),
                &api::UpdateContainersRequest {
                    evict: vec![api::ContainerEviction {
                        container_id: id.clone(),
                        reason: "test eviction".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
            .await?;
        pod.rs
            .wait_ctr_state(
                &id,
                berth_cri::v1::ContainerState::ContainerExited,
                Duration::from_secs(10),
            )
            .await?;
        wait_for(Duration::from_secs(5), "StopContainer", || async {
            p.event("StopContainer", &id).map(drop)
        })
        .await?;
        pod.remove().await?;
        Ok(())
    })
}

/// The memory limit in the container's cgroup, read from inside.
async fn memory_limit(pod: &Pod, id: &str) -> Result<String> {
    let out = pod
        .exec(
            id,
            &["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"],
        )
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn asked_memory(e: &berth_tests::nri_plugin::Event) -> Option<i64> {
    Some(e.resources.as_ref()?.memory.as_ref()?.limit.as_ref()?.value)
}

#[test]
fn update_container_resources_goes_through_the_plugins() -> Result<()> {
    let (builder, _dir, sock) = nri_berthd(2000)?;
    berthd_test(builder, async |d| {
        let mut mem = api::LinuxMemory::new();
        mem.limit = opt_i64(56 << 20);
        let resizer = TestPlugin::connect(
            &sock,
            "resizer",
            "10",
            Behavior {
                update: Some(api::LinuxResources {
                    memory: protobuf::MessageField::some(mem),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("updc", &logs.join("updc"))).await?;
        let id = pod
            .start(container_config(
                "sleeper",
                image::BUSYBOX_IMAGE,
                &["sleep", "3600"],
            ))
            .await?;
        // The plugin is asked with the CRI's 64 MiB, answers 56 MiB: that is applied.
        pod.rs.update_memory_limit(&id, 64 << 20).await?;
        let asked = resizer
            .event("UpdateContainer", &id)
            .context("no UpdateContainer")?;
        ensure!(
            asked_memory(&asked) == Some(64 << 20),
            "UpdateContainer's resources: {:?}",
            asked.resources
        );
        let seen = memory_limit(&pod, &id).await?;
        ensure!(
            seen == (56u64 << 20).to_string(),
            "memory limit inside after the plugin's adjustment: {seen:?}"
        );
        wait_for(Duration::from_secs(5), "PostUpdateContainer", || async {
            resizer.event("PostUpdateContainer", &id).map(drop)
        })
        .await?;
        resizer.close();

        // A plugin failing UpdateContainer fails the call; the old limit stays.
        let refuser = TestPlugin::connect(
            &sock,
            "refuser",
            "10",
            Behavior {
                on_update: Fault::Fail("no memory to give".into()),
                ..Default::default()
            },
        )
        .await?;
        let err = pod
            .rs
            .update_memory_limit(&id, 80 << 20)
            .await
            .expect_err("UpdateContainerResources passed");
        ensure!(
            err.message()
                .contains("NRI plugin 10-refuser failed UpdateContainer: no memory to give"),
            "UpdateContainerResources' error: {err:?}"
        );
        let seen = memory_limit(&pod, &id).await?;
        ensure!(
            seen == (56u64 << 20).to_string(),
            "memory limit inside after a refused update: {seen:?}"
        );
        let status = pod.rs.ctr_status(&id).await?;
        let reported = status
            .resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes);
        ensure!(
            reported == Some(56 << 20),
            "ContainerStatus' memory limit after a refused update: {reported:?}"
        );
        ensure!(
            refuser.event("PostUpdateContainer", &id).is_none(),
            "PostUpdateContainer after a refused update"
        );
        pod.remove().await?;
        Ok(())
    })
}

#[test]
fn update_pod_sandbox_resources_goes_through_the_plugins() -> Result<()> {
    let (builder, _dir, sock) = nri_berthd(2000)?;
    berthd_test(builder, async |d| {
        let p = TestPlugin::connect(&sock, "podwatch", "10", Behavior::default()).await?;
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("updp", &logs.join("updp"))).await?;
        let req = |bytes: i64| berth_cri::v1::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.id.clone(),
            resources: Some(berth_cri::v1::LinuxContainerResources {
                memory_limit_in_bytes: bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        pod.rs
            .clone()
            .update_pod_sandbox_resources(req(128 << 20))
            .await?;
        let kinds: Vec<_> = p
            .events()
            .into_iter()
            .filter(|e| e.kind.contains("UpdatePodSandbox") && e.pod_id == pod.id)
            .collect();
        ensure!(
            kinds.iter().map(|e| e.kind).collect::<Vec<_>>()
                == ["UpdatePodSandbox", "PostUpdatePodSandbox"],
            "pod update events: {kinds:?}"
        );
        ensure!(
            kinds.iter().all(|e| asked_memory(e) == Some(128 << 20)),
            "the pod's resources as plugins saw them: {kinds:?}"
        );
        p.close();

        let refuser = TestPlugin::connect(
            &sock,
            "refuser",
            "10",
            Behavior {
                on_update_pod: Fault::Fail("pod too big".into()),
                ..Default::default()
            },
        )
        .await?;
        let err = pod
            .rs
            .clone()
            .update_pod_sandbox_resources(req(256 << 20))
            .await
            .expect_err("UpdatePodSandboxResources passed");
        ensure!(
            err.message()
                .contains("NRI plugin 10-refuser failed UpdatePodSandbox: pod too big"),
            "UpdatePodSandboxResources' error: {err:?}"
        );
        ensure!(
            !refuser
                .events()
                .iter()
                .any(|e| e.kind == "PostUpdatePodSandbox"),
            "PostUpdatePodSandbox after a refused update"
        );
        // The pod still has the resources of the last update that passed.
        refuser.close();
        let late = TestPlugin::connect(&sock, "late", "10", Behavior::default()).await?;
        pod.rs
            .clone()
            .update_pod_sandbox_resources(berth_cri::v1::UpdatePodSandboxResourcesRequest {
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            })
            .await?;
        let post = late
            .events()
            .into_iter()
            .find(|e| e.kind == "PostUpdatePodSandbox")
            .context("no PostUpdatePodSandbox")?;
        ensure!(
            asked_memory(&post) == Some(128 << 20),
            "the pod's recorded resources after a refused update: {:?}",
            post.resources
        );
        pod.remove().await?;
        Ok(())
    })
}
