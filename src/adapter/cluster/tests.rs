use super::*;
use crate::adapter::source::agents::AgentTarget;
use crate::k8s::labels::Placement;

/// A recorded `kubectl get cm -n kube-system extension-apiserver-authentication -o json`
/// data section, from a k3s server.
const RECORDED: &str = r#"{
  "client-ca-file": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
  "requestheader-allowed-names": "[\"system:auth-proxy\"]",
  "requestheader-client-ca-file": "-----BEGIN CERTIFICATE-----\nMIIBdz\n-----END CERTIFICATE-----\n",
  "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
  "requestheader-group-headers": "[\"X-Remote-Group\"]",
  "requestheader-username-headers": "[\"X-Remote-User\"]"
}"#;

#[test]
fn the_configmap_gives_the_front_proxy_settings() {
    let data: std::collections::BTreeMap<String, String> = serde_json::from_str(RECORDED).unwrap();
    let config = request_header_config(&data).unwrap();
    assert!(config.client_ca.contains("MIIBdz"));
    assert_eq!(config.allowed_names, ["system:auth-proxy"]);
    assert_eq!(config.username_headers, ["X-Remote-User"]);
    assert_eq!(config.group_headers, ["X-Remote-Group"]);

    let mut without_ca = data.clone();
    without_ca.remove("requestheader-client-ca-file");
    assert!(matches!(request_header_config(&without_ca), Err(FrontProxyError::NoCa)));
}

#[test]
fn only_running_agents_with_an_ip_are_polled() {
    let pod = |ip: Option<&str>, phase: &str, node: Option<&str>| -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "agent", "namespace": "kube-gpu-metrics"},
                "spec": {"containers": [], "nodeName": node},
                "status": {"phase": phase, "podIP": ip},
            }))
            .unwrap(),
        )
    };
    let pods = [
        pod(Some("10.42.0.7"), "Running", Some("mainpc")),
        pod(None, "Pending", None),
        pod(Some("fd00::7"), "Running", Some("pc2")),
        pod(Some("10.42.1.9"), "Failed", Some("pc2")),
        pod(Some("10.42.1.10"), "Running", None),
    ];
    let bound = |url: &str, node: &str| AgentTarget { url: url.into(), node: Some(node.into()) };
    assert_eq!(
        agent_targets(&pods, 9402),
        [bound("http://10.42.0.7:9402", "mainpc"), bound("http://[fd00::7]:9402", "pc2")]
    );
}

