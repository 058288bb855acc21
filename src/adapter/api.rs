//! The custom and external metrics APIs: routing, discovery documents,
//! `MetricValueList` bodies, and Kubernetes `Status` errors.
//!
//! Paths and bodies follow what the HPA controller and kubectl expect from an
//! aggregated metrics server:
//!
//! - `/apis/custom.metrics.k8s.io/{v1beta1,v1beta2}/namespaces/{ns}/pods/{name|*}/{metric}`
//! - `/apis/custom.metrics.k8s.io/{v…}/nodes/{name|*}/{metric}`
//! - `/apis/custom.metrics.k8s.io/{v…}/namespaces/{ns}/metrics/{metric}`
//! - `/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}`
//!
//! plus discovery (`/apis`, the groups and versions), `/openapi/v2`,
//! `/openapi/v3` and the health endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::StatusCode;
use kube::core::{Selector, SelectorExt};
use serde::Serialize;
use serde_json::json;

use super::labels::LabelIndex;
use super::quantity::format_quantity;
use super::selector::parse_selector;
use super::store::{Metric, MetricStore, PodSample, Sample};

/// `custom.metrics.k8s.io`.
pub const CUSTOM_GROUP: &str = "custom.metrics.k8s.io";
/// `external.metrics.k8s.io`.
pub const EXTERNAL_GROUP: &str = "external.metrics.k8s.io";

/// A version of the custom metrics API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CustomVersion {
    /// Flat items (`metricName`, `window`).
    V1beta1,
    /// Items with a `metric` identifier (`windowSeconds`).
    V1beta2,
}

impl CustomVersion {
    fn as_str(self) -> &'static str {
        match self {
            CustomVersion::V1beta1 => "v1beta1",
            CustomVersion::V1beta2 => "v1beta2",
        }
    }
}

/// What a custom metrics request describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Pods in a namespace, one by name or all (`*`) with a selector.
    Pods {
        /// Namespace.
        namespace: String,
        /// Pod name, or `None` for `*`.
        name: Option<String>,
    },
    /// Nodes, one by name or all (`*`).
    Nodes {
        /// Node name, or `None` for `*`.
        name: Option<String>,
    },
    /// The namespace itself.
    Namespace {
        /// Namespace.
        namespace: String,
    },
}

/// A parsed request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/apis`.
    Apis,
    /// `/apis/<group>`.
    Group(&'static str),
    /// `/apis/custom.metrics.k8s.io/<version>`.
    CustomVersion(CustomVersion),
    /// `/apis/external.metrics.k8s.io/v1beta1`.
    ExternalVersion,
    /// A custom metric query.
    Custom {
        /// API version.
        version: CustomVersion,
        /// Described objects.
        target: Target,
        /// Metric name.
        metric: String,
    },
    /// An external metric query.
    External {
        /// Namespace of the request (external metrics here are cluster-wide).
        namespace: String,
        /// Metric name.
        metric: String,
    },
    /// `/openapi/v2`.
    OpenApiV2,
    /// `/openapi/v3` (the discovery document of OpenAPI v3).
    OpenApiV3,
    /// `/healthz`, `/livez`, `/readyz`.
    Health,
}

impl Route {
    /// Discovery, OpenAPI and health: served without authorization, as
    /// kube-apiserver serves discovery to any authenticated user.
    pub fn is_public_document(&self) -> bool {
        !matches!(self, Route::Custom { .. } | Route::External { .. })
    }
}

