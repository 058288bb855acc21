//! What the twin simulates: the cluster (nodes, their GPUs, taints and the
//! device plugin's time-slicing replicas), the Deployments (tolerations,
//! start-up time, initial replicas) and the metric pipeline's stages. Each
//! has a YAML form and the reference cluster's defaults.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::gpu::model::GpuModelId;

/// Why a twin input was refused.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {reason}")]
pub struct ModelError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// A taint, as on a Node (`NoSchedule` is what keeps pods off).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    #[serde(default)]
    pub value: String,
    /// Effect: `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// A toleration, as in a pod template.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// Key; empty with `Exists` tolerates everything.
    #[serde(default)]
    pub key: String,
    /// `Exists` or `Equal` (default).
    #[serde(default = "equal")]
    pub operator: String,
    /// Value, for `Equal`.
    #[serde(default)]
    pub value: String,
    /// Effect; empty matches every effect.
    #[serde(default)]
    pub effect: String,
}

fn equal() -> String {
    "Equal".into()
}

impl Toleration {
    /// Whether this toleration tolerates `taint`, as the scheduler decides.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        let effect = self.effect.is_empty() || self.effect == taint.effect;
        let key = self.key.is_empty() || self.key == taint.key;
        let value = self.operator == "Exists" || self.value == taint.value;
        effect && key && value
    }
}

/// One node.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// Name.
    pub name: String,
    /// Its GPUs (`rtx4090`, `rtx3060`, …).
    pub gpus: Vec<GpuModelId>,
    /// Its taints.
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// The device plugin's time-slicing replicas per GPU (1: exclusive).
    #[serde(default = "one")]
    pub time_slicing: u32,
}

fn one() -> u32 {
    1
}

/// The cluster.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Its nodes.
    pub nodes: Vec<NodeSpec>,
}

impl ClusterSpec {
    /// The reference cluster: `mainpc` with an RTX 4090 (master and worker),
    /// `pc2` with an RTX 3060, tainted for GPU work; both GPUs time-sliced
    /// two ways by the device plugin.
    pub fn reference() -> Self {
        let gpu_taint = Taint { key: "gpu".into(), value: "true".into(), effect: "NoSchedule".into() };
        ClusterSpec {
            nodes: vec![
                NodeSpec { name: "mainpc".into(), gpus: vec![GpuModelId::Rtx4090], taints: vec![], time_slicing: 2 },
                NodeSpec {
                    name: "pc2".into(),
                    gpus: vec![GpuModelId::Rtx3060],
                    taints: vec![gpu_taint],
                    time_slicing: 2,
                },
            ],
        }
    }
}

/// A Deployment the twin runs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// Name (the HPA's `scaleTargetRef.name`, and the scenario's workload).
    pub name: String,
    /// The pod template's tolerations.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// How long a scheduled pod takes to become ready (loading a model).
    #[serde(default = "default_startup", with = "startup_duration")]
    pub startup: Duration,
    /// Replicas at the start.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Nodes its pods may run on (a `nodeSelector` on the hostname, or
    /// required node affinity); empty: any node it tolerates.
    #[serde(default)]
    pub required_nodes: Vec<String>,
    /// Nodes the scheduler prefers while they have room (preferred node
    /// affinity, which outweighs spreading).
    #[serde(default)]
    pub preferred_nodes: Vec<String>,
    /// The Service in front of its pods, when several Deployments share
    /// one (one per GPU model, each with its own HPA): the scenario's
    /// demand is then the Service's, spread over all their ready pods.
    #[serde(default)]
    pub service: Option<String>,
    /// How it leaves zero besides its HPA: `push` is KEDA's activation
    /// through an `external-push` scaler, the first replica within one poll
    /// (1 s) of demand arriving; `hpa` (the default) waits for its HPA.
    #[serde(default)]
    pub activation: Activation,
}

/// What wakes a Deployment at zero replicas.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Only its HPA, on an External metric.
    #[default]
    Hpa,
    /// KEDA's activation pushed within one poll of demand arriving.
    Push,
}

fn default_startup() -> Duration {
    Duration::from_secs(45)
}

/// The longest a Deployment's pods may take to start (`startup`).
pub const MAX_STARTUP: Duration = Duration::from_secs(24 * 3600);
/// The most replicas a Deployment may start with.
pub const MAX_REPLICAS: u32 = 1_000;

/// `humantime` strings (`45s`) for a start-up time, at most [`MAX_STARTUP`].
mod startup_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        let startup = humantime::parse_duration(&text).map_err(serde::de::Error::custom)?;
        if startup > super::MAX_STARTUP {
            return Err(serde::de::Error::custom(format!(
                "startup {text:?}: at most {}",
                humantime::format_duration(super::MAX_STARTUP)
            )));
        }
        Ok(startup)
    }
}

