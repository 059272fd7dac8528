//! The churners (`--churners N`): parallel loops that each make a pod, run a container in
//! it (from an image of its own that it pulls, when it has one), exec into it, read its
//! log, ask for its stats, then stop and remove everything, until told to stop. Every
//! error and wrong answer goes to the error accounting (accounting.rs); a running pod is
//! published to the shim-kill fault while its container runs.

use crate::accounting::Errors;
use crate::fault_shim_kill::{self, Killable};
use crate::workload::{Rs, Shape};
use berth_cri::v1 as cri;
use berthd::cri::client::Is;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cycles completed (pod made, used and removed) and calls answered OK, over the run.
pub static CYCLES: AtomicU64 = AtomicU64::new(0);
pub static CALLS: AtomicU64 = AtomicU64::new(0);

/// What every churner of an iteration shares.
#[derive(Clone)]
pub struct Ctx {
    pub socket: String,
    pub shape: Shape,
    pub stop: Arc<AtomicBool>,
    pub errors: Errors,
    pub killable: Killable,
    /// Seeds the churners' hold times (reproducible with --seed).
    pub seed: u64,
    /// How long a container is held running at most (ms), giving shim kills a target.
    pub hold_ms: u64,
}

/// Churner `n`'s loop; `image`: its own image to pull, run and remove each cycle.
pub fn spawn(ctx: Ctx, n: usize, image: Option<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut k = 0u64;
        while !ctx.stop.load(Ordering::Relaxed) {
            k += 1;
            let Ok((mut rs, mut is)) = berth_tests::cri::connect(&ctx.socket).await else {
                ctx.errors.push(
                    "connect",
                    "",
                    Some(tonic::Code::Unavailable),
                    "connect".into(),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let name = format!("churn{n}-{k}");
            let hold = splitmix(ctx.seed ^ ((n as u64) << 40) ^ k) % ctx.hold_ms.max(1);
            let c = Cycle {
                ctx: &ctx,
                n,
                name: &name,
                hold: Duration::from_millis(hold),
            };
            if c.run(&mut rs, &mut is, image.as_deref()).await.is_some() {
                CYCLES.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_dir_all(ctx.shape.logs.join(&name));
            }
        }
    })
}

struct Cycle<'a> {
    ctx: &'a Ctx,
    n: usize,
    name: &'a str,
    hold: Duration,
}

/// Records a failed call (None) or counts a good one.
fn ok<T>(errors: &Errors, op: &'static str, pod: &str, r: Result<T, tonic::Status>) -> Option<T> {
    match r {
        Ok(v) => {
            CALLS.fetch_add(1, Ordering::Relaxed);
            Some(v)
        }
        Err(s) => {
            errors.status(op, pod, &s);
            None
        }
    }
}

