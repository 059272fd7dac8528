//! The measuring phases in order: idle RSS, warm-up, timed rounds, RSS with many pods,
//! restarts with few and with many pods. A side that fails sits out the later phases.

use super::*;

/// Time given to the daemons (Go GC, lazy frees) before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

/// Live sides in the order of round `r` (alternating who goes first).
pub(crate) fn order(r: usize, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if r % 2 == 1 {
        v.reverse();
    }
    v
}

/// Adds (or removes) pods, alternating between the sides, until each live one has `n`.
async fn resize(sides: &mut [Side], n: usize) {
    loop {
        let mut busy = false;
        for s in sides.iter_mut().filter(|s| s.ok()) {
            let r = match s.pods.len() {
                k if k < n => s.add_pod().await,
                k if k > n => s.drop_pod().await,
                _ => continue,
            };
            busy = true;
            s.note(&format!("resize to {n} pods"), r);
        }
        if !busy {
            return;
        }
    }
}

/// Each live daemon's VmRSS after a settle, into `slot` of its figures.
async fn read_rss(sides: &mut [Side], slot: fn(&mut Figures) -> &mut Option<u64>) {
    tokio::time::sleep(SETTLE).await;
    for s in sides.iter_mut().filter(|s| s.ok()) {
        let r = rss_kb(s.daemon.pid());
        *slot(&mut s.fig) = s.note("read RSS", r);
    }
}

/// One daemon after the other: kill -9, restart, time to ready, into `slot`.
async fn restart_all(sides: &mut [Side], slot: fn(&mut Figures) -> &mut Option<Ready>) {
    for s in sides.iter_mut().filter(|s| s.ok()) {
        eprintln!("[bench] {}: restart with {} pods", s.name(), s.pods.len());
        let r = s.restart().await;
        if let Some(r) = s.note("restart", r) {
            eprintln!("[bench]   ready after {:?}", r.all_ready);
            // berthd logs where its start's time went.
            for what in ["record copies checked", "recovered", "started"] {
                if let Some(line) = s.daemon.last_log_line(what) {
                    eprintln!("[bench]   {line}");
                }
            }
            *slot(&mut s.fig) = Some(r);
        }
    }
}

pub(crate) async fn measure(sides: &mut [Side], plan: &Plan) {
    eprintln!("[bench] idle RSS");
    read_rss(sides, |f| &mut f.rss_idle).await;
    eprintln!("[bench] warm-up round");
    for s in sides.iter_mut() {
        let r = s.round().await;
        s.note("warm-up round", r);
    }
    eprintln!("[bench] {} rounds", plan.rounds);
    for r in 0..plan.rounds {
        for i in order(r, sides.len()) {
            let s = &mut sides[i];
            if !s.ok() {
                continue;
            }
            let x = s.round().await;
            if let Some((run, cs, sr)) = s.note("round", x) {
                s.fig.run_pod.push(run);
                s.fig.create_start.push(cs);
                s.fig.stop_remove.push(sr);
            }
        }
    }
    eprintln!("[bench] {} pods each", plan.many);
    resize(sides, plan.many).await;
    read_rss(sides, |f| &mut f.rss_many).await;
    resize(sides, plan.small).await;
    restart_all(sides, |f| &mut f.restart_small).await;
    eprintln!("[bench] {} pods each", plan.big);
    resize(sides, plan.big).await;
    scale::measure(sides).await;
    restart_all(sides, |f| &mut f.restart_big).await;
}
