//! GPU model profiles: memory, power and clock envelopes for simulation, and
//! each model's relative compute capacity.
//!
//! Relative capacity is the model's peak FP32 throughput divided by the RTX
//! 4090's (82.6 TFLOPS), so a 3060 at 100 % does about 15 % of the work of a
//! 4090 at 100 %.

use clap::ValueEnum;

const GIB: u64 = 1 << 30;

/// The GPU models the simulator knows (in YAML and on the command line by
/// their kebab-case names: `rtx4090`, `a100-mig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuModelId {
    /// NVIDIA GeForce RTX 4090 (24 GiB, 450 W).
    Rtx4090,
    /// NVIDIA GeForce RTX 3090 (24 GiB, 350 W).
    Rtx3090,
    /// NVIDIA GeForce RTX 3060 (12 GiB, 170 W).
    Rtx3060,
    /// NVIDIA L4 (24 GiB, 72 W).
    L4,
    /// NVIDIA A100 80GB SXM (80 GiB, 400 W).
    A100,
    /// NVIDIA H100 80GB HBM3 (80 GiB, 700 W).
    H100,
    /// An A100 80GB SXM in MIG mode, split into two 3g.40gb MIG devices,
    /// one per workload.
    A100Mig,
}

/// What a GPU model can do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuProfile {
    /// Which model.
    pub id: GpuModelId,
    /// The name NVML reports.
    pub name: &'static str,
    /// Device memory.
    pub memory_bytes: u64,
    /// Board power limit.
    pub max_power_watts: f64,
    /// Power drawn when idle.
    pub idle_power_watts: f64,
    /// Boost SM clock.
    pub boost_clock_mhz: u32,
    /// Idle SM clock.
    pub idle_clock_mhz: u32,
    /// Peak FP32 TFLOPS.
    pub fp32_tflops: f64,
}

/// Every profile, the reference cluster's first.
pub const PROFILES: [GpuProfile; 6] = [
    GpuProfile {
        id: GpuModelId::Rtx4090,
        name: "NVIDIA GeForce RTX 4090",
        memory_bytes: 24 * GIB,
        max_power_watts: 450.0,
        idle_power_watts: 22.0,
        boost_clock_mhz: 2520,
        idle_clock_mhz: 210,
        fp32_tflops: 82.6,
    },
    GpuProfile {
        id: GpuModelId::Rtx3060,
        name: "NVIDIA GeForce RTX 3060",
        memory_bytes: 12 * GIB,
        max_power_watts: 170.0,
        idle_power_watts: 13.0,
        boost_clock_mhz: 1777,
        idle_clock_mhz: 210,
        fp32_tflops: 12.7,
    },
    GpuProfile {
        id: GpuModelId::Rtx3090,
        name: "NVIDIA GeForce RTX 3090",
        memory_bytes: 24 * GIB,
        max_power_watts: 350.0,
        idle_power_watts: 20.0,
        boost_clock_mhz: 1695,
        idle_clock_mhz: 210,
        fp32_tflops: 35.6,
    },
    GpuProfile {
        id: GpuModelId::L4,
        name: "NVIDIA L4",
        memory_bytes: 24 * GIB,
        max_power_watts: 72.0,
        idle_power_watts: 16.0,
        boost_clock_mhz: 2040,
        idle_clock_mhz: 210,
        fp32_tflops: 30.3,
    },
    GpuProfile {
        id: GpuModelId::A100,
        name: "NVIDIA A100-SXM4-80GB",
        memory_bytes: 80 * GIB,
        max_power_watts: 400.0,
        idle_power_watts: 55.0,
        boost_clock_mhz: 1410,
        idle_clock_mhz: 210,
        fp32_tflops: 19.5,
    },
    GpuProfile {
        id: GpuModelId::H100,
        name: "NVIDIA H100 80GB HBM3",
        memory_bytes: 80 * GIB,
        max_power_watts: 700.0,
        idle_power_watts: 70.0,
        boost_clock_mhz: 1980,
        idle_clock_mhz: 345,
        fp32_tflops: 66.9,
    },
];

/// The RTX 4090, the reference for relative capacity.
pub const REFERENCE: GpuModelId = GpuModelId::Rtx4090;

impl GpuModelId {
    /// This model's profile.
    pub fn profile(self) -> &'static GpuProfile {
        let id = if self == GpuModelId::A100Mig { GpuModelId::A100 } else { self };
        PROFILES.iter().find(|p| p.id == id).expect("every GpuModelId has a profile")
    }

    /// Whether the simulated GPU runs in MIG mode.
    pub fn mig(self) -> bool {
        self == GpuModelId::A100Mig
    }
}

impl GpuProfile {
    /// Finds the profile for a name as NVML reports it, e.g.
    /// `NVIDIA GeForce RTX 3060` or `NVIDIA H100 PCIe`.
    pub fn for_name(name: &str) -> Option<&'static GpuProfile> {
        let key = |p: &GpuProfile| match p.id {
            GpuModelId::Rtx4090 => "4090",
            GpuModelId::Rtx3090 => "3090",
            GpuModelId::Rtx3060 => "3060",
            GpuModelId::L4 => " L4",
            GpuModelId::A100 | GpuModelId::A100Mig => "A100",
            GpuModelId::H100 => "H100",
        };
        PROFILES.iter().find(|p| name.contains(key(p)))
    }

    /// Compute capacity relative to the RTX 4090 (which is 1.0).
    pub fn relative_capacity(&self) -> f64 {
        self.fp32_tflops / REFERENCE.profile().fp32_tflops
    }
}

#[cfg(test)]
mod tests;
