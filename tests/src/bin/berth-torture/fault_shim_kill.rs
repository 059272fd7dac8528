//! The `shim-kill` fault: kill -9 of a running churn pod's shim at a random moment, and
//! its own checks. Only pods a churner made and published as running are candidates
//! (never the counters' or the victims'); the shim is found through /proc by its command
//! line (`-id <pod> -address <socket>`), never by a remembered pid. After the kill the
//! pod's container must end EXITED with a reason (ShimDied, exit 137, or the exit the
//! shim recorded) and the pod must become NotReady; calls on that pod that fail from the
//! kill on are classified as injected (accounting.rs).

use crate::workload::Rs;
use berth_cri::v1 as cri;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inner {
    /// Churner number → (pod, container) while its container runs.
    running: BTreeMap<usize, (String, String)>,
    /// Pods whose shim was killed, and when (ns).
    killed: BTreeMap<String, i64>,
    kills: usize,
    /// Kills after which the pod was checked (container EXITED with a reason, pod
    /// NotReady) before a daemon kill cut the check.
    checked: usize,
    /// Moments at which no churn pod was running (or its shim was not found).
    missed: usize,
}

/// Shared between the churners (which publish their running pods) and the injector.
#[derive(Clone, Default)]
pub struct Killable(Arc<Mutex<Inner>>);

impl Killable {
    pub fn publish(&self, churner: usize, pod: &str, ctr: &str) {
        self.0
            .lock()
            .unwrap()
            .running
            .insert(churner, (pod.into(), ctr.into()));
    }

    /// Withdraws the churner's pod: Some(kill time) if its shim was killed.
    pub fn withdraw(&self, churner: usize) -> Option<i64> {
        let mut g = self.0.lock().unwrap();
        let (pod, _) = g.running.remove(&churner)?;
        g.killed.get(&pod).copied()
    }

    pub fn killed(&self) -> BTreeMap<String, i64> {
        self.0.lock().unwrap().killed.clone()
    }

    /// (shims killed, of them checked, moments with nothing to kill).
    pub fn counts(&self) -> (usize, usize, usize) {
        let g = self.0.lock().unwrap();
        (g.kills, g.checked, g.missed)
    }

    pub fn count_checked(&self) {
        self.0.lock().unwrap().checked += 1;
    }

    /// Clears the running set (the churners of an iteration are gone).
    pub fn reset_running(&self) {
        self.0.lock().unwrap().running.clear();
    }

    /// Kills the shim of the `pick`-th running churn pod (modulo their number). Under
    /// the lock, so a churner cannot withdraw (and remove) the pod in between: a churner
    /// that withdraws afterwards learns of the kill. Blocking (/proc): call it from
    /// spawn_blocking. Returns the pod whose shim died.
    pub fn kill_one(&self, socket: &str, pick: u64) -> Option<String> {
        let mut g = self.0.lock().unwrap();
        let candidates: Vec<(String, String)> = g
            .running
            .values()
            .filter(|(pod, _)| !g.killed.contains_key(pod))
            .cloned()
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (pod, _) = &candidates[(pick % candidates.len() as u64) as usize];
        let shim = berth_tests::procs::shims_of(socket)
            .into_iter()
            .find(|p| p.argv.windows(2).any(|w| w[0] == "-id" && w[1] == *pod))?;
        let at = crate::now_ns();
        berth_tests::procs::signal(shim.pid, libc::SIGKILL).ok()?;
        g.killed.insert(pod.clone(), at);
        g.kills += 1;
        Some(pod.clone())
    }

    /// Tries for up to `limit` to kill a churn pod's shim (a churner may be between
    /// pods); counts a miss if none was running.
    pub async fn inject(&self, socket: String, pick: u64, limit: Duration) -> Option<String> {
        let t0 = Instant::now();
        loop {
            let (k, s) = (self.clone(), socket.clone());
            if let Ok(Some(pod)) = tokio::task::spawn_blocking(move || k.kill_one(&s, pick)).await {
                eprintln!("[torture] shim-kill: killed the shim of churn pod {pod}");
                return Some(pod);
            }
            if t0.elapsed() > limit {
                self.0.lock().unwrap().missed += 1;
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The checks after a churn pod's shim was killed: its container EXITED with a reason
/// (bounded wait), and the pod NotReady. Ok(problems) (empty when all is well); Err
/// when a call failed (the caller accounts for it).
pub async fn verify(rs: &mut Rs, pod: &str, ctr: &str) -> Result<Vec<String>, tonic::Status> {
    let mut problems = Vec::new();
    let t0 = Instant::now();
    let st = loop {
        let st = rs
            .container_status(cri::ContainerStatusRequest {
                container_id: ctr.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        if st.state == cri::ContainerState::ContainerExited as i32
            || t0.elapsed() > Duration::from_secs(15)
        {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recorded = st.reason == "ShimDied" && st.exit_code == 137
        || !st.reason.is_empty()
            && !matches!(st.reason.as_str(), "ShimUnreachable" | "StartInterrupted");
    if st.state != cri::ContainerState::ContainerExited as i32 || !recorded {
        problems.push(format!(
            "container {ctr} of pod {pod}: state {} exit {} reason {:?} {:?} after its shim was killed",
            st.state,
            st.exit_code,
            st.reason,
            t0.elapsed()
        ));
    }
    let p = rs
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    if p.state != cri::PodSandboxState::SandboxNotready as i32 {
        problems.push(format!(
            "pod {pod}: state {} after its shim was killed",
            p.state
        ));
    }
    Ok(problems)
}
