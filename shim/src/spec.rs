//! The two facts the shim reads from a bundle's `config.json`: its annotations (for
//! grouping) and whether it has its own PID namespace (for kill-all on init exit).
//!
//! Read as plain JSON rather than through `oci-spec`: the shim needs two fields, and the
//! full typed spec (with its regex-based validation) would triple the per-pod binary's
//! resident code.

use std::path::Path;

use serde_json::Value;

fn load(bundle: &Path) -> Option<Value> {
    let bytes = std::fs::read(bundle.join("config.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The value of annotation `key`, if present and non-empty.
pub fn annotation(bundle: &Path, keys: &[&str]) -> Option<String> {
    let v = load(bundle)?;
    let ann = v.get("annotations")?.as_object()?;
    keys.iter().find_map(|k| {
        ann.get(*k)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    })
}

/// True unless the spec gives the container its own new PID namespace (a `pid` entry
/// without a path). An unreadable spec also means true, as in the Go shim.
pub fn should_kill_all_on_exit(bundle: &Path) -> bool {
    let Some(v) = load(bundle) else { return true };
    let own = v
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .map(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(Value::as_str) == Some("pid")
                    && n.get("path")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
            })
        })
        .unwrap_or(false);
    !own
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(json: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), json).unwrap();
        d
    }

    #[test]
    fn kill_all_rules() {
        let own = bundle(r#"{"linux":{"namespaces":[{"type":"mount"},{"type":"pid"}]}}"#);
        assert!(!should_kill_all_on_exit(own.path()));
        let shared = bundle(r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#);
        assert!(should_kill_all_on_exit(shared.path()));
        let host = bundle(r#"{"linux":{"namespaces":[{"type":"network"}]}}"#);
        assert!(should_kill_all_on_exit(host.path()));
        let missing = tempfile::tempdir().unwrap();
        assert!(should_kill_all_on_exit(missing.path()));
    }

    #[test]
    fn annotations_in_order() {
        let b = bundle(r#"{"annotations":{"b":"2","a":"","c":"3"}}"#);
        assert_eq!(annotation(b.path(), &["a", "b", "c"]).as_deref(), Some("2"));
        assert_eq!(annotation(b.path(), &["x"]), None);
    }
}
