//! Extended attributes on paths without following symlinks (nix has no xattr calls,
//! so this is the one place the image code touches libc directly).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

fn cstr(what: &str, b: &[u8]) -> Result<CString> {
    CString::new(b).map_err(|_| Error::InvalidArgument(format!("{what} contains a NUL byte")))
}

/// lsetxattr(2): sets `name` on `path` itself, never on a symlink's target.
pub fn set(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let p = cstr("path", path.as_os_str().as_bytes())?;
    let n = cstr("xattr name", name.as_bytes())?;
    // SAFETY: p and n are valid NUL-terminated strings and value a valid slice, all
    // alive for the duration of the call; the kernel only reads them.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            format!("set xattr {name} on {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// fgetxattr(2) of `fd` (opened for reading, not O_PATH): the first 64 bytes of the
/// value (plenty for overlay's markers, whose value is "y"), None when it is absent.
pub fn fget(fd: std::os::fd::BorrowedFd<'_>, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    let n = CString::new(name).map_err(|_| std::io::Error::other("xattr name contains a NUL"))?;
    let mut buf = vec![0u8; 64];
    // SAFETY: fd is open for the duration of the call, n is a valid NUL-terminated
    // string and buf is writable for buf.len() bytes; the kernel writes at most that many.
    let rc = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            // Longer than any marker: present, but not a value a marker has.
            Some(libc::ERANGE) => Ok(Some(buf)),
            _ => Err(e),
        };
    }
    buf.truncate(rc as usize);
    Ok(Some(buf))
}

/// lgetxattr(2) of at most 64 KiB (the kernel's limit); None when the attribute is absent.
pub fn get(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let p = cstr("path", path.as_os_str().as_bytes())?;
    let n = cstr("xattr name", name.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: p and n are valid NUL-terminated strings; buf is writable for buf.len()
    // bytes and the kernel writes at most that many.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(None);
        }
        return Err(Error::io(
            format!("get xattr {name} on {}", path.display()),
            e,
        ));
    }
    buf.truncate(rc as usize);
    Ok(Some(buf))
}

/// llistxattr(2): the names of `path`'s own attributes (of a symlink itself, not its
/// target). At most 64 KiB of names, the kernel's limit for one list.
pub fn list(path: &Path) -> Result<Vec<String>> {
    let p = cstr("path", path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: p is a valid NUL-terminated string; buf is writable for buf.len() bytes and
    // the kernel writes at most that many.
    let rc = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(Error::io(
            format!("list xattrs of {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    buf.truncate(rc as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}
