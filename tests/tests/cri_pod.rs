//! containerd's own CRI plugin drives the shim: one shim per pod, ExecSync, exit codes in ContainerStatus.

use anyhow::{ensure, Context, Result};
use berth_tests::cri::{self, container_config, pod_config};
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::{procs, Instance, Oci, Runtime, Setup};
use k8s_cri::v1 as api;
use std::time::Duration;

fn pod_suite(runtime: Runtime) -> Result<()> {
    berth_tests::ensure_hugetlb_v1();
    let inst = Instance::start(Setup { runtime, cri: true })?;
    let logs = inst.path().join("pods");
    std::fs::create_dir_all(&logs)?;
    let res = cri::block_on(pod_scenario(&inst, &logs))?;
    if let Err(e) = res {
        return Err(e.context(format!("containerd log tail:\n{}", inst.log_tail(60))));
    }
    inst.finish()
}

async fn pod_scenario(inst: &Instance, logs: &std::path::Path) -> Result<()> {
    let (mut rt, mut img) = cri::connect(&inst.address).await?;
    let found = img
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: BUSYBOX_IMAGE.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?
        .into_inner();
    ensure!(found.image.is_some(), "CRI does not see {BUSYBOX_IMAGE}");

    let pod = pod_config("berthpod", logs);
    let sandbox_id = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    inst.track_key(&sandbox_id);

    let mut ids = Vec::new();
    for (name, cmd) in [
        ("app1", vec!["sleep", "600"]),
        ("app2", vec!["sleep", "600"]),
    ] {
        let id = create_start(&mut rt, &sandbox_id, &pod, name, &cmd).await?;
        inst.track_key(&id);
        ids.push(id);
    }

    // One shim process serves the whole pod (sandbox + two containers).
    let want = std::fs::canonicalize(&inst.shim)?;
    let shims = procs::shims_in(&inst.address, "k8s.io");
    ensure!(
        shims.len() == 1,
        "expected exactly one shim for the pod, found {shims:#?}"
    );
    ensure!(
        shims[0].exe.as_deref() == Some(want.as_path()),
        "pod shim runs {:?}, expected {}",
        shims[0].exe,
        want.display()
    );

    let out = rt
        .exec_sync(api::ExecSyncRequest {
            container_id: ids[0].clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo exec-out; echo exec-err >&2; exit 7".into(),
            ],
            timeout: 20,
        })
        .await
        .context("ExecSync")?
        .into_inner();
    ensure!(out.exit_code == 7, "ExecSync exit code: {out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("exec-out"),
        "ExecSync stdout: {out:?}"
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("exec-err"),
        "ExecSync stderr: {out:?}"
    );

    let exiter = create_start(
        &mut rt,
        &sandbox_id,
        &pod,
        "exits3",
        &["sh", "-c", "exit 3"],
    )
    .await?;
    inst.track_key(&exiter);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = rt
            .container_status(api::ContainerStatusRequest {
                container_id: exiter.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no status")?;
        if s.state == api::ContainerState::ContainerExited as i32
            || tokio::time::Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        status.state == api::ContainerState::ContainerExited as i32 && status.exit_code == 3,
        "ContainerStatus: {status:?}"
    );
    ensure!(
        procs::shims_in(&inst.address, "k8s.io").len() == 1,
        "a second shim appeared"
    );

    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .context("StopPodSandbox")?;
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id,
    })
    .await
    .context("RemovePodSandbox")?;
    Ok(())
}

async fn create_start(
    rt: &mut cri::RuntimeServiceClient<tonic::transport::Channel>,
    sandbox_id: &str,
    pod: &api::PodSandboxConfig,
    name: &str,
    cmd: &[&str],
) -> Result<String> {
    let id = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(container_config(name, BUSYBOX_IMAGE, cmd)),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer {name}"))?
        .into_inner()
        .container_id;
    rt.start_container(api::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .with_context(|| format!("StartContainer {name}"))?;
    Ok(id)
}

#[test]
fn cri_pod_berth_v2() -> Result<()> {
    pod_suite(Runtime::Berth)
}

#[test]
fn cri_pod_drop_in_runc() -> Result<()> {
    pod_suite(Runtime::DropIn(Oci::Runc))
}
