use std::path::Path;

use super::*;
use crate::gpu::model::GpuModelId;
use crate::hpa::spec::parse_hpa;
use crate::k8s::labels::Placement;

const HPA: &str = include_str!("../../../deploy/examples/reasoning-gpu-hpa.yaml");

fn nodes() -> Vec<Arc<SimNode>> {
    [("mainpc", GpuModelId::Rtx4090), ("pc2", GpuModelId::Rtx3060)]
        .iter()
        .map(|&(node, model)| Arc::new(SimNode::new(node, &[model], 1)))
        .collect()
}

/// The live twin, the nodes it drives, and the API's labels.
type Live = (LiveTwin, Vec<Arc<SimNode>>, Arc<LabelIndex>);

fn live(scenario: &str, hpa: &str) -> Result<Live, LiveError> {
    let sims = nodes();
    let labels = Arc::new(LabelIndex::new(crate::sim::current_label_maps(&sims)));
    let hpa = parse_hpa(hpa).unwrap();
    let deployment = crate::twin::deployment_for(&[], &hpa);
    let setup = LiveSetup {
        scaled: vec![(deployment, hpa)],
        sync_period: Duration::from_secs(15),
        scenario: Scenario::parse(scenario, Path::new("s.yaml")).unwrap(),
        start: 1_000_000.0,
        seed: 3,
    };
    let twin = LiveTwin::new(setup, sims.clone(), labels.clone())?;
    Ok((twin, sims, labels))
}

fn reasoning_pods(sim: &SimNode) -> Vec<SimWorkload> {
    sim.workloads().iter().flatten().filter(|w| w.app == "reasoning-suite").cloned().collect()
}

#[test]
fn the_hpa_scales_the_simulated_deployment_onto_the_node_the_scheduler_chose_and_back() {
    let step =
        "workloads:\n  reasoning-suite:\n    - {for: 30s, load: 40}\n    - {for: 5m, load: 95}\n    - {load: 5}\n";
    let (mut live, sims, labels) = live(step, HPA).unwrap();
    let seed = reasoning_pods(&sims[0]).remove(0);
    // What the API serves: each pod's share, as the twin set it.
    let api = |sims: &[Arc<SimNode>]| {
        let loads: HashMap<String, f64> = sims
            .iter()
            .flat_map(|s| {
                s.workloads().iter().flatten().map(|w| (w.pod.clone(), w.twin_load.unwrap_or(0.0))).collect::<Vec<_>>()
            })
            .collect();
        move |_: &str, pod: &str| loads.get(pod).copied()
    };

    // Before the step: the seed pod alone, at 40 % of its 4090.
    let status = live.step_to(29, &api(&sims));
    assert_eq!(status[0].desired, 1);
    assert_eq!(reasoning_pods(&sims[0]).len(), 1);
    assert_eq!(reasoning_pods(&sims[0])[0].pod, seed.pod);
    assert_eq!(reasoning_pods(&sims[0])[0].twin_load, Some(40.0));
    assert!(reasoning_pods(&sims[1]).is_empty());

    // Within one sync of the step the HPA asks for 2; the new pod lands on
    // pc2 (spread from the seed's node), starting: listed, idle.
    let mut t = 30;
    let new = loop {
        t += 1;
        let values = api(&sims);
        let status = live.step_to(t, &values);
        if let Some(new) = reasoning_pods(&sims[1]).first().cloned() {
            assert_eq!(status[0].desired, 2, "{status:?}");
            break new;
        }
        assert!(t <= 30 + 15 + 1, "no new pod on pc2 by {t}: {status:?}");
    };
    assert_ne!(new.pod, seed.pod);
    assert_ne!(new.pod_uid, seed.pod_uid);
    assert!(new.pod.starts_with(&format!("reasoning-suite-{}-", seed.template_hash())), "{}", new.pod);
    assert_eq!(new.twin_load, Some(0.0), "starting");
    assert!(sims[1].allocations().iter().any(|a| a.pod == new.pod), "pc2's kubelet lists it");
    assert_eq!(sims[1].pod_uid_of(new.pid).as_deref(), Some(new.pod_uid.as_str()));
    let index = labels.snapshot();
    assert_eq!(index.placement(GPU_NAMESPACE, &new.pod), Placement::On("pc2"));
    assert_eq!(index.pods[GPU_NAMESPACE][&new.pod]["app"], "reasoning-suite");

    // Once started (45 s), the demand spreads: 47.5 % of a 4090 each, which
    // the 3060 cannot do (saturated at 100 % of its time).
    live.step_to(t + 45, &api(&sims));
    assert_eq!(reasoning_pods(&sims[0])[0].twin_load, Some(47.5));
    assert_eq!(reasoning_pods(&sims[1])[0].twin_load, Some(100.0));
    // The status line shows what the API serves (a second later here).
    let status = live.step_to(t + 46, &api(&sims));
    let line = status[0].to_string();
    assert!(line.starts_with("reasoning-suite 2 replica(s), 0 pending [mainpc 48%, pc2 100%]"), "{line}");

    // After the load falls, the 5 min scale-down window passes, and the
    // newest pod goes: from the node at once, from the API after its grace.
    let down = 30 + 300 + 300 + 15;
    let mut t = t + 46;
    while reasoning_pods(&sims[1]).len() == 1 {
        t += 1;
        live.step_to(t, &api(&sims));
        assert!(t <= down + 15, "still 2 replicas at {t}");
    }
    assert_eq!(reasoning_pods(&sims[0])[0].pod, seed.pod, "the oldest stays");
    assert_eq!(labels.snapshot().placement(GPU_NAMESPACE, &new.pod), Placement::On("pc2"), "terminating");
    live.step_to(t + TERMINATING, &api(&sims));
    assert_eq!(labels.snapshot().placement(GPU_NAMESPACE, &new.pod), Placement::Unknown);
    assert!(!labels.snapshot().pods[GPU_NAMESPACE].contains_key(&new.pod));
}

