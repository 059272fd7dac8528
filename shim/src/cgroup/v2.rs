//! cgroup v2 metrics, filled the way containerd/cgroups v2 fills `io.containerd.cgroups.v2.Metrics`.

use std::path::Path;

use berth_proto::cgroups_v2::metrics::{
    CPUStat, HugeTlbStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PSIData, PSIStats,
    PidsStat,
};
use berth_proto::protobuf::MessageField;

use super::{list_dir, parse_kv, read_opt, read_value, Detail};
use crate::error::Result;

pub(super) fn metrics(dir: &Path, detail: Detail) -> Result<Metrics> {
    let file = |n: &str| dir.join(n);
    let mut m = Metrics::new();
    if detail == Detail::Cri {
        // CPU time, memory usage and its breakdown: what CRI's ContainerStats carries.
        if let Some(stat) = read_opt(&file("cpu.stat"))? {
            m.cpu = MessageField::some(parse_cpu_stat(&stat));
        }
        let mut mem = MemoryStat::new();
        apply_memory_stat(
            &read_opt(&file("memory.stat"))?.unwrap_or_default(),
            &mut mem,
        );
        mem.usage = read_value(&file("memory.current"))?.unwrap_or(0);
        m.memory = MessageField::some(mem);
        return Ok(m);
    }
    if let Some(current) = read_value(&file("pids.current"))? {
        let mut p = PidsStat::new();
        p.current = current;
        p.limit = read_value(&file("pids.max"))?.unwrap_or(0);
        m.pids = MessageField::some(p);
    }
    if let Some(stat) = read_opt(&file("cpu.stat"))? {
        let mut c = parse_cpu_stat(&stat);
        c.psi = read_psi(&file("cpu.pressure"))?;
        m.cpu = MessageField::some(c);
    }
    let stat = read_opt(&file("memory.stat"))?;
    let current = read_value(&file("memory.current"))?;
    if stat.is_some() || current.is_some() {
        let mut mem = MemoryStat::new();
        apply_memory_stat(stat.as_deref().unwrap_or(""), &mut mem);
        mem.usage = current.unwrap_or(0);
        mem.usage_limit = read_value(&file("memory.max"))?.unwrap_or(0);
        mem.swap_usage = read_value(&file("memory.swap.current"))?.unwrap_or(0);
        mem.swap_limit = read_value(&file("memory.swap.max"))?.unwrap_or(0);
        mem.max_usage = read_value(&file("memory.peak"))?.unwrap_or(0);
        mem.swap_max_usage = read_value(&file("memory.swap.peak"))?.unwrap_or(0);
        mem.psi = read_psi(&file("memory.pressure"))?;
        m.memory = MessageField::some(mem);
    }
    if let Some(events) = read_opt(&file("memory.events"))? {
        m.memory_events = MessageField::some(parse_memory_events(&events));
    }
    if let Some(io) = read_opt(&file("io.stat"))? {
        let mut s = IOStat::new();
        s.usage = parse_io_stat(&io);
        s.psi = read_psi(&file("io.pressure"))?;
        m.io = MessageField::some(s);
    }
    m.hugetlb = hugetlb(dir)?;
    Ok(m)
}

fn parse_cpu_stat(s: &str) -> CPUStat {
    let mut c = CPUStat::new();
    for (k, v) in parse_kv(s) {
        let slot = match k {
            "usage_usec" => &mut c.usage_usec,
            "user_usec" => &mut c.user_usec,
            "system_usec" => &mut c.system_usec,
            "nr_periods" => &mut c.nr_periods,
            "nr_throttled" => &mut c.nr_throttled,
            "throttled_usec" => &mut c.throttled_usec,
            "nr_bursts" => &mut c.nr_bursts,
            "burst_usec" => &mut c.burst_usec,
            _ => continue,
        };
        *slot = v;
    }
    c
}

