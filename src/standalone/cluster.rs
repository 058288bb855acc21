//! `standalone --cluster KUBECONFIG`: the simulated GPU nodes join a real
//! cluster. The cluster's own scheduler, Deployment, ReplicaSet and HPA
//! controllers act on them; standalone does only what a GPU node's software
//! does: registers the Nodes and keeps their Leases ([`objects`]), runs their
//! pods as a kubelet and NVIDIA's device plugin would
//! ([`crate::sim::kubelet`]), and serves the pipeline: one agent per node,
//! and the adapter against this API (its watchers, node isolation and
//! SubjectAccessReviews), behind APIServices where kube-apiserver runs on
//! this machine.
//!
//! ```text
//! kube-apiserver ◄── Nodes, Leases, pod status ── kubelets ──► SimNodes ──► agents ──► adapter
//!   │  scheduler binds pods, HPA scales Deployments                                    │
//!   └─────────────── custom.metrics.k8s.io (APIService) ◄─────────────────────────────┘
//! ```
//!
//! Everything is checked before anything is registered: the API answers, the
//! kubeconfig's user may do each thing needed, and no Node of the same name
//! exists that is not standalone's.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::watch;

use super::{StandaloneArgs, agent_args};
use crate::adapter::http::auth::Authenticator;
use crate::adapter::keda::server::KedaSetup;
use crate::adapter::source::agents::AgentTarget;
use crate::adapter::tls::{CertSource, LocalCa};
use crate::adapter::{AdapterSetup, AuthorizationMode, ClientAuth, DEFAULT_MAX_CONNECTIONS, Limits, SourceSetup};
use crate::agent::{AgentSetup, RunningAgent};
use crate::attribution::kubelet::KubeletAttribution;
use crate::sim::kubelet::{HpaView, KubeletNode, KubeletSetup, Kubelets};
use crate::sim::node_api::NodeApi;
use crate::sim::scenario::Scenario;
use crate::sim::{SimNode, SimOpener};
use crate::twin::model::{ClusterSpec, read_deployments};
use crate::twin::report;

pub mod objects;

/// How often the nodes' Leases and status are renewed (the kubelet's
/// `nodeStatusUpdateFrequency`).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// How often the kubelets look at their pods.
const KUBELET_TICK: Duration = Duration::from_millis(250);

/// How long an authorization answer is reused by the adapter.
const AUTHORIZATION_TTL: Duration = Duration::from_secs(10);

/// A directory removed, with what is in it, when this goes out of scope.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kubeconfig `--cluster` names, read: its client and what errors say.
struct Target {
    path: String,
    config: kube::Config,
    client: kube::Client,
    /// The user, as the kubeconfig's context names it.
    user: String,
}

impl Target {
    async fn read(path: &Path) -> anyhow::Result<Target> {
        let shown = path.display().to_string();
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| anyhow::anyhow!("--cluster {shown}: cannot read the kubeconfig: {e}"))?;
        let user = kubeconfig
            .current_context
            .as_ref()
            .and_then(|c| kubeconfig.contexts.iter().find(|n| &n.name == c))
            .and_then(|c| c.context.as_ref()?.user.clone())
            .unwrap_or_else(|| "(the kubeconfig's user)".into());
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| anyhow::anyhow!("--cluster {shown}: {e}"))?;
        let client = kube::Client::try_from(config.clone()).map_err(|e| anyhow::anyhow!("--cluster {shown}: {e}"))?;
        Ok(Target { path: shown, config, client, user })
    }

    fn fail(&self, reason: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("--cluster {}: {reason}", self.path)
    }

    /// Whether kube-apiserver runs on this machine (its address is loopback):
    /// only then can it reach the adapter through an APIService.
    fn local(&self) -> bool {
        match self.config.cluster_url.host() {
            Some("localhost") => true,
            Some(host) => host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
            None => false,
        }
    }
}

/// One right standalone needs: verb, API group, resource (with
/// subresource), namespace, and what for.
struct Right {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: &'static str,
    why: &'static str,
}

const fn right(verb: &'static str, group: &'static str, resource: &'static str, why: &'static str) -> Right {
    Right { verb, group, resource, subresource: "", namespace: "", why }
}

