//! cgroup v1 metrics, filled the way containerd/cgroups v1 fills `io.containerd.cgroups.v1.Metrics`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_proto::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, HugetlbStat, MemoryEntry, MemoryOomControl,
    MemoryStat, Metrics, PidsStat, Throttle,
};
use berth_proto::protobuf::MessageField;

use super::{list_dir, parse_kv, read_opt, read_value, Detail};
use crate::error::Result;

/// cpuacct.stat counts in USER_HZ ticks; USER_HZ is 100 in Linux's userspace ABI on every
/// architecture (containerd hard-codes the same value).
const USER_HZ: u64 = 100;
const NANOS_PER_SEC: u64 = 1_000_000_000;

pub(super) fn metrics(paths: &HashMap<String, PathBuf>, detail: Detail) -> Result<Metrics> {
    let mut m = Metrics::new();
    if detail == Detail::Cri {
        // CPU time, memory usage and its breakdown: what CRI's ContainerStats carries.
        if let Some(dir) = paths.get("cpuacct") {
            let mut u = CPUUsage::new();
            u.total = read_value(&dir.join("cpuacct.usage"))?.unwrap_or(0);
            let mut c = CPUStat::new();
            c.usage = MessageField::some(u);
            m.cpu = MessageField::some(c);
        }
        if let Some(dir) = paths.get("memory") {
            let mut mem = MemoryStat::new();
            if let Some(stat) = read_opt(&dir.join("memory.stat"))? {
                apply_memory_stat(&stat, &mut mem);
            }
            let mut usage = MemoryEntry::new();
            usage.usage = read_value(&dir.join("memory.usage_in_bytes"))?.unwrap_or(0);
            mem.usage = MessageField::some(usage);
            m.memory = MessageField::some(mem);
        }
        return Ok(m);
    }
    if let Some(dir) = paths.get("pids") {
        m.pids = pids(dir)?;
    }
    if paths.contains_key("cpuacct") || paths.contains_key("cpu") {
        m.cpu = MessageField::some(cpu(paths.get("cpuacct"), paths.get("cpu"))?);
    }
    if let Some(dir) = paths.get("memory") {
        memory(dir, &mut m)?;
    }
    if let Some(dir) = paths.get("blkio") {
        let partitions = read_opt(Path::new("/proc/partitions"))?.unwrap_or_default();
        m.blkio = MessageField::some(blkio(dir, &parse_partitions(&partitions))?);
    }
    if let Some(dir) = paths.get("hugetlb") {
        m.hugetlb = hugetlb(dir)?;
    }
    Ok(m)
}

fn pids(dir: &Path) -> Result<MessageField<PidsStat>> {
    let Some(current) = read_value(&dir.join("pids.current"))? else {
        return Ok(MessageField::none());
    };
    let mut p = PidsStat::new();
    p.current = current;
    // containerd reports an unlimited "max" as 0.
    p.limit = read_value(&dir.join("pids.max"))?
        .filter(|v| *v != u64::MAX)
        .unwrap_or(0);
    Ok(MessageField::some(p))
}

fn cpu(acct: Option<&PathBuf>, cpu: Option<&PathBuf>) -> Result<CPUStat> {
    let mut s = CPUStat::new();
    if let Some(dir) = acct {
        let mut u = CPUUsage::new();
        u.total = read_value(&dir.join("cpuacct.usage"))?.unwrap_or(0);
        if let Some(stat) = read_opt(&dir.join("cpuacct.stat"))? {
            (u.user, u.kernel) = parse_cpuacct_stat(&stat);
        }
        if let Some(per_cpu) = read_opt(&dir.join("cpuacct.usage_percpu"))? {
            u.per_cpu = per_cpu
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
        }
        s.usage = MessageField::some(u);
    }
    if let Some(stat) = cpu
        .map(|d| read_opt(&d.join("cpu.stat")))
        .transpose()?
        .flatten()
    {
        s.throttling = MessageField::some(parse_throttle(&stat));
    }
    Ok(s)
}

