//! Polls every agent's `/v1/pods` feed, concurrently, each with a timeout and
//! a body size limit, and publishes the results to the store after each
//! round.
//!
//! An agent that fails keeps its last good feed only until that feed ages
//! past `--max-age` in the store; a garbled or oversized answer is refused
//! whole. Other agents are never held up by a slow one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use super::store::MetricStore;
use crate::feed::NodeFeed;

/// Why one agent's feed could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The URL is not usable.
    #[error("agent URL {url:?} is invalid (--agent): {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("agent {url} did not answer within {timeout:?}")]
    Timeout {
        /// The agent.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// Connection or HTTP failure.
    #[error("agent {url}: {reason}")]
    Http {
        /// The agent.
        url: String,
        /// What happened.
        reason: String,
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

/// Polling settings.
#[derive(Clone, Debug)]
pub struct PollSettings {
    /// Time between rounds.
    pub interval: Duration,
    /// Time one agent may take.
    pub timeout: Duration,
    /// Largest feed accepted, bytes.
    pub max_body_bytes: usize,
    /// Bearer token the agents' feeds require, if any.
    pub token: Option<Arc<str>>,
}

/// What fetching one feed needs; cheap to clone into a task per agent.
#[derive(Clone)]
struct Fetcher {
    settings: PollSettings,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// Polls agents into the store.
pub struct Collector {
    fetcher: Fetcher,
    interval: Duration,
    store: Arc<MetricStore>,
    agents: watch::Receiver<Vec<String>>,
    last: HashMap<String, Arc<NodeFeed>>,
    failing: HashMap<String, bool>,
    /// Set after the first round.
    pub polled_once: Arc<AtomicBool>,
}

/// Decodes a feed body.
pub fn decode_feed(url: &str, body: &[u8]) -> Result<NodeFeed, CollectError> {
    serde_json::from_slice(body).map_err(|source| CollectError::Decode { url: url.to_string(), source })
}

impl Fetcher {
    async fn fetch(&self, base: &str) -> Result<NodeFeed, CollectError> {
        let url = format!("{}/v1/pods", base.trim_end_matches('/'));
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| CollectError::Url { url: base.to_string(), reason: e.to_string() })?;
        let timeout = self.settings.timeout;
        let work = async {
            let mut request = http::Request::get(uri);
            if let Some(token) = &self.settings.token {
                request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| CollectError::Url { url: base.to_string(), reason: e.to_string() })?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| CollectError::Http { url: base.to_string(), reason: e.to_string() })?;
            if !response.status().is_success() {
                return Err(CollectError::Http {
                    url: base.to_string(),
                    reason: format!("HTTP {}", response.status()),
                });
            }
            let limited = Limited::new(response.into_body(), self.settings.max_body_bytes);
            let body = limited.collect().await.map_err(|e| CollectError::Http {
                url: base.to_string(),
                reason: format!("reading the body (limit {} bytes): {e}", self.settings.max_body_bytes),
            })?;
            decode_feed(base, &body.to_bytes())
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(CollectError::Timeout { url: base.to_string(), timeout }))
    }
}

impl Collector {
    /// A collector of the agents `agents` lists (base URLs like
    /// `http://10.42.0.7:9402`), publishing into `store`.
    pub fn new(settings: PollSettings, store: Arc<MetricStore>, agents: watch::Receiver<Vec<String>>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Self {
            interval: settings.interval,
            fetcher: Fetcher { settings, client },
            store,
            agents,
            last: HashMap::new(),
            failing: HashMap::new(),
            polled_once: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Fetches one agent's feed.
    pub async fn fetch(&self, base: &str) -> Result<NodeFeed, CollectError> {
        self.fetcher.fetch(base).await
    }
    /// One round: every agent at once, each fetched and decoded in its own
    /// task (so decoding spreads over the workers and never holds up the
    /// API's requests for long), then one publish.
    pub async fn poll_once(&mut self) {
        let agents = self.agents.borrow().clone();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, agent) in agents.iter().enumerate() {
            let (fetcher, agent) = (self.fetcher.clone(), agent.clone());
            tasks.spawn(async move { (i, fetcher.fetch(&agent).await) });
        }
        let mut results: Vec<Option<Result<NodeFeed, CollectError>>> = (0..agents.len()).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, result)) => results[i] = Some(result),
                Err(e) => tracing::error!(error = %e, "an agent fetch task failed"),
            }
        }
        for (agent, result) in agents.iter().zip(results) {
            let Some(result) = result else { continue };
            match result {
                Ok(feed) => {
                    if self.failing.remove(agent) == Some(true) {
                        tracing::info!(agent, "agent answers again");
                    }
                    self.last.insert(agent.clone(), Arc::new(feed));
                }
                Err(e) => {
                    if !self.failing.insert(agent.clone(), true).unwrap_or(false) {
                        tracing::warn!(error = %e, "agent feed unavailable; its pods drop out after --max-age");
                    }
                }
            }
        }
        let current: std::collections::HashSet<&String> = agents.iter().collect();
        self.last.retain(|agent, _| current.contains(agent));
        self.failing.retain(|agent, _| current.contains(agent));
        let feeds: Vec<Arc<NodeFeed>> = self.last.values().cloned().collect();
        self.store.publish(&feeds);
        self.polled_once.store(true, Ordering::Release);
    }

    /// Polls until `shutdown` turns true.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let mut rounds = crate::listener::Rounds::new(self.interval, shutdown);
        while rounds.next().await {
            self.poll_once().await;
        }
    }
}

#[cfg(test)]
mod tests;
