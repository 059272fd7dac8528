//! A private OCI registry per test: Debian's `docker-registry` on 127.0.0.1 (plain, or with
//! htpasswd auth), images pushed into it with `skopeo`, its storage and access log for the
//! test to inspect or tamper with; a bandwidth-limiting TCP proxy in front of it; and the
//! CRI ImageService calls the image suites make.

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::cmd;
use crate::cri::ImageServiceClient;

/// Debian's distribution registry (package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; killed (by its pid) when dropped.
pub struct Registry {
    pub dir: TempDir,
    pub port: u16,
    /// `user:password` when the registry requires htpasswd authentication.
    pub creds: Option<(String, String)>,
    child: Option<Child>,
}

/// A port on 127.0.0.1 that refuses connections for as long as this lives: bound (so no
/// one else gets it) but not listening.
pub struct DeadPort {
    _fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl DeadPort {
    pub fn new() -> Result<DeadPort> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2)/bind(2)/getsockname(2) on a fresh fd we own; the
        // sockaddr_in is fully initialised and its size passed along.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len) != 0 {
                bail!("bind: {}", std::io::Error::last_os_error());
            }
            if libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) != 0 {
                bail!("getsockname: {}", std::io::Error::last_os_error());
            }
            Ok(DeadPort {
                _fd: owned,
                port: u16::from_be(addr.sin_port),
            })
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Registry {
    /// A registry anyone may pull from and push to.
    pub fn start() -> Result<Registry> {
        Registry::launch(None)
    }

    /// A registry that requires `user`/`password` (htpasswd, bcrypt) for every request.
    pub fn with_auth(user: &str, password: &str) -> Result<Registry> {
        Registry::launch(Some((user.to_string(), password.to_string())))
    }

    fn launch(creds: Option<(String, String)>) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir_in("/tmp")?;
        let mut auth = String::new();
        if let Some((user, pass)) = &creds {
            let out = cmd::run(
                Command::new("htpasswd").args(["-Bbn", user, pass]),
                Duration::from_secs(20),
            )?
            .ok("htpasswd (install apache2-utils)")?;
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, out.stdout.trim())?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            );
        }
        let mut reg = Registry {
            dir,
            port: 0,
            creds,
            child: None,
        };
        let mut last = String::new();
        // The free port may be taken by someone else before the registry binds it: retry.
        for _ in 0..5 {
            reg.port = free_port()?;
            let config = reg.dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{}\n  secret: berth-test-secret\n{auth}",
                    reg.storage().display(),
                    reg.port
                ),
            )?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(reg.log_path())?;
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {REGISTRY_BIN} (install docker-registry)"))?;
            reg.child = Some(child);
            match reg.wait_ready() {
                Ok(()) => return Ok(reg),
                Err(e) => {
                    last = format!("{e:#}");
                    reg.kill();
                }
            }
        }
        bail!("the registry did not start: {last}\nlog:\n{}", reg.log())
    }

    /// Waits until `GET /v2/` answers (200, or 401 with auth).
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    bail!("docker-registry exited: {st}");
                }
            }
            if let Ok((status, _, _)) = http_get(self.port, "/v2/", &[], None) {
                if status == 200 || status == 401 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("GET /v2/ on 127.0.0.1:{} never answered", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Our own child, by its pid.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:<port>`: the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>/<repo_tag>`.
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's log: its own messages and an access log line per request.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log lines about berthd's requests (user agent `berth/...`).
    pub fn berth_log(&self) -> String {
        self.log()
            .lines()
            .filter(|l| l.contains("berth/"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The file the registry serves blob `digest` from.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Access-log lines of `method` requests whose path contains `needle` and that were
    /// answered with `status`.
    pub fn requests(&self, method: &str, needle: &str, status: u16) -> usize {
        let prefix = format!("\"{method} ");
        let code = format!("\" {status} ");
        self.log()
            .lines()
            .filter(|l| {
                l.find(&prefix).is_some_and(|i| {
                    let rest = &l[i..];
                    rest.split(" HTTP/")
                        .next()
                        .is_some_and(|r| r.contains(needle))
                        && rest.contains(&code)
                })
            })
            .count()
    }

    /// `skopeo copy --all --preserve-digests` of an OCI archive to `<repo>:<tag>`; every
    /// digest stays as the archive has it. Returns the pushed manifest (or index) digest.
    pub fn push(&self, archive: &Path, repo_tag: &str) -> Result<String> {
        self.push_with(archive, repo_tag, &["--all", "--preserve-digests"])
    }

    /// `skopeo copy` with extra flags (e.g. `--dest-compress-format zstd`).
    pub fn push_with(&self, archive: &Path, repo_tag: &str, flags: &[&str]) -> Result<String> {
        skopeo_push(
            &self.host(),
            self.creds.as_ref(),
            archive,
            repo_tag,
            flags,
            // Keep skopeo's temp files (a big layer is buffered) next to the test's.
            self.dir.path(),
        )
    }

    /// A manifest as the registry serves it (any OCI or Docker type), parsed.
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<serde_json::Value> {
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
        let (status, _, body) = http_get(
            self.port,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", accept)],
            self.creds.as_ref(),
        )?;
        if status != 200 {
            bail!(
                "GET manifest {repo}:{reference}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

/// `skopeo copy --quiet` (plain HTTP, no TLS verification) of the OCI archive `archive` to
/// `<host>/<repo_tag>`, with `creds` or none and extra `flags`; skopeo's temp files and
/// the digest file go into `tmp`. Returns the pushed manifest (or index) digest.
pub fn skopeo_push(
    host: &str,
    creds: Option<&(String, String)>,
    archive: &Path,
    repo_tag: &str,
    flags: &[&str],
    tmp: &Path,
) -> Result<String> {
    let digest_file = tmp.join("pushed.digest");
    let _ = std::fs::remove_file(&digest_file);
    let mut c = Command::new("skopeo");
    c.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
    ])
    .args(flags)
    .arg("--digestfile")
    .arg(&digest_file);
    match creds {
        Some((u, p)) => c.arg("--dest-creds").arg(format!("{u}:{p}")),
        None => c.arg("--dest-no-creds"),
    };
    c.arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{host}/{repo_tag}"))
        .env("TMPDIR", tmp);
    cmd::run(&mut c, Duration::from_secs(180))?.ok(&format!("skopeo push {repo_tag}"))?;
    Ok(std::fs::read_to_string(&digest_file)?.trim().to_string())
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `base64("user:password")`, as the CRI AuthConfig's `auth` field carries it.
pub fn basic_auth(user: &str, password: &str) -> String {
    base64(format!("{user}:{password}").as_bytes())
}

/// An HTTP answer: status, headers (lower-case names) and body.
pub type HttpReply = (u16, Vec<(String, String)>, Vec<u8>);

/// A minimal HTTP/1.1 GET on 127.0.0.1:`port`.
pub fn http_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    creds: Option<&(String, String)>,
) -> Result<HttpReply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some((u, p)) = creds {
        req.push_str(&format!("Authorization: Basic {}\r\n", basic_auth(u, p)));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("bad HTTP status line")?;
    let hdrs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if hdrs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = unchunk(&body)?;
    }
    Ok((status, hdrs, body))
}

fn unchunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )?;
        if size == 0 {
            return Ok(out);
        }
        let start = eol + 2;
        out.extend_from_slice(b.get(start..start + size).context("short chunk")?);
        b = b.get(start + size + 2..).context("short chunk")?;
    }
}

/// A TCP proxy on 127.0.0.1 in front of another local port that limits the download
/// direction to a settable rate (0 = unlimited): makes a big pull last long enough to be
/// interrupted at a chosen point. Stopped, and its connections cut, on drop.
pub struct SlowProxy {
    pub port: u16,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl SlowProxy {
    pub fn start(upstream: u16, bytes_per_sec: u64) -> Result<SlowProxy> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        let rate = Arc::new(AtomicU64::new(bytes_per_sec));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Default::default();
        let (r, s, cs) = (rate.clone(), stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let (down, _) = match l.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = down.set_nonblocking(false);
                let clones = (
                    down.try_clone(),
                    up.try_clone(),
                    down.try_clone(),
                    up.try_clone(),
                );
                let (Ok(d2), Ok(u2), Ok(d3), Ok(u3)) = clones else {
                    continue;
                };
                cs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend([d3, u3]);
                std::thread::spawn(move || pump(down, up, None));
                let r = r.clone();
                std::thread::spawn(move || pump(u2, d2, Some(r)));
            }
        });
        Ok(SlowProxy {
            port,
            rate,
            stop,
            conns,
            accept: Some(accept),
        })
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, rate: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        let bps = rate.as_ref().map_or(0, |r| r.load(Ordering::SeqCst));
        if bps > 0 {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / bps as f64));
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// PullImage of `image`, with `auth` when given; the image ref berthd returns.
pub async fn pull(
    is: &ImageServiceClient<Channel>,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> std::result::Result<String, tonic::Status> {
    Ok(is
        .clone()
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .image_ref)
}

/// ImageStatus of `image` (None when berthd does not have it).
pub async fn status(is: &ImageServiceClient<Channel>, image: &str) -> Result<Option<cri::Image>> {
    Ok(is
        .clone()
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

/// Every image ListImages reports.
pub async fn list(is: &ImageServiceClient<Channel>) -> Result<Vec<cri::Image>> {
    Ok(is
        .clone()
        .list_images(cri::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images)
}

pub async fn remove(
    is: &ImageServiceClient<Channel>,
    image: &str,
) -> std::result::Result<(), tonic::Status> {
    is.clone()
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// ImageFsInfo's image filesystem: (used bytes, used inodes).
pub async fn fs_info(is: &ImageServiceClient<Channel>) -> Result<(u64, u64)> {
    let r = is
        .clone()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await?
        .into_inner();
    let fs = r
        .image_filesystems
        .first()
        .context("ImageFsInfo reported no image filesystem")?;
    Ok((
        fs.used_bytes.as_ref().map_or(0, |v| v.value),
        fs.inodes_used.as_ref().map_or(0, |v| v.value),
    ))
}

/// The files under berthd's content store directory `sub` (`blobs/sha256`, `ingest`).
pub fn content_files(root: &Path, sub: &str) -> Vec<(String, u64)> {
    let dir = root.join("content").join(sub);
    let mut v: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().map(|m| m.len()).unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// PullImage that must succeed: a failure carries the CRI status and berthd's log.
pub async fn pull_ok(
    d: &crate::berthd::Berthd,
    is: &ImageServiceClient<Channel>,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String> {
    pull(is, image, auth).await.map_err(|s| {
        anyhow::anyhow!(
            "PullImage {image}: {:?}: {}\nberthd log:\n{}",
            s.code(),
            s.message(),
            d.log()
        )
    })
}

/// PullImage that must fail: its status.
pub async fn pull_err(
    is: &ImageServiceClient<Channel>,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<tonic::Status> {
    match pull(is, image, auth).await {
        Ok(id) => bail!("PullImage {image} succeeded (image {id})"),
        Err(s) => Ok(s),
    }
}
