//! The KEDA scaler's gRPC server: HTTP/2 over TLS on its own port, with
//! the adapter's serving certificate (reloaded with it), and, with
//! `--keda-client-ca-file`, KEDA's client certificate required (KEDA's
//! `tlsClientCert`/`tlsClientKey`). A client without a trusted certificate
//! completes the handshake and is answered `Unauthenticated` with the
//! reason, rather than by a TLS alert it would report as `Unavailable`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tonic::Status;
use tower::Service;

use super::KedaScaler;
use super::proto::external_scaler_server::ExternalScalerServer;
use crate::adapter::tls::{ClientCa, handshake};
use crate::listener::ConnectionSlots;

/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long open calls (activation streams end at shutdown) get to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Calls at once on one connection. KEDA keeps one connection per scaler
/// address and holds one `StreamIsActive` stream per `external-push`
/// ScaledObject on it, so a limit near the number of ScaledObjects makes
/// every unary call on that connection wait behind the streams (at 256, each
/// `GetMetrics` hit `DEADLINE_EXCEEDED`). A held stream is cheap (1,000 cost
/// 9 CPU ticks per 10 s); connections are bounded by `--max-connections`.
const MAX_CONCURRENT_STREAMS: u32 = 16_384;
/// Pings on an idle connection, so a vanished KEDA frees its slot.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// `--keda-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KedaListen {
    /// Not served.
    Off,
    /// Served here.
    At(SocketAddr),
}

impl std::str::FromStr for KedaListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "off" => Ok(KedaListen::Off),
            addr => addr.parse().map(KedaListen::At).map_err(|e| format!("{addr:?} is neither host:port nor off: {e}")),
        }
    }
}

/// The scaler's address when `--keda-listen` is not given.
pub const DEFAULT_KEDA_LISTEN: &str = "0.0.0.0:9443";

/// Where the scaler listens and whom it trusts.
#[derive(Clone, Debug)]
pub struct KedaSetup {
    /// `--keda-listen`.
    pub listen: SocketAddr,
    /// Whether the address was asked for: a port asked for that cannot be
    /// bound stops the start; the default port taken by something else
    /// only leaves the scaler off, with a warning.
    pub required: bool,
    /// `--keda-client-ca-file`: when set, a client certificate it signed is
    /// required.
    pub client_ca_file: Option<PathBuf>,
    /// The flag that sets the address, for messages (`--keda-listen`;
    /// `standalone`'s `--keda-port`).
    pub flag: &'static str,
}

/// Serves the scaler until `shutdown` turns true, then drains. At most
/// `slots` connections are open at once.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    client_ca: Option<ClientCa>,
    scaler: KedaScaler,
    slots: Arc<ConnectionSlots>,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let service = ExternalScalerServer::new(scaler);
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let client_ca = client_ca.map(Arc::new);
    crate::listener::accept_until(listener, shutdown, SHUTDOWN_GRACE, |stream, watcher| {
        let Some(slot) = slots.take() else { return drop(stream) };
        let (acceptor, service, builder, client_ca) =
            (acceptor.clone(), service.clone(), builder.clone(), client_ca.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some((tls, peer)) = handshake(&acceptor, stream, client_ca.as_deref(), HANDSHAKE_TIMEOUT).await else {
                return;
            };
            let trusted = client_ca.is_none() || peer.is_some();
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let mut service = service.clone();
                async move {
                    if !trusted {
                        return Ok::<_, Infallible>(
                            Status::unauthenticated(
                                "a client certificate signed by the --keda-client-ca-file CA is required \
                                 (the trigger's tlsClientCert and tlsClientKey)",
                            )
                            .into_http(),
                        );
                    }
                    service.call(req).await
                }
            });
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(tls), svc));
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "KEDA connection ended with an error");
            }
        });
    })
    .await;
}
