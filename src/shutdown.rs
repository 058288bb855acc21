//! Shutdown as every long-running task sees it: a `watch` flag that turns
//! true once, the periodic rounds that stop on it, and the ordered drain of
//! a binary's background tasks so nothing is left detached.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The rounds of a periodic task: [`Rounds::next`] waits for the next one,
/// or says there is none once `shutdown` turns true. A round that overruns
/// delays the next one; rounds never pile up.
pub struct Rounds {
    tick: tokio::time::Interval,
    shutdown: watch::Receiver<bool>,
}

impl Rounds {
    /// Rounds every `interval`, the first at once.
    pub fn new(interval: Duration, shutdown: watch::Receiver<bool>) -> Self {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick, shutdown }
    }

    /// Waits for the next round: `false` once shutdown has begun.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            _ = stopped(&mut self.shutdown) => false,
        }
    }

    /// Runs `round` to its end unless shutdown begins first: `false` then,
    /// and the round is dropped where it stood.
    pub async fn run<F: Future<Output = ()>>(&mut self, round: F) -> bool {
        tokio::select! {
            _ = round => true,
            _ = stopped(&mut self.shutdown) => false,
        }
    }
}

/// A binary's background tasks, awaited in the order they were added when
/// it stops: the server first (it drains its connections), then what feeds
/// it. Each task watches the same shutdown flag and ends by itself.
#[derive(Default)]
pub struct Tasks {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    /// Adds a named task.
    pub fn push(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.tasks.push((name, task));
    }

    /// The tasks, in order.
    pub fn into_inner(self) -> Vec<(&'static str, JoinHandle<()>)> {
        self.tasks
    }

    /// Awaits every task in order; a task that panicked is logged.
    pub async fn drain(self) {
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(task = name, error = %e, "background task failed");
            } else {
                tracing::debug!(task = name, "stopped");
            }
        }
    }
}

/// What a panic said, from its payload.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload.downcast::<&'static str>().map_or_else(|_| "a panic".to_string(), |m| m.to_string()),
    }
}

#[cfg(test)]
mod panic_tests {
    use super::panic_message;

    #[test]
    fn a_panics_message_is_read_from_either_payload() {
        let literal = std::panic::catch_unwind(|| panic!("overflow when adding durations")).unwrap_err();
        assert_eq!(panic_message(literal), "overflow when adding durations");
        let formatted = std::panic::catch_unwind(|| panic!("step {}", 2)).unwrap_err();
        assert_eq!(panic_message(formatted), "step 2");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(panic_message(other), "a panic");
    }
}
