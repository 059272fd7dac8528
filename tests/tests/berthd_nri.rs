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
