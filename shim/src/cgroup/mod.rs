//! A container's cgroup, located from its init pid, and its metrics.

mod v1;
mod v2;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::Message;

use crate::error::{Error, Result};

pub(crate) use v2::parse_memory_events;

/// `type_url`s as containerd's typeurl registry spells them (no `type.googleapis.com/`).
pub const V1_METRICS_URL: &str = "io.containerd.cgroups.v1.Metrics";
pub const V2_METRICS_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// How much a Stats call reads. containerd (and any other caller) gets every figure its
/// Metrics type has (30-80 files under cgroup v1); berthd's ListContainerStats, asked
/// every few seconds for every container of the node, needs only what CRI's
/// ContainerStats carries: CPU time, memory usage and `memory.stat` (3 files), which it
/// asks for in the call's metadata (`berth_proto::berth_shim::STATS_DETAIL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Full,
    Cri,
}

/// Where a container's cgroup lives, as seen from the shim's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// Controller name ("memory", "cpu", "cpuacct", …) → absolute cgroup directory.
    V1 { paths: HashMap<String, PathBuf> },
    /// The unified-hierarchy directory.
    V2 { path: PathBuf },
}

impl Cgroup {
    /// Locates the cgroup of `pid` from `/proc/<pid>/cgroup` and the shim's own
    /// `/proc/self/mountinfo` (mount points are never hard-coded).
    pub fn for_pid(pid: i32) -> Result<Cgroup> {
        let own = match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotFound("cgroup does not exist".into()))
            }
            Err(e) => return Err(Error::io(format!("read /proc/{pid}/cgroup"), e)),
        };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
        resolve(&own, &mountinfo)
    }

    /// The directory holding `memory.*` files, if the memory controller is present.
    pub fn memory_dir(&self) -> Option<PathBuf> {
        match self {
            Cgroup::V1 { paths } => paths.get("memory").cloned(),
            Cgroup::V2 { path } => Some(path.clone()),
        }
    }

    /// How many processes the kernel's OOM killer has killed in it (None: unreadable).
    pub fn oom_kills(&self) -> Option<u64> {
        match self {
            Cgroup::V1 { paths } => {
                let s = std::fs::read_to_string(paths.get("memory")?.join("memory.oom_control"))
                    .ok()?;
                Some(v1::parse_oom_control(&s).oom_kill)
            }
            Cgroup::V2 { path } => {
                let s = std::fs::read_to_string(path.join("memory.events")).ok()?;
                Some(parse_memory_events(&s).oom_kill)
            }
        }
    }

    /// Whether the cgroup directory (any controller's, for v1) still exists.
    pub fn exists(&self) -> bool {
        match self {
            Cgroup::V1 { paths } => paths.values().any(|p| p.is_dir()),
            Cgroup::V2 { path } => path.is_dir(),
        }
    }

    /// Current metrics as the Any containerd's Metrics API expects. Missing files are
    /// skipped; a vanished cgroup is NotFound.
    pub fn metrics(&self, detail: Detail) -> Result<Any> {
        if !self.exists() {
            return Err(Error::NotFound("cgroup does not exist".into()));
        }
        let (type_url, value) = match self {
            Cgroup::V1 { paths } => (V1_METRICS_URL, v1::metrics(paths, detail)?.write_to_bytes()),
            Cgroup::V2 { path } => (V2_METRICS_URL, v2::metrics(path, detail)?.write_to_bytes()),
        };
        let value = value.map_err(|e| Error::proto("encode cgroup metrics", e))?;
        Ok(Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        })
    }
}

/// One `cgroup`/`cgroup2` line of mountinfo.
#[derive(Debug, PartialEq, Eq)]
struct CgroupMount {
    root: String,
    mount_point: PathBuf,
    fstype: String,
    super_opts: Vec<String>,
}

/// Pure core of [`Cgroup::for_pid`]: `/proc/<pid>/cgroup` text plus mountinfo text.
fn resolve(own: &str, mountinfo: &str) -> Result<Cgroup> {
    let mounts = parse_mountinfo(mountinfo);
    let lines: Vec<(&str, &str, &str)> = own
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            Some((it.next()?, it.next()?, it.next()?))
        })
        .collect();
    // Unified only when the sole line is "0::<path>"; in hybrid mode the 0:: line is ignored.
    if let [("0", "", path)] = lines.as_slice() {
        let m = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .ok_or_else(|| Error::NotFound("cgroup does not exist: no cgroup2 mount".into()))?;
        return Ok(Cgroup::V2 {
            path: under_mount(m, path),
        });
    }
    let mut paths = HashMap::new();
    for (_, controllers, path) in lines {
        for ctl in controllers
            .split(',')
            .filter(|c| !c.is_empty() && !c.starts_with("name="))
        {
            // Combined hierarchies ("cpu,cpuacct") list every controller in the superblock
            // options, so this works whether they are mounted combined or split.
            let found = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_opts.iter().any(|o| o == ctl));
            if let Some(m) = found {
                paths.insert(ctl.to_string(), under_mount(m, path));
            }
        }
    }
    if paths.is_empty() {
        return Err(Error::NotFound(
            "cgroup does not exist: no v1 controller mounted".into(),
        ));
    }
    Ok(Cgroup::V1 { paths })
}