/// `cpuacct.stat` → (user ns, kernel ns).
fn parse_cpuacct_stat(s: &str) -> (u64, u64) {
    let (mut user, mut kernel) = (0, 0);
    for (k, v) in parse_kv(s) {
        match k {
            "user" => user = v,
            "system" => kernel = v,
            _ => {}
        }
    }
    let ns = |ticks: u64| ticks.saturating_mul(NANOS_PER_SEC) / USER_HZ;
    (ns(user), ns(kernel))
}

fn parse_throttle(s: &str) -> Throttle {
    let mut t = Throttle::new();
    for (k, v) in parse_kv(s) {
        match k {
            "nr_periods" => t.periods = v,
            "nr_throttled" => t.throttled_periods = v,
            "throttled_time" => t.throttled_time = v,
            _ => {}
        }
    }
    t
}

fn memory(dir: &Path, m: &mut Metrics) -> Result<()> {
    let mut mem = MemoryStat::new();
    if let Some(stat) = read_opt(&dir.join("memory.stat"))? {
        apply_memory_stat(&stat, &mut mem);
    }
    mem.usage = memory_entry(dir, "memory")?;
    mem.swap = memory_entry(dir, "memory.memsw")?;
    mem.kernel = memory_entry(dir, "memory.kmem")?;
    mem.kernel_tcp = memory_entry(dir, "memory.kmem.tcp")?;
    m.memory = MessageField::some(mem);
    if let Some(oom) = read_opt(&dir.join("memory.oom_control"))? {
        m.memory_oom_control = MessageField::some(parse_oom_control(&oom));
    }
    Ok(())
}

/// `<prefix>.{usage,max_usage,limit}_in_bytes` and `<prefix>.failcnt`; none present → unset.
fn memory_entry(dir: &Path, prefix: &str) -> Result<MessageField<MemoryEntry>> {
    let mut e = MemoryEntry::new();
    let mut any = false;
    for (name, slot) in [
        ("usage_in_bytes", &mut e.usage),
        ("max_usage_in_bytes", &mut e.max),
        ("failcnt", &mut e.failcnt),
        ("limit_in_bytes", &mut e.limit),
    ] {
        if let Some(v) = read_value(&dir.join(format!("{prefix}.{name}")))? {
            *slot = v;
            any = true;
        }
    }
    Ok(if any {
        MessageField::some(e)
    } else {
        MessageField::none()
    })
}

fn apply_memory_stat(s: &str, m: &mut MemoryStat) {
    for (k, v) in parse_kv(s) {
        let slot = match k {
            "cache" => &mut m.cache,
            "rss" => &mut m.rss,
            "rss_huge" => &mut m.rss_huge,
            "mapped_file" => &mut m.mapped_file,
            "dirty" => &mut m.dirty,
            "writeback" => &mut m.writeback,
            "pgpgin" => &mut m.pg_pg_in,
            "pgpgout" => &mut m.pg_pg_out,
            "pgfault" => &mut m.pg_fault,
            "pgmajfault" => &mut m.pg_maj_fault,
            "inactive_anon" => &mut m.inactive_anon,
            "active_anon" => &mut m.active_anon,
            "inactive_file" => &mut m.inactive_file,
            "active_file" => &mut m.active_file,
            "unevictable" => &mut m.unevictable,
            "hierarchical_memory_limit" => &mut m.hierarchical_memory_limit,
            "hierarchical_memsw_limit" => &mut m.hierarchical_swap_limit,
            "total_cache" => &mut m.total_cache,
            "total_rss" => &mut m.total_rss,
            "total_rss_huge" => &mut m.total_rss_huge,
            "total_mapped_file" => &mut m.total_mapped_file,
            "total_dirty" => &mut m.total_dirty,
            "total_writeback" => &mut m.total_writeback,
            "total_pgpgin" => &mut m.total_pg_pg_in,
            "total_pgpgout" => &mut m.total_pg_pg_out,
            "total_pgfault" => &mut m.total_pg_fault,
            "total_pgmajfault" => &mut m.total_pg_maj_fault,
            "total_inactive_anon" => &mut m.total_inactive_anon,
            "total_active_anon" => &mut m.total_active_anon,
            "total_inactive_file" => &mut m.total_inactive_file,
            "total_active_file" => &mut m.total_active_file,
            "total_unevictable" => &mut m.total_unevictable,
            _ => continue,
        };
        *slot = v;
    }
}

