use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::families::{Cadence, FIELDS};
use super::*;
use crate::agent::sample::PodAccount;
use crate::agent::sample::{GpuState, Readiness};
use crate::agent::self_metrics::AgentCounters;
use crate::attribution::{PodGpuUsage, Sharing, Unresolved};
use crate::gpu::{
    ClockEventReason, EccCounts, GpuCall, GpuIdentity, GpuReading, HealthReading, MigDevice, RemappedRows,
    RetiredPages, Violations, XidErrors,
};

fn gpu(index: u32, uuid: &str, model: &str, up: bool, reading: GpuReading) -> GpuState {
    let pci_bus_id = format!("00000000:{:02X}:00.0", index + 1);
    GpuState { identity: GpuIdentity { index, uuid: uuid.into(), model: model.into(), pci_bus_id }, up, reading }
}

fn full_reading(util: f64) -> GpuReading {
    GpuReading {
        utilization_percent: Some(util),
        memory_utilization_percent: Some(31.0),
        memory_used_bytes: Some(8 << 30),
        memory_total_bytes: Some(24 << 30),
        temperature_celsius: Some(61.0),
        power_watts: Some(312.5),
        sm_clock_hertz: Some(2.52e9),
        memory_clock_hertz: Some(10.501e9),
        memory_temperature_celsius: Some(70.0),
        energy_joules: Some(123_456.789),
        pcie_replays: Some(3),
        pcie_transmit_bytes_per_second: Some(2_097_152.0),
        pcie_receive_bytes_per_second: Some(4_194_304.0),
        encoder_utilization_percent: Some(5.0),
        decoder_utilization_percent: Some(7.0),
        fan_speed_percent: Some(45.0),
        performance_state: Some(2),
        memory_reserved_bytes: Some(352 << 20),
        clock_events: Some(ClockEventReason::SwPowerCap.bit() | ClockEventReason::HwThermalSlowdown.bit()),
        violations: Violations([Some(1.5), Some(0.25), Some(0.0), Some(0.0), Some(0.0), Some(0.0)]),
        health: HealthReading {
            power_limit_watts: Some(450.0),
            ecc: Some(EccCounts {
                corrected_volatile: Some(2),
                uncorrected_volatile: Some(0),
                corrected_aggregate: Some(12),
                uncorrected_aggregate: Some(1),
            }),
            remapped_rows: Some(RemappedRows { correctable: 1, uncorrectable: 0, pending: true, failure: false }),
            retired_pages: Some(RetiredPages { single_bit: 4, double_bit: 1, pending: Some(false) }),
        },
        xid: Some(XidErrors { counts: [(48, 1), (79, 2)].into_iter().collect(), last: Some(79) }),
        mig_devices: Vec::new(),
    }
}

/// What a GeForce board gives: no memory temperature, ECC, remapping or
/// retired pages.
fn geforce_reading(util: f64) -> GpuReading {
    GpuReading {
        memory_temperature_celsius: None,
        health: HealthReading { power_limit_watts: Some(170.0), ..HealthReading::default() },
        clock_events: Some(0),
        xid: Some(XidErrors::default()),
        ..full_reading(util)
    }
}

fn usage(pod: &str, gpu: usize, sharing: Sharing, util: Result<f64, Unresolved>) -> PodGpuUsage {
    PodGpuUsage {
        namespace: "ai-system-gpu".into(),
        pod: pod.into(),
        container: "main".into(),
        gpu,
        mig: None,
        sharing,
        utilization_percent: util,
        memory_utilization_percent: util.ok().map(|u| u / 2.0),
        memory_used_bytes: None,
    }
}

/// Three GPUs: an exclusive 4090, a 3060 shared by two pods (one unresolved)
/// without power readings, and a lost GPU.
fn sample_data() -> NodeReading {
    let mut no_power = geforce_reading(55.0);
    no_power.power_watts = None;
    no_power.memory_total_bytes = Some(12 << 30);
    NodeReading {
        node: "mainpc".into(),
        taken_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_430_000_250),
        interval: Duration::from_secs(1),
        driver_version: Some("550.54.14".into()),
        cuda_version: Some("12.4".into()),
        gpus: vec![
            gpu(0, "GPU-aaaa", "NVIDIA GeForce RTX 4090", true, full_reading(42.5)),
            gpu(1, "GPU-bbbb", "NVIDIA GeForce RTX 3060", true, no_power),
            gpu(2, "GPU-cccc", "NVIDIA GeForce RTX 4090", false, GpuReading::default()),
        ],
        usages: vec![
            PodGpuUsage {
                memory_used_bytes: Some(6 << 30),
                ..usage("reasoning-suite-7d9f-x2k9p", 0, Sharing::Exclusive, Ok(42.5))
            },
            PodGpuUsage {
                memory_used_bytes: Some(3 << 30),
                ..usage("vision-dream-5c8-abcde", 1, Sharing::Shared, Ok(40.0))
            },
            usage("tutoring \"quoted\"\\pod", 1, Sharing::Shared, Err(Unresolved::PodUidUnknown)),
        ],
        accounts: [5000.0, 1250.5, 0.0]
            .into_iter()
            .map(|energy_joules| PodAccount {
                last_active: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_429_000_500),
                energy_joules,
            })
            .collect(),
        readiness: Readiness::Ready,
        gpu_source_up: true,
        pod_resources_up: Some(true),
        sample_duration: Duration::from_micros(1500),
        counters: AgentCounters { samples: 7, scrapes_text: 3, scrapes_openmetrics: 2, ..AgentCounters::default() },
    }
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn gpu_labels_of(node: &str, g: &GpuState) -> Labels {
    let index = g.identity.index.to_string();
    labels(&[("node", node), ("gpu", &index), ("uuid", &g.identity.uuid), ("model", &g.identity.model)])
}

