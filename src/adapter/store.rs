//! The metric store: the latest feed of every agent, indexed for queries and
//! swapped whole after each poll round.
//!
//! Every value keeps its sample time. A query never sees a value older than
//! `max_age`: a pod whose agent stopped answering drops out instead of
//! showing an old number.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::feed::NodeFeed;
use crate::gpu::model::GpuProfile;

/// The metrics the API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// `nvidia_gpu_utilization_percent`.
    Utilization,
    /// `nvidia_gpu_memory_utilization_percent`.
    MemoryUtilization,
    /// `nvidia_gpu_memory_used_bytes`.
    MemoryUsed,
    /// `nvidia_gpu_weighted_utilization_percent`: utilization × the GPU
    /// model's compute relative to an RTX 4090.
    WeightedUtilization,
}

impl Metric {
    /// Every metric, in discovery order.
    pub const ALL: [Metric; 4] =
        [Metric::Utilization, Metric::MemoryUtilization, Metric::MemoryUsed, Metric::WeightedUtilization];

    /// The metric's name on the API.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Utilization => "nvidia_gpu_utilization_percent",
            Metric::MemoryUtilization => "nvidia_gpu_memory_utilization_percent",
            Metric::MemoryUsed => "nvidia_gpu_memory_used_bytes",
            Metric::WeightedUtilization => "nvidia_gpu_weighted_utilization_percent",
        }
    }

    /// Looks a metric up by name.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether values add up across objects (bytes) rather than average
    /// (percentages).
    pub fn is_additive(self) -> bool {
        self == Metric::MemoryUsed
    }
}

/// The capacity of a GPU model relative to an RTX 4090; unknown models count
/// as 1.0 (weighted equals plain utilization).
pub fn relative_capacity(model: &str) -> f64 {
    GpuProfile::for_name(model).map_or(1.0, GpuProfile::relative_capacity)
}

/// One object's values at one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Values by [`Metric`] position in [`Metric::ALL`].
    pub values: [Option<f64>; 4],
    /// When the sample was taken.
    pub timestamp: SystemTime,
    /// The agent's sample interval (the value's window).
    pub window: Duration,
}

impl Sample {
    /// The value of one metric.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        let i = Metric::ALL.iter().position(|m| *m == metric).expect("every metric is in ALL");
        self.values[i]
    }
}

/// A pod's sample.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSample {
    /// Pod name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its values.
    pub sample: Sample,
}

/// A node's sample: its GPUs' mean (percentages) or sum (bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSample {
    /// Its values.
    pub sample: Sample,
    /// Summed relative capacity of its GPUs that answered, for pool means.
    pub capacity: f64,
    /// GPUs that answered.
    pub gpus_up: usize,
}

/// One poll round's view of every agent.
#[derive(Debug, Default)]
pub struct StoreView {
    /// Pods by namespace.
    pub pods: HashMap<String, Vec<PodSample>>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeSample>,
}

/// The latest view, read lock-free by queries.
#[derive(Debug)]
pub struct MetricStore {
    view: ArcSwap<StoreView>,
    /// `None`: three sample intervals of the sample's agent.
    max_age: Option<Duration>,
}

impl MetricStore {
    /// An empty store that refuses values older than `max_age` (by
    /// default, three of the sample's intervals).
    pub fn new(max_age: Option<Duration>) -> Self {
        Self { view: ArcSwap::from_pointee(StoreView::default()), max_age }
    }

    /// Replaces the view with one built from the agents' latest feeds.
    pub fn publish(&self, feeds: &[Arc<NodeFeed>]) {
        self.view.store(Arc::new(build_view(feeds)));
    }

    /// Replaces the view with one built elsewhere (the Prometheus source).
    pub fn publish_view(&self, view: StoreView) {
        self.view.store(Arc::new(view));
    }

    /// The current view.
    pub fn view(&self) -> Arc<StoreView> {
        self.view.load_full()
    }

    /// Whether a sample is young enough to serve at `now`.
    pub fn is_fresh(&self, sample: &Sample, now: SystemTime) -> bool {
        // A timestamp ahead of our clock (skew) counts as fresh, not negative.
        let max_age = self.max_age.unwrap_or(sample.window * 3);
        now.duration_since(sample.timestamp).map_or(true, |age| age <= max_age)
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Indexes feeds into pods by namespace and nodes by name.
pub fn build_view(feeds: &[Arc<NodeFeed>]) -> StoreView {
    let mut view = StoreView::default();
    for feed in feeds {
        let timestamp = UNIX_EPOCH + Duration::from_millis(feed.timestamp_ms);
        let window = Duration::from_millis(feed.interval_ms.max(1));
        let capacity_of: HashMap<&str, f64> =
            feed.gpus.iter().map(|g| (g.uuid.as_str(), relative_capacity(&g.model))).collect();

        for pod in &feed.pods {
            let capacity = mean(pod.gpus.iter().map(|u| capacity_of.get(u.as_str()).copied().unwrap_or(1.0)));
            let values = [
                pod.utilization_percent,
                pod.memory_utilization_percent,
                pod.memory_used_bytes.map(|b| b as f64),
                pod.utilization_percent.zip(capacity).map(|(u, c)| u * c),
            ];
            view.pods.entry(pod.namespace.clone()).or_default().push(PodSample {
                name: pod.pod.clone(),
                node: feed.node.clone(),
                sample: Sample { values, timestamp, window },
            });
        }

        let up: Vec<_> = feed.gpus.iter().filter(|g| g.up).collect();
        let capacity: f64 = up.iter().map(|g| relative_capacity(&g.model)).sum();
        let all = |f: fn(&crate::feed::FeedGpu) -> Option<f64>| up.iter().map(|g| f(g)).collect::<Option<Vec<f64>>>();
        let values = if up.is_empty() {
            [None; 4]
        } else {
            let utilization = all(|g| g.utilization_percent);
            [
                utilization.as_ref().and_then(|v| mean(v.iter().copied())),
                all(|g| g.memory_utilization_percent).and_then(|v| mean(v.into_iter())),
                all(|g| g.memory_used_bytes.map(|b| b as f64)).map(|v| v.iter().sum()),
                all(|g| g.utilization_percent.map(|u| u * relative_capacity(&g.model)))
                    .and_then(|v| mean(v.into_iter())),
            ]
        };
        view.nodes.insert(
            feed.node.clone(),
            NodeSample { sample: Sample { values, timestamp, window }, capacity, gpus_up: up.len() },
        );
    }
    for pods in view.pods.values_mut() {
        pods.sort_by(|a, b| a.name.cmp(&b.name));
    }
    view
}

#[cfg(test)]
mod tests;
