//! Which pod uses which GPU, and how much of it.
//!
//! The kubelet says which containers hold which GPU ([`podresources`]). A GPU
//! held by one container is *exclusive*: the container gets the device's
//! values. A GPU held by several (time-slicing) is *shared*: each pod gets the
//! utilization of its own processes, from NVML's per-process samples and each
//! PID's cgroup ([`process`]), joined to pods by UID ([`checkpoint`]). When a
//! share cannot be worked out, the pod gets a reason instead of a number: the
//! device value is never copied to every pod.

pub mod checkpoint;
pub mod kubelet;
pub mod podresources;
pub mod process;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use clap::Args;

use crate::gpu::{GpuIdentity, GpuReading, ProcessKind, ProcessUsage, RunningProcesses};

/// Flags for pod attribution.
#[derive(Clone, Debug, Args)]
pub struct AttributionArgs {
    /// The kubelet PodResources socket. While it is missing, GPU series carry no
    /// pod labels and the agent retries with backoff.
    #[arg(long, env = "KGM_POD_RESOURCES_SOCKET", default_value = "/var/lib/kubelet/pod-resources/kubelet.sock")]
    pub pod_resources_socket: PathBuf,

    /// Timeout of one PodResources call.
    #[arg(long, env = "KGM_POD_RESOURCES_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub pod_resources_timeout: Duration,

    /// The extended resources GPUs are requested by, comma-separated; a
    /// trailing `*` matches any suffix (`nvidia.com/mig-*`: every MIG
    /// profile, under both MIG strategies).
    #[arg(
        long,
        alias = "gpu-resource-name",
        env = "KGM_GPU_RESOURCE_NAMES",
        value_delimiter = ',',
        default_value = "nvidia.com/gpu,nvidia.com/gpu.shared,nvidia.com/mig-*"
    )]
    pub gpu_resource_names: Vec<String>,

    /// DRA drivers whose ResourceClaim devices are GPUs, comma-separated
    /// (the kubelet's PodResources `dynamic_resources`, Kubernetes 1.31+).
    #[arg(long, env = "KGM_GPU_DRA_DRIVERS", value_delimiter = ',', default_value = "gpu.nvidia.com")]
    pub gpu_dra_drivers: Vec<String>,

    /// The kubelet's device manager checkpoint, which maps pod UIDs to devices
    /// (needed only for shared GPUs).
    #[arg(
        long,
        env = "KGM_KUBELET_CHECKPOINT",
        default_value = "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint"
    )]
    pub kubelet_checkpoint: PathBuf,

    /// Where host processes are visible (the host's `/proc`, with `hostPID`).
    #[arg(long, env = "KGM_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
}

/// What one pass learned of who holds which GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocations {
    /// Attribution is off.
    Off,
    /// The holders.
    Known(Vec<ContainerAllocation>),
    /// The source did not answer; `attempted` is false while it waits out a
    /// backoff.
    Unavailable {
        /// Whether a call was made (and failed) this pass.
        attempted: bool,
    },
}

/// Where the sampler learns which container holds which GPU and which pod a
/// PID belongs to: the kubelet and `/proc` on a node
/// ([`kubelet::KubeletAttribution`]), nothing ([`Unattributed`]), or a
/// simulated node.
pub trait Attribution: Send {
    /// The current allocations.
    fn allocations(&mut self) -> Pin<Box<dyn Future<Output = Allocations> + Send + '_>>;

    /// The UID of the pod a host PID belongs to, if any.
    fn pod_uid_of(&mut self, pid: u32) -> Option<String>;

    /// Called after each pass (to forget PIDs that are gone).
    fn end_pass(&mut self) {}
}

/// No attribution (`--no-attribution`, or no kubelet on the host).
pub struct Unattributed;

impl Attribution for Unattributed {
    fn allocations(&mut self) -> Pin<Box<dyn Future<Output = Allocations> + Send + '_>> {
        Box::pin(std::future::ready(Allocations::Off))
    }

    fn pod_uid_of(&mut self, _: u32) -> Option<String> {
        None
    }
}

