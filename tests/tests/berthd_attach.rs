//! berthd's Attach, as `kubectl attach` / `crictl attach` use it, over SPDY/3.1 (the
//! suite's own client) and WebSocket v5 (`berth_tests::ws`): two attachers at once sharing
//! the output while one's stdin reaches the container, a terminal and its resizes,
//! StdinOnce, a client killed mid-attach, an attach right after a kill -9 of berthd, and
//! bad requests. Leaks are judged from the attach FIFO dirs and the shim's and berthd's fds.

use anyhow::{bail, ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::cri_log;
use berth_tests::image;
use berth_tests::pod::Pod;
use berth_tests::procs;
use berth_tests::spdy::{ExecSession, EXEC_PROTOCOLS};
use berth_tests::streaming::{eventually, open_fds, Rs};
use berth_tests::ws::WsSession;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);

/// A container reading lines from its stdin and answering each on stdout and stderr.
fn echoer(name: &str, stdin_once: bool) -> cri::ContainerConfig {
    let mut c = container_config(
        name,
        image::BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "while read l; do echo \"got $l\"; echo \"err $l\" >&2; done; echo done",
        ],
    );
    c.stdin = true;
    c.stdin_once = stdin_once;
    c
}

async fn attach_url(rs: &Rs, cid: &str, stdin: bool, tty: bool) -> Result<String> {
    let url = rs
        .clone()
        .attach(cri::AttachRequest {
            container_id: cid.into(),
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        })
        .await
        .context("Attach")?
        .into_inner()
        .url;
    ensure!(url.contains("/attach/"), "Attach URL {url:?}");
    Ok(url)
}

/// Resizes the terminal to `width` x `height`, then asks `stty size` until it answers
/// `<height> <width>` (the size may land after the first command; 20 tries).
async fn resize_shows(
    a: &mut ExecSession,
    seen: &mut Vec<u8>,
    width: u16,
    height: u16,
) -> Result<()> {
    a.resize(width, height).await?;
    let stdin = a.stdin.as_ref().context("no stdin")?.tx.clone();
    let want = format!("{height} {width}");
    for _ in 0..20 {
        stdin.write(b"stty size\n").await?;
        if a.stdout.rx.read_until(seen, &want, WITHIN).await.is_ok() {
            return Ok(());
        }
    }
    bail!(
        "stty never said {want}: {:?}",
        String::from_utf8_lossy(seen)
    )
}

/// Attach FIFO dirs berthd has open (`<state>/exec/attach-*`).
fn attach_dirs(d: &Berthd) -> Vec<String> {
    std::fs::read_dir(d.dir.path().join("state").join("exec"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("attach-"))
                .collect()
        })
        .unwrap_or_default()
}

fn shim_pid(d: &Berthd) -> Result<i32> {
    let shims = procs::shims_of(&d.socket.display().to_string());
    ensure!(shims.len() == 1, "want one shim, found {}", shims.len());
    Ok(shims[0].pid)
}

/// Waits until no attach dir is left and the shim holds no more fds than `before`.
async fn ensure_detached(d: &Berthd, shim: i32, before: usize) -> Result<()> {
    ensure!(
        eventually(WITHIN, || attach_dirs(d).is_empty()).await,
        "attach dirs left: {:?}",
        attach_dirs(d)
    );
    let ok = eventually(WITHIN, || {
        open_fds(shim).map(|f| f.len() <= before).unwrap_or(false)
    })
    .await;
    ensure!(
        ok,
        "the shim holds {} fds, {before} before the attach: {:?}",
        open_fds(shim)?.len(),
        open_fds(shim)?
    );
    Ok(())
}

async fn ensure_running(pod: &Pod, cid: &str) -> Result<()> {
    let st = pod.container_status(cid).await?;
    ensure!(
        st.state == cri::ContainerState::ContainerRunning as i32,
        "container state {} ({})",
        st.state,
        st.reason
    );
    Ok(())
}

