//! Small helpers every room of berthd uses and none owns: ids, clock, name checks, the
//! mount table, disk usage and the modes of Berth's own files.

mod fs;
mod ids;
pub mod modes;
mod mounts;

pub use fs::{disk_usage, fsync_dir, reported_usage, unique_name, RemoveOnDrop};
pub use ids::{new_id, now_ns, validate_name};
pub use mounts::{mount_of, unmount_under, MountEntry};

/// Runs `f`, which may block (fsyncs, a wait for the store's one writer, mkdirs). The one
/// place that decides where such borrowed blocking work runs; for now in place, on the
/// calling worker. `tokio::task::block_in_place` was tried (2026-12-06) and undone: each
/// call hands the worker's core to a fresh thread, every such thread takes a malloc arena
/// of its own, and berthd's RSS kept growing by ~4.5 MiB per round of
/// `berthd_streaming_limits`' slow-connection flood (bound 4 MiB). Moving store writes to
/// a thread of their own is issue 14's work.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    f()
}
