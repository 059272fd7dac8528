//! Phase 1: `ctr run --rm` latency.

use super::*;

pub(crate) fn ctr_run(
    ctx: &Ctx,
    mode: &str,
    w: Which,
    id: &str,
    argv: &[&str],
) -> Result<cmd::Output> {
    // The same flags for both shims: only the runtime differs (no runc options). Under
    // containerd 2.x the Go shim is named by path: its runtime-path cache already holds
    // /usr/bin's 1.6 shim for `io.containerd.runc.v2` (resolved when CRI starts).
    let go_path = ctx.go_exe.display().to_string();
    let runtime = match w {
        Which::Go if ctx.inst.containerd.is_v2() => go_path.as_str(),
        _ => w.runtime(),
    };
    let mut a = vec!["run", mode, "--runtime", runtime, BUSYBOX_IMAGE, id];
    a.extend_from_slice(argv);
    ctx.ctr().run(&a, Duration::from_secs(60))
}

pub(crate) fn latency(ctx: &Ctx, runs: usize) -> [Result<Vec<f64>>; 2] {
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

pub(crate) fn median(v: &[f64]) -> f64 {
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
