//! `--source prometheus`: the adapter's values from an existing Prometheus
//! instead of the agents, for clusters that already scrape dcgm-exporter.
//!
//! Each poll runs every configured query once for all pods and once for all
//! nodes (instant queries, concurrently), and admits one view, so the API,
//! its TLS, auth, errors, freshness and node isolation are the same as with
//! agents. A value's time is the scrape time of its oldest series
//! (`timestamp()`), never the query's evaluation time: a series Prometheus
//! stopped scraping ages out instead of being served.
//!
//! A query that fails (unreachable Prometheus, bad PromQL) keeps its last
//! good answer only until that ages out; the error is logged once, with
//! Prometheus' own message, and again when it recovers.
//!
//! - [`config`]: the query file and the PromQL of a round.
//! - [`client`]: one instant query and its answer.
//! - [`view`]: a round's answers as store values.

pub mod client;
pub mod config;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::fetch::Fetcher;
use super::{FailureLog, Source};
use crate::adapter::admission::Rejections;
use crate::adapter::store::MetricStore;
use crate::k8s::labels::LabelIndex;
use client::VectorSample;
use config::{QueryConfig, RoundQuery};
use view::RoundAnswers;

/// The built-in query configuration: dcgm-exporter's series.
pub const DCGM_QUERIES: &str = include_str!("../../../deploy/prometheus/dcgm-queries.yaml");

/// What can go wrong with the Prometheus source.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The query file is unusable.
    #[error("query configuration {origin}: {reason}")]
    Config {
        /// The file (or "built-in").
        origin: String,
        /// Why.
        reason: String,
    },
    /// The URL is unusable.
    #[error("--prometheus-url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("Prometheus did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection or HTTP failure without a Prometheus error body.
    #[error("Prometheus: {0}")]
    Http(String),
    /// Prometheus refused the query (bad PromQL, timeout, …).
    #[error("Prometheus refused the query ({error_type}): {message}")]
    Refused {
        /// Prometheus' `errorType`.
        error_type: String,
        /// Prometheus' `error`.
        message: String,
    },
    /// The answer is not an instant vector.
    #[error("Prometheus answered with a {0}, not an instant vector")]
    NotAVector(String),
    /// The answer is not Prometheus' API format.
    #[error("Prometheus sent a body that is not an API response: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Polling settings of the Prometheus source.
#[derive(Clone, Debug)]
pub struct PrometheusSettings {
    /// Base URL, `http://prometheus-operated.monitoring.svc:9090`.
    pub url: String,
    /// The queries.
    pub config: QueryConfig,
}

impl PrometheusSettings {
    /// Checks the URL: plain HTTP (in-cluster service), with a host.
    pub fn check_url(url: &str) -> Result<(), PrometheusError> {
        let error = |reason: &str| PrometheusError::Url { url: url.to_string(), reason: reason.to_string() };
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| error(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(error(
                    "https is not supported; use Prometheus' in-cluster service, e.g. http://prometheus-operated.monitoring.svc:9090",
                ));
            }
            _ => return Err(error("needs http:// and a host")),
        }
        if uri.host().is_none() {
            return Err(error("needs a host"));
        }
        Ok(())
    }
}

/// Polls Prometheus into the store.
pub struct PrometheusSource {
    url: String,
    config: QueryConfig,
    queries: Vec<RoundQuery>,
    fetcher: Fetcher,
    store: Arc<MetricStore>,
    labels: Arc<LabelIndex>,
    rejections: Arc<Rejections>,
    last: RoundAnswers,
    failures: FailureLog<String>,
}

impl PrometheusSource {
    /// A source querying `settings.url`, admitting against `labels` into
    /// `store`.
    pub fn new(
        settings: PrometheusSettings,
        fetcher: Fetcher,
        store: Arc<MetricStore>,
        labels: Arc<LabelIndex>,
        rejections: Arc<Rejections>,
    ) -> Self {
        let queries = settings.config.queries();
        let n = queries.len();
        Self {
            url: settings.url,
            config: settings.config,
            queries,
            fetcher,
            store,
            labels,
            rejections,
            last: vec![None; n],
            failures: FailureLog::new("Prometheus query"),
        }
    }

    /// Runs one instant query.
    pub async fn query(&self, promql: &str) -> Result<Vec<VectorSample>, PrometheusError> {
        client::query(&self.fetcher, &self.url, promql).await
    }
}

impl Source for PrometheusSource {
    /// Every query at once, then one admission and publish.
    async fn poll_once(&mut self) -> bool {
        let results = futures::future::join_all(self.queries.iter().map(|q| self.query(&q.promql))).await;
        let mut answered = false;
        for (i, result) in results.into_iter().enumerate() {
            let promql = &self.queries[i].promql;
            match result {
                Ok(samples) => {
                    answered = true;
                    self.failures.succeeded(promql);
                    self.last[i] = Some(Arc::new(samples));
                }
                Err(e) => self.failures.failed(promql, &e),
            }
        }
        let view = view::build_view(
            &self.config,
            &self.queries,
            &self.last,
            &self.labels,
            &self.rejections,
            SystemTime::now(),
        );
        self.store.publish(view);
        answered
    }
}

#[cfg(test)]
mod tests;
