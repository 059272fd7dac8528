//! A configured sandbox image (`runtime.sandbox_image`) instead of Berth's built-in pause:
//! pulled on the first RunPodSandbox, run read-only as every pod's infra process, reported
//! as pinned (kubelet's image GC leaves it alone), and unmounted with its pod.

use anyhow::{ensure, Result};
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::cri_images::list;
use berth_tests::image::{self, busybox_layout};
use berth_tests::pod::Pod;
use berth_tests::registry::Registry;
use berth_tests::{leaks, procs};
use serde_json::json;
use std::time::Duration;

#[test]
fn a_configured_sandbox_image_is_pulled_run_as_infra_and_pinned() -> Result<()> {
    let reg = Registry::start()?;
    // The infra command is distinctive, so the test can find exactly that process.
    let cfg = json!({"Entrypoint": ["/bin/sleep"], "Cmd": ["2147483646"]});
    let img = busybox_layout(reg.dir.path(), "pause", cfg)?;
    reg.push(&img.path, "berth/pause:1")?;
    let sandbox = reg.image("berth/pause:1");
    let d = Berthd::builder()
        // `always`: this pod does not share its PID namespace, and gets an infra anyway.
        .config(&format!(
            "[runtime]\nsandbox_image = \"{sandbox}\"\npod_infra = \"always\"\n"
        ))
        .busybox()
        .start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (_, is) = d.client().await?;
        let pod = Pod::run(&d, pod_config("sbx", &logs.join("sbx"))).await?;
        let infra = procs::poll(Duration::from_secs(5), "the sandbox image's infra", || {
            berth_tests::host::container_pid(&d, &["/bin/sleep", "2147483646"])
        })?;
        ensure!(
            infra == pod.infra_pid().await?,
            "infra pid differs from the pod's"
        );
        // Containers run in the pod as usual.
        let e = pod
            .run_to_exit(container_config(
                "probe",
                image::BUSYBOX_IMAGE,
                &["sh", "-c", "echo ok"],
            ))
            .await?;
        ensure!(e.stdout == "ok\n", "{e:?}");
        let images = list(&is).await?;
        let pinned: Vec<(String, bool)> = images
            .iter()
            .map(|i| (i.repo_tags.join(","), i.pinned))
            .collect();
        ensure!(
            pinned.contains(&(sandbox.clone(), true))
                && pinned.contains(&(image::BUSYBOX_IMAGE.to_string(), false)),
            "pinned flags: {pinned:?}"
        );
        ensure!(
            leaks::mounts_under(d.dir.path())
                .iter()
                .any(|m| m.ends_with("rootfs")),
            "the sandbox image's rootfs is not mounted"
        );
        pod.remove().await?;
        let left = leaks::mounts_under(d.dir.path());
        ensure!(left.is_empty(), "mounts left after the pod: {left:?}");
        ensure!(!procs::alive(infra), "infra {infra} survived its pod");
        Ok(())
    })??;
    d.finish()
}

/// A user-namespaced pod's infra runs the sandbox image too: its rootfs is an overlay on
/// copies of the image's layers owned by the pod's mapped ids (the pod's user namespace
/// does not exist yet to idmap them through). The infra and the pod's container run as
/// the mapped root on the host; the copies go with the pod.
#[test]
fn a_user_namespaced_pod_runs_the_sandbox_image_on_remapped_copies() -> Result<()> {
    const HOST_ID: u32 = 5 * 65536;
    let reg = Registry::start()?;
    let cfg = json!({"Entrypoint": ["/bin/sleep"], "Cmd": ["2147483645"]});
    let img = busybox_layout(reg.dir.path(), "pause", cfg)?;
    reg.push(&img.path, "berth/pause:userns")?;
    let sandbox = reg.image("berth/pause:userns");
    let d = Berthd::builder()
        .config(&format!("[runtime]\nsandbox_image = \"{sandbox}\"\n"))
        .busybox()
        .cni_bridge(7)
        .start()?;
    let copies = d.dir.path().join("root/userns-copies");
    block_on(async {
        let mut pod_cfg = d.pod_config("sbx-userns");
        berth_tests::cri::pod_network(&mut pod_cfg);
        let m = vec![berth_cri::v1::IdMapping {
            host_id: HOST_ID,
            container_id: 0,
            length: 65536,
        }];
        berth_tests::cri::ns_options(&mut pod_cfg).userns_options =
            Some(berth_cri::v1::UserNamespace {
                mode: berth_cri::v1::NamespaceMode::Pod as i32,
                uids: m.clone(),
                gids: m,
            });
        let pod = Pod::run(&d, pod_cfg).await?;
        let infra = procs::poll(Duration::from_secs(5), "the sandbox image's infra", || {
            berth_tests::host::container_pid(&d, &["/bin/sleep", "2147483645"])
        })?;
        let status = std::fs::read_to_string(format!("/proc/{infra}/status"))?;
        ensure!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains(&HOST_ID.to_string())),
            "the infra does not run as the mapped root {HOST_ID}:\n{status}"
        );
        ensure!(
            !leaks::leftover_entries(&copies).is_empty(),
            "no remapped copy of the sandbox image"
        );
        let e = pod
            .run_to_exit(container_config(
                "probe",
                image::BUSYBOX_IMAGE,
                &["sh", "-c", "id -u; head -1 /proc/self/uid_map"],
            ))
            .await?;
        ensure!(
            e.code == 0 && e.stdout.starts_with("0\n") && e.stdout.contains(&HOST_ID.to_string()),
            "{e:?}"
        );
        pod.remove().await?;
        let left = leaks::leftover_entries(&copies);
        ensure!(left.is_empty(), "copies left after the pod: {left:?}");
        ensure!(!procs::alive(infra), "infra {infra} survived its pod");
        Ok(())
    })??;
    d.finish()
}
