//! `berth-bench`: Berth's shim side by side with Debian's Go `containerd-shim-runc-v2`, both
//! driven by ONE private containerd 1.6 (CRI plugin on, two runtime handlers).
//!
//! Measures (issue 2, "Benchmark"): `ctr run --rm` latency, shim RSS for one pod of 1 and of 3
//! containers, PSS per pod with 50 pods, RSS growth after 10,000 execs. Prints figures; asserts
//! nothing about time.
//!
//! ```text
//! cargo shim-release && cargo run -p berth-tests --bin berth-bench -- [--quick]
//! ```
//!
//! Flags: `--shim PATH` (default `$BERTH_SHIM`, else `<target>/release/containerd-shim-berth-v2`),
//! `--quick` (5 latency runs, 5 pods, 500 execs), `--runs N`, `--pods N`, `--execs N`,
//! `--parallel N` (concurrent pod set-ups / exec cycles, default 2).

use anyhow::{bail, ensure, Context, Result};
use berth_cri::v1 as criapi;
use berth_proto::api;
use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::MessageField;
use berth_tests::containerd::Containerd;
use berth_tests::cri::{self, container_config, pod_config};
use berth_tests::ctr::Ctr;
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::procs::field_kb;
use berth_tests::{cmd, task_api, Instance, Runtime, Setup};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The CRI runtime handler (and ctr runtime) for each shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Berth,
    Go,
}

const BOTH: [Which; 2] = [Which::Berth, Which::Go];

impl Which {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Which::Berth => "berth",
            Which::Go => "go runc.v2",
        }
    }
    /// CRI runtime handler name in the instance's config.
    pub(crate) fn handler(self) -> &'static str {
        match self {
            Which::Berth => "berth",
            Which::Go => "runc",
        }
    }
    /// containerd runtime name (`ctr run --runtime`).
    pub(crate) fn runtime(self) -> &'static str {
        match self {
            Which::Berth => Runtime::Berth.name(),
            Which::Go => "io.containerd.runc.v2",
        }
    }
}

/// The second CRI handler: the Go shim of the containerd under test. containerd 1.6 finds
/// Debian's on PATH; 2.x is given its own shim's path (`runtime_path`, which 1.6.20 ignores).
fn go_handler_toml(version: Containerd, go_shim: &Path) -> String {
    match version {
        Containerd::V1_6 => r#"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#
        .to_string(),
        Containerd::V2_1 => format!(
            r#"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  runtime_path = "{}"
"#,
            go_shim.display()
        ),
    }
}

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Time given to shims to settle (Go GC, lazy page faults) before memory is read: past
/// Berth's shim's first trim (3 s after it starts; then one a minute), as it stays.
const SETTLE: Duration = Duration::from_secs(4);
/// Execs run before the "warm" reading (first-use page faults, allocator pools).
const WARMUP_EXECS: usize = 20;

struct Args {
    shim: PathBuf,
    quick: bool,
    runs: usize,
    pods: usize,
    execs: usize,
    parallel: usize,
    containerd: Containerd,
}

fn usage() -> &'static str {
    "usage: berth-bench [--shim PATH] [--quick] [--runs N] [--pods N] [--execs N] [--parallel N]\n\
     \n  --shim PATH    shim under test (default $BERTH_SHIM, else <target>/release/containerd-shim-berth-v2;\n\
     \x20                build it with `cargo shim-release`)\n\
     \x20 --quick        smoke check: 5 latency runs, 5 pods, 500 execs\n\
     \x20 --runs N       `ctr run --rm` runs per shim (default 20)\n\
     \x20 --pods N       pods per shim for the PSS figure (default 50)\n\
     \x20 --execs N      exec cycles per shim (default 10000)\n\
     \x20 --parallel N   concurrent pod set-ups / exec cycles (default 2)\n\
     \x20 --containerd V 1.6 (Debian 12's, default) or 2.1 (Debian sid's, fetched by\n\
     \x20                tests/containerd2.sh); the Go shim compared is the one shipped with it"
}

