//! The HPA as users write it (autoscaling/v2; v2beta2 has the same fields),
//! read once for every caller: `hpa-preview`, `simulate` and `standalone`.
//!
//! A manifest kube-apiserver would refuse is refused here too, with its
//! field path and kube-apiserver's wording: an unknown field, `min >
//! max`, a target that is not positive, an unknown `selectPolicy` or policy
//! type, a negative tolerance, `minReplicas: 0` without an Object or External
//! metric. Nothing is clamped or defaulted behind the user's back.
//!
//! [`HpaSpec::needs`] says which Kubernetes a manifest needs: a `tolerance`
//! (KEP-4951) 1.35 (beta, on by default; alpha behind `HPAConfigurableTolerance`
//! from 1.33), `minReplicas: 0` (KEP-2021, `HPAScaleToZero`) 1.37.

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler, MetricTarget};

use super::{Behavior, Policy, Rules, Select, Tolerances};
use crate::k8s::quantity::parse_quantity;

/// A metric of the HPA, as far as this model computes it.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricSpec {
    /// `type: Pods`, with an `AverageValue` target.
    Pods {
        /// Metric name.
        name: String,
        /// Target average.
        target: f64,
    },
    /// `type: External`, with a `Value` or `AverageValue` target.
    External {
        /// Metric name.
        name: String,
        /// Label selector of the metric, as a string.
        selector: Option<String>,
        /// Target.
        target: f64,
        /// Whether the target is an average per replica.
        average: bool,
    },
    /// A valid metric this model does not compute (resource or object metrics).
    Unsupported(String),
}

/// An HPA, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct HpaSpec {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The scale target's name.
    pub target_name: String,
    /// minReplicas (default 1).
    pub min: u32,
    /// maxReplicas.
    pub max: u32,
    /// Its metrics.
    pub metrics: Vec<MetricSpec>,
    /// Its behavior, defaults filled in.
    pub behavior: Behavior,
    /// Its tolerances: `behavior.scaleUp/scaleDown.tolerance`, else the
    /// controller's default (0.1 each).
    pub tolerances: Tolerances,
    /// Whether it sets a tolerance of its own.
    pub sets_tolerance: bool,
}

impl HpaSpec {
    /// The Kubernetes versions its fields need, one line each; empty when
    /// any cluster serving autoscaling/v2 (1.23+) or v2beta2 (1.12–1.25) runs it.
    pub fn needs(&self) -> Vec<String> {
        let mut needs = Vec::new();
        if self.sets_tolerance {
            needs.push(
                "behavior.*.tolerance needs Kubernetes 1.35 or later (HPAConfigurableTolerance, beta and on by \
                 default; alpha from 1.33 behind the gate); older controllers drop the field and use 0.1"
                    .to_string(),
            );
        }
        if self.min == 0 {
            needs.push(
                "minReplicas: 0 needs Kubernetes 1.37 or later (HPAScaleToZero, beta and on by default); older \
                 API servers refuse it"
                    .to_string(),
            );
        }
        needs
    }
}

/// The longest stabilization window and policy period kube-apiserver takes.
const MAX_WINDOW_SECONDS: i32 = 3600;
const MAX_PERIOD_SECONDS: i32 = 1800;

/// kube-apiserver's field errors, collected in order.
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn invalid(&mut self, path: &str, value: impl std::fmt::Display, why: &str) {
        self.0.push(format!("{path}: Invalid value: {value}: {why}"));
    }

    fn required(&mut self, path: &str, why: &str) {
        self.0.push(format!("{path}: Required value: {why}"));
    }

    fn unsupported(&mut self, path: &str, value: &str, supported: &[&str]) {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.0.push(format!("{path}: Unsupported value: {value:?}: supported values: {}", supported.join(", ")));
    }
}

/// The target's quantity (`averageValue` or `value`), checked positive.
fn target(target: &MetricTarget, path: &str, average: bool, errors: &mut Errors) -> Option<f64> {
    let (field, quantity) =
        if average { ("averageValue", target.average_value.as_ref()) } else { ("value", target.value.as_ref()) };
    let path = format!("{path}.target.{field}");
    let Some(quantity) = quantity else {
        errors.required(&path, &format!("must set {field} for a target of type {}", target.type_));
        return None;
    };
    checked_quantity(&quantity.0, &path, |v| v > 0.0, "must be positive", errors)
}

/// A finite Quantity that `fits`; else a field error at `path` (`bound`, or the parse error).
fn checked_quantity(text: &str, path: &str, fits: fn(f64) -> bool, bound: &str, errors: &mut Errors) -> Option<f64> {
    match parse_quantity(text) {
        Ok(v) if v.is_finite() && fits(v) => Some(v),
        Ok(_) => {
            errors.invalid(path, format_args!("{text:?}"), bound);
            None
        }
        Err(e) => {
            errors.invalid(path, format_args!("{text:?}"), &e.to_string());
            None
        }
    }
}

