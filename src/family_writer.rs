//! Writes metric families in the Prometheus text format (0.0.4) and in
//! OpenMetrics (1.0.0) in one pass: the agent's `/metrics` and the adapter's
//! own use it.
//!
//! The two formats differ only in a counter's headers (the text format names
//! the family `name_total`, OpenMetrics `name`) and in OpenMetrics' closing
//! `# EOF`; a family's sample lines are written once, into the text body,
//! and copied into the OpenMetrics one when the family ends. A family's headers are written with its first series, so a family
//! without series is left out. Values are written as `itoa` (integers) and
//! `dtoa` (floats) write them, which is what `prometheus-client` writes.

/// `Content-Type` of the text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A sample value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A float: a gauge, or a counter of seconds or joules.
    F64(f64),
    /// An integer.
    U64(u64),
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::U64(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::U64(u64::from(v))
    }
}

/// What a family is, for its `# TYPE` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A gauge.
    Gauge,
    /// A counter: samples named `name_total`.
    Counter,
    /// A counter named without `_total`, as dcgm-exporter names them: typed
    /// `counter` in the text format (what dcgm-exporter serves) and
    /// `unknown` in OpenMetrics, whose counters must end in `_total`.
    BareCounter,
}

/// The two bodies being written.
#[derive(Debug, Default)]
pub struct FamilyWriter {
    text: Vec<u8>,
    openmetrics: Vec<u8>,
    /// The family being written.
    family: Option<Family>,
    /// Where its samples begin in the text body, once its headers are
    /// written.
    samples_at: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
}

impl FamilyWriter {
    /// A writer into two empty buffers (their capacity is kept).
    pub fn new(mut text: Vec<u8>, mut openmetrics: Vec<u8>) -> Self {
        text.clear();
        openmetrics.clear();
        Self { text, openmetrics, family: None, samples_at: None }
    }

    /// Starts a family; its series follow.
    pub fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) {
        self.end_family();
        self.family = Some(Family { name, help, kind });
    }

    /// Copies the family's samples into the OpenMetrics body.
    fn end_family(&mut self) {
        if let Some(at) = self.samples_at.take() {
            self.openmetrics.extend_from_slice(&self.text[at..]);
        }
    }

    /// Writes a series of the current family: its labels are `parts`, each a
    /// rendered set of `name="value"` pairs or empty, joined with commas.
    pub fn series(&mut self, parts: &[&str], value: impl Into<Value>) {
        let Some(family) = self.family else { panic!("a series needs a family") };
        if self.samples_at.is_none() {
            self.headers(family);
            self.samples_at = Some(self.text.len());
        }
        let out = &mut self.text;
        out.extend_from_slice(family.name.as_bytes());
        if family.kind == Kind::Counter {
            out.extend_from_slice(b"_total");
        }
        let mut open = false;
        for part in parts.iter().filter(|p| !p.is_empty()) {
            out.push(if open { b',' } else { b'{' });
            out.extend_from_slice(part.as_bytes());
            open = true;
        }
        if open {
            out.push(b'}');
        }
        out.push(b' ');
        write_value(out, value.into());
        out.push(b'\n');
    }

    fn headers(&mut self, Family { name, help, kind }: Family) {
        let (text_suffix, text_kind, openmetrics_kind) = match kind {
            Kind::Gauge => ("", "gauge", "gauge"),
            Kind::Counter => ("_total", "counter", "counter"),
            Kind::BareCounter => ("", "counter", "unknown"),
        };
        header(&mut self.text, [name, text_suffix], help, text_kind);
        header(&mut self.openmetrics, [name, ""], help, openmetrics_kind);
    }

    /// The text body and the OpenMetrics one.
    pub fn finish(mut self) -> (Vec<u8>, Vec<u8>) {
        self.end_family();
        self.openmetrics.extend_from_slice(b"# EOF\n");
        (self.text, self.openmetrics)
    }
}

fn header(out: &mut Vec<u8>, [name, suffix]: [&str; 2], help: &str, kind: &str) {
    for part in ["# HELP ", name, suffix, " ", help, ".\n# TYPE ", name, suffix, " ", kind, "\n"] {
        out.extend_from_slice(part.as_bytes());
    }
}

