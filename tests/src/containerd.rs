//! One private containerd (1.6 or 2.1) per test: start, kill -9, restart, and a teardown that
//! fails on leaks.

pub use crate::containerd_version::Containerd;
use crate::{cleanup, cmd, config, ctr::Ctr, image, leaks, procs, shim};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// How an instance is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub runtime: shim::Runtime,
    /// Enable containerd's CRI plugin (namespace `k8s.io`, pause image imported).
    pub cri: bool,
    /// Which containerd runs (1.6 unless set).
    pub containerd: Containerd,
}

impl Setup {
    /// `runtime` on containerd 1.6, CRI off.
    pub fn new(runtime: shim::Runtime) -> Self {
        Setup {
            runtime,
            cri: false,
            containerd: Containerd::V1_6,
        }
    }

    /// This set-up on containerd `version`.
    pub fn on(mut self, version: Containerd) -> Self {
        self.containerd = version;
        self
    }

    /// This set-up with containerd's CRI plugin on.
    pub fn with_cri(mut self) -> Self {
        self.cri = true;
        self
    }
}

/// A running private containerd with its own dirs, socket, runtime entry and imported images.
pub struct Instance {
    tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub address: String,
    pub namespace: String,
    pub runtime: shim::Runtime,
    pub shim: PathBuf,
    /// The containerd version this instance runs.
    pub containerd: Containerd,
    containerd_bin: PathBuf,
    ctr_bin: PathBuf,
    bin_dir: PathBuf,
    log: PathBuf,
    cri: bool,
    child: Option<Child>,
    group_keys: Mutex<Vec<String>>,
    finished: bool,
}

impl Instance {
    /// Creates the dirs, links the shim under test, starts containerd and imports the busybox
    /// image (and the pause image with CRI) into the instance's namespace.
    pub fn start(setup: Setup) -> Result<Instance> {
        Self::start_with_config(setup, "")
    }

    /// Like [`Instance::start`], with `extra_toml` appended to the rendered config (e.g. a
    /// second CRI runtime handler, so one containerd drives two shims side by side).
    pub fn start_with_config(setup: Setup, extra_toml: &str) -> Result<Instance> {
        let version = setup.containerd;
        let containerd_bin = version.containerd()?;
        let ctr_bin = version.ctr()?;
        let shim::Scratch {
            shim,
            tmp,
            dir,
            suffix,
        } = shim::scratch_with("berth-t", version.shim_under_test()?)?;
        let namespace = if setup.cri {
            "k8s.io".to_string()
        } else {
            format!("bt-{suffix}").to_lowercase()
        };
        let bin_dir = dir.join("bin");
        for d in [&bin_dir, &dir.join("cni"), &dir.join("images")] {
            std::fs::create_dir_all(d)?;
        }
        std::os::unix::fs::symlink(&shim, bin_dir.join(setup.runtime.link_name()))?;
        let address = dir.join("containerd.sock").display().to_string();
        std::fs::write(
            dir.join("config.toml"),
            config::render(version, &dir, &address, setup.runtime, setup.cri) + extra_toml,
        )?;
        let mut inst = Instance {
            tmp: Some(tmp),
            log: dir.join("containerd.log"),
            dir,
            address,
            namespace,
            runtime: setup.runtime,
            shim,
            containerd: version,
            containerd_bin,
            ctr_bin,
            bin_dir,
            cri: setup.cri,
            child: None,
            group_keys: Mutex::new(Vec::new()),
            finished: false,
        };
        inst.spawn_daemon()?;
        let images = inst.dir.join("images");
        let mut tars = vec![image::busybox(&images)?];
        if setup.cri {
            tars.push(image::pause(&images)?);
        }
        for t in tars {
            inst.ctr().import(&t.path)?;
        }
        Ok(inst)
    }

