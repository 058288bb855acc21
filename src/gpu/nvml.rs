//! The NVML GPU source, over `nvml-wrapper`.
//!
//! "Not supported" (and a symbol the library lacks) means "no data": the field
//! is left out, logged at debug, and never counted as an error or reported as
//! zero. `GPU_IS_LOST`, or a handle that cannot be had, marks the GPU down.

pub mod gpm;
pub mod raw;
pub mod xid;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, PerformancePolicy, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::{Device, Nvml};

use super::{
    EccCounts, GpuCall, GpuIdentity, GpuProcess, GpuRead, GpuReading, GpuSource, GpuSourceError, GpuSourceOpener,
    HealthReading, MigDevice, ProcessKind, ProcessSample, ProcessUsage, ReadRequest, RetiredPages, RunningProcesses,
    ViolationPolicy,
};

/// `NVML_FI_DEV_MEMORY_TEMP`: the only way to memory temperature.
const FIELD_MEMORY_TEMPERATURE: u32 = 82;

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
        // 12040 → 12.4, as nvidia-smi writes it.
        let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
        let nvml = Arc::new(nvml);
        let xid = xid::spawn(nvml.clone(), count);
        Ok(Arc::new(NvmlSource {
            nvml,
            identities: (0..count).map(|_| OnceLock::new()).collect(),
            driver_version,
            cuda_version,
            xid,
            mig_utilization: gpm::MigUtilization::new(count),
        }))
    }
}

/// An initialised NVML library and the GPUs it found.
pub struct NvmlSource {
    nvml: Arc<Nvml>,
    /// Read once per GPU, on the first read that can.
    identities: Vec<OnceLock<GpuIdentity>>,
    driver_version: Option<String>,
    cuda_version: Option<String>,
    xid: Arc<xid::XidCounts>,
    mig_utilization: gpm::MigUtilization,
}

impl Drop for NvmlSource {
    fn drop(&mut self) {
        self.xid.stop();
        self.mig_utilization.release(&self.nvml);
    }
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

    /// `value` if it is physically possible (finite, 0..=`max`); otherwise
    /// nothing, and the call counted as failed: a broken driver's 250 % or
    /// 4294967295 °C is dropped here, as the adapter would refuse it, and
    /// shows in the error count instead of on `/metrics`.
    fn plausible(&mut self, call: GpuCall, value: Option<f64>, max: f64) -> Option<f64> {
        let v = value?;
        if v.is_finite() && (0.0..=max).contains(&v) {
            return Some(v);
        }
        self.implausible(call, v, max);
        None
    }

    /// Counts `call` as failed for a value outside 0..=`max`.
    fn implausible(&mut self, call: GpuCall, value: f64, max: f64) {
        tracing::debug!(gpu = self.index, call = call.as_str(), value, max, "implausible value dropped");
        self.errors.push(call);
    }
}

/// Percentages.
const MAX_PERCENT: f64 = 100.0;
/// Degrees Celsius no GPU or its memory survives.
const MAX_CELSIUS: f64 = 150.0;
/// Watts: several times the largest board's limit.
const MAX_WATTS: f64 = 5_000.0;
/// Hertz: several times the fastest clock (GDDR7 reports about 14 GHz).
const MAX_HERTZ: f64 = 100e9;

/// The fields read every pass besides utilization, memory, temperature,
/// power and clocks.
fn read_telemetry(nvml: &Nvml, device: &Device<'_>, tally: &mut Tally, reading: &mut GpuReading) {
    let fields = tally.take(GpuCall::FieldValues, device.field_values_for(&[FieldId(FIELD_MEMORY_TEMPERATURE)]));
    let memory_celsius = fields
        .into_iter()
        .flatten()
        .filter_map(|sample| tally.take(GpuCall::FieldValues, sample.and_then(|s| s.value)))
        .map(|value| match value {
            SampleValue::F64(v) => v,
            SampleValue::U32(v) => f64::from(v),
            SampleValue::U64(v) => v as f64,
            SampleValue::I64(v) => v as f64,
        })
        .next();
    reading.memory_temperature_celsius = tally.plausible(GpuCall::FieldValues, memory_celsius, MAX_CELSIUS);
    let millijoules = tally.take(GpuCall::Energy, device.total_energy_consumption());
    reading.energy_joules = millijoules.map(|mj| mj as f64 / 1000.0);
    reading.pcie_replays = tally.take(GpuCall::Pcie, device.pcie_replay_counter()).map(u64::from);
    // NVML counts PCIe throughput in KB/s.
    let kib = |v: u32| f64::from(v) * 1024.0;
    reading.pcie_transmit_bytes_per_second =
        tally.take(GpuCall::Pcie, device.pcie_throughput(PcieUtilCounter::Send)).map(kib);
    reading.pcie_receive_bytes_per_second =
        tally.take(GpuCall::Pcie, device.pcie_throughput(PcieUtilCounter::Receive)).map(kib);
    let encoder = tally.take(GpuCall::Codec, device.encoder_utilization()).map(|u| f64::from(u.utilization));
    reading.encoder_utilization_percent = tally.plausible(GpuCall::Codec, encoder, MAX_PERCENT);
    let decoder = tally.take(GpuCall::Codec, device.decoder_utilization()).map(|u| f64::from(u.utilization));
    reading.decoder_utilization_percent = tally.plausible(GpuCall::Codec, decoder, MAX_PERCENT);
    let fan = tally.take(GpuCall::Fan, device.fan_speed(0)).map(f64::from);
    reading.fan_speed_percent = tally.plausible(GpuCall::Fan, fan, MAX_PERCENT);
    reading.performance_state = tally.take(GpuCall::PerformanceState, device.performance_state()).map(|p| p.as_c());
    reading.clock_events = tally.take(GpuCall::ClockEvents, raw::clock_event_reasons(nvml, device));
    for policy in ViolationPolicy::ALL {
        let nvml_policy = match policy {
            ViolationPolicy::Power => PerformancePolicy::Power,
            ViolationPolicy::Thermal => PerformancePolicy::Thermal,
            ViolationPolicy::SyncBoost => PerformancePolicy::SyncBoost,
            ViolationPolicy::BoardLimit => PerformancePolicy::BoardLimit,
            ViolationPolicy::LowUtilization => PerformancePolicy::LowUtilization,
            ViolationPolicy::Reliability => PerformancePolicy::Reliability,
        };
        let time = tally.take(GpuCall::ClockEvents, device.violation_status(nvml_policy));
        reading.violations.set(*policy, time.map(|t| t.violation_time as f64 / 1e9));
    }
}

