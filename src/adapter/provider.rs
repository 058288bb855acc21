//! The query logic of the metrics APIs, with no HTTP and no JSON: select
//! pods or nodes by name or selector, keep only fresh values, aggregate over
//! a namespace or the cluster's nodes. As in custom-metrics-apiserver's
//! provider interface (`GetMetricByName`, `GetMetricBySelector`,
//! `ListAllMetrics`), the HTTP side knows nothing of where values come from,
//! and this side nothing of the wire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::core::{Selector, SelectorExt};

use super::store::{Metric, MetricStore, Sample, StoreView};

/// The kind of object a value describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// A pod.
    Pod,
    /// A node.
    Node,
    /// A namespace (its pods' aggregate).
    Namespace,
}

impl ObjectKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Pod => "Pod",
            ObjectKind::Node => "Node",
            ObjectKind::Namespace => "Namespace",
        }
    }
}

/// One object's value of one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricValue<'a> {
    /// What it describes.
    pub kind: ObjectKind,
    /// Its namespace (empty for cluster-scoped objects).
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The value.
    pub value: f64,
    /// When it was sampled.
    pub timestamp: SystemTime,
    /// The sample's window.
    pub window: Duration,
}

/// The pods a selector picks in a namespace, as a workload's scaler sees
/// them (the KEDA scaler sums them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload<'a> {
    /// The fresh values, by pod name.
    pub values: Vec<MetricValue<'a>>,
    /// Pods the API lists with no fresh value: starting, not yet sampled,
    /// or whose agent has stopped answering.
    pub missing: Vec<&'a str>,
}

/// Why a query has no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The metric is not served.
    #[error("the server could not find the metric {name:?}; served metrics: {known}")]
    UnknownMetric {
        /// The name asked for.
        name: String,
        /// The served names.
        known: String,
    },
    /// No fresh value for the object.
    #[error("the server could not find the metric {metric} for {resource} {object}")]
    NoValue {
        /// The metric.
        metric: &'static str,
        /// `pods`, `nodes` or `namespaces`.
        resource: &'static str,
        /// The object (`ns/name`).
        object: String,
    },
}

/// Looks a metric up by name.
pub fn metric(name: &str) -> Result<Metric, ProviderError> {
    Metric::from_name(name).ok_or_else(|| ProviderError::UnknownMetric {
        name: name.to_string(),
        known: Metric::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
    })
}

/// Every metric served (`ListAllMetrics`).
pub fn list_all_metrics() -> &'static [Metric] {
    Metric::ALL
}

/// Answers queries from the store.
#[derive(Clone)]
pub struct Provider {
    store: Arc<MetricStore>,
}

/// One consistent view to answer one request from, at one time.
pub struct RequestView {
    view: Arc<StoreView>,
    store: Arc<MetricStore>,
    now: SystemTime,
}

impl Provider {
    /// A provider over `store`.
    pub fn new(store: Arc<MetricStore>) -> Self {
        Self { store }
    }

    /// Changes once per published view.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.subscribe()
    }

    /// The current view, judged fresh as of `now`.
    pub fn view_at(&self, now: SystemTime) -> RequestView {
        RequestView { view: self.store.view(), store: self.store.clone(), now }
    }
}

fn value<'a>(kind: ObjectKind, namespace: &'a str, name: &'a str, v: f64, sample: &Sample) -> MetricValue<'a> {
    MetricValue { kind, namespace, name, value: v, timestamp: sample.timestamp, window: sample.window }
}

/// Whether a metric label selector (v1beta2's `metricLabelSelector`) admits
/// our metrics: they carry no labels, so one that needs a label matches
/// nothing.
fn selects_unlabelled(metric_selector: &Selector) -> bool {
    metric_selector.matches(&Default::default())
}

impl RequestView {
    fn fresh(&self, sample: &Sample) -> bool {
        self.store.is_fresh(sample, self.now)
    }

    /// The view answered from.
    pub fn view(&self) -> &StoreView {
        &self.view
    }

