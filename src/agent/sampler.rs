//! The sample loop: every interval, read the GPUs and the kubelet, attribute,
//! render, and swap in a new [`Snapshot`].
//!
//! Each GPU is read on its own blocking thread with a deadline, so a hung NVML
//! call marks only that GPU down (and is counted) while the others, and every
//! scrape, carry on. A GPU whose read is still hung is not read again until it
//! returns, so hung reads never pile up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::exposition::{Naming, Renderer};
use super::ledger::PodLedger;
use super::sample::{GpuState, NodeReading, Readiness};
use super::snapshot::{AgentState, Snapshot};
use crate::attribution::{Allocations, Attribution, ContainerAllocation, GpuView, attribute};
use crate::gpu::{GpuCall, GpuIdentity, GpuRead, GpuSource, GpuSourceOpener, HealthReading, ProcessUsage, ReadRequest};
use crate::retry::Backoff;

/// Per-GPU state kept between passes.
#[derive(Default)]
struct GpuSlot {
    identity: Option<GpuIdentity>,
    /// Set while a read runs; a hung read keeps it set.
    reading: Arc<AtomicBool>,
    last_process_sample_us: u64,
    /// The last rarely-changing fields, and when they were read.
    health: Option<(Instant, HealthReading)>,
}

/// How a sampler samples.
#[derive(Clone, Debug)]
pub struct SamplerSettings {
    /// Node name.
    pub node: String,
    /// Time between passes.
    pub interval: Duration,
    /// Time one GPU's read may take.
    pub read_timeout: Duration,
    /// How `/metrics` names what it writes.
    pub naming: Naming,
    /// How often the rarely-changing fields (power limit, ECC, remapped
    /// rows, retired pages) are read.
    pub health_interval: Duration,
}

/// Samples on an interval and publishes snapshots.
pub struct Sampler {
    settings: SamplerSettings,
    opener: Arc<dyn GpuSourceOpener>,
    source: Option<Arc<dyn GpuSource>>,
    open_backoff: Backoff,
    not_ready_reason: String,
    attribution: Box<dyn Attribution>,
    slots: Vec<GpuSlot>,
    renderer: Renderer,
    ledger: PodLedger,
    state: AgentState,
}

impl Sampler {
    /// A sampler reading GPUs from `opener` and holders from `attribution`.
    pub fn new(
        settings: SamplerSettings,
        opener: Arc<dyn GpuSourceOpener>,
        attribution: Box<dyn Attribution>,
        state: AgentState,
    ) -> Self {
        Self {
            settings,
            opener,
            source: None,
            open_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            not_ready_reason: "GPU source not opened yet".to_string(),
            attribution,
            slots: Vec::new(),
            renderer: Renderer::default(),
            ledger: PodLedger::default(),
            state,
        }
    }

