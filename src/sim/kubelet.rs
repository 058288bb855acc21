//! The kubelet and NVIDIA's device plugin of simulated nodes that joined a
//! real cluster (`standalone --cluster`), as far as the metrics and the
//! controllers need them. The control plane is the cluster's own.
//!
//! Four times a second it looks at the pods the real scheduler bound to its
//! nodes, level-triggered from a watch cache:
//! - a new pod is admitted: each container that asks for `nvidia.com/gpu`
//!   gets that many free time-slice replicas (`GPU-…::N`) and a GPU process;
//!   the pod is reported `Running` at once and `Ready` after its start-up
//!   time. A pod asking for more than is free is failed as the kubelet fails
//!   it (`UnexpectedAdmissionError`);
//! - a pod being deleted loses its containers, then its object is deleted
//!   with grace period 0, as the kubelet does once they have stopped.
//!
//! Each second it spreads every scenario Deployment's demand over its ready
//! pods ([`crate::twin::engine::spread`], as the twin does), sets the
//! simulated GPUs' processes and publishes them through each node's
//! PodResources socket, checkpoint and process cgroups
//! ([`super::node_api`]), so the agents attribute them by their normal path.
//! Pods of other workloads idle.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::node_api::NodeApi;
use super::{SimNode, SimWorkload, time_slice_replica};
use crate::sim::scenario::Scenario;
use crate::twin::engine::{PodLoad, Row, spread};
use crate::twin::model::DeploymentSpec;

/// The extended resource NVIDIA's device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A pod's start-up time when neither its readiness probe nor
/// `--deployments` says (the twin's default).
pub const DEFAULT_STARTUP: Duration = Duration::from_secs(45);

/// Device memory a simulated GPU process holds.
const PROCESS_MEMORY_BYTES: u64 = 4 << 30;

/// One simulated node as its kubelet runs it.
pub struct KubeletNode {
    /// Its GPUs and their processes.
    pub sim: Arc<SimNode>,
    /// What the agent reads of its kubelet: PodResources, the checkpoint,
    /// the processes' cgroups.
    pub api: Arc<NodeApi>,
    /// Its InternalIP, which host-network pods also get.
    pub ip: String,
    /// Time-slice replicas per GPU.
    pub replicas: u32,
}

/// A container holding GPUs.
#[derive(Clone, Debug)]
struct GpuContainer {
    name: String,
    device_ids: Vec<String>,
    /// The GPU (index on its node) of its first device.
    gpu: usize,
    pid: u32,
}

/// A pod the kubelet admitted.
#[derive(Clone, Debug)]
struct Admitted {
    namespace: String,
    name: String,
    uid: String,
    node: usize,
    /// `namespace/name` of its Deployment, if a ReplicaSet owns it.
    deployment: Option<String>,
    containers: Vec<GpuContainer>,
    ready_at: Instant,
    ready: bool,
}

/// Its Deployment, `namespace/name`: the owning ReplicaSet's name less the
/// `pod-template-hash` the Deployment controller appended.
pub fn deployment_of(pod: &Pod) -> Option<String> {
    let owner = pod.owner_references().iter().find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))?;
    let hash = pod.labels().get("pod-template-hash")?;
    let name = owner.name.strip_suffix(hash)?.strip_suffix('-')?;
    Some(format!("{}/{name}", pod.namespace().unwrap_or_default()))
}

/// How many GPUs a container asks for (its limit, which the device plugin's
/// resource requires; a request alone must equal it).
pub fn gpus_wanted(container: &Container) -> u32 {
    let resources = container.resources.as_ref();
    let quantity = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(GPU_RESOURCE))
        .or_else(|| resources.and_then(|r| r.requests.as_ref()).and_then(|r| r.get(GPU_RESOURCE)));
    quantity.and_then(|q| q.0.parse().ok()).unwrap_or(0)
}

/// How long `pod` takes to become ready: its first container's
/// `readinessProbe.initialDelaySeconds`, else its Deployment's `startup` in
/// `--deployments` (by name or `namespace/name`), else 45 s.
pub fn startup_of(pod: &Pod, deployments: &[DeploymentSpec]) -> Duration {
    let probe = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.readiness_probe.as_ref())
        .and_then(|p| p.initial_delay_seconds);
    if let Some(seconds) = probe {
        return Duration::from_secs(seconds.max(0) as u64);
    }
    let deployment = deployment_of(pod);
    deployment
        .as_deref()
        .and_then(|full| {
            let short = full.split_once('/').map_or(full, |(_, name)| name);
            deployments.iter().find(|d| d.name == full || d.name == short)
        })
        .map_or(DEFAULT_STARTUP, |d| d.startup)
}

