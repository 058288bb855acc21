//! Attribution on a real node: the kubelet's PodResources API (with
//! backoff while it fails), the device manager checkpoint for pod UIDs, and
//! `/proc` for the PIDs on shared GPUs.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::checkpoint::Checkpoint;
use super::podresources::{Listed, PodResourcesClient, UnplacedClaim};
use super::process::ProcResolver;
use super::{Allocations, Attribution, AttributionArgs};
use crate::retry::Backoff;

/// The kubelet's PodResources API, the checkpoint for pod UIDs, and the
/// host's `/proc` for the PIDs on shared GPUs.
pub struct KubeletAttribution {
    client: PodResourcesClient,
    resource_names: Vec<String>,
    dra_drivers: Vec<String>,
    /// The unplaced claims last warned about, so each is logged once.
    unplaced_warned: Vec<UnplacedClaim>,
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
            resource_names: args.gpu_resource_names.clone(),
            dra_drivers: args.gpu_dra_drivers.clone(),
            unplaced_warned: Vec::new(),
            checkpoint: Checkpoint::new(args.kubelet_checkpoint.clone()),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            checkpoint_warned: false,
            pids: ProcResolver::new(args.proc_root.clone()),
        }
    }

    /// The current allocations. While the kubelet fails, GPUs go unlabelled
    /// rather than carry possibly stale pod labels.
    async fn fetch(&mut self) -> Allocations {
        let now = Instant::now();
        if !self.backoff.due(now) {
            return Allocations::Unavailable { attempted: false };
        }
        match self.client.list(&self.resource_names, &self.dra_drivers).await {
            Ok(Listed { mut allocations, unplaced }) => {
                for claim in unplaced.iter().filter(|c| !self.unplaced_warned.contains(c)) {
                    tracing::warn!(
                        namespace = %claim.namespace, pod = %claim.pod, claim = %claim.claim, device = %claim.device,
                        reason = claim.reason, "a GPU claimed through DRA cannot be placed; the pod gets no GPU series for it"
                    );
                }
                self.unplaced_warned = unplaced;
                if self.backoff.failing() {
                    tracing::info!("kubelet PodResources answers again; pod labels are back");
                }
                self.backoff.succeeded();
                // Pod UIDs tie processes to pods: per-pod memory and shares.
                if !allocations.is_empty() {
                    if let Err(e) = self.checkpoint.fill_pod_uids(&mut allocations) {
                        if !std::mem::replace(&mut self.checkpoint_warned, true) {
                            tracing::warn!(error = %e, "pod memory and shared GPUs cannot be split between pods");
                        }
                    } else {
                        self.checkpoint_warned = false;
                    }
                }
                Allocations::Known(allocations)
            }
            Err(e) => {
                let first = !self.backoff.failing();
                let wait = self.backoff.failed(now);
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
