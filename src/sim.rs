//! The simulated node: GPUs, the pods that use them, their PIDs and labels,
//! and scripted load ([`scenario`]), for `standalone` and for tests without a
//! GPU. It is a whole fake node, so it stands in for both the GPU source
//! ([`crate::gpu::GpuSource`]) and attribution
//! ([`crate::attribution::Attribution`]).
//!
//! Each simulated GPU is time-sliced between the seed workloads of the
//! reference cluster. Every workload's load moves along its own slow wave plus
//! noise; the GPU's utilization is the sum, and NVML-style per-process samples
//! carry each workload's share. Everything is a function of the seed and the
//! wall-clock second, so two runs with the same `--seed` see the same load.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

pub mod fleet;
pub mod kubelet;
pub mod node_api;
pub mod scenario;

use crate::attribution::{Allocations, Attribution, ContainerAllocation};
use crate::gpu::XidErrors;
use crate::gpu::model::{GpuModelId, GpuProfile};
use crate::gpu::{
    ClockEventReason, GpuIdentity, GpuProcess, GpuRead, GpuReading, GpuSource, GpuSourceError, GpuSourceOpener,
    HealthReading, MigDevice, ProcessKind, ProcessSample, ProcessUsage, ReadRequest, RunningProcesses, ViolationPolicy,
    Violations,
};
use crate::k8s::labels::{LabelMaps, Labels};
use scenario::Scenario;

/// The namespace the reference cluster runs GPU workloads in.
pub const GPU_NAMESPACE: &str = "ai-system-gpu";

/// A simulated pod that holds a slice of one simulated GPU.
#[derive(Clone, Debug)]
pub struct SimWorkload {
    /// The UUID of the MIG device it holds, on a GPU in MIG mode.
    pub mig_uuid: Option<String>,
    /// The devices the device plugin gave its container, where known (a
    /// node joined to a real cluster); otherwise its time-slice replica is
    /// its place on the GPU.
    pub device_ids: Option<Vec<String>>,
    /// The owning Deployment (and the pod's `app` label).
    pub app: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The container that runs the GPU process.
    pub container: String,
    /// Pod UID, as it appears in the pod's cgroup path.
    pub pod_uid: String,
    /// Host PID of the workload's one GPU process.
    pub pid: u32,
    /// Device memory the workload holds.
    pub memory_bytes: u64,
    /// Mean load, percent of the GPU.
    pub base_percent: f64,
    /// Swing of the slow wave, percent of the GPU.
    pub swing_percent: f64,
    /// Period of the slow wave.
    pub period_seconds: f64,
    /// Phase of the slow wave, radians.
    pub phase: f64,
    /// The load the live twin sets (percent of its GPU's time), over the
    /// scenario and the wave: a scaled Deployment's pods get their share of
    /// its demand, and 0 while they start.
    pub twin_load: Option<f64>,
}

impl SimWorkload {
    /// Its slow wave at `t` seconds since the epoch, percent of its GPU
    /// (no noise).
    pub fn wave(&self, t: f64) -> f64 {
        self.base_percent + self.swing_percent * (t / self.period_seconds * std::f64::consts::TAU + self.phase).sin()
    }

    /// Another pod of the same Deployment, as its ReplicaSet would name it
    /// (same `pod-template-hash`, a new suffix and UID), with process `pid`.
    pub fn replica(&self, rng: &mut fastrand::Rng, pid: u32) -> SimWorkload {
        SimWorkload {
            pod: format!("{}-{}-{}", self.app, self.template_hash(), alnum(rng, 5)),
            pod_uid: uuid(rng),
            pid,
            mig_uuid: None,
            device_ids: None,
            twin_load: None,
            ..self.clone()
        }
    }

    /// Its `pod-template-hash`.
    pub fn template_hash(&self) -> &str {
        self.pod.trim_start_matches(&self.app).trim_start_matches('-').split('-').next().unwrap_or("")
    }