/// One container's GPU devices, as the kubelet allocated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerAllocation {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Pod UID, where known.
    pub pod_uid: Option<String>,
    /// Device IDs as the device plugin named them: a UUID, a UUID with a
    /// time-slice replica suffix (`GPU-…::3`), or an index (`0`).
    pub device_ids: Vec<String>,
}

impl ContainerAllocation {
    /// Whether this container holds `gpu` under any of its device IDs.
    pub fn holds(&self, gpu: &GpuIdentity) -> bool {
        self.device_ids.iter().any(|id| device_matches(id, gpu))
    }
}

/// Whether a resource name is one of `patterns` (a trailing `*` matches
/// any suffix).
pub fn resource_matches(patterns: &[String], resource_name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => resource_name.starts_with(prefix),
        None => p == resource_name,
    })
}

/// The GPU a device plugin ID names: `GPU-x` for `GPU-x::N` (a time-slice
/// replica), the ID itself otherwise.
pub fn device_base(device_id: &str) -> &str {
    device_id.split_once("::").map_or(device_id, |(base, _)| base)
}

/// Matches a device plugin ID against a GPU: `GPU-x`, `GPU-x::N` (a
/// time-slice replica) or, with the plugin's index strategy, `0`.
pub fn device_matches(device_id: &str, gpu: &GpuIdentity) -> bool {
    let base = device_base(device_id);
    base == gpu.uuid || base.parse::<u32>() == Ok(gpu.index)
}

crate::label_value::label_value! {
    /// How a GPU is held (the `sharing` label).
    pub enum Sharing: "sharing" {
        /// By one container.
        Exclusive = "exclusive",
        /// By several containers (time-slicing).
        Shared = "shared",
    }
}

crate::label_value::label_value! {
    /// Why a pod's share of a GPU has no value (the `reason` label).
    pub enum Unresolved: "reason" {
        /// The GPU is down: nothing to attribute.
        GpuDown = "gpu-down",
        /// The GPU cannot report per-process utilization.
        ProcessUtilizationUnsupported = "process-utilization-unsupported",
        /// The pod's UID is not known, so its processes cannot be found.
        PodUidUnknown = "pod-uid-unknown",
        /// The pod's processes are MPS clients, and NVML's utilization
        /// samples name none of them (the MPS server runs their work).
        MpsClientUnsampled = "mps-client-unsampled",
        /// The pod holds a MIG device whose utilization is not measured:
        /// the GPU has no GPM (Ampere and older), GPM has only one sample
        /// yet, the GPU instance is split into compute instances, or the
        /// device is time-sliced between pods (its memory is measured).
        MigUtilizationUnmeasured = "mig-utilization-unmeasured",
    }
}

/// One pod's use of one GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct PodGpuUsage {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name (several, comma-separated, when containers of one pod
    /// share a time-sliced GPU: processes map to pods, not containers).
    pub container: String,
    /// Index of the GPU in the agent's GPU list.
    pub gpu: usize,
    /// The MIG device of that GPU the pod holds (an index into its
    /// reading's `mig_devices`); `None` for a whole GPU.
    pub mig: Option<usize>,
    /// How the GPU is held.
    pub sharing: Sharing,
    /// The pod's utilization of this GPU, percent, or why there is none.
    pub utilization_percent: Result<f64, Unresolved>,
    /// The pod's memory-controller utilization, percent, where known.
    pub memory_utilization_percent: Option<f64>,
    /// Device memory the pod's processes hold on this GPU, where known:
    /// from NVML's running-process lists, or, on an exclusive GPU whose
    /// lists cannot be read, the device's value.
    pub memory_used_bytes: Option<u64>,
}

/// What attribution needs to know of one GPU.
pub struct GpuView<'a> {
    /// Who it is; GPUs without an identity cannot be matched.
    pub identity: Option<&'a GpuIdentity>,
    /// Whether it answered.
    pub up: bool,
    /// Its device values.
    pub reading: &'a GpuReading,
    /// Its per-process samples, for shared GPUs.
    pub processes: &'a ProcessUsage,
    /// Its running processes and their memory, for GPUs pods hold.
    pub running: &'a RunningProcesses,
}

/// What one pod's processes hold of one GPU.
#[derive(Clone, Copy, Debug, Default)]
struct PodProcesses {
    /// Summed device memory, `None` once any process's memory is unknown.
    memory_bytes: Option<u64>,
    /// Whether any of them is an MPS client.
    mps: bool,
}

