//! The store's reads: one record, a count, every record of a table (decoded, shared
//! through `decoded`, or with their keys). Each is one read transaction, never waiting
//! for a writer.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;

use super::{err, Store};
use crate::error::Result;

impl Store {
    pub fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
    ) -> Result<Option<T>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.fail(e))?;
        let t = tx.open_table(table).map_err(|e| self.fail(e))?;
        match t.get(id).map_err(|e| self.fail(e))? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    /// How many records `table` holds.
    pub fn count(&self, table: TableDefinition<&str, &[u8]>) -> Result<u64> {
        use redb::ReadableTableMetadata as _;
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.fail(e))?;
        tx.open_table(table)
            .map_err(|e| self.fail(e))?
            .len()
            .map_err(|e| self.fail(e))
    }

    /// Every record ([`Store::entries`] without the keys).
    pub fn list<T: DeserializeOwned>(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<T>> {
        Ok(self.entries(table)?.into_iter().map(|(_, v)| v).collect())
    }

    /// Every record that decodes, shared (decoded once per version: `decoded`), and the
    /// keys of those that do not.
    pub fn list_shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<(Vec<Arc<T>>, Vec<String>)> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.fail(e))?;
        let t = tx.open_table(table).map_err(|e| self.fail(e))?;
        let mut pass = self.decoded.pass(table.name());
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        for item in t.iter().map_err(|e| self.fail(e))? {
            let (k, v) = item.map_err(|e| self.fail(e))?;
            match pass.value(k.value(), v.value()) {
                Ok(r) => out.push(r),
                Err(_) => bad.push(k.value().to_string()),
            }
        }
        Ok((out, bad))
    }

    /// Every record with its key.
    pub fn entries<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, T)>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.fail(e))?;
        let t = tx.open_table(table).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.fail(e))? {
            let (k, v) = item.map_err(|e| self.fail(e))?;
            out.push((
                k.value().to_string(),
                serde_json::from_slice(v.value()).map_err(err)?,
            ));
        }
        Ok(out)
    }
}
