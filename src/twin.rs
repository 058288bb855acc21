//! `simulate`: a closed-loop twin of a GPU cluster and its HPAs, so that a
//! user sees what an HPA will do on their cluster's shape before it does it.
//!
//! ```text
//! model (cluster, Deployments, pipeline) ─► engine (1 s steps on a counter) ─► report (summary, CSV, SVG)
//! ```
//!
//! - [`model`]: nodes with GPUs, taints and time-slicing; Deployments;
//!   the metric pipeline's stages.
//! - [`engine`]: scheduler, demand, GPUs, pipeline, HPA controller,
//!   Deployment controller.
//! - [`report`]: the summary figures (medians over seeded runs, with the
//!   worst beside them), the timeline CSV and the chart.

pub mod engine;
pub mod live;
pub mod model;
pub mod report;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::adapter::store::Metric;
use crate::hpa::Behavior;
use crate::hpa::spec::{HpaSpec, MetricSpec, parse_hpa};
use crate::sim::scenario::Scenario;
use engine::RunSpec;
use model::{ClusterSpec, DeploymentSpec, Pipeline};
use report::Summary;

/// Flags of `simulate`.
#[derive(Clone, Debug, Args)]
pub struct SimulateArgs {
    /// HPA manifests, used as written (behaviour included); repeat for
    /// several.
    #[arg(long = "hpa", required = true)]
    pub hpa: Vec<PathBuf>,

    /// Demand over time per Deployment, in percent of an RTX 4090's work
    /// (the `standalone --scenario` format; hack/scenarios/).
    #[arg(long)]
    pub scenario: PathBuf,

    /// Nodes, GPUs, taints and time-slicing (default: the reference cluster).
    #[arg(long)]
    pub cluster: Option<PathBuf>,

    /// Deployments: tolerations, start-up time, initial replicas (default:
    /// tolerate the `gpu` taint, 45 s, the HPA's minReplicas).
    #[arg(long)]
    pub deployments: Option<PathBuf>,

    /// The metric pipeline: `direct` (1 s sampling, 1 s polling),
    /// `seed-stack` (30 s DCGM collection, 30 s scrape) or stage periods
    /// (`5s,15s`).
    #[arg(long, default_value = "direct")]
    pub pipeline: String,

    /// Runs, each with its own random phases of the loops (1 to 1,000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_RUNS as i64))]
    pub runs: u32,

    /// Seed of the first run's phases.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Simulated time per run (at most a day).
    #[arg(long, default_value = "10m", value_parser = simulated_duration)]
    pub duration: Duration,

    /// Where each run's timeline (CSV) and chart (SVG) go.
    #[arg(long, default_value = "simulate-out")]
    pub out: PathBuf,

    /// Where the summary goes (JSON): medians over the runs, `<key>_max`
    /// the worst.
    #[arg(long)]
    pub report_json: Option<PathBuf>,

    /// Run the scenario through direct and seed-stack pipelines, plain and
    /// weighted utilization, and the plan's behaviour (up 60 s, down 300 s)
    /// and none, and print the table.
    #[arg(long)]
    pub compare: bool,

    /// How often the HPAs sync (kube-controller-manager's
    /// `--horizontal-pod-autoscaler-sync-period`).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub hpa_sync_period: Duration,
}

/// The most runs one `simulate` makes.
pub const MAX_RUNS: u32 = 1_000;
/// The longest simulated run: the twin steps each second and keeps the
/// run's timeline until it is written.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

fn simulated_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration > MAX_DURATION {
        return Err(format!("at most {}", humantime::format_duration(MAX_DURATION)));
    }
    if duration.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(duration)
}

/// Everything one simulation needs, read.
pub struct Inputs {
    /// The cluster.
    pub cluster: ClusterSpec,
    /// Deployments with their HPAs.
    pub scaled: Vec<(DeploymentSpec, HpaSpec)>,
    /// Demand.
    pub scenario: Scenario,
    /// The HPAs' sync period.
    pub sync_period: Duration,
}

impl Inputs {
    /// Reads the files the flags name.
    pub fn read(args: &SimulateArgs) -> anyhow::Result<Inputs> {
        let cluster = match &args.cluster {
            Some(path) => model::read_cluster(path)?,
            None => ClusterSpec::reference(),
        };
        let deployments = match &args.deployments {
            Some(path) => model::read_deployments(path)?,
            None => Vec::new(),
        };
        let mut scaled = Vec::new();
        for path in &args.hpa {
            let hpa = read_hpa(path)?;
            scaled.push((deployment_for(&deployments, &hpa), hpa));
        }
        let scenario = Scenario::read(&args.scenario)?;
        Ok(Inputs { cluster, scaled, scenario, sync_period: args.hpa_sync_period })
    }

