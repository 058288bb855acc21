//! Writes series into the two bodies, over what the sample before wrote.
//!
//! From one sample to the next most of a body stays the same: the families,
//! every series' name and labels, and many values (memory totals, limits,
//! health counters, flags). So each series is compared with the series at
//! the same place in the sample before: when its family and label sets are
//! the same, its bytes up to the value are copied from there, and its value
//! too when unchanged, so that a run of unchanged series is one copy. Label
//! sets are compared by address: they come from [`super::labels::Labels`],
//! which keeps them in place while they are unchanged and says when it
//! rebuilt them, and then nothing of the sample before is compared. A series
//! that does not match, and every series after it, is written afresh.
//!
//! Families that seldom change can go further: written as a steady group
//! ([`Encoder::steady`]) from inputs the caller compares with the sample
//! before's, the group is copied whole while they are unchanged, without
//! walking its series.
//!
//! Both bodies lie in one buffer, sharing their gauges:
//!
//! ```text
//! [ counters, text headers | gauges | counters, OpenMetrics headers | # EOF ]
//!   `------------------ text -------'
//!                            `------------------ OpenMetrics -------------'
//! ```
//!
//! So the family code runs twice, in two passes over the same buffer: the
//! first writes the counters, the second the gauges after them (in each
//! pass the calls for the other kind return at once). The OpenMetrics
//! counters are then copied from the text ones, each family behind its
//! OpenMetrics header, itself copied from the sample before while the
//! family is the same. Every sample is written once and copied at most
//! once more.

use std::ops::Range;

use super::value::Value;
use super::value::write_value;

/// A series' labels as three pre-rendered parts, written comma-joined: the
/// GPU's (or the agent's) set, the pod's set, and one that tells this series
/// apart. Any may be empty. Each part is a kept label set or a static
/// string, which is what makes comparing addresses sound: the lifetime `'l`
/// is that of the kept sets.
pub(super) type LabelParts<'l> = [&'l str; 3];

/// What a series' bytes before its value are made of: its family, whether it
/// is the family's first (and so carries the headers), and its label parts,
/// each by address and length.
#[derive(Clone, Copy, Debug)]
pub(super) struct SeriesKey {
    /// The name's and the three parts' addresses.
    at: [usize; 4],
    /// Their lengths; the name's top bit says whether it is the first.
    lens: [u32; 4],
}

impl SeriesKey {
    fn new(name: &'static str, [gpu, pod, own]: LabelParts<'_>, first: bool) -> Self {
        let mut at = [name, gpu, pod, own].map(|s| s.as_ptr() as usize);
        let lens = [len_of(name) | u32::from(first) << 31, len_of(gpu), len_of(pod), len_of(own)];
        if lens.contains(&u32::MAX) {
            // No reference is null, so no series is of this key.
            at[0] = 0;
        }
        Self { at, lens }
    }

    /// Whether a series of `name` with `parts` has this key. Compared word
    /// by word from the arguments, not from a key built beside them: a key
    /// built on the stack and read back whole stalls the load.
    #[inline(always)]
    fn is(&self, name: &'static str, [gpu, pod, own]: LabelParts<'_>, first: bool) -> bool {
        self.at[0] == name.as_ptr() as usize
            && self.at[1] == gpu.as_ptr() as usize
            && self.at[2] == pod.as_ptr() as usize
            && self.at[3] == own.as_ptr() as usize
            && self.lens[0] == len_of(name) | u32::from(first) << 31
            && self.lens[1] == len_of(gpu)
            && self.lens[2] == len_of(pod)
            && self.lens[3] == len_of(own)
    }
}

/// A part's length, for a key. No label part nears 2 GiB; one that long
/// could not be told apart by its length, and its key matches nothing.
fn len_of(s: &str) -> u32 {
    u32::try_from(s.len()).ok().filter(|&l| l < (1 << 31) - 1).unwrap_or(u32::MAX)
}

impl Value {
    /// Equal for two values written as the same text.
    fn identity(self) -> (bool, u64) {
        match self {
            Value::F64(v) => (true, v.to_bits()),
            Value::U64(v) => (false, v),
        }
    }
}

/// One series of a stream, by length: its family's header when it is the
/// first, its name and labels up to the value, and its value and newline.
#[derive(Clone, Copy, Debug)]
pub(super) struct Line {
    key: SeriesKey,
    value: (bool, u64),
    header: u32,
    prefix: u32,
    value_len: u32,
}

impl Line {
    fn len(&self) -> usize {
        (self.header + self.prefix + self.value_len) as usize
    }
}

/// Where a series' sample landed in the buffer, and where it ends.
#[derive(Clone, Copy, Debug)]
struct Placed {
    sample_at: usize,
    end: usize,
}

