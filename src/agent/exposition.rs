//! Prometheus text (0.0.4) and OpenMetrics (1.0.0) exposition, rendered once
//! per sample, and the content negotiation a scrape does.
//!
//! The encoder is written by hand for speed, and a golden test checks that
//! its OpenMetrics output equals what `prometheus-client` writes for the same
//! series. Series with no value are left out, never written as zero.

use std::io::Write;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::HeaderValue;

mod encoder;
mod labels;
mod value;

use encoder::{Buffers, Encoder, LabelParts};
use labels::{Labels, PerGpuSets};
use value::Value;
#[cfg(test)]
use value::{write_f64, write_u64};

use super::sample::SampleData;
use crate::attribution::Sharing;
use crate::gpu::{ClockEventReason, GpuCall, GpuReading, HealthReading, MigDevice, ViolationPolicy};

/// `Content-Type` of the text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The four `/metrics` bodies of one sample.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// Text format.
    pub text: Bytes,
    /// Text format, gzipped.
    pub text_gzip: Bytes,
    /// OpenMetrics.
    pub openmetrics: Bytes,
    /// OpenMetrics, gzipped.
    pub openmetrics_gzip: Bytes,
}

/// Which metric names `/metrics` uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricNames {
    /// `nvidia_gpu_*` with `node`, `gpu`, `uuid`, `model` labels.
    #[default]
    Native,
    /// dcgm-exporter's `DCGM_FI_DEV_*` names, units and labels, so that its
    /// dashboards and alerts keep working.
    Dcgm,
    /// Both, for running the two side by side during a move.
    Both,
}

impl MetricNames {
    fn native(self) -> bool {
        self != MetricNames::Dcgm
    }

    fn dcgm(self) -> bool {
        self != MetricNames::Native
    }
}

/// Which body a scrape gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Representation {
    /// OpenMetrics rather than text.
    pub openmetrics: bool,
    /// Gzipped.
    pub gzip: bool,
}

impl Representation {
    /// Picks the body for a request's `Accept` and `Accept-Encoding`, without
    /// allocating. OpenMetrics wins when the client ranks it at least as high
    /// as the text format; the text format is the default.
    pub fn negotiate(accept: Option<&HeaderValue>, accept_encoding: Option<&HeaderValue>) -> Self {
        let (mut openmetrics_q, mut text_q) = (0.0f32, 0.0f32);
        for (media, q) in accept.and_then(|v| v.to_str().ok()).into_iter().flat_map(media_ranges) {
            if media.eq_ignore_ascii_case("application/openmetrics-text") {
                openmetrics_q = openmetrics_q.max(q);
            } else if ["text/plain", "text/*", "*/*"].iter().any(|m| media.eq_ignore_ascii_case(m)) {
                text_q = text_q.max(q);
            }
        }
        let gzip = accept_encoding
            .and_then(|v| v.to_str().ok())
            .into_iter()
            .flat_map(media_ranges)
            .any(|(coding, q)| q > 0.0 && (coding.eq_ignore_ascii_case("gzip") || coding == "*"));
        Self { openmetrics: openmetrics_q > 0.0 && openmetrics_q >= text_q, gzip }
    }

    /// The `Content-Type` of this representation.
    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(if self.openmetrics { OPENMETRICS_CONTENT_TYPE } else { TEXT_CONTENT_TYPE })
    }
}

/// Splits a header like `a/b;q=0.5, c/d` into `(value, q)` pairs.
fn media_ranges(header: &str) -> impl Iterator<Item = (&str, f32)> {
    header.split(',').filter_map(|range| {
        let mut parts = range.split(';');
        let media = parts.next()?.trim();
        let q =
            parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.trim().parse::<f32>().ok()).unwrap_or(1.0);
        (!media.is_empty()).then_some((media, q))
    })
}

impl Exposition {
    /// The body for a representation (a reference-counted clone).
    pub fn body(&self, r: Representation) -> Bytes {
        match (r.openmetrics, r.gzip) {
            (false, false) => self.text.clone(),
            (false, true) => self.text_gzip.clone(),
            (true, false) => self.openmetrics.clone(),
            (true, true) => self.openmetrics_gzip.clone(),
        }
    }
}

/// Renders a sample in both formats, plain and gzipped, once.
pub fn render(data: &SampleData, names: MetricNames) -> Exposition {
    Renderer::default().render(data, names)
}

/// Renders the plain text and OpenMetrics bodies once.
pub fn render_plain(data: &SampleData, names: MetricNames) -> (Vec<u8>, Vec<u8>) {
    let (text, openmetrics) = Renderer::default().render_plain(data, names);
    (text.into(), openmetrics.into())
}

