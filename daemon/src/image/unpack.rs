//! Applies one layer tar to an empty overlayfs upper directory: whiteouts become
//! overlay whiteouts, ownership, modes, xattrs, links and devices are kept, and any
//! path that would land outside the directory is refused.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{lchown, symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::{Archive, EntryType};

use super::content::HashingReader;
use super::oci::LayerKind;
use super::streams::{TarTail, ZstdFrames};
use super::xattr;
use crate::error::{Error, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";

fn bad(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn io_at(what: &str, p: &Path) -> impl FnOnce(io::Error) -> Error {
    let ctx = format!("{what} {}", p.display());
    move |e| Error::io(ctx, e)
}

fn nix_at(what: &str, p: &Path) -> impl FnOnce(nix::Error) -> Error {
    let ctx = format!("{what} {}", p.display());
    move |e| Error::io(ctx, io::Error::from(e))
}

/// Unpacks `blob` (a layer of `kind`) into `dest`, an existing empty directory, and
/// returns the layer's diff id (sha256 of the uncompressed tar) for the caller to check.
pub fn unpack_layer(blob: impl Read, kind: LayerKind, dest: &Path) -> Result<String> {
    let mut buf = BufReader::new(blob);
    let magic = buf.fill_buf().map_err(io_at("read layer for", dest))?;
    // The compression is detected from the bytes, as registries sometimes label a
    // gzip layer as plain tar and the reverse; the media type only names zstd.
    let zstd = magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let stream: Box<dyn Read> =
        if zstd || (kind == LayerKind::Zstd && !magic.starts_with(&[0x1f, 0x8b])) {
            Box::new(ZstdFrames::new(buf))
        } else if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(MultiGzDecoder::new(buf))
        } else {
            Box::new(buf)
        };
    // The diff id is hashed under the tail filler: it covers exactly the layer's bytes.
    let mut archive = Archive::new(TarTail::new(HashingReader::new(stream)));
    let mut dir_times = Vec::new();
    for entry in archive
        .entries()
        .map_err(io_at("read layer tar for", dest))?
    {
        let mut entry = entry.map_err(io_at("read layer tar for", dest))?;
        if let Some(t) = apply_entry(&mut entry, dest)? {
            dir_times.push(t);
        }
    }
    // The diff id covers the whole stream, including the tar's trailing padding.
    let mut rest = archive.into_inner().into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(io_at("read layer tar for", dest))?;
    let (diff_id, _) = rest.finish();
    // Directory times last: creating their children changed them.
    for (p, mtime) in dir_times.iter().rev() {
        set_mtime(p, *mtime)?;
    }
    Ok(diff_id)
}

/// A relative path inside the layer, or InvalidArgument for absolute paths and `..`.
pub fn clean_path(raw: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!(
                    "layer entry {} is an absolute path",
                    raw.display()
                )))
            }
            Component::ParentDir => {
                return Err(bad(format!(
                    "layer entry {} escapes the layer root",
                    raw.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Makes sure every parent of `rel` under `root` is a real directory (creating missing
/// ones), so that nothing written for this entry can go through a symlink.
fn prepare_parents(root: &Path, rel: &Path) -> Result<()> {
    let mut cur = root.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad(format!(
                    "layer entry {} goes through the symlink {}",
                    rel.display(),
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                )))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(bad(format!(
                    "layer entry {}: a parent is not a directory",
                    rel.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(io_at("mkdir", &cur))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(io_at("chmod", &cur))?;
            }
            Err(e) => return Err(Error::io(format!("stat {}", cur.display()), e)),
        }
    }
    Ok(())
}

/// Removes whatever is at `p` (a later entry replaces an earlier one), keeping an
/// existing directory when the new entry is a directory too.
fn clear(p: &Path, keep_dir: bool) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(io_at("remove", p)),
        Ok(_) => fs::remove_file(p).map_err(io_at("remove", p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("stat {}", p.display()), e)),
    }
}

/// Applies one entry; returns a directory and its mtime when that must be set at the end.
fn apply_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &Path,
) -> Result<Option<(PathBuf, u64)>> {
    let raw = entry
        .path()
        .map_err(|e| bad(format!("layer entry with a bad path: {e}")))?
        .into_owned();
    let rel = clean_path(&raw)?;
    let kind = entry.header().entry_type();
    if matches!(kind, EntryType::XGlobalHeader) {
        return Ok(None);
    }
    if rel.as_os_str().is_empty() {
        // "./": the layer root's own metadata.
        if kind.is_dir() {
            set_meta(entry, root)?;
        }
        return Ok(None);
    }
    prepare_parents(root, &rel)?;
    let target = root.join(&rel);
    let name = rel
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let parent = target.parent().unwrap_or(root).to_path_buf();
    if name == OPAQUE_MARKER {
        xattr::set(&parent, OPAQUE_XATTR, b"y")?;
        return Ok(None);
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(bad(format!("bad whiteout entry {}", raw.display())));
        }
        // Overlayfs hides a lower entry behind a 0:0 character device of the same name.
        let p = parent.join(hidden);
        clear(&p, false)?;
        mknod(&p, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(nix_at("whiteout", &p))?;
        return Ok(None);
    }
    clear(&target, kind.is_dir())?;
    match kind {
        EntryType::Directory => {
            if !target.is_dir() {
                fs::create_dir(&target).map_err(io_at("mkdir", &target))?;
            }
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)
                .map_err(io_at("create", &target))?;
            io::copy(entry, &mut f).map_err(io_at("write", &target))?;
        }
        EntryType::Symlink => {
            let to = link_name(entry, &raw)?;
            symlink(&to, &target).map_err(io_at("symlink", &target))?;
        }
        EntryType::Link => {
            let to = clean_path(&link_name(entry, &raw)?)?;
            prepare_parents(root, &to)?;
            let src = root.join(&to);
            match fs::symlink_metadata(&src) {
                Ok(m) if !m.is_dir() => {}
                _ => {
                    return Err(bad(format!(
                        "hard link {} to {}: no such file in this layer",
                        raw.display(),
                        to.display()
                    )))
                }
            }
            fs::hard_link(&src, &target).map_err(io_at("link", &target))?;
            // The link shares the target's inode, whose metadata is already set.
            return Ok(None);
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => make_node(entry, &target, kind)?,
        other => {
            return Err(bad(format!(
                "layer entry {} has unsupported type {other:?}",
                raw.display()
            )))
        }
    }
    set_meta(entry, &target)?;
    let mtime = entry.header().mtime().unwrap_or(0);
    if kind.is_dir() {
        return Ok(Some((target, mtime)));
    }
    set_mtime(&target, mtime)?;
    Ok(None)
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, raw: &Path) -> Result<PathBuf> {
    match entry.link_name() {
        Ok(Some(l)) => Ok(l.into_owned()),
        _ => Err(bad(format!("link {} has no target", raw.display()))),
    }
}

fn make_node<R: Read>(entry: &tar::Entry<'_, R>, p: &Path, kind: EntryType) -> Result<()> {
    let h = entry.header();
    let major = h.device_major().ok().flatten().unwrap_or(0);
    let minor = h.device_minor().ok().flatten().unwrap_or(0);
    let sflag = match kind {
        EntryType::Char => SFlag::S_IFCHR,
        EntryType::Block => SFlag::S_IFBLK,
        _ => SFlag::S_IFIFO,
    };
    mknod(
        p,
        sflag,
        Mode::from_bits_truncate(0o600),
        makedev(major.into(), minor.into()),
    )
    .map_err(nix_at("mknod", p))
}

/// Owner, then mode (chown clears setuid bits), then xattrs.
fn set_meta<R: Read>(entry: &mut tar::Entry<'_, R>, p: &Path) -> Result<()> {
    let h = entry.header();
    let uid = h
        .uid()
        .map_err(|e| bad(format!("{}: bad uid: {e}", p.display())))?;
    let gid = h
        .gid()
        .map_err(|e| bad(format!("{}: bad gid: {e}", p.display())))?;
    let mode = h
        .mode()
        .map_err(|e| bad(format!("{}: bad mode: {e}", p.display())))?;
    let is_link = h.entry_type().is_symlink();
    let uid = u32::try_from(uid).map_err(|_| bad(format!("{}: uid out of range", p.display())))?;
    let gid = u32::try_from(gid).map_err(|_| bad(format!("{}: gid out of range", p.display())))?;
    lchown(p, Some(uid), Some(gid)).map_err(io_at("chown", p))?;
    if !is_link {
        fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io_at("chmod", p))?;
    }
    let mut xattrs = Vec::new();
    if let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| bad(format!("{}: bad PAX header: {e}", p.display())))?
    {
        for ext in exts {
            let ext = ext.map_err(|e| bad(format!("{}: bad PAX header: {e}", p.display())))?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix(PAX_XATTR) {
                xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    for (name, value) in xattrs {
        // Overlay's own attributes (opaque, redirect, metacopy) come only from whiteout
        // conversion: a layer that carried them could reshape the lower layers' view.
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        xattr::set(p, &name, &value)?;
    }
    Ok(())
}

fn set_mtime(p: &Path, mtime: u64) -> Result<()> {
    let secs = i64::try_from(mtime).unwrap_or(i64::MAX);
    let t = TimeSpec::new(secs, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(nix_at("set times on", p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_table() {
        let ok = [("a/b", "a/b"), ("./a/./b/", "a/b"), ("./", ""), ("a", "a")];
        for (raw, want) in ok {
            assert_eq!(clean_path(Path::new(raw)).unwrap(), PathBuf::from(want));
        }
        for raw in ["/etc/passwd", "../x", "a/../../x", "a/.."] {
            assert!(
                matches!(clean_path(Path::new(raw)), Err(Error::InvalidArgument(_))),
                "{raw}"
            );
        }
    }
}
