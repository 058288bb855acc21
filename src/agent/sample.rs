//! What one sample pass found: every GPU's identity, state and reading, and
//! the pods using them. The sampler writes it; the exposition and the feed
//! render it; nothing here knows how.

use std::time::{Duration, SystemTime};

use super::self_metrics::AgentCounters;
use crate::attribution::PodGpuUsage;
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

/// What a pod has accumulated on one GPU (kept by [`super::ledger`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodAccount {
    /// When its share was last above zero (or when it was first seen).
    pub last_active: SystemTime,
    /// Energy charged to it since the agent first saw it on the GPU, joules.
    pub energy_joules: f64,
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
pub struct NodeReading {
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
    /// What each usage has accumulated (last active time, energy), one per
    /// usage, in the same order.
    pub accounts: Vec<PodAccount>,
    /// Readiness for `/readyz`.
    pub readiness: Readiness,
    /// The GPU source (NVML) is open.
    pub gpu_source_up: bool,
    /// The driver's version, where known.
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports, where known.
    pub cuda_version: Option<String>,
    /// The kubelet answered the last PodResources call; `None` when
    /// attribution is off.
    pub pod_resources_up: Option<bool>,
    /// How long the pass took.
    pub sample_duration: Duration,
    /// The agent's counters when the pass ended.
    pub counters: AgentCounters,
}
