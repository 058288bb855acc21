//! The adapter's hot paths: the HPA's selector query over 10 000 pods, and
//! Quantity formatting, each against a baseline in the same run.
//!
//! `cargo bench --bench adapter` also prints p50/p99 of the query from 2 000
//! timed runs (criterion reports means and medians only), and measures the
//! query's scaling from 100 to 100 000 pods (group `scaling-query`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use kube_gpu_metrics::adapter::admission::Rejections;
use kube_gpu_metrics::adapter::http::respond;
use kube_gpu_metrics::adapter::http::routes::{Query, route};
use kube_gpu_metrics::adapter::provider::Provider;
use kube_gpu_metrics::adapter::source::agents::{AgentTarget, build_view};
use kube_gpu_metrics::adapter::store::MetricStore;
use kube_gpu_metrics::feed::{FeedGpu, FeedPod, NodeFeed};
use kube_gpu_metrics::k8s::labels::{LabelIndex, LabelMaps};
use kube_gpu_metrics::k8s::quantity::format_quantity;

const PODS: usize = 10_000;
const PODS_PER_NODE: usize = 100;
const APPS: usize = 50;

/// `pods` pods, 100 per node, in 50 Deployments (`app=app-N`): for 10 000
/// pods, 100 nodes and 200 pods per Deployment.
fn fixture(pods: usize) -> (Provider, SystemTime) {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut labels = LabelMaps::default();
    let namespace = labels.pods.entry("ai-system-gpu".into()).or_default();
    let feeds: Vec<Arc<NodeFeed>> = (0..pods.div_ceil(PODS_PER_NODE))
        .map(|n| {
            let uuid = format!("GPU-{n:08}");
            let pods = (0..PODS_PER_NODE.min(pods))
                .map(|p| {
                    let i = n * PODS_PER_NODE + p;
                    let pod = format!("app-{}-7d9f8b6c4-{i:05}", i % APPS);
                    namespace.insert(
                        pod.clone(),
                        [
                            ("app".to_string(), format!("app-{}", i % APPS)),
                            ("pod-template-hash".into(), "7d9f8b6c4".into()),
                        ]
                        .into_iter()
                        .collect(),
                    );
                    FeedPod {
                        namespace: "ai-system-gpu".into(),
                        pod,
                        gpus: vec![uuid.clone()],
                        sharing: "shared".into(),
                        utilization_percent: Some((i % 97) as f64 + 0.5),
                        memory_utilization_percent: Some(12.0),
                        memory_used_bytes: None,
                        reason: None,
                    }
                })
                .collect();
            Arc::new(NodeFeed {
                node: format!("node-{n}"),
                timestamp_ms: now_ms,
                interval_ms: 1000,
                gpus: vec![FeedGpu {
                    index: 0,
                    uuid,
                    model: "NVIDIA GeForce RTX 4090".into(),
                    up: true,
                    utilization_percent: Some(50.0),
                    memory_utilization_percent: Some(20.0),
                    memory_used_bytes: Some(1 << 30),
                    memory_total_bytes: Some(24 << 30),
                }],
                pods,
            })
        })
        .collect();
    let store = Arc::new(MetricStore::new(Some(Duration::from_secs(3600))));
    let targets: Vec<_> =
        feeds.iter().enumerate().map(|(i, f)| (AgentTarget::unbound(format!("http://agent-{i}")), f.clone())).collect();
    let now = SystemTime::now();
    store.publish(build_view(&targets, &LabelIndex::new(labels), &Rejections::default(), usize::MAX, now));
    (Provider::new(store), now)
}

const HPA_PATH: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/%2A/nvidia_gpu_utilization_percent";

fn query(api: &Provider, now: SystemTime, selector: &str) -> bytes::Bytes {
    let route = route(HPA_PATH).unwrap();
    let query = Query::parse(Some(selector)).unwrap();
    respond(api, &route, &query, now).unwrap()
}

fn percentiles(api: &Provider, now: SystemTime) {
    let mut times: Vec<Duration> = (0..2000)
        .map(|_| {
            let started = Instant::now();
            black_box(query(api, now, "labelSelector=app%3Dapp-7"));
            started.elapsed()
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "selector query over {PODS} pods (200 match), 2000 runs: p50 {:?}, p99 {:?}, max {:?}",
        at(0.50),
        at(0.99),
        times[times.len() - 1]
    );
}

fn benches(c: &mut Criterion) {
    let (api, now) = fixture(PODS);
    percentiles(&api, now);
    let selected = query(&api, now, "labelSelector=app%3Dapp-7");
    let selected_json: serde_json::Value = serde_json::from_slice(&selected).unwrap();
    assert_eq!(selected_json["items"].as_array().unwrap().len(), PODS / APPS);

    let mut group = c.benchmark_group("adapter query, 10000 pods");
    // Baseline: only encoding the 200 answers, already built, as JSON.
    group.bench_function("baseline: serialize the 200-item answer", |b| {
        b.iter(|| serde_json::to_vec(black_box(&selected_json)).unwrap())
    });
    group.bench_function("HPA query, labelSelector app=app-7 (200 match)", |b| {
        b.iter(|| query(&api, now, black_box("labelSelector=app%3Dapp-7")))
    });
    group.bench_function("set-based selector, app in (app-7,app-8),!canary (400 match)", |b| {
        b.iter(|| query(&api, now, black_box("labelSelector=app+in+%28app-7%2Capp-8%29%2C%21canary")))
    });
    group.bench_function("no selector (all 10000 match)", |b| b.iter(|| query(&api, now, black_box(""))));
    group.finish();

    // Scaling: the same query (2 % of the pods match) from 100 to 100 000 pods.
    let mut group = c.benchmark_group("scaling-query");
    group.sample_size(10);
    for pods in [100, 1_000, 10_000, 100_000] {
        let (api, now) = fixture(pods);
        group.bench_with_input(BenchmarkId::from_parameter(pods), &pods, |b, _| {
            b.iter(|| query(&api, now, black_box("labelSelector=app%3Dapp-7")))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("quantity");
    let values: Vec<f64> = (0..1000).map(|i| f64::from(i) * 0.137).collect();
    group.bench_function("baseline: format!(\"{}m\") of the milli value, 1000 values", |b| {
        b.iter(|| values.iter().map(|v| format!("{}m", (v * 1000.0).round() as i64)).collect::<Vec<_>>())
    });
    group.bench_function("format_quantity (canonical), 1000 values", |b| {
        b.iter(|| values.iter().map(|v| format_quantity(*v)).collect::<Vec<_>>())
    });
    group.finish();
}

criterion_group!(name = adapter; config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)); targets = benches);
criterion_main!(adapter);
