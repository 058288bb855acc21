//! The HorizontalPodAutoscaler's autoscaling/v2 replica algorithm, as the
//! kube-controller-manager runs it, so that `hpa-preview`, the twin and
//! `standalone` can say what an HPA would do with the metrics this project
//! serves, and why.
//!
//! Per metric: `desired = ceil(current × value / target)`, unless the ratio
//! is within the tolerances of 1 (`1 - down ≤ ratio ≤ 1 + up`: 0.1 each by
//! default, or the HPA's own `behavior.scaleUp/scaleDown.tolerance`, KEP-4951).
//! For `Pods` metrics, pods without a value count as at the target when
//! scaling down and as 0 when scaling up, unready (pending) pods count as 0
//! on a scale-up, and a decision they would reverse is dropped. The largest
//! proposal across metrics wins, is held back by the stabilization windows
//! (scale-up 0 s, scale-down 300 s by default) and the rate policies, and is
//! clamped to `minReplicas..=maxReplicas`. At zero replicas (KEP-2021,
//! `minReplicas: 0`), only `Object` and `External` metrics can propose, as
//! `ceil(value / target)` without tolerance: there are no pods to measure.
//!
//! [`sync::sync`] runs one controller sync over a spec ([`spec::HpaSpec`]).

pub mod preview;
pub mod spec;
pub mod sync;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The controller's default tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;

/// How far the usage ratio may stray from 1 before the HPA acts, per direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    /// Below 1: no scale-down while `ratio >= 1 - down`.
    pub down: f64,
    /// Above 1: no scale-up while `ratio <= 1 + up`.
    pub up: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances { down: TOLERANCE, up: TOLERANCE }
    }
}

impl Tolerances {
    /// Whether `ratio` is close enough to 1 to change nothing (upstream's `isWithin`).
    pub fn within(&self, ratio: f64) -> bool {
        (1.0 - self.down) <= ratio && ratio <= (1.0 + self.up)
    }
}

impl std::fmt::Display for Tolerances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.down == self.up {
            write!(f, "{} tolerance", self.down)
        } else {
            write!(f, "tolerance (down {}, up {})", self.down, self.up)
        }
    }
}

/// A target the ratio can be taken against: finite and above zero (NaN is not).
fn valid_target(target: f64) -> bool {
    target.is_finite() && target > 0.0
}

/// One pod's metric value, or none (missing).
#[derive(Clone, Debug, PartialEq)]
pub struct PodValue {
    /// Pod name.
    pub pod: String,
    /// Its value, if the API returned one.
    pub value: Option<f64>,
}

/// A metric's proposal, with the numbers behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// Replicas this metric asks for.
    pub replicas: u32,
    /// The current value the HPA compares (average for `AverageValue`).
    pub current: f64,
    /// current / target, before missing pods are filled in.
    pub ratio: f64,
    /// Why it came out this way.
    pub reason: String,
}

impl Proposal {
    /// The current replicas, kept: `ratio` is within the tolerances.
    fn within(current_replicas: u32, current: f64, ratio: f64, tolerances: Tolerances) -> Proposal {
        Proposal {
            replicas: current_replicas,
            current,
            ratio,
            reason: format!("ratio {ratio:.3} is within the {tolerances}: no change"),
        }
    }
}

/// `ceil(x)` replicas; the cast saturates, as the controller caps at MaxInt32.
fn ceil_replicas(x: f64) -> u32 {
    x.ceil() as u32
}

/// `Pods` metric with an `AverageValue` target (the reference HPA's kind).
/// `values` are the running pods' (`value: None` where the API returned
/// none), `current_replicas` the scale's replicas (pods it counts that are
/// not in `values` are missing too), `unready` the pods still pending.
pub fn pods_average_value(
    values: &[PodValue],
    target: f64,
    current_replicas: u32,
    unready: u32,
    tolerances: Tolerances,
) -> Result<Proposal, String> {
    if !valid_target(target) {
        return Err(format!("target must be above 0, not {target}"));
    }
    let known: Vec<f64> = values.iter().filter_map(|p| p.value).collect();
    if known.is_empty() {
        return Err("no metrics returned for the targeted pods".to_string());
    }
    let running = values.len() + unready as usize;
    let missing = values.len().saturating_sub(known.len()) + (current_replicas as usize).saturating_sub(running);
    let average = known.iter().sum::<f64>() / known.len() as f64;
    let ratio = average / target;
    let with_unready = unready > 0 && ratio > 1.0;

    if missing == 0 && !with_unready {
        if tolerances.within(ratio) {
            return Ok(Proposal::within(current_replicas, average, ratio, tolerances));
        }
        let replicas = ceil_replicas(ratio * known.len() as f64);
        return Ok(Proposal {
            replicas,
            current: average,
            ratio,
            reason: format!("ceil({ratio:.3} × {} pods) = {replicas}", known.len()),
        });
    }

    // Missing pods: at the target when scaling down, at 0 when scaling up;
    // unready pods: at 0 when scaling up, else left out.
    let fill = if ratio < 1.0 { target } else { 0.0 };
    let filled = if ratio == 1.0 { 0 } else { missing };
    let unready_counted = if with_unready { unready as usize } else { 0 };
    let counted = known.len() + filled + unready_counted;
    let total = known.iter().sum::<f64>() + fill * filled as f64;
    let new_ratio = total / counted as f64 / target;
    let mut filled_how = Vec::new();
    if filled > 0 {
        filled_how.push(format!(
            "{filled} pod(s) without a value counted as {}",
            if ratio < 1.0 { "at the target" } else { "0" }
        ));
    }
    if unready_counted > 0 {
        filled_how.push(format!("{unready_counted} unready pod(s) counted as 0"));
    }
    let filled_how = filled_how.join(", ");
    let reversed = (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0);
    if tolerances.within(new_ratio) || reversed {
        return Ok(Proposal {
            replicas: current_replicas,
            current: average,
            ratio,
            reason: format!(
                "{filled_how}: ratio {new_ratio:.3} {}: no change",
                if reversed { "reverses the direction" } else { "is within the tolerance" },
            ),
        });
    }
    let replicas = ceil_replicas(new_ratio * counted as f64);
    let against = (new_ratio < 1.0 && replicas > current_replicas) || (new_ratio > 1.0 && replicas < current_replicas);
    let replicas = if against { current_replicas } else { replicas };
    Ok(Proposal {
        replicas,
        current: average,
        ratio,
        reason: format!("{filled_how}: ceil({new_ratio:.3} × {counted} pods) = {replicas}"),
    })
}

