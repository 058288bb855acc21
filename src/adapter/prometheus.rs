//! `--source prometheus`: the adapter's values from an existing Prometheus
//! instead of the agents, for clusters that already scrape dcgm-exporter.
//!
//! Each poll runs every configured query once for all pods and once for all
//! nodes (instant queries, concurrently), and publishes one store view, so
//! the API, its TLS, auth, errors and freshness rules are the same as with
//! agents. A value's time is the scrape time of its oldest series
//! (`timestamp()`), never the query's evaluation time: a series Prometheus
//! stopped scraping ages out under `--max-age` instead of being served.
//!
//! A query that fails (unreachable Prometheus, bad PromQL) keeps its last
//! good answer only until that ages out; the error is logged once, with
//! Prometheus' own message, and again when it recovers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::watch;

use super::store::{Metric, MetricStore, NodeSample, PodSample, Sample, StoreView, relative_capacity};

/// The built-in query configuration: dcgm-exporter's series.
pub const DCGM_QUERIES: &str = include_str!("../../deploy/prometheus/dcgm-queries.yaml");

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

/// The label names of the series.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelNames {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Node name.
    pub node: String,
    /// GPU UUID.
    pub gpu: String,
    /// GPU model name.
    pub model: String,
}

/// One metric's query.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricQuery {
    /// The raw series the query reads (for its scrape time).
    pub series: String,
    /// PromQL with `<<.Series>>`, `<<.LabelMatchers>>`, `<<.GroupBy>>`.
    pub query: String,
    /// Also group by the model label and multiply each value by the model's
    /// compute relative to an RTX 4090.
    #[serde(default)]
    pub weight_by_model: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigFile {
    labels: LabelNames,
    gpu_series: String,
    #[serde(with = "humantime_serde_shim")]
    scrape_interval: Duration,
    metrics: BTreeMap<String, MetricQuery>,
}

/// `scrapeInterval: 15s` through humantime.
mod humantime_serde_shim {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("scrapeInterval {text:?} is not a duration like 15s: {e}")))
    }
}

/// The queries the adapter runs.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryConfig {
    /// Label names.
    pub labels: LabelNames,
    /// A series every GPU has.
    pub gpu_series: String,
    /// Prometheus' scrape interval of the series.
    pub scrape_interval: Duration,
    /// Queries by metric, for the metrics configured.
    pub metrics: Vec<(Metric, MetricQuery)>,
}

const PLACEHOLDERS: [&str; 3] = ["<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"];

impl QueryConfig {
    /// The built-in dcgm-exporter configuration.
    pub fn dcgm() -> Self {
        Self::parse(DCGM_QUERIES, "built-in").expect("the built-in query configuration is valid")
    }

    /// Reads a configuration file.
    pub fn read(path: &Path) -> Result<Self, PrometheusError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| PrometheusError::Config { origin: origin.clone(), reason: e.to_string() })?;
        Self::parse(&text, &origin)
    }

    /// Parses and checks a configuration.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PrometheusError> {
        let error = |reason: String| PrometheusError::Config { origin: origin.to_string(), reason };
        let file: ConfigFile = serde_yaml_ng::from_str(text).map_err(|e| error(e.to_string()))?;
        let mut metrics = Vec::new();
        for (name, query) in file.metrics {
            let metric = Metric::from_name(&name).ok_or_else(|| {
                let known: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
                error(format!("unknown metric {name:?}; known: {}", known.join(", ")))
            })?;
            let mut rest = query.query.clone();
            for placeholder in PLACEHOLDERS {
                rest = rest.replace(placeholder, "");
            }
            if let Some(at) = rest.find("<<") {
                let unknown: String = rest[at..].chars().take_while(|c| *c != '>').collect();
                return Err(error(format!(
                    "{name}: unknown placeholder {unknown}>>; known: {}",
                    PLACEHOLDERS.join(", ")
                )));
            }
            if !query.query.contains("<<.GroupBy>>") {
                return Err(error(format!("{name}: the query must keep the <<.GroupBy>> labels")));
            }
            if !is_metric_name(&query.series) {
                return Err(error(format!("{name}: series {:?} is not a metric name", query.series)));
            }
            metrics.push((metric, query));
        }
        if metrics.is_empty() {
            return Err(error("no metrics configured".to_string()));
        }
        if !is_metric_name(&file.gpu_series) {
            return Err(error(format!("gpuSeries {:?} is not a metric name", file.gpu_series)));
        }
        if file.scrape_interval.is_zero() {
            return Err(error("scrapeInterval must be more than zero".to_string()));
        }
        Ok(Self { labels: file.labels, gpu_series: file.gpu_series, scrape_interval: file.scrape_interval, metrics })
    }

    /// Every query of one poll round.
    pub fn queries(&self) -> Vec<RoundQuery> {
        let mut queries = Vec::new();
        for scope in [Scope::Pods, Scope::Nodes] {
            for (metric, q) in &self.metrics {
                let group_by = self.group_by(scope, q.weight_by_model);
                queries.push(RoundQuery {
                    kind: QueryKind::Value { metric: *metric, weighted: q.weight_by_model },
                    scope,
                    promql: fill(&q.query, &q.series, &self.matchers(scope), &group_by),
                });
            }
            let series: HashSet<&str> = self.metrics.iter().map(|(_, q)| q.series.as_str()).collect();
            let mut series: Vec<&str> = series.into_iter().collect();
            series.sort_unstable();
            for s in series {
                let group_by = self.group_by(scope, false);
                let template = "min by (<<.GroupBy>>) (timestamp(<<.Series>>{<<.LabelMatchers>>}))";
                queries.push(RoundQuery {
                    kind: QueryKind::ScrapeTime,
                    scope,
                    promql: fill(template, s, &self.matchers(scope), &group_by),
                });
            }
        }
        let l = &self.labels;
        queries.push(RoundQuery {
            kind: QueryKind::Inventory,
            scope: Scope::Nodes,
            promql: format!(
                "count by ({node},{model}) (count by ({node},{model},{gpu}) ({series}{{{node}!=\"\"}}))",
                node = l.node,
                model = l.model,
                gpu = l.gpu,
                series = self.gpu_series
            ),
        });
        queries
    }

    fn matchers(&self, scope: Scope) -> String {
        match scope {
            Scope::Pods => format!("{}!=\"\",{}!=\"\"", self.labels.namespace, self.labels.pod),
            Scope::Nodes => format!("{}!=\"\"", self.labels.node),
        }
    }

    fn group_by(&self, scope: Scope, with_model: bool) -> String {
        let l = &self.labels;
        let mut labels = match scope {
            Scope::Pods => vec![l.namespace.as_str(), l.pod.as_str(), l.node.as_str()],
            Scope::Nodes => vec![l.node.as_str()],
        };
        if with_model {
            labels.push(&l.model);
        }
        labels.join(",")
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn fill(template: &str, series: &str, matchers: &str, group_by: &str) -> String {
    template.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", group_by)
}

/// Pods or nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Grouped by namespace, pod and node.
    Pods,
    /// Grouped by node.
    Nodes,
}

