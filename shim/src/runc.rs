//! The OCI runtime CLI (runc or crun): argument building, running a command with its exit
//! collected through the shim's reaper, and runc's last logged error.
//!
//! Hand-written rather than the `runc` crate: every invocation must subscribe to our single
//! reaper before it forks, receive container stdio fds, and stay small; that seam is ~200
//! lines here.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::options::RuncOptions;
use crate::reaper::Reaper;

/// Upper bound on any runtime invocation; a hung runc is killed after this.
const RUNC_TIMEOUT: Duration = Duration::from_secs(120);

/// The stdio handed to the runtime (and so to the container for create/exec).
#[derive(Default)]
pub struct RuncStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A runtime bound to one container's options and bundle.
#[derive(Clone)]
pub struct Runc {
    binary: String,
    root: String,
    log: PathBuf,
    systemd: bool,
    reaper: Arc<Reaper>,
}

/// Options of `runc create` / `runc exec`.
#[derive(Default)]
pub struct SpawnOpts {
    pub pid_file: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

impl Runc {
    pub fn new(opts: &RuncOptions, namespace: &str, bundle: &Path, reaper: Arc<Reaper>) -> Runc {
        Runc {
            binary: opts.binary().to_string(),
            root: opts.runtime_root(namespace),
            log: bundle.join("log.json"),
            systemd: opts.systemd_cgroup,
            reaper,
        }
    }

    fn global_args(&self) -> Vec<String> {
        let mut a = vec![
            "--root".into(),
            self.root.clone(),
            "--log".into(),
            self.log.display().to_string(),
            "--log-format".into(),
            "json".into(),
        ];
        if self.systemd {
            a.push("--systemd-cgroup".into());
        }
        a
    }

