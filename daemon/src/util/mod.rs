//! Small helpers every room of berthd uses and none owns: ids, clock, name checks, the
//! mount table and disk usage.

mod fs;
mod ids;
mod mounts;

pub use fs::{disk_usage, fsync_dir, reported_usage, unique_name, RemoveOnDrop};
pub use ids::{new_id, now_ns, validate_name};
pub use mounts::{mount_of, unmount_under, MountEntry};