/// The scenario's workload a Deployment (`namespace/name`) is: named
/// `namespace/name`, or by its name alone.
pub fn scenario_key<'a>(scenario: &'a Scenario, deployment: &str) -> Option<&'a str> {
    let short = deployment.split_once('/').map_or(deployment, |(_, name)| name);
    [deployment, short].into_iter().find_map(|k| scenario.workloads.get_key_value(k).map(|(k, _)| k.as_str()))
}

/// A pod's status as the kubelet reports it once its containers run:
/// `Running`, with every container ready once `ready`.
pub fn running_status(pod: &Pod, ip: &str, started: &str, ready: bool) -> serde_json::Value {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let uid = pod.uid().unwrap_or_default().replace('-', "");
    let containers = pod.spec.as_ref().map_or(&[][..], |s| s.containers.as_slice());
    let statuses: Vec<serde_json::Value> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "name": c.name, "ready": ready, "started": true, "restartCount": 0,
                "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "containerID": format!("containerd://{uid}{i:02}"),
                "state": {"running": {"startedAt": started}},
            })
        })
        .collect();
    let status = if ready { "True" } else { "False" };
    let condition = |kind: &str, value: &str| {
        let mut c = json!({"type": kind, "status": value, "lastProbeTime": null, "lastTransitionTime": now});
        if value == "False" {
            c["reason"] = json!("ContainersNotReady");
        }
        c
    };
    json!({"status": {
        "phase": "Running",
        "hostIP": ip, "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": started,
        "conditions": [
            condition("Initialized", "True"), condition("Ready", status),
            condition("ContainersReady", status), condition("PodScheduled", "True"),
        ],
        "containerStatuses": statuses,
    }})
}

/// The status the kubelet gives a pod whose devices it cannot allocate.
pub fn rejected_status(wanted: u32, free: usize) -> serde_json::Value {
    json!({"status": {
        "phase": "Failed",
        "reason": "UnexpectedAdmissionError",
        "message": format!(
            "Allocate failed due to requested number of devices unavailable for {GPU_RESOURCE}. \
             Requested: {wanted}, Available: {free}, which is unexpected"
        ),
    }})
}

/// What the status line and the timeline read of one HPA.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HpaView {
    /// `namespace/name`.
    pub name: String,
    /// Its scale target, `namespace/name`.
    pub target: String,
    /// Its first metric: what it last saw, and its target.
    pub current: Option<f64>,
    /// Its first metric's target.
    pub goal: Option<f64>,
    /// `status.desiredReplicas`.
    pub desired: u32,
}

/// What the kubelets run with.
pub struct KubeletSetup {
    /// The simulated nodes.
    pub nodes: Vec<KubeletNode>,
    /// Load per Deployment, if scripted.
    pub scenario: Option<Scenario>,
    /// Start-up times by Deployment.
    pub deployments: Vec<DeploymentSpec>,
    /// The scenario's t = 0.
    pub start: Instant,
}

/// The kubelets of every simulated node, driven by [`Kubelets::tick`].
pub struct Kubelets {
    setup: KubeletSetup,
    client: kube::Client,
    admitted: HashMap<String, Admitted>,
    /// Pods whose deletion was sent (by UID), so that it is sent once.
    finished: BTreeSet<String>,
    next_pid: u32,
}

impl Kubelets {
    /// The kubelets, acting through `client`.
    pub fn new(setup: KubeletSetup, client: kube::Client) -> Self {
        Kubelets { setup, client, admitted: HashMap::new(), finished: BTreeSet::new(), next_pid: 20_000 }
    }

    /// The simulated nodes.
    pub fn nodes(&self) -> &[KubeletNode] {
        &self.setup.nodes
    }

    fn node_of(&self, pod: &Pod) -> Option<usize> {
        let bound = pod.spec.as_ref()?.node_name.as_deref()?;
        self.setup.nodes.iter().position(|n| n.sim.node == bound)
    }

    /// The replicas of node `n` no admitted pod holds, lowest first: (GPU
    /// index, device ID).
    fn free_devices(&self, n: usize) -> Vec<(usize, String)> {
        let held: BTreeSet<&str> = self
            .admitted
            .values()
            .filter(|a| a.node == n)
            .flat_map(|a| a.containers.iter().flat_map(|c| c.device_ids.iter().map(String::as_str)))
            .collect();
        let node = &self.setup.nodes[n];
        (0..node.replicas)
            .flat_map(|r| node.sim.gpus.iter().enumerate().map(move |(g, gpu)| (g, r, gpu)))
            .map(|(g, r, gpu)| (g, time_slice_replica(&gpu.identity.uuid, r)))
            .filter(|(_, id)| !held.contains(id.as_str()))
            .collect()
    }