/// One stream of series written over the same stream of the sample before.
/// Its lines are the sample before's, overwritten in place as the series
/// come: a series that matches changes at most its value.
struct Stream<'r> {
    out: Vec<u8>,
    lines: &'r mut Vec<Line>,
    before: &'r [u8],
    /// Where the next line's bytes begin in `before`.
    before_at: usize,
    /// Series written so far.
    written: usize,
    /// Every series so far matched the one at its place before.
    matching: bool,
    /// Bytes of `before` still to be copied to `out`.
    run: Range<usize>,
    /// Where the stream begins in `out`.
    start: usize,
}

impl<'r> Stream<'r> {
    fn new(out: Vec<u8>, lines: &'r mut Vec<Line>, before: &'r [u8]) -> Self {
        let start = out.len();
        Self { out, lines, before, before_at: 0, written: 0, matching: true, run: 0..0, start }
    }

    /// Writes a series. `prefix` writes it afresh up to its value and
    /// returns where its sample begins (after its family's header).
    fn series(
        &mut self,
        (name, parts, first): (&'static str, LabelParts<'_>, bool),
        value: Value,
        prefix: impl FnOnce(&mut Vec<u8>) -> usize,
    ) -> Placed {
        let value_id = value.identity();
        let k = self.written;
        self.written += 1;
        if self.matching {
            match self.lines.get_mut(k) {
                Some(old) if old.key.is(name, parts, first) => {
                    // `before`'s bytes from the run's start land at `out`'s end.
                    let start = self.out.len() + (self.before_at - self.run.start);
                    let value_before = self.before_at + (old.header + old.prefix) as usize;
                    let end_before = value_before + old.value_len as usize;
                    if old.value != value_id {
                        self.run.end = value_before;
                        self.out.extend_from_slice(&self.before[self.run.clone()]);
                        let value_at = self.out.len();
                        write_value(&mut self.out, value);
                        old.value = value_id;
                        old.value_len = (self.out.len() - value_at) as u32;
                        self.run = end_before..end_before;
                    } else {
                        self.run.end = end_before;
                    }
                    self.before_at = end_before;
                    return Placed { sample_at: start + old.header as usize, end: start + old.len() };
                }
                _ => {
                    self.flush();
                    self.matching = false;
                    self.lines.truncate(k);
                }
            }
        }
        let start = self.out.len();
        let sample_at = prefix(&mut self.out);
        let value_at = self.out.len();
        write_value(&mut self.out, value);
        let end = self.out.len();
        self.lines.push(Line {
            key: SeriesKey::new(name, parts, first),
            value: value_id,
            header: (sample_at - start) as u32,
            prefix: (value_at - sample_at) as u32,
            value_len: (end - value_at) as u32,
        });
        Placed { sample_at, end }
    }

    /// Where the next series' bytes land, from the stream's start.
    fn position(&self) -> usize {
        self.out.len() + (self.before_at - self.run.start) - self.start
    }

    /// Takes the next `lines` series of the sample before, `bytes` long,
    /// as they were: they join the run to be copied.
    fn take_unchanged(&mut self, lines: usize, bytes: usize) {
        self.written += lines;
        self.before_at += bytes;
        self.run.end = self.before_at;
    }

    fn flush(&mut self) {
        self.out.extend_from_slice(&self.before[self.run.clone()]);
        self.run = self.run.end..self.run.end;
    }

    /// Ends this stream, whose lines are now this sample's, and starts the
    /// next one in the same buffer, after it, over `before` with `lines`.
    fn restart(&mut self, lines: &'r mut Vec<Line>, before: &'r [u8]) {
        self.end();
        *self = Stream::new(std::mem::take(&mut self.out), lines, before);
    }

    /// The buffer; the stream's lines are now this sample's.
    fn finish(mut self) -> Vec<u8> {
        self.end();
        self.out
    }

    /// Copies what is left of the run and drops the lines past this
    /// sample's.
    fn end(&mut self) {
        self.flush();
        self.lines.truncate(self.written);
    }
}

/// One counter family: how its headers name it, and where its samples and
/// its OpenMetrics header lie in the buffer.
#[derive(Clone, Debug)]
pub(super) struct CounterFamily {
    name: &'static str,
    help: &'static str,
    openmetrics_kind: &'static str,
    samples: Range<usize>,
    openmetrics_header: Range<usize>,
}

impl CounterFamily {
    /// Whether `other`'s OpenMetrics header is this family's: the same
    /// static strings, by address.
    fn headed_as(&self, other: &CounterFamily) -> bool {
        std::ptr::eq(self.name, other.name)
            && std::ptr::eq(self.help, other.help)
            && std::ptr::eq(self.openmetrics_kind, other.openmetrics_kind)
    }
}

