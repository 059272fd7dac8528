//! Failpoints in the shim's create/start/exit paths (the `fail` crate, compiled in), for
//! crash-recovery testing of whoever manages the shim. Armed only through the
//! `BERTH_SHIM_FAILPOINTS` environment variable (`name=action;…`, read once at startup;
//! shims inherit it from the daemon that starts them). `panic` aborts the shim right there
//! (its panics abort): exactly a kill -9 of the shim at that step. `sleep(ms)` delays it.
//! Unarmed, a failpoint is one map lookup.

/// Every failpoint in the shim, with what a death there leaves behind.
pub const POINTS: &[(&str, &str)] = &[
    (
        "shim.create.after_runtime",
        "the task created by the OCI runtime (runc state, cgroup, init waiting); \
         not recorded, no TaskCreate",
    ),
    (
        "shim.start.after_runtime",
        "the container's process running; not marked running, no TaskStart",
    ),
    (
        "shim.exit.before_record",
        "the init reaped; its exit status not yet recorded anywhere (it is lost)",
    ),
    (
        "shim.exit.after_record",
        "the init's exit recorded in the bundle; not yet published or answered",
    ),
];

/// Arms the failpoints named in `BERTH_SHIM_FAILPOINTS`; unknown names are refused.
pub fn arm_from_env() -> Result<(), String> {
    let Ok(spec) = std::env::var("BERTH_SHIM_FAILPOINTS") else {
        return Ok(());
    };
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, actions) = item
            .split_once('=')
            .ok_or_else(|| format!("BERTH_SHIM_FAILPOINTS: {item:?} is not name=action"))?;
        let name = name.trim();
        if !POINTS.iter().any(|(n, _)| *n == name) {
            return Err(format!("BERTH_SHIM_FAILPOINTS: no failpoint {name:?}"));
        }
        fail::cfg(name, actions.trim())
            .map_err(|e| format!("BERTH_SHIM_FAILPOINTS: {name}: {e}"))?;
        tracing::warn!(failpoint = name, action = actions.trim(), "failpoint armed");
    }
    Ok(())
}

/// A failpoint: `panic` aborts the shim here (the message names the point).
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |_arg: Option<String>| {
            panic!(
                "failpoint {} return: only panic and sleep act in the shim",
                $name
            )
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_points_are_refused() {
        std::env::set_var("BERTH_SHIM_FAILPOINTS", "shim.nope=panic");
        let e = arm_from_env().unwrap_err();
        std::env::remove_var("BERTH_SHIM_FAILPOINTS");
        assert!(e.contains("no failpoint"), "{e}");
        assert!(POINTS.iter().all(|(n, _)| n.starts_with("shim.")));
    }
}
