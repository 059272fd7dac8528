//! Offline import of OCI image-layout archives (`oci-layout`, `index.json`,
//! `blobs/sha256/*` in a tar, as `ctr image export` and `skopeo copy oci-archive:` write):
//! every blob verified on the way into the content store, the host platform picked from
//! indexes, layers unpacked into snapshots, records named from index annotations.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::content::{parse_digest, ContentStore, MAX_JSON_BLOB};
use super::oci::{self, Descriptor, ImageJson, Index, Manifest, Platform, RunConfig};
use super::reference::{self, Reference};
use super::unpack::{clean_path, unpack_layer};
use super::{ImageConfig, ImageRecord, ImageStore};
use crate::error::{Error, Result};
use crate::store::IMAGES;

/// Nested indexes deeper than this are refused rather than followed.
const MAX_INDEX_DEPTH: usize = 4;

fn bad(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Imports every image `path` holds for the host platform. Caller holds the image lock.
pub fn import(s: &ImageStore, path: &Path) -> Result<Vec<ImageRecord>> {
    let index_json = ingest_archive(&s.content, path)?;
    let index: Index = oci::parse("index.json of", &path.display().to_string(), &index_json)?;
    let host = oci::host_platform();
    let mut out = Vec::new();
    for desc in &index.manifests {
        if desc
            .platform
            .as_ref()
            .is_some_and(|p| p.os != host.os || p.architecture != host.architecture)
        {
            continue;
        }
        let names = image_names(desc);
        let manifest = resolve_manifest(&s.content, desc, &host, 0)?;
        let rec = build_record(s, &manifest)?;
        out.push(name_record(s, rec, &names, &desc.digest)?);
    }
    if out.is_empty() {
        return Err(bad(format!(
            "{} holds no image for {}/{}",
            path.display(),
            host.os,
            host.architecture
        )));
    }
    Ok(out)
}

/// Streams the archive once: blobs go into the content store (verified against their
/// file names), `index.json` is returned.
fn ingest_archive(content: &ContentStore, path: &Path) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("{} not found", path.display())),
        _ => Error::io(format!("open {}", path.display()), e),
    })?;
    let mut buf = BufReader::new(f);
    let gz = buf
        .fill_buf()
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?
        .starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(buf))
    } else {
        Box::new(buf)
    };
    let ctx = |e| Error::io(format!("read archive {}", path.display()), e);
    let mut ar = tar::Archive::new(stream);
    let mut index = None;
    for entry in ar.entries().map_err(ctx)? {
        let mut entry = entry.map_err(ctx)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let rel = clean_path(&entry.path().map_err(ctx)?)?;
        let Some(rel) = rel.to_str().map(str::to_string) else {
            continue;
        };
        if rel == "index.json" {
            index = Some(read_bounded(&mut entry, &rel)?);
        } else if rel == "oci-layout" {
            check_layout(&read_bounded(&mut entry, &rel)?)?;
        } else if let Some(hex) = rel.strip_prefix("blobs/sha256/") {
            let digest = format!("sha256:{hex}");
            parse_digest(&digest)?;
            content.ingest(&digest, &mut entry)?;
        }
    }
    index.ok_or_else(|| {
        bad(format!(
            "{} is not an OCI image layout archive (no index.json)",
            path.display()
        ))
    })
}

fn read_bounded(r: &mut impl Read, what: &str) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(MAX_JSON_BLOB + 1)
        .read_to_end(&mut v)
        .map_err(|e| Error::io(format!("read {what}"), e))?;
    if v.len() as u64 > MAX_JSON_BLOB {
        return Err(bad(format!("{what} is larger than {MAX_JSON_BLOB} bytes")));
    }
    Ok(v)
}

fn check_layout(body: &[u8]) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Layout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let l: Layout = oci::parse("oci-layout", "file", body)?;
    if !l.version.starts_with("1.") {
        return Err(bad(format!(
            "unsupported image layout version {:?}",
            l.version
        )));
    }
    Ok(())
}

/// The names an index entry carries: containerd's full name, else the OCI ref name.
/// An unparsable name is dropped (the image is still imported, by id).
fn image_names(desc: &Descriptor) -> Vec<Reference> {
    let name = desc
        .annotations
        .get(oci::ANNOT_CONTAINERD_NAME)
        .or_else(|| desc.annotations.get(oci::ANNOT_REF_NAME));
    match name.map(|n| (n, reference::parse(n))) {
        Some((_, Ok(r))) => vec![r],
        Some((n, Err(e))) => {
            tracing::warn!(name = %n, error = %e, "import: ignoring unusable image name");
            Vec::new()
        }
        None => Vec::new(),
    }
}

/// The blob must be in the store (so verified) and have the size its descriptor claims.
pub(super) fn check_blob(content: &ContentStore, d: &Descriptor) -> Result<()> {
    if !content.contains(&d.digest)? {
        return Err(bad(format!(
            "blob {} is missing from the archive",
            d.digest
        )));
    }
    let size = content.size(&d.digest)?;
    if size != d.size {
        return Err(bad(format!(
            "blob {} is {size} bytes, its descriptor says {}",
            d.digest, d.size
        )));
    }
    Ok(())
}

