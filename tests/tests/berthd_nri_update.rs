//! berthd as an NRI runtime, resources changing under the plugins: a plugin updating
//! and evicting running containers itself; UpdateContainerResources and
//! UpdatePodSandboxResources going through the plugins' UpdateContainer and
//! UpdatePodSandbox, which change what is applied or refuse it (the call fails, the old
//! limits stay).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_nri::api;
use berth_tests::berthd::berthd_test;
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image;
use berth_tests::nri_plugin::{nri_berthd, opt_i64, wait_for, Behavior, Fault, TestPlugin};
use berth_tests::pod::Pod;

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
