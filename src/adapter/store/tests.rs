use super::*;
use crate::feed::{FeedGpu, FeedPod};

fn gpu(uuid: &str, model: &str, util: Option<f64>, up: bool) -> FeedGpu {
    FeedGpu {
        index: 0,
        uuid: uuid.into(),
        model: model.into(),
        up,
        utilization_percent: util,
        memory_utilization_percent: util.map(|u| u / 2.0),
        memory_used_bytes: Some(1 << 30),
        memory_total_bytes: Some(12 << 30),
    }
}

fn pod(name: &str, gpus: &[&str], util: Option<f64>) -> FeedPod {
    FeedPod {
        namespace: "ai-system-gpu".into(),
        pod: name.into(),
        gpus: gpus.iter().map(|s| s.to_string()).collect(),
        sharing: "exclusive".into(),
        utilization_percent: util,
        memory_utilization_percent: None,
        memory_used_bytes: None,
        reason: None,
    }
}

fn feed(node: &str, gpus: Vec<FeedGpu>, pods: Vec<FeedPod>) -> Arc<NodeFeed> {
    Arc::new(NodeFeed { node: node.into(), timestamp_ms: 1_795_430_000_000, interval_ms: 1000, gpus, pods })
}

#[test]
fn weighted_utilization_scales_by_model_capacity() {
    let view = build_view(&[
        feed(
            "mainpc",
            vec![gpu("G1", "NVIDIA GeForce RTX 4090", Some(80.0), true)],
            vec![pod("a", &["G1"], Some(80.0))],
        ),
        feed("pc2", vec![gpu("G2", "NVIDIA GeForce RTX 3060", Some(80.0), true)], vec![pod("b", &["G2"], Some(80.0))]),
    ]);
    let pods = &view.pods["ai-system-gpu"];
    assert_eq!(pods[0].sample.get(Metric::WeightedUtilization), Some(80.0));
    let b = pods[1].sample.get(Metric::WeightedUtilization).unwrap();
    assert!((b - 80.0 * 12.7 / 82.6).abs() < 1e-9, "{b}");
    assert_eq!(pods[1].sample.get(Metric::Utilization), Some(80.0));
    assert_eq!(pods[1].sample.window, Duration::from_secs(1));
}

#[test]
fn node_values_are_means_and_sums_over_gpus_that_answered() {
    let view = build_view(&[feed(
        "mainpc",
        vec![
            gpu("G1", "NVIDIA GeForce RTX 4090", Some(60.0), true),
            gpu("G2", "NVIDIA GeForce RTX 4090", Some(20.0), true),
            gpu("G3", "NVIDIA GeForce RTX 4090", None, false),
        ],
        vec![],
    )]);
    let node = &view.nodes["mainpc"];
    assert_eq!(node.sample.get(Metric::Utilization), Some(40.0));
    assert_eq!(node.sample.get(Metric::MemoryUsed), Some(2.0 * f64::from(1 << 30)));
    assert_eq!(node.gpus_up, 2);
    let down = build_view(&[feed("x", vec![gpu("G", "NVIDIA L4", None, false)], vec![])]);
    assert_eq!(down.nodes["x"].sample.values, [None; 4]);
}

#[test]
fn a_pod_without_a_value_has_none_not_zero() {
    let view = build_view(&[feed("n", vec![gpu("G1", "NVIDIA L4", Some(5.0), true)], vec![pod("p", &["G1"], None)])]);
    assert_eq!(view.pods["ai-system-gpu"][0].sample.get(Metric::Utilization), None);
    assert_eq!(view.pods["ai-system-gpu"][0].sample.get(Metric::WeightedUtilization), None);
}

#[test]
fn freshness_is_judged_against_max_age() {
    let sample = Sample {
        values: [Some(1.0); 4],
        timestamp: UNIX_EPOCH + Duration::from_secs(100),
        window: Duration::from_secs(1),
    };
    // By default: three of the sample's intervals.
    let store = MetricStore::new(None);
    assert!(store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(103)));
    assert!(!store.is_fresh(&sample, UNIX_EPOCH + Duration::from_millis(103_001)));
    assert!(store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(99)));
    let store = MetricStore::new(Some(Duration::from_secs(10)));
    assert!(store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(110)));
    assert!(!store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(111)));
}

#[test]
fn metric_names_round_trip() {
    for m in Metric::ALL {
        assert_eq!(Metric::from_name(m.name()), Some(m));
    }
    assert_eq!(Metric::from_name("cpu"), None);
}
