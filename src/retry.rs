//! Retrying something that keeps failing (the NVML open, the kubelet)
//! without a busy loop: exponential backoff between attempts.

use std::time::{Duration, Instant};

/// Exponential backoff between attempts at something that keeps failing.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Duration,
    next: Option<Instant>,
}

impl Backoff {
    /// Starts at `min` and doubles to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, delay: min, next: None }
    }

    /// Whether an attempt is due.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// Records a failed attempt; returns the wait before the next.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.delay;
        self.next = Some(now + wait);
        self.delay = (self.delay * 2).min(self.max);
        wait
    }

    /// Records a success.
    pub fn succeeded(&mut self) {
        self.delay = self.min;
        self.next = None;
    }

    /// Whether the last attempt failed.
    pub fn failing(&self) -> bool {
        self.next.is_some()
    }
}
