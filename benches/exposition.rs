//! The agent's hot paths: rendering a sample (once per interval) and
//! answering a scrape (per request), with heap allocations counted.
//!
//! `cargo bench --bench exposition` prints allocation counts before the
//! criterion timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;

use kube_gpu_metrics::agent::exposition::{Exposition, MetricNames, Naming, Renderer, Representation};
use kube_gpu_metrics::agent::sample::PodAccount;
use kube_gpu_metrics::agent::sample::{GpuState, NodeReading, Readiness};
use kube_gpu_metrics::agent::self_metrics::AgentMetrics;
use kube_gpu_metrics::agent::server::handle;
use kube_gpu_metrics::agent::snapshot::AgentState;
use kube_gpu_metrics::agent::snapshot::Snapshot;
use kube_gpu_metrics::attribution::{PodGpuUsage, Sharing};
use kube_gpu_metrics::gpu::{
    ClockEventReason, EccCounts, GpuIdentity, GpuReading, HealthReading, RemappedRows, RetiredPages, Violations,
    XidErrors,
};

use std::sync::atomic::AtomicU64 as AtomicF64Bits;

/// Counts every allocation made through the global allocator.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made by `f`, per call, over `n` calls.
fn allocations_per_call<T>(n: u64, mut f: impl FnMut() -> T) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        black_box(f());
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

/// `gpus` GPUs, each time-sliced between `pods_per_gpu` pods.
fn sample(gpus: u32, pods_per_gpu: u32) -> NodeReading {
    let gpu_states = (0..gpus)
        .map(|i| GpuState {
            identity: GpuIdentity {
                index: i,
                uuid: format!("GPU-{i:08x}-5421-4778-a1f0-17d8097ff3b1"),
                model: "NVIDIA GeForce RTX 4090".into(),
                pci_bus_id: format!("00000000:{:02X}:00.0", i + 1),
            },
            up: true,
            // Every field, as a data center board reports them.
            reading: GpuReading {
                utilization_percent: Some(40.0 + f64::from(i)),
                memory_utilization_percent: Some(21.0),
                memory_used_bytes: Some(14_587_789_312),
                memory_total_bytes: Some(25_769_803_776),
                temperature_celsius: Some(63.0),
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
                clock_events: Some(ClockEventReason::SwPowerCap.bit()),
                violations: Violations([Some(1.5), Some(0.25), Some(0.0), Some(0.0), Some(0.0), Some(0.0)]),
                health: HealthReading {
                    power_limit_watts: Some(450.0),
                    ecc: Some(EccCounts {
                        corrected_volatile: Some(2),
                        uncorrected_volatile: Some(0),
                        corrected_aggregate: Some(12),
                        uncorrected_aggregate: Some(1),
                    }),
                    remapped_rows: Some(RemappedRows {
                        correctable: 1,
                        uncorrectable: 0,
                        pending: false,
                        failure: false,
                    }),
                    retired_pages: Some(RetiredPages { single_bit: 4, double_bit: 1, pending: Some(false) }),
                },
                xid: Some(XidErrors { counts: [(79, 1)].into_iter().collect(), last: Some(79) }),
                mig_devices: Vec::new(),
            },
        })
        .collect();
    let usages = (0..gpus)
        .flat_map(|g| {
            (0..pods_per_gpu).map(move |p| PodGpuUsage {
                namespace: "ai-system-gpu".into(),
                pod: format!("reasoning-suite-7d9f8b6c4-{g}x{p:03}"),
                container: "reasoning-suite".into(),
                gpu: g as usize,
                mig: None,
                sharing: if pods_per_gpu > 1 { Sharing::Shared } else { Sharing::Exclusive },
                utilization_percent: Ok(f64::from(p % 7) * 3.5),
                memory_utilization_percent: Some(4.0),
                memory_used_bytes: Some(u64::from(p + 1) << 30),
            })
        })
        .collect::<Vec<_>>();
    let accounts =
        usages.iter().map(|_| PodAccount { last_active: SystemTime::now(), energy_joules: 123_456.789 }).collect();
    NodeReading {
        node: "mainpc".into(),
        taken_at: SystemTime::now(),
        interval: Duration::from_secs(1),
        gpus: gpu_states,
        usages,
        accounts,
        readiness: Readiness::Ready,
        gpu_source_up: true,
        driver_version: Some("550.54.14".into()),
        cuda_version: Some("12.4".into()),
        pod_resources_up: Some(true),
        sample_duration: Duration::from_micros(900),
        counters: Default::default(),
    }
}

