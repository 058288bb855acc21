//! The adapter's HTTP side: routes, `Status` errors, discovery documents,
//! the wire types, and the HTTPS server. It answers from the
//! [`super::provider`] and knows nothing of where values come from.
//!
//! - [`routes`]: paths and query strings.
//! - [`status`]: errors as Kubernetes `Status`.
//! - [`discovery`]: `/apis`, group and version documents, OpenAPI.
//! - [`wire`]: `MetricValueList`, `ExternalMetricValueList`.
//! - [`auth`]: who a client is (front proxy or client certificate) and
//!   what it may read (SubjectAccessReviews).
//! - [`server`]: TLS, authentication, authorization, readiness, limits.

pub mod auth;
pub mod discovery;
pub mod routes;
pub mod server;
pub mod status;
pub mod wire;

use std::time::SystemTime;

use bytes::Bytes;
use kube::core::Selector;

use super::provider::{self, Provider};
use crate::k8s::selector::parse_selector;
use routes::{CustomVersion, Query, Route, Target};
use status::ApiError;

fn selector_param(name: &str, value: Option<&str>) -> Result<Selector, ApiError> {
    match value {
        None => Ok(Selector::default()),
        Some(s) => parse_selector(s).map_err(|e| ApiError::bad_request(format!("{name}: {e}"))),
    }
}

/// Answers a discovery, OpenAPI or query route with a JSON body.
pub fn respond(provider: &Provider, route: &Route, query: &Query, now: SystemTime) -> Result<Bytes, ApiError> {
    match route {
        Route::Apis => Ok(discovery::apis()),
        Route::Group(group) => Ok(discovery::group(group)),
        Route::CustomVersion(v) => Ok(discovery::custom_resources(v.as_str())),
        Route::ExternalVersion => Ok(discovery::external_resources()),
        Route::OpenApiV2 => Ok(discovery::openapi_v2()),
        Route::OpenApiV3 => Ok(discovery::openapi_v3()),
        Route::Health | Route::Metrics => Ok(Bytes::from_static(b"ok")),
        Route::Custom { version, target, metric } => custom(provider, *version, target, metric, query, now),
        Route::External { metric, .. } => external(provider, metric, query, now),
    }
}

fn custom(
    provider: &Provider,
    version: CustomVersion,
    target: &Target,
    metric_name: &str,
    query: &Query,
    now: SystemTime,
) -> Result<Bytes, ApiError> {
    let selector = selector_param("labelSelector", query.label_selector.as_deref())?;
    let metric_selector = match version {
        CustomVersion::V1beta2 => selector_param("metricLabelSelector", query.metric_label_selector.as_deref())?,
        CustomVersion::V1beta1 => Selector::default(),
    };
    let metric = provider::metric(metric_name)?;
    let snapshot = provider.view_at(now);
    let values = match target {
        Target::Pods { namespace, name: Some(name) } => {
            vec![snapshot.pod(metric, &metric_selector, namespace, name)?]
        }
        Target::Pods { namespace, name: None } => snapshot.pods(metric, &metric_selector, namespace, &selector),
        Target::Nodes { name: Some(name) } => vec![snapshot.node(metric, &metric_selector, name)?],
        Target::Nodes { name: None } => snapshot.nodes(metric, &metric_selector, &selector),
        Target::Namespace { namespace } => vec![snapshot.namespace(metric, &metric_selector, namespace)?],
    };
    Ok(match version {
        CustomVersion::V1beta2 => wire::v1beta2_list(metric_name, &values),
        CustomVersion::V1beta1 => wire::v1beta1_list(metric_name, &values),
    }
    .into())
}

/// Cluster-wide GPU values over the nodes whose labels match the selector.
fn external(provider: &Provider, metric_name: &str, query: &Query, now: SystemTime) -> Result<Bytes, ApiError> {
    let selector = selector_param("labelSelector", query.label_selector.as_deref())?;
    let metric = provider::metric(metric_name)?;
    let snapshot = provider.view_at(now);
    let value = snapshot.external(metric, &selector).map(|(v, s)| (v, s.timestamp, s.window));
    Ok(wire::external_list(metric_name, value).into())
}

#[cfg(test)]
mod tests;
