//! The content store: blobs addressed by sha256 digest under `content/blobs/sha256/`,
//! shared by every image. A blob becomes visible only once complete and verified.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::reference::check_digest;
use crate::error::{Error, Result};
use crate::util::{fsync_dir, unique_name, RemoveOnDrop};

/// Manifests, indexes and configs are read whole; a bound keeps a hostile one from
/// exhausting memory.
pub const MAX_JSON_BLOB: u64 = 8 << 20;

pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

/// Hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// `sha256:<hex>` of what was read, and how many bytes.
    pub fn finish(self) -> (String, u64) {
        (
            format!("sha256:{}", hex(&self.hasher.finalize())),
            self.count,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Validates `digest` as an argument (InvalidArgument when malformed).
pub fn parse_digest(digest: &str) -> Result<&str> {
    check_digest(digest)
        .map_err(|why| Error::InvalidArgument(format!("digest {digest:?}: {why}")))?;
    Ok(&digest["sha256:".len()..])
}

fn ioe(ctx: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let ctx = ctx.into();
    move |e| Error::io(ctx, e)
}

impl ContentStore {
    /// Opens the store under `root/content`, dropping ingest files a crash left behind.
    pub fn open(root: &Path) -> Result<ContentStore> {
        let blobs = root.join("content/blobs/sha256");
        let ingest = root.join("content/ingest");
        for d in [&blobs, &ingest] {
            fs::create_dir_all(d).map_err(ioe(format!("mkdir {}", d.display())))?;
        }
        let s = ContentStore { blobs, ingest };
        s.clean_ingest()?;
        Ok(s)
    }

    /// Only called at open: nothing is ingesting then.
    pub fn clean_ingest(&self) -> Result<()> {
        let rd = fs::read_dir(&self.ingest).map_err(ioe("read content/ingest"))?;
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
        Ok(())
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs.join(parse_digest(digest)?))
    }

    pub fn contains(&self, digest: &str) -> Result<bool> {
        Ok(self.path(digest)?.is_file())
    }

    /// Streams `src` into the store as `digest`. The bytes go to an ingest file that is
    /// fsynced and renamed into place only after the digest matched, so a crash or a
    /// mismatch never leaves a partial blob under a digest. Returns false (and consumes
    /// nothing) when the blob is already present.
    pub fn ingest(&self, digest: &str, src: impl Read) -> Result<bool> {
        let dst = self.path(digest)?;
        if dst.is_file() {
            return Ok(false);
        }
        let tmp = self.ingest.join(unique_name("blob"));
        let guard = RemoveOnDrop::file(tmp.clone());
        let full = |e| Error::io_at(format!("write blob {digest}"), &self.ingest, e);
        let mut f = File::create(&tmp).map_err(full)?;
        let mut r = HashingReader::new(src);
        io::copy(&mut r, &mut f).map_err(full)?;
        let (got, _) = r.finish();
        if got != digest {
            return Err(Error::InvalidArgument(format!(
                "digest mismatch for blob {digest}: content hashes to {got}"
            )));
        }
        f.flush().map_err(full)?;
        f.sync_all().map_err(full)?;
        drop(f);
        fs::rename(&tmp, &dst).map_err(ioe(format!("commit blob {digest}")))?;
        guard.disarm();
        fsync_dir(&self.blobs)?;
        Ok(true)
    }

    /// A fresh ingest file for a blob downloaded elsewhere (pulls write it asynchronously);
    /// the guard removes it unless [`ContentStore::commit`] publishes it.
    pub fn new_ingest(&self) -> (PathBuf, RemoveOnDrop) {
        let tmp = self.ingest.join(unique_name("pull"));
        (tmp.clone(), RemoveOnDrop::file(tmp))
    }

    /// Publishes a complete, fsynced ingest file as `digest`, once the bytes written to
    /// it hashed to `computed`: a mismatch names both digests and publishes nothing.
    pub fn commit(
        &self,
        tmp: &Path,
        guard: RemoveOnDrop,
        digest: &str,
        computed: &str,
    ) -> Result<()> {
        let dst = self.path(digest)?;
        if computed != digest {
            return Err(Error::InvalidArgument(format!(
                "digest mismatch for blob {digest}: content hashes to {computed}"
            )));
        }
        fs::rename(tmp, &dst).map_err(ioe(format!("commit blob {digest}")))?;
        guard.disarm();
        fsync_dir(&self.blobs)
    }

    pub fn open_blob(&self, digest: &str) -> Result<File> {
        let p = self.path(digest)?;
        File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("blob {digest} not found")),
            _ => Error::io(format!("open blob {digest}"), e),
        })
    }

    pub fn size(&self, digest: &str) -> Result<u64> {
        let p = self.path(digest)?;
        Ok(fs::metadata(&p)
            .map_err(ioe(format!("stat blob {digest}")))?
            .len())
    }

    /// Reads a small (JSON) blob whole.
    pub fn read_small(&self, digest: &str) -> Result<Vec<u8>> {
        if self.size(digest)? > MAX_JSON_BLOB {
            return Err(Error::InvalidArgument(format!(
                "blob {digest} is larger than {MAX_JSON_BLOB} bytes"
            )));
        }
        let mut v = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut v)
            .map_err(ioe(format!("read blob {digest}")))?;
        Ok(v)
    }

    /// Every stored digest.
    pub fn list(&self) -> Result<Vec<String>> {
        let rd = fs::read_dir(&self.blobs).map_err(ioe("read content/blobs"))?;
        Ok(rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|hex| format!("sha256:{hex}"))
            .filter(|d| check_digest(d).is_ok())
            .collect())
    }

    pub fn delete(&self, digest: &str) -> Result<()> {
        match fs::remove_file(self.path(digest)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove blob {digest}"), e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_verifies_and_dedups() {
        let d = tempfile::tempdir().unwrap();
        let s = ContentStore::open(d.path()).unwrap();
        let dg = sha256_digest(b"hello");
        assert!(s.ingest(&dg, &b"hello"[..]).unwrap());
        assert!(!s.ingest(&dg, &b"hello"[..]).unwrap());
        assert_eq!(s.read_small(&dg).unwrap(), b"hello");
        let other = sha256_digest(b"other");
        let e = s.ingest(&other, &b"tampered"[..]).unwrap_err();
        assert!(e.to_string().contains(&other), "{e}");
        assert!(!s.contains(&other).unwrap());
        // Nothing half-written is left in ingest either.
        assert_eq!(
            fs::read_dir(d.path().join("content/ingest"))
                .unwrap()
                .count(),
            0
        );
        assert!(matches!(
            s.path("sha256:../../etc"),
            Err(Error::InvalidArgument(_))
        ));
    }
}
