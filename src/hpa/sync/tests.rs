use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;
use crate::hpa::spec::parse_hpa;

/// Metrics as fixed numbers: pods by metric name, externals by metric name.
#[derive(Default)]
struct Fixed {
    pods: HashMap<&'static str, Vec<Option<f64>>>,
    external: HashMap<&'static str, f64>,
}

impl MetricsReader for Fixed {
    fn pods(&mut self, name: &str) -> Result<Vec<PodValue>, String> {
        let values = self.pods.get(name).ok_or_else(|| format!("no pods answer {name}"))?;
        Ok(values.iter().enumerate().map(|(i, v)| PodValue { pod: format!("p{i}"), value: *v }).collect())
    }

    fn external(&mut self, name: &str, _selector: Option<&str>) -> Result<f64, String> {
        self.external.get(name).copied().ok_or_else(|| format!("no value for {name}"))
    }
}

const SCALE_TO_ZERO: &str = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: reasoning-overnight, namespace: ai-system-gpu}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: reasoning-suite}
  minReplicas: 0
  maxReplicas: 10
  metrics:
  - type: External
    external:
      metric: {name: qps}
      target: {type: Value, value: "100"}
"#;

fn at(replicas: u32, scaled_to_zero: bool) -> Scale {
    Scale { replicas, ready: replicas, unready: 0, scaled_to_zero }
}

#[test]
fn test_hpa_scale_to_zero() {
    // Upstream's integration test TestHPAScaleToZero: up to five, down to zero
    // and back, on an external metric.
    let spec = parse_hpa(SCALE_TO_ZERO).unwrap();
    let mut autoscaler = Autoscaler::default();
    let t0 = Instant::now();
    let mut metrics = Fixed::default();

    // Phase 1: metric 500 against 100 from 1 replica → 5.
    metrics.external.insert("qps", 500.0);
    let up = sync(&spec, &mut metrics, at(1, false), &mut autoscaler, t0);
    assert_eq!(up.replicas, 5, "{:?}", up.explain());
    assert!(!up.scaled_to_zero);
    autoscaler.record_scale(t0, 1, 5);

    // Phase 2: metric 0 → 0, once the scale-down window has passed.
    metrics.external.insert("qps", 0.0);
    let held = sync(&spec, &mut metrics, at(5, false), &mut autoscaler, t0 + Duration::from_secs(15));
    assert_eq!(held.replicas, 5, "the 300 s scale-down window holds: {:?}", held.explain());
    let t2 = t0 + Duration::from_secs(330);
    let down = sync(&spec, &mut metrics, at(5, false), &mut autoscaler, t2);
    assert_eq!(down.replicas, 0, "{:?}", down.explain());
    assert!(down.scaled_to_zero, "ScaledToZero=True");
    autoscaler.record_scale(t2, 5, 0);

    // At zero, still no load: it stays at zero, still ScaledToZero.
    let t3 = t2 + Duration::from_secs(15);
    let idle = sync(&spec, &mut metrics, at(0, true), &mut autoscaler, t3);
    assert_eq!((idle.replicas, idle.scaled_to_zero, idle.active), (0, true, true), "{:?}", idle.explain());

    // Phase 3: metric 400 → at least 4, ScaledToZero=False.
    metrics.external.insert("qps", 400.0);
    let woken = sync(&spec, &mut metrics, at(0, true), &mut autoscaler, t3 + Duration::from_secs(15));
    assert!(woken.replicas >= 4, "{:?}", woken.explain());
    assert!(!woken.scaled_to_zero);
    assert!(woken.explain().iter().any(|l| l.contains("woken from zero")), "{:?}", woken.explain());
}

#[test]
fn a_target_its_owner_set_to_zero_stays_paused() {
    // Without ScaledToZero (set to 0 by hand), or with minReplicas above 0,
    // the controller reports ScalingDisabled and leaves it.
    let spec = parse_hpa(SCALE_TO_ZERO).unwrap();
    let mut metrics = Fixed::default();
    metrics.external.insert("qps", 900.0);
    let paused = sync(&spec, &mut metrics, at(0, false), &mut Autoscaler::default(), Instant::now());
    assert_eq!((paused.replicas, paused.active), (0, false));
    assert!(paused.steps[0].contains("ScalingDisabled"), "{:?}", paused.steps);

    let reference = parse_hpa(crate::standalone::REFERENCE_HPA).unwrap();
    let paused = sync(&reference, &mut metrics, at(0, true), &mut Autoscaler::default(), Instant::now());
    assert_eq!((paused.replicas, paused.active), (0, false));
}

