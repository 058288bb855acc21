//! The adapter's HTTPS server: TLS, then authentication, method, route,
//! authorization and the answer, every failure a Kubernetes `Status`.
//!
//! Order of checks, as kube-apiserver does it: health endpoints and
//! `/metrics` answer anyone (probes and scrapers carry no certificate);
//! everything else needs an authenticated user (401); only GET is served
//! (405); an unknown path is 404; a query needs authorization (403);
//! discovery and OpenAPI documents are served to any authenticated user, as
//! the aggregator's availability check expects.
//!
//! At most `max_connections` connections are open at once; one over the
//! limit is closed at once, and every TLS handshake has a deadline, so idle
//! or slow clients cannot hold memory.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::auth::{Attributes, Authenticator, Authorizer};
use super::routes::{Query, Route, route};
use super::status::ApiError;
use crate::adapter::admission::Rejections;
use crate::adapter::provider::Provider;
use crate::adapter::readiness::Readiness;
use crate::adapter::tls::{ClientCa, handshake};
use crate::family_writer::{FamilyWriter, Kind, TEXT_CONTENT_TYPE};
use crate::listener::ConnectionSlots;

/// How long a client may take for the TLS handshake, and for each request's
/// headers.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Request heads beyond this are refused (431).
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// GET needs no body; one announced beyond this is refused (413).
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// How long in-flight requests get on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What a request is answered with.
pub struct AdapterService {
    /// The values.
    pub provider: Provider,
    /// Authentication.
    pub authenticator: Authenticator,
    /// Authorization.
    pub authorizer: Authorizer,
    /// What `/readyz` waits for.
    pub readiness: Readiness,
    /// Items refused from sources, for `/metrics`.
    pub rejections: Arc<Rejections>,
    /// The HTTPS port's connection limit, for `/metrics`.
    pub connections: ConnectionSlots,
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn status(error: &ApiError) -> Response<Full<Bytes>> {
    json(error.code, error.to_body())
}

impl AdapterService {
    /// Answers one request from a client with the given verified certificate.
    pub async fn handle<B>(&self, req: &Request<B>, peer: Option<&CertificateDer<'_>>) -> Response<Full<Bytes>> {
        match self.answer(req, peer).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(
                    path = req.uri().path(),
                    code = error.code.as_u16(),
                    message = error.message,
                    "refused"
                );
                status(&error)
            }
        }
    }

    async fn answer<B>(
        &self,
        req: &Request<B>,
        peer: Option<&CertificateDer<'_>>,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let path = req.uri().path();
        match path {
            "/healthz" | "/livez" => return Ok(json(StatusCode::OK, Bytes::from_static(b"ok"))),
            "/readyz" => return Ok(self.readyz(req.uri().query())),
            "/metrics" => return Ok(self.metrics()),
            _ => {}
        }
        let user = self.authenticator.authenticate(peer, req.headers())?;
        if req.method() != Method::GET {
            return Err(ApiError::method_not_allowed(req.method().as_str()));
        }
        let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > MAX_BODY_BYTES) {
            return Err(ApiError::too_large(format!("request body larger than {MAX_BODY_BYTES} bytes")));
        }
        let route: Route = route(path)?;
        let query = Query::parse(req.uri().query())?;
        if let Some(attrs) = Attributes::of(&route) {
            self.authorizer.authorize(&user, &attrs).await?;
        }
        Ok(json(StatusCode::OK, super::respond(&self.provider, &route, &query, SystemTime::now())?))
    }

    /// `/readyz`: `ok`, or a 503 `Status` naming the failed checks;
    /// `?verbose` lists every check as kube-apiserver does.
    fn readyz(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let (ready, report) = self.readiness.report();
        let verbose = query.is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
        match (ready, verbose) {
            (true, false) => json(StatusCode::OK, Bytes::from_static(b"ok")),
            (true, true) => text(StatusCode::OK, report),
            (false, _) => status(&ApiError::unavailable(format!("not ready: {}", Readiness::failures(&report)))),
        }
    }

    /// `/metrics`: the adapter's own counters.
    fn metrics(&self) -> Response<Full<Bytes>> {
        let mut w = FamilyWriter::default();
        self.rejections.write_metrics(&mut w);
        w.family(
            "kube_gpu_metrics_adapter_connections_refused",
            "Connections closed because --max-connections were open",
            Kind::Counter,
        );
        w.series(&[], self.connections.refused());
        w.family("kube_gpu_metrics_adapter_ready", "Whether every readiness check passes", Kind::Gauge);
        w.series(&[], self.readiness.is_ready());
        let (body, _) = w.finish();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
        response
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Serves HTTPS until `shutdown` turns true, then drains connections. At
/// most the service's connection slots are open at once.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    client_ca: ClientCa,
    service: Arc<AdapterService>,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT).max_buf_size(MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
    crate::listener::accept_until(listener, shutdown, SHUTDOWN_GRACE, |stream, watcher| {
        let Some(slot) = service.connections.take() else { return drop(stream) };
        let (acceptor, service, builder, client_ca) =
            (acceptor.clone(), service.clone(), builder.clone(), client_ca.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some((tls, peer)) = handshake(&acceptor, stream, Some(&client_ca), HANDSHAKE_TIMEOUT).await else {
                return;
            };
            let peer = Arc::new(peer);
            let svc = service_fn(move |req| {
                let (service, peer) = (service.clone(), peer.clone());
                async move { Ok::<_, Infallible>(service.handle(&req, peer.as_ref().as_ref()).await) }
            });
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(tls), svc));
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    })
    .await;
}
