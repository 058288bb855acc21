use super::*;

/// The controller's default tolerances (0.1 each way).
const T: Tolerances = Tolerances { down: TOLERANCE, up: TOLERANCE };

fn pods(values: &[Option<f64>]) -> Vec<PodValue> {
    values.iter().enumerate().map(|(i, v)| PodValue { pod: format!("p{i}"), value: *v }).collect()
}

// Worked examples from the Kubernetes HPA documentation:
// desiredReplicas = ceil[currentReplicas × (currentMetricValue / desiredMetricValue)].

#[test]
fn doubles_when_the_value_is_twice_the_target() {
    // "if the current metric value is 200m, and the desired value is 100m,
    // the number of replicas will be doubled"
    let p = pods_average_value(&pods(&[Some(0.2), Some(0.2)]), 0.1, 2, 0, T).unwrap();
    assert_eq!(p.replicas, 4);
    assert!((p.ratio - 2.0).abs() < 1e-9);
}

#[test]
fn halves_when_the_value_is_half_the_target() {
    // "If the current value is instead 50m, you'll halve the number of replicas"
    let p = pods_average_value(&pods(&[Some(0.05); 4]), 0.1, 4, 0, T).unwrap();
    assert_eq!(p.replicas, 2);
}

#[test]
fn within_tolerance_nothing_changes() {
    // The reference HPA: average 75 against 70 is a ratio of 1.071.
    let p = pods_average_value(&pods(&[Some(80.0), Some(70.0)]), 70.0, 2, 0, T).unwrap();
    assert_eq!(p.replicas, 2);
    assert!(p.reason.contains("tolerance"));
    // 78 against 70 is 1.114: out of tolerance, ceil(1.114 × 2) = 3.
    assert_eq!(pods_average_value(&pods(&[Some(78.0), Some(78.0)]), 70.0, 2, 0, T).unwrap().replicas, 3);
}

#[test]
fn the_reference_gpu_hpa_scales_a_busy_reasoning_suite() {
    // One reasoning-suite pod at 95 % against 70: ceil(1.357) = 2.
    assert_eq!(pods_average_value(&pods(&[Some(95.0)]), 70.0, 1, 0, T).unwrap().replicas, 2);
}

#[test]
fn missing_pods_count_as_the_target_on_scale_down_and_zero_on_scale_up() {
    // Scale down: three pods at 20 of 70 and one without a value (counted as 70):
    // (60 + 70) / 4 / 70 = 0.464 → ceil(0.464 × 4) = 2.
    let p = pods_average_value(&pods(&[Some(20.0), Some(20.0), Some(20.0), None]), 70.0, 4, 0, T).unwrap();
    assert_eq!(p.replicas, 2);
    assert!(p.reason.contains("at the target"));

    // Scale up: one pod at 150 and one missing (counted as 0): (150 + 0) / 2 / 70 = 1.07,
    // within tolerance: no change.
    let p = pods_average_value(&pods(&[Some(150.0), None]), 70.0, 2, 0, T).unwrap();
    assert_eq!(p.replicas, 2);

    // Scale up that survives: 200 and a missing pod: 200/2/70 = 1.43 → ceil(2.86) = 3.
    assert_eq!(pods_average_value(&pods(&[Some(200.0), None]), 70.0, 2, 0, T).unwrap().replicas, 3);

    // Replicas the API did not list at all are missing too.
    assert_eq!(pods_average_value(&pods(&[Some(200.0)]), 70.0, 2, 0, T).unwrap().replicas, 3);
}

#[test]
fn no_metrics_is_an_error_not_a_decision() {
    assert!(pods_average_value(&pods(&[None, None]), 70.0, 2, 0, T).is_err());
    assert!(pods_average_value(&[], 70.0, 2, 0, T).is_err());
    assert!(pods_average_value(&pods(&[Some(1.0)]), 0.0, 1, 0, T).is_err());
}

