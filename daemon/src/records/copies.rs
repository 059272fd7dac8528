//! Record copies: every pod and container record is also kept as a root-only file in the
//! record's own directory under `paths.root` (`pods/<id>/` and `containers/<id>/`), so a
//! lost or damaged store can be rebuilt (`salvage`). A container's copy also carries what
//! keeps its root filesystem alive: its snapshot lease, those snapshots' records and its
//! image's record. Copies are a format of their own, versioned by [`COPY_FORMAT`] and
//! stamped with the store's record format ([`super::migrate::FORMAT`]).
//!
//! A copy is written (temp file, fsync, rename, fsync of the dir) before the store commits
//! the record, and only while the record's directory exists: the directory is made after
//! the record (a RunPodSandbox or CreateContainer cut before it leaves no copy, so the
//! rebuild never brings back half-made work) and removed before the record goes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use redb::TableHandle as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::{Copies, Store, CONTAINERS, IMAGES, LEASES, PODS, SNAPSHOTS};

/// The version of the copy files this berthd writes and reads.
pub const COPY_FORMAT: u64 = 1;
/// The copy's file name in the record's directory.
pub const FILE: &str = "berth-record.json";
/// Copies larger than this are not read (a record is a few kB).
const MAX_COPY: u64 = 4 << 20;

/// What a copy file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordCopy {
    pub copy_format: u64,
    /// The store's record format the record is in.
    pub record_format: u64,
    /// "pods" or "containers": the table the record belongs to.
    pub table: String,
    pub record: Value,
    /// A container's snapshot lease (layer chain ids), the snapshots' records by chain id
    /// and its image's record, as the store held them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Value>,
}

/// Image and snapshot records as read during one composition pass (many containers of
/// a node share an image and its layers).
#[derive(Default)]
struct Shared {
    /// "table/key" → the record (None: there is none).
    read: std::collections::HashMap<String, Option<Value>>,
}

impl Shared {
    fn read(
        &mut self,
        store: &Store,
        table: redb::TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<Value>> {
        let slot = format!("{}/{key}", table.name());
        if let Some(v) = self.read.get(&slot) {
            return Ok(v.clone());
        }
        let v = store.get::<Value>(table, key)?;
        self.read.insert(slot, v.clone());
        Ok(v)
    }
}

/// Where the copies live, and their writer (installed on the store by the core).
pub struct RecordCopies {
    root: PathBuf,
}

/// An id that is safe as a single path component (berthd's ids are 64 hex digits).
fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl RecordCopies {
    pub fn new(root: &Path) -> RecordCopies {
        RecordCopies {
            root: root.to_path_buf(),
        }
    }

    /// The record's directory: `<root>/pods/<id>` or `<root>/containers/<id>`.
    pub fn dir(&self, table: &str, id: &str) -> Option<PathBuf> {
        let sub = match table {
            t if t == PODS.name() => "pods",
            t if t == CONTAINERS.name() => "containers",
            _ => return None,
        };
        plain_id(id).then(|| self.root.join(sub).join(id))
    }

    /// The copy of a record whose value is `bytes`, with what a container also needs.
    pub fn compose(&self, store: &Store, table: &str, bytes: &[u8]) -> Result<RecordCopy> {
        let record: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::Internal(format!("record copy: {e}")))?;
        self.compose_with(store, table, record, &mut Shared::default())
    }

    /// [`Self::compose`] of a decoded record, reading image and snapshot records through
    /// `shared` (a sync reads each once, not once per container that uses it).
    fn compose_with(
        &self,
        store: &Store,
        table: &str,
        record: Value,
        shared: &mut Shared,
    ) -> Result<RecordCopy> {
        let mut copy = RecordCopy {
            copy_format: COPY_FORMAT,
            record_format: super::migrate::FORMAT,
            table: table.to_string(),
            lease: None,
            snapshots: BTreeMap::new(),
            image: None,
            record,
        };
        if table == CONTAINERS.name() {
            let id = copy.record["id"].as_str().unwrap_or_default();
            let lease: Option<Vec<String>> = store.get(LEASES, id)?;
            for chain in lease.iter().flatten() {
                if let Some(s) = shared.read(store, SNAPSHOTS, chain)? {
                    copy.snapshots.insert(chain.clone(), s);
                }
            }
            copy.lease = lease.map(Value::from);
            let image = copy.record["image_id"].as_str().unwrap_or_default();
            if !image.is_empty() {
                copy.image = shared.read(store, IMAGES, image)?;
            }
        }
        Ok(copy)
    }

