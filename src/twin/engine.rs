//! The closed loop, one simulated second at a time: the scheduler places
//! pending pods by GPU slots, taints and tolerations; each Deployment's
//! demand is spread over its ready pods; each GPU serves what fits in 100 %
//! of its time, the rest is unserved; the metric passes through the
//! pipeline's stages; every HPA syncs each 15 s with the controller's
//! algorithm ([`crate::hpa`]); the Deployment controller adds pods and
//! removes the newest. Loops run at their own random phases. Nothing sleeps:
//! the clock is a counter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::model::{ClusterSpec, DeploymentSpec, Pipeline};
use crate::hpa::preview::{HpaSpec, MetricSpec};
use crate::hpa::{Autoscaler, PodValue, pods_average_value};
use crate::sim::scenario::Scenario;

/// The HPA controller's sync period (`--horizontal-pod-autoscaler-sync-period`).
pub const HPA_SYNC: u64 = 15;

/// One pod of a Deployment.
#[derive(Clone, Debug)]
struct Pod {
    name: String,
    deployment: usize,
    /// (node, GPU) once scheduled.
    gpu: Option<(usize, usize)>,
    /// When it became (or becomes) ready.
    ready_at: Option<u64>,
    /// Its GPU utilization this second, percent of its GPU's time.
    utilization: f64,
}

/// One simulated GPU.
#[derive(Clone, Debug)]
struct Gpu {
    node: usize,
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
    /// Seed of the loops' phases.
    pub seed: u64,
}