/// The running-process lists. Every CUDA process is in the compute list, so
/// without it nothing is known; a graphics or MPS list the board or driver
/// lacks is empty. Any list that fails makes the answer unavailable rather
/// than a pod's memory too low.
/// `NVML_DEVICE_MIG_ENABLE`.
const MIG_ENABLED: u32 = 1;

/// The MIG devices of a GPU in MIG mode, enumerated afresh every read (a
/// reconfiguration adds or removes them between samples); none when MIG is
/// off or unsupported. A device that cannot name itself is left out; its
/// failing calls are counted.
fn read_mig(nvml: &Nvml, device: &Device<'_>, tally: &mut Tally) -> Vec<MigDevice> {
    let Some(mode) = tally.take(GpuCall::Mig, device.mig_mode()) else { return Vec::new() };
    if mode.current != MIG_ENABLED {
        return Vec::new();
    }
    let Some(slots) = tally.take(GpuCall::Mig, device.mig_device_count()) else { return Vec::new() };
    let mut devices = Vec::new();
    for slot in 0..slots {
        let mig = match device.mig_device_by_index(slot) {
            // The count is the most there can be; empty slots answer NOT_FOUND.
            Err(NvmlError::NotFound) => continue,
            result => match tally.take(GpuCall::Mig, result) {
                Some(mig) => mig,
                None => continue,
            },
        };
        let (Some(uuid), Some((gpu_instance_id, compute_instance_id))) =
            (tally.take(GpuCall::Mig, mig.uuid()), tally.take(GpuCall::Mig, raw::mig_instance_ids(nvml, &mig)))
        else {
            continue;
        };
        let name = tally.take(GpuCall::Mig, mig.name()).unwrap_or_default();
        let memory = tally.take(GpuCall::Mig, mig.memory_info());
        devices.push(MigDevice {
            uuid,
            gpu_instance_id,
            compute_instance_id,
            profile: MigDevice::profile_of(&name).to_string(),
            memory_used_bytes: memory.as_ref().map(|m| m.used),
            memory_total_bytes: memory.as_ref().map(|m| m.total),
            utilization_percent: None,
        });
    }
    devices
}

fn read_running(device: &Device<'_>, tally: &mut Tally) -> RunningProcesses {
    let lists = [
        (ProcessKind::Compute, GpuCall::RunningProcesses, device.running_compute_processes()),
        (ProcessKind::Graphics, GpuCall::RunningProcesses, device.running_graphics_processes()),
        (ProcessKind::Mps, GpuCall::MpsProcesses, device.mps_running_compute_processes()),
    ];
    let mut processes = Vec::new();
    for (kind, call, result) in lists {
        match result {
            Ok(list) => processes.extend(list.into_iter().map(|p| GpuProcess {
                pid: p.pid,
                used_memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                },
                kind,
            })),
            Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) if kind != ProcessKind::Compute => {}
            Err(e) => {
                tally.take::<()>(call, Err(e));
                return RunningProcesses::Unavailable;
            }
        }
    }
    RunningProcesses::Listed(processes)
}

