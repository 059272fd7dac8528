//! berthd under systemd, as `daemon/packaging/berthd.service` runs it: the unit passes
//! `systemd-analyze verify` (with its ExecStart pointed at the berthd under test) and has
//! the settings pods depend on; berthd started the way the unit starts it (its ExecStart
//! arguments, NOTIFY_SOCKET bound by the test, LimitNOFILE) tells READY=1 only once CRI
//! answers, and a SIGTERM to berthd alone (KillMode=process) stops it with STOPPING=1
//! while the pod's shim and container keep running, holding nothing berthd inherited (a
//! pipe left open into berthd ends with it); the restarted berthd tells READY=1 again and
//! has the pod back.
//!
//! Not reproduced here: OOMScoreAdjust=-999 (lowering a score needs CAP_SYS_RESOURCE,
//! which systemd has and this test machine does not), cgroup delegation (systemd is not
//! pid 1 here).

use anyhow::{bail, ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{self, Berthd};
use berth_tests::cri::{block_on, container_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::pod::Pod;
use berth_tests::{cmd, image, procs};
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/packaging/berthd.service")
}

/// The unit's `section.Key` → values (a key may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut section = String::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(format!("{section}.{}", k.trim()))
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> Result<&'a str> {
    match unit.get(key).map(Vec::as_slice) {
        Some([v]) => Ok(v),
        other => bail!("{key}: {other:?} (want exactly one)"),
    }
}

#[test]
fn the_unit_verifies_and_has_what_pods_need() -> Result<()> {
    let text = std::fs::read_to_string(unit_path())?;
    let unit = parse_unit(&text);
    for (key, want) in [
        ("Service.Type", "notify"),
        ("Service.KillMode", "process"),
        ("Service.Delegate", "yes"),
        ("Service.Restart", "always"),
        ("Service.OOMScoreAdjust", "-999"),
        ("Install.WantedBy", "multi-user.target"),
    ] {
        ensure!(one(&unit, key)? == want, "{key} is not {want}");
    }
    ensure!(one(&unit, "Service.LimitNOFILE")?.parse::<u64>()? >= 65536);
    for key in ["Unit.After", "Unit.Wants"] {
        ensure!(
            one(&unit, key)?.contains("network-online.target"),
            "{key} lacks network-online.target"
        );
    }
    let exec = one(&unit, "Service.ExecStart")?;
    ensure!(exec.starts_with("/usr/bin/berthd "), "ExecStart {exec}");

    // systemd-analyze checks the unit's syntax and that ExecStart's binary exists: the
    // installed path becomes the berthd under test, in a copy.
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("berthd.service");
    let berthd = berthd::binary()?;
    std::fs::write(
        &copy,
        text.replace("/usr/bin/berthd", &berthd.display().to_string()),
    )?;
    let out = cmd::run(
        Command::new("systemd-analyze").arg("verify").arg(&copy),
        Duration::from_secs(60),
    )?;
    // Warnings (an unknown key, a bad value) do not fail it: any output does here.
    let said = format!("{}{}", out.stdout, out.stderr);
    ensure!(
        out.code == 0 && said.trim().is_empty(),
        "systemd-analyze verify: exit {}\n{said}",
        out.code
    );
    Ok(())
}

/// The next notification datagram (bounded by the socket's read timeout).
fn next_notification(sock: &UnixDatagram, d: &Berthd) -> Result<String> {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .with_context(|| format!("no notification from berthd; log:\n{}", d.log()))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Starts `d` as the unit's ExecStart does (with `d`'s own config), NOTIFY_SOCKET set to
/// `notify` and the unit's LimitNOFILE (as far as this machine's hard limit allows).
/// `inherit`: a descriptor left open into berthd without close-on-exec, as a shell or a
/// service manager may leave one.
fn start_as_unit(
    d: &mut Berthd,
    notify: &Path,
    nofile: u64,
    inherit: Option<std::os::fd::RawFd>,
) -> Result<()> {
    let text = std::fs::read_to_string(unit_path())?;
    let unit = parse_unit(&text);
    let exec = one(&unit, "Service.ExecStart")?;
    let mut args: Vec<std::ffi::OsString> =
        exec.split_whitespace().skip(1).map(Into::into).collect();
    let at = args
        .iter()
        .position(|a| a == "--config")
        .context("ExecStart has no --config")?;
    ensure!(args[at + 1] == "/etc/berth/config.toml");
    args[at + 1] = d.config.clone().into();
    let notify = notify.to_path_buf();
    d.spawn_with(&args, move |c| {
        c.env("NOTIFY_SOCKET", &notify);
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
        unsafe {
            c.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    })
}

/// Whether reading `r` sees the end of the pipe within `limit` (every writer closed).
fn ends_within(r: &mut std::io::PipeReader, limit: Duration) -> Result<bool> {
    use std::io::Read;
    let mut fds = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(r),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, limit.as_millis() as libc::c_int) };
    if n <= 0 {
        return Ok(false);
    }
    let mut buf = [0u8; 64];
    Ok(r.read(&mut buf)? == 0)
}