/// Renders sample after sample, keeping its working buffers between them:
/// once their sizes settle a render grows no buffer and touches no fresh
/// page, and each buffer is allocated once, at its size. It also keeps the
/// sample before's label sets and bodies, and writes over them: what did
/// not change since is copied (see [`encoder`]).
#[derive(Debug, Default)]
pub struct Renderer {
    /// The last buffer's length, the next one's starting capacity.
    body_len: usize,
    /// A buffer of an earlier sample that no reader holds any more.
    spare: Option<Vec<u8>>,
    /// Buffers of earlier samples that readers may still hold.
    lent: Vec<Bytes>,
    labels: Labels,
    buffers: Buffers,
    /// What the steady families were written from, this sample and the one
    /// before.
    steady: Steady,
    steady_before: Steady,
    /// The buffers of who holds each GPU, empty between samples.
    holders: Holders<'static, 'static>,
}

/// How many buffers of earlier samples the renderer waits for; beyond
/// that, a slow reader keeps its buffer and frees it alone.
const LENT: usize = 4;

impl Renderer {
    /// Renders a sample in both formats, plain and gzipped.
    pub fn render(&mut self, data: &SampleData, names: MetricNames) -> Exposition {
        let (text, openmetrics) = self.render_plain(data, names);
        Exposition { text_gzip: gzip(&text), openmetrics_gzip: gzip(&openmetrics), text, openmetrics }
    }

    /// Renders the plain text and OpenMetrics bodies: two slices of one
    /// buffer.
    pub fn render_plain(&mut self, data: &SampleData, names: MetricNames) -> (Bytes, Bytes) {
        if self.labels.refresh(data) {
            self.buffers.forget();
        }
        self.reclaim();
        let estimate = 64 + data.gpus.len() * 3200 + data.usages.len() * 1200;
        let mut body = self.spare.take().unwrap_or_default();
        body.reserve(self.body_len.max(estimate));
        std::mem::swap(&mut self.steady, &mut self.steady_before);
        self.steady.fill(data, names);
        let unchanged = self.steady == self.steady_before;
        let (labels, steady) = (&self.labels, &self.steady);
        let holders = std::mem::take(&mut self.holders).recycled().of(data, labels, steady, names);
        let written = Encoder::write(body, &mut self.buffers, |e| {
            encode(e, Sample { data, labels, holders: &holders, steady, unchanged }, names)
        });
        self.holders = holders.recycled();
        self.body_len = written.body.len();
        let body = Bytes::from(written.body);
        let bodies = (body.slice(written.text), body.slice(written.openmetrics));
        let before = self.buffers.keep(body, written.gauges);
        if !before.is_empty() {
            if self.lent.len() == LENT {
                self.lent.remove(0);
            }
            self.lent.push(before);
        }
        bodies
    }

    /// Lets an earlier sample's bodies go, and takes their buffer back for
    /// the next render once no reader holds it.
    pub fn recycle(&mut self, exposition: Exposition) {
        drop(exposition);
        self.reclaim();
    }

    /// Takes back a lent buffer that no reader holds any more.
    fn reclaim(&mut self) {
        if self.spare.is_some() {
            return;
        }
        if let Some(i) = self.lent.iter().position(Bytes::is_unique)
            && let Ok(mut body) = self.lent.remove(i).try_into_mut()
        {
            body.clear();
            self.spare = Some(body.into());
        }
    }
}

fn gzip(body: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    encoder.write_all(body).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail").into()
}

/// Seconds since the Unix epoch, to the millisecond: finer than any sample
/// interval, and short to write.
fn epoch_seconds(t: std::time::SystemTime) -> f64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    // Milliseconds as a u64 (exact as an f64 for 285 000 years), which
    // converts in one instruction where a u128 needs a call.
    let millis = since.as_secs().saturating_mul(1000).saturating_add(u64::from(since.subsec_millis()));
    millis as f64 / 1000.0
}

/// The MIG devices' series of one family: each device's labels, with its
/// holder's pod labels when exactly one container holds it.
fn mig_series<'l>(
    data: &SampleData,
    migs: &'l PerGpuSets,
    labels: &'l Labels,
    value: impl Fn(&MigDevice) -> Option<Value>,
) -> Vec<(LabelParts<'l>, Value)> {
    let mut series = Vec::new();
    for (i, gpu) in data.gpus.iter().enumerate().filter(|(_, g)| g.up) {
        for (m, mig) in gpu.reading.mig_devices.iter().enumerate() {
            let Some(v) = value(mig) else { continue };
            let mut holders = data.usages.iter().enumerate().filter(|(_, u)| u.gpu == i && u.mig == Some(m));
            let pod = match (holders.next(), holders.next()) {
                (Some((k, _)), None) => labels.pods.get(k),
                _ => "",
            };
            series.push(([migs.get(i, m), pod, ""], v));
        }
    }
    series
}

/// What the steady families are written from: each GPU's identity, clock
/// events and health (read every 30 s or so), and the agent's error counts,
/// which seldom change. While it is what the sample before's was, the
/// encoder copies those families whole (see [`Encoder::steady`]), so they
/// are written from it alone.
#[derive(Clone, Debug, Default, PartialEq)]
struct Steady {
    names: Option<MetricNames>,
    gpus: Vec<SteadyGpu>,
    gpu_errors: [u64; GpuCall::ALL.len()],
    gpu_read_timeouts: u64,
    pod_resources_errors: u64,
}