/// Per pod UID, what its processes hold of a GPU; `None` when the lists
/// could not be read.
fn pod_processes(
    running: &RunningProcesses,
    pod_uid_of: &mut impl FnMut(u32) -> Option<String>,
) -> Option<HashMap<String, PodProcesses>> {
    let RunningProcesses::Listed(list) = running else { return None };
    let mut per_pod: HashMap<String, PodProcesses> = HashMap::new();
    // A process in two lists (compute and graphics) holds its memory once.
    let mut counted: Vec<u32> = Vec::with_capacity(list.len());
    for process in list {
        let Some(uid) = pod_uid_of(process.pid) else { continue };
        let entry = per_pod.entry(uid).or_insert(PodProcesses { memory_bytes: Some(0), mps: false });
        entry.mps |= process.kind == ProcessKind::Mps;
        if !counted.contains(&process.pid) {
            counted.push(process.pid);
            entry.memory_bytes = entry.memory_bytes.zip(process.used_memory_bytes).map(|(a, b)| a.saturating_add(b));
        }
    }
    Some(per_pod)
}

/// The memory a holder's processes hold: `Some(0)` for a pod with no
/// process on the GPU, `None` when it cannot be known.
fn holder_memory(per_pod: Option<&HashMap<String, PodProcesses>>, holder: &ContainerAllocation) -> Option<u64> {
    let uid = holder.pod_uid.as_ref()?;
    match per_pod?.get(uid) {
        Some(pod) => pod.memory_bytes,
        None => Some(0),
    }
}

