//! The crash-safe state store (redb): pod and container records and name reservations.
//! Every change is one committed write transaction before it is acknowledged, so a
//! kill -9 leaves either the old or the new state, never half of it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{is_no_space, Error, Result};

mod decoded;
mod reads;

/// id → JSON record.
pub const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
pub const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
/// Reserved name (pod or container, kubelet's unique name) → owning id.
pub const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");
/// Image id (config digest) → JSON image record.
pub const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Layer chain id → JSON snapshot record (its directory, parent chain id, size).
pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// Lease owner (a container id) → JSON list of the layer chain ids it holds.
pub const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// Container or pod id → JSON record of the lifecycle events a GetContainerEvents client
/// has received for it (so a restarted berthd delivers the rest, not all again).
pub const DELIVERED: TableDefinition<&str, &[u8]> = TableDefinition::new("delivered");
/// Id → when its record was removed (ns), for ids in DELIVERED: the time a DELETED event
/// delivered after a restart carries.
pub const TOMBSTONES: TableDefinition<&str, i64> = TableDefinition::new("tombstones");
/// Store-wide facts: "format" → the version of the record format (absent: 1).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub struct Store {
    path: PathBuf,
    /// None only while being reopened.
    db: RwLock<Option<Arc<Database>>>,
    /// An I/O error (a full disk) failed the handle: redb then refuses every later
    /// operation until the database is closed and opened again, which the next call does.
    failed: AtomicBool,
    /// Keeps a copy of each pod and container record outside the store (`records::copies`).
    copies: Option<std::sync::Arc<dyn Copies>>,
    /// Async writers wait here for their turn (`*_async`): see [`Store::update_async`].
    turn: tokio::sync::Mutex<()>,
    /// The records lists decoded last (`decoded`): a relist decodes only what changed.
    decoded: decoded::Decoded,
}

/// A durable copy of every pod and container record outside the store, from which a lost
/// or damaged store is rebuilt (`records::copies`, `salvage`). Told of each new record
/// value before its transaction commits (so a copy is never behind a committed record),
/// and of each removal. A copy that cannot be written is its own business (logged): the
/// store stays the truth.
pub trait Copies: Send + Sync {
    fn written(&self, store: &Store, table: &str, id: &str, bytes: &[u8]);
    fn removed(&self, table: &str, id: &str);
}

/// A raw row for [`Store::restore`]: its table, key and value.
pub type Row = (
    TableDefinition<'static, &'static str, &'static [u8]>,
    String,
    Vec<u8>,
);

