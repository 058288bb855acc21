use kube::api::DynamicObject;
use serde_json::json;

use super::*;

/// An HPA as kube-apiserver v1.20 serves it (autoscaling/v2beta2), mid-scale.
fn v2beta2() -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "reasoning-gpu-hpa", "namespace": "ai-system-gpu"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "reasoning-suite"},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": "nvidia_gpu_utilization_percent"},
                                                  "target": {"type": "AverageValue", "averageValue": "70"}}}],
        },
        "status": {
            "currentReplicas": 1, "desiredReplicas": 2,
            "currentMetrics": [{"type": "Pods", "pods": {"metric": {"name": "nvidia_gpu_utilization_percent"},
                                                         "current": {"averageValue": "95500m"}}}],
        },
    }))
    .unwrap()
}

#[test]
fn an_hpas_view_reads_its_first_metric_and_desired_replicas() {
    let view = hpa_view(&v2beta2());
    assert_eq!(view.name, "ai-system-gpu/reasoning-gpu-hpa");
    assert_eq!(view.target, "ai-system-gpu/reasoning-suite");
    assert_eq!((view.current, view.goal, view.desired), (Some(95.5), Some(70.0), 2));
}

#[test]
fn an_hpa_that_has_not_synced_has_no_current_value() {
    let mut fresh = v2beta2();
    fresh.data["status"] = json!({"currentReplicas": 0, "desiredReplicas": 0});
    let view = hpa_view(&fresh);
    assert_eq!((view.current, view.goal, view.desired), (None, Some(70.0), 0));
}

#[tokio::test]
async fn only_a_loopback_api_server_is_local() {
    let local = |url: &str| {
        let config = kube::Config::new(url.parse().unwrap());
        Target { path: "k".into(), user: "u".into(), client: kube::Client::try_from(config.clone()).unwrap(), config }
            .local()
    };
    assert!(local("https://127.0.0.1:16443"));
    assert!(local("https://localhost:6443"));
    assert!(local("https://[::1]:6443"));
    assert!(!local("https://10.0.0.5:6443"));
    assert!(!local("https://k3s.example:6443"));
}