/// An API error, answered as a Kubernetes `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// Kubernetes `reason`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// 400 `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { code: StatusCode::BAD_REQUEST, reason: "BadRequest", message: message.into() }
    }

    /// 401 `Unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self { code: StatusCode::UNAUTHORIZED, reason: "Unauthorized", message: message.into() }
    }

    /// 403 `Forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self { code: StatusCode::FORBIDDEN, reason: "Forbidden", message: message.into() }
    }

    /// 404 `NotFound`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { code: StatusCode::NOT_FOUND, reason: "NotFound", message: message.into() }
    }

    /// 405 `MethodNotAllowed`.
    pub fn method_not_allowed(method: &str) -> Self {
        Self {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!("the server does not allow this method on the requested resource: {method}; only GET"),
        }
    }

    /// 413 `RequestEntityTooLarge`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self { code: StatusCode::PAYLOAD_TOO_LARGE, reason: "RequestEntityTooLarge", message: message.into() }
    }

    /// 503 `ServiceUnavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { code: StatusCode::SERVICE_UNAVAILABLE, reason: "ServiceUnavailable", message: message.into() }
    }

    /// The `Status` document.
    pub fn to_body(&self) -> Bytes {
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        serde_json::to_vec(&status).expect("a Status serializes").into()
    }
}

/// A decoded, checked path segment: an object name, `*`, or a metric name.
fn segment(raw: &str) -> Result<String, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::not_found(format!("invalid path segment {raw:?}")))?;
    let ok = decoded == "*"
        || (!decoded.is_empty()
            && decoded.len() <= 253
            && decoded != "."
            && decoded != ".."
            && decoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)));
    if ok { Ok(decoded.into_owned()) } else { Err(ApiError::not_found(format!("invalid name {decoded:?} in path"))) }
}

fn name_or_all(s: String) -> Option<String> {
    (s != "*").then_some(s)
}

/// Parses a request path.
pub fn route(path: &str) -> Result<Route, ApiError> {
    let trimmed = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    let parts: Vec<&str> = trimmed.split('/').skip(1).collect();
    let not_found = || ApiError::not_found(format!("the server could not find the requested resource {path:?}"));
    let version = |v: &str| match v {
        "v1beta1" => Ok(CustomVersion::V1beta1),
        "v1beta2" => Ok(CustomVersion::V1beta2),
        _ => Err(ApiError::not_found(format!("version {v:?} of {CUSTOM_GROUP} is not served; try v1beta2 or v1beta1"))),
    };
    match parts.as_slice() {
        ["healthz" | "livez" | "readyz"] => Ok(Route::Health),
        ["openapi", "v2"] => Ok(Route::OpenApiV2),
        ["openapi", "v3"] => Ok(Route::OpenApiV3),
        ["apis"] => Ok(Route::Apis),
        ["apis", CUSTOM_GROUP] => Ok(Route::Group(CUSTOM_GROUP)),
        ["apis", EXTERNAL_GROUP] => Ok(Route::Group(EXTERNAL_GROUP)),
        ["apis", CUSTOM_GROUP, v] => Ok(Route::CustomVersion(version(v)?)),
        ["apis", EXTERNAL_GROUP, "v1beta1"] => Ok(Route::ExternalVersion),
        ["apis", CUSTOM_GROUP, v, "namespaces", ns, "pods", name, metric] => Ok(Route::Custom {
            version: version(v)?,
            target: Target::Pods { namespace: segment(ns)?, name: name_or_all(segment(name)?) },
            metric: segment(metric)?,
        }),
        ["apis", CUSTOM_GROUP, v, "nodes", name, metric] => Ok(Route::Custom {
            version: version(v)?,
            target: Target::Nodes { name: name_or_all(segment(name)?) },
            metric: segment(metric)?,
        }),
        ["apis", CUSTOM_GROUP, v, "namespaces", ns, "metrics", metric] => Ok(Route::Custom {
            version: version(v)?,
            target: Target::Namespace { namespace: segment(ns)? },
            metric: segment(metric)?,
        }),
        ["apis", CUSTOM_GROUP, v, "namespaces", _, resource, _, _] => {
            version(v)?;
            Err(ApiError::not_found(format!("resource {resource:?} has no custom metrics here; only pods")))
        }
        ["apis", EXTERNAL_GROUP, "v1beta1", "namespaces", ns, metric] => {
            Ok(Route::External { namespace: segment(ns)?, metric: segment(metric)? })
        }
        ["apis", EXTERNAL_GROUP, v, ..] if *v != "v1beta1" => {
            Err(ApiError::not_found(format!("version {v:?} of {EXTERNAL_GROUP} is not served; try v1beta1")))
        }
        ["apis", group, ..] if *group != CUSTOM_GROUP && *group != EXTERNAL_GROUP => {
            Err(ApiError::not_found(format!("group {group:?} is not served here")))
        }
        _ => Err(not_found()),
    }
}

