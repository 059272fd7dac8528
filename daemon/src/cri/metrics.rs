//! ListMetricDescriptors / ListPodSandboxMetrics: the cAdvisor-named metrics kubelet's
//! `/metrics/cadvisor` serves when it takes pod and container stats from the runtime
//! (PodAndContainerStatsFromCRI), computed from the same samples as the stats calls.

use k8s_cri::v1::{
    ContainerMetrics, Metric, MetricDescriptor, MetricType, PodSandboxMetrics, UInt64Value,
};

use crate::container::stats::Sample;
use crate::pod::stats::PodSample;
use crate::pod::PodRecord;

/// (name, help, counter?, value of a sample). Labels: container, id, image, name, namespace, pod.
/// A metric read from a sample: (name, help, is a counter, its value).
type SampleMetric = (&'static str, &'static str, bool, fn(&Sample) -> u64);

const SAMPLE_METRICS: &[SampleMetric] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in nanoseconds.",
        true,
        |s| s.cpu_ns,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        false,
        |s| s.memory_usage,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        false,
        |s| s.working_set,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        false,
        |s| s.rss,
    ),
    (
        "container_memory_failures_total",
        "Cumulative count of page faults.",
        true,
        |s| s.page_faults,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        false,
        |s| s.pids,
    ),
];

const LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];
const NET_LABELS: [&str; 2] = ["interface", "pod"];
const NET_METRICS: [(&str, &str); 4] = [
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
    ),
];

fn metric_type(counter: bool) -> i32 {
    if counter {
        MetricType::Counter as i32
    } else {
        MetricType::Gauge as i32
    }
}

pub fn descriptors() -> Vec<MetricDescriptor> {
    let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    SAMPLE_METRICS
        .iter()
        .map(|(name, help, _, _)| MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: labels(&LABELS),
        })
        .chain(NET_METRICS.iter().map(|(name, help)| MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: labels(&NET_LABELS),
        }))
        .collect()
}

fn sample_metrics(s: &Sample, labels: &[String], now: i64) -> Vec<Metric> {
    SAMPLE_METRICS
        .iter()
        .map(|(name, _, counter, get)| Metric {
            name: name.to_string(),
            timestamp: now,
            metric_type: metric_type(*counter),
            label_values: labels.to_vec(),
            value: Some(UInt64Value { value: get(s) }),
        })
        .collect()
}

/// One pod's metrics: pod-level totals and network, then each running container's.
pub fn pod_metrics(
    rec: &PodRecord,
    s: &PodSample,
    images: &[(String, String)],
    now: i64,
) -> PodSandboxMetrics {
    let md = rec.config.metadata.clone().unwrap_or_default();
    let mut metrics = Vec::new();
    if let Some(total) = &s.total {
        let labels = ["POD", &rec.id, "", &rec.id, &md.namespace, &md.name].map(String::from);
        metrics.extend(sample_metrics(total, &labels, now));
    }
    for i in &s.ifaces {
        for (j, (name, _)) in NET_METRICS.iter().enumerate() {
            let value = [i.rx_bytes, i.rx_errors, i.tx_bytes, i.tx_errors][j];
            metrics.push(Metric {
                name: name.to_string(),
                timestamp: now,
                metric_type: MetricType::Counter as i32,
                label_values: vec![i.name.clone(), md.name.clone()],
                value: Some(UInt64Value { value }),
            });
        }
    }
    let container_metrics = s
        .containers
        .iter()
        .filter_map(|(stats, sample)| {
            let sample = sample.as_ref()?;
            let a = stats.attributes.as_ref()?;
            let cname = a
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            let image = images
                .iter()
                .find(|(id, _)| *id == a.id)
                .map(|(_, i)| i.clone())
                .unwrap_or_default();
            let labels = [
                cname,
                a.id.clone(),
                image,
                a.id.clone(),
                md.namespace.clone(),
                md.name.clone(),
            ];
            Some(ContainerMetrics {
                container_id: a.id.clone(),
                metrics: sample_metrics(sample, &labels, now),
            })
        })
        .collect();
    PodSandboxMetrics {
        pod_sandbox_id: rec.id.clone(),
        metrics,
        container_metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_a_descriptor_with_matching_labels() {
        let d = descriptors();
        let rec = PodRecord {
            id: "p1".into(),
            name_key: "k".into(),
            config: Default::default(),
            runtime_handler: String::new(),
            state: crate::pod::PodState::Ready,
            created_at: 0,
            bundle: "/b".into(),
            files: "/f".into(),
            netns: None,
            ips: vec![],
            pid: 1,
            shim_address: String::new(),
        };
        let s = PodSample {
            total: Some(Sample {
                cpu_ns: 5,
                ..Default::default()
            }),
            ifaces: vec![crate::pod::stats::IfaceCounters {
                name: "eth0".into(),
                rx_bytes: 1,
                rx_errors: 0,
                tx_bytes: 2,
                tx_errors: 0,
            }],
            containers: vec![],
        };
        let m = pod_metrics(&rec, &s, &[], 1);
        for metric in &m.metrics {
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
        let cpu = m
            .metrics
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.value.as_ref().unwrap().value, 5);
        assert_eq!(cpu.metric_type, MetricType::Counter as i32);
    }
}
