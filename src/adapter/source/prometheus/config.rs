//! The query file (`--prometheus-queries`, or the built-in dcgm-exporter
//! one) and the PromQL of one round: every metric once for all pods and once
//! for all nodes, the series' scrape times, and the GPU inventory.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{DCGM_QUERIES, PrometheusError};
use crate::adapter::store::Metric;

/// The label names of the series.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelNames {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Node name: one label, or several (`[hostname, Hostname]`), of which
    /// a series carries one; the first a series carries names its node.
    #[serde(deserialize_with = "one_or_more")]
    pub node: Vec<String>,
    /// GPU UUID.
    pub gpu: String,
    /// GPU model name.
    pub model: String,
}

impl LabelNames {
    /// The node a series' labels name: its first node label that is set.
    pub fn node_of<'a>(&self, labels: &'a BTreeMap<String, String>) -> &'a str {
        self.node.iter().find_map(|name| labels.get(name).filter(|v| !v.is_empty())).map_or("", String::as_str)
    }
}

/// A label name, or a list of them.
fn one_or_more<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(String),
        More(Vec<String>),
    }
    let names = match OneOrMore::deserialize(d)? {
        OneOrMore::One(name) => vec![name],
        OneOrMore::More(names) => names,
    };
    if names.is_empty() || names.iter().any(String::is_empty) {
        return Err(serde::de::Error::custom("labels.node: name one label or more, none empty"));
    }
    Ok(names)
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
        let text = crate::input::read_yaml(path, "--prometheus-queries")
            .map_err(|e| PrometheusError::Config { origin: origin.clone(), reason: e.reason })?;
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
                "count by ({node},{model}) (count by ({node},{model},{gpu}) ({series}{{{matchers}}}))",
                node = l.node.join(","),
                model = l.model,
                gpu = l.gpu,
                series = self.gpu_series,
                matchers = self.matchers(Scope::Nodes),
            ),
        });
        queries
    }

    fn matchers(&self, scope: Scope) -> String {
        match scope {
            Scope::Pods => format!("{}!=\"\",{}!=\"\"", self.labels.namespace, self.labels.pod),
            // A selector cannot ask for one label or another: with several
            // node labels, every GPU's series is asked for, and a series
            // naming no node is dropped from the answer.
            Scope::Nodes => match self.labels.node.as_slice() {
                [node] => format!("{node}!=\"\""),
                _ => format!("{}!=\"\"", self.labels.gpu),
            },
        }
    }

    fn group_by(&self, scope: Scope, with_model: bool) -> String {
        let l = &self.labels;
        let mut labels = match scope {
            Scope::Pods => vec![l.namespace.as_str(), l.pod.as_str()],
            Scope::Nodes => vec![],
        };
        labels.extend(l.node.iter().map(String::as_str));
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
