//! Restart-to-ready: kill -9 a daemon, start it again, and time from its exec until the
//! CRI socket reports RuntimeReady and lists every pod of the run READY. Also daemon RSS.

use super::*;

/// Give up on a restarted daemon after this long.
const READY_LIMIT: Duration = Duration::from_secs(120);
/// Pause between two readiness probes (each probe is a connect or one CRI call).
const PROBE_GAP: Duration = Duration::from_millis(1);

/// Times of one restart, from the new daemon's exec.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) pods: usize,
    /// First Status answer with RuntimeReady true.
    pub(crate) runtime_ready: Duration,
    /// RuntimeReady and ListPodSandbox listing all `pods` READY.
    pub(crate) all_ready: Duration,
}

/// VmRSS of `pid`, kB.
pub(crate) fn rss_kb(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no VmRSS for pid {pid}"))
}

fn runtime_ready(st: &cri::StatusResponse) -> bool {
    st.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
    })
}

impl Side {
    /// kill -9 of the daemon with `self.pods` running, a restart, and the time to ready.
    pub(crate) async fn restart(&mut self) -> Result<Ready> {
        let want = self.pods.len();
        let listed = self.listed().await?;
        ensure!(
            listed.len() == want && listed.iter().all(pod_ready),
            "before the restart: {} of {want} pods listed READY",
            listed.iter().filter(|p| pod_ready(p)).count()
        );
        let t0 = self.daemon.kill_and_respawn()?;
        let r = self.wait_ready(t0, want).await;
        if r.is_err() {
            eprintln!(
                "[bench] {} log tail:\n{}",
                self.name(),
                self.daemon.log_tail()
            );
        }
        r
    }

    /// Probes the socket until it is ready (see the module doc); keeps the new client.
    async fn wait_ready(&mut self, t0: Instant, want: usize) -> Result<Ready> {
        let mut client: Option<Rt> = None;
        let mut runtime_at = None;
        let mut last = String::from("no probe yet");
        loop {
            let elapsed = t0.elapsed();
            if elapsed > READY_LIMIT {
                bail!("not ready {READY_LIMIT:?} after the restart; last probe: {last}");
            }
            let rs = match client.as_mut() {
                Some(rs) => rs,
                None => match connect(&self.socket).await {
                    Ok((rs, _)) => client.insert(rs),
                    Err(e) => {
                        last = format!("{e:#}");
                        tokio::time::sleep(PROBE_GAP).await;
                        continue;
                    }
                },
            };
            if runtime_at.is_none() {
                match rs.status(cri::StatusRequest { verbose: false }).await {
                    Ok(st) if runtime_ready(st.get_ref()) => runtime_at = Some(t0.elapsed()),
                    Ok(st) => last = format!("Status: {:?}", st.into_inner().status),
                    Err(e) => {
                        last = format!("Status: {e}");
                        client = None;
                    }
                }
            }
            if let (Some(runtime_ready), Some(rs)) = (runtime_at, client.as_mut()) {
                match list_run_pods(rs, &self.run).await {
                    Ok(items) if items.len() == want && items.iter().all(pod_ready) => {
                        let all_ready = t0.elapsed();
                        self.rs = rs.clone();
                        return Ok(Ready {
                            pods: want,
                            runtime_ready,
                            all_ready,
                        });
                    }
                    Ok(items) => {
                        last = format!(
                            "ListPodSandbox: {} of {want} READY ({} listed)",
                            items.iter().filter(|p| pod_ready(p)).count(),
                            items.len()
                        )
                    }
                    Err(e) => {
                        last = format!("ListPodSandbox: {e}");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(PROBE_GAP).await;
        }
    }
}

fn pod_ready(p: &cri::PodSandbox) -> bool {
    p.state == cri::PodSandboxState::SandboxReady as i32
}
