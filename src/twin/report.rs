//! What a run of the twin says: the summary figures, the per-second
//! timeline as CSV, and a chart of demand, replicas and the metric against
//! the target as SVG.

use std::fmt::Write as _;

use serde::Serialize;

use super::engine::Row;

/// Two scale events in opposite directions closer than this are a direction
/// change (flapping).
pub const FLAP_WINDOW: u64 = 600;

/// The summary of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// From the first demand change to the first increase of desired
    /// replicas; `None` if there was none.
    pub first_scale_up_seconds: Option<f64>,
    /// From the same change until no work is unserved again; `None` if it
    /// never is within the run.
    pub time_to_capacity_seconds: Option<f64>,
    /// Changes of desired replicas.
    pub scale_events: f64,
    /// An up followed by a down, or the reverse, within 10 minutes.
    pub direction_changes: f64,
    /// Work not served, summed over seconds (percent of a 4090 × s).
    pub unserved_work_percent_seconds: f64,
    /// The most replicas desired.
    pub max_replicas: f64,
    /// The most pods no node could take.
    pub pending_pods_max: f64,
    /// From demand arriving while a Deployment was at zero to its first
    /// ready pod (to the end of the run if none came); `None` if demand never
    /// found one at zero.
    pub cold_start_seconds: Option<f64>,
    /// Work not served during that cold start.
    pub cold_start_unserved_percent_seconds: Option<f64>,
    /// GPU slots (whole GPUs or time-slice replicas) held by started pods,
    /// ready or loading, in hours.
    pub gpu_slot_hours: f64,
}

/// Sums a timeline up.
pub fn summarize(rows: &[Row]) -> Summary {
    let deployments: Vec<&str> = {
        let mut names: Vec<&str> = rows.iter().map(|r| r.deployment.as_str()).collect();
        names.dedup();
        names.sort_unstable();
        names.dedup();
        names
    };
    fn series<'r>(rows: &'r [Row], name: &'r str) -> impl Iterator<Item = &'r Row> + 'r {
        rows.iter().filter(move |r| r.deployment == name)
    }
    // The first second any Deployment's demand differs from its first.
    let change = deployments
        .iter()
        .filter_map(|name| {
            let first = series(rows, name).next()?.demand;
            series(rows, name).find(|r| (r.demand - first).abs() > 1e-9).map(|r| r.t)
        })
        .min();
    let mut summary = Summary::default();
    let mut ups = Vec::new();
    for name in &deployments {
        if let Some((seconds, unserved)) = cold_start(series(rows, name)) {
            summary.cold_start_seconds = Some(summary.cold_start_seconds.unwrap_or(0.0).max(seconds));
            summary.cold_start_unserved_percent_seconds =
                Some(summary.cold_start_unserved_percent_seconds.unwrap_or(0.0) + unserved);
        }
        let mut previous: Option<u32> = None;
        let mut last_event: Option<(u64, bool)> = None;
        for r in series(rows, name) {
            if let Some(p) = previous
                && r.desired != p
            {
                summary.scale_events += 1.0;
                let up = r.desired > p;
                if up {
                    ups.push(r.t);
                }
                if let Some((at, was_up)) = last_event
                    && was_up != up
                    && r.t - at < FLAP_WINDOW
                {
                    summary.direction_changes += 1.0;
                }
                last_event = Some((r.t, up));
            }
            previous = Some(r.desired);
            summary.max_replicas = summary.max_replicas.max(f64::from(r.desired));
            summary.pending_pods_max = summary.pending_pods_max.max(f64::from(r.pending));
            summary.unserved_work_percent_seconds += r.unserved;
            summary.gpu_slot_hours += f64::from(r.ready + r.starting) / 3600.0;
        }
    }
    if let Some(change) = change {
        summary.first_scale_up_seconds = ups.iter().filter(|&&t| t >= change).min().map(|&t| (t - change) as f64);
        let unserved_at = |t: u64| rows.iter().filter(|r| r.t == t).map(|r| r.unserved).sum::<f64>();
        let end = rows.last().map_or(0, |r| r.t);
        summary.time_to_capacity_seconds = (change..=end).find(|&t| unserved_at(t) < 1e-6).map(|t| (t - change) as f64);
    }
    summary
}

/// The first cold start of one Deployment's timeline: from the second
/// demand arrives after a second at zero (no replica desired, none ready) to
/// its first ready pod, or to the end; with the work left unserved meanwhile.
fn cold_start<'r>(series: impl Iterator<Item = &'r Row>) -> Option<(f64, f64)> {
    let mut was_zero = false;
    let mut start: Option<(u64, f64)> = None;
    let mut last_t = 0;
    for r in series {
        last_t = r.t;
        match start {
            None if was_zero && r.demand > 0.0 => start = Some((r.t, r.unserved)),
            Some((t0, unserved)) if r.ready == 0 => start = Some((t0, unserved + r.unserved)),
            Some((t0, unserved)) => return Some(((r.t - t0) as f64, unserved)),
            None => {}
        }
        was_zero = r.desired == 0 && r.ready == 0;
    }
    start.map(|(t0, unserved)| ((last_t + 1 - t0) as f64, unserved))
}

/// How a figure is read from a summary.
pub type Figure = fn(&Summary) -> Option<f64>;

