//! The daemon under test: started from its command line as the harness's own child (so
//! it is killed by pid, never by name), optionally with failpoints armed through the
//! environment, killed with SIGKILL, and timed back to ready.

use anyhow::{bail, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::cri::{connect, RuntimeServiceClient};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub struct Daemon {
    argv: Vec<String>,
    socket: String,
    log: std::path::PathBuf,
    child: Option<Child>,
    /// The running daemon's pid (0 while none runs), shared with the sampler.
    pid: Arc<AtomicI32>,
}

impl Daemon {
    pub fn new(cmdline: &str, socket: &str, log: std::path::PathBuf) -> Result<Daemon> {
        let argv: Vec<String> = cmdline.split_whitespace().map(String::from).collect();
        if argv.is_empty() {
            bail!("--daemon needs a command line");
        }
        Ok(Daemon {
            argv,
            socket: socket.to_string(),
            log,
            child: None,
            pid: Arc::default(),
        })
    }

    /// Starts the daemon (with `failpoints` in BERTH_FAILPOINTS, or in
    /// BERTH_SHIM_FAILPOINTS for the shim's `shim.*` points, which the shims the daemon
    /// starts inherit) and waits until Status answers RuntimeReady: returns the time that
    /// took.
    pub async fn start(&mut self, failpoints: Option<&str>) -> Result<Duration> {
        if let Some(c) = &mut self.child {
            if c.try_wait()?.is_none() {
                bail!("the daemon is still running");
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env_remove("BERTH_FAILPOINTS")
            .env_remove("BERTH_SHIM_FAILPOINTS");
        match failpoints {
            Some(f) if f.starts_with("shim.") => {
                cmd.env("BERTH_SHIM_FAILPOINTS", f);
            }
            Some(f) => {
                cmd.env("BERTH_FAILPOINTS", f);
            }
            None => {}
        }
        let t0 = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("start {:?}", self.argv))?;
        self.pid.store(child.id() as i32, Ordering::Relaxed);
        self.child = Some(child);
        loop {
            if let Ok(mut rs) = self.client().await {
                let st = rs
                    .status(cri::StatusRequest { verbose: false })
                    .await
                    .map(|r| r.into_inner());
                let ready = st.ok().and_then(|s| s.status).is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "RuntimeReady" && c.status)
                });
                if ready {
                    return Ok(t0.elapsed());
                }
            }
            if let Some(c) = &mut self.child {
                if let Some(st) = c.try_wait()? {
                    bail!("the daemon exited while starting: {st}");
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the daemon was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the daemon's log (stdout and stderr) contains `s`.
    pub fn log_contains(&self, s: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains(s))
    }

    /// Whether the log shows `s` within `limit`.
    pub async fn log_within(&self, s: &str, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.log_contains(s) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The running daemon's pid as it changes (0 while none runs).
    pub fn pid_cell(&self) -> Arc<AtomicI32> {
        self.pid.clone()
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    pub async fn client(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(connect(&self.socket).await?.0)
    }

    /// SIGKILL, and reaped.
    pub fn kill9(&mut self) {
        self.pid.store(0, Ordering::Relaxed);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the daemon to die by itself (a failpoint's abort): true if it did.
    pub async fn died_within(&mut self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(c) = &mut self.child {
                if let Ok(Some(_)) = c.try_wait() {
                    self.pid.store(0, Ordering::Relaxed);
                    self.child = None;
                    return true;
                }
            } else {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// SIGTERM, bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        self.pid.store(0, Ordering::Relaxed);
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            for _ in 0..150 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
