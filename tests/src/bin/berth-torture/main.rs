//! `berth-torture`: kills a CRI runtime's daemon at random moments (or at each failpoint
//! in turn) under load and checks that nothing was lost or leaked. Works against any CRI
//! runtime whose daemon it can start; berthd's failpoints are armed through
//! `BERTH_FAILPOINTS` when asked.
//!
//! ```text
//! berth-torture --socket /run/berth/berth.sock --daemon "berthd --config /etc/berth/config.toml"
//!     --image busybox [--iterations 20] [--failpoints all|none|a,b] [--pod-network]
//!     [--root DIR --state DIR] [--cgroup-parent /berth] [--ipam-dir DIR] [--runc-root DIR] [--seed N]
//!     [--faults kill,shim-kill] [--churners N] [--duration D] [--sample-every S]
//! ```
//!
//! Each iteration (round.rs): two fresh victims start; churn runs (--churners loops of
//! pods and containers made, used and removed, churner.rs; with shim-kill one churn pod's
//! shim is killed, fault_shim_kill.rs); the daemon is killed with SIGKILL after a random
//! delay (or dies at its armed failpoint); what the churners saw is accounted
//! (accounting.rs); while it is down the victims get SIGTERM (exit 42) and SIGKILL (137);
//! the daemon restarts (time to ready measured); then the checks: no container in an
//! unknown state, the long-lived counters running with their pids and every line
//! (numbered, no gap, stamped when produced, also while the daemon was down), the victims'
//! exit codes and times and every line they printed (their last number is also written
//! to a host dir), everything churn made removable, and no leftover beyond the baseline.
//! Prints violations by kind; exits 1 on any.

mod accounting;
mod args;
mod checks;
mod churner;
mod daemon;
mod events;
mod fault_reboot;
mod fault_shim_kill;
mod fault_store;
mod faults;
mod plot;
mod report;
mod round;
mod sampler;
mod workload;

use anyhow::Result;
use args::{parse, Args};
use berth_cri::v1 as cri;
use faults::Fault;
use report::{print_report, Report};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use workload::{Rs, Shape};

/// xorshift64: reproducible kill moments from `--seed`.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The load and the faults of a run beyond the daemon kill (--churners, --faults,
/// --pull, --duration), and the error accounting they share.
struct Load {
    faults: Vec<Fault>,
    churners: usize,
    /// The pull loop's image, then the churners' own.
    pull: Vec<String>,
    /// --duration given: longer iterations (the kill 1-10 s in).
    soak: bool,
    seed: u64,
    errors: accounting::Errors,
    killable: fault_shim_kill::Killable,
}

struct Counter {
    id: String,
    pid: i32,
    log: PathBuf,
}

