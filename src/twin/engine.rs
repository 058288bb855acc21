//! The closed loop, one second at a time: the scheduler places pending pods
//! by GPU slots, taints and tolerations; each Deployment's demand is spread
//! over its ready pods; each GPU serves what fits in 100 % of its time, the
//! rest is unserved; every HPA syncs each 15 s with the controller's
//! algorithm ([`crate::hpa`]) on the values its metric pipeline delivers; the
//! Deployment controller adds pods and removes the newest.
//!
//! [`Twin`] is one step of each loop, driven from outside: [`run`] drives it
//! on a counter with the pipeline's stages simulated (`simulate`; nothing
//! sleeps), and `standalone --scenario` drives it on the wall clock with the
//! values the real adapter serves ([`super::live`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::model::{Activation, ClusterSpec, DeploymentSpec, NodeSpec, Pipeline};
use crate::adapter::store::Metric;
use crate::hpa::spec::HpaSpec;
use crate::hpa::sync::{MetricsReader, Scale, sync};
use crate::hpa::{Autoscaler, PodValue};
use crate::sim::scenario::Scenario;

/// The HPA controller's default sync period
/// (`--horizontal-pod-autoscaler-sync-period`).
pub const HPA_SYNC: u64 = 15;

/// One pod of a Deployment.
#[derive(Clone, Debug)]
struct Pod {
    name: String,
    deployment: usize,
    /// The GPU it was scheduled onto.
    gpu: Option<usize>,
    /// When it became (or becomes) ready.
    ready_at: Option<u64>,
    /// Its GPU utilization this second, percent of its GPU's time.
    utilization: f64,
}

/// One simulated GPU.
#[derive(Clone, Debug)]
struct Gpu {
    node: usize,
    /// Its index on its node.
    index: usize,
    /// Time-slicing replicas the twin's pods may take (the device plugin's,
    /// less those other tenants hold).
    slots: u32,
    capacity: f64,
    utilization: f64,
}

/// A Deployment and the HPA that scales it.
struct Scaled {
    spec: DeploymentSpec,
    hpa: HpaSpec,
    autoscaler: Autoscaler,
    desired: u32,
    /// The metric the HPA last computed (its average), for the timeline.
    seen: Option<f64>,
    created: u32,
    /// The second of its first sync, within the sync period.
    phase: u64,
    /// Whether its HPA scaled it to zero (the `ScaledToZero` condition).
    scaled_to_zero: bool,
    /// Under KEDA (`activation: push`): since when it has had no demand.
    idle_since: Option<u64>,
}

/// KEDA's default `cooldownPeriod`: how long a ScaledObject stays active
/// after its last activity before KEDA scales the target to zero.
const KEDA_COOLDOWN_SECONDS: u64 = 300;

/// A pod as [`spread`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct PodLoad {
    /// The demand it serves (an index into the demands).
    pub demand: usize,
    /// The GPU it runs on (an index into the capacities), once scheduled.
    pub gpu: Option<usize>,
    /// Started: only ready pods get work.
    pub ready: bool,
}

/// What [`spread`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    /// Per pod: its utilization (percent of its GPU's time) and the work it
    /// was asked for that its GPU could not serve (percent of a 4090).
    pub pods: Vec<(f64, f64)>,
    /// Per GPU: its utilization.
    pub gpus: Vec<f64>,
    /// Per demand: the work no ready pod was there to take.
    pub idle: Vec<f64>,
}

