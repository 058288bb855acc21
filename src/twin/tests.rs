use std::path::Path;

use super::*;
use crate::gpu::model::GpuModelId;
use model::{NodeSpec, Toleration};

const HPA: &str = "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: reasoning-gpu-hpa, namespace: ai-system-gpu}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: reasoning-suite}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Pods
    pods:
      metric: {name: nvidia_gpu_utilization_percent}
      target: {type: AverageValue, averageValue: \"70\"}
";

fn inputs(scenario: &str, cluster: ClusterSpec, deployment: DeploymentSpec) -> Inputs {
    Inputs {
        cluster,
        scaled: vec![(deployment, parse_hpa(HPA).unwrap())],
        scenario: Scenario::parse(scenario, Path::new("s.yaml")).unwrap(),
        sync_period: Duration::from_secs(engine::HPA_SYNC),
    }
}

fn reference(scenario: &str) -> Inputs {
    inputs(scenario, ClusterSpec::reference(), DeploymentSpec::default_for("reasoning-suite", 1))
}

const STEP: &str = "workloads:\n  reasoning-suite:\n    - {for: 60s, load: 40}\n    - {load: 95}\n";

#[test]
fn a_step_scales_up_within_one_sync_and_the_pipeline_in_every_phase() {
    let direct = Pipeline::parse("direct").unwrap();
    let runs = reference(STEP).runs(&direct, 40, 7, Duration::from_secs(600));
    for (summary, _) in &runs {
        let first = summary.first_scale_up_seconds.expect("a scale-up");
        // One 15 s sync, 1 s sampling and 1 s polling, and the second the
        // controller takes to act.
        assert!(first <= 17.0, "{summary:?}");
    }
    let (summary, rows) = &runs[0];
    assert!(summary.max_replicas >= 2.0, "{summary:?}");
    // The new pod lands on a node, starts for 45 s and then takes load.
    let late = rows.iter().rev().find(|r| r.deployment == "reasoning-suite").unwrap();
    assert!(late.ready >= 2, "{late:?}");
}

#[test]
fn the_seed_stack_reacts_later_than_the_direct_path() {
    let direct = reference(STEP).runs(&Pipeline::parse("direct").unwrap(), 20, 3, Duration::from_secs(600));
    let seed = reference(STEP).runs(&Pipeline::parse("seed-stack").unwrap(), 20, 3, Duration::from_secs(600));
    let median = |runs: &[(Summary, Vec<engine::Row>)]| {
        let summaries: Vec<Summary> = runs.iter().map(|(s, _)| s.clone()).collect();
        report::over_runs(&summaries)["first_scale_up_seconds"].as_f64().unwrap()
    };
    let (d, s) = (median(&direct), median(&seed));
    assert!(s > d, "seed-stack {s} s, direct {d} s");
    // By construction at most 30 + 30 + 15 s (plus the controller's second).
    let worst = seed.iter().filter_map(|(s, _)| s.first_scale_up_seconds).fold(0.0, f64::max);
    assert!(worst <= 76.0, "{worst}");
}

#[test]
fn steady_load_near_the_target_never_changes_direction() {
    for load in [65, 70, 75] {
        let steady = format!("workloads:\n  reasoning-suite: [{{load: {load}}}]\n");
        for (summary, _) in
            reference(&steady).runs(&Pipeline::parse("direct").unwrap(), 10, 11, Duration::from_secs(900))
        {
            assert_eq!(summary.direction_changes, 0.0, "{load} %: {summary:?}");
            assert_eq!(summary.scale_events, 0.0, "{load} %: {summary:?}");
        }
    }
}

#[test]
fn a_pod_no_node_can_take_stays_pending_and_is_reported() {
    // One exclusive GPU: the second replica has nowhere to go.
    let cluster = ClusterSpec {
        nodes: vec![NodeSpec { name: "solo".into(), gpus: vec![GpuModelId::Rtx4090], taints: vec![], time_slicing: 1 }],
    };
    let surge = "workloads:\n  reasoning-suite:\n    - {for: 60s, load: 40}\n    - {load: 150}\n";
    let twin = inputs(surge, cluster, DeploymentSpec::default_for("reasoning-suite", 1));
    let (summary, rows) = &twin.runs(&Pipeline::parse("direct").unwrap(), 1, 1, Duration::from_secs(300))[0];
    assert!(summary.pending_pods_max >= 1.0, "{summary:?}");
    assert!(rows.iter().any(|r| r.pending >= 1 && r.unserved > 0.0));
}

#[test]
fn taints_keep_pods_without_the_toleration_off_the_tainted_node() {
    let intolerant =
        DeploymentSpec { tolerations: Vec::<Toleration>::new(), ..DeploymentSpec::default_for("reasoning-suite", 3) };
    let twin = inputs(STEP, ClusterSpec::reference(), intolerant);
    let (_, rows) = &twin.runs(&Pipeline::parse("direct").unwrap(), 1, 1, Duration::from_secs(120))[0];
    assert!(rows.iter().all(|r| r.pods.iter().all(|(_, node, _)| node == "mainpc")));
    // mainpc's 4090 has two time-slicing replicas: the third pod waits.
    assert!(rows.iter().any(|r| r.pending == 1));
    let tolerant = reference(STEP);
    let (_, rows) = &tolerant.runs(&Pipeline::parse("direct").unwrap(), 1, 1, Duration::from_secs(600))[0];
    assert!(rows.iter().any(|r| r.pods.iter().any(|(_, node, _)| node == "pc2")), "the scale-up spreads to pc2");
}

#[test]
fn a_saturated_gpu_counts_the_excess_as_unserved() {
    // 300 % of a 4090's work on at most 3 replicas: the 3060's share is far
    // more than it can do.
    let heavy = "workloads:\n  reasoning-suite: [{load: 300}]\n";
    let (summary, rows) =
        &reference(heavy).runs(&Pipeline::parse("direct").unwrap(), 1, 5, Duration::from_secs(600))[0];
    assert!(summary.unserved_work_percent_seconds > 0.0);
    let last = rows.last().unwrap();
    assert!(last.gpus.iter().any(|(_, u)| *u >= 99.9), "{last:?}");
    assert_eq!(summary.time_to_capacity_seconds, None, "{summary:?}");
}

#[test]
fn pipelines_parse_by_name_or_stage_periods() {
    assert_eq!(Pipeline::parse("direct").unwrap().stages, vec![Duration::from_secs(1); 2]);
    assert_eq!(Pipeline::parse("seed-stack").unwrap().stages, vec![Duration::from_secs(30); 2]);
    assert_eq!(Pipeline::parse("5s,15s").unwrap().stages, vec![Duration::from_secs(5), Duration::from_secs(15)]);
    assert!(Pipeline::parse("soon").unwrap_err().contains("--pipeline"));
}

#[test]
fn simulate_writes_timelines_charts_and_the_summary_with_worst_runs() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let args = SimulateArgs {
        hpa: vec![write("hpa.yaml", HPA)],
        scenario: write("scenario.yaml", STEP),
        cluster: None,
        deployments: Some(write(
            "deployments.yaml",
            "deployments:\n  - {name: reasoning-suite, startup: 20s, replicas: 1, tolerations: [{key: gpu, operator: Exists}]}\n",
        )),
        pipeline: "direct".into(),
        runs: 3,
        seed: 9,
        duration: Duration::from_secs(300),
        out: dir.path().join("out"),
        report_json: Some(dir.path().join("report.json")),
        hpa_sync_period: Duration::from_secs(engine::HPA_SYNC),
        compare: false,
    };
    let printed = run(&args).unwrap();
    assert!(printed.contains("first_scale_up_seconds"), "{printed}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    for key in [
        "first_scale_up_seconds",
        "time_to_capacity_seconds",
        "scale_events",
        "direction_changes",
        "unserved_work_percent_seconds",
        "max_replicas",
        "pending_pods_max",
    ] {
        assert!(report.get(key).is_some() && report.get(format!("{key}_max")).is_some(), "{key}: {report}");
    }
    assert_eq!(report["per_run"].as_array().unwrap().len(), 3);
    let csv = std::fs::read_to_string(dir.path().join("out/run-0.csv")).unwrap();
    assert!(csv.starts_with("t,deployment,demand,desired,ready,starting,pending,metric_seen,unserved,pods,gpus\n"));
    assert_eq!(csv.lines().count(), 301);
    let svg = std::fs::read_to_string(dir.path().join("out/run-2.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));

    // Bad input names the flag.
    let bad = SimulateArgs { pipeline: "soon".into(), ..args.clone() };
    assert!(run(&bad).unwrap_err().to_string().contains("--pipeline"));
    let bad = SimulateArgs { cluster: Some(write("cluster.yaml", "nodes: [{name: a, gpus: []}]\n")), ..args.clone() };
    assert!(run(&bad).unwrap_err().to_string().contains("--cluster"));
    let inverted = HPA.replace("minReplicas: 1", "minReplicas: 5");
    let bad = SimulateArgs { hpa: vec![write("inverted.yaml", &inverted)], ..args };
    assert!(
        run(&bad)
            .unwrap_err()
            .to_string()
            .contains("spec.maxReplicas: Invalid value: 3: must be greater than or equal to `minReplicas`")
    );
}

#[test]
fn preferred_nodes_take_replicas_while_they_have_room_and_spreading_decides_otherwise() {
    let nodes_at_start = |deployment: DeploymentSpec| {
        let twin = inputs(STEP, ClusterSpec::reference(), deployment);
        let (_, rows) = &twin.runs(&Pipeline::parse("direct").unwrap(), 1, 1, Duration::from_secs(1))[0];
        rows[0].pods.iter().map(|(_, node, _)| node.clone()).collect::<Vec<_>>()
    };
    // Default: spread over the nodes first (each GPU has two slots).
    assert_eq!(nodes_at_start(DeploymentSpec::default_for("reasoning-suite", 3)), ["mainpc", "pc2", "mainpc"]);
    // Preferred: the 4090's two slots first, then the 3060.
    let prefer =
        DeploymentSpec { preferred_nodes: vec!["mainpc".into()], ..DeploymentSpec::default_for("reasoning-suite", 3) };
    assert_eq!(nodes_at_start(prefer), ["mainpc", "mainpc", "pc2"]);
    // Required: never elsewhere, even when that leaves a pod pending.
    let required =
        DeploymentSpec { required_nodes: vec!["pc2".into()], ..DeploymentSpec::default_for("reasoning-suite", 3) };
    assert_eq!(nodes_at_start(required), ["pc2", "pc2"]);
}

#[test]
fn deployments_behind_one_service_share_its_demand_and_their_unserved_work_adds_up() {
    let hpa = |name: &str| {
        let text =
            HPA.replace("name: reasoning-suite", &format!("name: {name}")).replace("maxReplicas: 3", "maxReplicas: 1");
        parse_hpa(&text).unwrap()
    };
    let pinned = |name: &str, node: &str| DeploymentSpec {
        service: Some("reasoning-suite".into()),
        required_nodes: vec![node.into()],
        ..DeploymentSpec::default_for(name, 1)
    };
    let twin = Inputs {
        cluster: ClusterSpec::reference(),
        scaled: vec![
            (pinned("reasoning-4090", "mainpc"), hpa("reasoning-4090")),
            (pinned("reasoning-3060", "pc2"), hpa("reasoning-3060")),
        ],
        scenario: Scenario::parse("workloads:\n  reasoning-suite: [{load: 100}]\n", Path::new("s.yaml")).unwrap(),
        sync_period: Duration::from_secs(engine::HPA_SYNC),
    };
    let (summary, rows) = &twin.runs(&Pipeline::parse("direct").unwrap(), 1, 1, Duration::from_secs(2))[0];
    let row = |name: &str| rows.iter().find(|r| r.t == 0 && r.deployment == name).unwrap();
    // Each pod gets half of the Service's 100 % of a 4090: the 4090 serves
    // its half, the 3060 (15.4 % of a 4090) saturates.
    let (fast, slow) = (row("reasoning-4090"), row("reasoning-3060"));
    assert_eq!((fast.demand, slow.demand), (100.0, 100.0));
    assert!((fast.pods[0].2 - 50.0).abs() < 1e-9, "{fast:?}");
    assert_eq!(fast.unserved, 0.0);
    assert!((slow.pods[0].2 - 100.0).abs() < 1e-9, "{slow:?}");
    let capacity = GpuModelId::Rtx3060.profile().relative_capacity();
    assert!((slow.unserved - (50.0 - 100.0 * capacity)).abs() < 1e-9, "{slow:?}");
    assert!((summary.unserved_work_percent_seconds - 2.0 * slow.unserved).abs() < 1e-6, "{summary:?}");
}

#[tokio::test]
async fn the_twin_hpa_preview_and_standalone_take_the_same_decision_through_one_sync() {
    // Two reasoning-suite pods at 95 and 87.5 against the reference 70:
    // average 91.25, ratio 1.304, ceil(2.607) = 3, for both.
    let hpa = parse_hpa(HPA).unwrap();
    let mut twin = engine::Twin::new(
        &ClusterSpec::reference(),
        vec![(DeploymentSpec::default_for("reasoning-suite", 2), hpa.clone())],
        std::time::Duration::from_secs(15),
        &mut fastrand::Rng::with_seed(7),
    );
    twin.reconcile(0);
    let names: Vec<String> = twin.pods(0).map(|p| p.name.to_string()).collect();
    assert_eq!(names.len(), 2);
    assert!(twin.pods(0).all(|p| p.placed.is_some()), "both pods scheduled");
    let values = [95.0, 87.5];
    let seen = |_: &str, pod: &str| names.iter().position(|n| n == pod).map(|i| values[i]);
    // The HPA's first sync falls somewhere in its first period.
    for t in 0..15 {
        twin.sync(t, &seen, 0.0);
    }
    let (_, twin_desired, twin_seen) = twin.desired().next().unwrap();

    let items: Vec<String> = names
        .iter()
        .zip(["95", "87500m"])
        .map(|(name, value)| {
            format!(
                r#"{{"describedObject":{{"kind":"Pod","namespace":"ai-system-gpu","name":"{name}","apiVersion":"v1"}},"metric":{{"name":"nvidia_gpu_utilization_percent","selector":null}},"timestamp":"2026-11-23T10:00:00Z","windowSeconds":1,"value":"{value}"}}"#
            )
        })
        .collect();
    let recorded = format!(
        r#"{{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    );
    let from = crate::hpa::preview::MetricsFrom::Recorded(recorded.into_bytes());
    let report = crate::hpa::preview::preview(&hpa, &from, "app=reasoning-suite", Some(2)).await.unwrap().join("\n");

    // standalone's status line, from its adapter's values for the same pods.
    use crate::adapter::fixtures::{T0_MS, feed, labels, now, provider};
    let mut maps = crate::k8s::labels::LabelMaps::default();
    let pods = maps.pods.entry("ai-system-gpu".into()).or_default();
    for name in &names {
        pods.insert(name.clone(), labels(&[("app", "reasoning-suite")]));
    }
    let feeds = [feed("mainpc", "NVIDIA GeForce RTX 4090", T0_MS, &[(&names[0], 95.0), (&names[1], 87.5)])];
    let snapshot = provider(&feeds, maps).view_at(now());
    let status = crate::standalone::hpa_status(&hpa, snapshot, &mut crate::hpa::Autoscaler::default());

    assert_eq!(twin_desired, 3);
    assert_eq!(twin_seen, Some(91.25));
    assert!(report.contains("decision: 3 replica(s)"), "{report}");
    assert!(report.contains("average 91.25 / target 70 = ratio 1.304"), "{report}");
    assert_eq!(status, "reasoning-gpu-hpa 91/70 → 3 replica(s)");
}

#[test]
fn an_hpa_the_twin_cannot_wake_from_zero_is_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("kgm-twin-zero-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hpa.yaml");
    let zero = HPA.replace("minReplicas: 1", "minReplicas: 0").replace(
        "  metrics:\n",
        "  metrics:\n  - type: External\n    external:\n      metric: {name: queue_depth}\n      target: {type: Value, value: \"60\"}\n",
    );
    std::fs::write(&path, zero).unwrap();
    let err = read_hpa(&path).unwrap_err().to_string();
    assert!(
        err.contains("--hpa")
            && err.contains(
                "can wake a Deployment from zero only on the External metric nvidia_gpu_weighted_utilization_percent"
            ),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Busy, then idle past the scale-down window, then demand again.
const NIGHT: &str =
    "workloads:\n  reasoning-suite:\n    - {for: 2m, load: 60}\n    - {for: 2h, load: 0}\n    - {load: 40}\n";
/// Long enough for the morning after the night.
const NIGHT_RUN: Duration = Duration::from_secs(3 * 3600);

fn overnight(activation: model::Activation) -> Inputs {
    let hpa = parse_hpa(include_str!("../../deploy/examples/reasoning-gpu-hpa-overnight.yaml")).unwrap();
    let deployment = DeploymentSpec { activation, ..DeploymentSpec::default_for("reasoning-suite", 1) };
    Inputs {
        cluster: ClusterSpec::reference(),
        scaled: vec![(deployment, hpa)],
        scenario: Scenario::parse(NIGHT, Path::new("night.yaml")).unwrap(),
        sync_period: Duration::from_secs(engine::HPA_SYNC),
    }
}

#[test]
fn scaled_to_zero_on_the_pools_gpu_use_the_suite_does_not_wake_on_its_own_demand() {
    let direct = Pipeline::parse("direct").unwrap();
    for (summary, rows) in overnight(model::Activation::Hpa).runs(&direct, 5, 13, NIGHT_RUN) {
        // Idle past the 300 s window: the HPA scaled it to zero.
        let idle = rows.iter().find(|r| r.t == 1000).unwrap();
        assert_eq!((idle.desired, idle.ready), (0, 0), "{idle:?}");
        // The morning's demand reaches no GPU: nothing raises the pool's
        // metric, so the cold start lasts to the end of the run, all unserved.
        assert_eq!(summary.cold_start_seconds, Some(10800.0 - 7320.0), "{summary:?}");
        assert!((summary.cold_start_unserved_percent_seconds.unwrap() - 40.0 * 3480.0).abs() < 1e-6, "{summary:?}");
    }
}

#[test]
fn with_kedas_push_the_cold_start_is_one_poll_and_the_start_up_time() {
    let direct = Pipeline::parse("direct").unwrap();
    let keep_one = reference(NIGHT).runs(&direct, 1, 13, NIGHT_RUN).remove(0).0;
    for (summary, _) in overnight(model::Activation::Push).runs(&direct, 5, 13, NIGHT_RUN) {
        // Pushed in the second demand arrives, then the 45 s start-up.
        assert_eq!(summary.cold_start_seconds, Some(46.0), "{summary:?}");
        assert!((summary.cold_start_unserved_percent_seconds.unwrap() - 40.0 * 46.0).abs() < 1e-6, "{summary:?}");
        // Zero for the idle stretch: fewer GPU slot-hours than keeping one replica.
        assert!(summary.gpu_slot_hours < keep_one.gpu_slot_hours, "{summary:?} vs {keep_one:?}");
    }
    assert_eq!(keep_one.cold_start_seconds, None);
}