/// `Object` or `External` metric with a `Value` target. `ready_replicas`
/// are the target's ready pods; at `current_replicas` 0 the proposal is
/// `ceil(ratio)` without tolerance, which is how the HPA wakes a workload it
/// scaled to zero.
pub fn value_target(
    value: f64,
    target: f64,
    current_replicas: u32,
    ready_replicas: u32,
    tolerances: Tolerances,
) -> Result<Proposal, String> {
    if !valid_target(target) {
        return Err(format!("target must be above 0, not {target}"));
    }
    let ratio = value / target;
    if current_replicas == 0 {
        let replicas = ceil_replicas(ratio);
        return Ok(Proposal {
            replicas,
            current: value,
            ratio,
            reason: format!("at zero replicas: ceil({ratio:.3}) = {replicas}"),
        });
    }
    if tolerances.within(ratio) {
        return Ok(Proposal::within(current_replicas, value, ratio, tolerances));
    }
    let replicas = ceil_replicas(ratio * f64::from(ready_replicas));
    Ok(Proposal {
        replicas,
        current: value,
        ratio,
        reason: format!("ceil({ratio:.3} × {ready_replicas} ready pods) = {replicas}"),
    })
}

/// `Object` or `External` metric with an `AverageValue` target: the value is
/// shared by the current replicas (at zero, `ceil(value / target)`).
pub fn average_value_target(
    value: f64,
    target: f64,
    current_replicas: u32,
    tolerances: Tolerances,
) -> Result<Proposal, String> {
    if !valid_target(target) {
        return Err(format!("target must be above 0, not {target}"));
    }
    let replicas_for_value = ceil_replicas(value / target);
    if current_replicas == 0 {
        return Ok(Proposal {
            replicas: replicas_for_value,
            current: value,
            ratio: f64::INFINITY,
            reason: format!("at zero replicas: ceil({value:.3} / {target}) = {replicas_for_value}"),
        });
    }
    let ratio = value / (target * f64::from(current_replicas));
    if tolerances.within(ratio) {
        return Ok(Proposal::within(current_replicas, value, ratio, tolerances));
    }
    Ok(Proposal {
        replicas: replicas_for_value,
        current: value,
        ratio,
        reason: format!("ceil({value:.3} / {target}) = {replicas_for_value}"),
    })
}

/// A scaling policy: how much may change within a period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    /// At most this many pods per period.
    Pods(u32, Duration),
    /// At most this percent of the current replicas per period.
    Percent(u32, Duration),
}

/// How several policies combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the largest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No change in this direction.
    Disabled,
}

/// One direction's rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// Stabilization window.
    pub window: Duration,
    /// Policies.
    pub policies: Vec<Policy>,
    /// How they combine.
    pub select: Select,
}

/// An HPA's behavior, with the Kubernetes defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    /// Scale-up rules.
    pub up: Rules,
    /// Scale-down rules.
    pub down: Rules,
}

impl Default for Behavior {
    fn default() -> Self {
        let period = Duration::from_secs(15);
        Behavior {
            up: Rules {
                window: Duration::ZERO,
                policies: vec![Policy::Percent(100, period), Policy::Pods(4, period)],
                select: Select::Max,
            },
            down: Rules {
                window: Duration::from_secs(300),
                policies: vec![Policy::Percent(100, period)],
                select: Select::Max,
            },
        }
    }
}

/// The controller's memory between decisions: past recommendations (for
/// stabilization, kept by [`Autoscaler::decide`]) and past scale changes (for
/// rate policies, kept by [`Autoscaler::record_scale`]).
#[derive(Debug, Default)]
pub struct Autoscaler {
    recommendations: VecDeque<(Instant, u32)>,
    scale_ups: VecDeque<(Instant, u32)>,
    scale_downs: VecDeque<(Instant, u32)>,
}