/// The same series, registered in prometheus-client.
fn reference_openmetrics(data: &NodeReading) -> String {
    let mut registry = Registry::default();
    let gauge_f = |registry: &mut Registry, name: &str, help: &str, series: Vec<(Labels, f64)>| {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (l, v) in series {
            family.get_or_create(&l).set(v);
        }
        registry.register(name, help, family);
    };
    let gauge_i = |registry: &mut Registry, name: &str, help: &str, series: Vec<(Labels, i64)>| {
        let family = Family::<Labels, Gauge>::default();
        for (l, v) in series {
            family.get_or_create(&l).set(v);
        }
        registry.register(name, help, family);
    };
    let node = data.node.as_str();
    let mut device: Vec<Labels> = data.gpus.iter().map(|g| gpu_labels_of(node, g)).collect();
    let exclusive = &data.usages[0];
    device[0].extend(labels(&[("namespace", &exclusive.namespace), ("pod", &exclusive.pod), ("container", "main")]));
    let up: Vec<usize> = vec![0, 1];

    gauge_i(
        &mut registry,
        "nvidia_gpu_info",
        "GPU identity, 1 for every GPU the agent found, with its PCI bus ID and the driver and CUDA versions",
        device
            .iter()
            .zip(&data.gpus)
            .map(|(l, g)| {
                let mut l = l.clone();
                l.extend(labels(&[
                    ("pci_bus_id", &g.identity.pci_bus_id),
                    ("driver_version", "550.54.14"),
                    ("cuda_version", "12.4"),
                ]));
                (l, 1)
            })
            .collect(),
    );
    gauge_i(
        &mut registry,
        "nvidia_gpu_up",
        "1 when the GPU answered this sample, 0 when it stopped answering",
        device.iter().zip([1, 1, 0]).map(|(l, v)| (l.clone(), v)).collect(),
    );
    let field = |f: &dyn Fn(&GpuReading) -> Option<f64>| -> Vec<(Labels, f64)> {
        up.iter().filter_map(|&i| Some((device[i].clone(), f(&data.gpus[i].reading)?))).collect()
    };
    let field_i = |f: &dyn Fn(&GpuReading) -> Option<u64>| -> Vec<(Labels, i64)> {
        up.iter().filter_map(|&i| Some((device[i].clone(), f(&data.gpus[i].reading)? as i64))).collect()
    };
    gauge_i(
        &mut registry,
        "nvidia_gpu_memory_total_bytes",
        "Device memory in total",
        field_i(&|r| r.memory_total_bytes),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_utilization_percent",
        "Percent of time a kernel ran on the GPU over the driver's sample period",
        field(&|r| r.utilization_percent),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_memory_utilization_percent",
        "Percent of time device memory was read or written",
        field(&|r| r.memory_utilization_percent),
    );
    gauge_i(&mut registry, "nvidia_gpu_memory_used_bytes", "Device memory in use", field_i(&|r| r.memory_used_bytes));
    gauge_f(&mut registry, "nvidia_gpu_temperature_celsius", "GPU core temperature", field(&|r| r.temperature_celsius));
    gauge_f(&mut registry, "nvidia_gpu_power_watts", "Board power draw", field(&|r| r.power_watts));
    gauge_f(&mut registry, "nvidia_gpu_sm_clock_hertz", "Current SM clock", field(&|r| r.sm_clock_hertz));
    gauge_f(&mut registry, "nvidia_gpu_memory_clock_hertz", "Current memory clock", field(&|r| r.memory_clock_hertz));
    gauge_f(
        &mut registry,
        "nvidia_gpu_memory_temperature_celsius",
        "Memory (HBM) temperature",
        field(&|r| r.memory_temperature_celsius),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_pcie_transmit_bytes_per_second",
        "PCIe transmit throughput (NVML's 20 ms window)",
        field(&|r| r.pcie_transmit_bytes_per_second),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_pcie_receive_bytes_per_second",
        "PCIe receive throughput (NVML's 20 ms window)",
        field(&|r| r.pcie_receive_bytes_per_second),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_encoder_utilization_percent",
        "Video encoder utilization",
        field(&|r| r.encoder_utilization_percent),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_decoder_utilization_percent",
        "Video decoder utilization",
        field(&|r| r.decoder_utilization_percent),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_fan_speed_percent",
        "Intended speed of the first fan, percent of its maximum",
        field(&|r| r.fan_speed_percent),
    );
    gauge_i(
        &mut registry,
        "nvidia_gpu_performance_state",
        "Performance state: 0 (P0, most) to 15 (P15, least)",
        field_i(&|r| r.performance_state.map(u64::from)),
    );
    gauge_i(
        &mut registry,
        "nvidia_gpu_memory_reserved_bytes",
        "Device memory the driver reserves",
        field_i(&|r| r.memory_reserved_bytes),
    );
    let with = |i: usize, pairs: &[(&str, &str)]| -> Labels {
        let mut l = device[i].clone();
        l.extend(labels(pairs));
        l
    };
    gauge_i(
        &mut registry,
        "nvidia_gpu_clock_event_active",
        "1 while a clock-event (throttle) reason holds clocks back, by reason",
        up.iter()
            .flat_map(|&i| {
                let mask = data.gpus[i].reading.clock_events.unwrap();
                ClockEventReason::ALL
                    .iter()
                    .map(move |r| (with(i, &[("reason", r.as_str())]), i64::from(mask & r.bit() != 0)))
            })
            .collect(),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_power_limit_watts",
        "Enforced power limit",
        field(&|r| r.health.power_limit_watts),
    );
    gauge_i(
        &mut registry,
        "nvidia_gpu_remapped_rows_pending",
        "1 while a row remapping waits for a GPU reset",
        vec![(device[0].clone(), 1)],
    );
    gauge_i(
        &mut registry,
        "nvidia_gpu_remapped_rows_failed",
        "1 when a row remapping failed: the GPU needs service",
        vec![(device[0].clone(), 0)],
    );
    gauge_i(
        &mut registry,
        "nvidia_gpu_retired_pages",
        "Memory pages retired, by cause",
        vec![(with(0, &[("cause", "single_bit_ecc")]), 4), (with(0, &[("cause", "double_bit_ecc")]), 1)],
    );
    gauge_i(
        &mut registry,
        "nvidia_gpu_retired_pages_pending",
        "1 while pages wait to be retired at the next reset",
        vec![(device[0].clone(), 0)],
    );

    let pod = |u: &PodGpuUsage, extra: (&str, &str)| -> Labels {
        let mut l = gpu_labels_of(node, &data.gpus[u.gpu]);
        l.extend(labels(&[("namespace", &u.namespace), ("pod", &u.pod), ("container", &u.container), extra]));
        l
    };
    gauge_f(
        &mut registry,
        "nvidia_gpu_pod_utilization_percent",
        "A pod's utilization of a GPU: the device value on an exclusive GPU, its processes' share on a shared one",
        data.usages
            .iter()
            .filter_map(|u| Some((pod(u, ("sharing", u.sharing.as_str())), u.utilization_percent.ok()?)))
            .collect(),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_pod_memory_utilization_percent",
        "A pod's memory-controller utilization of a GPU",
        data.usages
            .iter()
            .filter_map(|u| Some((pod(u, ("sharing", u.sharing.as_str())), u.memory_utilization_percent?)))
            .collect(),
    );
    gauge_i(
        &mut registry,
        "nvidia_gpu_pod_memory_used_bytes",
        "Device memory a pod's processes hold on a GPU (NVML's running-process lists); memory no pod's process holds is only in nvidia_gpu_memory_used_bytes",
        data.usages
            .iter()
            .filter_map(|u| Some((pod(u, ("sharing", u.sharing.as_str())), u.memory_used_bytes? as i64)))
            .collect(),
    );
    gauge_f(
        &mut registry,
        "nvidia_gpu_pod_last_active_timestamp_seconds",
        "When the pod's utilization share of the GPU was last above zero (or, never seen active, when the agent first saw it hold the GPU), seconds since the Unix epoch",
        data.usages.iter().map(|u| (pod(u, ("sharing", u.sharing.as_str())), 1_795_429_000.5)).collect(),
    );
    gauge_i(
        &mut registry,
        "kube_gpu_metrics_pod_attribution_unresolved",
        "1 for a pod whose share of a GPU cannot be measured, with the reason",
        vec![(pod(&data.usages[2], ("reason", "pod-uid-unknown")), 1)],
    );
    gauge_i(
        &mut registry,
        "kube_gpu_metrics_build_info",
        "Build of the agent",
        vec![(labels(&[("node", node), ("version", env!("CARGO_PKG_VERSION"))]), 1)],
    );
    // The agent's own series carry its node label.
    let own = labels(&[("node", node)]);
    let own_with = |k: &str, v: &str| labels(&[("node", node), (k, v)]);
    gauge_i(
        &mut registry,
        "kube_gpu_metrics_gpu_source_up",
        "1 when the GPU source (NVML) is initialised",
        vec![(own.clone(), 1)],
    );
    gauge_i(
        &mut registry,
        "kube_gpu_metrics_pod_resources_up",
        "1 when the kubelet answered the last PodResources call",
        vec![(own.clone(), 1)],
    );
    gauge_f(
        &mut registry,
        "kube_gpu_metrics_sample_duration_seconds",
        "Duration of the last sample pass",
        vec![(own.clone(), 0.0015)],
    );
    gauge_f(
        &mut registry,
        "kube_gpu_metrics_last_sample_timestamp_seconds",
        "When the last sample pass started, seconds since the Unix epoch",
        vec![(own.clone(), 1_795_430_000.25)],
    );
    let counter = |registry: &mut Registry, name: &str, help: &str, series: Vec<(Labels, u64)>| {
        let family = Family::<Labels, Counter>::default();
        for (l, v) in series {
            family.get_or_create(&l).inc_by(v);
        }
        registry.register(name, help, family);
    };
    let counter_f = |registry: &mut Registry, name: &str, help: &str, series: Vec<(Labels, f64)>| {
        let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (l, v) in series {
            family.get_or_create(&l).inc_by(v);
        }
        registry.register(name, help, family);
    };
    counter_f(
        &mut registry,
        "nvidia_gpu_clock_event_violation_seconds",
        "Time clocks were held back by a policy since the driver loaded, by reason",
        up.iter()
            .flat_map(|&i| {
                ["power", "thermal", "sync_boost", "board_limit", "low_utilization", "reliability"]
                    .into_iter()
                    .zip([1.5, 0.25, 0.0, 0.0, 0.0, 0.0])
                    .map(move |(r, v)| (with(i, &[("reason", r)]), v))
            })
            .collect(),
    );
    counter(
        &mut registry,
        "nvidia_gpu_xid_errors",
        "XID errors since the agent started, by XID code (NVML critical XID events)",
        vec![(with(0, &[("xid", "48")]), 1), (with(0, &[("xid", "79")]), 2)],
    );
    counter_f(
        &mut registry,
        "nvidia_gpu_energy_joules",
        "Energy used since the driver loaded",
        up.iter().map(|&i| (device[i].clone(), 123_456.789)).collect(),
    );
    counter(
        &mut registry,
        "nvidia_gpu_pcie_replays",
        "PCIe replays (retries) since the driver loaded",
        up.iter().map(|&i| (device[i].clone(), 3)).collect(),
    );
    counter(
        &mut registry,
        "nvidia_gpu_ecc_errors",
        "ECC errors while ECC is on: corrected or uncorrected, since the driver loaded (volatile) or over the board's life (aggregate)",
        vec![
            (with(0, &[("error", "corrected"), ("counter", "volatile")]), 2),
            (with(0, &[("error", "uncorrected"), ("counter", "volatile")]), 0),
            (with(0, &[("error", "corrected"), ("counter", "aggregate")]), 12),
            (with(0, &[("error", "uncorrected"), ("counter", "aggregate")]), 1),
        ],
    );
    counter(
        &mut registry,
        "nvidia_gpu_remapped_rows",
        "Memory rows remapped, by the error that caused it",
        vec![(with(0, &[("error", "correctable")]), 1), (with(0, &[("error", "uncorrectable")]), 0)],
    );
    counter_f(
        &mut registry,
        "nvidia_gpu_pod_energy_joules",
        "The pod's part of the GPU's energy since the agent first saw it there, split by utilization shares",
        data.usages
            .iter()
            .zip([5000.0, 1250.5, 0.0])
            .map(|(u, joules)| (pod(u, ("sharing", u.sharing.as_str())), joules))
            .collect(),
    );
    counter(&mut registry, "kube_gpu_metrics_samples", "Sample passes finished", vec![(own.clone(), 7)]);
    counter(
        &mut registry,
        "kube_gpu_metrics_nvml_errors",
        "Failed NVML calls, by call (not-supported answers are not errors)",
        GpuCall::ALL.iter().map(|call| (own_with("call", call.as_str()), 0)).collect(),
    );
    counter(
        &mut registry,
        "kube_gpu_metrics_gpu_read_timeouts",
        "GPU reads that missed their deadline; the GPU is reported down for that sample",
        vec![(own.clone(), 0)],
    );
    counter(
        &mut registry,
        "kube_gpu_metrics_pod_resources_errors",
        "Failed kubelet PodResources calls",
        vec![(own.clone(), 0)],
    );
    counter(
        &mut registry,
        "kube_gpu_metrics_scrapes",
        "Scrapes of /metrics, by format, as of this sample",
        vec![(own_with("format", "text"), 3), (own_with("format", "openmetrics"), 2)],
    );

    let mut out = String::new();
    encode(&mut out, &registry).unwrap();
    out
}

