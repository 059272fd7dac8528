//! Record format versions. The formats before 3 embedded CRI messages in the records;
//! reading those is the CRI adapter's job (`cri::store_upgrade`, run by berthd's startup
//! before the core opens the store), so this module only checks that the store is
//! current and stamps a new one.
//!
//! - 1: the CRI configs inside pod and container records were the `k8s-cri` crate's serde
//!   JSON.
//! - 2: they were the CRI messages' protobuf wire form (base64).
//! - 3: records hold Berth's own `workload::PodSpec` / `ContainerSpec`.

use crate::error::{Error, Result};
use crate::store::{Store, CONTAINERS, PODS};

/// The record format this berthd writes.
pub const FORMAT: u64 = 3;

/// Accepts a store at [`FORMAT`]; stamps an empty store (new, or only images) with it;
/// refuses a store from a newer berthd, or an older one nobody upgraded, untouched.
pub fn ensure_current(store: &Store) -> Result<()> {
    match store.format()? {
        FORMAT => Ok(()),
        older if older < FORMAT && store.count(PODS)? + store.count(CONTAINERS)? == 0 => {
            store.migrate(&[], FORMAT, |_, b| Ok(b.to_vec()))?;
            Ok(())
        }
        older if older < FORMAT => Err(Error::FailedPrecondition(format!(
            "the state store has record format {older}; berthd's startup upgrades it to {FORMAT} \
             before opening it (cri::store_upgrade)"
        ))),
        newer => Err(Error::FailedPrecondition(format!(
            "the state store has record format {newer}; this berthd reads up to {FORMAT}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.redb")).unwrap();
        (d, s)
    }

    #[test]
    fn a_new_store_is_stamped_with_the_current_format() {
        let (_d, s) = store();
        assert_eq!(
            s.format().unwrap(),
            1,
            "a store without a stamp reads as format 1"
        );
        ensure_current(&s).unwrap();
        assert_eq!(s.format().unwrap(), FORMAT);
        ensure_current(&s).unwrap();
    }

    #[test]
    fn an_old_store_with_records_is_refused_untouched() {
        let (_d, s) = store();
        s.put(PODS, "p1", &serde_json::json!({"id": "p1"})).unwrap();
        let e = ensure_current(&s).unwrap_err();
        assert!(e.to_string().contains("record format 1"), "{e}");
        assert_eq!(s.format().unwrap(), 1);
    }

    #[test]
    fn a_store_from_a_newer_berthd_is_refused_untouched() {
        let (_d, s) = store();
        s.migrate(&[], FORMAT + 1, |_, b| Ok(b.to_vec())).unwrap();
        let err = ensure_current(&s).unwrap_err();
        assert!(err.to_string().contains("record format 4"), "{err}");
        assert_eq!(s.format().unwrap(), FORMAT + 1);
    }
}
