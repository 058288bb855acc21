//! `hpa-preview`: reads an autoscaling/v2 HPA manifest, gets its metrics from
//! the custom and external metrics APIs (or from a recorded
//! `MetricValueList`), and prints what the HPA would decide and why.

use std::path::PathBuf;
use std::time::Instant;

use crate::adapter::http::wire::{ExternalMetricValue, List, MetricValueV1beta1, MetricValueV1beta2};
use clap::Args;
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler, MetricTarget};

use super::{Autoscaler, Behavior, PodValue, Policy, Proposal, Rules, Select};
use crate::k8s::quantity::parse_quantity;

/// Flags of `hpa-preview`.
#[derive(Clone, Debug, Args)]
pub struct PreviewArgs {
    /// The HPA manifest (YAML or JSON).
    #[arg(long, env = "KGM_HPA")]
    pub hpa: PathBuf,

    /// A recorded MetricValueList (or ExternalMetricValueList), exactly as
    /// the API returns it, used instead of querying.
    #[arg(long, env = "KGM_METRICS")]
    pub metrics: Option<PathBuf>,

    /// Replicas the scale target runs now (default: the pods the API lists).
    #[arg(long, env = "KGM_CURRENT_REPLICAS")]
    pub current_replicas: Option<u32>,

    /// Kubeconfig of the cluster, or of `standalone`.
    #[arg(long, env = "KUBECONFIG", default_value = "standalone.kubeconfig")]
    pub kubeconfig: PathBuf,

    /// Label selector of the scale target's pods (default: `app=<scaleTargetRef.name>`).
    #[arg(long, env = "KGM_SELECTOR")]
    pub selector: Option<String>,
}

/// Why a preview could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The manifest could not be read or parsed.
    #[error("cannot read the HPA manifest {path} (--hpa): {reason}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The recorded metrics could not be read.
    #[error("cannot read recorded metrics {path} (--metrics): {reason}")]
    Recorded {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The API could not be queried.
    #[error("cannot query {path} through {kubeconfig} (--kubeconfig): {reason}")]
    Query {
        /// The API path.
        path: String,
        /// The kubeconfig.
        kubeconfig: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A metric of the HPA, as far as the preview understands it.
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
    /// A metric the preview does not compute (resource or object metrics).
    Unsupported(String),
}

/// What the preview needs of an HPA.
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
}

fn quantity(target: &MetricTarget, average: bool) -> Option<f64> {
    let q = if average { target.average_value.as_ref() } else { target.value.as_ref() }?;
    parse_quantity(&q.0).ok()
}

fn rules(rules: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(r) = rules else { return default };
    let policies = r.policies.as_ref().map(|ps| {
        ps.iter()
            .map(|p| {
                let period = std::time::Duration::from_secs(p.period_seconds.max(1) as u64);
                let value = p.value.max(0) as u32;
                if p.type_ == "Percent" { Policy::Percent(value, period) } else { Policy::Pods(value, period) }
            })
            .collect()
    });
    Rules {
        window: r
            .stabilization_window_seconds
            .map_or(default.window, |s| std::time::Duration::from_secs(s.max(0) as u64)),
        policies: policies.unwrap_or(default.policies),
        select: match r.select_policy.as_deref() {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            Some(_) => Select::Max,
            None => default.select,
        },
    }
}

