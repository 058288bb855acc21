//! `--source agents`: polls every agent's `/v1/pods` feed, concurrently, and
//! admits the feeds into the store after each round.
//!
//! An agent found in the cluster is bound to the node the API gives for its
//! pod; its feed speaks for that node's pods only. A static `--agent` URL is
//! bound to no node: its feed is trusted for the node it names (and, where a
//! cluster is known, still only for pods the API places there).
//!
//! An agent that fails keeps its last good feed only until that feed ages
//! past the max age; a garbled or oversized answer is refused whole. Other
//! agents are never held up by a slow one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::fetch::{FetchError, Fetcher};
use super::{FailureLog, Source};
use crate::adapter::admission::{Admission, RejectReason, Rejections, SampleTime, sample_time, sample_window};
use crate::adapter::store::{Metric, MetricStore, MetricValues, relative_capacity};
use crate::feed::NodeFeed;
use crate::k8s::labels::LabelIndex;

/// An agent to poll.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AgentTarget {
    /// Base URL, `http://10.42.0.7:9402`.
    pub url: String,
    /// The node the API places the agent's pod on; `None` for a static
    /// `--agent` URL.
    pub node: Option<String>,
}

impl AgentTarget {
    /// A static `--agent` URL.
    pub fn unbound(url: impl Into<String>) -> Self {
        Self { url: url.into(), node: None }
    }
}

