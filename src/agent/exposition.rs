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

use super::sample::{GpuState, SampleData};
use crate::attribution::{PodGpuUsage, Sharing};
use crate::gpu::{ClockEventReason, GpuCall, GpuReading, MigDevice, ViolationPolicy};

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
    Renderer::default().render_plain(data, names)
}

/// Renders sample after sample, keeping its working buffers between them:
/// once their sizes settle a render grows no buffer and touches no fresh
/// page, and each body is allocated once, at its size.
#[derive(Debug, Default)]
pub struct Renderer {
    /// The last text body's length, the next one's starting capacity.
    text_len: usize,
    /// Bodies of an earlier sample that no reader holds any more.
    spare: Vec<Vec<u8>>,
    counters: Vec<u8>,
    headers: Vec<u8>,
    families: Vec<CounterFamily>,
}

impl Renderer {
    /// Renders a sample in both formats, plain and gzipped.
    pub fn render(&mut self, data: &SampleData, names: MetricNames) -> Exposition {
        let (text, openmetrics) = self.render_plain(data, names);
        Exposition {
            text_gzip: gzip(&text),
            openmetrics_gzip: gzip(&openmetrics),
            text: text.into(),
            openmetrics: openmetrics.into(),
        }
    }

    /// Renders the plain text and OpenMetrics bodies.
    pub fn render_plain(&mut self, data: &SampleData, names: MetricNames) -> (Vec<u8>, Vec<u8>) {
        let estimate = 64 + data.gpus.len() * 1800 + data.usages.len() * 700;
        self.counters.clear();
        self.headers.clear();
        self.families.clear();
        let mut text = self.spare.pop().unwrap_or_default();
        text.reserve(self.text_len.max(estimate));
        let mut e =
            Encoder { text, counters: &mut self.counters, headers: &mut self.headers, families: &mut self.families };
        encode(&mut e, data, names);
        let bodies = e.finish(self.spare.pop().unwrap_or_default());
        self.text_len = bodies.0.len();
        bodies
    }

    /// Takes back an earlier sample's plain bodies for the next render to
    /// write into; a body a reader still holds is left to it.
    pub fn recycle(&mut self, exposition: Exposition) {
        for body in [exposition.text, exposition.openmetrics] {
            if let Ok(mut body) = body.try_into_mut()
                && self.spare.len() < 2
            {
                body.clear();
                self.spare.push(body.into());
            }
        }
    }
}

fn gzip(body: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    encoder.write_all(body).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail").into()
}

/// A sample value.
#[derive(Clone, Copy)]
enum Value {
    F64(f64),
    U64(u64),
}

/// A series' labels as three pre-rendered parts, written comma-joined: the
/// GPU's (or the agent's) set, the pod's set, and one that tells this series
/// apart (often a static string). Any may be empty. Sets are rendered once
/// per sample and shared by every series that carries them.
type LabelParts<'a> = [&'a str; 3];

/// Label sets rendered back to back into one buffer: one allocation for all
/// the GPUs (or pods) of a sample instead of one per set.
struct LabelSets {
    text: String,
    ends: Vec<usize>,
}

impl LabelSets {
    fn with_capacity(sets: usize, bytes_each: usize) -> Self {
        Self { text: String::with_capacity(sets * bytes_each), ends: Vec::with_capacity(sets) }
    }

    /// Adds one set of `name="value"` pairs.
    fn push<'v>(&mut self, pairs: impl IntoIterator<Item = (&'static str, &'v str)>) {
        let start = self.text.len();
        for (name, value) in pairs {
            if self.text.len() > start {
                self.text.push(',');
            }
            push_label(&mut self.text, name, value);
        }
        self.ends.push(self.text.len());
    }

    /// Adds one set: `prefix` (a rendered set) and then `pairs`.
    fn push_after<'v>(&mut self, prefix: &str, pairs: impl IntoIterator<Item = (&'static str, &'v str)>) {
        let start = self.text.len();
        self.text.push_str(prefix);
        for (name, value) in pairs {
            if self.text.len() > start {
                self.text.push(',');
            }
            push_label(&mut self.text, name, value);
        }
        self.ends.push(self.text.len());
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// Writes gauge families straight into the text body, and counter samples
/// into a buffer of their own with each family's two headers kept apart:
/// the formats differ only in how a counter's header names it, so every
/// sample is written once.
struct Encoder<'r> {
    text: Vec<u8>,
    counters: &'r mut Vec<u8>,
    headers: &'r mut Vec<u8>,
    families: &'r mut Vec<CounterFamily>,
}

