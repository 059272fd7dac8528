//! CDI (the Container Device Interface, cncf-tags/container-device-interface): the
//! devices vendors describe in spec files (`*.json`, `*.yaml` in the spec dirs, by
//! default `/etc/cdi` then `/var/run/cdi`, a later dir taking precedence) and the edits
//! a container asking for one gets (`edits`). A container asks by qualified name,
//! `vendor.com/class=name`, through CRI's `cdi_devices` or an NRI plugin's adjustment.
//!
//! Spec files are read when a container asks (no cache, no watch): a few small files,
//! read on a blocking thread. Each is bounded in size; one that does not parse is
//! logged and left out, as CDI's own registry does.

mod edits;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

pub use edits::Edits;

/// The largest spec file read.
const MAX_SPEC_BYTES: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<DeviceEntry>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceEntry {
    name: String,
    #[serde(default)]
    container_edits: Edits,
}

/// One resolvable device: its edits and its spec's (applied once per spec file).
#[derive(Debug, Clone)]
struct Found {
    file: PathBuf,
    priority: usize,
    spec_edits: Edits,
    edits: Edits,
}

/// The CDI devices in the spec dirs.
pub struct Registry {
    dirs: Vec<PathBuf>,
}

/// Splits `vendor.com/class=name` (CDI's `ParseQualifiedName`).
fn parse_name(q: &str) -> Option<(&str, &str)> {
    let (kind, name) = q.split_once('=')?;
    let (vendor, class) = kind.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    };
    (ok(vendor) && ok(class) && ok(name) && !class.contains(['.', ':'])).then_some((kind, name))
}

fn read_spec(path: &Path) -> std::result::Result<SpecFile, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(format!("larger than {MAX_SPEC_BYTES} bytes"));
    }
    let mut text = String::new();
    f.take(MAX_SPEC_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let spec: SpecFile = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else {
        serde_saphyr::from_str(&text).map_err(|e| e.to_string())?
    };
    if spec.cdi_version.is_empty() || !spec.kind.contains('/') {
        return Err(format!(
            "cdiVersion {:?}, kind {:?}: not a CDI spec",
            spec.cdi_version, spec.kind
        ));
    }
    Ok(spec)
}

impl Registry {
    pub fn new(dirs: Vec<PathBuf>) -> Registry {
        Registry { dirs }
    }

    /// Every device of every spec file, by qualified name; a name two files of the same
    /// dir define is a conflict (its value: both files).
    fn scan(&self) -> HashMap<String, std::result::Result<Found, String>> {
        let mut out: HashMap<String, std::result::Result<Found, String>> = HashMap::new();
        for (priority, dir) in self.dirs.iter().enumerate() {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
                })
                .collect();
            files.sort();
            for file in files {
                let spec = match read_spec(&file) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "CDI spec left out");
                        continue;
                    }
                };
                for d in spec.devices {
                    let q = format!("{}={}", spec.kind, d.name);
                    let found = Found {
                        file: file.clone(),
                        priority,
                        spec_edits: spec.container_edits.clone(),
                        edits: d.container_edits,
                    };
                    match out.get(&q) {
                        Some(Ok(old)) if old.priority == priority => {
                            let why = format!(
                                "defined by both {} and {}",
                                old.file.display(),
                                file.display()
                            );
                            out.insert(q, Err(why));
                        }
                        Some(Err(_)) => {}
                        _ => {
                            out.insert(q, Ok(found));
                        }
                    }
                }
            }
        }
        out
    }

    /// Applies the edits of the devices `names` (qualified names) to `spec`, an OCI
    /// runtime spec as JSON. Blocking (reads the spec dirs). An unknown, conflicting or
    /// malformed name fails it, naming the device; nothing is applied then.
    pub fn inject(&self, names: &[String], spec: &mut Value) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let all = self.scan();
        let mut edits = Edits::default();
        let mut specs_seen: Vec<PathBuf> = Vec::new();
        let mut done: Vec<&str> = Vec::new();
        for n in names {
            if done.contains(&n.as_str()) {
                continue;
            }
            done.push(n);
            if parse_name(n).is_none() {
                return Err(Error::InvalidArgument(format!(
                    "CDI device {n:?}: not a qualified name (vendor.com/class=name)"
                )));
            }
            let found = match all.get(n) {
                Some(Ok(f)) => f,
                Some(Err(why)) => {
                    return Err(Error::FailedPrecondition(format!(
                        "CDI device {n:?}: {why}"
                    )))
                }
                None => {
                    return Err(Error::NotFound(format!(
                        "CDI device {n:?} is not in the spec dirs {:?}",
                        self.dirs
                    )))
                }
            };
            if !specs_seen.contains(&found.file) {
                specs_seen.push(found.file.clone());
                edits.append(&found.spec_edits);
            }
            edits.append(&found.edits);
        }
        edits
            .apply(spec)
            .map_err(|e| Error::FailedPrecondition(format!("CDI devices {names:?}: {e}")))
    }
}

#[cfg(test)]
mod tests;
