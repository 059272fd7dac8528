//! A registry on 127.0.0.1 that attacks its client: endless and trickling manifests, an
//! endless token body, a config far over any sane size, a layer at 1 byte per second.

use anyhow::Result;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Its manifest body never ends (full speed, no Content-Length).
pub const ENDLESS_MANIFEST: &str = "endless-manifest";
/// Its token endpoint answers 200 with a body that never ends.
pub const ENDLESS_TOKEN: &str = "endless-token";
/// A valid manifest, sent 1 byte per second.
pub const SLOW_MANIFEST: &str = "slow-manifest";
/// A valid manifest whose config is declared (and served) as 100 MB.
pub const HUGE_CONFIG: &str = "huge-config";
/// A valid manifest whose config is declared small but whose body never ends.
pub const ENDLESS_CONFIG: &str = "endless-config";
/// A valid manifest and config whose one (1 MiB) layer comes at 1 byte per second.
pub const SLOW_LAYER: &str = "slow-layer";

/// The size `HUGE_CONFIG` declares and serves.
pub const HUGE: u64 = 100_000_000;

/// "Endless" bodies stop here: a client that does not bound its reads then fails a memory
/// bound instead of taking the test host down with it.
const ENDLESS_STOP: u64 = 256 << 20;

const TOKEN: &str = "hostile-token";

/// Digests of the zero-filled blobs: `HUGE_CONFIG`'s config and the 1 MiB layer.
struct Digests {
    huge: String,
    layer: String,
}

/// A running hostile registry; stopped (every connection cut) when dropped.
pub struct HostileRegistry {
    pub port: u16,
    rt: Option<tokio::runtime::Runtime>,
}

impl HostileRegistry {
    pub fn start() -> Result<HostileRegistry> {
        // A runtime of its own: the registry keeps trickling whatever the test body does.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let l = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let port = l.local_addr()?.port();
        // Hashed once, before serving: hashing 100 MB per request would make this registry
        // the slow one.
        let digests = Arc::new(Digests {
            huge: zeros_digest(HUGE),
            layer: zeros_digest(1 << 20),
        });
        rt.spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let digests = digests.clone();
                tokio::spawn(async move {
                    let _ = serve(s, port, &digests).await;
                });
            }
        });
        Ok(HostileRegistry { port, rt: Some(rt) })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The image `repo` (one of the constants) in this registry, tag `1`.
    pub fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:1", self.host())
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// The digest of `n` zero bytes, without holding them.
fn zeros_digest(n: u64) -> String {
    let chunk = [0u8; 64 << 10];
    let mut h = Sha256::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        h.update(&chunk[..k]);
        left -= k as u64;
    }
    format!("sha256:{:x}", h.finalize())
}

/// A small valid image config (one layer, whose diff id is made up: no pull gets so far).
fn config() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]},
        "config": {}
    }))
    .unwrap_or_default()
}

/// What `repo`'s manifest declares: the config (digest, size) and its layers.
fn manifest(repo: &str, z: &Digests) -> Vec<u8> {
    let (cdigest, csize) = match repo {
        HUGE_CONFIG => (z.huge.clone(), HUGE),
        ENDLESS_CONFIG => (digest(b"{}"), 2),
        _ => {
            let c = config();
            (digest(&c), c.len() as u64)
        }
    };
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cdigest,
            "size": csize
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": z.layer,
            "size": 1 << 20
        }]
    }))
    .unwrap_or_default()
}

async fn serve(mut s: TcpStream, port: u16, z: &Digests) -> std::io::Result<()> {
    // One request per connection (answers say `Connection: close`).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() > 64 << 10 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v2", ""] | ["v2"] => {
            let challenge =
                format!("Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"hostile\"");
            let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}"#;
            reply(&mut s, 401, &[("WWW-Authenticate", &challenge)], body).await
        }
        ["token"] => {
            if query.contains(ENDLESS_TOKEN) {
                start(&mut s, 200, "application/json", None).await?;
                s.write_all(b"{\"token\":\"").await?;
                endless(&mut s, b'a').await
            } else {
                let body = format!("{{\"token\":\"{TOKEN}\",\"expires_in\":300}}");
                reply(&mut s, 200, &[], body.as_bytes()).await
            }
        }
        ["v2", repo, "manifests", _] => match *repo {
            ENDLESS_MANIFEST => {
                start(
                    &mut s,
                    200,
                    "application/vnd.oci.image.manifest.v1+json",
                    None,
                )
                .await?;
                s.write_all(b"{\"schemaVersion\":2,\"pad\":\"").await?;
                endless(&mut s, b'a').await
            }
            SLOW_MANIFEST => {
                let m = manifest(repo, z);
                let oci = "application/vnd.oci.image.manifest.v1+json";
                start(&mut s, 200, oci, Some(m.len() as u64)).await?;
                trickle(&mut s, &m).await
            }
            HUGE_CONFIG | ENDLESS_CONFIG | SLOW_LAYER | ENDLESS_TOKEN => {
                let m = manifest(repo, z);
                let ct = [("Content-Type", "application/vnd.oci.image.manifest.v1+json")];
                reply(&mut s, 200, &ct, &m).await
            }
            _ => not_found(&mut s).await,
        },
        ["v2", repo, "blobs", d] => {
            let layer = &z.layer;
            match *repo {
                HUGE_CONFIG if d == &z.huge => {
                    start(&mut s, 200, "application/octet-stream", Some(HUGE)).await?;
                    zeros(&mut s, HUGE).await
                }
                ENDLESS_CONFIG => {
                    start(&mut s, 200, "application/octet-stream", None).await?;
                    endless(&mut s, b'{').await
                }
                SLOW_LAYER if d == layer => {
                    start(&mut s, 200, "application/octet-stream", Some(1 << 20)).await?;
                    trickle(&mut s, &vec![0u8; 1 << 20]).await
                }
                SLOW_LAYER => reply(&mut s, 200, &[], &config()).await,
                _ => not_found(&mut s).await,
            }
        }
        _ => not_found(&mut s).await,
    }
}

/// Status line and headers; the body follows (delimited by `len`, else by the close).
async fn start(s: &mut TcpStream, code: u16, ct: &str, len: Option<u64>) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {code} X\r\nConnection: close\r\nContent-Type: {ct}\r\n");
    if let Some(n) = len {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    h.push_str("\r\n");
    s.write_all(h.as_bytes()).await
}

async fn reply(
    s: &mut TcpStream,
    code: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {code} X\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| *k == "Content-Type") {
        h.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    s.write_all(h.as_bytes()).await?;
    s.write_all(body).await?;
    s.shutdown().await
}

async fn not_found(s: &mut TcpStream) -> std::io::Result<()> {
    let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"no such repository"}]}"#;
    reply(s, 404, &[], body).await
}

/// `fill` as fast as the client takes it, up to `ENDLESS_STOP`.
async fn endless(s: &mut TcpStream, fill: u8) -> std::io::Result<()> {
    let chunk = vec![fill; 64 << 10];
    let mut sent = 0u64;
    while sent < ENDLESS_STOP {
        s.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    s.shutdown().await
}

async fn zeros(s: &mut TcpStream, n: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; 64 << 10];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k]).await?;
        left -= k as u64;
    }
    s.shutdown().await
}

/// One byte per second.
async fn trickle(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    for b in body {
        s.write_all(std::slice::from_ref(b)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s.shutdown().await
}
