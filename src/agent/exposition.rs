//! Prometheus text (0.0.4) and OpenMetrics (1.0.0) exposition, rendered once
//! per sample, and the content negotiation a scrape does.
//!
//! [`families`] says what is written, [`labels`] builds the label sets, and
//! [`crate::family_writer`] writes both formats in one pass. A golden test
//! checks the OpenMetrics body against what `prometheus-client` writes for
//! the same series. Series with no value are left out, never written as
//! zero. A body is gzipped the first time a scrape asks for it, once per
//! sample.

use std::io::Write;
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::HeaderValue;

mod families;
mod labels;

use labels::SampleLabels;

use super::sample::NodeReading;
use crate::family_writer::{FamilyWriter, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

/// The `/metrics` bodies of one sample: text and OpenMetrics, each gzipped
/// when a scrape first asks for it.
#[derive(Debug, Default)]
pub struct Exposition {
    text: Bytes,
    openmetrics: Bytes,
    text_gzip: OnceLock<Bytes>,
    openmetrics_gzip: OnceLock<Bytes>,
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

/// The label that names the node on dcgm-exporter's families.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HostnameLabel {
    /// `hostname`, as dcgm-exporter writes it since 4.8.3.
    #[default]
    #[value(name = "hostname")]
    Lowercase,
    /// `Hostname`, as dcgm-exporter wrote it before 4.8.3, for dashboards
    /// and queries pinned to it.
    #[value(name = "Hostname")]
    Capitalized,
}

impl HostnameLabel {
    /// The label's name.
    pub fn name(self) -> &'static str {
        match self {
            HostnameLabel::Lowercase => "hostname",
            HostnameLabel::Capitalized => "Hostname",
        }
    }
}

/// How `/metrics` names what it writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Naming {
    /// Which metric names.
    pub names: MetricNames,
    /// The node's label on dcgm-exporter's families.
    pub dcgm_hostname_label: HostnameLabel,
}

impl From<MetricNames> for Naming {
    fn from(names: MetricNames) -> Self {
        Self { names, ..Self::default() }
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
    /// The bodies of a sample.
    pub fn new(text: Bytes, openmetrics: Bytes) -> Self {
        Self { text, openmetrics, ..Self::default() }
    }

    /// The body for a representation (a reference-counted clone), gzipped
    /// now if no scrape of this sample asked for it before.
    pub fn body(&self, r: Representation) -> Bytes {
        let (plain, gzipped) = match r.openmetrics {
            false => (&self.text, &self.text_gzip),
            true => (&self.openmetrics, &self.openmetrics_gzip),
        };
        match r.gzip {
            false => plain.clone(),
            true => gzipped.get_or_init(|| gzip(plain)).clone(),
        }
    }

    /// The text body.
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// The OpenMetrics body.
    pub fn openmetrics(&self) -> &Bytes {
        &self.openmetrics
    }
}

/// Renders a sample in both formats.
pub fn render(data: &NodeReading, naming: Naming) -> Exposition {
    Renderer::default().render(data, naming)
}

/// Renders sample after sample, keeping its label sets and, once no reader
/// holds them, the last bodies' buffers: once their sizes settle a render
/// grows no buffer.
#[derive(Debug, Default)]
pub struct Renderer {
    labels: SampleLabels,
    /// Buffers of an earlier sample's bodies, text then OpenMetrics.
    spare: [Vec<u8>; 2],
}

impl Renderer {
    /// Renders a sample in both formats.
    pub fn render(&mut self, data: &NodeReading, naming: Naming) -> Exposition {
        self.labels.build(data, naming);
        let [text, openmetrics] = std::mem::take(&mut self.spare);
        let mut writer = FamilyWriter::new(text, openmetrics);
        families::write(&mut writer, data, &self.labels, naming.names);
        let (text, openmetrics) = writer.finish();
        Exposition::new(text.into(), openmetrics.into())
    }

    /// Takes back an earlier sample's bodies for the next render to write
    /// into; a body a reader still holds is left to it.
    pub fn recycle(&mut self, exposition: Exposition) {
        for (body, spare) in [exposition.text, exposition.openmetrics].into_iter().zip(&mut self.spare) {
            if let Ok(body) = body.try_into_mut() {
                *spare = body.into();
            }
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

#[cfg(test)]
mod tests;
