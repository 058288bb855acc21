//! Renders a sample as the `/v1/pods` document ([`crate::feed::NodeFeed`]),
//! beside [`super::exposition`] for `/metrics`.

use super::sample::NodeReading;
use crate::attribution::{PodGpuUsage, Sharing};
use crate::feed::{FeedGpu, FeedPod, NodeFeed, unix_ms};

/// The feed document of a sample: per pod, the mean over its GPUs, or no
/// value (and a reason) if any of its GPUs has none.
pub fn node_feed(data: &NodeReading) -> NodeFeed {
    let gpus = data
        .gpus
        .iter()
        .map(|g| FeedGpu {
            index: g.identity.index,
            uuid: g.identity.uuid.clone(),
            model: g.identity.model.clone(),
            up: g.up,
            utilization_percent: g.reading.utilization_percent,
            memory_utilization_percent: g.reading.memory_utilization_percent,
            memory_used_bytes: g.reading.memory_used_bytes,
            memory_total_bytes: g.reading.memory_total_bytes,
        })
        .collect();

    let mut pods: Vec<FeedPod> = Vec::new();
    let mut members: Vec<Vec<&PodGpuUsage>> = Vec::new();
    for usage in &data.usages {
        match pods.iter().position(|p| p.namespace == usage.namespace && p.pod == usage.pod) {
            Some(i) => members[i].push(usage),
            None => {
                pods.push(FeedPod {
                    namespace: usage.namespace.clone(),
                    pod: usage.pod.clone(),
                    gpus: Vec::new(),
                    sharing: String::new(),
                    utilization_percent: None,
                    memory_utilization_percent: None,
                    memory_used_bytes: None,
                    reason: None,
                });
                members.push(vec![usage]);
            }
        }
    }
    for (pod, usages) in pods.iter_mut().zip(&members) {
        // A MIG device is named by its own UUID, as the device plugin names it.
        pod.gpus = usages
            .iter()
            .map(|u| {
                let gpu = &data.gpus[u.gpu];
                match u.mig.and_then(|m| gpu.reading.mig_devices.get(m)) {
                    Some(mig) => mig.uuid.clone(),
                    None => gpu.identity.uuid.clone(),
                }
            })
            .collect();
        let shared = usages.iter().any(|u| u.sharing == Sharing::Shared);
        pod.sharing = if shared { Sharing::Shared } else { Sharing::Exclusive }.as_str().to_string();
        let n = usages.len() as f64;
        match usages.iter().map(|u| u.utilization_percent).collect::<Result<Vec<f64>, _>>() {
            Ok(values) => pod.utilization_percent = Some(values.iter().sum::<f64>() / n),
            Err(reason) => pod.reason = Some(reason.as_str().to_string()),
        }
        if let Some(values) = usages.iter().map(|u| u.memory_utilization_percent).collect::<Option<Vec<f64>>>() {
            pod.memory_utilization_percent = Some(values.iter().sum::<f64>() / n);
        }
        pod.memory_used_bytes = usages.iter().map(|u| u.memory_used_bytes).sum();
    }

    NodeFeed {
        node: data.node.clone(),
        timestamp_ms: unix_ms(data.taken_at),
        interval_ms: data.interval.as_millis() as u64,
        gpus,
        pods,
    }
}
