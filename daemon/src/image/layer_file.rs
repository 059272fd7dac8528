//! Reads one small file of an image (its /etc/passwd, /etc/group) from the image's unpacked
//! layer dirs as the container's merged root will show it, without ever leaving the image,
//! blocking, or reading more than a cap.
//!
//! The layer dirs are what `unpack` wrote: overlay's representation, a whiteout is a 0:0
//! character device and an opaque dir carries `trusted.overlay.opaque = "y"`. The image is
//! untrusted: any entry may be a symlink (absolute, full of `..`, or to /proc magic links),
//! a FIFO (an open for reading blocks until a writer comes, i.e. forever), a device
//! (/dev/zero never ends) or a huge file.
//!
//! How: the path is walked one component at a time over the merged view, the way overlayfs
//! looks names up: the topmost layer that has the name decides; a whiteout hides the layers
//! below; a directory merges with the directories of the layers below down to an opaque
//! one (or a non-directory, which the directory hides). A symlink found on the way is read
//! and its target walked from the merged root (absolute) or from its dir (relative), `..`
//! stopping at the root, through all layers: a symlink in one layer to content of another
//! resolves as in the container, and nothing resolves outside the image. A target the
//! image does not have is simply absent.
//!
//! Every lookup in a layer is one `openat2` from that layer's root fd with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` of a path of components already known to be
//! real directories in that layer (never `..`): the kernel itself refuses to cross a
//! symlink or leave the layer, so even a layer changed under us cannot redirect the read.
//! Why nix's `openat2` and not `cap-std` or `pathrs`: both resolve inside one root, and the
//! merged view needs a walk of our own across several roots anyway; nix is already a
//! dependency, and the walk only needs the kernel's guarantee for each single lookup.
//! Entries are first opened `O_PATH` (which opens nothing: no FIFO wait, no device driver
//! called) and only a regular file is then opened for reading, `O_NONBLOCK | O_NOFOLLOW`,
//! checked again with fstat and read to at most `MAX_SIZE + 1` bytes.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};

use super::xattr;
use crate::error::ImageFileError;

/// The largest file read; a bigger one is refused (no user database is anywhere near).
pub const MAX_SIZE: u64 = 1 << 20;

/// As many symlinks as the kernel follows in one path resolution.
const MAX_LINKS: u32 = 40;

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The file at `path` (relative to the image root, e.g. `etc/passwd`) in the image whose
/// layer dirs are `layers`, topmost first. `Ok(None)` when the merged view has no such
/// file; an error when it has one that is not a regular file of at most [`MAX_SIZE`]
/// bytes, or when symlinks loop.
pub fn read(layers: &[PathBuf], path: &str) -> Result<Option<Vec<u8>>, ImageFileError> {
    Stack::open(layers, path)?.read()
}

/// What the merged view has at a name: the topmost layer with an entry decides.
enum Merged {
    /// A directory, and the layers (top first) whose directory of that path shows through.
    Dir(Vec<usize>),
    Symlink(OsString),
    /// A regular file of this layer.
    File(usize),
    /// A FIFO, device or socket ("a FIFO", ...).
    Other(&'static str),
}

/// One directory of the walk: its name and the layers that contribute to it.
struct Level {
    name: OsString,
    layers: Vec<usize>,
}

struct Stack<'a> {
    /// Each layer's root dir, opened O_PATH.
    roots: Vec<OwnedFd>,
    /// The path asked for, for errors.
    path: &'a str,
}

/// Never follow a symlink, never leave the layer (not even through a mount).
fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        )
}

/// The names of a path's components, in order (empty ones and `.` kept for the walk to skip).
fn components(p: &[u8]) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    p.split(|b| *b == b'/')
        .map(|c| OsString::from_vec(c.to_vec()))
}

fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn describe(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFDIR => "a directory",
        _ => "of an unknown type",
    }
}

impl<'a> Stack<'a> {
    fn open(layers: &[PathBuf], path: &'a str) -> Result<Self, ImageFileError> {
        let mut roots = Vec::with_capacity(layers.len());
        for l in layers {
            // The layer dirs themselves are berthd's own paths: opened as they are.
            let fd = nix::fcntl::open(
                l,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| ImageFileError::Io {
                path: path.to_string(),
                source: std::io::Error::other(format!("open layer {}: {e}", l.display())),
            })?;
            roots.push(fd);
        }
        Ok(Stack { roots, path })
    }

    fn io(&self, e: Errno) -> ImageFileError {
        ImageFileError::Io {
            path: self.path.to_string(),
            source: e.into(),
        }
    }

