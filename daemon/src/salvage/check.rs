//! Is the store readable? redb reports most damage as an error, but some garbage makes it
//! panic (an abort: berthd builds with `panic = "abort"`), so berthd never reads an
//! unchecked store itself: a child process (`berthd store check PATH`) opens it, has redb
//! check its integrity, reads every table and decodes every pod and container record.
//! The child's exit says what it found; it is bounded in time and its output in size.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle as _};

use crate::store::{
    CONTAINERS, DELIVERED, IMAGES, LEASES, META, NAMES, PODS, SNAPSHOTS, TOMBSTONES,
};

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Readable through and through.
    Healthy,
    /// No file: a new node, or a deleted store.
    Missing,
    /// A zero-length file (truncated to nothing): holds nothing, opens as a new store.
    Empty,
    /// Unreadable: why.
    Damaged(String),
    /// Another process holds it open (another berthd).
    InUse,
    /// The check could not run (berthd's own binary could not be started): the store is
    /// opened as before, unchecked.
    Unchecked(String),
}

/// Exit codes of `berthd store check`.
pub const EXIT_DAMAGED: i32 = 1;
pub const EXIT_IN_USE: i32 = 2;

/// How long the child may take (a store is a few MB; redb checks it in well under 1 s).
const CHECK_LIMIT: Duration = Duration::from_secs(60);
/// How much of the child's stderr is kept for the log.
const MAX_REASON: u64 = 2048;

/// Checks the store at `path` in a child process running `exe store check PATH`.
pub fn examine(path: &Path, exe: &Path) -> Found {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Missing,
        Err(e) => return Found::Damaged(format!("stat: {e}")),
        Ok(m) if !m.is_file() => return Found::Damaged("not a regular file".into()),
        Ok(m) if m.len() == 0 => return Found::Empty,
        Ok(_) => {}
    }
    let child = Command::new(exe)
        .args(["store", "check"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0")
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Found::Unchecked(format!("could not run {}: {e}", exe.display())),
    };
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(MAX_REASON).read_to_end(&mut out);
        }
        String::from_utf8_lossy(&out).trim().to_string()
    });
    // Waited for on a thread of its own, so the answer is taken the moment the check ends
    // (a poll with sleeps added up to 5 ms to every start). Why the kill by pid is safe:
    // the waiter only waits for the exit without reaping it (WNOWAIT), so the pid stays
    // this check's until `child.wait()` below, after the kill.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let _ = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        let _ = tx.send(());
    });
    let killed = rx.recv_timeout(CHECK_LIMIT).is_err();
    if killed {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = rx.recv();
    }
    let _ = waiter.join();
    let status = child.wait().ok().filter(|_| !killed);
    let said = reader.join().unwrap_or_default();
    // `berthd store check` names the file; the caller's log does already.
    let said = said
        .strip_prefix(&format!("{}: ", path.display()))
        .map(str::to_string)
        .unwrap_or(said);
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Some(st) if st.success() => Found::Healthy,
        Some(st) if st.code() == Some(EXIT_IN_USE) => Found::InUse,
        Some(st) if st.code() == Some(EXIT_DAMAGED) => Found::Damaged(said),
        Some(st) => Found::Damaged(match st.signal() {
            Some(sig) => format!("the check died of signal {sig} (redb panicked): {said}"),
            None => format!("the check failed ({st}): {said}"),
        }),
        None => Found::Damaged(format!("the check did not finish in {CHECK_LIMIT:?}")),
    }
}

/// `berthd store check PATH`, in the child: Ok, or what is wrong (`in_use` when another
/// process holds the store). May abort inside redb on some garbage.
pub fn verify(path: &Path) -> Result<(), (bool, String)> {
    let damaged = |e: &dyn std::fmt::Display| (false, e.to_string());
    let mut db = match Database::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err((true, "in use by another process".into()))
        }
        Err(e) => return Err(damaged(&e)),
    };
    match db.check_integrity() {
        Ok(true) => {}
        // Repaired: the last transactions may be gone, and the copies are not behind them.
        Ok(false) => return Err((false, "failed redb's integrity check (repaired)".into())),
        Err(e) => return Err(damaged(&e)),
    }
    let tx = db.begin_read().map_err(|e| damaged(&e))?;
    for table in [PODS, CONTAINERS, IMAGES, SNAPSHOTS, LEASES, DELIVERED] {
        let records = matches!(table.name(), "pods" | "containers");
        read_all(&tx, table, |v: &[u8]| {
            if records {
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(v)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .map_err(|e| damaged(&format!("table {}: {e}", table.name())))?;
    }
    read_all(&tx, NAMES, |_: &str| Ok(())).map_err(|e| damaged(&format!("names: {e}")))?;
    read_all(&tx, TOMBSTONES, |_: i64| Ok(())).map_err(|e| damaged(&format!("tombstones: {e}")))?;
    read_all(&tx, META, |_: u64| Ok(())).map_err(|e| damaged(&format!("meta: {e}")))?;
    Ok(())
}

/// Reads every entry of `table` (a missing table is empty), checking each value.
fn read_all<V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    table: TableDefinition<&str, V>,
    check: impl Fn(V::SelfType<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let t = match tx.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    for item in t.iter().map_err(|e| e.to_string())? {
        let (_, v) = item.map_err(|e| e.to_string())?;
        check(v.value())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_records(p: &Path) {
        let s = crate::store::Store::open(p).unwrap();
        for i in 0..40 {
            let id = format!("p{i}");
            s.create(
                PODS,
                &id,
                &format!("n{i}"),
                &serde_json::json!({"id": id, "pad": "x".repeat(300)}),
            )
            .unwrap();
        }
    }

    #[test]
    fn a_store_berthd_wrote_passes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("berth.redb");
        store_with_records(&p);
        verify(&p).unwrap();
    }

    #[test]
    fn truncated_and_foreign_files_are_damaged_not_in_use() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("berth.redb");
        store_with_records(&p);
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let (in_use, why) = verify(&p).unwrap_err();
        assert!(!in_use && why.contains("truncated"), "{why}");
        std::fs::write(&p, b"not a database at all, just some text").unwrap();
        let (in_use, why) = verify(&p).unwrap_err();
        assert!(!in_use, "{why}");
    }

    #[test]
    fn a_store_in_use_is_not_damaged() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("berth.redb");
        let _open = crate::store::Store::open(&p).unwrap();
        assert!(verify(&p).unwrap_err().0, "in use, not damaged");
    }

    #[test]
    fn missing_and_empty_files_are_told_apart_without_a_child() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("berth.redb");
        let no_exe = d.path().join("no-such-berthd");
        assert_eq!(examine(&p, &no_exe), Found::Missing);
        std::fs::write(&p, b"").unwrap();
        assert_eq!(examine(&p, &no_exe), Found::Empty);
        // Never set aside for want of a check.
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(examine(&p, &no_exe), Found::Unchecked(_)));
    }
}