#[test]
fn a_pod_no_gpu_can_take_is_pending_in_the_api_and_the_status_line() {
    // Up to 5 replicas; the two GPUs' free time-slicing replicas hold 4
    // (mainpc: 4 less coordination; pc2: 4 less vision and tutoring, and
    // the seed is one of mainpc's).
    let hpa = HPA.replace("maxReplicas: 3", "maxReplicas: 6");
    let (mut live, sims, labels) = live("workloads:\n  reasoning-suite: [{load: 400}]\n", &hpa).unwrap();
    let busy = |_: &str, _: &str| Some(100.0);
    let status = live.step_to(120, &busy);
    let pending: Vec<&PodStatus> = status[0].pods.iter().filter(|p| p.node.is_none()).collect();
    assert_eq!(status[0].desired, 6, "{status:?}");
    assert_eq!(pending.len(), 1, "{status:?}");
    let index = labels.snapshot();
    assert_eq!(index.placement(GPU_NAMESPACE, &pending[0].pod), Placement::Unknown, "in the API, unscheduled");
    assert!(index.pods[GPU_NAMESPACE].contains_key(&pending[0].pod));
    assert_eq!(reasoning_pods(&sims[0]).len() + reasoning_pods(&sims[1]).len(), 5);
    assert!(status[0].to_string().contains("6 replica(s), 1 pending"), "{}", status[0]);
}

#[test]
fn hpas_the_simulated_cluster_cannot_run_are_refused_by_name() {
    let other = HPA.replace("name: reasoning-suite", "name: payments");
    let err = live("workloads: {}\n", &other).err().unwrap().to_string();
    assert!(err.contains("--hpa reasoning-gpu-hpa") && err.contains("scaleTargetRef payments"), "{err}");
    assert!(err.contains("reasoning-suite") && err.contains("tutoring-suite"), "{err}");
    let elsewhere = HPA.replace("namespace: ai-system-gpu", "namespace: default");
    let err = live("workloads: {}\n", &elsewhere).err().unwrap().to_string();
    assert!(err.contains("namespace default"), "{err}");
}

#[test]
fn an_unscripted_deployment_follows_its_seed_workload_wave() {
    let (mut live, sims, _) = live("workloads:\n  tutoring-suite: [{load: 10}]\n", HPA).unwrap();
    live.step_to(0, &|_, _| None);
    let load = reasoning_pods(&sims[0])[0].twin_load.unwrap();
    let seed = reasoning_pods(&nodes()[0]).remove(0);
    assert!((load - seed.wave(1_000_000.0)).abs() < 1e-9, "{load}");
}
