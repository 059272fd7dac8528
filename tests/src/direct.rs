//! The shim without containerd, started the way Berth's own CRI daemon will start it: a
//! hand-built bundle (busybox rootfs bind-mounted by the shim), `start` with no
//! `TTRPC_ADDRESS` and no `log` FIFO, then the task API over ttrpc directly.
//!
//! A [`Direct`] owns a unique namespace, a fake containerd address (never listened on) in its
//! own tempdir, and every container id it made a bundle for. [`Direct::finish`] fails on a
//! leaked shim daemon, shim socket, mount, runc state dir or cgroup; dropping an unfinished
//! `Direct` cleans up the same things by force.

use crate::{cmd, image, leaks, procs, shim, task_api};
use anyhow::{bail, Context, Result};
use berth_proto::api;
use berth_proto::protobuf::Message;
use berth_proto::ttrpc;
use serde_json::json;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// runc's default state root used by the shim (`<root>/<namespace>/<id>`).
pub const RUNC_ROOT: &str = "/run/containerd/runc";

/// `containerd.v1.types.Status` values.
pub const CREATED: i32 = 1;
pub const RUNNING: i32 = 2;
pub const STOPPED: i32 = 3;

const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "true", "ls", "readlink", "stty", "tty", "id", "env",
];

/// One direct shim session.
pub struct Direct {
    tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub namespace: String,
    /// The fake containerd gRPC address passed as `-address` (only hashed, never dialled).
    pub address: String,
    pub shim: PathBuf,
    rootfs_src: PathBuf,
    ids: Mutex<Vec<String>>,
    finished: bool,
}

/// What one `start` invocation produced, with stdout and stderr on one pipe (as containerd's
/// `CombinedOutput` reads it).
#[derive(Debug)]
pub struct Started {
    pub output: Vec<u8>,
    pub code: i32,
    /// When the combined output pipe reached EOF (every writer closed it).
    pub eof_after: Duration,
    /// When the `start` process exited.
    pub exit_after: Duration,
}

impl Started {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}

/// What one `delete` invocation produced.
#[derive(Debug)]
pub struct Deleted {
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub code: i32,
    pub elapsed: Duration,
}

impl Direct {
    /// A fresh `Direct`, `scenario` on it (an error names the namespace and dir), then
    /// `finish`.
    pub fn run(scenario: impl FnOnce(&Direct) -> Result<()>) -> Result<()> {
        let d = Direct::new()?;
        if let Err(e) = scenario(&d) {
            return Err(e.context(format!("namespace {} dir {}", d.namespace, d.dir.display())));
        }
        d.finish()
    }

    /// A fresh session: tempdir, unique namespace, busybox rootfs source.
    pub fn new() -> Result<Direct> {
        let shim::Scratch {
            shim,
            tmp,
            dir,
            suffix,
        } = shim::scratch("berth-d")?;
        let namespace = format!("bd-{suffix}").to_lowercase();
        let rootfs_src = dir.join("rootfs-src");
        build_rootfs(&rootfs_src)?;
        std::fs::create_dir_all(dir.join("b"))?;
        std::fs::create_dir_all(dir.join("io"))?;
        Ok(Direct {
            address: dir.join("containerd.sock").display().to_string(),
            tmp: Some(tmp),
            dir,
            namespace,
            shim,
            rootfs_src,
            ids: Mutex::new(Vec::new()),
            finished: false,
        })
    }

    /// The bundle path of `id` (all bundles share one parent, as containerd's do).
    pub fn bundle_path(&self, id: &str) -> PathBuf {
        self.dir.join("b").join(id)
    }

    /// The cgroupsPath written into `id`'s config.json (unique per session and id).
    pub fn cgroup_name(&self, id: &str) -> String {
        format!("{}-{}", self.namespace, id.replace('/', "_"))
    }

    /// runc's state directory for `id`.
    pub fn runc_state(&self, id: &str) -> PathBuf {
        Path::new(RUNC_ROOT).join(&self.namespace).join(id)
    }

    /// The address `start` must print for grouping key `key`.
    pub fn expected_address(&self, key: &str) -> String {
        format!(
            "unix://{}",
            leaks::shim_socket(&self.address, &self.namespace, key).display()
        )
    }

    /// Writes `<bundle>/config.json` (a runc-spec-like root config running `args`) and an
    /// empty `rootfs/`, and remembers `id` for cleanup.
    pub fn bundle(&self, id: &str, args: &[&str], annotations: &[(&str, &str)]) -> Result<PathBuf> {
        {
            let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            if !ids.iter().any(|i| i == id) {
                ids.push(id.to_string());
            }
        }
        let b = self.bundle_path(id);
        std::fs::create_dir_all(b.join("rootfs"))?;
        self.write_config(id, args, annotations)?;
        Ok(b)
    }

