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

use super::AgentState;
use super::exposition::MetricNames;
use super::snapshot::{GpuState, Readiness, SampleData, Snapshot};
use crate::attribution::checkpoint::Checkpoint;
use crate::attribution::podresources::PodResourcesClient;
use crate::attribution::process::ProcResolver;
use crate::attribution::{AttributionArgs, ContainerAllocation, GpuView, attribute};
use crate::gpu::sim::SimNode;
use crate::gpu::{GpuCall, GpuIdentity, GpuRead, GpuSource, GpuSourceOpener, ProcessUsage, ReadRequest};

/// Exponential backoff between attempts at something that keeps failing.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Duration,
    next: Option<Instant>,
}

impl Backoff {
    /// Starts at `min` and doubles to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, delay: min, next: None }
    }

    /// Whether an attempt is due.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// Records a failed attempt; returns the wait before the next.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.delay;
        self.next = Some(now + wait);
        self.delay = (self.delay * 2).min(self.max);
        wait
    }

    /// Records a success.
    pub fn succeeded(&mut self) {
        self.delay = self.min;
        self.next = None;
    }

    /// Whether the last attempt failed.
    pub fn failing(&self) -> bool {
        self.next.is_some()
    }
}

/// The kubelet's PodResources API, and the checkpoint for pod UIDs.
pub struct KubeletAllocations {
    client: PodResourcesClient,
    resource_name: String,
    checkpoint: Checkpoint,
    backoff: Backoff,
    checkpoint_warned: bool,
}

/// Where the sampler learns which container holds which GPU.
pub enum AllocationSource {
    /// Attribution is off.
    None,
    /// The kubelet.
    Kubelet(Box<KubeletAllocations>),
    /// The simulated node's pods.
    Sim(Arc<SimNode>),
}

impl AllocationSource {
    /// The kubelet, as the flags describe it.
    pub fn kubelet(args: &AttributionArgs) -> Self {
        AllocationSource::Kubelet(Box::new(KubeletAllocations {
            client: PodResourcesClient::new(&args.pod_resources_socket, args.pod_resources_timeout),
            resource_name: args.gpu_resource_name.clone(),
            checkpoint: Checkpoint::new(args.kubelet_checkpoint.clone()),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            checkpoint_warned: false,
        }))
    }

    /// The current allocations, and whether the kubelet answered (`None` when
    /// attribution is off). While the kubelet fails, GPUs go unlabelled
    /// rather than carry possibly stale pod labels.
    async fn fetch(&mut self, state: &AgentState) -> (Vec<ContainerAllocation>, Option<bool>) {
        match self {
            AllocationSource::None => (Vec::new(), None),
            AllocationSource::Sim(node) => (node.allocations(), Some(true)),
            AllocationSource::Kubelet(kubelet) => {
                let now = Instant::now();
                if !kubelet.backoff.due(now) {
                    return (Vec::new(), Some(false));
                }
                match kubelet.client.list(&kubelet.resource_name).await {
                    Ok(mut allocations) => {
                        if kubelet.backoff.failing() {
                            tracing::info!("kubelet PodResources answers again; pod labels are back");
                        }
                        kubelet.backoff.succeeded();
                        if any_gpu_shared(&allocations) {
                            if let Err(e) = kubelet.checkpoint.fill_pod_uids(&mut allocations) {
                                if !std::mem::replace(&mut kubelet.checkpoint_warned, true) {
                                    tracing::warn!(error = %e, "shared GPUs cannot be split between pods");
                                }
                            } else {
                                kubelet.checkpoint_warned = false;
                            }
                        }
                        (allocations, Some(true))
                    }
                    Err(e) => {
                        state.metrics.pod_resources_error();
                        let first = !kubelet.backoff.failing();
                        let wait = kubelet.backoff.failed(now);
                        if first {
                            tracing::warn!(error = %e, "GPU series are served without pod labels until the kubelet answers");
                        } else {
                            tracing::debug!(error = %e, retry_in = ?wait, "kubelet PodResources still failing");
                        }
                        (Vec::new(), Some(false))
                    }
                }
            }
        }
    }
}

/// Whether two allocations name the same GPU (time-slicing).
fn any_gpu_shared(allocations: &[ContainerAllocation]) -> bool {
    let mut bases: Vec<&str> =
        allocations.iter().flat_map(|a| &a.device_ids).map(|id| crate::attribution::device_base(id)).collect();
    let n = bases.len();
    bases.sort_unstable();
    bases.dedup();
    bases.len() != n
}