/// prometheus-client orders series within a family by hash, and the
/// reference registers families in its own order: compare the families as a
/// set, each with its samples sorted. (The order is the golden files'.)
fn normalize(text: &str) -> Vec<Vec<String>> {
    let mut families: Vec<Vec<String>> = Vec::new();
    for line in text.lines().filter(|l| *l != "# EOF") {
        match families.last_mut() {
            Some(family) if !(line.starts_with("# HELP") && family.iter().any(|l| !l.starts_with('#'))) => {
                family.push(line.to_string())
            }
            _ => families.push(vec![line.to_string()]),
        }
    }
    for family in &mut families {
        family.sort();
    }
    families.sort();
    families
}

/// Renders both plain bodies.
fn render_plain(data: &NodeReading, naming: impl Into<Naming>) -> (Vec<u8>, Vec<u8>) {
    let exposition = render(data, naming.into());
    (exposition.text.to_vec(), exposition.openmetrics.to_vec())
}

#[test]
fn openmetrics_output_matches_prometheus_client() {
    let data = sample_data();
    let (_, openmetrics) = render_plain(&data, MetricNames::Native);
    let ours = String::from_utf8(openmetrics).unwrap();
    assert_eq!(normalize(&ours), normalize(&reference_openmetrics(&data)));
}

