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
