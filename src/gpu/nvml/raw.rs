//! The NVML calls nvml-wrapper 0.13 does not wrap, made through its raw
//! bindings: remapped rows, the clock-event reasons under their current
//! name, and a MIG device's GPU and compute instance IDs; and a GPM sample
//! kept between reads. The crate's only `unsafe` lives here; each use says
//! why it is sound.
#![allow(unsafe_code)]

use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
use nvml_wrapper::{Device, GpmSample, Nvml};
use nvml_wrapper_sys::bindings::nvmlGpmSample_t;

use crate::gpu::RemappedRows;

/// `nvmlDeviceGetRemappedRows`: rows remapped for correctable and
/// uncorrectable errors, and whether a remapping is pending or failed.
pub fn remapped_rows(nvml: &Nvml, device: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetRemappedRows.as_ref())?;
    let (mut correctable, mut uncorrectable, mut pending, mut failure) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: `device` borrows `nvml`, so its handle is valid while the
    // library is loaded; the four out-pointers point at live `c_uint`
    // locals, as the binding's signature declares, and NVML writes nothing
    // else.
    let code = unsafe { sym(device.handle(), &mut correctable, &mut uncorrectable, &mut pending, &mut failure) };
    nvml_try(code)?;
    Ok(RemappedRows {
        correctable: u64::from(correctable),
        uncorrectable: u64::from(uncorrectable),
        pending: pending != 0,
        failure: failure != 0,
    })
}

/// `nvmlDeviceGetGpuInstanceId` and `nvmlDeviceGetComputeInstanceId` of a
/// MIG device handle: which GPU instance it is, and which compute instance
/// within it.
pub fn mig_instance_ids(nvml: &Nvml, mig: &Device<'_>) -> Result<(u32, u32), NvmlError> {
    let lib = nvml.lib();
    let gpu_instance = nvml_sym(lib.nvmlDeviceGetGpuInstanceId.as_ref())?;
    let compute_instance = nvml_sym(lib.nvmlDeviceGetComputeInstanceId.as_ref())?;
    let (mut gi, mut ci) = (0u32, 0u32);
    // SAFETY: `mig` borrows `nvml`, so its handle is valid while the library
    // is loaded; each call writes one `c_uint` through a pointer to a live
    // local, as the bindings declare.
    nvml_try(unsafe { gpu_instance(mig.handle(), &mut gi) })?;
    // SAFETY: as above.
    nvml_try(unsafe { compute_instance(mig.handle(), &mut ci) })?;
    Ok((gi, ci))
}

/// `nvmlDeviceGetCurrentClocksEventReasons`, the whole bitmask (nvml-wrapper's
/// `current_throttle_reasons` drops bits it does not know); drivers without
/// the symbol answer under its older name,
/// `nvmlDeviceGetCurrentClocksThrottleReasons`.
pub fn clock_event_reasons(nvml: &Nvml, device: &Device<'_>) -> Result<u64, NvmlError> {
    let lib = nvml.lib();
    let sym = match lib.nvmlDeviceGetCurrentClocksEventReasons.as_ref() {
        Ok(sym) => sym,
        Err(_) => nvml_sym(lib.nvmlDeviceGetCurrentClocksThrottleReasons.as_ref())?,
    };
    let mut reasons: std::os::raw::c_ulonglong = 0;
    // SAFETY: as above: a valid handle for the life of `device`, and one
    // out-pointer to a live `c_ulonglong`.
    let code = unsafe { sym(device.handle(), &mut reasons) };
    nvml_try(code)?;
    Ok(reasons)
}

/// A GPM sample kept from one read to the next, as its raw handle:
/// nvml-wrapper's [`GpmSample`] borrows the `Nvml` it came from, which the
/// source that owns that `Nvml` cannot hold beside it. Give it back with
/// [`KeptGpmSample::restore`] to the same `Nvml` (which frees it when the
/// sample drops); one dropped unrestored is leaked, never freed twice.
#[derive(Debug)]
pub struct KeptGpmSample(nvmlGpmSample_t);

// SAFETY: the handle points at memory NVML allocated for this one sample;
// NVML lets any thread use a sample, one at a time, and `KeptGpmSample` is
// neither `Clone` nor `Sync`, so one thread at a time holds it.
unsafe impl Send for KeptGpmSample {}

impl KeptGpmSample {
    /// Keeps `sample` past the borrow of its `Nvml`.
    pub fn keep(sample: GpmSample<'_>) -> Self {
        Self(sample.into_handle())
    }

    /// The sample again, borrowing `nvml`, which must be the library that
    /// allocated it.
    pub fn restore(self, nvml: &Nvml) -> GpmSample<'_> {
        // SAFETY: the handle came from `GpmSample::into_handle` on a sample
        // of `nvml` (each source keeps only samples of its own library), so
        // it is live and nothing else owns it; `self` is consumed, so it is
        // wrapped once and freed once, when the returned sample drops.
        unsafe { GpmSample::from_handle(nvml, self.0) }
    }
}
