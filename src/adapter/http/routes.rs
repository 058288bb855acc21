//! Request paths and query strings of the metrics APIs, parsed into
//! [`Route`] and [`Query`]:
//!
//! - `/apis/custom.metrics.k8s.io/{v1beta1,v1beta2}/namespaces/{ns}/pods/{name|*}/{metric}`
//! - `/apis/custom.metrics.k8s.io/{v…}/nodes/{name|*}/{metric}`
//! - `/apis/custom.metrics.k8s.io/{v…}/namespaces/{ns}/metrics/{metric}`
//! - `/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}`
//!
//! plus discovery (`/apis`, the groups and versions), `/openapi/v2`,
//! `/openapi/v3`, the health endpoints and `/metrics`.

use super::status::ApiError;

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
    /// `v1beta1` or `v1beta2`.
    pub fn as_str(self) -> &'static str {
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
    /// `/metrics`: the adapter's own metrics.
    Metrics,
}

impl Route {
    /// Discovery, OpenAPI and health: served without authorization, as
    /// kube-apiserver serves discovery to any authenticated user.
    pub fn is_public_document(&self) -> bool {
        !matches!(self, Route::Custom { .. } | Route::External { .. })
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
        ["metrics"] => Ok(Route::Metrics),
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
