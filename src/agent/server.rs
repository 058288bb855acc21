//! The agent's HTTP server: `/metrics`, `/v1/pods`, `/healthz`, `/readyz`.
//!
//! Every body is prepared by the sampler; a request picks one and clones its
//! [`Bytes`]. Connections have a header-read timeout, and on shutdown the
//! server stops accepting and lets in-flight requests finish, up to a bound.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::exposition::Representation;
use super::sample::Readiness;
use super::snapshot::AgentState;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Request headers beyond this are refused (431).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves until `shutdown` turns true, then drains connections.
pub async fn serve(listener: TcpListener, state: AgentState, shutdown: watch::Receiver<bool>) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEADER_BYTES.max(8192));
    crate::listener::accept_until(listener, shutdown, SHUTDOWN_GRACE, |stream, watcher| {
        let state = state.clone();
        let service = service_fn(move |req| {
            let response = handle(&state, &req);
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    })
    .await;
}

/// Whether `Authorization: Bearer <token>` carries `token`, compared in
/// constant time.
fn bearer_matches(header: Option<&HeaderValue>, token: &str) -> bool {
    let Some(given) = header.and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) else { return false };
    given.len() == token.len() && given.iter().zip(token.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn with_body(content_type: HeaderValue, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response
}

/// Answers one request from the current snapshot.
pub fn handle<B>(state: &AgentState, req: &Request<B>) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET or HEAD\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // hyper sends HEAD answers with the GET body's Content-Length and no body.
    match req.uri().path() {
        "/metrics" => {
            let snapshot = state.snapshot.load();
            let headers = req.headers();
            let repr = Representation::negotiate(headers.get(header::ACCEPT), headers.get(header::ACCEPT_ENCODING));
            state.metrics.scrape(repr.openmetrics);
            let mut response = with_body(repr.content_type(), snapshot.exposition.body(repr));
            let headers = response.headers_mut();
            if repr.gzip {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            headers.insert(header::VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
            response
        }
        "/v1/pods" => match &state.feed_token {
            Some(token) if !bearer_matches(req.headers().get(header::AUTHORIZATION), token) => {
                let mut response = plain(StatusCode::UNAUTHORIZED, "unauthorized: /v1/pods needs the feed token\n");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            _ => with_body(HeaderValue::from_static("application/json"), state.snapshot.load().feed.clone()),
        },
        "/healthz" | "/livez" => plain(StatusCode::OK, "ok\n"),
        "/readyz" => match &state.snapshot.load().data.readiness {
            Readiness::Ready => plain(StatusCode::OK, "ok\n"),
            Readiness::NotReady(reason) => {
                let mut response = with_body(
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                    Bytes::from(format!("not ready: {reason}\n")),
                );
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
            }
        },
        _ => plain(StatusCode::NOT_FOUND, "not found: try /metrics, /v1/pods, /healthz or /readyz\n"),
    }
}