    /// Samples until `shutdown` turns true.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let mut rounds = crate::shutdown::Rounds::new(self.settings.interval, shutdown);
        // A pass stuck in a hung open is dropped at shutdown, not waited for.
        while rounds.next().await && rounds.run(self.sample_once()).await {}
    }

    /// Opens the GPU source if it is not open and an attempt is due.
    async fn ensure_source(&mut self) {
        if self.source.is_some() || !self.open_backoff.due(Instant::now()) {
            return;
        }
        let opener = self.opener.clone();
        let opened = tokio::task::spawn_blocking(move || opener.open()).await;
        match opened {
            Ok(Ok(source)) => {
                let count = source.gpu_count();
                tracing::info!(
                    gpus = count,
                    driver = source.driver_version().as_deref().unwrap_or("unknown"),
                    "GPU source open"
                );
                self.slots = (0..count).map(|_| GpuSlot::default()).collect();
                self.source = Some(source);
                self.open_backoff.succeeded();
            }
            Ok(Err(e)) => {
                self.state.metrics.gpu_error(GpuCall::Init);
                let wait = self.open_backoff.failed(Instant::now());
                tracing::warn!(error = %e, retry_in = ?wait, "GPU source unavailable");
                self.not_ready_reason = e.to_string();
            }
            Err(join) => {
                self.open_backoff.failed(Instant::now());
                self.not_ready_reason = format!("GPU source open panicked: {join}");
            }
        }
    }

    /// One pass: read, attribute, render, publish.
    pub async fn sample_once(&mut self) {
        let started = Instant::now();
        let taken_at = SystemTime::now();
        self.ensure_source().await;
        let (allocations, pod_resources_up) = match self.attribution.allocations().await {
            Allocations::Off => (Vec::new(), None),
            Allocations::Known(allocations) => (allocations, Some(true)),
            Allocations::Unavailable { attempted } => {
                if attempted {
                    self.state.metrics.pod_resources_error();
                }
                (Vec::new(), Some(false))
            }
        };
        // The read deadline starts once the source is open: a slow open
        // (driver load) must not mark every GPU down.
        let reads = self.read_gpus(&allocations, Instant::now() + self.settings.read_timeout).await;

        let gpus: Vec<GpuState> = reads
            .iter()
            .enumerate()
            .map(|(i, r)| GpuState {
                identity: r
                    .identity
                    .clone()
                    .unwrap_or_else(|| GpuIdentity { index: i as u32, ..GpuIdentity::default() }),
                up: r.up,
                reading: r.reading.clone(),
            })
            .collect();
        let views: Vec<GpuView<'_>> = reads
            .iter()
            .map(|r| GpuView {
                identity: r.identity.as_ref(),
                up: r.up,
                reading: &r.reading,
                processes: &r.processes,
                running: &r.running,
            })
            .collect();
        let attribution = &mut self.attribution;
        let usages = attribute(&views, &allocations, |pid| attribution.pod_uid_of(pid));
        self.attribution.end_pass();
        let accounts = self.ledger.record(taken_at, &gpus, &usages);

        let readiness = match self.source {
            Some(_) => Readiness::Ready,
            None => Readiness::NotReady(self.not_ready_reason.clone()),
        };
        self.state.metrics.sample_done();
        let data = NodeReading {
            node: self.settings.node.clone(),
            taken_at,
            interval: self.settings.interval,
            gpus,
            usages,
            accounts,
            readiness,
            gpu_source_up: self.source.is_some(),
            driver_version: self.source.as_ref().and_then(|s| s.driver_version()),
            cuda_version: self.source.as_ref().and_then(|s| s.cuda_version()),
            pod_resources_up,
            sample_duration: started.elapsed(),
            counters: self.state.metrics.counters(),
        };
        let snapshot = Snapshot::new(data, self.settings.naming, &mut self.renderer);
        // The sample before this one goes back to the renderer unless a
        // scrape still holds it.
        if let Ok(previous) = Arc::try_unwrap(self.state.snapshot.swap(Arc::new(snapshot))) {
            self.renderer.recycle(previous.exposition);
        }
    }

    /// Reads every GPU concurrently, each on a blocking thread, until
    /// `deadline`. A GPU that misses it is reported down for this pass.
    async fn read_gpus(&mut self, allocations: &[ContainerAllocation], deadline: Instant) -> Vec<GpuRead> {
        let Some(source) = self.source.clone() else { return Vec::new() };
        let mut pending = Vec::with_capacity(self.slots.len());
        for (index, slot) in self.slots.iter().enumerate() {
            let holders = slot.identity.as_ref().map(|id| allocations.iter().filter(|a| a.holds(id)).count());
            // Unknown identity (first pass): ask, in case the GPU is shared.
            let request = ReadRequest {
                processes: holders.is_none_or(|n| n > 1),
                processes_since_us: slot.last_process_sample_us,
                running: holders.is_none_or(|n| n > 0),
                health: slot.health.is_none_or(|(at, _)| at.elapsed() >= self.settings.health_interval),
            };
            if slot.reading.swap(true, Ordering::AcqRel) {
                pending.push(None);
                continue;
            }
            let (source, flag) = (source.clone(), slot.reading.clone());
            pending.push(Some(tokio::task::spawn_blocking(move || {
                let read = source.read(index as u32, request);
                flag.store(false, Ordering::Release);
                (request.health, read)
            })));
        }

        let mut reads = Vec::with_capacity(pending.len());
        for (index, task) in pending.into_iter().enumerate() {
            let slot = &mut self.slots[index];
            let outcome = match task {
                None => None,
                Some(task) => tokio::time::timeout_at(deadline.into(), task).await.ok().and_then(Result::ok),
            };
            let Some((health_read, mut read)) = outcome else {
                self.state.metrics.gpu_read_timeout();
                tracing::warn!(gpu = index, "GPU read missed its deadline; reported down");
                if slot.identity.is_none() {
                    slot.identity = source.known_identity(index as u32);
                }
                reads.push(GpuRead { identity: slot.identity.clone(), ..GpuRead::default() });
                continue;
            };
            for call in &read.errors {
                self.state.metrics.gpu_error(*call);
            }
            if read.identity.is_some() {
                slot.identity.clone_from(&read.identity);
            } else {
                read.identity.clone_from(&slot.identity);
            }
            // Between health reads, the last ones stand (while the GPU is up).
            if health_read && read.up {
                slot.health = Some((Instant::now(), read.reading.health));
            } else if let Some((_, health)) = slot.health.filter(|_| read.up) {
                read.reading.health = health;
            }
            if let ProcessUsage::Samples(samples) = &read.processes
                && let Some(newest) = samples.iter().map(|s| s.timestamp_us).max()
            {
                slot.last_process_sample_us = slot.last_process_sample_us.max(newest);
            }
            reads.push(read);
        }
        reads
    }
}

#[cfg(test)]
mod tests;
