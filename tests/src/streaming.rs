//! What the streaming suites (exec, attach, port-forward) share: a pod's PortForward URL,
//! sha256 for reports, polling, berthd's open fds and resident memory for judging leaks,
//! and whether its CRI socket still answers.

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

use crate::berthd::Berthd;
pub use crate::cri::Rs;
use berth_cri::v1 as cri;

/// PortForward's URL for the pod `pod_id`.
pub async fn port_forward_url(rs: &Rs, pod_id: &str) -> Result<String> {
    let url = rs
        .clone()
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: vec![],
        })
        .await
        .context("PortForward")?
        .into_inner()
        .url;
    ensure!(
        url.starts_with("http://127.0.0.1:") && url.contains("/portforward/"),
        "PortForward URL {url:?}"
    );
    Ok(url)
}

/// Lower-case hex sha256 of `b`.
pub fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// The targets of `pid`'s open fds, sorted.
pub fn open_fds(pid: i32) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let target = std::fs::read_link(e.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        v.push(target);
    }
    v.sort();
    Ok(v)
}

/// berthd's open fds once their count has held still for half a second (the sockets and
/// FIFOs of sessions that just ended are closed by then).
pub async fn settled_fds(d: &Berthd) -> Result<Vec<String>> {
    let mut last = open_fds(d.pid())?;
    let mut still = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = open_fds(d.pid())?;
        still = if now.len() == last.len() {
            still + 1
        } else {
            0
        };
        last = now;
        if still >= 5 {
            break;
        }
    }
    Ok(last)
}

/// Polls `cond` every 100 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// berthd's open fds (waiting up to `within` for them to settle at most `slack` above
/// `before`): Err naming what was added.
pub async fn ensure_fds_settle(
    d: &Berthd,
    before: &[String],
    slack: usize,
    within: Duration,
) -> Result<()> {
    let pid = d.pid();
    let ok = eventually(within, || {
        open_fds(pid)
            .map(|f| f.len() <= before.len() + slack)
            .unwrap_or(false)
    })
    .await;
    if !ok {
        let now = open_fds(pid)?;
        let mut added = now.clone();
        for b in before {
            if let Some(i) = added.iter().position(|a| a == b) {
                added.remove(i);
            }
        }
        bail!(
            "berthd holds {} fds, {} before; added: {added:?}",
            now.len(),
            before.len()
        );
    }
    Ok(())
}

/// `pid`'s resident set (VmRSS), in KiB.
pub fn rss_kb(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    crate::procs::field_kb(&status, "VmRSS:").context("no VmRSS")
}

/// Checks that berthd answers Version and ListPodSandbox within `within` each.
pub async fn ensure_cri_answers(rs: &Rs, within: Duration) -> Result<()> {
    let mut rs = rs.clone();
    tokio::time::timeout(within, rs.version(cri::VersionRequest::default()))
        .await
        .context("Version did not answer in time")?
        .context("Version")?;
    tokio::time::timeout(
        within,
        rs.list_pod_sandbox(cri::ListPodSandboxRequest::default()),
    )
    .await
    .context("ListPodSandbox did not answer in time")?
    .context("ListPodSandbox")?;
    Ok(())
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (a test that opens
/// thousands of connections needs it).
pub fn raise_nofile_limit() -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
