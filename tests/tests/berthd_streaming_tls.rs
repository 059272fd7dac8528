//! berthd's streaming server with TLS (`streaming.tls_cert_file`/`tls_key_file`): the URLs
//! are https://, a plain-HTTP upgrade on the port is refused, and an exec runs over a
//! WebSocket inside TLS that trusts only the test's self-signed certificate.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::image;
use berth_tests::pod::Pod;
use berth_tests::ws::WsSession;
use std::path::Path;
use std::time::Duration;

fn idler() -> cri::ContainerConfig {
    container_config("idler", image::BUSYBOX_IMAGE, &["sleep", "1000000"])
}

/// A self-signed certificate for 127.0.0.1 and its PKCS #8 key, made by `openssl`.
fn self_signed(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("run openssl")?;
    ensure!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((cert, key))
}

#[test]
fn the_streaming_server_speaks_tls_when_given_a_certificate() -> Result<()> {
    let certs = tempfile::tempdir()?;
    let (cert, key) = self_signed(certs.path())?;
    let d = Berthd::builder()
        .config(&format!(
            "[streaming]\nport = 0\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .busybox()
        .start()?;
    let logs = d.dir.path().join("logs");
    let root_pem = std::fs::read(&cert)?;
    block_on(async {
        let (rs, _) = d.client().await?;
        let pod = Pod::run(&d, pod_config("tls", &logs.join("tls"))).await?;
        let cid = pod.start(idler()).await?;
        let url = rs
            .clone()
            .exec(cri::ExecRequest {
                container_id: cid.clone(),
                cmd: vec!["echo".into(), "over tls".into()],
                stdout: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .url;
        ensure!(url.starts_with("https://127.0.0.1:"), "Exec URL {url:?}");
        // Plain HTTP on the TLS port gets no upgrade (and the token survives it).
        let plain = url.replacen("https://", "http://", 1);
        ensure!(
            WsSession::connect(&plain, &["v5.channel.k8s.io"])
                .await
                .is_err(),
            "a plain-HTTP upgrade was accepted on the TLS port"
        );
        let s = WsSession::connect_tls(&url, &["v5.channel.k8s.io"], &root_pem).await?;
        let out = s.finish(Duration::from_secs(20)).await?;
        ensure!(out.stdout_text() == "over tls\n", "{:?}", out.stdout_text());
        ensure!(out.status()?["status"] == "Success");
        Ok(())
    })??;
    d.finish()
}