    /// Runs `runs` seeded runs through `pipeline`; returns each timeline's
    /// summary and the timelines (tests; `simulate` keeps one run at a time).
    pub fn runs(
        &self,
        pipeline: &Pipeline,
        runs: u32,
        seed: u64,
        duration: Duration,
    ) -> Vec<(Summary, Vec<engine::Row>)> {
        (0..runs.max(1)).map(|k| self.run_one(pipeline, k, seed, duration)).collect()
    }

    /// Run `k` of a seeded series through `pipeline`: its summary and timeline.
    pub fn run_one(&self, pipeline: &Pipeline, k: u32, seed: u64, duration: Duration) -> (Summary, Vec<engine::Row>) {
        let spec = RunSpec {
            cluster: &self.cluster,
            scaled: self.scaled.clone(),
            scenario: &self.scenario,
            pipeline,
            duration,
            sync_period: self.sync_period,
            seed: seed.wrapping_add(u64::from(k)),
        };
        let rows = engine::run(&spec);
        (report::summarize(&rows), rows)
    }

    /// The same inputs with every Pods metric renamed to `metric` and the
    /// behaviour replaced by `behavior`.
    fn variant(&self, metric: &str, behavior: &Behavior) -> Inputs {
        let scaled = self
            .scaled
            .iter()
            .map(|(d, h)| {
                let metrics = h
                    .metrics
                    .iter()
                    .map(|m| match m {
                        MetricSpec::Pods { target, .. } => MetricSpec::Pods { name: metric.into(), target: *target },
                        other => other.clone(),
                    })
                    .collect();
                (d.clone(), HpaSpec { metrics, behavior: behavior.clone(), ..h.clone() })
            })
            .collect();
        Inputs { cluster: self.cluster.clone(), scaled, scenario: self.scenario.clone(), sync_period: self.sync_period }
    }
}

/// Reads an HPA manifest (`--hpa`) and checks that the twin can run it: its
/// bounds in order, and a Pods metric with an AverageValue target.
pub fn read_hpa(path: &Path) -> anyhow::Result<HpaSpec> {
    let text = crate::input::read_yaml(path, "--hpa")?;
    let hpa = parse_hpa(&text).map_err(|e| anyhow::anyhow!("--hpa {}: {e}", path.display()))?;
    check_hpa(&hpa).map_err(|e| anyhow::anyhow!("--hpa {}: {e}", path.display()))?;
    Ok(hpa)
}

/// Whether the twin can run `hpa`.
fn check_hpa(hpa: &HpaSpec) -> Result<(), String> {
    let weighted = Metric::WeightedUtilization.name();
    let modelled = |m: &MetricSpec| match m {
        MetricSpec::Pods { .. } => true,
        MetricSpec::External { name, .. } => name == weighted,
        MetricSpec::Unsupported(_) => false,
    };
    if !hpa.metrics.iter().any(modelled) {
        return Err(format!(
            "the twin simulates Pods metrics with an AverageValue target, and the External metric {weighted}; \
             this HPA has neither"
        ));
    }
    if hpa.min == 0 && !hpa.metrics.iter().any(|m| matches!(m, MetricSpec::External { name, .. } if name == weighted)) {
        // At zero only External and Object metrics can wake a target; the twin models one.
        return Err(format!(
            "minReplicas 0: the twin can wake a Deployment from zero only on the External metric {weighted} \
             (the one External metric it models; Pods metrics have no pods to measure at zero); \
             `hpa-preview --current-replicas 0` explains the decision at zero for any metric"
        ));
    }
    Ok(())
}

/// The Deployment `hpa` scales, as `deployments` (`--deployments`)
/// describes it, or the defaults at the HPA's minReplicas.
pub fn deployment_for(deployments: &[DeploymentSpec], hpa: &HpaSpec) -> DeploymentSpec {
    deployments
        .iter()
        .find(|d| d.name == hpa.target_name)
        .cloned()
        .unwrap_or_else(|| DeploymentSpec::default_for(&hpa.target_name, hpa.min.max(1)))
}

