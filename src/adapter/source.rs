//! Where the adapter's values come from: the agents' feeds or an existing
//! Prometheus. Both are a [`Source`] polled by one shutdown-aware loop
//! ([`run`]); both fetch over the same HTTP client with a timeout and a size
//! limit ([`fetch`]), log a failure once while it lasts ([`FailureLog`]),
//! and publish each round through [`super::admission`] into the store.

pub mod agents;
pub mod fetch;
pub mod prometheus;

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::readiness::Check;
use crate::shutdown::Rounds;

/// A source of values, polled in rounds.
pub trait Source: Send {
    /// One round: fetch, admit, publish. `true` when any part of the source
    /// answered (an agent, a Prometheus query).
    fn poll_once(&mut self) -> impl Future<Output = bool> + Send;
}

/// Polls `source` every `interval` until shutdown. The first round waits
/// for `gate` (the cluster caches, which admission checks against); `ready`
/// passes once a round got a live answer.
pub async fn run<S: Source>(
    mut source: S,
    interval: Duration,
    mut gate: watch::Receiver<bool>,
    ready: Arc<Check>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::select! {
        synced = gate.wait_for(|synced| *synced) => if synced.is_err() { return },
        _ = crate::shutdown::stopped(&mut shutdown) => return,
    }
    let mut rounds = Rounds::new(interval, shutdown);
    while rounds.next().await {
        let mut answered = false;
        if !rounds.run(async { answered = source.poll_once().await }).await {
            break;
        }
        if answered {
            ready.pass();
        } else if !ready.is_ok() {
            ready.fail("no source has answered yet");
        }
    }
}

/// Logs a keyed failure once while it lasts, and its recovery.
#[derive(Debug)]
pub struct FailureLog<K> {
    failing: HashSet<K>,
    what: &'static str,
}

impl<K: Hash + Eq + Clone + Display> FailureLog<K> {
    /// A log for failures of `what` (`agent feed`, `Prometheus query`).
    pub fn new(what: &'static str) -> Self {
        Self { failing: HashSet::new(), what }
    }

    /// Records a failure of `key`; logged when it starts.
    pub fn failed(&mut self, key: &K, error: &dyn Display) {
        if self.failing.insert(key.clone()) {
            tracing::warn!(key = %key, error = %error, "{} unavailable; its values drop out after the max age", self.what);
        }
    }

    /// Records a success of `key`; logged when it ends a failure.
    pub fn succeeded(&mut self, key: &K) {
        if self.failing.remove(key) {
            tracing::info!(key = %key, "{} answers again", self.what);
        }
    }

    /// Forgets keys no longer polled.
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.failing.retain(|k| keep(k));
    }
}
