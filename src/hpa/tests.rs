use super::*;

fn pods(values: &[Option<f64>]) -> Vec<PodValue> {
    values.iter().enumerate().map(|(i, v)| PodValue { pod: format!("p{i}"), value: *v }).collect()
}

// Worked examples from the Kubernetes HPA documentation:
// desiredReplicas = ceil[currentReplicas × (currentMetricValue / desiredMetricValue)].

#[test]
fn doubles_when_the_value_is_twice_the_target() {
    // "if the current metric value is 200m, and the desired value is 100m,
    // the number of replicas will be doubled"
    let p = pods_average_value(&pods(&[Some(0.2), Some(0.2)]), 0.1, 2).unwrap();
    assert_eq!(p.replicas, 4);
    assert!((p.ratio - 2.0).abs() < 1e-9);
}

#[test]
fn halves_when_the_value_is_half_the_target() {
    // "If the current value is instead 50m, you'll halve the number of replicas"
    let p = pods_average_value(&pods(&[Some(0.05); 4]), 0.1, 4).unwrap();
    assert_eq!(p.replicas, 2);
}

#[test]
fn within_tolerance_nothing_changes() {
    // The reference HPA: average 75 against 70 is a ratio of 1.071.
    let p = pods_average_value(&pods(&[Some(80.0), Some(70.0)]), 70.0, 2).unwrap();
    assert_eq!(p.replicas, 2);
    assert!(p.reason.contains("tolerance"));
    // 78 against 70 is 1.114: out of tolerance, ceil(1.114 × 2) = 3.
    assert_eq!(pods_average_value(&pods(&[Some(78.0), Some(78.0)]), 70.0, 2).unwrap().replicas, 3);
}

#[test]
fn the_reference_gpu_hpa_scales_a_busy_reasoning_suite() {
    // One reasoning-suite pod at 95 % against 70: ceil(1.357) = 2.
    assert_eq!(pods_average_value(&pods(&[Some(95.0)]), 70.0, 1).unwrap().replicas, 2);
}

#[test]
fn missing_pods_count_as_the_target_on_scale_down_and_zero_on_scale_up() {
    // Scale down: three pods at 20 of 70 and one without a value (counted as 70):
    // (60 + 70) / 4 / 70 = 0.464 → ceil(0.464 × 4) = 2.
    let p = pods_average_value(&pods(&[Some(20.0), Some(20.0), Some(20.0), None]), 70.0, 4).unwrap();
    assert_eq!(p.replicas, 2);
    assert!(p.reason.contains("at the target"));

    // Scale up: one pod at 150 and one missing (counted as 0): (150 + 0) / 2 / 70 = 1.07,
    // within tolerance: no change.
    let p = pods_average_value(&pods(&[Some(150.0), None]), 70.0, 2).unwrap();
    assert_eq!(p.replicas, 2);

    // Scale up that survives: 200 and a missing pod: 200/2/70 = 1.43 → ceil(2.86) = 3.
    assert_eq!(pods_average_value(&pods(&[Some(200.0), None]), 70.0, 2).unwrap().replicas, 3);

    // Replicas the API did not list at all are missing too.
    assert_eq!(pods_average_value(&pods(&[Some(200.0)]), 70.0, 2).unwrap().replicas, 3);
}

#[test]
fn no_metrics_is_an_error_not_a_decision() {
    assert!(pods_average_value(&pods(&[None, None]), 70.0, 2).is_err());
    assert!(pods_average_value(&[], 70.0, 2).is_err());
    assert!(pods_average_value(&pods(&[Some(1.0)]), 0.0, 1).is_err());
}

#[test]
fn object_and_external_targets() {
    assert_eq!(value_target(150.0, 100.0, 2).unwrap().replicas, 3);
    assert_eq!(value_target(105.0, 100.0, 2).unwrap().replicas, 2);
    // AverageValue: 300 shared by 2 replicas against 100 each → 3.
    assert_eq!(average_value_target(300.0, 100.0, 2).unwrap().replicas, 3);
}

