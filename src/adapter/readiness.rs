//! What `/readyz` waits for: named checks, each passed or failed with a
//! reason, answered like kube-apiserver's (`[+]name ok`, `[-]name failed:
//! reason`). The adapter is ready when every check passes: the cluster
//! caches have synced, and a source has answered a first round.

use std::fmt::Display;
use std::sync::{Arc, Mutex};

/// One readiness check.
#[derive(Debug)]
pub struct Check {
    name: &'static str,
    state: Mutex<Result<(), String>>,
}

impl Check {
    /// Marks the check passed.
    pub fn pass(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Ok(());
    }

    /// Marks the check failed, with why.
    pub fn fail(&self, reason: impl Display) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Err(reason.to_string());
    }

    /// Whether it passes.
    pub fn is_ok(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).is_ok()
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Every check of a process.
#[derive(Debug, Default, Clone)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<Arc<Check>>>>,
}

impl Readiness {
    /// Adds a check, failing with `reason` until it passes.
    pub fn check(&self, name: &'static str, reason: impl Display) -> Arc<Check> {
        let check = Arc::new(Check { name, state: Mutex::new(Err(reason.to_string())) });
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).push(check.clone());
        check
    }

    /// Whether every check passes.
    pub fn is_ready(&self) -> bool {
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).iter().all(|c| c.is_ok())
    }

    /// The verbose report: one line per check, then the verdict.
    pub fn report(&self) -> (bool, String) {
        let checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let mut ready = true;
        for check in checks.iter() {
            match &*check.state.lock().unwrap_or_else(|e| e.into_inner()) {
                Ok(()) => out.push_str(&format!("[+]{} ok\n", check.name)),
                Err(reason) => {
                    ready = false;
                    out.push_str(&format!("[-]{} failed: {reason}\n", check.name));
                }
            }
        }
        out.push_str(if ready { "readyz check passed\n" } else { "readyz check failed\n" });
        (ready, out)
    }

    /// The failed checks of a [`Readiness::report`], on one line, for a
    /// refusal that says why.
    pub fn failures(report: &str) -> String {
        report.lines().filter(|l| l.starts_with("[-]")).collect::<Vec<_>>().join("; ")
    }
}
