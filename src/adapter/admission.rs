//! What the adapter accepts from a source, and what it refuses.
//!
//! Every round of every source goes through here on its way into the
//! store, so the rules hold for the agents and for Prometheus alike:
//!
//! - **Node isolation** (NodeRestriction's principle): a node speaks only
//!   for pods the API places on it. An agent's node is the one the API gives
//!   for the polled agent pod, never the one its feed names.
//! - **One value per pod** (and per node): of two claims, the newer sample
//!   is kept and the other refused, whatever order the sources answered in.
//! - **Bounded time**: a sample more than [`MAX_CLOCK_SKEW`] ahead of our
//!   clock, or with an interval over [`MAX_INTERVAL`], is refused, so no
//!   value outlives its source.
//! - **Physical values**: a value outside its metric's range
//!   ([`Metric::in_range`]) is dropped; a wrong number is never served.
//! - **A budget** of pods per round across all feeds.
//!
//! Each refusal is counted by reason and logged once per source and reason.

use std::collections::HashSet;
use std::fmt::Display;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::store::{MetricValues, NodeSample, PodSample, Sample, StoreView};
use crate::family_writer::{FamilyWriter, Kind};
use crate::k8s::labels::{IndexedLabels, Placement};

/// How far ahead of our clock a sample may be (clock skew between nodes).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// The longest sample interval a source may announce.
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);

crate::label_value::label_value! {
    /// Why an item from a source was refused (the `reason` label).
    pub enum RejectReason: "reason" {
        /// The feed names a node other than the one the API gives for the agent.
        NodeMismatch = "node_mismatch",
        /// The API places the pod on another node.
        PodOnOtherNode = "pod_on_other_node",
        /// The API does not know the pod (or has not scheduled it).
        UnknownPod = "unknown_pod",
        /// Two sources spoke for the same pod or node this round; the newer
        /// sample is kept (the first on a tie, sources go in a fixed order).
        Duplicate = "duplicate",
        /// The sample is dated in the future beyond the allowed skew.
        FutureTimestamp = "future_timestamp",
        /// The announced sample interval is 0 or too long.
        BadInterval = "bad_interval",
        /// A value outside its metric's physical range.
        ValueOutOfRange = "value_out_of_range",
        /// The round's pod budget was spent.
        RoundBudget = "round_budget",
    }
}

/// Refusals counted by reason, and which (source, reason) pairs were logged.
#[derive(Debug)]
pub struct Rejections {
    counts: [AtomicU64; RejectReason::ALL.len()],
    logged: Mutex<HashSet<(String, RejectReason)>>,
}

impl Default for Rejections {
    fn default() -> Self {
        Self { counts: std::array::from_fn(|_| AtomicU64::new(0)), logged: Mutex::default() }
    }
}

impl Rejections {
    /// Counts `items` refused from `source` for `reason`, logging the first
    /// refusal of each source and reason with `detail`.
    pub fn record(&self, source: &str, reason: RejectReason, items: u64, detail: impl Display) {
        self.counts[reason as usize].fetch_add(items, Ordering::Relaxed);
        let first = self.logged.lock().unwrap_or_else(|e| e.into_inner()).insert((source.to_string(), reason));
        if first {
            tracing::warn!(
                source,
                reason = reason.as_str(),
                items,
                "refused a source's items: {detail} (logged once per source and reason)"
            );
        }
    }

    /// Items refused so far for `reason`.
    pub fn count(&self, reason: RejectReason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    /// Writes `kube_gpu_metrics_adapter_feed_items_rejected_total`.
    pub fn write_metrics(&self, w: &mut FamilyWriter) {
        w.family(
            "kube_gpu_metrics_adapter_feed_items_rejected",
            "Items from agents or Prometheus the adapter refused, by reason",
            Kind::Counter,
        );
        for reason in RejectReason::ALL {
            w.series(&[reason.label()], self.count(*reason));
        }
    }
}

/// A sample time from milliseconds since the epoch, refused when it lies
/// more than [`MAX_CLOCK_SKEW`] ahead of `now`.
pub fn sample_time(timestamp_ms: u64, now: SystemTime) -> Result<SystemTime, RejectReason> {
    let time = UNIX_EPOCH.checked_add(Duration::from_millis(timestamp_ms)).ok_or(RejectReason::FutureTimestamp)?;
    match time.duration_since(now) {
        Ok(ahead) if ahead > MAX_CLOCK_SKEW => Err(RejectReason::FutureTimestamp),
        _ => Ok(time),
    }
}

/// A sample window from an announced interval, refused when 0 or over
/// [`MAX_INTERVAL`].
pub fn sample_window(interval: Duration) -> Result<Duration, RejectReason> {
    if interval.is_zero() || interval > MAX_INTERVAL { Err(RejectReason::BadInterval) } else { Ok(interval) }
}

/// One round's admission: items go in one by one, checked, and come out as
/// a [`StoreView`].
pub struct Admission<'a> {
    view: StoreView,
    rejections: &'a Rejections,
    pods_left: usize,
}

