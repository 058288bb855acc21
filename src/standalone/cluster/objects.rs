//! The API objects `standalone --cluster` registers, as the GPU node's
//! software would: each Node (with the labels, capacity and taints NVIDIA's
//! GPU Operator and device plugin give it), its Lease, the `nvidia`
//! RuntimeClass, and, where kube-apiserver runs on this machine, the
//! APIServices to the adapter with what they need (a Service, and the
//! HPA controller's right to read the metrics).
//!
//! Everything made here carries [`OWNER_ANNOTATION`]; nothing without it is
//! ever changed or removed.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::sim::SimNode;
use crate::sim::kubelet::GPU_RESOURCE;
use crate::twin::model::NodeSpec;

/// Marks what standalone registered.
pub const OWNER_ANNOTATION: &str = "kube-gpu-metrics.io/standalone";

/// The namespace of the Service the APIServices point at.
pub const NAMESPACE: &str = "kube-gpu-metrics-standalone";

/// The Service in [`NAMESPACE`]: kube-apiserver reaches the adapter through
/// it (`type: ExternalName`, `localhost`), and checks the adapter's
/// certificate against the name `adapter.kube-gpu-metrics-standalone.svc`.
pub const SERVICE: &str = "adapter";

/// Its DNS name, which the serving certificate must hold.
pub fn service_dns_name() -> String {
    format!("{SERVICE}.{NAMESPACE}.svc")
}

/// The APIServices: (group, version, versionPriority).
pub const API_SERVICES: [(&str, &str, u32); 3] = [
    ("custom.metrics.k8s.io", "v1beta1", 100),
    ("custom.metrics.k8s.io", "v1beta2", 200),
    ("external.metrics.k8s.io", "v1beta1", 100),
];

/// The name of the ClusterRole (and its binding) that lets the HPA
/// controller read the metrics APIs.
pub const METRICS_READER: &str = "kube-gpu-metrics-standalone:metrics-reader";

/// The simulated nodes' zone.
pub const ZONE: &str = "home";

/// How long a node's Lease holds (the kubelet's default).
pub const LEASE_SECONDS: i32 = 40;

fn owned() -> Value {
    json!({OWNER_ANNOTATION: "true"})
}

/// Whether an object's metadata marks it as standalone's.
pub fn is_owned(annotations: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    annotations.is_some_and(|a| a.contains_key(OWNER_ANNOTATION))
}

/// The machine behind a reference node: (cpu, memory). The 4090 box is the
/// larger, so the scheduler's least-allocated scoring puts a Deployment's
/// first pod there, as on the users' cluster.
fn machine(node: &str) -> (&'static str, &'static str) {
    match node {
        "mainpc" => ("16", "64Gi"),
        _ => ("8", "32Gi"),
    }
}

/// The Node object, before its status: GPU feature discovery's labels, the
/// seed's taints, and the ownership mark.
pub fn node(spec: &NodeSpec, sim: &SimNode) -> Value {
    let gpu = sim.gpus.first();
    let mut labels = json!({
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        // One zone for both: v1.20's default topology spreading scores only
        // nodes with both `kubernetes.io/hostname` and this label (its
        // podtopologyspread/scoring.go), and without it leaves the choice
        // between equal nodes to a tie-break.
        "topology.kubernetes.io/zone": ZONE,
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.count": sim.gpus.len().to_string(),
    });
    if let Some(gpu) = gpu {
        labels["nvidia.com/gpu.product"] = json!(gpu.profile.name.replace(' ', "-"));
        labels["nvidia.com/gpu.memory"] = json!((gpu.profile.memory_bytes >> 20).to_string());
    }
    if spec.time_slicing > 1 {
        labels["nvidia.com/gpu.replicas"] = json!(spec.time_slicing.to_string());
        labels["nvidia.com/gpu.sharing-strategy"] = json!("time-slicing");
    }
    let taints: Vec<Value> =
        spec.taints.iter().map(|t| json!({"key": t.key, "value": t.value, "effect": t.effect})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels, "annotations": owned()},
        "spec": {"taints": taints},
    })
}

/// The taints a registered node keeps: the seed's (registration added
/// `node.kubernetes.io/not-ready`, which only the node lifecycle controller
/// lifts, and some clusters run without it).
pub fn node_taints(spec: &NodeSpec) -> Value {
    let taints: Vec<Value> =
        spec.taints.iter().map(|t| json!({"key": t.key, "value": t.value, "effect": t.effect})).collect();
    json!({"spec": {"taints": taints}})
}

/// The node's status, as its kubelet posts it: capacity (cpu, memory, pods,
/// and `nvidia.com/gpu` as GPUs × time-slice replicas), Ready, addresses.
pub fn node_status(spec: &NodeSpec, sim: &SimNode, ip: &str) -> Value {
    let now = rfc3339(SystemTime::now());
    let (cpu, memory) = machine(&spec.name);
    let capacity = json!({
        "cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi",
        GPU_RESOURCE: (sim.gpus.len() as u32 * spec.time_slicing).to_string(),
    });
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status (kube-gpu-metrics standalone)"),
        ],
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": spec.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.20.2",
            "kubeProxyVersion": "v1.20.2", "containerRuntimeVersion": "containerd://simulated",
            "bootID": "", "machineID": "", "systemUUID": "", "kernelVersion": "", "osImage": "kube-gpu-metrics standalone",
        },
    }})
}

/// The node's Lease in `kube-node-lease`, owned by the Node (so it goes
/// with it), renewed now.
pub fn lease(node: &str, node_uid: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node, "namespace": "kube-node-lease", "annotations": owned(),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
        },
        "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew_time()},
    })
}

/// A Lease's `renewTime` now (a MicroTime).
pub fn renew_time() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// The `nvidia` RuntimeClass the GPU Operator creates.
pub fn runtime_class() -> Value {
    json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": "nvidia", "annotations": owned()},
        "handler": "nvidia",
    })
}

/// The namespace of the adapter's Service.
pub fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "annotations": owned()}})
}

/// The Service kube-apiserver dials the adapter through: Endpoints refuse
/// loopback addresses, an ExternalName `localhost` does not.
pub fn service(port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE, "annotations": owned()},
        "spec": {"type": "ExternalName", "externalName": "localhost",
                 "ports": [{"name": "https", "protocol": "TCP", "port": port, "targetPort": port}]},
    })
}

/// The APIService name of `(group, version)`.
pub fn api_service_name(group: &str, version: &str) -> String {
    format!("{version}.{group}")
}

/// One APIService to the adapter, trusting `ca_pem`.
pub fn api_service(group: &str, version: &str, priority: u32, port: u16, ca_pem: &str) -> Value {
    use base64::Engine;
    json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": api_service_name(group, version), "annotations": owned()},
        "spec": {
            "group": group, "version": version,
            "groupPriorityMinimum": 100, "versionPriority": priority,
            "service": {"namespace": NAMESPACE, "name": SERVICE, "port": port},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        },
    })
}

/// What the HPA controller needs to read the metrics APIs: a ClusterRole
/// and its binding to the controller's ServiceAccount (as a deployed
/// adapter's manifests grant it).
pub fn metrics_reader() -> (Value, Value) {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": METRICS_READER, "annotations": owned()},
        "rules": [{"apiGroups": ["custom.metrics.k8s.io", "external.metrics.k8s.io"],
                   "resources": ["*"], "verbs": ["get", "list", "watch"]}],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": METRICS_READER, "annotations": owned()},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": METRICS_READER},
        "subjects": [{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}],
    });
    (role, binding)
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests;
