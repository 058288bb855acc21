//! What the adapter learns from the cluster through kube-rs: the agents to
//! poll (the agent DaemonSet's pods, each bound to its `spec.nodeName`),
//! every pod's labels and node (for selectors and node isolation), node
//! labels, and the front-proxy CA from
//! `kube-system/extension-apiserver-authentication`.
//!
//! Objects are stripped before they are stored: pods keep their name,
//! namespace, labels, `spec.nodeName`, phase and (agents only) IP. The
//! label index is rebuilt shortly after any change, so a pod's labels and
//! node are known before its values are admitted. Each cache is a readiness
//! check until its first list has synced; a list that keeps failing is
//! logged and shown in `/readyz`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, PodSpec, PodStatus};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::{Notify, watch};

use super::readiness::{Check, Readiness};
use super::source::agents::AgentTarget;
use crate::k8s::labels::{LabelIndex, LabelMaps};

/// The front-proxy settings kube-apiserver publishes for extension servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// PEM bundle of the front-proxy CA.
    pub client_ca: String,
    /// Allowed common names.
    pub allowed_names: Vec<String>,
    /// User name headers.
    pub username_headers: Vec<String>,
    /// Group headers.
    pub group_headers: Vec<String>,
}

/// Why the ConfigMap could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FrontProxyError {
    /// The ConfigMap could not be read.
    #[error(
        "cannot read kube-system/extension-apiserver-authentication (grant the extension-apiserver-authentication-reader role, or set --requestheader-client-ca-file): {0}"
    )]
    Read(#[source] kube::Error),
    /// It has no front-proxy CA.
    #[error(
        "kube-system/extension-apiserver-authentication has no requestheader-client-ca-file: is the aggregation layer enabled?"
    )]
    NoCa,
}

/// Parses the ConfigMap's data (list fields are JSON arrays).
pub fn request_header_config(
    data: &std::collections::BTreeMap<String, String>,
) -> Result<RequestHeaderConfig, FrontProxyError> {
    let list = |key: &str| -> Vec<String> {
        data.get(key).and_then(|v| serde_json::from_str::<Vec<String>>(v).ok()).unwrap_or_default()
    };
    let client_ca =
        data.get("requestheader-client-ca-file").filter(|s| !s.trim().is_empty()).ok_or(FrontProxyError::NoCa)?;
    let mut config = RequestHeaderConfig {
        client_ca: client_ca.clone(),
        allowed_names: list("requestheader-allowed-names"),
        username_headers: list("requestheader-username-headers"),
        group_headers: list("requestheader-group-headers"),
    };
    if config.username_headers.is_empty() {
        config.username_headers = vec!["X-Remote-User".into()];
    }
    if config.group_headers.is_empty() {
        config.group_headers = vec!["X-Remote-Group".into()];
    }
    Ok(config)
}

/// Reads the front-proxy settings from the cluster.
pub async fn fetch_request_header_config(client: kube::Client) -> Result<RequestHeaderConfig, FrontProxyError> {
    let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let cm = api.get("extension-apiserver-authentication").await.map_err(FrontProxyError::Read)?;
    request_header_config(&cm.data.unwrap_or_default())
}

/// Where to find agents.
#[derive(Clone, Debug)]
pub struct AgentDiscovery {
    /// Namespace of the agent pods.
    pub namespace: String,
    /// Label selector of the agent pods.
    pub selector: String,
    /// The agents' port.
    pub port: u16,
}

fn strip_meta(meta: &mut kube::core::ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
}

/// Keeps what selectors and node isolation need.
fn strip_pod(pod: &mut Pod) {
    strip_meta(&mut pod.metadata);
    let node_name = pod.spec.as_mut().and_then(|s| s.node_name.take());
    pod.spec = Some(PodSpec { node_name, containers: Vec::new(), ..PodSpec::default() });
    pod.status = pod.status.take().map(|s| PodStatus { phase: s.phase, ..PodStatus::default() });
}

/// Keeps what polling an agent needs.
fn strip_agent(pod: &mut Pod) {
    strip_meta(&mut pod.metadata);
    let node_name = pod.spec.as_mut().and_then(|s| s.node_name.take());
    pod.spec = Some(PodSpec { node_name, containers: Vec::new(), ..PodSpec::default() });
    pod.status = pod.status.take().map(|s| PodStatus { phase: s.phase, pod_ip: s.pod_ip, ..PodStatus::default() });
}

fn strip_node(node: &mut PartialObjectMeta<Node>) {
    strip_meta(&mut node.metadata);
}

/// The agents to poll: running agent pods with an IP and a node, each bound
/// to its node.
pub fn agent_targets(pods: &[Arc<Pod>], port: u16) -> Vec<AgentTarget> {
    let mut targets: Vec<AgentTarget> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref().filter(|s| s.phase.as_deref() == Some("Running"))?;
            let ip = status.pod_ip.as_deref()?;
            let node = p.spec.as_ref()?.node_name.clone()?;
            let url = if ip.contains(':') { format!("http://[{ip}]:{port}") } else { format!("http://{ip}:{port}") };
            Some(AgentTarget { url, node: Some(node) })
        })
        .collect();
    targets.sort();
    targets
}

