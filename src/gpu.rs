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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuIdentity {
    /// NVML index on this node.
    pub index: u32,
    /// `GPU-…` UUID, as the device plugin hands it to pods.
    pub uuid: String,
    /// Marketing name, e.g. `NVIDIA GeForce RTX 4090`.
    pub model: String,
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
    }
}

/// What to read besides the device values.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadRequest {
    /// Read per-process utilization (the GPU is shared between pods).
    pub processes: bool,
    /// Driver timestamp of the newest process sample already seen.
    pub processes_since_us: u64,
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
