//! Decoded records kept beside the store, so that a List call decodes each version of a
//! record once instead of on every call (kubelet relists every second; at 200 pods the
//! JSON decoding of 400 records was most of a relist's time).
//!
//! Kept by content, not invalidated by writers: an entry is the record's stored bytes
//! with their decoded value, and is used only while the store still holds exactly those
//! bytes. A writer therefore never has to tell this cache anything, and a list that
//! raced a commit can at worst keep a value that the next list replaces.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;

struct Entry {
    bytes: Box<[u8]>,
    value: Arc<dyn Any + Send + Sync>,
}

/// Per table, per key: the last decoded version.
#[derive(Default)]
pub(super) struct Decoded {
    tables: Mutex<HashMap<String, HashMap<String, Entry>>>,
}

/// One pass over a table: entries found again are moved to the new map, so keys the
/// table no longer holds are dropped when the pass ends.
pub(super) struct Pass<'a> {
    decoded: &'a Decoded,
    table: String,
    old: HashMap<String, Entry>,
    new: HashMap<String, Entry>,
}

impl Decoded {
    pub(super) fn pass(&self, table: &str) -> Pass<'_> {
        let old = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(table)
            .unwrap_or_default();
        Pass {
            decoded: self,
            table: table.to_string(),
            new: HashMap::with_capacity(old.len()),
            old,
        }
    }
}

impl Pass<'_> {
    /// The record `key` holding `bytes`: the kept value when the bytes are the ones it
    /// was decoded from, else decoded now (and kept).
    pub(super) fn value<T: DeserializeOwned + Send + Sync + 'static>(
        &mut self,
        key: &str,
        bytes: &[u8],
    ) -> serde_json::Result<Arc<T>> {
        if let Some(e) = self.old.remove(key) {
            if *e.bytes == *bytes {
                if let Ok(v) = Arc::clone(&e.value).downcast::<T>() {
                    self.new.insert(key.to_string(), e);
                    return Ok(v);
                }
            }
        }
        let v: Arc<T> = Arc::new(serde_json::from_slice(bytes)?);
        self.new.insert(
            key.to_string(),
            Entry {
                bytes: bytes.into(),
                value: v.clone(),
            },
        );
        Ok(v)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        // Two passes over one table at once: the later one to end wins; both hold only
        // entries that matched the store when they read it.
        let new = std::mem::take(&mut self.new);
        self.decoded
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(std::mem::take(&mut self.table), new);
    }
}
