//! The per-pod feed an agent serves at `/v1/pods` and the adapter polls.
//!
//! One document per node and sample. Every value carries the time it was
//! sampled, so a reader can refuse stale numbers. A field with no value is
//! left out, never sent as zero.

use serde::{Deserialize, Serialize};

/// One node's GPUs and the pods using them, at one sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFeed {
    /// Node name.
    pub node: String,
    /// When the sample was taken, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The agent's sample interval, milliseconds.
    pub interval_ms: u64,
    /// Every GPU of the node.
    pub gpus: Vec<FeedGpu>,
    /// Every pod holding a GPU of the node; a reader refuses more than
    /// [`MAX_FEED_PODS`] without decoding them.
    #[serde(deserialize_with = "bounded_pods")]
    pub pods: Vec<FeedPod>,
}

/// The most pods one node's feed may carry. A node runs far fewer pods
/// (the kubelet's default `maxPods` is 110), so a longer feed is broken or
/// hostile, and is refused while it is read rather than after it filled
/// memory.
pub const MAX_FEED_PODS: usize = 4096;

fn bounded_pods<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<FeedPod>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<FeedPod>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_FEED_PODS} pods")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut pods = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_FEED_PODS));
            while let Some(pod) = seq.next_element()? {
                if pods.len() == MAX_FEED_PODS {
                    return Err(serde::de::Error::custom(format!("more than {MAX_FEED_PODS} pods in one node's feed")));
                }
                pods.push(pod);
            }
            Ok(pods)
        }
    }
    deserializer.deserialize_seq(Bounded)
}

/// One GPU in the feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedGpu {
    /// NVML index.
    pub index: u32,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Model name.
    pub model: String,
    /// Whether it answered this sample.
    pub up: bool,
    /// Utilization, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<f64>,
    /// Memory-controller utilization, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_utilization_percent: Option<f64>,
    /// Device memory used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// Device memory in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
}

/// One pod's GPU use in the feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedPod {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// UUIDs of the GPUs it holds.
    pub gpus: Vec<String>,
    /// `exclusive` when it holds whole GPUs, `shared` when any is time-sliced.
    pub sharing: String,
    /// Mean utilization of its GPUs (its own share on shared ones), percent.
    /// Absent when any of its GPUs has no value; `reason` says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<f64>,
    /// Mean memory-controller utilization, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_utilization_percent: Option<f64>,
    /// Device memory used, on whole GPUs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// Why a value is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Milliseconds since the Unix epoch, as the feed's `timestamp_ms` counts
/// them (0 for a time before it).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}