fn default_shim() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_SHIM") {
        return PathBuf::from(p);
    }
    // This binary lives in <target>/<profile>/berth-bench.
    if let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.to_path_buf()))
    {
        let p = target.join("release/containerd-shim-berth-v2");
        if p.exists() {
            return p;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/containerd-shim-berth-v2")
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        shim: default_shim(),
        quick: false,
        runs: 20,
        pods: 50,
        execs: 10_000,
        parallel: 2,
        containerd: Containerd::V1_6,
    };
    let (mut runs, mut pods, mut execs) = (None, None, None);
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, f: &str| -> Result<usize> {
        let v = v.with_context(|| format!("{f} needs a value\n{}", usage()))?;
        let n: usize = v
            .parse()
            .with_context(|| format!("{f} {v:?}: not a number"))?;
        ensure!(n > 0, "{f} must be > 0");
        Ok(n)
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--shim" => a.shim = PathBuf::from(it.next().context("--shim needs a path")?),
            "--quick" => a.quick = true,
            "--runs" => runs = Some(num(it.next(), "--runs")?),
            "--pods" => pods = Some(num(it.next(), "--pods")?),
            "--execs" => execs = Some(num(it.next(), "--execs")?),
            "--parallel" => a.parallel = num(it.next(), "--parallel")?,
            "--containerd" => {
                a.containerd = match it.next().as_deref() {
                    Some("1.6") => Containerd::V1_6,
                    Some("2.1") => Containerd::V2_1,
                    v => bail!("--containerd {v:?}: 1.6 or 2.1\n{}", usage()),
                }
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    if a.quick {
        (a.runs, a.pods, a.execs) = (5, 5, 500);
    }
    a.runs = runs.unwrap_or(a.runs);
    a.pods = pods.unwrap_or(a.pods);
    a.execs = execs.unwrap_or(a.execs);
    Ok(a)
}

mod execs;
mod latency;
mod memory;
mod pods;
mod report;

use execs::*;
use latency::*;
use memory::*;
use pods::*;
use report::*;

fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    eprintln!("[bench] {name} ...");
    let t0 = Instant::now();
    let r = f();
    eprintln!("[bench] {name}: {:.1}s", t0.elapsed().as_secs_f64());
    r
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let t_start = Instant::now();
    if std::fs::metadata(&args.shim)
        .map(|m| !m.is_file())
        .unwrap_or(true)
    {
        bail!(
            "Berth shim not found at {} — build it with `cd /work/main && cargo shim-release` \
             (or pass --shim PATH / set $BERTH_SHIM)",
            args.shim.display()
        );
    }
    let shim_path = std::fs::canonicalize(&args.shim)?;
    let go_ref = args.containerd.reference_shim()?;
    let go_path = std::fs::canonicalize(&go_ref).with_context(|| {
        format!(
            "Go shim {} of containerd {} missing",
            go_ref.display(),
            args.containerd.label()
        )
    })?;
    let containerd_bin = args.containerd.containerd()?;
    // The harness takes the shim under test from $BERTH_SHIM; never the reference mode.
    std::env::set_var("BERTH_SHIM", &shim_path);
    std::env::remove_var("BERTH_TEST_REFERENCE");

    println!(
        "berth-bench: Berth shim vs containerd {}'s Go containerd-shim-runc-v2, one containerd",
        args.containerd.label()
    );
    println!(
        "command:    {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let ncpu = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| field_kb(&s, "MemTotal:"))
        .unwrap_or(0);
    println!(
        "machine:    nproc {ncpu}, kernel {}, {:.1} GiB RAM, cgroup {}",
        first_line("uname", &["-r"]),
        mem_total as f64 / 1048576.0,
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "v2"
        } else {
            "v1"
        }
    );
    println!(
        "containerd: {}",
        first_line(&containerd_bin.display().to_string(), &["--version"])
    );
    println!("runc:       {}", first_line("runc", &["--version"]));
    println!("berth shim: {}", describe_bin(&shim_path));
    println!(
        "go shim:    {} — {}",
        describe_bin(&go_path),
        all_lines(&go_path.display().to_string(), &["-v"])
    );
    println!(
        "plan:       {} latency runs/shim, pods of 1 and 3 containers, {} pods/shim, {} execs/shim, parallel {}",
        args.runs, args.pods, args.execs, args.parallel
    );

    berth_tests::ensure_hugetlb_v1();
    let inst = phase("start containerd", || {
        Instance::start_with_config(
            Setup::new(Runtime::Berth).with_cri().on(args.containerd),
            &go_handler_toml(args.containerd, &go_path),
        )
    })?;
    let logs = inst.path().join("pods");
    std::fs::create_dir_all(&logs)?;
    let ctx = Ctx {
        inst,
        berth_exe: shim_path,
        go_exe: go_path,
        logs,
        parallel: args.parallel,
        pods: Default::default(),
    };

    let mut r = Results::default();
    let [l0, l1] = phase("ctr run --rm latency", || latency(&ctx, args.runs));
    r.latency = [Some(l0), Some(l1)];
    for (i, w) in BOTH.into_iter().enumerate() {
        r.pod[i] = Some(phase(&format!("one pod ({})", w.label()), || {
            cri::block_on(one_pod(&ctx, w))?
        }));
    }
    for (i, w) in BOTH.into_iter().enumerate() {
        r.many[i] = Some(phase(
            &format!("{} pods ({})", args.pods, w.label()),
            || cri::block_on(many_pods(&ctx, w, args.pods))?,
        ));
    }
    for (i, w) in BOTH.into_iter().enumerate() {
        r.execs[i] = Some(phase(
            &format!("{} execs ({})", args.execs, w.label()),
            || execs(&ctx, w, args.execs),
        ));
    }

    // Teardown: anything a failed phase left, then the harness's leak-checking finish.
    let leftover = cri::block_on(teardown_pods(&ctx));
    let Ctx { inst, .. } = ctx;
    let fin = phase("teardown", || inst.finish());
    print_report(&r, &args);
    println!(
        "\ntotal bench time: {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
    leftover??;
    fin.context("teardown")?;
    let failed = r.latency.iter().any(|x| matches!(x, Some(Err(_))))
        || r.pod.iter().any(|x| matches!(x, Some(Err(_))))
        || r.many.iter().any(|x| matches!(x, Some(Err(_))))
        || r.execs.iter().any(|x| matches!(x, Some(Err(_))));
    if failed {
        bail!("some measurements failed (see ERRORS above)");
    }
    Ok(())
}
