//! The NVML GPU source, over `nvml-wrapper`.
//!
//! "Not supported" (and a symbol the library lacks) means "no data": the field
//! is left out, logged at debug, and never counted as an error or reported as
//! zero. `GPU_IS_LOST`, or a handle that cannot be had, marks the GPU down.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;

use super::{
    GpuCall, GpuIdentity, GpuRead, GpuReading, GpuSource, GpuSourceError, GpuSourceOpener, ProcessSample, ProcessUsage,
    ReadRequest,
};

/// The library NVML is loaded from when `--nvml-lib` is not given.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// Opens NVML from a library path.
#[derive(Clone, Debug)]
pub struct NvmlOpener {
    library: Option<PathBuf>,
}

impl NvmlOpener {
    /// Loads `library`, or the system library when `None`.
    pub fn new(library: Option<PathBuf>) -> Self {
        Self { library }
    }
}

impl GpuSourceOpener for NvmlOpener {
    fn open(&self) -> Result<Arc<dyn GpuSource>, GpuSourceError> {
        let library = self.library.as_deref().map(|p| p.as_os_str()).unwrap_or(OsStr::new(DEFAULT_LIBRARY));
        let nvml = Nvml::builder()
            .lib_path(library)
            .init()
            .map_err(|source| GpuSourceError::NvmlInit { library: library.to_string_lossy().into_owned(), source })?;
        let count = nvml.device_count().map_err(GpuSourceError::NvmlCount)?;
        let driver_version = nvml.sys_driver_version().ok();
        Ok(Arc::new(NvmlSource { nvml, identities: (0..count).map(|_| OnceLock::new()).collect(), driver_version }))
    }
}

/// An initialised NVML library and the GPUs it found.
pub struct NvmlSource {
    nvml: Nvml,
    /// Read once per GPU, on the first read that can.
    identities: Vec<OnceLock<GpuIdentity>>,
    driver_version: Option<String>,
}

/// Keeps the errors of one read, and whether the GPU was lost.
struct Tally {
    index: u32,
    errors: Vec<GpuCall>,
    lost: bool,
}

impl Tally {
    /// The value of a call, or `None` for no data. Only real errors count.
    fn take<T>(&mut self, call: GpuCall, result: Result<T, NvmlError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => {
                tracing::debug!(gpu = self.index, call = call.as_str(), "not supported; omitted");
                None
            }
            Err(e) => {
                tracing::debug!(gpu = self.index, call = call.as_str(), error = %e, "NVML call failed");
                self.lost |= matches!(e, NvmlError::GpuLost);
                self.errors.push(call);
                None
            }
        }
    }
}

impl GpuSource for NvmlSource {
    fn gpu_count(&self) -> u32 {
        self.identities.len() as u32
    }

    fn driver_version(&self) -> Option<String> {
        self.driver_version.clone()
    }

    fn known_identity(&self, index: u32) -> Option<GpuIdentity> {
        self.identities.get(index as usize).and_then(|i| i.get().cloned())
    }

    fn read(&self, index: u32, request: ReadRequest) -> GpuRead {
        let mut read = GpuRead {
            identity: self.identities.get(index as usize).and_then(|i| i.get().cloned()),
            ..GpuRead::default()
        };
        let mut tally = Tally { index, errors: Vec::new(), lost: false };
        let device = match self.nvml.device_by_index(index) {
            Ok(device) => device,
            Err(e) => {
                // Without a handle nothing else can be read: the GPU is down.
                tracing::debug!(gpu = index, error = %e, "no NVML handle");
                read.errors.push(GpuCall::Handle);
                return read;
            }
        };

        if read.identity.is_none() {
            let model = tally.take(GpuCall::Identity, device.name());
            let uuid = tally.take(GpuCall::Identity, device.uuid());
            if let (Some(model), Some(uuid)) = (model, uuid) {
                let identity = GpuIdentity { index, uuid, model };
                if let Some(slot) = self.identities.get(index as usize) {
                    let _ = slot.set(identity.clone());
                }
                read.identity = Some(identity);
            }
        }

        let reading = &mut read.reading;
        if let Some(u) = tally.take(GpuCall::Utilization, device.utilization_rates()) {
            reading.utilization_percent = Some(f64::from(u.gpu));
            reading.memory_utilization_percent = Some(f64::from(u.memory));
        }
        if let Some(m) = tally.take(GpuCall::Memory, device.memory_info()) {
            reading.memory_used_bytes = Some(m.used);
            reading.memory_total_bytes = Some(m.total);
        }
        let celsius = tally.take(GpuCall::Temperature, device.temperature(TemperatureSensor::Gpu));
        reading.temperature_celsius = celsius.map(f64::from);
        let milliwatts = tally.take(GpuCall::Power, device.power_usage());
        reading.power_watts = milliwatts.map(|mw| f64::from(mw) / 1000.0);
        let mhz = tally.take(GpuCall::Clock, device.clock_info(Clock::SM));
        reading.sm_clock_hertz = mhz.map(|mhz| f64::from(mhz) * 1e6);

        if request.processes {
            read.processes = match device.process_utilization_stats(request.processes_since_us) {
                // NVML answers NOT_FOUND when no process ran since the timestamp.
                Err(NvmlError::NotFound) => ProcessUsage::Samples(Vec::new()),
                result => match tally.take(GpuCall::Processes, result) {
                    Some(samples) => ProcessUsage::Samples(
                        samples
                            .into_iter()
                            .map(|s| ProcessSample {
                                pid: s.pid,
                                timestamp_us: s.timestamp,
                                sm_percent: s.sm_util,
                                memory_percent: s.mem_util,
                            })
                            .collect(),
                    ),
                    None => ProcessUsage::Unsupported,
                },
            };
        }

        read.up = !tally.lost;
        read.errors = tally.errors;
        if !read.up {
            // A lost GPU's other answers are not to be trusted.
            read.reading = GpuReading::default();
            read.processes = ProcessUsage::NotRead;
        }
        read
    }
}
