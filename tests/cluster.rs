//! The adapter's kube-rs paths against a real kube-apiserver: the watchers of
//! pods, nodes and agent pods, readiness once their caches sync, and
//! SubjectAccessReviews.
//!
//! Ignored by default: they need a cluster. `hack/e2e.sh` runs them against
//! the control plane of `hack/cluster.sh`:
//!
//! ```sh
//! hack/cluster.sh up && eval "$(hack/cluster.sh env)"
//! cargo test --test cluster -- --ignored
//! ```
//!
//! Each test makes its own namespace, node and RBAC objects (named after the
//! process) and removes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube_gpu_metrics::adapter::cluster::{self, AgentDiscovery, ClusterOutputs};
use kube_gpu_metrics::adapter::http::auth::{Attributes, Authorizer, User};
use kube_gpu_metrics::adapter::readiness::Readiness;
use kube_gpu_metrics::adapter::source::agents::AgentTarget;
use kube_gpu_metrics::k8s::labels::{LabelIndex, LabelMaps, Placement};
use serde_json::json;
use tokio::sync::watch;

async fn client() -> kube::Client {
    kube::Client::try_default().await.expect("a cluster: run hack/cluster.sh up and eval \"$(hack/cluster.sh env)\"")
}

/// Polls `check` every 100 ms until it holds; panics naming `what` after 30 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// Creates namespace `name` and waits until its default ServiceAccount has
/// its token: until then kube-apiserver refuses pods there ("No API token
/// found for service account").
async fn namespace(client: &kube::Client, name: &str) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&PostParams::default(), &object(json!({"metadata": {"name": name}}))).await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(account)) = accounts.get_opt("default").await
            && account.secrets.is_some_and(|s| !s.is_empty())
        {
            return;
        }
        assert!(Instant::now() < deadline, "namespace {name}: the default ServiceAccount got no token within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn watchers_follow_pods_nodes_and_agent_pods_and_readiness_waits_for_their_sync() {
    let client = client().await;
    let id = std::process::id();
    let ns = format!("kgm-watch-{id}");
    let node_name = format!("kgm-watch-node-{id}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    namespace(&client, &ns).await;
    nodes
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": node_name, "labels": {"nvidia.com/gpu.present": "true"}}})),
        )
        .await
        .unwrap();

    let readiness = Readiness::default();
    let (targets, targets_rx) = watch::channel(Vec::<AgentTarget>::new());
    let (synced, mut synced_rx) = watch::channel(false);
    let labels = Arc::new(LabelIndex::new(LabelMaps::default()));
    let outputs = ClusterOutputs { targets, labels: labels.clone(), synced };
    let discovery =
        AgentDiscovery { namespace: ns.clone(), selector: "app.kubernetes.io/component=agent".into(), port: 9402 };
    let (stop, shutdown) = watch::channel(false);
    let watchers = tokio::spawn(cluster::run(
        client.clone(),
        Some(discovery),
        vec![AgentTarget::unbound("http://127.0.0.1:1")],
        outputs,
        readiness.clone(),
        shutdown,
    ));

    // Readiness waits for each cache's first list, and names each one.
    tokio::time::timeout(Duration::from_secs(30), synced_rx.wait_for(|s| *s)).await.expect("caches sync").unwrap();
    let (ready, report) = readiness.report();
    assert!(ready, "{report}");
    for cache in ["pods-cache", "nodes-cache", "agent-pods-cache"] {
        assert!(report.contains(&format!("[+]{cache} ok")), "{report}");
    }
    let snapshot = labels.snapshot();
    assert_eq!(snapshot.nodes[&node_name].get("nvidia.com/gpu.present").map(String::as_str), Some("true"));

    // A workload pod bound to the node: its labels and placement arrive.
    let pod = object(json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "none"}]},
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually(
        "the pod's placement in the index",
        || matches!(labels.snapshot().placement(&ns, "web-1"), Placement::On(n) if n == node_name),
    )
    .await;
    assert_eq!(labels.snapshot().pods[&ns]["web-1"].get("app").map(String::as_str), Some("web"));

    // An agent pod becomes a target once it runs with an IP (status written as a kubelet writes it).
    let agent = object(json!({
        "metadata": {"name": "agent-1", "labels": {"app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node_name, "containers": [{"name": "agent", "image": "none"}]},
    }));
    pods.create(&PostParams::default(), &agent).await.unwrap();
    assert!(!targets_rx.borrow().iter().any(|t| t.node.is_some()), "a pending agent pod without an IP is no target");
    let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.9", "podIPs": [{"ip": "127.0.0.9"}]}});
    pods.patch_status("agent-1", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let expected = vec![
        AgentTarget { url: "http://127.0.0.1:1".into(), node: None },
        AgentTarget { url: "http://127.0.0.9:9402".into(), node: Some(node_name.clone()) },
    ];
    eventually("the agent pod as a target bound to its node", || *targets_rx.borrow() == expected).await;

    // Deleted pods leave the index and the targets.
    pods.delete("web-1", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.unwrap();
    pods.delete("agent-1", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.unwrap();
    eventually("the deleted pod gone from the index", || {
        matches!(labels.snapshot().placement(&ns, "web-1"), Placement::Unknown)
    })
    .await;
    eventually("the deleted agent gone from the targets", || targets_rx.borrow().len() == 1).await;

    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), watchers).await.expect("the watchers stop on shutdown").unwrap();
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
    nodes.delete(&node_name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn subject_access_reviews_allow_the_bound_user_and_refuse_others() {
    let client = client().await;
    let id = std::process::id();
    let role = format!("kgm-sar-reader-{id}");
    let reader = format!("kgm-sar-reader-{id}");
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    roles
        .create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": role},
                "rules": [{"apiGroups": ["custom.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list"]}],
            })),
        )
        .await
        .unwrap();
    bindings
        .create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": reader}],
            })),
        )
        .await
        .unwrap();

    // No answer is reused, so each call is a SubjectAccessReview.
    let authorizer = Authorizer::subject_access_review(client.clone(), Duration::ZERO);
    let attrs = Attributes {
        verb: "list",
        group: "custom.metrics.k8s.io",
        version: "v1beta2",
        resource: "pods".into(),
        subresource: "nvidia_gpu_utilization_percent".into(),
        namespace: "ai-system-gpu".into(),
        name: String::new(),
    };
    let user = |name: &str| User { name: name.into(), groups: vec!["system:authenticated".into()] };
    // RBAC's caches take a moment to see the new binding.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = authorizer.authorize(&user(&reader), &attrs).await {
        assert!(Instant::now() < deadline, "the bound user is still refused: {}", e.message);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = authorizer.authorize(&user("kgm-sar-nobody"), &attrs).await.expect_err("an unbound user is refused");
    assert_eq!((refused.code.as_u16(), refused.reason), (403, "Forbidden"));
    assert!(
        refused.message.contains("\"kgm-sar-nobody\"") && refused.message.contains("custom.metrics.k8s.io"),
        "{}",
        refused.message
    );
    // Another verb than the role grants is refused too.
    let watch = Attributes { verb: "watch", ..attrs.clone() };
    assert!(authorizer.authorize(&user(&reader), &watch).await.is_err());

    bindings.delete(&role, &DeleteParams::default()).await.unwrap();
    roles.delete(&role, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_scaled_objects_target_is_read_with_its_selector_and_replicas() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    use kube_gpu_metrics::adapter::keda::target::{ClusterTargets, ScaleTarget};

    let client = client().await;
    let ns = format!("kgm-keda-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespace(&client, &ns).await;
    // KEDA's ScaledObject kind (its schema left open: only what the scaler reads matters here).
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = object(json!({
        "metadata": {"name": "scaledobjects.keda.sh"},
        "spec": {"group": "keda.sh", "scope": "Namespaced",
                 "names": {"plural": "scaledobjects", "singular": "scaledobject", "kind": "ScaledObject"},
                 "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }));
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating the ScaledObject CRD: {e}"),
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = object(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web", "tier": "gpu"}},
                 "template": {"metadata": {"labels": {"app": "web", "tier": "gpu"}},
                              "spec": {"containers": [{"name": "c", "image": "none"}]}}},
    }));
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
    let scaled_objects: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk_with_plural(&gvk, "scaledobjects"));
    let mut scaled_object = DynamicObject::new("web-so", &ApiResource::from_gvk_with_plural(&gvk, "scaledobjects"));
    scaled_object.data = json!({"spec": {"scaleTargetRef": {"name": "web"}}});
    // The CRD takes a moment to be served.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = scaled_objects.create(&PostParams::default(), &scaled_object).await {
        assert!(Instant::now() < deadline, "creating the ScaledObject: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let targets = ClusterTargets::new(client.clone());
    let expected =
        |replicas| ScaleTarget { description: "Deployment web".into(), selector: "app=web,tier=gpu".into(), replicas };
    assert_eq!(targets.target(&ns, "web-so").await, Ok(expected(2)));
    let missing = targets.target(&ns, "no-such-so").await.unwrap_err();
    assert!(missing.contains(&format!("cannot read ScaledObject {ns}/no-such-so")), "{missing}");

    // Scaled to zero (a fresh reader: answers are kept for a few seconds).
    let zero = json!({"spec": {"replicas": 0}});
    deployments.patch_scale("web", &PatchParams::default(), &Patch::Merge(&zero)).await.unwrap();
    assert_eq!(ClusterTargets::new(client.clone()).target(&ns, "web-so").await, Ok(expected(0)));

    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
}
