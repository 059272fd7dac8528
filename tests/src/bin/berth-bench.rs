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
use berth_proto::api;
use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::MessageField;
use berth_tests::cri::{self, container_config, pod_config};
use berth_tests::ctr::Ctr;
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::{cmd, shim, task_api, Instance, Runtime, Setup};
use k8s_cri::v1 as criapi;
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
    fn label(self) -> &'static str {
        match self {
            Which::Berth => "berth",
            Which::Go => "go runc.v2",
        }
    }
    /// CRI runtime handler name in the instance's config.
    fn handler(self) -> &'static str {
        match self {
            Which::Berth => "berth",
            Which::Go => "runc",
        }
    }
    /// containerd runtime name (`ctr run --runtime`).
    fn runtime(self) -> &'static str {
        match self {
            Which::Berth => Runtime::Berth.name(),
            Which::Go => "io.containerd.runc.v2",
        }
    }
}

/// The second CRI handler: Debian's Go shim, resolved by containerd from PATH (`/usr/bin`).
const GO_HANDLER_TOML: &str = r#"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#;

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Time given to shims to settle (Go GC, lazy page faults) before memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// Execs run before the "warm" reading (first-use page faults, allocator pools).
const WARMUP_EXECS: usize = 20;

struct Args {
    shim: PathBuf,
    quick: bool,
    runs: usize,
    pods: usize,
    execs: usize,
    parallel: usize,
}

fn usage() -> &'static str {
    "usage: berth-bench [--shim PATH] [--quick] [--runs N] [--pods N] [--execs N] [--parallel N]\n\
     \n  --shim PATH    shim under test (default $BERTH_SHIM, else <target>/release/containerd-shim-berth-v2;\n\
     \x20                build it with `cargo shim-release`)\n\
     \x20 --quick        smoke check: 5 latency runs, 5 pods, 500 execs\n\
     \x20 --runs N       `ctr run --rm` runs per shim (default 20)\n\
     \x20 --pods N       pods per shim for the PSS figure (default 50)\n\
     \x20 --execs N      exec cycles per shim (default 10000)\n\
     \x20 --parallel N   concurrent pod set-ups / exec cycles (default 2)"
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

// ---------------------------------------------------------------------------------------------
// Memory of shim processes.

/// Memory of one process or a sum over processes, in kB as /proc reports it.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss: u64,
    anon: u64,
    file: u64,
    hwm: u64,
    pss: u64,
    threads: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss: self.rss + o.rss,
            anon: self.anon + o.anon,
            file: self.file + o.file,
            hwm: self.hwm + o.hwm,
            pss: self.pss + o.pss,
            threads: self.threads + o.threads,
        }
    }
}

fn field_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// VmRSS/RssAnon/RssFile/VmHWM/Threads from /proc/<pid>/status, Pss from smaps_rollup.
fn mem_of(pid: i32) -> Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    let f = |k: &str| field_kb(&status, k).with_context(|| format!("no {k} for pid {pid}"));
    Ok(Mem {
        rss: f("VmRSS:")?,
        anon: f("RssAnon:")?,
        file: f("RssFile:")? + field_kb(&status, "RssShmem:").unwrap_or(0),
        hwm: f("VmHWM:")?,
        threads: f("Threads:")?,
        pss: field_kb(&rollup, "Pss:").with_context(|| format!("no Pss for pid {pid}"))?,
    })
}

struct Ctx {
    inst: Instance,
    berth_exe: PathBuf,
    go_exe: PathBuf,
    logs: PathBuf,
    parallel: usize,
    /// CRI pods still to tear down (also on error paths).
    pods: std::sync::Mutex<Vec<String>>,
}

impl Ctx {
    fn exe(&self, w: Which) -> &Path {
        match w {
            Which::Berth => &self.berth_exe,
            Which::Go => &self.go_exe,
        }
    }

