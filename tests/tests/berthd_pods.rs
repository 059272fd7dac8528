//! berthd pod sandboxes: RunPodSandbox starts one shim with berth-pause as the infra
//! process; status, list filters, stop and remove (both idempotent, also for unknown ids);
//! duplicate names and bad metadata are refused with nothing left behind.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, pod_config};
use berth_tests::procs;
use k8s_cri::v1 as cri;
use tonic::Code;

fn infra_pids(d: &Berthd) -> Vec<i32> {
    procs::all()
        .into_iter()
        .filter(|p| p.argv.first().is_some_and(|a| a == "/pause"))
        .filter(|p| {
            // Only pause processes under this berthd's shims.
            let ppid = std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        .and_then(|x| x.parse::<i32>().ok())
                });
            ppid.is_some_and(|pp| {
                procs::shims_of(&d.socket.display().to_string())
                    .iter()
                    .any(|s| s.pid == pp)
            })
        })
        .map(|p| p.pid)
        .collect()
}

#[test]
fn host_network_pod_lifecycle() -> Result<()> {
    let d = Berthd::builder().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (mut rs, _) = d.client().await?;
        let mut cfg = pod_config("web", &logs);
        cfg.labels.insert("app".into(), "web".into());
        let id = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox; log:\n{}", d.log()))?
            .into_inner()
            .pod_sandbox_id;
        ensure!(id.len() == 64, "id {id}");
        let shims = procs::shims_of(&d.socket.display().to_string());
        ensure!(shims.len() == 1, "one shim per pod, found {shims:?}");
        // runc start returns once the init is released; its exec of /pause follows.
        procs::poll(
            std::time::Duration::from_secs(5),
            "berth-pause as the infra process",
            || (infra_pids(&d).len() == 1).then_some(()),
        )?;

        let st = rs
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
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
        let dup = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await;
        ensure!(
            matches!(&dup, Err(s) if s.code() == Code::AlreadyExists),
            "duplicate: {dup:?}"
        );
        ensure!(procs::shims_of(&d.socket.display().to_string()).len() == 1);

        let lister = rs.clone();
        let list = |f: Option<cri::PodSandboxFilter>| {
            let mut rs = lister.clone();
            async move {
                Ok::<_, anyhow::Error>(
                    rs.list_pod_sandbox(cri::ListPodSandboxRequest { filter: f })
                        .await?
                        .into_inner()
                        .items,
                )
            }
        };
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

        rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        let s = rs
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        ensure!(s.status.map(|s| s.state) == Some(cri::PodSandboxState::SandboxNotready as i32));
        ensure!(infra_pids(&d).is_empty(), "infra still running after stop");
        let ready = cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        };
        ensure!(list(Some(ready)).await?.is_empty());
        // Stop again, and stop/remove of unknown ids: success (kubelet retries these).
        rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: "nope".into(),
        })
        .await?;
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        let gone = rs
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await;
        ensure!(
            matches!(&gone, Err(s) if s.code() == Code::NotFound),
            "{gone:?}"
        );
        ensure!(
            procs::shims_of(&d.socket.display().to_string()).is_empty(),
            "shim left after remove"
        );
        // The name is free again.
        let id2 = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id2,
        })
        .await?;
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
    let d = Berthd::builder().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (mut rs, _) = d.client().await?;
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
            let r = rs
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(cfg),
                    runtime_handler: String::new(),
                })
                .await;
            ensure!(
                matches!(&r, Err(s) if s.code() == Code::InvalidArgument),
                "{what}: {r:?}"
            );
        }
        let r = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config("x", &logs)),
                runtime_handler: "kata".into(),
            })
            .await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::NotFound),
            "unknown handler: {r:?}"
        );
        // A pod network without any CNI config: refused, and rolled back (name free, no shim).
        let mut netpod = pod_config("net", &logs);
        netpod
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options
            .as_mut()
            .unwrap()
            .network = cri::NamespaceMode::Pod as i32;
        let r = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(netpod),
                runtime_handler: String::new(),
            })
            .await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::FailedPrecondition),
            "no CNI: {r:?}"
        );
        let items = rs
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        ensure!(items.is_empty(), "pods left: {items:?}");
        ensure!(procs::shims_of(&d.socket.display().to_string()).is_empty());
        Ok(())
    })??;
    d.finish()
}

/// Removes the test's bridge even when the test fails.
struct Bridge(String);
impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

#[test]
fn pod_network_through_cni_bridge() -> Result<()> {
    let n = std::process::id() % 200 + 20;
    let bridge = Bridge(format!("bbp{n}"));
    let d = Berthd::configure("")?;
    let ipam = d.dir.path().join("ipam");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "berth-test",
        "plugins": [
            {"type": "bridge", "bridge": bridge.0, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": format!("10.232.{n}.0/24")}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(
        d.cni_dir.join("10-berth-test.conflist"),
        conflist.to_string(),
    )?;
    let d = d.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (mut rs, _) = d.client().await?;
        let mut cfg = pod_config("netpod", &logs);
        cfg.hostname = "netpod-host".into();
        let ns = cfg
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        ns.namespace_options.as_mut().unwrap().network = cri::NamespaceMode::Pod as i32;
        let id = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox; log:\n{}", d.log()))?
            .into_inner()
            .pod_sandbox_id;
        let st = rs
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let ip = st
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        ensure!(ip.starts_with(&format!("10.232.{n}.")), "pod IP {ip:?}");
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
            std::fs::read_dir(ipam.join("berth-test"))
                .map(|r| r.flatten().any(|e| e.file_name() == ip))
                .unwrap_or(false)
        };
        ensure!(allocated(&ip), "no IPAM allocation for {ip}");

        rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        ensure!(
            !allocated(&ip),
            "IPAM allocation for {ip} not released by stop"
        );
        ensure!(
            !std::path::Path::new(&netns).exists(),
            "netns {netns} left after stop"
        );
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn pods_survive_a_berthd_kill9_and_orphans_are_cleaned() -> Result<()> {
    let mut d = Berthd::builder().start()?;
    let logs = d.dir.path().join("logs");
    let sock = d.socket.display().to_string();
    let (id, pid) = block_on(async {
        let (mut rs, _) = d.client().await?;
        let id = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config("survivor", &logs)),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let st = rs
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(st.info.get("info").context("info")?)?;
        Ok::<_, anyhow::Error>((id, info["pid"].as_i64().context("pid")? as i32))
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
        let (mut rs, _) = d.client().await?;
        let st = rs
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
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
        rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        ensure!(!procs::alive(pid), "infra still alive after stop");
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn a_pod_whose_infra_died_while_berthd_was_down_is_not_ready() -> Result<()> {
    let mut d = Berthd::builder().start()?;
    let logs = d.dir.path().join("logs");
    let id = block_on(async {
        let (mut rs, _) = d.client().await?;
        Ok::<_, anyhow::Error>(
            rs.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config("victim", &logs)),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id,
        )
    })??;
    d.kill9()?;
    procs::poll(std::time::Duration::from_secs(5), "infra pid", || {
        infra_pids(&d).first().copied()
    })
    .and_then(|p| procs::signal(p, libc::SIGKILL))?;
    d.restart()?;
    block_on(async {
        let (mut rs, _) = d.client().await?;
        let s = rs
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        ensure!(
            s.status.map(|s| s.state) == Some(cri::PodSandboxState::SandboxNotready as i32),
            "log:\n{}",
            d.log()
        );
        rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        Ok(())
    })??;
    d.finish()
}