/// Every summary figure by its report key, in report order.
pub const FIGURES: [(&str, Figure); 10] = [
    ("first_scale_up_seconds", |s| s.first_scale_up_seconds),
    ("time_to_capacity_seconds", |s| s.time_to_capacity_seconds),
    ("scale_events", |s| Some(s.scale_events)),
    ("direction_changes", |s| Some(s.direction_changes)),
    ("unserved_work_percent_seconds", |s| Some(s.unserved_work_percent_seconds)),
    ("max_replicas", |s| Some(s.max_replicas)),
    ("pending_pods_max", |s| Some(s.pending_pods_max)),
    ("cold_start_seconds", |s| s.cold_start_seconds),
    ("cold_start_unserved_percent_seconds", |s| s.cold_start_unserved_percent_seconds),
    ("gpu_slot_hours", |s| Some(s.gpu_slot_hours)),
];

/// The median of each figure over runs, with `<key>_max` the worst run's.
pub fn over_runs(runs: &[Summary]) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (key, get) in FIGURES {
        let mut values: Vec<f64> = runs.iter().filter_map(get).collect();
        values.sort_by(f64::total_cmp);
        let median = (!values.is_empty()).then(|| values[values.len() / 2]);
        let max = values.last().copied();
        out.insert(key.into(), median.map_or(serde_json::Value::Null, |v| serde_json::json!(v)));
        out.insert(format!("{key}_max"), max.map_or(serde_json::Value::Null, |v| serde_json::json!(v)));
    }
    out.insert("runs".into(), serde_json::json!(runs.len()));
    out
}

/// The timeline as CSV: one line per second and Deployment; pods as
/// `name@node=util` and GPUs as `node/index=util`, `;`-separated.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from("t,deployment,demand,desired,ready,starting,pending,metric_seen,unserved,pods,gpus\n");
    for r in rows {
        let pods: Vec<String> = r.pods.iter().map(|(n, node, u)| format!("{n}@{node}={u:.1}")).collect();
        let gpus: Vec<String> = r.gpus.iter().map(|(n, u)| format!("{n}={u:.1}")).collect();
        let seen = r.seen.map(|v| format!("{v:.2}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{:.1},{},{},{},{},{},{:.2},{},{}",
            r.t,
            r.deployment,
            r.demand,
            r.desired,
            r.ready,
            r.starting,
            r.pending,
            seen,
            r.unserved,
            pods.join(";"),
            gpus.join(";")
        );
    }
    out
}

/// A chart of one Deployment: demand and the metric the HPA saw (left axis,
/// percent), the target, and desired and ready replicas (right axis).
pub fn svg(rows: &[Row], deployment: &str, target: Option<f64>) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.deployment == deployment).collect();
    let (w, h, left, right, top, bottom) = (960.0, 420.0, 60.0, 60.0, 40.0, 40.0);
    let end = rows.last().map_or(1, |r| r.t.max(1)) as f64;
    let top_percent = rows.iter().map(|r| r.demand).fold(100.0_f64, f64::max);
    let top_replicas = rows.iter().map(|r| r.desired).max().unwrap_or(1).max(1) as f64 + 1.0;
    let x = |t: u64| left + (w - left - right) * t as f64 / end;
    let y = |v: f64, top_value: f64| top + (h - top - bottom) * (1.0 - v / top_value);
    let line = |points: Vec<(f64, f64)>, colour: &str, extra: &str| {
        let points: Vec<String> = points.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        format!(r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6" {extra} points="{}"/>"#, points.join(" "))
    };
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="{w}" height="{h}" fill="white"/>"#
    );
    let _ = write!(out, r#"<text x="{left}" y="20">{deployment}: demand, metric seen and replicas</text>"#);
    let _ = write!(
        out,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for p in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let _ = write!(out, r#"<text x="8" y="{:.1}">{p:.0} %</text>"#, y(p * top_percent / 100.0, top_percent) + 4.0);
    }
    let _ = write!(out, r#"<text x="{:.1}" y="{}">{end:.0} s</text>"#, w - right - 20.0, h - 12.0);
    out.push_str(&line(rows.iter().map(|r| (x(r.t), y(r.demand, top_percent))).collect(), "#1f77b4", ""));
    out.push_str(&line(rows.iter().filter_map(|r| Some((x(r.t), y(r.seen?, top_percent)))).collect(), "#ff7f0e", ""));
    out.push_str(&line(
        rows.iter().map(|r| (x(r.t), y(f64::from(r.desired), top_replicas))).collect(),
        "#2ca02c",
        r#"stroke-dasharray="6 3""#,
    ));
    out.push_str(&line(rows.iter().map(|r| (x(r.t), y(f64::from(r.ready), top_replicas))).collect(), "#2ca02c", ""));
    if let Some(target) = target {
        let ty = y(target, top_percent);
        let _ = write!(
            out,
            r##"<line x1="{left}" y1="{ty:.1}" x2="{}" y2="{ty:.1}" stroke="#888" stroke-dasharray="2 4"/>"##,
            w - right
        );
    }
    let legend = [
        ("#1f77b4", "demand (% of a 4090)"),
        ("#ff7f0e", "metric the HPA saw"),
        ("#888", "target"),
        ("#2ca02c", "replicas: desired (dashed), ready (right axis)"),
    ];
    for (i, (colour, text)) in legend.iter().enumerate() {
        let ly = top + 14.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{}" y="{:.1}" width="10" height="3" fill="{colour}"/><text x="{}" y="{:.1}">{text}</text>"#,
            w - right - 290.0,
            ly,
            w - right - 275.0,
            ly + 4.0
        );
    }
    let _ = write!(out, r#"<text x="{:.1}" y="{:.1}">{:.0} replicas</text>"#, w - right + 4.0, top + 4.0, top_replicas);
    out.push_str("</svg>\n");
    out
}
