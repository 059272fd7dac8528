//! Finding processes through /proc: shims of one containerd, and signalling our own pids.

use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A process as seen in /proc.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub exe: Option<PathBuf>,
    pub argv: Vec<String>,
}

/// All processes currently visible in /proc (racy by nature; vanished ones are skipped).
pub fn all() -> Vec<Proc> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv = raw
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            Some(Proc { pid, exe, argv })
        })
        .collect()
}

fn has_flag(argv: &[String], flag: &str, value: &str) -> bool {
    argv.windows(2).any(|w| w[0] == flag && w[1] == value)
        || argv
            .iter()
            .any(|a| a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) == Some(value))
}

/// Shim processes (any `containerd-shim*` argv[0]) started by the containerd at `address`.
pub fn shims_of(address: &str) -> Vec<Proc> {
    all()
        .into_iter()
        .filter(|p| {
            p.argv.first().is_some_and(|a0| {
                a0.rsplit('/')
                    .next()
                    .unwrap_or("")
                    .starts_with("containerd-shim")
            }) && has_flag(&p.argv, "-address", address)
        })
        .collect()
}

/// Shim processes of `address` that also serve `namespace`.
pub fn shims_in(address: &str, namespace: &str) -> Vec<Proc> {
    shims_of(address)
        .into_iter()
        .filter(|p| has_flag(&p.argv, "-namespace", namespace))
        .collect()
}

/// Sends `sig` to one specific pid the test owns or started through containerd.
pub fn signal(pid: i32, sig: i32) -> Result<()> {
    if pid <= 1 {
        bail!("refusing to signal pid {pid}");
    }
    // SAFETY: kill(2) on one explicit pid; no memory is touched.
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The parent pid of `pid`, from /proc/<pid>/stat (`None` once it is gone).
pub fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The pids of the direct children of the shims of `address` whose argv passes `pick`
/// (a pod's infra process, a container's init).
pub fn shim_children(address: &str, pick: impl Fn(&[String]) -> bool) -> Vec<i32> {
    let shims: Vec<i32> = shims_of(address).iter().map(|s| s.pid).collect();
    all()
        .into_iter()
        .filter(|p| pick(&p.argv))
        .filter(|p| ppid_of(p.pid).is_some_and(|pp| shims.contains(&pp)))
        .map(|p| p.pid)
        .collect()
}

/// Every process below `roots` in the process tree.
pub fn descendants(roots: &[i32]) -> Vec<i32> {
    let all: Vec<(i32, i32)> = all()
        .iter()
        .filter_map(|p| Some((p.pid, ppid_of(p.pid)?)))
        .collect();
    let mut out: Vec<i32> = Vec::new();
    let mut frontier: Vec<i32> = roots.to_vec();
    while let Some(parent) = frontier.pop() {
        for (pid, _) in all.iter().filter(|(_, pp)| *pp == parent) {
            if !out.contains(pid) {
                out.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    out
}

/// The number after `key` on its line of a `/proc/<pid>/status`-like `text` (kB for the
/// memory lines).
pub fn field_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