fn metric(m: k8s_openapi::api::autoscaling::v2::MetricSpec, i: usize, errors: &mut Errors) -> MetricSpec {
    let path = format!("spec.metrics[{i}]");
    const TYPES: &[&str] = &["ContainerResource", "External", "Object", "Pods", "Resource"];
    match (m.type_.as_str(), m.pods, m.external) {
        ("Pods", Some(p), _) => {
            let path = format!("{path}.pods");
            if p.metric.name.is_empty() {
                errors.required(&format!("{path}.metric.name"), "must specify a metric name");
            }
            if p.target.type_ != "AverageValue" {
                errors.unsupported(&format!("{path}.target.type"), &p.target.type_, &["AverageValue"]);
                return MetricSpec::Unsupported(String::new());
            }
            match target(&p.target, &path, true, errors) {
                Some(target) => MetricSpec::Pods { name: p.metric.name, target },
                None => MetricSpec::Unsupported(String::new()),
            }
        }
        ("External", _, Some(e)) => {
            let path = format!("{path}.external");
            if e.metric.name.is_empty() {
                errors.required(&format!("{path}.metric.name"), "must specify a metric name");
            }
            let average = match e.target.type_.as_str() {
                "AverageValue" => true,
                "Value" => false,
                other => {
                    errors.unsupported(&format!("{path}.target.type"), other, &["AverageValue", "Value"]);
                    return MetricSpec::Unsupported(String::new());
                }
            };
            let selector = e
                .metric
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .map(|labels| labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
            match target(&e.target, &path, average, errors) {
                Some(target) => MetricSpec::External { name: e.metric.name, selector, target, average },
                None => MetricSpec::Unsupported(String::new()),
            }
        }
        ("Pods" | "External", ..) => {
            let source = if m.type_ == "Pods" { "pods" } else { "external" };
            errors.required(&format!("{path}.{source}"), "must populate information for the given metric source");
            MetricSpec::Unsupported(String::new())
        }
        (kind, ..) if TYPES.contains(&kind) => MetricSpec::Unsupported(format!("{kind} metrics are not computed here")),
        (kind, ..) => {
            errors.unsupported(&format!("{path}.type"), kind, TYPES);
            MetricSpec::Unsupported(String::new())
        }
    }
}

/// A direction's `tolerance`, if set: a Quantity at or above 0.
fn tolerance(r: Option<&HPAScalingRules>, path: &str, errors: &mut Errors) -> Option<f64> {
    let quantity = r?.tolerance.as_ref()?;
    checked_quantity(
        &quantity.0,
        &format!("{path}.tolerance"),
        |v| v >= 0.0,
        "must be greater than or equal to 0",
        errors,
    )
}

fn rules(r: Option<&HPAScalingRules>, default: Rules, path: &str, errors: &mut Errors) -> Rules {
    let Some(r) = r else { return default };
    let mut rules = default;
    if let Some(window) = r.stabilization_window_seconds {
        let path = format!("{path}.stabilizationWindowSeconds");
        if window < 0 {
            errors.invalid(&path, window, "must be greater than or equal to zero");
        } else if window > MAX_WINDOW_SECONDS {
            errors.invalid(&path, window, &format!("must be less than or equal to {MAX_WINDOW_SECONDS}"));
        } else {
            rules.window = std::time::Duration::from_secs(window as u64);
        }
    }
    match r.select_policy.as_deref() {
        None => {}
        Some("Max") => rules.select = Select::Max,
        Some("Min") => rules.select = Select::Min,
        Some("Disabled") => rules.select = Select::Disabled,
        Some(other) => errors.unsupported(&format!("{path}.selectPolicy"), other, &["Disabled", "Max", "Min"]),
    }
    if let Some(policies) = &r.policies {
        if policies.is_empty() {
            errors.required(&format!("{path}.policies"), "must specify at least one Policy");
        }
        let mut checked = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            let path = format!("{path}.policies[{i}]");
            if p.value <= 0 {
                errors.invalid(&format!("{path}.value"), p.value, "must be greater than zero");
            }
            if p.period_seconds <= 0 {
                errors.invalid(&format!("{path}.periodSeconds"), p.period_seconds, "must be greater than zero");
            } else if p.period_seconds > MAX_PERIOD_SECONDS {
                errors.invalid(
                    &format!("{path}.periodSeconds"),
                    p.period_seconds,
                    &format!("must be less than or equal to {MAX_PERIOD_SECONDS}"),
                );
            }
            let period = std::time::Duration::from_secs(p.period_seconds.max(1) as u64);
            let value = p.value.max(0) as u32;
            match p.type_.as_str() {
                "Pods" => checked.push(Policy::Pods(value, period)),
                "Percent" => checked.push(Policy::Percent(value, period)),
                other => errors.unsupported(&format!("{path}.type"), other, &["Percent", "Pods"]),
            }
        }
        rules.policies = checked;
    }
    rules
}

