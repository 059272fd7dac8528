//! The shim socket: its address derived exactly as containerd derives it, binding, and
//! the `address` file written into every bundle.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Default directory for shim sockets (containerd's `/run/containerd/s`).
pub const SOCKET_DIR: &str = "/run/containerd/s";
/// `sun_path` limit containerd enforces (`socketPathLimit`).
const SOCKET_PATH_LIMIT: usize = 106;

/// Go's `filepath.Join(a, b, c)`: join then `Clean` (drop empty parts, `.`, resolve `..`).
pub fn go_join(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    go_clean(&joined)
}

fn go_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => out.push(s.to_str().unwrap_or("")),
            Component::ParentDir => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

/// `unix://<dir>/<sha256(join(address, namespace, group))>`, as containerd computes it.
pub fn socket_address(
    dir: &str,
    grpc_address: &str,
    namespace: &str,
    group: &str,
) -> Result<String> {
    let digest = Sha256::digest(go_join(&[grpc_address, namespace, group]).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("{}/{hex}", dir.trim_end_matches('/'));
    if path.len() > SOCKET_PATH_LIMIT {
        return Err(Error::InvalidArgument(format!(
            "socket path {path:?} exceeds {SOCKET_PATH_LIMIT} bytes"
        )));
    }
    Ok(format!("unix://{path}"))
}

/// The filesystem path inside a `unix://` address.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// Outcome of trying to own the pod's socket.
pub enum Bound {
    /// We own a fresh listening socket.
    New(UnixListener),
    /// A live shim already serves this address: reuse it, spawn nothing.
    Existing,
}

/// Binds the socket (dir 0700, socket 0600). A live socket means the pod's shim already
/// runs; a dead one is removed and bound again.
pub fn bind(address: &str) -> Result<Bound> {
    let path = socket_path(address);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        set_mode(dir, 0o700)?;
    }
    match UnixListener::bind(&path) {
        Ok(l) => {
            set_mode(&path, 0o600)?;
            Ok(Bound::New(l))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if connectable(&path) {
                return Ok(Bound::Existing);
            }
            std::fs::remove_file(&path).map_err(|e| Error::io("remove stale socket", e))?;
            let l = UnixListener::bind(&path)
                .map_err(|e| Error::io(format!("bind {}", path.display()), e))?;
            set_mode(&path, 0o600)?;
            Ok(Bound::New(l))
        }
        Err(e) => Err(Error::io(format!("bind {}", path.display()), e)),
    }
}

/// True if something accepts connections on `path` within 100 ms.
fn connectable(path: &Path) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(UnixStream::connect(&p).is_ok());
    });
    rx.recv_timeout(Duration::from_millis(100)).unwrap_or(false)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", p.display()), e))
}

/// Writes `<bundle>/address` atomically (`.address` with O_EXCL|O_SYNC, then rename).
pub fn write_address(bundle: &Path, address: &str) -> Result<()> {
    write_atomic(bundle, "address", address.as_bytes())
}

/// Writes `dir/name` through `dir/.name` + fsync + rename, so readers never see half a file.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_SYNC)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
    f.write_all(data)
        .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| Error::io(format!("rename to {name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_cleans_like_go() {
        assert_eq!(
            go_join(&["/run/containerd/containerd.sock", "k8s.io", "abc"]),
            "/run/containerd/containerd.sock/k8s.io/abc"
        );
        assert_eq!(go_join(&["/a//b/", "./ns", "x"]), "/a/b/ns/x");
        assert_eq!(go_join(&["/a/b", "..", "c"]), "/a/c");
        assert_eq!(go_join(&["", "ns", "id"]), "ns/id");
    }

    #[test]
    fn address_matches_containerd() {
        // sha256("/run/containerd/containerd.sock/default/test"), checked with sha256sum.
        let a = socket_address(
            SOCKET_DIR,
            "/run/containerd/containerd.sock",
            "default",
            "test",
        )
        .unwrap();
        let expect = {
            let d = Sha256::digest(b"/run/containerd/containerd.sock/default/test");
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        assert_eq!(a, format!("unix:///run/containerd/s/{expect}"));
        assert_eq!(a.len(), "unix:///run/containerd/s/".len() + 64);
    }

    #[test]
    fn too_long_socket_dir_is_refused() {
        let dir = format!("/{}", "d".repeat(60));
        assert!(socket_address(&dir, "/a", "n", "g").is_err());
    }

    #[test]
    fn bind_reuses_live_and_replaces_stale() {
        let d = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}/s/sock", d.path().display());
        let first = match bind(&addr).unwrap() {
            Bound::New(l) => l,
            Bound::Existing => panic!("fresh bind expected"),
        };
        // Root's alone: the dir is private before the socket exists.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.path().join("s")), 0o700);
        assert_eq!(mode(&d.path().join("s/sock")), 0o600);
        assert!(matches!(bind(&addr).unwrap(), Bound::Existing));
        drop(first);
        assert!(matches!(bind(&addr).unwrap(), Bound::New(_)));
    }

    #[test]
    fn address_file_is_atomic_and_raw() {
        let d = tempfile::tempdir().unwrap();
        write_address(d.path(), "unix:///x").unwrap();
        write_address(d.path(), "unix:///y").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("address")).unwrap(),
            "unix:///y"
        );
        assert!(!d.path().join(".address").exists());
    }
}
