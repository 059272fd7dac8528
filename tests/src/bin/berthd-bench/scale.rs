//! At node scale (`plan.big` pods, one container each, nothing else running): a relist's
//! latency (ListPodSandbox + ListContainers, as kubelet's PLEG makes every second),
//! ListContainerStats', the daemon's RSS and the shims' PSS per pod.

use super::*;

/// How many relists and stats calls are timed.
const CALLS: usize = 20;

/// The total PSS of the shims serving `socket`, and how many there are.
fn shims_pss_kb(socket: &str) -> (u64, usize) {
    let shims = procs::shims_of(socket);
    let pss = shims
        .iter()
        .filter_map(|p| {
            let r = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)).ok()?;
            procs::field_kb(&r, "Pss:")
        })
        .sum();
    (pss, shims.len())
}

async fn relist(rs: &mut Rt) -> Result<f64> {
    let t0 = Instant::now();
    rs.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?;
    rs.list_containers(cri::ListContainersRequest { filter: None })
        .await?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

async fn stats(rs: &mut Rt) -> Result<f64> {
    let t0 = Instant::now();
    rs.list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

pub(crate) async fn measure(sides: &mut [Side]) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in sides.iter_mut().filter(|s| s.ok()) {
        eprintln!(
            "[bench] {}: {} pods: relists, stats, memory",
            s.name(),
            s.pods.len()
        );
        for _ in 0..CALLS {
            let r = relist(&mut s.rs).await;
            if let Some(ms) = s.note("relist at scale", r) {
                s.fig.scale.relist.push(ms);
            }
            let r = stats(&mut s.rs).await;
            if let Some(ms) = s.note("ListContainerStats at scale", r) {
                s.fig.scale.stats.push(ms);
            }
        }
        let r = rss_kb(s.daemon.pid());
        s.fig.scale.rss = s.note("read RSS at scale", r);
        let (pss, n) = shims_pss_kb(&s.socket);
        s.fig.scale.shims = n;
        s.fig.scale.shims_pss_kb = Some(pss).filter(|_| n > 0);
    }
}

/// The figures at scale.
#[derive(Debug, Default)]
pub(crate) struct ScaleFigures {
    pub(crate) relist: Vec<f64>,
    pub(crate) stats: Vec<f64>,
    /// The daemon's VmRSS, kB.
    pub(crate) rss: Option<u64>,
    /// The shims' total PSS (kB) and count.
    pub(crate) shims_pss_kb: Option<u64>,
    pub(crate) shims: usize,
}
