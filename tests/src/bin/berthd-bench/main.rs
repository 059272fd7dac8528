//! `berthd-bench`: berthd side by side with the reference containerd 1.6, in one run, both
//! driven by the same gRPC CRI client (berth-cri over tonic).
//!
//! Figures (printed, never asserted): RunPodSandbox, CreateContainer+StartContainer and
//! StopPodSandbox+RemovePodSandbox medians (one pod-network pod with one busybox
//! `sleep 3600` per round), daemon VmRSS idle and with 50 pods running, and restart to
//! ready (kill -9, start again, time from exec until Status says RuntimeReady and
//! ListPodSandbox lists every pod READY) with 5 and with 100 pods. The parallel phase
//! (`load.rs`): 50 pods made 10 at a time while status calls and relists probe, medians and
//! p99s. Then the pull phase
//! (`pull.rs`): PullImage of a ~1 MB busybox image (median of 20) and of a 200 MiB image in
//! 20 layers (median of 3, with the daemon's peak VmRSS during the pull), both built here
//! and pushed once to the reference env's registry at 127.0.0.1:5000. The streaming phase
//! (`stream.rs`): ExecSync and streaming Exec (SPDY) of `true`, median of 100 each, and
//! port-forward throughput of one connection (a 100 MiB download, median of 5).
//!
//! ```text
//! cargo build --release -p berthd && cargo shim-release
//! cargo run --release -p berth-tests --bin berthd-bench -- [--quick] [--berthd-only]
//!     [--pull-only | --no-pull] [--stream-only | --no-stream] [--load-only | --no-load]
//!     [--inflight N] [--runtime runc|crun]
//! ```
//!
//! berthd: `target/release/berthd` (or `$BERTHD`) with the shim beside it, on a private
//! root/state/socket in a temp dir, pods on its own bridge `bbench0` (10.231.7.0/24, no
//! masquerading, deleted at the end), busybox built and imported offline.
//! containerd: the one of the reference environment script `$BERTH_CRI_REFERENCE_ENV` names
//! (required unless `--berthd-only`; the script is not part of this repository), at
//! `/run/anchor-containerd/containerd.sock`; when that socket does not answer, the bench
//! runs `cri-reference-env.sh up` itself and leaves it up. Its restarts reuse the killed
//! daemon's /proc cmdline, environment and cwd and update the script's pid file.
//! Every pod and image the bench creates is removed at the end, also after an error (the
//! images pushed to the registry stay there, under `berth-bench/`).

mod daemon;
mod load;
mod phases;
mod plot;
mod pull;
mod ready;
mod reference;
mod report;
mod scale;
mod side;
mod stream;

use anyhow::{bail, ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::cri::{connect, container_config, pod_config};
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::{cmd, procs};
use daemon::Daemon;
use ready::{rss_kb, Ready};
use report::Col;
use side::{list_run_pods, Figures, Side};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) type Rt = berth_tests::cri::RuntimeServiceClient<tonic::transport::Channel>;

/// The OCI runtime berthd's shims run (`--runtime`).
pub(crate) fn oci_runtime() -> String {
    std::env::var("BERTHD_BENCH_RUNTIME").unwrap_or_else(|_| "runc".into())
}

/// Report column `i`'s name (0 berthd, 1 containerd); a side's `col` indexes it.
pub(crate) fn column(i: usize) -> &'static str {
    match (i, oci_runtime().as_str()) {
        (0, "crun") => "berthd (crun)",
        (0, _) => "berthd",
        _ => "containerd 1.6",
    }
}

/// How many of everything.
pub(crate) struct Plan {
    pub(crate) rounds: usize,
    pub(crate) small: usize,
    pub(crate) many: usize,
    pub(crate) big: usize,
    /// PullImage of the small image, and of the big one.
    pub(crate) pulls: usize,
    pub(crate) big_pulls: usize,
    /// The parallel phase: calls in flight, pods made.
    pub(crate) inflight: usize,
    pub(crate) load_pods: usize,
    /// ExecSync and streaming exec round trips; port-forward downloads.
    pub(crate) execs: usize,
    pub(crate) downloads: usize,
    /// Run the pod phases, the streaming phase, the pull phase.
    pub(crate) pods: bool,
    pub(crate) load: bool,
    pub(crate) stream: bool,
    pub(crate) pull: bool,
    berthd_only: bool,
    /// Where the latency charts go (`plot`), if anywhere.
    svg: Option<std::path::PathBuf>,
}

