//! The twin, live: `standalone --scenario` runs the [`Twin`] on the wall
//! clock against the simulated nodes and the real adapter.
//!
//! ```text
//! scenario ─► Twin (Deployment controller, scheduler, demand) ─► SimNodes' pods + the API's labels
//!                ▲                                                     │ agents sample, adapter polls
//!                └──── HPA sync every 15 s on the adapter's values ◄───┘
//! ```
//!
//! Each HPA's Deployment is one of the simulated workloads: its first
//! replica is the seed pod, later ones are new pods (new names, UIDs and
//! processes) on the GPU the scheduler chose, listed by the kubelet as soon
//! as they are scheduled and busy once their start-up time has passed. The
//! other workloads stay where they are, holding their time-slicing replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::engine::Twin;
use super::model::{ClusterSpec, DeploymentSpec};
use crate::adapter::provider::Provider;
use crate::adapter::store::Metric;
use crate::hpa::spec::{HpaSpec, MetricSpec};
use crate::k8s::labels::LabelIndex;
use crate::sim::scenario::Scenario;
use crate::sim::{GPU_NAMESPACE, SimNode, SimWorkload, Workloads, add_pod, label_maps};

/// The device plugin's time-slicing replicas per GPU in standalone's
/// cluster: the README's config (`replicas: 4`), so that a scaled pod fits
/// beside the seed workloads.
pub const TIME_SLICING: u32 = 4;

/// How long a removed pod stays in the API (its termination grace), so that
/// the agents' last feeds still find it placed.
const TERMINATING: u64 = 5;

/// What the live twin runs.
pub struct LiveSetup {
    /// The HPAs and the Deployments they scale.
    pub scaled: Vec<(DeploymentSpec, HpaSpec)>,
    /// The HPA controller's sync period.
    pub sync_period: Duration,
    /// Demand per Deployment (4090-equivalent percent), and loads of the
    /// other workloads.
    pub scenario: Scenario,
    /// The scenario's t = 0, seconds since the epoch.
    pub start: f64,
    /// Seed of the HPAs' phases and the new pods' names.
    pub seed: u64,
}

/// Why the live twin cannot run these HPAs.
#[derive(Debug, thiserror::Error)]
#[error("--hpa {hpa}: {reason}")]
pub struct LiveError {
    /// The HPA's name.
    pub hpa: String,
    /// What is wrong.
    pub reason: String,
}

/// One scaled Deployment as the status line shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentStatus {
    /// The HPA.
    pub hpa: String,
    /// Its Deployment.
    pub deployment: String,
    /// The HPA's target (its first Pods metric's average value).
    pub target: Option<f64>,
    /// The average the HPA last computed.
    pub seen: Option<f64>,
    /// Replicas the HPA asks for.
    pub desired: u32,
    /// Each pod: API name, node (none while pending), ready, and the value
    /// the API serves for the HPA's metric.
    pub pods: Vec<PodStatus>,
}

/// One pod of a scaled Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct PodStatus {
    /// Its name in the API.
    pub pod: String,
    /// Its node, once scheduled.
    pub node: Option<String>,
    /// Started and its model loaded.
    pub ready: bool,
    /// What the API serves for it.
    pub value: Option<f64>,
}

impl std::fmt::Display for DeploymentStatus {
    /// `reasoning-suite 2 replicas, 0 pending [mainpc 47%, pc2 starting]
    /// (reasoning-gpu-hpa 82/70)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.pods.iter().filter(|p| p.node.is_none()).count();
        let pods: Vec<String> = self
            .pods
            .iter()
            .filter_map(|p| {
                let node = p.node.as_deref()?;
                Some(match (p.ready, p.value) {
                    (false, _) => format!("{node} starting"),
                    (true, Some(v)) => format!("{node} {v:.0}%"),
                    (true, None) => format!("{node} –"),
                })
            })
            .collect();
        let seen = self.seen.map_or("–".to_string(), |v| format!("{v:.0}"));
        let target = self.target.map_or("–".to_string(), |v| format!("{v:.0}"));
        write!(
            f,
            "{} {} replica(s), {pending} pending [{}] ({} {seen}/{target})",
            self.deployment,
            self.desired,
            pods.join(", "),
            self.hpa
        )
    }
}

/// A scaled Deployment's seed pod: what its replicas are made from.
struct Seed {
    /// The pod, with its wave and memory.
    pod: SimWorkload,
    /// Its GPU's capacity, in RTX 4090s.
    capacity: f64,
    /// Whether a replica of the twin has taken it over yet.
    claimed: bool,
}