/// The query parameters the API reads.
#[derive(Debug, Default)]
pub struct Query {
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `metricLabelSelector` (v1beta2).
    pub metric_label_selector: Option<String>,
}

/// The longest query string accepted.
pub const MAX_QUERY_LEN: usize = 8192;

impl Query {
    /// Parses a URL query string.
    pub fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut q = Query::default();
        let Some(raw) = query else { return Ok(q) };
        if raw.len() > MAX_QUERY_LEN {
            return Err(ApiError::bad_request(format!("query string longer than {MAX_QUERY_LEN} bytes")));
        }
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            match key.as_ref() {
                "labelSelector" => q.label_selector = Some(value.into_owned()),
                "metricLabelSelector" => q.metric_label_selector = Some(value.into_owned()),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Answers API requests from the store and the label index.
pub struct MetricsApi {
    store: Arc<MetricStore>,
    labels: Arc<LabelIndex>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectReference<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
    name: &'a str,
    api_version: &'static str,
}

#[derive(Serialize)]
struct MetricIdentifier<'a> {
    name: &'a str,
    selector: Option<()>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ItemV1beta2<'a> {
    described_object: ObjectReference<'a>,
    metric: MetricIdentifier<'a>,
    timestamp: String,
    window_seconds: u64,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ItemV1beta1<'a> {
    described_object: ObjectReference<'a>,
    metric_name: &'a str,
    timestamp: String,
    window: u64,
    value: String,
    selector: Option<()>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalItem<'a> {
    metric_name: &'a str,
    metric_labels: BTreeMap<&'a str, &'a str>,
    timestamp: String,
    window: u64,
    value: String,
}

/// One described object and its value, before versioned encoding.
struct Described<'a> {
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
    value: f64,
    sample: &'a Sample,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A list document: `kind`, `apiVersion`, empty `metadata`, `items`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a, T> {
    kind: &'static str,
    api_version: &'a str,
    metadata: Empty,
    items: Vec<T>,
}

#[derive(Serialize)]
struct Empty {}

/// Formats sample times, reusing the last answer: the items of one agent
/// share a timestamp.
#[derive(Default)]
struct Timestamps(Option<(SystemTime, String)>);

impl Timestamps {
    fn format(&mut self, t: SystemTime) -> String {
        match &self.0 {
            Some((last, text)) if *last == t => text.clone(),
            _ => {
                let text = rfc3339(t);
                self.0 = Some((t, text.clone()));
                text
            }
        }
    }
}

fn list_body(version: CustomVersion, metric: &str, items: &[Described<'_>]) -> Bytes {
    let api_version = format!("{CUSTOM_GROUP}/{}", version.as_str());
    fn reference<'a>(d: &Described<'a>) -> ObjectReference<'a> {
        ObjectReference { kind: d.kind, namespace: d.namespace, name: d.name, api_version: "v1" }
    }
    let mut times = Timestamps::default();
    let body = match version {
        CustomVersion::V1beta2 => {
            let items: Vec<ItemV1beta2<'_>> = items
                .iter()
                .map(|d| ItemV1beta2 {
                    described_object: reference(d),
                    metric: MetricIdentifier { name: metric, selector: None },
                    timestamp: times.format(d.sample.timestamp),
                    window_seconds: d.sample.window.as_secs().max(1),
                    value: format_quantity(d.value),
                })
                .collect();
            serde_json::to_vec(&List { kind: "MetricValueList", api_version: &api_version, metadata: Empty {}, items })
        }
        CustomVersion::V1beta1 => {
            let items: Vec<ItemV1beta1<'_>> = items
                .iter()
                .map(|d| ItemV1beta1 {
                    described_object: reference(d),
                    metric_name: metric,
                    timestamp: times.format(d.sample.timestamp),
                    window: d.sample.window.as_secs().max(1),
                    value: format_quantity(d.value),
                    selector: None,
                })
                .collect();
            serde_json::to_vec(&List { kind: "MetricValueList", api_version: &api_version, metadata: Empty {}, items })
        }
    };
    body.expect("a MetricValueList serializes").into()
}