/// One GPU, as the steady families read it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SteadyGpu {
    /// The usage of the one container holding the whole GPU exclusively,
    /// whose pod labels its series carry.
    holder: Option<usize>,
    up: bool,
    memory_total_bytes: Option<u64>,
    clock_events: Option<u64>,
    health: HealthReading,
}

impl Steady {
    /// Makes this what `data`'s steady families are written from.
    fn fill(&mut self, data: &SampleData, names: MetricNames) {
        self.names = Some(names);
        self.gpus.clear();
        self.gpus.extend(data.gpus.iter().enumerate().map(|(i, g)| {
            let mut holders = data.usages.iter().enumerate().filter(|(_, u)| u.gpu == i && u.mig.is_none());
            let holder = match (holders.next(), holders.next()) {
                (Some((k, only)), None) if only.sharing == Sharing::Exclusive => Some(k),
                _ => None,
            };
            SteadyGpu {
                holder,
                up: g.up,
                memory_total_bytes: g.reading.memory_total_bytes,
                clock_events: g.reading.clock_events,
                health: g.reading.health,
            }
        }));
        self.gpu_errors = data.counters.gpu_errors;
        self.gpu_read_timeouts = data.counters.gpu_read_timeouts;
        self.pod_resources_errors = data.counters.pod_resources_errors;
    }

    /// Every GPU, with its index and its native label parts.
    fn all<'s, 'l>(&'s self, labels: &'l Labels) -> impl Iterator<Item = (usize, &'s SteadyGpu, [&'l str; 2])> + 's
    where
        'l: 's,
    {
        self.gpus.iter().enumerate().map(move |(i, g)| (i, g, g.device(labels, i)))
    }

    /// The GPUs that answered, as [`Steady::all`] gives them.
    fn up<'s, 'l>(&'s self, labels: &'l Labels) -> impl Iterator<Item = (usize, &'s SteadyGpu, [&'l str; 2])> + 's
    where
        'l: 's,
    {
        self.all(labels).filter(|(_, g, _)| g.up)
    }
}

impl SteadyGpu {
    /// GPU `i`'s native label parts: its set, and its holder's.
    fn device<'l>(&self, labels: &'l Labels, i: usize) -> [&'l str; 2] {
        [labels.gpus.get(i), self.holder.map_or("", |k| labels.pods.get(k))]
    }
}

/// A sample as the family code reads it, in both of the encoder's passes.
#[derive(Clone, Copy)]
struct Sample<'a, 'l> {
    data: &'a SampleData,
    labels: &'l Labels,
    holders: &'a Holders<'a, 'l>,
    steady: &'a Steady,
    /// `steady` is what the sample before's steady families were written
    /// from.
    unchanged: bool,
}

/// Who holds each GPU, as the families label it: worked out once a sample,
/// for both of the encoder's passes.
#[derive(Debug, Default)]
struct Holders<'d, 'l> {
    /// Per GPU, for the native families: its label set, and its container's
    /// when exactly one container holds it, exclusively.
    device: Vec<[&'l str; 2]>,
    /// For the native families, per GPU that is up: its reading and its
    /// `device` parts.
    up: Vec<(&'d GpuReading, [&'l str; 2])>,
    /// For the native pod families, per usage: its GPU's (or MIG device's)
    /// label set, its pod's, and its `sharing`.
    pods: Vec<LabelParts<'l>>,
    /// For dcgm-exporter's families, per GPU that is up: one series per
    /// container holding it, each with the device's reading, or one without
    /// pod labels when none does.
    dcgm: Vec<(&'d GpuReading, [&'l str; 2])>,
}

impl<'d, 'l> Holders<'d, 'l> {
    /// Works them out for `data` into `self`, which is empty.
    fn of(mut self, data: &'d SampleData, labels: &'l Labels, steady: &Steady, names: MetricNames) -> Self {
        let pods = &labels.pods;
        let Holders { device, up, pods: per_usage, dcgm } = &mut self;
        if names.native() {
            device.extend(steady.gpus.iter().enumerate().map(|(i, g)| g.device(labels, i)));
            up.extend(data.gpus.iter().zip(&*device).filter(|(g, _)| g.up).map(|(g, &parts)| (&g.reading, parts)));
            per_usage.extend(data.usages.iter().enumerate().map(|(k, u)| {
                let gpu = match u.mig {
                    Some(m) => labels.migs.get(u.gpu, m),
                    None => labels.gpus.get(u.gpu),
                };
                [gpu, pods.get(k), u.sharing.label()]
            }));
        }
        if names.dcgm() {
            let gpus = &labels.dcgm;
            dcgm.reserve(data.gpus.len() + data.usages.len());
            for (i, gpu) in data.gpus.iter().enumerate().filter(|(_, g)| g.up) {
                let before = dcgm.len();
                for (k, _) in data.usages.iter().enumerate().filter(|(_, u)| u.gpu == i && u.mig.is_none()) {
                    dcgm.push((&gpu.reading, [gpus.get(i), pods.get(k)]));
                }
                if dcgm.len() == before {
                    dcgm.push((&gpu.reading, [gpus.get(i), ""]));
                }
            }
        }
        self
    }

