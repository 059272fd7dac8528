//! Small filesystem helpers: unique temp names, cleanup guards, directory fsync and
//! disk usage.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other writer uses: pid, time and a process-wide counter.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Removes a temp file or directory when dropped unless disarmed: every early return
/// of an ingest or unpack cleans up after itself.
pub struct RemoveOnDrop {
    path: Option<PathBuf>,
    dir: bool,
}

impl RemoveOnDrop {
    pub fn file(path: PathBuf) -> Self {
        RemoveOnDrop {
            path: Some(path),
            dir: false,
        }
    }

    pub fn dir(path: PathBuf) -> Self {
        RemoveOnDrop {
            path: Some(path),
            dir: true,
        }
    }

    pub fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = if self.dir {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// Makes a rename in `dir` durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}

/// Bytes (allocated blocks) and inodes used under `root`, each inode counted once
/// however many hard links it has, the root included (as containerd's snapshotters count
/// a writable layer's usage). A missing root uses nothing.
pub fn disk_usage(root: &Path) -> Result<(u64, u64)> {
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Removed while we walk (a concurrent GC): it uses nothing any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("stat {}", p.display()), e)),
        };
        if seen.insert((md.dev(), md.ino())) {
            bytes += md.blocks() * 512;
            inodes += 1;
        }
        if md.is_dir() {
            let rd = match fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
            };
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    Ok((bytes, inodes))
}

/// [`disk_usage`] for a figure that is reported, not acted on (stats, ImageFsInfo): an
/// error is logged and counts as nothing used.
pub fn reported_usage(root: &Path) -> (u64, u64) {
    disk_usage(root).unwrap_or_else(|e| {
        tracing::warn!(path = %root.display(), error = %e, "disk usage");
        (0, 0)
    })
}