    /// Pids of this containerd's shims running the binary of `w`.
    fn shim_pids(&self, w: Which) -> Vec<i32> {
        let want = self.exe(w);
        self.inst
            .shims()
            .into_iter()
            .filter(|p| p.exe.as_deref() == Some(want))
            .map(|p| p.pid)
            .collect()
    }

    fn ctr(&self) -> Ctr {
        self.inst.ctr()
    }

    fn remember_pod(&self, id: &str) {
        self.inst.track_key(id);
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.into());
    }

    fn forget_pod(&self, id: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p != id);
    }
}

/// Growth from `a` to `b` in percent.
fn growth(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) * 100.0 / a.max(1) as f64
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// Phase 1: `ctr run --rm` latency.

fn ctr_run(ctx: &Ctx, mode: &str, w: Which, id: &str, argv: &[&str]) -> Result<cmd::Output> {
    // The same flags for both shims: only the runtime name differs (no runc options).
    let mut a = vec!["run", mode, "--runtime", w.runtime(), BUSYBOX_IMAGE, id];
    a.extend_from_slice(argv);
    ctx.ctr().run(&a, Duration::from_secs(60))
}

fn latency(ctx: &Ctx, runs: usize) -> [Result<Vec<f64>>; 2] {
    let mut out: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut err: [Option<anyhow::Error>; 2] = [None, None];
    // One unmeasured warm-up run each (page cache, snapshotter), then alternate, swapping
    // which shim goes first every round.
    for round in 0..=runs {
        let order = if round % 2 == 0 {
            [0usize, 1]
        } else {
            [1usize, 0]
        };
        for i in order {
            if err[i].is_some() {
                continue;
            }
            let w = BOTH[i];
            let id = ctx.inst.new_id(&format!("lat-{}", w.handler()));
            let t0 = Instant::now();
            let r = ctr_run(ctx, "--rm", w, &id, &["true"]);
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            match r {
                Ok(o) if o.code == 0 => {
                    if round > 0 {
                        out[i].push(ms)
                    }
                }
                Ok(o) => {
                    err[i] = Some(anyhow::anyhow!(
                        "ctr run --rm {id} true: exit {}\nstdout: {}\nstderr: {}",
                        o.code,
                        o.stdout,
                        o.stderr
                    ))
                }
                Err(e) => err[i] = Some(e),
            }
        }
    }
    let [e0, e1] = err;
    let [o0, o1] = out;
    [e0.map_or(Ok(o0), Err), e1.map_or(Ok(o1), Err)]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Phases 2 and 3: pods through containerd's CRI plugin.

type Rt = cri::RuntimeServiceClient<tonic::transport::Channel>;

/// RunPodSandbox with `w`'s handler; the id is remembered for teardown at once.
async fn run_pod(ctx: &Ctx, rt: &mut Rt, w: Which, name: &str) -> Result<String> {
    let pod = pod_config(name, &ctx.logs);
    let id = rt
        .run_pod_sandbox(criapi::RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: w.handler().into(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {name} (handler {})", w.handler()))?
        .into_inner()
        .pod_sandbox_id;
    ctx.remember_pod(&id);
    Ok(id)
}

/// CreateContainer + StartContainer of a sleeping busybox in pod `sandbox` (named `pod_name`).
async fn add_container(
    ctx: &Ctx,
    rt: &mut Rt,
    sandbox: &str,
    pod_name: &str,
    name: &str,
) -> Result<String> {
    let id = rt
        .create_container(criapi::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(container_config(name, BUSYBOX_IMAGE, &["sleep", "3600"])),
            sandbox_config: Some(pod_config(pod_name, &ctx.logs)),
        })
        .await
        .with_context(|| format!("CreateContainer {name} in {pod_name}"))?
        .into_inner()
        .container_id;
    ctx.inst.track_key(&id);
    rt.start_container(criapi::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .with_context(|| format!("StartContainer {name} in {pod_name}"))?;
    Ok(id)
}

async fn remove_pod(ctx: &Ctx, rt: &mut Rt, id: &str) -> Result<()> {
    rt.stop_pod_sandbox(criapi::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .with_context(|| format!("StopPodSandbox {id}"))?;
    rt.remove_pod_sandbox(criapi::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .with_context(|| format!("RemovePodSandbox {id}"))?;
    ctx.forget_pod(id);
    Ok(())
}

/// The one shim of `w` (there must be exactly one), read after `SETTLE`.
async fn single_shim_mem(ctx: &Ctx, w: Which) -> Result<Mem> {
    tokio::time::sleep(SETTLE).await;
    let pids = ctx.shim_pids(w);
    ensure!(
        pids.len() == 1,
        "expected exactly one {} shim process for the pod, found pids {pids:?}",
        w.label()
    );
    mem_of(pids[0])
}

/// One pod per shim: sandbox + 1 container, then + 2 more (3 containers). Returns the shim's
/// memory at 1 and at 3 containers.
async fn one_pod(ctx: &Ctx, w: Which) -> Result<(Mem, Mem)> {
    let (mut rt, _) = cri::connect(&ctx.inst.address).await?;
    let name = format!("single-{}", w.handler());
    let sb = run_pod(ctx, &mut rt, w, &name).await?;
    let res: Result<(Mem, Mem)> = async {
        add_container(ctx, &mut rt, &sb, &name, "c1").await?;
        let m1 = single_shim_mem(ctx, w).await?;
        add_container(ctx, &mut rt, &sb, &name, "c2").await?;
        add_container(ctx, &mut rt, &sb, &name, "c3").await?;
        let m3 = single_shim_mem(ctx, w).await?;
        Ok((m1, m3))
    }
    .await;
    let down = remove_pod(ctx, &mut rt, &sb).await;
    let r = res?;
    down?;
    Ok(r)
}

struct PodsFigure {
    pods: usize,
    shims: usize,
    total: Mem,
    up: Duration,
    down: Duration,
}

/// `n` pods (sandbox + 1 sleeping container each) on `w`, set up `ctx.parallel` at a time;
/// sums the memory of every shim process of `w`, then tears the pods down.
async fn many_pods(ctx: &Ctx, w: Which, n: usize) -> Result<PodsFigure> {
    let t0 = Instant::now();
    let next = &AtomicUsize::new(0);
    let workers = (0..ctx.parallel.min(n)).map(move |_| async move {
        let (mut rt, _) = cri::connect(&ctx.inst.address).await?;
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= n {
                return anyhow::Ok(());
            }
            let name = format!("many-{}-{i}", w.handler());
            let sb = run_pod(ctx, &mut rt, w, &name).await?;
            add_container(ctx, &mut rt, &sb, &name, "c1").await?;
        }
    });
    let setup = join_all(workers).await.into_iter().collect::<Result<()>>();
    let up = t0.elapsed();
    let measured = match setup {
        Ok(()) => {
            tokio::time::sleep(SETTLE).await;
            let pids = ctx.shim_pids(w);
            let mut total = Mem::default();
            let mut err = None;
            for &p in &pids {
                match mem_of(p) {
                    Ok(m) => total = total + m,
                    Err(e) => err = Some(e),
                }
            }
            match err {
                Some(e) => Err(e),
                None if pids.len() != n => Err(anyhow::anyhow!(
                    "{n} pods on {} but {} shim processes: {pids:?}",
                    w.label(),
                    pids.len()
                )),
                None => Ok((pids.len(), total)),
            }
        }
        Err(e) => Err(e),
    };
    let t1 = Instant::now();
    let down = teardown_pods(ctx).await;
    let down_time = t1.elapsed();
    let (shims, total) = measured?;
    down?;
    Ok(PodsFigure {
        pods: n,
        shims,
        total,
        up,
        down: down_time,
    })
}

/// Stops and removes every remembered pod, `ctx.parallel` at a time; returns the first error.
async fn teardown_pods(ctx: &Ctx) -> Result<()> {
    let ids: Vec<String> = ctx.pods.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let next = &AtomicUsize::new(0);
    let ids = &ids;
    let workers = (0..ctx.parallel.clamp(1, ids.len().max(1))).map(move |_| async move {
        let (mut rt, _) = cri::connect(&ctx.inst.address).await?;
        let mut first = Ok(());
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(id) = ids.get(i) else {
                return first;
            };
            if let Err(e) = remove_pod(ctx, &mut rt, id).await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
    });
    join_all(workers).await.into_iter().collect::<Result<()>>()
}

/// Polls every future to completion concurrently on the current task (no `futures` crate).
async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------------
// Phase 4: execs straight over the shim's ttrpc socket (as containerd's task service sends them).

struct ExecFigure {
    n: usize,
    before: Mem,
    warm: Mem,
    after: Mem,
    /// VmRSS (kB) after each quarter of the measured execs.
    quarters: Vec<u64>,
    secs: f64,
}

fn exec_spec() -> Any {
    let process = serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["true"],
        "env": [PATH_ENV],
        "cwd": "/",
    });
    Any {
        type_url: PROCESS_TYPE_URL.into(),
        value: process.to_string().into_bytes(),
        ..Default::default()
    }
}

/// Exec (null IO) + Wait (sent first, as containerd does) + Start + Delete of one `true`.
async fn exec_cycle(
    client: &berth_proto::ttrpc::r#async::Client,
    ns: &str,
    id: &str,
    exec_id: &str,
    spec: &Any,
) -> Result<()> {
    let v2 = task_api::TASK_V2;
    let req = api::ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        spec: MessageField::some(spec.clone()),
        ..Default::default()
    };
    task_api::call::<_, api::Empty>(client, ns, v2, "Exec", &req)
        .await
        .with_context(|| format!("Exec {exec_id}"))?;
    let wait = api::WaitRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    let start = api::StartRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    let (w, s) = tokio::join!(
        task_api::call::<_, api::WaitResponse>(client, ns, v2, "Wait", &wait),
        async {
            tokio::task::yield_now().await;
            task_api::call::<_, api::StartResponse>(client, ns, v2, "Start", &start).await
        }
    );
    s.with_context(|| format!("Start {exec_id}"))?;
    let w = w.with_context(|| format!("Wait {exec_id}"))?;
    ensure!(
        w.exit_status == 0,
        "exec {exec_id} exited {}",
        w.exit_status
    );
    let del = api::DeleteRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    task_api::call::<_, api::DeleteResponse>(client, ns, v2, "Delete", &del)
        .await
        .with_context(|| format!("Delete {exec_id}"))?;
    Ok(())
}

/// `count` exec cycles numbered from `first`, `parallel` in flight; stops at the first error.
async fn exec_batch(
    client: &berth_proto::ttrpc::r#async::Client,
    ns: &str,
    id: &str,
    first: usize,
    count: usize,
    parallel: usize,
) -> Result<()> {
    let spec = &exec_spec();
    let next = &AtomicUsize::new(0);
    let stop = &AtomicBool::new(false);
    let workers = (0..parallel.min(count)).map(move |_| async move {
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= count || stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let exec_id = format!("bench-{}", first + i);
            if let Err(e) = exec_cycle(client, ns, id, &exec_id, spec).await {
                stop.store(true, Ordering::SeqCst);
                return Err(e.context(format!("exec cycle #{} of {count}", first + i + 1)));
            }
        }
    });
    join_all(workers).await.into_iter().collect()
}