    /// Empties them, keeping their buffers for the next sample's.
    fn recycled<'e, 'm>(self) -> Holders<'e, 'm> {
        Holders {
            device: recycled(self.device),
            up: recycled(self.up),
            pods: recycled(self.pods),
            dcgm: recycled(self.dcgm),
        }
    }
}

/// An empty vector in `v`'s allocation, of elements laid out as `v`'s (here,
/// the same elements borrowing for another lifetime): the standard library
/// collects a vector's own iterator into its allocation. (Were it not to,
/// this would allocate anew, and nothing more; the render bench counts
/// allocations.)
fn recycled<T, U>(v: Vec<T>) -> Vec<U> {
    v.into_iter().filter_map(|_| None).collect()
}

/// Writes every family of a sample.
fn encode<'l>(e: &mut Encoder<'_, 'l>, sample: Sample<'_, 'l>, names: MetricNames) {
    let Sample { data, labels, holders, .. } = sample;
    if names.native() {
        native_families(e, sample);
    }
    if names.dcgm() {
        dcgm_families(e, data, labels, &holders.dcgm);
    }
    // The agent's own state, labelled with its node like every GPU series.
    let own = labels.own.as_str();
    let version = concat!("version=\"", env!("CARGO_PKG_VERSION"), "\"");
    e.gauge("kube_gpu_metrics_build_info", "Build of the agent", [([own, "", version], Value::U64(1))]);
    e.gauge(
        "kube_gpu_metrics_gpu_source_up",
        "1 when the GPU source (NVML) is initialised",
        [([own, "", ""], Value::U64(u64::from(data.gpu_source_up)))],
    );
    e.gauge(
        "kube_gpu_metrics_pod_resources_up",
        "1 when the kubelet answered the last PodResources call",
        data.pod_resources_up.map(|up| ([own, "", ""], Value::U64(u64::from(up)))),
    );
    e.gauge(
        "kube_gpu_metrics_sample_duration_seconds",
        "Duration of the last sample pass",
        [([own, "", ""], Value::F64(data.sample_duration.as_secs_f64()))],
    );
    let taken_at = epoch_seconds(data.taken_at);
    e.gauge(
        "kube_gpu_metrics_last_sample_timestamp_seconds",
        "When the last sample pass started, seconds since the Unix epoch",
        [([own, "", ""], Value::F64(taken_at))],
    );

    let c = &data.counters;
    let n = Value::U64;
    e.counter("kube_gpu_metrics_samples", "Sample passes finished", [([own, "", ""], n(c.samples))]);
    e.steady(sample.unchanged, |e| agent_error_families(e, own, sample.steady));
    e.counter(
        "kube_gpu_metrics_scrapes",
        "Scrapes of /metrics, by format, as of this sample",
        [
            ([own, "", "format=\"text\""], n(c.scrapes_text)),
            ([own, "", "format=\"openmetrics\""], n(c.scrapes_openmetrics)),
        ],
    );
}

/// The agent's error counters, from `steady` alone.
fn agent_error_families<'l>(e: &mut Encoder<'_, 'l>, own: &'l str, steady: &Steady) {
    let n = Value::U64;
    e.counter(
        "kube_gpu_metrics_nvml_errors",
        "Failed NVML calls, by call (not-supported answers are not errors)",
        GpuCall::ALL.iter().zip(steady.gpu_errors).map(|(call, count)| ([own, "", call.label()], n(count))),
    );
    e.counter(
        "kube_gpu_metrics_gpu_read_timeouts",
        "GPU reads that missed their deadline; the GPU is reported down for that sample",
        [([own, "", ""], n(steady.gpu_read_timeouts))],
    );
    e.counter(
        "kube_gpu_metrics_pod_resources_errors",
        "Failed kubelet PodResources calls",
        [([own, "", ""], n(steady.pod_resources_errors))],
    );
}

/// The families of what a GPU is, from `steady` alone.
fn identity_families<'l>(e: &mut Encoder<'_, 'l>, labels: &'l Labels, steady: &Steady) {
    let info = &labels.info;
    e.gauge(
        "nvidia_gpu_info",
        "GPU identity, 1 for every GPU the agent found, with its PCI bus ID and the driver and CUDA versions",
        steady.all(labels).map(|(i, _, [gl, p])| ([gl, p, info.get(i)], Value::U64(1))),
    );
    e.gauge(
        "nvidia_gpu_up",
        "1 when the GPU answered this sample, 0 when it stopped answering",
        steady.all(labels).map(|(_, g, [gl, p])| ([gl, p, ""], Value::U64(u64::from(g.up)))),
    );
    e.gauge(
        "nvidia_gpu_memory_total_bytes",
        "Device memory in total",
        steady.up(labels).filter_map(|(_, g, [gl, p])| Some(([gl, p, ""], Value::U64(g.memory_total_bytes?)))),
    );
}

