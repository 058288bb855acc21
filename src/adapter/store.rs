//! The metric store: one view of every pod's and node's values, built by a
//! source after each round (through [`super::admission`]) and swapped whole.
//!
//! A pod is keyed by namespace and name, so it holds one value by
//! construction. Every value keeps its sample time; a query never sees one
//! older than the max age.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::gpu::model::GpuProfile;
use crate::k8s::labels::IndexedLabels;

/// What a metric's values measure, which says how they aggregate and what
/// range is physical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// 0–100; objects average.
    Percent,
    /// ≥ 0; objects add up.
    Bytes,
}

macro_rules! metrics {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $unit:ident;)*) => {
        /// The metrics the API serves.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Metric {
            $($(#[$doc])* $variant,)*
        }

        impl Metric {
            /// Every metric, in discovery order.
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)*];

            /// The metric's name on the API.
            pub fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)*
                }
            }

            /// What its values measure.
            pub fn unit(self) -> Unit {
                match self {
                    $(Metric::$variant => Unit::$unit,)*
                }
            }
        }
    };
}

// Adding a metric is one line here; sources fill what they can measure.
metrics! {
    /// `nvidia_gpu_utilization_percent`.
    Utilization = "nvidia_gpu_utilization_percent", Percent;
    /// `nvidia_gpu_memory_utilization_percent`.
    MemoryUtilization = "nvidia_gpu_memory_utilization_percent", Percent;
    /// `nvidia_gpu_memory_used_bytes`.
    MemoryUsed = "nvidia_gpu_memory_used_bytes", Bytes;
    /// `nvidia_gpu_weighted_utilization_percent`: utilization × the GPU
    /// model's compute relative to an RTX 4090.
    WeightedUtilization = "nvidia_gpu_weighted_utilization_percent", Percent;
}

/// The largest magnitude a milli-precision Kubernetes `Quantity` carries
/// (an int64 of thousandths).
pub const QUANTITY_MAX: f64 = (i64::MAX / 1000) as f64;

impl Metric {
    /// Looks a metric up by name.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.iter().copied().find(|m| m.name() == name)
    }

    /// Whether values add up across objects (bytes) rather than average
    /// (percentages).
    pub fn is_additive(self) -> bool {
        self.unit() == Unit::Bytes
    }

    /// Whether `value` is physically possible for this metric and fits a
    /// `Quantity`: a wrong number is never served.
    pub fn in_range(self, value: f64) -> bool {
        value.is_finite()
            && match self.unit() {
                Unit::Percent => (0.0..=100.0).contains(&value),
                Unit::Bytes => (0.0..=QUANTITY_MAX).contains(&value),
            }
    }
}

/// One value per metric, keyed by [`Metric`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MetricValues([Option<f64>; Metric::ALL.len()]);

impl MetricValues {
    /// The value of one metric.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.0[metric as usize]
    }

    /// Sets the value of one metric.
    pub fn set(&mut self, metric: Metric, value: Option<f64>) {
        self.0[metric as usize] = value;
    }

    /// Values with `metric` set.
    pub fn with(mut self, metric: Metric, value: Option<f64>) -> Self {
        self.set(metric, value);
        self
    }

    /// Whether no metric has a value.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// Every metric with its value.
    pub fn iter(&self) -> impl Iterator<Item = (Metric, Option<f64>)> + '_ {
        Metric::ALL.iter().map(|m| (*m, self.get(*m)))
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
    /// The values.
    pub values: MetricValues,
    /// When the sample was taken.
    pub timestamp: SystemTime,
    /// The source's sample interval (the value's window).
    pub window: Duration,
}

impl Sample {
    /// The value of one metric.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.values.get(metric)
    }
}

/// A pod's sample.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSample {
    /// The node that spoke for it (shared by the node's pods).
    pub node: Arc<str>,
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

/// One round's view of every source.
#[derive(Debug, Default)]
pub struct StoreView {
    /// Pods: namespace → name → sample. One entry per pod.
    pub pods: HashMap<String, BTreeMap<String, PodSample>>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeSample>,
    /// The pod and node labels this view was admitted against, for
    /// selectors: a pod with a value always has its labels here.
    pub labels: Arc<IndexedLabels>,
}

/// The longest a value is ever served, whatever a source announces.
pub const MAX_AGE_LIMIT: Duration = Duration::from_secs(600);

/// The latest view, read lock-free by queries.
#[derive(Debug)]
pub struct MetricStore {
    view: ArcSwap<StoreView>,
    /// Counts published views, for those who act on every change (the KEDA
    /// scaler's activation streams).
    published: tokio::sync::watch::Sender<u64>,
    /// `None`: three sample intervals of the sample's source.
    max_age: Option<Duration>,
}

impl MetricStore {
    /// An empty store that refuses values older than `max_age` (by
    /// default, three of the sample's intervals), and never older than
    /// [`MAX_AGE_LIMIT`].
    pub fn new(max_age: Option<Duration>) -> Self {
        Self { view: ArcSwap::from_pointee(StoreView::default()), published: Default::default(), max_age }
    }

    /// Replaces the view.
    pub fn publish(&self, view: StoreView) {
        self.view.store(Arc::new(view));
        self.published.send_modify(|n| *n += 1);
    }

    /// Sees every view published from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// The current view.
    pub fn view(&self) -> Arc<StoreView> {
        self.view.load_full()
    }

    /// The oldest a sample of this window may be.
    pub fn max_age(&self, window: Duration) -> Duration {
        self.max_age.unwrap_or(window.saturating_mul(3)).min(MAX_AGE_LIMIT)
    }

    /// Whether a sample is young enough to serve at `now`. Admission has
    /// refused samples more than a small skew ahead of the clock; one within
    /// it counts as age 0.
    pub fn is_fresh(&self, sample: &Sample, now: SystemTime) -> bool {
        let age = now.duration_since(sample.timestamp).unwrap_or_default();
        age <= self.max_age(sample.window)
    }
}

#[cfg(test)]
mod tests;
