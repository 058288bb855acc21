//! A simulated fleet, for measuring and testing the adapter at cluster scale
//! without a cluster: N agents' `/v1/pods` feeds (P pods each, one RTX 4090
//! shared by them) served from one loopback server at `/agent-<i>/v1/pods`
//! and re-rendered every second like real agents, and the pods' labels as a
//! cluster's reflectors would give them: namespace `fleet`, pod
//! `pod-<agent>-<n>`, label `app=app-<k>`, 200 pods to an app (and at least
//! 50 apps), so that an HPA's selector matches as many pods at every fleet
//! size and what grows is the fleet, not the answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::feed::{FeedGpu, FeedPod, NodeFeed, unix_ms};
use crate::k8s::labels::LabelMaps;

/// The namespace of every fleet pod.
pub const NAMESPACE: &str = "fleet";
/// Pods of one app (`app=app-<k>`).
pub const PODS_PER_APP: usize = 200;

/// N agents of P pods each.
#[derive(Clone, Copy, Debug)]
pub struct Fleet {
    /// Agents (nodes).
    pub agents: usize,
    /// Pods per agent.
    pub pods: usize,
}

impl Fleet {
    /// How often the marker pod (`pod-0-0`) changes.
    pub const MARKER_PERIOD: Duration = Duration::from_secs(4);

    /// The marker pod's utilization at `now_ms`: 20 % and 80 % in turn,
    /// changing on every multiple of [`Fleet::MARKER_PERIOD`] since the
    /// epoch, so that a watcher knows when each change happened and can time
    /// it until the API serves it (as a GPU's load changes, and its agent
    /// samples it within a second).
    pub fn marker(now_ms: u64) -> f64 {
        if (now_ms / Self::MARKER_PERIOD.as_millis() as u64).is_multiple_of(2) { 20.0 } else { 80.0 }
    }

    /// Pod `n` of agent `agent`.
    pub fn pod_name(agent: usize, n: usize) -> String {
        format!("pod-{agent}-{n}")
    }

    /// How many apps the pods are spread over.
    pub fn apps(&self) -> usize {
        (self.agents * self.pods / PODS_PER_APP).max(50)
    }

    /// The app of pod `n` of agent `agent`.
    pub fn app_of(&self, agent: usize, n: usize) -> String {
        format!("app-{}", (agent * self.pods + n) % self.apps())
    }

    /// Agent `agent`'s feed at `now_ms`.
    pub fn feed(&self, agent: usize, now_ms: u64) -> NodeFeed {
        let uuid = format!("GPU-fleet-{agent:05}");
        NodeFeed {
            node: format!("node-{agent}"),
            timestamp_ms: now_ms,
            interval_ms: 1000,
            gpus: vec![FeedGpu {
                index: 0,
                uuid: uuid.clone(),
                model: "NVIDIA GeForce RTX 4090".into(),
                up: true,
                utilization_percent: Some(((agent * 7) % 100) as f64),
                memory_utilization_percent: Some(20.0),
                memory_used_bytes: Some(8 << 30),
                memory_total_bytes: Some(24 << 30),
            }],
            pods: (0..self.pods)
                .map(|n| FeedPod {
                    namespace: NAMESPACE.into(),
                    pod: Self::pod_name(agent, n),
                    gpus: vec![uuid.clone()],
                    sharing: "shared".into(),
                    utilization_percent: Some(match (agent, n) {
                        (0, 0) => Self::marker(now_ms),
                        _ => ((agent + n * 13) % 100) as f64,
                    }),
                    memory_utilization_percent: Some(10.0),
                    memory_used_bytes: None,
                    reason: None,
                })
                .collect(),
        }
    }

    /// Every pod's labels, as the adapter's reflectors would index them.
    pub fn labels(&self) -> LabelMaps {
        let mut labels = LabelMaps::default();
        let namespace = labels.pods.entry(NAMESPACE.into()).or_default();
        for a in 0..self.agents {
            for n in 0..self.pods {
                namespace.insert(Self::pod_name(a, n), [("app".to_string(), self.app_of(a, n))].into_iter().collect());
            }
        }
        labels
    }

    /// Every agent's base URL on the feed server at `base`.
    pub fn urls(&self, base: &str) -> Vec<String> {
        (0..self.agents).map(|a| format!("{}/agent-{a}", base.trim_end_matches('/'))).collect()
    }

    /// Every feed's body at `now_ms`, by path.
    fn render(&self, now_ms: u64) -> HashMap<String, Bytes> {
        (0..self.agents)
            .map(|a| {
                let body = serde_json::to_vec(&self.feed(a, now_ms)).expect("a feed serializes");
                (format!("/agent-{a}/v1/pods"), Bytes::from(body))
            })
            .collect()
    }

    /// Serves every feed on `listener`, re-rendered every second, until the
    /// task is dropped.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let bodies = Arc::new(ArcSwap::from_pointee(self.render(now_ms())));
        let refresh = bodies.clone();
        let renderer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let fresh = tokio::task::spawn_blocking(move || self.render(now_ms())).await;
                refresh.store(Arc::new(fresh.expect("rendering feeds does not panic")));
            }
        });
        let _stop_rendering = AbortOnDrop(renderer);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let response = match bodies.load().get(req.uri().path()).cloned() {
                        Some(body) => Response::new(Full::new(body)),
                        None => {
                            let mut r = Response::new(Full::new(Bytes::from_static(b"no such agent")));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}
