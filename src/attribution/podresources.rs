//! A client of the kubelet's PodResources API (`v1.PodResourcesLister/List`)
//! over its unix socket.
//!
//! The kubelet restarts, and its socket comes and goes with it. The channel
//! connects lazily, so a call after a restart reconnects by itself; the caller
//! backs off between failed calls (see [`crate::agent::sampler`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use super::{ContainerAllocation, resource_matches};

/// The generated PodResources v1 messages and services.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("v1");
}

use proto::pod_resources_lister_client::PodResourcesListerClient;

/// The kubelet's answer is small, but a node with thousands of containers
/// outgrows tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// Why a PodResources call failed.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    /// The call failed: no socket, kubelet restarting, timeout.
    #[error("PodResources List on {socket} (--pod-resources-socket) failed: {source}")]
    Call {
        /// The socket.
        socket: PathBuf,
        /// What gRPC said.
        #[source]
        source: tonic::Status,
    },
}

/// A PodResources client bound to one socket path.
#[derive(Clone, Debug)]
pub struct PodResourcesClient {
    socket: PathBuf,
    client: PodResourcesListerClient<Channel>,
}

impl PodResourcesClient {
    /// A client of the socket at `socket`; nothing connects until the first call.
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        let path = socket.to_path_buf();
        // The URI is a placeholder: the connector dials the socket.
        let channel = Endpoint::from_static("http://kubelet.sock")
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }));
        let client = PodResourcesListerClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        Self { socket: socket.to_path_buf(), client }
    }

    /// Lists the containers holding GPUs (see [`allocations`]).
    pub async fn list(
        &mut self,
        resource_names: &[String],
        dra_drivers: &[String],
    ) -> Result<Listed, PodResourcesError> {
        let response = self
            .client
            .list(proto::ListPodResourcesRequest {})
            .await
            .map_err(|source| PodResourcesError::Call { socket: self.socket.clone(), source })?;
        Ok(allocations(response.into_inner(), resource_names, dra_drivers))
    }
}

/// The containers of a List response that hold GPUs: devices of the
/// `resource_names` from device plugins, and devices of the `dra_drivers`
/// allocated through ResourceClaims. A claimed device the agent cannot
/// place is left out and reported in [`Listed::unplaced`].
pub fn allocations(
    response: proto::ListPodResourcesResponse,
    resource_names: &[String],
    dra_drivers: &[String],
) -> Listed {
    let mut listed = Listed::default();
    for pod in response.pod_resources {
        for container in pod.containers {
            let mut device_ids: Vec<String> = container
                .devices
                .into_iter()
                .filter(|d| resource_matches(resource_names, &d.resource_name))
                .flat_map(|d| d.device_ids)
                .collect();
            for claim in &container.dynamic_resources {
                for resource in claim.claim_resources.iter().filter(|r| dra_drivers.contains(&r.driver_name)) {
                    match dra_device_id(&resource.device_name) {
                        Ok(id) => device_ids.push(id),
                        Err(reason) => listed.unplaced.push(UnplacedClaim {
                            namespace: pod.namespace.clone(),
                            pod: pod.name.clone(),
                            claim: claim.claim_name.clone(),
                            device: resource.device_name.clone(),
                            reason,
                        }),
                    }
                }
            }
            device_ids.sort_unstable();
            device_ids.dedup();
            if !device_ids.is_empty() {
                listed.allocations.push(ContainerAllocation {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    container: container.name,
                    pod_uid: None,
                    device_ids,
                });
            }
        }
    }
    listed
}

/// What one List call found.
#[derive(Debug, Default)]
pub struct Listed {
    /// The containers holding GPUs.
    pub allocations: Vec<ContainerAllocation>,
    /// Devices claimed through DRA that name no GPU the agent can find.
    pub unplaced: Vec<UnplacedClaim>,
}

/// A device a GPU driver allocated through a ResourceClaim that the agent
/// cannot tie to a GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnplacedClaim {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The ResourceClaim.
    pub claim: String,
    /// The device name the driver gave.
    pub device: String,
    /// Why it cannot be placed.
    pub reason: &'static str,
}

/// The device ID (a GPU index) of a device NVIDIA's DRA driver names
/// `gpu-<index>`, as it names whole GPUs in its ResourceSlices.
fn dra_device_id(device_name: &str) -> Result<String, &'static str> {
    if device_name.is_empty() {
        return Err("the claim names no device (a kubelet before 1.31 does not say which)");
    }
    match device_name.strip_prefix("gpu-").map(str::parse::<u32>) {
        Some(Ok(index)) => Ok(index.to_string()),
        _ => Err("not a whole GPU (gpu-<index>): MIG and other partitions are not placed"),
    }
}