    fn read(&self) -> Result<Option<Vec<u8>>, ImageFileError> {
        let mut stack = vec![Level {
            name: OsString::new(),
            layers: (0..self.roots.len()).collect(),
        }];
        // Components still to walk, the next one last.
        let mut todo: Vec<OsString> = components(self.path.as_bytes()).rev().collect();
        let mut links = 0;
        while let Some(name) = todo.pop() {
            match name.as_bytes() {
                b"" | b"." => continue,
                // The parent of the directory walked to (a symlink on the way was already
                // replaced by its target, as the kernel does); the root's parent is the
                // root, as in the container (and as RESOLVE_IN_ROOT does).
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let rel: PathBuf = stack[1..]
                .iter()
                .map(|l| l.name.as_os_str())
                .chain([name.as_os_str()])
                .collect();
            let dir = &stack[stack.len() - 1].layers;
            match self.lookup(dir, &rel)? {
                None => return Ok(None),
                Some(Merged::Dir(layers)) => stack.push(Level { name, layers }),
                Some(Merged::Symlink(target)) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(ImageFileError::TooManyLinks {
                            path: self.path.to_string(),
                        });
                    }
                    // An absolute target starts again at the image's root, not the host's.
                    if target.as_bytes().starts_with(b"/") {
                        stack.truncate(1);
                    }
                    todo.extend(components(target.as_bytes()).rev());
                }
                // A file in the middle of the path (`passwd/x`, `passwd/`) names nothing.
                Some(Merged::File(_) | Merged::Other(_)) if !todo.is_empty() => return Ok(None),
                Some(Merged::File(layer)) => return self.read_file(layer, &rel).map(Some),
                Some(Merged::Other(kind)) => {
                    return Err(ImageFileError::NotRegular {
                        path: self.path.to_string(),
                        kind,
                    })
                }
            }
        }
        Err(ImageFileError::NotRegular {
            path: self.path.to_string(),
            kind: "a directory",
        })
    }

    /// What the merged directory made of `dir` (layers) has at `rel`, as overlayfs decides.
    fn lookup(&self, dir: &[usize], rel: &Path) -> Result<Option<Merged>, ImageFileError> {
        let mut dirs = Vec::new();
        for &i in dir {
            let Some((fd, st)) = self.entry(i, rel)? else {
                continue;
            };
            let kind = kind_of(&st);
            // A whiteout hides this name in every layer below.
            if kind == SFlag::S_IFCHR && st.st_rdev == 0 {
                break;
            }
            if kind == SFlag::S_IFDIR {
                dirs.push(i);
                if self.opaque(i, rel)? {
                    break;
                }
                continue;
            }
            // A directory above hides a non-directory here and everything below it.
            if !dirs.is_empty() {
                break;
            }
            return Ok(Some(match kind {
                SFlag::S_IFLNK => {
                    // The O_PATH fd of the link itself: "" reads that link.
                    Merged::Symlink(nix::fcntl::readlinkat(fd.as_fd(), "").map_err(|e| self.io(e))?)
                }
                SFlag::S_IFREG => Merged::File(i),
                other => Merged::Other(describe(other)),
            }));
        }
        Ok((!dirs.is_empty()).then_some(Merged::Dir(dirs)))
    }

    /// Layer `i`'s own entry at `rel` (every parent a real dir of that layer): an O_PATH fd
    /// of it (of a symlink itself, never its target) and its stat; None when it has none.
    fn entry(&self, i: usize, rel: &Path) -> Result<Option<(OwnedFd, FileStat)>, ImageFileError> {
        match openat2(self.roots[i].as_fd(), rel, how(OFlag::O_PATH)) {
            Ok(fd) => {
                let st = fstat(fd.as_fd()).map_err(|e| self.io(e))?;
                Ok(Some((fd, st)))
            }
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Whether layer `i`'s directory at `rel` is opaque (hides the layers below).
    fn opaque(&self, i: usize, rel: &Path) -> Result<bool, ImageFileError> {
        // fgetxattr needs a real open: a directory opened for reading blocks on nothing.
        let fd = openat2(
            self.roots[i].as_fd(),
            rel,
            how(OFlag::O_RDONLY | OFlag::O_DIRECTORY),
        )
        .map_err(|e| self.io(e))?;
        let v = xattr::fget(fd.as_fd(), OPAQUE_XATTR).map_err(|source| ImageFileError::Io {
            path: self.path.to_string(),
            source,
        })?;
        Ok(v.as_deref() == Some(b"y"))
    }

    /// Reads layer `i`'s regular file at `rel`, to at most MAX_SIZE bytes.
    fn read_file(&self, i: usize, rel: &Path) -> Result<Vec<u8>, ImageFileError> {
        // Found a regular file through O_PATH; if it was swapped since, O_NONBLOCK keeps a
        // FIFO from blocking the open and the fstat below refuses whatever it now is.
        let fd = openat2(
            self.roots[i].as_fd(),
            rel,
            how(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY),
        )
        .map_err(|e| self.io(e))?;
        let st = fstat(fd.as_fd()).map_err(|e| self.io(e))?;
        let kind = kind_of(&st);
        if kind != SFlag::S_IFREG {
            return Err(ImageFileError::NotRegular {
                path: self.path.to_string(),
                kind: describe(kind),
            });
        }
        let too_large = || ImageFileError::TooLarge {
            path: self.path.to_string(),
            limit: MAX_SIZE,
        };
        if u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_SIZE {
            return Err(too_large());
        }
        // The size may lie (a file growing under us): never read more than the cap + 1.
        let mut buf = Vec::with_capacity(st.st_size as usize + 1);
        File::from(fd)
            .take(MAX_SIZE + 1)
            .read_to_end(&mut buf)
            .map_err(|source| ImageFileError::Io {
                path: self.path.to_string(),
                source,
            })?;
        if buf.len() as u64 > MAX_SIZE {
            return Err(too_large());
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests;
