//! Accepting connections until shutdown, then draining them, and running a
//! periodic round until shutdown: what the agent's and the adapter's servers
//! and pollers share.

use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
}

/// Accepts until `shutdown` turns true, handing each connection (with
/// `TCP_NODELAY`) and a graceful-shutdown watcher to `serve`, which spawns
/// it; then closes the listener and gives watched connections up to `grace`
/// to finish their requests.
pub async fn accept_until(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    mut serve: impl FnMut(TcpStream, Watcher),
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    serve(stream, graceful.watcher());
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period; closing");
    }
}
