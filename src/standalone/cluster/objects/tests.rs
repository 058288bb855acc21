use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;

use super::*;
use crate::twin::model::ClusterSpec;

fn reference() -> Vec<(NodeSpec, SimNode)> {
    ClusterSpec::reference().nodes.into_iter().map(|n| (n.clone(), SimNode::new(&n.name, &n.gpus, 1))).collect()
}

#[test]
fn each_reference_node_carries_what_the_gpu_operator_gives_it() {
    let nodes = reference();
    let (spec, sim) = &nodes[1];
    let pc2: Node = serde_json::from_value(node(spec, sim)).expect("a valid Node");
    let labels = pc2.metadata.labels.unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "pc2");
    assert_eq!(labels["nvidia.com/gpu.present"], "true");
    assert_eq!(labels["nvidia.com/gpu.product"], "NVIDIA-GeForce-RTX-3060");
    assert_eq!(labels["nvidia.com/gpu.count"], "1");
    assert_eq!(labels["nvidia.com/gpu.replicas"], spec.time_slicing.to_string());
    assert!(is_owned(pc2.metadata.annotations.as_ref()));
    let taints = pc2.spec.unwrap().taints.unwrap();
    assert_eq!((taints[0].key.as_str(), taints[0].effect.as_str()), ("gpu", "NoSchedule"), "the seed's taint on pc2");
    let (spec, sim) = &nodes[0];
    assert!(serde_json::from_value::<Node>(node(spec, sim)).unwrap().spec.unwrap().taints.unwrap().is_empty());
}

#[test]
fn the_status_offers_gpus_times_replicas_and_is_ready() {
    let nodes = reference();
    let (spec, sim) = &nodes[0];
    let status: NodeStatus = serde_json::from_value(node_status(spec, sim, "127.0.0.1")["status"].clone()).unwrap();
    let capacity = status.capacity.unwrap();
    assert_eq!(capacity["nvidia.com/gpu"].0, (spec.gpus.len() as u32 * spec.time_slicing).to_string());
    assert_eq!(status.allocatable.unwrap()["cpu"].0, "16", "the 4090 box is the larger");
    let ready = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(status.addresses.unwrap()[0].address, "127.0.0.1");
}

#[test]
fn the_lease_goes_with_its_node() {
    let lease: Lease = serde_json::from_value(lease("mainpc", "uid-1")).expect("a valid Lease");
    assert_eq!(lease.metadata.namespace.as_deref(), Some("kube-node-lease"));
    assert_eq!(lease.metadata.owner_references.unwrap()[0].uid, "uid-1");
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("mainpc"));
    assert_eq!(spec.lease_duration_seconds, Some(LEASE_SECONDS));
}

#[test]
fn the_api_services_point_at_the_service_and_trust_the_ca() {
    for (group, version, priority) in API_SERVICES {
        let api: APIService = serde_json::from_value(api_service(group, version, priority, 6443, "PEM")).unwrap();
        assert_eq!(api.metadata.name.as_deref(), Some(api_service_name(group, version).as_str()));
        let spec = api.spec.unwrap();
        let service = spec.service.unwrap();
        assert_eq!(
            (service.namespace.as_deref(), service.name.as_deref(), service.port),
            (Some(NAMESPACE), Some(SERVICE), Some(6443))
        );
        assert_eq!(spec.ca_bundle.unwrap().0, b"PEM");
    }
    assert_eq!(service_dns_name(), "adapter.kube-gpu-metrics-standalone.svc");
}