/// The twin, the simulated nodes it drives and the API labels it keeps.
pub struct LiveTwin {
    twin: Twin,
    sims: Vec<Arc<SimNode>>,
    labels: Arc<LabelIndex>,
    /// Per node and GPU: the workloads no HPA scales.
    fixed: Vec<Workloads>,
    /// Per scaled Deployment: its seed pod.
    seeds: HashMap<String, Seed>,
    /// The API's pod for each of the twin's pods.
    identities: HashMap<String, SimWorkload>,
    /// Pods removed, still terminating: (removed at, pod, its node if it
    /// was scheduled).
    terminating: Vec<(u64, SimWorkload, Option<String>)>,
    scenario: Scenario,
    start: f64,
    rng: fastrand::Rng,
    next_pid: u32,
    /// The last second stepped.
    last: Option<u64>,
}

impl LiveTwin {
    /// The twin over `sims` (the reference nodes, whose pods it takes over
    /// for the HPAs' Deployments), keeping `labels` as the API's.
    pub fn new(setup: LiveSetup, sims: Vec<Arc<SimNode>>, labels: Arc<LabelIndex>) -> Result<LiveTwin, LiveError> {
        let scaled_apps: Vec<&str> = setup.scaled.iter().map(|(d, _)| d.name.as_str()).collect();
        let mut fixed = Vec::new();
        let mut seeds = HashMap::new();
        let mut cluster = ClusterSpec::reference();
        cluster.nodes.retain(|n| sims.iter().any(|s| s.node == n.name));
        for node in &mut cluster.nodes {
            node.time_slicing = TIME_SLICING;
        }
        let mut occupied = Vec::new();
        for sim in &sims {
            let mut per_gpu = Vec::new();
            for (index, (workloads, gpu)) in sim.workloads().iter().zip(&sim.gpus).enumerate() {
                let (scaled, others): (Vec<_>, Vec<_>) =
                    workloads.iter().cloned().partition(|w| scaled_apps.contains(&w.app.as_str()));
                for pod in scaled {
                    let capacity = gpu.profile.relative_capacity();
                    seeds.entry(pod.app.clone()).or_insert(Seed { pod, capacity, claimed: false });
                }
                occupied.push((sim.node.clone(), index, others.len() as u32));
                per_gpu.push(others);
            }
            fixed.push(per_gpu);
        }
        for (deployment, hpa) in &setup.scaled {
            let err = |reason: String| LiveError { hpa: hpa.name.clone(), reason };
            if hpa.namespace != GPU_NAMESPACE {
                return Err(err(format!(
                    "namespace {} has no simulated Deployments; they run in {GPU_NAMESPACE}",
                    hpa.namespace
                )));
            }
            if !seeds.contains_key(&deployment.name) {
                let mut apps: Vec<String> = sims
                    .iter()
                    .flat_map(|s| s.workloads().iter().flatten().map(|w| w.app.clone()).collect::<Vec<_>>())
                    .collect();
                apps.sort();
                apps.dedup();
                return Err(err(format!(
                    "scaleTargetRef {} is not a simulated Deployment (they are {})",
                    deployment.name,
                    apps.join(", ")
                )));
            }
        }
        let mut rng = fastrand::Rng::with_seed(setup.seed);
        let mut twin = Twin::new(&cluster, setup.scaled, setup.sync_period, &mut rng);
        for (node, index, slots) in occupied {
            twin.occupy(&node, index, slots);
        }
        let next_pid =
            1 + sims.iter().flat_map(|s| s.workloads().iter().flatten().map(|w| w.pid).max()).max().unwrap_or(4000);
        Ok(LiveTwin {
            twin,
            sims,
            labels,
            fixed,
            seeds,
            identities: HashMap::new(),
            terminating: Vec::new(),
            scenario: setup.scenario,
            start: setup.start,
            rng,
            next_pid,
            last: None,
        })
    }

    /// Each demand at second `t` (a scaled Deployment's, or a Service's in
    /// front of several): the scenario's, or the seed workload's wave, in
    /// RTX 4090s' percent.
    fn demand(&self, t: u64) -> Vec<f64> {
        let elapsed = Duration::from_secs(t);
        self.twin
            .demands()
            .map(|d| {
                self.scenario.load(d, elapsed).unwrap_or_else(|| {
                    self.seeds
                        .get(d)
                        .map_or(0.0, |seed| seed.pod.wave(self.start + t as f64).clamp(0.0, 100.0) * seed.capacity)
                })
            })
            .collect()
    }

    /// Steps every second up to `t` (none is skipped: an HPA syncs on its
    /// second), with `value(metric, pod)` what the API serves now, and
    /// publishes the pods: to the API's labels first, then to the nodes.
    pub fn step_to(&mut self, t: u64, value: &dyn Fn(&str, &str) -> Option<f64>) -> Vec<DeploymentStatus> {
        let from = self.last.map_or(0, |l| l + 1);
        for second in from..=t {
            let before: Vec<u32> = self.twin.desired().map(|(_, d, _)| d).collect();
            self.twin.reconcile(second);
            self.identify(second);
            let demand = self.demand(second);
            self.twin.serve(second, &demand);
            self.twin.activate(second, &demand);
            let identities = &self.identities;
            let weighted = Metric::WeightedUtilization.name();
            let pool = self.twin.pool_weighted(&|pod| value(weighted, &identities.get(pod)?.pod));
            self.twin.sync(second, &|metric, pod| value(metric, &identities.get(pod)?.pod), pool);
            for ((hpa, desired, _), was) in self.twin.desired().zip(before) {
                if desired != was {
                    tracing::info!(hpa = %hpa.name, deployment = %hpa.target_name, from = was, to = desired, "scaled");
                }
            }
            self.last = Some(second);
        }
        self.publish(t);
        self.status(t, value)
    }

