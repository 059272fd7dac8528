//! berthd pod sandboxes: RunPodSandbox starts one shim with berth-pause as the infra
//! process; status, list filters, stop and remove (both idempotent, also for unknown ids);
//! duplicate names and bad metadata are refused with nothing left behind.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{block_on, pod_config, pod_network, share_pid};
use berth_tests::cri_calls::CriCalls;
use berth_tests::pod::Pod;
use berth_tests::procs;
use tonic::Code;

fn infra_pids(d: &Berthd) -> Vec<i32> {
    procs::shim_children(&d.socket.display().to_string(), |argv| {
        argv.first().is_some_and(|a| a == "/pause")
    })
}

#[test]
fn host_network_pod_lifecycle() -> Result<()> {
    let d = Berthd::builder().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let mut cfg = pod_config("web", &logs);
        cfg.labels.insert("app".into(), "web".into());
        share_pid(&mut cfg);
        let id = rs
            .run_pod(&cfg)
            .await
            .with_context(|| format!("RunPodSandbox; log:\n{}", d.log()))?;
        ensure!(id.len() == 64, "id {id}");
        let shims = procs::shims_of(&d.socket.display().to_string());
        ensure!(shims.len() == 1, "one shim per pod, found {shims:?}");
        // runc start returns once the init is released; its exec of /pause follows.
        procs::poll(
            std::time::Duration::from_secs(5),
            "berth-pause as the infra process",
            || (infra_pids(&d).len() == 1).then_some(()),
        )?;

        let st = rs.pod_status(&id, true).await?;
        let s = st.status.context("no status")?;
        ensure!(
            s.state == cri::PodSandboxState::SandboxReady as i32,
            "{s:?}"
        );
        ensure!(s.metadata.as_ref().map(|m| m.name.as_str()) == Some("web"));
        ensure!(s.labels.get("app").map(String::as_str) == Some("web"));
        ensure!(
            st.info.get("info").is_some_and(|i| i.contains("pid")),
            "verbose info: {:?}",
            st.info
        );

        // A second pod with the same metadata is refused, and nothing extra runs.
        let dup = rs.run_pod(&cfg).await;
        ensure!(
            matches!(&dup, Err(s) if s.code() == Code::AlreadyExists),
            "duplicate: {dup:?}"
        );
        ensure!(procs::shims_of(&d.socket.display().to_string()).len() == 1);

        let list = |f: Option<cri::PodSandboxFilter>| rs.list_pods(f);
        ensure!(list(None).await?.len() == 1);
        let by_label = cri::PodSandboxFilter {
            label_selector: [("app".to_string(), "db".to_string())].into(),
            ..Default::default()
        };
        ensure!(list(Some(by_label)).await?.is_empty());
        let by_prefix = cri::PodSandboxFilter {
            id: id[..12].to_string(),
            ..Default::default()
        };
        ensure!(list(Some(by_prefix)).await?.len() == 1);

        rs.stop_pod(&id).await?;
        ensure!(rs.pod_state(&id).await? == cri::PodSandboxState::SandboxNotready as i32);
        ensure!(infra_pids(&d).is_empty(), "infra still running after stop");
        let ready = cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        };
        ensure!(list(Some(ready)).await?.is_empty());
        // Stop again, and stop/remove of unknown ids: success (kubelet retries these).
        rs.stop_pod(&id).await?;
        rs.stop_pod("nope").await?;
        rs.remove_pod(&id).await?;
        rs.remove_pod(&id).await?;
        let gone = rs.pod_status(&id, false).await;
        ensure!(
            matches!(&gone, Err(s) if s.code() == Code::NotFound),
            "{gone:?}"
        );
        ensure!(
            procs::shims_of(&d.socket.display().to_string()).is_empty(),
            "shim left after remove"
        );
        // The name is free again.
        let id2 = rs.run_pod(&cfg).await?;
        rs.remove_pod(&id2).await?;
        Ok(())
    })??;
    let state = d.dir.path().join("state/pods");
    let left: Vec<_> = std::fs::read_dir(&state)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "bundles left: {left:?}");
    d.finish()
}

#[test]
fn bad_pod_configs_are_refused_with_nothing_made() -> Result<()> {
    berthd_test(Berthd::builder(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        for (what, cfg) in [
            ("empty name", {
                let mut c = pod_config("x", &logs);
                c.metadata.as_mut().unwrap().name.clear();
                c
            }),
            ("slash in namespace", {
                let mut c = pod_config("x", &logs);
                c.metadata.as_mut().unwrap().namespace = "a/b".into();
                c
            }),
            ("no metadata", {
                let mut c = pod_config("x", &logs);
                c.metadata = None;
                c
            }),
        ] {
            let r = rs.run_pod(&cfg).await;
            ensure!(
                matches!(&r, Err(s) if s.code() == Code::InvalidArgument),
                "{what}: {r:?}"
            );
        }
        let r = rs.run_pod_with(&pod_config("x", &logs), "kata").await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::NotFound),
            "unknown handler: {r:?}"
        );
        // A pod network without any CNI config: refused, and rolled back (name free, no shim).
        let mut netpod = pod_config("net", &logs);
        pod_network(&mut netpod);
        let r = rs.run_pod(&netpod).await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::FailedPrecondition),
            "no CNI: {r:?}"
        );
        let items = rs.list_pods(None).await?;
        ensure!(items.is_empty(), "pods left: {items:?}");
        ensure!(procs::shims_of(&d.socket.display().to_string()).is_empty());
        Ok(())
    })
}