/// The `nvidia_gpu_*` families.
fn native_families<'l>(e: &mut Encoder<'_, 'l>, sample: Sample<'_, 'l>) {
    let Sample { data, labels, holders, steady, unchanged } = sample;
    let up = holders.up.as_slice();
    let f = |v: Option<f64>| v.map(Value::F64);

    e.steady(unchanged, |e| identity_families(e, labels, steady));
    e.gauge(
        "nvidia_gpu_utilization_percent",
        "Percent of time a kernel ran on the GPU over the driver's sample period",
        per_holder(up, &|r| f(r.utilization_percent)),
    );
    e.gauge(
        "nvidia_gpu_memory_utilization_percent",
        "Percent of time device memory was read or written",
        per_holder(up, &|r| f(r.memory_utilization_percent)),
    );
    e.gauge(
        "nvidia_gpu_memory_used_bytes",
        "Device memory in use",
        per_holder(up, &|r| r.memory_used_bytes.map(Value::U64)),
    );
    e.gauge("nvidia_gpu_temperature_celsius", "GPU core temperature", per_holder(up, &|r| f(r.temperature_celsius)));
    e.gauge("nvidia_gpu_power_watts", "Board power draw", per_holder(up, &|r| f(r.power_watts)));
    e.gauge("nvidia_gpu_sm_clock_hertz", "Current SM clock", per_holder(up, &|r| f(r.sm_clock_hertz)));
    telemetry_families(e, data, labels, holders);
    e.steady(unchanged, |e| health_families(e, labels, steady));
    let migs = &labels.migs;
    e.gauge(
        "nvidia_gpu_mig_memory_used_bytes",
        "Memory in use on a MIG device (a GPU in MIG mode)",
        mig_series(data, migs, labels, |m| m.memory_used_bytes.map(Value::U64)),
    );
    e.gauge(
        "nvidia_gpu_mig_memory_total_bytes",
        "Memory of a MIG device",
        mig_series(data, migs, labels, |m| m.memory_total_bytes.map(Value::U64)),
    );
    e.gauge(
        "nvidia_gpu_mig_utilization_percent",
        "Share of the last interval a MIG device's GPU instance was busy (GPM graphics utilization; Hopper and newer)",
        mig_series(data, migs, labels, |m| m.utilization_percent.map(Value::F64)),
    );
    // A pod's series on a GPU: the GPU's labels (its MIG device's, on one),
    // the pod's, and `sharing`.
    let per_pod = || data.usages.iter().zip(&holders.pods);
    e.gauge(
        "nvidia_gpu_pod_utilization_percent",
        "A pod's utilization of a GPU: the device value on an exclusive GPU, its processes' share on a shared one",
        per_pod().filter_map(|(u, &parts)| Some((parts, Value::F64(u.utilization_percent.ok()?)))),
    );
    e.gauge(
        "nvidia_gpu_pod_memory_utilization_percent",
        "A pod's memory-controller utilization of a GPU",
        per_pod().filter_map(|(u, &parts)| Some((parts, f(u.memory_utilization_percent)?))),
    );
    e.gauge(
        "nvidia_gpu_pod_memory_used_bytes",
        "Device memory a pod's processes hold on a GPU (NVML's running-process lists); memory no pod's process holds is only in nvidia_gpu_memory_used_bytes",
        per_pod().filter_map(|(u, &parts)| Some((parts, Value::U64(u.memory_used_bytes?)))),
    );
    e.gauge(
        "nvidia_gpu_pod_last_active_timestamp_seconds",
        "When the pod's utilization share of the GPU was last above zero (or, never seen active, when the agent first saw it hold the GPU), seconds since the Unix epoch",
        per_pod().zip(&data.accounts).map(|((_, &parts), account)| (parts, Value::F64(epoch_seconds(account.last_active)))),
    );
    e.counter(
        "nvidia_gpu_pod_energy_joules",
        "The pod's part of the GPU's energy since the agent first saw it there, split by utilization shares",
        per_pod().zip(&data.accounts).map(|((_, &parts), account)| (parts, Value::F64(account.energy_joules))),
    );
    e.gauge(
        "kube_gpu_metrics_pod_attribution_unresolved",
        "1 for a pod whose share of a GPU cannot be measured, with the reason",
        per_pod()
            .filter_map(|(u, &[gpu, pod, _])| Some(([gpu, pod, u.utilization_percent.err()?.label()], Value::U64(1)))),
    );
}