/// The buffers an encoder works in, kept by the renderer between samples.
#[derive(Debug, Default)]
pub(super) struct Buffers {
    /// The last bodies' buffer: its text counters (before its gauges) and
    /// its gauges are the next sample's before.
    body_before: bytes::Bytes,
    gauges_before: Range<usize>,
    counter_lines: Vec<Line>,
    gauge_lines: Vec<Line>,
    families: Vec<CounterFamily>,
    families_before: Vec<CounterFamily>,
    /// The steady groups written, per pass, this sample and the one before.
    groups: [Vec<Group>; 2],
    groups_before: [Vec<Group>; 2],
}

/// Where a group of steady families lay in its pass's stream: its series,
/// its bytes (from the stream's start) and its counter families.
#[derive(Clone, Debug)]
struct Group {
    lines: Range<usize>,
    bytes: Range<usize>,
    families: Range<usize>,
}

impl Buffers {
    /// Forgets the sample before, whose label sets have moved.
    pub(super) fn forget(&mut self) {
        self.gauge_lines.clear();
        self.counter_lines.clear();
        self.groups_before.iter_mut().for_each(Vec::clear);
    }

    /// Keeps the buffer just written, with where its gauges lie, for the
    /// next sample; returns the one it kept before.
    pub(super) fn keep(&mut self, body: bytes::Bytes, gauges: Range<usize>) -> bytes::Bytes {
        self.gauges_before = gauges;
        std::mem::swap(&mut self.families, &mut self.families_before);
        std::mem::swap(&mut self.groups, &mut self.groups_before);
        std::mem::replace(&mut self.body_before, body)
    }
}

/// Which kind of family a pass writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Counters = 0,
    Gauges = 1,
}

/// Writes the families of one sample. Every label part a series carries
/// lives for `'l`, the kept label sets' borrow (or is static): a set built
/// while encoding cannot be passed, so comparing addresses stays sound.
pub(super) struct Encoder<'r, 'l> {
    pass: Pass,
    stream: Stream<'r>,
    /// The gauges' lines and bytes before, for the second pass.
    gauges: Option<(&'r mut Vec<Line>, &'r [u8])>,
    families: &'r mut Vec<CounterFamily>,
    families_before: &'r [CounterFamily],
    groups: &'r mut [Vec<Group>; 2],
    groups_before: &'r [Vec<Group>; 2],
    body_before: &'r [u8],
    labels: std::marker::PhantomData<&'l str>,
}

impl<'r, 'l> Encoder<'r, 'l> {
    /// Writes a sample into `body`, an empty buffer: `families` writes
    /// every family, and is called twice, for the counters and then for the
    /// gauges.
    pub(super) fn write(body: Vec<u8>, buffers: &'r mut Buffers, families: impl Fn(&mut Self)) -> Written {
        let Buffers {
            body_before,
            gauges_before,
            counter_lines,
            gauge_lines,
            families: counter_families,
            families_before,
            groups,
            groups_before,
        } = buffers;
        counter_families.clear();
        groups.iter_mut().for_each(Vec::clear);
        let mut e = Encoder {
            pass: Pass::Counters,
            stream: Stream::new(body, counter_lines, &body_before[..gauges_before.start]),
            gauges: Some((gauge_lines, &body_before[gauges_before.clone()])),
            families: counter_families,
            families_before,
            groups,
            groups_before,
            body_before,
            labels: std::marker::PhantomData,
        };
        families(&mut e);
        if let Some((lines, before)) = e.gauges.take() {
            e.stream.restart(lines, before);
            e.pass = Pass::Gauges;
        }
        families(&mut e);
        e.finish()
    }

    /// Writes the families `write` writes, a group of families that seldom
    /// change. `unchanged` says that what they are written from is what the
    /// sample before wrote them from (the label sets being kept, as every
    /// part is). Then, while every series so far matched the sample
    /// before's, so that the group follows the same series as it did, its
    /// bytes are those it had: they are copied as one run, and its series
    /// are not walked. Values before it may have changed length, moving it
    /// in the buffer.
    pub(super) fn steady(&mut self, unchanged: bool, write: impl FnOnce(&mut Self)) {
        let pass = self.pass as usize;
        let s = &self.stream;
        let (lines_at, bytes_at, families_at) = (s.written, s.position(), self.families.len());
        let before = self.groups_before[pass].get(self.groups[pass].len()).filter(|b| {
            unchanged
                && s.matching
                && b.lines.start == lines_at
                && b.bytes.start == s.before_at
                && b.lines.end <= s.lines.len()
                && b.bytes.end <= s.before.len()
        });
        match before {
            Some(before) => {
                self.stream.take_unchanged(before.lines.len(), before.bytes.len());
                // Its counter families' samples lie as far from where they
                // lay as the group does. (Counters are written only in the
                // counters' stream, which begins both buffers, so the
                // group's place in its stream is its place in the buffer.)
                let moved = |at: usize| at.wrapping_add(bytes_at).wrapping_sub(before.bytes.start);
                self.families.extend(self.families_before[before.families.clone()].iter().map(|family| {
                    CounterFamily { samples: moved(family.samples.start)..moved(family.samples.end), ..family.clone() }
                }));
            }
            None => write(self),
        }
        let s = &self.stream;
        self.groups[pass].push(Group {
            lines: lines_at..s.written,
            bytes: bytes_at..s.position(),
            families: families_at..self.families.len(),
        });
    }