impl Cycle<'_> {
    /// One pod's life; None when a call failed (recorded; the pod is left to the
    /// harness's removal after the iteration).
    async fn run(&self, rs: &mut Rs, is: &mut Is, image: Option<&str>) -> Option<()> {
        let e = &self.ctx.errors;
        let cfg = self.ctx.shape.pod(self.name, "churn").ok()?;
        let pod = ok(
            e,
            "RunPodSandbox",
            "",
            rs.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await,
        )?
        .into_inner()
        .pod_sandbox_id;
        let p = pod.as_str();
        if let Some(img) = image {
            ok(e, "PullImage", p, is.pull_image(pull_req(img)).await)?;
        }
        let token = format!("start-{}", self.name);
        let mut cc = self
            .ctx
            .shape
            .container("c", &format!("echo {token}; exec sleep 3600"));
        if let Some(img) = image {
            cc.image = Some(cri::ImageSpec {
                image: img.into(),
                ..Default::default()
            });
        }
        let ctr = ok(
            e,
            "CreateContainer",
            p,
            rs.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cc),
                sandbox_config: Some(cfg.clone()),
            })
            .await,
        )?
        .into_inner()
        .container_id;
        let cid = || ctr.clone();
        ok(
            e,
            "StartContainer",
            p,
            rs.start_container(cri::StartContainerRequest {
                container_id: cid(),
            })
            .await,
        )?;
        self.ctx.killable.publish(self.n, p, &ctr);
        let used = self
            .use_it(rs, p, &ctr, PathBuf::from(&cfg.log_directory), &token)
            .await;
        tokio::time::sleep(self.hold).await;
        let shim_killed = self.ctx.killable.withdraw(self.n).is_some();
        if shim_killed {
            match fault_shim_kill::verify(rs, p, &ctr).await {
                Ok(problems) => {
                    self.ctx.killable.count_checked();
                    for d in problems {
                        e.violation("shim-kill settle", d);
                    }
                }
                Err(s) => e.status("shim-kill check", p, &s),
            }
        }
        // A pod whose shim was killed is stopped and removed as kubelet would (that
        // must work: the harness's removal after the iteration checks it again).
        if !shim_killed {
            used?;
        }
        ok(
            e,
            "StopContainer",
            p,
            rs.stop_container(cri::StopContainerRequest {
                container_id: cid(),
                timeout: 0,
            })
            .await,
        )?;
        ok(
            e,
            "RemoveContainer",
            p,
            rs.remove_container(cri::RemoveContainerRequest {
                container_id: cid(),
            })
            .await,
        )?;
        ok(
            e,
            "StopPodSandbox",
            p,
            rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await,
        )?;
        ok(
            e,
            "RemovePodSandbox",
            p,
            rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await,
        )?;
        if let Some(img) = image {
            let r = is
                .remove_image(cri::RemoveImageRequest {
                    image: Some(cri::ImageSpec {
                        image: img.into(),
                        ..Default::default()
                    }),
                })
                .await;
            ok(e, "RemoveImage", p, r)?;
        }
        Some(())
    }

    /// What a user does with a running container: exec, logs, stats. None on a failure
    /// (recorded).
    async fn use_it(
        &self,
        rs: &mut Rs,
        pod: &str,
        ctr: &str,
        logs: PathBuf,
        token: &str,
    ) -> Option<()> {
        let e = &self.ctx.errors;
        let word = format!("exec-{}", self.name);
        let r = ok(
            e,
            "ExecSync",
            pod,
            rs.exec_sync(cri::ExecSyncRequest {
                container_id: ctr.into(),
                cmd: vec!["echo".into(), word.clone()],
                timeout: 20,
            })
            .await,
        )?
        .into_inner();
        if r.exit_code != 0 || String::from_utf8_lossy(&r.stdout) != format!("{word}\n") {
            e.wrong(
                "ExecSync",
                pod,
                format!(
                    "{ctr}: exit {} stdout {:?} stderr {:?}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout),
                    String::from_utf8_lossy(&r.stderr)
                ),
            );
        }
        let s = ok(
            e,
            "ContainerStats",
            pod,
            rs.container_stats(cri::ContainerStatsRequest {
                container_id: ctr.into(),
            })
            .await,
        )?
        .into_inner();
        let id = s.stats.and_then(|s| s.attributes).map(|a| a.id);
        if id.as_deref() != Some(ctr) {
            e.wrong("ContainerStats", pod, format!("{ctr}: stats for {id:?}"));
        }
        let s = ok(
            e,
            "PodSandboxStats",
            pod,
            rs.pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod.into(),
            })
            .await,
        )?
        .into_inner();
        let id = s.stats.and_then(|s| s.attributes).map(|a| a.id);
        if id.as_deref() != Some(pod) {
            e.wrong("PodSandboxStats", pod, format!("stats for {id:?}"));
        }
        let l = ok(
            e,
            "ListContainerStats",
            pod,
            rs.list_container_stats(cri::ListContainerStatsRequest {
                filter: Some(cri::ContainerStatsFilter {
                    pod_sandbox_id: pod.into(),
                    ..Default::default()
                }),
            })
            .await,
        )?
        .into_inner();
        let ids: Vec<String> = l
            .stats
            .into_iter()
            .filter_map(|s| s.attributes.map(|a| a.id))
            .collect();
        if ids != [ctr] {
            e.wrong(
                "ListContainerStats",
                pod,
                format!("{ctr}: stats of {ids:?}"),
            );
        }
        // The log, as kubelet reads it: the line the container printed first, within 10 s.
        let log = logs.join("c.log");
        let t0 = Instant::now();
        let found = loop {
            let l = log.clone();
            let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(l))
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            if text.lines().any(|l| l.ends_with(&format!(" {token}"))) {
                break true;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !found {
            e.wrong("log", pod, format!("{}: no line {token:?}", log.display()));
        }
        Some(())
    }
}

pub fn pull_req(image: &str) -> cri::PullImageRequest {
    cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A mix of the bits (splitmix64's finaliser): the hold times from the seed.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49eb_00d3_3ce8);
    x ^ (x >> 31)
}