fn parse_selector_param(name: &str, value: Option<&str>) -> Result<Selector, ApiError> {
    match value {
        None => Ok(Selector::default()),
        Some(s) => parse_selector(s).map_err(|e| ApiError::bad_request(format!("{name}: {e}"))),
    }
}

fn unknown_metric(metric: &str) -> ApiError {
    let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    ApiError::not_found(format!(
        "the server could not find the metric {metric:?}; served metrics: {}",
        known.join(", ")
    ))
}

impl MetricsApi {
    /// An API over `store`, with labels from `labels`.
    pub fn new(store: Arc<MetricStore>, labels: Arc<LabelIndex>) -> Self {
        Self { store, labels }
    }

    /// Answers a discovery, OpenAPI or query route with a JSON body.
    pub fn respond(&self, route: &Route, query: &Query, now: SystemTime) -> Result<Bytes, ApiError> {
        match route {
            Route::Apis => Ok(discovery::apis()),
            Route::Group(group) => Ok(discovery::group(group)),
            Route::CustomVersion(v) => Ok(discovery::custom_resources(v.as_str())),
            Route::ExternalVersion => Ok(discovery::external_resources()),
            Route::OpenApiV2 => Ok(discovery::openapi_v2()),
            Route::OpenApiV3 => Ok(Bytes::from_static(br#"{"paths":{}}"#)),
            Route::Health => Ok(Bytes::from_static(b"ok")),
            Route::Custom { version, target, metric } => self.custom(*version, target, metric, query, now),
            Route::External { metric, .. } => self.external(metric, query, now),
        }
    }

    fn custom(
        &self,
        version: CustomVersion,
        target: &Target,
        metric_name: &str,
        query: &Query,
        now: SystemTime,
    ) -> Result<Bytes, ApiError> {
        let selector = parse_selector_param("labelSelector", query.label_selector.as_deref())?;
        let metric_selector = match version {
            CustomVersion::V1beta2 => {
                parse_selector_param("metricLabelSelector", query.metric_label_selector.as_deref())?
            }
            CustomVersion::V1beta1 => Selector::default(),
        };
        let metric = Metric::from_name(metric_name).ok_or_else(|| unknown_metric(metric_name))?;
        // Our metrics carry no labels: a metric selector that needs one matches nothing.
        let metric_matches = metric_selector.matches(&BTreeMap::new());
        let view = self.store.view();
        let fresh = |s: &Sample| self.store.is_fresh(s, now);
        let mut items: Vec<Described<'_>> = Vec::new();
        match target {
            Target::Pods { namespace, name: Some(name) } => {
                let pod = view
                    .pods
                    .get(namespace)
                    .and_then(|pods| pods.iter().find(|p| &p.name == name))
                    .filter(|p| fresh(&p.sample));
                let (pod, value) =
                    pod.and_then(|p| Some((p, p.sample.get(metric)?))).filter(|_| metric_matches).ok_or_else(|| {
                        ApiError::not_found(format!(
                            "the server could not find the metric {metric_name} for pods {namespace}/{name}"
                        ))
                    })?;
                items.push(Described { kind: "Pod", namespace, name: &pod.name, value, sample: &pod.sample });
            }
            Target::Pods { namespace, name: None } => {
                let labels = self.labels.snapshot();
                let namespace_labels = labels.pods.get(namespace);
                let select_all = selector.selects_all();
                if metric_matches && let Some(pods) = view.pods.get(namespace) {
                    // A selector requiring a label value looks only at the pods
                    // that have it (both lists are sorted by name).
                    let scan: Box<dyn Iterator<Item = &PodSample>> =
                        match (!select_all).then(|| labels.candidates(namespace, &selector)).flatten() {
                            Some(names) => Box::new(names.into_iter().filter_map(|name| {
                                pods.binary_search_by(|p| p.name.as_str().cmp(name)).ok().map(|i| &pods[i])
                            })),
                            None => Box::new(pods.iter()),
                        };
                    for pod in scan {
                        let Some(value) = pod.sample.get(metric) else { continue };
                        // A pod whose labels are unknown matches only the empty selector.
                        let selected = select_all
                            || namespace_labels.and_then(|l| l.get(&pod.name)).is_some_and(|l| selector.matches(l));
                        if selected && fresh(&pod.sample) {
                            items.push(Described {
                                kind: "Pod",
                                namespace,
                                name: &pod.name,
                                value,
                                sample: &pod.sample,
                            });
                        }
                    }
                }
            }
            Target::Nodes { name: Some(name) } => {
                let (node, value) = view
                    .nodes
                    .get_key_value(name)
                    .filter(|(_, n)| fresh(&n.sample) && metric_matches)
                    .and_then(|(k, n)| Some(((k, n), n.sample.get(metric)?)))
                    .ok_or_else(|| {
                        ApiError::not_found(format!(
                            "the server could not find the metric {metric_name} for nodes {name}"
                        ))
                    })?;
                items.push(Described { kind: "Node", namespace: "", name: node.0, value, sample: &node.1.sample });
            }
            Target::Nodes { name: None } => {
                if metric_matches {
                    for (name, node) in &view.nodes {
                        let Some(value) = node.sample.get(metric) else { continue };
                        if fresh(&node.sample) && self.labels.node_matches(name, &selector) {
                            items.push(Described { kind: "Node", namespace: "", name, value, sample: &node.sample });
                        }
                    }
                }
            }
            Target::Namespace { namespace } => {
                // The namespace's pods: their mean for percentages, their sum for bytes.
                let samples: Vec<(f64, &Sample)> = view
                    .pods
                    .get(namespace)
                    .into_iter()
                    .flatten()
                    .filter(|p| fresh(&p.sample))
                    .filter_map(|p| Some((p.sample.get(metric)?, &p.sample)))
                    .collect();
                let oldest = samples.iter().map(|(_, s)| *s).min_by_key(|s| s.timestamp);
                let (Some(oldest), true) = (oldest, metric_matches) else {
                    return Err(ApiError::not_found(format!(
                        "the server could not find the metric {metric_name} for namespaces {namespace}"
                    )));
                };
                let sum: f64 = samples.iter().map(|(v, _)| v).sum();
                let value = if metric.is_additive() { sum } else { sum / samples.len() as f64 };
                items.push(Described { kind: "Namespace", namespace: "", name: namespace, value, sample: oldest });
            }
        }
        Ok(list_body(version, metric_name, &items))
    }

    /// Cluster-wide GPU values over the nodes whose labels match the
    /// selector: mean utilization, capacity-weighted utilization of the
    /// pool, or total memory used.
    fn external(&self, metric_name: &str, query: &Query, now: SystemTime) -> Result<Bytes, ApiError> {
        let selector = parse_selector_param("labelSelector", query.label_selector.as_deref())?;
        let metric = Metric::from_name(metric_name).ok_or_else(|| unknown_metric(metric_name))?;
        let view = self.store.view();
        let nodes: Vec<_> = view
            .nodes
            .iter()
            .filter(|(name, n)| self.store.is_fresh(&n.sample, now) && self.labels.node_matches(name, &selector))
            .filter(|(_, n)| n.gpus_up > 0)
            .collect();
        let value = match metric {
            Metric::MemoryUsed => nodes.iter().map(|(_, n)| n.sample.get(metric)).sum::<Option<f64>>(),
            // Share of the pool's compute in use: Σ util×capacity / Σ capacity.
            Metric::WeightedUtilization => {
                let capacity: f64 = nodes.iter().map(|(_, n)| n.capacity).sum();
                nodes
                    .iter()
                    .map(|(_, n)| n.sample.get(metric).map(|v| v * n.gpus_up as f64))
                    .sum::<Option<f64>>()
                    .filter(|_| capacity > 0.0)
                    .map(|weighted| weighted / capacity)
            }
            _ => {
                let gpus: usize = nodes.iter().map(|(_, n)| n.gpus_up).sum();
                nodes
                    .iter()
                    .map(|(_, n)| n.sample.get(metric).map(|v| v * n.gpus_up as f64))
                    .sum::<Option<f64>>()
                    .filter(|_| gpus > 0)
                    .map(|total| total / gpus as f64)
            }
        };
        let items: Vec<ExternalItem<'_>> =
            match (value, nodes.iter().map(|(_, n)| &n.sample).min_by_key(|s| s.timestamp)) {
                (Some(value), Some(oldest)) => vec![ExternalItem {
                    metric_name,
                    metric_labels: BTreeMap::new(),
                    timestamp: rfc3339(oldest.timestamp),
                    window: oldest.window.as_secs().max(1),
                    value: format_quantity(value),
                }],
                _ => Vec::new(),
            };
        let body = json!({
            "kind": "ExternalMetricValueList",
            "apiVersion": format!("{EXTERNAL_GROUP}/v1beta1"),
            "metadata": {},
            "items": items,
        });
        Ok(serde_json::to_vec(&body).expect("an ExternalMetricValueList serializes").into())
    }
}

/// Discovery and OpenAPI documents.
pub mod discovery {
    use super::*;

    /// `/apis`: both groups.
    pub fn apis() -> Bytes {
        let body = json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [group_value(CUSTOM_GROUP), group_value(EXTERNAL_GROUP)],
        });
        serde_json::to_vec(&body).expect("serializes").into()
    }

