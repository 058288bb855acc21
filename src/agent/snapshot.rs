//! The immutable result of one sample pass, with everything a reader needs
//! already rendered: a scrape or a feed request only clones [`Bytes`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::exposition::{self, Exposition, MetricNames};
use super::self_metrics::{AgentCounters, AgentMetrics};
use crate::attribution::{PodGpuUsage, Sharing};
use crate::feed::{FeedGpu, FeedPod, NodeFeed};
use crate::gpu::{GpuIdentity, GpuReading};

/// One GPU as sampled.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuState {
    /// Index, UUID and model (UUID and model empty if the GPU was lost before
    /// it could say).
    pub identity: GpuIdentity,
    /// Whether it answered in time.
    pub up: bool,
    /// Its values; empty when down.
    pub reading: GpuReading,
}

/// Whether the agent can report GPUs, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The GPU source is open and a sample was taken.
    Ready,
    /// Not ready, with the reason `/readyz` gives.
    NotReady(String),
}

/// What one sample pass found.
#[derive(Clone, Debug)]
pub struct SampleData {
    /// Node name.
    pub node: String,
    /// When the pass started.
    pub taken_at: SystemTime,
    /// The sample interval.
    pub interval: Duration,
    /// Every GPU.
    pub gpus: Vec<GpuState>,
    /// Pod use of the GPUs.
    pub usages: Vec<PodGpuUsage>,
    /// Readiness for `/readyz`.
    pub readiness: Readiness,
    /// The GPU source (NVML) is open.
    pub gpu_source_up: bool,
    /// The kubelet answered the last PodResources call; `None` when
    /// attribution is off.
    pub pod_resources_up: Option<bool>,
    /// How long the pass took.
    pub sample_duration: Duration,
    /// The agent's counters when the pass ended.
    pub counters: AgentCounters,
    /// Which metric names `/metrics` uses.
    pub names: MetricNames,
}

/// A sample and its pre-rendered forms.
#[derive(Debug)]
pub struct Snapshot {
    /// What was sampled.
    pub data: SampleData,
    /// `/metrics` bodies.
    pub exposition: Exposition,
    /// `/v1/pods` body (JSON).
    pub feed: Bytes,
}

impl Snapshot {
    /// Renders a sample.
    pub fn new(data: SampleData) -> Self {
        let exposition = exposition::render(&data);
        let feed = serde_json::to_vec(&node_feed(&data)).expect("the feed serializes").into();
        Self { data, exposition, feed }
    }

    /// The snapshot before the first sample: no GPUs, not ready.
    pub fn empty(node: &str, interval: Duration, metrics: &AgentMetrics) -> Self {
        Self::new(SampleData {
            node: node.to_string(),
            taken_at: SystemTime::now(),
            interval,
            gpus: Vec::new(),
            usages: Vec::new(),
            readiness: Readiness::NotReady("no sample taken yet".to_string()),
            gpu_source_up: false,
            pod_resources_up: None,
            sample_duration: Duration::ZERO,
            counters: metrics.counters(),
            names: MetricNames::default(),
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The feed document of a sample: per pod, the mean over its GPUs, or no
/// value (and a reason) if any of its GPUs has none.
pub fn node_feed(data: &SampleData) -> NodeFeed {
    let gpus = data
        .gpus
        .iter()
        .map(|g| FeedGpu {
            index: g.identity.index,
            uuid: g.identity.uuid.clone(),
            model: g.identity.model.clone(),
            up: g.up,
            utilization_percent: g.reading.utilization_percent,
            memory_utilization_percent: g.reading.memory_utilization_percent,
            memory_used_bytes: g.reading.memory_used_bytes,
            memory_total_bytes: g.reading.memory_total_bytes,
        })
        .collect();

    let mut pods: Vec<FeedPod> = Vec::new();
    let mut members: Vec<Vec<&PodGpuUsage>> = Vec::new();
    for usage in &data.usages {
        match pods.iter().position(|p| p.namespace == usage.namespace && p.pod == usage.pod) {
            Some(i) => members[i].push(usage),
            None => {
                pods.push(FeedPod {
                    namespace: usage.namespace.clone(),
                    pod: usage.pod.clone(),
                    gpus: Vec::new(),
                    sharing: String::new(),
                    utilization_percent: None,
                    memory_utilization_percent: None,
                    memory_used_bytes: None,
                    reason: None,
                });
                members.push(vec![usage]);
            }
        }
    }
    for (pod, usages) in pods.iter_mut().zip(&members) {
        pod.gpus = usages.iter().map(|u| data.gpus[u.gpu].identity.uuid.clone()).collect();
        let shared = usages.iter().any(|u| u.sharing == Sharing::Shared);
        pod.sharing = if shared { Sharing::Shared } else { Sharing::Exclusive }.as_str().to_string();
        let n = usages.len() as f64;
        match usages.iter().map(|u| u.utilization_percent).collect::<Result<Vec<f64>, _>>() {
            Ok(values) => pod.utilization_percent = Some(values.iter().sum::<f64>() / n),
            Err(reason) => pod.reason = Some(reason.as_str().to_string()),
        }
        if let Some(values) = usages.iter().map(|u| u.memory_utilization_percent).collect::<Option<Vec<f64>>>() {
            pod.memory_utilization_percent = Some(values.iter().sum::<f64>() / n);
        }
        pod.memory_used_bytes = usages.iter().map(|u| u.memory_used_bytes).sum();
    }

    NodeFeed {
        node: data.node.clone(),
        timestamp_ms: unix_ms(data.taken_at),
        interval_ms: data.interval.as_millis() as u64,
        gpus,
        pods,
    }
}
