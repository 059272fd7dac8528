//! Layer snapshots: each layer unpacked once into `snapshots/<n>/fs`, indexed by chain id
//! in the state store. A snapshot is unpacked in a temp dir and renamed into place
//! before its record is committed, so a chain id never names a half-unpacked layer.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{Store, SNAPSHOTS};
use crate::util::{disk_usage, fsync_dir, unique_name, RemoveOnDrop};

const INGEST_PREFIX: &str = "ingest";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Directory name under `<root>/snapshots` (relative, so the root can move).
    pub dir: String,
    /// Chain id of the layer below, None for the bottom layer.
    pub parent: Option<String>,
    /// Bytes the unpacked layer occupies.
    pub size: u64,
}

pub struct Snapshots {
    dir: PathBuf,
    store: Arc<Store>,
}

impl Snapshots {
    pub fn open(root: &Path, store: Arc<Store>) -> Result<Snapshots> {
        let dir = root.join("snapshots");
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        Ok(Snapshots { dir, store })
    }

    /// The overlay lower directory of a snapshot.
    pub fn fs_dir(&self, rec: &SnapshotRecord) -> PathBuf {
        self.dir.join(&rec.dir).join("fs")
    }

    pub fn get(&self, chain_id: &str) -> Result<Option<SnapshotRecord>> {
        self.store.get(SNAPSHOTS, chain_id)
    }

    pub fn list(&self) -> Result<Vec<(String, SnapshotRecord)>> {
        self.store.entries(SNAPSHOTS)
    }

    /// Returns the snapshot for `chain_id`, running `fill` on an empty directory to
    /// create it when there is none yet. Must be called with the image lock held.
    pub fn prepare(
        &self,
        chain_id: &str,
        parent: Option<&str>,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<SnapshotRecord> {
        if let Some(rec) = self.get(chain_id)? {
            if self.fs_dir(&rec).is_dir() {
                return Ok(rec);
            }
        }
        let tmp = self.dir.join(unique_name(INGEST_PREFIX));
        let guard = RemoveOnDrop::dir(tmp.clone());
        let fs_dir = tmp.join("fs");
        fs::create_dir_all(&fs_dir)
            .map_err(|e| Error::io(format!("mkdir {}", fs_dir.display()), e))?;
        fill(&fs_dir)?;
        // Durable before the record points at it: a power cut must not leave a
        // committed chain id over files that never reached the disk.
        let d = fs::File::open(&fs_dir)
            .map_err(|e| Error::io(format!("open {}", fs_dir.display()), e))?;
        nix::unistd::syncfs(&d)
            .map_err(|e| Error::io(format!("syncfs {}", fs_dir.display()), e.into()))?;
        let (size, _) = disk_usage(&fs_dir)?;
        let name = self.next_name()?;
        let final_dir = self.dir.join(&name);
        fs::rename(&tmp, &final_dir)
            .map_err(|e| Error::io(format!("commit snapshot {}", final_dir.display()), e))?;
        guard.disarm();
        fsync_dir(&self.dir)?;
        let rec = SnapshotRecord {
            dir: name,
            parent: parent.map(str::to_string),
            size,
        };
        if let Err(e) = self.store.put(SNAPSHOTS, chain_id, &rec) {
            let _ = fs::remove_dir_all(&final_dir);
            return Err(e);
        }
        Ok(rec)
    }

    /// The next free number: above every directory and record that exists.
    fn next_name(&self) -> Result<String> {
        let mut max = 0u64;
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("read {}", self.dir.display()), e))?;
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
                max = max.max(n);
            }
        }
        for (_, r) in self.list()? {
            if let Ok(n) = r.dir.parse::<u64>() {
                max = max.max(n);
            }
        }
        Ok((max + 1).to_string())
    }

    /// Forgets a snapshot, then deletes its files (a crash in between leaves an orphan
    /// directory that [`Snapshots::sweep_orphans`] removes, never a dangling record).
    pub fn remove(&self, chain_id: &str) -> Result<()> {
        let Some(rec) = self.get(chain_id)? else {
            return Ok(());
        };
        self.store
            .batch::<SnapshotRecord>(SNAPSHOTS, &[], &[chain_id])?;
        let d = self.dir.join(&rec.dir);
        match fs::remove_dir_all(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove snapshot {}", d.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Removes directories no record names: interrupted unpacks and crashed removals.
    /// Must be called with the image lock held (an unpack in progress looks orphaned).
    pub fn sweep_orphans(&self) -> Result<()> {
        let known: std::collections::HashSet<String> =
            self.list()?.into_iter().map(|(_, r)| r.dir).collect();
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("read {}", self.dir.display()), e))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                let p = e.path();
                fs::remove_dir_all(&p)
                    .map_err(|e| Error::io(format!("remove {}", p.display()), e))?;
            }
        }
        Ok(())
    }

    pub fn usage(&self) -> Result<(u64, u64)> {
        disk_usage(&self.dir)
    }
}
