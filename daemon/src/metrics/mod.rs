//! berthd's Prometheus metrics: one registry, built once at startup, and the handles each
//! service records into (a clone of a prometheus-client metric shares its value, so a
//! service owns its handles and nothing is global). Pods and containers by state are
//! counted from the records at scrape time (`Census`). CRI calls are measured in one
//! place, a tower layer on the gRPC server (`grpc`); `http` serves the text format when
//! `[metrics] address` is set.

mod grpc;
mod http;

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use grpc::{code_name, CriLayer};
pub use http::{bind, serve, Endpoint};
pub use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

/// CRI call latency buckets (seconds): a Version answers in well under a millisecond, a
/// RunPodSandbox takes tens of milliseconds, a stop with a grace period up to minutes.
const CALL_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];
/// Image pull duration buckets (seconds).
const PULL_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0,
];

type Labels = Vec<(&'static str, &'static str)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

fn pull_histogram() -> Histogram {
    Histogram::new(PULL_BUCKETS)
}

/// CRI calls by method and gRPC status code (recorded by [`CriLayer`]).
#[derive(Clone)]
pub struct CriMetrics {
    requests: Family<Labels, Counter>,
    duration: HistogramFamily,
}

impl CriMetrics {
    fn observe(&self, method: &'static str, code: &'static str, seconds: f64) {
        let labels = vec![("method", method), ("code", code)];
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }
}

/// What a startup recovery found and did, and the shims that died (settled by recovery).
#[derive(Clone, Default)]
pub struct RecoveryMetrics {
    /// How long the last startup recovery took (seconds).
    pub duration: Gauge<f64, AtomicU64>,
    pods: Family<Labels, Counter>,
    intents: Family<Labels, Counter>,
    /// Container exits that happened while berthd was down, replayed from the shims'
    /// journals.
    pub exits_replayed: Counter,
    /// Tasks, bundles, dirs and netns pins no record owned, removed at startup.
    pub orphans_removed: Counter,
    /// Pod shims found dead (at startup or while serving) and settled.
    pub shim_deaths: Counter,
}

/// What became of a recorded Ready pod at startup.
#[derive(Debug, Clone, Copy)]
pub enum PodOutcome {
    Reconnected,
    ShimGone,
    NotReady,
    /// A reboot ended it (`recovery::reboot`).
    Rebooted,
}

/// How an operation a crash cut was resolved at startup.
#[derive(Debug, Clone, Copy)]
pub enum IntentOutcome {
    /// Carried to its end (a stop, a removal, a start whose outcome the shim knew).
    Finished,
    /// Undone with everything it had made (a cut RunPodSandbox or CreateContainer).
    RolledBack,
    /// Could not be resolved (logged; retried at the next start).
    Failed,
}

impl RecoveryMetrics {
    pub fn pod(&self, outcome: PodOutcome) {
        let o = match outcome {
            PodOutcome::Reconnected => "reconnected",
            PodOutcome::ShimGone => "shim_gone",
            PodOutcome::NotReady => "not_ready",
            PodOutcome::Rebooted => "rebooted",
        };
        self.pods.get_or_create(&vec![("outcome", o)]).inc();
    }

    /// `op`: the cut operation's name ("run", "create", "start", "stop", "remove").
    pub fn intent(&self, op: &'static str, outcome: IntentOutcome) {
        let o = match outcome {
            IntentOutcome::Finished => "finished",
            IntentOutcome::RolledBack => "rolled_back",
            IntentOutcome::Failed => "failed",
        };
        self.intents
            .get_or_create(&vec![("op", op), ("outcome", o)])
            .inc();
    }
}

/// GetContainerEvents delivery.
#[derive(Clone, Default)]
pub struct EventMetrics {
    pub emitted: Counter,
    /// Events a subscriber's stream took.
    pub delivered: Counter,
    /// Events queued again for a later subscriber: one left before taking them, or
    /// berthd restarted before any client received them.
    pub redelivered: Counter,
    /// Events dropped from the full backlog while nobody subscribed.
    pub dropped: Counter,
}

/// Image pulls (PullImage and the sandbox image).
#[derive(Clone)]
pub struct PullMetrics {
    /// Bytes of blobs received from registries (also of pulls that failed later).
    pub bytes: Counter,
    /// Blob downloads resumed after the connection cut them.
    pub resumes: Counter,
    duration: HistogramFamily,
    errors: Family<Labels, Counter>,
}

impl PullMetrics {
    /// A pull ended: `Ok` or the gRPC code name of its error.
    pub fn finished(&self, seconds: f64, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.duration
            .get_or_create(&vec![("result", result)])
            .observe(seconds);
        if let Some(code) = error {
            self.errors.get_or_create(&vec![("code", code)]).inc();
        }
    }
}

/// Streaming (exec, attach, port-forward) sessions.
#[derive(Clone, Default)]
pub struct StreamMetrics {
    sessions: Family<Labels, Counter>,
    active: Family<Labels, Gauge>,
}

/// An open streaming session: counted while it lives.
pub struct SessionGuard {
    active: Gauge,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

impl StreamMetrics {
    /// A session of `kind` ("exec", "attach", "portforward") began over `protocol`
    /// ("spdy", "websocket"); it counts as open until the guard drops.
    pub fn session(&self, kind: &'static str, protocol: &'static str) -> SessionGuard {
        self.sessions
            .get_or_create(&vec![("kind", kind), ("protocol", protocol)])
            .inc();
        let active = self.active.get_or_create_owned(&vec![("kind", kind)]);
        active.inc();
        SessionGuard { active }
    }
}

/// Pods and containers by state, counted from the records when scraped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    pub pods: Vec<(&'static str, i64)>,
    pub containers: Vec<(&'static str, i64)>,
}

/// Reads the census (None: the records could not be read; the gauges are left out).
pub type CensusFn = Box<dyn Fn() -> Option<Census> + Send + Sync>;

struct CensusCollector(CensusFn);

impl std::fmt::Debug for CensusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CensusCollector")
    }
}

