use super::*;
use crate::hpa::Tolerances;

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

/// The reference HPA with `from` replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    assert!(REFERENCE.contains(from), "{from}");
    REFERENCE.replace(from, to)
}

/// The reference HPA with a `behavior` section.
fn with_behavior(behavior: &str) -> String {
    format!("{REFERENCE}  behavior:\n{behavior}")
}

#[test]
fn what_kube_apiserver_refuses_is_refused_with_its_field_path() {
    let cases: Vec<(String, &str)> = vec![
        (
            edited("minReplicas: 1", "minReplicas: 5").replace("maxReplicas: 3", "maxReplicas: 2"),
            "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`",
        ),
        (edited("maxReplicas: 3", "maxReplicas: 0"), "spec.maxReplicas: Invalid value: 0: must be greater than 0"),
        (
            edited("minReplicas: 1", "minReplicas: -2"),
            "spec.minReplicas: Invalid value: -2: must be greater than or equal to 0",
        ),
        (
            edited("minReplicas: 1", "minReplicas: 0"),
            "spec.minReplicas: Forbidden: must specify at least one Object or External metric to support scaling to zero replicas",
        ),
        (
            with_behavior("    scaleDown:\n      tolerance: \"-0.05\"\n"),
            "spec.behavior.scaleDown.tolerance: Invalid value: \"-0.05\": must be greater than or equal to 0",
        ),
        (
            with_behavior("    scaleUp:\n      tolerance: ten\n"),
            "spec.behavior.scaleUp.tolerance: Invalid value: \"ten\"",
        ),
        (
            edited("averageValue: \"70\"", "averageValue: \"0\""),
            "spec.metrics[0].pods.target.averageValue: Invalid value: \"0\": must be positive",
        ),
        (
            edited("averageValue: \"70\"", "averageValue: \"-70\""),
            "spec.metrics[0].pods.target.averageValue: Invalid value: \"-70\": must be positive",
        ),
        (
            edited("averageValue: \"70\"", "averageValue: \"NaN\""),
            "spec.metrics[0].pods.target.averageValue: Invalid value: \"NaN\"",
        ),
        (
            edited("type: AverageValue", "type: Utilization"),
            "spec.metrics[0].pods.target.type: Unsupported value: \"Utilization\": supported values: \"AverageValue\"",
        ),
        (edited("  minReplicas: 1", "  minReplicas: 1\n  minReplica: 2"), "unknown field \"spec.minReplica\""),
        (
            edited(
                "        name: nvidia_gpu_utilization_percent",
                "        name: nvidia_gpu_utilization_percent\n        selektor: {}",
            ),
            "unknown field \"spec.metrics[0].pods.metric.selektor\"",
        ),
        (
            with_behavior("    scaleUp:\n      selectPolicy: Bogus\n"),
            "spec.behavior.scaleUp.selectPolicy: Unsupported value: \"Bogus\": supported values: \"Disabled\", \"Max\", \"Min\"",
        ),
        (
            with_behavior("    scaleDown:\n      policies:\n      - {type: percent, value: 10, periodSeconds: 60}\n"),
            "spec.behavior.scaleDown.policies[0].type: Unsupported value: \"percent\": supported values: \"Percent\", \"Pods\"",
        ),
        (
            with_behavior("    scaleDown:\n      policies:\n      - {type: Pods, value: 0, periodSeconds: 1801}\n"),
            "spec.behavior.scaleDown.policies[0].value: Invalid value: 0: must be greater than zero\nspec.behavior.scaleDown.policies[0].periodSeconds: Invalid value: 1801: must be less than or equal to 1800",
        ),
        (
            with_behavior("    scaleUp:\n      stabilizationWindowSeconds: 3601\n"),
            "spec.behavior.scaleUp.stabilizationWindowSeconds: Invalid value: 3601: must be less than or equal to 3600",
        ),
        (
            with_behavior("    scaleUp:\n      policies: []\n"),
            "spec.behavior.scaleUp.policies: Required value: must specify at least one Policy",
        ),
    ];
    for (manifest, wanted) in cases {
        let err = parse_hpa(&manifest).expect_err(wanted);
        assert!(err.contains(wanted), "{wanted}\n  got: {err}");
    }
}

#[test]
fn a_valid_manifest_keeps_what_it_says() {
    // 1E is a quantity (10^18), and large targets are kept as written.
    let hpa = parse_hpa(&edited("averageValue: \"70\"", "averageValue: \"1E\"")).unwrap();
    assert_eq!(hpa.metrics, [MetricSpec::Pods { name: "nvidia_gpu_utilization_percent".into(), target: 1e18 }]);
    let hpa =
        parse_hpa(&with_behavior("    scaleUp:\n      selectPolicy: Disabled\n      stabilizationWindowSeconds: 0\n"))
            .unwrap();
    assert_eq!((hpa.behavior.up.select, hpa.behavior.up.window), (Select::Disabled, std::time::Duration::ZERO));
    // autoscaling/v2beta2, as a v1.20 cluster serves it, has the same fields.
    let v2beta2 = parse_hpa(&REFERENCE.replace("autoscaling/v2", "autoscaling/v2beta2")).unwrap();
    assert_eq!(v2beta2, parse_hpa(REFERENCE).unwrap());
}

#[test]
fn tolerances_per_direction_and_what_they_need() {
    let reference = parse_hpa(REFERENCE).unwrap();
    assert_eq!(reference.tolerances, Tolerances::default());
    assert!(reference.needs().is_empty(), "{:?}", reference.needs());

    // 1 % up, 5 % down (a Quantity: "50m" is 0.05).
    let hpa =
        parse_hpa(&with_behavior("    scaleUp:\n      tolerance: \"0.01\"\n    scaleDown:\n      tolerance: 50m\n"))
            .unwrap();
    assert_eq!(hpa.tolerances, Tolerances { up: 0.01, down: 0.05 });
    assert!(hpa.sets_tolerance);
    let needs = hpa.needs();
    assert!(needs.len() == 1 && needs[0].contains("1.35") && needs[0].contains("1.33"), "{needs:?}");

    // One direction only: the other keeps the controller's 0.1.
    let hpa = parse_hpa(&with_behavior("    scaleDown:\n      tolerance: \"0\"\n")).unwrap();
    assert_eq!(hpa.tolerances, Tolerances { up: 0.1, down: 0.0 });
}

#[test]
fn scale_to_zero_needs_an_external_or_object_metric_and_1_37() {
    let external = "  - type: External\n    external:\n      metric: {name: nvidia_gpu_weighted_utilization_percent}\n      target: {type: Value, value: \"60\"}\n";
    let hpa = parse_hpa(
        &edited("minReplicas: 1", "minReplicas: 0").replace("  metrics:\n", &format!("  metrics:\n{external}")),
    )
    .unwrap();
    assert_eq!(hpa.min, 0);
    assert!(hpa.needs().iter().any(|n| n.contains("minReplicas: 0") && n.contains("1.37")), "{:?}", hpa.needs());
}
