//! Pod UIDs from the kubelet's device manager checkpoint.
//!
//! PodResources names pods but does not give their UIDs, and cgroups give UIDs
//! but not names. The device manager checkpoint
//! (`/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint`) records,
//! per pod UID and container, the device IDs it was allocated; joining it with
//! PodResources on (container, device IDs) gives each pod its UID. Time-slice
//! replicas (`GPU-…::N`) are unique per allocation, which makes the join exact.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use super::ContainerAllocation;

/// Why the checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read.
    #[error("cannot read kubelet checkpoint {path} (--kubelet-checkpoint): {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a device manager checkpoint.
    #[error("kubelet checkpoint {path} is not a device manager checkpoint: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct CheckpointFile {
    #[serde(rename = "Data")]
    data: CheckpointData,
}

#[derive(Deserialize)]
struct CheckpointData {
    #[serde(rename = "PodDeviceEntries", default)]
    entries: Option<Vec<PodDevicesEntry>>,
}

#[derive(Deserialize)]
struct PodDevicesEntry {
    #[serde(rename = "PodUID")]
    pod_uid: String,
    #[serde(rename = "ContainerName")]
    container: String,
    #[serde(rename = "DeviceIDs")]
    device_ids: DeviceIds,
}

/// Kubelets before 1.20 wrote a list; later ones group IDs by NUMA node.
#[derive(Deserialize)]
#[serde(untagged)]
enum DeviceIds {
    PerNuma(HashMap<String, Vec<String>>),
    Flat(Vec<String>),
}

impl DeviceIds {
    fn into_set(self) -> BTreeSet<String> {
        match self {
            DeviceIds::PerNuma(map) => map.into_values().flatten().collect(),
            DeviceIds::Flat(list) => list.into_iter().collect(),
        }
    }
}

type JoinKey = (String, BTreeSet<String>);

/// The checkpoint, re-read when its modification time changes.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    modified: Option<SystemTime>,
    uids: HashMap<JoinKey, String>,
}

impl Checkpoint {
    /// Reads from `path` on first use.
    pub fn new(path: PathBuf) -> Self {
        Self { path, modified: None, uids: HashMap::new() }
    }

    /// Fills in `pod_uid` for every allocation the checkpoint knows.
    pub fn fill_pod_uids(&mut self, allocations: &mut [ContainerAllocation]) -> Result<(), CheckpointError> {
        self.refresh()?;
        for a in allocations.iter_mut().filter(|a| a.pod_uid.is_none()) {
            let key = (a.container.clone(), a.device_ids.iter().cloned().collect());
            a.pod_uid = self.uids.get(&key).cloned();
        }
        Ok(())
    }

    fn refresh(&mut self) -> Result<(), CheckpointError> {
        let read_err = |source| CheckpointError::Read { path: self.path.clone(), source };
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).map_err(read_err)?;
        if self.modified == Some(modified) {
            return Ok(());
        }
        self.uids = parse(&self.path)?;
        self.modified = Some(modified);
        Ok(())
    }
}

fn parse(path: &Path) -> Result<HashMap<JoinKey, String>, CheckpointError> {
    let text = std::fs::read(path).map_err(|source| CheckpointError::Read { path: path.to_path_buf(), source })?;
    let file: CheckpointFile =
        serde_json::from_slice(&text).map_err(|source| CheckpointError::Parse { path: path.to_path_buf(), source })?;
    Ok(file
        .data
        .entries
        .unwrap_or_default()
        .into_iter()
        .map(|e| ((e.container, e.device_ids.into_set()), e.pod_uid))
        .collect())
}

#[cfg(test)]
mod tests;
