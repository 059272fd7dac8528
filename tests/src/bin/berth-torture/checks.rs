//! What the harness checks after each restart: CRI log lines (complete, numbered, stamped
//! when produced), and leftovers counted on the host against the baseline taken once the
//! long-lived workload was up (shims, mounts, netns pins, bundles, cgroups, IPAM).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)` to ns since the epoch (UTC only).
pub fn parse_ts(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let rest = rest
        .strip_suffix('Z')
        .or_else(|| rest.strip_suffix("+00:00"))?;
    let (hms, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let mut nanos = 0i64;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += i64::from(c.to_digit(10)?) * 10i64.pow(8 - i as u32);
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000_000) + nanos)
}

/// The numbered lines (`n K`) of a CRI log, with their timestamps, in file order.
pub fn numbered_lines(log: &Path) -> Result<Vec<(i64, u64)>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(_tag), Some(msg)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some(n) = msg.strip_prefix("n ").and_then(|n| n.trim().parse().ok()) else {
            continue;
        };
        out.push((parse_ts(ts).unwrap_or(0), n));
    }
    Ok(out)
}

/// Where the numbering breaks: the first gap or repeat, if any.
pub fn first_break(lines: &[(i64, u64)]) -> Option<String> {
    for w in lines.windows(2) {
        if w[1].1 != w[0].1 + 1 {
            return Some(format!("line {} follows line {}", w[1].1, w[0].1));
        }
        if w[1].0 < w[0].0 {
            return Some(format!("line {} is stamped before line {}", w[1].1, w[0].1));
        }
    }
    None
}

/// Host resources counted for leak checks.
pub struct Scope {
    pub socket: String,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub cgroup_parent: String,
    pub ipam_dir: Option<PathBuf>,
    /// The OCI runtime's state dir for the daemon's containers (runc --root).
    pub runc_root: PathBuf,
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The OCI runtime's state entries of this run: the namespace's state dir is shared by
/// every daemon instance on the node (tests side by side), so an entry whose runc
/// `state.json` puts its cgroup outside `parent` belongs to another one. An entry without
/// a readable state.json (half made) counts if it is still so a moment later: another
/// daemon's container caught in its create has its state.json (or is gone) by then.
fn runc_entries(root: &Path, parent: &str) -> Vec<String> {
    let ours = format!("\"/{parent}/");
    // Some(true): ours; Some(false): another daemon's; None: no state.json (yet).
    let owner = |e: &str| -> Option<bool> {
        std::fs::read_to_string(Path::new(e).join("state.json"))
            .ok()
            .map(|t| t.contains(&ours))
    };
    if parent.is_empty() {
        return entries(root);
    }
    let (mut out, mut unsure) = (Vec::new(), Vec::new());
    for e in entries(root) {
        match owner(&e) {
            Some(true) => out.push(e),
            Some(false) => {}
            None => unsure.push(e),
        }
    }
    if !unsure.is_empty() {
        std::thread::sleep(std::time::Duration::from_secs(1));
        out.extend(
            unsure
                .into_iter()
                .filter(|e| Path::new(e).exists() && owner(e) != Some(false)),
        );
        out.sort();
    }
    out
}

fn cgroups_under(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path().display().to_string());
            cgroups_under(&e.path(), out);
        }
    }
}

