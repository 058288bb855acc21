//! `hpa-preview`: reads an autoscaling/v2 HPA manifest, gets its metrics from
//! the custom and external metrics APIs (or from a recorded
//! `MetricValueList`), and prints what the HPA would decide and why.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use super::spec::{HpaSpec, MetricSpec, parse_hpa};
use super::sync::{MetricsReader, Scale, sync};
use super::{Autoscaler, PodValue};
use crate::adapter::http::wire::{ExternalMetricValue, List, MetricValueV1beta1, MetricValueV1beta2};
use crate::k8s::quantity::parse_quantity;
use clap::Args;

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

/// The metric lists a preview read, answered to [`sync`] as the controller
/// would read them.
#[derive(Default)]
struct Fetched {
    pods: HashMap<String, Result<Vec<PodValue>, String>>,
    external: HashMap<(String, Option<String>), Result<f64, String>>,
}

impl MetricsReader for Fetched {
    fn pods(&mut self, name: &str) -> Result<Vec<PodValue>, String> {
        self.pods.get(name).cloned().unwrap_or_else(|| Err(format!("{name} was not read")))
    }

    fn external(&mut self, name: &str, selector: Option<&str>) -> Result<f64, String> {
        let key = (name.to_string(), selector.map(str::to_string));
        self.external.get(&key).cloned().unwrap_or_else(|| Err(format!("{name} was not read")))
    }
}

/// Reads every metric of `hpa` from `from`, as the controller's sync would.
async fn fetch(hpa: &HpaSpec, from: &MetricsFrom, selector: &str) -> Result<Fetched, PreviewError> {
    let mut fetched = Fetched::default();
    for metric in &hpa.metrics {
        match metric {
            MetricSpec::Pods { name, .. } => {
                let path = format!(
                    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{}/pods/%2A/{name}?labelSelector={}",
                    hpa.namespace,
                    encode(selector)
                );
                let values = pod_values(&from.get(&path).await?).map_err(|e| unreadable(&path, e))?;
                fetched.pods.insert(name.clone(), Ok(values));
            }
            MetricSpec::External { name, selector, .. } => {
                let mut path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{name}", hpa.namespace);
                if let Some(s) = selector {
                    path.push_str(&format!("?labelSelector={}", encode(s)));
                }
                let value = external_total(&from.get(&path).await?).map_err(|e| unreadable(&path, e))?;
                fetched
                    .external
                    .insert((name.clone(), selector.clone()), value.ok_or_else(|| "no value returned".to_string()));
            }
            MetricSpec::Unsupported(_) => {}
        }
    }
    Ok(fetched)
}

/// Works out the HPA's decision with one [`sync`]; returns the report, line by line.
pub async fn preview(
    hpa: &HpaSpec,
    from: &MetricsFrom,
    selector: &str,
    current: Option<u32>,
) -> Result<Vec<String>, PreviewError> {
    let mut report =
        vec![format!("HPA {}/{} → {} (min {}, max {})", hpa.namespace, hpa.name, hpa.target_name, hpa.min, hpa.max)];
    let needs = hpa.needs();
    if needs.is_empty() {
        report.push("runs on any Kubernetes serving autoscaling/v2 (1.23+) or v2beta2 (1.12–1.25)".to_string());
    }
    report.extend(needs.iter().map(|n| format!("needs: {n}")));
    if hpa.sets_tolerance {
        report.push(format!(
            "tolerances: no scale-down while the ratio is ≥ {}, no scale-up while ≤ {}",
            short(1.0 - hpa.tolerances.down),
            short(1.0 + hpa.tolerances.up)
        ));
    }
    let mut fetched = fetch(hpa, from, selector).await?;
    // The scale's replicas: as given, else the pods the first Pods metric listed.
    let listed = hpa.metrics.iter().find_map(|m| match m {
        MetricSpec::Pods { name, .. } => fetched.pods.get(name).and_then(|r| r.as_ref().ok()).map(Vec::len),
        _ => None,
    });
    let replicas = current.or(listed.map(|n| n as u32)).unwrap_or(hpa.min.max(1));
    if replicas == 0 && hpa.min == 0 {
        report.push(
            "at zero: taken as scaled to zero by this HPA (ScaledToZero=True); a target its owner set to 0 stays paused"
                .to_string(),
        );
    }
    report.push(format!("the scale target's pods: {selector:?}, {replicas} replica(s)"));
    let scale = Scale { replicas, ready: replicas, unready: 0, scaled_to_zero: hpa.min == 0 };
    let outcome = sync(hpa, &mut fetched, scale, &mut Autoscaler::default(), Instant::now());
    report.extend(outcome.explain());
    report.push(format!(
        "note: a one-shot preview has no recommendation history; the controller also holds scale-downs for {}s and scale-ups for {}s",
        hpa.behavior.down.window.as_secs(),
        hpa.behavior.up.window.as_secs()
    ));
    Ok(report)
}

/// A ratio bound as people write it: 0.9, 1.02 (no float noise).
fn short(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
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