/// The soft RLIMIT_NOFILE of `pid`.
fn nofile_of(pid: i32) -> Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open files limit")?;
    Ok(line
        .split_whitespace()
        .nth(3)
        .context("no soft limit")?
        .parse()?)
}

fn environ_of(pid: i32) -> Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))?;
    Ok(raw
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect())
}

#[test]
fn started_as_the_unit_it_notifies_and_a_stop_leaves_pods_running() -> Result<()> {
    let mut d = Berthd::builder().busybox().configure()?;
    let notify = d.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify)?;
    sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let unit = parse_unit(&std::fs::read_to_string(unit_path())?);
    let want_nofile: u64 = one(&unit, "Service.LimitNOFILE")?.parse()?;
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out pointer.
    ensure!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) } == 0);
    let nofile = want_nofile.min(hard.rlim_max);

    // A pipe berthd inherits: its reader must see the end once berthd is gone, so the
    // shims berthd starts must not hold it (they outlive berthd).
    let (mut inherited_rd, inherited_wr) = std::io::pipe()?;
    start_as_unit(
        &mut d,
        &notify,
        nofile,
        Some(std::os::fd::AsRawFd::as_raw_fd(&inherited_wr)),
    )?;
    drop(inherited_wr);
    let ready = next_notification(&sock, &d)?;
    ensure!(
        ready.lines().any(|l| l == "READY=1"),
        "first message: {ready:?}"
    );
    let socket = d.socket.display().to_string();
    let r = block_on(async {
        // READY=1 means served: the very next call is answered.
        let (mut rs, _) = berth_tests::cri::connect(&socket).await?;
        let v = tokio::time::timeout(
            Duration::from_secs(10),
            rs.version(cri::VersionRequest::default()),
        )
        .await
        .context("Version right after READY=1 got no answer")??;
        ensure!(v.into_inner().runtime_name == "berth");
        ensure!(nofile_of(d.pid())? == nofile, "berthd's open files limit");

        let pod = Pod::run(&d, d.pod_config("kept")).await?;
        let cid = pod
            .start(container_config(
                "idler",
                image::BUSYBOX_IMAGE,
                &["sleep", "100000"],
            ))
            .await?;
        let shims = procs::shims_of(&socket);
        ensure!(shims.len() == 1, "shims {shims:?}");
        // The shim (and so runc and the container) run without NOTIFY_SOCKET: runc would
        // otherwise wait for the container's own READY=1.
        let env = environ_of(shims[0].pid)?;
        ensure!(
            !env.iter().any(|v| v.starts_with("NOTIFY_SOCKET=")),
            "the shim inherited NOTIFY_SOCKET"
        );
        let sleeper =
            procs::shim_children(&socket, |argv| argv.first().is_some_and(|a| a == "sleep"));
        ensure!(sleeper.len() == 1, "container process {sleeper:?}");
        Ok((pod.id.clone(), cid, shims[0].pid, sleeper[0]))
    })?;
    let (pod_id, cid, shim, sleeper) = d.with_log(r)?;

    // systemctl stop with KillMode=process: SIGTERM to berthd alone.
    let code = d.stop()?;
    ensure!(code == 0, "berthd exited {code} after SIGTERM");
    let stopping = next_notification(&sock, &d)?;
    ensure!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "after SIGTERM: {stopping:?}"
    );
    ensure!(procs::alive(shim), "the shim died with berthd");
    ensure!(procs::alive(sleeper), "the container died with berthd");
    ensure!(
        ends_within(&mut inherited_rd, Duration::from_secs(10))?,
        "a pipe berthd inherited is still open after berthd exited: its shim or container holds it"
    );

    // Restart=always: the next berthd is ready again and has the pod.
    start_as_unit(&mut d, &notify, nofile, None)?;
    let again = next_notification(&sock, &d)?;
    ensure!(
        again.lines().any(|l| l == "READY=1"),
        "after restart: {again:?}"
    );
    let r = block_on(async {
        let (rs, _) = d.client().await?;
        let state = rs.pod_state(&pod_id).await?;
        ensure!(
            state == cri::PodSandboxState::SandboxReady as i32,
            "pod {state}"
        );
        let st = rs.ctr_status(&cid).await?;
        ensure!(
            st.state == cri::ContainerState::ContainerRunning as i32,
            "container {st:?}"
        );
        ensure!(procs::alive(sleeper), "the container is gone");
        Ok(())
    })?;
    d.with_log(r)?;
    d.finish()
}
