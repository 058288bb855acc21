//! Scripted load for simulated workloads: a small YAML file that says, per
//! workload, which load to run for how long, so that scaling behaviour can be
//! shown and measured the same way every time.
//!
//! ```yaml
//! workloads:
//!   reasoning-suite:
//!     - {for: 30s, load: 40}
//!     - {for: 2m, load: 95}
//!     - {load: 20}          # then hold
//! ```
//!
//! Workloads the file does not name keep their moving load. After its last
//! step a workload holds the last step's load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The most load a step may ask for: ten RTX 4090s' worth.
pub const MAX_LOAD: f64 = 1000.0;
/// The longest a step may last (`for`).
pub const MAX_STEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most steps a workload may have.
pub const MAX_STEPS: usize = 10_000;
/// The most workloads a scenario may script.
pub const MAX_WORKLOADS: usize = 1_000;

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
#[error("scenario {path} (--scenario): {reason}")]
pub struct ScenarioError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    workloads: BTreeMap<String, Vec<StepFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    #[serde(rename = "for")]
    duration: Option<String>,
    load: f64,
}

/// One step: a load held for a while (the last one holds for ever).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// How long, or `None` for the rest of the run.
    pub duration: Option<Duration>,
    /// Load, percent of the GPU (in the twin: demand, percent of an RTX
    /// 4090's work, so above 100 needs more than one).
    pub load: f64,
}

/// Steps per workload (by `app` name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scenario {
    /// The scripted workloads.
    pub workloads: BTreeMap<String, Vec<Step>>,
}

impl Scenario {
    /// Parses scenario YAML.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let err = |reason: String| ScenarioError { path: path.to_path_buf(), reason };
        let file: ScenarioFile = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        if file.workloads.len() > MAX_WORKLOADS {
            return Err(err(format!("{} workloads: at most {MAX_WORKLOADS}", file.workloads.len())));
        }
        let mut workloads = BTreeMap::new();
        for (app, steps) in file.workloads {
            if steps.is_empty() {
                return Err(err(format!("workload {app} has no steps")));
            }
            if steps.len() > MAX_STEPS {
                return Err(err(format!("workload {app}: {} steps: at most {MAX_STEPS}", steps.len())));
            }
            let steps = steps
                .into_iter()
                .map(|s| {
                    // Above 100: more work than one GPU does (the twin's
                    // demand, in 4090-equivalent percent).
                    if !(0.0..=MAX_LOAD).contains(&s.load) {
                        return Err(err(format!("workload {app}: load {} is not within 0..={MAX_LOAD}", s.load)));
                    }
                    let duration = s
                        .duration
                        .map(|d| {
                            let parsed = humantime::parse_duration(&d)
                                .map_err(|e| err(format!("workload {app}: for {d:?}: {e}")))?;
                            if parsed > MAX_STEP {
                                return Err(err(format!(
                                    "workload {app}: for {d:?}: at most {} (a last step without `for` holds for ever)",
                                    humantime::format_duration(MAX_STEP)
                                )));
                            }
                            Ok(parsed)
                        })
                        .transpose()?;
                    Ok(Step { duration, load: s.load })
                })
                .collect::<Result<Vec<_>, _>>()?;
            workloads.insert(app, steps);
        }
        Ok(Scenario { workloads })
    }

    /// Reads a scenario file.
    pub fn read(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = crate::input::read_yaml(path, "--scenario")
            .map_err(|e| ScenarioError { path: path.to_path_buf(), reason: e.reason })?;
        Scenario::parse(&text, path)
    }

    /// The scripted load of `app` at `elapsed` into the run, if it is scripted.
    pub fn load(&self, app: &str, elapsed: Duration) -> Option<f64> {
        let steps = self.workloads.get(app)?;
        let mut start = Duration::ZERO;
        for step in steps {
            match step.duration {
                Some(d) if elapsed >= start.saturating_add(d) => start = start.saturating_add(d),
                _ => return Some(step.load),
            }
        }
        steps.last().map(|s| s.load)
    }
}

#[cfg(test)]
mod tests;
