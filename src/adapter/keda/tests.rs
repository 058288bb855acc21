use std::time::Duration;

use tonic::Code;

use super::*;
use crate::adapter::fixtures::{T0_MS, feed, labels, now, provider};
use crate::k8s::labels::LabelMaps;

const NAMESPACE: &str = "ai-system-gpu";

/// A scaler whose API lists `web-0`..`web-3` (app=web); `fresh` pods have
/// values on one node, `stale` ones on a node whose feed is 10 s old.
fn scaler(fresh: &[(&str, f64)], stale: &[(&str, f64)], ready: bool) -> KedaScaler {
    let mut maps = LabelMaps::default();
    let pods = maps.pods.entry(NAMESPACE.into()).or_default();
    for n in 0..4 {
        pods.insert(format!("web-{n}"), labels(&[("app", "web")]));
    }
    let model = "NVIDIA GeForce RTX 4090";
    let provider = provider(&[feed("a", model, T0_MS, fresh), feed("b", model, T0_MS - 10_000, stale)], maps);
    let readiness = Readiness::default();
    let check = readiness.check("source", "no round has been polled yet");
    if ready {
        check.pass();
    }
    let (_, shutdown) = watch::channel(false);
    KedaScaler::new(provider, readiness, Duration::from_secs(1), shutdown)
}

fn spec(selector: &str, target: &str, activation: &str) -> ScalerSpec {
    let object = ScaledObjectRef {
        name: "web".into(),
        namespace: NAMESPACE.into(),
        scaler_metadata: [("podSelector", selector), ("targetValue", target), ("activationTargetValue", activation)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    ScalerSpec::parse(&object).unwrap()
}

fn measured(total: f64, active: bool, missing: usize) -> Result<WorkloadState, Code> {
    Ok(WorkloadState::Measured { total, active, missing })
}

fn active(scaler: &KedaScaler, spec: &ScalerSpec) -> Result<bool, Code> {
    scaler.is_active(spec, now()).map_err(|s| s.code())
}

fn state(scaler: &KedaScaler, spec: &ScalerSpec) -> Result<WorkloadState, Code> {
    scaler.state(spec, now()).map_err(|s| s.code())
}

#[test]
fn every_pod_with_a_value_sums() {
    let scaler = scaler(&[("web-0", 30.0), ("web-1", 50.0), ("web-2", 10.0), ("web-3", 0.0)], &[], true);
    assert_eq!(state(&scaler, &spec("app=web", "40", "0")), measured(90.0, true, 0));
    assert_eq!(state(&scaler, &spec("app=web", "40", "60")), measured(90.0, false, 0));
    assert_eq!(active(&scaler, &spec("app=web", "40", "60")), Ok(false));
}

#[test]
fn missing_pods_count_as_the_hpa_counts_them() {
    // Below target: the two pods without a value count at the target, so a
    // lost value never scales down. (web-3's value is stale.)
    let low = scaler(&[("web-0", 20.0), ("web-1", 30.0)], &[("web-3", 95.0)], true);
    assert_eq!(state(&low, &spec("app=web", "50", "0")), measured(50.0 + 2.0 * 50.0, true, 2));
    // Above target: they count as 0, as on an HPA's scale-up.
    let high = scaler(&[("web-0", 80.0), ("web-1", 90.0)], &[], true);
    assert_eq!(state(&high, &spec("app=web", "50", "0")), measured(170.0, true, 2));
    // Idle present pods and missing ones: not called idle.
    let idle = scaler(&[("web-0", 0.0)], &[], true);
    assert_eq!(active(&idle, &spec("app=web", "50", "10")), Err(Code::Unavailable));
    assert_eq!(active(&high, &spec("app=web", "50", "85")), Ok(true));
}

#[test]
fn no_value_at_all_is_unavailable_and_no_pods_is_an_answer() {
    let stale = scaler(&[], &[("web-0", 70.0), ("web-1", 70.0)], true);
    let status = stale.state(&spec("app=web", "50", "0"), now()).unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("no fresh nvidia_gpu_utilization_percent for the 4 pods"),
        "{}",
        status.message()
    );

    assert_eq!(state(&stale, &spec("app=api", "50", "0")), Ok(WorkloadState::NoPods));
    assert_eq!(active(&stale, &spec("app=api", "50", "0")), Ok(false));

    let unready = scaler(&[("web-0", 70.0)], &[], false);
    let status = unready.state(&spec("app=web", "50", "0"), now()).unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("not ready"), "{}", status.message());
}