/// Where one counter family's headers and samples lie in the encoder's
/// buffers.
#[derive(Debug)]
struct CounterFamily {
    text_header: std::ops::Range<usize>,
    openmetrics_header: std::ops::Range<usize>,
    samples: std::ops::Range<usize>,
}

impl Encoder<'_> {
    /// Writes a gauge family; its header only if it has a series.
    fn gauge<'a>(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (LabelParts<'a>, Value)>) {
        let mut series = series.into_iter().peekable();
        if series.peek().is_none() {
            return;
        }
        let out = &mut self.text;
        header(out, name, help, "gauge");
        for (labels, value) in series {
            sample(out, name, "", labels, value);
        }
    }

    /// Writes a counter family: `name_total` samples, typed `name` in
    /// OpenMetrics and `name_total` in the text format; its header only if
    /// it has a series.
    fn counter<'a>(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (LabelParts<'a>, Value)>) {
        self.counter_family(name, help, "_total", "counter", series);
    }

    /// Writes a counter named as dcgm-exporter names it, without `_total`:
    /// typed `counter` in the text format (what dcgm-exporter serves) and
    /// `unknown` in OpenMetrics, whose counters must end in `_total`.
    fn bare_counter<'a>(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (LabelParts<'a>, Value)>) {
        self.counter_family(name, help, "", "unknown", series);
    }

    /// `suffix` ends every sample's name and the text format's header name;
    /// `openmetrics_kind` types the family in OpenMetrics.
    fn counter_family<'a>(
        &mut self,
        name: &str,
        help: &str,
        suffix: &str,
        openmetrics_kind: &str,
        series: impl IntoIterator<Item = (LabelParts<'a>, Value)>,
    ) {
        let mut series = series.into_iter().peekable();
        if series.peek().is_none() {
            return;
        }
        let start = self.headers.len();
        header_parts(self.headers, [name, suffix], help, "counter");
        let text_end = self.headers.len();
        header_parts(self.headers, [name, ""], help, openmetrics_kind);
        let samples_start = self.counters.len();
        for (labels, value) in series {
            sample(self.counters, name, suffix, labels, value);
        }
        self.families.push(CounterFamily {
            text_header: start..text_end,
            openmetrics_header: text_end..self.headers.len(),
            samples: samples_start..self.counters.len(),
        });
    }

    /// The text and OpenMetrics bodies; the latter is written into
    /// `openmetrics`, an empty buffer, grown once to its size.
    fn finish(self, mut openmetrics: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        let Encoder { mut text, counters, headers, families } = self;
        let gauges = text.len();
        let openmetrics_headers: usize = families.iter().map(|f| f.openmetrics_header.len()).sum();
        openmetrics.reserve(gauges + openmetrics_headers + counters.len() + 6);
        openmetrics.extend_from_slice(&text);
        text.reserve(headers.len() - openmetrics_headers + counters.len());
        for family in families.iter() {
            text.extend_from_slice(&headers[family.text_header.clone()]);
            text.extend_from_slice(&counters[family.samples.clone()]);
            openmetrics.extend_from_slice(&headers[family.openmetrics_header.clone()]);
            openmetrics.extend_from_slice(&counters[family.samples.clone()]);
        }
        openmetrics.extend_from_slice(b"# EOF\n");
        (text, openmetrics)
    }
}

fn header(out: &mut Vec<u8>, name: &str, help: &str, kind: &str) {
    header_parts(out, [name, ""], help, kind);
}

/// A header whose name is written in two parts (a name and a suffix).
fn header_parts(out: &mut Vec<u8>, [name, suffix]: [&str; 2], help: &str, kind: &str) {
    for part in ["# HELP ", name, suffix, " ", help, ".\n# TYPE ", name, suffix, " ", kind, "\n"] {
        out.extend_from_slice(part.as_bytes());
    }
}

