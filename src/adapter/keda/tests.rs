use std::time::Duration;

use tonic::Code;

use super::*;
use crate::adapter::fixtures::{T0_MS, feed, labels, now, provider};
use crate::k8s::labels::LabelMaps;

const NAMESPACE: &str = "ai-system-gpu";

/// A scaler whose API lists `web-0`..`web-3` (app=web); `fresh` pods have
/// values on one node, `stale` ones on a node whose feed is 10 s old.
fn scaler(fresh: &[(&str, f64)], stale: &[(&str, f64)], ready: bool) -> KedaScaler {
    scaler_with(fresh, stale, ready, ScaleTargets::Simulated)
}

fn scaler_with(fresh: &[(&str, f64)], stale: &[(&str, f64)], ready: bool, targets: ScaleTargets) -> KedaScaler {
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
    KedaScaler::new(provider, readiness, targets, Duration::from_secs(1), shutdown)
}

/// The spec of ScaledObject `web`, whose scale target has 1 replica.
fn spec(selector: &str, target: &str, activation: &str) -> ScalerSpec {
    spec_of(selector, target, activation, Known::Target(deployment(1)))
}

fn deployment(replicas: i32) -> target::ScaleTarget {
    target::ScaleTarget { description: "Deployment web".into(), selector: "app=web".into(), replicas }
}

fn spec_of(selector: &str, target: &str, activation: &str, scale_target: Known) -> ScalerSpec {
    let object = ScaledObjectRef {
        name: "web".into(),
        namespace: NAMESPACE.into(),
        scaler_metadata: [("podSelector", selector), ("targetValue", target), ("activationTargetValue", activation)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let mut spec = ScalerSpec::parse(&object, DefaultSelector::AppName).unwrap();
    spec.scale_target = scale_target;
    spec
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

    // No pod matches and the target is at zero: inactive, rightly.
    let at_zero = spec_of("app=api", "50", "0", Known::Target(deployment(0)));
    assert_eq!(state(&stale, &at_zero), Ok(WorkloadState::NoPods));
    assert_eq!(active(&stale, &at_zero), Ok(false));

    let unready = scaler(&[("web-0", 70.0)], &[], false);
    let status = unready.state(&spec("app=web", "50", "0"), now()).unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("not ready"), "{}", status.message());
}

#[test]
fn a_selector_that_matches_none_of_a_running_targets_pods_is_an_error_never_inactive() {
    let scaler = scaler(&[("web-0", 90.0)], &[], true);
    // A typo in podSelector while the Deployment runs 3 replicas.
    let typo = spec_of("app=wbe", "50", "0", Known::Target(deployment(3)));
    let status = scaler.is_active(&typo, now()).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    for part in
        ["podSelector \"app=wbe\" matches no pod in ai-system-gpu", "Deployment web has 3 replica(s)", "\"app=web\""]
    {
        assert!(status.message().contains(part), "{part}: {}", status.message());
    }
    // Whether the target is at zero cannot be read: an error saying why, never false.
    let unknown = spec_of("app=wbe", "50", "0", Known::Unknown("scaledobjects.keda.sh is forbidden".into()));
    let status = scaler.is_active(&unknown, now()).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("scaledobjects.keda.sh is forbidden"), "{}", status.message());
    // The same pods matched: a value, whatever the target says.
    assert_eq!(state(&scaler, &spec_of("app=web", "50", "0", Known::Unknown("x".into()))), measured(90.0, true, 3));
}

fn object(name: &str, metadata: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        namespace: NAMESPACE.into(),
        scaler_metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

#[tokio::test]
async fn without_a_cluster_no_pod_selector_is_evaluated_and_the_error_says_so() {
    let scaler = scaler_with(&[("web-0", 90.0)], &[], true, ScaleTargets::NoCluster);
    for metadata in [&[("targetValue", "70")][..], &[("targetValue", "70"), ("podSelector", "app=web")]] {
        let status = ExternalScaler::is_active(&scaler, Request::new(object("web", metadata))).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().starts_with("podSelector: this adapter runs without a cluster"),
            "{}",
            status.message()
        );
    }
}

#[tokio::test]
async fn get_metrics_refuses_another_metric_name_naming_the_field() {
    let scaler = scaler(&[("web-0", 30.0), ("web-1", 50.0), ("web-2", 10.0), ("web-3", 0.0)], &[], true);
    let request = |name: &str| {
        Request::new(GetMetricsRequest {
            metric_name: name.into(),
            scaled_object_ref: Some(object("web", &[("targetValue", "40")])),
        })
    };
    let status = scaler.get_metrics(request("nvidia_gpu_memory_used_bytes")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("metricName: \"nvidia_gpu_memory_used_bytes\""), "{}", status.message());
    // A long name is echoed cut short.
    let status = scaler.get_metrics(request(&"x".repeat(100_000))).await.unwrap_err();
    assert!(status.message().len() < 400, "{}", status.message().len());
    // The ScaledObject's own metric, or none, gets past the name check (to the values, which the
    // fixtures' fixed clock leaves stale here).
    for name in ["nvidia_gpu_utilization_percent", ""] {
        let status = scaler.get_metrics(request(name)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
}