/// Runs the twin and returns its timeline.
pub fn run(spec: &RunSpec<'_>) -> Vec<Row> {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut gpus: Vec<Gpu> = Vec::new();
    for (n, node) in spec.cluster.nodes.iter().enumerate() {
        for model in &node.gpus {
            gpus.push(Gpu {
                node: n,
                slots: node.time_slicing,
                capacity: model.profile().relative_capacity(),
                utilization: 0.0,
            });
        }
    }
    let gpu_names: Vec<String> = {
        let mut per_node: HashMap<usize, usize> = HashMap::new();
        gpus.iter()
            .map(|g| {
                let i = per_node.entry(g.node).or_default();
                *i += 1;
                format!("{}/{}", spec.cluster.nodes[g.node].name, *i - 1)
            })
            .collect()
    };
    let mut scaled: Vec<Scaled> = spec
        .scaled
        .iter()
        .map(|(d, h)| Scaled {
            spec: d.clone(),
            hpa: h.clone(),
            autoscaler: Autoscaler::default(),
            desired: d.replicas.max(h.min).min(h.max.max(h.min)),
            seen: None,
            created: 0,
        })
        .collect();
    let mut pods: Vec<Pod> = Vec::new();
    // Phases: each pipeline stage, and each HPA's sync.
    let stage_phase: Vec<u64> = spec.pipeline.stages.iter().map(|p| rng.u64(0..p.as_secs().max(1))).collect();
    let hpa_phase: Vec<u64> = scaled.iter().map(|_| rng.u64(0..HPA_SYNC)).collect();
    // Per stage: pod name → (plain, weighted) as that stage last saw it.
    let mut stages: Vec<HashMap<String, (f64, f64)>> = vec![HashMap::new(); spec.pipeline.stages.len()];
    let origin = Instant::now();
    let mut rows = Vec::new();

    for t in 0..spec.duration.as_secs() {
        // The Deployment controller: create up to desired, remove the
        // newest (pending first, then starting) beyond it.
        for (d, s) in scaled.iter_mut().enumerate() {
            let mut mine: Vec<usize> = (0..pods.len()).filter(|&i| pods[i].deployment == d).collect();
            while (mine.len() as u32) < s.desired {
                s.created += 1;
                pods.push(Pod {
                    name: format!("{}-{:05x}", s.spec.name, s.created),
                    deployment: d,
                    gpu: None,
                    ready_at: None,
                    utilization: 0.0,
                });
                mine.push(pods.len() - 1);
            }
            if (mine.len() as u32) > s.desired {
                let rank = |p: &Pod| match (p.gpu, p.ready_at) {
                    (None, _) => 0,
                    (Some(_), Some(r)) if r > t => 1,
                    _ => 2,
                };
                mine.sort_by_key(|&i| (rank(&pods[i]), std::cmp::Reverse(i)));
                let mut remove: Vec<usize> = mine[..mine.len() - s.desired as usize].to_vec();
                remove.sort_unstable_by(|a, b| b.cmp(a));
                for i in remove {
                    pods.remove(i);
                }
            }
        }

        // The scheduler: the GPU with the most free slots on a node the
        // pod tolerates.
        for i in 0..pods.len() {
            if pods[i].gpu.is_some() {
                continue;
            }
            let deployment = &scaled[pods[i].deployment].spec;
            let used = |g: usize| pods.iter().filter(|p| p.gpu.map(|(_, pg)| pg) == Some(g)).count() as u32;
            let best = (0..gpus.len())
                .filter(|&g| deployment.fits(&spec.cluster.nodes[gpus[g].node]))
                .map(|g| (g, gpus[g].slots.saturating_sub(used(g))))
                .filter(|&(_, free)| free > 0)
                .max_by_key(|&(g, free)| (free, std::cmp::Reverse(g)));
            if let Some((g, _)) = best {
                pods[i].gpu = Some((gpus[g].node, g));
                // The Deployment's first replicas were running before the
                // scenario began; later ones load their model first.
                let startup = if t == 0 { 0 } else { deployment.startup.as_secs() };
                pods[i].ready_at = Some(t + startup);
            }
        }

        // Demand over ready pods; each GPU serves what fits in its time.
        let elapsed = Duration::from_secs(t);
        let demand: Vec<f64> =
            scaled.iter().map(|s| spec.scenario.load(&s.spec.name, elapsed).unwrap_or(0.0)).collect();
        let ready = |p: &Pod| p.gpu.is_some() && p.ready_at.is_some_and(|r| r <= t);
        let ready_count: Vec<usize> =
            (0..scaled.len()).map(|d| pods.iter().filter(|p| p.deployment == d && ready(p)).count()).collect();
        // Work each pod is asked for, percent of a 4090.
        let asked: Vec<f64> = pods
            .iter()
            .map(|p| if ready(p) { demand[p.deployment] / ready_count[p.deployment] as f64 } else { 0.0 })
            .collect();
        let mut served = vec![0.0; scaled.len()];
        for (g, gpu) in gpus.iter_mut().enumerate() {
            let on: Vec<usize> = (0..pods.len()).filter(|&i| pods[i].gpu.map(|(_, pg)| pg) == Some(g)).collect();
            let time: f64 = on.iter().map(|&i| asked[i] / gpu.capacity).sum();
            let scale = if time > 100.0 { 100.0 / time } else { 1.0 };
            // (An empty float sum is -0.0.)
            gpu.utilization = if time > 0.0 { time.min(100.0) } else { 0.0 };
            for i in on {
                pods[i].utilization = asked[i] / gpu.capacity * scale;
                served[pods[i].deployment] += asked[i] * scale;
            }
        }

        // The pipeline: each stage, at its ticks, takes the latest of the one
        // before (the first takes the pods' values).
        for (k, period) in spec.pipeline.stages.iter().enumerate() {
            let period = period.as_secs().max(1);
            if !(t + period - stage_phase[k]).is_multiple_of(period) {
                continue;
            }
            stages[k] = if k == 0 {
                pods.iter()
                    .filter_map(|p| {
                        let (_, g) = p.gpu?;
                        Some((p.name.clone(), (p.utilization, p.utilization * gpus[g].capacity)))
                    })
                    .collect()
            } else {
                stages[k - 1].clone()
            };
        }
        let seen_by_hpa = stages.last().cloned().unwrap_or_default();

        // Each HPA at its sync.
        let now = origin + elapsed;
        for (d, s) in scaled.iter_mut().enumerate() {
            if !(t + HPA_SYNC - hpa_phase[d]).is_multiple_of(HPA_SYNC) {
                continue;
            }
            let mine: Vec<&Pod> = pods.iter().filter(|p| p.deployment == d).collect();
            let current = mine.len() as u32;
            let mut best: Option<u32> = None;
            for metric in &s.hpa.metrics {
                let MetricSpec::Pods { name, target } = metric else { continue };
                let weighted = name == "nvidia_gpu_weighted_utilization_percent";
                // Scheduled pods report (or are missing); pending ones are
                // unready: counted as 0 on a scale-up, else left out.
                let values: Vec<PodValue> = mine
                    .iter()
                    .filter(|p| p.gpu.is_some())
                    .map(|p| PodValue {
                        pod: p.name.clone(),
                        value: seen_by_hpa.get(&p.name).map(|&(plain, w)| if weighted { w } else { plain }),
                    })
                    .collect();
                let pending = mine.iter().filter(|p| p.gpu.is_none()).count();
                let Ok(mut proposal) = pods_average_value(&values, *target, values.len() as u32) else { continue };
                if pending > 0 && proposal.ratio > 1.0 {
                    let mut with_unready = values.clone();
                    with_unready
                        .extend((0..pending).map(|i| PodValue { pod: format!("pending-{i}"), value: Some(0.0) }));
                    if let Ok(p) = pods_average_value(&with_unready, *target, with_unready.len() as u32) {
                        proposal = p;
                    }
                }
                s.seen = Some(proposal.current);
                best = Some(best.map_or(proposal.replicas, |b| b.max(proposal.replicas)));
            }
            let Some(proposal) = best else { continue };
            let decision = s.autoscaler.decide(now, proposal, current, s.hpa.min, s.hpa.max, &s.hpa.behavior);
            if decision.replicas != current {
                s.autoscaler.record_scale(now, current, decision.replicas);
            }
            s.desired = decision.replicas;
        }

        for (d, s) in scaled.iter().enumerate() {
            let mine: Vec<&Pod> = pods.iter().filter(|p| p.deployment == d).collect();
            rows.push(Row {
                t,
                deployment: s.spec.name.clone(),
                demand: demand[d],
                desired: s.desired,
                ready: ready_count[d] as u32,
                starting: mine.iter().filter(|p| p.gpu.is_some() && !ready(p)).count() as u32,
                pending: mine.iter().filter(|p| p.gpu.is_none()).count() as u32,
                seen: s.seen,
                unserved: (demand[d] - served[d]).max(0.0),
                pods: mine
                    .iter()
                    .filter_map(|p| {
                        let (node, _) = p.gpu?;
                        Some((p.name.clone(), spec.cluster.nodes[node].name.clone(), p.utilization))
                    })
                    .collect(),
                gpus: gpu_names.iter().zip(&gpus).map(|(n, g)| (n.clone(), g.utilization)).collect(),
            });
        }
    }
    rows
}