    /// Its pod's labels: `app` and `pod-template-hash`.
    pub fn pod_labels(&self) -> Labels {
        [("app", self.app.as_str()), ("pod-template-hash", self.template_hash())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// What the API would say about the simulated nodes running `workloads`
/// (one entry per node, in order): each node's labels, and each pod's
/// labels and placement.
pub fn label_maps<'a>(nodes: impl IntoIterator<Item = (&'a SimNode, &'a Workloads)>) -> LabelMaps {
    let mut maps = LabelMaps { placements: Some(Default::default()), ..LabelMaps::default() };
    for (node, workloads) in nodes {
        for w in workloads.iter().flatten() {
            add_pod(&mut maps, w, Some(&node.node));
        }
        maps.nodes.insert(node.node.clone(), node.node_labels());
    }
    maps
}

/// [`label_maps`] of the pods the nodes run now.
pub fn current_label_maps(nodes: &[Arc<SimNode>]) -> LabelMaps {
    let workloads: Vec<Arc<Workloads>> = nodes.iter().map(|n| n.workloads()).collect();
    label_maps(nodes.iter().map(|n| &**n).zip(workloads.iter().map(|w| &**w)))
}

/// Adds a simulated pod to `maps`: its labels, and its node once scheduled.
pub fn add_pod(maps: &mut LabelMaps, w: &SimWorkload, node: Option<&str>) {
    maps.pods.entry(w.namespace.clone()).or_default().insert(w.pod.clone(), w.pod_labels());
    if let (Some(node), Some(placements)) = (node, maps.placements.as_mut()) {
        placements.entry(w.namespace.clone()).or_default().insert(w.pod.clone(), node.to_string());
    }
}

/// One simulated GPU.
#[derive(Clone, Debug)]
pub struct SimGpu {
    /// Index, UUID and model name.
    pub identity: GpuIdentity,
    /// What the model can do.
    pub profile: &'static GpuProfile,
    /// Whether it runs in MIG mode (one 3g.40gb MIG device per workload).
    pub mig: bool,
}

/// The pods on each GPU of a node (by GPU index): time-sliced onto it, or
/// each on a MIG device of its own.
pub type Workloads = Vec<Vec<SimWorkload>>;

/// The memory of each simulated MIG device (3g.40gb).
const MIG_MEMORY_BYTES: u64 = 40 << 30;

/// The simulated GPUs of one node.
#[derive(Debug)]
pub struct SimNode {
    /// Node name.
    pub node: String,
    /// Its GPUs.
    pub gpus: Vec<SimGpu>,
    /// Their pods: the seed workloads, or what the live twin sets.
    workloads: ArcSwap<Workloads>,
    seed: u64,
    /// Scripted loads, and when the script started (seconds since the epoch).
    scenario: Option<(Scenario, f64)>,
}

/// The seed workloads each reference GPU model runs, from the cluster plan:
/// coordination and reasoning on the 4090, vision and tutoring on the 3060.
fn seed_apps(model: GpuModelId) -> &'static [(&'static str, f64, f64, u64)] {
    // (app, base %, swing %, memory GiB)
    match model {
        GpuModelId::Rtx4090 => &[("reasoning-suite", 38.0, 30.0, 9), ("coordination-suite", 16.0, 10.0, 4)],
        GpuModelId::Rtx3060 => &[("vision-dream-suite", 30.0, 25.0, 5), ("tutoring-suite", 14.0, 10.0, 2)],
        GpuModelId::A100Mig => &[("inference-suite", 35.0, 25.0, 18), ("embedding-suite", 20.0, 10.0, 6)],
        _ => &[("inference-suite", 35.0, 25.0, 8)],
    }
}

