//! What a simulated node's kubelet offers the agent on the node itself, so
//! that the agent attributes GPUs by its normal path
//! ([`crate::attribution::kubelet::KubeletAttribution`]), as on a real node:
//! - the PodResources v1 API on a unix socket, answering from the node's
//!   pods (in a different order each call, as the kubelet's pod manager
//!   lists them);
//! - the device manager checkpoint in the 1.20 layout (`DeviceIDs` by NUMA
//!   node), which joins containers to pod UIDs;
//! - `<proc>/<pid>/cgroup` for each GPU process, under its pod's cgroupfs
//!   path (`/kubepods/burstable/pod<uid>/<container>`), standing in for the
//!   host's `/proc`.
//!
//! Everything lives in one directory per node.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::SimNode;
use super::kubelet::GPU_RESOURCE;
use crate::attribution::AttributionArgs;
use crate::attribution::podresources::proto::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use crate::attribution::podresources::proto::{
    ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse, PodResources,
};

/// A simulated node's kubelet socket, checkpoint and process files.
pub struct NodeApi {
    dir: PathBuf,
    sim: Arc<SimNode>,
    /// Time-slice replicas per GPU, as the device plugin registered them.
    replicas: u32,
    /// The PIDs whose files exist.
    pids: Mutex<BTreeSet<u32>>,
}

impl NodeApi {
    /// Makes the node's directory under `root`, for `sim` with `replicas`
    /// time-slice replicas per GPU.
    pub fn new(root: &Path, sim: Arc<SimNode>, replicas: u32) -> std::io::Result<NodeApi> {
        let dir = root.join(&sim.node);
        for sub in ["pod-resources", "device-plugins", "proc"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let api = NodeApi { dir, sim, replicas, pids: Mutex::new(BTreeSet::new()) };
        api.publish()?;
        Ok(api)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("pod-resources/kubelet.sock")
    }

    fn checkpoint(&self) -> PathBuf {
        self.dir.join("device-plugins/kubelet_internal_checkpoint")
    }

    /// The agent's attribution flags for this node.
    pub fn attribution_args(&self) -> AttributionArgs {
        AttributionArgs {
            pod_resources_socket: self.socket(),
            pod_resources_timeout: Duration::from_secs(2),
            gpu_resource_names: vec![GPU_RESOURCE.to_string()],
            gpu_dra_drivers: Vec::new(),
            kubelet_checkpoint: self.checkpoint(),
            proc_root: self.dir.join("proc"),
        }
    }

    /// Writes the checkpoint and the process files for the node's pods now.
    pub fn publish(&self) -> std::io::Result<()> {
        let allocations = self.sim.allocations();
        let entries: Vec<serde_json::Value> = allocations
            .iter()
            .map(|a| {
                serde_json::json!({
                    "PodUID": a.pod_uid, "ContainerName": a.container, "ResourceName": GPU_RESOURCE,
                    "DeviceIDs": {"0": a.device_ids}, "AllocResp": "",
                })
            })
            .collect();
        let registered: Vec<String> = (0..self.replicas)
            .flat_map(|r| self.sim.gpus.iter().map(move |g| super::time_slice_replica(&g.identity.uuid, r)))
            .collect();
        let checkpoint = serde_json::json!({
            "Data": {"PodDeviceEntries": entries, "RegisteredDevices": {GPU_RESOURCE: registered}},
            "Checksum": 0,
        });
        let tmp = self.checkpoint().with_extension("tmp");
        std::fs::write(&tmp, checkpoint.to_string())?;
        std::fs::rename(&tmp, self.checkpoint())?;

        let workloads = self.sim.workloads();
        let now: BTreeSet<u32> = workloads.iter().flatten().map(|w| w.pid).collect();
        let mut written = self.pids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in written.difference(&now) {
            let _ = std::fs::remove_dir_all(self.dir.join("proc").join(gone.to_string()));
        }
        for w in workloads.iter().flatten().filter(|w| !written.contains(&w.pid)) {
            let dir = self.dir.join("proc").join(w.pid.to_string());
            std::fs::create_dir_all(&dir)?;
            let path = format!("/kubepods/burstable/pod{}/{}", w.pod_uid, w.container);
            std::fs::write(dir.join("cgroup"), format!("12:devices:{path}\n1:name=systemd:{path}\n0::/\n"))?;
        }
        *written = now;
        Ok(())
    }

    /// Serves PodResources on the node's socket until `shutdown`, then
    /// removes the socket, as a stopping kubelet does.
    pub async fn serve(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        use hyper::server::conn::http2;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tower::Service;
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let service = PodResourcesListerServer::new(Lister(self.sim.clone()));
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "PodResources accept failed");
                        continue;
                    }
                },
                _ = crate::shutdown::stopped(&mut shutdown) => break,
            };
            let service = service.clone();
            tokio::spawn(async move {
                let call = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut service = service.clone();
                    async move { service.call(req).await }
                });
                let served = http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), call);
                if let Err(e) = served.await {
                    tracing::debug!(error = %e, "PodResources connection ended with an error");
                }
            });
        }
        std::fs::remove_file(&socket)
    }
}

/// The PodResources API over a simulated node's pods.
struct Lister(Arc<SimNode>);

#[tonic::async_trait]
impl PodResourcesLister for Lister {
    async fn list(
        &self,
        _: tonic::Request<ListPodResourcesRequest>,
    ) -> Result<tonic::Response<ListPodResourcesResponse>, tonic::Status> {
        let mut pods: Vec<PodResources> = Vec::new();
        for a in self.0.allocations() {
            let container = ContainerResources {
                name: a.container,
                devices: vec![ContainerDevices {
                    resource_name: GPU_RESOURCE.to_string(),
                    device_ids: a.device_ids,
                    ..Default::default()
                }],
                ..Default::default()
            };
            match pods.iter_mut().find(|p| p.namespace == a.namespace && p.name == a.pod) {
                Some(pod) => pod.containers.push(container),
                None => pods.push(PodResources { name: a.pod, namespace: a.namespace, containers: vec![container] }),
            }
        }
        fastrand::shuffle(&mut pods);
        Ok(tonic::Response::new(ListPodResourcesResponse { pod_resources: pods }))
    }
}

#[cfg(test)]
mod tests;
