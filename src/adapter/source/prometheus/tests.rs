use std::time::{Duration, UNIX_EPOCH};

use super::client::decode_vector;
use super::config::{QueryKind, Scope};
use super::view::build_view;
use super::*;
use crate::adapter::admission::RejectReason;
use crate::adapter::store::{Metric, StoreView, relative_capacity};
use crate::k8s::labels::LabelMaps;

/// The view of a round with no cluster to check against, at `now_s`.
fn view(config: &QueryConfig, queries: &[RoundQuery], answers: &RoundAnswers, now_s: u64) -> StoreView {
    let now = UNIX_EPOCH + Duration::from_secs(now_s);
    build_view(config, queries, answers, &LabelIndex::default(), &Rejections::default(), now)
}

fn recorded(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/recorded/prometheus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn sample(labels: &[(&str, &str)], value: f64) -> VectorSample {
    VectorSample { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), value }
}

fn position(queries: &[RoundQuery], scope: Scope, kind: QueryKind) -> usize {
    queries.iter().position(|q| q.scope == scope && q.kind == kind).expect("query is in the round")
}

fn value_kind(metric: Metric) -> QueryKind {
    QueryKind::Value { metric, weighted: metric == Metric::WeightedUtilization }
}

#[test]
fn the_built_in_dcgm_queries_fill_their_templates() {
    let config = QueryConfig::dcgm();
    assert_eq!(config.metrics.len(), 4);
    assert_eq!(config.scrape_interval, Duration::from_secs(15));
    let queries = config.queries();
    let pods = &queries[position(&queries, Scope::Pods, value_kind(Metric::Utilization))];
    assert_eq!(
        pods.promql,
        r#"avg by (namespace,pod,hostname,Hostname) (max by (namespace,pod,hostname,Hostname, UUID) (DCGM_FI_DEV_GPU_UTIL{namespace!="",pod!=""}))"#
    );
    let weighted = &queries[position(&queries, Scope::Nodes, value_kind(Metric::WeightedUtilization))];
    assert_eq!(
        weighted.promql,
        r#"avg by (hostname,Hostname,modelName) (max by (hostname,Hostname,modelName, UUID) (DCGM_FI_DEV_GPU_UTIL{UUID!=""}))"#
    );
    // One scrape-time query per distinct series and scope, plus the inventory.
    let times: Vec<_> = queries.iter().filter(|q| q.kind == QueryKind::ScrapeTime).map(|q| &q.promql).collect();
    assert_eq!(times.len(), 6, "{times:?}");
    assert!(times.contains(&&r#"min by (hostname,Hostname) (timestamp(DCGM_FI_DEV_FB_USED{UUID!=""}))"#.to_string()));
    let inventory = queries.last().unwrap();
    assert_eq!(
        inventory.promql,
        r#"count by (hostname,Hostname,modelName) (count by (hostname,Hostname,modelName,UUID) (DCGM_FI_DEV_GPU_UTIL{UUID!=""}))"#
    );
    assert_eq!(queries.len(), 4 * 2 + 6 + 1);
}

#[test]
fn a_bad_configuration_says_what_is_wrong() {
    let base = DCGM_QUERIES;
    let cases = [
        (
            base.replace("nvidia_gpu_memory_used_bytes:", "nvidia_gpu_fan_speed:"),
            "unknown metric \"nvidia_gpu_fan_speed\"",
        ),
        (base.replace("{<<.LabelMatchers>>}", "{<<.Matchers>>}"), "unknown placeholder <<.Matchers>>"),
        (base.replacen("avg by (<<.GroupBy>>) (max by (<<.GroupBy>>, UUID)", "avg(", 1), "must keep the <<.GroupBy>>"),
        (base.replacen("series: DCGM_FI_DEV_GPU_UTIL", "series: 'DCGM{x}'", 1), "is not a metric name"),
        (base.replace("scrapeInterval: 15s", "scrapeInterval: soon"), "scrapeInterval"),
        (base.replace("weightByModel: true", "weightByModel: true\n    extra: 1"), "unknown field `extra`"),
    ];
    for (text, want) in cases {
        let error = match QueryConfig::parse(&text, "test.yaml") {
            Ok(_) => panic!("accepted (want {want})"),
            Err(e) => e.to_string(),
        };
        assert!(error.starts_with("query configuration test.yaml: "), "{error}");
        assert!(error.contains(want), "{error} (want {want})");
    }
}

#[test]
fn decodes_recorded_prometheus_answers() {
    let pods = decode_vector(&recorded("pods-utilization.json")).unwrap();
    assert_eq!(pods.len(), 4);
    assert_eq!(pods[1].labels["pod"], "reasoning-suite-46b14078d5-hllwt");
    assert_eq!(pods[1].value, 80.0);

    match decode_vector(&recorded("bad-promql.json")).unwrap_err() {
        PrometheusError::Refused { error_type, message } => {
            assert_eq!(error_type, "bad_data");
            assert!(message.contains("parse error"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(decode_vector(&recorded("scalar.json")), Err(PrometheusError::NotAVector(t)) if t == "scalar"));
    assert!(matches!(decode_vector(b"<html>"), Err(PrometheusError::Decode(_))));
}

#[test]
fn values_that_are_not_numbers_are_left_out() {
    let body = br#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"pod":"a"},"value":[1,"NaN"]},{"metric":{"pod":"b"},"value":[1,"+Inf"]},
        {"metric":{"pod":"c"},"value":[1,"12.5"]}]}}"#;
    let samples = decode_vector(body).unwrap();
    assert_eq!(samples, vec![sample(&[("pod", "c")], 12.5)]);
}

#[test]
fn a_round_becomes_the_same_view_the_agents_would_give() {
    let config = QueryConfig::dcgm();
    let queries = config.queries();
    let mut answers: RoundAnswers = vec![None; queries.len()];
    let at = |scope, kind| position(&queries, scope, kind);
    answers[at(Scope::Pods, value_kind(Metric::Utilization))] =
        Some(Arc::new(decode_vector(&recorded("pods-utilization.json")).unwrap()));
    // The recorded scrape times: the first of the round's scrape-time queries.
    answers[at(Scope::Pods, QueryKind::ScrapeTime)] =
        Some(Arc::new(decode_vector(&recorded("pods-scrape-time.json")).unwrap()));
    answers[at(Scope::Nodes, value_kind(Metric::WeightedUtilization))] =
        Some(Arc::new(decode_vector(&recorded("nodes-weighted.json")).unwrap()));
    answers[at(Scope::Nodes, QueryKind::Inventory)] =
        Some(Arc::new(decode_vector(&recorded("nodes-inventory.json")).unwrap()));
    // The recorded answers name nodes as dcgm-exporter before 4.8.3 did
    // (`Hostname`); these times name them as it does since (`hostname`), and
    // one series carries neither.
    let node_time = |label, node| sample(&[(label, node)], 1_795_447_057.233);
    answers[at(Scope::Nodes, QueryKind::ScrapeTime)] = Some(Arc::new(vec![
        node_time("hostname", "mainpc"),
        node_time("hostname", "pc2"),
        node_time("instance", "10.0.0.9:9400"),
    ]));

    let view = view(&config, &queries, &answers, 1_795_447_058);
    let pods = &view.pods["ai-system-gpu"];
    assert_eq!(pods.len(), 4);
    let reasoning = &pods["reasoning-suite-46b14078d5-hllwt"];
    assert_eq!(&*reasoning.node, "mainpc");
    assert_eq!(reasoning.sample.get(Metric::Utilization), Some(80.0));
    assert_eq!(reasoning.sample.get(Metric::MemoryUsed), None, "no answer, no value");
    assert_eq!(reasoning.sample.window, Duration::from_secs(15));
    assert_eq!(reasoning.sample.timestamp, UNIX_EPOCH + Duration::from_millis(1_795_447_057_233));

    // The 3060 node: 60 % × its compute relative to a 4090.
    let pc2 = &view.nodes["pc2"];
    let weighted = pc2.sample.get(Metric::WeightedUtilization).unwrap();
    assert!((weighted - 60.0 * relative_capacity("NVIDIA GeForce RTX 3060")).abs() < 1e-9, "{weighted}");
    assert_eq!(pc2.gpus_up, 1);
    assert!((pc2.capacity - relative_capacity("NVIDIA GeForce RTX 3060")).abs() < 1e-12);
}

#[test]
fn a_value_is_as_old_as_its_oldest_series_and_needs_one() {
    let config = QueryConfig::dcgm();
    let queries = config.queries();
    let mut answers: RoundAnswers = vec![None; queries.len()];
    let pod = |name| [("namespace", "ns"), ("pod", name), ("Hostname", "n1")];
    answers[position(&queries, Scope::Pods, value_kind(Metric::Utilization))] =
        Some(Arc::new(vec![sample(&pod("timed"), 50.0), sample(&pod("untimed"), 70.0)]));
    let times: Vec<usize> = queries
        .iter()
        .enumerate()
        .filter(|(_, q)| q.scope == Scope::Pods && q.kind == QueryKind::ScrapeTime)
        .map(|(i, _)| i)
        .collect();
    answers[times[0]] = Some(Arc::new(vec![sample(&pod("timed"), 1000.0)]));
    answers[times[1]] = Some(Arc::new(vec![sample(&pod("timed"), 400.0)]));

    let view = view(&config, &queries, &answers, 2000);
    let pods = &view.pods["ns"];
    assert_eq!(pods.len(), 1, "a value without a scrape time is not served: {pods:?}");
    assert_eq!(pods["timed"].sample.timestamp, UNIX_EPOCH + Duration::from_secs(400));
}

#[test]
fn series_that_place_a_pod_on_another_node_are_refused() {
    let config = QueryConfig::dcgm();
    let queries = config.queries();
    let mut answers: RoundAnswers = vec![None; queries.len()];
    let pod = |name, node| [("namespace", "ns"), ("pod", name), ("Hostname", node)];
    let series = [pod("here", "n1"), pod("moved", "n2"), pod("unknown", "n1")];
    answers[position(&queries, Scope::Pods, value_kind(Metric::Utilization))] =
        Some(Arc::new(series.iter().map(|s| sample(s, 50.0)).collect()));
    answers[position(&queries, Scope::Pods, QueryKind::ScrapeTime)] =
        Some(Arc::new(series.iter().map(|s| sample(s, 1000.0)).collect()));
    let mut maps = LabelMaps { placements: Some(Default::default()), ..LabelMaps::default() };
    let placements = maps.placements.as_mut().unwrap().entry("ns".into()).or_default();
    placements.insert("here".into(), "n1".into());
    placements.insert("moved".into(), "n1".into());
    let rejections = Rejections::default();
    let now = UNIX_EPOCH + Duration::from_secs(1001);
    let view = build_view(&config, &queries, &answers, &LabelIndex::new(maps), &rejections, now);
    assert_eq!(view.pods["ns"].keys().collect::<Vec<_>>(), ["here"]);
    assert_eq!(rejections.count(RejectReason::PodOnOtherNode), 1);
    assert_eq!(rejections.count(RejectReason::UnknownPod), 1);
}

#[test]
fn only_plain_http_urls_with_a_host_are_taken() {
    assert!(PrometheusSettings::check_url("http://prometheus-operated.monitoring.svc:9090").is_ok());
    for (url, want) in [("https://p:9090", "https is not supported"), ("p:9090", "needs http://"), ("http://", "")] {
        let error = PrometheusSettings::check_url(url).unwrap_err().to_string();
        assert!(error.starts_with(&format!("--prometheus-url {url:?}")) && error.contains(want), "{error}");
    }
}
