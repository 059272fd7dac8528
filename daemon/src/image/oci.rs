//! The OCI / Docker schema 2 documents an import or pull reads: descriptors, indexes,
//! manifests and image configs, and the media types berthd accepts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const ANNOT_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOT_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// What a layer blob holds, by media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Tar,
    Gzip,
    Zstd,
}

/// Classifies a layer media type; anything else is not a layer we can apply.
pub fn layer_kind(media_type: &str) -> Result<LayerKind> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(LayerKind::Tar),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(LayerKind::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(LayerKind::Zstd),
        other => Err(Error::InvalidArgument(format!(
            "unsupported layer media type {other:?}"
        ))),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI index or a Docker manifest list (the same shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config berthd uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageJson {
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// The image config's `config` object (Docker capitalizes its keys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// Whether a document is an index (else a manifest): by its declared media type, or by
/// shape when it declares none (OCI allows that).
pub fn is_index(media_type: &str, body: &[u8]) -> Result<bool> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Ok(true),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(false),
        "" => {
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| Error::InvalidArgument(format!("manifest is not JSON: {e}")))?;
            Ok(v.get("manifests").is_some())
        }
        other => Err(Error::InvalidArgument(format!(
            "unsupported manifest media type {other:?}"
        ))),
    }
}

pub fn parse<T: serde::de::DeserializeOwned>(what: &str, digest: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::InvalidArgument(format!("{what} {digest}: {e}")))
}

/// The host platform in OCI terms (GOARCH names).
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: None,
    }
}

/// The first manifest of an index for `want` (variant ignored unless both name one).
pub fn pick_platform<'a>(manifests: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    manifests.iter().find(|d| match &d.platform {
        Some(p) => {
            p.os == want.os
                && p.architecture == want.architecture
                && (want.variant.is_none() || p.variant.is_none() || p.variant == want.variant)
        }
        None => false,
    })
}

/// Chain ids bottom → top: chain(0) = diff(0), chain(n) = sha256(chain(n-1) + " " + diff(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => super::content::sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = "sha256:".to_string() + &"a".repeat(64);
        let b = "sha256:".to_string() + &"b".repeat(64);
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(
            c[1],
            super::super::content::sha256_digest(format!("{a} {b}").as_bytes())
        );
    }

    #[test]
    fn layer_kinds() {
        assert_eq!(
            layer_kind("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            LayerKind::Gzip
        );
        assert_eq!(
            layer_kind("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            LayerKind::Zstd
        );
        assert!(matches!(
            layer_kind("text/plain"),
            Err(Error::InvalidArgument(_))
        ));
    }
}
