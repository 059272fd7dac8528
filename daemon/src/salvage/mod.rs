//! A lost or damaged state store at startup. Before anything opens the store, berthd has
//! it checked in a child process (`check`); a store that cannot be read is moved aside
//! (never over an older aside copy) and a store that is gone, empty or moved aside is
//! rebuilt from the record copies (`rebuild`, `records::copies`). The log says what
//! happened, where the damaged file went, what was rebuilt and what was not. The normal
//! startup recovery follows: the shims of the rebuilt pods are reconnected, their
//! journals replayed, and whatever no rebuilt record owns is removed as an orphan.

pub mod check;
pub mod rebuild;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::records::copies::RecordCopies;
use crate::store::Store;

pub use check::Found;
pub use rebuild::Rebuilt;

/// Checks the store and, when it is lost or damaged, rebuilds it from the record copies.
/// `exe` is berthd's own binary (it runs the check). Returns the rebuild, if one ran.
pub fn prepare(config: &Config, exe: &Path) -> Result<Option<Rebuilt>> {
    let path = config.store_path();
    let found = check::examine(&path, exe);
    let (what, aside) = match &found {
        Found::Healthy => return Ok(None),
        Found::Unchecked(why) => {
            tracing::warn!(store = %path.display(), reason = %why, "the state store is opened unchecked");
            return Ok(None);
        }
        Found::InUse => {
            return Err(Error::FailedPrecondition(format!(
                "state store {} is in use by another berthd",
                path.display()
            )))
        }
        Found::Missing => ("missing".to_string(), None),
        Found::Empty => ("empty (zero length)".to_string(), None),
        Found::Damaged(why) => (format!("unreadable: {why}"), Some(set_aside(&path)?)),
    };
    let copies = RecordCopies::new(&config.paths.root).read_all();
    if copies.is_empty() && aside.is_none() {
        // A new node (or one that never ran a pod): nothing was lost.
        tracing::info!(store = %path.display(), "no state store yet; a new one is made");
        return Ok(None);
    }
    let store = Store::open(&path)?;
    crate::records::migrate::ensure_current(&store)?;
    let r = rebuild::rebuild(&store, &config.paths.root, &config.paths.state, copies)?;
    drop(store);
    let aside_text = aside
        .as_ref()
        .map_or("-".to_string(), |a| a.display().to_string());
    tracing::error!(
        store = %path.display(),
        found = %what,
        set_aside = %aside_text,
        pods = r.pods.len(),
        containers = r.containers.len(),
        images = r.images.len(),
        snapshots = r.snapshots,
        skipped = r.skipped.len(),
        "the state store was lost or damaged: a new store was rebuilt from the record copies"
    );
    for s in &r.skipped {
        tracing::error!(copy = %s, "record copy not rebuilt: what it owned is removed as an orphan");
    }
    tracing::error!(
        "not recovered from a lost store: images no container uses (pull them again), \
         lifecycle events of removed pods and containers no client had received, \
         exec sessions"
    );
    Ok(Some(r))
}

/// Moves the damaged store to `<name>.damaged-<unix seconds>[.n]` beside it, never over
/// an earlier one (a hard link fails on an existing name), root's alone.
pub fn set_aside(path: &Path) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "berth.redb".into());
    for n in 0..1000u32 {
        let aside = match n {
            0 => path.with_file_name(format!("{name}.damaged-{secs}")),
            n => path.with_file_name(format!("{name}.damaged-{secs}.{n}")),
        };
        match std::fs::hard_link(path, &aside) {
            Ok(()) => {
                crate::util::modes::private_file(&aside)?;
                std::fs::remove_file(path)
                    .map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
                if let Some(dir) = path.parent() {
                    crate::util::fsync_dir(dir)?;
                }
                return Ok(aside);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(format!("set {} aside", path.display()), e)),
        }
    }
    Err(Error::FailedPrecondition(format!(
        "too many damaged copies of {} beside it",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_never_overwrites_an_earlier_copy() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("berth.redb");
        std::fs::write(&p, b"first").unwrap();
        let a = set_aside(&p).unwrap();
        std::fs::write(&p, b"second").unwrap();
        let b = set_aside(&p).unwrap();
        assert_ne!(a, b);
        assert!(!p.exists());
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        assert_eq!(std::fs::read(&b).unwrap(), b"second");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&b).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
