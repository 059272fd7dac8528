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

/// `PATH` as the test images set it.
pub const PATH: &str = PATH_ENV;

/// The GOARCH name of the host (`amd64`, `arm64`): the platform berthd pulls.
pub fn host_arch() -> &'static str {
    goarch()
}

/// An architecture that is not the host's (`arm64`, or `amd64` on an arm64 host).
pub fn other_arch() -> &'static str {
    if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

/// The busybox layer every test image starts from (uncompressed tar).
pub fn busybox_layer() -> Result<Vec<u8>> {
    layer()
}

/// Deterministic incompressible bytes (xorshift64*), e.g. for a layer too big to pull at once.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One layer's tar built entry by entry (root-owned unless said otherwise, mtime 1).
/// Whiteouts and opaque markers are written as the OCI layer format spells them.
pub struct LayerTar(tar::Builder<Vec<u8>>);

impl Default for LayerTar {
    fn default() -> Self {
        LayerTar(tar::Builder::new(Vec::new()))
    }
}

impl LayerTar {
    pub fn new() -> LayerTar {
        LayerTar::default()
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.0.append_data(
            &mut h,
            format!("{}/", path.trim_end_matches('/')),
            std::io::empty(),
        )?;
        Ok(self)
    }

    pub fn file(&mut self, path: &str, mode: u32, body: &[u8]) -> Result<&mut Self> {
        self.owned_file(path, mode, 0, 0, body)
    }

    pub fn owned_file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        body: &[u8],
    ) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Regular, mode, body.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_data(&mut h, path, body)?;
        Ok(self)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target)?;
        Ok(self)
    }

    /// A hard link to `target`, an earlier entry of this same layer.
    pub fn hardlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, path, target)?;
        Ok(self)
    }

    /// A FIFO (named pipe) at `path`.
    pub fn fifo(&mut self, path: &str) -> Result<&mut Self> {
        self.node(path, tar::EntryType::Fifo, 0, 0)
    }

    /// A character device `major:minor` at `path` (1:5 is /dev/zero).
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> Result<&mut Self> {
        self.node(path, tar::EntryType::Char, major, minor)
    }

    fn node(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self> {
        let mut h = header(kind, 0o644, 0);
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.0.append_data(&mut h, path, std::io::empty())?;
        Ok(self)
    }

    /// Deletes `path` (from the layers below) with a `.wh.<name>` entry.
    pub fn whiteout(&mut self, path: &str) -> Result<&mut Self> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), 0o644, b"")
    }

    /// Hides everything the layers below have in `dir` (`.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &str) -> Result<&mut Self> {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            0o644,
            b"",
        )
    }

    pub fn finish(self) -> Result<Vec<u8>> {
        Ok(self.0.into_inner()?)
    }
}

/// How [`layout`] stores its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    Gzip,
    /// gzip framing with stored blocks: quick to write for big incompressible layers.
    GzipStored,
    /// gzip with stored deflate blocks (what zlib and Go's gzip write for incompressible
    /// data) framed here, not by flate2: the bytes, hence the digests, are the same whatever
    /// compression backend flate2 is built with.
    GzipPortable,
    Uncompressed,
}

/// The CRC-32 (IEEE) of `data`, as gzip's trailer carries it.
fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        t[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// `raw` as a gzip member of stored deflate blocks (see [`LayerCompression::GzipPortable`]).
fn gzip_stored(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 0xffff * 5 + 32);
    // Magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut chunks = raw.chunks(0xffff).peekable();
    if raw.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        // BFINAL on the last block, BTYPE 00 (stored), then LEN and its complement.
        out.push(u8::from(chunks.peek().is_none()));
        let n = c.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(raw).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out
}

/// One image of a [`layout`]: its platform, the config's `config` object and its layers
/// (uncompressed tars, bottom first).
pub struct ImageDef {
    pub arch: String,
    pub config: serde_json::Value,
    pub layers: Vec<Vec<u8>>,
}

impl ImageDef {
    /// An image for the host's platform.
    pub fn new(config: serde_json::Value, layers: Vec<Vec<u8>>) -> ImageDef {
        ImageDef {
            arch: goarch().to_string(),
            config,
            layers,
        }
    }
}

/// The digests of one image written by [`layout`].
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub arch: String,
    pub manifest: String,
    /// The config digest: the image id a runtime reports.
    pub config: String,
    /// Layer blob digests (as stored, compressed), bottom first.
    pub layers: Vec<String>,
    /// Sizes of those blobs.
    pub layer_sizes: Vec<u64>,
}

/// An OCI image-layout tar written by [`layout`].
#[derive(Debug, Clone)]
pub struct Layout {
    pub path: PathBuf,
    /// What index.json points at: the manifest, or the image index for several images.
    pub digest: String,
    pub images: Vec<BuiltImage>,
}