#[test]
fn two_attachers_share_the_output_and_stdin_reaches_the_container() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("attach2", &logs.join("attach2"))).await?;
        let cid = pod.start(echoer("echoer", false)).await?;
        let shim = shim_pid(d)?;
        let shim_fds = open_fds(shim)?.len();

        // A over SPDY with stdin; B over WebSocket v5, output only.
        let url_a = attach_url(&rs, &cid, true, false).await?;
        let mut a = ExecSession::start(&url_a, &EXEC_PROTOCOLS, true, false).await?;
        let url_b = attach_url(&rs, &cid, false, false).await?;
        ensure!(url_a != url_b, "two attaches got one URL");
        let mut b = WsSession::connect(&url_b, &["v5.channel.k8s.io"]).await?;
        ensure!(
            b.protocol == "v5.channel.k8s.io",
            "negotiated {:?}",
            b.protocol
        );

        let stdin = a.stdin.as_ref().context("no stdin stream")?.tx.clone();
        // An attach sees output from the moment the server has registered it, which
        // the client cannot observe (kubelet's protocol has no such signal either):
        // A's lines are repeated until B shows one.
        let mut synced = false;
        for k in 0..40 {
            stdin.write(format!("ping{k}\n").as_bytes()).await?;
            let want = format!("got ping{k}\n");
            if b.read_until(&want, Duration::from_millis(500))
                .await
                .is_ok()
            {
                synced = true;
                break;
            }
        }
        ensure!(synced, "B never saw A's input: {:?}", b.out.stdout_text());
        stdin.write(b"one\n").await?;
        let (mut a_out, mut a_err) = (Vec::new(), Vec::new());
        a.stdout
            .rx
            .read_until(&mut a_out, "got one\n", WITHIN)
            .await?;
        let a_stderr = a.stderr.as_mut().context("no stderr stream")?;
        a_stderr
            .rx
            .read_until(&mut a_err, "err one\n", WITHIN)
            .await?;
        b.read_until("got one\n", WITHIN).await?;
        ensure!(
            eventually(WITHIN, || std::fs::read_to_string(
                logs.join("attach2/echoer.log")
            )
            .map(|l| cri_log::stream(&l, "stderr").contains("err one"))
            .unwrap_or(false))
            .await,
            "the log did not get what the attachers saw"
        );

        // A's stdin ends: A is detached (the container has no StdinOnce), B stays.
        stdin.close().await?;
        let out = a.finish(None, WITHIN).await?;
        ensure!(
            out.status["status"] == "Success",
            "A's status after its stdin ended: {}",
            out.status
        );
        ensure_running(&pod, &cid).await?;

        // A third attacher's input still reaches the container, and B sees the answer.
        let url_c = attach_url(&rs, &cid, true, false).await?;
        let c = ExecSession::start(&url_c, &EXEC_PROTOCOLS, true, false).await?;
        c.stdin
            .as_ref()
            .context("no stdin")?
            .tx
            .write(b"two\n")
            .await?;
        b.read_until("got two\n", WITHIN).await?;
        // C vanishes without a goodbye.
        let ExecSession { session, .. } = c;
        session.kill().await;
        ensure!(
            eventually(WITHIN, || attach_dirs(d).len() == 1).await,
            "attach dirs after C went: {:?}",
            attach_dirs(d)
        );
        ensure_running(&pod, &cid).await?;

        // The container's exit ends B's session with a Success status.
        let mut rs2 = rs.clone();
        rs2.stop_container(cri::StopContainerRequest {
            container_id: cid.clone(),
            timeout: 0,
        })
        .await?;
        let out = b.finish(WITHIN).await?;
        ensure!(
            out.status()?["status"] == "Success",
            "B's status: {:?}",
            String::from_utf8_lossy(&out.error)
        );
        ensure!(!out.stdout_text().contains("got one\ngot one"));
        ensure_detached(d, shim, shim_fds).await?;
        Ok(())
    })
}

