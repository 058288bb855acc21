//! One HPA controller sync: every metric of a spec read and proposed, the
//! proposals combined as upstream's `computeReplicasForMetrics` does, and
//! the result held back by the behavior. `hpa-preview`, the twin's engine
//! and `standalone`'s status line all call [`sync`], each with its own
//! [`MetricsReader`].

use std::time::Instant;

use super::spec::{HpaSpec, MetricSpec};
use super::{Autoscaler, PodValue, Proposal, average_value_target, pods_average_value, value_target};

/// Where a sync reads its metrics from, as the controller reads the metrics APIs.
pub trait MetricsReader {
    /// The values of the `Pods` metric `name` for the running pods of the
    /// scale target (`value: None` for a pod without one).
    fn pods(&mut self, name: &str) -> Result<Vec<PodValue>, String>;
    /// The sum of the `External` metric `name` over the series its selector matches.
    fn external(&mut self, name: &str, selector: Option<&str>) -> Result<f64, String>;
    /// False for an External metric this reader does not model (the twin
    /// models one): it is then skipped, as Object and Resource metrics are
    /// everywhere here, rather than counted as failing.
    fn models_external(&self, _name: &str) -> bool {
        true
    }
}

/// The scale target as the controller sees it at a sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scale {
    /// The scale's replicas (`spec.replicas`).
    pub replicas: u32,
    /// Pods running and ready.
    pub ready: u32,
    /// Pods not yet running (pending): counted as 0 on a scale-up.
    pub unready: u32,
    /// Whether this HPA scaled the target to zero (its `ScaledToZero`
    /// condition): only then does it wake a target at zero.
    pub scaled_to_zero: bool,
}

/// One metric's outcome at a sync.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricOutcome {
    /// `name (Pods, averageValue 70)`.
    pub metric: String,
    /// Its target (0 for a metric not computed here).
    pub target: f64,
    /// What it read, for an explanation (per pod, or the external value).
    pub read: Vec<String>,
    /// Its proposal, or why it has none.
    pub proposal: Result<Proposal, String>,
}

/// A sync's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncOutcome {
    /// Each metric's outcome, in the spec's order.
    pub metrics: Vec<MetricOutcome>,
    /// The steps from the proposals to the replicas.
    pub steps: Vec<String>,
    /// The replicas to run.
    pub replicas: u32,
    /// The `ScaledToZero` condition after this sync.
    pub scaled_to_zero: bool,
    /// False when no metric gave a proposal (`ScalingActive=False`) or
    /// scaling is disabled: the replicas are left as they are.
    pub active: bool,
}

impl SyncOutcome {
    /// The explanation, line by line: each metric, then each step.
    pub fn explain(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for m in &self.metrics {
            lines.push(format!("  {}:", m.metric));
            lines.extend(m.read.iter().map(|r| format!("    {r}")));
            match &m.proposal {
                Ok(p) => lines.push(format!("    → {} replica(s): {}", p.replicas, p.reason)),
                Err(e) => lines.push(format!("    no proposal: {e}")),
            }
        }
        lines.extend(self.steps.iter().map(|s| format!("  {s}")));
        lines
    }
}

fn describe(metric: &MetricSpec) -> String {
    match metric {
        MetricSpec::Pods { name, target } => format!("{name} (Pods, averageValue {target})"),
        MetricSpec::External { name, target, average, .. } => {
            format!("{name} (External, {} {target})", if *average { "averageValue" } else { "value" })
        }
        MetricSpec::Unsupported(why) => format!("skipped ({why})"),
    }
}