    /// Runs the runtime with `args`; returns its stdout. `stdio` replaces the runtime's
    /// own stdio (create/exec pass the container's ends), `input` is written to stdin.
    async fn run(
        &self,
        action: &str,
        args: Vec<String>,
        stdio: Option<RuncStdio>,
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.global_args()).args(&args);
        // containerd runs as a systemd notify service; runc must not talk to systemd's
        // notify socket on its behalf (go-runc filterEnv).
        cmd.env_remove("NOTIFY_SOCKET");
        let capture = stdio.is_none();
        match stdio {
            Some(s) => {
                cmd.stdin(s.stdin.map(Stdio::from).unwrap_or_else(Stdio::null));
                cmd.stdout(s.stdout.map(Stdio::from).unwrap_or_else(Stdio::null));
                cmd.stderr(s.stderr.map(Stdio::from).unwrap_or_else(Stdio::null));
            }
            None => {
                cmd.stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
                cmd.stdout(Stdio::piped());
                cmd.stderr(Stdio::piped());
            }
        }
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal
        // so a runtime never outlives the shim that waits for it.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // Subscribe before fork: the reaper may collect the child before spawn() returns.
        let mut sub = self.reaper.subscribe();
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("exec {}", self.binary), e))?;
        drop(cmd); // closes our copies of the container's stdio ends
        let pid = child.id() as i32;
        if let (Some(data), Some(stdin)) = (input, child.stdin.take()) {
            let fd: OwnedFd = stdin.into();
            let mut w = tokio::net::unix::pipe::Sender::from_owned_fd(fd)
                .map_err(|e| Error::io("runtime stdin", e))?;
            use tokio::io::AsyncWriteExt;
            w.write_all(&data)
                .await
                .map_err(|e| Error::io("write runtime stdin", e))?;
        }
        let out = read_all(child.stdout.take().map(OwnedFd::from));
        let err = read_all(child.stderr.take().map(OwnedFd::from));
        let work = async {
            let (out, err) = tokio::join!(out, err);
            (sub.wait_for(pid).await, out, err)
        };
        let (exit, out, err) = match tokio::time::timeout(RUNC_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
                return Err(Error::Runtime(format!(
                    "{action} failed: {} timed out",
                    self.binary
                )));
            }
        };
        let status = exit.map(|e| e.status).unwrap_or(255);
        if status != 0 {
            let msg = self
                .last_error()
                .or_else(|| {
                    capture
                        .then(|| String::from_utf8_lossy(&err).trim().to_string())
                        .filter(|s| !s.is_empty())
                })
                .unwrap_or_else(|| format!("exit status {status}"));
            return Err(Error::Runtime(format!("{action} failed: {msg}")));
        }
        Ok(out)
    }

    /// The message of the last `"level":"error"` line of log.json.
    pub fn last_error(&self) -> Option<String> {
        last_error_in(&std::fs::read_to_string(&self.log).ok()?)
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        o: &SpawnOpts,
        stdio: RuncStdio,
    ) -> Result<()> {
        let mut a: Vec<String> = vec![
            "create".into(),
            "--bundle".into(),
            bundle.display().to_string(),
        ];
        a.extend(["--pid-file".into(), o.pid_file.display().to_string()]);
        if let Some(s) = &o.console_socket {
            a.extend(["--console-socket".into(), s.display().to_string()]);
        }
        if o.no_pivot {
            a.push("--no-pivot".into());
        }
        if o.no_new_keyring {
            a.push("--no-new-keyring".into());
        }
        a.push(id.into());
        self.run("OCI runtime create", a, Some(stdio), None)
            .await
            .map(drop)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.run(
            "OCI runtime start",
            vec!["start".into(), id.into()],
            None,
            None,
        )
        .await
        .map(drop)
    }

    pub async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        o: &SpawnOpts,
        stdio: RuncStdio,
    ) -> Result<()> {
        let mut a: Vec<String> = vec![
            "exec".into(),
            "--process".into(),
            process_json.display().to_string(),
        ];
        if let Some(s) = &o.console_socket {
            a.extend(["--console-socket".into(), s.display().to_string()]);
        }
        a.extend([
            "--detach".into(),
            "--pid-file".into(),
            o.pid_file.display().to_string(),
            id.into(),
        ]);
        self.run("OCI runtime exec", a, Some(stdio), None)
            .await
            .map(drop)
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mut a: Vec<String> = vec!["kill".into()];
        if all {
            a.push("--all".into());
        }
        a.extend([id.into(), signal.to_string()]);
        self.run("OCI runtime kill", a, None, None).await.map(drop)
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut a: Vec<String> = vec!["delete".into()];
        if force {
            a.push("--force".into());
        }
        a.push(id.into());
        self.run("OCI runtime delete", a, None, None)
            .await
            .map(drop)
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.run(
            "OCI runtime pause",
            vec!["pause".into(), id.into()],
            None,
            None,
        )
        .await
        .map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.run(
            "OCI runtime resume",
            vec!["resume".into(), id.into()],
            None,
            None,
        )
        .await
        .map(drop)
    }

    /// `ps --format json`: the container's pids.
    pub async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let out = self
            .run(
                "OCI runtime ps",
                vec!["ps".into(), "--format".into(), "json".into(), id.into()],
                None,
                None,
            )
            .await?;
        let pids: Option<Vec<i32>> =
            serde_json::from_slice(&out).map_err(|e| Error::json("parse runtime ps output", e))?;
        Ok(pids.unwrap_or_default())
    }

    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let a = vec!["update".into(), "--resources".into(), "-".into(), id.into()];
        self.run("OCI runtime update", a, None, Some(resources_json))
            .await
            .map(drop)
    }

    pub async fn checkpoint(&self, id: &str, args: Vec<String>) -> Result<()> {
        let mut a: Vec<String> = vec!["checkpoint".into()];
        a.extend(args);
        a.push(id.into());
        self.run("OCI runtime checkpoint", a, None, None)
            .await
            .map(drop)
    }

    pub async fn restore(&self, id: &str, args: Vec<String>, stdio: RuncStdio) -> Result<()> {
        let mut a: Vec<String> = vec!["restore".into(), "--detach".into(), "--no-subreaper".into()];
        a.extend(args);
        a.push(id.into());
        self.run("OCI runtime restore", a, Some(stdio), None)
            .await
            .map(drop)
    }
}

async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(fd) = fd {
        if let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            let _ = r.read_to_end(&mut buf).await;
        }
    }
    buf
}

fn last_error_in(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v.get("level")?.as_str()? == "error")
            .then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

/// Reads a pid file written by the runtime.
pub fn read_pid(path: &Path) -> Result<i32> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    s.trim()
        .parse()
        .map_err(|_| Error::Runtime(format!("bad pid file {}: {s:?}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_is_the_last_error_line() {
        let log = r#"{"level":"error","msg":"first","time":"x"}
{"level":"warning","msg":"meh"}
{"level":"error","msg":"container_linux.go: starting container process caused: exec: \"nope\": executable file not found in $PATH"}
{"level":"info","msg":"later"}
not json"#;
        assert_eq!(
            last_error_in(log).unwrap(),
            "container_linux.go: starting container process caused: exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(last_error_in("{\"level\":\"info\",\"msg\":\"x\"}"), None);
    }

    #[test]
    fn global_args_follow_go_runc_order() {
        let o = RuncOptions {
            root: "/r".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        let r = Runc::new(&o, "ns", Path::new("/b"), Arc::new(Reaper::default()));
        assert_eq!(
            r.global_args(),
            [
                "--root",
                "/r/ns",
                "--log",
                "/b/log.json",
                "--log-format",
                "json",
                "--systemd-cgroup"
            ]
        );
    }
}
