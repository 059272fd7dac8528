//! Upgrades a state store written by an older berthd whose records embedded CRI messages
//! (formats 1 and 2, see `records::migrate`) to today's records of Berth's own types. It
//! lives in the CRI adapter because reading those records means reading CRI messages;
//! berthd's startup runs it before the core opens the store.

use base64::Engine as _;
use berth_cri::v1::{ContainerConfig, PodSandboxConfig};
use redb::TableHandle as _;

use super::convert::{container_from_cri, pod_from_cri};
use crate::error::{Error, Result};
use crate::records::migrate::FORMAT;
use crate::store::{Store, CONTAINERS, PODS};

/// Brings the store at `path` to [`FORMAT`] in one transaction (a crash leaves the old
/// format whole); a current, new or newer store is left as it is (the core judges it).
pub fn upgrade(path: &std::path::Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let store = Store::open(path)?;
    upgrade_store(&store)
}

fn upgrade_store(store: &Store) -> Result<()> {
    let from = store.format()?;
    if !(1..FORMAT).contains(&from) {
        return Ok(());
    }
    let n = store.migrate(&[PODS, CONTAINERS], FORMAT, |table, bytes| {
        rewrite(from, table, bytes)
    })?;
    tracing::info!(records = n, from, to = FORMAT, "state store upgraded");
    Ok(())
}

/// One record: its `config` (a CRI message in the old form) becomes the Berth spec.
fn rewrite(from: u64, table: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let bad = |e: String| Error::Store(format!("upgrading a {table} record: {e}"));
    let mut v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let config = v["config"].take();
    let spec = if table == PODS.name() {
        serde_json::to_value(pod_from_cri(
            &legacy::<PodSandboxConfig>(from, config).map_err(bad)?,
        )?)
    } else {
        serde_json::to_value(container_from_cri(
            &legacy::<ContainerConfig>(from, config).map_err(bad)?,
        )?)
    };
    v["config"] = spec.map_err(|e| bad(e.to_string()))?;
    serde_json::to_vec(&v).map_err(|e| bad(e.to_string()))
}

/// A CRI message as format 1 (serde JSON) or 2 (base64 protobuf) stored it.
fn legacy<T>(from: u64, config: serde_json::Value) -> std::result::Result<T, String>
where
    T: prost::Message + Default + serde::de::DeserializeOwned,
{
    if from == 1 {
        return serde_json::from_value(config).map_err(|e| e.to_string());
    }
    let text = config.as_str().ok_or("config is not a string")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| e.to_string())?;
    T::decode(bytes.as_slice()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
