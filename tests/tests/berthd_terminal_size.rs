//! A terminal has the client's size from its first moment: `stty size` as the very first
//! command of a `kubectl exec -it` (SPDY and WebSocket v5/v4) prints the rows and columns
//! the client announced, and after `kubectl attach -it` to a shell the first line typed
//! (sent even before the size) finds the attacher's size. No retries and no waiting in
//! the commands: the size must be in place before the process runs or the typed line
//! reaches it.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image;
use berth_tests::pod::Pod;
use berth_tests::spdy::{ExecSession, EXEC_PROTOCOLS};
use berth_tests::streaming::Rs;
use berth_tests::ws::{self, WsSession};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

/// The line a terminal answers `stty size` with.
fn size_line(width: u16, height: u16) -> String {
    format!("{height} {width}\r\n")
}

async fn attach_url(rs: &Rs, cid: &str) -> Result<String> {
    let url = rs
        .clone()
        .attach(cri::AttachRequest {
            container_id: cid.into(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .context("Attach")?
        .into_inner()
        .url;
    ensure!(url.contains("/attach/"), "Attach URL {url:?}");
    Ok(url)
}

/// What a shell answers to a typed `stty size`: the text between the end of the typed
/// line's echo and the end marker (`E''ND` is typed, so the echo never holds `END`).
const TYPED: &[u8] = b"stty size; echo E''ND\n";

fn answer(seen: &[u8]) -> String {
    let text = String::from_utf8_lossy(seen);
    let after_echo = text.rsplit("E''ND\r\n").next().unwrap_or("");
    after_echo.split("END\r\n").next().unwrap_or("").to_string()
}

#[test]
fn exec_with_a_terminal_starts_at_the_clients_size_over_spdy_and_websocket() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("tsize", &logs.join("tsize"))).await?;
        let cid = pod
            .start(container_config(
                "idler",
                image::BUSYBOX_IMAGE,
                &["sleep", "1000000"],
            ))
            .await?;

        // SPDY, as `kubectl exec -it` and crictl: streams first, then the size.
        let (w, h) = (97, 31);
        let url = rs.exec_url(&cid, &["stty", "size"], true, true).await?;
        let s = ExecSession::start(&url, &EXEC_PROTOCOLS, true, true).await?;
        s.resize(w, h).await?;
        let out = s.finish(None, WITHIN).await?;
        ensure!(
            out.stdout_text() == size_line(w, h) && out.exit_code() == Some(0),
            "SPDY ({}): stty size under a {w}x{h} terminal printed {:?}, status {}",
            out.protocol,
            out.stdout_text(),
            out.status
        );

        // WebSocket, as kubectl 1.30+: v5, and v4 for older servers' clients.
        for (proto, w, h) in [
            ("v5.channel.k8s.io", 83, 27),
            ("v4.channel.k8s.io", 121, 45),
        ] {
            let url = rs.exec_url(&cid, &["stty", "size"], true, true).await?;
            let mut s = WsSession::connect(&url, &[proto]).await?;
            ensure!(s.protocol == proto, "negotiated {:?}", s.protocol);
            s.resize(w, h).await?;
            let out = s.finish(WITHIN).await?;
            let status = out.status()?;
            ensure!(
                out.stdout_text() == size_line(w, h) && status["status"] == "Success",
                "WebSocket {proto}: stty size under a {w}x{h} terminal printed {:?}, status {status}",
                out.stdout_text()
            );
        }
        Ok(())
    })
}

#[test]
fn attach_to_a_terminal_gives_the_first_typed_line_the_attachers_size() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("asize", &logs.join("asize"))).await?;
        let mut cfg = container_config("shell", image::BUSYBOX_IMAGE, &["sh"]);
        cfg.tty = true;
        cfg.stdin = true;
        let cid = pod.start(cfg).await?;

        // SPDY: the first line goes out even before the size (kubectl copies stdin and
        // sends sizes from two goroutines: either may come first); it must still find the
        // attacher's size.
        let (w, h) = (97, 31);
        let url = attach_url(&rs, &cid).await?;
        let mut a = ExecSession::start(&url, &EXEC_PROTOCOLS, true, true).await?;
        let stdin = a.stdin.as_ref().context("no stdin stream")?.tx.clone();
        stdin.write(TYPED).await?;
        a.resize(w, h).await?;
        let mut seen = Vec::new();
        a.stdout
            .rx
            .read_until(&mut seen, "\nEND\r\n", WITHIN)
            .await?;
        ensure!(
            answer(&seen) == size_line(w, h),
            "SPDY attach under a {w}x{h} terminal: `stty size` answered {:?} (all: {:?})",
            answer(&seen),
            String::from_utf8_lossy(&seen)
        );
        // The client's stdin ends: it is detached, the shell runs on.
        let out = a.finish(None, WITHIN).await?;
        ensure!(out.status["status"] == "Success", "{}", out.status);

        // WebSocket v5: another attacher with another size.
        let (w, h) = (83, 27);
        let url = attach_url(&rs, &cid).await?;
        let mut a = WsSession::connect(&url, &["v5.channel.k8s.io"]).await?;
        a.send(ws::STDIN, TYPED).await?;
        a.resize(w, h).await?;
        a.read_until("\nEND\r\n", WITHIN).await?;
        ensure!(
            answer(&a.out.stdout) == size_line(w, h),
            "WebSocket attach under a {w}x{h} terminal: `stty size` answered {:?} (all: {:?})",
            answer(&a.out.stdout),
            a.out.stdout_text()
        );
        a.close_stdin().await?;
        let out = a.finish(WITHIN).await?;
        ensure!(out.status()?["status"] == "Success", "{:?}", out.status());
        let st = pod.container_status(&cid).await?;
        ensure!(
            st.state == cri::ContainerState::ContainerRunning as i32,
            "the shell after both attachers left: {st:?}"
        );
        Ok(())
    })
}