fn sample(out: &mut Vec<u8>, name: &str, suffix: &str, parts: LabelParts<'_>, value: Value) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    // Written out rather than looped: this runs for every series.
    let [gpu, pod, own] = parts;
    if !(gpu.is_empty() && pod.is_empty() && own.is_empty()) {
        out.push(b'{');
        out.extend_from_slice(gpu.as_bytes());
        if !pod.is_empty() {
            if !gpu.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(pod.as_bytes());
        }
        if !own.is_empty() {
            if !(gpu.is_empty() && pod.is_empty()) {
                out.push(b',');
            }
            out.extend_from_slice(own.as_bytes());
        }
        out.push(b'}');
    }
    out.push(b' ');
    match value {
        Value::F64(v) => write_f64(out, v),
        Value::U64(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
    }
    out.push(b'\n');
}

/// Seconds since the Unix epoch, to the millisecond: finer than any sample
/// interval, and short to write.
fn epoch_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as f64 / 1000.0
}

/// Writes `v` as dtoa writes it (the shortest text that reads back as `v`),
/// taking a fast path for the values GPUs mostly have.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    // Whole numbers: itoa plus ".0", several times faster than dtoa.
    // (The cast and compare are two instructions; `fract` is a call.)
    if v.abs() < 1e15 && (v as i64) as f64 == v {
        out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
        out.extend_from_slice(b".0");
        return;
    }
    // Up to three decimals (watts, percents, joules from millijoules): the
    // exact decimal is the shortest text for `v`, since below 1e12 doubles
    // lie closer together than half a thousandth, so no shorter decimal
    // reads back as `v`.
    let thousandths = v * 1000.0;
    if v.abs() < 1e12 && thousandths == thousandths.round() && thousandths / 1000.0 == v {
        let n = thousandths as i64;
        if n < 0 {
            out.push(b'-');
        }
        let n = n.unsigned_abs();
        out.extend_from_slice(itoa::Buffer::new().format(n / 1000).as_bytes());
        let mut fraction = n % 1000;
        let mut digits = [b'0'; 4];
        digits[0] = b'.';
        let mut len = 4;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            len -= 1;
        }
        for slot in digits[1..len].iter_mut().rev() {
            *slot = b'0' + (fraction % 10) as u8;
            fraction /= 10;
        }
        out.extend_from_slice(&digits[..len]);
        return;
    }
    out.extend_from_slice(dtoa::Buffer::new().format(v).as_bytes());
}

/// Appends `name="value"`, escaping the value.
fn push_label(labels: &mut String, name: &str, value: &str) {
    labels.push_str(name);
    labels.push_str("=\"");
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        labels.push_str(value);
    } else {
        for c in value.chars() {
            match c {
                '\\' => labels.push_str("\\\\"),
                '"' => labels.push_str("\\\""),
                '\n' => labels.push_str("\\n"),
                c => labels.push(c),
            }
        }
    }
    labels.push('"');
}

/// Every GPU's native labels: `node`, `gpu`, and `uuid`, `model` when known.
fn gpu_label_sets(node: &str, gpus: &[GpuState]) -> LabelSets {
    let mut sets = LabelSets::with_capacity(gpus.len(), 160);
    for gpu in gpus {
        let mut index = itoa::Buffer::new();
        let index = index.format(gpu.identity.index);
        // A GPU lost before it could name itself has no UUID or model: an
        // empty label is no label to Prometheus, so none is written.
        let named = [("uuid", gpu.identity.uuid.as_str()), ("model", gpu.identity.model.as_str())];
        sets.push([("node", node), ("gpu", index)].into_iter().chain(named.into_iter().filter(|(_, v)| !v.is_empty())));
    }
    sets
}

