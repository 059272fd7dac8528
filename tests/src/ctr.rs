//! `ctr` helpers bound to one instance (address, namespace, runtime flags), every call bounded.

use crate::cmd::{self, Output};
use crate::image::BUSYBOX_IMAGE;
use crate::procs;
use crate::shim::Runtime;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Default bound for one `ctr` call.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// `<ctr binary> --address <sock> --namespace <ns> ...`.
#[derive(Debug, Clone)]
pub struct Ctr {
    /// The `ctr` binary matching the instance's containerd (`ctr` from the PATH for 1.6).
    pub bin: PathBuf,
    pub address: String,
    pub namespace: String,
    pub runtime: Runtime,
}

/// One row of `ctr task ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub pid: i32,
    pub status: String,
}

impl Ctr {
    pub fn new(bin: &Path, address: &str, namespace: &str, runtime: Runtime) -> Ctr {
        Ctr {
            bin: bin.to_path_buf(),
            address: address.into(),
            namespace: namespace.into(),
            runtime,
        }
    }

    /// The full argv (after `ctr`) for `args`.
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            "--address".to_string(),
            self.address.clone(),
            "--namespace".into(),
            self.namespace.clone(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// A `Command` for `ctr args...` (for callers that manage the child themselves).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(self.argv(args))
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        c
    }

    /// Runs `ctr args...` bounded by `timeout`, whatever its exit code.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        cmd::run(&mut self.command(args), timeout)
    }

    /// Runs `ctr args...` and returns stdout, failing on a non-zero exit.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        Ok(self
            .run(args, TIMEOUT)?
            .ok(&format!("ctr {}", args.join(" ")))?
            .stdout)
    }

    /// Imports an OCI image-layout tarball.
    pub fn import(&self, tar: &Path) -> Result<()> {
        let p = tar.display().to_string();
        self.ok(&["images", "import", &p]).map(|_| ())
    }

    /// `ctr run [extra] <runtime flags> IMAGE id argv...` with the given mode flags.
    fn run_args(&self, mode: &[&str], extra: &[&str], id: &str, argv: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into()];
        v.extend(mode.iter().map(|s| s.to_string()));
        v.extend(self.runtime.ctr_run_flags());
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(BUSYBOX_IMAGE.into());
        v.push(id.into());
        v.extend(argv.iter().map(|s| s.to_string()));
        v
    }

    /// `ctr run --rm` (foreground): returns output and exit code.
    pub fn run_rm(
        &self,
        extra: &[&str],
        id: &str,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<Output> {
        let v = self.run_args(&["--rm"], extra, id, argv);
        self.run(&v.iter().map(String::as_str).collect::<Vec<_>>(), timeout)
    }

    /// `ctr run -d`: starts a detached task and returns once it is RUNNING.
    pub fn run_detached(&self, extra: &[&str], id: &str, argv: &[&str]) -> Result<TaskRow> {
        let v = self.run_args(&["-d"], extra, id, argv);
        let out = self.run(&v.iter().map(String::as_str).collect::<Vec<_>>(), TIMEOUT)?;
        out.ok(&format!("ctr run -d {id}"))?;
        self.wait_status(id, "RUNNING", Duration::from_secs(20))
    }

    /// The row of `ctr task ls` for `id`, if any.
    pub fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        let out = self.ok(&["tasks", "ls"])?;
        for line in out.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 3 && f[0] == id {
                let pid = f[1]
                    .parse()
                    .with_context(|| format!("bad pid in {line:?}"))?;
                return Ok(Some(TaskRow {
                    pid,
                    status: f[2].to_string(),
                }));
            }
        }
        Ok(None)
    }

    /// Polls `ctr task ls` until `id` has `status`.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Result<TaskRow> {
        let mut last = None;
        let r = procs::poll(timeout, &format!("task {id} to be {status}"), || {
            last = self.task(id).ok().flatten();
            last.clone().filter(|t| t.status == status)
        });
        r.with_context(|| format!("last seen: {last:?}"))
    }

    /// `ctr task exec --exec-id <exec_id> [-t] id argv...`; with `tty` ctr gets a pseudo-terminal.
    pub fn exec(&self, id: &str, exec_id: &str, tty: bool, argv: &[&str]) -> Result<Output> {
        let mut a = vec!["tasks", "exec", "--exec-id", exec_id];
        if tty {
            a.push("-t");
        }
        a.push(id);
        a.extend_from_slice(argv);
        if tty {
            cmd::run_pty(&self.bin, &self.argv(&a), TIMEOUT)
        } else {
            self.run(&a, TIMEOUT)
        }
    }

    /// Sends `signal` (e.g. "SIGKILL") to the task's init.
    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        self.ok(&["tasks", "kill", "--signal", signal, id])
            .map(|_| ())
    }

    /// Deletes the stopped task and then the container.
    pub fn delete(&self, id: &str) -> Result<()> {
        self.ok(&["tasks", "delete", id])?;
        self.ok(&["containers", "delete", id]).map(|_| ())
    }

    /// Kills a running task (SIGKILL), waits for STOPPED, deletes task and container.
    pub fn kill_and_delete(&self, id: &str) -> Result<()> {
        if let Some(t) = self.task(id)? {
            if t.status != "STOPPED" {
                self.kill(id, "SIGKILL")?;
                self.wait_status(id, "STOPPED", Duration::from_secs(20))?;
            }
            self.ok(&["tasks", "delete", id])?;
        }
        self.ok(&["containers", "delete", id]).map(|_| ())
    }

    /// Exec ids (or pids) listed by `ctr task ps`: returns (pid, info) rows.
    pub fn ps(&self, id: &str) -> Result<Vec<(i32, String)>> {
        let out = self.ok(&["tasks", "ps", id])?;
        let mut rows = Vec::new();
        for line in out.lines().skip(1) {
            let mut f = line.split_whitespace();
            let Some(pid) = f.next().and_then(|p| p.parse().ok()) else {
                bail!("bad ps line {line:?}")
            };
            rows.push((pid, f.collect::<Vec<_>>().join(" ")));
        }
        Ok(rows)
    }
}
