//! Attribution on a real node: the kubelet's PodResources API (with
//! backoff while it fails), the device manager checkpoint for pod UIDs, and
//! `/proc` for the PIDs on shared GPUs.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::checkpoint::Checkpoint;
use super::podresources::PodResourcesClient;
use super::process::ProcResolver;
use super::{Allocations, Attribution, AttributionArgs, ContainerAllocation};
use crate::retry::Backoff;

/// The kubelet's PodResources API, the checkpoint for pod UIDs, and the
/// host's `/proc` for the PIDs on shared GPUs.
pub struct KubeletAttribution {
    client: PodResourcesClient,
    resource_name: String,
    checkpoint: Checkpoint,
    backoff: Backoff,
    checkpoint_warned: bool,
    pids: ProcResolver,
}

impl KubeletAttribution {
    /// The kubelet and `/proc`, as the flags describe them.
    pub fn new(args: &AttributionArgs) -> Self {
        Self {
            client: PodResourcesClient::new(&args.pod_resources_socket, args.pod_resources_timeout),
            resource_name: args.gpu_resource_name.clone(),
            checkpoint: Checkpoint::new(args.kubelet_checkpoint.clone()),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            checkpoint_warned: false,
            pids: ProcResolver::new(args.proc_root.clone()),
        }
    }

    /// The current allocations. While the kubelet fails, GPUs go unlabelled
    /// rather than carry possibly stale pod labels.
    async fn fetch(&mut self) -> Allocations {
        let kubelet = self;
        {
            {
                let now = Instant::now();
                if !kubelet.backoff.due(now) {
                    return Allocations::Unavailable { attempted: false };
                }
                match kubelet.client.list(&kubelet.resource_name).await {
                    Ok(mut allocations) => {
                        if kubelet.backoff.failing() {
                            tracing::info!("kubelet PodResources answers again; pod labels are back");
                        }
                        kubelet.backoff.succeeded();
                        if any_gpu_shared(&allocations) {
                            if let Err(e) = kubelet.checkpoint.fill_pod_uids(&mut allocations) {
                                if !std::mem::replace(&mut kubelet.checkpoint_warned, true) {
                                    tracing::warn!(error = %e, "shared GPUs cannot be split between pods");
                                }
                            } else {
                                kubelet.checkpoint_warned = false;
                            }
                        }
                        Allocations::Known(allocations)
                    }
                    Err(e) => {
                        let first = !kubelet.backoff.failing();
                        let wait = kubelet.backoff.failed(now);
                        if first {
                            tracing::warn!(error = %e, "GPU series are served without pod labels until the kubelet answers");
                        } else {
                            tracing::debug!(error = %e, retry_in = ?wait, "kubelet PodResources still failing");
                        }
                        Allocations::Unavailable { attempted: true }
                    }
                }
            }
        }
    }
}

/// Whether two allocations name the same GPU (time-slicing).
pub(crate) fn any_gpu_shared(allocations: &[ContainerAllocation]) -> bool {
    let mut bases: Vec<&str> =
        allocations.iter().flat_map(|a| &a.device_ids).map(|id| super::device_base(id)).collect();
    let n = bases.len();
    bases.sort_unstable();
    bases.dedup();
    bases.len() != n
}

impl Attribution for KubeletAttribution {
    fn allocations(&mut self) -> Pin<Box<dyn Future<Output = Allocations> + Send + '_>> {
        Box::pin(self.fetch())
    }

    fn pod_uid_of(&mut self, pid: u32) -> Option<String> {
        self.pids.pod_uid_of(pid)
    }

    fn end_pass(&mut self) {
        self.pids.end_pass();
    }
}