/// How host PIDs map to pod UIDs.
pub enum PidResolver {
    /// From `/proc/<pid>/cgroup`.
    Proc(ProcResolver),
    /// From the simulation.
    Sim(Arc<SimNode>),
}

impl PidResolver {
    /// Resolves through `proc_root`.
    pub fn proc(proc_root: std::path::PathBuf) -> Self {
        PidResolver::Proc(ProcResolver::new(proc_root))
    }

    fn pod_uid_of(&mut self, pid: u32) -> Option<String> {
        match self {
            PidResolver::Proc(r) => r.pod_uid_of(pid),
            PidResolver::Sim(node) => node.pod_uid_of(pid).map(str::to_string),
        }
    }

    fn end_pass(&mut self) {
        if let PidResolver::Proc(r) = self {
            r.end_pass();
        }
    }
}

/// Per-GPU state kept between passes.
#[derive(Default)]
struct GpuSlot {
    identity: Option<GpuIdentity>,
    /// Set while a read runs; a hung read keeps it set.
    reading: Arc<AtomicBool>,
    last_process_sample_us: u64,
}

/// Samples on an interval and publishes snapshots.
pub struct Sampler {
    node: String,
    interval: Duration,
    names: MetricNames,
    read_timeout: Duration,
    opener: Arc<dyn GpuSourceOpener>,
    source: Option<Arc<dyn GpuSource>>,
    open_backoff: Backoff,
    not_ready_reason: String,
    allocations: AllocationSource,
    pids: PidResolver,
    slots: Vec<GpuSlot>,
    state: AgentState,
}

impl Sampler {
    /// A sampler for the agent's flags and sources.
    pub fn new(
        args: &super::AgentArgs,
        opener: Arc<dyn GpuSourceOpener>,
        allocations: AllocationSource,
        pids: PidResolver,
        state: AgentState,
    ) -> Self {
        Self {
            node: args.node_name.clone(),
            interval: args.interval,
            names: args.names,
            read_timeout: args.gpu_read_timeout.unwrap_or(args.interval),
            opener,
            source: None,
            open_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            not_ready_reason: "GPU source not opened yet".to_string(),
            allocations,
            pids,
            slots: Vec::new(),
            state,
        }
    }

    /// Samples until `shutdown` turns true.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let mut rounds = crate::shutdown::Rounds::new(self.interval, shutdown);
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
        let (allocations, pod_resources_up) = self.allocations.fetch(&self.state).await;
        // The read deadline starts once the source is open: a slow open
        // (driver load) must not mark every GPU down.
        let reads = self.read_gpus(&allocations, Instant::now() + self.read_timeout).await;

        let gpus: Vec<GpuState> = reads
            .iter()
            .enumerate()
            .map(|(i, r)| GpuState {
                identity: r.identity.clone().unwrap_or_else(|| GpuIdentity {
                    index: i as u32,
                    uuid: String::new(),
                    model: String::new(),
                }),
                up: r.up,
                reading: r.reading.clone(),
            })
            .collect();
        let views: Vec<GpuView<'_>> = reads
            .iter()
            .map(|r| GpuView { identity: r.identity.as_ref(), up: r.up, reading: &r.reading, processes: &r.processes })
            .collect();
        let pids = &mut self.pids;
        let usages = attribute(&views, &allocations, |pid| pids.pod_uid_of(pid));
        self.pids.end_pass();

        let readiness = match self.source {
            Some(_) => Readiness::Ready,
            None => Readiness::NotReady(self.not_ready_reason.clone()),
        };
        self.state.metrics.sample_done();
        let data = SampleData {
            node: self.node.clone(),
            taken_at,
            interval: self.interval,
            gpus,
            usages,
            readiness,
            gpu_source_up: self.source.is_some(),
            pod_resources_up,
            sample_duration: started.elapsed(),
            counters: self.state.metrics.counters(),
            names: self.names,
        };
        self.state.snapshot.store(Arc::new(Snapshot::new(data)));
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
            };
            if slot.reading.swap(true, Ordering::AcqRel) {
                pending.push(None);
                continue;
            }
            let (source, flag) = (source.clone(), slot.reading.clone());
            pending.push(Some(tokio::task::spawn_blocking(move || {
                let read = source.read(index as u32, request);
                flag.store(false, Ordering::Release);
                read
            })));
        }

        let mut reads = Vec::with_capacity(pending.len());
        for (index, task) in pending.into_iter().enumerate() {
            let slot = &mut self.slots[index];
            let outcome = match task {
                None => None,
                Some(task) => tokio::time::timeout_at(deadline.into(), task).await.ok().and_then(Result::ok),
            };
            let Some(mut read) = outcome else {
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