/// Spreads each demand (percent of an RTX 4090's work) evenly over its
/// ready pods; each GPU (its capacity in 4090s) serves what fits in 100 %
/// of its time and shares it out in proportion when asked for more. The
/// twin and `standalone --cluster` both serve load this way.
pub fn spread(demand: &[f64], pods: &[PodLoad], capacities: &[f64]) -> Served {
    let serving = |p: &PodLoad| p.ready && p.gpu.is_some();
    let demand_of = |p: &PodLoad| demand.get(p.demand).copied().unwrap_or(0.0);
    let mut ready = vec![0usize; pods.iter().map(|p| p.demand + 1).max().unwrap_or(0).max(demand.len())];
    for p in pods.iter().filter(|p| serving(p)) {
        ready[p.demand] += 1;
    }
    let asked: Vec<f64> =
        pods.iter().map(|p| if serving(p) { demand_of(p) / ready[p.demand] as f64 } else { 0.0 }).collect();
    let mut served = Served { pods: vec![(0.0, 0.0); pods.len()], gpus: vec![0.0; capacities.len()], idle: Vec::new() };
    for (g, &capacity) in capacities.iter().enumerate() {
        let on: Vec<usize> = (0..pods.len()).filter(|&i| pods[i].gpu == Some(g)).collect();
        let time: f64 = on.iter().map(|&i| asked[i] / capacity).sum();
        let scale = if time > 100.0 { 100.0 / time } else { 1.0 };
        // (An empty float sum is -0.0.)
        served.gpus[g] = if time > 0.0 { time.min(100.0) } else { 0.0 };
        for i in on {
            served.pods[i] = (asked[i] / capacity * scale, asked[i] * (1.0 - scale));
        }
    }
    served.idle = demand.iter().zip(&ready).map(|(&d, &n)| if n == 0 { d } else { 0.0 }).collect();
    served
}

/// What an HPA of the twin reads: the pipeline's values for the scheduled
/// pods, and the pool's weighted utilization as the one External metric
/// the twin models.
struct TwinMetrics<'a> {
    scheduled: Vec<&'a str>,
    seen: &'a dyn Fn(&str, &str) -> Option<f64>,
    pool: f64,
}

impl MetricsReader for TwinMetrics<'_> {
    fn pods(&mut self, name: &str) -> Result<Vec<PodValue>, String> {
        Ok(self.scheduled.iter().map(|pod| PodValue { pod: pod.to_string(), value: (self.seen)(name, pod) }).collect())
    }

    fn external(&mut self, name: &str, _selector: Option<&str>) -> Result<f64, String> {
        if name == Metric::WeightedUtilization.name() {
            Ok(self.pool)
        } else {
            Err(format!("{name}: not modelled by the twin"))
        }
    }

    fn models_external(&self, name: &str) -> bool {
        name == Metric::WeightedUtilization.name()
    }
}

/// One second of the timeline, for one Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Seconds since the start.
    pub t: u64,
    /// Deployment.
    pub deployment: String,
    /// Demand, percent of an RTX 4090's work.
    pub demand: f64,
    /// Replicas the HPA asks for.
    pub desired: u32,
    /// Ready pods.
    pub ready: u32,
    /// Scheduled pods still starting.
    pub starting: u32,
    /// Pods no node can take.
    pub pending: u32,
    /// The metric value the HPA last saw (its average over pods).
    pub seen: Option<f64>,
    /// Work not served this second (demand beyond the GPUs, or no ready pod).
    pub unserved: f64,
    /// Each scheduled pod: name, node, utilization.
    pub pods: Vec<(String, String, f64)>,
    /// Each GPU: `node/index` and utilization.
    pub gpus: Vec<(String, f64)>,
}

/// A pod as the twin has it now.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView<'a> {
    /// Pod name.
    pub name: &'a str,
    /// Its Deployment.
    pub deployment: &'a str,
    /// Node and GPU index on it, once scheduled.
    pub placed: Option<(&'a str, usize)>,
    /// Started and ready (its model loaded).
    pub ready: bool,
    /// Its GPU utilization, percent of its GPU's time.
    pub utilization: f64,
}

/// A cluster, its Deployments and their HPAs, one loop step at a time.
pub struct Twin {
    nodes: Vec<NodeSpec>,
    gpus: Vec<Gpu>,
    scaled: Vec<Scaled>,
    pods: Vec<Pod>,
    sync_period: u64,
    origin: Instant,
}

