//! berthd's node-level CRI calls and daemon behaviour: Version, Status (NetworkReady follows
//! the CNI conf dir), RuntimeConfig, UpdateRuntimeConfig, the socket's mode, config errors,
//! `berthd config default`, graceful SIGTERM, and a second berthd refused on a live socket.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{binary, Berthd};
use std::os::unix::fs::PermissionsExt;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

#[test]
fn version_status_and_runtime_config() -> Result<()> {
    let d = Berthd::builder().start()?;
    let mode = std::fs::metadata(&d.socket)?.permissions().mode() & 0o777;
    ensure!(mode == 0o660, "socket mode {mode:o}, want 660");
    rt().block_on(async {
        let (mut rs, _) = d.client().await?;
        let v = rs
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await?
            .into_inner();
        ensure!(
            v.runtime_name == "berth" && v.runtime_api_version == "v1",
            "{v:?}"
        );
        ensure!(!v.runtime_version.is_empty(), "{v:?}");

        let cond = |s: &cri::StatusResponse, t: &str| {
            s.status
                .as_ref()
                .and_then(|st| st.conditions.iter().find(|c| c.r#type == t).cloned())
        };
        let s = rs
            .status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner();
        ensure!(cond(&s, "RuntimeReady").is_some_and(|c| c.status), "{s:?}");
        let net = cond(&s, "NetworkReady").context("no NetworkReady")?;
        ensure!(
            !net.status && net.reason == "NetworkPluginNotReady",
            "{net:?}"
        );
        ensure!(
            net.message.contains(&d.cni_dir.display().to_string()),
            "{net:?}"
        );

        std::fs::write(
            d.cni_dir.join("10-test.conflist"),
            r#"{"cniVersion":"1.0.0","name":"t","plugins":[]}"#,
        )?;
        let s = rs
            .status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner();
        ensure!(cond(&s, "NetworkReady").is_some_and(|c| c.status), "{s:?}");

        let rc = rs
            .runtime_config(cri::RuntimeConfigRequest {})
            .await?
            .into_inner();
        ensure!(rc.linux.map(|l| l.cgroup_driver) == Some(cri::CgroupDriver::Cgroupfs as i32));

        let upd = |cidr: &str| cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig {
                    pod_cidr: cidr.into(),
                }),
            }),
        };
        rs.update_runtime_config(upd("10.244.0.0/24")).await?;
        let bad = rs.update_runtime_config(upd("not-a-cidr")).await;
        ensure!(
            matches!(&bad, Err(s) if s.code() == tonic::Code::InvalidArgument),
            "bad CIDR: {bad:?}"
        );
        Ok(())
    })?;
    d.finish()
}

#[test]
fn sigterm_stops_serving_and_removes_the_socket() -> Result<()> {
    let mut d = Berthd::builder().start()?;
    let code = d.stop()?;
    ensure!(
        code == 0,
        "berthd exit code {code} after SIGTERM; log:\n{}",
        d.log()
    );
    ensure!(!d.socket.exists(), "socket left after SIGTERM");
    d.finish()
}

#[test]
fn a_second_berthd_on_a_live_socket_is_refused() -> Result<()> {
    let d = Berthd::builder().start()?;
    let out = std::process::Command::new(binary()?)
        .arg("--config")
        .arg(&d.config)
        .output()?;
    ensure!(!out.status.success(), "second berthd started");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("served by another process"), "stderr: {err}");
    ensure!(d.socket.exists(), "the first berthd lost its socket");
    d.finish()
}

#[test]
fn config_default_parses_and_bad_configs_are_refused() -> Result<()> {
    let out = std::process::Command::new(binary()?)
        .args(["config", "default"])
        .output()?;
    ensure!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        text.contains("socket = \"/run/berth/berth.sock\""),
        "{text}"
    );
    let dir = tempfile::tempdir()?;
    let f = dir.path().join("c.toml");
    std::fs::write(&f, &text)?;
    let ok = std::process::Command::new(binary()?)
        .arg("--config")
        .arg(&f)
        .args(["config", "check"])
        .output()?;
    ensure!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for (bad, needle) in [
        ("[runtime]\nbinnary = \"crun\"\n", "binnary"),
        ("[paths]\nroot = \"relative\"\n", "absolute"),
        ("[runtime]\ncgroup_driver = \"v3\"\n", "cgroup_driver"),
    ] {
        std::fs::write(&f, bad)?;
        let out = std::process::Command::new(binary()?)
            .arg("--config")
            .arg(&f)
            .args(["config", "check"])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains(needle),
            "{bad:?}: {err}"
        );
    }
    Ok(())
}

/// `runtime.binary` names the OCI runtime every task runs with: here crun behind a
/// wrapper that records its arguments, for the pod's infra process and its container.
#[test]
fn the_configured_oci_runtime_runs_pods_and_containers() -> Result<()> {
    use berth_tests::cri::{block_on, container_config, pod_config};
    use berth_tests::pod::Pod;
    let dir = tempfile::Builder::new()
        .prefix("berth-crun-")
        .tempdir_in("/tmp")?;
    let calls = dir.path().join("calls");
    let wrapper = dir.path().join("crun-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec crun \"$@\"\n",
            calls.display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let d = Berthd::builder()
        .config(&format!("[runtime]\nbinary = \"{}\"\n", wrapper.display()))
        .busybox()
        .start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        // A pod with an infra process (it shares its PID namespace): crun runs both.
        let mut cfg = pod_config("crun", &logs.join("crun"));
        berth_tests::cri::share_pid(&mut cfg);
        let pod = Pod::run(&d, cfg).await?;
        let c = container_config("hello", berth_tests::image::BUSYBOX_IMAGE, &["echo", "hi"]);
        let e = pod.run_to_exit(c).await?;
        ensure!(e.status.exit_code == 0 && e.stdout == "hi\n", "{e:?}");
        let text = std::fs::read_to_string(&calls).context("the wrapper never ran")?;
        let creates: Vec<&str> = text.lines().filter(|l| l.contains(" create ")).collect();
        ensure!(
            creates.iter().any(|l| l.contains(&pod.id))
                && creates.iter().any(|l| l.contains(&e.id)),
            "crun did not create both the infra ({}) and the container ({}):\n{text}",
            pod.id,
            e.id
        );
        pod.remove().await
    })??;
    d.finish()
}

/// The fixture's guard can fail a test: with berthd killed, nothing removes the pod, and
/// `finish` reports its shim (then kills it, so nothing outlives this test).
#[test]
fn the_fixture_reports_a_shim_berthd_left_behind() -> Result<()> {
    use berth_tests::cri::block_on;
    use berth_tests::pod::Pod;
    let mut d = Berthd::builder().start()?;
    block_on(async { Pod::run(&d, d.pod_config("left")).await.map(|_| ()) })??;
    d.kill9()?;
    let Err(e) = d.finish() else {
        anyhow::bail!("finish passed with a pod's shim still running");
    };
    ensure!(format!("{e:#}").contains("shim pid"), "{e:#}");
    Ok(())
}