/// Parses an HPA manifest (YAML or JSON).
pub fn parse_hpa(text: &str) -> Result<HpaSpec, String> {
    let hpa: HorizontalPodAutoscaler = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if hpa.metadata.name.is_none() {
        return Err("metadata.name is missing".into());
    }
    let spec = hpa.spec.ok_or("spec is missing")?;
    let metrics = spec
        .metrics
        .unwrap_or_default()
        .into_iter()
        .map(|m| match (m.type_.as_str(), m.pods, m.external) {
            ("Pods", Some(p), _) if p.target.type_ == "AverageValue" => match quantity(&p.target, true) {
                Some(target) => MetricSpec::Pods { name: p.metric.name, target },
                None => MetricSpec::Unsupported(format!("Pods metric {} has no valid averageValue", p.metric.name)),
            },
            ("External", _, Some(e)) => {
                let average = e.target.type_ == "AverageValue";
                let selector = e
                    .metric
                    .selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .map(|labels| labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
                match quantity(&e.target, average) {
                    Some(target) => MetricSpec::External { name: e.metric.name, selector, target, average },
                    None => MetricSpec::Unsupported(format!("External metric {} has no valid target", e.metric.name)),
                }
            }
            (kind, _, _) => MetricSpec::Unsupported(format!("{kind} metrics are not previewed")),
        })
        .collect();
    let defaults = Behavior::default();
    let behavior = match spec.behavior {
        Some(b) => {
            Behavior { up: rules(b.scale_up.as_ref(), defaults.up), down: rules(b.scale_down.as_ref(), defaults.down) }
        }
        None => defaults,
    };
    Ok(HpaSpec {
        name: hpa.metadata.name.unwrap_or_default(),
        namespace: hpa.metadata.namespace.unwrap_or_else(|| "default".into()),
        target_name: spec.scale_target_ref.name,
        min: spec.min_replicas.unwrap_or(1).max(1) as u32,
        max: spec.max_replicas.max(1) as u32,
        metrics,
        behavior,
    })
}

/// The pods and values of a `MetricValueList` (v1beta1 or v1beta2), read
/// through the adapter's own wire types.
pub fn pod_values(body: &[u8]) -> Result<Vec<PodValue>, serde_json::Error> {
    let head: List<serde::de::IgnoredAny> = serde_json::from_slice(body)?;
    let value = |v: &str| parse_quantity(v).ok();
    Ok(if head.api_version.ends_with("/v1beta1") {
        let list: List<MetricValueV1beta1<'_>> = serde_json::from_slice(body)?;
        list.items
            .iter()
            .map(|i| PodValue { pod: i.described_object.name.to_string(), value: value(&i.value) })
            .collect()
    } else {
        let list: List<MetricValueV1beta2<'_>> = serde_json::from_slice(body)?;
        list.items
            .iter()
            .map(|i| PodValue { pod: i.described_object.name.to_string(), value: value(&i.value) })
            .collect()
    })
}

/// The summed value of an `ExternalMetricValueList`, as the HPA sums it.
pub fn external_total(body: &[u8]) -> Result<Option<f64>, serde_json::Error> {
    let list: List<ExternalMetricValue<'_>> = serde_json::from_slice(body)?;
    if list.items.is_empty() {
        return Ok(None);
    }
    Ok(list.items.iter().map(|i| parse_quantity(&i.value).ok()).sum())
}

/// Where the metric lists come from.
pub enum MetricsFrom {
    /// One recorded list, used for every metric.
    Recorded(Vec<u8>),
    /// The API, through a kube client.
    Api(kube::Client, PathBuf),
}

impl MetricsFrom {
    async fn get(&self, path: &str) -> Result<Vec<u8>, PreviewError> {
        match self {
            MetricsFrom::Recorded(v) => Ok(v.clone()),
            MetricsFrom::Api(client, kubeconfig) => {
                let err = |reason: String| PreviewError::Query {
                    path: path.to_string(),
                    kubeconfig: kubeconfig.clone(),
                    reason,
                };
                let request = http::Request::get(path).body(Vec::new()).map_err(|e| err(e.to_string()))?;
                let text = client.request_text(request).await.map_err(|e| err(e.to_string()))?;
                Ok(text.into_bytes())
            }
        }
    }
}

fn unreadable(path: &str, e: serde_json::Error) -> PreviewError {
    PreviewError::Query {
        path: path.to_string(),
        kubeconfig: PathBuf::new(),
        reason: format!("not a metric list: {e}"),
    }
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Works out the HPA's decision; returns the report, line by line.
pub async fn preview(
    hpa: &HpaSpec,
    from: &MetricsFrom,
    selector: &str,
    current: Option<u32>,
) -> Result<Vec<String>, PreviewError> {
    let mut report =
        vec![format!("HPA {}/{} → {} (min {}, max {})", hpa.namespace, hpa.name, hpa.target_name, hpa.min, hpa.max)];
    let mut proposals: Vec<Proposal> = Vec::new();
    let mut current_replicas = current;
    for metric in &hpa.metrics {
        match metric {
            MetricSpec::Pods { name, target } => {
                let path = format!(
                    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{}/pods/%2A/{name}?labelSelector={}",
                    hpa.namespace,
                    encode(selector)
                );
                let values = pod_values(&from.get(&path).await?).map_err(|e| unreadable(&path, e))?;
                let replicas = *current_replicas.get_or_insert(values.len() as u32);
                report.push(format!("  {name} (Pods, averageValue {target}) over pods {selector:?}:"));
                for v in &values {
                    report.push(format!("    {:<40} {}", v.pod, v.value.map_or("no value".into(), |x| format!("{x}"))));
                }
                match super::pods_average_value(&values, *target, replicas) {
                    Ok(p) => {
                        report.push(format!(
                            "    average {:.2} / target {target} = ratio {:.3}: {}",
                            p.current, p.ratio, p.reason
                        ));
                        proposals.push(p);
                    }
                    Err(e) => report.push(format!("    no proposal: {e}")),
                }
            }
            MetricSpec::External { name, selector, target, average } => {
                let mut path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{name}", hpa.namespace);
                if let Some(s) = selector {
                    path.push_str(&format!("?labelSelector={}", encode(s)));
                }
                let kind = if *average { "averageValue" } else { "value" };
                report.push(format!("  {name} (External, {kind} {target}):"));
                let replicas = current_replicas.unwrap_or(1);
                let result = match external_total(&from.get(&path).await?).map_err(|e| unreadable(&path, e))? {
                    None => Err("no value returned".to_string()),
                    Some(v) if *average => super::average_value_target(v, *target, replicas),
                    Some(v) => super::value_target(v, *target, replicas),
                };
                match result {
                    Ok(p) => {
                        report.push(format!("    value {:.2}: {}", p.current, p.reason));
                        proposals.push(p);
                    }
                    Err(e) => report.push(format!("    no proposal: {e}")),
                }
            }
            MetricSpec::Unsupported(why) => report.push(format!("  skipped: {why}")),
        }
    }
    let current = current_replicas.unwrap_or(hpa.min);
    let Some(best) = proposals.iter().map(|p| p.replicas).max() else {
        report.push(format!("no metric gave a proposal: the HPA keeps {current} replica(s)"));
        return Ok(report);
    };
    let decision = Autoscaler::default().decide(Instant::now(), best, current, hpa.min, hpa.max, &hpa.behavior);
    report.extend(decision.steps.iter().map(|s| format!("  {s}")));
    report.push(format!(
        "note: a one-shot preview has no recommendation history; the controller also holds scale-downs for {}s and scale-ups for {}s",
        hpa.behavior.down.window.as_secs(),
        hpa.behavior.up.window.as_secs()
    ));
    Ok(report)
}

/// Runs `hpa-preview` and returns its report.
pub async fn run(args: &PreviewArgs) -> Result<String, PreviewError> {
    let manifest_err = |reason: String| PreviewError::Manifest { path: args.hpa.clone(), reason };
    let text = crate::input::read_yaml(&args.hpa, "--hpa").map_err(|e| manifest_err(e.reason))?;
    let hpa = parse_hpa(&text).map_err(manifest_err)?;
    let from = match &args.metrics {
        Some(path) => {
            let recorded_err = |reason: String| PreviewError::Recorded { path: path.clone(), reason };
            let text = crate::input::read_yaml(path, "--metrics").map_err(|e| recorded_err(e.reason))?;
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| recorded_err(e.to_string()))?;
            MetricsFrom::Recorded(text.into_bytes())
        }
        None => {
            let err = |reason: String| PreviewError::Query {
                path: String::new(),
                kubeconfig: args.kubeconfig.clone(),
                reason,
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig).map_err(|e| err(e.to_string()))?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| err(e.to_string()))?;
            MetricsFrom::Api(kube::Client::try_from(config).map_err(|e| err(e.to_string()))?, args.kubeconfig.clone())
        }
    };
    let selector = args.selector.clone().unwrap_or_else(|| format!("app={}", hpa.target_name));
    Ok(preview(&hpa, &from, &selector, args.current_replicas).await?.join("\n"))
}

#[cfg(test)]
mod tests;
