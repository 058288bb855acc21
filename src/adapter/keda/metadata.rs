//! What a ScaledObject asks of the scaler: its namespace and the trigger's
//! metadata, checked once per call. KEDA passes the whole trigger metadata
//! (`scalerAddress` included), so keys this scaler does not read are left
//! alone; a key it reads with a bad value is refused, naming the key.

use kube::core::Selector;

use super::proto::ScaledObjectRef;
use super::target::Known;
use crate::adapter::store::{Metric, Unit};
use crate::k8s::selector::parse_selector;

/// The metric to scale on (default `nvidia_gpu_utilization_percent`).
pub const METRIC_NAME: &str = "metricName";
/// The workload's pods (default: the scale target's own pod selector; in
/// `standalone`, `app=<ScaledObject name>`).
pub const POD_SELECTOR: &str = "podSelector";
/// The per-pod average to hold (required).
pub const TARGET_VALUE: &str = "targetValue";
/// A pod above this makes the workload active (default 0).
pub const ACTIVATION_TARGET_VALUE: &str = "activationTargetValue";

/// One ScaledObject's trigger, checked.
#[derive(Clone, Debug)]
pub struct ScalerSpec {
    /// The ScaledObject's namespace: only its pods count.
    pub namespace: String,
    /// The metric.
    pub metric: Metric,
    /// The workload's pods.
    pub selector: Selector,
    /// The selector as written, for messages.
    pub selector_text: String,
    /// The per-pod average to hold.
    pub target: f64,
    /// A pod above this makes the workload active.
    pub activation: f64,
    /// What the API shows of the ScaledObject's scale target.
    pub scale_target: Known,
}

/// Where `podSelector` comes from when the metadata leaves it out.
#[derive(Clone, Copy, Debug)]
pub enum DefaultSelector<'a> {
    /// The scale target's pod selector.
    Target(&'a str),
    /// `app=<ScaledObject name>` (`standalone`, whose pods carry it).
    AppName,
    /// None can be had: why.
    Unavailable(&'a str),
}

/// Why a ScaledObject's metadata cannot be used: the key and the reason,
/// answered as gRPC `InvalidArgument`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct MetadataError {
    /// The key (or `namespace`, `name`).
    pub key: &'static str,
    /// Why.
    pub reason: String,
    /// The metadata is not wrong, but what it leaves out cannot be filled
    /// in now (gRPC `FailedPrecondition` rather than `InvalidArgument`).
    pub precondition: bool,
}

fn error(key: &'static str, reason: impl Into<String>) -> MetadataError {
    MetadataError { key, reason: reason.into(), precondition: false }
}

/// A value echoed in an error, cut to 64 characters, so that a huge value
/// cannot turn the answer into `RESOURCE_EXHAUSTED`.
pub fn echo(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{:?}… ({} bytes)", &text[..at], text.len()),
        None => format!("{text:?}"),
    }
}

/// The smallest and largest target KEDA can turn into an HPA target: it
/// writes `targetSizeFloat` as a milli-quantity, an `int64` of thousandths.
const MIN_TARGET: f64 = 0.001;
const MAX_TARGET: f64 = 9.2e15;

/// Parses a number a ScaledObject gives as a string: finite, not negative,
/// and for percentages at most 100 (a per-pod average can be no more).
fn number(key: &'static str, text: &str, metric: Metric) -> Result<f64, MetadataError> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| error(key, format!("{} is not a number (write it as a string, e.g. \"70\")", echo(text))))?;
    if !value.is_finite() || value < 0.0 {
        return Err(error(key, format!("{} must be a finite number, 0 or more", echo(text))));
    }
    if metric.unit() == Unit::Percent && value > 100.0 {
        return Err(error(key, format!("{} is above 100, the most {} can be", echo(text), metric.name())));
    }
    Ok(value)
}

