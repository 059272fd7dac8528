//! ListMetricDescriptors / ListPodSandboxMetrics: the cAdvisor-named metrics kubelet's
//! `/metrics/cadvisor` serves when it takes pod and container stats from the runtime
//! (PodAndContainerStatsFromCRI). Container metrics come from the same cgroup samples as
//! the stats calls plus what the host sees (processes, open files, the writable layer);
//! network metrics are the pod's (its network namespace). Time counters are in
//! nanoseconds and times in seconds since the epoch, as integers.

use berth_cri::v1::{
    ContainerMetrics, Metric, MetricDescriptor, MetricType, PodSandboxMetrics, UInt64Value,
};

use crate::container::stats::Extras;
use crate::pod::stats::IfaceCounters;
use crate::records::ContainerRecord;
use crate::records::PodRecord;
use crate::shim_client::Sample;

/// What a container metric is read from.
pub struct View<'a> {
    pub rec: &'a ContainerRecord,
    pub s: &'a Sample,
    pub x: &'a Extras,
    pub now_s: u64,
}

type Read = fn(&View<'_>) -> u64;

const COUNTER: bool = true;
const GAUGE: bool = false;

fn res(v: &View<'_>) -> crate::workload::Resources {
    v.rec.config.resources.clone().unwrap_or_default()
}

/// Container metrics: (name, help, counter?, value).
const CONTAINER: &[(&str, &str, bool, Read)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed (ns).",
        COUNTER,
        |v| v.s.cpu_ns,
    ),
    (
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed (ns).",
        COUNTER,
        |v| v.s.cpu_user_ns,
    ),
    (
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed (ns).",
        COUNTER,
        |v| v.s.cpu_system_ns,
    ),
    (
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        COUNTER,
        |v| v.s.cfs_periods,
    ),
    (
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        COUNTER,
        |v| v.s.cfs_throttled_periods,
    ),
    (
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled (ns).",
        COUNTER,
        |v| v.s.cfs_throttled_ns,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        GAUGE,
        |v| v.s.memory_usage,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        GAUGE,
        |v| v.s.working_set,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        GAUGE,
        |v| v.s.rss,
    ),
    (
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        GAUGE,
        |v| v.s.cache,
    ),
    (
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        GAUGE,
        |v| v.s.mapped_file,
    ),
    (
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
        GAUGE,
        |v| v.s.kernel,
    ),
    (
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
        GAUGE,
        |v| v.s.max_usage,
    ),
    (
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        COUNTER,
        |v| v.s.failcnt,
    ),
    (
        "container_memory_swap",
        "Container swap usage in bytes.",
        GAUGE,
        |v| v.s.swap,
    ),
    (
        "container_memory_failures_total",
        "Cumulative count of page faults.",
        COUNTER,
        |v| v.s.page_faults,
    ),
    (
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        COUNTER,
        |v| v.s.oom_events,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        GAUGE,
        |v| v.x.processes,
    ),
    (
        "container_threads",
        "Number of threads running inside the container.",
        GAUGE,
        |v| v.s.pids,
    ),
    (
        "container_threads_max",
        "Maximum number of threads allowed inside the container (0: no limit).",
        GAUGE,
        |v| v.s.pids_limit,
    ),
    (
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
        GAUGE,
        |v| v.x.fds,
    ),
    (
        "container_sockets",
        "Number of open sockets for the container.",
        GAUGE,
        |v| v.x.sockets,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes consumed by the container's writable layer.",
        GAUGE,
        |v| v.x.fs_usage,
    ),
    (
        "container_fs_limit_bytes",
        "Number of bytes the writable layer's filesystem can hold.",
        GAUGE,
        |v| v.x.fs_limit,
    ),
    (
        "container_fs_inodes_total",
        "Number of inodes of the writable layer's filesystem.",
        GAUGE,
        |v| v.x.fs_inodes_total,
    ),
    (
        "container_fs_inodes_free",
        "Number of free inodes of the writable layer's filesystem.",
        GAUGE,
        |v| v.x.fs_inodes_free,
    ),
    (
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read.",
        COUNTER,
        |v| v.s.read_bytes,
    ),
    (
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written.",
        COUNTER,
        |v| v.s.write_bytes,
    ),
    (
        "container_fs_reads_total",
        "Cumulative count of reads completed.",
        COUNTER,
        |v| v.s.reads,
    ),
    (
        "container_fs_writes_total",
        "Cumulative count of writes completed.",
        COUNTER,
        |v| v.s.writes,
    ),
    (
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        COUNTER,
        |v| v.s.read_bytes + v.s.write_bytes,
    ),
    (
        "container_spec_cpu_period",
        "CPU period of the container.",
        GAUGE,
        |v| res(v).cpu_period.max(0) as u64,
    ),
    (
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        GAUGE,
        |v| res(v).cpu_quota.max(0) as u64,
    ),
    (
        "container_spec_cpu_shares",
        "CPU share of the container.",
        GAUGE,
        |v| res(v).cpu_shares.max(0) as u64,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        GAUGE,
        |v| res(v).memory_limit_in_bytes.max(0) as u64,
    ),
    (
        "container_spec_memory_reservation_limit_bytes",
        "Memory reservation limit for the container.",
        GAUGE,
        |_| 0,
    ),
    (
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container.",
        GAUGE,
        |v| res(v).memory_swap_limit_in_bytes.max(0) as u64,
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        GAUGE,
        |v| (v.rec.started_at / 1_000_000_000).max(0) as u64,
    ),
    (
        "container_last_seen",
        "Last time a container was seen by the exporter.",
        GAUGE,
        |v| v.now_s,
    ),
];

const LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

/// Pod network metrics: (name, help, value).
type NetRead = fn(&IfaceCounters) -> u64;

const NETWORK: &[(&str, &str, NetRead)] = &[
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        |i| i.rx_bytes,
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        |i| i.rx_packets,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        |i| i.rx_errors,
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        |i| i.rx_dropped,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        |i| i.tx_bytes,
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        |i| i.tx_packets,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        |i| i.tx_errors,
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        |i| i.tx_dropped,
    ),
];

const NET_LABELS: [&str; 4] = ["interface", "name", "namespace", "pod"];

fn keys(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

pub fn descriptors() -> Vec<MetricDescriptor> {
    let c = CONTAINER.iter().map(|(name, help, _, _)| MetricDescriptor {
        name: name.to_string(),
        help: help.to_string(),
        label_keys: keys(&LABELS),
    });
    let n = NETWORK.iter().map(|(name, help, _)| MetricDescriptor {
        name: name.to_string(),
        help: help.to_string(),
        label_keys: keys(&NET_LABELS),
    });
    c.chain(n).collect()
}

fn metric(name: &str, counter: bool, labels: &[String], value: u64, now: i64) -> Metric {
    Metric {
        name: name.to_string(),
        timestamp: now,
        metric_type: if counter {
            MetricType::Counter as i32
        } else {
            MetricType::Gauge as i32
        },
        label_values: labels.to_vec(),
        value: Some(UInt64Value { value }),
    }
}

/// One running container's metrics.
pub fn container_metrics(pod: &PodRecord, v: &View<'_>, now: i64) -> ContainerMetrics {
    let md = &pod.config;
    let labels = [
        v.rec.config.name.clone(),
        v.rec.id.clone(),
        v.rec.image_name.clone(),
        v.rec.id.clone(),
        md.namespace.clone(),
        md.name.clone(),
    ];
    ContainerMetrics {
        container_id: v.rec.id.clone(),
        metrics: CONTAINER
            .iter()
            .map(|(n, _, counter, read)| metric(n, *counter, &labels, read(v), now))
            .collect(),
    }
}

/// One pod's metrics: its network interfaces' counters, and its containers'.
pub fn pod_metrics(
    pod: &PodRecord,
    ifaces: &[IfaceCounters],
    containers: Vec<ContainerMetrics>,
    now: i64,
) -> PodSandboxMetrics {
    let md = &pod.config;
    let mut metrics = Vec::new();
    for i in ifaces {
        let labels = [
            i.name.clone(),
            pod.id.clone(),
            md.namespace.clone(),
            md.name.clone(),
        ];
        for (n, _, read) in NETWORK {
            metrics.push(metric(n, true, &labels, read(i), now));
        }
    }
    PodSandboxMetrics {
        pod_sandbox_id: pod.id.clone(),
        metrics,
        container_metrics: containers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_a_descriptor_with_matching_labels() {
        let d = descriptors();
        let pod = PodRecord {
            id: "p1".into(),
            name_key: "k".into(),
            config: Default::default(),
            runtime_handler: String::new(),
            state: crate::records::PodState::Ready,
            created_at: 0,
            bundle: "/b".into(),
            files: "/f".into(),
            netns: None,
            network: String::new(),
            ips: vec![],
            pid: 1,
            shim_address: String::new(),
            op: None,
            stopped_at: 0,
            journal_seq: 0,
            pins: None,
            shm: None,
        };
        let rec = ContainerRecord {
            id: "c1".into(),
            pod_id: "p1".into(),
            name_key: "n".into(),
            config: Default::default(),
            image_name: "i".into(),
            image_id: "sha256:x".into(),
            state: crate::records::CtrState::Running,
            created_at: 0,
            started_at: 3_000_000_000,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            pid: 5,
            bundle: "/b".into(),
            dir: "/d".into(),
            log_path: String::new(),
            stop_signal: String::new(),
            user: None,
            op: None,
        };
        let s = Sample {
            cpu_ns: 5,
            ..Default::default()
        };
        let x = Extras::default();
        let v = View {
            rec: &rec,
            s: &s,
            x: &x,
            now_s: 9,
        };
        let c = container_metrics(&pod, &v, 1);
        let iface = IfaceCounters {
            name: "eth0".into(),
            rx_bytes: 1,
            ..Default::default()
        };
        let m = pod_metrics(&pod, &[iface], vec![c], 1);
        let all: Vec<&Metric> = m
            .metrics
            .iter()
            .chain(m.container_metrics.iter().flat_map(|c| &c.metrics))
            .collect();
        assert_eq!(all.len(), d.len(), "one metric per descriptor");
        for metric in all {
            let desc = d
                .iter()
                .find(|d| d.name == metric.name)
                .expect(&metric.name);
            assert_eq!(
                desc.label_keys.len(),
                metric.label_values.len(),
                "{}",
                metric.name
            );
        }
        let get = |n: &str| {
            m.container_metrics[0]
                .metrics
                .iter()
                .find(|x| x.name == n)
                .and_then(|x| x.value.as_ref())
                .map(|v| v.value)
        };
        assert_eq!(get("container_cpu_usage_seconds_total"), Some(5));
        assert_eq!(get("container_start_time_seconds"), Some(3));
        assert_eq!(get("container_last_seen"), Some(9));
    }
}
