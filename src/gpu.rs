//! GPU sources: the [`GpuSource`] trait and what one read of a GPU returns.
//!
//! A source is opened once (which may fail: no driver, no library) and then
//! read one GPU at a time from a blocking thread, so that a hung GPU never
//! holds up the others.

pub mod model;
pub mod nvml;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

/// Where GPU readings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GpuSourceKind {
    /// The NVIDIA driver's NVML library (`libnvidia-ml.so.1`).
    Nvml,
    /// Simulated GPUs with moving, plausible load.
    Sim,
}

/// Flags that choose and configure the GPU source.
#[derive(Clone, Debug, Args)]
pub struct GpuArgs {
    /// Where GPU readings come from.
    #[arg(long, env = "KGM_GPU_SOURCE", value_enum, default_value = "nvml")]
    pub gpu_source: GpuSourceKind,

    /// Path of the NVML library to load (default: the system's `libnvidia-ml.so.1`).
    #[arg(long, env = "KGM_NVML_LIB")]
    pub nvml_lib: Option<PathBuf>,

    /// Models of the simulated GPUs on this node, with `--gpu-source sim`.
    #[arg(long, env = "KGM_SIM_GPUS", value_delimiter = ',', default_value = "rtx4090")]
    pub sim_gpus: Vec<model::GpuModelId>,

    /// Seed of the simulated load, so that runs can be repeated.
    #[arg(long, env = "KGM_SEED", default_value_t = 42)]
    pub seed: u64,
}

/// The stable identity of one GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuIdentity {
    /// NVML index on this node.
    pub index: u32,
    /// `GPU-…` UUID, as the device plugin hands it to pods.
    pub uuid: String,
    /// Marketing name, e.g. `NVIDIA GeForce RTX 4090`.
    pub model: String,
    /// PCI bus ID, `00000000:01:00.0`; empty where unknown.
    pub pci_bus_id: String,
}

/// The values read from one GPU. A field the GPU does not support is `None`,
/// never zero.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuReading {
    /// Percent of time a kernel ran over the driver's last sample period.
    pub utilization_percent: Option<f64>,
    /// Percent of time device memory was read or written.
    pub memory_utilization_percent: Option<f64>,
    /// Device memory in use.
    pub memory_used_bytes: Option<u64>,
    /// Device memory in total.
    pub memory_total_bytes: Option<u64>,
    /// Core temperature.
    pub temperature_celsius: Option<f64>,
    /// Board power draw.
    pub power_watts: Option<f64>,
    /// Current SM clock.
    pub sm_clock_hertz: Option<f64>,
    /// Current memory clock.
    pub memory_clock_hertz: Option<f64>,
    /// Memory (HBM) temperature: NVML field 82; GeForce boards have none.
    pub memory_temperature_celsius: Option<f64>,
    /// Energy used since the driver loaded (a counter).
    pub energy_joules: Option<f64>,
    /// PCIe replays since the driver loaded (a counter).
    pub pcie_replays: Option<u64>,
    /// PCIe transmit throughput over NVML's last 20 ms window.
    pub pcie_transmit_bytes_per_second: Option<f64>,
    /// PCIe receive throughput over NVML's last 20 ms window.
    pub pcie_receive_bytes_per_second: Option<f64>,
    /// Video encoder utilization.
    pub encoder_utilization_percent: Option<f64>,
    /// Video decoder utilization.
    pub decoder_utilization_percent: Option<f64>,
    /// The first fan's intended speed, percent of its maximum.
    pub fan_speed_percent: Option<f64>,
    /// Performance state, 0 (P0, most) to 15 (P15, least).
    pub performance_state: Option<u32>,
    /// Device memory the driver reserves for itself.
    pub memory_reserved_bytes: Option<u64>,
    /// The clock-event (throttle) reasons active now, as NVML's bitmask.
    pub clock_events: Option<u64>,
    /// Time clocks were held back, by policy, since the driver loaded.
    pub violations: Violations,
    /// Fields that change rarely, read every `--health-interval`.
    pub health: HealthReading,
    /// XID errors since the agent started, from NVML's events; `None` where
    /// the GPU could not be registered for them.
    pub xid: Option<XidErrors>,
    /// The MIG devices of a GPU in MIG mode, by MIG device index; empty when
    /// MIG is off or unsupported.
    pub mig_devices: Vec<MigDevice>,
}