#[test]
fn text_output_matches_the_golden_file() {
    let (text, _) = render_plain(&sample_data(), MetricNames::Native);
    check_golden("exposition.txt", &text);
}

fn check_golden(name: &str, text: &[u8]) {
    let golden = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, text).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(String::from_utf8_lossy(text), expected, "{name}");
}

#[test]
fn dcgm_names_match_the_golden_file() {
    let (text, _) = render_plain(&sample_data(), MetricNames::Dcgm);
    check_golden("exposition-dcgm.txt", &text);
}

#[test]
fn dcgm_names_use_dcgm_exporter_units_and_labels() {
    let (text, _) = render_plain(&sample_data(), MetricNames::Dcgm);
    let text = String::from_utf8(text).unwrap();
    let gpu0 = r#"gpu="0",UUID="GPU-aaaa",pci_bus_id="00000000:01:00.0",device="nvidia0",modelName="NVIDIA GeForce RTX 4090",hostname="mainpc",DCGM_FI_DRIVER_VERSION="550.54.14""#;
    let pod = r#"namespace="ai-system-gpu",pod="reasoning-suite-7d9f-x2k9p",container="main""#;
    // 8 GiB used of 24: MiB, as dcgm-exporter reports framebuffer memory.
    assert!(text.contains(&format!("DCGM_FI_DEV_FB_USED{{{gpu0},{pod}}} 8192\n")), "{text}");
    assert!(text.contains(&format!("DCGM_FI_DEV_FB_FREE{{{gpu0},{pod}}} 16384\n")), "{text}");
    assert!(text.contains(&format!("DCGM_FI_DEV_SM_CLOCK{{{gpu0},{pod}}} 2520\n")), "{text}");
    assert!(text.contains(&format!("DCGM_FI_DEV_POWER_USAGE{{{gpu0},{pod}}} 312.5\n")), "{text}");
    // NVML reports whole percents; dcgm-exporter writes them as integers.
    assert!(text.contains(&format!("DCGM_FI_DEV_GPU_UTIL{{{gpu0},{pod}}} 43\n")), "{text}");
    // A GPU shared by two pods: a series per pod, each with the device's value.
    assert_eq!(text.lines().filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{") && l.contains("GPU-bbbb")).count(), 2);
    // The lost GPU has no series; no native name is written.
    assert!(!text.contains("GPU-cccc"), "{text}");
    assert!(!text.contains("nvidia_gpu_"), "{text}");
    assert!(text.contains("kube_gpu_metrics_samples_total"), "the agent's own metrics stay");
}

#[test]
fn both_names_write_native_and_dcgm_families_once_each() {
    let lines = |names| {
        let (text, _) = render_plain(&sample_data(), names);
        String::from_utf8(text).unwrap().lines().map(str::to_string).collect::<std::collections::BTreeSet<_>>()
    };
    let (native, dcgm, both) = (lines(MetricNames::Native), lines(MetricNames::Dcgm), lines(MetricNames::Both));
    let union: std::collections::BTreeSet<_> = native.union(&dcgm).cloned().collect();
    assert_eq!(both, union);
    let (text, _) = render_plain(&sample_data(), MetricNames::Both);
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.matches("# TYPE kube_gpu_metrics_samples_total counter").count(), 1);
}

#[test]
fn unsupported_fields_and_lost_gpus_have_no_value_series() {
    let (text, _) = render_plain(&sample_data(), MetricNames::Native);
    let text = String::from_utf8(text).unwrap();
    let power: Vec<&str> = text.lines().filter(|l| l.starts_with("nvidia_gpu_power_watts{")).collect();
    assert_eq!(power.len(), 1, "{power:?}");
    assert!(power[0].contains("GPU-aaaa"));
    assert!(
        text.contains(
            "nvidia_gpu_up{node=\"mainpc\",gpu=\"2\",uuid=\"GPU-cccc\",model=\"NVIDIA GeForce RTX 4090\"} 0\n"
        )
    );
    for line in text.lines().filter(|l| !l.starts_with('#') && l.contains("GPU-cccc")) {
        assert!(line.starts_with("nvidia_gpu_up{") || line.starts_with("nvidia_gpu_info{"), "lost GPU has {line}");
    }
}

#[test]
fn exclusive_gpus_carry_pod_labels_and_shared_ones_do_not() {
    let (text, _) = render_plain(&sample_data(), MetricNames::Native);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(
        "nvidia_gpu_utilization_percent{node=\"mainpc\",gpu=\"0\",uuid=\"GPU-aaaa\",model=\"NVIDIA GeForce RTX 4090\",namespace=\"ai-system-gpu\",pod=\"reasoning-suite-7d9f-x2k9p\",container=\"main\"} 42.5\n"
    ));
    assert!(text.contains(
        "nvidia_gpu_utilization_percent{node=\"mainpc\",gpu=\"1\",uuid=\"GPU-bbbb\",model=\"NVIDIA GeForce RTX 3060\"} 55.0\n"
    ));
    assert!(text.contains("pod=\"tutoring \\\"quoted\\\"\\\\pod\",container=\"main\",reason=\"pod-uid-unknown\"} 1\n"));
}