impl<'a> Admission<'a> {
    /// A round checked against `labels` (and their placements), admitting at
    /// most `pod_budget` pods.
    pub fn new(labels: Arc<IndexedLabels>, rejections: &'a Rejections, pod_budget: usize) -> Self {
        Self { view: StoreView { labels, ..StoreView::default() }, rejections, pods_left: pod_budget }
    }

    /// The labels the round is checked against.
    pub fn labels(&self) -> &IndexedLabels {
        &self.view.labels
    }

    /// Refuses `items` from `source` for `reason`.
    pub fn reject(&self, source: &str, reason: RejectReason, items: usize, detail: impl Display) {
        self.rejections.record(source, reason, items as u64, detail);
    }

    /// Takes `pods` pods from the round's budget, or refuses them all.
    pub fn take_budget(&mut self, source: &str, pods: usize) -> bool {
        if pods > self.pods_left {
            self.reject(
                source,
                RejectReason::RoundBudget,
                pods,
                format_args!("{pods} pods over the round's remaining budget of {} (--max-round-pods)", self.pods_left),
            );
            return false;
        }
        self.pods_left -= pods;
        true
    }

    /// `values` without those outside their range; `object` names what they
    /// describe in the log line (formatted only on a refusal).
    fn checked(&self, source: &str, object: std::fmt::Arguments<'_>, values: MetricValues) -> MetricValues {
        let mut checked = values;
        for (metric, value) in values.iter() {
            if let Some(v) = value.filter(|v| !metric.in_range(*v)) {
                self.reject(
                    source,
                    RejectReason::ValueOutOfRange,
                    1,
                    format_args!("{} = {v} for {object} is outside its range", metric.name()),
                );
                checked.set(metric, None);
            }
        }
        checked
    }

    /// Admits a pod's values, as spoken for by `node` through `source`.
    pub fn pod(
        &mut self,
        source: &str,
        node: &Arc<str>,
        namespace: &str,
        name: &str,
        values: MetricValues,
        sample: SampleTime,
    ) {
        match self.view.labels.placement(namespace, name) {
            Placement::Unchecked => {}
            Placement::On(placed) if placed == &**node => {}
            Placement::On(placed) => {
                return self.reject(
                    source,
                    RejectReason::PodOnOtherNode,
                    1,
                    format_args!("node {node} claimed {namespace}/{name}, which runs on {placed}"),
                );
            }
            Placement::Unknown => {
                return self.reject(
                    source,
                    RejectReason::UnknownPod,
                    1,
                    format_args!("node {node} claimed {namespace}/{name}, which the API does not place on any node"),
                );
            }
        }
        let values = self.checked(source, format_args!("pod {namespace}/{name}"), values);
        if values.is_empty() {
            return;
        }
        let pods = self.view.pods.entry(namespace.to_string()).or_default();
        if let Some(first) = pods.get(name) {
            let first_node = first.node.clone();
            let newer = sample.timestamp > first.sample.timestamp;
            self.rejections.record(
                source,
                RejectReason::Duplicate,
                1,
                format_args!("node {node} and node {first_node} both claimed {namespace}/{name}"),
            );
            if !newer {
                return;
            }
        }
        let sample = Sample { values, timestamp: sample.timestamp, window: sample.window };
        pods.insert(name.to_string(), PodSample { node: node.clone(), sample });
    }

    /// Admits a node's values.
    pub fn node(
        &mut self,
        source: &str,
        node: &str,
        values: MetricValues,
        sample: SampleTime,
        capacity: f64,
        gpus_up: usize,
    ) {
        let values = self.checked(source, format_args!("node {node}"), values);
        if let Some(first) = self.view.nodes.get(node) {
            let newer = sample.timestamp > first.sample.timestamp;
            self.reject(source, RejectReason::Duplicate, 1, format_args!("two sources spoke for node {node}"));
            if !newer {
                return;
            }
        }
        let sample = Sample { values, timestamp: sample.timestamp, window: sample.window };
        self.view.nodes.insert(node.to_string(), NodeSample { sample, capacity, gpus_up });
    }

    /// The admitted view.
    pub fn finish(self) -> StoreView {
        self.view
    }
}

/// When a sample was taken and the interval it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleTime {
    /// When.
    pub timestamp: SystemTime,
    /// The window.
    pub window: Duration,
}