/// Attributes every GPU to the containers that hold it. `pod_uid_of` maps a
/// host PID to its pod UID.
pub fn attribute(
    gpus: &[GpuView<'_>],
    allocations: &[ContainerAllocation],
    mut pod_uid_of: impl FnMut(u32) -> Option<String>,
) -> Vec<PodGpuUsage> {
    let mut usages = Vec::new();
    for (gpu_pos, gpu) in gpus.iter().enumerate() {
        let Some(identity) = gpu.identity else { continue };
        attribute_mig(gpu_pos, gpu, allocations, &mut usages);
        let holders: Vec<&ContainerAllocation> = allocations.iter().filter(|a| a.holds(identity)).collect();
        match holders.as_slice() {
            [] => {}
            [only] => {
                let per_pod = pod_processes(gpu.running, &mut pod_uid_of);
                // The pod's own processes where they can be listed; the
                // device's value where they cannot (the pod holds the GPU).
                let memory_used_bytes = match (&per_pod, &only.pod_uid) {
                    (Some(_), Some(_)) => holder_memory(per_pod.as_ref(), only),
                    _ => gpu.reading.memory_used_bytes,
                };
                usages.push(PodGpuUsage {
                    namespace: only.namespace.clone(),
                    pod: only.pod.clone(),
                    container: only.container.clone(),
                    gpu: gpu_pos,
                    mig: None,
                    sharing: Sharing::Exclusive,
                    utilization_percent: match (gpu.up, gpu.reading.utilization_percent) {
                        (true, Some(u)) => Ok(u),
                        _ => Err(Unresolved::GpuDown),
                    },
                    memory_utilization_percent: gpu.reading.memory_utilization_percent.filter(|_| gpu.up),
                    memory_used_bytes: memory_used_bytes.filter(|_| gpu.up),
                })
            }
            shared => attribute_shared(gpu_pos, gpu, shared, &mut pod_uid_of, &mut usages),
        }
    }
    usages
}

/// Gives each container that holds a MIG device of this GPU (the device
/// plugin hands out MIG UUIDs) that device's values: its memory, and its
/// utilization where GPM measures it (otherwise unmeasured, never the
/// parent's). A MIG device held by several containers (time-sliced) is
/// marked shared; its memory and utilization are the device's, not theirs,
/// and NVML has no per-process split in MIG mode.
fn attribute_mig(
    gpu_pos: usize,
    gpu: &GpuView<'_>,
    allocations: &[ContainerAllocation],
    usages: &mut Vec<PodGpuUsage>,
) {
    for (mig_pos, mig) in gpu.reading.mig_devices.iter().enumerate() {
        let holders: Vec<&ContainerAllocation> =
            allocations.iter().filter(|a| a.device_ids.iter().any(|id| device_base(id) == mig.uuid)).collect();
        let sharing = if holders.len() > 1 { Sharing::Shared } else { Sharing::Exclusive };
        for holder in holders {
            usages.push(PodGpuUsage {
                namespace: holder.namespace.clone(),
                pod: holder.pod.clone(),
                container: holder.container.clone(),
                gpu: gpu_pos,
                mig: Some(mig_pos),
                sharing,
                utilization_percent: match (gpu.up, mig.utilization_percent) {
                    (false, _) => Err(Unresolved::GpuDown),
                    (true, Some(busy)) if sharing == Sharing::Exclusive => Ok(busy),
                    (true, _) => Err(Unresolved::MigUtilizationUnmeasured),
                },
                memory_utilization_percent: None,
                memory_used_bytes: mig.memory_used_bytes.filter(|_| gpu.up && sharing == Sharing::Exclusive),
            });
        }
    }
}

/// Splits a shared GPU between pods by their processes' samples.
fn attribute_shared(
    gpu_pos: usize,
    gpu: &GpuView<'_>,
    holders: &[&ContainerAllocation],
    pod_uid_of: &mut impl FnMut(u32) -> Option<String>,
    usages: &mut Vec<PodGpuUsage>,
) {
    // Per pod UID: summed mean SM and memory percent of its processes.
    let per_pod: Result<HashMap<String, (f64, f64)>, Unresolved> = match (gpu.up, gpu.processes) {
        (false, _) => Err(Unresolved::GpuDown),
        (true, ProcessUsage::Samples(samples)) => {
            let mut per_pid: HashMap<u32, (f64, f64, u32)> = HashMap::new();
            for s in samples {
                let e = per_pid.entry(s.pid).or_default();
                e.0 += f64::from(s.sm_percent);
                e.1 += f64::from(s.memory_percent);
                e.2 += 1;
            }
            let mut per_pod: HashMap<String, (f64, f64)> = HashMap::new();
            for (pid, (sm, mem, n)) in per_pid {
                if let Some(uid) = pod_uid_of(pid) {
                    let e = per_pod.entry(uid).or_default();
                    e.0 += sm / f64::from(n);
                    e.1 += mem / f64::from(n);
                }
            }
            Ok(per_pod)
        }
        (true, _) => Err(Unresolved::ProcessUtilizationUnsupported),
    };
    let processes = if gpu.up { pod_processes(gpu.running, pod_uid_of) } else { None };

    // Containers of one pod on one GPU are reported once: processes map to pods.
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for holder in holders {
        let key = (holder.namespace.as_str(), holder.pod.as_str());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let containers: Vec<&str> = holders
            .iter()
            .filter(|h| (h.namespace.as_str(), h.pod.as_str()) == key)
            .map(|h| h.container.as_str())
            .collect();
        let mps_client = |uid: &String| processes.as_ref().and_then(|p| p.get(uid)).is_some_and(|p| p.mps);
        let share = match (&per_pod, &holder.pod_uid) {
            (Err(reason), _) => Err(*reason),
            (Ok(_), None) => Err(Unresolved::PodUidUnknown),
            (Ok(per_pod), Some(uid)) => match per_pod.get(uid) {
                Some(share) => Ok(*share),
                // The MPS server runs its clients' work: no sample of the
                // pod's own says nothing of how busy it is.
                None if mps_client(uid) => Err(Unresolved::MpsClientUnsampled),
                // A pod with no samples in the window ran nothing: 0 %, honestly.
                None => Ok((0.0, 0.0)),
            },
        };
        usages.push(PodGpuUsage {
            namespace: holder.namespace.clone(),
            pod: holder.pod.clone(),
            container: containers.join(","),
            gpu: gpu_pos,
            mig: None,
            sharing: Sharing::Shared,
            utilization_percent: share.map(|(sm, _)| sm.min(100.0)),
            memory_utilization_percent: share.ok().map(|(_, mem)| mem.min(100.0)),
            memory_used_bytes: holder_memory(processes.as_ref(), holder),
        });
    }
}

#[cfg(test)]
mod tests;
