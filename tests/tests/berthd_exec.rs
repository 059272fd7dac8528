//! berthd's CRI streaming server running exec for a second SPDY/3.1 implementation
//! (`berth_tests::spdy`) and a WebSocket client (`berth_tests::ws`, v5 and v4 channels),
//! as kubectl exec (through kubelet) or crictl use it: piped stdin,
//! stdout, stderr and the v4 exit status (v2 for a client that speaks only that); a terminal
//! and resizes; spent, unknown and swapped URLs; a client that vanishes mid-exec; stdin a
//! process never reads. Leaks are judged from berthd's open fds and its exec FIFO directories.
//!
//! Not covered: a URL unused for more than 60 s answering 404 (too slow for this suite).

use anyhow::{bail, ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image;
use berth_tests::pod::Pod;
use berth_tests::spdy::{
    self, ExecSession, PortForward, Session, Upgrade, EXEC_PROTOCOLS, PORT_FORWARD_PROTOCOL,
};
use berth_tests::streaming::{
    ensure_fds_settle, eventually, port_forward_url, settled_fds, sha, Rs,
};
use berth_tests::ws::{self, WsSession};
use std::path::Path;
use std::time::{Duration, Instant};

/// A container that idles until the pod goes.
fn idler() -> cri::ContainerConfig {
    container_config("idler", image::BUSYBOX_IMAGE, &["sleep", "1000000"])
}

/// Exec's URL for `cmd` (stdout always; stderr unless a terminal).
async fn exec_url(rs: &Rs, cid: &str, cmd: &[&str], stdin: bool, tty: bool) -> Result<String> {
    let url = rs.exec_url(cid, cmd, stdin, tty).await?;
    ensure!(
        url.starts_with("http://127.0.0.1:") && url.contains("/exec/"),
        "Exec URL {url:?}"
    );
    Ok(url)
}

/// Runs `cmd` through Exec and the streaming server, as `kubectl exec` would.
async fn run_exec(
    rs: &Rs,
    cid: &str,
    cmd: &[&str],
    stdin: Option<Vec<u8>>,
    tty: Option<(u16, u16)>,
) -> Result<spdy::ExecOutput> {
    let url = exec_url(rs, cid, cmd, stdin.is_some(), tty.is_some()).await?;
    spdy::exec(&url, stdin, tty)
        .await
        .with_context(|| format!("exec {cmd:?}"))
}

/// Checks a zero exit reported as a v4 Success status.
fn ensure_success(what: &str, out: &spdy::ExecOutput) -> Result<()> {
    ensure!(
        out.status["status"] == "Success" && out.exit_code() == Some(0),
        "{what}: status {} (stdout {:?}, stderr {:?})",
        out.status,
        out.stdout_text(),
        out.stderr_text()
    );
    Ok(())
}

/// Entries left in berthd's exec FIFO directory (`<state>/exec`).
fn exec_dirs(d: &Berthd) -> Vec<String> {
    berth_tests::host::names_in(&d.dir.path().join("state").join("exec"))
}

#[test]
fn exec_pipes_stdin_and_reports_output_and_exit_status() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("exec", &logs.join("exec"))).await?;
        let cid = pod.start(idler()).await?;

        let out = run_exec(&rs, &cid, &["cat"], Some(b"hello, berth\n".to_vec()), None).await?;
        ensure!(
            out.protocol == "v4.channel.k8s.io",
            "negotiated {:?}, want the preferred v4",
            out.protocol
        );
        ensure!(
            out.stdout == b"hello, berth\n" && out.stderr.is_empty(),
            "cat: stdout {:?} stderr {:?}",
            out.stdout_text(),
            out.stderr_text()
        );
        ensure_success("cat", &out)?;
        ensure!(
            out.goaway.is_some(),
            "the server ended the session without a GOAWAY"
        );

        // 1 MiB of incompressible bytes goes through cat intact.
        let payload = image::random_bytes(1 << 20, 0x5eed);
        let out = run_exec(&rs, &cid, &["cat"], Some(payload.clone()), None).await?;
        ensure!(
            out.stdout.len() == payload.len() && sha(&out.stdout) == sha(&payload),
            "1 MiB through cat: got {} bytes (sha256 {}), sent {} (sha256 {})",
            out.stdout.len(),
            sha(&out.stdout),
            payload.len(),
            sha(&payload)
        );
        ensure_success("cat 1 MiB", &out)?;

        let out = run_exec(
            &rs,
            &cid,
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            None,
            None,
        )
        .await?;
        ensure!(
            out.stdout_text() == "out\n" && out.stderr_text() == "err\n",
            "stdout {:?} stderr {:?}",
            out.stdout_text(),
            out.stderr_text()
        );
        let s = &out.status;
        ensure!(
            s["status"] == "Failure"
                && s["reason"] == "NonZeroExitCode"
                && s["details"]["causes"].as_array().is_some_and(|c| c
                    .iter()
                    .any(|c| c["reason"] == "ExitCode" && c["message"] == "7")),
            "exit 7 reported as {s}"
        );
        ensure!(out.exit_code() == Some(7), "exit code from {s}");

        // A command that is not there: a failure naming it (there is no exit code).
        let out = run_exec(&rs, &cid, &["/no/such/cmd"], None, None).await?;
        ensure!(
            out.status["status"] == "Failure"
                && out.status.to_string().contains("/no/such/cmd")
                && out.exit_code().is_none(),
            "exec of a missing command: status {}",
            out.status
        );

        // A client that only speaks v2 gets v2: the failure as text on the error stream.
        let url = exec_url(&rs, &cid, &["sh", "-c", "exit 3"], false, false).await?;
        let out = ExecSession::start(&url, &["v2.channel.k8s.io"], false, false)
            .await?
            .finish(None, Duration::from_secs(30))
            .await?;
        let text = String::from_utf8_lossy(&out.error).into_owned();
        ensure!(
            out.protocol == "v2.channel.k8s.io"
                && text.contains('3')
                && serde_json::from_str::<serde_json::Value>(&text).is_err(),
            "v2 exit 3: protocol {:?}, error stream {text:?}",
            out.protocol
        );
        Ok(())
    })
}