const USAGE: &str = "usage: berthd-bench [--quick] [--berthd-only] [--pull-only | --no-pull] \
  [--stream-only | --no-stream] [--load-only | --no-load] [--inflight N] [--runtime runc|crun]\n\
  --quick        5 rounds, 5 pods for the 30-pod restart, 10 for the 50- and 200-pod figures,\n\
                 5 + 1 pulls, 20 execs\n\
  --berthd-only  leave the reference containerd alone\n\
  --pull-only    only the pull phase (busybox and the 200 MiB image)\n\
  --no-pull      no pull phase\n\
  --stream-only  only the streaming phase (exec latency, port-forward throughput)\n\
  --no-stream    no streaming phase\n\
  --load-only    only the parallel phase (pods made N at a time while status calls probe)\n\
  --no-load      no parallel phase\n\
  --inflight N   calls in flight in the parallel phase (default 10)\n\
  --runtime R    the OCI runtime berthd's shims run (berthd's runtime.binary; default runc)\n\
  --svg DIR      write the latency distributions (CDF per operation, both runtimes) as\n\
                 DIR/latency-serial.svg and DIR/latency-load.svg";

fn parse_args() -> Result<Plan> {
    let mut p = Plan {
        rounds: 20,
        // Issue 6's restart target is set with 30 pods.
        small: 30,
        many: 50,
        big: 200,
        pulls: 20,
        big_pulls: 3,
        inflight: 10,
        load_pods: 50,
        execs: 100,
        downloads: 5,
        pods: true,
        load: true,
        stream: true,
        pull: true,
        berthd_only: false,
        svg: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runtime" => {
                let r = args.next().unwrap_or_default();
                ensure!(
                    matches!(r.as_str(), "runc" | "crun"),
                    "--runtime runc|crun\n{USAGE}"
                );
                std::env::set_var("BERTHD_BENCH_RUNTIME", r);
            }
            "--quick" => {
                (p.rounds, p.small, p.many, p.big, p.pulls, p.big_pulls) = (5, 5, 10, 10, 5, 1);
                (p.execs, p.downloads, p.load_pods) = (20, 2, 20);
            }
            "--pull-only" => (p.pods, p.load, p.stream) = (false, false, false),
            "--no-pull" => p.pull = false,
            "--stream-only" => (p.pods, p.load, p.pull) = (false, false, false),
            "--load-only" => (p.pods, p.stream, p.pull) = (false, false, false),
            "--no-load" => p.load = false,
            "--inflight" => {
                p.inflight = args.next().unwrap_or_default().parse().unwrap_or(0);
                ensure!(p.inflight > 0, "--inflight N (N > 0)\n{USAGE}");
            }
            "--no-stream" => p.stream = false,
            "--berthd-only" => p.berthd_only = true,
            "--svg" => {
                let dir = args.next().context(format!("--svg DIR\n{USAGE}"))?;
                p.svg = Some(dir.into());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        p.pods || p.load || p.pull || p.stream,
        "those flags leave nothing to run"
    );
    Ok(p)
}

fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    eprintln!("[bench] {name} ...");
    let t0 = Instant::now();
    let r = f();
    eprintln!("[bench] {name}: {:.1}s", t0.elapsed().as_secs_f64());
    r
}

fn first_line(program: &str, args: &[&str]) -> String {
    match cmd::run(Command::new(program).args(args), Duration::from_secs(10)) {
        Ok(o) => o.stdout.lines().next().unwrap_or("").trim().to_string(),
        Err(e) => format!("unavailable ({e})"),
    }
}