/// An A100 in MIG mode with two MIG devices, one held by a pod.
fn mig_data() -> NodeReading {
    let mut reading = geforce_reading(0.0);
    reading.utilization_percent = None;
    reading.mig_devices = vec![
        MigDevice {
            uuid: "MIG-1111".into(),
            gpu_instance_id: 1,
            compute_instance_id: 0,
            profile: "3g.40gb".into(),
            memory_used_bytes: Some(5 << 30),
            memory_total_bytes: Some(40 << 30),
            utilization_percent: None,
        },
        MigDevice {
            uuid: "MIG-2222".into(),
            gpu_instance_id: 2,
            compute_instance_id: 0,
            profile: "1g.10gb".into(),
            memory_used_bytes: Some(0),
            memory_total_bytes: Some(10 << 30),
            utilization_percent: None,
        },
    ];
    NodeReading {
        gpus: vec![gpu(0, "GPU-a100", "NVIDIA A100-SXM4-80GB", true, reading)],
        usages: vec![PodGpuUsage {
            mig: Some(0),
            memory_used_bytes: Some(5 << 30),
            ..usage("llm-0", 0, Sharing::Exclusive, Err(Unresolved::MigUtilizationUnmeasured))
        }],
        accounts: vec![PodAccount { last_active: SystemTime::UNIX_EPOCH, energy_joules: 0.0 }],
        ..sample_data()
    }
}

#[test]
fn mig_devices_have_their_own_series_and_their_pods_carry_their_labels() {
    let (text, _) = render_plain(&mig_data(), MetricNames::Both);
    let text = String::from_utf8(text).unwrap();
    let gpu = "node=\"mainpc\",gpu=\"0\",uuid=\"GPU-a100\",model=\"NVIDIA A100-SXM4-80GB\"";
    let held = "mig_uuid=\"MIG-1111\",gpu_instance_id=\"1\",compute_instance_id=\"0\",mig_profile=\"3g.40gb\"";
    let pod = "namespace=\"ai-system-gpu\",pod=\"llm-0\",container=\"main\"";
    for line in [
        format!("nvidia_gpu_mig_memory_used_bytes{{{gpu},{held},{pod}}} 5368709120\n"),
        format!(
            "nvidia_gpu_mig_memory_total_bytes{{{gpu},mig_uuid=\"MIG-2222\",gpu_instance_id=\"2\",compute_instance_id=\"0\",mig_profile=\"1g.10gb\"}} 10737418240\n"
        ),
        format!("nvidia_gpu_pod_memory_used_bytes{{{gpu},{held},{pod},sharing=\"exclusive\"}} 5368709120\n"),
        format!(
            "kube_gpu_metrics_pod_attribution_unresolved{{{gpu},{held},{pod},reason=\"mig-utilization-unmeasured\"}} 1\n"
        ),
    ] {
        assert!(text.contains(&line), "missing {line}");
    }
    // The parent GPU's series carry no pod: the pod holds a MIG device, not it.
    assert!(text.contains(&format!("nvidia_gpu_memory_used_bytes{{{gpu}}} ")), "{text}");
    // No utilization is made up for a MIG device or its pod.
    assert!(!text.contains("nvidia_gpu_pod_utilization_percent{"), "{text}");
    assert!(!text.contains("nvidia_gpu_mig_utilization_percent{"), "{text}");
    // dcgm-exporter's names: framebuffer series per MIG device with GPU_I_ID and GPU_I_PROFILE.
    assert!(text.contains("GPU_I_ID=\"1\",GPU_I_PROFILE=\"3g.40gb\",namespace=\"ai-system-gpu\",pod=\"llm-0\",container=\"main\"} 5120\n"), "{text}");
    assert!(text.contains("GPU_I_ID=\"2\",GPU_I_PROFILE=\"1g.10gb\"} 10240\n"), "{text}");
}