    /// One pod's value (`GetMetricByName`).
    pub fn pod<'a>(
        &'a self,
        metric: Metric,
        metric_selector: &Selector,
        namespace: &'a str,
        name: &str,
    ) -> Result<MetricValue<'a>, ProviderError> {
        self.view
            .pods
            .get(namespace)
            .filter(|_| selects_unlabelled(metric_selector))
            .and_then(|pods| pods.get_key_value(name))
            .filter(|(_, p)| self.fresh(&p.sample))
            .and_then(|(name, p)| Some(value(ObjectKind::Pod, namespace, name, p.sample.get(metric)?, &p.sample)))
            .ok_or_else(|| ProviderError::NoValue {
                metric: metric.name(),
                resource: "pods",
                object: format!("{namespace}/{name}"),
            })
    }

    /// The fresh values of a namespace's pods that match `selector`, by
    /// name (`GetMetricBySelector`). A pod whose labels are unknown matches
    /// only the empty selector.
    pub fn pods<'a>(
        &'a self,
        metric: Metric,
        metric_selector: &Selector,
        namespace: &'a str,
        selector: &Selector,
    ) -> Vec<MetricValue<'a>> {
        let Some(pods) = self.view.pods.get(namespace).filter(|_| selects_unlabelled(metric_selector)) else {
            return Vec::new();
        };
        let labels = &self.view.labels;
        let select_all = selector.selects_all();
        let mut out = Vec::new();
        let mut take = |name: &'a String, pod: &'a super::store::PodSample| {
            let Some(v) = pod.sample.get(metric) else { return };
            if (select_all || labels.pod_matches(namespace, name, selector)) && self.fresh(&pod.sample) {
                out.push(value(ObjectKind::Pod, namespace, name, v, &pod.sample));
            }
        };
        // A selector requiring a label value looks only at the pods that
        // have it (sorted by name, like the store).
        match (!select_all).then(|| labels.candidates(namespace, selector)).flatten() {
            Some(names) => {
                for name in names {
                    if let Some((name, pod)) = pods.get_key_value(name) {
                        take(name, pod);
                    }
                }
            }
            None => pods.iter().for_each(|(name, pod)| take(name, pod)),
        }
        out
    }

    /// The pods of a namespace that match `selector`: the fresh values, and
    /// the pods the API lists that have none. Without an API (static agents)
    /// only the pods with values are known, and only the empty selector
    /// matches them.
    pub fn workload<'a>(&'a self, metric: Metric, namespace: &'a str, selector: &Selector) -> Workload<'a> {
        let values = self.pods(metric, &Selector::default(), namespace, selector);
        let labels = &self.view.labels;
        let listed: Vec<&str> = match labels.candidates(namespace, selector) {
            Some(names) => names,
            None => {
                labels.pods.get(namespace).map(|pods| pods.keys().map(String::as_str).collect()).unwrap_or_default()
            }
        };
        let mut missing: Vec<&'a str> = listed
            .into_iter()
            .filter(|name| labels.pod_matches(namespace, name, selector))
            .filter(|name| values.binary_search_by(|v| v.name.cmp(name)).is_err())
            .collect();
        missing.sort_unstable();
        Workload { values, missing }
    }

    /// One node's value.
    pub fn node<'a>(
        &'a self,
        metric: Metric,
        metric_selector: &Selector,
        name: &str,
    ) -> Result<MetricValue<'a>, ProviderError> {
        self.view
            .nodes
            .get_key_value(name)
            .filter(|_| selects_unlabelled(metric_selector))
            .filter(|(_, n)| self.fresh(&n.sample))
            .and_then(|(name, n)| Some(value(ObjectKind::Node, "", name, n.sample.get(metric)?, &n.sample)))
            .ok_or_else(|| ProviderError::NoValue {
                metric: metric.name(),
                resource: "nodes",
                object: name.to_string(),
            })
    }

    /// The fresh values of the nodes that match `selector`, by name.
    pub fn nodes<'a>(
        &'a self,
        metric: Metric,
        metric_selector: &Selector,
        selector: &Selector,
    ) -> Vec<MetricValue<'a>> {
        if !selects_unlabelled(metric_selector) {
            return Vec::new();
        }
        self.view
            .nodes
            .iter()
            .filter(|(name, n)| self.fresh(&n.sample) && self.view.labels.node_matches(name, selector))
            .filter_map(|(name, n)| Some(value(ObjectKind::Node, "", name, n.sample.get(metric)?, &n.sample)))
            .collect()
    }

    /// A namespace's value: its fresh pods' mean for percentages, their sum
    /// for bytes, as old as the oldest.
    pub fn namespace<'a>(
        &'a self,
        metric: Metric,
        metric_selector: &Selector,
        namespace: &'a str,
    ) -> Result<MetricValue<'a>, ProviderError> {
        let samples: Vec<(f64, &Sample)> = self
            .view
            .pods
            .get(namespace)
            .filter(|_| selects_unlabelled(metric_selector))
            .into_iter()
            .flat_map(|pods| pods.values())
            .filter(|p| self.fresh(&p.sample))
            .filter_map(|p| Some((p.sample.get(metric)?, &p.sample)))
            .collect();
        let oldest = samples.iter().map(|(_, s)| *s).min_by_key(|s| s.timestamp).ok_or_else(|| {
            ProviderError::NoValue { metric: metric.name(), resource: "namespaces", object: namespace.to_string() }
        })?;
        let sum: f64 = samples.iter().map(|(v, _)| v).sum();
        let v = if metric.is_additive() { sum } else { sum / samples.len() as f64 };
        Ok(value(ObjectKind::Namespace, "", namespace, v, oldest))
    }

    /// The cluster-wide value over the nodes that match `selector`, with
    /// GPUs up: mean utilization per GPU, the capacity-weighted utilization
    /// of the pool, or total memory used. `None` when no node has one.
    pub fn external(&self, metric: Metric, selector: &Selector) -> Option<(f64, &Sample)> {
        let nodes: Vec<_> = self
            .view
            .nodes
            .iter()
            .filter(|(name, n)| self.fresh(&n.sample) && self.view.labels.node_matches(name, selector))
            .filter(|(_, n)| n.gpus_up > 0)
            .map(|(_, n)| n)
            .collect();
        let value = match metric {
            Metric::MemoryUsed => nodes.iter().map(|n| n.sample.get(metric)).sum::<Option<f64>>(),
            // Share of the pool's compute in use: Σ util×capacity / Σ capacity.
            Metric::WeightedUtilization => {
                let capacity: f64 = nodes.iter().map(|n| n.capacity).sum();
                nodes
                    .iter()
                    .map(|n| n.sample.get(metric).map(|v| v * n.gpus_up as f64))
                    .sum::<Option<f64>>()
                    .filter(|_| capacity > 0.0)
                    .map(|weighted| weighted / capacity)
            }
            _ => {
                let gpus: usize = nodes.iter().map(|n| n.gpus_up).sum();
                nodes
                    .iter()
                    .map(|n| n.sample.get(metric).map(|v| v * n.gpus_up as f64))
                    .sum::<Option<f64>>()
                    .filter(|_| gpus > 0)
                    .map(|total| total / gpus as f64)
            }
        }?;
        let oldest = nodes.iter().map(|n| &n.sample).min_by_key(|s| s.timestamp)?;
        Some((value, oldest))
    }
}