/// What a query's answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryKind {
    /// A metric's values.
    Value {
        /// The metric.
        metric: Metric,
        /// Grouped by model as well, to be weighted.
        weighted: bool,
    },
    /// The scrape time of a series, seconds since the Unix epoch.
    ScrapeTime,
    /// GPUs per node and model.
    Inventory,
}

/// One query of a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundQuery {
    /// What the answer is.
    pub kind: QueryKind,
    /// Pods or nodes.
    pub scope: Scope,
    /// The PromQL.
    pub promql: String,
}

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

/// The answers of one round, by query position in [`QueryConfig::queries`].
pub type RoundAnswers = Vec<Option<Arc<Vec<VectorSample>>>>;

#[derive(Default)]
struct Accumulator {
    values: [Vec<f64>; 4],
    scrape_time: Option<f64>,
}

impl Accumulator {
    fn sample(&self, window: Duration) -> Option<Sample> {
        let seconds = self.scrape_time?;
        let values = std::array::from_fn(|i| {
            let v = &self.values[i];
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        });
        // Prometheus times are whole milliseconds.
        let timestamp = UNIX_EPOCH + Duration::from_millis((seconds.max(0.0) * 1000.0).round() as u64);
        Some(Sample { values, timestamp, window })
    }
}

/// Builds the store view from a round's answers. An object appears once it
/// has a value and a scrape time; a weighted metric's per-model values are
/// weighted and averaged.
pub fn build_view(config: &QueryConfig, queries: &[RoundQuery], answers: &RoundAnswers) -> StoreView {
    let l = &config.labels;
    let label = |s: &VectorSample, name: &str| s.labels.get(name).cloned().unwrap_or_default();
    let mut pods: HashMap<(String, String), (String, Accumulator)> = HashMap::new();
    let mut nodes: HashMap<String, Accumulator> = HashMap::new();
    let mut inventory: HashMap<String, (usize, f64)> = HashMap::new();

    for (query, answer) in queries.iter().zip(answers) {
        let Some(answer) = answer else { continue };
        for s in answer.iter() {
            let node = label(s, &l.node);
            let accumulator = match query.scope {
                Scope::Pods => {
                    let key = (label(s, &l.namespace), label(s, &l.pod));
                    if key.0.is_empty() || key.1.is_empty() {
                        continue;
                    }
                    &mut pods.entry(key).or_insert_with(|| (node, Accumulator::default())).1
                }
                Scope::Nodes if node.is_empty() => continue,
                Scope::Nodes if query.kind == QueryKind::Inventory => {
                    let entry = inventory.entry(node).or_default();
                    let gpus = s.value.max(0.0) as usize;
                    entry.0 += gpus;
                    entry.1 += gpus as f64 * relative_capacity(&label(s, &l.model));
                    continue;
                }
                Scope::Nodes => nodes.entry(node).or_default(),
            };
            match query.kind {
                QueryKind::Value { metric, weighted } => {
                    let weight = if weighted { relative_capacity(&label(s, &l.model)) } else { 1.0 };
                    let i = Metric::ALL.iter().position(|m| *m == metric).expect("every metric is in ALL");
                    accumulator.values[i].push(s.value * weight);
                }
                // The oldest series decides: a value is as fresh as its stalest input.
                QueryKind::ScrapeTime => {
                    accumulator.scrape_time = Some(accumulator.scrape_time.map_or(s.value, |t| t.min(s.value)));
                }
                QueryKind::Inventory => {}
            }
        }
    }

    let window = config.scrape_interval;
    let mut view = StoreView::default();
    for ((namespace, name), (node, accumulator)) in pods {
        if let Some(sample) = accumulator.sample(window).filter(|s| s.values.iter().any(Option::is_some)) {
            view.pods.entry(namespace).or_default().push(PodSample { name, node, sample });
        }
    }
    for pods in view.pods.values_mut() {
        pods.sort_by(|a, b| a.name.cmp(&b.name));
    }
    for (node, accumulator) in nodes {
        if let Some(sample) = accumulator.sample(window).filter(|s| s.values.iter().any(Option::is_some)) {
            let (gpus_up, capacity) = inventory.get(&node).copied().unwrap_or_default();
            view.nodes.insert(node, NodeSample { sample, capacity, gpus_up });
        }
    }
    view
}

