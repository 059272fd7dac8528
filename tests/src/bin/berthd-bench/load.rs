//! The parallel phase, as kubelet loads a node: `inflight` workers make pods (RunPodSandbox,
//! CreateContainer, StartContainer of one sleeper) until `pods` are up, while a prober
//! asks what kubelet's relist asks (PodSandboxStatus and ContainerStatus of a pod made
//! before, ListPodSandbox + ListContainers) every 10 ms; then the pods are stopped and
//! removed with as many in flight. One runtime at a time, so neither loads the other's run.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Pause between two probes: a busy kubelet, not a flood.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// One runtime's figures of the phase (milliseconds per call unless named otherwise).
#[derive(Default)]
pub(crate) struct LoadFigures {
    pub(crate) run_pod: Vec<f64>,
    pub(crate) create: Vec<f64>,
    pub(crate) start: Vec<f64>,
    /// Pods up per second over the whole make phase.
    pub(crate) pods_per_s: Option<f64>,
    pub(crate) pod_status: Vec<f64>,
    pub(crate) ctr_status: Vec<f64>,
    /// ListPodSandbox + ListContainers, one relist.
    pub(crate) relist: Vec<f64>,
    pub(crate) stop_remove: Vec<f64>,
}

/// What every worker shares: the jobs (pod configs), the next job's index, the ids made.
struct Jobs {
    cfgs: Vec<cri::PodSandboxConfig>,
    next: AtomicUsize,
    made: Mutex<Vec<String>>,
    times: Mutex<LoadFigures>,
}

async fn make_pods(mut rs: Rt, image: String, jobs: Arc<Jobs>) -> Result<()> {
    loop {
        let i = jobs.next.fetch_add(1, Ordering::Relaxed);
        let Some(cfg) = jobs.cfgs.get(i) else {
            return Ok(());
        };
        let t0 = Instant::now();
        let pod = rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        let t1 = Instant::now();
        jobs.made.lock().unwrap().push(pod.clone());
        let id = rs
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("sleeper", &image, &["sleep", "3600"])),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .with_context(|| format!("CreateContainer in {pod}"))?
            .into_inner()
            .container_id;
        let t2 = Instant::now();
        rs.start_container(cri::StartContainerRequest { container_id: id })
            .await
            .with_context(|| format!("StartContainer in {pod}"))?;
        let t3 = Instant::now();
        let mut f = jobs.times.lock().unwrap();
        f.run_pod.push(side::ms(t1 - t0));
        f.create.push(side::ms(t2 - t1));
        f.start.push(side::ms(t3 - t2));
    }
}

/// kubelet's questions about one pod and its container, and a relist, until `stop`.
async fn probe(
    mut rs: Rt,
    pod: String,
    ctr: String,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (mut ps, mut cs, mut rl) = (Vec::new(), Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        rs.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .context("PodSandboxStatus")?;
        let t1 = Instant::now();
        rs.container_status(cri::ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        })
        .await
        .context("ContainerStatus")?;
        let t2 = Instant::now();
        rs.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .context("ListPodSandbox")?;
        rs.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .context("ListContainers")?;
        let t3 = Instant::now();
        ps.push(side::ms(t1 - t0));
        cs.push(side::ms(t2 - t1));
        rl.push(side::ms(t3 - t2));
        tokio::time::sleep(PROBE_EVERY).await;
    }
    Ok((ps, cs, rl))
}

/// The phase on one runtime; its pods are tracked in `s.pods` as they are made.
async fn run(s: &mut Side, plan: &Plan) -> Result<LoadFigures> {
    // The probed pod, made before the load (its container is what ContainerStatus asks).
    let (probe_pod, cfg, _) = s.run_pod().await?;
    let ctr =
        s.rs.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: probe_pod.clone(),
            config: Some(container_config("probed", &s.image, &["sleep", "3600"])),
            sandbox_config: Some(cfg),
        })
        .await
        .context("CreateContainer of the probed pod")?
        .into_inner()
        .container_id;
    let mut cfgs = Vec::new();
    for _ in 0..plan.load_pods {
        cfgs.push(s.next_pod()?.1);
    }
    let jobs = Arc::new(Jobs {
        cfgs,
        next: AtomicUsize::new(0),
        made: Mutex::new(Vec::new()),
        times: Mutex::new(LoadFigures::default()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe(s.rs.clone(), probe_pod, ctr, stop.clone()));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..plan.inflight)
        .map(|_| tokio::spawn(make_pods(s.rs.clone(), s.image.clone(), jobs.clone())))
        .collect();
    let mut first_err = None;
    for w in workers {
        if let Err(e) = w.await.map_err(anyhow::Error::from).and_then(|r| r) {
            first_err.get_or_insert(e);
        }
    }
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let probed = prober.await?;
    let made = std::mem::take(&mut *jobs.made.lock().unwrap());
    s.pods.extend(made.iter().cloned());
    if let Some(e) = first_err {
        return Err(e);
    }
    let (ps, cs, rl) = probed?;
    let mut f = std::mem::take(&mut *jobs.times.lock().unwrap());
    f.pods_per_s = Some(made.len() as f64 / took.as_secs_f64());
    (f.pod_status, f.ctr_status, f.relist) = (ps, cs, rl);
    f.stop_remove = remove_all(s, &made, plan.inflight).await?;
    Ok(f)
}

/// StopPodSandbox + RemovePodSandbox of `ids`, `inflight` at a time; ms per pod.
async fn remove_all(s: &mut Side, ids: &[String], inflight: usize) -> Result<Vec<f64>> {
    let queue = Arc::new(Mutex::new(ids.to_vec()));
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let (mut rs, queue) = (s.rs.clone(), queue.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let Some(id) = queue.lock().unwrap().pop() else {
                        return Ok::<_, anyhow::Error>(times);
                    };
                    let t0 = Instant::now();
                    rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                    .with_context(|| format!("StopPodSandbox {id}"))?;
                    rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                    .with_context(|| format!("RemovePodSandbox {id}"))?;
                    times.push(side::ms(t0.elapsed()));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(v) => all.extend(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    // What is left (an error cut a removal) stays tracked for the teardown.
    let left = queue.lock().unwrap().clone();
    s.pods.retain(|p| !ids.contains(p) || left.contains(p));
    match first_err {
        Some(e) => Err(e),
        None => Ok(all),
    }
}

/// The phase on every live runtime, one after the other.
pub(crate) async fn measure(sides: &mut [Side], plan: &Plan) {
    for s in sides.iter_mut().filter(|s| s.ok()) {
        eprintln!(
            "[bench] {}: {} pods, {} in flight, probed every {:?}",
            s.name(),
            plan.load_pods,
            plan.inflight,
            PROBE_EVERY
        );
        let r = run(s, plan).await;
        if let Some(f) = s.note("parallel phase", r) {
            s.fig.load = f;
        }
    }
}