/// One MIG device: a compute instance of a GPU instance of a MIG-enabled
/// GPU, with its own UUID, as the device plugin hands it to pods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigDevice {
    /// `MIG-…` UUID.
    pub uuid: String,
    /// The GPU instance it belongs to.
    pub gpu_instance_id: u32,
    /// Its compute instance within that GPU instance.
    pub compute_instance_id: u32,
    /// The profile, e.g. `1g.10gb` (from the device's name); empty where the
    /// name carries none.
    pub profile: String,
    /// Its memory in use.
    pub memory_used_bytes: Option<u64>,
    /// Its memory in total.
    pub memory_total_bytes: Option<u64>,
    /// Its GPU instance's graphics utilization over the last interval, from
    /// GPM (Hopper and newer); `None` where GPM is missing, on the first
    /// read, or when the instance is split into several compute instances.
    pub utilization_percent: Option<f64>,
}

impl MigDevice {
    /// The profile in an NVML MIG device name: `NVIDIA A100-SXM4-40GB MIG
    /// 1g.5gb` gives `1g.5gb`.
    pub fn profile_of(name: &str) -> &str {
        name.rsplit_once("MIG ").map_or("", |(_, profile)| profile.trim())
    }

    /// The compute slices it has, from its profile: `3g.40gb` has 3; a
    /// compute instance `1c.3g.40gb` has 1 of its GPU instance's 3; 1 when
    /// the profile says nothing.
    pub fn compute_slices(&self) -> u32 {
        let first = self.profile.split('.').next().unwrap_or("");
        first
            .strip_suffix('c')
            .or_else(|| first.strip_suffix('g'))
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(1)
    }
}

/// XID errors of one GPU since the agent started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XidErrors {
    /// Events by XID code.
    pub counts: std::collections::BTreeMap<u64, u64>,
    /// The last code seen.
    pub last: Option<u64>,
}

crate::label_value::label_value! {
    /// Why clocks are held back now: NVML's clock-event reasons, each a bit of
    /// `nvmlDeviceGetCurrentClocksEventReasons` (the `reason` label).
    pub enum ClockEventReason: "reason" {
        /// Nothing runs; clocks idle.
        GpuIdle = "gpu_idle",
        /// Clocks set by the application clocks setting.
        ApplicationsClocksSetting = "applications_clocks_setting",
        /// The software power cap (the power limit).
        SwPowerCap = "sw_power_cap",
        /// Hardware slowdown (temperature or power brake, by the board).
        HwSlowdown = "hw_slowdown",
        /// Sync boost with other GPUs.
        SyncBoost = "sync_boost",
        /// Software thermal slowdown (the temperature limit).
        SwThermalSlowdown = "sw_thermal_slowdown",
        /// Hardware thermal slowdown (too hot).
        HwThermalSlowdown = "hw_thermal_slowdown",
        /// Hardware power brake (the external power brake signal).
        HwPowerBrakeSlowdown = "hw_power_brake_slowdown",
        /// Clocks set by the display clock setting.
        DisplayClockSetting = "display_clock_setting",
    }
}

impl ClockEventReason {
    /// The reason's bit in NVML's mask.
    pub fn bit(self) -> u64 {
        1 << (self as u32)
    }
}

crate::label_value::label_value! {
    /// The policies NVML keeps violation time for (`nvmlDeviceGetViolationStatus`;
    /// the `reason` label of the violation counters).
    pub enum ViolationPolicy: "reason" {
        /// Power capping.
        Power = "power",
        /// Thermal capping.
        Thermal = "thermal",
        /// Sync boost.
        SyncBoost = "sync_boost",
        /// The board's limit.
        BoardLimit = "board_limit",
        /// Low utilization.
        LowUtilization = "low_utilization",
        /// Board reliability.
        Reliability = "reliability",
    }
}

/// Violation time per policy, seconds; `None` where NVML has none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Violations(pub [Option<f64>; ViolationPolicy::ALL.len()]);

impl Violations {
    /// The time of one policy.
    pub fn get(&self, policy: ViolationPolicy) -> Option<f64> {
        self.0[policy as usize]
    }

    /// Sets the time of one policy.
    pub fn set(&mut self, policy: ViolationPolicy, seconds: Option<f64>) {
        self.0[policy as usize] = seconds;
    }
}

