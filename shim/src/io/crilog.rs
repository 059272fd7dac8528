//! `cri-log:///path`: the CRI container log format written by the shim itself, so every
//! line carries the time it was produced and nothing depends on the manager being up.
//! Each line is `<RFC 3339 time> <stdout|stderr> <F|P> <content>\n`; lines longer than
//! 16 KiB are split into `P` (partial) chunks ending with an `F` one, as kubelet expects.
//! A Berth extension: containerd never sends this scheme. `cri-log://` without a path
//! keeps no log (the container's CRI config has no log path); either way the output is
//! also handed to attachers (`fanout`).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::fanout::Fanout;
use crate::error::{Error, Result};

/// kubelet's and containerd's default maximum line size.
pub const MAX_LINE: usize = 16 * 1024;

/// The log file, shared by the stdout and stderr copiers of one process.
pub struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    ino: u64,
}

impl LogFile {
    pub fn open(path: &Path) -> Result<Arc<Mutex<LogFile>>> {
        if !path.is_absolute()
            || path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Error::InvalidArgument(format!(
                "log path must be absolute without '..': {}",
                path.display()
            )));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        }
        let (file, ino) = open_append(path)?;
        Ok(Arc::new(Mutex::new(LogFile {
            path: path.to_path_buf(),
            file,
            ino,
        })))
    }

    /// Writes one record. If the file at the path is no longer ours (kubelet rotated it
    /// away, or deleted it), a new one is opened there first: rotation needs no RPC.
    fn write_line(&mut self, line: &[u8]) {
        // symlink_metadata: a symlink put at the path is not ours either.
        let current = std::fs::symlink_metadata(&self.path).map(|m| m.ino()).ok();
        if current != Some(self.ino) {
            if let Ok((f, ino)) = open_append(&self.path) {
                self.file = f;
                self.ino = ino;
            }
        }
        let _ = self.file.write_all(line);
    }
}

/// Opens (or creates) the log for appending. Whoever can write the pod's log dir could
/// put a symlink (to a host file the shim, as root, would append to) or a FIFO (which
/// would block the copier) at the path: the last component is never followed
/// (O_NOFOLLOW), the open never blocks (O_NONBLOCK) and only a regular file is kept.
fn open_append(path: &Path) -> Result<(std::fs::File, u64)> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let md = f.metadata().map_err(|e| Error::io("stat log", e))?;
    if !md.is_file() {
        return Err(Error::InvalidArgument(format!(
            "log path {} is not a regular file",
            path.display()
        )));
    }
    Ok((f, md.ino()))
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` for a system time (UTC).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Formats one record.
pub fn record(at: SystemTime, stream: &str, partial: bool, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 48);
    out.extend_from_slice(rfc3339_nano(at).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// Splits buffered output into records: complete lines become `F` records, a pending
/// line longer than `MAX_LINE` is cut into `P` records. Returns the records; `buf` keeps
/// the unfinished rest. At EOF (`eof`) the rest is flushed as a final `F` record.
pub fn split(buf: &mut Vec<u8>, eof: bool) -> Vec<(bool, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) if i <= MAX_LINE => {
                out.push((false, buf[..i].to_vec()));
                buf.drain(..=i);
            }
            _ if buf.len() > MAX_LINE => {
                out.push((true, buf[..MAX_LINE].to_vec()));
                buf.drain(..MAX_LINE);
            }
            _ => break,
        }
    }
    if eof && !buf.is_empty() {
        out.push((false, std::mem::take(buf)));
    }
    out
}

/// Copies one stream of the process into the log (if any) and to its attachers until EOF.
pub fn copy(
    mut src: pipe::Receiver,
    stream: &'static str,
    log: Option<Arc<Mutex<LogFile>>>,
    attachers: Arc<Fanout>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(8192);
        let mut chunk = [0u8; 8192];
        loop {
            let n = src.read(&mut chunk).await.unwrap_or(0);
            let at = SystemTime::now();
            if n == 0 {
                attachers.end();
            } else {
                attachers.send(&chunk[..n]);
            }
            if let Some(log) = &log {
                buf.extend_from_slice(&chunk[..n]);
                let recs = split(&mut buf, n == 0);
                if !recs.is_empty() {
                    let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                    for (partial, content) in recs {
                        f.write_line(&record(at, stream, partial, &content));
                    }
                }
            }
            if n == 0 {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(
            rfc3339_nano(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339_nano(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn lines_partials_and_eof() {
        let mut b = b"one\ntwo\nthr".to_vec();
        assert_eq!(
            split(&mut b, false),
            vec![(false, b"one".to_vec()), (false, b"two".to_vec())]
        );
        assert_eq!(b, b"thr");
        let mut long = vec![b'x'; MAX_LINE * 2 + 10];
        long.push(b'\n');
        let recs = split(&mut long, false);
        assert_eq!(
            recs.iter().map(|r| (r.0, r.1.len())).collect::<Vec<_>>(),
            vec![(true, MAX_LINE), (true, MAX_LINE), (false, 10)]
        );
        let mut rest = b"tail".to_vec();
        assert_eq!(split(&mut rest, true), vec![(false, b"tail".to_vec())]);
        assert_eq!(
            record(SystemTime::UNIX_EPOCH, "stderr", true, b"x"),
            b"1970-01-01T00:00:00.000000000Z stderr P x\n"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn both_streams_go_to_one_file_and_rotation_reopens() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c/0.log");
        let log = LogFile::open(&path).unwrap();
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let h1 = copy(
            pipe::Receiver::from_owned_fd(r1).unwrap(),
            "stdout",
            Some(log.clone()),
            Default::default(),
        );
        let h2 = copy(
            pipe::Receiver::from_owned_fd(r2).unwrap(),
            "stderr",
            Some(log.clone()),
            Default::default(),
        );
        let mut w1 = std::fs::File::from(w1);
        let mut w2 = std::fs::File::from(w2);
        w1.write_all(b"out 1\n").unwrap();
        w2.write_all(b"err 1\n").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // kubelet rotates: rename, then the next line lands in a new file at the path.
        std::fs::rename(&path, d.path().join("c/0.log.1")).unwrap();
        w1.write_all(b"out 2 no newline").unwrap();
        drop((w1, w2));
        h1.await.unwrap();
        h2.await.unwrap();
        let old = std::fs::read_to_string(d.path().join("c/0.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(
            old.contains(" stdout F out 1\n") && old.contains(" stderr F err 1\n"),
            "{old}"
        );
        assert!(new.ends_with(" stdout F out 2 no newline\n"), "{new}");
        assert_eq!(new.lines().count(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_symlink_or_fifo_at_the_log_path_is_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "victim\n").unwrap();
        // At open: refused, the target untouched.
        let link = d.path().join("c/link.log");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(LogFile::open(&link).is_err());
        let fifo = d.path().join("c/fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            LogFile::open(&fifo).is_err(),
            "a FIFO is refused without blocking"
        );
        // After a rotation: a symlink put in the log's place is not followed.
        let path = d.path().join("c/0.log");
        let log = LogFile::open(&path).unwrap();
        log.lock().unwrap().write_line(b"one\n");
        std::fs::rename(&path, d.path().join("c/0.log.1")).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        log.lock().unwrap().write_line(b"two\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
    }
}
