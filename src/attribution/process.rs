//! Host PID → pod UID, from the PID's cgroup path.
//!
//! Pod UIDs appear in the kubelet's cgroup names under both drivers and both
//! cgroup versions:
//!
//! - cgroupfs: `/kubepods/burstable/pod1f2e…/<container>` (k3s's default);
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e_….slice/…`,
//!   with `_` standing for `-`.

use std::collections::HashMap;
use std::path::PathBuf;

/// Reads `<proc_root>/<pid>/cgroup` and remembers the answers of the last pass.
#[derive(Debug)]
pub struct ProcResolver {
    proc_root: PathBuf,
    cache: HashMap<u32, Option<String>>,
    seen: Vec<u32>,
}

impl ProcResolver {
    /// Resolves PIDs under `proc_root` (normally `/proc`).
    pub fn new(proc_root: PathBuf) -> Self {
        Self { proc_root, cache: HashMap::new(), seen: Vec::new() }
    }

    /// The pod UID of `pid`, if it runs in a pod.
    pub fn pod_uid_of(&mut self, pid: u32) -> Option<String> {
        self.seen.push(pid);
        if let Some(hit) = self.cache.get(&pid) {
            return hit.clone();
        }
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let uid = match std::fs::read_to_string(&path) {
            Ok(text) => pod_uid_from_cgroup(&text),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot read cgroup");
                None
            }
        };
        self.cache.insert(pid, uid.clone());
        uid
    }

    /// Forgets PIDs not asked about since the last call, so that a reused PID
    /// is looked up afresh.
    pub fn end_pass(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        self.cache.retain(|pid, _| seen.contains(pid));
    }
}

/// Extracts the pod UID from the text of `/proc/<pid>/cgroup`.
pub fn pod_uid_from_cgroup(text: &str) -> Option<String> {
    text.lines()
        // `hierarchy-ID:controllers:path`; the path may itself contain ':'.
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find_map(pod_uid_from_segment)
}

fn pod_uid_from_segment(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = name.rfind("pod")?;
    let candidate = &name[at + 3..];
    let uid: String = candidate.chars().map(|c| if c == '_' { '-' } else { c }).collect();
    is_uid(&uid).then_some(uid)
}

/// A Kubernetes UID: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests;
