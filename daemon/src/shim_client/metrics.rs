//! One cgroup sample of a task, decoded from the metrics its shim reports (cgroup v1 or
//! v2) into version-neutral figures that stats and metrics are built from.

use berth_proto::protobuf::Message;

use crate::error::{Error, Result};

/// What one cgroup reported. Summable: a pod's sample is its tasks' sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub cpu_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub cfs_periods: u64,
    pub cfs_throttled_periods: u64,
    pub cfs_throttled_ns: u64,
    pub memory_usage: u64,
    /// usage minus inactive file pages (what the kubelet evicts on).
    pub working_set: u64,
    pub rss: u64,
    pub cache: u64,
    pub mapped_file: u64,
    pub kernel: u64,
    pub max_usage: u64,
    pub failcnt: u64,
    pub swap: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub oom_events: u64,
    /// Tasks (threads) in the cgroup, and their limit (0: none).
    pub pids: u64,
    pub pids_limit: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

fn op_sum(entries: &[berth_proto::cgroups::metrics::BlkIOEntry], op: &str) -> u64 {
    entries
        .iter()
        .filter(|e| e.op.eq_ignore_ascii_case(op))
        .map(|e| e.value)
        .sum()
}

/// How much of a task's cgroup a Stats call reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Every figure (the metrics endpoint, pod stats: processes, I/O, throttling).
    Full,
    /// CPU time and memory only, what CRI's ContainerStats carries: the shim reads 3
    /// cgroup files instead of up to 80 (ListContainerStats, every few seconds for every
    /// container of the node).
    Cri,
}

impl Sample {
    /// Decodes the `Any` a shim's Stats call returns.
    pub fn decode(type_url: &str, bytes: &[u8]) -> Result<Sample> {
        let bad = |e: berth_proto::protobuf::Error| Error::Internal(format!("decode metrics: {e}"));
        let mut s = Sample::default();
        if type_url.ends_with("io.containerd.cgroups.v1.Metrics") {
            let m = berth_proto::cgroups::metrics::Metrics::parse_from_bytes(bytes).map_err(bad)?;
            if let Some(cpu) = m.cpu.as_ref() {
                s.cpu_ns = cpu.usage.total;
                s.cpu_user_ns = cpu.usage.user;
                s.cpu_system_ns = cpu.usage.kernel;
                s.cfs_periods = cpu.throttling.periods;
                s.cfs_throttled_periods = cpu.throttling.throttled_periods;
                s.cfs_throttled_ns = cpu.throttling.throttled_time;
            }
            if let Some(mem) = m.memory.as_ref() {
                s.memory_usage = mem.usage.usage;
                s.working_set = mem.usage.usage.saturating_sub(mem.total_inactive_file);
                s.rss = mem.total_rss;
                s.cache = mem.total_cache;
                s.mapped_file = mem.total_mapped_file;
                s.kernel = mem.kernel.usage;
                s.max_usage = mem.usage.max;
                s.failcnt = mem.usage.failcnt;
                s.swap = mem.swap.usage.saturating_sub(mem.usage.usage);
                s.page_faults = mem.total_pg_fault;
                s.major_page_faults = mem.total_pg_maj_fault;
            }
            s.oom_events = m
                .memory_oom_control
                .as_ref()
                .map(|o| o.oom_kill)
                .unwrap_or(0);
            if let Some(p) = m.pids.as_ref() {
                (s.pids, s.pids_limit) = (p.current, p.limit);
            }
            if let Some(b) = m.blkio.as_ref() {
                s.read_bytes = op_sum(&b.io_service_bytes_recursive, "read");
                s.write_bytes = op_sum(&b.io_service_bytes_recursive, "write");
                s.reads = op_sum(&b.io_serviced_recursive, "read");
                s.writes = op_sum(&b.io_serviced_recursive, "write");
            }
        } else if type_url.ends_with("io.containerd.cgroups.v2.Metrics") {
            let m =
                berth_proto::cgroups_v2::metrics::Metrics::parse_from_bytes(bytes).map_err(bad)?;
            if let Some(cpu) = m.cpu.as_ref() {
                s.cpu_ns = cpu.usage_usec * 1000;
                s.cpu_user_ns = cpu.user_usec * 1000;
                s.cpu_system_ns = cpu.system_usec * 1000;
                s.cfs_periods = cpu.nr_periods;
                s.cfs_throttled_periods = cpu.nr_throttled;
                s.cfs_throttled_ns = cpu.throttled_usec * 1000;
            }
            if let Some(mem) = m.memory.as_ref() {
                s.memory_usage = mem.usage;
                s.working_set = mem.usage.saturating_sub(mem.inactive_file);
                s.rss = mem.anon;
                s.cache = mem.file;
                s.mapped_file = mem.file_mapped;
                s.kernel = mem.kernel_stack + mem.slab;
                s.max_usage = mem.max_usage;
                s.swap = mem.swap_usage;
                s.page_faults = mem.pgfault;
                s.major_page_faults = mem.pgmajfault;
            }
            if let Some(ev) = m.memory_events.as_ref() {
                s.failcnt = ev.max;
                s.oom_events = ev.oom_kill;
            }
            if let Some(p) = m.pids.as_ref() {
                (s.pids, s.pids_limit) = (p.current, p.limit);
            }
            if let Some(io) = m.io.as_ref() {
                for e in &io.usage {
                    s.read_bytes += e.rbytes;
                    s.write_bytes += e.wbytes;
                    s.reads += e.rios;
                    s.writes += e.wios;
                }
            }
        } else {
            return Err(Error::Internal(format!("unknown metrics type {type_url}")));
        }
        Ok(s)
    }