#[test]
fn exec_with_a_terminal_sees_the_size_it_was_resized_to() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("tty", &logs.join("tty"))).await?;
        let cid = pod.start(idler()).await?;
        // The client's first size is the terminal's from the start: no waiting for it
        // (berthd_terminal_size checks that over every protocol).
        let script = "stty size; [ -t 0 ] && [ -t 1 ] && echo tty";
        let out = run_exec(&rs, &cid, &["sh", "-c", script], None, Some((101, 33))).await?;
        ensure!(
            out.stdout_text() == "33 101\r\ntty\r\n",
            "stty size after a resize to 101x33 printed {:?}",
            out.stdout_text()
        );
        ensure!(out.stderr.is_empty(), "a terminal has no stderr stream");
        ensure_success("stty size", &out)?;

        // `kubectl exec -it`: the window changes while the process runs.
        let script = "echo \"first $(stty size)\"; n=0; \
             while [ \"$(stty size)\" = '33 101' ] && [ $n -lt 200 ]; do \
             sleep 0.05; n=$((n+1)); done; echo \"then $(stty size)\"";
        let url = exec_url(&rs, &cid, &["sh", "-c", script], true, true).await?;
        let mut s = ExecSession::start(&url, &EXEC_PROTOCOLS, true, true).await?;
        s.resize(101, 33).await?;
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("first 33 101\r\n") {
            match tokio::time::timeout(Duration::from_secs(15), s.stdout.rx.recv()).await {
                Ok(Some(b)) => seen.extend(b),
                _ => bail!(
                    "before the second resize: {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        s.resize(120, 50).await?;
        let out = s.finish(None, Duration::from_secs(30)).await?;
        ensure!(
            out.stdout_text() == "then 50 120\r\n",
            "after a resize to 120x50 mid-session: {:?}",
            out.stdout_text()
        );
        ensure_success("second resize", &out)?;
        Ok(())
    })
}

