//! The HTTP/1.1 side of a session: the request that upgrades a connection to SPDY/3.1 and
//! negotiates the stream protocol, and reading the answer (a 101, or a refusal with its body).

use super::headers::{header, Headers};
use anyhow::{ensure, Context, Result};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for the TCP connect and the HTTP handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The answer to an upgrade request the server refused.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub headers: Headers,
    pub body: String,
}

/// How the server answered an upgrade request.
pub(super) enum Handshake {
    /// 101: the connection, the protocol the server chose and what it sent past the head.
    Switched {
        sock: TcpStream,
        protocol: String,
        early: Vec<u8>,
    },
    Refused(Refused),
}

/// Requests `url` with an upgrade to SPDY/3.1 offering `protocols` (in order of
/// preference); a 101 yields the connection, any other answer is returned as it came.
pub(super) async fn handshake(url: &str, protocols: &[&str]) -> Result<Handshake> {
    let (host, path) = split_url(url)?;
    let mut sock = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&host))
        .await
        .with_context(|| format!("connect {host}: timed out"))?
        .with_context(|| format!("connect {host}"))?;
    sock.set_nodelay(true)?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-tests/spdy\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await?;
    let (status, headers, rest) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut sock))
        .await
        .with_context(|| format!("no response head from {url} within {HANDSHAKE_TIMEOUT:?}"))??;
    if status != 101 {
        let body = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_body(&mut sock, &headers, rest))
            .await
            .with_context(|| format!("body of the {status} from {url}: timed out"))??;
        return Ok(Handshake::Refused(Refused {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }));
    }
    let upgrade = header(&headers, "upgrade").unwrap_or("");
    ensure!(
        upgrade.eq_ignore_ascii_case("spdy/3.1"),
        "101 with Upgrade {upgrade:?}: {headers:?}"
    );
    let connection = header(&headers, "connection").unwrap_or("");
    ensure!(
        connection.to_ascii_lowercase().contains("upgrade"),
        "101 with Connection {connection:?}"
    );
    let protocol = header(&headers, "x-stream-protocol-version")
        .with_context(|| format!("101 without X-Stream-Protocol-Version: {headers:?}"))?
        .to_string();
    ensure!(
        protocols.contains(&protocol.as_str()),
        "server chose {protocol:?}, which we did not offer ({protocols:?})"
    );
    Ok(Handshake::Switched {
        sock,
        protocol,
        early: rest,
    })
}

/// `http://host:port/path` → ("host:port", "/path").
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url:?}"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((host.to_string(), path.to_string()))
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads an HTTP response head; returns (status, headers, bytes read past the head).
async fn read_head(sock: &mut TcpStream) -> Result<(u16, Headers, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = find_subslice(&buf, b"\r\n\r\n") {
            break i;
        }
        ensure!(buf.len() < 64 << 10, "response head over 64 KiB");
        let n = sock.read(&mut chunk).await.context("read response")?;
        ensure!(
            n > 0,
            "connection closed before a response head ({} bytes: {:?})",
            buf.len(),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 response: {status_line:?}"
    );
    let status: u16 = code
        .parse()
        .with_context(|| format!("status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, rest))
}

/// Reads a refused response's body: Content-Length bytes, else to the end (bounded).
async fn read_body(sock: &mut TcpStream, headers: &Headers, mut body: Vec<u8>) -> Result<Vec<u8>> {
    let want = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    let mut chunk = [0u8; 4096];
    loop {
        if want.is_some_and(|w| body.len() >= w) || body.len() > 1 << 20 {
            return Ok(body);
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:1234/exec/abc").unwrap(),
            ("127.0.0.1:1234".to_string(), "/exec/abc".to_string())
        );
    }
}