fn main() -> Result<()> {
    let plan = parse_args()?;
    let t_start = Instant::now();
    let (bin, shim) = daemon::check_binaries()?;
    println!("berthd-bench: berthd vs containerd 1.6, one CRI client");
    println!(
        "command:    {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "machine:    nproc {}, kernel {}, cgroup {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line("uname", &["-r"]),
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "v2"
        } else {
            "v1"
        }
    );
    println!(
        "berthd:     {} ({})",
        bin.display(),
        daemon::berthd_version()
    );
    println!("shim:       {}", shim.display());
    println!("containerd: {}", first_line("containerd", &["--version"]));
    println!("runc:       {}", first_line("runc", &["--version"]));
    if oci_runtime() != "runc" {
        println!("berthd OCI: {}", first_line(&oci_runtime(), &["--version"]));
    }
    if plan.pods {
        println!(
            "plan:       {} rounds; RSS idle and with {} pods; restarts with {} and {} pods",
            plan.rounds, plan.many, plan.small, plan.big
        );
    }
    if plan.load {
        println!(
            "parallel:   {} pods (RunPodSandbox + CreateContainer + StartContainer), {} in \
             flight, while PodSandboxStatus, ContainerStatus and a relist probe every 10 ms",
            plan.load_pods, plan.inflight
        );
    }
    if plan.stream {
        println!(
            "streaming:  {} x ExecSync and Exec of `true`; {} x a {} MiB download through \
             one port-forward connection",
            plan.execs,
            plan.downloads,
            stream::FILE_MIB
        );
    }
    if plan.pull {
        println!(
            "pulls:      {} x {}, {} x {} ({} layers), from 127.0.0.1:5000",
            plan.pulls,
            pull::small_ref(),
            plan.big_pulls,
            pull::big_ref(),
            pull::BIG_LAYERS
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tmp = tempfile::Builder::new()
        .prefix("berthd-bench-")
        .tempdir_in("/tmp")?;
    let run = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() % 100_000)
    );

    let mut sides: Vec<Side> = Vec::new();
    let mut setup_err: [Option<anyhow::Error>; 2] = [None, None];
    let mut bridge = None;
    let berthd = phase("start berthd", || -> Result<Side> {
        let (d, b) = daemon::start_berthd()?;
        bridge = Some(b);
        let sock = d.socket.display().to_string();
        let (rs, _) = rt.block_on(d.client())?;
        Ok(Side::new(
            0,
            &sock,
            rs,
            BUSYBOX_IMAGE,
            Daemon::Berthd(Box::new(d)),
        ))
    });
    match berthd {
        Ok(s) => sides.push(s),
        Err(e) => setup_err[0] = Some(e),
    }
    if !plan.berthd_only {
        match phase("reference containerd", || rt.block_on(reference::open())) {
            Ok((rs, c)) => {
                let mut s = Side::new(
                    1,
                    reference::SOCKET,
                    rs,
                    reference::IMAGE,
                    Daemon::Reference(c),
                );
                let all =
                    rt.block_on(s.rs.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }));
                println!(
                    "reference:  containerd pid {}, {} pod(s) of others present",
                    s.daemon.pid(),
                    all.map_or(0, |r| r.into_inner().items.len())
                );
                sides.push(s);
            }
            Err(e) => setup_err[1] = Some(e),
        }
    }
    for s in &mut sides {
        s.logs = tmp.path().join(format!("logs-{}", s.col));
        s.run.clone_from(&run);
    }

    if plan.pods {
        rt.block_on(phases::measure(&mut sides, &plan));
    }
    if plan.load {
        rt.block_on(load::measure(&mut sides, &plan));
    }
    if plan.stream {
        rt.block_on(stream::measure(&mut sides, &plan));
    }

    // Teardown on every path: this run's pods on both runtimes (before the pull phase, which
    // measures the daemons without pods), the pulled images, then berthd (leak-checked).
    for s in &mut sides {
        let r = phase(&format!("teardown ({})", s.name()), || {
            rt.block_on(s.teardown())
        });
        if let Ok(n) = r {
            eprintln!("[bench] {}: removed {n} pod(s)", s.name());
        }
        s.note("teardown", r);
    }
    if plan.pull {
        rt.block_on(pull::measure(&mut sides, &plan, tmp.path()));
        phase("remove the pulled images", || {
            rt.block_on(pull::cleanup(&mut sides))
        });
    }
    for s in &mut sides {
        if let Daemon::Berthd(d) = std::mem::replace(&mut s.daemon, Daemon::Gone) {
            let r = d.finish();
            s.note("berthd finish (leak check)", r);
        }
    }
    drop(bridge);

    let cols: [Col; 2] = std::array::from_fn(|i| {
        if let Some(s) = sides.iter().find(|s| s.col == i) {
            Col::Ran(&s.fig, s.error.as_ref())
        } else if let Some(e) = &setup_err[i] {
            Col::Failed(e)
        } else {
            Col::Skipped("skipped")
        }
    });
    report::print_table(&cols, &plan);
    report::print_details(&cols);
    if let Some(dir) = &plan.svg {
        match plot::write(&cols, dir) {
            Ok(files) => {
                for f in files {
                    println!("chart: {}", f.display());
                }
            }
            Err(e) => eprintln!("[bench] charts not written: {e:#}"),
        }
    }
    println!(
        "\ntotal bench time: {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
    if sides.iter().any(|s| s.error.is_some()) || setup_err.iter().any(Option::is_some) {
        bail!("some measurements failed (see ERRORS above)");
    }
    Ok(())
}
