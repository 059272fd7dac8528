//! A pod's network from outside: an HTTP server in a CNI pod reached on its pod IP and on
//! a host port mapping; berthd's built-in network on a node without CNI config (ready at
//! once, pods reached from the host and from each other, the operator's config winning
//! for new pods once it is there, switched off as the operator's choice). Every network
//! is the test's own (bridge name and /24 per test process, masquerade off): no traffic
//! leaves the host's own bridges.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{binary, reserved_ips, Berthd};
use berth_tests::cni;
use berth_tests::cri::{block_on, container_config, pod_config, pod_network};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image;
use berth_tests::pod::Pod;
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

/// NetworkReady as berthd reports it.
async fn network_ready(d: &Berthd) -> Result<cri::RuntimeCondition> {
    let (mut rs, _) = d.client().await?;
    let s = rs
        .status(cri::StatusRequest { verbose: false })
        .await?
        .into_inner();
    s.status
        .and_then(|st| {
            st.conditions
                .into_iter()
                .find(|c| c.r#type == "NetworkReady")
        })
        .context("no NetworkReady condition")
}

/// A pod-network pod `name` serving `text` on port 8080 (busybox httpd); its IP and the
/// server's container id.
async fn web_pod(d: &Berthd, name: &str, text: &str) -> Result<(Pod, String, String)> {
    let mut cfg = d.pod_config(name);
    pod_network(&mut cfg);
    let pod = Pod::run(d, cfg).await?;
    let ip = pod.ip().await?;
    let cid = pod
        .start(sh(
            "httpd",
            &format!(
                "mkdir -p /tmp/www && echo {text} > /tmp/www/index.html && \
                 exec busybox httpd -f -p 8080 -h /tmp/www"
            ),
        ))
        .await?;
    Ok((pod, ip, cid))
}

/// GET /index.html on `ip`:8080 from the host.
async fn host_get(ip: &str) -> Result<String> {
    let addr: SocketAddr = format!("{ip}:8080").parse()?;
    tokio::task::spawn_blocking(move || {
        http_get_eventually(addr, "/index.html", Duration::from_secs(10))
    })
    .await?
}

#[test]
fn builtin_network_serves_a_fresh_node_until_the_operators_config_arrives() -> Result<()> {
    let d = Berthd::builder().busybox().default_network(0).start()?;
    let builtin_ipam = d.dir.path().join("state/cni/ipam");
    // The operator's network, added while pods run on the built-in one.
    let mut operator = None;
    let r = block_on(async {
        // A fresh node: nothing in the conf dir, and ready all the same.
        ensure!(
            std::fs::read_dir(&d.cni_dir)?.next().is_none(),
            "the conf dir is not empty"
        );
        let net = network_ready(&d).await?;
        ensure!(net.status, "NetworkReady on an empty conf dir: {net:?}");
        // berthd keeps its conflist in its own state dir, never in the operator's dir.
        let copy = std::fs::read_to_string(d.dir.path().join("state/cni/berth.conflist"))?;
        let copy: serde_json::Value = serde_json::from_str(&copy)?;
        ensure!(
            copy["name"] == "berth" && copy["plugins"][0]["bridge"] == d.default_bridge().name,
            "the built-in conflist copy: {copy}"
        );

        let prefix = format!("{}.", d.default_bridge().prefix);
        let (a, ip_a, _) = web_pod(&d, "web-a", "hello-from-a").await?;
        ensure!(ip_a.starts_with(&prefix), "pod IP {ip_a:?}, want {prefix}x");
        let r = host_get(&ip_a).await?;
        ensure!(
            r.contains(" 200 ") && r.ends_with("hello-from-a\n"),
            "GET on pod a from the host:\n{r}"
        );
        // Pod to pod over the bridge.
        let (b, ip_b, cid_b) = web_pod(&d, "web-b", "hello-from-b").await?;
        ensure!(
            ip_b.starts_with(&prefix) && ip_b != ip_a,
            "pod b IP {ip_b:?}"
        );
        // (busybox-static's wget crashes: a request by hand through nc.)
        let get =
            format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {ip_a} 8080");
        let got = b.exec(&cid_b, &["sh", "-c", &get]).await?;
        let body = String::from_utf8_lossy(&got.stdout);
        ensure!(
            got.exit_code == 0 && body.contains(" 200 ") && body.ends_with("hello-from-a\n"),
            "GET on pod a from pod b: exit {} stdout {body:?} stderr {:?}",
            got.exit_code,
            String::from_utf8_lossy(&got.stderr)
        );
        ensure!(
            reserved_ips(&builtin_ipam).len() == 2,
            "reservations of the built-in network: {:?}",
            reserved_ips(&builtin_ipam)
        );

        // The operator's config wins for new pods once it is there.
        operator = Some(cni::bridge(&d.cni_dir, &d.dir.path().join("ipam"), 3)?);
        let op = operator.as_ref().context("operator network")?;
        let (c, ip_c, _) = web_pod(&d, "web-c", "hello-from-c").await?;
        ensure!(
            ip_c.starts_with(&format!("{}.", op.prefix)),
            "a pod made after the operator's config came: IP {ip_c:?}, want {}.x",
            op.prefix
        );
        let r = host_get(&ip_c).await?;
        ensure!(r.ends_with("hello-from-c\n"), "GET on pod c:\n{r}");
        ensure!(
            network_ready(&d).await?.status,
            "NetworkReady with the operator's config"
        );
        // The pods made before keep their network, and give it back through it: their
        // addresses are released from the built-in network's IPAM.
        let r = host_get(&ip_a).await?;
        ensure!(
            r.ends_with("hello-from-a\n"),
            "pod a after the switch:\n{r}"
        );
        a.remove().await?;
        b.remove().await?;
        ensure!(
            reserved_ips(&builtin_ipam).is_empty(),
            "built-in network reservations left after its pods went: {:?}",
            reserved_ips(&builtin_ipam)
        );
        c.remove().await?;
        ensure!(
            reserved_ips(&d.dir.path().join("ipam")).is_empty(),
            "operator network reservations left: {:?}",
            reserved_ips(&d.dir.path().join("ipam"))
        );
        Ok(())
    })?;
    let r = d.with_log(r);
    let finished = d.finish();
    drop(operator);
    r.and(finished)
}

#[test]
fn builtin_network_switched_off_leaves_the_node_not_ready() -> Result<()> {
    // The shipped defaults, as `berthd config default` prints them.
    let out = std::process::Command::new(binary()?)
        .args(["config", "default"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("[cni.default]")
            && text.contains("\nenabled = true\n")
            && text.contains("bridge = \"berth0\"")
            && text.contains("subnet = \"10.87.0.0/16\"")
            && text.contains("ip_masq = true"),
        "berthd config default:\n{text}"
    );
    // A bad key is refused with its name.
    let bad = std::env::temp_dir().join(format!("berth-bad-net-{}.toml", std::process::id()));
    std::fs::write(&bad, "[cni.default]\nsubnet = \"10.87.0.1/16\"\n")?;
    let out = std::process::Command::new(binary()?)
        .arg("--config")
        .arg(&bad)
        .args(["config", "check"])
        .output();
    let _ = std::fs::remove_file(&bad);
    let out = out?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("cni.default.subnet") && err.contains("host bits"),
        "a subnet with host bits: {:?} {err}",
        out.status
    );

    let d = Berthd::builder()
        .config("[cni.default]\nenabled = false\n")
        .start()?;
    let r = block_on(async {
        let net = network_ready(&d).await?;
        ensure!(
            !net.status
                && net.reason == "NetworkPluginNotReady"
                && net.message.contains(&d.cni_dir.display().to_string()),
            "NetworkReady with the built-in network off: {net:?}"
        );
        let (rs, _) = d.client().await?;
        let mut cfg = d.pod_config("nonet");
        pod_network(&mut cfg);
        let r = rs.run_pod(&cfg).await;
        ensure!(
            matches!(&r, Err(s) if s.code() == tonic::Code::FailedPrecondition),
            "a pod network with no config: {r:?}"
        );
        ensure!(
            !d.dir.path().join("state/cni/berth.conflist").exists(),
            "the built-in conflist was written while off"
        );
        Ok(())
    })?;
    d.with_log(r)?;
    d.finish()
}