impl ScalerSpec {
    /// Checks a ScaledObject's reference and metadata; `podSelector`, when
    /// left out, is `default`.
    pub fn parse(object: &ScaledObjectRef, default: DefaultSelector<'_>) -> Result<Self, MetadataError> {
        let metadata = &object.scaler_metadata;
        if object.namespace.is_empty() {
            return Err(error("namespace", "the ScaledObject's namespace is required"));
        }
        let metric = match metadata.get(METRIC_NAME) {
            None => Metric::Utilization,
            Some(name) => Metric::from_name(name.trim()).ok_or_else(|| {
                let served: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                error(
                    METRIC_NAME,
                    format!("{} is not a metric this scaler serves; served: {}", echo(name), served.join(", ")),
                )
            })?,
        };
        let selector_text = match (metadata.get(POD_SELECTOR), default) {
            (Some(text), _) if text.trim().is_empty() => {
                return Err(error(POD_SELECTOR, "is empty; leave it out for the scale target's own pod selector"));
            }
            (Some(text), _) => text.trim().to_string(),
            (None, DefaultSelector::Target(selector)) => selector.to_string(),
            (None, DefaultSelector::AppName) if object.name.is_empty() => {
                return Err(error(
                    "name",
                    format!("the ScaledObject's name is required when {POD_SELECTOR} is not set"),
                ));
            }
            (None, DefaultSelector::AppName) => format!("app={}", object.name),
            (None, DefaultSelector::Unavailable(why)) => {
                return Err(MetadataError {
                    precondition: true,
                    ..error(
                        POD_SELECTOR,
                        format!("is not set, and the scale target's pod selector cannot be had to default it: {why}"),
                    )
                });
            }
        };
        let selector = parse_selector(&selector_text).map_err(|e| error(POD_SELECTOR, e.to_string()))?;
        let target = match metadata.get(TARGET_VALUE) {
            None => {
                return Err(error(
                    TARGET_VALUE,
                    format!("is required: the per-pod average of {} to hold, e.g. \"70\"", metric.name()),
                ));
            }
            Some(text) => number(TARGET_VALUE, text, metric)?,
        };
        if target == 0.0 {
            return Err(error(TARGET_VALUE, "must be greater than 0"));
        }
        if !(MIN_TARGET..=MAX_TARGET).contains(&target) {
            return Err(error(
                TARGET_VALUE,
                format!(
                    "{} is outside {MIN_TARGET}..={MAX_TARGET:e}: KEDA gives the HPA the target in thousandths, as a 64-bit integer",
                    echo(&metadata[TARGET_VALUE])
                ),
            ));
        }
        let activation = match metadata.get(ACTIVATION_TARGET_VALUE) {
            None => 0.0,
            Some(text) => number(ACTIVATION_TARGET_VALUE, text, metric)?,
        };
        Ok(Self {
            namespace: object.namespace.clone(),
            metric,
            selector,
            selector_text,
            target,
            activation,
            scale_target: Known::Unknown("not looked up".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, namespace: &str, metadata: &[(&str, &str)]) -> ScaledObjectRef {
        ScaledObjectRef {
            name: name.into(),
            namespace: namespace.into(),
            scaler_metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn defaults_fill_what_a_short_trigger_leaves_out() {
        let short = object(
            "reasoning-suite",
            "ai",
            &[("targetValue", "70"), ("scalerAddress", "kube-gpu-metrics-adapter.kube-gpu-metrics.svc:9443")],
        );
        // In a cluster, the scale target's own selector.
        let spec = ScalerSpec::parse(&short, DefaultSelector::Target("app=reasoning,tier=gpu")).unwrap();
        assert_eq!(spec.metric, Metric::Utilization);
        assert_eq!(spec.selector_text, "app=reasoning,tier=gpu");
        assert_eq!((spec.target, spec.activation), (70.0, 0.0));
        assert_eq!(spec.namespace, "ai");
        // In standalone, app=<name>.
        let spec = ScalerSpec::parse(&short, DefaultSelector::AppName).unwrap();
        assert_eq!(spec.selector_text, "app=reasoning-suite");
        // Without a target to read, no guess: the error names podSelector and says why.
        let err = ScalerSpec::parse(&short, DefaultSelector::Unavailable("scaledobjects is forbidden")).unwrap_err();
        assert_eq!((err.key, err.precondition), ("podSelector", true));
        assert!(err.reason.contains("scaledobjects is forbidden"), "{err}");
        // An explicit podSelector wins over the target's.
        let explicit = object("so", "ai", &[("targetValue", "70"), ("podSelector", "app=web")]);
        let spec = ScalerSpec::parse(&explicit, DefaultSelector::Target("app=other")).unwrap();
        assert_eq!(spec.selector_text, "app=web");
    }

    #[test]
    fn every_key_is_read() {
        let spec = ScalerSpec::parse(
            &object(
                "so",
                "ai",
                &[
                    ("metricName", "nvidia_gpu_memory_used_bytes"),
                    ("podSelector", "tier in (gpu),app!=batch"),
                    ("targetValue", "8589934592"),
                    ("activationTargetValue", " 1024 "),
                ],
            ),
            DefaultSelector::Target("app=so"),
        )
        .unwrap();
        assert_eq!(spec.metric, Metric::MemoryUsed);
        assert_eq!((spec.target, spec.activation), (8589934592.0, 1024.0));
    }

    #[test]
    fn a_huge_value_is_echoed_cut_short() {
        let huge = "7".repeat(3 << 20);
        let err =
            ScalerSpec::parse(&object("so", "ai", &[("targetValue", &huge)]), DefaultSelector::AppName).unwrap_err();
        assert_eq!(err.key, "targetValue");
        assert!(err.to_string().len() < 300, "{} bytes", err.to_string().len());
        assert!(err.reason.contains("(3145728 bytes)"), "{err}");
    }

    /// Name, namespace, metadata, and the key the error must name.
    type Case = (&'static str, &'static str, &'static [(&'static str, &'static str)], &'static str);

    #[test]
    fn bad_metadata_names_the_key() {
        let cases: &[Case] = &[
            ("so", "ai", &[], "targetValue"),
            ("so", "ai", &[("targetValue", "seventy")], "targetValue"),
            ("so", "ai", &[("targetValue", "0")], "targetValue"),
            ("so", "ai", &[("targetValue", "-5")], "targetValue"),
            ("so", "ai", &[("targetValue", "NaN")], "targetValue"),
            ("so", "ai", &[("targetValue", "150")], "targetValue"),
            ("so", "ai", &[("targetValue", "5e-324"), ("metricName", "nvidia_gpu_memory_used_bytes")], "targetValue"),
            ("so", "ai", &[("targetValue", "1e308"), ("metricName", "nvidia_gpu_memory_used_bytes")], "targetValue"),
            ("so", "ai", &[("targetValue", "70"), ("activationTargetValue", "x")], "activationTargetValue"),
            ("so", "ai", &[("targetValue", "70"), ("metricName", "gpu_util")], "metricName"),
            ("so", "ai", &[("targetValue", "70"), ("podSelector", "app in (a")], "podSelector"),
            ("so", "ai", &[("targetValue", "70"), ("podSelector", " ")], "podSelector"),
            ("", "ai", &[("targetValue", "70")], "name"),
            ("so", "", &[("targetValue", "70")], "namespace"),
        ];
        for (name, namespace, metadata, key) in cases {
            let err = ScalerSpec::parse(&object(name, namespace, metadata), DefaultSelector::AppName).unwrap_err();
            assert_eq!(err.key, *key, "{metadata:?}: {err}");
            assert!(err.to_string().starts_with(&format!("{key}: ")), "{err}");
        }
    }
}
