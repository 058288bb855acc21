//! The sources' HTTP client: one GET with a deadline, a size limit, and a
//! share of the round's byte budget, so that many large answers at once
//! cannot take the adapter past its memory limit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not usable.
    #[error("URL {url:?} is invalid: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connection or HTTP failure.
    #[error("{0}")]
    Http(String),
}

/// Limits of every GET.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// Time one answer may take, connection included.
    pub timeout: Duration,
    /// Largest body accepted, bytes.
    pub max_body_bytes: usize,
    /// Bodies read at once across all requests, bytes.
    pub max_in_flight_bytes: usize,
}

/// An answer, holding its share of the byte budget until it is dropped
/// (after decoding).
pub struct Fetched {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The body.
    pub body: Bytes,
    _reserved: OwnedSemaphorePermit,
}

/// A GET client; cheap to clone into a task per request.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    limits: FetchLimits,
    in_flight: Arc<Semaphore>,
}

impl Fetcher {
    /// A client with these limits.
    pub fn new(limits: FetchLimits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(limits.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let permits = limits.max_in_flight_bytes.clamp(limits.max_body_bytes, Semaphore::MAX_PERMITS);
        Self { client, limits, in_flight: Arc::new(Semaphore::new(permits)) }
    }

    /// GETs `url` with `headers`: the status and the body, within the
    /// deadline and the size limit.
    pub async fn get(&self, url: &str, headers: &[(http::HeaderName, &str)]) -> Result<Fetched, FetchError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| FetchError::Url { url: url.to_string(), reason: e.to_string() })?;
        let limit = self.limits.max_body_bytes;
        let work = async {
            let mut request = http::Request::get(uri);
            for (name, value) in headers {
                request = request.header(name, *value);
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| FetchError::Url { url: url.to_string(), reason: e.to_string() })?;
            let response = self.client.request(request).await.map_err(|e| FetchError::Http(e.to_string()))?;
            let status = response.status();
            // Reserve what the body will take before reading it.
            let announced = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .unwrap_or(limit);
            if announced > limit {
                return Err(FetchError::Http(format!("body of {announced} bytes is over the limit of {limit} bytes")));
            }
            let reserved = self
                .in_flight
                .clone()
                .acquire_many_owned(announced.max(1) as u32)
                .await
                .map_err(|_| FetchError::Http("the client is closing".into()))?;
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| FetchError::Http(format!("reading the body (limit {limit} bytes): {e}")))?;
            Ok(Fetched { status, body: body.to_bytes(), _reserved: reserved })
        };
        tokio::time::timeout(self.limits.timeout, work).await.unwrap_or(Err(FetchError::Timeout(self.limits.timeout)))
    }
}