#[test]
fn exec_over_websocket_v5_and_v4_channels() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("ws", &logs.join("ws"))).await?;
        let cid = pod.start(idler()).await?;

        // v5: stdin piped through cat, then closed with the close signal.
        let url = exec_url(&rs, &cid, &["cat"], true, false).await?;
        let mut s = WsSession::connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).await?;
        ensure!(
            s.protocol == "v5.channel.k8s.io",
            "negotiated {:?}",
            s.protocol
        );
        s.send(ws::STDIN, b"over websocket\n").await?;
        s.read_until("over websocket\n", Duration::from_secs(20))
            .await?;
        s.close_stdin().await?;
        let out = s.finish(Duration::from_secs(20)).await?;
        ensure!(
            out.stdout_text() == "over websocket\n",
            "{:?}",
            out.stdout_text()
        );
        ensure!(out.status()?["status"] == "Success", "{:?}", out.status());

        // v4 (older kubectl): no stdin; exit 7 arrives as NonZeroExitCode / ExitCode.
        let url = rs
            .exec_url(
                &cid,
                &["sh", "-c", "echo out; echo err >&2; exit 7"],
                false,
                false,
            )
            .await?;
        let s = WsSession::connect(&url, &["v4.channel.k8s.io"]).await?;
        ensure!(
            s.protocol == "v4.channel.k8s.io",
            "negotiated {:?}",
            s.protocol
        );
        let out = s.finish(Duration::from_secs(20)).await?;
        let st = out.status()?;
        ensure!(
            out.stdout_text() == "out\n" && out.stderr == b"err\n",
            "stdout {:?} stderr {:?}",
            out.stdout_text(),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            st["reason"] == "NonZeroExitCode"
                && st["details"]["causes"][0]["reason"] == "ExitCode"
                && st["details"]["causes"][0]["message"] == "7",
            "status {st}"
        );
        Ok(())
    })
}

#[test]
fn spent_and_unknown_urls_answer_404() -> Result<()> {
    // A URL unused for over 60 s also answers 404; waiting that long is too slow here.
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("tok", &logs.join("tok"))).await?;
        let cid = pod.start(idler()).await?;
        let refused = |u: Upgrade, what: &str| -> Result<spdy::Refused> {
            match u {
                Upgrade::Refused(r) => Ok(r),
                Upgrade::Switched(_) => bail!("{what}: the server switched protocols"),
            }
        };

        let url = exec_url(&rs, &cid, &["echo", "once"], false, false).await?;
        let out = spdy::exec(&url, None, None).await?;
        ensure!(out.stdout_text() == "once\n", "{:?}", out.stdout_text());
        ensure_success("echo once", &out)?;
        let again = refused(
            Session::upgrade(&url, &EXEC_PROTOCOLS).await?,
            "used exec URL",
        )?;
        ensure!(again.status == 404, "used exec URL: {again:?}");

        let (base, token) = url.rsplit_once('/').context("URL without a token")?;
        let forged = format!("{base}/{}", "0".repeat(token.len()));
        let r = refused(
            Session::upgrade(&forged, &EXEC_PROTOCOLS).await?,
            "unknown token",
        )?;
        ensure!(r.status == 404, "unknown token: {r:?}");
        let r = refused(
            Session::upgrade(&format!("{base}/"), &EXEC_PROTOCOLS).await?,
            "empty token",
        )?;
        ensure!(r.status == 404, "empty token: {r:?}");

        // An exec token is no port-forward token.
        let url = exec_url(&rs, &cid, &["true"], false, false).await?;
        let swapped = url.replace("/exec/", "/portforward/");
        let r = refused(
            Session::upgrade(&swapped, &[PORT_FORWARD_PROTOCOL]).await?,
            "exec token on /portforward/",
        )?;
        ensure!(r.status == 404, "exec token on /portforward/: {r:?}");

        let url = port_forward_url(&rs, &pod.id).await?;
        let pf = PortForward::connect(&url).await?;
        pf.session.ping(Duration::from_secs(5)).await?;
        let r = refused(
            Session::upgrade(&url, &[PORT_FORWARD_PROTOCOL]).await?,
            "used port-forward URL",
        )?;
        ensure!(r.status == 404, "used port-forward URL: {r:?}");
        // The first session is unaffected by the refused second use.
        pf.session.ping(Duration::from_secs(5)).await?;
        drop(pf);

        let out = run_exec(&rs, &cid, &["echo", "still fine"], None, None).await?;
        ensure!(out.stdout_text() == "still fine\n");
        Ok(())
    })
}