/// Every MIG device's labels, GPU by GPU: its GPU's set (`gpu_sets`) then
/// `names` (the UUID, GPU instance, compute instance and profile labels of
/// the naming scheme). Returns the sets and, per GPU, the position of its
/// first MIG device's set.
fn mig_label_sets(gpus: &[GpuState], gpu_sets: &LabelSets, names: [&'static str; 4]) -> (LabelSets, Vec<usize>) {
    let count: usize = gpus.iter().map(|g| g.reading.mig_devices.len()).sum();
    if count == 0 {
        // No GPU in MIG mode (the usual case): nothing to index, nothing allocated.
        return (LabelSets::with_capacity(0, 0), Vec::new());
    }
    let mut sets = LabelSets::with_capacity(count, 256);
    let mut first = Vec::with_capacity(gpus.len());
    for (i, gpu) in gpus.iter().enumerate() {
        first.push(sets.ends.len());
        for mig in &gpu.reading.mig_devices {
            let (mut gi, mut ci) = (itoa::Buffer::new(), itoa::Buffer::new());
            let pairs = [
                (names[0], mig.uuid.as_str()),
                (names[1], gi.format(mig.gpu_instance_id)),
                (names[2], ci.format(mig.compute_instance_id)),
                (names[3], mig.profile.as_str()),
            ];
            sets.push_after(gpu_sets.get(i), pairs.into_iter().filter(|(name, v)| !name.is_empty() && !v.is_empty()));
        }
    }
    (sets, first)
}

/// The MIG devices' series of one family: each device's labels, with its
/// holder's pod labels when exactly one container holds it.
fn mig_series<'a>(
    data: &'a SampleData,
    migs: &'a LabelSets,
    first: &[usize],
    pods: &'a LabelSets,
    value: impl Fn(&MigDevice) -> Option<Value>,
) -> Vec<(LabelParts<'a>, Value)> {
    let mut series = Vec::new();
    for (i, gpu) in data.gpus.iter().enumerate().filter(|(_, g)| g.up) {
        for (m, mig) in gpu.reading.mig_devices.iter().enumerate() {
            let Some(v) = value(mig) else { continue };
            let mut holders = data.usages.iter().enumerate().filter(|(_, u)| u.gpu == i && u.mig == Some(m));
            let pod = match (holders.next(), holders.next()) {
                (Some((k, _)), None) => pods.get(k),
                _ => "",
            };
            series.push(([migs.get(first[i] + m), pod, ""], v));
        }
    }
    series
}

/// Every usage's pod labels: `namespace`, `pod`, `container`.
fn pod_label_sets(usages: &[PodGpuUsage]) -> LabelSets {
    let mut sets = LabelSets::with_capacity(usages.len(), 112);
    for u in usages {
        sets.push([("namespace", u.namespace.as_str()), ("pod", u.pod.as_str()), ("container", u.container.as_str())]);
    }
    sets
}

/// Writes every family of a sample.
fn encode(e: &mut Encoder<'_>, data: &SampleData, names: MetricNames) {
    let node = data.node.as_str();
    let pods = pod_label_sets(&data.usages);
    if names.native() {
        native_families(e, data, &pods);
    }
    if names.dcgm() {
        dcgm_families(e, data, &pods);
    }

    // The agent's own state, labelled with its node like every GPU series.
    let mut own = String::with_capacity(32);
    push_label(&mut own, "node", node);
    let own = own.as_str();
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
    e.counter(
        "kube_gpu_metrics_nvml_errors",
        "Failed NVML calls, by call (not-supported answers are not errors)",
        GpuCall::ALL.iter().zip(c.gpu_errors).map(|(call, count)| ([own, "", call.label()], n(count))),
    );
    e.counter(
        "kube_gpu_metrics_gpu_read_timeouts",
        "GPU reads that missed their deadline; the GPU is reported down for that sample",
        [([own, "", ""], n(c.gpu_read_timeouts))],
    );
    e.counter(
        "kube_gpu_metrics_pod_resources_errors",
        "Failed kubelet PodResources calls",
        [([own, "", ""], n(c.pod_resources_errors))],
    );
    e.counter(
        "kube_gpu_metrics_scrapes",
        "Scrapes of /metrics, by format, as of this sample",
        [
            ([own, "", "format=\"text\""], n(c.scrapes_text)),
            ([own, "", "format=\"openmetrics\""], n(c.scrapes_openmetrics)),
        ],
    );
}

