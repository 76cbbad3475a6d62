//! Prometheus metrics: what podckptd passes through and answers, by method
//! and gRPC code, and how long it takes; inside the pod calls, how long pods
//! stay frozen, how long verification takes and how much is written; what is
//! paused and under way now. Served on a listener of their own (`server`),
//! off unless configured.

pub mod server;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::proxy::code_name;

/// A client chooses the method path it sends; past this many distinct ones
/// the rest count as "other", so that no client can grow the metrics
/// without bound. The CRI has about 50.
const METHODS_MAX: usize = 128;
const OTHER: &str = "other";

/// CRI calls take from about 100 µs (Version) to minutes (a slow image pull
/// or exec): the buckets span both.
const CALL_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// A pod call takes from a fraction of a second to its deadline.
const POD_CALL_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// A freeze or a verification: from milliseconds (a sealed checkpoint, a
/// small pod) to minutes (tens of GiB of memory).
const STEP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    passthrough_calls: Family<CallLabels, Counter>,
    passthrough_seconds: Family<MethodLabels, Histogram>,
    pod_calls: Family<CallLabels, Counter>,
    pod_call_seconds: Family<MethodLabels, Histogram>,
    pod_calls_in_progress: Family<MethodLabels, Gauge>,
    freeze_seconds: Histogram,
    verification_seconds: Histogram,
    written_bytes: Histogram,
    paused_containers: Gauge,
    runtime_reconnects: Counter,
    journal_recovered: Counter,
    methods: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let passthrough_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "podckpt_passthrough_calls",
            "CRI calls passed through to the runtime, by method and the gRPC code the caller got (\"none\": the stream ended without one)",
            passthrough_calls.clone(),
        );
        let passthrough_seconds =
            Family::<MethodLabels, Histogram>::new_with_constructor(|| Histogram::new(CALL_BUCKETS));
        registry.register(
            "podckpt_passthrough_call_duration_seconds",
            "Time from a passed-through call's arrival to the end of its answer, by method",
            passthrough_seconds.clone(),
        );
        let pod_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "podckpt_pod_calls",
            "Calls podckptd answers itself (CheckpointPod, RestorePod, and its own pre-flight CheckPod), by method and gRPC code",
            pod_calls.clone(),
        );
        let pod_call_seconds =
            Family::<MethodLabels, Histogram>::new_with_constructor(|| Histogram::new(POD_CALL_BUCKETS));
        registry.register(
            "podckpt_pod_call_duration_seconds",
            "Total time of the calls podckptd answers itself, by method",
            pod_call_seconds.clone(),
        );
        let pod_calls_in_progress = Family::<MethodLabels, Gauge>::default();
        // Shown at 0 from the start, not only after the first call.
        for method in [crate::api::CHECKPOINT_POD_PATH, crate::api::RESTORE_POD_PATH] {
            let _ = pod_calls_in_progress.get_or_create(&MethodLabels { method: method.into() });
        }
        registry.register(
            "podckpt_pod_calls_in_progress",
            "CheckpointPod and RestorePod calls under way, by method; one whose caller has gone runs on to its end",
            pod_calls_in_progress.clone(),
        );
        let freeze_seconds = Histogram::new(STEP_BUCKETS);
        registry.register(
            "podckpt_checkpoint_freeze_duration_seconds",
            "How long CheckpointPod kept a pod's processes stopped: from the first container paused to the last resumed",
            freeze_seconds.clone(),
        );
        let verification_seconds = Histogram::new(STEP_BUCKETS);
        registry.register(
            "podckpt_restore_verification_duration_seconds",
            "How long RestorePod took to verify a checkpoint against its manifest, whether it passed or not (short when it was sealed on this node)",
            verification_seconds.clone(),
        );
        // 1 MiB to 256 GiB, by fours.
        let written_bytes = Histogram::new(exponential_buckets(1048576.0, 4.0, 10));
        registry.register(
            "podckpt_checkpoint_written_bytes",
            "Bytes each committed checkpoint holds, written by CheckpointPod",
            written_bytes.clone(),
        );
        let paused_containers = Gauge::default();
        registry.register(
            "podckpt_paused_containers",
            "Containers podckptd has paused and not yet resumed; above 0 outside a checkpoint, a container could not be resumed",
            paused_containers.clone(),
        );
        let runtime_reconnects = Counter::default();
        registry.register(
            "podckpt_runtime_reconnects",
            "Times the pass-through connection to the runtime was lost and dialed again",
            runtime_reconnects.clone(),
        );
        let journal_recovered = Counter::default();
        registry.register(
            "podckpt_journal_recovered_entries",
            "Checkpoints a previous podckptd left under way (containers paused, or a half-written output), found in its journal at start and undone",
            journal_recovered.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                passthrough_calls,
                passthrough_seconds,
                pod_calls,
                pod_call_seconds,
                pod_calls_in_progress,
                freeze_seconds,
                verification_seconds,
                written_bytes,
                paused_containers,
                runtime_reconnects,
                journal_recovered,
                methods: Mutex::new(HashSet::new()),
            }),
        }
    }
}

/// Counts containers as paused until it is dropped or told which stayed so.
#[must_use]
pub struct PausedContainers {
    gauge: Gauge,
    count: i64,
}

impl PausedContainers {
    /// The containers that could not be resumed really are still paused (the
    /// journal resumes them when podckptd next starts): they stay counted.
    pub fn still_paused(mut self, count: usize) {
        let kept = (count as i64).min(self.count);
        self.count -= kept;
    }
}

impl Drop for PausedContainers {
    fn drop(&mut self) {
        // A checkpoint that panicked between pause and resume resumed
        // nothing: its containers stay paused until the next daemon's
        // journal recovery, and stay counted.
        if !std::thread::panicking() {
            self.gauge.dec_by(self.count);
        }
    }
}