impl Twin {
    /// The cluster with each Deployment at its initial replicas (within its
    /// HPA's bounds); each HPA's sync phase drawn from `rng`.
    pub fn new(
        cluster: &ClusterSpec,
        scaled: Vec<(DeploymentSpec, HpaSpec)>,
        sync_period: Duration,
        rng: &mut fastrand::Rng,
    ) -> Self {
        let sync_period = sync_period.as_secs().max(1);
        let gpus = cluster
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(n, node)| {
                node.gpus.iter().enumerate().map(move |(index, model)| Gpu {
                    node: n,
                    index,
                    slots: node.time_slicing,
                    capacity: model.profile().relative_capacity(),
                    utilization: 0.0,
                })
            })
            .collect();
        let scaled = scaled
            .into_iter()
            .map(|(spec, hpa)| Scaled {
                desired: spec.replicas.max(hpa.min).min(hpa.max.max(hpa.min)),
                spec,
                hpa,
                autoscaler: Autoscaler::default(),
                seen: None,
                created: 0,
                phase: rng.u64(0..sync_period),
                scaled_to_zero: false,
                idle_since: None,
            })
            .collect();
        Twin { nodes: cluster.nodes.clone(), gpus, scaled, pods: Vec::new(), sync_period, origin: Instant::now() }
    }

    /// Leaves `slots` of the time-slicing replicas of GPU `index` on `node`
    /// to pods the twin does not scale.
    pub fn occupy(&mut self, node: &str, index: usize, slots: u32) {
        if let Some(gpu) = self.gpus.iter_mut().find(|g| g.index == index && self.nodes[g.node].name == node) {
            gpu.slots = gpu.slots.saturating_sub(slots);
        }
    }

    /// The Deployment controller and the scheduler at second `t`: pods up
    /// to each Deployment's desired replicas (beyond it, removed in the
    /// ReplicaSet controller's order), and each pending pod onto the GPU of
    /// a node it may run on (taints, required nodes), preferring its
    /// preferred nodes, then nodes with fewer of its Deployment's pods (as
    /// the default topology spreading does), then the GPU with the most free
    /// slots.
    pub fn reconcile(&mut self, t: u64) {
        for (d, s) in self.scaled.iter_mut().enumerate() {
            let mut mine: Vec<usize> = (0..self.pods.len()).filter(|&i| self.pods[i].deployment == d).collect();
            while (mine.len() as u32) < s.desired {
                s.created += 1;
                self.pods.push(Pod {
                    name: format!("{}-{:05x}", s.spec.name, s.created),
                    deployment: d,
                    gpu: None,
                    ready_at: None,
                    utilization: 0.0,
                });
                mine.push(self.pods.len() - 1);
            }
            if (mine.len() as u32) > s.desired {
                let (pods, gpus) = (&self.pods, &self.gpus);
                let rank = |p: &Pod| match (p.gpu, p.ready_at) {
                    (None, _) => 0,
                    (Some(_), Some(r)) if r > t => 1,
                    _ => 2,
                };
                // The Deployment's pods on the same node, as the ReplicaSet
                // controller ranks them (ActivePodsWithRanks).
                let colocated: Vec<usize> = (0..pods.len())
                    .map(|i| {
                        let node = pods[i].gpu.map(|g| gpus[g].node);
                        mine.iter().filter(|&&j| node.is_some() && pods[j].gpu.map(|g| gpus[g].node) == node).count()
                    })
                    .collect();
                // The ReplicaSet's order: unscheduled, then starting, then
                // those with more siblings on their node, then ready for the
                // shortest time, then the newest.
                use std::cmp::Reverse;
                mine.sort_by_key(|&i| (rank(&pods[i]), Reverse(colocated[i]), Reverse(pods[i].ready_at), Reverse(i)));
                let mut remove: Vec<usize> = mine[..mine.len() - s.desired as usize].to_vec();
                remove.sort_unstable_by(|a, b| b.cmp(a));
                for i in remove {
                    self.pods.remove(i);
                }
            }
        }

        for i in 0..self.pods.len() {
            if self.pods[i].gpu.is_some() {
                continue;
            }
            let deployment = &self.scaled[self.pods[i].deployment].spec;
            let used = |g: usize| self.pods.iter().filter(|p| p.gpu == Some(g)).count() as u32;
            let siblings = |node: usize| {
                self.pods
                    .iter()
                    .filter(|p| p.deployment == self.pods[i].deployment)
                    .filter(|p| p.gpu.is_some_and(|g| self.gpus[g].node == node))
                    .count()
            };
            let preferred = |node: usize| deployment.preferred_nodes.contains(&self.nodes[node].name);
            let best = (0..self.gpus.len())
                .filter(|&g| deployment.fits(&self.nodes[self.gpus[g].node]))
                .map(|g| (g, self.gpus[g].slots.saturating_sub(used(g))))
                .filter(|&(_, free)| free > 0)
                .min_by_key(|&(g, free)| {
                    let node = self.gpus[g].node;
                    (!preferred(node), siblings(node), std::cmp::Reverse(free), g)
                });
            if let Some((g, _)) = best {
                // The Deployment's first replicas were running before the
                // loop began; later ones load their model first.
                let startup = if t == 0 { 0 } else { deployment.startup.as_secs() };
                self.pods[i].gpu = Some(g);
                self.pods[i].ready_at = Some(t.saturating_add(startup));
            }
        }
    }

    fn ready(&self, p: &Pod, t: u64) -> bool {
        p.gpu.is_some() && p.ready_at.is_some_and(|r| r <= t)
    }

    /// Each Deployment's index into the demands ([`Twin::demands`]).
    fn demand_index(&self) -> Vec<usize> {
        let demands: Vec<&str> = self.demands().collect();
        self.scaled.iter().map(|s| demands.iter().position(|g| *g == s.spec.demand_name()).unwrap_or(0)).collect()
    }

    /// Spreads each demand (percent of an RTX 4090's work, per
    /// [`Twin::demands`]) over the ready pods behind it; each GPU serves
    /// what fits in its time. Returns the work left unserved per Deployment
    /// (a demand with no ready pod at all is its first Deployment's).
    pub fn serve(&mut self, t: u64, demand: &[f64]) -> Vec<f64> {
        let group_of = self.demand_index();
        let pods: Vec<PodLoad> = self
            .pods
            .iter()
            .map(|p| PodLoad { demand: group_of[p.deployment], gpu: p.gpu, ready: self.ready(p, t) })
            .collect();
        let capacities: Vec<f64> = self.gpus.iter().map(|g| g.capacity).collect();
        let served = spread(demand, &pods, &capacities);
        let mut unserved = vec![0.0; self.scaled.len()];
        for (pod, (utilization, left)) in self.pods.iter_mut().zip(served.pods) {
            pod.utilization = utilization;
            unserved[pod.deployment] += left;
        }
        for (gpu, utilization) in self.gpus.iter_mut().zip(served.gpus) {
            gpu.utilization = utilization;
        }
        for (group, idle) in served.idle.into_iter().enumerate() {
            if let Some(first) = group_of.iter().position(|&g| g == group) {
                unserved[first] += idle;
            }
        }
        unserved
    }

    /// Each scheduled pod's values as its GPU reports them: plain
    /// utilization and the capacity-weighted one.
    fn measured(&self) -> HashMap<String, (f64, f64)> {
        self.pods
            .iter()
            .filter_map(|p| {
                let g = p.gpu?;
                Some((p.name.clone(), (p.utilization, p.utilization * self.gpus[g].capacity)))
            })
            .collect()
    }

    /// KEDA's part for Deployments with `activation: push`, at second `t`:
    /// one at zero whose demand (per [`Twin::demands`]) is above 0 is given
    /// its first replica now, the second its scaler's push reaches KEDA; one
    /// without demand for KEDA's cooldown (300 s) goes to zero. In between,
    /// the HPA KEDA made (minReplicas 1) scales it.
    pub fn activate(&mut self, t: u64, demand: &[f64]) {
        let group_of = self.demand_index();
        for (d, s) in self.scaled.iter_mut().enumerate() {
            if s.spec.activation != Activation::Push {
                continue;
            }
            if demand.get(group_of[d]).is_some_and(|&x| x > 0.0) {
                s.idle_since = None;
                if s.desired == 0 {
                    s.desired = 1;
                }
            } else {
                let since = *s.idle_since.get_or_insert(t);
                if t.saturating_sub(since) >= KEDA_COOLDOWN_SECONDS {
                    s.desired = 0;
                }
            }
        }
    }

    /// The pool's `nvidia_gpu_weighted_utilization_percent` as the external
    /// metrics API serves it: Σ(utilization × capacity) / Σ capacity over
    /// every GPU, from the pods' weighted values `weighted(pod)` that reached
    /// the HPA (a GPU with no pod adds only its capacity).
    pub fn pool_weighted(&self, weighted: &dyn Fn(&str) -> Option<f64>) -> f64 {
        let capacity: f64 = self.gpus.iter().map(|g| g.capacity).sum();
        let used: f64 = self.pods.iter().filter_map(|p| weighted(&p.name)).sum();
        if capacity > 0.0 { used / capacity } else { 0.0 }
    }

    /// Syncs the HPAs whose period comes round at second `t`, each on the
    /// values `seen(metric, pod)` that reach it (and the pool's weighted
    /// utilization, `pool`, for an External metric), and sets their
    /// Deployments' desired replicas.
    pub fn sync(&mut self, t: u64, seen: &dyn Fn(&str, &str) -> Option<f64>, pool: f64) {
        let now = self.origin + Duration::from_secs(t);
        for (d, s) in self.scaled.iter_mut().enumerate() {
            if !(t + self.sync_period - s.phase).is_multiple_of(self.sync_period) {
                continue;
            }
            let mine: Vec<&Pod> = self.pods.iter().filter(|p| p.deployment == d).collect();
            // Scheduled pods report (or are missing); pending ones are unready.
            let scheduled: Vec<&str> = mine.iter().filter(|p| p.gpu.is_some()).map(|p| p.name.as_str()).collect();
            let ready = mine.iter().filter(|p| p.gpu.is_some() && p.ready_at.is_some_and(|r| r <= t)).count();
            let scale = Scale {
                replicas: mine.len() as u32,
                ready: ready as u32,
                unready: (mine.len() - scheduled.len()) as u32,
                scaled_to_zero: s.scaled_to_zero,
            };
            let mut reader = TwinMetrics { scheduled, seen, pool };
            let outcome = sync(&s.hpa, &mut reader, scale, &mut s.autoscaler, now);
            if let Some(current) = outcome.metrics.iter().find_map(|m| m.proposal.as_ref().ok().map(|p| p.current)) {
                s.seen = Some(current);
            }
            if !outcome.active {
                continue;
            }
            // Under KEDA, its HPA keeps at least one replica; KEDA alone goes to and from zero.
            let replicas =
                if s.spec.activation == Activation::Push { outcome.replicas.max(1) } else { outcome.replicas };
            if replicas != scale.replicas {
                s.autoscaler.record_scale(now, scale.replicas, replicas);
            }
            s.desired = replicas;
            s.scaled_to_zero = replicas == 0;
        }
    }

    /// What demand is given for, in order: each Service shared by
    /// Deployments, and each Deployment on its own.
    pub fn demands(&self) -> impl Iterator<Item = &str> {
        let mut seen: Vec<&str> = Vec::new();
        self.scaled.iter().map(|s| s.spec.demand_name()).filter(move |name| {
            let new = !seen.contains(name);
            seen.push(name);
            new
        })
    }

    /// Each Deployment's HPA and its current desired replicas.
    pub fn desired(&self) -> impl Iterator<Item = (&HpaSpec, u32, Option<f64>)> {
        self.scaled.iter().map(|s| (&s.hpa, s.desired, s.seen))
    }

    /// Every pod, oldest first.
    pub fn pods(&self, t: u64) -> impl Iterator<Item = PodView<'_>> {
        self.pods.iter().map(move |p| PodView {
            name: &p.name,
            deployment: &self.scaled[p.deployment].spec.name,
            placed: p.gpu.map(|g| (self.nodes[self.gpus[g].node].name.as_str(), self.gpus[g].index)),
            ready: self.ready(p, t),
            utilization: p.utilization,
        })
    }

    /// Second `t` of the timeline, one row per Deployment: the demand it
    /// is behind, and the work it left unserved.
    pub fn rows(&self, t: u64, demand: &[f64], unserved: &[f64]) -> Vec<Row> {
        let group_of = self.demand_index();
        let gpus: Vec<(String, f64)> =
            self.gpus.iter().map(|g| (format!("{}/{}", self.nodes[g.node].name, g.index), g.utilization)).collect();
        self.scaled
            .iter()
            .enumerate()
            .map(|(d, s)| {
                let mine: Vec<&Pod> = self.pods.iter().filter(|p| p.deployment == d).collect();
                let demand = demand.get(group_of[d]).copied().unwrap_or(0.0);
                Row {
                    t,
                    deployment: s.spec.name.clone(),
                    demand,
                    desired: s.desired,
                    ready: mine.iter().filter(|p| self.ready(p, t)).count() as u32,
                    starting: mine.iter().filter(|p| p.gpu.is_some() && !self.ready(p, t)).count() as u32,
                    pending: mine.iter().filter(|p| p.gpu.is_none()).count() as u32,
                    seen: s.seen,
                    unserved: unserved[d].max(0.0),
                    pods: mine
                        .iter()
                        .filter_map(|p| {
                            let g = p.gpu?;
                            Some((p.name.clone(), self.nodes[self.gpus[g].node].name.clone(), p.utilization))
                        })
                        .collect(),
                    gpus: gpus.clone(),
                }
            })
            .collect()
    }
}

