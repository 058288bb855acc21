use serde_json::Value;

use kube::core::SelectorExt;

use super::*;
use crate::adapter::fixtures::{T0_MS, feed, labels, now, provider};
use crate::k8s::labels::LabelMaps;
use routes::route;

fn api() -> Provider {
    let feeds = [
        feed(
            "mainpc",
            "NVIDIA GeForce RTX 4090",
            T0_MS,
            &[("reasoning-suite-a", 42.5), ("coordination-suite-b", 10.0)],
        ),
        feed("pc2", "NVIDIA GeForce RTX 3060", T0_MS, &[("reasoning-suite-c", 80.0)]),
        // An agent whose last feed is 10 s old: its pods must not be served.
        feed("stale", "NVIDIA GeForce RTX 4090", T0_MS - 10_000, &[("reasoning-suite-old", 99.0)]),
    ];
    let mut maps = LabelMaps::default();
    let pods = maps.pods.entry("ai-system-gpu".into()).or_default();
    pods.insert("reasoning-suite-a".into(), labels(&[("app", "reasoning-suite"), ("tier", "gpu")]));
    pods.insert("reasoning-suite-c".into(), labels(&[("app", "reasoning-suite")]));
    pods.insert("reasoning-suite-old".into(), labels(&[("app", "reasoning-suite")]));
    pods.insert("coordination-suite-b".into(), labels(&[("app", "coordination-suite")]));
    maps.nodes.insert("mainpc".into(), labels(&[("nvidia.com/gpu.product", "NVIDIA-GeForce-RTX-4090")]));
    maps.nodes.insert("pc2".into(), labels(&[("nvidia.com/gpu.product", "NVIDIA-GeForce-RTX-3060")]));
    provider(&feeds, maps)
}

fn get(api: &Provider, path_and_query: &str) -> Result<Value, ApiError> {
    let (path, query) = path_and_query.split_once('?').map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let body = respond(api, &route(path)?, &Query::parse(query)?, now())?;
    Ok(serde_json::from_slice(&body).unwrap())
}

/// The names of a list answer's described objects, in order.
fn item_names(body: &Value) -> Vec<&str> {
    body["items"].as_array().unwrap().iter().map(|i| i["describedObject"]["name"].as_str().unwrap()).collect()
}

const PODS_V2: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods";

#[test]
fn the_hpa_query_returns_fresh_selected_pods_in_v1beta2() {
    let body =
        get(&api(), &format!("{PODS_V2}/%2A/nvidia_gpu_utilization_percent?labelSelector=app%3Dreasoning-suite"))
            .unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "kind": "MetricValueList",
            "apiVersion": "custom.metrics.k8s.io/v1beta2",
            "metadata": {},
            "items": [
                {
                    "describedObject": {"kind": "Pod", "namespace": "ai-system-gpu", "name": "reasoning-suite-a", "apiVersion": "v1"},
                    "metric": {"name": "nvidia_gpu_utilization_percent", "selector": null},
                    "timestamp": "2026-11-23T10:33:20Z",
                    "windowSeconds": 1,
                    "value": "42500m"
                },
                {
                    "describedObject": {"kind": "Pod", "namespace": "ai-system-gpu", "name": "reasoning-suite-c", "apiVersion": "v1"},
                    "metric": {"name": "nvidia_gpu_utilization_percent", "selector": null},
                    "timestamp": "2026-11-23T10:33:20Z",
                    "windowSeconds": 1,
                    "value": "80"
                }
            ]
        })
    );
}

#[test]
fn v1beta1_items_are_flat() {
    let body = get(&api(), "/apis/custom.metrics.k8s.io/v1beta1/namespaces/ai-system-gpu/pods/reasoning-suite-a/nvidia_gpu_utilization_percent").unwrap();
    assert_eq!(
        body["items"][0],
        serde_json::json!({
            "describedObject": {"kind": "Pod", "namespace": "ai-system-gpu", "name": "reasoning-suite-a", "apiVersion": "v1"},
            "metricName": "nvidia_gpu_utilization_percent",
            "timestamp": "2026-11-23T10:33:20Z",
            "window": 1,
            "value": "42500m",
            "selector": null
        })
    );
    assert_eq!(body["apiVersion"], "custom.metrics.k8s.io/v1beta1");
}