/// The tables whose records have copies.
fn copied(table: &str) -> bool {
    table == PODS.name() || table == CONTAINERS.name()
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db = Self::open_db(path)?;
        Ok(Store {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(db))),
            failed: AtomicBool::new(false),
            copies: None,
            turn: tokio::sync::Mutex::new(()),
            decoded: Default::default(),
        })
    }

    fn open_db(path: &Path) -> Result<Database> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::FailedPrecondition(format!(
                "state store {} is in use by another berthd",
                path.display()
            )),
            e => err(e),
        })?;
        // Records hold container specs (env values, i.e. Secrets): root's alone, also a
        // store an older berthd made with the default mode.
        crate::util::modes::private_file(path)?;
        // Create the tables once so that reads never see "table does not exist".
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(PODS).map_err(err)?;
        tx.open_table(CONTAINERS).map_err(err)?;
        tx.open_table(NAMES).map_err(err)?;
        tx.open_table(IMAGES).map_err(err)?;
        tx.open_table(SNAPSHOTS).map_err(err)?;
        tx.open_table(LEASES).map_err(err)?;
        tx.open_table(DELIVERED).map_err(err)?;
        tx.open_table(TOMBSTONES).map_err(err)?;
        tx.open_table(META).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(db)
    }

    /// From now on, every pod and container record is also kept by `copies`.
    pub fn set_copies(&mut self, copies: std::sync::Arc<dyn Copies>) {
        self.copies = Some(copies);
    }

    fn copy_written(&self, table: TableDefinition<&str, &[u8]>, id: &str, bytes: &[u8]) {
        if let Some(c) = self.copies.as_ref().filter(|_| copied(table.name())) {
            c.written(self, table.name(), id, bytes);
        }
    }

    fn copy_removed(&self, table: TableDefinition<&str, &[u8]>, id: &str) {
        if let Some(c) = self.copies.as_ref().filter(|_| copied(table.name())) {
            c.removed(table.name(), id);
        }
    }

    /// Writes raw rows (`table`, key, value) and name reservations into the store in
    /// one transaction: a store rebuilt from copies is all there or not at all.
    pub fn restore(&self, rows: &[Row], names: &[(String, String)]) -> Result<()> {
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.fail(e))?;
        {
            for (table, k, v) in rows {
                tx.open_table(*table)
                    .map_err(|e| self.fail(e))?
                    .insert(k.as_str(), v.as_slice())
                    .map_err(|e| self.fail(e))?;
            }
            let mut t = tx.open_table(NAMES).map_err(|e| self.fail(e))?;
            for (name, id) in names {
                t.insert(name.as_str(), id.as_str())
                    .map_err(|e| self.fail(e))?;
            }
        }
        tx.commit().map_err(|e| self.fail(e))
    }

    /// The open database, reopened first when an I/O error failed the last handle (the
    /// disk was full: once space is freed the store works again without a restart). A
    /// commit that failed left the previous one intact; redb guarantees that. Callers
    /// hold the handle while their transaction lives, so a reopen never closes under one.
    fn db(&self) -> Result<Arc<Database>> {
        if self.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        g.clone()
            .ok_or_else(|| Error::Store("the state store could not be reopened".into()))
    }

    fn reopen(&self) -> Result<()> {
        let mut g = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(db) = g.take() {
            // Only the last handle closes the file (and its lock); a call still using the
            // failed one finishes (with an error) first, and a later call tries again.
            match Arc::try_unwrap(db) {
                Ok(db) => drop(db),
                Err(db) => {
                    *g = Some(db);
                    return Err(Error::Store(
                        "the state store is reopening after an I/O error; try again".into(),
                    ));
                }
            }
        }
        let db = Self::open_db(&self.path)?;
        *g = Some(Arc::new(db));
        self.failed.store(false, Ordering::Release);
        tracing::info!(path = %self.path.display(), "state store reopened after an I/O error");
        Ok(())
    }

    /// A redb error as berthd's: an I/O error marks the handle failed (see `db`), and a
    /// full disk is [`Error::NoSpace`] with the space left next to the store.
    fn fail(&self, e: impl Into<redb::Error>) -> Error {
        match e.into() {
            redb::Error::Io(io) => {
                self.failed.store(true, Ordering::Release);
                if is_no_space(&io) {
                    Error::no_space(&self.path)
                } else {
                    Error::Store(io.to_string())
                }
            }
            redb::Error::PreviousIo => {
                self.failed.store(true, Ordering::Release);
                Error::Store("an earlier I/O error failed the state store".into())
            }
            e => Error::Store(e.to_string()),
        }
    }

    /// Inserts a new record under a name that must be free, both in one transaction.
    /// A taken name is AlreadyExists naming its owner, as kubelet expects.
    pub fn create<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        name: &str,
        rec: &T,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(err)?;
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut names = tx.open_table(NAMES).map_err(|e| self.fail(e))?;
            if let Some(owner) = names.get(name).map_err(|e| self.fail(e))? {
                return Err(Error::AlreadyExists(format!(
                    "name {name:?} is reserved for {:?}",
                    owner.value()
                )));
            }
            names.insert(name, id).map_err(|e| self.fail(e))?;
            let mut t = tx.open_table(table).map_err(|e| self.fail(e))?;
            if t.get(id).map_err(|e| self.fail(e))?.is_some() {
                return Err(Error::AlreadyExists(format!("id {id:?} already exists")));
            }
            t.insert(id, bytes.as_slice()).map_err(|e| self.fail(e))?;
        }
        self.copy_written(table, id, &bytes);
        tx.commit().map_err(|e| self.fail(e))
    }

    /// Replaces an existing record.
    pub fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        rec: &T,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(err)?;
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.fail(e))?;
        tx.open_table(table)
            .map_err(|e| self.fail(e))?
            .insert(id, bytes.as_slice())
            .map_err(|e| self.fail(e))?;
        self.copy_written(table, id, &bytes);
        tx.commit().map_err(|e| self.fail(e))
    }

    /// Read-modify-write of one record in one write transaction. Write transactions are
    /// serialized, so of two racing updaters only one sees the old value. `f` says whether
    /// to write; the written record is returned (None: no record, or `f` declined). A
    /// record `f` left as it was is returned without a commit: a commit costs its fsyncs
    /// (and the record copy's), and idempotent steps (a removal's stop of a stopped pod)
    /// mark records that already say so.
    pub fn update<T: Serialize + DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        f: impl FnOnce(&mut T) -> bool,
    ) -> Result<Option<T>> {
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.fail(e))?;
        let (out, changed) = {
            let mut t = tx.open_table(table).map_err(|e| self.fail(e))?;
            let current: Option<(T, Vec<u8>)> = match t.get(id).map_err(|e| self.fail(e))? {
                Some(v) => Some((
                    serde_json::from_slice(v.value()).map_err(err)?,
                    v.value().to_vec(),
                )),
                None => None,
            };
            match current {
                Some((mut rec, old)) => {
                    if f(&mut rec) {
                        let bytes = serde_json::to_vec(&rec).map_err(err)?;
                        // Compared as JSON values: maps (labels) serialize in any order.
                        let changed = bytes != old
                            && serde_json::from_slice::<serde_json::Value>(&bytes).ok()
                                != serde_json::from_slice::<serde_json::Value>(&old).ok();
                        if changed {
                            t.insert(id, bytes.as_slice()).map_err(|e| self.fail(e))?;
                            self.copy_written(table, id, &bytes);
                        }
                        (Some(rec), changed)
                    } else {
                        (None, false)
                    }
                }
                None => (None, false),
            }
        };
        if changed {
            tx.commit().map_err(|e| self.fail(e))?;
        } else {
            tx.abort().map_err(|e| self.fail(e))?;
        }
        Ok(out)
    }

    /// [`Store::update`] for async callers. Why: redb serializes write transactions by
    /// blocking the thread that waits for one, and a commit takes its fsyncs; on berthd's
    /// few runtime workers, writers queued inside redb would hold every worker and stall
    /// the cheap calls (status reads, relists) behind one commit. Async writers queue here
    /// instead, without a thread: one of them at a time holds a worker for its commit.
    pub async fn update_async<T: Serialize + DeserializeOwned>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        id: &str,
        f: impl FnOnce(&mut T) -> bool,
    ) -> Result<Option<T>> {
        let _turn = self.turn.lock().await;
        self.update(table, id, f)
    }

    /// [`Store::put`] for async callers (see [`Store::update_async`]).
    pub async fn put_async<T: Serialize>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        id: &str,
        rec: &T,
    ) -> Result<()> {
        let _turn = self.turn.lock().await;
        self.put(table, id, rec)
    }

    /// [`Store::create`] for async callers (see [`Store::update_async`]).
    pub async fn create_async<T: Serialize>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        id: &str,
        name: &str,
        rec: &T,
    ) -> Result<()> {
        let _turn = self.turn.lock().await;
        self.create(table, id, name, rec)
    }

    /// Writes and deletes several records of one table in one transaction, so that a
    /// change spanning records (a tag moving between images) is all or nothing.
    pub fn batch<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        puts: &[(&str, &T)],
        deletes: &[&str],
    ) -> Result<()> {
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut t = tx.open_table(table).map_err(|e| self.fail(e))?;
            for (id, rec) in puts {
                let bytes = serde_json::to_vec(rec).map_err(err)?;
                t.insert(*id, bytes.as_slice()).map_err(|e| self.fail(e))?;
                self.copy_written(table, id, &bytes);
            }
            for id in deletes {
                t.remove(*id).map_err(|e| self.fail(e))?;
                self.copy_removed(table, id);
            }
        }
        tx.commit().map_err(|e| self.fail(e))
    }

    /// Removes a record and releases its name, atomically, and returns when (ns). An event
    /// client that knew the id gets a tombstone with that time in the same transaction.
    /// Missing is not an error.
    pub fn remove(&self, table: TableDefinition<&str, &[u8]>, id: &str, name: &str) -> Result<i64> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        // The copy goes first: a crash in between leaves a record without a copy (written
        // again at the next start), never a copy that would bring a removed record back.
        self.copy_removed(table, id);
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.fail(e))?;
        {
            tx.open_table(table)
                .map_err(|e| self.fail(e))?
                .remove(id)
                .map_err(|e| self.fail(e))?;
            if tx
                .open_table(DELIVERED)
                .map_err(|e| self.fail(e))?
                .get(id)
                .map_err(|e| self.fail(e))?
                .is_some()
            {
                tx.open_table(TOMBSTONES)
                    .map_err(|e| self.fail(e))?
                    .insert(id, at)
                    .map_err(|e| self.fail(e))?;
            }
            let mut names = tx.open_table(NAMES).map_err(|e| self.fail(e))?;
            let owned = names
                .get(name)
                .map_err(|e| self.fail(e))?
                .map(|o| o.value() == id)
                .unwrap_or(false);
            if owned {
                names.remove(name).map_err(|e| self.fail(e))?;
            }
        }
        tx.commit().map_err(|e| self.fail(e))?;
        Ok(at)
    }

    /// `remove` for a rollback: the record of an operation that failed, and its name. On a
    /// full disk the removal fails too (a commit needs free pages), and the record, with
    /// its intent and its reserved name, would stay until a restart's recovery rolled it
    /// back: kubelet's retry of the same pod or container would be refused AlreadyExists.
    /// So a failed removal is retried every second in the background until it succeeds,
    /// which it does once space is freed. Needs a tokio runtime.
    pub fn remove_eventually(
        self: &Arc<Self>,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        id: &str,
        name: &str,
    ) {
        let Err(e) = self.remove(table, id, name) else {
            return;
        };
        tracing::warn!(id, error = %e, "removing the record of a failed call; retrying until it can be");
        let (store, id, name) = (self.clone(), id.to_string(), name.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let (s, i, n) = (store.clone(), id.clone(), name.clone());
                let done = tokio::task::spawn_blocking(move || s.remove(table, &i, &n))
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false);
                if done {
                    tracing::info!(id, "the record of a failed call is removed");
                    return;
                }
            }
        });
    }

    /// The version of the record format the store holds (1 before versions were kept).
    pub fn format(&self) -> Result<u64> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.fail(e))?;
        let t = tx.open_table(META).map_err(|e| self.fail(e))?;
        Ok(t.get("format")
            .map_err(|e| self.fail(e))?
            .map_or(1, |v| v.value()))
    }

    /// Rewrites every record of `tables` through `f` (given the table's name) and sets the
    /// format to `to`, all in one transaction: a crash leaves the old format whole.
    /// Returns how many records were rewritten.
    pub fn migrate(
        &self,
        tables: &[TableDefinition<&str, &[u8]>],
        to: u64,
        f: impl Fn(&str, &[u8]) -> Result<Vec<u8>>,
    ) -> Result<usize> {
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.fail(e))?;
        let mut n = 0;
        {
            for table in tables {
                let mut t = tx.open_table(*table).map_err(|e| self.fail(e))?;
                let mut rewritten = Vec::new();
                for item in t.iter().map_err(|e| self.fail(e))? {
                    let (k, v) = item.map_err(|e| self.fail(e))?;
                    rewritten.push((k.value().to_string(), f(table.name(), v.value())?));
                }
                for (k, v) in &rewritten {
                    t.insert(k.as_str(), v.as_slice())
                        .map_err(|e| self.fail(e))?;
                }
                n += rewritten.len();
            }
            tx.open_table(META)
                .map_err(|e| self.fail(e))?
                .insert("format", to)
                .map_err(|e| self.fail(e))?;
        }
        tx.commit().map_err(|e| self.fail(e))?;
        Ok(n)
    }

    /// Tombstone times by id.
    pub fn tombstones(&self) -> Result<std::collections::HashMap<String, i64>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.fail(e))?;
        let t = tx.open_table(TOMBSTONES).map_err(|e| self.fail(e))?;
        let mut out = std::collections::HashMap::new();
        for item in t.iter().map_err(|e| self.fail(e))? {
            let (k, v) = item.map_err(|e| self.fail(e))?;
            out.insert(k.value().to_string(), v.value());
        }
        Ok(out)
    }

    /// Writes and deletes DELIVERED entries and drops the tombstones of `deletes`, in one
    /// transaction.
    pub fn mark_delivered<T: Serialize>(
        &self,
        puts: &[(&str, &T)],
        deletes: &[&str],
    ) -> Result<()> {
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut t = tx.open_table(DELIVERED).map_err(|e| self.fail(e))?;
            for (id, rec) in puts {
                let bytes = serde_json::to_vec(rec).map_err(err)?;
                t.insert(*id, bytes.as_slice()).map_err(|e| self.fail(e))?;
            }
            let mut tomb = tx.open_table(TOMBSTONES).map_err(|e| self.fail(e))?;
            for id in deletes {
                t.remove(*id).map_err(|e| self.fail(e))?;
                tomb.remove(*id).map_err(|e| self.fail(e))?;
            }
        }
        tx.commit().map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests;