impl SimNode {
    /// Builds a node with one simulated GPU per model, each running its seed
    /// workloads. Names, UUIDs and PIDs derive from the seed and node name.
    pub fn new(node: &str, models: &[GpuModelId], seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ fnv1a(node.as_bytes()));
        let mut next_pid = 4000 + (rng.u32(0..1000) * 10);
        let (gpus, workloads) = models
            .iter()
            .enumerate()
            .map(|(index, &model)| {
                let profile = model.profile();
                let workloads = seed_apps(model)
                    .iter()
                    .map(|&(app, base, swing, gib)| {
                        next_pid += 1;
                        SimWorkload {
                            mig_uuid: model.mig().then(|| format!("MIG-{}", uuid(&mut rng))),
                            device_ids: None,
                            app: app.to_string(),
                            namespace: GPU_NAMESPACE.to_string(),
                            pod: format!("{app}-{}-{}", hex(&mut rng, 10), alnum(&mut rng, 5)),
                            container: app.to_string(),
                            pod_uid: uuid(&mut rng),
                            pid: next_pid,
                            memory_bytes: gib << 30,
                            base_percent: base,
                            swing_percent: swing,
                            period_seconds: 60.0 + rng.f64() * 120.0,
                            phase: rng.f64() * std::f64::consts::TAU,
                            twin_load: None,
                        }
                    })
                    .collect();
                let gpu = SimGpu {
                    identity: GpuIdentity {
                        index: index as u32,
                        uuid: format!("GPU-{}", uuid(&mut rng)),
                        model: profile.name.to_string(),
                        pci_bus_id: format!("00000000:{:02X}:00.0", index + 1),
                    },
                    profile,
                    mig: model.mig(),
                };
                (gpu, workloads)
            })
            .unzip();
        Self { node: node.to_string(), gpus, workloads: ArcSwap::from_pointee(workloads), seed, scenario: None }
    }

    /// The pods on each GPU now.
    pub fn workloads(&self) -> Arc<Workloads> {
        self.workloads.load_full()
    }

    /// Replaces the pods (the live twin, as it schedules and removes them).
    pub fn set_workloads(&self, workloads: Workloads) {
        self.workloads.store(Arc::new(workloads));
    }

    /// Scripts the load of the workloads `scenario` names, from `start`
    /// (seconds since the epoch).
    pub fn with_scenario(mut self, scenario: Scenario, start: f64) -> Self {
        self.scenario = Some((scenario, start));
        self
    }

    /// The kubelet's view: one container per workload, holding the devices
    /// it was given, or else a time-slice replica of its GPU by its place
    /// (`<uuid>::<n>`, as the NVIDIA device plugin names them).
    pub fn allocations(&self) -> Vec<ContainerAllocation> {
        self.gpus
            .iter()
            .zip(self.workloads().iter())
            .flat_map(|(gpu, workloads)| {
                workloads.iter().enumerate().map(|(replica, w)| ContainerAllocation {
                    namespace: w.namespace.clone(),
                    pod: w.pod.clone(),
                    container: w.container.clone(),
                    pod_uid: Some(w.pod_uid.clone()),
                    device_ids: match (&w.device_ids, &w.mig_uuid) {
                        (Some(ids), _) => ids.clone(),
                        (None, Some(mig)) => vec![mig.clone()],
                        (None, None) => vec![time_slice_replica(&gpu.identity.uuid, replica as u32)],
                    },
                })
            })
            .collect()
    }

    /// The node's labels: hostname and the GPU product, as GPU feature
    /// discovery labels it.
    pub fn node_labels(&self) -> Labels {
        let mut node = Labels::new();
        node.insert("kubernetes.io/hostname".into(), self.node.clone());
        if let Some(gpu) = self.gpus.first() {
            node.insert("nvidia.com/gpu.product".into(), gpu.profile.name.replace(' ', "-"));
            node.insert("nvidia.com/gpu.count".into(), self.gpus.len().to_string());
        }
        node
    }

    /// The pod UID a simulated PID belongs to.
    pub fn pod_uid_of(&self, pid: u32) -> Option<String> {
        self.workloads().iter().flatten().find(|w| w.pid == pid).map(|w| w.pod_uid.clone())
    }

    /// The load of `gpu`'s `workload`-th pod `w` at `t` seconds since the
    /// epoch: the twin's, the scenario's, or its wave plus noise drawn from
    /// the seed and the second, clamped to 0..=100.
    fn load(&self, gpu: usize, workload: usize, w: &SimWorkload, t: f64) -> f64 {
        if let Some(load) = w.twin_load {
            return load;
        }
        if let Some((scenario, start)) = &self.scenario {
            let elapsed = std::time::Duration::from_secs_f64((t - start).max(0.0));
            if let Some(load) = scenario.load(&w.app, elapsed) {
                return load;
            }
        }
        let second = t.floor() as u64;
        let mut rng = fastrand::Rng::with_seed(
            self.seed ^ second.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((gpu as u64) << 32 | workload as u64),
        );
        let noise = (rng.f64() - 0.5) * 6.0;
        (w.wave(t) + noise).clamp(0.0, 100.0)
    }

    /// Reads one GPU at `t` seconds since the epoch.
    pub fn read_at(&self, index: u32, request: ReadRequest, t: f64) -> GpuRead {
        let Some(gpu) = self.gpus.get(index as usize) else {
            return GpuRead::default();
        };
        let all = self.workloads();
        let workloads: &[SimWorkload] = all.get(index as usize).map_or(&[], Vec::as_slice);
        let loads: Vec<f64> = workloads.iter().enumerate().map(|(k, w)| self.load(index as usize, k, w, t)).collect();
        // (A fold from 0: an empty float sum is -0.0.)
        let demand: f64 = loads.iter().fold(0.0, |sum, load| sum + load);
        // Time-slicing: when demand exceeds the GPU, every workload gets its share.
        let scale = if demand > 100.0 { 100.0 / demand } else { 1.0 };
        let utilization = (demand * scale).round();
        let busy = utilization / 100.0;
        let p = gpu.profile;
        let memory_used: u64 = (600 << 20) + workloads.iter().map(|w| w.memory_bytes).sum::<u64>();
        let reading = GpuReading {
            utilization_percent: Some(utilization),
            memory_utilization_percent: Some((utilization * 0.55).round()),
            memory_used_bytes: Some(memory_used.min(p.memory_bytes)),
            memory_total_bytes: Some(p.memory_bytes),
            temperature_celsius: Some((34.0 + 46.0 * busy).round()),
            power_watts: Some(
                ((p.idle_power_watts + (p.max_power_watts - p.idle_power_watts) * busy) * 10.0).round() / 10.0,
            ),
            sm_clock_hertz: Some(if busy > 0.0 {
                f64::from(p.boost_clock_mhz) * 1e6
            } else {
                f64::from(p.idle_clock_mhz) * 1e6
            }),
            // A GeForce board: no memory temperature, ECC, remapping or
            // retired pages; the rest moves with the load.
            memory_clock_hertz: Some(if busy > 0.0 { 10_501e6 } else { 405e6 }),
            // Counted from 2026-01-01 at idle power: a counter that only grows.
            energy_joules: Some(((t - 1_767_225_600.0).max(0.0) * p.idle_power_watts).round()),
            pcie_replays: Some(0),
            pcie_transmit_bytes_per_second: Some((busy * 2e9).round()),
            pcie_receive_bytes_per_second: Some((busy * 4e9).round()),
            encoder_utilization_percent: Some(0.0),
            decoder_utilization_percent: Some(0.0),
            fan_speed_percent: Some((30.0 + 50.0 * busy).round()),
            performance_state: Some(if busy > 0.0 { 2 } else { 8 }),
            memory_reserved_bytes: Some(352 << 20),
            clock_events: Some(if busy == 0.0 {
                ClockEventReason::GpuIdle.bit()
            } else if busy > 0.95 {
                ClockEventReason::SwPowerCap.bit()
            } else {
                0
            }),
            violations: Violations([Some(0.0); ViolationPolicy::ALL.len()]),
            health: HealthReading { power_limit_watts: Some(p.max_power_watts), ..HealthReading::default() },
            memory_temperature_celsius: None,
            xid: Some(XidErrors::default()),
            mig_devices: Vec::new(),
        };
        let reading = if gpu.mig { mig_reading(workloads, reading) } else { reading };
        let processes = if request.processes && gpu.mig {
            // As NVML: no per-process utilization in MIG mode.
            ProcessUsage::Unsupported
        } else if request.processes {
            let timestamp_us = (t * 1e6) as u64;
            ProcessUsage::Samples(
                workloads
                    .iter()
                    .zip(&loads)
                    .filter(|_| timestamp_us > request.processes_since_us)
                    .map(|(w, load)| ProcessSample {
                        pid: w.pid,
                        timestamp_us,
                        sm_percent: (load * scale).round() as u32,
                        memory_percent: (load * scale * 0.55).round() as u32,
                    })
                    .collect(),
            )
        } else {
            ProcessUsage::NotRead
        };
        // Each workload's one process holds its memory; the rest of the
        // device's use (600 MiB) is the driver's and no pod's.
        let running = if request.running {
            RunningProcesses::Listed(
                workloads
                    .iter()
                    .map(|w| GpuProcess {
                        pid: w.pid,
                        used_memory_bytes: Some(w.memory_bytes),
                        kind: ProcessKind::Compute,
                    })
                    .collect(),
            )
        } else {
            RunningProcesses::NotRead
        };
        GpuRead { identity: Some(gpu.identity.clone()), up: true, reading, processes, running, errors: Vec::new() }
    }
}