pub(super) fn parse_oom_control(s: &str) -> MemoryOomControl {
    let mut o = MemoryOomControl::new();
    for (k, v) in parse_kv(s) {
        match k {
            "oom_kill_disable" => o.oom_kill_disable = v,
            "under_oom" => o.under_oom = v,
            "oom_kill" => o.oom_kill = v,
            _ => {}
        }
    }
    o
}

/// CFQ/BFQ-era `blkio.*_recursive` files when present; if they are absent or all empty,
/// the throttle files (containerd/cgroups does the same fallback).
fn blkio(dir: &Path, devices: &HashMap<(u64, u64), String>) -> Result<BlkIOStat> {
    let mut b = BlkIOStat::new();
    if dir.join("blkio.io_serviced_recursive").exists() {
        for (name, slot) in [
            ("sectors_recursive", &mut b.sectors_recursive),
            (
                "io_service_bytes_recursive",
                &mut b.io_service_bytes_recursive,
            ),
            ("io_serviced_recursive", &mut b.io_serviced_recursive),
            ("io_queued_recursive", &mut b.io_queued_recursive),
            (
                "io_service_time_recursive",
                &mut b.io_service_time_recursive,
            ),
            ("io_wait_time_recursive", &mut b.io_wait_time_recursive),
            ("io_merged_recursive", &mut b.io_merged_recursive),
            ("time_recursive", &mut b.io_time_recursive),
        ] {
            if let Some(s) = read_opt(&dir.join(format!("blkio.{name}")))? {
                *slot = parse_blkio(&s, devices);
            }
        }
    }
    let all_empty = [
        &b.sectors_recursive,
        &b.io_service_bytes_recursive,
        &b.io_serviced_recursive,
        &b.io_queued_recursive,
        &b.io_service_time_recursive,
        &b.io_wait_time_recursive,
        &b.io_merged_recursive,
        &b.io_time_recursive,
    ]
    .iter()
    .all(|v| v.is_empty());
    if all_empty {
        if let Some(s) = read_opt(&dir.join("blkio.throttle.io_serviced"))? {
            b.io_serviced_recursive = parse_blkio(&s, devices);
        }
        if let Some(s) = read_opt(&dir.join("blkio.throttle.io_service_bytes"))? {
            b.io_service_bytes_recursive = parse_blkio(&s, devices);
        }
    }
    Ok(b)
}

/// Lines "maj:min [Op] value"; "Total n" lines and malformed lines are skipped.
fn parse_blkio(s: &str, devices: &HashMap<(u64, u64), String>) -> Vec<BlkIOEntry> {
    s.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, value] => (*dev, *op, *value),
                [dev, value] if *dev != "Total" => (*dev, "", *value),
                _ => return None,
            };
            let (major, minor) = dev.split_once(':')?;
            let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
            let mut e = BlkIOEntry::new();
            e.op = op.to_string();
            e.device = devices.get(&(major, minor)).cloned().unwrap_or_default();
            e.major = major;
            e.minor = minor;
            e.value = value.parse().ok()?;
            Some(e)
        })
        .collect()
}

/// `/proc/partitions` → (major, minor) → "/dev/<name>".
fn parse_partitions(s: &str) -> HashMap<(u64, u64), String> {
    s.lines()
        .filter_map(
            |l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
                [maj, min, _, name] => Some((
                    (maj.parse().ok()?, min.parse().ok()?),
                    format!("/dev/{name}"),
                )),
                _ => None,
            },
        )
        .collect()
}