/// What one run is.
pub struct RunSpec<'a> {
    /// The cluster.
    pub cluster: &'a ClusterSpec,
    /// The Deployments, each with its HPA.
    pub scaled: Vec<(DeploymentSpec, HpaSpec)>,
    /// Demand over time per Deployment.
    pub scenario: &'a Scenario,
    /// The metric pipeline.
    pub pipeline: &'a Pipeline,
    /// How long.
    pub duration: Duration,
    /// The HPAs' sync period.
    pub sync_period: Duration,
    /// Seed of the loops' phases.
    pub seed: u64,
}

/// Runs the twin on a counter, the pipeline's stages simulated, and returns
/// its timeline.
pub fn run(spec: &RunSpec<'_>) -> Vec<Row> {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    // Phases: each pipeline stage, and each HPA's sync.
    let stage_phase: Vec<u64> = spec.pipeline.stages.iter().map(|p| rng.u64(0..p.as_secs().max(1))).collect();
    let mut twin = Twin::new(spec.cluster, spec.scaled.clone(), spec.sync_period, &mut rng);
    // Per stage: pod name → (plain, weighted) as that stage last saw it.
    let mut stages: Vec<HashMap<String, (f64, f64)>> = vec![HashMap::new(); spec.pipeline.stages.len()];
    let mut rows = Vec::new();
    for t in 0..spec.duration.as_secs() {
        twin.reconcile(t);
        let elapsed = Duration::from_secs(t);
        let demand: Vec<f64> = twin.demands().map(|d| spec.scenario.load(d, elapsed).unwrap_or(0.0)).collect();
        let unserved = twin.serve(t, &demand);

        // Each stage, at its ticks, takes the latest of the one before (the
        // first takes the pods' values).
        for (k, period) in spec.pipeline.stages.iter().enumerate() {
            let period = period.as_secs().max(1);
            if !(t + period - stage_phase[k]).is_multiple_of(period) {
                continue;
            }
            stages[k] = if k == 0 { twin.measured() } else { stages[k - 1].clone() };
        }
        twin.activate(t, &demand);
        let last = stages.last().cloned().unwrap_or_default();
        let pool = twin.pool_weighted(&|pod| last.get(pod).map(|&(_, weighted)| weighted));
        twin.sync(
            t,
            &|metric, pod| {
                let &(plain, weighted) = last.get(pod)?;
                Some(if metric == Metric::WeightedUtilization.name() { weighted } else { plain })
            },
            pool,
        );
        rows.extend(twin.rows(t, &demand, &unserved));
    }
    rows
}
