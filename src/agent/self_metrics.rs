//! The agent's own counters, bumped without locks on the sample and scrape
//! paths and rendered with each sample.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::gpu::GpuCall;

/// Counters the sampler and the server bump.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    samples: AtomicU64,
    gpu_errors: [AtomicU64; GpuCall::ALL.len()],
    gpu_read_timeouts: AtomicU64,
    pod_resources_errors: AtomicU64,
    scrapes_text: AtomicU64,
    scrapes_openmetrics: AtomicU64,
}

/// A copy of the counters, taken when a sample is rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentCounters {
    /// Sample passes finished.
    pub samples: u64,
    /// NVML errors, indexed like [`GpuCall::ALL`].
    pub gpu_errors: [u64; GpuCall::ALL.len()],
    /// GPU reads that missed their deadline.
    pub gpu_read_timeouts: u64,
    /// Failed PodResources calls.
    pub pod_resources_errors: u64,
    /// Scrapes answered in the Prometheus text format.
    pub scrapes_text: u64,
    /// Scrapes answered in OpenMetrics.
    pub scrapes_openmetrics: u64,
}

impl AgentMetrics {
    /// Counts a finished sample pass.
    pub fn sample_done(&self) {
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed GPU call.
    pub fn gpu_error(&self, call: GpuCall) {
        let i = GpuCall::ALL.iter().position(|c| *c == call).expect("every call is in ALL");
        self.gpu_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a GPU read that missed its deadline.
    pub fn gpu_read_timeout(&self) {
        self.gpu_read_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed PodResources call.
    pub fn pod_resources_error(&self) {
        self.pod_resources_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a scrape.
    pub fn scrape(&self, openmetrics: bool) {
        let counter = if openmetrics { &self.scrapes_openmetrics } else { &self.scrapes_text };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn counters(&self) -> AgentCounters {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AgentCounters {
            samples: load(&self.samples),
            gpu_errors: std::array::from_fn(|i| load(&self.gpu_errors[i])),
            gpu_read_timeouts: load(&self.gpu_read_timeouts),
            pod_resources_errors: load(&self.pod_resources_errors),
            scrapes_text: load(&self.scrapes_text),
            scrapes_openmetrics: load(&self.scrapes_openmetrics),
        }
    }
}