/// A decision and how it was reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Replicas to run.
    pub replicas: u32,
    /// The steps that led there.
    pub steps: Vec<String>,
}

impl Autoscaler {
    /// Decides the replicas from the metrics' largest proposal, as the
    /// controller does at `now`, and remembers the decision.
    pub fn decide(
        &mut self,
        now: Instant,
        proposal: u32,
        current: u32,
        min: u32,
        max: u32,
        behavior: &Behavior,
    ) -> Decision {
        let mut steps = vec![format!("metrics propose {proposal} replica(s); {current} running")];
        let (up, down) = (&behavior.up, &behavior.down);

        // Stabilization: the lowest recommendation within the scale-up window
        // bounds a scale-up, the highest within the scale-down window bounds a
        // scale-down.
        let (mut up_to, mut down_to) = (proposal, proposal);
        for &(at, recommendation) in &self.recommendations {
            let age = now.duration_since(at);
            if age < up.window {
                up_to = up_to.min(recommendation);
            }
            if age < down.window {
                down_to = down_to.max(recommendation);
            }
        }
        let longest = up.window.max(down.window);
        self.recommendations.retain(|(at, _)| now.duration_since(*at) < longest);
        self.recommendations.push_back((now, proposal));
        let stabilized = current.max(up_to).min(down_to);
        if stabilized != proposal {
            steps.push(format!(
                "stabilization holds {stabilized} (highest recommendation in the last {}s, lowest in the last {}s)",
                down.window.as_secs(),
                up.window.as_secs()
            ));
        }

        // Rate policies, counting the changes already made in their periods.
        let mut desired = stabilized;
        if stabilized > current {
            let limit = self.scale_limit(now, current, up, true).max(current);
            let allowed = max.min(limit);
            if desired > allowed {
                steps.push(if limit < max {
                    format!("scale-up policies allow at most {limit}")
                } else {
                    format!("maxReplicas is {max}")
                });
                desired = allowed;
            }
        } else if stabilized < current {
            let limit = self.scale_limit(now, current, down, false).min(current);
            let allowed = min.max(limit);
            if desired < allowed {
                steps.push(if limit > min {
                    format!("scale-down policies allow no fewer than {limit}")
                } else {
                    format!("minReplicas is {min}")
                });
                desired = allowed;
            }
        }
        let clamped = desired.clamp(min, max.max(min));
        if clamped != desired {
            steps.push(format!("clamped to minReplicas {min} .. maxReplicas {max}"));
        }
        steps.push(format!("decision: {clamped} replica(s)"));
        Decision { replicas: clamped, steps }
    }

    /// Records that the target was scaled from `from` to `to` replicas at
    /// `now`, for the rate policies. Only a scale that happened counts, as in
    /// the controller: a decision nobody carried out (a preview) does not.
    pub fn record_scale(&mut self, now: Instant, from: u32, to: u32) {
        if to > from {
            self.scale_ups.push_back((now, to - from));
        } else if to < from {
            self.scale_downs.push_back((now, from - to));
        }
    }

    /// The furthest the policies let the replicas go in one direction.
    fn scale_limit(&mut self, now: Instant, current: u32, rules: &Rules, up: bool) -> u32 {
        if rules.select == Select::Disabled || rules.policies.is_empty() {
            return current;
        }
        let period_of = |p: &Policy| match *p {
            Policy::Pods(_, d) | Policy::Percent(_, d) => d,
        };
        let longest = rules.policies.iter().map(period_of).max().unwrap_or_default();
        self.scale_ups.retain(|(at, _)| now.duration_since(*at) <= longest.max(Duration::from_secs(600)));
        self.scale_downs.retain(|(at, _)| now.duration_since(*at) <= longest.max(Duration::from_secs(600)));
        let changed = |events: &VecDeque<(Instant, u32)>, period: Duration| -> i64 {
            // In the period means younger than it, as upstream counts them.
            events.iter().filter(|(at, _)| now.duration_since(*at) < period).map(|(_, n)| i64::from(*n)).sum()
        };
        let proposals = rules.policies.iter().map(|policy| {
            let period = period_of(policy);
            let (added, deleted) = (changed(&self.scale_ups, period), changed(&self.scale_downs, period));
            let start = if up { i64::from(current) - added + deleted } else { i64::from(current) + deleted - added };
            match (*policy, up) {
                (Policy::Pods(n, _), true) => start + i64::from(n),
                (Policy::Pods(n, _), false) => start - i64::from(n),
                (Policy::Percent(p, _), true) => (start as f64 * (1.0 + f64::from(p) / 100.0)).ceil() as i64,
                (Policy::Percent(p, _), false) => (start as f64 * (1.0 - f64::from(p) / 100.0)) as i64,
            }
        });
        // "Max" selects the policy allowing the largest change.
        let limit = match (rules.select, up) {
            (Select::Max, true) | (Select::Min, false) => proposals.max(),
            _ => proposals.min(),
        };
        limit.unwrap_or(i64::from(current)).clamp(0, i64::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
mod tests;
