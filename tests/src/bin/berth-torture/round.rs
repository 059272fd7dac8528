//! One kill round (an iteration): two fresh victims, churn, the daemon killed (or dying at
//! its armed failpoint, or its store damaged first), the victims signalled while it is
//! down, the restart, and the checks that follow it.

use super::*;

static VICTIM_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[allow(clippy::too_many_arguments)]
pub(crate) async fn iteration(
    d: &mut daemon::Daemon,
    rs: &mut Rs,
    shape: &Shape,
    vpod: &str,
    vcfg: &cri::PodSandboxConfig,
    counters: &[Counter],
    failpoint: Option<&str>,
    rng: &mut Rng,
    report: &mut Report,
    lived: &mut Vec<String>,
    load: &Load,
    mut store: Option<&mut fault_store::StoreFault>,
    daemon_kill: bool,
) -> Result<()> {
    // Unique per run: a victim's log file is named after it, and a repeated name would
    // append to an earlier victim's log.
    let tag = VICTIM_SEQ.fetch_add(1, Ordering::Relaxed);
    let mut victims = vec![
        workload::start_victim(rs, shape, vpod, vcfg, &format!("term{tag}"), libc::SIGTERM).await?,
        workload::start_victim(rs, shape, vpod, vcfg, &format!("kill{tag}"), libc::SIGKILL).await?,
    ];
    if let Some(f) = failpoint {
        // Armed only now (a clean SIGTERM restart: pods stay), so the victims' own
        // create and start do not trip it.
        d.stop();
        d.start(Some(&format!("{f}=panic"))).await?;
        *rs = d.client().await?;
    }
    let known = match store.as_deref_mut() {
        Some(sf) => Some(sf.before(rs, shape, vpod, vcfg).await?),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = churner::Ctx {
        socket: d_socket(d),
        shape: shape.clone(),
        stop: stop.clone(),
        errors: load.errors.clone(),
        killable: load.killable.clone(),
        seed: load.seed ^ ((tag as u64) << 20),
        hold_ms: if load.soak { 1000 } else { 200 },
    };
    let mut churn: Vec<_> = (0..load.churners)
        .map(|n| churner::spawn(ctx.clone(), n, load.pull.get(n + 1).cloned()))
        .collect();
    if let Some(image) = load.pull.first() {
        churn.push(workload::pull_churn(
            d_socket(d),
            image.to_string(),
            stop.clone(),
            load.errors.clone(),
        ));
    }
    let mut kill_at = None;
    match failpoint {
        None => {
            let delay = if load.soak {
                1000 + rng.below(9000)
            } else {
                50 + rng.below(400)
            };
            // shim-kill: one churn pod's shim at a random moment before the daemon's.
            let shim_kill = load.faults.contains(&Fault::ShimKill).then(|| {
                let (at, pick) = (rng.below(delay), rng.below(1 << 32));
                let (k, socket) = (load.killable.clone(), d_socket(d));
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(at)).await;
                    k.inject(socket, pick, Duration::from_millis(delay - at))
                        .await
                })
            });
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if let Some(t) = shim_kill {
                t.abort();
            }
            if daemon_kill {
                kill_at = Some(now_ns());
                d.kill9();
                report.kills += 1;
            }
        }
        Some(f) if f.starts_with("shim.") => {
            // A shim dies there (its log reaches the daemon's); then the daemon is killed
            // too, so recovery also meets the dead shims.
            if d.log_within(&format!("failpoint {f} panic"), Duration::from_secs(15))
                .await
            {
                report.failpoints_hit += 1;
            } else {
                report.failpoints_missed.push(f.to_string());
                report.add("failpoint", format!("{f}: no shim died there"));
            }
            kill_at = Some(now_ns());
            d.kill9();
        }
        Some(f) => {
            // A death counts only if it was this failpoint's (not a crash elsewhere).
            if d.died_within(Duration::from_secs(15)).await
                && d.log_contains(&format!("failpoint {f} panic"))
            {
                report.failpoints_hit += 1;
            } else {
                report.failpoints_missed.push(f.to_string());
                report.add("failpoint", format!("{f}: berthd did not abort there"));
                d.kill9();
            }
            kill_at = Some(now_ns());
        }
    }
    let down_at = now_ns();
    stop.store(true, Ordering::Relaxed);
    // While the daemon is down: the victims are signalled.
    for v in victims.iter_mut() {
        v.killed_at = now_ns();
        unsafe {
            libc::kill(v.pid, v.signal);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in churn {
        c.abort();
    }
    if let Some(sf) = store.as_deref_mut() {
        sf.damage()?;
    }
    load.killable.reset_running();
    accounting::account(&load.errors, &load.killable, kill_at, failpoint, report);
    let up_at = now_ns();
    if kill_at.is_some() {
        let ready = d.start(None).await?;
        eprintln!(
            "[torture] ready again in {ready:?}{}",
            failpoint
                .map(|f| format!(" (after {f})"))
                .unwrap_or_default()
        );
        report.ready.push(ready);
        *rs = d.client().await?;
    }
    let shim_killed = load.killable.killed();

    // Nothing unknown.
    let all = rs
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    for c in &all {
        if c.state == cri::ContainerState::ContainerUnknown as i32 {
            report.add(
                "unknown",
                format!("container {} is CONTAINER_UNKNOWN", c.id),
            );
        }
        // Nothing the harness did explains these: recovery guessed.
        let Ok(r) = rs
            .container_status(cri::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: true,
            })
            .await
        else {
            continue;
        };
        let r = r.into_inner();
        let reason = r.status.map(|s| s.reason).unwrap_or_default();
        // ShimDied is the truth when the harness made shims die (shim failpoints).
        let shims_died = failpoint.is_some_and(|f| f.starts_with("shim."));
        if matches!(reason.as_str(), "StartInterrupted" | "ShimUnreachable")
            || (reason == "ShimDied" && !shims_died && !shim_killed.contains_key(&c.pod_sandbox_id))
        {
            report.add("unknown", format!("container {}: reason {reason}", c.id));
        }
        let op = r
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .map(|v| v["op"].clone())
            .unwrap_or(serde_json::Value::Null);
        if !op.is_null() {
            report.add(
                "intent left",
                format!("container {}: op {op} after recovery", c.id),
            );
        }
    }
    // Counters: untouched, every line, lines stamped during the downtime.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for c in counters {
        let (st, pid) = workload::status(rs, &c.id).await?;
        if st.state != cri::ContainerState::ContainerRunning as i32 || pid != c.pid {
            report.add(
                "untouched",
                format!(
                    "counter {}: state {} pid {pid} (was {})",
                    c.id, st.state, c.pid
                ),
            );
        }
        let lines = checks::numbered_lines(&c.log)?;
        report.lines += lines.len() as u64;
        if let Some(b) = checks::first_break(&lines) {
            report.add("log", format!("counter {}: {b}", c.id));
        }
        if kill_at.is_some() && !lines.iter().any(|(ts, _)| *ts > down_at && *ts < up_at) {
            report.add(
                "log",
                format!(
                    "counter {}: no line stamped while the daemon was down",
                    c.id
                ),
            );
        }
    }
    // Victims: exit codes, times, and every line they printed.
    for v in &victims {
        let want = if v.signal == libc::SIGTERM { 42 } else { 137 };
        let mut st = workload::status(rs, &v.id).await?.0;
        for _ in 0..100 {
            if st.state == cri::ContainerState::ContainerExited as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            st = workload::status(rs, &v.id).await?.0;
        }
        if st.state != cri::ContainerState::ContainerExited as i32 || st.exit_code != want {
            report.add(
                "victim exit",
                format!(
                    "{}: state {} exit {} (want {want})",
                    v.id, st.state, st.exit_code
                ),
            );
        } else if st.finished_at < v.killed_at - 5_000_000
            || st.finished_at > v.killed_at + 2_000_000_000
        {
            report.add(
                "victim exit",
                format!(
                    "{}: finished_at {} vs signalled at {}",
                    v.id, st.finished_at, v.killed_at
                ),
            );
        }
        let last: u64 = std::fs::read_to_string(v.out.join("last"))?
            .trim()
            .parse()
            .unwrap_or(0);
        let lines = checks::numbered_lines(&v.log)?;
        report.lines += lines.len() as u64;
        let have = lines.last().map(|l| l.1);
        if lines.first().map(|l| l.1) != Some(0) || have.is_none_or(|h| h < last) {
            report.add(
                "log",
                format!(
                    "{}: printed 0..={last}, the log has {:?}..={have:?}",
                    v.id,
                    lines.first().map(|l| l.1)
                ),
            );
        } else if let Some(b) = checks::first_break(&lines) {
            report.add("log", format!("{}: {b}", v.id));
        } else if let Some((ts, _)) = lines.iter().find(|l| l.1 == last) {
            if *ts > v.killed_at + 50_000_000 {
                report.add(
                    "log",
                    format!(
                        "{}: line {last} stamped {} ms after the victim died",
                        v.id,
                        (ts - v.killed_at) / 1_000_000
                    ),
                );
            }
        }
    }
    if let (Some(sf), Some(k)) = (store, known) {
        sf.after(rs, k, report).await?;
    }
    // Everything churn made can be removed (then the pulled images too, which the
    // churners' containers used); the victims go too.
    for p in workload::pods_with(rs, "churn").await? {
        if let Err(e) = workload::remove_pod(rs, &p.id).await {
            report.add("removable", format!("churn pod {}: {e:#}", p.id));
        }
    }
    for image in &load.pull {
        if let Err(e) = workload::remove_image(d.socket(), image).await {
            report.add("removable", format!("image {image}: {e:#}"));
        }
    }
    for v in &victims {
        if let Err(e) = rs
            .remove_container(cri::RemoveContainerRequest {
                container_id: v.id.clone(),
            })
            .await
        {
            report.add("removable", format!("victim {}: {e}", v.id));
        } else {
            lived.push(v.id.clone());
        }
        let _ = std::fs::remove_dir_all(&v.out);
    }
    Ok(())
}
