//! berthd's Prometheus endpoint (`[metrics] address`), scraped as Prometheus would and
//! parsed with a real text-format parser (`prometheus-parse`): CRI calls are counted by
//! method and code by exactly what the test called, the histogram of a call has its
//! count, the pod, container and shim gauges match what runs, an exec is a streaming
//! session; a restart counts what its recovery resolved (a pod reconnected, an exit that
//! happened while berthd was down replayed); with metrics off (the default) berthd listens
//! on no port but the streaming server's.

use anyhow::{bail, ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::container_config;
use berth_tests::cri_calls::CriCalls;
use berth_tests::http::http_get;
use berth_tests::pod::Pod;
use berth_tests::{image, procs, spdy};
use prometheus_parse::{Scrape, Value};
use std::time::Duration;
use tonic::Code;

/// The port berthd's log says the endpoint is bound to (`[metrics] address` has port 0):
/// the `nth` start's (the log is kept across restarts).
fn metrics_port(d: &Berthd, nth: usize) -> Result<u16> {
    procs::poll(
        Duration::from_secs(10),
        "the 'serving metrics' log line",
        || {
            let log = d.log();
            let line = log
                .lines()
                .filter(|l| l.contains("serving metrics"))
                .nth(nth)?
                .to_string();
            let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
            let (ip, port) = addr.rsplit_once(':')?;
            (ip == "127.0.0.1").then(|| port.parse().ok()).flatten()
        },
    )
}

/// One scrape, parsed.
fn scrape(port: u16) -> Result<Scrape> {
    let (status, headers, body) = http_get(port, "/metrics", &[], None)?;
    ensure!(status == 200, "GET /metrics: {status}");
    let ct = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    ensure!(
        ct == Some("text/plain; version=0.0.4; charset=utf-8"),
        "content type {ct:?}"
    );
    let text = String::from_utf8(body)?;
    Ok(Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?)
}

/// The value of sample `name` whose labels include `labels` (0 when absent: a counter
/// not yet touched has no sample).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            _ => f64::NAN,
        })
        .sum()
}

fn calls(s: &Scrape, method: &str, code: &str) -> f64 {
    value(
        s,
        "berth_cri_requests_total",
        &[("method", method), ("code", code)],
    )
}

#[test]
fn counters_move_by_what_was_called_and_gauges_match() -> Result<()> {
    let b = Berthd::builder()
        .busybox()
        .config("[metrics]\naddress = \"127.0.0.1:0\"\n");
    berthd_test(b, async |d| {
        let port = metrics_port(d, 0)?;
        // The fixture's own readiness calls are in here: what follows is counted from it.
        let before = scrape(port)?;
        ensure!(value(&before, "berth_pods", &[("state", "ready")]) == 0.0);
        ensure!(
            before
                .samples
                .iter()
                .any(|x| x.metric == "berth_recovery_duration_seconds"),
            "no recovery duration"
        );

        let (rs, _) = d.client().await?;
        for _ in 0..3 {
            rs.clone().version(cri::VersionRequest::default()).await?;
        }
        let missing = rs.pod_status(&"0".repeat(64), false).await;
        ensure!(
            matches!(&missing, Err(s) if s.code() == Code::NotFound),
            "{missing:?}"
        );
        let pod = Pod::run(d, d.pod_config("metrics")).await?;
        let cid = pod
            .start(container_config(
                "idler",
                image::BUSYBOX_IMAGE,
                &["sleep", "100000"],
            ))
            .await?;
        let url = rs.exec_url(&cid, &["echo", "hi"], false, false).await?;
        let out = spdy::exec(&url, None, None).await?;
        ensure!(out.stdout_text() == "hi\n", "exec: {out:?}");

        let after = scrape(port)?;
        let delta =
            |method: &str, code: &str| calls(&after, method, code) - calls(&before, method, code);
        for (method, code, want) in [
            ("Version", "OK", 3.0),
            ("PodSandboxStatus", "NotFound", 1.0),
            ("PodSandboxStatus", "OK", 0.0),
            ("RunPodSandbox", "OK", 1.0),
            ("CreateContainer", "OK", 1.0),
            ("StartContainer", "OK", 1.0),
            ("Exec", "OK", 1.0),
        ] {
            let got = delta(method, code);
            ensure!(
                got == want,
                "{method} {code}: {got} calls counted, {want} made"
            );
        }
        // The histogram of RunPodSandbox has its one observation, in every bucket's
        // cumulative count up to +Inf.
        let hist = after
            .samples
            .iter()
            .find(|x| {
                x.metric == "berth_cri_request_duration_seconds"
                    && x.labels.get("method") == Some("RunPodSandbox")
                    && x.labels.get("code") == Some("OK")
            })
            .context("no RunPodSandbox histogram")?;
        let Value::Histogram(buckets) = &hist.value else {
            bail!("not a histogram: {hist:?}");
        };
        let inf = buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .context("no +Inf bucket")?;
        ensure!(inf.count == 1.0, "+Inf bucket {}", inf.count);
        let run = [("method", "RunPodSandbox"), ("code", "OK")];
        ensure!(value(&after, "berth_cri_request_duration_seconds_count", &run) == 1.0);
        ensure!(value(&after, "berth_cri_request_duration_seconds_sum", &run) > 0.0);

        for (name, labels, want) in [
            ("berth_pods", [("state", "ready")], 1.0),
            ("berth_pods", [("state", "notready")], 0.0),
            ("berth_containers", [("state", "running")], 1.0),
            ("berth_containers", [("state", "exited")], 0.0),
            ("berth_streaming_sessions_total", [("kind", "exec")], 1.0),
        ] {
            let got = value(&after, name, &labels);
            ensure!(got == want, "{name}{labels:?} = {got}, want {want}");
        }
        ensure!(value(&after, "berth_shims_alive", &[]) == 1.0);
        let emitted = value(&after, "berth_events_emitted_total", &[])
            - value(&before, "berth_events_emitted_total", &[]);
        ensure!(emitted >= 2.0, "events emitted: {emitted}");
        // The exec's session ends with it (the server side a moment after the client).
        procs::poll(Duration::from_secs(10), "the exec session closed", || {
            let s = scrape(port).ok()?;
            (value(&s, "berth_streaming_sessions_active", &[("kind", "exec")]) == 0.0).then_some(())
        })?;

        pod.remove().await?;
        let gone = scrape(port)?;
        for (name, state) in [
            ("berth_pods", "ready"),
            ("berth_pods", "notready"),
            ("berth_containers", "running"),
            ("berth_containers", "exited"),
        ] {
            let got = value(&gone, name, &[("state", state)]);
            ensure!(got == 0.0, "{name} {state} = {got} after removal");
        }
        ensure!(value(&gone, "berth_shims_alive", &[]) == 0.0);
        Ok(())
    })
}

