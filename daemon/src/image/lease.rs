//! Snapshot leases: a container (its rootfs and image volumes) holds the layer snapshots
//! it was built from. Removing an image a container uses then only untags it: its
//! content goes at once, its snapshots when the last container holding them is removed.

use std::collections::HashSet;

use super::{ImageRecord, ImageStore};
use crate::error::Result;
use crate::store::LEASES;

impl ImageStore {
    /// Resolves `reference` and adds its snapshots to `owner`'s lease, atomically with
    /// respect to removals and sweeps (both run under the image lock).
    pub fn lease_image(&self, owner: &str, reference: &str) -> Result<ImageRecord> {
        let _g = self.locked();
        let image = self.get(reference)?;
        let mut chains: Vec<String> = self.store.get(LEASES, owner)?.unwrap_or_default();
        for c in &image.chain_ids {
            if !chains.contains(c) {
                chains.push(c.clone());
            }
        }
        self.store.put(LEASES, owner, &chains)?;
        Ok(image)
    }

    /// Drops `owner`'s lease and frees what nothing holds any more.
    pub fn release(&self, owner: &str) -> Result<()> {
        let _g = self.locked();
        self.store.batch::<Vec<String>>(LEASES, &[], &[owner])?;
        self.sweep()
    }

    /// Every lease owner (startup drops the leases of containers that are gone).
    pub fn lease_owners(&self) -> Result<Vec<String>> {
        Ok(self
            .store
            .entries::<Vec<String>>(LEASES)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Chain ids some lease holds: roots of the sweep besides the image records.
    pub(super) fn leased_chains(&self) -> Result<HashSet<String>> {
        Ok(self
            .store
            .entries::<Vec<String>>(LEASES)?
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect())
    }
}
