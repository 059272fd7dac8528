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

/// CPU time (ms) the process `pid` has run on a CPU so far, all its threads (the
/// scheduler's nanoseconds: clock ticks are too coarse for a shim's share); 0 once gone.
fn cpu_ms(pid: i32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            s.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum::<u64>() as f64
        / 1e6
}

/// The CPU time used by the daemon and by its shims so far (ms).
fn cpu_of(daemon: i32, socket: &str) -> (f64, f64) {
    let shims = procs::shims_of(socket).iter().map(|p| cpu_ms(p.pid)).sum();
    (cpu_ms(daemon), shims)
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

/// How long after the last pod the figures are taken: Berth's shims trim their resident
/// set 3 s after they start (then every minute), so at 4 s every shim is as it stays.
const SETTLE: Duration = Duration::from_secs(4);

pub(crate) async fn measure(sides: &mut [Side]) {
    tokio::time::sleep(SETTLE).await;
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
        }
        // The stats calls alone, with the CPU they cost the daemon and the shims.
        let before = cpu_of(s.daemon.pid(), &s.socket);
        for _ in 0..CALLS {
            let r = stats(&mut s.rs).await;
            if let Some(ms) = s.note("ListContainerStats at scale", r) {
                s.fig.scale.stats.push(ms);
            }
        }
        let after = cpu_of(s.daemon.pid(), &s.socket);
        let n = s.fig.scale.stats.len().max(1) as f64;
        s.fig.scale.stats_cpu = Some(((after.0 - before.0) / n, (after.1 - before.1) / n));
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
    /// CPU per ListContainerStats call (ms): the daemon's, and all its shims' together.
    pub(crate) stats_cpu: Option<(f64, f64)>,
    /// The daemon's VmRSS, kB.
    pub(crate) rss: Option<u64>,
    /// The shims' total PSS (kB) and count.
    pub(crate) shims_pss_kb: Option<u64>,
    pub(crate) shims: usize,
}
