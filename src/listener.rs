//! Accepting connections until shutdown, then draining them: what the
//! agent's and the adapter's servers share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// At most so many connections open at once on one port; one over the limit
/// is to be closed at once, and the first refusal is logged.
#[derive(Debug)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
    flag: &'static str,
    refused: AtomicU64,
}

impl ConnectionSlots {
    /// `max` slots (at least one), set by `flag`.
    pub fn new(max: usize, flag: &'static str) -> Self {
        Self { slots: Arc::new(Semaphore::new(max.max(1))), max, flag, refused: AtomicU64::new(0) }
    }

    /// A slot for a new connection, held until it closes; `None` at the limit.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots.clone().try_acquire_owned().ok();
        if slot.is_none() && self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(max = self.max, flag = self.flag, "connection limit reached; closing new connections");
        }
        slot
    }

    /// Connections closed at the limit so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
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
            _ = crate::shutdown::stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period; closing");
    }
}