fn execs(ctx: &Ctx, w: Which, n: usize) -> Result<ExecFigure> {
    let id = ctx.inst.new_id(&format!("exec-{}", w.handler()));
    ctr_run(ctx, "-d", w, &id, &["sleep", "3600"])?.ok(&format!("ctr run -d {id}"))?;
    let res = execs_on(ctx, &id, n);
    let down = ctx.ctr().kill_and_delete(&id);
    let r = res?;
    down?;
    Ok(r)
}

fn execs_on(ctx: &Ctx, id: &str, n: usize) -> Result<ExecFigure> {
    ctx.ctr()
        .wait_status(id, "RUNNING", Duration::from_secs(20))?;
    let addr = task_api::address_of(&ctx.inst.bundle(id))?;
    let ns = ctx.inst.namespace.clone();
    let parallel = ctx.parallel;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = task_api::connect(&addr).await?;
        let c: api::ConnectResponse = task_api::call(
            &client,
            &ns,
            task_api::TASK_V2,
            "Connect",
            &task_api::connect_req(id),
        )
        .await
        .context("Connect")?;
        let pid = c.shim_pid as i32;
        tokio::time::sleep(SETTLE).await;
        let before = mem_of(pid)?;
        let warm_n = WARMUP_EXECS.min(n);
        exec_batch(&client, &ns, id, 0, warm_n, parallel).await?;
        tokio::time::sleep(SETTLE).await;
        let warm = mem_of(pid)?;
        // Four equal chunks, RSS read (without settling) after each: shows whether growth levels off.
        let rest = n - warm_n;
        let mut quarters = Vec::new();
        let mut done = 0;
        let t0 = Instant::now();
        for q in 1..=4 {
            let upto = rest * q / 4;
            exec_batch(&client, &ns, id, warm_n + done, upto - done, parallel).await?;
            done = upto;
            quarters.push(mem_of(pid)?.rss);
        }
        let secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(SETTLE).await;
        let after = mem_of(pid)?;
        Ok(ExecFigure {
            n,
            before,
            warm,
            after,
            quarters,
            secs,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

fn first_line(program: &str, args: &[&str]) -> String {
    match cmd::run(Command::new(program).args(args), Duration::from_secs(10)) {
        Ok(o) => {
            let s = if o.stdout.trim().is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            s.lines().next().unwrap_or("").trim().to_string()
        }
        Err(e) => format!("unavailable ({e})"),
    }
}

/// Every non-empty output line after the first, joined (e.g. `containerd-shim-runc-v2 -v`).
fn all_lines(program: &str, args: &[&str]) -> String {
    match cmd::run(Command::new(program).args(args), Duration::from_secs(10)) {
        Ok(o) => format!("{}{}", o.stdout, o.stderr)
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("unavailable ({e})"),
    }
}

fn is_static(p: &Path) -> &'static str {
    // A dynamically linked ELF has a PT_INTERP program header.
    let Ok(b) = std::fs::read(p) else {
        return "?";
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return "?";
    }
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a) as usize
    };
    let (phoff, phentsize, phnum) = (u64at(0x20), u16at(0x36), u16at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            return "?";
        }
        if u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) == 3 {
            return "dynamically linked";
        }
    }
    "static"
}