    /// Writes a gauge family; its header with its first series.
    pub(super) fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        series: impl IntoIterator<Item = (LabelParts<'l>, Value)>,
    ) {
        if self.pass != Pass::Gauges {
            return;
        }
        let mut first = true;
        for (parts, value) in series {
            self.stream.series((name, parts, first), value, |out| {
                if first {
                    header(out, [name, ""], help, "gauge");
                }
                let at = out.len();
                sample_prefix(out, [name, ""], parts);
                at
            });
            first = false;
        }
    }

    /// Writes a counter family: `name_total` samples, typed `name` in
    /// OpenMetrics and `name_total` in the text format.
    pub(super) fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        series: impl IntoIterator<Item = (LabelParts<'l>, Value)>,
    ) {
        self.counter_family(name, help, "_total", "counter", series);
    }

    /// Writes a counter named as dcgm-exporter names it, without `_total`:
    /// typed `counter` in the text format (what dcgm-exporter serves) and
    /// `unknown` in OpenMetrics, whose counters must end in `_total`.
    pub(super) fn bare_counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        series: impl IntoIterator<Item = (LabelParts<'l>, Value)>,
    ) {
        self.counter_family(name, help, "", "unknown", series);
    }

    /// `suffix` ends every sample's name and the text format's header name;
    /// `openmetrics_kind` types the family in OpenMetrics.
    fn counter_family(
        &mut self,
        name: &'static str,
        help: &'static str,
        suffix: &'static str,
        openmetrics_kind: &'static str,
        series: impl IntoIterator<Item = (LabelParts<'l>, Value)>,
    ) {
        if self.pass != Pass::Counters {
            return;
        }
        let mut first = true;
        for (parts, value) in series {
            let placed = self.stream.series((name, parts, first), value, |out| {
                if first {
                    header(out, [name, suffix], help, "counter");
                }
                let at = out.len();
                sample_prefix(out, [name, suffix], parts);
                at
            });
            if first {
                self.families.push(CounterFamily {
                    name,
                    help,
                    openmetrics_kind,
                    samples: placed.sample_at..placed.end,
                    openmetrics_header: 0..0,
                });
            } else if let Some(family) = self.families.last_mut() {
                family.samples.end = placed.end;
            }
            first = false;
        }
    }

    /// The buffer, with where the text and OpenMetrics bodies and the
    /// gauges lie in it.
    fn finish(self) -> Written {
        let Encoder { stream, families, families_before, body_before, .. } = self;
        let gauges_at = stream.start;
        let mut body = stream.finish();
        let gauges = gauges_at..body.len();
        for (i, family) in families.iter_mut().enumerate() {
            let at = body.len();
            match families_before.get(i) {
                Some(before) if before.headed_as(family) => {
                    body.extend_from_slice(&body_before[before.openmetrics_header.clone()]);
                }
                _ => header(&mut body, [family.name, ""], family.help, family.openmetrics_kind),
            }
            family.openmetrics_header = at..body.len();
            body.extend_from_within(family.samples.clone());
        }
        body.extend_from_slice(b"# EOF\n");
        Written { text: 0..gauges.end, openmetrics: gauges.start..body.len(), gauges, body }
    }
}

/// What an encoder wrote: one buffer holding both bodies.
pub(super) struct Written {
    pub body: Vec<u8>,
    pub text: Range<usize>,
    pub openmetrics: Range<usize>,
    /// Where the gauges lie: after the text format's counters.
    pub gauges: Range<usize>,
}

/// `# HELP` and `# TYPE` of a family whose name is written in two parts (a
/// name and a suffix).
fn header(out: &mut Vec<u8>, [name, suffix]: [&str; 2], help: &str, kind: &str) {
    for part in ["# HELP ", name, suffix, " ", help, ".\n# TYPE ", name, suffix, " ", kind, "\n"] {
        out.extend_from_slice(part.as_bytes());
    }
}

/// A sample up to its value: its name (in two parts), its labels, a space.
fn sample_prefix(out: &mut Vec<u8>, [name, suffix]: [&str; 2], [gpu, pod, own]: LabelParts<'_>) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
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
}