/// One entry per `hugetlb.<size>.usage_in_bytes` file, sizes as the kernel names them ("2MB").
fn hugetlb(dir: &Path) -> Result<Vec<HugetlbStat>> {
    let mut sizes: Vec<String> = list_dir(dir)?
        .into_iter()
        .filter_map(|n| {
            Some(
                n.strip_prefix("hugetlb.")?
                    .strip_suffix(".usage_in_bytes")?
                    .into(),
            )
        })
        .collect();
    sizes.sort();
    let mut out = Vec::new();
    for size in sizes {
        let mut h = HugetlbStat::new();
        let file = |n: &str| dir.join(format!("hugetlb.{size}.{n}"));
        h.usage = read_value(&file("usage_in_bytes"))?.unwrap_or(0);
        h.max = read_value(&file("max_usage_in_bytes"))?.unwrap_or(0);
        h.failcnt = read_value(&file("failcnt"))?.unwrap_or(0);
        h.pagesize = size;
        out.push(h);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_stat_maps_every_field() {
        let mut m = MemoryStat::new();
        apply_memory_stat(
            "cache 1\nrss 2\nrss_huge 3\nshmem 99\nmapped_file 4\ndirty 5\nwriteback 6\n\
             pgpgin 7\npgpgout 8\npgfault 9\npgmajfault 10\ninactive_anon 11\nactive_anon 12\n\
             inactive_file 13\nactive_file 14\nunevictable 15\n\
             hierarchical_memory_limit 9223372036854771712\nhierarchical_memsw_limit 17\n\
             total_cache 21\ntotal_rss 22\ntotal_pgpgin 27\ntotal_unevictable 35\n",
            &mut m,
        );
        assert_eq!((m.cache, m.rss, m.rss_huge, m.mapped_file), (1, 2, 3, 4));
        assert_eq!(
            (m.dirty, m.writeback, m.pg_pg_in, m.pg_pg_out),
            (5, 6, 7, 8)
        );
        assert_eq!(
            (m.pg_fault, m.pg_maj_fault, m.inactive_anon, m.active_anon),
            (9, 10, 11, 12)
        );
        assert_eq!(
            (m.inactive_file, m.active_file, m.unevictable),
            (13, 14, 15)
        );
        assert_eq!(m.hierarchical_memory_limit, 9223372036854771712);
        assert_eq!(m.hierarchical_swap_limit, 17);
        assert_eq!((m.total_cache, m.total_rss, m.total_pg_pg_in), (21, 22, 27));
        assert_eq!(m.total_unevictable, 35);
    }

    #[test]
    fn cpu_files() {
        assert_eq!(
            parse_cpuacct_stat("user 150\nsystem 3\n"),
            (1_500_000_000, 30_000_000)
        );
        let t =
            parse_throttle("nr_periods 10\nnr_throttled 2\nthrottled_time 12345\nnr_bursts 0\n");
        assert_eq!(
            (t.periods, t.throttled_periods, t.throttled_time),
            (10, 2, 12345)
        );
    }

    #[test]
    fn oom_control() {
        let o = parse_oom_control("oom_kill_disable 0\nunder_oom 1\noom_kill 3\n");
        assert_eq!((o.oom_kill_disable, o.under_oom, o.oom_kill), (0, 1, 3));
    }

    #[test]
    fn blkio_lines_and_partitions() {
        let devs = parse_partitions(
            "major minor  #blocks  name\n\n 254        0   52428800 vda\n   7        0  1 loop0\n",
        );
        assert_eq!(devs.get(&(254, 0)).map(String::as_str), Some("/dev/vda"));
        let e = parse_blkio(
            "254:0 Read 4096\n254:0 Write 8192\n254:0 Total 12288\nTotal 12288\n",
            &devs,
        );
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].op.as_str(), e[0].device.as_str(), e[0].value),
            ("Read", "/dev/vda", 4096)
        );
        assert_eq!((e[1].major, e[1].minor, e[1].value), (254, 0, 8192));
        let s = parse_blkio("8:16 77\n", &devs);
        assert_eq!(
            (s[0].op.as_str(), s[0].device.as_str(), s[0].value),
            ("", "", 77)
        );
    }

    #[test]
    fn pids_max_is_zero_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pids.current"), "3\n").expect("write");
        std::fs::write(dir.path().join("pids.max"), "max\n").expect("write");
        let p = pids(dir.path()).expect("pids");
        assert_eq!((p.current, p.limit), (3, 0));
        std::fs::write(dir.path().join("pids.max"), "100\n").expect("write");
        assert_eq!(pids(dir.path()).expect("pids").limit, 100);
    }
}
