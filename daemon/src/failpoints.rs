//! Failpoints for crash-recovery testing (the `fail` crate, compiled in): named points at
//! the step boundaries of every multi-step operation. Armed only through the
//! `BERTH_FAILPOINTS` environment variable, `name=action` pairs separated by `;`:
//!
//! - `panic`: berthd aborts right there (its panics abort), exactly like a kill -9 at that
//!   step; what it had committed is on disk, what it had not is not.
//! - `return`: the step fails with an Internal error naming the failpoint (the operation's
//!   own rollback runs).
//! - `sleep(ms)`, `delay(ms)`, `N%action`, `N*action`: as the `fail` crate defines them.
//!
//! Unarmed, a failpoint is one map lookup. The names, and what a crash there leaves, are
//! listed in [`POINTS`] and in the README.

/// Every failpoint in berthd, with what a crash there leaves behind to recover from.
pub const POINTS: &[(&str, &str)] = &[
    (
        "pod.run.after_record",
        "the pod's name reserved and its intent recorded, nothing made",
    ),
    (
        "pod.run.after_netns",
        "the pod's netns pinned; no CNI ADD, no shim yet",
    ),
    (
        "pod.run.after_pins",
        "a pod without an infra process: its IPC/UTS namespaces pinned beside the netns; no CNI ADD, no shim yet",
    ),
    (
        "pod.run.after_infra",
        "shim and infra process started, CNI ADD done; pod not yet Ready",
    ),
    (
        "ctr.create.after_record",
        "the container's name reserved and its image leased",
    ),
    (
        "ctr.create.after_bundle",
        "bundle, writable layer and config.json made; no task yet",
    ),
    (
        "ctr.create.after_task",
        "the task created in the pod's shim; not yet recorded",
    ),
    (
        "ctr.start.before_task",
        "the start recorded as intended; the task not started",
    ),
    (
        "ctr.start.after_task",
        "the process running; not yet recorded as Running",
    ),
    (
        "ctr.stop.after_kill",
        "the stop signal sent; the exit not yet recorded",
    ),
    (
        "ctr.remove.after_delete",
        "the task deleted in the shim; bundle, layer and record left",
    ),
    (
        "pod.stop.after_containers",
        "the pod's containers stopped; infra and network left",
    ),
    (
        "pod.stop.after_infra",
        "infra killed and network unwired; the pod not yet NotReady",
    ),
    (
        "pod.remove.after_stop",
        "the pod stopped; its dirs, shim and record left",
    ),
    (
        "image.pull.after_blobs",
        "every blob of an image fetched; no image record yet",
    ),
];

/// Arms the failpoints named in `BERTH_FAILPOINTS` (at startup, before serving).
pub fn arm_from_env() -> Result<(), String> {
    let Ok(spec) = std::env::var("BERTH_FAILPOINTS") else {
        return Ok(());
    };
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, actions) = item
            .split_once('=')
            .ok_or_else(|| format!("BERTH_FAILPOINTS: {item:?} is not name=action"))?;
        // A typo would arm nothing and test nothing: only known points are accepted.
        if !POINTS.iter().any(|(n, _)| *n == name.trim()) {
            return Err(format!("BERTH_FAILPOINTS: no failpoint {:?}", name.trim()));
        }
        fail::cfg(name.trim(), actions.trim())
            .map_err(|e| format!("BERTH_FAILPOINTS: {name}: {e}"))?;
        tracing::warn!(
            failpoint = name.trim(),
            action = actions.trim(),
            "failpoint armed"
        );
    }
    Ok(())
}

/// A failpoint: `panic` aborts berthd here, `return` fails the step with an Internal error.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |_arg: Option<String>| Err(
            $crate::error::Error::Internal(format!("failpoint {}", $name)).into()
        ))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> crate::error::Result<u32> {
        crate::failpoint!("ctr.start.before_task");
        Ok(1)
    }

    #[test]
    fn a_return_action_fails_the_step_and_names_the_point() {
        assert!(POINTS.iter().any(|(n, _)| *n == "ctr.start.before_task"));
        assert_eq!(step().unwrap(), 1);
        fail::cfg("ctr.start.before_task", "return").unwrap();
        let e = step().unwrap_err();
        fail::remove("ctr.start.before_task");
        assert!(
            e.to_string().contains("failpoint ctr.start.before_task"),
            "{e}"
        );
        assert_eq!(step().unwrap(), 1);
    }
}
