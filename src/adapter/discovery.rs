//! What the adapter learns from the cluster through kube-rs: the agents to
//! poll (the agent DaemonSet's pods), pod and node labels for selectors, and
//! the front-proxy CA from `kube-system/extension-apiserver-authentication`.
//!
//! Pods and nodes are watched as metadata only, with managed fields and
//! annotations stripped before they are stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use super::labels::{LabelIndex, LabelMaps};

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
pub enum DiscoveryError {
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
) -> Result<RequestHeaderConfig, DiscoveryError> {
    let list = |key: &str| -> Vec<String> {
        data.get(key).and_then(|v| serde_json::from_str::<Vec<String>>(v).ok()).unwrap_or_default()
    };
    let client_ca =
        data.get("requestheader-client-ca-file").filter(|s| !s.trim().is_empty()).ok_or(DiscoveryError::NoCa)?;
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
pub async fn fetch_request_header_config(client: kube::Client) -> Result<RequestHeaderConfig, DiscoveryError> {
    let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let cm = api.get("extension-apiserver-authentication").await.map_err(DiscoveryError::Read)?;
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

fn strip<K>(obj: &mut PartialObjectMeta<K>) {
    obj.metadata.managed_fields = None;
    obj.metadata.annotations = None;
}

/// The poll URLs of running agent pods with an IP.
pub fn agent_urls(pods: &[Arc<Pod>], port: u16) -> Vec<String> {
    let mut urls: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref())
        .filter(|s| s.phase.as_deref() == Some("Running"))
        .filter_map(|s| s.pod_ip.as_deref())
        .map(|ip| if ip.contains(':') { format!("http://[{ip}]:{port}") } else { format!("http://{ip}:{port}") })
        .collect();
    urls.sort();
    urls
}

fn label_maps(pods: &Store<PartialObjectMeta<Pod>>, nodes: &Store<PartialObjectMeta<Node>>) -> LabelMaps {
    let mut maps = LabelMaps::default();
    for pod in pods.state() {
        let ns = pod.namespace().unwrap_or_default();
        maps.pods.entry(ns).or_insert_with(HashMap::new).insert(pod.name_any(), pod.labels().clone());
    }
    for node in nodes.state() {
        maps.nodes.insert(node.name_any(), node.labels().clone());
    }
    maps
}

/// Watches agents, pods and nodes until the process ends: agent URLs go to
/// `agents` (with `static_agents` added), labels into `labels`, once a second.
pub async fn run(
    client: kube::Client,
    discovery: Option<AgentDiscovery>,
    static_agents: Vec<String>,
    agents: watch::Sender<Vec<String>>,
    labels: Arc<LabelIndex>,
) {
    let (pod_meta, pod_writer) = reflector::store();
    let pods = watcher(Api::<PartialObjectMeta<Pod>>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip)
        .reflect(pod_writer)
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(pods);
    let (node_meta, node_writer) = reflector::store();
    let nodes = watcher(Api::<PartialObjectMeta<Node>>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip)
        .reflect(node_writer)
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(nodes);

    let agent_store = discovery.as_ref().map(|d| {
        let (store, writer) = reflector::store::<Pod>();
        let api = Api::<Pod>::namespaced(client.clone(), &d.namespace);
        let watch = watcher(api, watcher::Config::default().labels(&d.selector))
            .default_backoff()
            .reflect(writer)
            .for_each(|_| futures::future::ready(()));
        tokio::spawn(watch);
        (store, d.port)
    });

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        labels.replace(label_maps(&pod_meta, &node_meta));
        let mut urls = static_agents.clone();
        if let Some((store, port)) = &agent_store {
            urls.extend(agent_urls(&store.state(), *port));
        }
        agents.send_if_modified(|current| {
            let changed = *current != urls;
            if changed {
                tracing::info!(agents = urls.len(), "agent list changed");
                *current = urls;
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests;
