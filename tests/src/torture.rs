//! The shipped `berth-torture` binary run against a configured (not started) berthd
//! fixture, as the torture suites run it: the arguments every run shares (socket, daemon
//! command line, busybox image, pod network, the fixture's root, state, IPAM and a work
//! dir), a pod cgroup parent of the run's own (other berthds on the machine share
//! `/berth`), and the verdict: the exit status, the empty violation table, and berthd's
//! log tail when it fails.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Result};

use crate::berthd::{binary, Berthd};
use crate::image;

/// A pod cgroup parent of this test process's own, `/berth-<what>-<pid>`: the leftover
/// checks count the cgroups under it. Give it to the fixture's config and to
/// [`Torture::cgroup_parent`].
pub fn own_cgroup_parent(what: &str) -> String {
    format!("/berth-{what}-{}", std::process::id())
}

/// The `[runtime]` table naming `parent` as berthd's pod cgroup parent.
pub fn cgroup_parent_config(parent: &str) -> String {
    format!("[runtime]\ncgroup_parent = \"{parent}\"\n")
}

/// One run of the harness being set up.
pub struct Torture {
    cmd: Command,
    pub work: PathBuf,
    parent: Option<String>,
}

/// What a run printed, and berthd's log of it.
pub struct Run {
    pub ok: bool,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub log: String,
}

impl Torture {
    /// `bin` is the calling suite's `env!("CARGO_BIN_EXE_berth-torture")` (or a copy);
    /// the work dir is `<fixture dir>/<work>`.
    pub fn new(d: &Berthd, bin: &str, work: &str) -> Result<Torture> {
        let work = d.dir.path().join(work);
        std::fs::create_dir_all(&work)?;
        let daemon = format!("{} --config {}", binary()?.display(), d.config.display());
        let mut cmd = Command::new(bin);
        cmd.args(["--socket", &d.socket.display().to_string()])
            .args(["--daemon", &daemon])
            .args(["--image", image::BUSYBOX_IMAGE])
            .arg("--pod-network")
            .arg("--root")
            .arg(d.dir.path().join("root"))
            .arg("--state")
            .arg(d.dir.path().join("state"))
            .arg("--ipam-dir")
            .arg(d.dir.path().join("ipam").join("berth-feat"))
            .arg("--work")
            .arg(&work);
        Ok(Torture {
            cmd,
            work,
            parent: None,
        })
    }

    pub fn args<I, S>(mut self, args: I) -> Torture
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// The pods' cgroup parent (as in berthd's config), removed after the run.
    pub fn cgroup_parent(mut self, parent: &str) -> Torture {
        self.cmd.args(["--cgroup-parent", parent]);
        self.parent = Some(parent.to_string());
        self
    }

    /// Runs the harness to its end; prints its report and the stderr lines that say
    /// something (`shown`); `BERTH_TORTURE_KEEP_LOG=FILE` keeps berthd's log.
    pub fn run(mut self, shown: &[&str]) -> Result<Run> {
        let out = self.cmd.output();
        if let Some(parent) = &self.parent {
            remove_cgroup_parent(parent);
        }
        let out = out?;
        let run = Run {
            ok: out.status.success(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            log: std::fs::read_to_string(self.work.join("daemon.log")).unwrap_or_default(),
        };
        println!("{}", run.stdout);
        for l in run.stderr.lines() {
            if l.contains("VIOLATION") || shown.iter().any(|s| l.contains(s)) {
                println!("{l}");
            }
        }
        if let Ok(keep) = std::env::var("BERTH_TORTURE_KEEP_LOG") {
            std::fs::write(keep, &run.log)?;
        }
        Ok(run)
    }
}

impl Run {
    /// The harness exited 0 with an empty violation table; else the error quotes its
    /// report, its stderr and the tail of berthd's log.
    pub fn ensure_clean(&self) -> Result<()> {
        let tail: Vec<&str> = self.log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        ensure!(
            self.ok && self.stdout.contains("| (none) | 0 |"),
            "berth-torture found violations ({}):\n{}\nstderr:\n{}\nberthd log tail:\n{}",
            self.status,
            self.stdout,
            self.stderr,
            tail.join("\n")
        );
        Ok(())
    }
}

/// A cgroup parent (empty once its pods are gone), in every hierarchy.
fn remove_cgroup_parent(parent: &str) {
    let rel = parent.trim_start_matches('/');
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(h.path().join(rel));
    }
    let _ = std::fs::remove_dir(std::path::Path::new("/sys/fs/cgroup").join(rel));
}
