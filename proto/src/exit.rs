//! The exit record: what a shim writes into a task's bundle when the task's init process
//! exits, before the exit is published anywhere, so that a manager which finds the shim
//! dead (berthd after a shim's kill -9) still learns the real status and time. Written by
//! the shim, read by berthd: the format lives here, once.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The record's name in the bundle.
pub const FILE: &str = "berth-exit.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit status (128 + signal for a signal death).
    pub status: u32,
    /// Exit time, ns since the epoch.
    pub exited_at_ns: i64,
    /// Whether the kernel's OOM killer struck in the task's cgroup.
    #[serde(default)]
    pub oom_killed: bool,
}

impl ExitRecord {
    /// Writes the record whole (temp file, then rename). Not fsynced: it must survive the
    /// shim's death, which the page cache does; a reboot ends the task's world anyway.
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let body = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let tmp = bundle.join(".berth-exit.json.tmp");
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, bundle.join(FILE))
    }

    /// The record in `bundle`, if the shim wrote one (a torn or foreign file is none).
    pub fn read(bundle: &Path) -> Option<ExitRecord> {
        let b = std::fs::read(bundle.join(FILE)).ok()?;
        serde_json::from_slice(&b).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_older_ones_without_oom_read() {
        let d = std::env::temp_dir().join(format!("berth-exit-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let r = ExitRecord {
            status: 137,
            exited_at_ns: 42,
            oom_killed: true,
        };
        r.write(&d).unwrap();
        assert_eq!(ExitRecord::read(&d), Some(r));
        std::fs::write(d.join(FILE), br#"{"pid":7,"status":1,"exited_at_ns":5}"#).unwrap();
        assert_eq!(
            ExitRecord::read(&d),
            Some(ExitRecord {
                status: 1,
                exited_at_ns: 5,
                oom_killed: false
            })
        );
        std::fs::write(d.join(FILE), b"{").unwrap();
        assert_eq!(ExitRecord::read(&d), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