/// What the nodes, their kubelets, the status line and the adapter do.
const RIGHTS: &[Right] = &[
    right("create", "", "nodes", "to register the simulated nodes"),
    right("get", "", "nodes", "to find a node of the same name"),
    right("patch", "", "nodes", "to set the nodes' taints"),
    Right { subresource: "status", ..right("patch", "", "nodes", "to post the nodes' status") },
    right("delete", "", "nodes", "to remove the nodes on shutdown"),
    Right {
        namespace: "kube-node-lease",
        ..right("create", "coordination.k8s.io", "leases", "for the nodes' heartbeats")
    },
    Right {
        namespace: "kube-node-lease",
        ..right("patch", "coordination.k8s.io", "leases", "for the nodes' heartbeats")
    },
    right("list", "", "pods", "to run the pods bound to the nodes"),
    right("watch", "", "pods", "to run the pods bound to the nodes"),
    Right { subresource: "status", ..right("patch", "", "pods", "to report the pods Running and Ready") },
    right("delete", "", "pods", "to finish the pods being deleted"),
    right("get", "node.k8s.io", "runtimeclasses", "for the nvidia RuntimeClass"),
    right("create", "node.k8s.io", "runtimeclasses", "for the nvidia RuntimeClass"),
    right("list", "apps", "deployments", "for the Deployments' replicas"),
    right("watch", "apps", "deployments", "for the Deployments' replicas"),
    right("list", "autoscaling", "horizontalpodautoscalers", "for the HPAs' status"),
    right("list", "", "nodes", "for the adapter's node isolation"),
    right("watch", "", "nodes", "for the adapter's node isolation"),
    right("create", "authorization.k8s.io", "subjectaccessreviews", "for the adapter's authorization"),
    Right {
        namespace: "kube-system",
        ..right("get", "", "configmaps", "for the front-proxy CA (extension-apiserver-authentication)")
    },
];

/// What registering the APIServices needs besides.
const API_RIGHTS: &[Right] = &[
    right("create", "", "namespaces", "for the adapter's Service"),
    right("delete", "", "namespaces", "to remove the adapter's Service on shutdown"),
    Right { namespace: objects::NAMESPACE, ..right("create", "", "services", "for the adapter's Service") },
    right("get", "apiregistration.k8s.io", "apiservices", "to find APIServices of the same name"),
    right("create", "apiregistration.k8s.io", "apiservices", "to register the metrics APIs"),
    right("delete", "apiregistration.k8s.io", "apiservices", "to remove them on shutdown"),
    right("create", "rbac.authorization.k8s.io", "clusterroles", "to let the HPA controller read the metrics"),
    right("create", "rbac.authorization.k8s.io", "clusterrolebindings", "to let the HPA controller read the metrics"),
];

/// The API answers, and the kubeconfig's user may do all that is needed.
async fn check_access(target: &Target, local: bool) -> anyhow::Result<()> {
    let version =
        target.client.apiserver_version().await.map_err(|e| {
            target.fail(format!("the API server at {} does not answer: {e}", target.config.cluster_url))
        })?;
    tracing::info!(server = %target.config.cluster_url, version = %version.git_version, "API server reached");
    let reviews: Api<SelfSubjectAccessReview> = Api::all(target.client.clone());
    let needed = RIGHTS.iter().chain(if local { API_RIGHTS } else { &[] });
    for r in needed {
        let review: SelfSubjectAccessReview = serde_json::from_value(serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {
                "verb": r.verb, "group": r.group, "resource": r.resource,
                "subresource": r.subresource, "namespace": r.namespace,
            }},
        }))?;
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| target.fail(format!("cannot ask what user {} may do: {e}", target.user)))?;
        if !answer.status.is_some_and(|s| s.allowed) {
            let resource = match (r.group, r.subresource) {
                ("", "") => r.resource.to_string(),
                ("", sub) => format!("{}/{sub}", r.resource),
                (group, "") => format!("{}.{group}", r.resource),
                (group, sub) => format!("{}.{group}/{sub}", r.resource),
            };
            let scope = if r.namespace.is_empty() { String::new() } else { format!(" in namespace {}", r.namespace) };
            return Err(target.fail(format!(
                "user {} may not {} {resource}{scope}, which standalone needs {}",
                target.user, r.verb, r.why
            )));
        }
    }
    Ok(())
}