#[test]
fn selectors_of_every_kind_pick_pods() {
    let api = api();
    let names = |q: &str| -> Vec<String> {
        let body = get(&api, &format!("{PODS_V2}/*/nvidia_gpu_utilization_percent?labelSelector={q}")).unwrap();
        item_names(&body).into_iter().map(str::to_string).collect()
    };
    assert_eq!(names("tier"), ["reasoning-suite-a"]);
    assert_eq!(names("app+in+(coordination-suite,other)"), ["coordination-suite-b"]);
    assert_eq!(names("app%21%3Dreasoning-suite"), ["coordination-suite-b"]);
    assert_eq!(names("%21tier,app%3D%3Dreasoning-suite"), ["reasoning-suite-c"]);
    assert_eq!(names("app+notin+(reasoning-suite)"), ["coordination-suite-b"]);
    assert_eq!(names(""), ["coordination-suite-b", "reasoning-suite-a", "reasoning-suite-c"]);
}

#[test]
fn stale_values_are_never_served() {
    let api = api();
    let err = get(&api, &format!("{PODS_V2}/reasoning-suite-old/nvidia_gpu_utilization_percent")).unwrap_err();
    assert_eq!(err.code, 404);
    let body = get(&api, "/apis/custom.metrics.k8s.io/v1beta2/nodes/*/nvidia_gpu_utilization_percent").unwrap();
    assert_eq!(item_names(&body), ["mainpc", "pc2"]);
}

#[test]
fn nodes_namespaces_and_external_metrics() {
    let api = api();
    let node =
        get(&api, "/apis/custom.metrics.k8s.io/v1beta2/nodes/pc2/nvidia_gpu_weighted_utilization_percent").unwrap();
    assert_eq!(
        node["items"][0]["describedObject"],
        serde_json::json!({"kind": "Node", "name": "pc2", "apiVersion": "v1"})
    );
    // 60 % of a 3060 is 60 × 12.7 / 82.6 of a 4090.
    assert_eq!(node["items"][0]["value"], "9225m");

    let ns = get(
        &api,
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/metrics/nvidia_gpu_utilization_percent",
    )
    .unwrap();
    assert_eq!(ns["items"][0]["describedObject"]["kind"], "Namespace");
    assert_eq!(ns["items"][0]["value"], "44167m"); // mean of 42.5, 10, 80, rounded to milli

    let external = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default";
    let pool = get(&api, &format!("{external}/nvidia_gpu_utilization_percent")).unwrap();
    assert_eq!(pool["kind"], "ExternalMetricValueList");
    assert_eq!(pool["items"][0]["value"], "60");
    assert_eq!(pool["items"][0]["metricName"], "nvidia_gpu_utilization_percent");
    // Capacity-weighted: (60×1 + 60×0.1538) / (1 + 0.1538) = 60 % of the pool's compute.
    let weighted = get(&api, &format!("{external}/nvidia_gpu_weighted_utilization_percent")).unwrap();
    assert_eq!(weighted["items"][0]["value"], "60");
    let one = get(
        &api,
        &format!(
            "{external}/nvidia_gpu_memory_used_bytes?labelSelector=nvidia.com%2Fgpu.product%3DNVIDIA-GeForce-RTX-3060"
        ),
    )
    .unwrap();
    assert_eq!(one["items"][0]["value"], (8u64 << 30).to_string());
    let none = get(&api, &format!("{external}/nvidia_gpu_utilization_percent?labelSelector=pool%3Dnone")).unwrap();
    assert_eq!(none["items"], serde_json::json!([]));
}

