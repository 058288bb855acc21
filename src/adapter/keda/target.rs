//! What a ScaledObject scales, so that "no pod matches" is never mistaken
//! for "the workload is idle".
//!
//! In a cluster the scaler reads the ScaledObject (`keda.sh/v1alpha1`) and
//! its scale target's `/scale` subresource: the target's pod selector is the
//! default `podSelector`, and its replica count tells a workload at zero
//! (inactive, rightly) from a selector that matches none of its pods (an
//! error naming `podSelector`). Answers are kept for [`CACHE_TTL`].
//!
//! `standalone` has no ScaledObjects: its simulated Deployments' pods carry
//! `app=<name>`, which is the default there, and a selector that matches no
//! pod is an error, since zero replicas cannot be told apart. An adapter
//! without a cluster knows no pod labels, so it evaluates no pod selector.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};

/// How long a ScaledObject's target is reused before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// A ScaledObject's scale target, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleTarget {
    /// `Deployment reasoning-suite`, for messages.
    pub description: String,
    /// The target's pod selector (its `/scale` `status.selector`).
    pub selector: String,
    /// Its desired replicas (`/scale` `spec.replicas`).
    pub replicas: i32,
}

/// Where a ScaledObject's target is learnt.
pub enum ScaleTargets {
    /// Read from the cluster.
    Cluster(ClusterTargets),
    /// `standalone`: pods labelled `app=<name>`, no ScaledObjects.
    Simulated,
    /// No cluster: no pod labels, so no pod selector can be evaluated.
    NoCluster,
}

/// What the scaler knows of a ScaledObject's workload beyond its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// Its scale target.
    Target(ScaleTarget),
    /// Nothing: why not.
    Unknown(String),
}

/// The answer for a ScaledObject: its target, or why it cannot be read.
type Answer = Result<ScaleTarget, String>;

/// ScaledObjects and their targets through the API, kept for [`CACHE_TTL`].
pub struct ClusterTargets {
    client: kube::Client,
    cache: Mutex<HashMap<(String, String), (Instant, Answer)>>,
}

/// The most ScaledObjects whose answers are kept.
const MAX_CACHED: usize = 10_000;

impl ClusterTargets {
    /// Reads through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client, cache: Mutex::new(HashMap::new()) }
    }

    /// The target of ScaledObject `namespace/name`, or why it cannot be read.
    pub async fn target(&self, namespace: &str, name: &str) -> Answer {
        let key = (namespace.to_string(), name.to_string());
        if let Some((at, answer)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return answer.clone();
        }
        let answer = self.read(namespace, name).await;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), answer.clone()));
        answer
    }

    async fn read(&self, namespace: &str, name: &str) -> Answer {
        let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
        let scaled_objects: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::from_gvk_with_plural(&gvk, "scaledobjects"),
        );
        let object = scaled_objects
            .get(name)
            .await
            .map_err(|e| format!("cannot read ScaledObject {namespace}/{name} (keda.sh/v1alpha1): {}", said(e)))?;
        let target = &object.data["spec"]["scaleTargetRef"];
        let target_name = target["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("ScaledObject {namespace}/{name} has no spec.scaleTargetRef.name"))?;
        let kind = target["kind"].as_str().filter(|k| !k.is_empty()).unwrap_or("Deployment");
        let api_version = target["apiVersion"].as_str().filter(|v| !v.is_empty()).unwrap_or("apps/v1");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let description = format!("{kind} {target_name}");
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, _) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| format!("cannot find the API of {description} ({api_version}): {}", said(e)))?;
        let targets: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
        let scale = targets
            .get_scale(target_name)
            .await
            .map_err(|e| format!("cannot read the /scale of {description}: {e}"))?;
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("the /scale of {description} has no status.selector"))?;
        let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
        Ok(ScaleTarget { description, selector, replicas })
    }
}

/// A kube error, as short as it can be said: kube-apiserver's own message.
fn said(error: kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

impl ScaleTargets {
    /// What is known of ScaledObject `namespace/name`'s target.
    pub async fn known(&self, namespace: &str, name: &str) -> Known {
        match self {
            ScaleTargets::Cluster(cluster) if !name.is_empty() => match cluster.target(namespace, name).await {
                Ok(target) => Known::Target(target),
                Err(why) => Known::Unknown(why),
            },
            ScaleTargets::Cluster(_) => Known::Unknown("the ScaledObject's name is empty".into()),
            ScaleTargets::Simulated => Known::Unknown("standalone has no ScaledObjects to read".into()),
            ScaleTargets::NoCluster => Known::Unknown("this adapter runs without a cluster".into()),
        }
    }
}