/// The rarely-changing fields: power limit, ECC, remapped rows, retired pages.
fn read_health(nvml: &Nvml, device: &Device<'_>, tally: &mut Tally) -> HealthReading {
    let milliwatts = tally.take(GpuCall::PowerLimit, device.enforced_power_limit());
    let ecc_on = tally.take(GpuCall::Ecc, device.is_ecc_enabled()).is_some_and(|mode| mode.currently_enabled);
    let ecc = ecc_on.then(|| {
        let mut count = |error, counter| tally.take(GpuCall::Ecc, device.total_ecc_errors(error, counter));
        EccCounts {
            corrected_volatile: count(MemoryError::Corrected, EccCounter::Volatile),
            uncorrected_volatile: count(MemoryError::Uncorrected, EccCounter::Volatile),
            corrected_aggregate: count(MemoryError::Corrected, EccCounter::Aggregate),
            uncorrected_aggregate: count(MemoryError::Uncorrected, EccCounter::Aggregate),
        }
    });
    let remapped_rows = tally.take(GpuCall::RemappedRows, raw::remapped_rows(nvml, device));
    let single = tally.take(GpuCall::RetiredPages, device.retired_pages(RetirementCause::MultipleSingleBitEccErrors));
    let double = tally.take(GpuCall::RetiredPages, device.retired_pages(RetirementCause::DoubleBitEccError));
    let retired_pages = single.zip(double).map(|(single, double)| RetiredPages {
        single_bit: single.len() as u64,
        double_bit: double.len() as u64,
        pending: tally.take(GpuCall::RetiredPages, device.are_pages_pending_retired()),
    });
    HealthReading { power_limit_watts: milliwatts.map(|mw| f64::from(mw) / 1000.0), ecc, remapped_rows, retired_pages }
}

impl GpuSource for NvmlSource {
    fn gpu_count(&self) -> u32 {
        self.identities.len() as u32
    }

    fn driver_version(&self) -> Option<String> {
        self.driver_version.clone()
    }

    fn cuda_version(&self) -> Option<String> {
        self.cuda_version.clone()
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
                // The bus ID is a label, not a reading: absent stays empty.
                let pci_bus_id = device.pci_info().map(|p| p.bus_id).unwrap_or_default();
                let identity = GpuIdentity { index, uuid, model, pci_bus_id };
                if let Some(slot) = self.identities.get(index as usize) {
                    let _ = slot.set(identity.clone());
                }
                read.identity = Some(identity);
            }
        }

        let reading = &mut read.reading;
        if let Some(u) = tally.take(GpuCall::Utilization, device.utilization_rates()) {
            reading.utilization_percent = tally.plausible(GpuCall::Utilization, Some(f64::from(u.gpu)), MAX_PERCENT);
            reading.memory_utilization_percent =
                tally.plausible(GpuCall::Utilization, Some(f64::from(u.memory)), MAX_PERCENT);
        }
        if let Some(m) = tally.take(GpuCall::Memory, device.memory_info()) {
            // Memory used beyond the board's total is no reading.
            if m.used <= m.total && m.reserved <= m.total {
                reading.memory_used_bytes = Some(m.used);
                reading.memory_total_bytes = Some(m.total);
                reading.memory_reserved_bytes = Some(m.reserved);
            } else {
                tally.implausible(GpuCall::Memory, m.used.max(m.reserved) as f64, m.total as f64);
            }
        }
        let celsius = tally.take(GpuCall::Temperature, device.temperature(TemperatureSensor::Gpu));
        reading.temperature_celsius = tally.plausible(GpuCall::Temperature, celsius.map(f64::from), MAX_CELSIUS);
        let milliwatts = tally.take(GpuCall::Power, device.power_usage());
        reading.power_watts = tally.plausible(GpuCall::Power, milliwatts.map(|mw| f64::from(mw) / 1000.0), MAX_WATTS);
        let mhz = tally.take(GpuCall::Clock, device.clock_info(Clock::SM));
        reading.sm_clock_hertz = tally.plausible(GpuCall::Clock, mhz.map(|mhz| f64::from(mhz) * 1e6), MAX_HERTZ);
        let mhz = tally.take(GpuCall::Clock, device.clock_info(Clock::Memory));
        reading.memory_clock_hertz = tally.plausible(GpuCall::Clock, mhz.map(|mhz| f64::from(mhz) * 1e6), MAX_HERTZ);
        read_telemetry(&self.nvml, &device, &mut tally, reading);
        reading.mig_devices = read_mig(&self.nvml, &device, &mut tally);
        self.mig_utilization.read(&self.nvml, index, &device, &mut reading.mig_devices, &mut tally);
        if request.health {
            reading.health = read_health(&self.nvml, &device, &mut tally);
        }
        reading.xid = self.xid.get(index);

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

        if request.running {
            read.running = read_running(&device, &mut tally);
        }

        read.up = !tally.lost;
        read.errors = tally.errors;
        if !read.up {
            // A lost GPU's other answers are not to be trusted.
            read.reading = GpuReading::default();
            read.processes = ProcessUsage::NotRead;
            read.running = RunningProcesses::NotRead;
        }
        read
    }
}
