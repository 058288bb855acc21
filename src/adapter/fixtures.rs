//! Test fixtures shared by the adapter's query-side tests: agents' feeds at
//! a fixed time, and a provider over them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::admission::Rejections;
use super::provider::Provider;
use super::source::agents::{AgentTarget, build_view};
use super::store::MetricStore;
use crate::feed::{FeedGpu, FeedPod, NodeFeed};
use crate::k8s::labels::{LabelIndex, LabelMaps, Labels};

/// The feeds' sample time.
pub const T0_MS: u64 = 1_795_430_000_000;

/// Half a second after [`T0_MS`].
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(T0_MS + 500)
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// One node's feed: one GPU of `model` shared by `pods` of namespace
/// `ai-system-gpu` at these utilizations, sampled at `timestamp_ms`.
pub fn feed(node: &str, model: &str, timestamp_ms: u64, pods: &[(&str, f64)]) -> Arc<NodeFeed> {
    let uuid = format!("GPU-{node}");
    Arc::new(NodeFeed {
        node: node.into(),
        timestamp_ms,
        interval_ms: 1000,
        gpus: vec![FeedGpu {
            index: 0,
            uuid: uuid.clone(),
            model: model.into(),
            up: true,
            utilization_percent: Some(60.0),
            memory_utilization_percent: Some(30.0),
            memory_used_bytes: Some(8 << 30),
            memory_total_bytes: Some(24 << 30),
        }],
        pods: pods
            .iter()
            .map(|(name, util)| FeedPod {
                namespace: "ai-system-gpu".into(),
                pod: name.to_string(),
                gpus: vec![uuid.clone()],
                sharing: "shared".into(),
                utilization_percent: Some(*util),
                memory_utilization_percent: Some(util / 2.0),
                memory_used_bytes: None,
                reason: None,
            })
            .collect(),
    })
}

/// A provider over static agents' feeds, with these labels, admitted at [`now`].
pub fn provider(feeds: &[Arc<NodeFeed>], maps: LabelMaps) -> Provider {
    let targets: Vec<_> =
        feeds.iter().map(|f| (AgentTarget::unbound(format!("http://{}:9402", f.node)), f.clone())).collect();
    let store = Arc::new(MetricStore::new(None));
    store.publish(build_view(&targets, &LabelIndex::new(maps), &Rejections::default(), usize::MAX, now()));
    Provider::new(store)
}