#[test]
fn a_restart_counts_what_recovery_resolved() -> Result<()> {
    let b = Berthd::builder()
        .busybox()
        .config("[metrics]\naddress = \"127.0.0.1:0\"\n");
    berthd_test(b, async |d| {
        let pod = Pod::run(d, d.pod_config("recovered")).await?;
        let cid = pod
            .start(container_config(
                "victim",
                image::BUSYBOX_IMAGE,
                &["sleep", "100000"],
            ))
            .await?;
        let socket = d.socket.display().to_string();
        let victim =
            procs::shim_children(&socket, |argv| argv.first().is_some_and(|a| a == "sleep"));
        ensure!(victim.len() == 1, "container process {victim:?}");
        // The container dies while berthd is down: its exit waits in the shim's journal.
        d.kill9()?;
        procs::signal(victim[0], libc::SIGKILL)?;
        procs::poll(Duration::from_secs(10), "the container's death", || {
            (!procs::alive(victim[0])).then_some(())
        })?;
        d.restart()?;
        let port = metrics_port(d, 1)?;
        // The journal is followed once CRI is served: the replayed exit shows up then.
        let s = procs::poll(Duration::from_secs(10), "the exit replayed", || {
            let s = scrape(port).ok()?;
            (value(&s, "berth_recovery_exits_replayed_total", &[]) == 1.0).then_some(s)
        })?;
        for (name, labels, want) in [
            (
                "berth_recovery_pods_total",
                vec![("outcome", "reconnected")],
                1.0,
            ),
            (
                "berth_recovery_pods_total",
                vec![("outcome", "shim_gone")],
                0.0,
            ),
            ("berth_recovery_intents_total", vec![], 0.0),
            ("berth_recovery_orphans_removed_total", vec![], 0.0),
            ("berth_shim_deaths_total", vec![], 0.0),
            ("berth_pods", vec![("state", "ready")], 1.0),
            ("berth_containers", vec![("state", "exited")], 1.0),
            ("berth_shims_alive", vec![], 1.0),
        ] {
            let got = value(&s, name, &labels);
            ensure!(got == want, "{name}{labels:?} = {got}, want {want}");
        }
        ensure!(value(&s, "berth_recovery_duration_seconds", &[]) > 0.0);
        let st = pod.container_status(&cid).await?;
        ensure!(st.exit_code == 137, "exit {st:?}");
        pod.remove().await
    })
}

/// The local TCP ports process `pid` listens on (from its fds and /proc/net/tcp{,6}).
fn listening_ports(pid: i32) -> Result<Vec<u16>> {
    let mut inodes = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.push(i.to_string());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)?.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap_or("");
                ports.push(u16::from_str_radix(port, 16)?);
            }
        }
    }
    ports.sort();
    Ok(ports)
}

#[test]
fn with_metrics_off_nothing_listens() -> Result<()> {
    berthd_test(Berthd::builder(), async |d| {
        let (rs, _) = d.client().await?;
        rs.clone().version(cri::VersionRequest::default()).await?;
        ensure!(
            !d.log().contains("serving metrics"),
            "metrics served though off:\n{}",
            d.log()
        );
        // The streaming server's port (0 in the config: picked at startup) is the only one.
        let log = d.log();
        let streaming: u16 = log
            .lines()
            .find(|l| l.contains("streaming server"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .context("no streaming server line in the log")?;
        let ports = listening_ports(d.pid())?;
        ensure!(
            ports == [streaming],
            "berthd listens on {ports:?}; only the streaming server's {streaming} expected"
        );
        Ok(())
    })
}