/// ECC error counts; present only while ECC is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EccCounts {
    /// Corrected (single-bit) errors since the driver loaded.
    pub corrected_volatile: Option<u64>,
    /// Uncorrected (double-bit) errors since the driver loaded.
    pub uncorrected_volatile: Option<u64>,
    /// Corrected errors over the board's life.
    pub corrected_aggregate: Option<u64>,
    /// Uncorrected errors over the board's life.
    pub uncorrected_aggregate: Option<u64>,
}

/// Rows of memory remapped (Ampere and newer data center boards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemappedRows {
    /// Rows remapped for correctable errors.
    pub correctable: u64,
    /// Rows remapped for uncorrectable errors.
    pub uncorrectable: u64,
    /// A remapping waits for the next GPU reset.
    pub pending: bool,
    /// A remapping failed.
    pub failure: bool,
}

/// Pages retired from service (pre-Ampere boards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetiredPages {
    /// Retired for multiple single-bit errors.
    pub single_bit: u64,
    /// Retired for a double-bit error.
    pub double_bit: u64,
    /// Pages wait to be retired at the next reset.
    pub pending: Option<bool>,
}

/// Fields that change rarely and are read every `--slow-interval` (30 s by
/// default), so that a slow field never delays utilization.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HealthReading {
    /// The enforced power limit.
    pub power_limit_watts: Option<f64>,
    /// ECC counts, while ECC is on.
    pub ecc: Option<EccCounts>,
    /// Remapped rows, where the board remaps.
    pub remapped_rows: Option<RemappedRows>,
    /// Retired pages, where the board retires pages.
    pub retired_pages: Option<RetiredPages>,
}

/// One NVML process utilization sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessSample {
    /// Host PID of the process.
    pub pid: u32,
    /// Driver timestamp of the sample, in microseconds.
    pub timestamp_us: u64,
    /// Percent of SM time the process used.
    pub sm_percent: u32,
    /// Percent of memory-controller time the process used.
    pub memory_percent: u32,
}

/// Per-process utilization, when it was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProcessUsage {
    /// Not asked for in this read (the GPU is not shared).
    #[default]
    NotRead,
    /// The GPU or driver cannot report per-process utilization.
    Unsupported,
    /// The samples newer than the last one seen (possibly none: all idle).
    Samples(Vec<ProcessSample>),
}

crate::label_value::label_value! {
    /// Which running-process list NVML names a process in (the `kind` label).
    pub enum ProcessKind: "kind" {
        /// A CUDA (compute) context.
        Compute = "compute",
        /// A graphics context.
        Graphics = "graphics",
        /// A client of the MPS server.
        Mps = "mps",
    }
}

/// One process with a context on a GPU, from NVML's running-process lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuProcess {
    /// Host PID.
    pub pid: u32,
    /// Device memory it holds, where NVML can tell.
    pub used_memory_bytes: Option<u64>,
    /// The list it came from.
    pub kind: ProcessKind,
}

/// The processes running on a GPU, when they were asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RunningProcesses {
    /// Not asked for in this read (no pod holds the GPU).
    #[default]
    NotRead,
    /// The lists could not be read.
    Unavailable,
    /// Every process of the compute, graphics and MPS lists (a process in
    /// several lists appears once per list).
    Listed(Vec<GpuProcess>),
}

