//! What containerd 2.1 learns from the shim's `-info`: its CRI reports the runtime handler's
//! features to kubelet (recursive read-only mounts: runc 1.1 lists `rro`), and a pod asking
//! for a recursive read-only mount gets one through containerd's CRI and Berth's shim, as it
//! does with containerd's own Go shim (`BERTH_TEST_REFERENCE=1`).

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as api;
use berth_tests::containerd::Containerd;
use berth_tests::cri::{self, container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::{Instance, Oci, Runtime, Setup};
use std::time::Duration;

/// Unmounts the test's submount however the test ends.
struct Submount(std::path::PathBuf);
impl Drop for Submount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn containerd21_cri_sees_rro_and_runs_a_recursive_read_only_mount() -> Result<()> {
    berth_tests::ensure_hugetlb_v1();
    let setup = Setup::new(Runtime::DropIn(Oci::Runc))
        .on(Containerd::V2_1)
        .with_cri();
    let inst = Instance::start(setup)?;
    let res = cri::block_on(scenario(&inst))?;
    if let Err(e) = res {
        return Err(e.context(format!("containerd log tail:\n{}", inst.log_tail(60))));
    }
    inst.finish()
}

async fn scenario(inst: &Instance) -> Result<()> {
    let (rt, _img) = cri::connect(&inst.address).await?;
    let status = rt
        .clone()
        .status(api::StatusRequest { verbose: true })
        .await
        .context("Status")?
        .into_inner();
    let default = status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .with_context(|| format!("no default handler in {:?}", status.runtime_handlers))?;
    let features = default
        .features
        .as_ref()
        .with_context(|| format!("no features for the default handler: {default:?}"))?;
    ensure!(
        features.recursive_read_only_mounts,
        "containerd 2.1 does not see rro: {features:?}"
    );
    // runc 1.1.5 has no idmapped mounts, so no CRI user namespaces (the Go shim agrees).
    ensure!(!features.user_namespaces, "{features:?}");

    // A host dir with a writable submount: only a recursive read-only mount protects it.
    let host = inst.path().join("rro-src");
    let sub = host.join("sub");
    std::fs::create_dir_all(&sub)?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&sub)
        .status()?;
    ensure!(ok.success(), "mount the submount");
    let _sub = Submount(sub.clone());

    let logs = inst.path().join("pods");
    std::fs::create_dir_all(&logs)?;
    let pod = pod_config("rropod", &logs);
    let sandbox = rt.run_pod(&pod).await.context("RunPodSandbox")?;
    inst.track_key(&sandbox);
    let mut cfg = container_config(
        "rro",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "(echo > /rro/top) 2>/dev/null && exit 10; (echo > /rro/sub/x) 2>/dev/null && exit 11; exit 3",
        ],
    );
    cfg.mounts.push(api::Mount {
        container_path: "/rro".into(),
        host_path: host.display().to_string(),
        readonly: true,
        recursive_read_only: true,
        ..Default::default()
    });
    let id = rt
        .run_ctr(&sandbox, &pod, cfg)
        .await
        .context("create + start")?;
    inst.track_key(&id);
    let st = rt
        .wait_ctr_state(
            &id,
            api::ContainerState::ContainerExited,
            Duration::from_secs(20),
        )
        .await?;
    ensure!(
        st.exit_code == 3,
        "exit {} (10: top writable, 11: the submount writable): {st:?}",
        st.exit_code
    );
    ensure!(
        std::fs::read_dir(&sub)?.next().is_none(),
        "the container wrote into the host's submount"
    );
    rt.stop_and_remove_pod(&sandbox)
        .await
        .context("stop + remove")?;
    Ok(())
}