fn state_for(data: NodeReading) -> AgentState {
    AgentState {
        snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::new(
            data,
            MetricNames::Native.into(),
            &mut Renderer::default(),
        ))),
        metrics: Arc::new(AgentMetrics::default()),
        feed_token: None,
    }
}

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn scrape_request() -> Request<()> {
    Request::get("/metrics")
        .header(header::ACCEPT, PROMETHEUS_ACCEPT)
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(())
        .unwrap()
}

/// The least a server can do per scrape: hand out a static body with a
/// content type. The baseline the scrape path is measured against.
fn static_response(body: &Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.clone()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}

/// The same GPU and pod series in a prometheus-client registry: the encoder a
/// hand-written exporter would use, as the render baseline.
fn prometheus_client_registry(data: &NodeReading) -> prometheus_client::registry::Registry {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    type Labels = Vec<(String, String)>;
    let mut registry = prometheus_client::registry::Registry::default();
    let gpu_labels = |g: &GpuState| -> Labels {
        vec![
            ("node".into(), data.node.clone()),
            ("gpu".into(), g.identity.index.to_string()),
            ("uuid".into(), g.identity.uuid.clone()),
            ("model".into(), g.identity.model.clone()),
        ]
    };
    type Field = fn(&GpuReading) -> Option<f64>;
    let fields: [(&str, Field); 21] = [
        ("nvidia_gpu_utilization_percent", |r| r.utilization_percent),
        ("nvidia_gpu_memory_utilization_percent", |r| r.memory_utilization_percent),
        ("nvidia_gpu_memory_used_bytes", |r| r.memory_used_bytes.map(|v| v as f64)),
        ("nvidia_gpu_memory_total_bytes", |r| r.memory_total_bytes.map(|v| v as f64)),
        ("nvidia_gpu_temperature_celsius", |r| r.temperature_celsius),
        ("nvidia_gpu_power_watts", |r| r.power_watts),
        ("nvidia_gpu_sm_clock_hertz", |r| r.sm_clock_hertz),
        ("nvidia_gpu_memory_clock_hertz", |r| r.memory_clock_hertz),
        ("nvidia_gpu_memory_temperature_celsius", |r| r.memory_temperature_celsius),
        ("nvidia_gpu_pcie_transmit_bytes_per_second", |r| r.pcie_transmit_bytes_per_second),
        ("nvidia_gpu_pcie_receive_bytes_per_second", |r| r.pcie_receive_bytes_per_second),
        ("nvidia_gpu_encoder_utilization_percent", |r| r.encoder_utilization_percent),
        ("nvidia_gpu_decoder_utilization_percent", |r| r.decoder_utilization_percent),
        ("nvidia_gpu_fan_speed_percent", |r| r.fan_speed_percent),
        ("nvidia_gpu_performance_state", |r| r.performance_state.map(f64::from)),
        ("nvidia_gpu_memory_reserved_bytes", |r| r.memory_reserved_bytes.map(|v| v as f64)),
        ("nvidia_gpu_power_limit_watts", |r| r.health.power_limit_watts),
        ("nvidia_gpu_energy_joules_total", |r| r.energy_joules),
        ("nvidia_gpu_pcie_replays_total", |r| r.pcie_replays.map(|v| v as f64)),
        ("nvidia_gpu_remapped_rows_pending", |r| r.health.remapped_rows.map(|x| f64::from(u8::from(x.pending)))),
        ("nvidia_gpu_retired_pages_pending", |r| r.health.retired_pages?.pending.map(|x| f64::from(u8::from(x)))),
    ];
    for (name, field) in fields {
        let family = Family::<Labels, Gauge<f64, AtomicF64Bits>>::default();
        for g in &data.gpus {
            if let Some(v) = field(&g.reading) {
                family.get_or_create(&gpu_labels(g)).set(v);
            }
        }
        registry.register(name, "help", family);
    }
    // The labelled families: one series per reason, policy or counter.
    let labelled: [(&str, &str, usize); 6] = [
        ("nvidia_gpu_clock_event_active", "reason", 9),
        ("nvidia_gpu_clock_event_violation_seconds_total", "reason", 6),
        ("nvidia_gpu_ecc_errors_total", "error", 4),
        ("nvidia_gpu_remapped_rows_total", "error", 2),
        ("nvidia_gpu_retired_pages", "cause", 2),
        ("nvidia_gpu_xid_errors_total", "xid", 1),
    ];
    for (name, key, n) in labelled {
        let family = Family::<Labels, Gauge<f64, AtomicF64Bits>>::default();
        for g in &data.gpus {
            for k in 0..n {
                let mut l = gpu_labels(g);
                l.push((key.into(), format!("value_{k}")));
                family.get_or_create(&l).set(1.0);
            }
        }
        registry.register(name, "help", family);
    }
    for name in ["nvidia_gpu_info", "nvidia_gpu_up"] {
        let family = Family::<Labels, Gauge>::default();
        for g in &data.gpus {
            family.get_or_create(&gpu_labels(g)).set(1);
        }
        registry.register(name, "help", family);
    }
    for name in ["nvidia_gpu_pod_utilization_percent", "nvidia_gpu_pod_memory_utilization_percent"] {
        let family = Family::<Labels, Gauge<f64, AtomicF64Bits>>::default();
        for u in &data.usages {
            let mut l = gpu_labels(&data.gpus[u.gpu]);
            l.extend([
                ("namespace".into(), u.namespace.clone()),
                ("pod".into(), u.pod.clone()),
                ("container".into(), u.container.clone()),
                ("sharing".into(), u.sharing.as_str().into()),
            ]);
            family.get_or_create(&l).set(u.utilization_percent.unwrap_or_default());
        }
        registry.register(name, "help", family);
    }
    registry
}