    /// One look at every pod: admits, starts and finishes those bound to
    /// the simulated nodes. API errors are logged and retried next time.
    pub async fn tick(&mut self, pods: &[Arc<Pod>]) {
        let present: BTreeSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        self.admitted.retain(|uid, _| present.contains(uid));
        self.finished.retain(|uid| present.contains(uid));
        for pod in pods {
            let Some(n) = self.node_of(pod) else { continue };
            let uid = pod.uid().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                self.finish(pod, &uid).await;
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            match self.admitted.get(&uid) {
                None => self.admit(pod, n, uid).await,
                Some(a) if !a.ready && Instant::now() >= a.ready_at => self.mark_ready(pod, uid).await,
                Some(_) => {}
            }
        }
    }

    async fn admit(&mut self, pod: &Pod, n: usize, uid: String) {
        let containers = pod.spec.as_ref().map_or(&[][..], |s| s.containers.as_slice());
        let wanted: u32 = containers.iter().map(gpus_wanted).sum();
        let free = self.free_devices(n);
        let available = free.len();
        let mut free = free.into_iter();
        let ip = self.setup.nodes[n].ip.clone();
        let name = pod.name_any();
        let namespace = pod.namespace().unwrap_or_default();
        if wanted as usize > available {
            tracing::warn!(pod = %format!("{namespace}/{name}"), wanted, available, "no free GPU: the pod fails admission");
            self.patch_status(&namespace, &name, rejected_status(wanted, available)).await;
            return;
        }
        let mut gpu_containers = Vec::new();
        for c in containers {
            let want = gpus_wanted(c);
            if want == 0 {
                continue;
            }
            let devices: Vec<(usize, String)> = free.by_ref().take(want as usize).collect();
            self.next_pid += 1;
            gpu_containers.push(GpuContainer {
                name: c.name.clone(),
                gpu: devices[0].0,
                device_ids: devices.into_iter().map(|(_, id)| id).collect(),
                pid: self.next_pid,
            });
        }
        let startup = startup_of(pod, &self.setup.deployments);
        let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        if !self.patch_status(&namespace, &name, running_status(pod, &ip, &started, false)).await {
            return;
        }
        tracing::info!(pod = %format!("{namespace}/{name}"), node = %self.setup.nodes[n].sim.node, startup_s = startup.as_secs(), "pod started");
        self.admitted.insert(
            uid.clone(),
            Admitted {
                namespace,
                name,
                uid,
                node: n,
                deployment: deployment_of(pod),
                containers: gpu_containers,
                ready_at: Instant::now() + startup,
                ready: false,
            },
        );
    }

