//! The immutable result of one sample pass, with everything a reader needs
//! already rendered: a scrape or a feed request only clones [`Bytes`]; and
//! the [`AgentState`] through which the sampler hands each one to the server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;

use super::exposition::{Exposition, Naming, Renderer};
use super::sample::{NodeReading, Readiness};
use super::self_metrics::AgentMetrics;

/// A running agent's shared state: the latest snapshot and the counters.
#[derive(Clone)]
pub struct AgentState {
    /// The latest snapshot, swapped whole by the sampler.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Self-metrics, bumped by the sampler and the server.
    pub metrics: Arc<AgentMetrics>,
    /// The bearer token `/v1/pods` requires, if any.
    pub feed_token: Option<Arc<str>>,
}

/// A sample and its pre-rendered forms.
#[derive(Debug)]
pub struct Snapshot {
    /// What was sampled.
    pub data: NodeReading,
    /// `/metrics` bodies.
    pub exposition: Exposition,
    /// `/v1/pods` body (JSON).
    pub feed: Bytes,
}

impl Snapshot {
    /// Renders a sample, named on `/metrics` as `naming` says.
    pub fn new(data: NodeReading, naming: Naming, renderer: &mut Renderer) -> Self {
        let exposition = renderer.render(&data, naming);
        let feed = serde_json::to_vec(&super::feed::node_feed(&data)).expect("the feed serializes").into();
        Self { data, exposition, feed }
    }

    /// The snapshot before the first sample: no GPUs, not ready.
    pub fn empty(node: &str, interval: Duration, metrics: &AgentMetrics) -> Self {
        let data = NodeReading {
            node: node.to_string(),
            taken_at: SystemTime::now(),
            interval,
            gpus: Vec::new(),
            usages: Vec::new(),
            accounts: Vec::new(),
            readiness: Readiness::NotReady("no sample taken yet".to_string()),
            gpu_source_up: false,
            driver_version: None,
            cuda_version: None,
            pod_resources_up: None,
            sample_duration: Duration::ZERO,
            counters: metrics.counters(),
        };
        Self::new(data, Naming::default(), &mut Renderer::default())
    }
}