/// No Node of the same name exists unless standalone registered it.
async fn check_nodes(target: &Target, cluster: &ClusterSpec) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(target.client.clone());
    for spec in &cluster.nodes {
        let existing = nodes.get_opt(&spec.name).await.map_err(|e| target.fail(format!("node {}: {e}", spec.name)))?;
        if let Some(node) = existing
            && !objects::is_owned(node.metadata.annotations.as_ref())
        {
            return Err(target.fail(format!(
                "node {} exists and is not a simulated node (no {} annotation): standalone will not take it over; \
                 remove it, or use a cluster without a node of that name",
                spec.name,
                objects::OWNER_ANNOTATION
            )));
        }
    }
    Ok(())
}

/// What was registered, for the teardown.
#[derive(Default)]
struct Registered {
    nodes: Vec<String>,
    runtime_class: bool,
    namespace: bool,
    api_services: Vec<String>,
    metrics_reader: bool,
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("the objects built here are valid")
}

/// Creates `value` unless an object of its name exists: returns whether it
/// made it, and the error if the API refused.
async fn create_if_absent<T>(api: &Api<T>, value: serde_json::Value) -> Result<bool, kube::Error>
where
    T: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    match api.create(&PostParams::default(), &object::<T>(value)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `value`, or replaces the object of its name if standalone made
/// it (a run before that stopped without its teardown). Returns false if
/// the object is someone else's, which is left as it is. (Server-side apply
/// would be simpler, but 1.20's aggregator panics on it for APIServices.)
async fn create_or_replace_owned<T>(api: &Api<T>, value: serde_json::Value) -> Result<bool, kube::Error>
where
    T: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let mut wanted = object::<T>(value);
    if create_if_absent(api, serde_json::to_value(&wanted).expect("serializable")).await? {
        return Ok(true);
    }
    let existing = api.get(&wanted.name_any()).await?;
    if !objects::is_owned(existing.meta().annotations.as_ref()) {
        return Ok(false);
    }
    wanted.meta_mut().resource_version = existing.meta().resource_version.clone();
    api.replace(&existing.name_any(), &PostParams::default(), &wanted).await?;
    Ok(true)
}

/// Registers each node (taking over one that standalone left with
/// `--keep-nodes`), posts its status and Lease.
async fn register_nodes(
    target: &Target,
    cluster: &ClusterSpec,
    sims: &[Arc<SimNode>],
    ip: &str,
    registered: &mut Registered,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(target.client.clone());
    let runtime_classes: Api<RuntimeClass> = Api::all(target.client.clone());
    registered.runtime_class = create_if_absent(&runtime_classes, objects::runtime_class())
        .await
        .map_err(|e| target.fail(format!("RuntimeClass nvidia: {e}")))?;
    for (spec, sim) in cluster.nodes.iter().zip(sims) {
        create_if_absent(&nodes, objects::node(spec, sim))
            .await
            .map_err(|e| target.fail(format!("node {}: {e}", spec.name)))?;
        registered.nodes.push(spec.name.clone());
        heartbeat(&target.client, spec, sim, ip).await.map_err(|e| target.fail(format!("node {}: {e}", spec.name)))?;
        nodes
            .patch(&spec.name, &PatchParams::default(), &Patch::Merge(objects::node_taints(spec)))
            .await
            .map_err(|e| target.fail(format!("node {}: {e}", spec.name)))?;
        tracing::info!(node = %spec.name, gpus = sim.gpus.len(), replicas = spec.time_slicing, "node registered");
    }
    Ok(())
}

