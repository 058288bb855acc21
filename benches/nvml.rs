//! One GPU's read over NVML: every field, then every field with 16
//! processes in its running-process lists and utilization samples (a
//! time-sliced GPU), beside the baseline of one NVML call
//! (`nvmlDeviceGetUtilizationRates`) on the same library in the same run.
//!
//! By default it reads the fake NVML (`hack/fake-nvml`, built by build.rs)
//! with an RTX 4090's every field. On a GPU host,
//! `KGM_BENCH_NVML_LIB=libnvidia-ml.so.1 cargo bench --bench nvml` reads the
//! real GPU 0 instead (its own processes, whatever runs there).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use nvml_wrapper::Nvml;

use kube_gpu_metrics::gpu::nvml::NvmlOpener;
use kube_gpu_metrics::gpu::{GpuSourceOpener, ReadRequest};

/// An RTX 4090 with every field the fake knows, and 16 processes (eight
/// compute, eight graphics) on it.
fn fake_config() -> String {
    let mut config = String::from(
        "driver 550.54.14\ncuda 12040\n\
         gpu name=\"NVIDIA GeForce RTX 4090\" uuid=GPU-bench-0000 util=42 mem_util=30 mem_total=25757220864 \
         mem_used=8589934592 temp=61 power_mw=312000 sm_clock_mhz=2520 mem_clock_mhz=10501 mem_reserved=352321536 \
         energy_mj=123456789 pcie_replay=0 pcie_tx_kbs=2048 pcie_rx_kbs=4096 enc_util=0 dec_util=0 fan=30 pstate=2 \
         clock_events=0 viol_power_ns=0 viol_thermal_ns=0 power_limit_mw=450000 pci_bus_id=00000000:01:00.0 \
         mem_temp=70 ecc=1 remap=1 retired=1\n",
    );
    for i in 0..16 {
        let kind = if i % 2 == 0 { "compute" } else { "graphics" };
        config.push_str(&format!("process 0 pid={} sm=2 mem=1 used_mib={} kind={kind}\n", 1000 + i, 100 + i));
    }
    config
}

/// The library to read, and the temporary directory holding the fake's
/// config while the benches run.
fn library() -> (PathBuf, Option<tempfile::TempDir>) {
    if let Some(real) = std::env::var_os("KGM_BENCH_NVML_LIB") {
        return (real.into(), None);
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("nvml.conf");
    std::fs::write(&config, fake_config()).expect("the fake's config");
    // SAFETY (std: `set_var` is unsafe with other threads): set before any
    // thread starts; the fake reads it when NVML initialises.
    unsafe { std::env::set_var("FAKE_NVML_CONFIG", &config) };
    (env!("FAKE_NVML_LIB").into(), Some(dir))
}

fn gpu_read(c: &mut Criterion) {
    let (library, _config) = library();
    let source = NvmlOpener::new(Some(library.clone())).open().expect("NVML opens");
    let nvml = Nvml::builder().lib_path(library.as_os_str()).init().expect("NVML opens");
    let device = nvml.device_by_index(0).expect("GPU 0");
    // The first read learns the GPU's identity; the benches read as the
    // agent does from then on.
    let _ = source.read(0, ReadRequest::default());

    let mut group = c.benchmark_group("gpu read");
    group.bench_function("one NVML call (baseline)", |b| b.iter(|| black_box(device.utilization_rates())));
    let every_field = ReadRequest { health: true, ..ReadRequest::default() };
    group.bench_function("every field", |b| b.iter(|| black_box(source.read(0, every_field))));
    let shared = ReadRequest { health: true, processes: true, processes_since_us: 0, running: true };
    group.bench_function("every field, 16 processes (time-sliced)", |b| b.iter(|| black_box(source.read(0, shared))));
    group.finish();
}

criterion_group!(benches, gpu_read);
criterion_main!(benches);
