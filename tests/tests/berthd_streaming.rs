//! berthd's CRI streaming server driven by a second SPDY/3.1 implementation
//! (`berth_tests::spdy`), as kubectl exec / port-forward (through kubelet) or crictl use it:
//! exec with piped stdin, stdout, stderr and the v4 exit status; exec with a terminal and
//! resizes; port-forward to pod ports (also one bound to the pod's 127.0.0.1 only) and many
//! bulk connections on one session; spent and unknown URLs; clients that vanish mid-exec
//! and mid-forward; stdin a process never reads; a connection the pod's server resets. Leaks are judged from berthd's open fds
//! and its exec FIFO directories.
//!
//! Not covered: a URL unused for more than 60 s answering 404 (too slow for this suite).

use anyhow::{bail, ensure, Context, Result};
use berth_tests::berthd::Berthd;
use berth_tests::berthd_feat::{cni_bridge, import, pod_network, remove_all_pods, Pod};
use berth_tests::cri::{block_on, container_config, pod_config, RuntimeServiceClient};
use berth_tests::image;
use berth_tests::spdy::{
    self, port_forward, ExecSession, Forwarded, PortForward, Session, Stream, Upgrade,
    EXEC_PROTOCOLS, PORT_FORWARD_PROTOCOL,
};
use k8s_cri::v1 as cri;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Rs = RuntimeServiceClient<Channel>;

fn berthd() -> Result<Berthd> {
    let d = Berthd::configure("")?;
    import(&d, &image::busybox(d.dir.path())?)?;
    Ok(d)
}

fn sh(name: &str, script: &str) -> cri::ContainerConfig {
    container_config(name, image::BUSYBOX_IMAGE, &["sh", "-c", script])
}

/// A container that idles until the pod goes.
fn idler() -> cri::ContainerConfig {
    container_config("idler", image::BUSYBOX_IMAGE, &["sleep", "1000000"])
}

/// Exec's URL for `cmd` (stdout always; stderr unless a terminal).
async fn exec_url(rs: &Rs, cid: &str, cmd: &[&str], stdin: bool, tty: bool) -> Result<String> {
    let url = rs
        .clone()
        .exec(cri::ExecRequest {
            container_id: cid.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })
        .await
        .with_context(|| format!("Exec {cmd:?}"))?
        .into_inner()
        .url;
    ensure!(
        url.starts_with("http://127.0.0.1:") && url.contains("/exec/"),
        "Exec URL {url:?}"
    );
    Ok(url)
}

async fn port_forward_url(rs: &Rs, pod_id: &str) -> Result<String> {
    let url = rs
        .clone()
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: vec![],
        })
        .await
        .context("PortForward")?
        .into_inner()
        .url;
    ensure!(
        url.starts_with("http://127.0.0.1:") && url.contains("/portforward/"),
        "PortForward URL {url:?}"
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

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
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

fn open_fds(pid: i32) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let target = std::fs::read_link(e.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        v.push(target);
    }
    v.sort();
    Ok(v)
}

/// berthd's open fds once their count has held still for half a second (the sockets and
/// FIFOs of sessions that just ended are closed by then).
async fn settled_fds(d: &Berthd) -> Result<Vec<String>> {
    let mut last = open_fds(d.pid())?;
    let mut still = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = open_fds(d.pid())?;
        still = if now.len() == last.len() {
            still + 1
        } else {
            0
        };
        last = now;
        if still >= 5 {
            break;
        }
    }
    Ok(last)
}

