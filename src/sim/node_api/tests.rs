use std::sync::Arc;

use super::*;
use crate::attribution::kubelet::KubeletAttribution;
use crate::attribution::{Allocations, Attribution};
use crate::gpu::model::GpuModelId;
use crate::sim::{SimWorkload, time_slice_replica};

/// A node with two pods time-sliced on its 4090, as the cluster kubelet sets them.
fn node() -> Arc<SimNode> {
    let sim = SimNode::new("mainpc", &[GpuModelId::Rtx4090], 1);
    let uuid = sim.gpus[0].identity.uuid.clone();
    let pod = |name: &str, uid: &str, pid: u32, replica: u32| SimWorkload {
        device_ids: Some(vec![time_slice_replica(&uuid, replica)]),
        namespace: "ai-system-gpu".into(),
        pod: name.into(),
        container: "main".into(),
        pod_uid: uid.into(),
        pid,
        twin_load: Some(30.0),
        ..sim.workloads()[0][0].clone()
    };
    sim.set_workloads(vec![vec![
        pod("a", "1f2e3d4c-0000-4000-8000-00000000000a", 20001, 0),
        pod("b", "1f2e3d4c-0000-4000-8000-00000000000b", 20002, 1),
    ]]);
    Arc::new(sim)
}

#[tokio::test]
async fn the_agent_attributes_a_simulated_nodes_pods_through_the_kubelets_own_interfaces() {
    let root = tempfile::tempdir().unwrap();
    let sim = node();
    let api = Arc::new(NodeApi::new(root.path(), sim.clone(), 2).unwrap());
    let (stop, shutdown) = watch::channel(false);
    let server = tokio::spawn(api.clone().serve(shutdown));
    let mut attribution = KubeletAttribution::new(&api.attribution_args());
    let mut known = Allocations::Unavailable { attempted: false };
    for _ in 0..50 {
        known = attribution.allocations().await;
        if matches!(known, Allocations::Known(_)) {
            break;
        }
        // The socket is bound on the server task's first poll; the client's backoff starts at 1 s.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Allocations::Known(mut allocations) = known else { panic!("PodResources never answered: {known:?}") };
    allocations.sort_by(|x, y| x.pod.cmp(&y.pod));
    let uids: Vec<Option<&str>> = allocations.iter().map(|a| a.pod_uid.as_deref()).collect();
    assert_eq!(
        uids,
        [Some("1f2e3d4c-0000-4000-8000-00000000000a"), Some("1f2e3d4c-0000-4000-8000-00000000000b")],
        "the checkpoint joined the containers to their pods"
    );
    assert_eq!(allocations[1].device_ids, [time_slice_replica(&sim.gpus[0].identity.uuid, 1)]);
    assert_eq!(
        attribution.pod_uid_of(20002).as_deref(),
        Some("1f2e3d4c-0000-4000-8000-00000000000b"),
        "the PID's cgroup names its pod"
    );

    // A pod gone: its process file goes with it.
    sim.set_workloads(vec![sim.workloads()[0][..1].to_vec()]);
    api.publish().unwrap();
    attribution.end_pass();
    attribution.end_pass();
    assert_eq!(attribution.pod_uid_of(20002), None);
    stop.send_replace(true);
    server.await.unwrap().unwrap();
    assert!(!api.socket().exists(), "the socket goes when the kubelet stops");
}