#[test]
fn errors_have_the_right_codes_and_say_why() {
    let api = api();
    let cases = [
        (format!("{PODS_V2}/*/cpu_usage"), 404, "served metrics"),
        (format!("{PODS_V2}/*/nvidia_gpu_utilization_percent?labelSelector=app%3D%3D%3Dx"), 400, "labelSelector"),
        (format!("{PODS_V2}/*/nvidia_gpu_utilization_percent?metricLabelSelector=a+in+b"), 400, "metricLabelSelector"),
        (format!("{PODS_V2}/missing/nvidia_gpu_utilization_percent"), 404, "ai-system-gpu/missing"),
        ("/apis/custom.metrics.k8s.io/v2/nodes/*/nvidia_gpu_utilization_percent".into(), 404, "v2"),
        ("/apis/metrics.k8s.io/v1beta1/nodes".into(), 404, "not served"),
        ("/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns/services/*/m".into(), 404, "only pods"),
        (format!("{PODS_V2}/..%2F..%2Fsecrets/nvidia_gpu_utilization_percent"), 404, "invalid name"),
        (format!("{PODS_V2}/%2E%2E/nvidia_gpu_utilization_percent"), 404, "invalid name"),
        (format!("{PODS_V2}/a%00b/nvidia_gpu_utilization_percent"), 404, "invalid name"),
        (format!("{PODS_V2}/%FF/nvidia_gpu_utilization_percent"), 404, "invalid"),
        (
            "/apis/custom.metrics.k8s.io/v1beta2/nodes/nowhere/nvidia_gpu_utilization_percent".into(),
            404,
            "nodes nowhere",
        ),
        (
            format!("{PODS_V2}/*/nvidia_gpu_utilization_percent?labelSelector={}", "a".repeat(9000)),
            400,
            "query string longer",
        ),
    ];
    for (path, code, needle) in cases {
        let err = get(&api, &path).unwrap_err();
        assert_eq!(err.code.as_u16(), code, "{path}: {err:?}");
        assert!(err.message.contains(needle), "{path}: {}", err.message);
        let status: Value = serde_json::from_slice(&err.to_body()).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["code"], code);
    }
}

#[test]
fn an_empty_store_answers_404_or_empty_lists_never_500() {
    let api = provider(&[], LabelMaps::default());
    let list = get(&api, &format!("{PODS_V2}/*/nvidia_gpu_utilization_percent")).unwrap();
    assert_eq!(list["items"], serde_json::json!([]));
    assert_eq!(get(&api, &format!("{PODS_V2}/p/nvidia_gpu_utilization_percent")).unwrap_err().code, 404);
    let ns = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/x/metrics/nvidia_gpu_utilization_percent";
    assert_eq!(get(&api, ns).unwrap_err().code, 404);
    let external =
        get(&api, "/apis/external.metrics.k8s.io/v1beta1/namespaces/d/nvidia_gpu_utilization_percent").unwrap();
    assert_eq!(external["items"], serde_json::json!([]));
}

#[test]
fn discovery_documents_list_every_metric_on_every_resource() {
    let api = api();
    let apis = get(&api, "/apis").unwrap();
    assert_eq!(apis["kind"], "APIGroupList");
    assert_eq!(apis["groups"][0]["preferredVersion"]["groupVersion"], "custom.metrics.k8s.io/v1beta2");
    assert_eq!(apis["groups"][1]["name"], "external.metrics.k8s.io");
    let group = get(&api, "/apis/custom.metrics.k8s.io").unwrap();
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["versions"].as_array().unwrap().len(), 2);
    for version in ["v1beta1", "v1beta2"] {
        let list = get(&api, &format!("/apis/custom.metrics.k8s.io/{version}")).unwrap();
        assert_eq!(list["groupVersion"], format!("custom.metrics.k8s.io/{version}"));
        let resources = list["resources"].as_array().unwrap();
        assert_eq!(resources.len(), 12);
        let pods = resources.iter().find(|r| r["name"] == "pods/nvidia_gpu_utilization_percent").unwrap();
        assert_eq!(pods["namespaced"], true);
        assert_eq!(pods["kind"], "MetricValueList");
        assert_eq!(pods["verbs"], serde_json::json!(["get"]));
        assert!(
            resources
                .iter()
                .any(|r| r["name"] == "nodes/nvidia_gpu_weighted_utilization_percent" && r["namespaced"] == false)
        );
        assert!(resources.iter().any(|r| r["name"] == "namespaces/nvidia_gpu_memory_used_bytes"));
    }
    let external = get(&api, "/apis/external.metrics.k8s.io/v1beta1").unwrap();
    assert_eq!(external["resources"][0]["kind"], "ExternalMetricValueList");
    assert_eq!(get(&api, "/openapi/v2").unwrap()["swagger"], "2.0");
    assert_eq!(get(&api, "/openapi/v3").unwrap(), serde_json::json!({"paths": {}}));
}

