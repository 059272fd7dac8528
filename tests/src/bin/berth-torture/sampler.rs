//! Resource sampling during a run: every few seconds berthd's RSS (VmRSS) and open fd
//! count, the number of its shims and their total PSS, appended to `samples.csv` in
//! --work; at the end, whether berthd stayed flat after warm-up (`judge`), reported with
//! the chart (`resources`).
//!
//! "Flat" across restarts: each berthd (a pid) is a series of its own, and a fresh one
//! starts small and grows while it recovers and serves. A kill every few seconds means no
//! series lives long, so what can grow over the run is what every new berthd carries
//! (its store, records that are never removed, cached state) or what it leaks per call
//! before it dies. So all samples after the warm-up are pooled, in time order, whatever
//! their series; the last third is compared with the first third. With `--faults
//! shim-kill` alone a single berthd lives the whole run and the same rule measures that
//! one process.
//!
//! Compared are the lower quartile, the median and the upper quartile, and growth is
//! when all three grow: the pooled samples are a mixture of fresh berthds (small, few
//! fds) and loaded ones, and the median of a mixture jumps from one mode to the other
//! when the share of fresh samples shifts a little (a slower restart on a busy machine),
//! which is not growth. What outlives a restart (the store, records never removed, files)
//! raises every berthd, fresh or loaded, and a single long-lived berthd that leaks rises
//! as a whole: either moves every quartile.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    pub pid: i32,
    pub rss_kb: u64,
    pub fds: u64,
    pub shims: u64,
    pub shims_pss_kb: u64,
}

pub const CSV_HEADER: &str = "t_s,berthd_pid,berthd_rss_kb,berthd_fds,shims,shims_pss_kb";

/// Reads one sample of `pid` (None if it is gone or not started).
fn sample(t: f64, pid: i32, socket: &str) -> Option<Sample> {
    if pid <= 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = berth_tests::procs::field_kb(&status, "VmRSS:")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let shims = berth_tests::procs::shims_of(socket);
    let shims_pss_kb = shims
        .iter()
        .filter_map(|p| {
            let r = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)).ok()?;
            berth_tests::procs::field_kb(&r, "Pss:")
        })
        .sum();
    Some(Sample {
        t,
        pid,
        rss_kb,
        fds,
        shims: shims.len() as u64,
        shims_pss_kb,
    })
}

/// Samples every `every` until aborted: into `out` and appended to `csv`.
pub fn spawn(
    pid: Arc<AtomicI32>,
    socket: String,
    every: Duration,
    csv: PathBuf,
    out: Arc<Mutex<Vec<Sample>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let _ = std::fs::write(&csv, format!("{CSV_HEADER}\n"));
        loop {
            tokio::time::sleep(every).await;
            let (p, s, t) = (pid.load(Ordering::Relaxed), socket.clone(), t0.elapsed());
            let got = tokio::task::spawn_blocking(move || sample(t.as_secs_f64(), p, &s))
                .await
                .ok()
                .flatten();
            if let Some(s) = got {
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&csv) {
                    let _ = writeln!(
                        f,
                        "{:.1},{},{},{},{},{}",
                        s.t, s.pid, s.rss_kb, s.fds, s.shims, s.shims_pss_kb
                    );
                }
                out.lock().unwrap().push(s);
            }
        }
    })
}

/// The figures of the flatness check.
#[derive(Debug)]
pub struct Flat {
    pub warmup_s: f64,
    pub samples: usize,
    pub series: usize,
    /// Medians (first third, last third) after the warm-up (the verdict uses quartiles).
    pub rss_kb: (u64, u64),
    pub fds: (u64, u64),
    pub pss_per_shim_kb: (u64, u64),
    /// Each figure's quartiles, first third → last third.
    pub quartiles: Vec<String>,
    /// Violations: (kind, detail).
    pub grows: Vec<(String, String)>,
}

/// One figure the check follows: its violation kind, its name in the report, the absolute
/// growth that counts, and how it is read from a sample.
type Figure<'a> = (&'a str, &'a str, u64, &'a dyn Fn(&Sample) -> u64);

/// Lower quartile, median, upper quartile.
fn quartiles(mut v: Vec<u64>) -> [u64; 3] {
    v.sort_unstable();
    let at = |q: usize| v.get(v.len() * q / 4).copied().unwrap_or(0);
    [at(1), at(2), at(3)]
}

/// "Clearly grows": the last third's median exceeds the first third's by more than 20%
/// *and* by more than `abs` (RSS 4 MiB, 10 fds, 1 MiB of PSS per shim); a small
/// absolute wobble or a relative one on a tiny base is not growth.
fn grows(first: u64, last: u64, abs: u64) -> bool {
    last > first + first / 5 && last > first + abs
}