/// The plan's behaviour: scale up after a 60 s window, down after 300 s.
pub fn plan_behavior() -> Behavior {
    let defaults = Behavior::default();
    Behavior {
        up: crate::hpa::Rules { window: Duration::from_secs(60), ..defaults.up },
        down: crate::hpa::Rules { window: Duration::from_secs(300), ..defaults.down },
    }
}

fn cell(map: &serde_json::Map<String, serde_json::Value>, key: &str) -> String {
    let show = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_f64).map_or("—".to_string(), |v| format!("{v:.0}"))
    };
    format!("{} / {}", show(map.get(key)), show(map.get(&format!("{key}_max"))))
}

/// Runs `simulate` and returns what it prints.
pub fn run(args: &SimulateArgs) -> anyhow::Result<String> {
    let inputs = Inputs::read(args)?;
    let mut out = String::new();
    if args.compare {
        let _ = writeln!(
            out,
            "{} runs per row, {} simulated each; median / worst run\n",
            args.runs.max(1),
            humantime::format_duration(args.duration)
        );
        let _ = writeln!(
            out,
            "| pipeline | metric | behaviour | first scale-up s | time to capacity s | direction changes | unserved %·s | max replicas | pending max |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        let mut report = serde_json::Map::new();
        for pipeline in ["direct", "seed-stack"] {
            let pipeline = Pipeline::parse(pipeline).map_err(anyhow::Error::msg)?;
            for metric in ["nvidia_gpu_utilization_percent", "nvidia_gpu_weighted_utilization_percent"] {
                for (behaviour, behavior) in
                    [("plan (up 60 s, down 300 s)", plan_behavior()), ("none (defaults)", Behavior::default())]
                {
                    let variant = inputs.variant(metric, &behavior);
                    // One run at a time: only the summaries are kept.
                    let summaries: Vec<Summary> = (0..args.runs.max(1))
                        .map(|k| variant.run_one(&pipeline, k, args.seed, args.duration).0)
                        .collect();
                    let figures = report::over_runs(&summaries);
                    let short = if metric.contains("weighted") { "weighted" } else { "utilization" };
                    let _ = writeln!(
                        out,
                        "| {} | {short} | {behaviour} | {} | {} | {} | {} | {} | {} |",
                        pipeline.name,
                        cell(&figures, "first_scale_up_seconds"),
                        cell(&figures, "time_to_capacity_seconds"),
                        cell(&figures, "direction_changes"),
                        cell(&figures, "unserved_work_percent_seconds"),
                        cell(&figures, "max_replicas"),
                        cell(&figures, "pending_pods_max"),
                    );
                    report.insert(
                        format!("{}/{short}/{}", pipeline.name, behaviour.split(' ').next().unwrap_or("")),
                        figures.into(),
                    );
                }
            }
        }
        if let Some(path) = &args.report_json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("--report-json {}", path.display()))?;
        }
        return Ok(out);
    }

    let pipeline = Pipeline::parse(&args.pipeline).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let first = &inputs.scaled[0];
    let target = first.1.metrics.iter().find_map(|m| match m {
        MetricSpec::Pods { target, .. } => Some(*target),
        _ => None,
    });
    // Each run's timeline is written as it ends; only its summary is kept.
    let mut summaries = Vec::new();
    for k in 0..args.runs.max(1) {
        let (summary, rows) = inputs.run_one(&pipeline, k, args.seed, args.duration);
        for (file, text) in [
            (format!("run-{k}.csv"), report::csv(&rows)),
            (format!("run-{k}.svg"), report::svg(&rows, &first.0.name, target)),
        ] {
            let path = args.out.join(file);
            std::fs::write(&path, text)
                .with_context(|| format!("--out {}: cannot write {}", args.out.display(), path.display()))?;
        }
        summaries.push(summary);
    }
    let mut figures = report::over_runs(&summaries);
    figures.insert("pipeline".into(), pipeline.name.clone().into());
    figures.insert("per_run".into(), serde_json::to_value(&summaries)?);
    if let Some(path) = &args.report_json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("--report-json {}", path.display()))?;
    }
    let _ = writeln!(out, "{} run(s) through the {} pipeline; median / worst run:", summaries.len(), pipeline.name);
    for (key, _) in report::FIGURES {
        let _ = writeln!(out, "  {key:<32} {}", cell(&figures, key));
    }
    let _ = writeln!(out, "timelines and charts in {}", args.out.display());
    Ok(out)
}

#[cfg(test)]
mod tests;
