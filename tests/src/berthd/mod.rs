//! The berthd fixture: a builder that starts a private berthd (its own config, root,
//! state, CRI socket and CNI conf dir, images imported, optionally a CNI bridge), and the
//! `Berthd` guard, whose `finish` (or, failing that, `Drop`) removes every pod, stops
//! berthd and fails on a leaked shim, mount, netns pin, runc state or socket.
//!
//! ```ignore
//! let d = Berthd::builder().busybox().cni_bridge(0).start()?;
//! block_on(async { let pod = Pod::run(&d, d.pod_config("web")).await?; ... })??;
//! d.finish()
//! ```

use anyhow::{bail, ensure, Context, Result};
use berth_cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

use crate::cni::{self, Bridge};
use crate::cri::{pod_config, Is, Rs};
use crate::image::{self, ImageTar};
use crate::pod::Pod;
use crate::{cmd, leaks, pod, procs};

mod teardown;
pub use teardown::reserved_ips;

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

/// What a berthd gets before it starts: config lines, images, a CNI bridge.
#[derive(Default)]
#[must_use]
pub struct Builder {
    config: String,
    busybox: bool,
    #[allow(clippy::type_complexity)]
    images: Vec<Box<dyn FnOnce(&Path) -> Result<ImageTar>>>,
    bridge: Option<u32>,
    default_network: Option<u32>,
    binary: Option<PathBuf>,
    /// Size-limited filesystems to mount before anything is written: (dir under the
    /// test's dir, size in bytes).
    tmpfs: Vec<(String, u64)>,
}