/// Entries left in berthd's exec FIFO directory (`<state>/exec`).
fn exec_dirs(d: &Berthd) -> Vec<String> {
    std::fs::read_dir(d.dir.path().join("state").join("exec"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `cond` every 100 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// berthd's open fds (waiting up to `within` for them to settle at most `slack` above
/// `before`): Err naming what was added.
async fn ensure_fds_settle(
    d: &Berthd,
    before: &[String],
    slack: usize,
    within: Duration,
) -> Result<()> {
    let pid = d.pid();
    let ok = eventually(within, || {
        open_fds(pid)
            .map(|f| f.len() <= before.len() + slack)
            .unwrap_or(false)
    })
    .await;
    if !ok {
        let now = open_fds(pid)?;
        let mut added = now.clone();
        for b in before {
            if let Some(i) = added.iter().position(|a| a == b) {
                added.remove(i);
            }
        }
        bail!(
            "berthd holds {} fds, {} before; added: {added:?}",
            now.len(),
            before.len()
        );
    }
    Ok(())
}

#[test]
fn exec_pipes_stdin_and_reports_output_and_exit_status() -> Result<()> {
    let d = berthd()?.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let r: Result<()> = async {
            let pod = Pod::run(&d, &rs, pod_config("exec", &logs.join("exec"))).await?;
            let cid = pod.start(&d, idler()).await?;

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
        }
        .await;
        remove_all_pods(&rs).await?;
        r
    })??;
    d.finish()
}

#[test]
fn exec_with_a_terminal_sees_the_size_it_was_resized_to() -> Result<()> {
    let d = berthd()?.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let r: Result<()> = async {
            let pod = Pod::run(&d, &rs, pod_config("tty", &logs.join("tty"))).await?;
            let cid = pod.start(&d, idler()).await?;
            // The size is set beside the process' start (as with kubelet and containerd),
            // so the command waits for the terminal to have one before it reports it
            // (busybox stty fails on a 0x0 window).
            let wait_size = "n=0; until [ -n \"$(stty size 2>/dev/null)\" ] || [ $n -ge 200 ]; do \
                             sleep 0.05; n=$((n+1)); done";
            let script = format!("{wait_size}; stty size; [ -t 0 ] && [ -t 1 ] && echo tty");
            let out = run_exec(&rs, &cid, &["sh", "-c", &script], None, Some((101, 33))).await?;
            ensure!(
                out.stdout_text() == "33 101\r\ntty\r\n",
                "stty size after a resize to 101x33 printed {:?}",
                out.stdout_text()
            );
            ensure!(out.stderr.is_empty(), "a terminal has no stderr stream");
            ensure_success("stty size", &out)?;

            // `kubectl exec -it`: the window changes while the process runs.
            let script = format!(
                "{wait_size}; echo \"first $(stty size)\"; n=0; \
                 while [ \"$(stty size)\" = '33 101' ] && [ $n -lt 200 ]; do \
                 sleep 0.05; n=$((n+1)); done; echo \"then $(stty size)\""
            );
            let url = exec_url(&rs, &cid, &["sh", "-c", &script], true, true).await?;
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
        }
        .await;
        remove_all_pods(&rs).await?;
        r
    })??;
    d.finish()
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
    let d = berthd()?;
    let bridge = cni_bridge(&d, 5)?;
    let d = d.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let r: Result<()> = async {
            let mut cfg = pod_config("pf", &logs.join("pf"));
            cfg.hostname = "pf".into();
            pod_network(&mut cfg);
            let pod = Pod::run(&d, &rs, cfg).await?;
            let ip = pod.ip().await?;
            ensure!(
                ip.starts_with(&format!("{}.", bridge.prefix)),
                "pod IP {ip:?}"
            );
            pod.start(
                &d,
                sh(
                    "web80",
                    "mkdir -p /www && echo hello-from-port-80 > /www/index.html && \
                     exec busybox httpd -f -p 80 -h /www",
                ),
            )
            .await?;
            pod.start(
                &d,
                sh(
                    "web8080",
                    "mkdir -p /lo && echo hello-from-loopback-8080 > /lo/index.html && \
                     exec busybox httpd -f -p 127.0.0.1:8080 -h /lo",
                ),
            )
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
            Ok(())
        }
        .await;
        remove_all_pods(&rs).await?;
        r
    })??;
    d.finish()?;
    drop(bridge);
    Ok(())
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
    let d = berthd()?;
    let bridge = cni_bridge(&d, 8)?;
    let d = d.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let r: Result<()> = async {
            let mut cfg = pod_config("rst", &logs.join("rst"));
            cfg.hostname = "rst".into();
            pod_network(&mut cfg);
            let pod = Pod::run(&d, &rs, cfg).await?;
            // Per connection: answer a line, then exit without reading the request, so
            // the kernel resets the connection (unread data at close).
            pod.start(
                &d,
                sh(
                    "rst",
                    "printf '#!/bin/sh\\necho partial\\nsleep 1\\n' > /tmp/rst && \
                     busybox chmod +x /tmp/rst && exec busybox nc -ll -p 9100 -e /tmp/rst",
                ),
            )
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
        }
        .await;
        remove_all_pods(&rs).await?;
        r
    })??;
    d.finish()?;
    drop(bridge);
    Ok(())
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
    let d = berthd()?;
    let bridge = cni_bridge(&d, 6)?;
    let d = d.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let r: Result<()> = async {
            let mut cfg = pod_config("bulk", &logs.join("bulk"));
            cfg.hostname = "bulk".into();
            pod_network(&mut cfg);
            let pod = Pod::run(&d, &rs, cfg).await?;
            pod.start(&d, echo_servers()).await?;
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
            Ok(())
        }
        .await;
        remove_all_pods(&rs).await?;
        r
    })??;
    d.finish()?;
    drop(bridge);
    Ok(())
}