/// Writes a value: an integer in decimal, a float as the shortest text that
/// reads back as it, and the three special floats as Prometheus spells them.
pub fn write_value(out: &mut Vec<u8>, value: Value) {
    match value {
        Value::U64(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
        Value::F64(v) if v.is_nan() => out.extend_from_slice(b"NaN"),
        Value::F64(v) if v.is_infinite() => out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" }),
        // Whole numbers (most GPU values) as dtoa writes them, several times
        // faster: the integer and ".0".
        Value::F64(v) if v.abs() < 1e15 && v.fract() == 0.0 => {
            out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
            out.extend_from_slice(b".0");
        }
        Value::F64(v) => out.extend_from_slice(dtoa::Buffer::new().format_finite(v).as_bytes()),
    }
}

/// Appends `name="value"`, escaping the value.
pub fn push_label(set: &mut String, name: &str, value: &str) {
    set.push_str(name);
    set.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => set.push_str("\\\\"),
            '"' => set.push_str("\\\""),
            '\n' => set.push_str("\\n"),
            c => set.push(c),
        }
    }
    set.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(families: impl FnOnce(&mut FamilyWriter)) -> (String, String) {
        let mut w = FamilyWriter::default();
        families(&mut w);
        let (text, openmetrics) = w.finish();
        (String::from_utf8(text).unwrap(), String::from_utf8(openmetrics).unwrap())
    }

    #[test]
    fn counters_are_named_per_format_and_gauges_alike() {
        let (text, openmetrics) = written(|w| {
            w.family("requests", "Requests", Kind::Counter);
            w.series(&["a=\"1\"", "", "b=\"2\""], 3u64);
            w.family("DCGM_FI_X", "A dcgm counter", Kind::BareCounter);
            w.series(&[], 4u64);
            w.family("temperature", "Heat", Kind::Gauge);
            w.series(&[""], 21.5);
        });
        assert_eq!(
            text,
            "# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total{a=\"1\",b=\"2\"} 3\n\
             # HELP DCGM_FI_X A dcgm counter.\n# TYPE DCGM_FI_X counter\nDCGM_FI_X 4\n\
             # HELP temperature Heat.\n# TYPE temperature gauge\ntemperature 21.5\n"
        );
        assert_eq!(
            openmetrics,
            "# HELP requests Requests.\n# TYPE requests counter\nrequests_total{a=\"1\",b=\"2\"} 3\n\
             # HELP DCGM_FI_X A dcgm counter.\n# TYPE DCGM_FI_X unknown\nDCGM_FI_X 4\n\
             # HELP temperature Heat.\n# TYPE temperature gauge\ntemperature 21.5\n# EOF\n"
        );
    }

    #[test]
    fn a_family_without_series_is_left_out() {
        let (text, openmetrics) = written(|w| w.family("empty", "Nothing", Kind::Gauge));
        assert_eq!(text, "");
        assert_eq!(openmetrics, "# EOF\n");
    }

    #[test]
    fn special_floats_are_spelled_as_prometheus_reads_them() {
        for (v, want) in [(f64::NAN, "NaN"), (f64::INFINITY, "+Inf"), (f64::NEG_INFINITY, "-Inf"), (1e21, "1e21")] {
            let mut out = Vec::new();
            write_value(&mut out, Value::F64(v));
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    proptest::proptest! {
        #[test]
        fn floats_are_written_as_dtoa_writes_them(bits: u64, whole in -1e15f64..1e15) {
            for v in [f64::from_bits(bits), whole.trunc()] {
                let mut out = Vec::new();
                write_value(&mut out, Value::F64(v));
                if v.is_finite() {
                    let mut dtoa = dtoa::Buffer::new();
                    proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), dtoa.format(v));
                }
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut set = String::new();
        push_label(&mut set, "a", "x\"y\\z\nw");
        assert_eq!(set, r#"a="x\"y\\z\nw""#);
    }
}