#[test]
fn counters_are_named_per_format() {
    let (text, openmetrics) = render_plain(&sample_data(), MetricNames::Native);
    let (text, openmetrics) = (String::from_utf8(text).unwrap(), String::from_utf8(openmetrics).unwrap());
    assert!(text.contains(
        "# TYPE kube_gpu_metrics_samples_total counter\nkube_gpu_metrics_samples_total{node=\"mainpc\"} 7\n"
    ));
    assert!(
        openmetrics
            .contains("# TYPE kube_gpu_metrics_samples counter\nkube_gpu_metrics_samples_total{node=\"mainpc\"} 7\n")
    );
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(!text.contains("# EOF"));
}

#[test]
fn a_body_is_gzipped_when_a_scrape_first_asks_for_it_and_then_kept() {
    use std::io::Read;
    let exposition = render(&sample_data(), MetricNames::Native.into());
    let plain = |openmetrics| Representation { openmetrics, gzip: false };
    let zipped = |openmetrics| Representation { openmetrics, gzip: true };
    assert_eq!(exposition.body(plain(false)), exposition.text);
    assert_eq!(exposition.body(plain(true)), exposition.openmetrics);
    assert!(
        exposition.text_gzip.get().is_none() && exposition.openmetrics_gzip.get().is_none(),
        "nothing asked for gzip"
    );
    for openmetrics in [false, true] {
        let body = exposition.body(zipped(openmetrics));
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, exposition.body(plain(openmetrics)));
        let again = exposition.body(zipped(openmetrics));
        assert_eq!(again.as_ptr(), body.as_ptr(), "the second scrape gets the same compressed bytes");
    }
}

#[test]
fn a_renderer_reusing_its_buffers_writes_what_a_fresh_one_writes() {
    let full = sample_data();
    let mut smaller = sample_data();
    smaller.usages.truncate(1);
    smaller.accounts.truncate(1);
    smaller.gpus.truncate(1);
    let mut renderer = Renderer::default();
    // Large, then small, then large again, each sample's bodies going back
    // once the next is out (as the sampler does): nothing of an earlier
    // sample may show through.
    let mut previous = None;
    for (data, names) in [
        (&full, MetricNames::Both),
        (&smaller, MetricNames::Native),
        (&full, MetricNames::Native),
        (&full, MetricNames::Native),
        (&smaller, MetricNames::Dcgm),
    ] {
        let exposition = renderer.render(data, names.into());
        let (text, openmetrics) = render_plain(data, names);
        assert_eq!(&exposition.text[..], &text[..]);
        assert_eq!(&exposition.openmetrics[..], &openmetrics[..]);
        if let Some(previous) = previous.replace(exposition) {
            renderer.recycle(previous);
        }
    }
    assert!(renderer.spare.iter().all(|b| b.capacity() > 0), "both bodies' buffers went back");
}

#[test]
fn a_body_a_reader_still_holds_is_not_recycled() {
    let data = sample_data();
    let mut renderer = Renderer::default();
    let exposition = renderer.render(&data, Naming::default());
    let held = exposition.text.clone();
    renderer.recycle(exposition);
    assert_eq!(renderer.spare[0].capacity(), 0, "the text body is held");
    assert!(renderer.spare[1].capacity() > 0, "the OpenMetrics one came back");
    let next = renderer.render(&data, Naming::default());
    assert_eq!(held, next.text, "the held body is unchanged");
}

fn negotiate(accept: Option<&str>, encoding: Option<&str>) -> Representation {
    let a = accept.map(|s| HeaderValue::from_str(s).unwrap());
    let e = encoding.map(|s| HeaderValue::from_str(s).unwrap());
    Representation::negotiate(a.as_ref(), e.as_ref())
}

#[test]
fn negotiation_follows_accept_and_q_values() {
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(negotiate(Some(prometheus), Some("gzip")), Representation { openmetrics: true, gzip: true });
    assert_eq!(negotiate(None, None), Representation { openmetrics: false, gzip: false });
    assert_eq!(negotiate(Some("*/*"), Some("deflate, br")), Representation { openmetrics: false, gzip: false });
    assert!(!negotiate(Some("text/plain;version=0.0.4"), None).openmetrics);
    assert!(!negotiate(Some("application/openmetrics-text;q=0.2, text/plain"), None).openmetrics);
    assert!(!negotiate(Some("application/openmetrics-text;q=0"), None).openmetrics);
    assert!(!negotiate(None, Some("gzip;q=0")).gzip);
    assert!(negotiate(None, Some("identity;q=0.5, GZIP")).gzip);
}

