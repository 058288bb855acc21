use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tonic::Code;

use super::*;
use crate::adapter::admission::Rejections;
use crate::adapter::source::agents::{AgentTarget, build_view};
use crate::adapter::store::MetricStore;
use crate::feed::{FeedGpu, FeedPod, NodeFeed};
use crate::k8s::labels::{LabelIndex, LabelMaps};

const T0_MS: u64 = 1_795_430_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(T0_MS + 500)
}

/// One node's feed, sampled at `timestamp_ms`, with these pods' utilization.
fn feed(node: &str, timestamp_ms: u64, pods: &[(&str, f64)]) -> (AgentTarget, Arc<NodeFeed>) {
    let uuid = format!("GPU-{node}");
    let feed = NodeFeed {
        node: node.into(),
        timestamp_ms,
        interval_ms: 1000,
        gpus: vec![FeedGpu {
            index: 0,
            uuid: uuid.clone(),
            model: "NVIDIA GeForce RTX 4090".into(),
            up: true,
            utilization_percent: Some(50.0),
            memory_utilization_percent: None,
            memory_used_bytes: None,
            memory_total_bytes: None,
        }],
        pods: pods
            .iter()
            .map(|(pod, util)| FeedPod {
                namespace: "ai".into(),
                pod: pod.to_string(),
                gpus: vec![uuid.clone()],
                sharing: "shared".into(),
                utilization_percent: Some(*util),
                memory_utilization_percent: None,
                memory_used_bytes: None,
                reason: None,
            })
            .collect(),
    };
    (AgentTarget::unbound(format!("http://{node}:9402")), Arc::new(feed))
}

/// A scaler whose API lists `web-0`..`web-3` (app=web); `fresh` pods have
/// values on one node, `stale` ones on a node whose feed is 10 s old.
fn scaler(fresh: &[(&str, f64)], stale: &[(&str, f64)], ready: bool) -> KedaScaler {
    let mut maps = LabelMaps::default();
    let pods = maps.pods.entry("ai".into()).or_default();
    for n in 0..4 {
        pods.insert(format!("web-{n}"), [("app".to_string(), "web".to_string())].into_iter().collect());
    }
    let targets = [feed("a", T0_MS, fresh), feed("b", T0_MS - 10_000, stale)];
    let store = Arc::new(MetricStore::new(None));
    store.publish(build_view(&targets, &LabelIndex::new(maps), &Rejections::default(), usize::MAX, now()));
    let readiness = Readiness::default();
    let check = readiness.check("source", "no round has been polled yet");
    if ready {
        check.pass();
    }
    let (_, shutdown) = watch::channel(false);
    KedaScaler::new(Provider::new(store), readiness, Duration::from_secs(1), shutdown)
}

fn spec(selector: &str, target: &str, activation: &str) -> ScalerSpec {
    let object = ScaledObjectRef {
        name: "web".into(),
        namespace: "ai".into(),
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
