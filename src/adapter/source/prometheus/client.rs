//! One instant query (`/api/v1/query`) over the sources' HTTP client, and
//! its answer: an instant vector, or Prometheus' own error.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::PrometheusError;
use crate::adapter::source::fetch::{FetchError, Fetcher};

/// One series of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorSample {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiData {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct ApiSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Decodes `/api/v1/query`'s answer: an instant vector, or Prometheus' error.
/// Samples that are not finite numbers (`NaN`, `+Inf`) are left out.
pub fn decode_vector(body: &[u8]) -> Result<Vec<VectorSample>, PrometheusError> {
    let response: ApiResponse = serde_json::from_slice(body)?;
    if response.status != "success" {
        return Err(PrometheusError::Refused {
            error_type: response.error_type.unwrap_or_else(|| "unknown".into()),
            message: response.error.unwrap_or_else(|| format!("status {:?}", response.status)),
        });
    }
    let data = response.data.ok_or_else(|| PrometheusError::NotAVector("response without data".into()))?;
    if data.result_type != "vector" {
        return Err(PrometheusError::NotAVector(data.result_type));
    }
    let samples: Vec<ApiSample> = serde_json::from_value(data.result)?;
    Ok(samples
        .into_iter()
        .filter_map(|s| {
            let value: f64 = s.value.1.parse().ok().filter(|v: &f64| v.is_finite())?;
            Some(VectorSample { labels: s.metric, value })
        })
        .collect())
}

/// Runs one instant query against Prometheus at `base`.
pub async fn query(fetcher: &Fetcher, base: &str, promql: &str) -> Result<Vec<VectorSample>, PrometheusError> {
    let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("query", promql).finish();
    let url = format!("{}/api/v1/query?{query}", base.trim_end_matches('/'));
    let answer = fetcher.get(&url, &[(http::header::ACCEPT, "application/json")]).await.map_err(|e| match e {
        FetchError::Timeout(limit) => PrometheusError::Timeout(limit),
        FetchError::Url { reason, .. } => PrometheusError::Url { url: base.to_string(), reason },
        FetchError::Http(reason) => PrometheusError::Http(reason),
    })?;
    // Prometheus explains a refused query in a JSON body (400, 422, 503).
    match decode_vector(&answer.body) {
        Err(PrometheusError::Decode(_)) if !answer.status.is_success() => {
            Err(PrometheusError::Http(format!("HTTP {}", answer.status)))
        }
        other => other,
    }
}
