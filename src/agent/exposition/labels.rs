//! The label sets of one sample, in both naming schemes, built from it by
//! plain code on every render: each set is rendered once and shared by every
//! series that carries it.

use super::Naming;
use crate::agent::sample::NodeReading;
use crate::attribution::Sharing;
use crate::family_writer::push_label;

/// Label sets rendered back to back into one buffer: one allocation for all
/// the GPUs (or pods) of a sample instead of one per set, kept from one
/// render to the next.
#[derive(Debug, Default)]
pub(super) struct LabelSets {
    text: String,
    ends: Vec<usize>,
}

impl LabelSets {
    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    /// Adds a set: the rendered sets `parts` (any may be empty), then
    /// `pairs`, a pair with an empty value left out (an empty label is no
    /// label to Prometheus).
    fn push(&mut self, parts: &[&str], pairs: &[(&str, &str)]) {
        let start = self.text.len();
        for part in parts.iter().filter(|p| !p.is_empty()) {
            if self.text.len() > start {
                self.text.push(',');
            }
            self.text.push_str(part);
        }
        for (name, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
            if self.text.len() > start {
                self.text.push(',');
            }
            push_label(&mut self.text, name, value);
        }
        self.ends.push(self.text.len());
    }

    /// The `i`th set.
    pub(super) fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// Every label set of a sample.
#[derive(Debug, Default)]
pub(super) struct SampleLabels {
    /// `node="…"`: the agent's own series.
    pub own: String,
    /// Per GPU: `node`, `gpu`, and `uuid`, `model` where known.
    pub gpus: LabelSets,
    /// Per GPU, for its native series: its set, and the pod labels of the
    /// one container holding it exclusively, if one does.
    pub devices: LabelSets,
    /// Per GPU: `pci_bus_id`, `driver_version`, `cuda_version` where known
    /// (`nvidia_gpu_info`).
    pub info: LabelSets,
    /// Per usage: `namespace`, `pod`, `container`.
    pub pods: LabelSets,
    /// Per usage: the set of the GPU (or MIG device) it holds.
    pub held: LabelSets,
    /// Per MIG device, GPU by GPU: its GPU's set, then its UUID, instances
    /// and profile.
    pub migs: LabelSets,
    /// Per MIG device, dcgm-exporter's: its GPU's set, then `GPU_I_ID` and
    /// `GPU_I_PROFILE`.
    pub dcgm_migs: LabelSets,
    /// Per MIG device: the GPU it is on, and the usage of the one container
    /// holding it, if exactly one does.
    pub mig_devices: Vec<(usize, usize, Option<usize>)>,
    /// Per GPU, dcgm-exporter's: `gpu`, `UUID`, `pci_bus_id`, `device`,
    /// `modelName`, the node, `DCGM_FI_DRIVER_VERSION` where known.
    pub dcgm: LabelSets,
    /// dcgm-exporter's series of a GPU that is up: one per container
    /// holding it, or one without pod labels when none does (GPU, usage).
    pub dcgm_series: Vec<(usize, Option<usize>)>,
}

impl SampleLabels {
    /// Makes these the sets of `data`, keeping the buffers.
    pub(super) fn build(&mut self, data: &NodeReading, naming: Naming) {
        let node = data.node.as_str();
        self.own.clear();
        push_label(&mut self.own, "node", node);
        for sets in [
            &mut self.gpus,
            &mut self.devices,
            &mut self.info,
            &mut self.pods,
            &mut self.held,
            &mut self.migs,
            &mut self.dcgm_migs,
            &mut self.dcgm,
        ] {
            sets.clear();
        }
        self.mig_devices.clear();
        self.dcgm_series.clear();

        for u in &data.usages {
            self.pods.push(&[], &[("namespace", &u.namespace), ("pod", &u.pod), ("container", &u.container)]);
        }
        let driver = data.driver_version.as_deref().unwrap_or("");
        let hostname = naming.dcgm_hostname_label.name();
        for (i, gpu) in data.gpus.iter().enumerate() {
            let id = &gpu.identity;
            let mut index = itoa::Buffer::new();
            let index = index.format(id.index);
            self.gpus.push(&[], &[("node", node), ("gpu", index), ("uuid", &id.uuid), ("model", &id.model)]);
            let whole = data.usages.iter().enumerate().filter(|(_, u)| u.gpu == i && u.mig.is_none());
            let exclusive = match sole(whole.clone()) {
                Some(k) if data.usages[k].sharing == Sharing::Exclusive => self.pods.get(k),
                _ => "",
            };
            self.devices.push(&[self.gpus.get(i), exclusive], &[]);
            let cuda = data.cuda_version.as_deref().unwrap_or("");
            self.info.push(&[], &[("pci_bus_id", &id.pci_bus_id), ("driver_version", driver), ("cuda_version", cuda)]);
            self.dcgm.push(
                &[],
                &[
                    ("gpu", index),
                    ("UUID", &id.uuid),
                    ("pci_bus_id", &id.pci_bus_id),
                    ("device", &format!("nvidia{index}")),
                    ("modelName", &id.model),
                    (hostname, node),
                    ("DCGM_FI_DRIVER_VERSION", driver),
                ],
            );
            if gpu.up {
                let before = self.dcgm_series.len();
                self.dcgm_series.extend(whole.map(|(k, _)| (i, Some(k))));
                if self.dcgm_series.len() == before {
                    self.dcgm_series.push((i, None));
                }
            }
            for (m, mig) in gpu.reading.mig_devices.iter().enumerate() {
                let (mut gi, mut ci) = (itoa::Buffer::new(), itoa::Buffer::new());
                let (gi, ci) = (gi.format(mig.gpu_instance_id), ci.format(mig.compute_instance_id));
                let instances = [("gpu_instance_id", gi), ("compute_instance_id", ci)];
                self.migs.push(
                    &[self.gpus.get(i)],
                    &[("mig_uuid", &mig.uuid), instances[0], instances[1], ("mig_profile", &mig.profile)],
                );
                self.dcgm_migs.push(&[self.dcgm.get(i)], &[("GPU_I_ID", gi), ("GPU_I_PROFILE", &mig.profile)]);
                let holders = data.usages.iter().enumerate().filter(|(_, u)| u.gpu == i && u.mig == Some(m));
                self.mig_devices.push((i, m, sole(holders)));
            }
        }
        for u in &data.usages {
            let set = match u.mig {
                Some(m) => {
                    self.mig_devices.iter().position(|&(i, n, _)| (i, n) == (u.gpu, m)).map(|j| self.migs.get(j))
                }
                None => (u.gpu < data.gpus.len()).then(|| self.gpus.get(u.gpu)),
            };
            self.held.push(&[set.unwrap_or("")], &[]);
        }
    }

    /// The MIG devices of the GPUs that are up: each one's position in
    /// `migs`, GPU, index on it, and sole holder.
    pub(super) fn up_migs<'a>(
        &'a self,
        data: &'a NodeReading,
    ) -> impl Iterator<Item = (usize, usize, usize, Option<usize>)> + 'a {
        self.mig_devices
            .iter()
            .enumerate()
            .filter(move |(_, (i, _, _))| data.gpus[*i].up)
            .map(|(j, &(i, m, h))| (j, i, m, h))
    }

    /// A usage's pod set, or none.
    pub(super) fn pod(&self, usage: Option<usize>) -> &str {
        usage.map_or("", |k| self.pods.get(k))
    }
}

/// The usage of the one holder `holders` has, if exactly one.
fn sole<'a, T: 'a>(mut holders: impl Iterator<Item = (usize, &'a T)>) -> Option<usize> {
    match (holders.next(), holders.next()) {
        (Some((k, _)), None) => Some(k),
        _ => None,
    }
}
