//! The printed report: a markdown table (berthd | containerd 1.6 | target), the spread
//! behind each median, the restart breakdown and any errors.

use super::*;

pub(crate) fn median(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

/// Linear-interpolated quantile of `v` (None when empty).
pub(crate) fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return None;
    }
    let pos = q * (n - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

fn dur(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// "median / p99" of `v`.
fn spread(v: &[f64]) -> Option<String> {
    Some(format!("{} / {}", dur(median(v)?), dur(quantile(v, 0.99)?)))
}

fn rss(kb: u64) -> String {
    format!(
        "{:.1} MiB ({:.1} MB)",
        kb as f64 / 1024.0,
        kb as f64 * 1.024 / 1000.0
    )
}

/// What one column shows: figures, or why there are none.
pub(crate) enum Col<'a> {
    Ran(&'a Figures, Option<&'a anyhow::Error>),
    Skipped(&'static str),
    Failed(&'a anyhow::Error),
}

impl Col<'_> {
    fn cell(&self, f: impl Fn(&Figures) -> Option<String>) -> String {
        match self {
            Col::Ran(fig, err) => {
                f(fig).unwrap_or_else(|| if err.is_some() { "ERROR" } else { "—" }.into())
            }
            Col::Skipped(why) => (*why).into(),
            Col::Failed(_) => "ERROR".into(),
        }
    }
}

/// How one row's cell is drawn from a column's figures.
type CellFn<'a> = &'a dyn Fn(&Figures) -> Option<String>;

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn mb(bytes: u64) -> String {
    if bytes >= 10 << 20 {
        format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.2} MB", bytes as f64 / 1e6)
    }
}

/// The big pull with the largest RSS growth: "+G MiB (B → P MiB)".
fn growth_cell(f: &Figures) -> Option<String> {
    let b = f.pull_big.iter().max_by_key(|b| b.growth())?;
    Some(format!(
        "+{} MiB ({} → {} MiB)",
        mib(b.growth()),
        mib(b.before.rss),
        mib(b.peak.rss)
    ))
}

/// The highest peak of the big pulls over the daemon's idle RSS at the bench's start.
fn peak_over_idle_cell(f: &Figures) -> Option<String> {
    let peak = f.pull_big.iter().map(|b| b.peak.rss).max()?;
    let idle = f.rss_idle?;
    Some(format!(
        "+{} MiB ({} → {} MiB)",
        mib(peak.saturating_sub(idle)),
        mib(idle),
        mib(peak)
    ))
}

pub(crate) fn print_table(cols: &[Col; 2], plan: &Plan) {
    let n = plan.rounds;
    let mut rows: Vec<(String, CellFn, &str)> = Vec::new();
    if plan.pods {
        rows.extend::<[(String, CellFn, &str); 7]>([
            (
                format!("RunPodSandbox, median of {n}"),
                &|f| median(&f.run_pod).map(dur),
                "≤ 15 ms",
            ),
            (
                format!("CreateContainer + StartContainer, median of {n}"),
                &|f| median(&f.create_start).map(dur),
                "≤ 35 ms with runc, ≤ 15 with crun",
            ),
            (
                format!("StopPodSandbox + RemovePodSandbox, median of {n}"),
                &|f| median(&f.stop_remove).map(dur),
                "≤ 20 ms",
            ),
            (
                "daemon RSS, idle".into(),
                &|f| f.rss_idle.map(rss),
                "≤ 12 MB (54 MB)",
            ),
            (
                format!("daemon RSS, {} pods running", plan.many),
                &|f| f.rss_many.map(rss),
                "≤ 20 MB (88 MB)",
            ),
            (
                format!("restart to ready, {} pods", plan.small),
                &|f| {
                    f.restart_small
                        .map(|r| dur(r.all_ready.as_secs_f64() * 1e3))
                },
                "≤ 50 ms (0.49 s)",
            ),
            (
                format!("restart to ready, {} pods", plan.big),
                &|f| f.restart_big.map(|r| dur(r.all_ready.as_secs_f64() * 1e3)),
                "≤ 100 ms at 200",
            ),
        ]);
        let b = plan.big;
        rows.extend::<[(String, CellFn, &str); 5]>([
            (
                format!("{b} pods: relist (ListPodSandbox + ListContainers), median / p99"),
                &|f| spread(&f.scale.relist),
                "≤ 2 ms",
            ),
            (
                format!("{b} pods: ListContainerStats, median / p99"),
                &|f| spread(&f.scale.stats),
                "≤ 20 ms",
            ),
            (
                format!("{b} pods: CPU per ListContainerStats, daemon / shims"),
                &|f| {
                    f.scale
                        .stats_cpu
                        .map(|(d, s)| format!("{d:.1} / {s:.1} ms"))
                },
                "",
            ),
            (
                format!("{b} pods: daemon RSS"),
                &|f| f.scale.rss.map(rss),
                "≤ 25 MB",
            ),
            (
                format!("{b} pods: shims' PSS per pod"),
                &|f| {
                    f.scale.shims_pss_kb.map(|kb| {
                        format!(
                            "{:.2} MiB",
                            kb as f64 / 1024.0 / f.scale.shims.max(1) as f64
                        )
                    })
                },
                "≤ 0.3 MB",
            ),
        ]);
    }
    if plan.load {
        let k = plan.inflight;
        rows.extend::<[(String, CellFn, &str); 8]>([
            (
                format!(
                    "{k} in flight: pods made per second (RunPodSandbox + create + start), {} pods",
                    plan.load_pods
                ),
                &|f| f.load.pods_per_s.map(|r| format!("{r:.1}/s")),
                "≥ 2.5× containerd",
            ),
            (
                format!("{k} in flight: RunPodSandbox, median / p99"),
                &|f| spread(&f.load.run_pod),
                "",
            ),
            (
                format!("{k} in flight: CreateContainer, median / p99"),
                &|f| spread(&f.load.create),
                "",
            ),
            (
                format!("{k} in flight: StartContainer, median / p99"),
                &|f| spread(&f.load.start),
                "",
            ),
            (
                format!("PodSandboxStatus while {k} run, median / p99"),
                &|f| spread(&f.load.pod_status),
                "≤ 1 ms median",
            ),
            (
                format!("ContainerStatus while {k} run, median / p99"),
                &|f| spread(&f.load.ctr_status),
                "≤ 1 ms median",
            ),
            (
                format!("relist (ListPodSandbox + ListContainers) while {k} run, median / p99"),
                &|f| spread(&f.load.relist),
                "",
            ),
            (
                format!("{k} in flight: StopPodSandbox + RemovePodSandbox, median / p99"),
                &|f| spread(&f.load.stop_remove),
                "",
            ),
        ]);
    }
    if plan.stream {
        rows.extend::<[(String, CellFn, &str); 3]>([
            (
                format!("ExecSync `true`, median of {}", plan.execs),
                &|f| median(&f.exec_sync).map(dur),
                "lower than containerd",
            ),
            (
                format!(
                    "Exec `true` over SPDY (RPC, upgrade, streams, status), median of {}",
                    plan.execs
                ),
                &|f| median(&f.exec_stream).map(dur),
                "lower than containerd",
            ),
            (
                format!(
                    "port-forward, one connection, {} MiB download, median of {}",
                    stream::FILE_MIB,
                    plan.downloads
                ),
                &|f| median(&f.pf_mbps).map(|m| format!("{m:.0} MB/s")),
                "higher than containerd",
            ),
        ]);
    }
    if plan.pull {
        let (small, big) = pull::SIZES.get().copied().unwrap_or_default();
        rows.extend::<[(String, CellFn, &str); 5]>([
            (
                format!(
                    "PullImage busybox ({} gzip, 1 layer), median of {}",
                    mb(small),
                    plan.pulls
                ),
                &|f| median(&f.pull_small).map(dur),
                "faster than containerd (containerd here: 14 ms)",
            ),
            (
                format!(
                    "PullImage busybox, image already present, median of {}",
                    plan.pulls
                ),
                &|f| median(&f.pull_present).map(dur),
                "",
            ),
            (
                format!(
                    "PullImage {} in {} gzip layers (pull + unpack), median of {}",
                    mb(big),
                    pull::BIG_LAYERS,
                    plan.big_pulls
                ),
                &|f| {
                    let v: Vec<f64> = f.pull_big.iter().map(|b| b.ms).collect();
                    median(&v).map(dur)
                },
                "faster than containerd",
            ),
            (
                format!(
                    "daemon RSS growth during that pull (idle → peak VmRSS, 5 ms samples; \
                     largest of {})",
                    plan.big_pulls
                ),
                &growth_cell,
                "≤ 32 MB (berthd)",
            ),
            (
                "highest VmRSS during those pulls, over the daemon's idle RSS at start".into(),
                &peak_over_idle_cell,
                "",
            ),
        ]);
    }
    println!();
    println!("| | {} | {} | target |", column(0), column(1));
    println!("|---|---|---|---|");
    for (label, f, target) in rows {
        println!(
            "| {label} | {} | {} | {target} |",
            cols[0].cell(f),
            cols[1].cell(f)
        );
    }
}

pub(crate) fn print_details(cols: &[Col; 2]) {
    println!();
    println!(
        "Details (min / p90 / max of each median; restarts: RuntimeReady, then all pods READY):"
    );
    for (i, c) in cols.iter().enumerate() {
        let Col::Ran(f, _) = c else { continue };
        for (what, v) in [
            ("RunPodSandbox", &f.run_pod),
            ("create+start", &f.create_start),
            ("stop+remove", &f.stop_remove),
            ("pull busybox", &f.pull_small),
            ("pull, present", &f.pull_present),
            ("ExecSync", &f.exec_sync),
            ("Exec (SPDY)", &f.exec_stream),
        ] {
            if let (Some(lo), Some(p90), Some(hi)) =
                (quantile(v, 0.0), quantile(v, 0.9), quantile(v, 1.0))
            {
                println!(
                    "  {:<15} {what:<14} {} / {} / {}  (n={})",
                    column(i),
                    dur(lo),
                    dur(p90),
                    dur(hi),
                    v.len()
                );
            }
        }
        for (k, b) in f.pull_big.iter().enumerate() {
            println!(
                "  {:<15} big pull #{}    {}, daemon CPU {}; VmRSS {} → {} MiB (+{}; anon {} → {}, file {} → {}), \
                 {} samples{}",
                column(i),
                k + 1,
                dur(b.ms),
                dur(b.cpu_ms),
                mib(b.before.rss),
                mib(b.peak.rss),
                mib(b.growth()),
                mib(b.before.anon),
                mib(b.peak.anon),
                mib(b.before.file),
                mib(b.peak.file),
                b.samples,
                b.hwm
                    .map(|h| format!(", VmHWM during the pull {} MiB", mib(h)))
                    .unwrap_or_default()
            );
        }
        for r in [f.restart_small, f.restart_big].into_iter().flatten() {
            println!(
                "  {:<15} restart, {:>3} pods  RuntimeReady {}, all READY {}",
                column(i),
                r.pods,
                dur(r.runtime_ready.as_secs_f64() * 1e3),
                dur(r.all_ready.as_secs_f64() * 1e3)
            );
        }
    }
    let errors: Vec<(usize, &anyhow::Error)> = cols
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Col::Ran(_, Some(e)) | Col::Failed(e) => Some((i, *e)),
            _ => None,
        })
        .collect();
    if !errors.is_empty() {
        println!("\nERRORS:");
        for (i, e) in errors {
            println!("  {}: {e:#}", column(i));
        }
    }
}
