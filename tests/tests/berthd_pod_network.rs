//! A pod's network from outside: an HTTP server in a CNI pod reached on its pod IP and on
//! a host port mapping.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config, pod_network};
use berth_tests::image;
use berth_tests::pod::Pod;
use k8s_cri::v1 as cri;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn sh(name: &str, script: &str) -> cri::ContainerConfig {
    container_config(name, image::BUSYBOX_IMAGE, &["sh", "-c", script])
}

/// GET `path` from `addr` with bounded timeouts; returns the whole response.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Retries `http_get` until the server answers (bounded).
fn http_get_eventually(addr: SocketAddr, path: &str, within: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        match http_get(addr, path) {
            Ok(r) if r.starts_with("HTTP/") => return Ok(r),
            other => {
                if start.elapsed() > within {
                    anyhow::bail!("GET http://{addr}{path}: {other:?}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn http_server_reachable_on_pod_ip_and_port_mapping() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(4).start()?;
    let logs = d.dir.path().join("logs");
    let host_port = 38000 + (std::process::id() % 900) as i32;
    block_on(async {
        let mut cfg = pod_config("web", &logs.join("web"));
        cfg.hostname = "web".into();
        pod_network(&mut cfg);
        cfg.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 8080,
            host_port,
            host_ip: String::new(),
        }];
        let pod = Pod::run(&d, cfg).await?;
        let ip = pod.ip().await?;
        let checked = async {
            ensure!(
                ip.starts_with(&format!("{}.", d.bridge().prefix)),
                "pod IP {ip:?}"
            );
            pod.start(sh(
                "httpd",
                "mkdir -p /tmp/www && echo hello-from-berth > /tmp/www/index.html && \
                     exec busybox httpd -f -p 8080 -h /tmp/www",
            ))
            .await?;
            let direct: SocketAddr = format!("{ip}:8080").parse()?;
            let r = tokio::task::spawn_blocking(move || {
                http_get_eventually(direct, "/index.html", Duration::from_secs(10))
            })
            .await??;
            ensure!(
                r.starts_with("HTTP/1.")
                    && r.contains(" 200 ")
                    && r.ends_with("hello-from-berth\n"),
                "GET on the pod IP:\n{r}"
            );
            let mapped: SocketAddr = format!("{}:{host_port}", d.bridge().gateway()).parse()?;
            let r = tokio::task::spawn_blocking(move || {
                http_get_eventually(mapped, "/index.html", Duration::from_secs(10))
            })
            .await?
            .with_context(|| format!("through the port mapping; berthd log:\n{}", d.log()))?;
            ensure!(
                r.contains(" 200 ") && r.ends_with("hello-from-berth\n"),
                "GET on the port mapping:\n{r}"
            );
            Ok(())
        }
        .await;
        pod.remove().await?;
        checked
    })??;
    // The mapping is gone with the pod.
    let mapped: SocketAddr = format!("{}:{host_port}", d.bridge().gateway()).parse()?;
    let after = http_get(mapped, "/");
    ensure!(
        matches!(&after, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "port {host_port} after the pod was removed: {after:?} (want connection refused: no DNAT left)"
    );
    d.finish()
}