#[test]
fn stdin_once_closes_the_containers_stdin_when_the_first_attach_ends() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("once", &logs.join("once"))).await?;
        let cid = pod.start(echoer("once", true)).await?;
        let url = attach_url(&rs, &cid, true, false).await?;
        let mut a = WsSession::connect(&url, &["v5.channel.k8s.io"]).await?;
        a.send(berth_tests::ws::STDIN, b"hello\n").await?;
        a.read_until("got hello\n", WITHIN).await?;
        // Closing stdin closes the container's: the loop ends, the output follows, then
        // the container exits and the session with it.
        a.close_stdin().await?;
        let out = a.finish(WITHIN).await?;
        ensure!(
            out.stdout_text() == "got hello\ndone\n",
            "stdout {:?}",
            out.stdout_text()
        );
        ensure!(out.status()?["status"] == "Success");
        let ex = pod.wait_exit(&cid).await?;
        ensure!(ex.status.exit_code == 0, "exit {}", ex.status.exit_code);
        // Nothing to attach to any more.
        let e = rs
            .clone()
            .attach(cri::AttachRequest {
                container_id: cid.clone(),
                stdout: true,
                ..Default::default()
            })
            .await
            .expect_err("attach to an exited container");
        ensure!(e.code() == tonic::Code::FailedPrecondition, "{e:?}");
        ensure!(eventually(WITHIN, || attach_dirs(d).is_empty()).await);
        Ok(())
    })
}

#[test]
fn attach_to_a_terminal_follows_resizes_and_ends_with_the_container() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("tty", &logs.join("tty"))).await?;
        let mut cfg = container_config("tty", image::BUSYBOX_IMAGE, &["sh"]);
        cfg.tty = true;
        cfg.stdin = true;
        let cid = pod.start(cfg).await?;
        let url = attach_url(&rs, &cid, true, true).await?;
        let mut a = ExecSession::start(&url, &EXEC_PROTOCOLS, true, true).await?;
        let mut seen = Vec::new();
        resize_shows(&mut a, &mut seen, 100, 40).await?;
        resize_shows(&mut a, &mut seen, 120, 33).await?;
        let stdin = a.stdin.as_ref().context("no stdin")?.tx.clone();
        stdin.write(b"exit 3\n").await?;
        let out = a.finish(None, WITHIN).await?;
        ensure!(out.status["status"] == "Success", "{}", out.status);
        let ex = pod.wait_exit(&cid).await?;
        ensure!(ex.status.exit_code == 3, "exit {}", ex.status.exit_code);
        // The terminal's output is in the log as stdout.
        ensure!(ex.stdout.contains("33 120"), "log stdout {:?}", ex.stdout);
        Ok(())
    })
}

#[test]
fn attach_and_exec_work_at_once_after_a_berthd_kill9_and_bad_attaches_are_refused() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("k9", &logs.join("k9"))).await?;
        let cid = pod.start(echoer("k9", false)).await?;
        let created = pod
            .create(container_config(
                "idle",
                image::BUSYBOX_IMAGE,
                &["sleep", "100"],
            ))
            .await?;
        d.kill9()?;
        d.restart()?;
        let (rs, _) = d.client().await?;
        let mut pod = pod;
        pod.rs = rs.clone();
        let url = attach_url(&rs, &cid, true, false).await?;
        let mut a = WsSession::connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).await?;
        a.send(berth_tests::ws::STDIN, b"after\n").await?;
        a.read_until("got after\n", WITHIN).await?;
        // A streaming exec works at once too.
        let url = rs
            .exec_url(&cid, &["echo", "exec after restart"], false, false)
            .await?;
        let out = berth_tests::spdy::exec(&url, None, None).await?;
        ensure!(
            out.stdout_text() == "exec after restart\n" && out.exit_code() == Some(0),
            "exec after the restart: {:?} {}",
            out.stdout_text(),
            out.status
        );

        let bad = |tty, stdin, stdout, stderr, id: &str| cri::AttachRequest {
            container_id: id.to_string(),
            tty,
            stdin,
            stdout,
            stderr,
        };
        for (req, code) in [
            (
                bad(true, true, true, true, &cid),
                tonic::Code::InvalidArgument,
            ),
            (
                bad(false, false, false, false, &cid),
                tonic::Code::InvalidArgument,
            ),
            (bad(false, false, true, true, "nope"), tonic::Code::NotFound),
            (
                bad(false, false, true, true, &created),
                tonic::Code::FailedPrecondition,
            ),
        ] {
            let e = rs
                .clone()
                .attach(req.clone())
                .await
                .expect_err("bad attach");
            ensure!(e.code() == code, "{req:?}: {e:?}");
        }
        drop(a);
        ensure!(
            eventually(WITHIN, || attach_dirs(d).is_empty()).await,
            "attach dirs: {:?}",
            attach_dirs(d)
        );
        ensure_running(&pod, &cid).await
    })
}
