//! Builds busybox-based OCI image-layout tarballs from the host's busybox-static.

use anyhow::{Context, Result};
use flate2::{write::GzEncoder, Compression};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Host busybox-static (Debian package `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// Name of the general-purpose test image (`Cmd ["sh"]`).
pub const BUSYBOX_IMAGE: &str = "berth.test/busybox:1";
/// Name of the pod sandbox image (entrypoint blocks forever).
pub const PAUSE_IMAGE: &str = "berth.test/pause:1";

const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "true", "false", "ls", "ps", "head", "tail", "seq", "kill",
    "yes", "dd", "printf", "date", "env", "id", "hostname", "grep", "wc", "mkdir", "rm", "touch",
    "tr", "sed", "awk", "uname", "test", "stty", "tty", "mount",
];

/// An image tarball ready for `ctr image import`.
pub struct ImageTar {
    pub path: PathBuf,
    pub name: &'static str,
}

/// The busybox image with `Cmd ["sh"]`, written into `dir`.
pub fn busybox(dir: &Path) -> Result<ImageTar> {
    let cfg = json!({"Cmd": ["sh"], "Env": [PATH_ENV]});
    build(dir, BUSYBOX_IMAGE, cfg)
}

/// The busybox layer under a caller-chosen image config (Entrypoint, Cmd, Env, WorkingDir...).
pub fn busybox_with(dir: &Path, name: &'static str, config: serde_json::Value) -> Result<ImageTar> {
    build(dir, name, config)
}

/// A pause image whose entrypoint sleeps forever, written into `dir`.
pub fn pause(dir: &Path) -> Result<ImageTar> {
    let cfg = json!({"Entrypoint": ["/bin/sleep", "2147483647"], "Env": [PATH_ENV]});
    build(dir, PAUSE_IMAGE, cfg)
}

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn sha(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The single layer: /bin/busybox, applet symlinks, /etc/passwd, /etc/group, /tmp and mount points.
fn layer() -> Result<Vec<u8>> {
    let bb = std::fs::read(BUSYBOX)
        .with_context(|| format!("read {BUSYBOX} (install busybox-static)"))?;
    let mut t = tar::Builder::new(Vec::new());
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("root", 0o700),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        t.append_data(&mut h, format!("{d}/"), std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, bb.len() as u64);
    t.append_data(&mut h, "bin/busybox", &bb[..])?;
    for a in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        t.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    for (f, body) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, body.len() as u64);
        t.append_data(&mut h, f, body.as_bytes())?;
    }
    Ok(t.into_inner()?)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn build(dir: &Path, name: &'static str, config: serde_json::Value) -> Result<ImageTar> {
    let raw = layer()?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut gz, &raw)?;
    let gz = gz.finish()?;
    let cfg = serde_json::to_vec(&json!({
        "architecture": goarch(), "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [sha(&raw)]},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&cfg), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&gz), "size": gz.len()}],
    }))?;
    let tag = name.rsplit(':').next().unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    }))?;
    let mut t = tar::Builder::new(Vec::new());
    let mut add = |path: String, body: &[u8]| -> Result<()> {
        let mut h = header(tar::EntryType::Regular, 0o644, body.len() as u64);
        t.append_data(&mut h, path, body)?;
        Ok(())
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for blob in [&gz, &cfg, &manifest] {
        add(format!("blobs/sha256/{}", &sha(blob)[7..]), blob)?;
    }
    add("index.json".into(), &index)?;
    let path = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    std::fs::write(&path, t.into_inner()?).with_context(|| format!("write {}", path.display()))?;
    Ok(ImageTar { path, name })
}
