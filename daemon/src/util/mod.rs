//! Small helpers every room of berthd uses and none owns: ids, clock, name checks, the
//! mount table, disk usage and the modes of Berth's own files.

mod fs;
mod ids;
pub mod modes;
mod mounts;

pub use fs::{disk_usage, fsync_dir, remove_dirs, reported_usage, unique_name, RemoveOnDrop};
pub use ids::{new_id, now_ns, validate_name};
pub use mounts::{mount_of, unmount_under, MountEntry};