#[test]
fn pods_metrics_cannot_wake_a_target_from_zero() {
    let spec = parse_hpa(&SCALE_TO_ZERO.replace(
        "  metrics:\n",
        "  metrics:\n  - type: Pods\n    pods:\n      metric: {name: nvidia_gpu_utilization_percent}\n      target: {type: AverageValue, averageValue: \"70\"}\n",
    ))
    .unwrap();
    let mut metrics = Fixed::default();
    metrics.pods.insert("nvidia_gpu_utilization_percent", vec![]);
    metrics.external.insert("qps", 150.0);
    let outcome = sync(&spec, &mut metrics, at(0, true), &mut Autoscaler::default(), Instant::now());
    let pods = outcome.metrics[0].proposal.as_ref().unwrap_err();
    assert!(pods.contains("cannot wake"), "{pods}");
    assert_eq!(outcome.replicas, 2, "the External metric wakes it: ceil(1.5) = 2");
}

#[test]
fn a_metric_without_a_value_blocks_a_scale_down_but_not_a_scale_up() {
    let spec = parse_hpa(&SCALE_TO_ZERO.replace("minReplicas: 0", "minReplicas: 1").replace(
        "  metrics:\n",
        "  metrics:\n  - type: Pods\n    pods:\n      metric: {name: nvidia_gpu_utilization_percent}\n      target: {type: AverageValue, averageValue: \"70\"}\n",
    ))
    .unwrap();
    let mut behaviorless = spec.clone();
    behaviorless.behavior.down.window = Duration::ZERO;
    // The Pods metric says 4 → 2, the External metric has no value: kept at 4.
    let mut metrics = Fixed::default();
    metrics.pods.insert("nvidia_gpu_utilization_percent", vec![Some(30.0); 4]);
    let kept = sync(&behaviorless, &mut metrics, at(4, false), &mut Autoscaler::default(), Instant::now());
    assert_eq!(kept.replicas, 4, "{:?}", kept.explain());
    assert!(kept.steps.iter().any(|s| s.contains("no scale-down")), "{:?}", kept.steps);
    // The Pods metric says 4 → 6: the scale-up goes ahead.
    metrics.pods.insert("nvidia_gpu_utilization_percent", vec![Some(100.0); 4]);
    let up = sync(&behaviorless, &mut metrics, at(4, false), &mut Autoscaler::default(), Instant::now());
    assert_eq!(up.replicas, 6, "{:?}", up.explain());
}

#[test]
fn no_metric_at_all_leaves_the_replicas_and_says_so() {
    let spec = parse_hpa(SCALE_TO_ZERO).unwrap();
    let outcome = sync(&spec, &mut Fixed::default(), at(3, false), &mut Autoscaler::default(), Instant::now());
    assert_eq!((outcome.replicas, outcome.active), (3, false));
    assert!(outcome.explain().iter().any(|l| l.contains("ScalingActive=False")), "{:?}", outcome.explain());
}

#[test]
fn a_tolerance_of_the_hpa_holds_what_the_default_would_scale() {
    // 75 against 70 is a ratio of 1.071: the default 0.1 holds it; a 0.05
    // scale-up tolerance does not: ceil(1.071 × 2) = 3.
    let reference = parse_hpa(crate::standalone::REFERENCE_HPA).unwrap();
    let tight = parse_hpa(&format!(
        "{}  behavior:\n    scaleUp:\n      tolerance: \"0.05\"\n",
        crate::standalone::REFERENCE_HPA
    ))
    .unwrap();
    let mut metrics = Fixed::default();
    metrics.pods.insert("nvidia_gpu_utilization_percent", vec![Some(80.0), Some(70.0)]);
    let held = sync(&reference, &mut metrics, at(2, false), &mut Autoscaler::default(), Instant::now());
    assert_eq!(held.replicas, 2);
    let scaled = sync(&tight, &mut metrics, at(2, false), &mut Autoscaler::default(), Instant::now());
    assert_eq!(scaled.replicas, 3, "{:?}", scaled.explain());
}
