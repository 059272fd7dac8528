//! What the harness runs on the runtime: long-lived counter containers (never touched:
//! they must keep running with the same pid and lose no line), victims (killed while the
//! daemon is down: their exit codes, times and every line they printed must survive), and
//! a loop pulling and removing an image (the churners are in churner.rs).

use anyhow::{bail, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::cri::RuntimeServiceClient;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

pub type Rs = RuntimeServiceClient<Channel>;

/// Label on everything the harness makes; its value tells what for.
pub const LABEL: &str = "berth-torture";

/// Settings every pod shares.
#[derive(Clone)]
pub struct Shape {
    pub image: String,
    pub pod_network: bool,
    /// Every other churn pod (by the parity of its name's digits) is user-namespaced.
    pub userns: bool,
    pub logs: PathBuf,
    pub run: String,
}

impl Shape {
    pub fn pod(&self, name: &str, role: &str) -> Result<cri::PodSandboxConfig> {
        let dir = self.logs.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut cfg = berth_tests::cri::pod_config(name, &dir);
        if let Some(md) = cfg.metadata.as_mut() {
            md.namespace = "berth-torture".into();
            md.uid = format!("{}-{name}", self.run);
        }
        cfg.labels.insert(LABEL.into(), role.into());
        // Most pods run without an infra process (kubelet's default); a share of the churn
        // pods share their PID namespace and so run one, to churn both kinds.
        if role == "churn" && digit_sum(name) % 3 == 1 {
            berth_tests::cri::ns_options(&mut cfg).pid = cri::NamespaceMode::Pod as i32;
        }
        if self.pod_network {
            cfg.hostname = name.into();
            let ns = berth_tests::cri::ns_options(&mut cfg);
            ns.network = cri::NamespaceMode::Pod as i32;
            if self.userns && role == "churn" && userns_turn(name) {
                let m = vec![cri::IdMapping {
                    host_id: USERNS_HOST_ID,
                    container_id: 0,
                    length: 65536,
                }];
                ns.userns_options = Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: m.clone(),
                    gids: m,
                });
            }
        }
        Ok(cfg)
    }

    pub fn container(&self, name: &str, script: &str) -> cri::ContainerConfig {
        let mut c = berth_tests::cri::container_config(name, &self.image, &["sh", "-c", script]);
        c.labels.insert(LABEL.into(), name.into());
        c
    }
}

/// The host ids a user-namespaced churn pod's 0-65535 map to.
const USERNS_HOST_ID: u32 = 9 * 65536;

/// Whether a churn pod is user-namespaced: half of them, by the parity of the digits in
/// its name (churner index and cycle), so both kinds churn side by side.
fn userns_turn(name: &str) -> bool {
    digit_sum(name).is_multiple_of(2)
}

fn digit_sum(name: &str) -> u32 {
    name.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .sum()
}

/// A numbered line every 20 ms, forever.
pub const COUNTER: &str = "i=0; while :; do echo \"n $i\"; i=$((i+1)); usleep 20000; done";

/// A numbered line every 10 ms, each number also written to /out/last (a host dir) after
/// it is printed; SIGTERM ends it with 42.
pub const VICTIM: &str = "trap 'exit 42' TERM; i=0; while :; do echo \"n $i\"; \
                          echo $i > /out/last; i=$((i+1)); usleep 10000; done";

pub async fn run_pod(rs: &mut Rs, cfg: &cri::PodSandboxConfig) -> Result<String> {
    Ok(rs
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

pub async fn start(
    rs: &mut Rs,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    c: cri::ContainerConfig,
) -> Result<String> {
    let id = rs
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    rs.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

/// The container's status and the host pid from its verbose info.
pub async fn status(rs: &mut Rs, id: &str) -> Result<(cri::ContainerStatus, i32)> {
    let r = rs
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let pid = r
        .info
        .get("info")
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        .and_then(|v| v["pid"].as_i64())
        .unwrap_or(0) as i32;
    Ok((r.status.context("no status")?, pid))
}

/// A victim: its container id, host pid, log and the host dir holding /out/last.
pub struct Victim {
    pub id: String,
    pub pid: i32,
    pub log: PathBuf,
    pub out: PathBuf,
    pub signal: i32,
    /// When the harness signalled it (ns since the epoch).
    pub killed_at: i64,
}

pub async fn start_victim(
    rs: &mut Rs,
    shape: &Shape,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    name: &str,
    signal: i32,
) -> Result<Victim> {
    let out = shape.logs.join("out").join(name);
    std::fs::create_dir_all(&out)?;
    let mut c = shape.container(name, VICTIM);
    c.mounts.push(cri::Mount {
        container_path: "/out".into(),
        host_path: out.display().to_string(),
        ..Default::default()
    });
    let id = start(rs, pod, pod_cfg, c).await?;
    let log = Path::new(&pod_cfg.log_directory).join(format!("{name}.log"));
    // Running, with a pid, and printing.
    for _ in 0..200 {
        let (st, pid) = status(rs, &id).await?;
        if st.state == cri::ContainerState::ContainerRunning as i32
            && pid > 0
            && out.join("last").exists()
        {
            return Ok(Victim {
                id,
                pid,
                log,
                out,
                signal,
                killed_at: 0,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("victim {name} did not start printing")
}

/// Pulls that completed, and the first error of one that did not (a kill cuts most).
pub static PULLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
pub static PULL_ERROR: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// A loop of PullImage and RemoveImage of `image` until `stop` (every call may be cut).
pub fn pull_churn(
    socket: String,
    image: String,
    stop: Arc<AtomicBool>,
    errors: crate::accounting::Errors,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let Ok((_, mut is)) = berth_tests::cri::connect(&socket).await else {
                errors.push(
                    "connect",
                    "",
                    Some(tonic::Code::Unavailable),
                    "connect".into(),
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let pulled = is
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await;
            match pulled {
                Ok(_) => {
                    PULLS.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    errors.status("PullImage", "", &e);
                    let mut first = PULL_ERROR.lock().unwrap();
                    if first.is_empty() {
                        *first = e.to_string();
                    }
                }
            }
            if let Err(e) = remove_image(&socket, &image).await {
                let code = e
                    .downcast_ref::<tonic::Status>()
                    .map_or(tonic::Code::Unavailable, |s| s.code());
                errors.push("RemoveImage", "", Some(code), format!("{e:#}"));
            }
        }
    })
}

/// RemoveImage; an image that is not there is fine.
pub async fn remove_image(socket: &str, image: &str) -> Result<()> {
    let (_, mut is) = berth_tests::cri::connect(socket).await?;
    match is
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(s.into()),
    }
}

/// Pods carrying the label with `role` ("" = any).
pub async fn pods_with(rs: &mut Rs, role: &str) -> Result<Vec<cri::PodSandbox>> {
    let all = rs
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    Ok(all
        .into_iter()
        .filter(|p| {
            p.labels
                .get(LABEL)
                .is_some_and(|r| role.is_empty() || r == role)
        })
        .collect())
}

/// Stops and removes a pod: (stop error, remove error) as text.
pub async fn remove_pod(rs: &mut Rs, id: &str) -> Result<()> {
    rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .context("StopPodSandbox")?;
    rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .context("RemovePodSandbox")?;
    Ok(())
}