fn report_allocations() {
    let data = sample(8, 2);
    let state = state_for(data.clone());
    let req = scrape_request();
    let snapshot = state.snapshot.load_full();
    let static_body = snapshot.exposition.text().clone();
    let n = 10_000;
    let select = allocations_per_call(n, || {
        let h = req.headers();
        let repr = Representation::negotiate(h.get(header::ACCEPT), h.get(header::ACCEPT_ENCODING));
        state.snapshot.load().exposition.body(repr)
    });
    let handler = allocations_per_call(n, || handle(&state, &req));
    let baseline = allocations_per_call(n, || static_response(&static_body));
    let mut passes = Passes::new(passes(8, 2), MetricNames::Native);
    let render_allocs = allocations_per_call(100, || passes.render(&[]));
    println!("allocations per scrape, choosing and sharing the body: {select}");
    println!("allocations per scrape, whole handler incl. response headers: {handler}");
    println!("allocations per response, static-bytes baseline: {baseline}");
    println!("allocations per render (8 GPUs x 16 pods, both formats): {render_allocs}");
    println!("text body: {} bytes", snapshot.exposition.text().len());
}

/// Four passes of `sample(gpus, per_gpu)` moving as a GPU under load moves:
/// utilization, memory in use, temperatures, power, clocks, energy, PCIe
/// throughput, fan, the pods' shares, memory and energy, the timestamps, the
/// pass's duration and counters.
fn passes(gpus: u32, per_gpu: u32) -> Vec<NodeReading> {
    (0..4u32)
        .map(|pass| {
            let mut data = sample(gpus, per_gpu);
            let step = f64::from(pass);
            data.taken_at += Duration::from_millis(1000 * u64::from(pass));
            data.sample_duration += Duration::from_micros(17 * u64::from(pass));
            data.counters.samples += u64::from(pass);
            data.counters.scrapes_openmetrics += u64::from(pass);
            for g in &mut data.gpus {
                let r = &mut g.reading;
                let moved = |v: &mut Option<f64>, by: f64| *v = v.map(|v| v + by * step);
                moved(&mut r.utilization_percent, 1.0);
                moved(&mut r.memory_utilization_percent, 1.0);
                r.memory_used_bytes = r.memory_used_bytes.map(|m| m + (u64::from(pass) << 20));
                moved(&mut r.temperature_celsius, 1.0);
                moved(&mut r.memory_temperature_celsius, 1.0);
                moved(&mut r.power_watts, 2.25);
                moved(&mut r.sm_clock_hertz, 15e6);
                moved(&mut r.memory_clock_hertz, 1e6);
                moved(&mut r.energy_joules, 312.5);
                moved(&mut r.pcie_transmit_bytes_per_second, 4096.0);
                moved(&mut r.pcie_receive_bytes_per_second, 8192.0);
                moved(&mut r.fan_speed_percent, 1.0);
            }
            for (u, account) in data.usages.iter_mut().zip(&mut data.accounts) {
                u.utilization_percent = u.utilization_percent.map(|v| v + step);
                u.memory_utilization_percent = u.memory_utilization_percent.map(|v| v + step);
                u.memory_used_bytes = u.memory_used_bytes.map(|m| m + (u64::from(pass) << 20));
                account.energy_joules += 19.5 * step;
                account.last_active += Duration::from_millis(1000 * u64::from(pass));
            }
            data
        })
        .collect()
}

