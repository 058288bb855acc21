use std::time::UNIX_EPOCH;

use proptest::prelude::*;

use super::*;
use crate::adapter::admission::RejectReason;
use crate::feed::{FeedGpu, FeedPod};
use crate::k8s::labels::LabelMaps;

const T0_MS: u64 = 1_795_430_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(T0_MS + 500)
}

fn unbound(feeds: &[Arc<NodeFeed>]) -> Vec<(AgentTarget, Arc<NodeFeed>)> {
    feeds.iter().enumerate().map(|(i, f)| (AgentTarget::unbound(format!("http://agent-{i}:9402")), f.clone())).collect()
}

/// The view of static agents' feeds, with no cluster to check against.
fn view_of(feeds: &[Arc<NodeFeed>]) -> crate::adapter::store::StoreView {
    build_view(&unbound(feeds), &LabelIndex::default(), &Rejections::default(), usize::MAX, now())
}

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
    Arc::new(NodeFeed { node: node.into(), timestamp_ms: T0_MS, interval_ms: 1000, gpus, pods })
}

fn any_gpu() -> impl Strategy<Value = FeedGpu> {
    (0u32..8, "GPU-[a-f0-9]{8}", any::<bool>(), prop::option::of(0.0f64..100.0), prop::option::of(any::<u64>()))
        .prop_map(|(index, uuid, up, util, used)| FeedGpu {
            index,
            uuid,
            model: "NVIDIA GeForce RTX 4090".into(),
            up,
            utilization_percent: util,
            memory_utilization_percent: util.map(|u| u / 2.0),
            memory_used_bytes: used,
            memory_total_bytes: Some(24 << 30),
        })
}

fn any_pod() -> impl Strategy<Value = FeedPod> {
    ("[a-z]{1,10}", "[a-z0-9-]{1,20}", prop::option::of(0.0f64..100.0), prop::option::of("[a-z-]{1,12}")).prop_map(
        |(namespace, pod, util, reason)| FeedPod {
            namespace,
            pod,
            gpus: vec!["GPU-0".into()],
            sharing: "shared".into(),
            utilization_percent: util,
            memory_utilization_percent: None,
            memory_used_bytes: None,
            reason,
        },
    )
}

proptest! {
    #[test]
    fn every_feed_an_agent_writes_decodes_to_itself(
        node in "[a-z0-9-]{1,20}",
        timestamp_ms in any::<u64>(),
        gpus in prop::collection::vec(any_gpu(), 0..4),
        pods in prop::collection::vec(any_pod(), 0..6),
    ) {
        let feed = NodeFeed { node, timestamp_ms, interval_ms: 1000, gpus, pods };
        let bytes = serde_json::to_vec(&feed).unwrap();
        prop_assert_eq!(decode_feed("http://agent", &bytes).unwrap(), feed);
    }

    #[test]
    fn arbitrary_bytes_are_refused_or_decoded_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_feed("http://agent", &bytes);
    }
}