impl Builder {
    /// Runs this berthd binary instead of [`binary`] (e.g. one installed from the package).
    pub fn binary(mut self, path: &Path) -> Builder {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// Appends TOML to berthd's config.
    pub fn config(mut self, toml: &str) -> Builder {
        self.config.push_str(toml);
        self
    }

    /// Imports the busybox test image (`image::BUSYBOX_IMAGE`).
    pub fn busybox(mut self) -> Builder {
        self.busybox = true;
        self
    }

    /// Imports the image `build` writes into the berthd's temp dir.
    pub fn image(mut self, build: impl FnOnce(&Path) -> Result<ImageTar> + 'static) -> Builder {
        self.images.push(Box::new(build));
        self
    }

    /// Gives berthd a CNI bridge network of its own (see `cni::bridge`; `slot` 0..=9
    /// keeps the tests of one process apart); the guard deletes it.
    pub fn cni_bridge(mut self, slot: u32) -> Builder {
        self.bridge = Some(slot);
        self
    }

    /// Turns berthd's built-in network on (`[cni.default]`, off otherwise) with a bridge
    /// name and /24 of this test's own and masquerade off (`cni::default_network`; `slot`
    /// 0..=4); the guard deletes the bridge.
    pub fn default_network(mut self, slot: u32) -> Builder {
        self.default_network = Some(slot);
        self
    }

    /// Mounts a tmpfs of `size` bytes at `rel` under the test's dir (e.g. "root",
    /// "state", "logs/web") before any image is imported: a disk that can be filled. The
    /// guard unmounts it after its leak check, which does not count it.
    pub fn tmpfs(mut self, rel: &str, size: u64) -> Builder {
        self.tmpfs.push((rel.to_string(), size));
        self
    }

    /// Writes the config and imports the images, without starting berthd.
    pub fn configure(mut self) -> Result<Berthd> {
        let mut default_bridge = None;
        if let Some(slot) = self.default_network {
            let (toml, bridge) = cni::default_network(slot);
            self.config.push_str(&toml);
            default_bridge = Some(bridge);
        }
        let mut d = Berthd::configure(&self.config)?;
        d.default_bridge = default_bridge;
        d.binary = self.binary;
        for (rel, size) in &self.tmpfs {
            let at = d.dir.path().join(rel);
            std::fs::create_dir_all(&at)?;
            cmd::run(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
                    .arg("tmpfs")
                    .arg(&at),
                Duration::from_secs(10),
            )?
            .ok("mount tmpfs")?;
            d.own_mounts.push(at);
        }
        if self.busybox {
            d.import(&image::busybox(d.dir.path())?)?;
        }
        for build in self.images {
            let tar = build(d.dir.path())?;
            d.import(&tar)?;
        }
        if let Some(slot) = self.bridge {
            d.bridge = Some(cni::bridge(&d.cni_dir, &d.dir.path().join("ipam"), slot)?);
        }
        Ok(d)
    }

    /// `configure`, then starts berthd and waits until it answers.
    pub fn start(self) -> Result<Berthd> {
        self.configure()?.start()
    }
}

/// A test on a berthd: starts it from `builder`, runs `body` on a tokio runtime, then
/// [`Berthd::finish`]es it. An error from `body` comes back with berthd's log, and the guard
/// cleans up instead of `finish`.
pub fn berthd_test(
    builder: Builder,
    body: impl AsyncFnOnce(&mut Berthd) -> Result<()>,
) -> Result<()> {
    let mut d = builder.start()?;
    let r = crate::cri::block_on(body(&mut d))?;
    if let Err(e) = &r {
        // Printed before the guard's cleanup, whose leak report (a panic when berthd is
        // no longer there to remove the pods) would otherwise be all the test shows.
        eprintln!("berthd_test: the body failed: {e:#}");
    }
    d.with_log(r)?;
    d.finish()
}

/// A berthd with private directories; the guard of a test's berthd.
pub struct Berthd {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub cni_dir: PathBuf,
    child: Option<Child>,
    bridge: Option<Bridge>,
    /// The built-in network's bridge (`Builder::default_network`).
    default_bridge: Option<Bridge>,
    /// The berthd binary (None: [`binary`]).
    binary: Option<PathBuf>,
    /// The filesystems the test mounted (`Builder::tmpfs`): not leaks.
    pub own_mounts: Vec<PathBuf>,
    finished: bool,
}

impl Berthd {
    /// The fixture builder.
    pub fn builder() -> Builder {
        Builder::default()
    }

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
        // The built-in network would make the node's berth0 bridge, 10.87.0.0/16 and a
        // masquerade rule: off unless the test sets its own keys (`default_network`).
        let builtin = if extra.contains("[cni.default]") {
            ""
        } else {
            "[cni.default]\nenabled = false\n"
        };
        // NRI would listen on the node's /var/run/nri/nri.sock (and start what
        // /opt/nri/plugins holds): off unless the test sets its own keys.
        let nri = if extra.contains("[nri]") {
            ""
        } else {
            "[nri]\nenable = false\n"
        };
        let text = format!(
            "[server]\nsocket = \"{}\"\n[paths]\nroot = \"{}/root\"\nstate = \"{}/state\"\n[cni]\nconf_dir = \"{}\"\n{builtin}{streaming}{nri}{extra}",
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
            bridge: None,
            default_bridge: None,
            binary: None,
            own_mounts: Vec::new(),
            finished: false,
        })
    }

    /// `berthd image import` of `tar` (berthd must not be running).
    pub fn import(&self, tar: &ImageTar) -> Result<()> {
        let out = Command::new(self.binary()?)
            .arg("--config")
            .arg(&self.config)
            .args(["image", "import"])
            .arg(&tar.path)
            .output()?;
        ensure!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(tar.name),
            "import {}: {}{}",
            tar.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The CNI bridge the builder made (`Builder::cni_bridge`).
    pub fn bridge(&self) -> &Bridge {
        self.bridge
            .as_ref()
            .expect("no CNI bridge: build the berthd with .cni_bridge(slot)")
    }

    /// The built-in network's bridge (`Builder::default_network`).
    pub fn default_bridge(&self) -> &Bridge {
        self.default_bridge
            .as_ref()
            .expect("no built-in network: build the berthd with .default_network(slot)")
    }

    /// A host-network pod config named `name`, logging under `<dir>/logs/<name>`.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        pod_config(name, &self.dir.path().join("logs").join(name))
    }

    /// Starts berthd and waits for its socket.
    pub fn start(mut self) -> Result<Berthd> {
        self.spawn()?;
        Ok(self)
    }

    /// `start` with berthd's command changed by `adjust` first (e.g. an environment
    /// variable such as BERTH_SHIM_FAILPOINTS, which the shims inherit).
    pub fn start_adjusted(mut self, adjust: impl FnOnce(&mut Command)) -> Result<Berthd> {
        let args = [
            std::ffi::OsString::from("--config"),
            self.config.clone().into(),
        ];
        self.spawn_with(&args, adjust)?;
        self.wait_up()?;
        Ok(self)
    }

    fn spawn(&mut self) -> Result<()> {
        self.spawn_nowait()?;
        self.wait_up()
    }

    fn wait_up(&mut self) -> Result<()> {
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
        let args = [
            std::ffi::OsString::from("--config"),
            self.config.clone().into(),
        ];
        self.spawn_with(&args, |_| {})
    }

    /// Starts berthd with `args` (instead of `--config <config>`) on a command `adjust`
    /// may change further (environment, limits), as a service manager would, and returns
    /// without waiting for its socket. The guard stops and cleans up as usual.
    pub fn spawn_with(
        &mut self,
        args: &[std::ffi::OsString],
        adjust: impl FnOnce(&mut Command),
    ) -> Result<()> {
        if self.child.is_some() {
            bail!("berthd is still running (pid {})", self.pid());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berthd.log"))?;
        let mut cmd = Command::new(self.binary()?);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        adjust(&mut cmd);
        let child = cmd.spawn().context("spawn berthd")?;
        self.child = Some(child);
        Ok(())
    }

    /// The berthd binary this guard runs.
    pub fn binary(&self) -> Result<PathBuf> {
        match &self.binary {
            Some(p) => Ok(p.clone()),
            None => binary(),
        }
    }

    /// The pid of pod `pod_id`'s shim daemon (its command line names berthd's socket and
    /// the pod).
    pub fn shim_of_pod(&self, pod_id: &str) -> Result<i32> {
        procs::shims_of(&self.socket.display().to_string())
            .into_iter()
            .find(|p| p.argv.iter().any(|a| a == pod_id))
            .map(|p| p.pid)
            .with_context(|| format!("no shim for pod {pod_id}"))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// berthd's log file (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("berthd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs pod `cfg`, then `f` on it, then removes the pod; an error carries berthd's log
    /// (a pod left by a failure goes with the guard).
    pub fn in_pod(
        &self,
        cfg: cri::PodSandboxConfig,
        f: impl AsyncFnOnce(&Pod) -> Result<()>,
    ) -> Result<()> {
        let r = crate::cri::block_on(async {
            let pod = Pod::run(self, cfg).await?;
            f(&pod).await?;
            pod.remove().await
        });
        self.with_log(r?)
    }

    /// `r`, its error with berthd's log added.
    pub fn with_log<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| e.context(format!("berthd log:\n{}", self.log())))
    }

    pub async fn client(&self) -> Result<(Rs, Is)> {
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

    /// Removes every pod, stops berthd and fails on anything it left behind.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.teardown()
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
            let req = berth_cri::v1::VersionRequest::default();
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