/// Pod labels and placements, node labels. Pods that have finished
/// (`Succeeded`, `Failed`) are left out, as the HPA leaves them out: they
/// hold no GPU and have no value.
pub fn label_maps(pods: &[Arc<Pod>], nodes: &[Arc<PartialObjectMeta<Node>>]) -> LabelMaps {
    let mut maps = LabelMaps { placements: Some(HashMap::new()), ..LabelMaps::default() };
    let placements = maps.placements.as_mut().expect("just set");
    let finished =
        |pod: &Pod| matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    for pod in pods.iter().filter(|p| !finished(p)) {
        let ns = pod.namespace().unwrap_or_default();
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            placements.entry(ns.clone()).or_default().insert(pod.name_any(), node);
        }
        maps.pods.entry(ns).or_default().insert(pod.name_any(), pod.labels().clone());
    }
    for node in nodes {
        maps.nodes.insert(node.name_any(), node.labels().clone());
    }
    maps
}

/// One watched cache: a readiness check until its first list syncs.
struct Cache {
    check: Arc<Check>,
    synced: AtomicBool,
}

impl Cache {
    fn new(readiness: &Readiness, name: &'static str) -> Arc<Self> {
        Arc::new(Self { check: readiness.check(name, "not synced yet"), synced: AtomicBool::new(false) })
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// Drives one reflector's stream: marks its cache synced after the first
/// list, reports list failures, and signals `changed` on every change.
async fn follow<K>(
    cache: Arc<Cache>,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    changed: Arc<Notify>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            // `Init` starts a (re)list; only what follows it shows the API answers.
            Ok(watcher::Event::Init) => {}
            Ok(event) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(cache = cache.check.name(), "watch answers again");
                }
                if matches!(event, watcher::Event::InitDone) && !cache.synced.swap(true, Ordering::AcqRel) {
                    tracing::info!(cache = cache.check.name(), "cache synced");
                    cache.check.pass();
                }
                changed.notify_one();
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(cache = cache.check.name(), error = %e, "list or watch failed; retrying with backoff");
                }
                if !cache.synced() {
                    cache.check.fail(format_args!("list failed: {e}"));
                }
            }
        }
    }
}

/// What [`run`] keeps up to date.
pub struct ClusterOutputs {
    /// Agents to poll (static ones first, unbound).
    pub targets: watch::Sender<Vec<AgentTarget>>,
    /// Labels and placements.
    pub labels: Arc<LabelIndex>,
    /// Turns true once every cache has synced and the index holds them.
    pub synced: watch::Sender<bool>,
}

/// Watches agents, pods and nodes until shutdown.
pub async fn run(
    client: kube::Client,
    discovery: Option<AgentDiscovery>,
    static_agents: Vec<AgentTarget>,
    outputs: ClusterOutputs,
    readiness: Readiness,
    mut shutdown: watch::Receiver<bool>,
) {
    let changed = Arc::new(Notify::new());
    let pods_cache = Cache::new(&readiness, "pods-cache");
    let nodes_cache = Cache::new(&readiness, "nodes-cache");
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (nodes, node_writer) = reflector::store::<PartialObjectMeta<Node>>();
    let pod_stream = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip_pod)
        .reflect(pod_writer);
    let node_stream = watcher(Api::<PartialObjectMeta<Node>>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip_node)
        .reflect(node_writer);

    let mut caches = vec![pods_cache.clone(), nodes_cache.clone()];
    let agents = discovery.map(|d| {
        let cache = Cache::new(&readiness, "agent-pods-cache");
        caches.push(cache.clone());
        let (store, writer) = reflector::store::<Pod>();
        let api = Api::<Pod>::namespaced(client.clone(), &d.namespace);
        let stream = watcher(api, watcher::Config::default().labels(&d.selector))
            .default_backoff()
            .modify(strip_agent)
            .reflect(writer);
        (cache, store, stream, d.port)
    });
    let (agent_store, agent_follow) = match agents {
        Some((cache, store, stream, port)) => {
            (Some((store, port)), futures::future::Either::Left(follow(cache, stream, changed.clone())))
        }
        None => (None, futures::future::Either::Right(futures::future::pending::<()>())),
    };

    let build = async {
        loop {
            changed.notified().await;
            // Coalesce a burst of changes into one rebuild.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !caches.iter().all(|c| c.synced()) {
                continue;
            }
            publish(&pods, &nodes, agent_store.as_ref(), &static_agents, &outputs);
        }
    };
    tokio::select! {
        _ = follow(pods_cache, pod_stream, changed.clone()) => {}
        _ = follow(nodes_cache, node_stream, changed.clone()) => {}
        _ = agent_follow => {}
        _ = build => {}
        _ = crate::shutdown::stopped(&mut shutdown) => {}
    }
}

fn publish(
    pods: &Store<Pod>,
    nodes: &Store<PartialObjectMeta<Node>>,
    agents: Option<&(Store<Pod>, u16)>,
    static_agents: &[AgentTarget],
    outputs: &ClusterOutputs,
) {
    outputs.labels.replace(label_maps(&pods.state(), &nodes.state()));
    let mut targets: Vec<AgentTarget> = static_agents.to_vec();
    if let Some((store, port)) = agents {
        targets.extend(agent_targets(&store.state(), *port));
    }
    outputs.targets.send_if_modified(|current| {
        let changed = *current != targets;
        if changed {
            tracing::info!(agents = targets.len(), "agent list changed");
            *current = targets;
        }
        changed
    });
    outputs.synced.send_if_modified(|synced| !std::mem::replace(synced, true));
}

#[cfg(test)]
mod tests;