fn apply_memory_stat(s: &str, m: &mut MemoryStat) {
    for (k, v) in parse_kv(s) {
        let slot = match k {
            "anon" => &mut m.anon,
            "file" => &mut m.file,
            "kernel_stack" => &mut m.kernel_stack,
            "slab" => &mut m.slab,
            "sock" => &mut m.sock,
            "shmem" => &mut m.shmem,
            "file_mapped" => &mut m.file_mapped,
            "file_dirty" => &mut m.file_dirty,
            "file_writeback" => &mut m.file_writeback,
            "anon_thp" => &mut m.anon_thp,
            "inactive_anon" => &mut m.inactive_anon,
            "active_anon" => &mut m.active_anon,
            "inactive_file" => &mut m.inactive_file,
            "active_file" => &mut m.active_file,
            "unevictable" => &mut m.unevictable,
            "slab_reclaimable" => &mut m.slab_reclaimable,
            "slab_unreclaimable" => &mut m.slab_unreclaimable,
            "pgfault" => &mut m.pgfault,
            "pgmajfault" => &mut m.pgmajfault,
            "workingset_refault" => &mut m.workingset_refault,
            "workingset_activate" => &mut m.workingset_activate,
            "workingset_nodereclaim" => &mut m.workingset_nodereclaim,
            "pgrefill" => &mut m.pgrefill,
            "pgscan" => &mut m.pgscan,
            "pgsteal" => &mut m.pgsteal,
            "pgactivate" => &mut m.pgactivate,
            "pgdeactivate" => &mut m.pgdeactivate,
            "pglazyfree" => &mut m.pglazyfree,
            "pglazyfreed" => &mut m.pglazyfreed,
            "thp_fault_alloc" => &mut m.thp_fault_alloc,
            "thp_collapse_alloc" => &mut m.thp_collapse_alloc,
            _ => continue,
        };
        *slot = v;
    }
}

/// `memory.events` (also used by the OOM watcher).
pub(crate) fn parse_memory_events(s: &str) -> MemoryEvents {
    let mut e = MemoryEvents::new();
    for (k, v) in parse_kv(s) {
        let slot = match k {
            "low" => &mut e.low,
            "high" => &mut e.high,
            "max" => &mut e.max,
            "oom" => &mut e.oom,
            "oom_kill" => &mut e.oom_kill,
            "oom_group_kill" => &mut e.oom_group_kill,
            _ => continue,
        };
        *slot = v;
    }
    e
}