/// The telemetry families beyond utilization, memory, temperature, power
/// and SM clock, other than the steady ones (clock events and health, in
/// `health_families`).
fn telemetry_families<'l>(e: &mut Encoder<'_, 'l>, data: &SampleData, labels: &'l Labels, holders: &Holders<'_, 'l>) {
    let up = holders.up.as_slice();
    let f = |v: Option<f64>| v.map(Value::F64);
    e.gauge("nvidia_gpu_memory_clock_hertz", "Current memory clock", per_holder(up, &|r| f(r.memory_clock_hertz)));
    e.gauge(
        "nvidia_gpu_memory_temperature_celsius",
        "Memory (HBM) temperature",
        per_holder(up, &|r| f(r.memory_temperature_celsius)),
    );
    e.gauge(
        "nvidia_gpu_pcie_transmit_bytes_per_second",
        "PCIe transmit throughput (NVML's 20 ms window)",
        per_holder(up, &|r| f(r.pcie_transmit_bytes_per_second)),
    );
    e.gauge(
        "nvidia_gpu_pcie_receive_bytes_per_second",
        "PCIe receive throughput (NVML's 20 ms window)",
        per_holder(up, &|r| f(r.pcie_receive_bytes_per_second)),
    );
    e.gauge(
        "nvidia_gpu_encoder_utilization_percent",
        "Video encoder utilization",
        per_holder(up, &|r| f(r.encoder_utilization_percent)),
    );
    e.gauge(
        "nvidia_gpu_decoder_utilization_percent",
        "Video decoder utilization",
        per_holder(up, &|r| f(r.decoder_utilization_percent)),
    );
    e.gauge(
        "nvidia_gpu_fan_speed_percent",
        "Intended speed of the first fan, percent of its maximum",
        per_holder(up, &|r| f(r.fan_speed_percent)),
    );
    e.gauge(
        "nvidia_gpu_performance_state",
        "Performance state: 0 (P0, most) to 15 (P15, least)",
        per_holder(up, &|r| r.performance_state.map(|p| Value::U64(u64::from(p)))),
    );
    e.gauge(
        "nvidia_gpu_memory_reserved_bytes",
        "Device memory the driver reserves",
        per_holder(up, &|r| r.memory_reserved_bytes.map(Value::U64)),
    );
    e.counter(
        "nvidia_gpu_clock_event_violation_seconds",
        "Time clocks were held back by a policy since the driver loaded, by reason",
        each_with(up, ViolationPolicy::ALL)
            .filter_map(|((r, [gl, p]), v)| Some(([gl, p, v.label()], Value::F64(r.violations.get(*v)?)))),
    );
    let xids = &labels.xids;
    e.counter(
        "nvidia_gpu_xid_errors",
        "XID errors since the agent started, by XID code (NVML critical XID events)",
        data.gpus.iter().enumerate().zip(&holders.device).filter(|((_, g), _)| g.up).flat_map(|((i, g), &[gl, p])| {
            let counts = g.reading.xid.iter().flat_map(|x| x.counts.values());
            counts.enumerate().map(move |(j, &count)| ([gl, p, xids.get(i, j)], Value::U64(count)))
        }),
    );
    e.counter(
        "nvidia_gpu_energy_joules",
        "Energy used since the driver loaded",
        per_holder(up, &|r| r.energy_joules.map(Value::F64)),
    );
    e.counter(
        "nvidia_gpu_pcie_replays",
        "PCIe replays (retries) since the driver loaded",
        per_holder(up, &|r| r.pcie_replays.map(Value::U64)),
    );
}

/// The families of a GPU's clock events and health, from `steady` alone.
fn health_families<'l>(e: &mut Encoder<'_, 'l>, labels: &'l Labels, steady: &Steady) {
    let up = || steady.up(labels);
    let flag = |v: bool| Value::U64(u64::from(v));
    let gauge = |e: &mut Encoder<'_, 'l>,
                 name: &'static str,
                 help: &'static str,
                 value: &dyn Fn(&HealthReading) -> Option<Value>| {
        e.gauge(name, help, up().filter_map(|(_, g, [gl, p])| Some(([gl, p, ""], value(&g.health)?))));
    };
    e.gauge(
        "nvidia_gpu_clock_event_active",
        "1 while a clock-event (throttle) reason holds clocks back, by reason",
        up().filter_map(|(_, g, d)| Some((g.clock_events?, d))).flat_map(|(mask, [gl, p])| {
            ClockEventReason::ALL.iter().map(move |r| ([gl, p, r.label()], flag(mask & r.bit() != 0)))
        }),
    );
    gauge(e, "nvidia_gpu_power_limit_watts", "Enforced power limit", &|h| h.power_limit_watts.map(Value::F64));
    e.counter(
        "nvidia_gpu_ecc_errors",
        "ECC errors while ECC is on: corrected or uncorrected, since the driver loaded (volatile) or over the board's life (aggregate)",
        up().filter_map(|(_, g, d)| Some((g.health.ecc?, d))).flat_map(|(ecc, [gl, p])| {
            [
                ("error=\"corrected\",counter=\"volatile\"", ecc.corrected_volatile),
                ("error=\"uncorrected\",counter=\"volatile\"", ecc.uncorrected_volatile),
                ("error=\"corrected\",counter=\"aggregate\"", ecc.corrected_aggregate),
                ("error=\"uncorrected\",counter=\"aggregate\"", ecc.uncorrected_aggregate),
            ]
            .into_iter()
            .filter_map(move |(own, v)| Some(([gl, p, own], Value::U64(v?))))
        }),
    );
    e.counter(
        "nvidia_gpu_remapped_rows",
        "Memory rows remapped, by the error that caused it",
        up().filter_map(|(_, g, d)| Some((g.health.remapped_rows?, d))).flat_map(|(rows, [gl, p])| {
            [("error=\"correctable\"", rows.correctable), ("error=\"uncorrectable\"", rows.uncorrectable)]
                .map(|(own, v)| ([gl, p, own], Value::U64(v)))
        }),
    );
    gauge(e, "nvidia_gpu_remapped_rows_pending", "1 while a row remapping waits for a GPU reset", &|h| {
        Some(flag(h.remapped_rows?.pending))
    });
    gauge(e, "nvidia_gpu_remapped_rows_failed", "1 when a row remapping failed: the GPU needs service", &|h| {
        Some(flag(h.remapped_rows?.failure))
    });
    e.gauge(
        "nvidia_gpu_retired_pages",
        "Memory pages retired, by cause",
        up().filter_map(|(_, g, d)| Some((g.health.retired_pages?, d))).flat_map(|(pages, [gl, p])| {
            [("cause=\"single_bit_ecc\"", pages.single_bit), ("cause=\"double_bit_ecc\"", pages.double_bit)]
                .map(|(own, v)| ([gl, p, own], Value::U64(v)))
        }),
    );
    gauge(e, "nvidia_gpu_retired_pages_pending", "1 while pages wait to be retired at the next reset", &|h| {
        Some(flag(h.retired_pages?.pending?))
    });
}

