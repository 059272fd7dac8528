//! Test helpers: layer tars and OCI image-layout archives built in memory with the
//! `tar` crate, including entries the crate itself refuses to write (`..`, absolute).

use std::collections::BTreeMap;
use std::io::Write;

use flate2::write::GzEncoder;
use serde_json::json;
use tar::{EntryType, Header};

use super::content::sha256_digest;
use super::oci;

/// A layer tar under construction.
pub struct LayerTar {
    b: tar::Builder<Vec<u8>>,
}

fn header(path: &str, kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    // Written raw: set_path refuses `..` and absolute paths, which tests need.
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

impl LayerTar {
    pub fn new() -> Self {
        LayerTar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn add(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.b.append(&h, data).expect("append");
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.add(header(path, EntryType::Directory, mode, 0), &[])
    }

    pub fn file(&mut self, path: &str, data: &str) -> &mut Self {
        self.add(
            header(path, EntryType::Regular, 0o644, data.len() as u64),
            data.as_bytes(),
        )
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        data: &str,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = header(path, EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.add(h, data.as_bytes())
    }

    /// A file with PAX `SCHILY.xattr.*` records.
    pub fn file_xattr(&mut self, path: &str, data: &str, xattrs: &[(&str, &str)]) -> &mut Self {
        let keys: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_bytes()))
            .collect();
        self.b
            .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("pax");
        self.file(path, data)
    }

    fn link(&mut self, path: &str, to: &str, kind: EntryType) -> &mut Self {
        let mut h = header(path, kind, 0o777, 0);
        h.set_link_name_literal(to).expect("link name");
        self.add(h, &[])
    }

    pub fn symlink(&mut self, path: &str, to: &str) -> &mut Self {
        self.link(path, to, EntryType::Symlink)
    }

    pub fn hardlink(&mut self, path: &str, to: &str) -> &mut Self {
        self.link(path, to, EntryType::Link)
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = header(path, EntryType::Char, 0o666, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.add(h, &[])
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish tar")
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// One image's documents and blobs.
pub struct TestImage {
    pub config_digest: String,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// Builds an image from uncompressed layer tars (gzip-compressed when `gz`), with
/// `diff_ids` from the tars unless `bad_diff` replaces the first.
pub fn image(layers: &[Vec<u8>], gz: bool, bad_diff: bool) -> TestImage {
    if gz {
        image_with(
            layers,
            |t| (gzip(t), "application/vnd.oci.image.layer.v1.tar+gzip"),
            bad_diff,
        )
    } else {
        image_with(
            layers,
            |t| (t.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
            bad_diff,
        )
    }
}

/// zstd-compressed layers (two frames each, as chunked writers produce).
pub fn zstd(data: &[u8]) -> (Vec<u8>, &'static str) {
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};
    let (a, b) = data.split_at(data.len() / 2);
    let mut out = compress_to_vec(a, CompressionLevel::Fastest);
    out.extend(compress_to_vec(b, CompressionLevel::Fastest));
    (out, "application/vnd.oci.image.layer.v1.tar+zstd")
}

/// Builds an image whose layer blobs `compress` makes (body and media type).
pub fn image_with(
    layers: &[Vec<u8>],
    compress: fn(&[u8]) -> (Vec<u8>, &'static str),
    bad_diff: bool,
) -> TestImage {
    let mut blobs = BTreeMap::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        diff_ids.push(sha256_digest(tar));
        let (body, mt) = compress(tar);
        let d = sha256_digest(&body);
        descs.push(json!({"mediaType": mt, "digest": d, "size": body.len()}));
        blobs.insert(d, body);
    }
    if bad_diff {
        diff_ids[0] = sha256_digest(b"not the layer");
    }
    let host = oci::host_platform();
    let config = serde_json::to_vec(&json!({
        "architecture": host.architecture,
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "true"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/work",
            "User": "1000:1000",
            "StopSignal": "SIGINT",
            "Labels": {"a": "b"},
            "ExposedPorts": {"80/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config json");
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_MANIFEST,
        "config": {"mediaType": oci::OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .expect("manifest json");
    let manifest_digest = sha256_digest(&manifest);
    blobs.insert(config_digest.clone(), config);
    blobs.insert(manifest_digest.clone(), manifest.clone());
    TestImage {
        config_digest,
        manifest_digest,
        manifest,
        blobs,
    }
}

/// How index.json points at the image.
pub enum Top<'a> {
    /// Directly at the manifest, with these annotations.
    Manifest(&'a [(&'a str, &'a str)]),
    /// At a nested index holding the image for the host and a decoy for another platform.
    Nested(&'a [(&'a str, &'a str)], &'a TestImage),
}

/// Writes an OCI image-layout tar; `tamper` replaces the bytes of one blob (its name
/// unchanged). Returns the archive and the digest index.json points at.
pub fn archive(img: &TestImage, top: Top<'_>, tamper: Option<&str>) -> (Vec<u8>, String) {
    let mut blobs = img.blobs.clone();
    let (annots, desc) = match top {
        Top::Manifest(a) => (
            a,
            json!({"mediaType": oci::OCI_MANIFEST, "digest": img.manifest_digest,
                   "size": img.manifest.len()}),
        ),
        Top::Nested(a, decoy) => {
            let host = oci::host_platform();
            let nested = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": oci::OCI_INDEX,
                "manifests": [
                    {"mediaType": oci::OCI_MANIFEST, "digest": decoy.manifest_digest,
                     "size": decoy.manifest.len(),
                     "platform": {"os": "linux", "architecture": "s390x"}},
                    {"mediaType": oci::OCI_MANIFEST, "digest": img.manifest_digest,
                     "size": img.manifest.len(),
                     "platform": {"os": "linux", "architecture": host.architecture}},
                ],
            }))
            .expect("index json");
            let d = sha256_digest(&nested);
            let desc = json!({"mediaType": oci::OCI_INDEX, "digest": d, "size": nested.len()});
            blobs.insert(d, nested);
            blobs.extend(decoy.blobs.clone());
            (a, desc)
        }
    };
    let target = desc["digest"].as_str().unwrap_or_default().to_string();
    let mut desc = desc;
    let annotations: serde_json::Map<String, serde_json::Value> = annots
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    desc["annotations"] = serde_json::Value::Object(annotations);
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [desc]})).expect("index json");
    let mut b = tar::Builder::new(Vec::new());
    let mut put = |path: &str, data: &[u8]| {
        let mut h = header(path, EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for (d, body) in &blobs {
        let hex = d.trim_start_matches("sha256:");
        let body = if tamper == Some(d.as_str()) {
            b"tampered".to_vec()
        } else {
            body.clone()
        };
        put(&format!("blobs/sha256/{hex}"), &body);
    }
    put("index.json", &index);
    (b.into_inner().expect("archive"), target)
}
