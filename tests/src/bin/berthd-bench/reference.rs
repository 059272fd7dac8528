//! The reference containerd 1.6 of the environment script `$BERTH_CRI_REFERENCE_ENV` names
//! (kept outside this repository): brought up when
//! its socket does not answer, found by the script's pid file, and killed -9 and restarted
//! with the command line, environment and directory it ran with.

use super::*;
use std::os::unix::process::CommandExt;

pub(crate) const SOCKET: &str = "/run/anchor-containerd/containerd.sock";
/// The script's pid file and log (its `down`/`status` keep working after our restart).
const PID_FILE: &str = "/run/anchor-env/containerd.pid";
pub(crate) const LOG_FILE: &str = "/var/log/anchor/containerd.log";
/// The test image, served by the script's local registry mirror.
pub(crate) const IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const UP_TIMEOUT: Duration = Duration::from_secs(900);

/// The reference environment script: `$BERTH_CRI_REFERENCE_ENV`, required for the
/// reference side (there is no default: the script is not part of this repository).
pub(crate) fn env_script() -> Result<PathBuf> {
    match std::env::var_os("BERTH_CRI_REFERENCE_ENV") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => bail!(
            "BERTH_CRI_REFERENCE_ENV is not set: the containerd side of the bench needs the \
             path of the reference environment script (cri-reference-env.sh); set it, or run \
             with --berthd-only"
        ),
    }
}

async fn answers() -> bool {
    match connect(SOCKET).await {
        Ok((mut rs, _)) => rs
            .status(cri::StatusRequest { verbose: false })
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// `cri-reference-env.sh up` (what that starts stays up; `cri-reference-env.sh down` stops
/// it): containerd and the registry at 127.0.0.1:5000.
pub(crate) fn env_up() -> Result<()> {
    let script = env_script()?;
    eprintln!("[bench] bash {} up", script.display());
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("up")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("run {}", script.display()))?;
    // Package installs and the image build make a first `up` slow; bound it anyway.
    match cmd::wait_bounded(&mut child, UP_TIMEOUT)? {
        Some(st) => ensure!(st.success(), "{} up: {st}", script.display()),
        None => bail!("{} up: no result within {UP_TIMEOUT:?}", script.display()),
    }
    Ok(())
}

/// Connects, running `cri-reference-env.sh up` first when the socket does not answer.
/// Pulls the image.
pub(crate) async fn open() -> Result<(Rt, RefContainerd)> {
    // The reference side is only measured against the environment the script sets up.
    env_script()?;
    if !answers().await {
        eprintln!("[bench] {SOCKET} does not answer");
        env_up()?;
    }
    let (rs, mut is) = connect(SOCKET).await?;
    is.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .with_context(|| format!("PullImage {IMAGE}"))?;
    Ok((rs, RefContainerd::find()?))
}

/// The reference containerd daemon process (not its shims).
pub(crate) struct RefContainerd {
    pub(crate) pid: i32,
    /// Set once this bench restarted it: the process is ours to reap.
    child: Option<std::process::Child>,
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// NUL-separated /proc file → its parts.
fn nul_list(pid: i32, file: &str) -> Result<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{pid}/{file}"))
        .with_context(|| format!("read /proc/{pid}/{file}"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

impl RefContainerd {
    fn find() -> Result<RefContainerd> {
        let text = std::fs::read_to_string(PID_FILE)
            .with_context(|| format!("read {PID_FILE} (written by cri-reference-env.sh up)"))?;
        let pid: i32 = text
            .trim()
            .parse()
            .with_context(|| format!("{PID_FILE}: {text:?}"))?;
        ensure!(
            comm(pid) == "containerd",
            "{PID_FILE} names pid {pid}, which is not containerd"
        );
        Ok(RefContainerd { pid, child: None })
    }

    /// kill -9 of the daemon, then the same command line again (setsid'ed and logging to
    /// the script's log, as the script starts it); returns the instant before the exec.
    pub(crate) fn kill_and_respawn(&mut self) -> Result<Instant> {
        use std::os::unix::ffi::OsStrExt;
        let pid = self.pid;
        ensure!(
            comm(pid) == "containerd",
            "pid {pid} is no longer containerd"
        );
        let argv = nul_list(pid, "cmdline")?;
        let env = nul_list(pid, "environ")?;
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
        ensure!(!argv.is_empty(), "empty cmdline for pid {pid}");
        procs::signal(pid, libc::SIGKILL)?;
        match self.child.take() {
            Some(mut c) => {
                c.wait()?;
            }
            None => procs::poll(Duration::from_secs(10), "killed containerd to go", || {
                (!procs::alive(pid)).then_some(())
            })?,
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(LOG_FILE)?;
        let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
        let mut cmd = Command::new(os(&argv[0]));
        cmd.args(argv[1..].iter().map(|a| os(a)))
            .env_clear()
            .envs(env.iter().filter_map(|kv| {
                let i = kv.iter().position(|b| *b == b'=')?;
                Some((os(&kv[..i]), os(&kv[i + 1..])))
            }))
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid(2) is async-signal-safe; the child leaves the bench's session so a
        // Ctrl-C of the bench does not reach it (the script starts it under setsid too).
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let t0 = Instant::now();
        let child = cmd.spawn().context("restart containerd")?;
        self.pid = child.id() as i32;
        self.child = Some(child);
        let tmp = format!("{PID_FILE}.berthd-bench");
        std::fs::write(&tmp, format!("{}\n", self.pid))?;
        std::fs::rename(&tmp, PID_FILE)?;
        Ok(t0)
    }
}