/// Lines "maj:min rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..".
fn parse_io_stat(s: &str) -> Vec<IOEntry> {
    s.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (major, minor) = f.next()?.split_once(':')?;
            let mut e = IOEntry::new();
            e.major = major.parse().ok()?;
            e.minor = minor.parse().ok()?;
            for (k, v) in f.filter_map(|kv| kv.split_once('=')) {
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

fn read_psi(path: &Path) -> Result<MessageField<PSIStats>> {
    Ok(read_opt(path)?.map(|s| parse_psi(&s)).into())
}

/// "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" and the same for "full".
fn parse_psi(s: &str) -> PSIStats {
    let mut p = PSIStats::new();
    for line in s.lines() {
        let mut f = line.split_whitespace();
        let slot = match f.next() {
            Some("some") => &mut p.some,
            Some("full") => &mut p.full,
            _ => continue,
        };
        let mut d = PSIData::new();
        for (k, v) in f.filter_map(|kv| kv.split_once('=')) {
            match k {
                "avg10" => d.avg10 = v.parse().unwrap_or(0.0),
                "avg60" => d.avg60 = v.parse().unwrap_or(0.0),
                "avg300" => d.avg300 = v.parse().unwrap_or(0.0),
                "total" => d.total = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        *slot = MessageField::some(d);
    }
    p
}

/// One entry per `hugetlb.<size>.current` file, sizes as the kernel names them ("2MB").
fn hugetlb(dir: &Path) -> Result<Vec<HugeTlbStat>> {
    let mut sizes: Vec<String> = list_dir(dir)?
        .into_iter()
        .filter_map(|n| Some(n.strip_prefix("hugetlb.")?.strip_suffix(".current")?.into()))
        .collect();
    sizes.sort();
    let mut out = Vec::new();
    for size in sizes {
        let file = |n: &str| dir.join(format!("hugetlb.{size}.{n}"));
        let mut h = HugeTlbStat::new();
        h.current = read_value(&file("current"))?.unwrap_or(0);
        h.max = read_value(&file("max"))?.unwrap_or(0);
        let events = read_opt(&file("events"))?.unwrap_or_default();
        h.failcnt = parse_kv(&events)
            .find(|(k, _)| *k == "max")
            .map_or(0, |(_, v)| v);
        h.pagesize = size;
        out.push(h);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{Cgroup, V2_METRICS_URL};
    use super::*;
    use crate::error::Error;
    use berth_proto::protobuf::Message;

    #[test]
    fn parsers() {
        let c = parse_cpu_stat(
            "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 5\nnr_throttled 1\n\
             throttled_usec 7\nnr_bursts 2\nburst_usec 3\n",
        );
        assert_eq!((c.usage_usec, c.user_usec, c.system_usec), (100, 60, 40));
        assert_eq!((c.nr_periods, c.nr_throttled, c.throttled_usec), (5, 1, 7));
        assert_eq!((c.nr_bursts, c.burst_usec), (2, 3));
        let e = parse_memory_events("low 0\nhigh 1\nmax 2\noom 3\noom_kill 4\noom_group_kill 5\n");
        assert_eq!(
            (e.low, e.high, e.max, e.oom, e.oom_kill, e.oom_group_kill),
            (0, 1, 2, 3, 4, 5)
        );
        let io = parse_io_stat("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\nbad\n");
        assert_eq!(io.len(), 1);
        assert_eq!(
            (io[0].major, io[0].minor, io[0].rbytes, io[0].wbytes),
            (8, 0, 1, 2)
        );
        assert_eq!((io[0].rios, io[0].wios), (3, 4));
        let p =
            parse_psi("some avg10=1.50 avg60=0.00 avg300=0.00 total=42\nfull avg10=0.25 total=7\n");
        assert_eq!(
            (p.some.avg10, p.some.total, p.full.avg10, p.full.total),
            (1.5, 42, 0.25, 7)
        );
    }

    /// This host has no v2 controllers, so a fake cgroup directory stands in for one.
    #[test]
    fn fake_tree_metrics() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, body) in [
            ("pids.current", "4\n"),
            ("pids.max", "max\n"),
            (
                "cpu.stat",
                "usage_usec 900\nuser_usec 500\nsystem_usec 400\n",
            ),
            ("memory.current", "1048576\n"),
            ("memory.max", "max\n"),
            ("memory.swap.current", "0\n"),
            (
                "memory.stat",
                "anon 4096\nfile 8192\npgfault 3\nworkingset_refault_anon 1\n",
            ),
            ("memory.events", "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n"),
            (
                "io.stat",
                "254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
            ),
            ("hugetlb.2MB.current", "2097152\n"),
            ("hugetlb.2MB.max", "max\n"),
            ("hugetlb.2MB.events", "max 6\n"),
        ] {
            std::fs::write(dir.path().join(name), body).expect("write");
        }
        let any = Cgroup::V2 {
            path: dir.path().into(),
        }
        .metrics(Detail::Full)
        .expect("metrics");
        assert_eq!(any.type_url, V2_METRICS_URL);
        let m = Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!((m.pids.current, m.pids.limit), (4, u64::MAX));
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec),
            (900, 500, 400)
        );
        assert!(m.cpu.psi.is_none());
        assert_eq!((m.memory.usage, m.memory.usage_limit), (1048576, u64::MAX));
        assert_eq!(
            (m.memory.anon, m.memory.file, m.memory.pgfault),
            (4096, 8192, 3)
        );
        assert_eq!((m.memory.swap_limit, m.memory.max_usage), (0, 0)); // files absent
        assert_eq!((m.memory_events.max, m.memory_events.oom_kill), (9, 1));
        assert_eq!((m.io.usage[0].major, m.io.usage[0].wbytes), (254, 20));
        assert_eq!(m.hugetlb.len(), 1);
        let h = &m.hugetlb[0];
        assert_eq!(
            (h.pagesize.as_str(), h.current, h.max, h.failcnt),
            ("2MB", 2097152, u64::MAX, 6)
        );
        // berthd's ListContainerStats asks for CRI's figures only: the same CPU time and
        // memory, none of the others read.
        let any = Cgroup::V2 {
            path: dir.path().into(),
        }
        .metrics(Detail::Cri)
        .expect("brief metrics");
        let b = Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!(b.cpu.usage_usec, 900);
        assert_eq!(
            (b.memory.usage, b.memory.file, b.memory.pgfault),
            (1048576, 8192, 3)
        );
        assert!(b.pids.is_none() && b.io.is_none() && b.memory_events.is_none());
        assert!(b.hugetlb.is_empty());
        assert_eq!(b.memory.usage_limit, 0, "memory.max is not read");
    }

    #[test]
    fn vanished_cgroup_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = Cgroup::V2 {
            path: dir.path().join("gone"),
        };
        assert!(!cg.exists());
        assert!(matches!(
            cg.metrics(Detail::Full).unwrap_err(),
            Error::NotFound(_)
        ));
    }
}
