//! The modes of berthd's own dirs and files. The root and state dirs may be traversed
//! (0711: a path below them still needs every dir on the way to be open) but not listed;
//! every dir Berth keeps below them is root's alone (0700), and so are the files that
//! hold secrets (the store, bundle specs: 0600). This keeps container env values (Secret
//! values), unpacked layers (setuid binaries, device nodes) and container upper dirs out
//! of reach of other local users (the CVE-2021-41091 / CVE-2024-25621 class).

use std::fs::Permissions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// The root and state dirs themselves.
pub const TOP_DIR: u32 = 0o711;
/// Every dir below them that Berth makes.
pub const PRIVATE_DIR: u32 = 0o700;
/// Files holding secrets.
pub const PRIVATE_FILE: u32 = 0o600;

fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {mode:o} {}", path.display()), e))
}

/// Makes an existing file root's alone (0600).
pub fn private_file(path: &Path) -> Result<()> {
    chmod(path, PRIVATE_FILE)
}

/// Makes an existing dir traversable but not listable (0711): a dir on the way to a
/// user-namespaced pod's rootfs, which that pod's root (not the host's) walks through.
pub fn traversable_dir(dir: &Path) -> Result<()> {
    chmod(dir, TOP_DIR)
}

/// Creates `dir` (and its parents) and makes it root's alone.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io_at(format!("mkdir {}", dir.display()), dir, e))?;
    chmod(dir, PRIVATE_DIR)
}

/// Writes `bytes` to a file only root can read, created with that mode (never readable
/// in between).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(path)
        .map_err(|e| Error::io_at(format!("create {}", path.display()), path, e))?;
    // An existing file keeps its mode through open: set it.
    f.set_permissions(Permissions::from_mode(PRIVATE_FILE))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io_at(format!("write {}", path.display()), path, e))
}

/// At startup: `top` becomes 0711 and each of `dirs` exists as a private dir, which
/// corrects a tree an older berthd (or `berthd image import`) made with the default modes.
/// Only Berth's own names are touched: anything else in `top` (a misconfigured root such
/// as `/var/lib`) is not. Files keep to their owners (the store sets its own mode).
pub fn secure_top(top: &Path, dirs: &[&str]) -> Result<()> {
    std::fs::create_dir_all(top).map_err(|e| Error::io(format!("mkdir {}", top.display()), e))?;
    chmod(top, TOP_DIR)?;
    for d in dirs {
        private_dir(&top.join(d))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        p.symlink_metadata().unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_open_tree_is_closed_at_startup() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("root");
        std::fs::create_dir_all(top.join("snapshots/1/fs")).unwrap();
        std::fs::create_dir(top.join("not-ours")).unwrap();
        std::fs::set_permissions(top.join("not-ours"), Permissions::from_mode(0o755)).unwrap();
        secure_top(&top, &["snapshots", "pods", "containers"]).unwrap();
        assert_eq!(mode(&top), 0o711);
        assert_eq!(mode(&top.join("snapshots")), 0o700);
        assert_eq!(mode(&top.join("pods")), 0o700);
        assert_eq!(mode(&top.join("containers")), 0o700);
        assert_eq!(
            mode(&top.join("not-ours")),
            0o755,
            "other names are left alone"
        );
    }

    #[test]
    fn private_files_are_never_readable_by_others() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"{}").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        let q = d.path().join("dir/sub");
        private_dir(&q).unwrap();
        assert_eq!(mode(&q), 0o700);
    }
}
