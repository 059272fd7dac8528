//! Small helpers every room of berthd uses and none owns: ids, clock, name checks, the
//! mount table, disk usage and the modes of Berth's own files.

mod fs;
mod ids;
pub mod modes;
mod mounts;

pub use fs::{disk_usage, fsync_dir, reported_usage, unique_name, RemoveOnDrop};
pub use ids::{new_id, now_ns, validate_name};
pub use mounts::{mount_of, unmount_under, MountEntry};

/// Runs `f`, which may block (fsyncs, a wait for a lock, mkdirs), where blocking is
/// allowed: on a worker of the multi-thread runtime through `block_in_place`, which hands
/// the worker's other tasks (status reads, lists, every other pod's calls) to another
/// thread meanwhile; elsewhere (a blocking thread, a current-thread runtime in tests, no
/// runtime) it just runs. For blocking work that borrows, where `spawn_blocking` cannot.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
