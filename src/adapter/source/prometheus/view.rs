//! A round's answers as store values: per pod and per node, each value as
//! fresh as its stalest series, admitted like any source's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use super::client::VectorSample;
use super::config::{QueryConfig, QueryKind, RoundQuery, Scope};
use crate::adapter::admission::{Admission, Rejections, SampleTime, sample_time};
use crate::adapter::store::{Metric, MetricValues, StoreView, relative_capacity};
use crate::k8s::labels::{LabelIndex, Placement};

/// The answers of one round, by query position in [`QueryConfig::queries`].
pub type RoundAnswers = Vec<Option<Arc<Vec<VectorSample>>>>;

#[derive(Default)]
struct Accumulator {
    values: HashMap<Metric, Vec<f64>>,
    scrape_time: Option<f64>,
}

impl Accumulator {
    /// The mean per metric and the oldest scrape time: `None` without a
    /// scrape time or a value.
    fn sample(&self) -> Option<(MetricValues, f64)> {
        let seconds = self.scrape_time?;
        let mut values = MetricValues::default();
        for (metric, v) in &self.values {
            values.set(*metric, (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64));
        }
        (!values.is_empty()).then_some((values, seconds))
    }
}

/// Builds the store view from a round's answers, through admission. An
/// object appears once it has a value and a scrape time; a weighted
/// metric's per-model values are weighted and averaged. Where a pod's series
/// carry a node label and the cluster is known, the pod must run there.
pub fn build_view(
    config: &QueryConfig,
    queries: &[RoundQuery],
    answers: &RoundAnswers,
    labels: &LabelIndex,
    rejections: &Rejections,
    now: SystemTime,
) -> StoreView {
    let l = &config.labels;
    let label = |s: &VectorSample, name: &str| s.labels.get(name).cloned().unwrap_or_default();
    let mut pods: BTreeMap<(String, String), (String, Accumulator)> = BTreeMap::new();
    let mut nodes: BTreeMap<String, Accumulator> = BTreeMap::new();
    let mut inventory: HashMap<String, (usize, f64)> = HashMap::new();

    for (query, answer) in queries.iter().zip(answers) {
        let Some(answer) = answer else { continue };
        for s in answer.iter() {
            let node = l.node_of(&s.labels).to_string();
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
                    accumulator.values.entry(metric).or_default().push(s.value * weight);
                }
                // The oldest series decides: a value is as fresh as its stalest input.
                QueryKind::ScrapeTime => {
                    accumulator.scrape_time = Some(accumulator.scrape_time.map_or(s.value, |t| t.min(s.value)));
                }
                QueryKind::Inventory => {}
            }
        }
    }

    let source = "prometheus";
    let window = config.scrape_interval;
    let mut admission = Admission::new(labels.snapshot(), rejections, usize::MAX);
    let time_of = |admission: &Admission<'_>, seconds: f64, items: usize| {
        // Prometheus times are whole milliseconds.
        let ms = (seconds.max(0.0) * 1000.0).round().min(u64::MAX as f64) as u64;
        match sample_time(ms, now) {
            Ok(timestamp) => Some(SampleTime { timestamp, window }),
            Err(reason) => {
                admission.reject(source, reason, items, format_args!("a scrape time of {seconds} s"));
                None
            }
        }
    };
    for ((namespace, name), (node, accumulator)) in pods {
        let Some((values, seconds)) = accumulator.sample() else { continue };
        let Some(time) = time_of(&admission, seconds, 1) else { continue };
        // Series without a node label cannot be checked against the API.
        let speaker = match admission.labels().placement(&namespace, &name) {
            Placement::On(placed) if node.is_empty() => placed.to_string(),
            _ => node,
        };
        admission.pod(source, &Arc::from(speaker), &namespace, &name, values, time);
    }
    for (node, accumulator) in nodes {
        let Some((values, seconds)) = accumulator.sample() else { continue };
        let Some(time) = time_of(&admission, seconds, 1) else { continue };
        let (gpus_up, capacity) = inventory.get(&node).copied().unwrap_or_default();
        admission.node(source, &node, values, time, capacity, gpus_up);
    }
    admission.finish()
}
