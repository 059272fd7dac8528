//! `cri-log:///path`: the CRI container log format written by the shim itself, so every
//! line carries the time it was produced and nothing depends on the manager being up.
//! Each line is `<RFC 3339 time> <stdout|stderr> <F|P> <content>\n`; lines longer than
//! 16 KiB are split into `P` (partial) chunks ending with an `F` one, as kubelet expects.
//! A Berth extension: containerd never sends this scheme. `cri-log://` without a path
//! keeps no log (the container's CRI config has no log path); either way the output is
//! also handed to attachers (`fanout`).
//!
//! A log that cannot be written (its filesystem full) never holds the container up: the
//! line is dropped whole (a partly written one is cut off again), counted, and once a
//! write succeeds a line saying how many lines and bytes were lost goes in first.

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
    /// Lines and bytes dropped since the last successful write, and why the first was.
    dropped: Option<Dropped>,
}

struct Dropped {
    lines: u64,
    bytes: u64,
    why: String,
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
            dropped: None,
        })))
    }

    /// Writes one record (of `content` bytes of output). If the file at the path is no
    /// longer ours (kubelet rotated it away, or deleted it), a new one is opened there
    /// first: rotation needs no RPC.
    fn write_line(&mut self, line: &[u8], content: usize) {
        // symlink_metadata: a symlink put at the path is not ours either.
        let current = std::fs::symlink_metadata(&self.path).map(|m| m.ino()).ok();
        if current != Some(self.ino) {
            if let Ok((f, ino)) = open_append(&self.path) {
                self.file = f;
                self.ino = ino;
            }
        }
        if let Some(d) = &self.dropped {
            let (lines, bytes) = (d.lines, d.bytes);
            let note = format!(
                "berth: {lines} log lines ({bytes} bytes) were dropped: {}",
                d.why
            );
            if self
                .append_whole(&record(SystemTime::now(), "stderr", false, note.as_bytes()))
                .is_ok()
            {
                tracing::warn!(path = %self.path.display(), lines, bytes, "container log writable again; the dropped output is noted in it");
                self.dropped = None;
            }
        }
        let res = match self.dropped {
            // Still failing: the note did not fit, so neither does this line.
            Some(_) => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            None => self.append_whole(line),
        };
        if let Err(e) = res {
            let d = self.dropped.get_or_insert_with(|| {
                tracing::warn!(path = %self.path.display(), error = %e, "container log not writable; dropping its output (counted) until it is");
                Dropped {
                    lines: 0,
                    bytes: 0,
                    why: e.to_string(),
                }
            });
            d.lines += 1;
            d.bytes += content as u64;
        }
    }

    /// Appends `buf` whole or not at all: a write cut short (the disk filled up in the
    /// middle) is truncated away again, so the next line does not start mid-line. Only the
    /// shim appends to the file, so its end is this line's end.
    fn append_whole(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut written = 0;
        while written < buf.len() {
            let e = match self.file.write(&buf[written..]) {
                Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
                Ok(n) => {
                    written += n;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            if written > 0 {
                if let Ok(md) = self.file.metadata() {
                    let _ = self.file.set_len(md.len().saturating_sub(written as u64));
                }
            }
            return Err(e);
        }
        Ok(())
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
                        f.write_line(&record(at, stream, partial, &content), content.len());
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

    #[test]
    fn a_full_log_drops_whole_lines_counts_them_and_notes_them_once_writable() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("0.log");
        let log = LogFile::open(&path).unwrap();
        let mut f = log.lock().unwrap();
        f.write_line(b"before\n", 6);
        // /dev/full answers every write with ENOSPC: the log's filesystem is full.
        let real = std::mem::replace(
            &mut f.file,
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        );
        f.write_line(b"lost 1\n", 6);
        f.write_line(b"lost two\n", 8);
        let d2 = f.dropped.as_ref().unwrap();
        assert_eq!(
            (d2.lines, d2.bytes),
            (2, 14),
            "output bytes, not record bytes"
        );
        // Space is back.
        f.file = real;
        f.write_line(b"after\n", 5);
        assert!(f.dropped.is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "before");
        assert!(
            lines[1].ends_with(" stderr F berth: 2 log lines (14 bytes) were dropped: No space left on device (os error 28)"),
            "{text}"
        );
        assert_eq!(lines[2], "after");
        assert_eq!(lines.len(), 3, "{text}");
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
        log.lock().unwrap().write_line(b"one\n", 3);
        std::fs::rename(&path, d.path().join("c/0.log.1")).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        log.lock().unwrap().write_line(b"two\n", 3);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
    }
}