/// Counts a pod call as in progress until it is dropped.
#[must_use]
pub struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts one call: `own` for the pod calls podckptd answers itself;
    /// `code` the gRPC code its caller got, if the stream carried one.
    pub fn record(&self, method: &str, own: bool, code: Option<Code>, elapsed: Duration) {
        let method = self.bounded(method);
        let code = code.map_or("none", code_name);
        let seconds = elapsed.as_secs_f64();
        let (calls, durations) = if own {
            (&self.inner.pod_calls, &self.inner.pod_call_seconds)
        } else {
            (&self.inner.passthrough_calls, &self.inner.passthrough_seconds)
        };
        durations
            .get_or_create(&MethodLabels { method: method.clone() })
            .observe(seconds);
        calls.get_or_create(&CallLabels { method, code }).inc();
    }

    /// A pod call under way, counted until the guard is dropped.
    pub fn in_progress(&self, method: &str) -> InProgress {
        let gauge = self
            .inner
            .pod_calls_in_progress
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .clone();
        gauge.inc();
        InProgress(gauge)
    }

    /// `count` containers about to be paused.
    pub fn pausing(&self, count: usize) -> PausedContainers {
        let gauge = self.inner.paused_containers.clone();
        gauge.inc_by(count as i64);
        PausedContainers {
            gauge,
            count: count as i64,
        }
    }

    pub fn observe_freeze(&self, window: Duration) {
        self.inner.freeze_seconds.observe(window.as_secs_f64());
    }

    pub fn observe_verification(&self, took: Duration) {
        self.inner.verification_seconds.observe(took.as_secs_f64());
    }

    pub fn observe_written(&self, bytes: u64) {
        self.inner.written_bytes.observe(bytes as f64);
    }

    pub fn runtime_reconnected(&self) {
        self.inner.runtime_reconnects.inc();
    }

    pub fn journal_recovered(&self, entries: usize) {
        self.inner.journal_recovered.inc_by(entries as u64);
    }

    /// `method`, or "other" once `METHODS_MAX` others have been seen.
    fn bounded(&self, method: &str) -> String {
        let mut methods = self.inner.methods.lock().unwrap_or_else(|p| p.into_inner());
        if methods.contains(method) {
            return method.to_owned();
        }
        if methods.len() < METHODS_MAX {
            methods.insert(method.to_owned());
            return method.to_owned();
        }
        OTHER.to_owned()
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_method_and_code_with_their_times() {
        let metrics = Metrics::default();
        let version = "/runtime.v1.RuntimeService/Version";
        for _ in 0..3 {
            metrics.record(version, false, Some(Code::Ok), Duration::from_micros(300));
        }
        metrics.record("/x/Status", false, Some(Code::NotFound), Duration::from_millis(2));
        metrics.record(
            "/x/CheckpointPod",
            true,
            Some(Code::FailedPrecondition),
            Duration::from_secs(1),
        );
        metrics.record("/x/Cut", false, None, Duration::from_millis(1));
        let text = metrics.encode();
        for line in [
            r#"podckpt_passthrough_calls_total{method="/runtime.v1.RuntimeService/Version",code="OK"} 3"#,
            r#"podckpt_passthrough_calls_total{method="/x/Status",code="NOT_FOUND"} 1"#,
            r#"podckpt_passthrough_calls_total{method="/x/Cut",code="none"} 1"#,
            r#"podckpt_pod_calls_total{method="/x/CheckpointPod",code="FAILED_PRECONDITION"} 1"#,
            r#"podckpt_passthrough_call_duration_seconds_count{method="/runtime.v1.RuntimeService/Version"} 3"#,
            r#"podckpt_passthrough_call_duration_seconds_bucket{le="0.0005",method="/runtime.v1.RuntimeService/Version"} 3"#,
            r#"podckpt_pod_call_duration_seconds_sum{method="/x/CheckpointPod"} 1.0"#,
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn paused_containers_return_to_zero_unless_they_stayed_paused() {
        let metrics = Metrics::default();
        let paused = |metrics: &Metrics| {
            let text = metrics.encode();
            text.lines()
                .find_map(|l| l.strip_prefix("podckpt_paused_containers "))
                .map(str::to_owned)
        };
        {
            let _first = metrics.pausing(3);
            let second = metrics.pausing(2);
            assert_eq!(paused(&metrics).as_deref(), Some("5"));
            second.still_paused(0);
            assert_eq!(paused(&metrics).as_deref(), Some("3"));
        }
        assert_eq!(paused(&metrics).as_deref(), Some("0"));
        metrics.pausing(4).still_paused(1);
        assert_eq!(paused(&metrics).as_deref(), Some("1"), "one could not be resumed");

        let running = metrics.in_progress("/x/RestorePod");
        assert!(
            metrics
                .encode()
                .contains(r#"podckpt_pod_calls_in_progress{method="/x/RestorePod"} 1"#)
        );
        drop(running);
        assert!(
            metrics
                .encode()
                .contains(r#"podckpt_pod_calls_in_progress{method="/x/RestorePod"} 0"#)
        );
    }

    #[test]
    fn no_client_can_grow_the_methods_without_bound() {
        let metrics = Metrics::default();
        for n in 0..METHODS_MAX + 10 {
            metrics.record(&format!("/junk/{n}"), false, Some(Code::Unimplemented), Duration::ZERO);
        }
        let text = metrics.encode();
        assert!(
            text.contains(r#"podckpt_passthrough_calls_total{method="other",code="UNIMPLEMENTED"} 10"#),
            "{text}"
        );
        assert_eq!(
            text.matches("podckpt_passthrough_calls_total{").count(),
            METHODS_MAX + 1
        );
    }
}