    /// Writes the copy of a record if its directory exists and the copy there differs.
    /// Returns whether it wrote one.
    pub fn write(&self, store: &Store, table: &str, id: &str, bytes: &[u8]) -> Result<bool> {
        let record: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::Internal(format!("record copy: {e}")))?;
        self.write_with(store, table, id, record, &mut Shared::default())
    }

    fn write_with(
        &self,
        store: &Store,
        table: &str,
        id: &str,
        record: Value,
        shared: &mut Shared,
    ) -> Result<bool> {
        let Some(dir) = self.dir(table, id).filter(|d| d.is_dir()) else {
            return Ok(false);
        };
        let copy = self.compose_with(store, table, record, shared)?;
        let json =
            serde_json::to_vec(&copy).map_err(|e| Error::Internal(format!("record copy: {e}")))?;
        let path = dir.join(FILE);
        if std::fs::read(&path).is_ok_and(|old| old == json) {
            return Ok(false);
        }
        write_durably(&dir, &path, &json)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        Ok(true)
    }

    /// Rewrites every record's copy that is missing or differs (a store written by a
    /// berthd without copies, or a copy a crash left behind its record). Returns how
    /// many were written.
    pub fn sync(&self, store: &Store) -> Result<usize> {
        let mut n = 0;
        let mut shared = Shared::default();
        for table in [PODS, CONTAINERS] {
            for (id, v) in store.entries::<Value>(table)? {
                n += usize::from(self.write_with(store, table.name(), &id, v, &mut shared)?);
            }
        }
        Ok(n)
    }

    /// Every copy under the root: (its path, the copy or why it cannot be read).
    pub fn read_all(&self) -> Vec<(PathBuf, std::result::Result<RecordCopy, String>)> {
        let mut out = Vec::new();
        for sub in ["pods", "containers"] {
            let Ok(rd) = std::fs::read_dir(self.root.join(sub)) else {
                continue;
            };
            let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            dirs.sort();
            for d in dirs {
                let path = d.join(FILE);
                if std::fs::symlink_metadata(&path).is_err() {
                    continue;
                }
                out.push((path.clone(), read_one(&path)));
            }
        }
        out
    }
}

/// Reads one copy, bounded in size, refusing a symlink.
fn read_one(path: &Path) -> std::result::Result<RecordCopy, String> {
    use std::io::Read as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("open: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_COPY + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read: {e}"))?;
    if bytes.len() as u64 > MAX_COPY {
        return Err(format!("larger than {MAX_COPY} bytes"));
    }
    let copy: RecordCopy = serde_json::from_slice(&bytes).map_err(|e| format!("decode: {e}"))?;
    if copy.copy_format != COPY_FORMAT {
        return Err(format!(
            "copy format {} (this berthd reads {COPY_FORMAT})",
            copy.copy_format
        ));
    }
    Ok(copy)
}

/// Temp file (root's alone), fsync, rename over the copy, fsync of the dir: a crash
/// leaves the old copy or the new one. The temp name is fixed: the dir is root's alone
/// and writes of one record are serialized by the store's write transaction.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::util::modes::PRIVATE_FILE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(
        crate::util::modes::PRIVATE_FILE,
    ))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Copies for RecordCopies {
    fn written(&self, store: &Store, table: &str, id: &str, bytes: &[u8]) {
        if let Err(e) = self.write(store, table, id, bytes) {
            // The store stays the truth; the next start writes the copy again.
            tracing::warn!(%table, id = %id, error = %e, "record copy not written");
        }
    }

    fn removed(&self, table: &str, id: &str) {
        if let Some(dir) = self.dir(table, id) {
            let _ = std::fs::remove_file(dir.join(FILE));
        }
    }
}

#[cfg(test)]
mod tests;
