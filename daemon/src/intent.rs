//! Intent records: every multi-step operation on a pod or container marks the record
//! (and commits it) before its first side effect, and clears the mark with its last
//! commit. A mark found at startup is an operation a crash cut; `pod::intents` completes
//! it (stop, remove, start) or rolls it back (run, create).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// RunPodSandbox: rolled back (the pod is removed with all it had made).
    Run,
    /// CreateContainer: rolled back (the task, bundle, writable layer and lease go).
    Create,
    /// StartContainer: completed from the shim's view of the task.
    Start,
    /// StopContainer / StopPodSandbox: completed.
    Stop,
    /// RemoveContainer / RemovePodSandbox: completed.
    Remove,
}
