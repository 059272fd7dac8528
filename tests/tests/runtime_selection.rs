//! Which OCI runtime a container runs under, chosen by the runtime options containerd passes
//! to a shim: none at all (ctr with io.containerd.berth.v2), `runtimeoptions.v1.Options{config_path}` naming a TOML file with `BinaryName = "crun"` (from
//! ctr --runtime-config-path and from containerd's CRI runtime handler `options.ConfigPath`), and
//! `containerd.runc.v1.Options{binary_name=crun}` through the drop-in: the container really runs
//! under the OCI runtime the options name.

use anyhow::{ensure, Context, Result};
use berth_tests::cri::{self, container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::{cmd, Instance, Oci, Runtime, Setup};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `status` of `<bin> --root /run/containerd/runc/<ns> state <id>`, or the error output.
fn oci_status(bin: &str, namespace: &str, id: &str) -> Result<String> {
    let root = Path::new("/run/containerd/runc").join(namespace);
    let out = cmd::run(
        Command::new(bin)
            .arg("--root")
            .arg(&root)
            .args(["state", id]),
        Duration::from_secs(10),
    )?
    .ok(&format!("{bin} --root {} state {id}", root.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).with_context(|| format!("{bin} state: {out:?}"))?;
    Ok(v["status"].as_str().unwrap_or_default().to_string())
}

/// The `runtime` file the shim persisted in `id`'s bundle (the OCI binary for `delete`).
fn bundle_runtime(inst: &Instance, id: &str) -> Result<String> {
    let p = inst.bundle(id).join("runtime");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_string())
}

/// Asserts `id` runs under `oci` (bundle `runtime` file and the runtime's own state).
fn assert_runs_under(inst: &Instance, id: &str, oci: Oci) -> Result<()> {
    let rt = bundle_runtime(inst, id)?;
    let ok = match oci {
        Oci::Runc => rt.is_empty() || rt == "runc" || rt.ends_with("/runc"),
        Oci::Crun => rt == "crun" || rt.ends_with("/crun"),
    };
    ensure!(
        ok,
        "{id}: bundle runtime file says {rt:?}, expected {}",
        oci.name()
    );
    let st = oci_status(oci.name(), &inst.namespace, id)?;
    ensure!(st == "running", "{id}: {} state says {st:?}", oci.name());
    Ok(())
}

fn crun_config(dir: &Path) -> Result<String> {
    let p = dir.join("berth.toml");
    std::fs::write(&p, "BinaryName = \"crun\"\n")?;
    Ok(p.display().to_string())
}

#[test]
fn no_options_runs_under_runc() -> Result<()> {
    let inst = Instance::start(Setup::new(Runtime::Berth))?;
    let ctr = inst.ctr();
    let id = inst.new_id("noopts");
    ctr.run_detached(&[], &id, &["sleep", "600"])?;
    let res = assert_runs_under(&inst, &id, Oci::Runc);
    ctr.kill_and_delete(&id)?;
    res.with_context(|| inst.log_tail(30))?;
    inst.finish()
}

#[test]
fn runtime_config_path_from_ctr_selects_crun() -> Result<()> {
    berth_tests::ensure_hugetlb_v1();
    let cfg_dir = tempfile::Builder::new().prefix("berth-o").tempdir()?;
    let cfg = crun_config(cfg_dir.path())?;
    let inst = Instance::start(Setup::new(Runtime::Berth))?;
    let ctr = inst.ctr();
    let id = inst.new_id("cfgpath");
    ctr.run_detached(&["--runtime-config-path", &cfg], &id, &["sleep", "600"])?;
    let res = assert_runs_under(&inst, &id, Oci::Crun);
    ctr.kill_and_delete(&id)?;
    res.with_context(|| inst.log_tail(30))?;
    inst.finish()
}

#[test]
fn runc_options_binary_name_crun_via_drop_in() -> Result<()> {
    berth_tests::ensure_hugetlb_v1();
    let inst = Instance::start(Setup::new(Runtime::DropIn(Oci::Crun)))?;
    let ctr = inst.ctr();
    let id = inst.new_id("dropcrun");
    ctr.run_detached(&[], &id, &["sleep", "600"])?;
    let res = assert_runs_under(&inst, &id, Oci::Crun);
    ctr.kill_and_delete(&id)?;
    res.with_context(|| inst.log_tail(30))?;
    inst.finish()
}

#[test]
fn cri_handler_config_path_selects_crun() -> Result<()> {
    berth_tests::ensure_hugetlb_v1();
    let cfg_dir = tempfile::Builder::new().prefix("berth-o").tempdir()?;
    let cfg = crun_config(cfg_dir.path())?;
    // runtime_type io.containerd.berth.v2 → CRI 1.6 sends runtimeoptions.v1.Options.
    let extra = format!(
        "      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.berth.options]\n        ConfigPath = \"{cfg}\"\n"
    );
    let inst = Instance::start_with_config(Setup::new(Runtime::Berth).with_cri(), &extra)?;
    let logs = inst.path().join("pods");
    std::fs::create_dir_all(&logs)?;
    let res = cri::block_on(async {
        let (rt, _) = cri::connect(&inst.address).await?;
        let pod = pod_config("optspod", &logs);
        let sandbox = rt.run_pod(&pod).await.context("RunPodSandbox")?;
        inst.track_key(&sandbox);
        let check = async {
            let id = rt
                .create_ctr(
                    &sandbox,
                    &pod,
                    container_config("app", BUSYBOX_IMAGE, &["sleep", "600"]),
                )
                .await
                .context("CreateContainer")?;
            inst.track_key(&id);
            rt.start_ctr(&id).await.context("StartContainer")?;
            assert_runs_under(&inst, &sandbox, Oci::Crun).context("sandbox")?;
            assert_runs_under(&inst, &id, Oci::Crun).context("app container")?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        rt.stop_and_remove_pod(&sandbox)
            .await
            .context("StopPodSandbox + RemovePodSandbox")?;
        check
    })?;
    if let Err(e) = res {
        return Err(e.context(format!("containerd log tail:\n{}", inst.log_tail(60))));
    }
    inst.finish()
}