#[test]
fn a_port_forward_client_killed_mid_transfer_leaves_berthd_as_it_was() -> Result<()> {
    let d = berthd()?;
    let bridge = cni_bridge(&d, 7)?;
    let d = d.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let r: Result<()> = async {
            let mut cfg = pod_config("pfkill", &logs.join("pfkill"));
            cfg.hostname = "pfkill".into();
            pod_network(&mut cfg);
            let pod = Pod::run(&d, &rs, cfg).await?;
            pod.start(&d, echo_servers()).await?;
            let pf = PortForward::connect(&port_forward_url(&rs, &pod.id).await?).await?;
            wait_for_echo(&pf).await?;
            drop(pf);
            let before = settled_fds(&d).await?;

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
            ensure_fds_settle(&d, &before, 3, Duration::from_secs(10)).await?;
            Ok(())
        }
        .await;
        remove_all_pods(&rs).await?;
        r
    })??;
    d.finish()?;
    drop(bridge);
    Ok(())
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

#[test]
fn spent_and_unknown_urls_answer_404() -> Result<()> {
    // A URL unused for over 60 s also answers 404; waiting that long is too slow here.
    let d = berthd()?.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let r: Result<()> = async {
            let pod = Pod::run(&d, &rs, pod_config("tok", &logs.join("tok"))).await?;
            let cid = pod.start(&d, idler()).await?;
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
        }
        .await;
        remove_all_pods(&rs).await?;
        r
    })??;
    d.finish()
}

#[test]
fn a_client_killed_mid_exec_leaves_the_container_and_berthd_healthy() -> Result<()> {
    let d = berthd()?.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let r: Result<()> = async {
            let pod = Pod::run(&d, &rs, pod_config("kill", &logs.join("kill"))).await?;
            let cid = pod.start(&d, idler()).await?;
            // Warm up: whatever berthd keeps open for exec from now on is in the baseline.
            ensure_success(
                "warm-up",
                &run_exec(&rs, &cid, &["true"], None, None).await?,
            )?;
            ensure!(
                eventually(Duration::from_secs(10), || exec_dirs(&d).is_empty()).await,
                "exec dirs after warm-up: {:?}",
                exec_dirs(&d)
            );
            let before = settled_fds(&d).await?;

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
                exec_dirs(&d).len() == 1,
                "exec dirs while running: {:?}",
                exec_dirs(&d)
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
                eventually(Duration::from_secs(20), || exec_dirs(&d).is_empty()).await,
                "exec dirs left after the process was killed: {:?}\nlog:\n{}",
                exec_dirs(&d),
                d.log()
            );
            ensure_fds_settle(&d, &before, 3, Duration::from_secs(10)).await?;
            ensure!(
                Path::new(&format!("/proc/{}", d.pid())).exists(),
                "berthd is gone"
            );
            Ok(())
        }
        .await;
        remove_all_pods(&rs).await?;
        r
    })??;
    d.finish()
}

#[test]
fn stdin_the_process_never_reads_does_not_pile_up_in_berthd() -> Result<()> {
    let d = berthd()?.start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, _) = d.client().await?;
        let r: Result<()> = async {
            let pod = Pod::run(&d, &rs, pod_config("unread", &logs.join("unread"))).await?;
            let cid = pod.start(&d, idler()).await?;
            ensure_success(
                "warm-up",
                &run_exec(&rs, &cid, &["true"], None, None).await?,
            )?;
            let before = settled_fds(&d).await?;
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
                eventually(Duration::from_secs(10), || exec_dirs(&d).is_empty()).await,
                "exec dirs left: {:?}",
                exec_dirs(&d)
            );
            ensure_fds_settle(&d, &before, 3, Duration::from_secs(10)).await?;
            Ok(())
        }
        .await;
        remove_all_pods(&rs).await?;
        r
    })??;
    d.finish()
}