impl Scope {
    /// Everything counted, by kind.
    pub fn snapshot(&self) -> BTreeMap<&'static str, Vec<String>> {
        let mut m: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        m.insert(
            "shim",
            berth_tests::procs::shims_of(&self.socket)
                .into_iter()
                .map(|p| format!("pid {}", p.pid))
                .collect(),
        );
        let mut mounts = Vec::new();
        for d in [&self.root, &self.state].into_iter().flatten() {
            mounts.extend(
                berth_tests::leaks::mounts_under(d)
                    .into_iter()
                    .map(|p| p.display().to_string()),
            );
        }
        m.insert("mount", mounts);
        if let Some(state) = &self.state {
            m.insert("netns", entries(&state.join("netns")));
            let mut b = entries(&state.join("pods"));
            b.extend(entries(&state.join("containers")));
            m.insert("bundle", b);
        }
        if let Some(root) = &self.root {
            let mut b = entries(&root.join("containers"));
            b.extend(entries(&root.join("pods")));
            m.insert("container dir", b);
            // berthd's image store: layer snapshots, blobs, partial downloads.
            m.insert("snapshot", entries(&root.join("snapshots")));
            m.insert("blob", entries(&root.join("content/blobs/sha256")));
            m.insert("ingest", entries(&root.join("content/ingest")));
        }
        let mut cg = Vec::new();
        let parent = self.cgroup_parent.trim_start_matches('/');
        if !parent.is_empty() {
            let base = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                PathBuf::from("/sys/fs/cgroup")
            } else {
                PathBuf::from("/sys/fs/cgroup/pids")
            };
            cgroups_under(&base.join(parent), &mut cg);
        }
        m.insert("cgroup", cg);
        m.insert("runc state", runc_entries(&self.runc_root, parent));
        if let Some(ipam) = &self.ipam_dir {
            let ips = entries(ipam)
                .into_iter()
                .filter(|p| p.rsplit('/').next().is_some_and(|n| n.contains('.')))
                .collect();
            m.insert("ipam", ips);
        }
        m
    }
}

/// What `now` has beyond `base`, by kind.
pub fn leftovers(
    base: &BTreeMap<&'static str, Vec<String>>,
    now: &BTreeMap<&'static str, Vec<String>>,
) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for (kind, items) in now {
        let b = base.get(kind).map(Vec::as_slice).unwrap_or_default();
        let extra: Vec<String> = items.iter().filter(|i| !b.contains(i)).cloned().collect();
        if !extra.is_empty() {
            out.push((*kind, extra));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_ts("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(parse_ts("1970-01-01T00:00:00.5Z"), Some(500_000_000));
        assert_eq!(
            parse_ts("2023-11-14T22:13:20.000000005Z"),
            Some(1_700_000_000_000_000_005)
        );
        assert_eq!(
            parse_ts("2000-02-29T00:00:00+00:00"),
            Some(951_782_400_000_000_000)
        );
    }

    #[test]
    fn runc_state_of_this_run_only() {
        let root = tempfile::tempdir().unwrap();
        for (id, state) in [
            (
                "ours",
                Some(r#"{"config":{"cgroups":{"path":"/berth/ours"}}}"#),
            ),
            (
                "theirs",
                Some(r#"{"config":{"cgroups":{"path":"/berth-soak-1/theirs"}}}"#),
            ),
            ("half", None),
        ] {
            let d = root.path().join(id);
            std::fs::create_dir(&d).unwrap();
            if let Some(t) = state {
                std::fs::write(d.join("state.json"), t).unwrap();
            }
        }
        let mut got: Vec<String> = runc_entries(root.path(), "berth")
            .into_iter()
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["half", "ours"]);
        assert_eq!(runc_entries(root.path(), "").len(), 3);
        // Another daemon's container caught in its create: its state.json comes a moment
        // later, and it is not this run's.
        let late = root.path().join("late");
        std::fs::create_dir(&late).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let t = r#"{"config":{"cgroups":{"path":"/berth-other/late"}}}"#;
            std::fs::write(late.join("state.json"), t).unwrap();
        });
        let got = runc_entries(root.path(), "berth");
        writer.join().unwrap();
        assert!(!got.iter().any(|p| p.ends_with("/late")), "{got:?}");
    }

    #[test]
    fn breaks() {
        assert_eq!(first_break(&[(1, 0), (2, 1), (3, 2)]), None);
        assert!(first_break(&[(1, 0), (2, 2)]).is_some());
        assert!(first_break(&[(3, 0), (2, 1)]).is_some());
    }
}
