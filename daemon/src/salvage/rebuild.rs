//! Rebuilding a new store from the record copies (`records::copies`): every pod copy,
//! every container copy whose pod is rebuilt, the snapshot leases and snapshot records
//! those containers hold, and their images' records (when all the image's blobs are still
//! there), all in one transaction. A copy that fails a check is left out and reported;
//! what it owned is then removed as an orphan by the startup that follows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::records::copies::RecordCopy;
use crate::records::{ContainerRecord, PodRecord};
use crate::store::{Row, Store, CONTAINERS, IMAGES, LEASES, PODS, SNAPSHOTS};

/// What a rebuild put back, and what it left out (with why).
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub pods: Vec<String>,
    pub containers: Vec<String>,
    pub images: Vec<String>,
    pub snapshots: usize,
    pub skipped: Vec<String>,
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Internal(format!("encode: {e}")))
}

/// The id a copy's place gives it: the name of the dir it is in.
fn dir_id(path: &Path) -> String {
    path.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A pod copy that names its own places (its dirs, its netns pin), and no other.
fn check_pod(
    p: &PodRecord,
    id: &str,
    root: &Path,
    state: &Path,
) -> std::result::Result<(), String> {
    if p.id != id {
        return Err(format!("record of {:?} in the dir of {id}", p.id));
    }
    let netns_ok = p
        .netns
        .as_ref()
        .is_none_or(|n| *n == state.join("netns").join(id));
    if p.files != root.join("pods").join(id) || p.bundle != state.join("pods").join(id) || !netns_ok
    {
        return Err("paths outside the pod's own dirs".into());
    }
    Ok(())
}

fn check_container(
    c: &ContainerRecord,
    id: &str,
    root: &Path,
    state: &Path,
) -> std::result::Result<(), String> {
    if c.id != id {
        return Err(format!("record of {:?} in the dir of {id}", c.id));
    }
    if c.dir != root.join("containers").join(id) || c.bundle != state.join("containers").join(id) {
        return Err("paths outside the container's own dirs".into());
    }
    Ok(())
}

/// Of records claiming one name, the newest keeps it (kubelet's names are unique; two
/// copies with one name are a stale one and its successor).
fn newest_per_name<T>(items: &[T], key: impl Fn(&T) -> (&str, i64)) -> HashSet<usize> {
    let mut best: HashMap<String, (i64, usize)> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        let (name, at) = key(it);
        if best.get(name).is_none_or(|(b, _)| *b < at) {
            best.insert(name.to_string(), (at, i));
        }
    }
    best.values().map(|(_, i)| *i).collect()
}

