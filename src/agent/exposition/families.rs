//! Every family `/metrics` writes, in the order it writes them.
//!
//! A GPU field is one row of [`FIELDS`]: its native family, its
//! dcgm-exporter family with the unit conversion, how it is read from a
//! GPU's reading, and how often NVML reads it. The native and dcgm families
//! are walks over that table. What is not one value per GPU (identity, clock
//! events by reason, XIDs by code, MIG devices, pods, the agent itself) is
//! written by plain code after it.

use super::labels::SampleLabels;
use super::{MetricNames, epoch_seconds};
use crate::agent::sample::NodeReading;
use crate::family_writer::{FamilyWriter, Kind, Value};
use crate::gpu::{ClockEventReason, GpuCall, GpuReading, MigDevice, ViolationPolicy};

/// How often the agent reads a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cadence {
    /// Every `--interval`.
    Interval,
    /// Every `--health-interval` (fields that change rarely).
    Health,
}

/// A field's native family. Several fields may share one, told apart by
/// `labels` (ECC errors by error and counter, say); their rows are adjacent.
#[derive(Clone, Copy, Debug)]
pub(super) struct Native {
    pub name: &'static str,
    pub labels: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

/// A field's dcgm-exporter family: its name, help and type, and the unit
/// dcgm-exporter writes it in.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dcgm {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub unit: DcgmUnit,
}

/// How a native value (bytes, hertz, seconds, joules) becomes the value
/// dcgm-exporter writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DcgmUnit {
    /// As it is.
    Same,
    /// Rounded to a whole number (dcgm-exporter's integer fields).
    Whole,
    /// Bytes in MiB, rounded down.
    Mebibytes,
    /// Hertz in MHz.
    Megahertz,
    /// Bytes per second in KB.
    Kilobytes,
    /// Joules in mJ.
    Millijoules,
    /// Seconds in µs.
    Microseconds,
}

impl DcgmUnit {
    fn convert(self, value: Value) -> Value {
        let whole = |v: f64| Value::U64(v.max(0.0).round() as u64);
        match (self, value) {
            (DcgmUnit::Same, v) | (DcgmUnit::Whole, v @ Value::U64(_)) => v,
            (DcgmUnit::Mebibytes, Value::U64(v)) => Value::U64(v >> 20),
            (unit, v) => {
                let v = match v {
                    Value::F64(v) => v,
                    Value::U64(v) => v as f64,
                };
                whole(match unit {
                    DcgmUnit::Megahertz => v / 1e6,
                    DcgmUnit::Kilobytes => v / 1024.0,
                    DcgmUnit::Millijoules => v * 1e3,
                    DcgmUnit::Microseconds => v * 1e6,
                    DcgmUnit::Mebibytes => v / 1048576.0,
                    DcgmUnit::Same | DcgmUnit::Whole => v,
                })
            }
        }
    }
}

/// One GPU field.
#[derive(Clone, Copy, Debug)]
pub(super) struct Field {
    pub native: Option<Native>,
    pub dcgm: Option<Dcgm>,
    /// Its value in a reading, in the native unit; `None` where the GPU
    /// lacks it (the series is then left out, never written as 0).
    pub read: fn(&GpuReading) -> Option<Value>,
    /// Its value on a MIG device, where dcgm-exporter writes MIG devices
    /// into the family.
    pub mig: Option<fn(&MigDevice) -> Option<Value>>,
    /// Documents the row for whoever adds one; a test checks it against
    /// which read fills the field.
    #[cfg_attr(not(test), allow(dead_code))]
    pub cadence: Cadence,
}

const fn native(name: &'static str, help: &'static str, kind: Kind) -> Option<Native> {
    Some(Native { name, labels: "", help, kind })
}

const fn native_by(name: &'static str, labels: &'static str, help: &'static str, kind: Kind) -> Option<Native> {
    Some(Native { name, labels, help, kind })
}

const fn dcgm(name: &'static str, help: &'static str, kind: Kind, unit: DcgmUnit) -> Option<Dcgm> {
    Some(Dcgm { name, help, kind, unit })
}

const fn field(native: Option<Native>, dcgm: Option<Dcgm>, read: fn(&GpuReading) -> Option<Value>) -> Field {
    Field { native, dcgm, read, mig: None, cadence: Cadence::Interval }
}

const fn health(native: Option<Native>, dcgm: Option<Dcgm>, read: fn(&GpuReading) -> Option<Value>) -> Field {
    Field { native, dcgm, read, mig: None, cadence: Cadence::Health }
}