impl DeploymentSpec {
    /// The default for a Deployment an HPA scales: tolerates the reference
    /// cluster's `gpu` taint, 45 s to start, `replicas` to begin with.
    pub fn default_for(name: &str, replicas: u32) -> Self {
        DeploymentSpec {
            name: name.into(),
            tolerations: vec![Toleration {
                key: "gpu".into(),
                operator: "Exists".into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            }],
            startup: default_startup(),
            replicas,
            required_nodes: Vec::new(),
            preferred_nodes: Vec::new(),
            service: None,
            activation: Activation::Hpa,
        }
    }

    /// Whether a pod of this Deployment may run on `node`: its taints are
    /// tolerated, and it is one of the required nodes if any are named.
    pub fn fits(&self, node: &NodeSpec) -> bool {
        let required = self.required_nodes.is_empty() || self.required_nodes.contains(&node.name);
        required
            && node
                .taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| self.tolerations.iter().any(|tol| tol.tolerates(t)))
    }

    /// The name the scenario gives its demand: its Service's, or its own.
    pub fn demand_name(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentsFile {
    deployments: Vec<DeploymentSpec>,
}

fn read(flag: &'static str, path: &Path) -> Result<String, ModelError> {
    crate::input::read_yaml(path, flag).map_err(|e| ModelError {
        flag,
        path: path.display().to_string(),
        reason: e.reason,
    })
}

/// The most nodes a cluster file may have, GPUs a node, and time-slicing replicas a GPU.
pub const MAX_NODES: usize = 1_000;
/// See [`MAX_NODES`].
pub const MAX_GPUS_PER_NODE: usize = 16;
/// See [`MAX_NODES`].
pub const MAX_TIME_SLICING: u32 = 64;

/// Reads `--cluster FILE`.
pub fn read_cluster(path: &Path) -> Result<ClusterSpec, ModelError> {
    let err = |reason: String| ModelError { flag: "--cluster", path: path.display().to_string(), reason };
    let cluster: ClusterSpec = serde_yaml_ng::from_str(&read("--cluster", path)?).map_err(|e| err(e.to_string()))?;
    if cluster.nodes.iter().all(|n| n.gpus.is_empty()) {
        return Err(err("no node has a GPU".into()));
    }
    if cluster.nodes.iter().any(|n| n.time_slicing == 0) {
        return Err(err("timeSlicing must be at least 1".into()));
    }
    if cluster.nodes.len() > MAX_NODES {
        return Err(err(format!("{} nodes: at most {MAX_NODES}", cluster.nodes.len())));
    }
    if let Some(n) = cluster.nodes.iter().find(|n| n.gpus.len() > MAX_GPUS_PER_NODE) {
        return Err(err(format!("node {}: {} GPUs: at most {MAX_GPUS_PER_NODE}", n.name, n.gpus.len())));
    }
    if let Some(n) = cluster.nodes.iter().find(|n| n.time_slicing > MAX_TIME_SLICING) {
        return Err(err(format!("node {}: timeSlicing {}: at most {MAX_TIME_SLICING}", n.name, n.time_slicing)));
    }
    Ok(cluster)
}

/// Reads `--deployments FILE`.
pub fn read_deployments(path: &Path) -> Result<Vec<DeploymentSpec>, ModelError> {
    let err = |reason: String| ModelError { flag: "--deployments", path: path.display().to_string(), reason };
    let file: DeploymentsFile =
        serde_yaml_ng::from_str(&read("--deployments", path)?).map_err(|e| err(e.to_string()))?;
    for d in &file.deployments {
        if d.replicas > MAX_REPLICAS {
            return Err(err(format!("deployment {}: replicas {}: at most {MAX_REPLICAS}", d.name, d.replicas)));
        }
    }
    Ok(file.deployments)
}

/// How the metric reaches the HPA: periodic stages, each passing on the
/// latest value of the one before at its own ticks.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// Its name in reports.
    pub name: String,
    /// Stage periods, source first.
    pub stages: Vec<Duration>,
}

impl Pipeline {
    /// `direct` (this project: 1 s sampling, 1 s polling), `seed-stack`
    /// (DCGM's 30 s collection, Prometheus' 30 s scrape; prometheus-adapter
    /// queries Prometheus on each request), or stage periods (`5s,15s`).
    pub fn parse(text: &str) -> Result<Pipeline, String> {
        let seconds = |s: &[u64]| s.iter().map(|&n| Duration::from_secs(n)).collect();
        match text {
            "direct" => Ok(Pipeline { name: "direct".into(), stages: seconds(&[1, 1]) }),
            "seed-stack" => Ok(Pipeline { name: "seed-stack".into(), stages: seconds(&[30, 30]) }),
            custom => {
                let stages = custom
                    .split(',')
                    .map(|d| humantime::parse_duration(d.trim()).map_err(|e| format!("{d:?}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--pipeline is direct, seed-stack or stage periods like 5s,15s ({e})"))?;
                if stages.iter().any(|d| d.as_secs() == 0) {
                    return Err("--pipeline stages are whole seconds, at least 1s".into());
                }
                Ok(Pipeline { name: custom.into(), stages })
            }
        }
    }
}
