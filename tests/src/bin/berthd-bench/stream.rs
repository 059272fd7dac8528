//! The streaming phase: on each runtime, one pod-network pod with a busybox httpd serving
//! a 100 MiB file; ExecSync of `true` (median of `plan.execs`), streaming Exec of `true`
//! through the Exec RPC and a SPDY/3.1 session to its exit status (median of `plan.execs`),
//! and PortForward throughput: one SPDY port-forward connection downloading the file
//! (MB/s, median of `plan.downloads`). The client is the test suite's own SPDY client for
//! both runtimes (containerd's streaming server is kubelet's library).

use super::*;
use berth_tests::cri_calls::CriCalls;
use berth_tests::spdy;

/// The file the pod serves, MiB.
pub(crate) const FILE_MIB: usize = 100;
const PORT: u16 = 8099;

/// One side's pod and container for the phase.
async fn setup(s: &mut Side) -> Result<String> {
    let (pod, cfg, _) = s.run_pod().await?;
    let script = format!(
        "mkdir -p /www && dd if=/dev/zero of=/www/big bs=1M count={FILE_MIB} 2>/dev/null && \
         echo ready > /www/ready && exec httpd -f -p {PORT} -h /www"
    );
    let id =
        s.rs.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("web", &s.image, &["sh", "-c", &script])),
            sandbox_config: Some(cfg),
        })
        .await
        .context("CreateContainer web")?
        .into_inner()
        .container_id;
    s.rs.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .context("StartContainer web")?;
    // Ready once the file is written.
    for _ in 0..200 {
        let r =
            s.rs.exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["cat".into(), "/www/ready".into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        if r.exit_code == 0 {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the web container did not get ready")
}

async fn exec_sync(s: &mut Side, id: &str) -> Result<f64> {
    let t0 = Instant::now();
    let r =
        s.rs.exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["true".into()],
            timeout: 10,
        })
        .await?
        .into_inner();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    ensure!(r.exit_code == 0, "ExecSync true: exit {}", r.exit_code);
    Ok(ms)
}

/// Exec RPC, SPDY upgrade, the streams, `true`, its status: one round trip.
async fn exec_stream(s: &mut Side, id: &str) -> Result<f64> {
    let t0 = Instant::now();
    let url = s.rs.exec_url(id, &["true"], false, false).await?;
    // Until the status arrives. Not `spdy::exec`, which insists on FIN: kubelet's
    // server (containerd's) resets its streams after the status instead.
    let mut s = spdy::ExecSession::start(&url, &spdy::EXEC_PROTOCOLS, false, false).await?;
    let mut status = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(d) = s.error.rx.recv().await {
            status.extend(d);
        }
    })
    .await;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    ensure!(got.is_ok(), "exec true: no status within 30 s");
    let status: serde_json::Value = serde_json::from_slice(&status)
        .with_context(|| format!("status {:?}", String::from_utf8_lossy(&status)))?;
    ensure!(status["status"] == "Success", "exec true: status {status}");
    s.session.kill().await;
    Ok(ms)
}

/// One download of the file through a port-forward connection: MB/s (10^6 bytes).
async fn download(s: &mut Side, pod: &str) -> Result<f64> {
    let url =
        s.rs.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![],
        })
        .await?
        .into_inner()
        .url;
    let pf = spdy::PortForward::connect(&url).await?;
    let t0 = Instant::now();
    let (reply, err) = pf
        .open(PORT)
        .await?
        .round_trip(
            b"GET /big HTTP/1.0\r\n\r\n",
            false,
            Duration::from_secs(300),
        )
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    let body = FILE_MIB << 20;
    ensure!(
        err.is_empty() && reply.len() > body,
        "download: {} bytes, error stream {err:?}",
        reply.len()
    );
    Ok(reply.len() as f64 / 1e6 / secs)
}

async fn measure_side(s: &mut Side, plan: &Plan) -> Result<()> {
    let id = setup(s).await?;
    let pod = s.pods.last().cloned().context("no pod")?;
    // Warm-up: first execs pay for lazy set-up on both sides.
    for _ in 0..3 {
        exec_sync(s, &id).await?;
        exec_stream(s, &id).await?;
    }
    for _ in 0..plan.execs {
        let ms = exec_sync(s, &id).await?;
        s.fig.exec_sync.push(ms);
        let ms = exec_stream(s, &id).await?;
        s.fig.exec_stream.push(ms);
    }
    for _ in 0..plan.downloads {
        let mbs = download(s, &pod).await?;
        eprintln!("[bench]   {}: port-forward {mbs:.0} MB/s", s.name());
        s.fig.pf_mbps.push(mbs);
    }
    s.remove_pod(&pod).await?;
    Ok(())
}

pub(crate) async fn measure(sides: &mut [Side], plan: &Plan) {
    for s in sides.iter_mut().filter(|s| s.ok()) {
        eprintln!("[bench] {}: streaming", s.name());
        let r = measure_side(s, plan).await;
        s.note("streaming", r);
    }
}