/// Polling settings of the Prometheus source.
#[derive(Clone, Debug)]
pub struct PrometheusSettings {
    /// Base URL, `http://prometheus-operated.monitoring.svc:9090`.
    pub url: String,
    /// The queries.
    pub config: QueryConfig,
    /// Time between rounds.
    pub interval: Duration,
    /// Time one query may take.
    pub timeout: Duration,
    /// Largest answer accepted, bytes.
    pub max_body_bytes: usize,
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
    settings: PrometheusSettings,
    queries: Vec<RoundQuery>,
    client: Client<HttpConnector, Empty<Bytes>>,
    store: Arc<MetricStore>,
    last: RoundAnswers,
    failing: Vec<bool>,
    /// Set after the first round in which Prometheus answered.
    pub answered_once: Arc<AtomicBool>,
}

impl PrometheusSource {
    /// A source publishing into `store`.
    pub fn new(settings: PrometheusSettings, store: Arc<MetricStore>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let queries = settings.config.queries();
        let n = queries.len();
        Self {
            settings,
            queries,
            client,
            store,
            last: vec![None; n],
            failing: vec![false; n],
            answered_once: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs one instant query.
    pub async fn query(&self, promql: &str) -> Result<Vec<VectorSample>, PrometheusError> {
        let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("query", promql).finish();
        let url = format!("{}/api/v1/query?{query}", self.settings.url.trim_end_matches('/'));
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| PrometheusError::Url {
            url: self.settings.url.clone(),
            reason: e.to_string(),
        })?;
        let work = async {
            let request = http::Request::get(uri)
                .header(http::header::ACCEPT, "application/json")
                .body(Empty::new())
                .map_err(|e| PrometheusError::Http(e.to_string()))?;
            let response = self.client.request(request).await.map_err(|e| PrometheusError::Http(e.to_string()))?;
            let status = response.status();
            let limited = Limited::new(response.into_body(), self.settings.max_body_bytes);
            let body = limited.collect().await.map_err(|e| {
                PrometheusError::Http(format!("reading the answer (limit {} bytes): {e}", self.settings.max_body_bytes))
            })?;
            // Prometheus explains a refused query in a JSON body (400, 422, 503).
            match decode_vector(&body.to_bytes()) {
                Err(PrometheusError::Decode(_)) if !status.is_success() => {
                    Err(PrometheusError::Http(format!("HTTP {status}")))
                }
                other => other,
            }
        };
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .unwrap_or(Err(PrometheusError::Timeout(self.settings.timeout)))
    }

    /// One round: every query at once, then one publish.
    pub async fn poll_once(&mut self) {
        let results = futures::future::join_all(self.queries.iter().map(|q| self.query(&q.promql))).await;
        let mut answered = false;
        for (i, result) in results.into_iter().enumerate() {
            let promql = &self.queries[i].promql;
            match result {
                Ok(samples) => {
                    answered = true;
                    if std::mem::replace(&mut self.failing[i], false) {
                        tracing::info!(query = %promql, "Prometheus answers the query again");
                    }
                    self.last[i] = Some(Arc::new(samples));
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.failing[i], true) {
                        tracing::warn!(error = %e, query = %promql, "Prometheus query failed; its values drop out after --max-age");
                    }
                }
            }
        }
        self.store.publish_view(build_view(&self.settings.config, &self.queries, &self.last));
        if answered {
            self.answered_once.store(true, Ordering::Release);
        }
    }

    /// Polls until `shutdown` turns true.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let mut rounds = crate::listener::Rounds::new(self.settings.interval, shutdown);
        while rounds.next().await {
            self.poll_once().await;
        }
    }
}

#[cfg(test)]
mod tests;