crate::label_value::label_value! {
    /// The NVML calls the agent makes, for error counting (the `call` label).
    pub enum GpuCall: "call" {
        /// `nvmlInit_v2` and library loading.
        Init = "init",
        /// `nvmlDeviceGetCount_v2`.
        Count = "device_count",
        /// `nvmlDeviceGetHandleByIndex_v2`.
        Handle = "device_handle",
        /// `nvmlDeviceGetName` and `nvmlDeviceGetUUID`.
        Identity = "identity",
        /// `nvmlDeviceGetUtilizationRates`.
        Utilization = "utilization",
        /// `nvmlDeviceGetMemoryInfo_v2`.
        Memory = "memory",
        /// `nvmlDeviceGetTemperature`.
        Temperature = "temperature",
        /// `nvmlDeviceGetPowerUsage`.
        Power = "power",
        /// `nvmlDeviceGetClockInfo`.
        Clock = "clock",
        /// `nvmlDeviceGetProcessUtilization`.
        Processes = "process_utilization",
        /// `nvmlDeviceGetComputeRunningProcesses_v3` and `nvmlDeviceGetGraphicsRunningProcesses_v3`.
        RunningProcesses = "running_processes",
        /// `nvmlDeviceGetMPSComputeRunningProcesses_v3`.
        MpsProcesses = "mps_processes",
        /// `nvmlDeviceGetTotalEnergyConsumption`.
        Energy = "energy",
        /// `nvmlDeviceGetPcieReplayCounter` and `nvmlDeviceGetPcieThroughput`.
        Pcie = "pcie",
        /// `nvmlDeviceGetEncoderUtilization` and `nvmlDeviceGetDecoderUtilization`.
        Codec = "encoder_decoder",
        /// `nvmlDeviceGetFanSpeed_v2`.
        Fan = "fan",
        /// `nvmlDeviceGetPerformanceState`.
        PerformanceState = "performance_state",
        /// `nvmlDeviceGetCurrentClocksEventReasons` and `nvmlDeviceGetViolationStatus`.
        ClockEvents = "clock_events",
        /// `nvmlDeviceGetFieldValues` (memory temperature).
        FieldValues = "field_values",
        /// `nvmlDeviceGetEnforcedPowerLimit`.
        PowerLimit = "power_limit",
        /// `nvmlDeviceGetEccMode` and `nvmlDeviceGetTotalEccErrors`.
        Ecc = "ecc",
        /// `nvmlDeviceGetRemappedRows`.
        RemappedRows = "remapped_rows",
        /// `nvmlDeviceGetRetiredPages` and `nvmlDeviceGetRetiredPagesPendingStatus`.
        RetiredPages = "retired_pages",
        /// `nvmlDeviceGetMigMode`, `nvmlDeviceGetMigDeviceHandleByIndex` and the
        /// MIG devices' identity, instance IDs and memory.
        Mig = "mig",
        /// GPM: `nvmlGpmQueryDeviceSupport`, `nvmlGpmMigSampleGet` and
        /// `nvmlGpmMetricsGet` (MIG devices' utilization).
        Gpm = "gpm",
    }
}

/// What to read besides the device values.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadRequest {
    /// Read the rarely-changing fields ([`HealthReading`]) too.
    pub health: bool,
    /// Read per-process utilization (the GPU is shared between pods).
    pub processes: bool,
    /// Driver timestamp of the newest process sample already seen.
    pub processes_since_us: u64,
    /// Read the running processes and their memory (a pod holds the GPU).
    pub running: bool,
}

/// The outcome of reading one GPU once.
#[derive(Clone, Debug, Default)]
pub struct GpuRead {
    /// Who the GPU is; `None` only if it was lost before it could say.
    pub identity: Option<GpuIdentity>,
    /// False when the GPU stopped answering (lost, or its handle failed).
    pub up: bool,
    /// The values; empty when `up` is false.
    pub reading: GpuReading,
    /// Per-process utilization.
    pub processes: ProcessUsage,
    /// The processes with a context on the GPU, and their memory.
    pub running: RunningProcesses,
    /// Calls that failed with a real error (not "not supported").
    pub errors: Vec<GpuCall>,
}

/// An opened GPU source. `read` blocks and is called from a blocking thread.
pub trait GpuSource: Send + Sync {
    /// How many GPUs the source found when it was opened.
    fn gpu_count(&self) -> u32;
    /// Reads one GPU.
    fn read(&self, index: u32, request: ReadRequest) -> GpuRead;
    /// A GPU's identity if already known, without blocking: a GPU whose
    /// read hangs keeps its labels.
    fn known_identity(&self, index: u32) -> Option<GpuIdentity>;
    /// The driver version, where known.
    fn driver_version(&self) -> Option<String> {
        None
    }
    /// The CUDA version the driver supports (`12.4`), where known.
    fn cuda_version(&self) -> Option<String> {
        None
    }
}

/// Why a GPU source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GpuSourceError {
    /// NVML could not be loaded or initialised.
    #[error("NVML init failed (library {library}): {source}")]
    NvmlInit {
        /// The library path tried (`--nvml-lib`).
        library: String,
        /// What NVML said.
        #[source]
        source: ::nvml_wrapper::error::NvmlError,
    },
    /// NVML came up but the device count could not be read.
    #[error("NVML could not count GPUs: {0}")]
    NvmlCount(#[source] ::nvml_wrapper::error::NvmlError),
}

/// Opens GPU sources: each call tries again, so an agent that started before
/// the driver was loaded recovers once it is.
pub trait GpuSourceOpener: Send + Sync {
    /// Opens the source. Blocks (it may load a library).
    fn open(&self) -> Result<Arc<dyn GpuSource>, GpuSourceError>;
}