    fn group_value(group: &str) -> serde_json::Value {
        let versions: &[&str] = if group == CUSTOM_GROUP { &["v1beta2", "v1beta1"] } else { &["v1beta1"] };
        let versions: Vec<_> =
            versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
        json!({
            "name": group,
            "versions": versions,
            "preferredVersion": versions[0],
        })
    }

    /// `/apis/<group>`.
    pub fn group(group: &str) -> Bytes {
        let mut value = group_value(group);
        value["kind"] = json!("APIGroup");
        value["apiVersion"] = json!("v1");
        serde_json::to_vec(&value).expect("serializes").into()
    }

    /// `/apis/custom.metrics.k8s.io/<version>`: `pods/<metric>`,
    /// `nodes/<metric>` and `namespaces/<metric>` for every metric.
    pub fn custom_resources(version: &str) -> Bytes {
        let mut resources = Vec::new();
        for metric in Metric::ALL {
            for (resource, namespaced) in [("pods", true), ("nodes", false), ("namespaces", false)] {
                resources.push(json!({
                    "name": format!("{resource}/{}", metric.name()),
                    "singularName": "",
                    "namespaced": namespaced,
                    "kind": "MetricValueList",
                    "verbs": ["get"],
                }));
            }
        }
        let body = json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": format!("{CUSTOM_GROUP}/{version}"),
            "resources": resources,
        });
        serde_json::to_vec(&body).expect("serializes").into()
    }

    /// `/apis/external.metrics.k8s.io/v1beta1`.
    pub fn external_resources() -> Bytes {
        let resources: Vec<_> = Metric::ALL
            .iter()
            .map(|m| {
                json!({
                    "name": m.name(),
                    "singularName": "",
                    "namespaced": true,
                    "kind": "ExternalMetricValueList",
                    "verbs": ["get"],
                })
            })
            .collect();
        let body = json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": format!("{EXTERNAL_GROUP}/v1beta1"),
            "resources": resources,
        });
        serde_json::to_vec(&body).expect("serializes").into()
    }

    /// A small valid OpenAPI v2 document: kube-apiserver aggregates it.
    pub fn openapi_v2() -> Bytes {
        let body = json!({
            "swagger": "2.0",
            "info": {"title": "kube-gpu-metrics", "version": env!("CARGO_PKG_VERSION")},
            "paths": {},
            "definitions": {},
        });
        serde_json::to_vec(&body).expect("serializes").into()
    }
}

#[cfg(test)]
mod tests;