/// Puts the records of `copies` into `store` (new and empty), in one transaction.
pub fn rebuild(
    store: &Store,
    root: &Path,
    state: &Path,
    copies: Vec<(PathBuf, std::result::Result<RecordCopy, String>)>,
) -> Result<Rebuilt> {
    let mut out = Rebuilt::default();
    let mut pods: Vec<PodRecord> = Vec::new();
    let mut ctrs: Vec<(ContainerRecord, RecordCopy)> = Vec::new();
    for (path, copy) in copies {
        let id = dir_id(&path);
        let mut skip = |why: String| out.skipped.push(format!("{}: {why}", path.display()));
        let copy = match copy {
            Ok(c) => c,
            Err(why) => {
                skip(why);
                continue;
            }
        };
        if copy.record_format != crate::records::migrate::FORMAT {
            skip(format!("record format {}", copy.record_format));
            continue;
        }
        let in_pods = path.starts_with(root.join("pods"));
        match (copy.table.as_str(), in_pods) {
            ("pods", true) => match serde_json::from_value::<PodRecord>(copy.record.clone()) {
                Ok(p) => match check_pod(&p, &id, root, state) {
                    Ok(()) => pods.push(p),
                    Err(why) => skip(why),
                },
                Err(e) => skip(format!("pod record: {e}")),
            },
            ("containers", false) => {
                match serde_json::from_value::<ContainerRecord>(copy.record.clone()) {
                    Ok(c) => match check_container(&c, &id, root, state) {
                        Ok(()) => ctrs.push((c, copy)),
                        Err(why) => skip(why),
                    },
                    Err(e) => skip(format!("container record: {e}")),
                }
            }
            (t, _) => skip(format!("a {t:?} copy in the wrong place")),
        }
    }
    let keep = newest_per_name(&pods, |p| (p.name_key.as_str(), p.created_at));
    let mut names = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut pod_ids = HashSet::new();
    for (i, p) in pods.iter().enumerate() {
        if !keep.contains(&i) {
            out.skipped
                .push(format!("pod {}: its name is a newer pod's", p.id));
            continue;
        }
        names.push((p.name_key.clone(), p.id.clone()));
        rows.push((PODS, p.id.clone(), json(p)?));
        pod_ids.insert(p.id.clone());
        out.pods.push(p.id.clone());
    }
    ctrs.retain(|(c, _)| {
        let ok = pod_ids.contains(&c.pod_id);
        if !ok {
            out.skipped.push(format!(
                "container {}: its pod {} is not rebuilt",
                c.id, c.pod_id
            ));
        }
        ok
    });
    let keep = newest_per_name(&ctrs, |(c, _)| (c.name_key.as_str(), c.created_at));
    // Images: by id, from the newest container's copy; a tag goes to the image of the
    // newest container that had it.
    let mut images: BTreeMap<String, (i64, Value)> = BTreeMap::new();
    let mut snapshots: BTreeMap<String, Value> = BTreeMap::new();
    for (i, (c, copy)) in ctrs.iter().enumerate() {
        if !keep.contains(&i) {
            out.skipped.push(format!(
                "container {}: its name is a newer container's",
                c.id
            ));
            continue;
        }
        names.push((c.name_key.clone(), c.id.clone()));
        rows.push((CONTAINERS, c.id.clone(), json(c)?));
        out.containers.push(c.id.clone());
        if let Some(lease) = &copy.lease {
            rows.push((LEASES, c.id.clone(), json(lease)?));
        }
        for (chain, s) in &copy.snapshots {
            let dir = s["dir"].as_str().unwrap_or_default();
            let plain = !dir.is_empty() && dir.bytes().all(|b| b.is_ascii_digit());
            if plain && root.join("snapshots").join(dir).join("fs").is_dir() {
                snapshots.insert(chain.clone(), s.clone());
            }
        }
        if let Some(img) = &copy.image {
            let id = img["id"].as_str().unwrap_or_default().to_string();
            if !id.is_empty() && images.get(&id).is_none_or(|(at, _)| *at < c.created_at) {
                images.insert(id, (c.created_at, img.clone()));
            }
        }
    }
    out.snapshots = snapshots.len();
    for (chain, s) in snapshots {
        rows.push((SNAPSHOTS, chain, json(&s)?));
    }
    for (id, img) in untangle_tags(images, root) {
        rows.push((IMAGES, id.clone(), json(&img)?));
        out.images.push(id);
    }
    store.restore(&rows, &names)?;
    Ok(out)
}

/// Image records whose every blob is still in the content store, each tag kept only by
/// the newest image that had it.
fn untangle_tags(images: BTreeMap<String, (i64, Value)>, root: &Path) -> Vec<(String, Value)> {
    let blob = |d: &str| {
        d.strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .is_some_and(|h| root.join("content/blobs/sha256").join(h).is_file())
    };
    let whole: Vec<(String, i64, Value)> = images
        .into_iter()
        .filter(|(_, (_, v))| {
            v["blobs"]
                .as_array()
                .is_some_and(|b| b.iter().all(|d| d.as_str().is_some_and(blob)))
        })
        .map(|(id, (at, v))| (id, at, v))
        .collect();
    let mut owner: HashMap<String, (i64, String)> = HashMap::new();
    for (id, at, v) in &whole {
        for t in v["repo_tags"].as_array().into_iter().flatten() {
            let t = t.as_str().unwrap_or_default().to_string();
            if owner.get(&t).is_none_or(|(a, _)| a < at) {
                owner.insert(t, (*at, id.clone()));
            }
        }
    }
    whole
        .into_iter()
        .map(|(id, _, mut v)| {
            if let Some(tags) = v["repo_tags"].as_array_mut() {
                tags.retain(|t| {
                    t.as_str()
                        .and_then(|t| owner.get(t))
                        .is_some_and(|(_, o)| *o == id)
                });
            }
            (id, v)
        })
        .collect()
}

#[cfg(test)]
mod tests;