#[test]
fn pod_network_through_cni_bridge() -> Result<()> {
    berthd_test(Berthd::builder().cni_bridge(0), async |d| {
        let ipam = d.dir.path().join("ipam");
        let subnet = format!("{}.", d.bridge().prefix);
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let mut cfg = pod_config("netpod", &logs);
        cfg.hostname = "netpod-host".into();
        pod_network(&mut cfg);
        let id = rs
            .run_pod(&cfg)
            .await
            .with_context(|| format!("RunPodSandbox; log:\n{}", d.log()))?;
        let st = rs.pod_status(&id, true).await?;
        let ip = st
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        ensure!(ip.starts_with(&subnet), "pod IP {ip:?}");
        let info: serde_json::Value =
            serde_json::from_str(st.info.get("info").context("no verbose info")?)?;
        let netns = info["netns"]
            .as_str()
            .context("no netns in info")?
            .to_string();
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ip", "-o", "addr"])
            .output()?;
        let addrs = String::from_utf8_lossy(&out.stdout);
        ensure!(
            addrs.contains(&ip) && addrs.contains("eth0"),
            "netns addresses: {addrs}"
        );
        // The host reaches the pod over the bridge.
        let ping = std::process::Command::new("ping")
            .args(["-c", "1", "-W", "2", &ip])
            .output();
        if let Ok(p) = ping {
            ensure!(
                p.status.success(),
                "ping {ip}: {}",
                String::from_utf8_lossy(&p.stdout)
            );
        }
        let allocated = |ip: &str| {
            std::fs::read_dir(ipam.join("berth-feat"))
                .map(|r| r.flatten().any(|e| e.file_name() == ip))
                .unwrap_or(false)
        };
        ensure!(allocated(&ip), "no IPAM allocation for {ip}");

        rs.stop_pod(&id).await?;
        ensure!(
            !allocated(&ip),
            "IPAM allocation for {ip} not released by stop"
        );
        ensure!(
            !std::path::Path::new(&netns).exists(),
            "netns {netns} left after stop"
        );
        rs.remove_pod(&id).await?;
        Ok(())
    })
}

#[test]
fn pods_survive_a_berthd_kill9_and_orphans_are_cleaned() -> Result<()> {
    let mut d = Berthd::builder().start()?;
    let logs = d.dir.path().join("logs");
    let sock = d.socket.display().to_string();
    let (id, pid) = block_on(async {
        let mut cfg = pod_config("survivor", &logs);
        share_pid(&mut cfg);
        let pod = Pod::run(&d, cfg).await?;
        Ok::<_, anyhow::Error>((pod.id.clone(), pod.infra_pid().await?))
    })??;
    d.kill9()?;
    ensure!(procs::alive(pid), "the infra process died with berthd");
    ensure!(
        procs::shims_of(&sock).len() == 1,
        "the pod's shim died with berthd"
    );
    // Leftovers no record owns, as a cut RunPodSandbox would leave them.
    let orphan_bundle = d.dir.path().join("state/pods/orphan0");
    std::fs::create_dir_all(&orphan_bundle)?;
    d.restart()?;
    ensure!(
        !orphan_bundle.exists(),
        "orphan bundle not removed at startup; log:\n{}",
        d.log()
    );
    block_on(async {
        let (rs, _) = d.client().await?;
        let st = rs.pod_status(&id, true).await?;
        let s = st.status.context("status")?;
        ensure!(
            s.state == cri::PodSandboxState::SandboxReady as i32,
            "after restart: {s:?}\n{}",
            d.log()
        );
        let info: serde_json::Value = serde_json::from_str(st.info.get("info").context("info")?)?;
        ensure!(
            info["pid"].as_i64() == Some(pid as i64),
            "pid changed: {info}"
        );
        ensure!(procs::shims_of(&sock).len() == 1, "a second shim appeared");
        rs.stop_pod(&id).await?;
        ensure!(!procs::alive(pid), "infra still alive after stop");
        rs.remove_pod(&id).await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn a_pod_whose_infra_died_while_berthd_was_down_is_not_ready() -> Result<()> {
    let mut d = Berthd::builder().start()?;
    let logs = d.dir.path().join("logs");
    let id = block_on(async {
        let mut cfg = pod_config("victim", &logs);
        share_pid(&mut cfg);
        Ok::<_, anyhow::Error>(Pod::run(&d, cfg).await?.id)
    })??;
    d.kill9()?;
    procs::poll(std::time::Duration::from_secs(5), "infra pid", || {
        infra_pids(&d).first().copied()
    })
    .and_then(|p| procs::signal(p, libc::SIGKILL))?;
    d.restart()?;
    block_on(async {
        let (rs, _) = d.client().await?;
        ensure!(
            rs.pod_state(&id).await? == cri::PodSandboxState::SandboxNotready as i32,
            "log:\n{}",
            d.log()
        );
        rs.stop_and_remove_pod(&id).await?;
        Ok(())
    })??;
    d.finish()
}
