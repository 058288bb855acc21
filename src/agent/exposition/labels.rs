//! The label sets a sample's series carry, rendered once and kept from one
//! sample to the next while what they are made of (node, GPU identities,
//! MIG devices, XID codes, pods) stays the same.
//!
//! Kept sets stay at the same address, so the encoder can tell that a
//! series' labels are unchanged by comparing addresses: see
//! [`super::encoder`].

use crate::agent::sample::{GpuState, SampleData};

/// Label sets rendered back to back into one buffer: one allocation for all
/// the GPUs (or pods) of a sample instead of one per set.
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

    /// Adds one set of `name="value"` pairs.
    fn push<'v>(&mut self, pairs: impl IntoIterator<Item = (&'static str, &'v str)>) {
        self.push_after("", pairs);
    }

    /// Adds one set: `prefix` (a rendered set) and then `pairs`.
    fn push_after<'v>(&mut self, prefix: &str, pairs: impl IntoIterator<Item = (&'static str, &'v str)>) {
        let start = self.text.len();
        self.text.push_str(prefix);
        for (name, value) in pairs {
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

    fn len(&self) -> usize {
        self.ends.len()
    }
}

/// Sets of several per GPU (its MIG devices, its XID codes), GPU by GPU.
#[derive(Debug, Default)]
pub(super) struct PerGpuSets {
    sets: LabelSets,
    /// Per GPU, the position of its first set.
    first: Vec<usize>,
}

impl PerGpuSets {
    /// GPU `gpu`'s `i`th set.
    pub(super) fn get(&self, gpu: usize, i: usize) -> &str {
        self.sets.get(self.first[gpu] + i)
    }

    fn clear(&mut self) {
        self.sets.clear();
        self.first.clear();
    }
}

/// Every label set of a sample, in both naming schemes.
#[derive(Debug, Default)]
pub(super) struct Labels {
    /// What the sets were built from, as [`write_inputs`] writes it.
    built_from: Vec<u8>,
    /// This sample's inputs, compared with `built_from`.
    scratch: Vec<u8>,
    /// `node="…"`: the agent's own series.
    pub own: String,
    /// Per GPU: `node`, `gpu`, and `uuid`, `model` when known.
    pub gpus: LabelSets,
    /// Per GPU: `pci_bus_id`, `driver_version`, `cuda_version` where known
    /// (`nvidia_gpu_info`).
    pub info: LabelSets,
    /// Per usage: `namespace`, `pod`, `container`.
    pub pods: LabelSets,
    /// Per GPU, dcgm-exporter's: `gpu`, `UUID`, `pci_bus_id`, `device`,
    /// `modelName`, `Hostname`, `DCGM_FI_DRIVER_VERSION` where known.
    pub dcgm: LabelSets,
    /// Per MIG device: its GPU's set, then its UUID, instances and profile.
    pub migs: PerGpuSets,
    /// Per MIG device, dcgm-exporter's: its GPU's set, then
    /// `GPU_I_ID` and `GPU_I_PROFILE`.
    pub dcgm_migs: PerGpuSets,
    /// Per GPU, `xid="…"` for each XID code it has seen, in code order.
    pub xids: PerGpuSets,
}

impl Labels {
    /// Makes the sets those of `data`, rebuilding them only when what they
    /// are made of changed. Returns whether they were rebuilt (and so moved).
    pub(super) fn refresh(&mut self, data: &SampleData) -> bool {
        self.scratch.clear();
        write_inputs(&mut self.scratch, data);
        if self.scratch == self.built_from && !self.built_from.is_empty() {
            return false;
        }
        std::mem::swap(&mut self.scratch, &mut self.built_from);
        self.build(data);
        true
    }