    /// containerd's state dir (bundles live under `io.containerd.runtime.v2.task/<ns>/<id>`).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// containerd's root dir.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The bundle directory of container `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state()
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }

    /// A fresh container id, remembered as a shim grouping key for the socket leak check.
    pub fn new_id(&self, name: &str) -> String {
        let mut keys = self.group_keys.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("{name}-{}", keys.len());
        keys.push(id.clone());
        id
    }

    /// Remembers a grouping key chosen elsewhere (e.g. a CRI sandbox id).
    pub fn track_key(&self, key: &str) {
        self.group_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key.to_string());
    }

    /// A `ctr` bound to this instance's socket and namespace.
    pub fn ctr(&self) -> Ctr {
        Ctr::new(&self.ctr_bin, &self.address, &self.namespace, self.runtime)
    }

    /// Live shim processes of this containerd.
    pub fn shims(&self) -> Vec<procs::Proc> {
        procs::shims_of(&self.address)
    }

    /// The last `lines` lines of containerd's log (which includes the shims' logs).
    pub fn log_tail(&self, lines: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = s.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    fn spawn_daemon(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new(&self.containerd_bin)
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .current_dir(&self.bin_dir)
            .env("PATH", path)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "spawn {} (containerd {}; for 1.6 install the containerd package)",
                    self.containerd_bin.display(),
                    self.containerd.label()
                )
            })?;
        self.child = Some(child);
        let ctr = self.ctr();
        procs::poll(
            Duration::from_secs(30),
            "containerd to answer `ctr version`",
            || {
                ctr.run(&["version"], Duration::from_secs(5))
                    .ok()
                    .filter(|o| o.code == 0)
            },
        )
        .with_context(|| format!("containerd did not come up; log:\n{}", self.log_tail(40)))?;
        Ok(())
    }

    /// `kill -9` containerd (our child) and reap it; shims keep running.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("containerd is not running")?;
        child.kill()?;
        cmd::wait_bounded(&mut child, Duration::from_secs(10))?
            .context("containerd did not die")?;
        Ok(())
    }

    /// Starts containerd again with the same config, dirs and socket.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("containerd is still running");
        }
        self.spawn_daemon()
    }

    /// SIGTERM containerd, then SIGKILL after 10 s.
    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = procs::signal(child.id() as i32, libc::SIGTERM);
            if !matches!(
                cmd::wait_bounded(&mut child, Duration::from_secs(10)),
                Ok(Some(_))
            ) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Asserts a clean end: no containers left, every shim gone, then (with containerd stopped)
    /// no leaked shim process, mount, shim socket or bundle. Always cleans up.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        let mut problems = Vec::new();
        if !self.cri {
            match self.ctr().ok(&["containers", "ls", "-q"]) {
                Ok(out) if !out.trim().is_empty() => {
                    problems.push(format!("test left containers: {}", out.trim()))
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("listing containers: {e:#}")),
            }
        }
        let _ = procs::poll(Duration::from_secs(10), "shims to exit", || {
            self.shims().is_empty().then_some(())
        });
        self.stop_daemon();
        let keys = self.keys();
        let (state, root) = (self.state(), self.root());
        problems.extend(
            leaks::Scope {
                address: &self.address,
                namespace: &self.namespace,
                dir: &self.dir,
                state: &state,
                root: &root,
                group_keys: &keys,
            }
            .find(),
        );
        let log = self.log_tail(60);
        self.force_cleanup();
        if !problems.is_empty() {
            bail!(
                "teardown found leaks:\n  {}\ncontainerd log tail:\n{log}",
                problems.join("\n  ")
            );
        }
        Ok(())
    }

    /// The grouping keys tracked so far.
    fn keys(&self) -> Vec<String> {
        self.group_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn force_cleanup(&mut self) {
        self.stop_daemon();
        let keys = self.keys();
        cleanup::everything(&cleanup::Target {
            address: &self.address,
            namespace: &self.namespace,
            dir: &self.dir,
            ids: if self.cri { Some(&keys) } else { None },
            group_keys: &keys,
        });
        if let Some(t) = self.tmp.take() {
            let _ = t.close();
        }
    }

    /// Where this instance keeps its files.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Not finished means the test failed (error or panic): show what containerd and the
        // shims logged; the test runner prints captured output only for failing tests.
        eprintln!(
            "---- containerd log tail ({}) ----\n{}",
            self.log.display(),
            self.log_tail(80)
        );
        self.force_cleanup();
    }
}
