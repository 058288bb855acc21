use super::*;

const REFERENCE: &str = include_str!("../../../deploy/examples/reasoning-gpu-hpa.yaml");

#[test]
fn the_reference_hpa_parses() {
    let hpa = parse_hpa(REFERENCE).unwrap();
    assert_eq!(
        (hpa.name.as_str(), hpa.namespace.as_str(), hpa.target_name.as_str()),
        ("reasoning-gpu-hpa", "ai-system-gpu", "reasoning-suite")
    );
    assert_eq!((hpa.min, hpa.max), (1, 3));
    assert_eq!(hpa.metrics, [MetricSpec::Pods { name: "nvidia_gpu_utilization_percent".into(), target: 70.0 }]);
    assert_eq!(hpa.behavior, Behavior::default());
}

#[test]
fn behavior_overrides_fill_in_from_defaults() {
    let with_behavior = format!(
        "{REFERENCE}  behavior:\n    scaleUp:\n      stabilizationWindowSeconds: 60\n    scaleDown:\n      stabilizationWindowSeconds: 300\n      policies:\n      - type: Pods\n        value: 1\n        periodSeconds: 60\n"
    );
    let hpa = parse_hpa(&with_behavior).unwrap();
    assert_eq!(hpa.behavior.up.window, std::time::Duration::from_secs(60));
    assert_eq!(hpa.behavior.up.policies, Behavior::default().up.policies);
    assert_eq!(hpa.behavior.down.policies, [Policy::Pods(1, std::time::Duration::from_secs(60))]);
}

#[test]
fn bad_manifests_are_refused_with_the_reason() {
    assert!(parse_hpa("kind: HorizontalPodAutoscaler\nspec: [").is_err());
    assert!(
        parse_hpa("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: x}\n")
            .unwrap_err()
            .contains("spec")
    );
}

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
