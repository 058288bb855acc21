//! The NVML calls nvml-wrapper 0.13 does not wrap, made through its raw
//! bindings: remapped rows, the clock-event reasons under their current
//! name, and a MIG device's GPU and compute instance IDs. The crate's only `unsafe` lives here; each call says why it is
//! sound.
#![allow(unsafe_code)]

use nvml_wrapper::Device;
use nvml_wrapper::Nvml;
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};

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