fn describe_bin(p: &Path) -> String {
    let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    format!(
        "{} ({:.2} MiB, {})",
        p.display(),
        size as f64 / 1048576.0,
        is_static(p)
    )
}

#[derive(Default)]
struct Results {
    latency: [Option<Result<Vec<f64>>>; 2],
    pod: [Option<Result<(Mem, Mem)>>; 2],
    many: [Option<Result<PodsFigure>>; 2],
    execs: [Option<Result<ExecFigure>>; 2],
}

fn cell<T>(r: &Option<Result<T>>, f: impl Fn(&T) -> String) -> String {
    match r {
        None => "skipped".into(),
        Some(Ok(v)) => f(v),
        Some(Err(_)) => "ERROR".into(),
    }
}

fn row(label: &str, cells: [String; 2], target: &str) {
    println!("{label:<40} {:>20} {:>20}   {target}", cells[0], cells[1]);
}

fn print_report(r: &Results, a: &Args) {
    println!();
    row(
        "",
        ["berth".into(), "go runc.v2".into()],
        "target (issue 2)",
    );
    println!("{}", "-".repeat(110));
    let lat = |f: fn(&[f64]) -> f64| -> [String; 2] {
        [0, 1].map(|i| cell(&r.latency[i], |v: &Vec<f64>| format!("{:.1}", f(v))))
    };
    let n = [0, 1].map(|i| {
        r.latency[i]
            .as_ref()
            .and_then(|x| x.as_ref().ok())
            .map_or(0, Vec::len)
    });
    row(
        &format!("ctr run --rm true: median ms (n={})", n[0].max(n[1])),
        lat(median),
        "berth <= go",
    );
    row(
        "  min ms",
        lat(|v| v.iter().copied().fold(f64::INFINITY, f64::min)),
        "",
    );
    row(
        "  max ms",
        lat(|v| v.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        "",
    );
    let pod = |k: usize, f: fn(&Mem) -> u64| -> [String; 2] {
        [0, 1].map(|i| {
            cell(&r.pod[i], |m: &(Mem, Mem)| {
                let m = if k == 1 { &m.0 } else { &m.1 };
                format!("{:.2}", mib(f(m)))
            })
        })
    };
    row(
        "shim RSS, pod of 1 container: MiB",
        pod(1, |m| m.rss),
        "berth <= 2 MB (go 13.4)",
    );
    row(
        "  anon / file-backed MiB",
        {
            let c = cell(&r.pod[0], |m: &(Mem, Mem)| {
                format!("{:.2}/{:.2}", mib(m.0.anon), mib(m.0.file))
            });
            let g = cell(&r.pod[1], |m: &(Mem, Mem)| {
                format!("{:.2}/{:.2}", mib(m.0.anon), mib(m.0.file))
            });
            [c, g]
        },
        "",
    );
    row("  PSS MiB", pod(1, |m| m.pss), "");
    row(
        "  threads",
        [0, 1].map(|i| cell(&r.pod[i], |m: &(Mem, Mem)| m.0.threads.to_string())),
        "",
    );
    row("shim RSS, pod of 3 containers: MiB", pod(3, |m| m.rss), "");
    row("  PSS MiB", pod(3, |m| m.pss), "");
    row(
        "  threads",
        [0, 1].map(|i| cell(&r.pod[i], |m: &(Mem, Mem)| m.1.threads.to_string())),
        "",
    );
    let many =
        |f: fn(&PodsFigure) -> String| -> [String; 2] { [0, 1].map(|i| cell(&r.many[i], f)) };
    row(
        &format!("PSS per pod, {} pods: MiB", a.pods),
        many(|p| format!("{:.2}", mib(p.total.pss) / p.pods as f64)),
        "berth <= 0.5 MB (go 2.9)",
    );
    row(
        "  RSS per pod MiB",
        many(|p| format!("{:.2}", mib(p.total.rss) / p.pods as f64)),
        "",
    );
    row(
        "  total shim PSS MiB",
        many(|p| format!("{:.1}", mib(p.total.pss))),
        "",
    );
    row("  shim processes", many(|p| p.shims.to_string()), "");
    row(
        &format!("  set-up / teardown s (parallel {})", a.parallel),
        many(|p| format!("{:.1}/{:.1}", p.up.as_secs_f64(), p.down.as_secs_f64())),
        "",
    );
    let ex = |f: fn(&ExecFigure) -> String| -> [String; 2] { [0, 1].map(|i| cell(&r.execs[i], f)) };
    row(
        "shim RSS before execs: MiB",
        ex(|e| format!("{:.2}", mib(e.before.rss))),
        "",
    );
    row(
        &format!("  after {WARMUP_EXECS} warm-up execs MiB"),
        ex(|e| format!("{:.2}", mib(e.warm.rss))),
        "",
    );
    row(
        &format!("shim RSS after {} execs: MiB", a.execs),
        ex(|e| format!("{:.2}", mib(e.after.rss))),
        "",
    );
    row(
        "RSS growth vs warm-up %",
        ex(|e| format!("{:+.1}", growth(e.warm.rss, e.after.rss))),
        "berth <= 5 % (go ~96 MB)",
    );
    row(
        "  growth vs before execs %",
        ex(|e| format!("{:+.1}", growth(e.before.rss, e.after.rss))),
        "",
    );
    row(
        "  anon/file MiB before execs",
        ex(|e| format!("{:.2}/{:.2}", mib(e.before.anon), mib(e.before.file))),
        "",
    );
    row(
        "  anon/file MiB after execs",
        ex(|e| format!("{:.2}/{:.2}", mib(e.after.anon), mib(e.after.file))),
        "",
    );
    row(
        "  RSS MiB after 1/4, 2/4, 3/4, 4/4",
        ex(|e| {
            e.quarters
                .iter()
                .map(|k| format!("{:.2}", mib(*k)))
                .collect::<Vec<_>>()
                .join(" ")
        }),
        "",
    );
    row(
        "  peak RSS (VmHWM) MiB",
        ex(|e| format!("{:.2}", mib(e.after.hwm))),
        "",
    );
    row(
        &format!("  exec throughput /s (parallel {})", a.parallel),
        ex(|e| format!("{:.1}", (e.n - WARMUP_EXECS.min(e.n)) as f64 / e.secs)),
        "",
    );
    println!("{}", "-".repeat(110));
    println!(
        "MiB = 1024 kB as /proc reports. RSS = VmRSS of /proc/<pid>/status, PSS = Pss of \
         /proc/<pid>/smaps_rollup,\nsummed over the shim processes (matched by executable) of \
         this containerd, read {}s after the last step.\n\
         A CRI pod's shim also serves the sandbox (pause) task: \"pod of 1 container\" = 2 tasks \
         in one shim,\n\"pod of 3\" = the same pod after 2 more containers (4 tasks). Each of the \
         {} pods = sandbox + 1 sleeping busybox.\n\
         Execs: Exec(null IO) + Wait + Start + Delete of `true` over the shim's \
         containerd.task.v2.Task ttrpc socket,\n{} in flight; the first {WARMUP_EXECS} are \
         warm-up; throughput excludes them.",
        SETTLE.as_secs(),
        a.pods,
        a.parallel
    );
    let mut errors = Vec::new();
    for (i, w) in BOTH.iter().enumerate() {
        for (phase, e) in [
            (
                "latency",
                r.latency[i].as_ref().and_then(|x| x.as_ref().err()),
            ),
            ("one pod", r.pod[i].as_ref().and_then(|x| x.as_ref().err())),
            (
                "many pods",
                r.many[i].as_ref().and_then(|x| x.as_ref().err()),
            ),
            ("execs", r.execs[i].as_ref().and_then(|x| x.as_ref().err())),
        ] {
            if let Some(e) = e {
                errors.push(format!("{} / {phase}: {e:#}", w.label()));
            }
        }
    }
    if !errors.is_empty() {
        println!("\nERRORS:");
        for e in errors {
            println!("  {e}");
        }
    }
}

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
    let go_path = std::fs::canonicalize(shim::REFERENCE_SHIM).with_context(|| {
        format!(
            "Go shim {} missing (apt-get install containerd)",
            shim::REFERENCE_SHIM
        )
    })?;
    // The harness takes the shim under test from $BERTH_SHIM; never the reference mode.
    std::env::set_var("BERTH_SHIM", &shim_path);
    std::env::remove_var("BERTH_TEST_REFERENCE");

    println!("berth-bench: Berth shim vs Debian's Go containerd-shim-runc-v2, one containerd");
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
    println!("containerd: {}", first_line("containerd", &["--version"]));
    println!("runc:       {}", first_line("runc", &["--version"]));
    println!("berth shim: {}", describe_bin(&shim_path));
    println!(
        "go shim:    {} — {}",
        describe_bin(&go_path),
        all_lines(shim::REFERENCE_SHIM, &["-v"])
    );
    println!(
        "plan:       {} latency runs/shim, pods of 1 and 3 containers, {} pods/shim, {} execs/shim, parallel {}",
        args.runs, args.pods, args.execs, args.parallel
    );

    berth_tests::ensure_hugetlb_v1();
    let inst = phase("start containerd", || {
        Instance::start_with_config(
            Setup {
                runtime: Runtime::Berth,
                cri: true,
            },
            GO_HANDLER_TOML,
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
