//! What the host sees of a berthd's containers: their processes under the shims, their
//! cgroup directories and values, and namespace links.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::berthd::Berthd;
use crate::procs;

/// The names of `dir`'s entries (none when it cannot be read).
pub fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The pid of the container process running exactly `argv` as a child of one of `d`'s shims.
pub fn container_pid(d: &Berthd, argv: &[&str]) -> Option<i32> {
    let shims = procs::shims_of(&d.socket.display().to_string());
    procs::all().into_iter().find_map(|p| {
        let same = p.argv.len() == argv.len() && p.argv.iter().zip(argv).all(|(a, b)| a == b);
        let under = procs::ppid_of(p.pid).is_some_and(|pp| shims.iter().any(|s| s.pid == pp));
        (same && under).then_some(p.pid)
    })
}

/// The cgroup v1 directory of `pid` for `controller` (e.g. "memory", "cpu", "cpuset"),
/// from /proc/<pid>/cgroup and the host's hierarchy under /sys/fs/cgroup.
pub fn cgroup_dir(pid: i32, controller: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next(), f.next());
        let (Some(ctrls), Some(path)) = (ctrls, path) else {
            continue;
        };
        if ctrls.split(',').any(|c| c == controller) {
            let mount = ["/sys/fs/cgroup", controller].iter().collect::<PathBuf>();
            let mount = if mount.exists() {
                mount
            } else {
                Path::new("/sys/fs/cgroup").join(ctrls)
            };
            return Ok(mount.join(path.trim_start_matches('/')));
        }
    }
    bail!("no {controller} cgroup for pid {pid}:\n{text}")
}

/// Reads one cgroup file of `pid`, trimmed.
pub fn cgroup_value(pid: i32, controller: &str, file: &str) -> Result<String> {
    let p = cgroup_dir(pid, controller)?.join(file);
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_string())
}

/// The test's own /proc/self/ns/<ns> link ("net:[4026531992]").
pub fn own_ns(ns: &str) -> Result<String> {
    Ok(std::fs::read_link(format!("/proc/self/ns/{ns}"))?
        .display()
        .to_string())
}

/// `pid`'s /proc/<pid>/ns/<ns> link.
pub fn ns_of(pid: i32, ns: &str) -> Result<String> {
    Ok(std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))?
        .display()
        .to_string())
}