/// The dcgm-exporter families for the fields the agent reads, in its names,
/// units (MiB, MHz, W) and labels. As with dcgm-exporter's pod mapping, a GPU
/// held by pods has one series per holding container, each with the
/// device's value; a GPU no pod holds has one series without pod labels.
fn dcgm_families<'l>(
    e: &mut Encoder<'_, 'l>,
    data: &SampleData,
    labels: &'l Labels,
    series: &[(&GpuReading, [&'l str; 2])],
) {
    const MIB: u64 = 1 << 20;
    // dcgm-exporter writes whole numbers for integer fields.
    let whole = |v: f64| Value::U64(v.max(0.0).round() as u64);
    // MIG devices have their own framebuffer series, with dcgm-exporter's
    // GPU instance labels.
    let migs = &labels.dcgm_migs;
    let mig_family = |name: &str| match name {
        "DCGM_FI_DEV_FB_FREE" => mig_series(data, migs, labels, |m| {
            Some(Value::U64(m.memory_total_bytes?.saturating_sub(m.memory_used_bytes?) / MIB))
        }),
        "DCGM_FI_DEV_FB_USED" => mig_series(data, migs, labels, |m| Some(Value::U64(m.memory_used_bytes? / MIB))),
        _ => Vec::new(),
    };
    let mut family = |name: &'static str, help: &'static str, value: &ReadValue<'_>| {
        e.gauge(name, help, per_holder(series, value).chain(mig_family(name)));
    };
    family("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)", &|r| Some(whole(r.sm_clock_hertz? / 1e6)));
    family("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)", &|r| Some(whole(r.temperature_celsius?)));
    family("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)", &|r| r.power_watts.map(Value::F64));
    family("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)", &|r| Some(whole(r.utilization_percent?)));
    family("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %)", &|r| Some(whole(r.memory_utilization_percent?)));
    family("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)", &|r| {
        Some(Value::U64(r.memory_total_bytes?.saturating_sub(r.memory_used_bytes?) / MIB))
    });
    family("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)", &|r| {
        Some(Value::U64(r.memory_used_bytes? / MIB))
    });
    family("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB)", &|r| {
        Some(Value::U64(r.memory_reserved_bytes? / MIB))
    });
    family("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz)", &|r| Some(whole(r.memory_clock_hertz? / 1e6)));
    family("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C)", &|r| Some(whole(r.memory_temperature_celsius?)));
    family("DCGM_FI_DEV_ENC_UTIL", "Encoder utilization (in %)", &|r| Some(whole(r.encoder_utilization_percent?)));
    family("DCGM_FI_DEV_DEC_UTIL", "Decoder utilization (in %)", &|r| Some(whole(r.decoder_utilization_percent?)));
    family("DCGM_FI_DEV_FAN_SPEED", "Fan speed (in 0-100%)", &|r| Some(whole(r.fan_speed_percent?)));
    family("DCGM_FI_DEV_PSTATE", "Performance state (P-State) 0-15. 0=highest", &|r| {
        r.performance_state.map(|p| Value::U64(u64::from(p)))
    });
    family("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "Effective power limit that the driver enforces (in W)", &|r| {
        r.health.power_limit_watts.map(Value::F64)
    });
    family("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "Current clock event reasons (bitmask)", &|r| {
        r.clock_events.map(Value::U64)
    });
    family("DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed", &|r| {
        Some(Value::U64(u64::from(r.health.remapped_rows?.failure)))
    });
    family("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered", &|r| {
        Some(Value::U64(r.xid.as_ref()?.last.unwrap_or(0)))
    });
    let counters: [(&'static str, &'static str, &ReadValue<'_>); 17] = [
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Total energy consumption since boot (in mJ)", &|r| {
            Some(Value::U64((r.energy_joules? * 1000.0).round() as u64))
        }),
        (
            "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
            "Total number of bytes transmitted through PCIe TX (in KB) via NVML",
            &|r| Some(whole(r.pcie_transmit_bytes_per_second? / 1024.0)),
        ),
        ("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "Total number of bytes received through PCIe RX (in KB) via NVML", &|r| {
            Some(whole(r.pcie_receive_bytes_per_second? / 1024.0))
        }),
        ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries", &|r| r.pcie_replays.map(Value::U64)),
        ("DCGM_FI_DEV_POWER_VIOLATION", "Throttling duration due to power constraints (in us)", &|r| {
            violation_us(r, ViolationPolicy::Power)
        }),
        ("DCGM_FI_DEV_THERMAL_VIOLATION", "Throttling duration due to thermal constraints (in us)", &|r| {
            violation_us(r, ViolationPolicy::Thermal)
        }),
        ("DCGM_FI_DEV_SYNC_BOOST_VIOLATION", "Throttling duration due to sync-boost constraints (in us)", &|r| {
            violation_us(r, ViolationPolicy::SyncBoost)
        }),
        ("DCGM_FI_DEV_BOARD_LIMIT_VIOLATION", "Throttling duration due to board limit constraints (in us)", &|r| {
            violation_us(r, ViolationPolicy::BoardLimit)
        }),
        ("DCGM_FI_DEV_LOW_UTIL_VIOLATION", "Throttling duration due to low utilization (in us)", &|r| {
            violation_us(r, ViolationPolicy::LowUtilization)
        }),
        ("DCGM_FI_DEV_RELIABILITY_VIOLATION", "Throttling duration due to reliability constraints (in us)", &|r| {
            violation_us(r, ViolationPolicy::Reliability)
        }),
        ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors", &|r| {
            r.health.ecc?.corrected_volatile.map(Value::U64)
        }),
        ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors", &|r| {
            r.health.ecc?.uncorrected_volatile.map(Value::U64)
        }),
        ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "Total number of single-bit persistent ECC errors", &|r| {
            r.health.ecc?.corrected_aggregate.map(Value::U64)
        }),
        ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "Total number of double-bit persistent ECC errors", &|r| {
            r.health.ecc?.uncorrected_aggregate.map(Value::U64)
        }),
        ("DCGM_FI_DEV_RETIRED_SBE", "Total number of retired pages due to single-bit errors", &|r| {
            Some(Value::U64(r.health.retired_pages?.single_bit))
        }),
        ("DCGM_FI_DEV_RETIRED_DBE", "Total number of retired pages due to double-bit errors", &|r| {
            Some(Value::U64(r.health.retired_pages?.double_bit))
        }),
        ("DCGM_FI_DEV_RETIRED_PENDING", "Total number of pages pending retirement", &|r| {
            Some(Value::U64(u64::from(r.health.retired_pages?.pending?)))
        }),
    ];
    for (name, help, value) in counters {
        e.bare_counter(name, help, per_holder(series, value));
    }
    for (name, help, rows) in [
        ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for uncorrectable errors", true),
        ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for correctable errors", false),
    ] {
        let value = |r: &GpuReading| {
            let remapped = r.health.remapped_rows?;
            Some(Value::U64(if rows { remapped.uncorrectable } else { remapped.correctable }))
        };
        e.bare_counter(name, help, per_holder(series, &value));
    }
}