fn main() -> Result<()> {
    let args = parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let tmp;
    let work = match &args.work {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("berth-torture-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let shape = Shape {
        image: args.image.clone(),
        pod_network: args.pod_network,
        userns: args.userns,
        logs: work.join("logs"),
        run: format!("{}", args.seed % 1_000_000),
    };
    let mut d = daemon::Daemon::new(&args.daemon, &args.socket, work.join("daemon.log"))?;
    let load = Load {
        faults: args.faults.clone(),
        churners: args.churners,
        pull: args.pull.clone(),
        soak: args.duration.is_some(),
        seed: args.seed,
        errors: Default::default(),
        killable: Default::default(),
    };
    let mut rng = Rng(args.seed | 1);
    let mut report = Report::default();
    println!(
        "berth-torture: {}, failpoints {:?}, faults {:?}, {} churners, seed {}",
        args.duration
            .map_or(format!("{} iterations", args.iterations), |t| format!(
                "{t:?}"
            )),
        args.failpoints,
        args.faults,
        args.churners,
        args.seed
    );
    let first = d.start(None).await?;
    println!("daemon ready in {first:?}");
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampling = sampler::spawn(
        d.pid_cell(),
        args.socket.clone(),
        args.sample_every,
        work.join("samples.csv"),
        samples.clone(),
    );
    let mut rs = d.client().await?;
    let (watcher, watching) = events::Watcher::start(args.socket.clone());
    // Containers known to have run their whole life: every transition must be announced.
    let mut lived: Vec<String> = Vec::new();

    // The long-lived workload: counters in pods of their own, one pod for victims.
    let mut counters = Vec::new();
    for i in 0..args.counters {
        let cfg = shape.pod(&format!("counter{i}"), "counter")?;
        let pod = workload::run_pod(&mut rs, &cfg).await?;
        let id = workload::start(
            &mut rs,
            &pod,
            &cfg,
            shape.container("counter", workload::COUNTER),
        )
        .await?;
        let (_, pid) = workload::status(&mut rs, &id).await?;
        counters.push(Counter {
            id,
            pid,
            log: PathBuf::from(&cfg.log_directory).join("counter.log"),
        });
    }
    let vcfg = shape.pod("victims", "victims")?;
    let vpod = workload::run_pod(&mut rs, &vcfg).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scope = checks::Scope {
        socket: args.socket.clone(),
        root: args.root.clone(),
        state: args.state.clone(),
        cgroup_parent: args.cgroup_parent.clone(),
        ipam_dir: args.ipam_dir.clone(),
        runc_root: args.runc_root.clone(),
    };
    let mut store_fault = None;
    if args.faults.contains(&Fault::Store) {
        let log = work.join("daemon.log");
        store_fault = Some(fault_store::StoreFault::new(
            args.root.as_deref(),
            log,
            args.seed,
        )?);
    }
    // Counters' and the victims' pod's own resources are the baseline.
    let mut baseline = scope.snapshot();

    // The daemon-kill rounds take the round faults (kill, store) in turn; shim-kill joins
    // every round; with neither (a phase fault alone) there are no rounds.
    let rounds: Vec<Fault> = args
        .faults
        .iter()
        .copied()
        .filter(|f| f.per_round())
        .collect();
    let iterating = !rounds.is_empty() || args.faults.contains(&Fault::ShimKill);
    // Random iterations (--iterations of them, or until --duration is over), then each
    // failpoint once.
    let deadline = args.duration.map(|t| Instant::now() + t);
    let mut randoms = 0;
    let mut total = 0;
    for iter in 0.. {
        if !iterating {
            break;
        }
        let random = match deadline {
            Some(dl) => Instant::now() < dl,
            None => iter < args.iterations,
        };
        let fp = if random {
            randoms += 1;
            None
        } else {
            match args.failpoints.get(iter - randoms) {
                Some(f) => Some(f.clone()),
                None => break,
            }
        };
        total += 1;
        // A failpoint round only kills; a random round takes the next round fault.
        let fault = match fp {
            Some(_) => Some(Fault::Kill),
            None if rounds.is_empty() => None,
            None => Some(rounds[iter % rounds.len()]),
        };
        let store = store_fault.as_mut().filter(|_| fault == Some(Fault::Store));
        let r = round::iteration(
            &mut d,
            &mut rs,
            &shape,
            &vpod,
            &vcfg,
            &counters,
            fp.as_deref(),
            &mut rng,
            &mut report,
            &mut lived,
            &load,
            store,
            fault.is_some(),
        )
        .await;
        if let Err(e) = r {
            report.add("harness", format!("iteration {iter}: {e:#}"));
            // What the churners saw is not accounted for in a broken iteration.
            load.errors.take();
            // Start over from a running daemon.
            d.kill9();
            d.start(None).await?;
            rs = d.client().await?;
        }
        // Leftovers: everything churn made is gone now; compare with the baseline.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = scope.snapshot();
        for (kind, extra) in checks::leftovers(&baseline, &now) {
            report.add(
                &format!("leftover {kind}"),
                format!(
                    "iteration {iter}: {} more: {:?}",
                    extra.len(),
                    &extra[..extra.len().min(3)]
                ),
            );
        }
        // A leak is reported once, in the iteration that made it.
        baseline = now;
        match deadline {
            Some(_) => eprintln!("[torture] iteration {} done", iter + 1),
            None => eprintln!(
                "[torture] iteration {}/{} done",
                iter + 1,
                args.iterations + args.failpoints.len()
            ),
        }
    }
    // After the kills: a reboot ends the long-lived workload too.
    let reboots = if args.faults.contains(&Fault::Reboot) {
        args.iterations
    } else {
        0
    };
    for n in 0..reboots {
        let r = fault_reboot::round(
            &mut d,
            &mut rs,
            &shape,
            &scope,
            &mut report,
            n,
            &mut baseline,
        )
        .await;
        if let Err(e) = r {
            report.add("harness", format!("reboot {n}: {e:#}"));
            d.kill9();
            d.start(None).await?;
            rs = d.client().await?;
        }
        eprintln!("[torture] reboot {}/{reboots} done", n + 1);
    }
    sampling.abort();
    let samples = samples.lock().unwrap().clone();
    sampler::resources(&samples, &work, &load.killable, &mut report);

    // Teardown: every pod the harness made.
    let mut rs = d.client().await?;
    for p in workload::pods_with(&mut rs, "").await? {
        if let Err(e) = workload::remove_pod(&mut rs, &p.id).await {
            report.add("removable", format!("teardown of {}: {e:#}", p.id));
        }
    }
    lived.extend(counters.iter().map(|c| c.id.clone()));
    // Events: once the stream is quiet, every transition announced once, in order.
    let mut last = usize::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = watcher.count();
        if n == last {
            break;
        }
        last = n;
    }
    watching.abort();
    let (mut bad, redelivered, ids) = watcher.check(&lived);
    if !bad.is_empty() {
        eprintln!(
            "[torture] events: at the end the watcher was {}",
            watcher.doing()
        );
    }
    if let Some(sf) = store_fault.as_mut() {
        bad = sf.sort_events(bad, &lived);
        println!("{}", sf.summary());
    }
    for b in bad {
        report.add("events", b);
    }
    report.events = watcher.count();
    report.event_ids = ids;
    report.redelivered = redelivered;
    d.stop();
    if let Some(image) = args.pull.first() {
        println!(
            "pulls of {image} completed: {} (first cut one: {:?})",
            workload::PULLS.load(Ordering::Relaxed),
            workload::PULL_ERROR.lock().unwrap()
        );
    }
    print_report(&report, total + reboots);
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

fn d_socket(d: &daemon::Daemon) -> String {
    d.socket().to_string()
}
