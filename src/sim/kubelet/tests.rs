use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;
use crate::twin::engine::{PodLoad, spread};

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("a valid pod")
}

/// A pod of Deployment `reasoning-suite`, as its ReplicaSet makes it.
fn replica(containers: serde_json::Value) -> Pod {
    pod(json!({
        "metadata": {
            "name": "reasoning-suite-6d9f7c8b5d-x2x7q", "namespace": "ai-system-gpu", "uid": "1234-5678",
            "labels": {"app": "reasoning-suite", "pod-template-hash": "6d9f7c8b5d"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reasoning-suite-6d9f7c8b5d",
                                  "uid": "rs", "controller": true}],
        },
        "spec": {"containers": containers, "nodeName": "mainpc"},
    }))
}

#[test]
fn a_pod_belongs_to_the_deployment_its_replicaset_is_named_after() {
    let p = replica(json!([{"name": "main"}]));
    assert_eq!(deployment_of(&p).as_deref(), Some("ai-system-gpu/reasoning-suite"));
    let bare = pod(json!({"metadata": {"name": "solo", "namespace": "default"}}));
    assert_eq!(deployment_of(&bare), None, "no owner: no Deployment");
    let job = pod(json!({"metadata": {"name": "j", "namespace": "default", "labels": {"pod-template-hash": "x"},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u", "controller": true}]}}));
    assert_eq!(deployment_of(&job), None, "a Job's pod is not a Deployment's");
}

#[test]
fn gpus_are_counted_from_the_limit_or_else_the_request() {
    let p = replica(json!([
        {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "2"}}},
        {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}}},
        {"name": "c", "resources": {"requests": {"cpu": "1"}}},
        {"name": "d"},
    ]));
    let wanted: Vec<u32> = p.spec.unwrap().containers.iter().map(gpus_wanted).collect();
    assert_eq!(wanted, [2, 1, 0, 0]);
}

#[test]
fn startup_comes_from_the_probe_then_the_deployments_file_then_the_default() {
    let probed =
        replica(json!([{"name": "m", "readinessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 12}}]));
    let plain = replica(json!([{"name": "m"}]));
    let file: Vec<DeploymentSpec> =
        serde_yaml_ng::from_str("- {name: reasoning-suite, startup: 20s}").expect("a deployments list");
    assert_eq!(startup_of(&probed, &file), Duration::from_secs(12));
    assert_eq!(startup_of(&plain, &file), Duration::from_secs(20));
    let qualified: Vec<DeploymentSpec> =
        serde_yaml_ng::from_str("- {name: ai-system-gpu/reasoning-suite, startup: 7s}").expect("a deployments list");
    assert_eq!(startup_of(&plain, &qualified), Duration::from_secs(7));
    assert_eq!(startup_of(&plain, &[]), DEFAULT_STARTUP);
}

#[test]
fn a_scenario_names_a_deployment_by_name_or_namespace_and_name() {
    let scenario = Scenario::parse(
        "workloads:\n  reasoning-suite: [{load: 40}]\n  other/vision: [{load: 10}]\n",
        std::path::Path::new("s.yaml"),
    )
    .unwrap();
    assert_eq!(scenario_key(&scenario, "ai-system-gpu/reasoning-suite"), Some("reasoning-suite"));
    assert_eq!(scenario_key(&scenario, "other/vision"), Some("other/vision"));
    assert_eq!(scenario_key(&scenario, "elsewhere/vision"), None, "a qualified name is that namespace's only");
}

#[test]
fn a_running_pod_reports_every_container_and_is_ready_only_when_told() {
    let p = replica(json!([{"name": "a", "image": "cuda"}, {"name": "b"}]));
    let starting = running_status(&p, "127.0.0.1", "2026-12-07T20:00:00Z", false);
    let status = &starting["status"];
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["podIP"], "127.0.0.1");
    assert_eq!(status["containerStatuses"].as_array().unwrap().len(), 2);
    assert_eq!(status["containerStatuses"][0]["ready"], false);
    let ready = |s: &serde_json::Value| {
        s["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()["status"].clone()
    };
    assert_eq!(ready(&starting), "False");
    assert_eq!(ready(&running_status(&p, "127.0.0.1", "2026-12-07T20:00:00Z", true)), "True");
    let parsed: Pod = pod(json!({"metadata": {"name": "x"}, "status": starting["status"]}));
    assert_eq!(parsed.status.unwrap().container_statuses.unwrap()[1].name, "b", "the status is a valid PodStatus");
}

#[test]
fn a_rejected_pod_fails_with_the_kubelets_reason() {
    let status = rejected_status(2, 1);
    assert_eq!(status["status"]["phase"], "Failed");
    assert_eq!(status["status"]["reason"], "UnexpectedAdmissionError");
    assert!(status["status"]["message"].as_str().unwrap().contains("Requested: 2, Available: 1"));
}

#[test]
fn demand_spreads_over_ready_pods_and_what_a_gpu_cannot_serve_is_unserved() {
    // A 4090 (1.0) and a 3060 (about a third of it), 150 % of a 4090 asked for over two ready pods.
    let capacities = [1.0, 0.3];
    let pods = [
        PodLoad { demand: 0, gpu: Some(0), ready: true },
        PodLoad { demand: 0, gpu: Some(1), ready: true },
        PodLoad { demand: 0, gpu: Some(1), ready: false },
    ];
    let served = spread(&[150.0], &pods, &capacities);
    assert_eq!(served.pods[0], (75.0, 0.0), "75 % of the 4090's time");
    let (utilization, unserved) = served.pods[1];
    assert_eq!(utilization, 100.0, "the 3060 is saturated");
    assert!((unserved - 45.0).abs() < 1e-9, "75 asked, 30 served: {unserved}");
    assert_eq!(served.pods[2], (0.0, 0.0), "a starting pod gets no work");
    assert_eq!(served.idle, [0.0]);
    let nobody = spread(&[40.0], &[PodLoad { demand: 0, gpu: None, ready: false }], &capacities);
    assert_eq!(nobody.idle, [40.0], "no ready pod: all of it is unserved");
    assert_eq!(nobody.gpus, [0.0, 0.0]);
}
