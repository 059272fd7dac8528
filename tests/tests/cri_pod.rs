//! containerd's own CRI plugin drives the shim: one shim per pod, ExecSync, exit codes in ContainerStatus.
//! On containerd 1.6 (`io.containerd.grpc.v1.cri`) and 2.1 (CRI split into
//! `io.containerd.cri.v1.runtime`/`images` and `io.containerd.grpc.v1.cri`).

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as api;
use berth_tests::cri::{self, container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::{procs, Containerd, Instance, Oci, Runtime, Setup};
use std::time::Duration;

fn pod_suite(runtime: Runtime, version: Containerd) -> Result<()> {
    berth_tests::ensure_hugetlb_v1();
    let inst = Instance::start(Setup::new(runtime).with_cri().on(version))?;
    let logs = inst.path().join("pods");
    std::fs::create_dir_all(&logs)?;
    let res = cri::block_on(pod_scenario(&inst, &logs))?;
    if let Err(e) = res {
        return Err(e.context(format!("containerd log tail:\n{}", inst.log_tail(60))));
    }
    inst.finish()
}

async fn pod_scenario(inst: &Instance, logs: &std::path::Path) -> Result<()> {
    let (rt, mut img) = cri::connect(&inst.address).await?;
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
    let sandbox_id = rt.run_pod(&pod).await.context("RunPodSandbox")?;
    inst.track_key(&sandbox_id);

    let mut ids = Vec::new();
    for (name, cmd) in [
        ("app1", vec!["sleep", "600"]),
        ("app2", vec!["sleep", "600"]),
    ] {
        let id = rt
            .run_ctr(
                &sandbox_id,
                &pod,
                container_config(name, BUSYBOX_IMAGE, &cmd),
            )
            .await?;
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
        .exec_sync_of(
            &ids[0],
            &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 7"],
            20,
        )
        .await
        .context("ExecSync")?;
    ensure!(out.exit_code == 7, "ExecSync exit code: {out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("exec-out"),
        "ExecSync stdout: {out:?}"
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("exec-err"),
        "ExecSync stderr: {out:?}"
    );

    let exiter = rt
        .run_ctr(
            &sandbox_id,
            &pod,
            container_config("exits3", BUSYBOX_IMAGE, &["sh", "-c", "exit 3"]),
        )
        .await?;
    inst.track_key(&exiter);
    let status = rt
        .wait_ctr_state(
            &exiter,
            api::ContainerState::ContainerExited,
            Duration::from_secs(20),
        )
        .await?;
    ensure!(status.exit_code == 3, "ContainerStatus: {status:?}");
    ensure!(
        procs::shims_in(&inst.address, "k8s.io").len() == 1,
        "a second shim appeared"
    );

    rt.stop_and_remove_pod(&sandbox_id)
        .await
        .context("StopPodSandbox + RemovePodSandbox")?;
    Ok(())
}

#[test]
fn cri_pod_berth_v2() -> Result<()> {
    pod_suite(Runtime::Berth, Containerd::V1_6)
}

#[test]
fn cri_pod_drop_in_runc() -> Result<()> {
    pod_suite(Runtime::DropIn(Oci::Runc), Containerd::V1_6)
}

#[test]
fn cri_pod_berth_v2_containerd21() -> Result<()> {
    pod_suite(Runtime::Berth, Containerd::V2_1)
}

#[test]
fn cri_pod_drop_in_runc_containerd21() -> Result<()> {
    pod_suite(Runtime::DropIn(Oci::Runc), Containerd::V2_1)
}
