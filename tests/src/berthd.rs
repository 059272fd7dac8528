//! A private berthd per test: its own config, root, state, CRI socket and CNI conf dir,
//! a CRI client, and a teardown that fails on a leaked shim, mount or socket.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::cri::{ImageServiceClient, RuntimeServiceClient};
use crate::{cmd, leaks, procs};

/// The berthd binary under test: `$BERTHD`, else `<target>/<profile>/berthd`.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTHD") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("no <target>/<profile> dir")?;
    let p = dir.join("berthd");
    if !p.is_file() {
        bail!(
            "berthd not found at {} (run `cargo build --workspace` first)",
            p.display()
        );
    }
    Ok(p)
}

/// A running berthd with private directories.
pub struct Berthd {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub cni_dir: PathBuf,
    child: Option<Child>,
    finished: bool,
}

impl Berthd {
    /// Writes a config under a fresh temp dir; `extra` is appended to it (TOML).
    pub fn configure(extra: &str) -> Result<Berthd> {
        let dir = tempfile::Builder::new()
            .prefix("berthd-")
            .tempdir_in("/tmp")?;
        let root = dir.path();
        let cni_dir = root.join("net.d");
        std::fs::create_dir_all(&cni_dir)?;
        let socket = root.join("berth.sock");
        let config = root.join("config.toml");
        // Tests run side by side: each streaming server on a free port, unless the test
        // configures the section itself.
        let streaming = if extra.contains("[streaming]") {
            ""
        } else {
            "[streaming]\nport = 0\n"
        };
        let text = format!(
            "[server]\nsocket = \"{}\"\n[paths]\nroot = \"{}/root\"\nstate = \"{}/state\"\n[cni]\nconf_dir = \"{}\"\n{streaming}{extra}",
            socket.display(),
            root.display(),
            root.display(),
            cni_dir.display()
        );
        std::fs::write(&config, text)?;
        Ok(Berthd {
            dir,
            socket,
            config,
            cni_dir,
            child: None,
            finished: false,
        })
    }

    /// Starts berthd and waits for its socket.
    pub fn start(mut self) -> Result<Berthd> {
        self.spawn()?;
        Ok(self)
    }

    fn spawn(&mut self) -> Result<()> {
        self.spawn_nowait()?;
        let sock = self.socket.display().to_string();
        // The socket is bound (and accepts) before berthd has opened its stores and run
        // its startup recovery: up means a Version call is answered.
        procs::poll(Duration::from_secs(20), "berthd answering Version", || {
            answers_version(&sock).then_some(())
        })
        .with_context(|| format!("berthd did not come up; log:\n{}", self.log()))?;
        Ok(())
    }

    /// Starts berthd (after `kill9`/`stop`) and returns once it is exec'd, without waiting
    /// for its socket: for callers that time the way to readiness themselves.
    pub fn respawn_nowait(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("berthd is still running (pid {})", self.pid());
        }
        self.spawn_nowait()
    }

    fn spawn_nowait(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berthd.log"))?;
        let child = Command::new(binary()?)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn berthd")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    pub async fn client(
        &self,
    ) -> Result<(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>)> {
        crate::cri::connect(&self.socket.display().to_string()).await
    }

    /// SIGTERM and wait (bounded); returns the exit status code.
    pub fn stop(&mut self) -> Result<i32> {
        let Some(mut child) = self.child.take() else {
            return Ok(0);
        };
        procs::signal(child.id() as i32, libc::SIGTERM)?;
        match cmd::wait_bounded(&mut child, Duration::from_secs(15))? {
            Some(st) => Ok(cmd::code_of(st)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "berthd did not exit within 15 s of SIGTERM; log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.spawn()
    }

    /// Stops berthd and fails on anything it left behind.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.stop()?;
        let mut leaks = Vec::new();
        if self.socket.exists() {
            leaks.push(format!("socket {} still exists", self.socket.display()));
        }
        for p in procs::shims_of(&self.socket.display().to_string()) {
            leaks.push(format!("shim pid {} still running: {:?}", p.pid, p.argv));
        }
        for m in leaks::mounts_under(self.dir.path()) {
            leaks.push(format!("mount {} left", m.display()));
        }
        for id in leaks::runc_states_under(self.dir.path()) {
            leaks.push(format!("runc state {id} left"));
        }
        self.force_cleanup();
        if !leaks.is_empty() {
            bail!("berthd left: {leaks:#?}\nlog:\n{}", self.log());
        }
        Ok(())
    }

    fn force_cleanup(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The pods' processes are the shims' children (the shim is their subreaper): kill
        // them first, or they would outlive a failed test under pid 1.
        let shims: Vec<i32> = procs::shims_of(&self.socket.display().to_string())
            .iter()
            .map(|p| p.pid)
            .collect();
        for pid in descendants(&shims) {
            let _ = procs::signal(pid, libc::SIGKILL);
        }
        for pid in shims {
            let _ = procs::signal(pid, libc::SIGKILL);
        }
        for id in leaks::runc_states_under(self.dir.path()) {
            let _ = std::process::Command::new("runc")
                .args(["--root", leaks::BERTH_RUNC_ROOT, "delete", "--force", &id])
                .output();
        }
        let mut mounts = leaks::mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix_umount(&m);
        }
    }
}

fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every process below `roots` in the process tree.
fn descendants(roots: &[i32]) -> Vec<i32> {
    let all: Vec<(i32, i32)> = procs::all()
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

fn nix_umount(p: &Path) -> std::io::Result<()> {
    let c =
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if !self.finished {
            self.force_cleanup();
        }
    }
}

/// One Version call on a runtime of its own, on a thread of its own, so callers inside
/// an async test (which may restart berthd from within `block_on`) can wait on it too.
fn answers_version(socket: &str) -> bool {
    let socket = socket.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let (mut rs, _) = crate::cri::connect(&socket).await.ok()?;
            let req = k8s_cri::v1::VersionRequest::default();
            tokio::time::timeout(Duration::from_secs(5), rs.version(req))
                .await
                .ok()?
                .ok()
        })
    })
    .join()
    .ok()
    .flatten()
    .is_some()
}