/// Why one agent's feed could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The GET failed.
    #[error("agent {url}: {source}")]
    Fetch {
        /// The agent.
        url: String,
        /// Why.
        #[source]
        source: FetchError,
    },
    /// The agent answered with an error status.
    #[error("agent {url}: HTTP {status}")]
    Status {
        /// The agent.
        url: String,
        /// Its status.
        status: http::StatusCode,
    },
    /// The body was not a feed.
    #[error("agent {url} sent a body that is not a feed: {source}")]
    Decode {
        /// The agent.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Decodes a feed body.
pub fn decode_feed(url: &str, body: &[u8]) -> Result<NodeFeed, CollectError> {
    serde_json::from_slice(body).map_err(|source| CollectError::Decode { url: url.to_string(), source })
}

/// Polls agents into the store.
pub struct AgentSource {
    fetcher: Fetcher,
    token: Option<Arc<str>>,
    targets: watch::Receiver<Vec<AgentTarget>>,
    store: Arc<MetricStore>,
    labels: Arc<LabelIndex>,
    rejections: Arc<Rejections>,
    max_round_pods: usize,
    last: HashMap<String, Arc<NodeFeed>>,
    failures: FailureLog<String>,
}

impl AgentSource {
    /// A source polling `targets`, admitting against `labels` into `store`.
    pub fn new(
        fetcher: Fetcher,
        token: Option<Arc<str>>,
        targets: watch::Receiver<Vec<AgentTarget>>,
        store: Arc<MetricStore>,
        labels: Arc<LabelIndex>,
        rejections: Arc<Rejections>,
        max_round_pods: usize,
    ) -> Self {
        Self {
            fetcher,
            token,
            targets,
            store,
            labels,
            rejections,
            max_round_pods,
            last: HashMap::new(),
            failures: FailureLog::new("agent feed"),
        }
    }

    /// Fetches and decodes one agent's feed.
    pub async fn fetch(fetcher: &Fetcher, token: Option<&str>, base: &str) -> Result<NodeFeed, CollectError> {
        let url = format!("{}/v1/pods", base.trim_end_matches('/'));
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(http::HeaderName, &str)> =
            bearer.as_deref().map(|b| (http::header::AUTHORIZATION, b)).into_iter().collect();
        let answer = fetcher
            .get(&url, &headers)
            .await
            .map_err(|source| CollectError::Fetch { url: base.to_string(), source })?;
        if !answer.status.is_success() {
            return Err(CollectError::Status { url: base.to_string(), status: answer.status });
        }
        decode_feed(base, &answer.body)
    }
}

impl Source for AgentSource {
    /// Every agent at once, each fetched and decoded in its own task (so
    /// decoding spreads over the workers), then one admission and publish.
    async fn poll_once(&mut self) -> bool {
        let targets = self.targets.borrow().clone();
        let mut tasks = tokio::task::JoinSet::new();
        for target in &targets {
            let (fetcher, token, url) = (self.fetcher.clone(), self.token.clone(), target.url.clone());
            tasks.spawn(async move {
                let result = AgentSource::fetch(&fetcher, token.as_deref(), &url).await;
                (url, result)
            });
        }
        let mut answered = false;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((url, Ok(feed))) => {
                    answered = true;
                    self.failures.succeeded(&url);
                    self.last.insert(url, Arc::new(feed));
                }
                Ok((url, Err(e))) => self.failures.failed(&url, &e),
                Err(e) => tracing::error!(error = %e, "an agent fetch task failed"),
            }
        }
        let current: HashMap<&str, &AgentTarget> = targets.iter().map(|t| (t.url.as_str(), t)).collect();
        self.last.retain(|url, _| current.contains_key(url.as_str()));
        self.failures.retain(|url| current.contains_key(url.as_str()));
        let feeds: Vec<(AgentTarget, Arc<NodeFeed>)> =
            self.last.iter().map(|(url, feed)| (current[url.as_str()].clone(), feed.clone())).collect();
        // Admission of a large fleet takes milliseconds: off the workers that
        // answer the HPA's queries.
        let (labels, rejections, budget) = (self.labels.clone(), self.rejections.clone(), self.max_round_pods);
        let admit = move || build_view(&feeds, &labels, &rejections, budget, SystemTime::now());
        match tokio::task::spawn_blocking(admit).await {
            Ok(view) => self.store.publish(view),
            Err(e) => tracing::error!(error = %e, "admitting a round failed; the last view stands"),
        }
        answered
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Admits the agents' latest feeds (in URL order, so the outcome never
/// depends on which answered first) into one view.
pub fn build_view(
    feeds: &[(AgentTarget, Arc<NodeFeed>)],
    labels: &LabelIndex,
    rejections: &Rejections,
    max_round_pods: usize,
    now: SystemTime,
) -> crate::adapter::store::StoreView {
    let mut admission = Admission::new(labels.snapshot(), rejections, max_round_pods);
    let ordered: BTreeMap<&AgentTarget, &NodeFeed> = feeds.iter().map(|(t, f)| (t, f.as_ref())).collect();
    for (target, feed) in ordered {
        admit_feed(&mut admission, target, feed, now);
    }
    admission.finish()
}

fn admit_feed(admission: &mut Admission<'_>, target: &AgentTarget, feed: &NodeFeed, now: SystemTime) {
    let source = target.url.as_str();
    let items = feed.pods.len() + 1;
    let node = match &target.node {
        Some(bound) if *bound != feed.node => {
            return admission.reject(
                source,
                RejectReason::NodeMismatch,
                items,
                format_args!("the feed names node {:?}, but the API runs this agent on {bound}", feed.node),
            );
        }
        Some(bound) => bound.as_str(),
        None => feed.node.as_str(),
    };
    let time = sample_time(feed.timestamp_ms, now).and_then(|timestamp| {
        let window = sample_window(Duration::from_millis(feed.interval_ms))?;
        Ok(SampleTime { timestamp, window })
    });
    let time = match time {
        Ok(time) => time,
        Err(reason) => {
            return admission.reject(
                source,
                reason,
                items,
                format_args!("timestampMs {} with intervalMs {}", feed.timestamp_ms, feed.interval_ms),
            );
        }
    };
    if !admission.take_budget(source, feed.pods.len()) {
        return;
    }
    let capacity_of: HashMap<&str, f64> =
        feed.gpus.iter().map(|g| (g.uuid.as_str(), relative_capacity(&g.model))).collect();
    let speaker: Arc<str> = Arc::from(node);
    for pod in &feed.pods {
        let capacity = mean(pod.gpus.iter().map(|u| capacity_of.get(u.as_str()).copied().unwrap_or(1.0)));
        let values = MetricValues::default()
            .with(Metric::Utilization, pod.utilization_percent)
            .with(Metric::MemoryUtilization, pod.memory_utilization_percent)
            .with(Metric::MemoryUsed, pod.memory_used_bytes.map(|b| b as f64))
            .with(Metric::WeightedUtilization, pod.utilization_percent.zip(capacity).map(|(u, c)| u * c));
        admission.pod(source, &speaker, &pod.namespace, &pod.pod, values, time);
    }

    let up: Vec<_> = feed.gpus.iter().filter(|g| g.up).collect();
    let capacity: f64 = up.iter().map(|g| relative_capacity(&g.model)).sum();
    let all = |f: &dyn Fn(&crate::feed::FeedGpu) -> Option<f64>| up.iter().map(|g| f(g)).collect::<Option<Vec<f64>>>();
    let values = if up.is_empty() {
        MetricValues::default()
    } else {
        MetricValues::default()
            .with(Metric::Utilization, all(&|g| g.utilization_percent).and_then(|v| mean(v.into_iter())))
            .with(Metric::MemoryUtilization, all(&|g| g.memory_utilization_percent).and_then(|v| mean(v.into_iter())))
            .with(Metric::MemoryUsed, all(&|g| g.memory_used_bytes.map(|b| b as f64)).map(|v| v.iter().sum()))
            .with(
                Metric::WeightedUtilization,
                all(&|g| g.utilization_percent.map(|u| u * relative_capacity(&g.model)))
                    .and_then(|v| mean(v.into_iter())),
            )
    };
    admission.node(source, node, values, time, capacity, up.len());
}

#[cfg(test)]
mod tests;