#[test]
fn a_feed_with_more_pods_than_a_node_runs_is_refused_while_read() {
    let pod = |i: usize| format!(r#"{{"namespace":"n","pod":"p{i}","gpus":[],"sharing":"exclusive"}}"#);
    let feed = |n: usize| {
        let pods: Vec<String> = (0..n).map(pod).collect();
        format!(r#"{{"node":"x","timestampMs":1,"intervalMs":1000,"gpus":[],"pods":[{}]}}"#, pods.join(","))
    };
    let max = crate::feed::MAX_FEED_PODS;
    assert_eq!(decode_feed("http://a", feed(max).as_bytes()).unwrap().pods.len(), max);
    let err = decode_feed("http://a", feed(max + 1).as_bytes()).unwrap_err().to_string();
    assert!(err.contains("more than 4096 pods"), "{err}");
}

#[test]
fn a_refused_feed_names_the_agent() {
    let err = decode_feed("http://10.42.0.7:9402", b"{\"node\": 3}").unwrap_err();
    assert!(err.to_string().contains("http://10.42.0.7:9402"), "{err}");
}

#[test]
fn weighted_utilization_scales_by_model_capacity() {
    let view = view_of(&[
        feed(
            "mainpc",
            vec![gpu("G1", "NVIDIA GeForce RTX 4090", Some(80.0), true)],
            vec![pod("a", &["G1"], Some(80.0))],
        ),
        feed("pc2", vec![gpu("G2", "NVIDIA GeForce RTX 3060", Some(80.0), true)], vec![pod("b", &["G2"], Some(80.0))]),
    ]);
    let pods = &view.pods["ai-system-gpu"];
    assert_eq!(pods["a"].sample.get(Metric::WeightedUtilization), Some(80.0));
    let b = pods["b"].sample.get(Metric::WeightedUtilization).unwrap();
    assert!((b - 80.0 * 12.7 / 82.6).abs() < 1e-9, "{b}");
    assert_eq!(pods["b"].sample.get(Metric::Utilization), Some(80.0));
    assert_eq!(pods["b"].sample.window, Duration::from_secs(1));
}

#[test]
fn node_values_are_means_and_sums_over_gpus_that_answered() {
    let view = view_of(&[feed(
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
    let down = view_of(&[feed("x", vec![gpu("G", "NVIDIA L4", None, false)], vec![])]);
    assert!(down.nodes["x"].sample.values.is_empty());
}

#[test]
fn a_pod_without_a_value_has_none_not_zero() {
    let mut p = pod("p", &["G1"], None);
    p.memory_used_bytes = Some(1 << 20);
    let view = view_of(&[feed("n", vec![gpu("G1", "NVIDIA L4", Some(5.0), true)], vec![p])]);
    let p = &view.pods["ai-system-gpu"]["p"];
    assert_eq!(p.sample.get(Metric::Utilization), None);
    assert_eq!(p.sample.get(Metric::WeightedUtilization), None);
    assert_eq!(p.sample.get(Metric::MemoryUsed), Some(f64::from(1 << 20)));
    // A pod with no value at all is not listed.
    let none = view_of(&[feed("n", vec![gpu("G1", "NVIDIA L4", Some(5.0), true)], vec![pod("q", &["G1"], None)])]);
    assert!(none.pods.get("ai-system-gpu").is_none_or(|pods| pods.is_empty()));
}

/// The cluster as the API sees it: `coredns-abc` in kube-system on mainpc,
/// `a` on mainpc, `b` on pc2.
fn cluster() -> LabelIndex {
    let mut maps = LabelMaps { placements: Some(Default::default()), ..LabelMaps::default() };
    let placements = maps.placements.as_mut().unwrap();
    for (ns, name, node) in
        [("kube-system", "coredns-abc", "mainpc"), ("ai-system-gpu", "a", "mainpc"), ("ai-system-gpu", "b", "pc2")]
    {
        placements.entry(ns.into()).or_default().insert(name.into(), node.into());
        maps.pods.entry(ns.into()).or_default().insert(name.into(), Default::default());
    }
    LabelIndex::new(maps)
}

fn bound(url: &str, node: &str, feed: Arc<NodeFeed>) -> (AgentTarget, Arc<NodeFeed>) {
    (AgentTarget { url: url.into(), node: Some(node.into()) }, feed)
}

fn l4(node: &str) -> Vec<FeedGpu> {
    vec![gpu(&format!("G-{node}"), "NVIDIA L4", Some(50.0), true)]
}

#[test]
fn a_node_speaks_only_for_the_pods_the_api_places_on_it() {
    let rejections = Rejections::default();
    let mut coredns = pod("coredns-abc", &["G-pc2"], Some(77.0));
    coredns.namespace = "kube-system".into();
    let pc2 = feed(
        "pc2",
        l4("pc2"),
        vec![
            pod("b", &["G-pc2"], Some(20.0)),
            pod("a", &["G-pc2"], Some(99.0)),
            coredns,
            pod("ghost", &["G-pc2"], Some(5.0)),
        ],
    );
    let mainpc = feed("mainpc", l4("mainpc"), vec![pod("a", &["G-mainpc"], Some(40.0))]);
    let feeds = [bound("http://10.42.1.3:9402", "pc2", pc2), bound("http://10.42.0.7:9402", "mainpc", mainpc)];
    let view = build_view(&feeds, &cluster(), &rejections, usize::MAX, now());
    let pods = &view.pods["ai-system-gpu"];
    assert_eq!(pods["a"].sample.get(Metric::Utilization), Some(40.0));
    assert_eq!(&*pods["a"].node, "mainpc");
    assert_eq!(pods["b"].sample.get(Metric::Utilization), Some(20.0));
    assert!(!pods.contains_key("ghost"));
    assert!(view.pods.get("kube-system").is_none_or(|p| p.is_empty()));
    assert_eq!(rejections.count(RejectReason::PodOnOtherNode), 2);
    assert_eq!(rejections.count(RejectReason::UnknownPod), 1);
}

#[test]
fn an_agent_naming_another_node_is_refused_whole_and_never_overwrites_that_node() {
    let rejections = Rejections::default();
    // The agent on pc2 claims to be mainpc.
    let liar = feed("mainpc", l4("pc2"), vec![pod("a", &["G-pc2"], Some(99.0))]);
    let honest =
        feed("mainpc", vec![gpu("G-mainpc", "NVIDIA L4", Some(10.0), true)], vec![pod("a", &["G-mainpc"], Some(10.0))]);
    let feeds = [bound("http://10.42.1.3:9402", "pc2", liar), bound("http://10.42.0.7:9402", "mainpc", honest)];
    let view = build_view(&feeds, &cluster(), &rejections, usize::MAX, now());
    assert_eq!(view.nodes["mainpc"].sample.get(Metric::Utilization), Some(10.0));
    assert!(!view.nodes.contains_key("pc2"));
    assert_eq!(view.pods["ai-system-gpu"]["a"].sample.get(Metric::Utilization), Some(10.0));
    assert_eq!(rejections.count(RejectReason::NodeMismatch), 2);
}

#[test]
fn two_claims_for_one_pod_give_one_value_whatever_the_order() {
    let older = feed("x", l4("x"), vec![pod("p", &["G-x"], Some(90.0))]);
    let mut newer = (*feed("y", l4("y"), vec![pod("p", &["G-y"], Some(0.5))])).clone();
    newer.timestamp_ms += 200;
    let newer = Arc::new(newer);
    for feeds in [[older.clone(), newer.clone()], [newer.clone(), older.clone()]] {
        let rejections = Rejections::default();
        let targets: Vec<_> =
            feeds.iter().map(|f| (AgentTarget::unbound(format!("http://{}", f.node)), f.clone())).collect();
        let view = build_view(&targets, &LabelIndex::default(), &rejections, usize::MAX, now());
        let pods = &view.pods["ai-system-gpu"];
        assert_eq!(pods.len(), 1);
        assert_eq!(pods["p"].sample.get(Metric::Utilization), Some(0.5));
        assert_eq!(&*pods["p"].node, "y");
        assert_eq!(rejections.count(RejectReason::Duplicate), 1);
    }
}

#[test]
fn far_future_timestamps_and_unbounded_intervals_are_refused() {
    for (timestamp_ms, interval_ms, reason) in [
        (253_402_300_805_000, 1000, RejectReason::FutureTimestamp),
        (T0_MS * 1000, 1000, RejectReason::FutureTimestamp),
        (u64::MAX, 1000, RejectReason::FutureTimestamp),
        (T0_MS + 30_000, 1000, RejectReason::FutureTimestamp),
        (T0_MS, 1_000_000_000_000, RejectReason::BadInterval),
        (T0_MS, 0, RejectReason::BadInterval),
    ] {
        let rejections = Rejections::default();
        let mut f = (*feed("n", l4("n"), vec![pod("p", &["G-n"], Some(50.0))])).clone();
        f.timestamp_ms = timestamp_ms;
        f.interval_ms = interval_ms;
        let view = build_view(&unbound(&[Arc::new(f)]), &LabelIndex::default(), &rejections, usize::MAX, now());
        assert!(view.pods.is_empty() && view.nodes.is_empty(), "{timestamp_ms} {interval_ms}");
        assert_eq!(rejections.count(reason), 2, "{timestamp_ms} {interval_ms}");
    }
    // Within the skew allowance: served as fresh.
    let mut f = (*feed("n", l4("n"), vec![pod("p", &["G-n"], Some(50.0))])).clone();
    f.timestamp_ms = T0_MS + 4_000;
    assert_eq!(view_of(&[Arc::new(f)]).pods["ai-system-gpu"].len(), 1);
}

#[test]
fn values_outside_their_physical_range_are_dropped_never_served() {
    let rejections = Rejections::default();
    let mut p = pod("p", &["G-n"], Some(1e308));
    p.memory_used_bytes = Some(u64::MAX);
    p.memory_utilization_percent = Some(42.0);
    let mut gpu = gpu("G-n", "NVIDIA L4", Some(-3.0), true);
    gpu.memory_used_bytes = Some(1 << 30);
    let f = feed("n", vec![gpu], vec![p, pod("q", &["G-n"], Some(-1.0))]);
    let view = build_view(&unbound(&[f]), &LabelIndex::default(), &rejections, usize::MAX, now());
    let pods = &view.pods["ai-system-gpu"];
    assert_eq!(pods["p"].sample.get(Metric::Utilization), None);
    assert_eq!(pods["p"].sample.get(Metric::MemoryUsed), None);
    assert_eq!(pods["p"].sample.get(Metric::MemoryUtilization), Some(42.0));
    assert!(!pods.contains_key("q"));
    assert_eq!(view.nodes["n"].sample.get(Metric::Utilization), None);
    assert_eq!(view.nodes["n"].sample.get(Metric::MemoryUsed), Some(f64::from(1 << 30)));
    // p: utilization, weighted, bytes; q: utilization, weighted; node:
    // utilization, weighted, memory utilization (half the GPU's -3).
    assert_eq!(rejections.count(RejectReason::ValueOutOfRange), 8);
}

#[test]
fn the_round_budget_refuses_whole_feeds_past_it() {
    let rejections = Rejections::default();
    let a = feed("a", l4("a"), vec![pod("a1", &["G-a"], Some(1.0)), pod("a2", &["G-a"], Some(1.0))]);
    let b = feed("b", l4("b"), vec![pod("b1", &["G-b"], Some(1.0)), pod("b2", &["G-b"], Some(1.0))]);
    let view = build_view(&unbound(&[a, b]), &LabelIndex::default(), &rejections, 3, now());
    assert_eq!(view.pods["ai-system-gpu"].len(), 2);
    assert_eq!(rejections.count(RejectReason::RoundBudget), 2);
}