/// Renews a node's Lease (creating it the first time) and posts its status.
async fn heartbeat(
    client: &kube::Client,
    spec: &crate::twin::model::NodeSpec,
    sim: &SimNode,
    ip: &str,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(objects::node_status(spec, sim, ip))).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = serde_json::json!({"spec": {"renewTime": objects::renew_time()}});
    match leases.patch(&spec.name, &PatchParams::default(), &Patch::Merge(renewed)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let uid = nodes.get(&spec.name).await?.uid().unwrap_or_default();
            create_if_absent(&leases, objects::lease(&spec.name, &uid)).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Registers the metrics APIs to the adapter on `port`, trusting `ca_pem`;
/// an APIService that exists and is not standalone's is left as it is.
async fn register_api_services(
    target: &Target,
    port: u16,
    ca_pem: &str,
    registered: &mut Registered,
) -> anyhow::Result<()> {
    let client = &target.client;
    let fail = |what: &str, e: kube::Error| target.fail(format!("{what}: {e}"));
    let namespaces = Api::<Namespace>::all(client.clone());
    // A run just before may have left it terminating: it must be gone first.
    wait_gone(&namespaces, objects::NAMESPACE).await.map_err(|e| fail("namespace", e))?;
    registered.namespace =
        create_if_absent(&namespaces, objects::namespace()).await.map_err(|e| fail("namespace", e))?;
    let services: Api<Service> = Api::namespaced(client.clone(), objects::NAMESPACE);
    if !create_or_replace_owned(&services, objects::service(port))
        .await
        .map_err(|e| fail("the adapter's Service", e))?
    {
        return Err(target.fail(format!(
            "Service {}/{} exists and is not standalone's: remove it, or use a cluster without it",
            objects::NAMESPACE,
            objects::SERVICE
        )));
    }
    let (role, binding) = objects::metrics_reader();
    let created_role =
        create_if_absent(&Api::<ClusterRole>::all(client.clone()), role).await.map_err(|e| fail("ClusterRole", e))?;
    let created_binding = create_if_absent(&Api::<ClusterRoleBinding>::all(client.clone()), binding)
        .await
        .map_err(|e| fail("ClusterRoleBinding", e))?;
    registered.metrics_reader = created_role || created_binding;
    let api_services: Api<APIService> = Api::all(client.clone());
    for (group, version, priority) in objects::API_SERVICES {
        let name = objects::api_service_name(group, version);
        let value = objects::api_service(group, version, priority, port, ca_pem);
        if create_or_replace_owned(&api_services, value).await.map_err(|e| fail(&name, e))? {
            registered.api_services.push(name);
            continue;
        }
        let to = api_services
            .get(&name)
            .await
            .ok()
            .and_then(|a| a.spec?.service)
            .map_or("kube-apiserver itself".to_string(), |s| {
                format!("Service {}/{}", s.namespace.unwrap_or_default(), s.name.unwrap_or_default())
            });
        tracing::warn!(apiservice = %name, points_at = %to, "an APIService of the same name is not standalone's: left as it is, so the API server does not serve this version from standalone");
    }
    Ok(())
}

/// Removes what was registered (the nodes unless `keep_nodes`), and the
/// pods left on removed nodes, whose kubelet is gone. Errors are logged:
/// the rest is still removed.
async fn unregister(client: &kube::Client, registered: &Registered, keep_nodes: bool) {
    let gone = |what: &str, result: Result<(), kube::Error>| match result {
        Ok(()) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(object = what, error = %e, "cannot remove what standalone registered"),
    };
    let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    for name in &registered.api_services {
        gone(name, Api::<APIService>::all(client.clone()).delete(name, &now).await.map(|_| ()));
    }
    if registered.metrics_reader {
        let name = objects::METRICS_READER;
        gone(name, Api::<ClusterRoleBinding>::all(client.clone()).delete(name, &now).await.map(|_| ()));
        gone(name, Api::<ClusterRole>::all(client.clone()).delete(name, &now).await.map(|_| ()));
    }
    if registered.namespace {
        let namespaces = Api::<Namespace>::all(client.clone());
        gone(objects::NAMESPACE, namespaces.delete(objects::NAMESPACE, &now).await.map(|_| ()));
        gone(objects::NAMESPACE, wait_gone(&namespaces, objects::NAMESPACE).await);
    } else if !registered.api_services.is_empty() {
        let services: Api<Service> = Api::namespaced(client.clone(), objects::NAMESPACE);
        gone(objects::SERVICE, services.delete(objects::SERVICE, &now).await.map(|_| ()));
    }
    if keep_nodes {
        return;
    }
    // As when a node is removed for good: no more pods are bound to it (the
    // scheduler's cache follows the cordon, then the deletion), and the pods
    // it held, whose kubelet is gone, are deleted as the pod GC would.
    let nodes: Api<Node> = Api::all(client.clone());
    let cordon = serde_json::json!({"spec": {"unschedulable": true}});
    for node in &registered.nodes {
        gone(node, nodes.patch(node, &PatchParams::default(), &Patch::Merge(&cordon)).await.map(|_| ()));
    }
    for node in &registered.nodes {
        gone(node, nodes.delete(node, &now).await.map(|_| ()));
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        gone(node, leases.delete(node, &now).await.map(|_| ()));
    }
    let pods: Api<Pod> = Api::all(client.clone());
    for sweep in 0..2 {
        if sweep > 0 {
            // A pod bound just before the scheduler saw the node go.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        for node in &registered.nodes {
            let bound = pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await;
            for pod in bound.map(|l| l.items).unwrap_or_default() {
                let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                gone(&pod.name_any(), api.delete(&pod.name_any(), &now).await.map(|_| ()));
            }
        }
    }
    if registered.runtime_class {
        gone("nvidia", Api::<RuntimeClass>::all(client.clone()).delete("nvidia", &now).await.map(|_| ()));
    }
}

/// How long a terminating namespace is waited for.
const NAMESPACE_DELETION: Duration = Duration::from_secs(60);

/// Waits until the namespace `name` is not there (one being deleted goes
/// once its contents are), at most [`NAMESPACE_DELETION`].
async fn wait_gone(namespaces: &Api<Namespace>, name: &str) -> Result<(), kube::Error> {
    let deadline = Instant::now() + NAMESPACE_DELETION;
    while namespaces.get_opt(name).await?.is_some() {
        if Instant::now() > deadline {
            tracing::warn!(namespace = name, "still terminating after a minute");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The HPAs as the served `autoscaling` version has them (v2, or v2beta2
/// before 1.23; the same fields).
async fn hpa_resource(client: &kube::Client) -> ApiResource {
    let kind = |version| GroupVersionKind::gvk("autoscaling", version, "HorizontalPodAutoscaler");
    let v2 = client.list_api_group_resources("autoscaling/v2").await.is_ok();
    ApiResource::from_gvk_with_plural(&kind(if v2 { "v2" } else { "v2beta2" }), "horizontalpodautoscalers")
}

/// What each HPA last saw, wants and aims at.
fn hpa_view(object: &DynamicObject) -> HpaView {
    use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscalerSpec, HorizontalPodAutoscalerStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let namespace = object.namespace().unwrap_or_default();
    let spec: Option<HorizontalPodAutoscalerSpec> = serde_json::from_value(object.data["spec"].clone()).ok();
    let status: Option<HorizontalPodAutoscalerStatus> = serde_json::from_value(object.data["status"].clone()).ok();
    // A target and a current value have the same three ways to hold a number.
    let number = |average: Option<&Quantity>, value: Option<&Quantity>, utilization: Option<i32>| {
        average.or(value).and_then(|q| crate::k8s::quantity::parse_quantity(&q.0).ok()).or(utilization.map(f64::from))
    };
    let goal = spec.as_ref().and_then(|s| s.metrics.as_ref()?.first().cloned()).and_then(|m| {
        let target = match m.type_.as_str() {
            "Pods" => m.pods.map(|p| p.target),
            "Object" => m.object.map(|o| o.target),
            "External" => m.external.map(|e| e.target),
            "Resource" => m.resource.map(|r| r.target),
            _ => None,
        }?;
        number(target.average_value.as_ref(), target.value.as_ref(), target.average_utilization)
    });
    let current = status.as_ref().and_then(|s| s.current_metrics.as_ref()?.first().cloned()).and_then(|m| {
        let value = match m.type_.as_str() {
            "Pods" => m.pods.map(|p| p.current),
            "Object" => m.object.map(|o| o.current),
            "External" => m.external.map(|e| e.current),
            "Resource" => m.resource.map(|r| r.current),
            _ => None,
        }?;
        number(value.average_value.as_ref(), value.value.as_ref(), value.average_utilization)
    });
    HpaView {
        name: format!("{namespace}/{}", object.name_any()),
        target: spec.map(|s| format!("{namespace}/{}", s.scale_target_ref.name)).unwrap_or_default(),
        current,
        goal,
        desired: status.map_or(0, |s| s.desired_replicas.max(0) as u32),
    }
}

/// Runs `standalone --cluster` until `shutdown` turns true or `--duration`
/// passes, then removes what it registered.
pub async fn run(args: StandaloneArgs, kubeconfig: &Path, shutdown_tx: watch::Sender<bool>) -> anyhow::Result<()> {
    let shutdown = shutdown_tx.subscribe();
    let scenario = args.scenario.as_deref().map(Scenario::read).transpose()?;
    let deployments = args.deployments.as_deref().map(read_deployments).transpose()?.unwrap_or_default();
    let timeline = args
        .timeline
        .as_ref()
        .map(|path| {
            std::fs::File::create(path).with_context(|| format!("cannot write {} (--timeline)", path.display()))
        })
        .transpose()?;
    let target = Target::read(kubeconfig).await?;
    let local = target.local();
    let cluster = ClusterSpec::reference();
    check_access(&target, local).await?;
    check_nodes(&target, &cluster).await?;

    // Bind the servers before anything is registered, so that a taken port
    // leaves the cluster as it was.
    let sims: Vec<Arc<SimNode>> = cluster
        .nodes
        .iter()
        .map(|n| {
            let sim = SimNode::new(&n.name, &n.gpus, args.gpu.seed);
            sim.set_workloads(vec![Vec::new(); n.gpus.len()]);
            Arc::new(sim)
        })
        .collect();
    // Each node's kubelet socket, checkpoint and process files, which its
    // agent reads as on a real node.
    let node_root = std::env::temp_dir().join(format!("kube-gpu-metrics-standalone-{}", std::process::id()));
    let _node_files = RemovedOnDrop(node_root.clone());
    let mut apis = Vec::new();
    for (spec, sim) in cluster.nodes.iter().zip(&sims) {
        let api = NodeApi::new(&node_root, sim.clone(), spec.time_slicing)
            .with_context(|| format!("cannot write the simulated kubelet's files under {}", node_root.display()))?;
        apis.push(Arc::new(api));
    }
    let mut agents: Vec<RunningAgent> = Vec::new();
    for ((sim, api), offset) in sims.iter().zip(&apis).zip(0..) {
        let setup = AgentSetup {
            agent: agent_args(&args, &sim.node, offset),
            opener: Arc::new(SimOpener(sim.clone())),
            attribution: Box::new(KubeletAttribution::new(&api.attribution_args())),
        };
        let listen = setup.agent.listen;
        let agent = crate::agent::start(setup, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (--agent-port): {e}"))?;
        agents.push(agent);
    }
    let kubelet_sockets: Vec<_> = apis.iter().map(|api| tokio::spawn(api.clone().serve(shutdown.clone()))).collect();
    let ca = LocalCa::new("kube-gpu-metrics standalone CA")?;
    let host = args.host.to_string();
    let dns = objects::service_dns_name();
    let setup = AdapterSetup {
        listen: SocketAddr::new(args.host, args.adapter_port),
        cert: CertSource::Fixed(ca.serving(&[dns.as_str(), "localhost", host.as_str()])?),
        tls_reload_interval: Duration::from_secs(3600),
        // The aggregator's front proxy, with the CA and headers the cluster publishes.
        client_auth: ClientAuth::FrontProxy {
            ca: None,
            authenticator: Authenticator::FrontProxy {
                allowed_names: Vec::new(),
                username_headers: Vec::new(),
                group_headers: Vec::new(),
            },
        },
        authorization: (AuthorizationMode::SubjectAccessReview, AUTHORIZATION_TTL),
        source: match args.prometheus.settings()? {
            Some(settings) => SourceSetup::Prometheus(settings),
            None => SourceSetup::Agents {
                targets: agents
                    .iter()
                    .map(|a| AgentTarget {
                        url: format!("http://{}", a.addr),
                        node: Some(a.state.snapshot.load().data.node.clone()),
                    })
                    .collect(),
                discovery: None,
                token: None,
            },
        },
        labels: None,
        limits: Limits::new(&args.poll, DEFAULT_MAX_CONNECTIONS),
        max_age: args.poll.max_age,
        keda: Some(KedaSetup {
            listen: SocketAddr::new(args.host, args.keda_port.unwrap_or(super::DEFAULT_KEDA_PORT)),
            required: args.keda_port.is_some(),
            client_ca_file: args.keda_client_ca_file.clone(),
            flag: "--keda-port",
        }),
        kube_config: Some(target.config.clone()),
    };
    let adapter = crate::adapter::start(setup, shutdown.clone()).await.map_err(|e| match e {
        crate::adapter::AdapterError::Bind { addr, source, .. } => {
            anyhow::anyhow!("cannot listen on {addr} (--adapter-port): {source}")
        }
        other => other.into(),
    })?;
    std::fs::write(&args.ca_out, &ca.cert_pem)
        .map_err(|e| anyhow::anyhow!("cannot write {} (--ca-out): {e}", args.ca_out.display()))?;

    let mut registered = Registered::default();
    let ip = host.clone();
    let outcome = async {
        register_nodes(&target, &cluster, &sims, &ip, &mut registered).await?;
        if local {
            register_api_services(&target, adapter.addr.port(), &ca.cert_pem, &mut registered).await?;
        } else {
            tracing::warn!(server = %target.config.cluster_url, "the API server is not on this machine: it cannot reach this adapter, so no APIService is registered");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = outcome {
        unregister(&target.client, &registered, false).await;
        let _ = shutdown_tx.send(true);
        return Err(e);
    }

    println!("kube-gpu-metrics standalone: simulated GPU nodes in the cluster at {}\n", target.config.cluster_url);
    for (agent, spec) in agents.iter().zip(&cluster.nodes) {
        let gpus = spec.gpus.len() as u32 * spec.time_slicing;
        println!("  node {:<8} {gpus} × nvidia.com/gpu   agent http://{}/metrics", spec.name, agent.addr);
    }
    println!("  adapter        https://{}   (CA: {})", adapter.addr, args.ca_out.display());
    if !registered.api_services.is_empty() {
        println!("  APIServices    {}", registered.api_services.join(", "));
    }
    println!(
        "\nTry:\n  kubectl apply -f deploy/examples/reasoning-suite-deployment.yaml\n  kubectl get --raw \"/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/*/nvidia_gpu_utilization_percent\"\n"
    );

    super::stop_after(args.duration, &shutdown_tx);
    let nodes = cluster
        .nodes
        .iter()
        .zip(&sims)
        .zip(&apis)
        .map(|((spec, sim), api)| KubeletNode {
            sim: sim.clone(),
            api: api.clone(),
            ip: ip.clone(),
            replicas: spec.time_slicing,
        })
        .collect();
    let kubelets =
        Kubelets::new(KubeletSetup { nodes, scenario, deployments, start: Instant::now() }, target.client.clone());
    let heartbeats =
        tokio::spawn(heartbeats(target.client.clone(), cluster.clone(), sims.clone(), ip.clone(), shutdown.clone()));
    run_kubelets(&target.client, kubelets, &agents, timeline, shutdown.clone()).await;
    let _ = heartbeats.await;
    unregister(&target.client, &registered, args.keep_nodes).await;
    let _ = adapter.done.await;
    for agent in agents {
        let _ = agent.done.await;
    }
    for socket in kubelet_sockets {
        if let Ok(Err(e)) = socket.await {
            tracing::warn!(error = %e, "a simulated kubelet's PodResources socket failed");
        }
    }
    Ok(())
}

async fn heartbeats(
    client: kube::Client,
    cluster: ClusterSpec,
    sims: Vec<Arc<SimNode>>,
    ip: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        }
        for (spec, sim) in cluster.nodes.iter().zip(&sims) {
            if let Err(e) = heartbeat(&client, spec, sim, &ip).await {
                tracing::warn!(node = %spec.name, error = %e, "heartbeat failed; the next one tries again");
            }
        }
    }
}

/// The kubelets' loop: pods and Deployments from watch caches, HPAs read
/// each second; each second the load is served, a timeline row written and
/// the status line printed.
async fn run_kubelets(
    client: &kube::Client,
    mut kubelets: Kubelets,
    agents: &[RunningAgent],
    mut timeline: Option<std::fs::File>,
    mut shutdown: watch::Receiver<bool>,
) {
    use std::io::{IsTerminal, Write};
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_watch = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .for_each(|_| std::future::ready(()));
    let (deployments, deployment_writer) = reflector::store::<Deployment>();
    let deployment_watch = watcher(Api::<Deployment>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(deployment_writer)
        .for_each(|_| std::future::ready(()));
    let hpa_api: Api<DynamicObject> = Api::all_with(client.clone(), &hpa_resource(client).await);
    let tty = std::io::stdout().is_terminal();
    let work = async {
        let _ = tokio::join!(pods.wait_until_ready(), deployments.wait_until_ready());
        if let Some(file) = timeline.as_mut() {
            let _ = file.write_all(report::csv(&[]).as_bytes());
        }
        let mut tick = tokio::time::interval(KUBELET_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_second = None;
        let mut hpas: Vec<HpaView> = Vec::new();
        loop {
            tick.tick().await;
            let state = pods.state();
            kubelets.tick(&state).await;
            let elapsed = kubelets.elapsed();
            if last_second == Some(elapsed.as_secs()) {
                continue;
            }
            last_second = Some(elapsed.as_secs());
            match hpa_api.list(&ListParams::default()).await {
                Ok(list) => hpas = list.items.iter().map(hpa_view).collect(),
                Err(e) => tracing::debug!(error = %e, "cannot list HPAs; the status line keeps the last"),
            }
            let rows = kubelets.serve(elapsed, &state, &deployments, &hpas);
            if let Some(file) = timeline.as_mut() {
                let csv = report::csv(&rows);
                let body = csv.split_once('\n').map_or("", |(_, rest)| rest);
                let _ = file.write_all(body.as_bytes()).and_then(|()| file.flush());
            }
            if tty || elapsed.as_secs() % 10 == 1 {
                let line = status_line(agents, &hpas, &deployments);
                let mut out = std::io::stdout().lock();
                let _ = if tty { write!(out, "\r\x1b[2K{line}") } else { writeln!(out, "{line}") };
                let _ = out.flush();
            }
        }
    };
    tokio::select! {
        _ = pod_watch => {}
        _ = deployment_watch => {}
        _ = work => {}
        _ = crate::shutdown::stopped(&mut shutdown) => {}
    }
    if tty {
        println!();
    }
}

/// `mainpc 4090 47% (1 pods) | pc2 3060 0% (0 pods) | ai-system-gpu/reasoning-gpu-hpa 82/70 → reasoning-suite 2 (1 ready)`.
fn status_line(agents: &[RunningAgent], hpas: &[HpaView], deployments: &reflector::Store<Deployment>) -> String {
    let mut parts = vec![super::status_line(agents)];
    for hpa in hpas {
        let number = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
        let deployment = deployments
            .state()
            .into_iter()
            .find(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()) == hpa.target);
        let (replicas, ready) = deployment.map_or((0, 0), |d| {
            let status = d.status.as_ref();
            (status.and_then(|s| s.replicas).unwrap_or(0), status.and_then(|s| s.ready_replicas).unwrap_or(0))
        });
        let target = hpa.target.split_once('/').map_or(hpa.target.as_str(), |(_, n)| n);
        parts.push(format!(
            "{} {}/{} → {target} {} ({replicas} running, {ready} ready)",
            hpa.name,
            number(hpa.current),
            number(hpa.goal),
            hpa.desired
        ));
    }
    parts.join(" | ")
}

#[cfg(test)]
mod tests;