/// Maps a cgroup path onto a mount whose root may itself be a sub-cgroup (nested hosts).
fn under_mount(m: &CgroupMount, path: &str) -> PathBuf {
    let rel = match path.strip_prefix(m.root.as_str()) {
        Some(rest) if m.root != "/" && (rest.is_empty() || rest.starts_with('/')) => rest,
        _ => path,
    };
    m.mount_point.join(rel.trim_start_matches('/'))
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = *fields.get(sep + 1)?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgroupMount {
                root: unescape(fields.get(3)?),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fstype.to_string(),
                super_opts: fields
                    .get(sep + 3)?
                    .split(',')
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a cgroup file; a missing file is `None` (skipped, not an error).
fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// File names in a cgroup directory; a vanished directory lists as empty.
fn list_dir(dir: &Path) -> Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("read {}", dir.display()), e)),
    }
}

/// A single-value file: a number, or "max" (→ u64::MAX).
fn parse_value(s: &str) -> Option<u64> {
    match s.trim() {
        "max" => Some(u64::MAX),
        v => v.parse().ok(),
    }
}

fn read_value(path: &Path) -> Result<Option<u64>> {
    Ok(read_opt(path)?.as_deref().and_then(parse_value))
}

/// "key value" lines (memory.stat, cpu.stat, memory.events, …); bad lines are skipped.
fn parse_kv(s: &str) -> impl Iterator<Item = (&str, u64)> {
    s.lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        Some((it.next()?, parse_value(it.next()?)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /outer /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/my\\040pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_combined_nested_escaped_and_named() {
        let own = "9:name=systemd:/x\n5:cpu,cpuacct:/default/c1\n4:memory:/outer/default/c1\n\
                   3:pids:/default/c1\n2:freezer:/default/c1\n0::/default/c1\n";
        let Cgroup::V1 { paths } = resolve(own, HYBRID_MOUNTINFO).expect("resolve") else {
            panic!("expected v1");
        };
        let p = |c: &str| paths.get(c).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(
            p("cpu").as_deref(),
            Some("/sys/fs/cgroup/cpu,cpuacct/default/c1")
        );
        assert_eq!(
            p("cpuacct").as_deref(),
            Some("/sys/fs/cgroup/cpu,cpuacct/default/c1")
        );
        assert_eq!(
            p("memory").as_deref(),
            Some("/sys/fs/cgroup/memory/default/c1")
        );
        assert_eq!(
            p("pids").as_deref(),
            Some("/sys/fs/cgroup/my pids/default/c1")
        );
        assert_eq!(paths.len(), 4, "{paths:?}"); // freezer unmounted, name=systemd ignored
    }

    #[test]
    fn unified_only_when_single_zero_line() {
        let mi = "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let cg = resolve("0::/kubepods/pod1/c1\n", mi).expect("resolve");
        assert_eq!(
            cg,
            Cgroup::V2 {
                path: "/sys/fs/cgroup/kubepods/pod1/c1".into()
            }
        );
        assert!(matches!(
            resolve("0::/x\n", "").unwrap_err(),
            Error::NotFound(_)
        ));
        let none = resolve("1:name=systemd:/\n0::/\n", HYBRID_MOUNTINFO).unwrap_err();
        assert!(matches!(none, Error::NotFound(_)), "{none}");
    }

    #[test]
    fn missing_process_is_not_found() {
        let e = Cgroup::for_pid(i32::MAX).unwrap_err();
        assert!(
            matches!(&e, Error::NotFound(m) if m == "cgroup does not exist"),
            "{e}"
        );
    }

    #[test]
    fn values_and_kv() {
        assert_eq!(parse_value("max\n"), Some(u64::MAX));
        assert_eq!(parse_value(" 42\n"), Some(42));
        assert_eq!(parse_value("x"), None);
        let kv: Vec<_> = parse_kv("a 1\nbad\nb max\nc x\n").collect();
        assert_eq!(kv, vec![("a", 1), ("b", u64::MAX)]);
    }

    /// Real host test: this test process's own cgroup (v1 on this machine).
    #[test]
    fn own_cgroup_metrics() {
        let cg = Cgroup::for_pid(std::process::id() as i32).expect("for_pid");
        assert!(cg.exists());
        let any = cg.metrics(Detail::Full).expect("metrics");
        match &cg {
            Cgroup::V1 { .. } => {
                assert_eq!(any.type_url, V1_METRICS_URL);
                let m = berth_proto::cgroups::metrics::Metrics::parse_from_bytes(&any.value)
                    .expect("decode");
                assert!(m.memory.usage.usage > 0, "{:?}", m.memory);
                assert!(m.cpu.usage.total > 0, "{:?}", m.cpu);
                // CRI's figures only: CPU time and memory, the rest left out.
                let any = cg.metrics(Detail::Cri).expect("brief metrics");
                let b = berth_proto::cgroups::metrics::Metrics::parse_from_bytes(&any.value)
                    .expect("decode");
                assert!(b.memory.usage.usage > 0 && b.cpu.usage.total > 0, "{b:?}");
                assert!(b.memory.total_rss > 0 || b.memory.total_cache > 0, "{b:?}");
                assert!(b.pids.is_none() && b.blkio.is_none() && b.hugetlb.is_empty());
                assert!(b.memory.kernel.is_none() && b.memory_oom_control.is_none());
            }
            Cgroup::V2 { .. } => {
                assert_eq!(any.type_url, V2_METRICS_URL);
                let m = berth_proto::cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value)
                    .expect("decode");
                assert!(m.memory.usage > 0, "{:?}", m.memory);
            }
        }
    }
}