/// The `nvidia_gpu_*` families; `pods` holds each usage's pod labels.
fn native_families(e: &mut Encoder<'_>, data: &SampleData, pods: &LabelSets) {
    let gpus = gpu_label_sets(&data.node, &data.gpus);
    // A GPU held by exactly one container carries that container's labels.
    let device: Vec<[&str; 2]> = (0..data.gpus.len())
        .map(|i| {
            let mut holders = data.usages.iter().enumerate().filter(|(_, u)| u.gpu == i && u.mig.is_none());
            match (holders.next(), holders.next()) {
                (Some((k, only)), None) if only.sharing == Sharing::Exclusive => [gpus.get(i), pods.get(k)],
                _ => [gpus.get(i), ""],
            }
        })
        .collect();

    let up = || data.gpus.iter().zip(&device).filter(|(g, _)| g.up);
    let f = |v: Option<f64>| v.map(Value::F64);
    let u = |v: Option<u64>| v.map(Value::U64);

    let mut info = LabelSets::with_capacity(data.gpus.len(), 96);
    for gpu in &data.gpus {
        let versions =
            [("driver_version", data.driver_version.as_deref()), ("cuda_version", data.cuda_version.as_deref())];
        info.push(
            [("pci_bus_id", gpu.identity.pci_bus_id.as_str())]
                .into_iter()
                .chain(versions.into_iter().filter_map(|(k, v)| Some((k, v?))))
                .filter(|(_, v)| !v.is_empty()),
        );
    }
    e.gauge(
        "nvidia_gpu_info",
        "GPU identity, 1 for every GPU the agent found, with its PCI bus ID and the driver and CUDA versions",
        device.iter().enumerate().map(|(i, &[g, p])| ([g, p, info.get(i)], Value::U64(1))),
    );
    e.gauge(
        "nvidia_gpu_up",
        "1 when the GPU answered this sample, 0 when it stopped answering",
        data.gpus.iter().zip(&device).map(|(g, &[gl, p])| ([gl, p, ""], Value::U64(u64::from(g.up)))),
    );
    e.gauge(
        "nvidia_gpu_utilization_percent",
        "Percent of time a kernel ran on the GPU over the driver's sample period",
        up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], f(g.reading.utilization_percent)?))),
    );
    e.gauge(
        "nvidia_gpu_memory_utilization_percent",
        "Percent of time device memory was read or written",
        up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], f(g.reading.memory_utilization_percent)?))),
    );
    e.gauge(
        "nvidia_gpu_memory_used_bytes",
        "Device memory in use",
        up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], u(g.reading.memory_used_bytes)?))),
    );
    e.gauge(
        "nvidia_gpu_memory_total_bytes",
        "Device memory in total",
        up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], u(g.reading.memory_total_bytes)?))),
    );
    e.gauge(
        "nvidia_gpu_temperature_celsius",
        "GPU core temperature",
        up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], f(g.reading.temperature_celsius)?))),
    );
    e.gauge(
        "nvidia_gpu_power_watts",
        "Board power draw",
        up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], f(g.reading.power_watts)?))),
    );
    e.gauge(
        "nvidia_gpu_sm_clock_hertz",
        "Current SM clock",
        up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], f(g.reading.sm_clock_hertz)?))),
    );
    telemetry_families(e, data, &device);
    let (migs, first) =
        mig_label_sets(&data.gpus, &gpus, ["mig_uuid", "gpu_instance_id", "compute_instance_id", "mig_profile"]);
    e.gauge(
        "nvidia_gpu_mig_memory_used_bytes",
        "Memory in use on a MIG device (a GPU in MIG mode)",
        mig_series(data, &migs, &first, pods, |m| m.memory_used_bytes.map(Value::U64)),
    );
    e.gauge(
        "nvidia_gpu_mig_memory_total_bytes",
        "Memory of a MIG device",
        mig_series(data, &migs, &first, pods, |m| m.memory_total_bytes.map(Value::U64)),
    );
    e.gauge(
        "nvidia_gpu_mig_utilization_percent",
        "Share of the last interval a MIG device's GPU instance was busy (GPM graphics utilization; Hopper and newer)",
        mig_series(data, &migs, &first, pods, |m| m.utilization_percent.map(Value::F64)),
    );
    // A pod's series on a GPU: the GPU's labels (its MIG device's, on one),
    // the pod's, and `sharing`.
    let gpu_of = |u: &PodGpuUsage| match u.mig {
        Some(m) => migs.get(first[u.gpu] + m),
        None => gpus.get(u.gpu),
    };
    let per_pod = |k: usize, u: &PodGpuUsage| [gpu_of(u), pods.get(k), u.sharing.label()];
    e.gauge(
        "nvidia_gpu_pod_utilization_percent",
        "A pod's utilization of a GPU: the device value on an exclusive GPU, its processes' share on a shared one",
        data.usages
            .iter()
            .enumerate()
            .filter_map(|(k, u)| Some((per_pod(k, u), Value::F64(u.utilization_percent.ok()?)))),
    );
    e.gauge(
        "nvidia_gpu_pod_memory_utilization_percent",
        "A pod's memory-controller utilization of a GPU",
        data.usages.iter().enumerate().filter_map(|(k, u)| Some((per_pod(k, u), f(u.memory_utilization_percent)?))),
    );
    e.gauge(
        "nvidia_gpu_pod_memory_used_bytes",
        "Device memory a pod's processes hold on a GPU (NVML's running-process lists); memory no pod's process holds is only in nvidia_gpu_memory_used_bytes",
        data.usages.iter().enumerate().filter_map(|(k, u)| {
            Some((per_pod(k, u), Value::U64(u.memory_used_bytes?)))
        }),
    );
    e.gauge(
        "nvidia_gpu_pod_last_active_timestamp_seconds",
        "When the pod's utilization share of the GPU was last above zero (or, never seen active, when the agent first saw it hold the GPU), seconds since the Unix epoch",
        data.usages.iter().zip(&data.accounts).enumerate().map(|(k, (u, account))| {
            let at = epoch_seconds(account.last_active);
            (per_pod(k, u), Value::F64(at))
        }),
    );
    e.counter(
        "nvidia_gpu_pod_energy_joules",
        "The pod's part of the GPU's energy since the agent first saw it there, split by utilization shares",
        data.usages
            .iter()
            .zip(&data.accounts)
            .enumerate()
            .map(|(k, (u, account))| (per_pod(k, u), Value::F64(account.energy_joules))),
    );
    e.gauge(
        "kube_gpu_metrics_pod_attribution_unresolved",
        "1 for a pod whose share of a GPU cannot be measured, with the reason",
        data.usages
            .iter()
            .enumerate()
            .filter_map(|(k, u)| Some(([gpu_of(u), pods.get(k), u.utilization_percent.err()?.label()], Value::U64(1)))),
    );
}