/// The check over samples in time order; warm-up: the first fifth of the run, at most
/// 5 minutes. None with fewer than 6 samples after it.
pub fn judge(samples: &[Sample]) -> Option<Flat> {
    let end = samples.last()?.t;
    let warmup_s = (end / 5.0).min(300.0);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t >= warmup_s).collect();
    if after.len() < 6 {
        return None;
    }
    let third = after.len() / 3;
    let (first, last) = (&after[..third], &after[after.len() - third..]);
    let q = |part: &[&Sample], f: &dyn Fn(&Sample) -> u64| {
        quartiles(part.iter().map(|s| f(s)).collect())
    };
    let pss = |s: &Sample| s.shims_pss_kb / s.shims.max(1);
    let figures: [Figure; 3] = [
        ("rss", "berthd RSS (KiB)", 4096, &|s| s.rss_kb),
        ("fds", "berthd open fds", 10, &|s| s.fds),
        ("shim pss", "PSS per shim (KiB)", 1024, &pss),
    ];
    let mut medians = [(0, 0); 3];
    let mut out = Vec::new();
    let mut quartiles = Vec::new();
    for (i, (kind, what, abs, f)) in figures.into_iter().enumerate() {
        let (a, b) = (q(first, f), q(last, f));
        medians[i] = (a[1], b[1]);
        let line = format!("{what} quartiles {a:?} → {b:?}");
        if (0..3).all(|k| grows(a[k], b[k], abs)) {
            out.push((format!("growth {kind}"), line.clone()));
        }
        quartiles.push(line);
    }
    let [rss_kb, fds, pss_per_shim_kb] = medians;
    let mut pids: Vec<i32> = after.iter().map(|s| s.pid).collect();
    pids.dedup();
    Some(Flat {
        warmup_s,
        samples: after.len(),
        series: pids.len(),
        rss_kb,
        fds,
        pss_per_shim_kb,
        quartiles,
        grows: out,
    })
}

/// The resource figures (and the load's counts) for the report: flat after warm-up
/// (`judge`), the chart next to the CSV.
pub fn resources(
    samples: &[Sample],
    work: &std::path::Path,
    killable: &crate::fault_shim_kill::Killable,
    report: &mut crate::report::Report,
) {
    let (shim_kills, checked, missed) = killable.counts();
    report.extra.push(format!(
        "churners: {} cycles completed, {} calls answered; shim kills {shim_kills}, \
         {checked} of them checked to the end ({missed} moments with no churn pod running)",
        crate::churner::CYCLES.load(Ordering::Relaxed),
        crate::churner::CALLS.load(Ordering::Relaxed),
    ));
    let chart = work.join("samples.svg");
    if let Err(e) = crate::plot::svg(samples, &chart, "berth-torture: berthd and its shims") {
        report.add("harness", format!("{e:#}"));
    }
    let Some(f) = judge(samples) else {
        report.extra.push(format!(
            "resources: {} samples, too few after the warm-up for a verdict",
            samples.len()
        ));
        return;
    };
    let pct = |(a, b): (u64, u64)| (b as f64 - a as f64) * 100.0 / (a.max(1) as f64);
    report.extra.push(format!(
        "resources after a {:.0} s warm-up ({} samples, {} berthd processes; medians of the \
         first and last thirds; growth is judged on the quartiles): berthd RSS {:.1} → \
         {:.1} MiB ({:+.1}%), open fds {} → {} \
         ({:+.1}%), PSS per shim {:.2} → {:.2} MiB ({:+.1}%); {}; samples in {}, chart in {}",
        f.warmup_s,
        f.samples,
        f.series,
        f.rss_kb.0 as f64 / 1024.0,
        f.rss_kb.1 as f64 / 1024.0,
        pct(f.rss_kb),
        f.fds.0,
        f.fds.1,
        pct(f.fds),
        f.pss_per_shim_kb.0 as f64 / 1024.0,
        f.pss_per_shim_kb.1 as f64 / 1024.0,
        pct(f.pss_per_shim_kb),
        if f.grows.is_empty() { "flat" } else { "GROWS" },
        work.join("samples.csv").display(),
        chart.display(),
    ));
    report.extra.push(format!(
        "quartiles (first third → last third): {}",
        f.quartiles.join("; ")
    ));
    for (kind, detail) in f.grows {
        report.add(&kind, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, pid: i32, rss_kb: u64, fds: u64) -> Sample {
        Sample {
            t,
            pid,
            rss_kb,
            fds,
            shims: 4,
            shims_pss_kb: 4 * 2000,
        }
    }

    #[test]
    fn flat_across_restarts_and_growth() {
        // Restarts every 3 samples, each series starting low: flat.
        let flat: Vec<Sample> = (0..60)
            .map(|i| s(i as f64, 100 + i / 3, 20_000 + (i as u64 % 3) * 1000, 40))
            .collect();
        let f = judge(&flat).unwrap();
        assert!(f.grows.is_empty(), "{f:?}");
        assert!(f.series > 10);
        // Every new berthd carrying more: growth of RSS and fds.
        let up: Vec<Sample> = (0..60)
            .map(|i| {
                s(
                    i as f64,
                    100 + i / 3,
                    20_000 + i as u64 * 500,
                    40 + i as u64,
                )
            })
            .collect();
        let kinds: Vec<String> = judge(&up).unwrap().grows.into_iter().map(|g| g.0).collect();
        assert_eq!(kinds, ["growth rss", "growth fds"]);
        // A mixture of fresh berthds (20 MB, 40 fds) and loaded ones (45 MB, 140 fds)
        // whose share of fresh samples drops from 60% to 40%: the median jumps from one
        // mode to the other, the quartiles at either end stay: flat.
        let mixed: Vec<Sample> = (0..100)
            .map(|i| {
                let fresh_share = if i < 50 { 6 } else { 4 };
                let (rss, fds) = if i % 10 < fresh_share {
                    (20_000, 40)
                } else {
                    (45_000, 140)
                };
                s(i as f64, 100 + i / 2, rss, fds)
            })
            .collect();
        let f = judge(&mixed).unwrap();
        assert!(f.fds.1 > f.fds.0 + f.fds.0 / 5, "{f:?}");
        assert!(f.grows.is_empty(), "{f:?}");
        // Too few samples: no verdict.
        assert!(judge(&flat[..5]).is_none());
    }
}