    /// (Re)writes `id`'s config.json.
    pub fn write_config(
        &self,
        id: &str,
        args: &[&str],
        annotations: &[(&str, &str)],
    ) -> Result<()> {
        let ann: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "berth",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "annotations": ann,
            "linux": {
                "cgroupsPath": format!("/{}", self.cgroup_name(id)),
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}
                ],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"]
            }
        });
        let p = self.bundle_path(id).join("config.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&spec)?)
            .with_context(|| format!("write {}", p.display()))
    }

    fn base_command(&self, cwd: &Path) -> Command {
        self.launched_command(cwd, &[])
    }

    /// `launcher... <shim>` (just `<shim>` when `launcher` is empty) with the session's
    /// cwd and environment scrubbing; the launcher may set variables again (`env K=V`).
    fn launched_command(&self, cwd: &Path, launcher: &[&str]) -> Command {
        let mut c = match launcher.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&self.shim);
                c
            }
            None => Command::new(&self.shim),
        };
        c.current_dir(cwd)
            // Our own daemon starts the shim without containerd's event socket.
            .env_remove("TTRPC_ADDRESS")
            .env_remove("GRPC_ADDRESS")
            .env_remove("NAMESPACE")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("BERTH_SHIM_SOCKET");
        c
    }

    /// `<shim> -namespace <ns> -id <id> -address <fake> start` with cwd = the bundle and
    /// `stdin` as the options input. stdout and stderr share one pipe; waits at most
    /// `eof_bound` for EOF on it (a daemon holding it would keep it open forever).
    pub fn start(&self, id: &str, stdin: &[u8], eof_bound: Duration) -> Result<Started> {
        self.start_via(id, &[], stdin, eof_bound)
    }

    /// [`Direct::start`] run as `launcher... <shim> -namespace ... start`: e.g.
    /// `["env", "K=V"]` to give `start` (and so the daemon) a variable, or
    /// `sh -c '...; "$@"; exit $?' sh` to control the start process's parent.
    pub fn start_via(
        &self,
        id: &str,
        launcher: &[&str],
        stdin: &[u8],
        eof_bound: Duration,
    ) -> Result<Started> {
        let (r, w) = pipe()?;
        let mut cmd = self.launched_command(&self.bundle_path(id), launcher);
        cmd.args([
            "-namespace",
            &self.namespace,
            "-id",
            id,
            "-address",
            &self.address,
        ])
        .arg("start")
        .stdin(Stdio::piped())
        .stdout(Stdio::from(w.try_clone()?))
        .stderr(Stdio::from(w));
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("spawn shim start")?;
        // Drop our copies of the write end (held by `cmd`) so EOF depends on the shim only.
        drop(cmd);
        if let Some(mut s) = child.stdin.take() {
            s.write_all(stdin).context("write start stdin")?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(r);
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            let _ = tx.send((buf, Instant::now()));
        });
        let status = cmd::wait_bounded(&mut child, Duration::from_secs(10))?;
        let exit_after = t0.elapsed();
        let Some(status) = status else {
            bail!("shim start did not exit within 10 s");
        };
        let (output, eof_at) = rx.recv_timeout(eof_bound).map_err(|_| {
            anyhow::anyhow!(
                "start's stdout/stderr pipe still open {eof_bound:?} after spawn \
                 (start exited {status} after {exit_after:?}): the daemon inherited it"
            )
        })?;
        Ok(Started {
            output,
            code: cmd::code_of(status),
            eof_after: eof_at.duration_since(t0),
            exit_after,
        })
    }

    /// `start` that must succeed, print exactly the expected address and close its pipes.
    pub fn start_ok(&self, id: &str, key: &str) -> Result<String> {
        let s = self.start(id, &[], Duration::from_secs(2))?;
        let want = self.expected_address(key);
        if s.code != 0 || s.output != want.as_bytes() {
            bail!(
                "start {id}: exit {} output {:?}, expected exit 0 and exactly {want:?}",
                s.code,
                s.text()
            );
        }
        Ok(want)
    }

    /// Bundles `id` running `sleep 600` and starts its shim ([`Direct::start_ok`], `id` as
    /// the grouping key): the shim's address and its daemon's pid.
    pub fn start_sleeper(&self, id: &str) -> Result<(String, i32)> {
        self.bundle(id, &["sleep", "600"], &[])?;
        let addr = self.start_ok(id, id)?;
        let daemon = self.daemons().first().context("no daemon")?.pid;
        Ok((addr, daemon))
    }

    /// `<shim> -namespace <ns> -address <fake> -publish-binary <x> -id <id> -bundle <B> delete`
    /// with cwd = the bundle and no stdin, as containerd 1.6 runs it.
    pub fn delete_action(&self, id: &str) -> Result<Deleted> {
        let b = self.bundle_path(id);
        let mut cmd = self.base_command(&b);
        cmd.args([
            "-namespace",
            &self.namespace,
            "-address",
            &self.address,
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            id,
            "-bundle",
        ])
        .arg(&b)
        .arg("delete")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("spawn shim delete")?;
        let mut out = child.stdout.take().context("stdout")?;
        let mut err = child.stderr.take().context("stderr")?;
        let ho = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            b
        });
        let he = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = err.read_to_end(&mut b);
            b
        });
        let st = cmd::wait_bounded(&mut child, Duration::from_secs(10))?
            .context("shim delete did not exit within 10 s")?;
        let elapsed = t0.elapsed();
        Ok(Deleted {
            stdout: ho.join().unwrap_or_default(),
            stderr: String::from_utf8_lossy(&he.join().unwrap_or_default()).into_owned(),
            code: cmd::code_of(st),
            elapsed,
        })
    }

    /// Shim daemons started for this session (argv carries our unique `-address`).
    pub fn daemons(&self) -> Vec<procs::Proc> {
        procs::shims_of(&self.address)
    }

    /// The busybox rootfs directory the default Create request bind-mounts.
    pub fn rootfs_src(&self) -> &Path {
        &self.rootfs_src
    }

    /// A Create request: the busybox rootfs as a bind mount the shim applies on `rootfs/`.
    pub fn create_req(&self, id: &str, stdout: &str, stderr: &str) -> api::CreateTaskRequest {
        let m = api::Mount {
            type_: "bind".into(),
            source: self.rootfs_src.display().to_string(),
            options: vec!["rbind".into(), "rw".into()],
            ..Default::default()
        };
        api::CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle_path(id).display().to_string(),
            rootfs: vec![m],
            stdout: stdout.into(),
            stderr: stderr.into(),
            ..Default::default()
        }
    }

    /// One `containerd.task.v2.Task/<method>` call.
    pub async fn rpc<Req: Message, Resp: Message>(
        &self,
        client: &ttrpc::r#async::Client,
        method: &str,
        req: &Req,
    ) -> std::result::Result<Resp, ttrpc::Error> {
        task_api::call(client, &self.namespace, task_api::TASK_V2, method, req).await
    }

    /// Mounts currently on `id`'s `rootfs/`.
    pub fn rootfs_mounts(&self, id: &str) -> Vec<PathBuf> {
        leaks::mounts_under(&self.bundle_path(id).join("rootfs"))
    }

    /// cgroup directories of `id` that exist in any hierarchy.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        let name = self.cgroup_name(id);
        let mut v = Vec::new();
        if Path::new("/sys/fs/cgroup").join(&name).exists() {
            v.push(Path::new("/sys/fs/cgroup").join(&name));
        }
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let d = e.path().join(&name);
                if d.is_dir() {
                    v.push(d);
                }
            }
        }
        v
    }

    /// Asserts a clean end (no daemon, socket, mount, runc state or cgroup left), then cleans up.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        let mut problems = Vec::new();
        let _ = procs::poll(Duration::from_secs(5), "shim daemons to exit", || {
            self.daemons().is_empty().then_some(())
        });
        for p in self.daemons() {
            problems.push(format!("leaked shim daemon {} {:?}", p.pid, p.argv));
        }
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for id in &ids {
            let s = leaks::shim_socket(&self.address, &self.namespace, id);
            if s.exists() {
                problems.push(format!("leaked shim socket {} (key {id})", s.display()));
            }
            for d in self.cgroup_dirs(id) {
                problems.push(format!("leaked cgroup {}", d.display()));
            }
        }
        for m in leaks::mounts_under(&self.dir) {
            problems.push(format!("leaked mount {}", m.display()));
        }
        for e in leaks::leftover_entries(&Path::new(RUNC_ROOT).join(&self.namespace)) {
            problems.push(format!("leaked runc state {}", e.display()));
        }
        self.force_cleanup();
        if !problems.is_empty() {
            bail!(
                "direct shim teardown found leaks:\n  {}",
                problems.join("\n  ")
            );
        }
        Ok(())
    }

    fn force_cleanup(&mut self) {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let root = Path::new(RUNC_ROOT).join(&self.namespace);
        for id in &ids {
            if self.runc_state(id).exists() {
                for bin in ["runc", "crun"] {
                    let _ = cmd::run(
                        Command::new(bin)
                            .arg("--root")
                            .arg(&root)
                            .args(["delete", "--force", id]),
                        Duration::from_secs(10),
                    );
                }
            }
        }
        // Only daemons carrying this session's unique fake address: started by this test.
        for p in self.daemons() {
            let _ = procs::signal(p.pid, libc::SIGKILL);
        }
        let _ = procs::poll(Duration::from_secs(5), "killed daemons to go", || {
            self.daemons().is_empty().then_some(())
        });
        for m in leaks::mounts_under(&self.dir) {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: umount2 with a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        for id in &ids {
            let _ = std::fs::remove_file(leaks::shim_socket(&self.address, &self.namespace, id));
            for d in self.cgroup_dirs(id) {
                let _ = std::fs::remove_dir(d);
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        if let Some(t) = self.tmp.take() {
            let _ = t.close();
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        if !self.finished {
            self.force_cleanup();
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A busybox rootfs directory: /bin/busybox plus applet links and the usual mount points.
fn build_rootfs(dir: &Path) -> Result<()> {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(image::BUSYBOX, dir.join("bin/busybox"))
        .with_context(|| format!("copy {} (install busybox-static)", image::BUSYBOX))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a))?;
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}