impl Collector for CensusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(c) = (self.0)() else {
            return Ok(());
        };
        for (name, help, by_state) in [
            ("berth_pods", "Pod sandboxes by state.", &c.pods),
            ("berth_containers", "Containers by state.", &c.containers),
        ] {
            let family = Family::<Labels, Gauge>::default();
            for (state, n) in by_state {
                family.get_or_create(&vec![("state", *state)]).set(*n);
            }
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        Ok(())
    }
}

/// The registry and every service's handles.
pub struct Metrics {
    registry: Registry,
    pub cri: CriMetrics,
    pub recovery: RecoveryMetrics,
    /// Pod shims berthd is connected to (one per pod not yet removed).
    pub shims_alive: Gauge,
    pub events: EventMetrics,
    pub pull: PullMetrics,
    pub streaming: StreamMetrics,
}

impl Metrics {
    pub fn new(census: CensusFn) -> Metrics {
        let mut r = Registry::default();
        let cri = CriMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(call_histogram),
        };
        r.register(
            "berth_cri_requests",
            "CRI calls answered, by method and gRPC status code",
            cri.requests.clone(),
        );
        r.register(
            "berth_cri_request_duration_seconds",
            "CRI call latency (for a stream: until it ends), by method and gRPC status code",
            cri.duration.clone(),
        );
        let recovery = RecoveryMetrics::default();
        r.register(
            "berth_recovery_duration_seconds",
            "How long the last startup recovery took, before CRI was served",
            recovery.duration.clone(),
        );
        r.register(
            "berth_recovery_pods",
            "Ready pods found at startup, by what became of them (reconnected, shim_gone, not_ready)",
            recovery.pods.clone(),
        );
        r.register(
            "berth_recovery_intents",
            "Operations a crash cut, resolved at startup: by operation and outcome (finished, rolled_back, failed)",
            recovery.intents.clone(),
        );
        r.register(
            "berth_recovery_exits_replayed",
            "Container exits that happened while berthd was down, replayed from the shims' journals",
            recovery.exits_replayed.clone(),
        );
        r.register(
            "berth_recovery_orphans_removed",
            "Leftovers no record owned (tasks, bundles, dirs, netns pins), removed at startup",
            recovery.orphans_removed.clone(),
        );
        r.register(
            "berth_shim_deaths",
            "Pod shims found dead (killed, crashed) and settled",
            recovery.shim_deaths.clone(),
        );
        let shims_alive = Gauge::default();
        r.register(
            "berth_shims_alive",
            "Pod shims berthd is connected to (one per pod until it is removed)",
            shims_alive.clone(),
        );
        let events = EventMetrics::default();
        r.register(
            "berth_events_emitted",
            "Container and pod lifecycle events emitted",
            events.emitted.clone(),
        );
        r.register(
            "berth_events_delivered",
            "Lifecycle events a GetContainerEvents stream took",
            events.delivered.clone(),
        );
        r.register(
            "berth_events_redelivered",
            "Lifecycle events queued again for the next subscriber (one left before taking them, or berthd restarted before any client received them)",
            events.redelivered.clone(),
        );
        r.register(
            "berth_events_dropped",
            "Lifecycle events dropped from the full backlog while no client subscribed",
            events.dropped.clone(),
        );
        let pull = PullMetrics {
            bytes: Counter::default(),
            resumes: Counter::default(),
            duration: Family::new_with_constructor(pull_histogram),
            errors: Family::default(),
        };
        r.register(
            "berth_image_pull_bytes",
            "Blob bytes received from registries",
            pull.bytes.clone(),
        );
        r.register(
            "berth_image_pull_resumes",
            "Blob downloads resumed (Range request) after the connection cut them",
            pull.resumes.clone(),
        );
        r.register(
            "berth_image_pull_duration_seconds",
            "Image pull duration, by result (ok, error)",
            pull.duration.clone(),
        );
        r.register(
            "berth_image_pull_errors",
            "Failed image pulls, by the gRPC code PullImage answers",
            pull.errors.clone(),
        );
        let streaming = StreamMetrics::default();
        r.register(
            "berth_streaming_sessions",
            "Streaming sessions begun, by kind (exec, attach, portforward) and protocol (spdy, websocket)",
            streaming.sessions.clone(),
        );
        r.register(
            "berth_streaming_sessions_active",
            "Streaming sessions open now, by kind",
            streaming.active.clone(),
        );
        r.register_collector(Box::new(CensusCollector(census)));
        Metrics {
            registry: r,
            cri,
            recovery,
            shims_alive,
            events,
            pull,
            streaming,
        }
    }

    /// Metrics for code that is not measured (unit tests): no census.
    pub fn detached() -> Metrics {
        Metrics::new(Box::new(|| None))
    }

    /// The layer that measures the CRI server's calls.
    pub fn cri_layer(&self) -> CriLayer {
        CriLayer::new(self.cri.clone())
    }

    /// Everything in the Prometheus text format (0.0.4), or OpenMetrics. Reads the
    /// records (the census): call it off the async workers.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        let r = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

#[cfg(test)]
mod tests;
