use super::*;

const REFERENCE: &str = include_str!("../../../deploy/examples/reasoning-gpu-hpa.yaml");

#[tokio::test]
async fn a_recorded_list_replays_to_a_decision() {
    let recorded: serde_json::Value = serde_json::from_str(
        r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":[
        {"describedObject":{"kind":"Pod","namespace":"ai-system-gpu","name":"reasoning-suite-a","apiVersion":"v1"},"metric":{"name":"nvidia_gpu_utilization_percent","selector":null},"timestamp":"2026-11-23T10:00:00Z","windowSeconds":1,"value":"95"},
        {"describedObject":{"kind":"Pod","namespace":"ai-system-gpu","name":"reasoning-suite-b","apiVersion":"v1"},"metric":{"name":"nvidia_gpu_utilization_percent","selector":null},"timestamp":"2026-11-23T10:00:00Z","windowSeconds":1,"value":"87500m"}]}"#,
    )
    .unwrap();
    let hpa = parse_hpa(REFERENCE).unwrap();
    let report =
        preview(&hpa, &MetricsFrom::Recorded(serde_json::to_vec(&recorded).unwrap()), "app=reasoning-suite", Some(2))
            .await
            .unwrap();
    let text = report.join("\n");
    // (95 + 87.5) / 2 = 91.25; 91.25 / 70 = 1.304; ceil(2.607) = 3.
    assert!(text.contains("average 91.25 / target 70 = ratio 1.304"), "{text}");
    assert!(text.contains("decision: 3 replica(s)"), "{text}");
}

const EXTERNAL_LIST: &str = r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":[
    {"metricName":"nvidia_gpu_weighted_utilization_percent","metricLabels":{},"timestamp":"2026-11-23T10:00:00Z","value":"150"}]}"#;

/// A scale-to-zero HPA on the external weighted metric, target 60.
fn overnight() -> HpaSpec {
    parse_hpa(
        &REFERENCE.replace("minReplicas: 1", "minReplicas: 0").replace(
            "  metrics:\n  - type: Pods\n    pods:\n      metric:\n        name: nvidia_gpu_utilization_percent\n      target:\n        type: AverageValue\n        averageValue: \"70\"\n",
            "  metrics:\n  - type: External\n    external:\n      metric: {name: nvidia_gpu_weighted_utilization_percent}\n      target: {type: Value, value: \"60\"}\n",
        ),
    )
    .unwrap()
}

#[tokio::test]
async fn a_scale_to_zero_hpa_is_explained_from_zero_with_the_version_it_needs() {
    let hpa = overnight();
    assert_eq!(hpa.min, 0, "the edit applied");
    let from = MetricsFrom::Recorded(EXTERNAL_LIST.as_bytes().to_vec());
    let text = preview(&hpa, &from, "app=reasoning-suite", Some(0)).await.unwrap().join("\n");
    assert!(text.contains("needs: minReplicas: 0 needs Kubernetes 1.37"), "{text}");
    assert!(text.contains("ScaledToZero=True"), "{text}");
    // 150 / 60 = 2.5 at zero: ceil(2.5) = 3, woken.
    assert!(text.contains("at zero replicas: ceil(2.500) = 3"), "{text}");
    assert!(text.contains("woken from zero to 3 replica(s)"), "{text}");
}

#[tokio::test]
async fn a_tolerance_is_explained_with_the_version_it_needs() {
    let hpa = parse_hpa(&format!("{REFERENCE}  behavior:\n    scaleUp:\n      tolerance: \"0.02\"\n")).unwrap();
    let recorded = r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":[
        {"describedObject":{"kind":"Pod","namespace":"ai-system-gpu","name":"reasoning-suite-a","apiVersion":"v1"},"metric":{"name":"nvidia_gpu_utilization_percent","selector":null},"timestamp":"2026-11-23T10:00:00Z","windowSeconds":1,"value":"73"}]}"#;
    let from = MetricsFrom::Recorded(recorded.as_bytes().to_vec());
    let text = preview(&hpa, &from, "app=reasoning-suite", None).await.unwrap().join("\n");
    assert!(text.contains("needs: behavior.*.tolerance needs Kubernetes 1.35"), "{text}");
    assert!(text.contains("no scale-up while ≤ 1.02"), "{text}");
    // 73 / 70 = 1.043: past a 2 % scale-up tolerance (the default 10 % would hold it).
    assert!(text.contains("decision: 2 replica(s)"), "{text}");
}
