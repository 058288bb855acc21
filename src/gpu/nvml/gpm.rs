//! MIG devices' utilization through GPM, NVML's GPU performance monitoring
//! (Hopper and newer). A GPU in MIG mode reports no device utilization, but
//! GPM samples each GPU instance; the graphics utilization between two
//! samples is the share of that interval the instance was busy. Each read
//! takes a sample per GPU instance and compares it with the one the read
//! before kept, so the first read of an instance (and the first after a
//! reconfiguration) has no value yet.
//!
//! A GPU instance split into several compute instances gets no value: GPM
//! measures the instance, and giving each compute instance the whole
//! instance's figure would be copying, not measuring. Without GPM (Ampere
//! and older) nothing is read and MIG utilization stays unmeasured.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::gpm::gpm_metrics_get;
use nvml_wrapper::{Device, Nvml};

use super::Tally;
use super::raw::KeptGpmSample;
use crate::gpu::{GpuCall, MigDevice};

/// Per GPU: whether it has GPM (asked once), and the last sample of each
/// GPU instance.
#[derive(Debug)]
pub struct MigUtilization {
    supported: Vec<OnceLock<bool>>,
    kept: Vec<Mutex<HashMap<u32, KeptGpmSample>>>,
}

impl MigUtilization {
    /// For `count` GPUs.
    pub fn new(count: u32) -> Self {
        Self {
            supported: (0..count).map(|_| OnceLock::new()).collect(),
            kept: (0..count).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Sets the utilization of GPU `index`'s MIG `devices` over the
    /// interval since the last read; samples of instances that are gone are
    /// freed.
    pub(super) fn read(
        &self,
        nvml: &Nvml,
        index: u32,
        device: &Device<'_>,
        devices: &mut [MigDevice],
        tally: &mut Tally,
    ) {
        let (Some(supported), Some(kept)) = (self.supported.get(index as usize), self.kept.get(index as usize)) else {
            return;
        };
        if devices.is_empty() {
            // MIG turned off, or every instance gone: nothing to compare with.
            free(nvml, &mut kept.lock().unwrap_or_else(|e| e.into_inner()));
            return;
        }
        let has_gpm = match supported.get() {
            Some(&known) => known,
            None => match tally.take(GpuCall::Gpm, device.gpm_support()) {
                Some(known) => *supported.get_or_init(|| known),
                // An error: ask again next read.
                None => false,
            },
        };
        if !has_gpm {
            return;
        }
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut previous = std::mem::take(&mut *kept);
        let mut instances: Vec<u32> = devices.iter().map(|d| d.gpu_instance_id).collect();
        instances.sort_unstable();
        instances.dedup();
        for gi in instances {
            let Some(now) = tally.take(GpuCall::Gpm, device.gpm_mig_sample(gi)) else { continue };
            let before = previous.remove(&gi).map(|s| s.restore(nvml));
            let busy = before.and_then(|before| {
                let results =
                    tally.take(GpuCall::Gpm, gpm_metrics_get(nvml, &before, &now, &[GpmMetricId::GraphicsUtil]))?;
                let first = results.into_iter().next()?;
                tally.take(GpuCall::Gpm, first).map(|r| r.value.clamp(0.0, 100.0))
            });
            let mut on_instance = devices.iter_mut().filter(|d| d.gpu_instance_id == gi);
            if let (Some(only), None) = (on_instance.next(), on_instance.next()) {
                only.utilization_percent = busy;
            }
            kept.insert(gi, KeptGpmSample::keep(now));
        }
        // Instances gone since the last read: their samples are freed here.
        free(nvml, &mut previous);
    }

    /// Frees every kept sample; call before `nvml` is dropped.
    pub fn release(&self, nvml: &Nvml) {
        for kept in &self.kept {
            free(nvml, &mut kept.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// Frees the samples in `kept` (through the library that made them).
fn free(nvml: &Nvml, kept: &mut HashMap<u32, KeptGpmSample>) {
    for (_, sample) in kept.drain() {
        drop(sample.restore(nvml));
    }
}