#[test]
fn a_client_killed_mid_exec_leaves_the_container_and_berthd_healthy() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("kill", &logs.join("kill"))).await?;
        let cid = pod.start(idler()).await?;
        // Warm up: whatever berthd keeps open for exec from now on is in the baseline.
        ensure_success(
            "warm-up",
            &run_exec(&rs, &cid, &["true"], None, None).await?,
        )?;
        ensure!(
            eventually(Duration::from_secs(10), || exec_dirs(d).is_empty()).await,
            "exec dirs after warm-up: {:?}",
            exec_dirs(d)
        );
        let before = settled_fds(d).await?;

        let script = "echo $$ > /tmp/loop.pid; while true; do echo x; sleep 0.1; done";
        let url = exec_url(&rs, &cid, &["sh", "-c", script], true, false).await?;
        let mut s = ExecSession::start(&url, &EXEC_PROTOCOLS, true, false).await?;
        let mut seen = Vec::new();
        while seen.iter().filter(|b| **b == b'x').count() < 3 {
            match tokio::time::timeout(Duration::from_secs(10), s.stdout.rx.recv()).await {
                Ok(Some(b)) => seen.extend(b),
                other => bail!(
                    "the loop's output stopped after {:?}: {}",
                    String::from_utf8_lossy(&seen),
                    if other.is_err() {
                        "timeout"
                    } else {
                        "stream ended"
                    }
                ),
            }
        }
        ensure!(
            exec_dirs(d).len() == 1,
            "exec dirs while running: {:?}",
            exec_dirs(d)
        );
        let ExecSession { session, .. } = s;
        session.kill().await;

        // berthd answers the next exec at once.
        let t = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            run_exec(&rs, &cid, &["echo", "alive"], None, None),
        )
        .await
        .context("an exec after the killed client did not finish within 10 s")??;
        ensure!(out.stdout_text() == "alive\n", "{:?}", out.stdout_text());
        ensure_success("echo alive", &out)?;
        eprintln!("exec after the killed client took {:?}", t.elapsed());

        // The container runs on, and so does the process the client left.
        let st = pod.container_status(&cid).await?;
        ensure!(
            st.state == cri::ContainerState::ContainerRunning as i32,
            "container state {} after the client went",
            st.state
        );
        let out = run_exec(
            &rs,
            &cid,
            &["sh", "-c", "kill -0 $(cat /tmp/loop.pid) && echo running"],
            None,
            None,
        )
        .await?;
        ensure!(
            out.stdout_text() == "running\n",
            "the orphaned loop: {:?} {:?} {}",
            out.stdout_text(),
            out.stderr_text(),
            out.status
        );

        // Once it is killed, its FIFO dir goes and berthd's fds come back.
        let out = run_exec(
            &rs,
            &cid,
            &["sh", "-c", "kill $(cat /tmp/loop.pid)"],
            None,
            None,
        )
        .await?;
        ensure_success("kill the loop", &out)?;
        ensure!(
            eventually(Duration::from_secs(20), || exec_dirs(d).is_empty()).await,
            "exec dirs left after the process was killed: {:?}\nlog:\n{}",
            exec_dirs(d),
            d.log()
        );
        ensure_fds_settle(d, &before, 3, Duration::from_secs(10)).await?;
        ensure!(
            Path::new(&format!("/proc/{}", d.pid())).exists(),
            "berthd is gone"
        );
        Ok(())
    })
}

#[test]
fn stdin_the_process_never_reads_does_not_pile_up_in_berthd() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("unread", &logs.join("unread"))).await?;
        let cid = pod.start(idler()).await?;
        ensure_success(
            "warm-up",
            &run_exec(&rs, &cid, &["true"], None, None).await?,
        )?;
        let before = settled_fds(d).await?;
        // `kubectl exec -i … -- true < big-file`: the process exits without reading. What
        // it left unread must be dropped with the session, not held by berthd.
        for i in 0..4 {
            let input = image::random_bytes(4 << 20, i);
            let out = run_exec(&rs, &cid, &["true"], Some(input), None).await?;
            ensure_success("true with unread stdin", &out)?;
        }
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            run_exec(&rs, &cid, &["echo", "next"], Some(b"x".to_vec()), None),
        )
        .await
        .context("exec after unread stdin")??;
        ensure!(out.stdout_text() == "next\n", "{:?}", out.stdout_text());
        ensure!(
            eventually(Duration::from_secs(10), || exec_dirs(d).is_empty()).await,
            "exec dirs left: {:?}",
            exec_dirs(d)
        );
        ensure_fds_settle(d, &before, 3, Duration::from_secs(10)).await?;
        Ok(())
    })
}