    async fn mark_ready(&mut self, pod: &Pod, uid: String) {
        let Some(a) = self.admitted.get(&uid) else { return };
        let (namespace, name, ip) = (a.namespace.clone(), a.name.clone(), self.setup.nodes[a.node].ip.clone());
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_else(|| humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        if self.patch_status(&namespace, &name, running_status(pod, &ip, &started, true)).await
            && let Some(a) = self.admitted.get_mut(&uid)
        {
            a.ready = true;
            tracing::info!(pod = %format!("{namespace}/{name}"), "pod ready");
        }
    }

    /// Its containers stop (it leaves the GPU), then the object goes.
    async fn finish(&mut self, pod: &Pod, uid: &str) {
        self.admitted.remove(uid);
        if !self.finished.insert(uid.to_string()) {
            return;
        }
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..DeleteParams::default()
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %pod.name_any(), error = %e, "cannot delete a finished pod; trying again");
                self.finished.remove(uid);
            }
        }
    }

    async fn patch_status(&self, namespace: &str, name: &str, status: serde_json::Value) -> bool {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "cannot report a pod's status; trying again");
                false
            }
        }
    }

    /// Sets every GPU's processes from the admitted pods and the scenario's
    /// demand at `elapsed`; returns the timeline's rows for this second.
    pub fn serve(
        &self,
        elapsed: Duration,
        pods: &[Arc<Pod>],
        deployments: &Store<Deployment>,
        hpas: &[HpaView],
    ) -> Vec<Row> {
        let keys: Vec<&str> =
            self.setup.scenario.as_ref().map_or(Vec::new(), |s| s.workloads.keys().map(String::as_str).collect());
        let demand: Vec<f64> =
            keys.iter().map(|k| self.setup.scenario.as_ref().and_then(|s| s.load(k, elapsed)).unwrap_or(0.0)).collect();
        let gpus: Vec<(usize, usize)> = self
            .setup
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(n, node)| (0..node.sim.gpus.len()).map(move |g| (n, g)))
            .collect();
        let capacities: Vec<f64> =
            gpus.iter().map(|&(n, g)| self.setup.nodes[n].sim.gpus[g].profile.relative_capacity()).collect();
        let mut admitted: Vec<&Admitted> = self.admitted.values().filter(|a| !a.containers.is_empty()).collect();
        admitted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let key_of = |a: &Admitted| {
            let scenario = self.setup.scenario.as_ref()?;
            let key = scenario_key(scenario, a.deployment.as_deref()?)?;
            keys.iter().position(|k| *k == key)
        };
        // Pods no scenario names idle: they take no part in the spread.
        let loads: Vec<(&Admitted, PodLoad)> = admitted
            .iter()
            .filter_map(|a| {
                let gpu = gpus.iter().position(|&(n, g)| n == a.node && g == a.containers[0].gpu);
                Some((*a, PodLoad { demand: key_of(a)?, gpu, ready: a.ready }))
            })
            .collect();
        let served = spread(&demand, &loads.iter().map(|(_, l)| *l).collect::<Vec<_>>(), &capacities);
        let utilization_of =
            |a: &Admitted| loads.iter().position(|(b, _)| b.uid == a.uid).map_or(0.0, |i| served.pods[i].0);

        let mut per_node: Vec<Vec<Vec<SimWorkload>>> =
            self.setup.nodes.iter().map(|n| vec![Vec::new(); n.sim.gpus.len()]).collect();
        for a in &admitted {
            let share = utilization_of(a) / a.containers.len() as f64;
            for c in &a.containers {
                per_node[a.node][c.gpu].push(SimWorkload {
                    mig_uuid: None,
                    device_ids: Some(c.device_ids.clone()),
                    app: a
                        .deployment
                        .as_deref()
                        .map_or(a.name.as_str(), |d| d.split_once('/').map_or(d, |(_, n)| n))
                        .to_string(),
                    namespace: a.namespace.clone(),
                    pod: a.name.clone(),
                    container: c.name.clone(),
                    pod_uid: a.uid.clone(),
                    pid: c.pid,
                    memory_bytes: PROCESS_MEMORY_BYTES,
                    base_percent: 0.0,
                    swing_percent: 0.0,
                    period_seconds: 60.0,
                    phase: 0.0,
                    twin_load: Some(share),
                });
            }
        }
        for (node, workloads) in self.setup.nodes.iter().zip(per_node) {
            node.sim.set_workloads(workloads);
            if let Err(e) = node.api.publish() {
                tracing::warn!(node = %node.sim.node, error = %e, "cannot write the kubelet's checkpoint or process files");
            }
        }

        keys.iter()
            .enumerate()
            .map(|(k, key)| {
                let mine: Vec<&&Admitted> = admitted.iter().filter(|a| key_of(a) == Some(k)).collect();
                let unserved: f64 = loads
                    .iter()
                    .zip(&served.pods)
                    .filter(|((_, load), _)| load.demand == k)
                    .map(|(_, (_, left))| left)
                    .sum::<f64>()
                    + served.idle[k];
                let deployment = deployments.state().into_iter().find(|d| {
                    let full_name = format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any());
                    full_name == *key || (!key.contains('/') && d.name_any() == *key)
                });
                let desired = deployment.as_ref().and_then(|d| d.spec.replicas).unwrap_or(0).max(0) as u32;
                let target =
                    deployment.as_ref().map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()));
                let pending = pods
                    .iter()
                    .filter(|p| p.spec.as_ref().is_none_or(|s| s.node_name.is_none()))
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| deployment_of(p).is_some_and(|d| Some(&d) == target.as_ref()))
                    .count() as u32;
                Row {
                    t: elapsed.as_secs(),
                    deployment: key.to_string(),
                    demand: demand[k],
                    desired,
                    ready: mine.iter().filter(|a| a.ready).count() as u32,
                    starting: mine.iter().filter(|a| !a.ready).count() as u32,
                    pending,
                    seen: hpas.iter().find(|h| Some(&h.target) == target.as_ref()).and_then(|h| h.current),
                    unserved,
                    pods: mine
                        .iter()
                        .map(|a| (a.name.clone(), self.setup.nodes[a.node].sim.node.clone(), utilization_of(a)))
                        .collect(),
                    gpus: gpus
                        .iter()
                        .zip(&served.gpus)
                        .map(|(&(n, g), u)| (format!("{}/{g}", self.setup.nodes[n].sim.node), *u))
                        .collect(),
                }
            })
            .collect()
    }

    /// Seconds since the scenario's t = 0.
    pub fn elapsed(&self) -> Duration {
        self.setup.start.elapsed()
    }
}

#[cfg(test)]
mod tests;