#[test]
fn a_mig_device_gpm_measures_has_its_utilization_and_so_does_its_pod() {
    // An H100: GPM measures each GPU instance.
    let mut data = mig_data();
    data.gpus[0].reading.mig_devices[0].utilization_percent = Some(62.5);
    data.gpus[0].reading.mig_devices[1].utilization_percent = Some(0.0);
    data.usages[0].utilization_percent = Ok(62.5);
    let (text, _) = render_plain(&data, MetricNames::Native);
    let text = String::from_utf8(text).unwrap();
    let gpu = "node=\"mainpc\",gpu=\"0\",uuid=\"GPU-a100\",model=\"NVIDIA A100-SXM4-80GB\"";
    let held = "mig_uuid=\"MIG-1111\",gpu_instance_id=\"1\",compute_instance_id=\"0\",mig_profile=\"3g.40gb\"";
    let pod = "namespace=\"ai-system-gpu\",pod=\"llm-0\",container=\"main\"";
    for line in [
        format!("nvidia_gpu_mig_utilization_percent{{{gpu},{held},{pod}}} 62.5\n"),
        format!(
            "nvidia_gpu_mig_utilization_percent{{{gpu},mig_uuid=\"MIG-2222\",gpu_instance_id=\"2\",compute_instance_id=\"0\",mig_profile=\"1g.10gb\"}} 0.0\n"
        ),
        format!("nvidia_gpu_pod_utilization_percent{{{gpu},{held},{pod},sharing=\"exclusive\"}} 62.5\n"),
    ] {
        assert!(text.contains(&line), "missing {line}");
    }
    assert!(!text.contains("kube_gpu_metrics_pod_attribution_unresolved{"), "{text}");
    // The parent GPU still has no device-wide utilization.
    assert!(!text.contains(&format!("nvidia_gpu_utilization_percent{{{gpu}}}")), "{text}");
}

#[test]
fn the_node_label_of_dcgm_families_can_keep_its_old_capital() {
    let naming = Naming { names: MetricNames::Dcgm, dcgm_hostname_label: HostnameLabel::Capitalized };
    let (text, _) = render_plain(&sample_data(), naming);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(",Hostname=\"mainpc\","), "{text}");
    assert!(!text.contains("hostname="), "{text}");
}

#[test]
fn every_field_row_is_named_once_and_a_shared_family_is_one_run_of_rows() {
    let mut native = std::collections::BTreeSet::new();
    let mut dcgm = std::collections::BTreeSet::new();
    // The fields dcgm-exporter has no family for, and the ones only it has
    // (a value NVML gives that the native names split or leave out).
    let native_only = ["nvidia_gpu_memory_total_bytes", "nvidia_gpu_remapped_rows_pending"];
    let dcgm_only = ["DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_XID_ERRORS"];
    let mut families_seen = Vec::new();
    for row in FIELDS {
        match (row.native, row.dcgm) {
            (Some(n), Some(d)) => {
                assert!(!native_only.contains(&n.name), "{} has a dcgm name now: drop it from the list", n.name);
                assert!(!dcgm_only.contains(&d.name), "{} has a native name now: drop it from the list", d.name);
            }
            (Some(n), None) => assert!(native_only.contains(&n.name), "{} has no dcgm-exporter name", n.name),
            (None, Some(d)) => assert!(dcgm_only.contains(&d.name), "{} has no native name", d.name),
            (None, None) => panic!("a row without a name"),
        }
        if let Some(n) = row.native {
            assert!(n.name.starts_with("nvidia_gpu_") && !n.help.is_empty() && !n.help.ends_with('.'), "{}", n.name);
            assert!(native.insert((n.name, n.labels)), "two rows write {} {{{}}}", n.name, n.labels);
            if families_seen.last() != Some(&n.name) {
                assert!(!families_seen.contains(&n.name), "the rows of {} are not one run", n.name);
                families_seen.push(n.name);
            }
        }
        if let Some(d) = row.dcgm {
            assert!(d.name.starts_with("DCGM_FI_DEV_") && !d.help.is_empty(), "{}", d.name);
            assert_ne!(d.kind, Kind::Counter, "{}: dcgm-exporter's counters have no _total", d.name);
            assert!(dcgm.insert(d.name), "two rows write {}", d.name);
        }
    }
    // The rows of one native family agree on its help and type.
    for name in families_seen {
        let rows: Vec<_> = FIELDS.iter().filter_map(|r| r.native).filter(|n| n.name == name).collect();
        assert!(rows.iter().all(|n| n.help == rows[0].help && n.kind == rows[0].kind), "{name}");
    }
}

use crate::family_writer::Kind;

#[test]
fn a_fields_cadence_says_which_read_fills_it() {
    // A reading whose every field is there; the health read's fields only in
    // `health`.
    let full = full_reading(50.0);
    let without_health = GpuReading { health: HealthReading::default(), ..full.clone() };
    let only_health = GpuReading { health: full.health, xid: None, ..GpuReading::default() };
    for row in FIELDS {
        let name = row.native.map(|n| n.name).or(row.dcgm.map(|d| d.name)).unwrap();
        assert!((row.read)(&full).is_some(), "{name}: the full reading has it");
        let health = row.cadence == Cadence::Health;
        assert_eq!((row.read)(&without_health).is_none(), health, "{name}: read every --health-interval?");
        assert_eq!((row.read)(&only_health).is_some(), health, "{name}: read every --health-interval?");
    }
}

#[test]
fn both_formats_write_the_families_in_the_same_order() {
    let (text, openmetrics) = render_plain(&mig_data(), MetricNames::Both);
    let helps = |body: &[u8]| -> Vec<String> {
        String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .map(|l| l.split(' ').next().unwrap().trim_end_matches("_total").to_string())
            .collect()
    };
    assert_eq!(helps(&text), helps(&openmetrics));
}

/// An independent reference for the property test: a family parsed from our
/// text body, written back by `prometheus-client`.
#[derive(Debug)]
struct ReferenceFamily {
    kind: prometheus_client::metrics::MetricType,
    series: Vec<(Vec<(String, String)>, String)>,
}

