//! Accepting connections until shutdown, then draining them: what the
//! agent's and the adapter's servers share.

use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