    /// The API's pod for each of the twin's pods (the seed pod for a
    /// Deployment's first), new ones named as their ReplicaSet would.
    fn identify(&mut self, t: u64) {
        let current: Vec<(String, String)> =
            self.twin.pods(t).map(|p| (p.name.to_string(), p.deployment.to_string())).collect();
        let gone: Vec<String> =
            self.identities.keys().filter(|k| !current.iter().any(|(name, _)| name == *k)).cloned().collect();
        for name in gone {
            if let Some(w) = self.identities.remove(&name) {
                let node = self.placement_of(&w.pod);
                self.terminating.push((t, w, node));
            }
        }
        self.terminating.retain(|(at, _, _)| t < at + TERMINATING);
        for (name, deployment) in current {
            if self.identities.contains_key(&name) {
                continue;
            }
            let Some(seed) = self.seeds.get_mut(&deployment) else { continue };
            let identity = if seed.claimed {
                self.next_pid += 1;
                seed.pod.replica(&mut self.rng, self.next_pid)
            } else {
                seed.claimed = true;
                seed.pod.clone()
            };
            self.identities.insert(name, identity);
        }
    }

    fn placement_of(&self, pod: &str) -> Option<String> {
        self.labels.snapshot().placements.as_ref()?.get(GPU_NAMESPACE)?.get(pod).cloned()
    }

    /// Sets the API's labels (pending and terminating pods included), then
    /// each node's pods.
    fn publish(&mut self, t: u64) {
        let mut workloads = self.fixed.clone();
        let mut pending = Vec::new();
        for pod in self.twin.pods(t) {
            let Some(identity) = self.identities.get(pod.name) else { continue };
            let mut w = identity.clone();
            w.twin_load = Some(if pod.ready { pod.utilization } else { 0.0 });
            match pod.placed.and_then(|(node, gpu)| Some((self.sims.iter().position(|s| s.node == node)?, gpu))) {
                Some((n, gpu)) => {
                    if let Some(on) = workloads[n].get_mut(gpu) {
                        on.push(w);
                    }
                }
                None => pending.push(w),
            }
        }
        let mut maps = label_maps(self.sims.iter().map(|s| &**s).zip(&workloads));
        for w in &pending {
            add_pod(&mut maps, w, None);
        }
        for (_, w, node) in &self.terminating {
            add_pod(&mut maps, w, node.as_deref());
        }
        self.labels.replace(maps);
        for (sim, per_gpu) in self.sims.iter().zip(workloads) {
            sim.set_workloads(per_gpu);
        }
    }

    fn status(&self, t: u64, value: &dyn Fn(&str, &str) -> Option<f64>) -> Vec<DeploymentStatus> {
        self.twin
            .desired()
            .map(|(hpa, desired, seen)| {
                let metric = hpa.metrics.iter().find_map(|m| match m {
                    MetricSpec::Pods { name, target } => Some((name.as_str(), *target)),
                    _ => None,
                });
                let pods = self
                    .twin
                    .pods(t)
                    .filter(|p| p.deployment == hpa.target_name)
                    .filter_map(|p| {
                        let pod = &self.identities.get(p.name)?.pod;
                        Some(PodStatus {
                            pod: pod.clone(),
                            node: p.placed.map(|(node, _)| node.to_string()),
                            ready: p.ready,
                            value: metric.and_then(|(name, _)| value(name, pod)),
                        })
                    })
                    .collect();
                DeploymentStatus {
                    hpa: hpa.name.clone(),
                    deployment: hpa.target_name.clone(),
                    target: metric.map(|(_, target)| target),
                    seen,
                    desired,
                    pods,
                }
            })
            .collect()
    }

    /// Runs once a second on the wall clock until `shutdown`, on the values
    /// `provider` serves, publishing each second's status.
    pub async fn run(
        mut self,
        provider: Provider,
        status: watch::Sender<Vec<DeploymentStatus>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::shutdown::stopped(&mut shutdown) => break,
            }
            let now = SystemTime::now();
            let elapsed = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() - self.start;
            let snapshot = provider.view_at(now);
            let value = |metric: &str, pod: &str| {
                let metric = crate::adapter::provider::metric(metric).ok()?;
                let selector = kube::core::Selector::default();
                snapshot.pod(metric, &selector, GPU_NAMESPACE, pod).ok().map(|v| v.value)
            };
            let report = self.step_to(elapsed.max(0.0) as u64, &value);
            status.send_replace(report);
        }
    }
}

#[cfg(test)]
mod tests;