#[test]
fn scale_down_waits_for_the_stabilization_window() {
    let behavior = Behavior::default();
    let mut hpa = Autoscaler::default();
    let t0 = Instant::now();
    assert_eq!(hpa.decide(t0, 3, 3, 1, 3, &behavior).replicas, 3);
    // Load drops: the metrics ask for 1, but 3 was recommended within 300 s.
    let d = hpa.decide(t0 + Duration::from_secs(60), 1, 3, 1, 3, &behavior);
    assert_eq!(d.replicas, 3);
    assert!(d.steps.iter().any(|s| s.contains("stabilization")), "{:?}", d.steps);
    // Once the high recommendation is 300 s old, only low ones remain.
    let d = hpa.decide(t0 + Duration::from_secs(299), 1, 3, 1, 3, &behavior);
    assert_eq!(d.replicas, 3);
    let d = hpa.decide(t0 + Duration::from_secs(300), 1, 3, 1, 3, &behavior);
    assert_eq!(d.replicas, 1);
}

#[test]
fn scale_up_stabilization_of_one_minute_as_the_plan_sets_it() {
    let behavior = Behavior {
        up: Rules { window: Duration::from_secs(60), ..Behavior::default().up },
        down: Rules { window: Duration::from_secs(300), ..Behavior::default().down },
    };
    let mut hpa = Autoscaler::default();
    let t0 = Instant::now();
    assert_eq!(hpa.decide(t0, 1, 1, 1, 3, &behavior).replicas, 1);
    // A spike asks for 3 at once: the 1 within the last minute holds it.
    assert_eq!(hpa.decide(t0 + Duration::from_secs(30), 3, 1, 1, 3, &behavior).replicas, 1);
    assert_eq!(hpa.decide(t0 + Duration::from_secs(59), 3, 1, 1, 3, &behavior).replicas, 1);
    // Once the low recommendation is a minute old: up it goes.
    assert_eq!(hpa.decide(t0 + Duration::from_secs(60), 3, 1, 1, 3, &behavior).replicas, 3);
}

#[test]
fn rate_policies_limit_each_period() {
    let behavior = Behavior {
        up: Rules {
            window: Duration::ZERO,
            policies: vec![Policy::Pods(1, Duration::from_secs(60))],
            select: Select::Max,
        },
        down: Behavior::default().down,
    };
    let mut hpa = Autoscaler::default();
    let t0 = Instant::now();
    let d = hpa.decide(t0, 10, 2, 1, 20, &behavior);
    assert_eq!(d.replicas, 3);
    assert!(d.steps.iter().any(|s| s.contains("policies allow at most 3")));
    hpa.record_scale(t0, 2, 3);
    // Within the same minute the one pod is spent.
    assert_eq!(hpa.decide(t0 + Duration::from_secs(30), 10, 3, 1, 20, &behavior).replicas, 3);
    assert_eq!(hpa.decide(t0 + Duration::from_secs(61), 10, 3, 1, 20, &behavior).replicas, 4);
    // Default scale-up: max(100 %, 4 pods) per 15 s from 1 replica is 5.
    let mut fresh = Autoscaler::default();
    assert_eq!(fresh.decide(t0, 30, 1, 1, 30, &Behavior::default()).replicas, 5);
}

#[test]
fn decisions_stay_within_min_and_max() {
    let mut hpa = Autoscaler::default();
    let t0 = Instant::now();
    let d = hpa.decide(t0, 9, 3, 1, 3, &Behavior::default());
    assert_eq!(d.replicas, 3);
    let d = Autoscaler::default().decide(
        t0,
        0,
        2,
        2,
        5,
        &Behavior { down: Rules { window: Duration::ZERO, ..Behavior::default().down }, ..Behavior::default() },
    );
    assert_eq!(d.replicas, 2);
}

#[test]
fn a_decision_nobody_carried_out_does_not_spend_the_rate_budget() {
    // A preview decides every second while the target stays at 1 replica:
    // each decision must still allow the scale-up.
    let mut hpa = Autoscaler::default();
    let t0 = Instant::now();
    for second in 0..30 {
        let d = hpa.decide(t0 + Duration::from_secs(second), 2, 1, 1, 3, &Behavior::default());
        assert_eq!(d.replicas, 2, "at {second} s: {:?}", d.steps);
    }
}