/// A GPU in MIG mode as NVML reports it: no device-wide utilization, and one
/// 3g.40gb MIG device per workload holding its memory (plus 300 MiB of
/// context).
fn mig_reading(workloads: &[SimWorkload], reading: GpuReading) -> GpuReading {
    let mig_devices: Vec<MigDevice> = workloads
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            Some(MigDevice {
                uuid: w.mig_uuid.clone()?,
                gpu_instance_id: 1 + i as u32,
                compute_instance_id: 0,
                profile: "3g.40gb".into(),
                memory_used_bytes: Some((w.memory_bytes + (300 << 20)).min(MIG_MEMORY_BYTES)),
                memory_total_bytes: Some(MIG_MEMORY_BYTES),
                // An A100: no GPM, so no MIG utilization.
                utilization_percent: None,
            })
        })
        .collect();
    GpuReading {
        utilization_percent: None,
        memory_utilization_percent: None,
        memory_used_bytes: Some(mig_devices.iter().filter_map(|m| m.memory_used_bytes).sum()),
        mig_devices,
        ..reading
    }
}

impl GpuSource for SimNode {
    fn gpu_count(&self) -> u32 {
        self.gpus.len() as u32
    }

    fn read(&self, index: u32, request: ReadRequest) -> GpuRead {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        self.read_at(index, request, t)
    }