#[test]
fn object_and_external_targets() {
    assert_eq!(value_target(150.0, 100.0, 2, 2, T).unwrap().replicas, 3);
    assert_eq!(value_target(105.0, 100.0, 2, 2, T).unwrap().replicas, 2);
    // AverageValue: 300 shared by 2 replicas against 100 each → 3.
    assert_eq!(average_value_target(300.0, 100.0, 2, T).unwrap().replicas, 3);
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

// ---- Ported from kubernetes pkg/controller/podautoscaler/horizontal_test.go,
// TestScalingWithRules: the rate policies, min and max applied to a
// prenormalized recommendation, with past scale events. Each case keeps its
// upstream name; the helpers mirror upstream's generateScalingRules and
// generateEventsUniformDistribution.

/// `generateScalingRules(pods, podsPeriod, percent, percentPeriod, window)`:
/// select Max, a policy for each non-zero value.
fn scaling_rules(pods: u32, pods_period: u64, percent: u32, percent_period: u64, window: u64) -> Rules {
    let mut policies = Vec::new();
    if pods != 0 {
        policies.push(Policy::Pods(pods, Duration::from_secs(pods_period)));
    }
    if percent != 0 {
        policies.push(Policy::Percent(percent, Duration::from_secs(percent_period)));
    }
    Rules { window: Duration::from_secs(window), policies, select: Select::Max }
}

/// `generateEventsUniformDistribution(events, period)`: each event in the
/// middle of its share of the last `period` seconds, oldest first; returns
/// (age, change).
fn uniform_events(events: &[u32], period: u64) -> Vec<(Duration, u32)> {
    let segment = period as f64 / events.len() as f64;
    events
        .iter()
        .enumerate()
        .map(|(i, &n)| (Duration::from_secs_f64(period as f64 - segment * (i + 1) as f64 + segment / 2.0), n))
        .collect()
}

struct RulesCase {
    name: &'static str,
    up_events: Vec<(Duration, u32)>,
    down_events: Vec<(Duration, u32)>,
    min: u32,
    max: u32,
    up: Option<Rules>,
    down: Option<Rules>,
    current: u32,
    prenormalized: u32,
    expected: u32,
}

fn case(name: &'static str, min: u32, max: u32, current: u32, prenormalized: u32, expected: u32) -> RulesCase {
    RulesCase {
        name,
        up_events: Vec::new(),
        down_events: Vec::new(),
        min,
        max,
        up: None,
        down: None,
        current,
        prenormalized,
        expected,
    }
}

#[test]
fn upstream_scaling_with_rules_cases() {
    let up = |rules: Rules, c: RulesCase| RulesCase { up: Some(rules), ..c };
    let down = |rules: Rules, c: RulesCase| RulesCase { down: Some(rules), ..c };
    let ups = |events: &[u32], period: u64, c: RulesCase| RulesCase { up_events: uniform_events(events, period), ..c };
    let downs =
        |events: &[u32], period: u64, c: RulesCase| RulesCase { down_events: uniform_events(events, period), ..c };
    let cases = vec![
        case("prenormalized desired replicas within range", 3, 8, 5, 7, 7),
        case("prenormalized desired replicas < minReplicas", 2, 8, 3, 1, 2),
        case("prenormalized desired replicas within range when minReplicas is 0", 0, 10, 1, 0, 0),
        case("maxReplicas is the limit because maxReplicas < scaleUpLimit", 1, 10, 20, 1000, 10),
        case("desired replica count is more than the maximum replica count", 100, 150, 100, 1000, 150),
        up(
            scaling_rules(0, 0, 1, 60, 0),
            case(
                "scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies",
                1,
                2000,
                3,
                1000,
                4,
            ),
        ),
        case("scaleUp with default behavior", 1, 1000, 10, 50, 20),
        up(
            scaling_rules(100, 60, 100, 60, 0),
            case("scaleUp with pods policy larger than percent policy", 1, 1000, 10, 500, 110),
        ),
        up(
            scaling_rules(2, 60, 100, 60, 0),
            case("scaleUp with percent policy larger than pods policy", 1, 1000, 10, 500, 20),
        ),
        up(
            scaling_rules(100, 60, 0, 0, 0),
            case("scaleUp with spec MaxReplicas limitation with large pod policy", 1, 1000, 10, 50, 50),
        ),
        up(
            scaling_rules(10000, 60, 0, 0, 0),
            case("scaleUp with spec MaxReplicas limitation with large percent policy", 1, 1000, 10, 50, 50),
        ),
        up(scaling_rules(30, 60, 0, 0, 0), case("scaleUp with pod policy limitation", 1, 1000, 10, 50, 40)),
        up(scaling_rules(0, 0, 200, 60, 0), case("scaleUp with percent policy limitation", 1, 1000, 10, 50, 30)),
        down(
            scaling_rules(20, 60, 1, 60, 300),
            case("scaleDown with percent policy larger than pod policy", 1, 1000, 100, 2, 80),
        ),
        down(
            scaling_rules(2, 60, 1, 60, 300),
            case("scaleDown with pod policy larger than percent policy", 1, 1000, 100, 2, 98),
        ),
        down(
            scaling_rules(100, 60, 0, 0, 300),
            case("scaleDown with spec MinReplicas=nil limitation with large pod policy", 1, 1000, 10, 0, 1),
        ),
        down(
            scaling_rules(100, 60, 0, 0, 300),
            case("scaleDown with spec MinReplicas limitation with large pod policy", 1, 1000, 10, 0, 1),
        ),
        down(
            scaling_rules(0, 0, 100, 60, 300),
            case("scaleDown with spec MinReplicas limitation with large percent policy", 5, 1000, 10, 2, 5),
        ),
        down(scaling_rules(5, 60, 0, 0, 300), case("scaleDown with pod policy limitation", 1, 1000, 10, 2, 5)),
        down(scaling_rules(0, 0, 50, 60, 300), case("scaleDown with percent policy limitation", 1, 1000, 10, 5, 5)),
        ups(
            &[1, 5, 9],
            120,
            up(
                scaling_rules(300, 60, 0, 0, 0),
                case(
                    "scaleUp with spec MaxReplicas limitation with large pod policy and events",
                    1,
                    200,
                    100,
                    500,
                    200,
                ),
            ),
        ),
        ups(
            &[1, 5, 9],
            120,
            up(
                scaling_rules(0, 0, 10000, 60, 0),
                case(
                    "scaleUp with spec MaxReplicas limitation with large percent policy and events",
                    1,
                    200,
                    100,
                    500,
                    200,
                ),
            ),
        ),
        ups(
            &[1, 5, 9],
            120,
            up(
                scaling_rules(5, 120, 0, 0, 0),
                case(
                    "scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events",
                    1,
                    1000,
                    100,
                    500,
                    100,
                ),
            ),
        ),
        ups(
            &[1, 5, 9],
            120,
            up(
                scaling_rules(150, 120, 0, 0, 0),
                case("scaleUp with pod policy and previous scale up events", 1, 1000, 100, 500, 235),
            ),
        ),
        ups(
            &[1, 5, 9],
            120,
            up(
                scaling_rules(0, 0, 200, 120, 0),
                case("scaleUp with percent policy and previous scale up events", 1, 1000, 100, 500, 255),
            ),
        ),
        downs(
            &[2],
            120,
            ups(
                &[4],
                120,
                up(
                    scaling_rules(0, 0, 300, 300, 0),
                    case("scaleUp with percent policy and previous scale up and down events", 1, 1000, 6, 24, 16),
                ),
            ),
        ),
        downs(&[1, 5, 9], 120, case("scaleDown with default policy and previous events", 1, 1000, 10, 5, 5)),
        downs(
            &[1, 5, 9],
            120,
            down(
                scaling_rules(115, 120, 0, 0, 300),
                case(
                    "scaleDown with spec MinReplicas=nil limitation with large pod policy and previous events",
                    1,
                    1000,
                    100,
                    0,
                    1,
                ),
            ),
        ),
        downs(
            &[1, 5, 9],
            120,
            down(
                scaling_rules(130, 120, 0, 0, 300),
                case(
                    "scaleDown with spec MinReplicas limitation with large pod policy and previous events",
                    5,
                    1000,
                    100,
                    0,
                    5,
                ),
            ),
        ),
        downs(
            &[1, 5, 9],
            120,
            down(
                scaling_rules(0, 0, 100, 120, 300),
                case(
                    "scaleDown with spec MinReplicas limitation with large percent policy and previous events",
                    5,
                    1000,
                    100,
                    2,
                    5,
                ),
            ),
        ),
        downs(
            &[1, 5, 9],
            120,
            down(
                scaling_rules(5, 120, 0, 0, 300),
                case("scaleDown with pod policy limitation and previous events", 1, 1000, 100, 2, 100),
            ),
        ),
        downs(
            &[2, 4, 6],
            120,
            down(
                scaling_rules(0, 0, 50, 120, 300),
                case("scaleDown with percent policy limitation and previous events", 1, 1000, 100, 0, 56),
            ),
        ),
        downs(
            &[4],
            120,
            ups(
                &[2],
                120,
                down(
                    scaling_rules(0, 0, 50, 180, 0),
                    case("scaleDown with percent policy and previous scale up and down events", 1, 1000, 10, 1, 6),
                ),
            ),
        ),
        downs(
            &[10, 10, 10],
            120,
            down(
                scaling_rules(0, 0, 10, 120, 300),
                case("scaleDown with previous events preventing further scale down", 1, 1000, 100, 0, 100),
            ),
        ),
        downs(
            &[10, 10, 10],
            120,
            down(
                scaling_rules(0, 0, 1000, 120, 300),
                case("scaleDown with with previous events still allowing more scale down", 1, 1000, 10, 5, 5),
            ),
        ),
        ups(
            &[8, 12, 9, 11],
            120,
            up(
                scaling_rules(1000, 60, 0, 0, 0),
                case("check 'outdated' flag for events for one behavior for up", 1, 1000, 100, 200, 200),
            ),
        ),
        ups(
            &[8, 12, 9, 11],
            120,
            up(
                scaling_rules(1000, 120, 100, 60, 0),
                case(
                    "check that events were not marked 'outdated' for two different policies in the behavior for up",
                    1,
                    1000,
                    100,
                    200,
                    200,
                ),
            ),
        ),
        ups(
            &[8, 12, 9, 11],
            120,
            up(
                scaling_rules(1000, 30, 100, 60, 0),
                case(
                    "check that events were marked 'outdated' for two different policies in the behavior for up",
                    1,
                    1000,
                    100,
                    200,
                    200,
                ),
            ),
        ),
        downs(
            &[8, 12, 9, 11],
            120,
            down(
                scaling_rules(1000, 60, 0, 0, 300),
                case("check 'outdated' flag for events for one behavior for down", 1, 1000, 100, 5, 5),
            ),
        ),
        downs(
            &[8, 12, 9, 11],
            120,
            down(
                scaling_rules(1000, 120, 100, 60, 300),
                case(
                    "check that events were not marked 'outdated' for two different policies in the behavior for down",
                    1,
                    1000,
                    100,
                    5,
                    5,
                ),
            ),
        ),
        downs(
            &[8, 12, 9, 11],
            120,
            down(
                scaling_rules(1000, 30, 100, 60, 300),
                case(
                    "check that events were marked 'outdated' for two different policies in the behavior for down",
                    1,
                    1000,
                    100,
                    5,
                    5,
                ),
            ),
        ),
    ];
    // A fixed origin far enough from the process start for every event age.
    let now = Instant::now() + Duration::from_secs(3600);
    for c in cases {
        let mut hpa = Autoscaler::default();
        for &(age, n) in &c.up_events {
            hpa.record_scale(now - age, 0, n);
        }
        for &(age, n) in &c.down_events {
            hpa.record_scale(now - age, n, 0);
        }
        let defaults = Behavior::default();
        let behavior = Behavior { up: c.up.unwrap_or(defaults.up), down: c.down.unwrap_or(defaults.down) };
        let decision = hpa.decide(now, c.prenormalized, c.current, c.min, c.max, &behavior);
        assert_eq!(decision.replicas, c.expected, "{}: {:?}", c.name, decision.steps);
    }
}

// ---- Ported from the same file, TestNormalizeDesiredReplicasWithBehavior:
// the stabilization windows alone (rate policies wide open, no min/max
// bounds), over past recommendations. Upstream names kept.

#[test]
fn upstream_stabilization_window_cases() {
    // (name, past recommendations as (minutes ago, replicas), current,
    // prenormalized, expected, scale-up window s, scale-down window s)
    type Case = (&'static str, &'static [(u64, u32)], u32, u32, u32, u64, u64);
    let cases: &[Case] = &[
        ("empty recommendations for scaling down", &[], 100, 5, 5, 0, 0),
        ("simple scale down stabilization", &[(2, 4), (1, 5)], 100, 3, 5, 0, 180),
        ("simple scale up stabilization", &[(2, 4), (1, 5)], 1, 7, 4, 300, 0),
        ("no scale down stabilization", &[(2, 1), (1, 2)], 100, 3, 3, 300, 0),
        ("no scale up stabilization", &[(2, 4), (1, 5)], 1, 3, 3, 0, 300),
        ("no scale down stabilization, reuse recommendation element", &[(10, 10), (9, 9)], 100, 3, 3, 0, 0),
        ("no scale up stabilization, reuse recommendation element", &[(10, 10), (9, 9)], 1, 100, 100, 0, 0),
        (
            "scale down stabilization, reuse one of obsolete recommendation element",
            &[(10, 10), (1, 4), (2, 5), (9, 9)],
            100,
            3,
            5,
            0,
            180,
        ),
        (
            "scale up stabilization, reuse one of obsolete recommendation element",
            &[(100, 10), (1, 6), (2, 5), (3, 9)],
            1,
            100,
            5,
            300,
            0,
        ),
        (
            "scale up and down stabilization, do not scale up when prenormalized rec goes down",
            &[(100, 2), (3, 3)],
            2,
            1,
            2,
            300,
            300,
        ),
        (
            "scale up and down stabilization, do not scale down when prenormalized rec goes up",
            &[(100, 2), (3, 1)],
            2,
            3,
            2,
            300,
            300,
        ),
    ];
    let open = vec![Policy::Pods(100_000, Duration::from_secs(1))];
    let now = Instant::now() + Duration::from_secs(24 * 3600);
    for &(name, past, current, prenormalized, expected, up_window, down_window) in cases {
        let behavior = Behavior {
            up: Rules { window: Duration::from_secs(up_window), policies: open.clone(), select: Select::Max },
            down: Rules { window: Duration::from_secs(down_window), policies: open.clone(), select: Select::Max },
        };
        let mut hpa = Autoscaler::default();
        let mut past = past.to_vec();
        past.sort_by_key(|&(minutes, _)| std::cmp::Reverse(minutes));
        for (minutes, recommendation) in past {
            hpa.decide(now - Duration::from_secs(minutes * 60), recommendation, current, 0, 1_000_000, &behavior);
        }
        let decision = hpa.decide(now, prenormalized, current, 0, 1_000_000, &behavior);
        assert_eq!(decision.replicas, expected, "{name}: {:?}", decision.steps);
    }
}

// Upstream's replica calculator cases for tolerances
// (pkg/controller/podautoscaler/replica_calculator_test.go), under their own
// names. The CPU cases are utilization ratios (Σ usage / Σ requests against
// the target); the ratio is what the tolerance acts on, so they are given
// here as a Pods average with the same ratio.

fn tol(down: f64, up: f64) -> Tolerances {
    Tolerances { down, up }
}

/// Three pods whose average against `target` is `average`.
fn three_at(average: f64) -> Vec<PodValue> {
    pods(&[Some(average), Some(average), Some(average)])
}

#[test]
fn test_replica_calc_configurable_tolerance() {
    // (tolerances, CPU utilization %, expected replicas from 3; target 100 %)
    let cases = [
        ("Outside of a 0% tolerance", tol(0.0, 0.0), 101.0, 4),
        ("Within a 200% scale-up tolerance", tol(TOLERANCE, 2.0), 190.0, 3),
        ("Outside 8% scale-up tolerance (and superfuous scale-down tolerance)", tol(2.0, 0.08), 109.0, 4),
        ("Within a 36% scale-down tolerance", tol(0.36, TOLERANCE), 65.0, 3),
        ("Outside a 34% scale-down tolerance", tol(0.34, TOLERANCE), 65.0, 2),
    ];
    for (name, tolerances, utilization, expected) in cases {
        let p = pods_average_value(&three_at(utilization), 100.0, 3, 0, tolerances).unwrap();
        assert_eq!(p.replicas, expected, "{name}: {}", p.reason);
    }
}

#[test]
fn test_replica_calc_tolerance_cm() {
    // qps 20000, 21000, 21000 against 20000: ratio 1.033, within the default 10 %.
    let p = pods_average_value(&pods(&[Some(20000.0), Some(21000.0), Some(21000.0)]), 20000.0, 3, 0, T).unwrap();
    assert_eq!(p.replicas, 3);
    assert_eq!(p.current.floor(), 20666.0);
}

#[test]
fn test_replica_calc_configurable_tolerance_cm() {
    // The same pods with a 1 % scale-up tolerance: ceil(1.033 × 3) = 4.
    let values = pods(&[Some(20000.0), Some(21000.0), Some(21000.0)]);
    assert_eq!(pods_average_value(&values, 20000.0, 3, 0, tol(TOLERANCE, 0.01)).unwrap().replicas, 4);
}

#[test]
fn test_replica_calc_tolerance_cm_external() {
    // External qps 8600 against a Value target of 8888: ratio 0.968, within 10 %.
    assert_eq!(value_target(8600.0, 8888.0, 3, 3, T).unwrap().replicas, 3);
}

#[test]
fn test_replica_calc_configurable_tolerance_cm_external() {
    // 8900 against 8800 with a 1 % scale-up tolerance: ratio 1.011 → ceil(1.011 × 3) = 4.
    assert_eq!(value_target(8900.0, 8800.0, 3, 3, tol(TOLERANCE, 0.01)).unwrap().replicas, 4);
}

#[test]
fn test_replica_calc_tolerance_per_pod_cm_external() {
    // 8600 shared by 3 replicas against 2900 each: ratio 0.989, within 10 %.
    assert_eq!(average_value_target(8600.0, 2900.0, 3, T).unwrap().replicas, 3);
}

#[test]
fn test_replica_calc_configurable_tolerance_per_pod_cm_external() {
    // 8600 over 3 against 2800 each with a 1 % scale-up tolerance: ceil(8600 / 2800) = 4.
    assert_eq!(average_value_target(8600.0, 2800.0, 3, tol(TOLERANCE, 0.01)).unwrap().replicas, 4);
}

#[test]
fn test_replica_calc_scale_up_cm_external_no_labels() {
    // 8600 against 4400 from 1 replica: ceil(1.95) = 2.
    assert_eq!(value_target(8600.0, 4400.0, 1, 1, T).unwrap().replicas, 2);
}

#[test]
fn test_replica_calc_scale_down_cm_external() {
    // 8600 against 14334 from 5: ceil(0.6 × 5) = 3.
    assert_eq!(value_target(8600.0, 14334.0, 5, 5, T).unwrap().replicas, 3);
}

#[test]
fn test_replica_calc_scale_down_per_pod_cm_external() {
    // 8600 against 2867 per pod from 5: ceil(8600 / 2867) = 3.
    assert_eq!(average_value_target(8600.0, 2867.0, 5, T).unwrap().replicas, 3);
}

#[test]
fn test_plain_metric_replica_calc_missing_metrics_no_change_eq() {
    // 5 replicas, 3 with values averaging exactly the target: missing pods are
    // not filled in at a ratio of 1, and nothing changes.
    let values = pods(&[Some(20000.0), Some(19000.0), Some(21000.0)]);
    assert_eq!(pods_average_value(&values, 20000.0, 5, 0, T).unwrap().replicas, 5);
}

#[test]
fn test_replica_calc_during_rolling_update_with_max_surge_cm() {
    // 2 replicas, 3 running pods (one surged, without a value yet), 10000 each
    // against 17000: filling the missing pod at the target gives ceil(0.725 × 3)
    // = 3, above the current 2 on a scale-down ratio: no change.
    let values = pods(&[Some(10000.0), Some(10000.0), None]);
    assert_eq!(pods_average_value(&values, 17000.0, 2, 0, T).unwrap().replicas, 2);
}

#[test]
fn unready_pods_count_as_zero_on_a_scale_up_only() {
    // Upstream's scaleUpWithUnready: 2 ready pods at 2000 of target 500 and one
    // pending: (2000 + 2000 + 0) / 3 / 500 = 2.67 → ceil(2.67 × 3) = 8.
    let values = pods(&[Some(2000.0), Some(2000.0)]);
    assert_eq!(pods_average_value(&values, 500.0, 3, 1, T).unwrap().replicas, 8);
    // On a scale-down the pending pod is left out: ceil(0.2 × 2) = 1.
    let values = pods(&[Some(100.0), Some(100.0)]);
    assert_eq!(pods_average_value(&values, 500.0, 3, 1, T).unwrap().replicas, 1);
}

#[test]
fn at_zero_an_external_value_proposes_ceil_of_its_ratio_without_tolerance() {
    // getUsageRatioReplicaCount at currentReplicas 0: ceil(usageRatio).
    assert_eq!(value_target(500.0, 100.0, 0, 0, T).unwrap().replicas, 5);
    assert_eq!(value_target(0.0, 100.0, 0, 0, T).unwrap().replicas, 0);
    // 1.05 of the target would be within the tolerance at 1 replica, not at zero.
    assert_eq!(value_target(105.0, 100.0, 0, 0, T).unwrap().replicas, 2);
    // AverageValue at zero: ceil(value / target).
    assert_eq!(average_value_target(250.0, 100.0, 0, T).unwrap().replicas, 3);
}