fn outcome(spec: &HpaSpec, metric: &MetricSpec, reader: &mut dyn MetricsReader, scale: Scale) -> MetricOutcome {
    let mut read = Vec::new();
    let tolerances = spec.tolerances;
    let proposal = match metric {
        MetricSpec::Pods { .. } if scale.replicas == 0 => {
            Err("the target is at zero: no pods to measure (Pods metrics cannot wake it)".to_string())
        }
        MetricSpec::Pods { name, target } => reader.pods(name).and_then(|values| {
            for v in &values {
                read.push(format!("{:<40} {}", v.pod, v.value.map_or("no value".into(), |x| format!("{x}"))));
            }
            let proposal = pods_average_value(&values, *target, scale.replicas, scale.unready, tolerances)?;
            read.push(format!("average {:.2} / target {target} = ratio {:.3}", proposal.current, proposal.ratio));
            Ok(proposal)
        }),
        MetricSpec::External { name, .. } if !reader.models_external(name) => {
            Err(format!("{name}: External metrics are not modelled here"))
        }
        MetricSpec::External { name, selector, target, average } => {
            reader.external(name, selector.as_deref()).and_then(|value| {
                read.push(format!("value {value}"));
                if *average {
                    average_value_target(value, *target, scale.replicas, tolerances)
                } else {
                    value_target(value, *target, scale.replicas, scale.ready, tolerances)
                }
            })
        }
        MetricSpec::Unsupported(why) => Err(why.clone()),
    };
    let target = match metric {
        MetricSpec::Pods { target, .. } | MetricSpec::External { target, .. } => *target,
        MetricSpec::Unsupported(_) => 0.0,
    };
    MetricOutcome { metric: describe(metric), target, read, proposal }
}

/// One sync of `spec` at `now`: reads every metric through `reader`,
/// combines their proposals and lets `autoscaler` (the recommendation
/// history) hold the result back. The caller carries out the decision and
/// tells the autoscaler with [`Autoscaler::record_scale`].
pub fn sync(
    spec: &HpaSpec,
    reader: &mut dyn MetricsReader,
    scale: Scale,
    autoscaler: &mut Autoscaler,
    now: Instant,
) -> SyncOutcome {
    let current = scale.replicas;
    let inactive = |metrics, steps: Vec<String>| SyncOutcome {
        metrics,
        steps,
        replicas: current,
        scaled_to_zero: current == 0 && scale.scaled_to_zero,
        active: false,
    };
    // A target at zero that this HPA did not put there (or with minReplicas
    // above 0) is paused by its owner: the controller leaves it alone.
    if current == 0 && (spec.min > 0 || !scale.scaled_to_zero) {
        return inactive(
            Vec::new(),
            vec!["scaling is disabled since the replica count of the target is zero (ScalingActive=False/ScalingDisabled)"
                .to_string()],
        );
    }
    let metrics: Vec<MetricOutcome> = spec.metrics.iter().map(|m| outcome(spec, m, reader, scale)).collect();
    let valid: Vec<u32> = metrics.iter().filter_map(|m| m.proposal.as_ref().ok().map(|p| p.replicas)).collect();
    let modelled = |m: &MetricSpec| match m {
        MetricSpec::Unsupported(_) => false,
        MetricSpec::External { name, .. } => reader.models_external(name),
        MetricSpec::Pods { .. } => true,
    };
    let invalid = spec.metrics.iter().filter(|m| modelled(m)).count() - valid.len();
    let Some(&best) = valid.iter().max() else {
        return inactive(
            metrics,
            vec![format!("no metric gave a proposal (ScalingActive=False): the HPA keeps {current} replica(s)")],
        );
    };
    let mut steps = Vec::new();
    let proposal = if invalid > 0 && best < current {
        // Upstream refuses to scale down on the metrics it could read while others failed.
        steps
            .push(format!("{invalid} metric(s) gave no proposal: no scale-down below {current} on the others' {best}"));
        current
    } else {
        best
    };
    let decision = autoscaler.decide(now, proposal, current, spec.min, spec.max, &spec.behavior);
    steps.extend(decision.steps);
    let scaled_to_zero = decision.replicas == 0;
    if scaled_to_zero {
        steps
            .push("ScaledToZero=True: the HPA scaled the target to zero; an Object or External metric wakes it".into());
    } else if current == 0 {
        steps.push(format!("woken from zero to {} replica(s) (ScaledToZero=False)", decision.replicas));
    }
    SyncOutcome { metrics, steps, replicas: decision.replicas, scaled_to_zero, active: true }
}

#[cfg(test)]
mod tests;