    fn driver_version(&self) -> Option<String> {
        Some("simulated".to_string())
    }

    fn known_identity(&self, index: u32) -> Option<GpuIdentity> {
        self.gpus.get(index as usize).map(|g| g.identity.clone())
    }
}

/// Opens a [`SimNode`]; it never fails.
pub struct SimOpener(pub Arc<SimNode>);

/// The simulated node's pods, as attribution sees them.
pub struct SimAttribution(pub Arc<SimNode>);

impl Attribution for SimAttribution {
    fn allocations(&mut self) -> std::pin::Pin<Box<dyn Future<Output = Allocations> + Send + '_>> {
        Box::pin(std::future::ready(Allocations::Known(self.0.allocations())))
    }

    fn pod_uid_of(&mut self, pid: u32) -> Option<String> {
        self.0.pod_uid_of(pid)
    }
}

impl GpuSourceOpener for SimOpener {
    fn open(&self) -> Result<Arc<dyn GpuSource>, GpuSourceError> {
        Ok(self.0.clone())
    }
}

/// A time-slice replica's device ID, as NVIDIA's device plugin names it:
/// `GPU-<uuid>::<n>`.
pub fn time_slice_replica(gpu_uuid: &str, replica: u32) -> String {
    format!("{gpu_uuid}::{replica}")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn hex(rng: &mut fastrand::Rng, n: usize) -> String {
    (0..n).map(|_| char::from_digit(rng.u32(0..16), 16).expect("digit below 16")).collect()
}

fn alnum(rng: &mut fastrand::Rng, n: usize) -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n).map(|_| char::from(CHARS[rng.usize(0..CHARS.len())])).collect()
}

fn uuid(rng: &mut fastrand::Rng) -> String {
    format!("{}-{}-4{}-a{}-{}", hex(rng, 8), hex(rng, 4), hex(rng, 3), hex(rng, 3), hex(rng, 12))
}

#[cfg(test)]
mod tests;