impl prometheus_client::encoding::EncodeMetric for ReferenceFamily {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::NoLabelSet;
        use prometheus_client::metrics::MetricType;
        for (labels, value) in &self.series {
            let mut series = encoder.encode_family(labels)?;
            match (self.kind, value.parse::<u64>()) {
                (MetricType::Counter, Ok(n)) => series.encode_counter::<NoLabelSet, _, u64>(&n, None)?,
                (MetricType::Counter, Err(_)) => {
                    series.encode_counter::<NoLabelSet, _, u64>(&value.parse::<f64>().unwrap(), None)?
                }
                (_, Ok(n)) => series.encode_gauge(&n)?,
                (_, Err(_)) => series.encode_gauge(&value.parse::<f64>().unwrap())?,
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        self.kind
    }
}

/// Parses a text body into families: name (as OpenMetrics names it), help,
/// and series, checking the text format's own conventions on the way.
fn parse_text(text: &str) -> Vec<(String, String, ReferenceFamily)> {
    use prometheus_client::metrics::MetricType;
    let mut families: Vec<(String, String, ReferenceFamily)> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let (name, help) =
            line.strip_prefix("# HELP ").and_then(|l| l.split_once(' ')).expect("a family opens with HELP");
        let type_line = lines.next().expect("TYPE follows HELP");
        let (type_name, kind) = type_line.strip_prefix("# TYPE ").and_then(|l| l.split_once(' ')).unwrap();
        assert_eq!(type_name, name, "{type_line}");
        let mut series = Vec::new();
        while let Some(sample) = lines.next_if(|l| !l.starts_with('#')) {
            let (head, value) = sample.rsplit_once(' ').unwrap();
            let (sample_name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}').unwrap())),
                None => (head, Vec::new()),
            };
            assert_eq!(sample_name, name, "a sample of another family: {sample}");
            series.push((labels, value.to_string()));
        }
        assert!(!series.is_empty(), "{name} has a header and no series");
        let (om_name, kind) = match (kind, name.strip_suffix("_total")) {
            ("counter", Some(stem)) => (stem, MetricType::Counter),
            ("counter", None) => (name, MetricType::Unknown),
            ("gauge", _) => (name, MetricType::Gauge),
            (other, _) => panic!("{name}: type {other}"),
        };
        let help = help.strip_suffix('.').expect("help ends with a full stop").to_string();
        families.push((om_name.to_string(), help, ReferenceFamily { kind, series }));
    }
    families
}

fn parse_labels(mut rest: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().unwrap() {
                (_, '\\') => value.push(match chars.next().unwrap().1 {
                    'n' => '\n',
                    c => c,
                }),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
    }
    labels
}

/// A sample of `gpus` GPUs and `pods` usages, each field present or not and
/// valued by `seed`.
fn random_sample(seed: u64, gpus: usize, pods: usize) -> NodeReading {
    let mut bits = seed;
    let mut next = move || {
        bits ^= bits << 13;
        bits ^= bits >> 7;
        bits ^= bits << 17;
        bits
    };
    let mut data = sample_data();
    data.gpus = (0..gpus)
        .map(|i| {
            let mut reading = full_reading((next() % 10_001) as f64 / 100.0);
            reading.power_watts = Some((next() % 500_000) as f64 / 1000.0);
            reading.energy_joules = Some(next() as f64 / 1e6);
            reading.pcie_replays = Some(next());
            if next() % 3 == 0 {
                reading.mig_devices = mig_data().gpus[0].reading.mig_devices.clone();
            }
            // Drop some fields, as a board that lacks them does.
            let keep = next();
            let fields: [&mut dyn FnMut(); 4] = [
                &mut || reading.health.ecc = None,
                &mut || reading.memory_temperature_celsius = None,
                &mut || reading.xid = None,
                &mut || reading.clock_events = None,
            ];
            for (k, clear) in fields.into_iter().enumerate() {
                if keep >> k & 1 == 0 {
                    clear();
                }
            }
            let up = next() % 5 != 0;
            gpu(
                i as u32,
                &format!("GPU-{i}"),
                "NVIDIA GeForce RTX 4090",
                up,
                if up { reading } else { GpuReading::default() },
            )
        })
        .collect();
    data.usages = (0..pods)
        .filter(|_| gpus > 0)
        .map(|k| {
            let gpu = (next() as usize) % gpus;
            let sharing = if next() % 2 == 0 { Sharing::Exclusive } else { Sharing::Shared };
            let util = if next() % 4 == 0 { Err(Unresolved::PodUidUnknown) } else { Ok((next() % 1000) as f64 / 10.0) };
            let mut u = usage(&format!("pod-{k}"), gpu, sharing, util);
            let migs = data.gpus[gpu].reading.mig_devices.len();
            if migs > 0 && next() % 2 == 0 {
                u.mig = Some((next() as usize) % migs);
            }
            u
        })
        .collect();
    data.accounts = data
        .usages
        .iter()
        .map(|_| PodAccount { last_active: SystemTime::UNIX_EPOCH, energy_joules: (next() % 100_000) as f64 / 8.0 })
        .collect();
    data
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn the_openmetrics_body_is_what_prometheus_client_writes_for_the_text_bodys_families(
        seed in 1u64..,
        gpus in 0usize..5,
        pods in 0usize..8,
        names in proptest::prop_oneof![
            proptest::strategy::Just(MetricNames::Native),
            proptest::strategy::Just(MetricNames::Dcgm),
            proptest::strategy::Just(MetricNames::Both),
        ],
    ) {
        let data = random_sample(seed, gpus, pods);
        let (text, openmetrics) = render_plain(&data, names);
        let mut registry = Registry::default();
        for (name, help, family) in parse_text(std::str::from_utf8(&text).unwrap()) {
            registry.register(name, help, family);
        }
        let mut reference = String::new();
        encode(&mut reference, &registry).unwrap();
        proptest::prop_assert_eq!(std::str::from_utf8(&openmetrics).unwrap(), reference);
    }
}
