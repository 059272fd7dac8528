//! berthd's CRI streaming server forwarding ports for a second SPDY/3.1 implementation
//! (`berth_tests::spdy`), as kubectl port-forward (through kubelet) uses it: pod ports (also
//! one bound to the pod's 127.0.0.1 only), also over WebSocket channels (binary and base64); many bulk connections on one session; a connection
//! the pod's server resets; a client that vanishes mid-forward, with leaks judged from
//! berthd's open fds. Spent and unknown URLs are in `berthd_exec`.

use anyhow::{bail, ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config, pod_network};
use berth_tests::image;
use berth_tests::pod::Pod;
use berth_tests::spdy::{port_forward, Forwarded, PortForward, Stream, PORT_FORWARD_PROTOCOL};
use berth_tests::streaming::{ensure_fds_settle, port_forward_url, settled_fds, sha};
use berth_tests::ws::WsSession;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Forwards `ports` over WebSocket channels, sends an HTTP/1.0 GET on each data channel
/// and reads until the server ends the session: (reply, error channel) per port.
async fn ws_forward(url: &str, protocol: &str, ports: &[u16]) -> Result<Vec<(String, String)>> {
    let mut s = WsSession::connect(url, &[protocol]).await?;
    ensure!(s.protocol == protocol, "negotiated {:?}", s.protocol);
    let base64 = protocol.contains("base64");
    let mut got = vec![(Vec::new(), Vec::new(), 0usize); ports.len()];
    // Each channel opens with its port, little-endian.
    for _ in 0..2 * ports.len() {
        let (ch, data) = s
            .recv()
            .await?
            .context("session ended before the port headers")?;
        let i = usize::from(ch / 2);
        ensure!(i < ports.len(), "channel {ch} for {} ports", ports.len());
        ensure!(
            data == ports[i].to_le_bytes(),
            "channel {ch} opened with {data:?}, want port {}",
            ports[i]
        );
        got[i].2 += 1;
    }
    for i in 0..ports.len() {
        let get = b"GET /index.html HTTP/1.0\r\n\r\n";
        if base64 {
            s.send_base64(2 * i as u8, get).await?;
        } else {
            s.send(2 * i as u8, get).await?;
        }
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some((ch, data)) = s.recv().await? {
            let i = usize::from(ch / 2);
            if let Some(g) = got.get_mut(i) {
                if ch % 2 == 0 { &mut g.0 } else { &mut g.1 }.extend_from_slice(&data);
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("the WebSocket port-forward session did not end within 20 s")??;
    Ok(got
        .into_iter()
        .map(|(d, e, _)| {
            (
                String::from_utf8_lossy(&d).into_owned(),
                String::from_utf8_lossy(&e).into_owned(),
            )
        })
        .collect())
}

fn sh(name: &str, script: &str) -> cri::ContainerConfig {
    container_config(name, image::BUSYBOX_IMAGE, &["sh", "-c", script])
}

/// GETs `path` from `port` in the pod through the forward, retrying (new connections on
/// the same session) until the server there answers; returns the response.
async fn get_through(pf: &PortForward, port: u16, path: &str) -> Result<String> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let start = Instant::now();
    loop {
        let f = pf.open(port).await?;
        let (reply, err) = f
            .round_trip(req.as_bytes(), false, Duration::from_secs(10))
            .await?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        if err.is_empty() && reply.starts_with("HTTP/") {
            return Ok(reply);
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("GET {path} through port {port}: reply {reply:?}, error stream {err:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn port_forward_reaches_pod_ports_including_a_localhost_only_listener() -> Result<()> {
    berthd_test(Berthd::builder().busybox().cni_bridge(5), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let mut cfg = pod_config("pf", &logs.join("pf"));
        cfg.hostname = "pf".into();
        pod_network(&mut cfg);
        let pod = Pod::run(d, cfg).await?;
        let ip = pod.ip().await?;
        ensure!(
            ip.starts_with(&format!("{}.", d.bridge().prefix)),
            "pod IP {ip:?}"
        );
        pod.start(sh(
            "web80",
            "mkdir -p /www && echo hello-from-port-80 > /www/index.html && \
                 exec busybox httpd -f -p 80 -h /www",
        ))
        .await?;
        pod.start(sh(
            "web8080",
            "mkdir -p /lo && echo hello-from-loopback-8080 > /lo/index.html && \
                 exec busybox httpd -f -p 127.0.0.1:8080 -h /lo",
        ))
        .await?;

        let pf = PortForward::connect(&port_forward_url(&rs, &pod.id).await?).await?;
        ensure!(pf.session.protocol() == PORT_FORWARD_PROTOCOL);
        pf.session.ping(Duration::from_secs(5)).await?;

        let r = get_through(&pf, 80, "/index.html").await?;
        ensure!(
            r.contains(" 200 ") && r.ends_with("\r\n\r\nhello-from-port-80\n"),
            "GET through port 80:\n{r}"
        );
        let r = get_through(&pf, 8080, "/index.html").await?;
        ensure!(
            r.contains(" 200 ") && r.ends_with("\r\n\r\nhello-from-loopback-8080\n"),
            "GET through port 8080 (127.0.0.1 only):\n{r}"
        );
        // That listener really is the pod's loopback only.
        let direct = std::net::TcpStream::connect_timeout(
            &format!("{ip}:8080").parse()?,
            Duration::from_secs(2),
        );
        ensure!(
            direct.is_err(),
            "{ip}:8080 answers from the host: the test's premise is wrong"
        );

        // Nothing listens on 81: the error stream says so, the data stream just ends.
        let (reply, err) = pf
            .open(81)
            .await?
            .round_trip(b"GET / HTTP/1.0\r\n\r\n", false, Duration::from_secs(10))
            .await?;
        ensure!(
            reply.is_empty() && err.to_lowercase().contains("refused"),
            "port 81 (closed): reply {:?}, error stream {err:?}",
            String::from_utf8_lossy(&reply)
        );

        // Frames the server need not act on: SETTINGS, WINDOW_UPDATE, and HEADERS, whose
        // block it must still inflate to keep the shared zlib stream in step for the
        // SYN_STREAMs that follow.
        let f = pf.open(80).await?;
        pf.session.settings(&[(7, 64 << 10)]).await?;
        f.data.tx.window_update(1 << 20).await?;
        f.data.tx.headers(&[("x-berth-test", "ignored")]).await?;
        let (reply, err) = f
            .round_trip(
                b"GET /index.html HTTP/1.0\r\n\r\n",
                false,
                Duration::from_secs(10),
            )
            .await?;
        let reply = String::from_utf8_lossy(&reply);
        ensure!(
            err.is_empty() && reply.ends_with("hello-from-port-80\n"),
            "GET after SETTINGS/WINDOW_UPDATE/HEADERS: {reply:?}, error stream {err:?}"
        );

        // Several connections at once on the one session, to both ports.
        let pf = Arc::new(pf);
        let gets: Vec<_> = (0..8)
            .map(|i| {
                let (port, body) = if i % 2 == 0 {
                    (80, "hello-from-port-80\n")
                } else {
                    (8080, "hello-from-loopback-8080\n")
                };
                let pf = pf.clone();
                tokio::spawn(async move {
                    let r = get_through(&pf, port, "/index.html").await?;
                    ensure!(r.ends_with(body), "concurrent GET {i} on {port}:\n{r}");
                    Ok::<_, anyhow::Error>(())
                })
            })
            .collect();
        for g in gets {
            g.await??;
        }
        // The session is still usable after all that.
        pf.session.ping(Duration::from_secs(5)).await?;

        // The same ports over WebSocket channels (kubelet's v4 port-forward framing).
        let pf_url = port_forward_url(&rs, &pod.id).await?;
        let got = ws_forward(
            &format!("{pf_url}?port=80&port=8080"),
            "v4.channel.k8s.io",
            &[80, 8080],
        )
        .await?;
        ensure!(
            got[0].0.ends_with("hello-from-port-80\n") && got[0].1.is_empty(),
            "WebSocket port 80: {:?}",
            got[0]
        );
        ensure!(
            got[1].0.ends_with("hello-from-loopback-8080\n") && got[1].1.is_empty(),
            "WebSocket port 8080: {:?}",
            got[1]
        );
        let pf_url = port_forward_url(&rs, &pod.id).await?;
        let got = ws_forward(
            &format!("{pf_url}?port=80,81"),
            "v4.base64.channel.k8s.io",
            &[80, 81],
        )
        .await?;
        ensure!(
            got[0].0.ends_with("hello-from-port-80\n"),
            "base64 port 80: {:?}",
            got[0]
        );
        ensure!(
            got[1].0.is_empty() && got[1].1.to_lowercase().contains("refused"),
            "base64 port 81 (closed): {:?}",
            got[1]
        );
        // Channel framing needs its ports named.
        let pf_url = port_forward_url(&rs, &pod.id).await?;
        let e = WsSession::connect(&pf_url, &["v4.channel.k8s.io"]).await;
        ensure!(
            e.as_ref().is_err_and(|e| format!("{e:#}").contains("400")),
            "no ?port=: {:?}",
            e.map(|s| s.protocol)
        );
        Ok(())
    })
}

const PARALLEL: u16 = 20;
/// The first echo server's port; there is one per parallel connection.
const ECHO_PORT: u16 = 9000;

/// Echo servers on ports ECHO_PORT.. (one `cat` per connection), one listener per
/// connection the test makes at once: a single busybox `nc -ll` resets some of 20
/// simultaneous connections (seen straight from the host to the pod IP too).
fn echo_servers() -> cri::ContainerConfig {
    sh(
        "echo",
        &format!(
            "for p in $(seq {ECHO_PORT} {}); do busybox nc -ll -p $p -e cat & done; wait",
            ECHO_PORT + PARALLEL - 1
        ),
    )
}
const BULK: usize = 10 << 20;

#[test]
fn a_reset_from_the_pods_server_shows_on_the_error_stream() -> Result<()> {
    berthd_test(Berthd::builder().busybox().cni_bridge(8), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let mut cfg = pod_config("rst", &logs.join("rst"));
        cfg.hostname = "rst".into();
        pod_network(&mut cfg);
        let pod = Pod::run(d, cfg).await?;
        // Per connection: answer a line, then exit without reading the request, so
        // the kernel resets the connection (unread data at close).
        pod.start(sh(
            "rst",
            "printf '#!/bin/sh\\necho partial\\nsleep 1\\n' > /tmp/rst && \
                 busybox chmod +x /tmp/rst && exec busybox nc -ll -p 9100 -e /tmp/rst",
        ))
        .await?;
        let pf = port_forward(&port_forward_url(&rs, &pod.id).await?).await?;
        let start = Instant::now();
        let (reply, err) = loop {
            let (reply, err) = pf
                .open(9100)
                .await?
                .round_trip(b"a request nobody reads\n", false, Duration::from_secs(10))
                .await?;
            if !reply.is_empty() || start.elapsed() > Duration::from_secs(10) {
                break (reply, err);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // kubelet (with containerd) writes "error forwarding port 9100 to pod …: read
        // tcp …: connection reset by peer" there; a bare end would pass the truncated
        // reply off as complete.
        ensure!(
            reply == b"partial\n" && err.to_lowercase().contains("reset"),
            "a reset by the pod's server: reply {:?}, error stream {err:?}",
            String::from_utf8_lossy(&reply)
        );
        Ok(())
    })
}

/// Sends 10 MiB (its own seed per connection, so crossed streams would show) on a
/// forwarded connection to the echo server while reading the echo; checks it came back
/// byte for byte (stronger than comparing checksums, and far cheaper than sha256 in a
/// debug build; the sha256s are only worked out for the report of a mismatch).
async fn echo_bulk(pf: Arc<PortForward>, n: u16) -> Result<Duration> {
    let data = image::random_bytes(BULK, 0xb0b0 + u64::from(n));
    let start = Instant::now();
    let Forwarded {
        data: Stream { tx, mut rx, .. },
        mut error,
        request_id,
        ..
    } = pf.open(ECHO_PORT + n).await?;
    let send = async {
        tx.write(&data).await?;
        tx.close().await
    };
    let recv = async {
        let mut got = Vec::with_capacity(BULK);
        while let Some(c) = rx.recv().await {
            got.extend_from_slice(&c);
        }
        (got, rx.end())
    };
    let (sent, (got, end)) = tokio::join!(send, recv);
    sent.with_context(|| format!("connection {n} (request {request_id}): send"))?;
    let err = error.read_to_end().await?;
    ensure!(
        err.is_empty(),
        "connection {n}: error stream {:?}",
        String::from_utf8_lossy(&err)
    );
    if got != data {
        let first = got.iter().zip(&data).position(|(a, b)| a != b);
        bail!(
            "connection {n} (request {request_id}): {} of {} bytes came back (ended {end:?}), \
             first difference at {first:?}; sha256 sent {} received {}",
            got.len(),
            data.len(),
            sha(&data),
            sha(&got)
        );
    }
    Ok(start.elapsed())
}

#[test]
fn twenty_parallel_forwards_each_echo_10_mib_both_ways() -> Result<()> {
    berthd_test(Berthd::builder().busybox().cni_bridge(6), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let mut cfg = pod_config("bulk", &logs.join("bulk"));
        cfg.hostname = "bulk".into();
        pod_network(&mut cfg);
        let pod = Pod::run(d, cfg).await?;
        pod.start(echo_servers()).await?;
        let pf = Arc::new(PortForward::connect(&port_forward_url(&rs, &pod.id).await?).await?);
        wait_for_echo(&pf).await?;
        let start = Instant::now();
        let tasks: Vec<_> = (0..PARALLEL)
            .map(|n| tokio::spawn(echo_bulk(pf.clone(), n)))
            .collect();
        let mut slowest = Duration::ZERO;
        for t in tasks {
            slowest = slowest.max(t.await??);
        }
        eprintln!(
            "{PARALLEL} x {} MiB echoed in {:?} (slowest connection {slowest:?})",
            BULK >> 20,
            start.elapsed()
        );
        pf.session.ping(Duration::from_secs(5)).await?;
        anyhow::Ok(())
    })
}

#[test]
fn a_port_forward_client_killed_mid_transfer_leaves_berthd_as_it_was() -> Result<()> {
    berthd_test(Berthd::builder().busybox().cni_bridge(7), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let mut cfg = pod_config("pfkill", &logs.join("pfkill"));
        cfg.hostname = "pfkill".into();
        pod_network(&mut cfg);
        let pod = Pod::run(d, cfg).await?;
        pod.start(echo_servers()).await?;
        let pf = PortForward::connect(&port_forward_url(&rs, &pod.id).await?).await?;
        wait_for_echo(&pf).await?;
        drop(pf);
        let before = settled_fds(d).await?;

        let pf = Arc::new(PortForward::connect(&port_forward_url(&rs, &pod.id).await?).await?);
        let mut feeders = Vec::new();
        let mut readers = Vec::new();
        for n in 0..4 {
            let Forwarded {
                data: Stream { tx, rx, .. },
                ..
            } = pf.open(ECHO_PORT + n).await?;
            feeders.push(tokio::spawn(async move {
                let chunk = image::random_bytes(1 << 20, u64::from(n));
                loop {
                    if tx.write(&chunk).await.is_err() {
                        break;
                    }
                }
            }));
            readers.push(rx);
        }
        // Every connection is echoing when the client goes.
        for rx in readers.iter_mut() {
            let mut got = 0;
            while got < 4 << 20 {
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Some(b)) => got += b.len(),
                    _ => bail!("stream {} stalled after {got} bytes", rx.id()),
                }
            }
        }
        let pf = Arc::into_inner(pf).context("forwards still hold the session")?;
        pf.session.kill().await;
        for f in feeders {
            let _ = f.await;
        }

        // A new session works at once, and berthd lets go of the old one's sockets.
        let pf = PortForward::connect(&port_forward_url(&rs, &pod.id).await?).await?;
        let (reply, err) = tokio::time::timeout(
            Duration::from_secs(10),
            pf.open(ECHO_PORT)
                .await?
                .round_trip(b"again\n", true, Duration::from_secs(10)),
        )
        .await
        .context("echo after the killed session")??;
        ensure!(
            reply == b"again\n" && err.is_empty(),
            "echo after the killed session: {:?} {err:?}",
            String::from_utf8_lossy(&reply)
        );
        drop(pf);
        ensure_fds_settle(d, &before, 3, Duration::from_secs(10)).await?;
        Ok(())
    })
}

/// Waits (bounded) until every echo server answers through `pf`.
async fn wait_for_echo(pf: &PortForward) -> Result<()> {
    for port in ECHO_PORT..ECHO_PORT + PARALLEL {
        wait_for_echo_on(pf, port).await?;
    }
    Ok(())
}

async fn wait_for_echo_on(pf: &PortForward, port: u16) -> Result<()> {
    let start = Instant::now();
    loop {
        let (reply, err) = pf
            .open(port)
            .await?
            .round_trip(b"are you there?\n", true, Duration::from_secs(10))
            .await?;
        if reply == b"are you there?\n" && err.is_empty() {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "echo server on {port} not answering: reply {:?}, error {err:?}",
            String::from_utf8_lossy(&reply)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