    /// Adds another task's figures (a limit is not a sum: the larger one is kept).
    pub fn add(&mut self, o: &Sample) {
        self.cpu_ns += o.cpu_ns;
        self.cpu_user_ns += o.cpu_user_ns;
        self.cpu_system_ns += o.cpu_system_ns;
        self.cfs_periods += o.cfs_periods;
        self.cfs_throttled_periods += o.cfs_throttled_periods;
        self.cfs_throttled_ns += o.cfs_throttled_ns;
        self.memory_usage += o.memory_usage;
        self.working_set += o.working_set;
        self.rss += o.rss;
        self.cache += o.cache;
        self.mapped_file += o.mapped_file;
        self.kernel += o.kernel;
        self.max_usage += o.max_usage;
        self.failcnt += o.failcnt;
        self.swap += o.swap;
        self.page_faults += o.page_faults;
        self.major_page_faults += o.major_page_faults;
        self.oom_events += o.oom_events;
        self.pids += o.pids;
        self.pids_limit = self.pids_limit.max(o.pids_limit);
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.reads += o.reads;
        self.writes += o.writes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::cgroups::metrics as v1;

    #[test]
    fn v1_metrics_decode() {
        let mut m = v1::Metrics::new();
        let mut cpu = v1::CPUStat::new();
        cpu.usage.mut_or_insert_default().total = 7;
        cpu.throttling.mut_or_insert_default().throttled_periods = 2;
        m.cpu = Some(cpu).into();
        let mut mem = v1::MemoryStat::new();
        mem.usage.mut_or_insert_default().usage = 100;
        mem.swap.mut_or_insert_default().usage = 130;
        mem.total_inactive_file = 40;
        m.memory = Some(mem).into();
        let mut oom = v1::MemoryOomControl::new();
        oom.oom_kill = 1;
        m.memory_oom_control = Some(oom).into();
        let bytes = m.write_to_bytes().unwrap();
        let s = Sample::decode("io.containerd.cgroups.v1.Metrics", &bytes).unwrap();
        assert_eq!(
            (
                s.cpu_ns,
                s.cfs_throttled_periods,
                s.working_set,
                s.swap,
                s.oom_events
            ),
            (7, 2, 60, 30, 1)
        );
        let mut t = s;
        t.add(&s);
        assert_eq!(t.cpu_ns, 14);
        assert!(Sample::decode("other", &bytes).is_err());
    }
}