/// The telemetry families beyond utilization, memory, temperature, power
/// and SM clock; `device` holds each GPU's label parts.
fn telemetry_families(e: &mut Encoder<'_>, data: &SampleData, device: &[[&str; 2]]) {
    let up = || data.gpus.iter().zip(device).filter(|(g, _)| g.up);
    let gauge = |e: &mut Encoder<'_>, name: &str, help: &str, value: &dyn Fn(&GpuReading) -> Option<Value>| {
        e.gauge(name, help, up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], value(&g.reading)?))));
    };
    let f = |v: Option<f64>| v.map(Value::F64);
    let u = |v: Option<u64>| v.map(Value::U64);
    let flag = |v: bool| Value::U64(u64::from(v));
    gauge(e, "nvidia_gpu_memory_clock_hertz", "Current memory clock", &|r| f(r.memory_clock_hertz));
    gauge(e, "nvidia_gpu_memory_temperature_celsius", "Memory (HBM) temperature", &|r| f(r.memory_temperature_celsius));
    gauge(e, "nvidia_gpu_pcie_transmit_bytes_per_second", "PCIe transmit throughput (NVML's 20 ms window)", &|r| {
        f(r.pcie_transmit_bytes_per_second)
    });
    gauge(e, "nvidia_gpu_pcie_receive_bytes_per_second", "PCIe receive throughput (NVML's 20 ms window)", &|r| {
        f(r.pcie_receive_bytes_per_second)
    });
    gauge(e, "nvidia_gpu_encoder_utilization_percent", "Video encoder utilization", &|r| {
        f(r.encoder_utilization_percent)
    });
    gauge(e, "nvidia_gpu_decoder_utilization_percent", "Video decoder utilization", &|r| {
        f(r.decoder_utilization_percent)
    });
    gauge(e, "nvidia_gpu_fan_speed_percent", "Intended speed of the first fan, percent of its maximum", &|r| {
        f(r.fan_speed_percent)
    });
    gauge(e, "nvidia_gpu_performance_state", "Performance state: 0 (P0, most) to 15 (P15, least)", &|r| {
        r.performance_state.map(|p| Value::U64(u64::from(p)))
    });
    gauge(e, "nvidia_gpu_memory_reserved_bytes", "Device memory the driver reserves", &|r| u(r.memory_reserved_bytes));
    gauge(e, "nvidia_gpu_power_limit_watts", "Enforced power limit", &|r| f(r.health.power_limit_watts));
    e.gauge(
        "nvidia_gpu_clock_event_active",
        "1 while a clock-event (throttle) reason holds clocks back, by reason",
        up().filter_map(|(g, d)| Some((g.reading.clock_events?, d))).flat_map(|(mask, &[gl, p])| {
            ClockEventReason::ALL.iter().map(move |r| ([gl, p, r.label()], flag(mask & r.bit() != 0)))
        }),
    );
    e.counter(
        "nvidia_gpu_clock_event_violation_seconds",
        "Time clocks were held back by a policy since the driver loaded, by reason",
        up().flat_map(|(g, &[gl, p])| {
            ViolationPolicy::ALL
                .iter()
                .filter_map(move |v| Some(([gl, p, v.label()], Value::F64(g.reading.violations.get(*v)?))))
        }),
    );
    // XID codes as label values, rendered once per sample.
    let mut xids = LabelSets::with_capacity(8, 12);
    let mut xid_series: Vec<(usize, u64)> = Vec::new();
    for (i, gpu) in data.gpus.iter().enumerate().filter(|(_, g)| g.up) {
        for (&code, &count) in gpu.reading.xid.iter().flat_map(|x| &x.counts) {
            xids.push([("xid", itoa::Buffer::new().format(code))]);
            xid_series.push((i, count));
        }
    }
    e.counter(
        "nvidia_gpu_xid_errors",
        "XID errors since the agent started, by XID code (NVML critical XID events)",
        xid_series.iter().enumerate().map(|(k, &(i, count))| {
            let [gl, p] = device[i];
            ([gl, p, xids.get(k)], Value::U64(count))
        }),
    );
    e.counter(
        "nvidia_gpu_energy_joules",
        "Energy used since the driver loaded",
        up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], Value::F64(g.reading.energy_joules?)))),
    );
    e.counter(
        "nvidia_gpu_pcie_replays",
        "PCIe replays (retries) since the driver loaded",
        up().filter_map(|(g, &[gl, p])| Some(([gl, p, ""], Value::U64(g.reading.pcie_replays?)))),
    );
    e.counter(
        "nvidia_gpu_ecc_errors",
        "ECC errors while ECC is on: corrected or uncorrected, since the driver loaded (volatile) or over the board's life (aggregate)",
        up().filter_map(|(g, d)| Some((g.reading.health.ecc?, d))).flat_map(|(ecc, &[gl, p])| {
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
        up().filter_map(|(g, d)| Some((g.reading.health.remapped_rows?, d))).flat_map(|(rows, &[gl, p])| {
            [("error=\"correctable\"", rows.correctable), ("error=\"uncorrectable\"", rows.uncorrectable)]
                .map(|(own, v)| ([gl, p, own], Value::U64(v)))
        }),
    );
    gauge(e, "nvidia_gpu_remapped_rows_pending", "1 while a row remapping waits for a GPU reset", &|r| {
        Some(flag(r.health.remapped_rows?.pending))
    });
    gauge(e, "nvidia_gpu_remapped_rows_failed", "1 when a row remapping failed: the GPU needs service", &|r| {
        Some(flag(r.health.remapped_rows?.failure))
    });
    e.gauge(
        "nvidia_gpu_retired_pages",
        "Memory pages retired, by cause",
        up().filter_map(|(g, d)| Some((g.reading.health.retired_pages?, d))).flat_map(|(pages, &[gl, p])| {
            [("cause=\"single_bit_ecc\"", pages.single_bit), ("cause=\"double_bit_ecc\"", pages.double_bit)]
                .map(|(own, v)| ([gl, p, own], Value::U64(v)))
        }),
    );
    gauge(e, "nvidia_gpu_retired_pages_pending", "1 while pages wait to be retired at the next reset", &|r| {
        Some(flag(r.health.retired_pages?.pending?))
    });
}

/// Every GPU's dcgm-exporter labels: `gpu`, `UUID`, `pci_bus_id`, `device`,
/// `modelName`, `Hostname`, and `DCGM_FI_DRIVER_VERSION` where known.
fn dcgm_label_sets(node: &str, driver: Option<&str>, gpus: &[GpuState]) -> LabelSets {
    let mut sets = LabelSets::with_capacity(gpus.len(), 220);
    for gpu in gpus {
        let mut index = itoa::Buffer::new();
        let index = index.format(gpu.identity.index);
        let device = ["nvidia", index].concat();
        let pci = Some(gpu.identity.pci_bus_id.as_str()).filter(|p| !p.is_empty());
        sets.push(
            [("gpu", Some(index)), ("UUID", Some(gpu.identity.uuid.as_str())), ("pci_bus_id", pci)]
                .into_iter()
                .chain([
                    ("device", Some(device.as_str())),
                    ("modelName", Some(gpu.identity.model.as_str())),
                    ("Hostname", Some(node)),
                    ("DCGM_FI_DRIVER_VERSION", driver),
                ])
                .filter_map(|(k, v)| Some((k, v?))),
        );
    }
    sets
}

/// The dcgm-exporter families for the fields the agent reads, in its names,
/// units (MiB, MHz, W) and labels. As with dcgm-exporter's pod mapping, a GPU
/// held by pods has one series per holding container, each with the
/// device's value; a GPU no pod holds has one series without pod labels.
fn dcgm_families(e: &mut Encoder<'_>, data: &SampleData, pods: &LabelSets) {
    let gpus = dcgm_label_sets(&data.node, data.driver_version.as_deref(), &data.gpus);
    let mut series: Vec<(&GpuReading, [&str; 2])> = Vec::with_capacity(data.gpus.len() + data.usages.len());
    for (i, gpu) in data.gpus.iter().enumerate().filter(|(_, g)| g.up) {
        let before = series.len();
        for (k, _) in data.usages.iter().enumerate().filter(|(_, u)| u.gpu == i && u.mig.is_none()) {
            series.push((&gpu.reading, [gpus.get(i), pods.get(k)]));
        }
        if series.len() == before {
            series.push((&gpu.reading, [gpus.get(i), ""]));
        }
    }
    const MIB: u64 = 1 << 20;
    // dcgm-exporter writes whole numbers for integer fields.
    let whole = |v: f64| Value::U64(v.max(0.0).round() as u64);
    let family_of = |value: &dyn Fn(&GpuReading) -> Option<Value>| {
        series.iter().filter_map(|&(r, [g, p])| Some(([g, p, ""], value(r)?))).collect::<Vec<_>>()
    };
    // MIG devices have their own framebuffer series, with dcgm-exporter's
    // GPU instance labels.
    let (migs, first) = mig_label_sets(&data.gpus, &gpus, ["", "GPU_I_ID", "", "GPU_I_PROFILE"]);
    let mig_family = |name: &str| match name {
        "DCGM_FI_DEV_FB_FREE" => mig_series(data, &migs, &first, pods, |m| {
            Some(Value::U64(m.memory_total_bytes?.saturating_sub(m.memory_used_bytes?) / MIB))
        }),
        "DCGM_FI_DEV_FB_USED" => {
            mig_series(data, &migs, &first, pods, |m| Some(Value::U64(m.memory_used_bytes? / MIB)))
        }
        _ => Vec::new(),
    };
    let mut family = |name: &str, help: &str, value: &dyn Fn(&GpuReading) -> Option<Value>| {
        let mut series = family_of(value);
        series.extend(mig_family(name));
        e.gauge(name, help, series);
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
    let counters: [(&str, &str, &ReadValue<'_>); 17] = [
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
        e.bare_counter(name, help, family_of(value));
    }
    for (name, help, rows) in [
        ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for uncorrectable errors", true),
        ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for correctable errors", false),
    ] {
        e.bare_counter(
            name,
            help,
            family_of(&|r| {
                let remapped = r.health.remapped_rows?;
                Some(Value::U64(if rows { remapped.uncorrectable } else { remapped.correctable }))
            }),
        );
    }
}

/// How a family's value is read from a GPU's reading.
type ReadValue<'a> = dyn Fn(&GpuReading) -> Option<Value> + 'a;

/// A violation counter in microseconds, as dcgm-exporter reports it.
fn violation_us(r: &GpuReading, policy: ViolationPolicy) -> Option<Value> {
    Some(Value::U64((r.violations.get(policy)? * 1e6).round() as u64))
}

#[cfg(test)]
mod tests;