/// How a family's value is read from a GPU's reading.
type ReadValue<'a> = dyn Fn(&GpuReading) -> Option<Value> + 'a;

/// A family of one series per holder (a GPU that is up, or for
/// dcgm-exporter's names each of its containers) that has a value: each
/// with the holder's two label parts.
fn per_holder<'a, 'l, F>(
    series: &'a [(&'a GpuReading, [&'l str; 2])],
    value: &'a F,
) -> impl Iterator<Item = (LabelParts<'l>, Value)> + 'a
where
    F: Fn(&GpuReading) -> Option<Value> + ?Sized,
{
    series.iter().filter_map(move |&(r, [g, p])| Some(([g, p, ""], value(r)?)))
}

/// Each of `items` with each of `kinds`, item by item: one flat iterator
/// of two counters, cheaper to walk than a nested one (`flat_map`), which
/// moves its inner iterator's state through memory at every step.
fn each_with<'a, T: Copy, K>(items: &'a [T], kinds: &'a [K]) -> impl Iterator<Item = (T, &'a K)> + 'a {
    let (mut i, mut k) = (0, 0);
    std::iter::from_fn(move || {
        loop {
            let item = *items.get(i)?;
            if let Some(kind) = kinds.get(k) {
                k += 1;
                return Some((item, kind));
            }
            (i, k) = (i + 1, 0);
        }
    })
}

/// A violation counter in microseconds, as dcgm-exporter reports it.
fn violation_us(r: &GpuReading, policy: ViolationPolicy) -> Option<Value> {
    Some(Value::U64((r.violations.get(policy)? * 1e6).round() as u64))
}

#[cfg(test)]
mod tests;