/// Names of fields in `given` that `known` (the same object as the typed
/// model writes it back) lacks: fields kube-apiserver does not know.
fn unknown_fields(given: &serde_json::Value, known: &serde_json::Value, path: &str, found: &mut Vec<String>) {
    use serde_json::Value;
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => {
            for (key, value) in given {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match known.get(key) {
                    Some(known) => unknown_fields(value, known, &child, found),
                    None if !value.is_null() => found.push(child),
                    None => {}
                }
            }
        }
        (Value::Array(given), Value::Array(known)) => {
            for (i, (value, known)) in given.iter().zip(known).enumerate() {
                unknown_fields(value, known, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// Parses and checks an HPA manifest (YAML or JSON); an error lists every
/// field kube-apiserver would refuse, one a line.
pub fn parse_hpa(text: &str) -> Result<HpaSpec, String> {
    let mut given: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    // autoscaling/v2beta2 (what a v1.20 cluster serves) has v2's fields.
    match given.get("apiVersion").and_then(|v| v.as_str()) {
        Some("autoscaling/v2") => {}
        Some("autoscaling/v2beta2") => given["apiVersion"] = "autoscaling/v2".into(),
        other => {
            return Err(format!(
                "apiVersion: Unsupported value: {:?}: supported values: \"autoscaling/v2\", \"autoscaling/v2beta2\"",
                other.unwrap_or_default()
            ));
        }
    }
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(given.clone()).map_err(|e| e.to_string())?;
    let mut errors = Errors::default();
    let known = serde_json::to_value(&hpa).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(&given, &known, "", &mut unknown);
    for field in unknown {
        errors.0.push(format!("unknown field {field:?}"));
    }
    if hpa.metadata.name.as_deref().is_none_or(str::is_empty) {
        errors.required("metadata.name", "name or generateName is required");
    }
    let spec = hpa.spec;
    if spec.scale_target_ref.name.is_empty() {
        errors.required("spec.scaleTargetRef.name", "the scale target's name is required");
    }
    let min = spec.min_replicas.unwrap_or(1);
    let has_object_or_external = spec.metrics.iter().flatten().any(|m| m.type_ == "External" || m.type_ == "Object");
    if min < 0 {
        errors.invalid("spec.minReplicas", min, "must be greater than or equal to 0");
    } else if min == 0 && !has_object_or_external {
        errors.0.push(
            "spec.minReplicas: Forbidden: must specify at least one Object or External metric to support scaling \
             to zero replicas"
                .to_string(),
        );
    }
    if spec.max_replicas < 1 {
        errors.invalid("spec.maxReplicas", spec.max_replicas, "must be greater than 0");
    } else if spec.max_replicas < min {
        errors.invalid("spec.maxReplicas", spec.max_replicas, "must be greater than or equal to `minReplicas`");
    }
    let metrics: Vec<MetricSpec> =
        spec.metrics.unwrap_or_default().into_iter().enumerate().map(|(i, m)| metric(m, i, &mut errors)).collect();
    let defaults = Behavior::default();
    let (up, down) = match &spec.behavior {
        Some(b) => (b.scale_up.as_ref(), b.scale_down.as_ref()),
        None => (None, None),
    };
    let behavior = Behavior {
        up: rules(up, defaults.up, "spec.behavior.scaleUp", &mut errors),
        down: rules(down, defaults.down, "spec.behavior.scaleDown", &mut errors),
    };
    let (tolerance_up, tolerance_down) =
        (tolerance(up, "spec.behavior.scaleUp", &mut errors), tolerance(down, "spec.behavior.scaleDown", &mut errors));
    let default_tolerances = Tolerances::default();
    let tolerances = Tolerances {
        up: tolerance_up.unwrap_or(default_tolerances.up),
        down: tolerance_down.unwrap_or(default_tolerances.down),
    };
    if !errors.0.is_empty() {
        return Err(errors.0.join("\n"));
    }
    Ok(HpaSpec {
        name: hpa.metadata.name.unwrap_or_default(),
        namespace: hpa.metadata.namespace.unwrap_or_else(|| "default".into()),
        target_name: spec.scale_target_ref.name,
        min: min as u32,
        max: spec.max_replicas as u32,
        metrics,
        behavior,
        tolerances,
        sets_tolerance: tolerance_up.is_some() || tolerance_down.is_some(),
    })
}

#[cfg(test)]
mod tests;
