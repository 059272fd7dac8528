//! Images: the content store, layer snapshots, image records and their lookup by id,
//! tag or digest, removal with mark & sweep of unreferenced content, and offline import.
//! Every method is blocking file I/O; async callers run them on `spawn_blocking`.

mod content;
mod export;
mod import;
pub mod layer_file;
mod lease;
pub(crate) mod oci;
mod pull;
pub mod reference;
pub mod remap;
pub use pull::{Credentials, Puller};
mod snapshot;
mod streams;
pub(crate) mod unpack;

mod xattr;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{Store, IMAGES};
use content::ContentStore;
use snapshot::Snapshots;

/// The runtime-relevant part of an image config (what CreateContainer and ImageStatus need).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
    pub labels: BTreeMap<String, String>,
    /// `"80/tcp"` style keys of the config's ExposedPorts.
    pub exposed_ports: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The config digest, `sha256:<hex>`: the image id kubelet sees.
    pub id: String,
    /// Normalized `domain/path:tag` names.
    pub repo_tags: Vec<String>,
    /// `domain/path@sha256:<manifest or index digest>`.
    pub repo_digests: Vec<String>,
    /// Manifest, config and compressed layer bytes.
    pub size: u64,
    pub config: ImageConfig,
    /// Layer chain ids, bottom → top.
    pub chain_ids: Vec<String>,
    /// Digest of the platform manifest this image was built from.
    pub manifest_digest: String,
    /// Every content-store blob the image keeps alive (manifest, config, layers).
    pub blobs: Vec<String>,
}

/// How a reference named an image; decides what `remove` takes away.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matched {
    Id,
    Tag(String),
    Digest(String),
}

/// Shortest hex prefix accepted as an image id, as docker and crictl allow.
const MIN_ID_PREFIX: usize = 12;

pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    snapshots: Snapshots,
    store: Arc<Store>,
    /// Serialises everything that writes content, snapshots or records, so that a
    /// sweep never sees an import's not-yet-referenced blobs as garbage.
    lock: Mutex<()>,
    /// Blobs in-flight pulls have fetched but no record references yet (digest → holders).
    leases: Mutex<std::collections::HashMap<String, usize>>,
    /// Pulls in flight, by image reference and by blob digest: a second pull of the same
    /// image or layer waits for the first instead of fetching it again.
    inflight: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageStore {
    /// Opens the image store under `root` (berthd's `paths.root`) and clears what a
    /// crash left half-done: ingest files, temp snapshots and unreferenced content.
    pub fn open(root: &Path, store: Arc<Store>) -> Result<ImageStore> {
        let s = ImageStore {
            root: root.to_path_buf(),
            content: ContentStore::open(root)?,
            snapshots: Snapshots::open(root, store.clone())?,
            store,
            lock: Mutex::new(()),
            leases: Mutex::new(Default::default()),
            inflight: Mutex::new(Default::default()),
        };
        s.gc()?;
        Ok(s)
    }

    fn locked(&self) -> MutexGuard<'_, ()> {
        // A panic while holding the lock leaves files, not memory, inconsistent, and
        // the next sweep repairs those: poisoning carries no extra information here.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Imports every image of an OCI image-layout tar (`ctr image export`,
    /// `skopeo copy oci-archive:`). Unreferenced content is swept whatever the outcome,
    /// so a failed import leaves no blob or snapshot behind.
    pub fn import_oci_archive(&self, path: &Path) -> Result<Vec<ImageRecord>> {
        let _g = self.locked();
        let res = import::import(self, path);
        let swept = self.sweep();
        let recs = res?;
        swept?;
        Ok(recs)
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        self.store.list(IMAGES)
    }

    /// Finds an image by id (`sha256:<hex>` or a unique hex prefix of at least 12),
    /// by tag (normalized) or by repo digest.
    pub fn get(&self, reference: &str) -> Result<ImageRecord> {
        self.resolve(reference).map(|(r, _)| r)
    }

    fn resolve(&self, reference: &str) -> Result<(ImageRecord, Matched)> {
        if let Some(rec) = self.by_id(reference)? {
            return Ok((rec, Matched::Id));
        }
        let r = reference::parse(reference)?;
        let images = self.list()?;
        let found = match r.repo_digest() {
            Some(rd) => images
                .into_iter()
                .find(|i| i.repo_digests.contains(&rd))
                .map(|i| (i, Matched::Digest(rd))),
            None => {
                let tag = r.to_string();
                images
                    .into_iter()
                    .find(|i| i.repo_tags.contains(&tag))
                    .map(|i| (i, Matched::Tag(tag)))
            }
        };
        found.ok_or_else(|| Error::NotFound(format!("image {reference:?} not found")))
    }

    /// An id or id prefix; None when `reference` is not id-shaped or matches nothing
    /// (a 12-hex-digit string can also be a repository name).
    fn by_id(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() < MIN_ID_PREFIX || hex.len() > 64 || !reference::is_lower_hex(hex) {
            return Ok(None);
        }
        let full = format!("sha256:{hex}");
        if hex.len() == 64 {
            return self.store.get(IMAGES, &full);
        }
        let mut hits = self.list()?.into_iter().filter(|i| i.id.starts_with(&full));
        match (hits.next(), hits.next()) {
            (Some(one), None) => Ok(Some(one)),
            (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
                "image id prefix {reference:?} is ambiguous"
            ))),
            _ => Ok(None),
        }
    }

    /// Removes what `reference` names: a tag is untagged (the image goes when its last
    /// tag does); an id or repo digest removes the image with all its names. Content
    /// and snapshots no remaining image uses are then freed.
    pub fn remove(&self, reference: &str) -> Result<()> {
        let _g = self.locked();
        let (mut rec, how) = self.resolve(reference)?;
        match how {
            Matched::Tag(tag) => {
                rec.repo_tags.retain(|t| t != &tag);
                // The repo digest goes with the repository's last tag.
                let repo = reference::parse(&tag)?.name();
                let repo_left = rec.repo_tags.iter().any(|t| {
                    reference::parse(t)
                        .map(|r| r.name() == repo)
                        .unwrap_or(false)
                });
                if !repo_left {
                    rec.repo_digests
                        .retain(|d| !d.starts_with(&format!("{repo}@")));
                }
                if rec.repo_tags.is_empty() {
                    self.store
                        .batch::<ImageRecord>(IMAGES, &[], &[rec.id.as_str()])?;
                } else {
                    self.store.put(IMAGES, &rec.id, &rec)?;
                }
            }
            Matched::Id | Matched::Digest(_) => {
                self.store
                    .batch::<ImageRecord>(IMAGES, &[], &[rec.id.as_str()])?;
            }
        }
        self.sweep()
    }

    /// Overlay `lowerdir` entries for an image: topmost layer first.
    pub fn lower_dirs(&self, rec: &ImageRecord) -> Result<Vec<PathBuf>> {
        rec.chain_ids
            .iter()
            .rev()
            .map(|c| match self.snapshots.get(c)? {
                Some(s) => Ok(self.snapshots.fs_dir(&s)),
                None => Err(Error::NotFound(format!(
                    "snapshot {c} of image {} not found",
                    rec.id
                ))),
            })
            .collect()
    }

    /// Bytes and inodes used by content and snapshots, for ImageFsInfo.
    pub fn fs_usage(&self) -> Result<(u64, u64)> {
        let (cb, ci) = crate::util::disk_usage(&self.root.join("content"))?;
        let (sb, si) = self.snapshots.usage()?;
        Ok((cb + sb, ci + si))
    }

    /// Mark & sweep under the image lock.
    pub fn gc(&self) -> Result<()> {
        let _g = self.locked();
        self.sweep()
    }

    /// Deletes every blob and snapshot no image record references (blobs an in-flight
    /// pull holds a lease on are kept), then snapshot leftovers of interrupted writes.
    /// Ingest files are only cleared at open: a pull may be writing one now. Caller
    /// holds the lock.
    fn sweep(&self) -> Result<()> {
        let images = self.list()?;
        let blobs: HashSet<&str> = images
            .iter()
            .flat_map(|i| i.blobs.iter().map(String::as_str))
            .collect();
        let leased = self.leased_chains()?;
        let chains: HashSet<&str> = images
            .iter()
            .flat_map(|i| i.chain_ids.iter().map(String::as_str))
            .chain(leased.iter().map(String::as_str))
            .collect();
        for d in self.content.list()? {
            if blobs.contains(d.as_str()) {
                continue;
            }
            // Looked up and deleted under the pull leases' lock, one blob at a time: a
            // pull leases a blob before it looks whether the blob is there (`pull::Lease`),
            // so it either holds the blob before this looks, or finds it gone and fetches
            // it. (A copy of the leases taken once could miss a lease taken between the
            // copy and the delete, and a pull that found the blob present would lose it.)
            #[cfg(test)]
            tests::SWEEP_RACE.with(|h| {
                if let Some(f) = h.borrow_mut().as_mut() {
                    f(&d, &self.leases)
                }
            });
            let leased = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            if !leased.contains_key(&d) {
                self.content.delete(&d)?;
            }
        }
        for (chain, _) in self.snapshots.list()? {
            if !chains.contains(chain.as_str()) {
                self.snapshots.remove(&chain)?;
            }
        }
        self.snapshots.sweep_orphans()
    }
}
