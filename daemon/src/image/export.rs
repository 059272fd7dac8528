//! Export of images as an OCI image-layout archive (`oci-layout`, `index.json`,
//! `blobs/sha256/*` in a tar), the format `berthd image import`, `ctr image import` and
//! `skopeo copy oci-archive:` read. Each image is written with its platform manifest,
//! config and layers; index.json names it by every tag it has.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::oci;
use super::{ImageRecord, ImageStore};
use crate::error::{Error, Result};

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

impl ImageStore {
    /// Writes the images `references` name to `out` (a new file; nothing is left behind
    /// on failure).
    pub fn export_oci_archive(
        &self,
        references: &[String],
        out: &Path,
    ) -> Result<Vec<ImageRecord>> {
        if references.is_empty() {
            return Err(Error::InvalidArgument(
                "name at least one image to export".into(),
            ));
        }
        let _g = self.locked();
        let images = references
            .iter()
            .map(|r| self.get(r))
            .collect::<Result<Vec<_>>>()?;
        let tmp = out.with_extension("partial");
        let res = self.write_archive(&images, &tmp).and_then(|()| {
            std::fs::rename(&tmp, out)
                .map_err(|e| Error::io(format!("rename {}", out.display()), e))
        });
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map(|()| images)
    }

    fn write_archive(&self, images: &[ImageRecord], path: &Path) -> Result<()> {
        let io = |e| Error::io(format!("write {}", path.display()), e);
        let f = std::fs::File::create(path).map_err(io)?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        tar.append_data(
            &mut header(layout.len() as u64, 0o644),
            "oci-layout",
            &layout[..],
        )
        .map_err(io)?;
        let mut manifests = Vec::new();
        let mut written = HashSet::new();
        for img in images {
            for digest in &img.blobs {
                if !written.insert(digest.clone()) {
                    continue;
                }
                let hex = super::content::parse_digest(digest)?;
                let blob = self.content.open_blob(digest)?;
                let size = self.content.size(digest)?;
                tar.append_data(
                    &mut header(size, 0o644),
                    format!("blobs/sha256/{hex}"),
                    blob,
                )
                .map_err(io)?;
            }
            let body = self.content.read_small(&img.manifest_digest)?;
            let media_type = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| oci::OCI_MANIFEST.to_string());
            // One entry per tag (an untagged image gets one without a name).
            let names: Vec<Option<&String>> = if img.repo_tags.is_empty() {
                vec![None]
            } else {
                img.repo_tags.iter().map(Some).collect()
            };
            for name in names {
                let mut d = json!({
                    "mediaType": media_type,
                    "digest": img.manifest_digest,
                    "size": body.len(),
                });
                if let Some(n) = name {
                    let tag = n.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
                    d["annotations"] = json!({
                        oci::ANNOT_CONTAINERD_NAME: n,
                        oci::ANNOT_REF_NAME: tag,
                    });
                }
                manifests.push(d);
            }
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": oci::OCI_INDEX,
            "manifests": manifests,
        }))
        .map_err(|e| Error::Internal(format!("encode index.json: {e}")))?;
        tar.append_data(
            &mut header(index.len() as u64, 0o644),
            "index.json",
            &index[..],
        )
        .map_err(io)?;
        let mut w = tar.into_inner().map_err(io)?;
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)
    }
}