    fn build(&mut self, data: &SampleData) {
        let node = data.node.as_str();
        self.own.clear();
        push_label(&mut self.own, "node", node);
        for sets in [&mut self.gpus, &mut self.info, &mut self.pods, &mut self.dcgm] {
            sets.clear();
        }
        for sets in [&mut self.migs, &mut self.dcgm_migs, &mut self.xids] {
            sets.clear();
        }
        let versions =
            [("driver_version", data.driver_version.as_deref()), ("cuda_version", data.cuda_version.as_deref())];
        for gpu in &data.gpus {
            let id = &gpu.identity;
            let mut index = itoa::Buffer::new();
            let index = index.format(id.index);
            // A GPU lost before it could name itself has no UUID or model: an
            // empty label is no label to Prometheus, so none is written.
            let named = [("uuid", id.uuid.as_str()), ("model", id.model.as_str())];
            self.gpus.push(
                [("node", node), ("gpu", index)].into_iter().chain(named.into_iter().filter(|(_, v)| !v.is_empty())),
            );
            self.info.push(
                [("pci_bus_id", id.pci_bus_id.as_str())]
                    .into_iter()
                    .chain(versions.into_iter().filter_map(|(k, v)| Some((k, v?))))
                    .filter(|(_, v)| !v.is_empty()),
            );
            let device = ["nvidia", index].concat();
            let pci = Some(id.pci_bus_id.as_str()).filter(|p| !p.is_empty());
            self.dcgm.push(
                [("gpu", Some(index)), ("UUID", Some(id.uuid.as_str())), ("pci_bus_id", pci)]
                    .into_iter()
                    .chain([
                        ("device", Some(device.as_str())),
                        ("modelName", Some(id.model.as_str())),
                        ("Hostname", Some(node)),
                        ("DCGM_FI_DRIVER_VERSION", data.driver_version.as_deref()),
                    ])
                    .filter_map(|(k, v)| Some((k, v?))),
            );
        }
        mig_sets(
            &mut self.migs,
            &data.gpus,
            &self.gpus,
            ["mig_uuid", "gpu_instance_id", "compute_instance_id", "mig_profile"],
        );
        mig_sets(&mut self.dcgm_migs, &data.gpus, &self.dcgm, ["", "GPU_I_ID", "", "GPU_I_PROFILE"]);
        for gpu in &data.gpus {
            self.xids.first.push(self.xids.sets.len());
            for code in gpu.reading.xid.iter().flat_map(|x| x.counts.keys()) {
                self.xids.sets.push([("xid", itoa::Buffer::new().format(*code))]);
            }
        }
        for u in &data.usages {
            self.pods.push([
                ("namespace", u.namespace.as_str()),
                ("pod", u.pod.as_str()),
                ("container", u.container.as_str()),
            ]);
        }
    }
}

/// Every MIG device's set, GPU by GPU: its GPU's set (`gpu_sets`) then
/// `names` (the UUID, GPU instance, compute instance and profile labels of
/// the naming scheme; an empty name is left out).
fn mig_sets(into: &mut PerGpuSets, gpus: &[GpuState], gpu_sets: &LabelSets, names: [&'static str; 4]) {
    for (i, gpu) in gpus.iter().enumerate() {
        into.first.push(into.sets.len());
        for mig in &gpu.reading.mig_devices {
            let (mut gi, mut ci) = (itoa::Buffer::new(), itoa::Buffer::new());
            let pairs = [
                (names[0], mig.uuid.as_str()),
                (names[1], gi.format(mig.gpu_instance_id)),
                (names[2], ci.format(mig.compute_instance_id)),
                (names[3], mig.profile.as_str()),
            ];
            into.sets
                .push_after(gpu_sets.get(i), pairs.into_iter().filter(|(name, v)| !name.is_empty() && !v.is_empty()));
        }
    }
}

/// Writes everything the label sets are made of, each string behind its
/// length and each list behind its count, so that no two different inputs
/// write the same bytes.
fn write_inputs(out: &mut Vec<u8>, data: &SampleData) {
    let mut put = |s: &[u8]| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s);
    };
    put(data.node.as_bytes());
    for version in [&data.driver_version, &data.cuda_version] {
        match version {
            Some(v) => put(v.as_bytes()),
            None => put(&[0xff]),
        }
    }
    for gpu in &data.gpus {
        let id = &gpu.identity;
        put(&id.index.to_le_bytes());
        put(id.uuid.as_bytes());
        put(id.model.as_bytes());
        put(id.pci_bus_id.as_bytes());
        put(&(gpu.reading.mig_devices.len() as u32).to_le_bytes());
        for mig in &gpu.reading.mig_devices {
            put(mig.uuid.as_bytes());
            put(&mig.gpu_instance_id.to_le_bytes());
            put(&mig.compute_instance_id.to_le_bytes());
            put(mig.profile.as_bytes());
        }
        let codes = gpu.reading.xid.as_ref().map(|x| &x.counts);
        put(&(codes.map_or(0, |c| c.len()) as u32).to_le_bytes());
        for code in codes.into_iter().flat_map(|c| c.keys()) {
            put(&code.to_le_bytes());
        }
    }
    for u in &data.usages {
        put(u.namespace.as_bytes());
        put(u.pod.as_bytes());
        put(u.container.as_bytes());
    }
}

/// Appends `name="value"`, escaping the value.
pub(super) fn push_label(labels: &mut String, name: &str, value: &str) {
    labels.push_str(name);
    labels.push_str("=\"");
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        labels.push_str(value);
    } else {
        for c in value.chars() {
            match c {
                '\\' => labels.push_str("\\\\"),
                '"' => labels.push_str("\\\""),
                '\n' => labels.push_str("\\n"),
                c => labels.push(c),
            }
        }
    }
    labels.push('"');
}