fn f(v: Option<f64>) -> Option<Value> {
    v.map(Value::F64)
}

fn n(v: Option<u64>) -> Option<Value> {
    v.map(Value::U64)
}

fn free_bytes(total: Option<u64>, used: Option<u64>) -> Option<Value> {
    Some(Value::U64(total?.saturating_sub(used?)))
}

use DcgmUnit::{Kilobytes, Mebibytes, Megahertz, Microseconds, Millijoules, Same, Whole};
use Kind::{BareCounter, Counter, Gauge};

const VIOLATIONS: &str = "Time clocks were held back by a policy since the driver loaded, by reason";
const ECC: &str = "ECC errors while ECC is on: corrected or uncorrected, since the driver loaded (volatile) or over the board's life (aggregate)";
const REMAPPED: &str = "Memory rows remapped, by the error that caused it";
const RETIRED: &str = "Memory pages retired, by cause";

/// Every GPU field, in the order `/metrics` writes its families.
pub(super) const FIELDS: &[Field] = &[
    field(
        native(
            "nvidia_gpu_utilization_percent",
            "Percent of time a kernel ran on the GPU over the driver's sample period",
            Gauge,
        ),
        dcgm("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)", Gauge, Whole),
        |r| f(r.utilization_percent),
    ),
    field(
        native("nvidia_gpu_memory_utilization_percent", "Percent of time device memory was read or written", Gauge),
        dcgm("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %)", Gauge, Whole),
        |r| f(r.memory_utilization_percent),
    ),
    Field {
        mig: Some(|m| n(m.memory_used_bytes)),
        ..field(
            native("nvidia_gpu_memory_used_bytes", "Device memory in use", Gauge),
            dcgm("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)", Gauge, Mebibytes),
            |r| n(r.memory_used_bytes),
        )
    },
    Field {
        mig: Some(|m| free_bytes(m.memory_total_bytes, m.memory_used_bytes)),
        ..field(None, dcgm("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)", Gauge, Mebibytes), |r| {
            free_bytes(r.memory_total_bytes, r.memory_used_bytes)
        })
    },
    field(native("nvidia_gpu_memory_total_bytes", "Device memory in total", Gauge), None, |r| n(r.memory_total_bytes)),
    field(
        native("nvidia_gpu_memory_reserved_bytes", "Device memory the driver reserves", Gauge),
        dcgm("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB)", Gauge, Mebibytes),
        |r| n(r.memory_reserved_bytes),
    ),
    field(
        native("nvidia_gpu_temperature_celsius", "GPU core temperature", Gauge),
        dcgm("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)", Gauge, Whole),
        |r| f(r.temperature_celsius),
    ),
    field(
        native("nvidia_gpu_memory_temperature_celsius", "Memory (HBM) temperature", Gauge),
        dcgm("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C)", Gauge, Whole),
        |r| f(r.memory_temperature_celsius),
    ),
    field(
        native("nvidia_gpu_power_watts", "Board power draw", Gauge),
        dcgm("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)", Gauge, Same),
        |r| f(r.power_watts),
    ),
    health(
        native("nvidia_gpu_power_limit_watts", "Enforced power limit", Gauge),
        dcgm("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "Effective power limit that the driver enforces (in W)", Gauge, Same),
        |r| f(r.health.power_limit_watts),
    ),
    field(
        native("nvidia_gpu_energy_joules", "Energy used since the driver loaded", Counter),
        dcgm(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "Total energy consumption since boot (in mJ)",
            BareCounter,
            Millijoules,
        ),
        |r| f(r.energy_joules),
    ),
    field(
        native("nvidia_gpu_sm_clock_hertz", "Current SM clock", Gauge),
        dcgm("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)", Gauge, Megahertz),
        |r| f(r.sm_clock_hertz),
    ),
    field(
        native("nvidia_gpu_memory_clock_hertz", "Current memory clock", Gauge),
        dcgm("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz)", Gauge, Megahertz),
        |r| f(r.memory_clock_hertz),
    ),
    field(
        native("nvidia_gpu_pcie_transmit_bytes_per_second", "PCIe transmit throughput (NVML's 20 ms window)", Gauge),
        dcgm(
            "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
            "Total number of bytes transmitted through PCIe TX (in KB) via NVML",
            BareCounter,
            Kilobytes,
        ),
        |r| f(r.pcie_transmit_bytes_per_second),
    ),
    field(
        native("nvidia_gpu_pcie_receive_bytes_per_second", "PCIe receive throughput (NVML's 20 ms window)", Gauge),
        dcgm(
            "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
            "Total number of bytes received through PCIe RX (in KB) via NVML",
            BareCounter,
            Kilobytes,
        ),
        |r| f(r.pcie_receive_bytes_per_second),
    ),
    field(
        native("nvidia_gpu_pcie_replays", "PCIe replays (retries) since the driver loaded", Counter),
        dcgm("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries", BareCounter, Same),
        |r| n(r.pcie_replays),
    ),
    field(
        native("nvidia_gpu_encoder_utilization_percent", "Video encoder utilization", Gauge),
        dcgm("DCGM_FI_DEV_ENC_UTIL", "Encoder utilization (in %)", Gauge, Whole),
        |r| f(r.encoder_utilization_percent),
    ),
    field(
        native("nvidia_gpu_decoder_utilization_percent", "Video decoder utilization", Gauge),
        dcgm("DCGM_FI_DEV_DEC_UTIL", "Decoder utilization (in %)", Gauge, Whole),
        |r| f(r.decoder_utilization_percent),
    ),
    field(
        native("nvidia_gpu_fan_speed_percent", "Intended speed of the first fan, percent of its maximum", Gauge),
        dcgm("DCGM_FI_DEV_FAN_SPEED", "Fan speed (in 0-100%)", Gauge, Whole),
        |r| f(r.fan_speed_percent),
    ),
    field(
        native("nvidia_gpu_performance_state", "Performance state: 0 (P0, most) to 15 (P15, least)", Gauge),
        dcgm("DCGM_FI_DEV_PSTATE", "Performance state (P-State) 0-15. 0=highest", Gauge, Same),
        |r| r.performance_state.map(|p| Value::U64(u64::from(p))),
    ),
    field(None, dcgm("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "Current clock event reasons (bitmask)", Gauge, Same), |r| {
        n(r.clock_events)
    }),
    field(
        native_by("nvidia_gpu_clock_event_violation_seconds", "reason=\"power\"", VIOLATIONS, Counter),
        dcgm(
            "DCGM_FI_DEV_POWER_VIOLATION",
            "Throttling duration due to power constraints (in us)",
            BareCounter,
            Microseconds,
        ),
        |r| f(r.violations.get(ViolationPolicy::Power)),
    ),
    field(
        native_by("nvidia_gpu_clock_event_violation_seconds", "reason=\"thermal\"", VIOLATIONS, Counter),
        dcgm(
            "DCGM_FI_DEV_THERMAL_VIOLATION",
            "Throttling duration due to thermal constraints (in us)",
            BareCounter,
            Microseconds,
        ),
        |r| f(r.violations.get(ViolationPolicy::Thermal)),
    ),
    field(
        native_by("nvidia_gpu_clock_event_violation_seconds", "reason=\"sync_boost\"", VIOLATIONS, Counter),
        dcgm(
            "DCGM_FI_DEV_SYNC_BOOST_VIOLATION",
            "Throttling duration due to sync-boost constraints (in us)",
            BareCounter,
            Microseconds,
        ),
        |r| f(r.violations.get(ViolationPolicy::SyncBoost)),
    ),
    field(
        native_by("nvidia_gpu_clock_event_violation_seconds", "reason=\"board_limit\"", VIOLATIONS, Counter),
        dcgm(
            "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION",
            "Throttling duration due to board limit constraints (in us)",
            BareCounter,
            Microseconds,
        ),
        |r| f(r.violations.get(ViolationPolicy::BoardLimit)),
    ),
    field(
        native_by("nvidia_gpu_clock_event_violation_seconds", "reason=\"low_utilization\"", VIOLATIONS, Counter),
        dcgm(
            "DCGM_FI_DEV_LOW_UTIL_VIOLATION",
            "Throttling duration due to low utilization (in us)",
            BareCounter,
            Microseconds,
        ),
        |r| f(r.violations.get(ViolationPolicy::LowUtilization)),
    ),
    field(
        native_by("nvidia_gpu_clock_event_violation_seconds", "reason=\"reliability\"", VIOLATIONS, Counter),
        dcgm(
            "DCGM_FI_DEV_RELIABILITY_VIOLATION",
            "Throttling duration due to reliability constraints (in us)",
            BareCounter,
            Microseconds,
        ),
        |r| f(r.violations.get(ViolationPolicy::Reliability)),
    ),
    health(
        native_by("nvidia_gpu_ecc_errors", "error=\"corrected\",counter=\"volatile\"", ECC, Counter),
        dcgm("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors", BareCounter, Same),
        |r| n(r.health.ecc?.corrected_volatile),
    ),
    health(
        native_by("nvidia_gpu_ecc_errors", "error=\"uncorrected\",counter=\"volatile\"", ECC, Counter),
        dcgm("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors", BareCounter, Same),
        |r| n(r.health.ecc?.uncorrected_volatile),
    ),
    health(
        native_by("nvidia_gpu_ecc_errors", "error=\"corrected\",counter=\"aggregate\"", ECC, Counter),
        dcgm("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "Total number of single-bit persistent ECC errors", BareCounter, Same),
        |r| n(r.health.ecc?.corrected_aggregate),
    ),
    health(
        native_by("nvidia_gpu_ecc_errors", "error=\"uncorrected\",counter=\"aggregate\"", ECC, Counter),
        dcgm("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "Total number of double-bit persistent ECC errors", BareCounter, Same),
        |r| n(r.health.ecc?.uncorrected_aggregate),
    ),
    health(
        native_by("nvidia_gpu_remapped_rows", "error=\"correctable\"", REMAPPED, Counter),
        dcgm(
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
            "Number of remapped rows for correctable errors",
            BareCounter,
            Same,
        ),
        |r| Some(Value::U64(r.health.remapped_rows?.correctable)),
    ),
    health(
        native_by("nvidia_gpu_remapped_rows", "error=\"uncorrectable\"", REMAPPED, Counter),
        dcgm(
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
            "Number of remapped rows for uncorrectable errors",
            BareCounter,
            Same,
        ),
        |r| Some(Value::U64(r.health.remapped_rows?.uncorrectable)),
    ),
    health(
        native("nvidia_gpu_remapped_rows_pending", "1 while a row remapping waits for a GPU reset", Gauge),
        None,
        |r| Some(Value::from(r.health.remapped_rows?.pending)),
    ),
    health(
        native("nvidia_gpu_remapped_rows_failed", "1 when a row remapping failed: the GPU needs service", Gauge),
        dcgm("DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed", Gauge, Same),
        |r| Some(Value::from(r.health.remapped_rows?.failure)),
    ),
    health(
        native_by("nvidia_gpu_retired_pages", "cause=\"single_bit_ecc\"", RETIRED, Gauge),
        dcgm("DCGM_FI_DEV_RETIRED_SBE", "Total number of retired pages due to single-bit errors", BareCounter, Same),
        |r| Some(Value::U64(r.health.retired_pages?.single_bit)),
    ),
    health(
        native_by("nvidia_gpu_retired_pages", "cause=\"double_bit_ecc\"", RETIRED, Gauge),
        dcgm("DCGM_FI_DEV_RETIRED_DBE", "Total number of retired pages due to double-bit errors", BareCounter, Same),
        |r| Some(Value::U64(r.health.retired_pages?.double_bit)),
    ),
    health(
        native("nvidia_gpu_retired_pages_pending", "1 while pages wait to be retired at the next reset", Gauge),
        dcgm("DCGM_FI_DEV_RETIRED_PENDING", "Total number of pages pending retirement", BareCounter, Same),
        |r| Some(Value::from(r.health.retired_pages?.pending?)),
    ),
    field(None, dcgm("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered", Gauge, Same), |r| {
        Some(Value::U64(r.xid.as_ref()?.last.unwrap_or(0)))
    }),
];

/// The native MIG device families: name, help, and the value.
type MigFamily = (&'static str, &'static str, fn(&MigDevice) -> Option<Value>);
const MIG_FAMILIES: [MigFamily; 3] = [
    ("nvidia_gpu_mig_memory_used_bytes", "Memory in use on a MIG device (a GPU in MIG mode)", |m| {
        n(m.memory_used_bytes)
    }),
    ("nvidia_gpu_mig_memory_total_bytes", "Memory of a MIG device", |m| n(m.memory_total_bytes)),
    (
        "nvidia_gpu_mig_utilization_percent",
        "Share of the last interval a MIG device's GPU instance was busy (GPM graphics utilization; Hopper and newer)",
        |m| f(m.utilization_percent),
    ),
];

/// Writes every family of a sample.
pub(super) fn write(w: &mut FamilyWriter, data: &NodeReading, labels: &SampleLabels, names: MetricNames) {
    if names != MetricNames::Dcgm {
        native_families(w, data, labels);
    }
    if names != MetricNames::Native {
        dcgm_families(w, data, labels);
    }
    agent_families(w, data, labels);
}

/// The GPUs that answered this sample, with their index.
fn up(data: &NodeReading) -> impl Iterator<Item = (usize, &GpuReading)> {
    data.gpus.iter().enumerate().filter(|(_, g)| g.up).map(|(i, g)| (i, &g.reading))
}

/// The `nvidia_gpu_*` families.
fn native_families(w: &mut FamilyWriter, data: &NodeReading, labels: &SampleLabels) {
    let device = |i| labels.devices.get(i);
    w.family(
        "nvidia_gpu_info",
        "GPU identity, 1 for every GPU the agent found, with its PCI bus ID and the driver and CUDA versions",
        Gauge,
    );
    for i in 0..data.gpus.len() {
        w.series(&[device(i), labels.info.get(i)], 1u64);
    }
    w.family("nvidia_gpu_up", "1 when the GPU answered this sample, 0 when it stopped answering", Gauge);
    for (i, gpu) in data.gpus.iter().enumerate() {
        w.series(&[device(i)], gpu.up);
    }
    let same_family = |a: &Field, b: &Field| matches!((a.native, b.native), (Some(a), Some(b)) if a.name == b.name);
    for rows in FIELDS.chunk_by(same_family) {
        let Some(family) = rows[0].native else { continue };
        w.family(family.name, family.help, family.kind);
        for (i, reading) in up(data) {
            for (row, value) in rows.iter().filter_map(|row| Some((row, (row.read)(reading)?))) {
                w.series(&[device(i), row.native.map_or("", |n| n.labels)], value);
            }
        }
    }
    w.family(
        "nvidia_gpu_clock_event_active",
        "1 while a clock-event (throttle) reason holds clocks back, by reason",
        Gauge,
    );
    for (i, reading) in up(data) {
        let Some(mask) = reading.clock_events else { continue };
        for reason in ClockEventReason::ALL {
            w.series(&[device(i), reason.label()], mask & reason.bit() != 0);
        }
    }
    w.family(
        "nvidia_gpu_xid_errors",
        "XID errors since the agent started, by XID code (NVML critical XID events)",
        Counter,
    );
    let mut xid = String::new();
    for (i, reading) in up(data) {
        for (code, &count) in reading.xid.iter().flat_map(|x| &x.counts) {
            xid.clear();
            crate::family_writer::push_label(&mut xid, "xid", itoa::Buffer::new().format(*code));
            w.series(&[device(i), &xid], count);
        }
    }
    for (name, help, value) in MIG_FAMILIES {
        w.family(name, help, Gauge);
        for (j, i, m, holder) in labels.up_migs(data) {
            if let Some(v) = value(&data.gpus[i].reading.mig_devices[m]) {
                w.series(&[labels.migs.get(j), labels.pod(holder)], v);
            }
        }
    }
    pod_families(w, data, labels);
}

/// A pod's series on a GPU: the GPU's labels (its MIG device's, on one), the
/// pod's, and `sharing`.
fn pod_families(w: &mut FamilyWriter, data: &NodeReading, labels: &SampleLabels) {
    let pods = || data.usages.iter().zip(&data.accounts).enumerate();
    let parts = |k: usize| [labels.held.get(k), labels.pods.get(k), data.usages[k].sharing.label()];
    w.family(
        "nvidia_gpu_pod_utilization_percent",
        "A pod's utilization of a GPU: the device value on an exclusive GPU, its processes' share on a shared one",
        Gauge,
    );
    for (k, (u, _)) in pods() {
        if let Ok(v) = u.utilization_percent {
            w.series(&parts(k), v);
        }
    }
    w.family("nvidia_gpu_pod_memory_utilization_percent", "A pod's memory-controller utilization of a GPU", Gauge);
    for (k, (u, _)) in pods() {
        if let Some(v) = u.memory_utilization_percent {
            w.series(&parts(k), v);
        }
    }
    w.family(
        "nvidia_gpu_pod_memory_used_bytes",
        "Device memory a pod's processes hold on a GPU (NVML's running-process lists); memory no pod's process holds is only in nvidia_gpu_memory_used_bytes",
        Gauge,
    );
    for (k, (u, _)) in pods() {
        if let Some(v) = u.memory_used_bytes {
            w.series(&parts(k), v);
        }
    }
    w.family(
        "nvidia_gpu_pod_last_active_timestamp_seconds",
        "When the pod's utilization share of the GPU was last above zero (or, never seen active, when the agent first saw it hold the GPU), seconds since the Unix epoch",
        Gauge,
    );
    for (k, (_, account)) in pods() {
        w.series(&parts(k), epoch_seconds(account.last_active));
    }
    w.family(
        "nvidia_gpu_pod_energy_joules",
        "The pod's part of the GPU's energy since the agent first saw it there, split by utilization shares",
        Counter,
    );
    for (k, (_, account)) in pods() {
        w.series(&parts(k), account.energy_joules);
    }
    w.family(
        "kube_gpu_metrics_pod_attribution_unresolved",
        "1 for a pod whose share of a GPU cannot be measured, with the reason",
        Gauge,
    );
    for (k, (u, _)) in pods() {
        if let Err(reason) = u.utilization_percent {
            w.series(&[labels.held.get(k), labels.pods.get(k), reason.label()], 1u64);
        }
    }
}

/// The dcgm-exporter families, in its names, units and labels. As with
/// dcgm-exporter's pod mapping, a GPU held by pods has one series per
/// holding container, each with the device's value; a GPU no pod holds has
/// one series without pod labels.
fn dcgm_families(w: &mut FamilyWriter, data: &NodeReading, labels: &SampleLabels) {
    for row in FIELDS {
        let Some(family) = row.dcgm else { continue };
        w.family(family.name, family.help, family.kind);
        for &(i, holder) in &labels.dcgm_series {
            if let Some(v) = (row.read)(&data.gpus[i].reading) {
                w.series(&[labels.dcgm.get(i), labels.pod(holder)], family.unit.convert(v));
            }
        }
        let Some(read_mig) = row.mig else { continue };
        for (j, i, m, holder) in labels.up_migs(data) {
            if let Some(v) = read_mig(&data.gpus[i].reading.mig_devices[m]) {
                w.series(&[labels.dcgm_migs.get(j), labels.pod(holder)], family.unit.convert(v));
            }
        }
    }
}

/// The agent's own state, labelled with its node like every GPU series.
fn agent_families(w: &mut FamilyWriter, data: &NodeReading, labels: &SampleLabels) {
    let own = labels.own.as_str();
    let c = &data.counters;
    w.family("kube_gpu_metrics_build_info", "Build of the agent", Gauge);
    w.series(&[own, concat!("version=\"", env!("CARGO_PKG_VERSION"), "\"")], 1u64);
    w.family("kube_gpu_metrics_gpu_source_up", "1 when the GPU source (NVML) is initialised", Gauge);
    w.series(&[own], data.gpu_source_up);
    w.family("kube_gpu_metrics_pod_resources_up", "1 when the kubelet answered the last PodResources call", Gauge);
    if let Some(up) = data.pod_resources_up {
        w.series(&[own], up);
    }
    w.family("kube_gpu_metrics_sample_duration_seconds", "Duration of the last sample pass", Gauge);
    w.series(&[own], data.sample_duration.as_secs_f64());
    w.family(
        "kube_gpu_metrics_last_sample_timestamp_seconds",
        "When the last sample pass started, seconds since the Unix epoch",
        Gauge,
    );
    w.series(&[own], epoch_seconds(data.taken_at));
    w.family("kube_gpu_metrics_samples", "Sample passes finished", Counter);
    w.series(&[own], c.samples);
    w.family(
        "kube_gpu_metrics_nvml_errors",
        "Failed NVML calls, by call (not-supported answers are not errors)",
        Counter,
    );
    for (call, count) in GpuCall::ALL.iter().zip(c.gpu_errors) {
        w.series(&[own, call.label()], count);
    }
    w.family(
        "kube_gpu_metrics_gpu_read_timeouts",
        "GPU reads that missed their deadline; the GPU is reported down for that sample",
        Counter,
    );
    w.series(&[own], c.gpu_read_timeouts);
    w.family("kube_gpu_metrics_pod_resources_errors", "Failed kubelet PodResources calls", Counter);
    w.series(&[own], c.pod_resources_errors);
    w.family("kube_gpu_metrics_scrapes", "Scrapes of /metrics, by format, as of this sample", Counter);
    w.series(&[own, "format=\"text\""], c.scrapes_text);
    w.series(&[own, "format=\"openmetrics\""], c.scrapes_openmetrics);
}
