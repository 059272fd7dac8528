//! The printed report.

use super::*;

pub(crate) fn first_line(program: &str, args: &[&str]) -> String {
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
pub(crate) fn all_lines(program: &str, args: &[&str]) -> String {
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

pub(crate) fn is_static(p: &Path) -> &'static str {
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

pub(crate) fn describe_bin(p: &Path) -> String {
    let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    format!(
        "{} ({:.2} MiB, {})",
        p.display(),
        size as f64 / 1048576.0,
        is_static(p)
    )
}

#[derive(Default)]
pub(crate) struct Results {
    pub(crate) latency: [Option<Result<Vec<f64>>>; 2],
    pub(crate) pod: [Option<Result<(Mem, Mem)>>; 2],
    pub(crate) many: [Option<Result<PodsFigure>>; 2],
    pub(crate) execs: [Option<Result<ExecFigure>>; 2],
}

pub(crate) fn cell<T>(r: &Option<Result<T>>, f: impl Fn(&T) -> String) -> String {
    match r {
        None => "skipped".into(),
        Some(Ok(v)) => f(v),
        Some(Err(_)) => "ERROR".into(),
    }
}

pub(crate) fn row(label: &str, cells: [String; 2], target: &str) {
    println!("{label:<40} {:>20} {:>20}   {target}", cells[0], cells[1]);
}

pub(crate) fn print_report(r: &Results, a: &Args) {
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