impl Layout {
    /// The image for the host's platform.
    pub fn host(&self) -> &BuiltImage {
        self.images
            .iter()
            .find(|i| i.arch == goarch())
            .unwrap_or(&self.images[0])
    }
}

/// Writes `images` as an OCI image-layout tar `dir/<stem>.tar` (skopeo's `oci-archive:`),
/// tagged `tag`: one image is a plain manifest, several become an image index with a
/// linux/<arch> platform per manifest.
pub fn layout(
    dir: &Path,
    stem: &str,
    tag: &str,
    images: &[ImageDef],
    compression: LayerCompression,
) -> Result<Layout> {
    anyhow::ensure!(!images.is_empty(), "a layout needs an image");
    let path = dir.join(format!("{stem}.tar"));
    let file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut t = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |body: &[u8]| -> Result<String> {
        let d = sha(body);
        let mut h = header(tar::EntryType::Regular, 0o644, body.len() as u64);
        t.append_data(&mut h, format!("blobs/sha256/{}", &d[7..]), body)?;
        Ok(d)
    };
    let (layer_type, level) = match compression {
        LayerCompression::Gzip => (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Some(Compression::fast()),
        ),
        LayerCompression::GzipStored => (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Some(Compression::none()),
        ),
        LayerCompression::GzipPortable => ("application/vnd.oci.image.layer.v1.tar+gzip", None),
        LayerCompression::Uncompressed => ("application/vnd.oci.image.layer.v1.tar", None),
    };
    let mut built = Vec::new();
    let mut descs = Vec::new();
    for img in images {
        let mut diff_ids = Vec::new();
        let mut layers = Vec::new();
        let mut layer_descs = Vec::new();
        let mut layer_sizes = Vec::new();
        for raw in &img.layers {
            diff_ids.push(sha(raw));
            let blob = match level {
                Some(l) => {
                    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 2), l);
                    std::io::Write::write_all(&mut gz, raw)?;
                    gz.finish()?
                }
                None if compression == LayerCompression::GzipPortable => gzip_stored(raw),
                None => raw.clone(),
            };
            let d = add(&blob)?;
            layer_descs.push(json!({"mediaType": layer_type, "digest": d, "size": blob.len()}));
            layers.push(d);
            layer_sizes.push(blob.len() as u64);
        }
        let cfg = serde_json::to_vec(&json!({
            "architecture": img.arch, "os": "linux", "config": img.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))?;
        let cfg_digest = add(&cfg)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg.len()},
            "layers": layer_descs,
        }))?;
        let m_digest = add(&manifest)?;
        descs.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m_digest, "size": manifest.len(),
            "platform": {"os": "linux", "architecture": img.arch},
        }));
        built.push(BuiltImage {
            arch: img.arch.clone(),
            manifest: m_digest,
            config: cfg_digest,
            layers,
            layer_sizes,
        });
    }
    let top = if images.len() == 1 {
        let mut d = descs.remove(0);
        d.as_object_mut().map(|o| o.remove("platform"));
        d
    } else {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": descs,
        }))?;
        let d = add(&index)?;
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": index.len()})
    };
    let digest = top["digest"].as_str().unwrap_or_default().to_string();
    let mut top = top;
    top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]}))?;
    for (name, body) in [
        ("oci-layout", &br#"{"imageLayoutVersion":"1.0.0"}"#[..]),
        ("index.json", &index[..]),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, body.len() as u64);
        t.append_data(&mut h, name, body)?;
    }
    let mut w = t.into_inner()?;
    std::io::Write::flush(&mut w)?;
    Ok(Layout {
        path,
        digest,
        images: built,
    })
}

/// The busybox image (`Cmd ["sh"]`, gzip layer) as an OCI layout `dir/<stem>.tar`, with
/// `extra` merged into its config (e.g. `{"User": "1234"}`).
pub fn busybox_layout(dir: &Path, stem: &str, extra: serde_json::Value) -> Result<Layout> {
    let mut cfg = json!({"Cmd": ["sh"], "Env": [PATH_ENV]});
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    layout(
        dir,
        stem,
        "1",
        &[ImageDef::new(cfg, vec![layer()?])],
        LayerCompression::Gzip,
    )
}

/// The busybox image with a second layer of its own: `/<file>` of `size` random bytes
/// (from `seed`), so pulling and removing it makes and frees content nothing else holds
/// (and a big one keeps a pull in flight). Gzip-stored layers, as `dir/<stem>.tar`.
pub fn with_own_layer(
    dir: &Path,
    stem: &str,
    file: &str,
    size: usize,
    seed: u64,
) -> Result<Layout> {
    let mut own = LayerTar::new();
    own.file(file, 0o644, &random_bytes(size, seed))?;
    layout(
        dir,
        stem,
        "1",
        &[ImageDef::new(
            json!({"Cmd": ["sh"], "Env": [PATH_ENV]}),
            vec![layer()?, own.finish()?],
        )],
        LayerCompression::GzipStored,
    )
}