/// Renders sample after sample as the sampler does: each pass's bodies go
/// back to the renderer once the next pass is out (no scrape holds them
/// here).
struct Passes {
    samples: Vec<NodeReading>,
    next: usize,
    renderer: Renderer,
    previous: Option<Exposition>,
    naming: Naming,
}

impl Passes {
    fn new(samples: Vec<NodeReading>, names: MetricNames) -> Self {
        Self { samples, next: 0, renderer: Renderer::default(), previous: None, naming: names.into() }
    }

    /// Renders the next pass, and gzips the bodies `gzipped` says (as the
    /// first scrape asking for them does); returns the bytes written.
    fn render(&mut self, gzipped: &[Representation]) -> usize {
        let data = &self.samples[self.next % self.samples.len()];
        self.next += 1;
        let exposition = self.renderer.render(black_box(data), self.naming);
        let len = exposition.text().len() + gzipped.iter().map(|&r| exposition.body(r).len()).sum::<usize>();
        if let Some(previous) = self.previous.replace(exposition) {
            self.renderer.recycle(previous);
        }
        len
    }
}

/// OpenMetrics, gzipped: what Prometheus asks for.
const PROMETHEUS: Representation = Representation { openmetrics: true, gzip: true };

fn benches(c: &mut Criterion) {
    report_allocations();

    let mut render_group = c.benchmark_group("render");
    for (gpus, per_gpu, name) in [(8, 2, "8 GPUs x 16 pods"), (8, 16, "8 GPUs x 128 pods")] {
        let mut load = Passes::new(passes(gpus, per_gpu), MetricNames::Native);
        render_group.bench_function(format!("{name}, text + OpenMetrics"), |b| b.iter(|| load.render(&[])));
        render_group.bench_function(format!("{name}, text + OpenMetrics, then gzip OpenMetrics once"), |b| {
            b.iter(|| load.render(&[PROMETHEUS]))
        });
    }
    for (names, label) in [(MetricNames::Dcgm, "dcgm"), (MetricNames::Both, "native + dcgm")] {
        let mut passes = Passes::new(passes(8, 2), names);
        render_group.bench_function(format!("8 GPUs x 16 pods, {label} names, text + OpenMetrics"), |b| {
            b.iter(|| passes.render(&[]))
        });
    }
    let data = sample(8, 2);
    let registry = prometheus_client_registry(&data);
    render_group.bench_function("8 GPUs x 16 pods, prometheus-client OpenMetrics only (baseline)", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(32 * 1024);
            prometheus_client::encoding::text::encode(&mut out, black_box(&registry)).unwrap();
            out
        })
    });
    render_group.finish();

    // Scaling: both formats for 100 to 100 000 pods on 8 GPUs.
    let mut scaling = c.benchmark_group("scaling-render");
    scaling.sample_size(10);
    for pods in [100u32, 1_000, 10_000, 100_000] {
        let mut load = Passes::new(passes(8, pods / 8), MetricNames::Native);
        scaling.bench_with_input(BenchmarkId::from_parameter(pods), &pods, |b, _| b.iter(|| load.render(&[])));
    }
    scaling.finish();

    // A scrape of a sample already gzipped (the second and later scrapes of
    // a sample, and every plain one) against serving static bytes.
    let mut scrape = c.benchmark_group("scrape");
    let state = state_for(sample(8, 2));
    let static_body = state.snapshot.load().exposition.text().clone();
    scrape.bench_function("static bytes baseline", |b| b.iter(|| static_response(black_box(&static_body))));
    let plain = Request::builder().uri("/metrics").body(()).unwrap();
    scrape.bench_function("agent handler (text)", |b| b.iter(|| handle(&state, black_box(&plain))));
    let req = scrape_request();
    scrape
        .bench_function("agent handler (negotiate, gzip OpenMetrics)", |b| b.iter(|| handle(&state, black_box(&req))));
    scrape.finish();
}

criterion_group!(name = exposition; config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)); targets = benches);
criterion_main!(exposition);