/// A kube client whose apiserver answers lists from recorded responses and
/// holds watches open.
fn recorded_cluster() -> kube::Client {
    let service = tower::service_fn(|req: http::Request<kube::client::Body>| async move {
        let uri = req.uri().to_string();
        if uri.contains("watch=true") {
            // Nothing changes during the test.
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
        let body = if uri.starts_with("/api/v1/namespaces/kube-gpu-metrics/pods") {
            assert!(uri.contains("labelSelector=app.kubernetes.io%2Fcomponent%3Dagent"), "{uri}");
            serde_json::json!({
                "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "41"},
                "items": [
                    {"metadata": {"name": "agent-mainpc", "namespace": "kube-gpu-metrics", "labels": {"app.kubernetes.io/component": "agent"}},
                     "spec": {"nodeName": "mainpc", "containers": [{"name": "agent", "image": "kube-gpu-metrics"}]},
                     "status": {"phase": "Running", "podIP": "10.42.0.7"}},
                    {"metadata": {"name": "agent-pc2", "namespace": "kube-gpu-metrics", "labels": {"app.kubernetes.io/component": "agent"}},
                     "spec": {"nodeName": "pc2", "containers": [{"name": "agent", "image": "kube-gpu-metrics"}]},
                     "status": {"phase": "Running", "podIP": "10.42.1.3"}}
                ]
            })
        } else if uri.starts_with("/api/v1/pods") {
            serde_json::json!({
                "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "42"},
                "items": [{"metadata": {
                    "name": "reasoning-suite-7d9f8b6c4-x2k9p", "namespace": "ai-system-gpu",
                    "labels": {"app": "reasoning-suite", "pod-template-hash": "7d9f8b6c4"},
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-23T10:00:00Z"},
                    "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}]
                  },
                  "spec": {"nodeName": "pc2", "containers": [{"name": "model", "image": "vllm", "env": [{"name": "TOKEN", "value": "x"}]}]},
                  "status": {"phase": "Running", "podIP": "10.42.1.20"}
                }]
            })
        } else if uri.starts_with("/api/v1/nodes") {
            serde_json::json!({
                "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "43"},
                "items": [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {
                    "name": "pc2", "labels": {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3060"}
                }}]
            })
        } else {
            panic!("unexpected request {uri}");
        };
        let body = kube::client::Body::from(serde_json::to_vec(&body).unwrap());
        Ok::<_, std::convert::Infallible>(http::Response::builder().status(200).body(body).unwrap())
    });
    kube::Client::new(service, "default")
}

fn discovery() -> AgentDiscovery {
    AgentDiscovery {
        namespace: "kube-gpu-metrics".into(),
        selector: "app.kubernetes.io/component=agent".into(),
        port: 9402,
    }
}

#[tokio::test]
async fn agents_labels_and_placements_come_from_the_cluster() {
    let labels = Arc::new(LabelIndex::default());
    let (targets, mut targets_rx) = watch::channel(Vec::new());
    let (synced, mut synced_rx) = watch::channel(false);
    let (stop, shutdown) = watch::channel(false);
    let readiness = Readiness::default();
    let outputs = ClusterOutputs { targets, labels: labels.clone(), synced };
    let statics = vec![AgentTarget::unbound("http://10.0.0.9:9402")];
    let task = tokio::spawn(run(recorded_cluster(), Some(discovery()), statics, outputs, readiness.clone(), shutdown));
    tokio::time::timeout(Duration::from_secs(10), synced_rx.wait_for(|s| *s)).await.unwrap().unwrap();
    assert!(readiness.is_ready(), "{}", readiness.report().1);
    let bound = |url: &str, node: &str| AgentTarget { url: url.into(), node: Some(node.into()) };
    targets_rx.mark_changed();
    assert_eq!(
        *targets_rx.borrow_and_update(),
        [
            AgentTarget::unbound("http://10.0.0.9:9402"),
            bound("http://10.42.0.7:9402", "mainpc"),
            bound("http://10.42.1.3:9402", "pc2")
        ]
    );
    let maps = labels.snapshot();
    let pod = &maps.pods["ai-system-gpu"]["reasoning-suite-7d9f8b6c4-x2k9p"];
    assert_eq!(pod.get("app").map(String::as_str), Some("reasoning-suite"));
    assert_eq!(maps.placement("ai-system-gpu", "reasoning-suite-7d9f8b6c4-x2k9p"), Placement::On("pc2"));
    assert_eq!(maps.placement("ai-system-gpu", "elsewhere"), Placement::Unknown);
    assert_eq!(maps.nodes["pc2"].get("nvidia.com/gpu.product").map(String::as_str), Some("NVIDIA-GeForce-RTX-3060"));
    // Shutdown ends every watcher.
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_list_that_keeps_failing_shows_in_readiness_and_nothing_is_published() {
    let service = tower::service_fn(|req: http::Request<kube::client::Body>| async move {
        let uri = req.uri().to_string();
        let (code, body) = if uri.starts_with("/api/v1/pods") {
            (
                403,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": "pods is forbidden: User \"system:serviceaccount:kube-gpu-metrics:adapter\" cannot list resource \"pods\""}),
            )
        } else {
            (
                200,
                serde_json::json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"}, "items": []}),
            )
        };
        if uri.contains("watch=true") {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
        let body = kube::client::Body::from(serde_json::to_vec(&body).unwrap());
        Ok::<_, std::convert::Infallible>(http::Response::builder().status(code).body(body).unwrap())
    });
    let client = kube::Client::new(service, "default");
    let (targets, _targets_rx) = watch::channel(Vec::new());
    let (synced, synced_rx) = watch::channel(false);
    let (_stop, shutdown) = watch::channel(false);
    let readiness = Readiness::default();
    let outputs = ClusterOutputs { targets, labels: Arc::new(LabelIndex::default()), synced };
    let task = tokio::spawn(run(client, None, Vec::new(), outputs, readiness.clone(), shutdown));
    let failed = async {
        loop {
            let (_, report) = readiness.report();
            if report.contains("[-]pods-cache failed: list failed") && report.contains("[+]nodes-cache ok") {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let report = tokio::time::timeout(Duration::from_secs(10), failed).await.unwrap();
    assert!(report.contains("forbidden"), "{report}");
    assert!(!*synced_rx.borrow());
    task.abort();
}