/// Follows indexes down to the host platform's manifest.
fn resolve_manifest(
    content: &ContentStore,
    desc: &Descriptor,
    host: &Platform,
    depth: usize,
) -> Result<Descriptor> {
    check_blob(content, desc)?;
    let body = content.read_small(&desc.digest)?;
    if !oci::is_index(&desc.media_type, &body)? {
        return Ok(desc.clone());
    }
    if depth >= MAX_INDEX_DEPTH {
        return Err(bad(format!("index {} is nested too deeply", desc.digest)));
    }
    let idx: Index = oci::parse("index", &desc.digest, &body)?;
    let pick = oci::pick_platform(&idx.manifests, host).ok_or_else(|| {
        Error::NotFound(format!(
            "index {} has no manifest for {}/{}",
            desc.digest, host.os, host.architecture
        ))
    })?;
    resolve_manifest(content, pick, host, depth + 1)
}

/// Reads manifest and config, unpacks the layers (each verified against its diff id)
/// and returns the unnamed record.
pub(super) fn build_record(s: &ImageStore, mdesc: &Descriptor) -> Result<ImageRecord> {
    let m: Manifest = oci::parse(
        "manifest",
        &mdesc.digest,
        &s.content.read_small(&mdesc.digest)?,
    )?;
    if !matches!(
        m.config.media_type.as_str(),
        oci::OCI_CONFIG | oci::DOCKER_CONFIG
    ) {
        return Err(bad(format!(
            "manifest {}: unsupported config media type {:?}",
            mdesc.digest, m.config.media_type
        )));
    }
    check_blob(&s.content, &m.config)?;
    let cfg: ImageJson = oci::parse(
        "image config",
        &m.config.digest,
        &s.content.read_small(&m.config.digest)?,
    )?;
    let diff_ids = &cfg.rootfs.diff_ids;
    if cfg.rootfs.kind != "layers" || diff_ids.len() != m.layers.len() {
        return Err(bad(format!(
            "image config {}: rootfs lists {} diff ids for {} layers",
            m.config.digest,
            diff_ids.len(),
            m.layers.len()
        )));
    }
    // Everything is checked before the first layer is unpacked.
    let mut kinds = Vec::with_capacity(m.layers.len());
    for (l, d) in m.layers.iter().zip(diff_ids) {
        check_blob(&s.content, l)?;
        parse_digest(d)?;
        kinds.push(oci::layer_kind(&l.media_type)?);
    }
    let chains = oci::chain_ids(diff_ids);
    for (i, layer) in m.layers.iter().enumerate() {
        let parent = i.checked_sub(1).map(|p| chains[p].as_str());
        s.snapshots.prepare(&chains[i], parent, |dir| {
            let blob = s.content.open_blob(&layer.digest)?;
            let got = unpack_layer(blob, kinds[i], dir)?;
            if got != diff_ids[i] {
                return Err(bad(format!(
                    "layer {}: uncompressed digest {got} does not match diff id {}",
                    layer.digest, diff_ids[i]
                )));
            }
            Ok(())
        })?;
    }
    let mut blobs = vec![mdesc.digest.clone(), m.config.digest.clone()];
    blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
    let size = mdesc.size + m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>();
    Ok(ImageRecord {
        id: m.config.digest.clone(),
        repo_tags: Vec::new(),
        repo_digests: Vec::new(),
        size,
        config: image_config(cfg.config.unwrap_or_default()),
        chain_ids: chains,
        manifest_digest: mdesc.digest.clone(),
        blobs,
    })
}

fn image_config(c: RunConfig) -> ImageConfig {
    ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        stop_signal: c.stop_signal.unwrap_or_default(),
        labels: c.labels.unwrap_or_default(),
        exposed_ports: c
            .exposed_ports
            .map(|p| p.into_keys().collect())
            .unwrap_or_default(),
    }
}

/// Merges `rec` with its stored names, adds `names` (tags move away from other images,
/// which keep their id), and commits all changed records in one transaction.
pub(super) fn name_record(
    s: &ImageStore,
    mut rec: ImageRecord,
    names: &[Reference],
    target: &str,
) -> Result<ImageRecord> {
    if let Some(old) = s.store.get::<ImageRecord>(IMAGES, &rec.id)? {
        rec.repo_tags = old.repo_tags;
        rec.repo_digests = old.repo_digests;
    }
    let mut moved = Vec::new();
    for r in names {
        let digest = r.digest.as_deref().unwrap_or(target);
        let rd = format!("{}@{digest}", r.name());
        if !rec.repo_digests.contains(&rd) {
            rec.repo_digests.push(rd);
        }
        if r.tag.is_none() {
            continue;
        }
        let tag = Reference {
            digest: None,
            ..r.clone()
        }
        .to_string();
        if !rec.repo_tags.contains(&tag) {
            rec.repo_tags.push(tag.clone());
        }
        moved.push(tag);
    }
    let mut others = Vec::new();
    for mut o in s.list()? {
        let before = o.repo_tags.len();
        o.repo_tags.retain(|t| !moved.contains(t));
        if o.id != rec.id && o.repo_tags.len() != before {
            others.push(o);
        }
    }
    let mut puts: Vec<(&str, &ImageRecord)> = vec![(rec.id.as_str(), &rec)];
    puts.extend(others.iter().map(|o| (o.id.as_str(), o)));
    s.store.batch(IMAGES, &puts, &[])?;
    Ok(rec)
}
