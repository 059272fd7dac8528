//! CNI network configuration: picking the config file in the conf dir and validating it.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The CNI versions whose result format berthd reads (0.3.0 and later share it).
const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A network configuration list: the plugins run in order for ADD, reversed for DEL.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's own config, as written (an object with a `type`).
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from (for messages).
    pub source: PathBuf,
}

impl NetworkConfigList {
    /// Each plugin's `type`, the binary that runs it (validated to be a plain file name).
    pub fn plugin_type(plugin: &Map<String, Value>) -> &str {
        plugin.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// CNI 0.4.0 added prevResult on DEL; earlier plugins are not sent one.
    pub(super) fn sends_prev_result_on_del(&self) -> bool {
        !matches!(self.cni_version.as_str(), "0.3.0" | "0.3.1")
    }

    /// Parses a `.conflist` (has `plugins`) or a single-plugin `.conf` (has `type`), which
    /// becomes a one-plugin list as libcni does.
    pub fn parse(bytes: &[u8], source: &Path) -> Result<NetworkConfigList> {
        let bad = |why: String| Error::Network(format!("CNI config {}: {why}", source.display()));
        let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let name = obj.get("name").and_then(Value::as_str).unwrap_or("");
        let version = obj.get("cniVersion").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            return Err(bad("no network name".into()));
        }
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(bad(format!(
                "cniVersion {version:?} is not one of {SUPPORTED_VERSIONS:?}"
            )));
        }
        let plugins = match obj.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| match p {
                    Value::Object(m) => Ok(m.clone()),
                    _ => Err(bad("a plugin is not a JSON object".into())),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(bad("plugins is not a list".into())),
            None if obj.contains_key("type") => vec![obj.clone()],
            None => return Err(bad("neither plugins nor type".into())),
        };
        if plugins.is_empty() {
            return Err(bad("no plugins".into()));
        }
        for p in &plugins {
            let t = Self::plugin_type(p);
            // The type names a binary in the bin dirs: a path would escape them.
            if t.is_empty() || t == "." || t == ".." || t.contains(['/', '\0']) {
                return Err(bad(format!("invalid plugin type {t:?}")));
            }
        }
        Ok(NetworkConfigList {
            name: name.to_string(),
            cni_version: version.to_string(),
            plugins,
            source: source.to_path_buf(),
        })
    }
}

/// The config berthd uses: the first `*.conflist`, `*.conf` or `*.json` in `dir` by file
/// name (libcni's order). None when there is none or the dir is missing; an unreadable or
/// invalid first file is an error, not skipped (containerd does the same).
pub(super) fn load_dir(dir: &Path) -> Result<Option<NetworkConfigList>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read CNI conf dir {}", dir.display()), e)),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x, "conflist" | "conf" | "json"))
        })
        .collect();
    files.sort();
    let Some(first) = files.first() else {
        return Ok(None);
    };
    let bytes =
        std::fs::read(first).map_err(|e| Error::io(format!("read {}", first.display()), e))?;
    NetworkConfigList::parse(&bytes, first).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"net-a","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn first_file_by_name_wins() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "20-b.conflist", LIST);
        write(
            d.path(),
            "10-a.conf",
            r#"{"cniVersion":"0.4.0","name":"net-b","type":"ptp"}"#,
        );
        write(d.path(), "05-ignored.txt", "not json");
        std::fs::create_dir(d.path().join("00-dir.conf")).unwrap();
        let l = load_dir(d.path()).unwrap().unwrap();
        assert_eq!(l.name, "net-b");
        assert_eq!(l.source, d.path().join("10-a.conf"));
    }

    #[test]
    fn a_conf_becomes_a_one_plugin_list() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "10-a.conf",
            r#"{"cniVersion":"0.4.0","name":"net-b","type":"ptp","mtu":1400}"#,
        );
        let l = load_dir(d.path()).unwrap().unwrap();
        assert_eq!(l.cni_version, "0.4.0");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(NetworkConfigList::plugin_type(&l.plugins[0]), "ptp");
        assert_eq!(l.plugins[0]["mtu"], 1400);
        assert!(l.sends_prev_result_on_del());
    }

    #[test]
    fn a_conflist_keeps_its_plugins_in_order() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "99.json", LIST);
        let l = load_dir(d.path()).unwrap().unwrap();
        let types: Vec<&str> = l
            .plugins
            .iter()
            .map(NetworkConfigList::plugin_type)
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
    }

    #[test]
    fn no_config_is_none() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load_dir(d.path()).unwrap(), None);
        assert_eq!(load_dir(&d.path().join("missing")).unwrap(), None);
        write(d.path(), "readme.md", "x");
        assert_eq!(load_dir(d.path()).unwrap(), None);
    }

    #[test]
    fn bad_configs_are_errors() {
        let cases = [
            "{not json",
            "[]",
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
            r#"{"cniVersion":"0.2.0","name":"n","type":"bridge"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"notype":1}]}"#,
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        ];
        for text in cases {
            let d = tempfile::tempdir().unwrap();
            write(d.path(), "10.conflist", text);
            let e = load_dir(d.path()).unwrap_err();
            assert!(matches!(e, Error::Network(_)), "{text}: {e}");
            assert!(e.to_string().contains("10.conflist"), "{e}");
        }
    }
}