/// The label index only narrows where to look: over many pods and every
/// kind of selector, the answer is the pods a full scan would select.
#[test]
fn indexed_and_scanned_selection_agree() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut maps = LabelMaps::default();
    let mut pods = Vec::new();
    let namespace = maps.pods.entry("ai-system-gpu".into()).or_default();
    for i in 0..300 {
        let name = format!("pod-{i:03}");
        let mut l = labels(&[("app", ["a", "b", "c"][rng.usize(0..3)])]);
        if rng.bool() {
            l.insert("tier".into(), ["x", "y"][rng.usize(0..2)].into());
        }
        if rng.u8(0..10) == 0 {
            l.insert("canary".into(), "true".into());
        }
        // Some pods have values but no known labels, some labels but no values.
        if i % 17 != 0 {
            namespace.insert(name.clone(), l);
        }
        if i % 13 != 0 {
            pods.push((name, f64::from(i % 100)));
        }
    }
    let known = namespace.clone();
    let pods: Vec<(&str, f64)> = pods.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let api = provider(&[feed("mainpc", "NVIDIA GeForce RTX 4090", T0_MS, &pods)], maps);
    for selector in [
        "app=a",
        "app==b,tier!=x",
        "app in (a,c),!canary",
        "tier=y,app=b",
        "app in (a,b),tier in (x)",
        "app=nope",
        "app=a,app=b",
        "!canary",
        "tier",
        "app notin (a)",
    ] {
        let query = form_urlencoded::Serializer::new(String::new()).append_pair("labelSelector", selector).finish();
        let body = get(&api, &format!("{PODS_V2}/*/nvidia_gpu_utilization_percent?{query}")).unwrap();
        let got = item_names(&body);
        let parsed = crate::k8s::selector::parse_selector(selector).unwrap();
        let mut want: Vec<&str> =
            pods.iter().map(|(n, _)| *n).filter(|n| known.get(*n).is_some_and(|l| parsed.matches(l))).collect();
        want.sort_unstable();
        assert_eq!(got, want, "{selector}");
    }
}

/// Our metrics carry no labels: a v1beta2 metric selector that needs one
/// matches nothing (an empty list, a 404 by name); an empty one, or v1beta1,
/// which has no metric selector, changes nothing.
#[test]
fn a_metric_label_selector_that_needs_a_label_matches_nothing() {
    let api = api();
    let needs = "metricLabelSelector=gpu%3D0";
    let list = get(&api, &format!("{PODS_V2}/*/nvidia_gpu_utilization_percent?{needs}")).unwrap();
    assert_eq!(list["items"], serde_json::json!([]));
    let one = get(&api, &format!("{PODS_V2}/reasoning-suite-a/nvidia_gpu_utilization_percent?{needs}"));
    assert_eq!(one.unwrap_err().code, 404);
    let nodes =
        get(&api, &format!("/apis/custom.metrics.k8s.io/v1beta2/nodes/*/nvidia_gpu_utilization_percent?{needs}"));
    assert_eq!(nodes.unwrap()["items"], serde_json::json!([]));
    let absent =
        get(&api, &format!("{PODS_V2}/reasoning-suite-a/nvidia_gpu_utilization_percent?metricLabelSelector=!gpu"));
    assert_eq!(item_names(&absent.unwrap()), ["reasoning-suite-a"]);
    let v1 = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/ai-system-gpu/pods/reasoning-suite-a/nvidia_gpu_utilization_percent";
    assert_eq!(item_names(&get(&api, &format!("{v1}?{needs}")).unwrap()), ["reasoning-suite-a"]);
}
