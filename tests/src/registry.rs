//! A private OCI registry per test: Debian's `docker-registry` on 127.0.0.1 (plain, or with
//! htpasswd auth), images pushed into it with `skopeo`, its storage and access log for the
//! test to inspect or tamper with. (Its HTTP client is `http`, a slow proxy in front of it
//! `slow_proxy`, the CRI ImageService calls `cri_images`.)

use anyhow::{bail, Context, Result};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

use crate::cmd;
use crate::http::http_get;
use crate::image::{busybox_layout, Layout};

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

    /// A registry holding the busybox image (`image::busybox_layout`) as `repo_tag`.
    pub fn with_busybox(repo_tag: &str) -> Result<(Registry, Layout)> {
        let reg = Registry::start()?;
        let img = busybox_layout(reg.dir.path(), "busybox", serde_json::json!({}))?;
        reg.push(&img.path, repo_tag)?;
        Ok((reg, img))
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
