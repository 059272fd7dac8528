//! The house's shape, checked from the source: inside berthd and inside the shim, the
//! top-level modules' imports (`crate::<module>`) form no circle, so every module can be
//! read and tested with only the ones below it. Prints each crate's floors (a module's
//! floor is one above the highest module it uses). In berthd, CRI's generated types
//! (`berth_cri`) appear only in the CRI adapter (`cri/`, its client library included) and in
//! berthctl (`bin/berthctl/`, a CRI client speaks CRI): the rooms below speak Berth's own
//! `workload` types.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files that wire a crate together rather than being a room of it.
const ROOTS: [&str; 3] = ["lib.rs", "main.rs", "testkit.rs"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the other top-level modules its code names as `crate::<module>`
/// (including `use crate::{a, b}` groups).
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeSet::new();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() && name != "bin" {
            modules.insert(name);
        } else if let Some(m) = name.strip_suffix(".rs") {
            if !ROOTS.contains(&name.as_str()) {
                modules.insert(m.to_string());
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &modules {
        let mut files = Vec::new();
        let dir = src.join(m);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src.join(format!("{m}.rs")));
        }
        let uses = graph.entry(m.clone()).or_default();
        for f in files {
            // Unit tests may reach anywhere in their crate.
            if f.file_name()
                .is_some_and(|n| n == "tests.rs" || n == "fake.rs")
            {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let text = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or_default())
                        .collect(),
                    None => vec![rest
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or_default()],
                };
                for n in names {
                    if modules.contains(n) && n != m {
                        uses.insert(n.to_string());
                    }
                }
            }
        }
    }
    graph
}

/// Each module's floor, or the modules left in a circle.
fn floors(
    graph: &BTreeMap<String, BTreeSet<String>>,
) -> Result<BTreeMap<String, usize>, Vec<String>> {
    let mut floor = BTreeMap::new();
    while floor.len() < graph.len() {
        let ready: Vec<(String, usize)> = graph
            .iter()
            .filter(|(m, _)| !floor.contains_key(*m))
            .filter(|(_, uses)| uses.iter().all(|u| floor.contains_key(u)))
            .map(|(m, uses)| {
                let f = uses.iter().map(|u| floor[u] + 1).max().unwrap_or(0);
                (m.clone(), f)
            })
            .collect();
        if ready.is_empty() {
            return Err(graph
                .keys()
                .filter(|m| !floor.contains_key(*m))
                .cloned()
                .collect());
        }
        floor.extend(ready);
    }
    Ok(floor)
}

fn check(krate: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let graph = imports(&src);
    assert!(
        graph.len() > 5,
        "{krate}: only {} modules found",
        graph.len()
    );
    match floors(&graph) {
        Ok(f) => {
            let mut by_floor: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
            for (m, n) in &f {
                by_floor.entry(*n).or_default().push(m);
            }
            for (n, ms) in by_floor.iter().rev() {
                println!("{krate} floor {n}: {}", ms.join(" "));
            }
        }
        Err(circle) => {
            let edges: Vec<String> = circle
                .iter()
                .map(|m| format!("{m} -> {:?}", graph[m]))
                .collect();
            panic!(
                "{krate}: modules in an import circle:\n{}",
                edges.join("\n")
            );
        }
    }
}

#[test]
fn berthd_modules_form_no_import_circle() {
    check("daemon");
}

/// The berthd source files outside `cri/` and berthctl's `bin/berthctl/` that name `berth_cri::`.
fn cri_types_outside_the_adapter() -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| !f.starts_with(src.join("cri")) && !f.starts_with(src.join("bin/berthctl")))
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .any(|l| !l.trim_start().starts_with("//") && l.contains("berth_cri::"))
        })
        .map(|f| f.strip_prefix(&src).unwrap().to_path_buf())
        .collect()
}

#[test]
fn cri_types_stay_in_the_cri_adapter() {
    let found = cri_types_outside_the_adapter();
    assert!(
        found.is_empty(),
        "CRI types outside daemon/src/cri/ (convert them in cri::convert): {found:?}"
    );
}

/// berthctl reaches berthd only through CRI (`berthd::cri::client`), never through the
/// daemon's rooms: what it shows is what any CRI client sees, and it works against any
/// runtime's socket.
#[test]
fn berthctl_uses_only_the_cri_client() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/src/bin/berthctl");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        !files.is_empty(),
        "no berthctl sources under {}",
        src.display()
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("berthd::") {
            let rest = &text[i + "berthd::".len()..];
            assert!(
                rest.starts_with("cri::client"),
                "{} uses berthd::{} (berthctl speaks CRI through cri::client only)",
                f.display(),
                rest.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or_default()
            );
        }
    }
}

#[test]
fn shim_modules_form_no_import_circle() {
    check("shim");
}

#[test]
fn a_circle_is_found() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(m, u)| (m.to_string(), u.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(floors(&g).unwrap_err(), ["a", "b", "c"]);
}
