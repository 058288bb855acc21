//! A bounded HTTP(S) load generator for loopback targets: N requests over C
//! keep-alive connections, reporting throughput, latency percentiles, errors
//! and the target's RSS before and after.
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:9402/metrics \
//!     --requests 1000000 --concurrency 64 --pid "$(pgrep -f 'standalone')"
//! cargo run --release --example loadgen -- --url "https://127.0.0.1:6443/apis/custom.metrics.k8s.io/v1beta2/..." \
//!     --requests 100000 --concurrency 64 --kubeconfig standalone.kubeconfig
//! cargo run --release --example loadgen -- --url grpcs://127.0.0.1:9443 --kubeconfig standalone.kubeconfig \
//!     --keda-namespace ai-system-gpu --keda-metadata targetValue=70 --keda-metadata podSelector=app=reasoning-suite
//! ```
//!
//! A `grpcs://` URL calls the KEDA scaler's `GetMetrics` (HTTP/2 over TLS, one
//! connection per `--concurrency`), trusting the kubeconfig's CA.
//!
//! With `--rate R` the load is an open loop: request k is due at k/R seconds,
//! and a late request's latency counts from when it was due, not from when a
//! connection was free to send it (no coordinated omission).
//!
//! Only loopback addresses are accepted, and every run stops after
//! `--requests` or `--max-seconds`, whichever comes first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use kube_gpu_metrics::adapter::keda::proto::external_scaler_client::ExternalScalerClient;
use kube_gpu_metrics::adapter::keda::proto::{GetMetricsRequest, ScaledObjectRef};
use kube_gpu_metrics::feed::unix_ms;
use kube_gpu_metrics::sim::fleet::Fleet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Load on a loopback URL, bounded in count and time.
#[derive(Debug, Parser)]
struct Args {
    /// Target URL (http or https, loopback only).
    #[arg(long)]
    url: http::Uri,
    /// Requests in total.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Connections (and requests in flight).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Requests per second, open loop (default: closed loop, as fast as the
    /// connections go).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many seconds even if requests remain.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// PID of the target, to report its RSS before and after.
    #[arg(long)]
    pid: Option<u32>,
    /// For https: a kubeconfig holding the CA and a client certificate
    /// (as `standalone` writes it).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Extra request headers, `Name: value`.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// For grpcs: the ScaledObject's namespace.
    #[arg(long, default_value = "default")]
    keda_namespace: String,
    /// For grpcs: the trigger's metadata, `key=value`.
    #[arg(long = "keda-metadata")]
    keda_metadata: Vec<String>,
    /// Instead of load: watch the simulated fleet's marker pod at `--url`
    /// (one request every 10 ms on one connection) through this many of its
    /// changes, and report how long each took to show (a GPU change until
    /// the API serves it).
    #[arg(long)]
    freshness_changes: Option<u32>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// The CA and client certificate of a kubeconfig written by `standalone`.
fn tls_config(kubeconfig: &PathBuf) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let text = std::fs::read_to_string(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let field = |name: &str| -> anyhow::Result<Vec<u8>> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .with_context(|| format!("no {name}"))?;
        Ok(base64::engine::general_purpose::STANDARD.decode(line.trim())?)
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(&field("certificate-authority-data")?)?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(&field("client-certificate-data")?)?],
            PrivateKeyDer::from_pem_slice(&field("client-key-data")?)?,
        )?;
    Ok(Arc::new(config))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One connection to the target.
enum Connection {
    Http(Sender),
    Keda(ExternalScalerClient<Channel>),
}

/// What every request asks.
#[derive(Clone)]
enum Ask {
    Http { path: String, headers: Vec<(String, String)> },
    Keda { ca: String, request: GetMetricsRequest },
}

impl Connection {
    async fn open(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>, ask: &Ask) -> anyhow::Result<Self> {
        match ask {
            Ask::Http { .. } => Ok(Connection::Http(connect(addr, tls).await?)),
            Ask::Keda { ca, .. } => {
                let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
                let channel = Channel::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?;
                Ok(Connection::Keda(ExternalScalerClient::new(channel)))
            }
        }
    }

    fn is_closed(&self) -> bool {
        matches!(self, Connection::Http(sender) if sender.is_closed())
    }

    /// Sends one request and reads the whole answer; whether it succeeded.
    async fn send(&mut self, ask: &Ask) -> bool {
        match (self, ask) {
            (Connection::Http(sender), Ask::Http { path, headers }) => {
                let mut req = http::Request::get(path.as_str()).header(http::header::HOST, "localhost");
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let req = req.body(Empty::new()).expect("a valid request");
                match sender.send_request(req).await {
                    Ok(response) => {
                        let success = response.status().is_success();
                        response.into_body().collect().await.is_ok() && success
                    }
                    Err(_) => false,
                }
            }
            (Connection::Keda(client), Ask::Keda { request, .. }) => {
                client.get_metrics(request.clone()).await.is_ok_and(|r| !r.into_inner().metric_values.is_empty())
            }
            _ => unreachable!("a connection is opened for its ask"),
        }
    }
}

/// The CA of a kubeconfig written by `standalone`, PEM.
fn kubeconfig_ca(kubeconfig: &PathBuf) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .context("no certificate-authority-data")?;
    Ok(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(line.trim())?)?)
}

async fn connect(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let sender = match tls {
        Some(config) => {
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(ServerName::try_from("localhost")?, tcp)
                .await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender
        }
        None => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    Ok(sender)
}

/// The value of the first item of a custom metrics answer.
async fn first_value(sender: &mut Sender, path: &str) -> Option<f64> {
    let req = http::Request::get(path).header(http::header::HOST, "localhost").body(Empty::new()).ok()?;
    let response = sender.send_request(req).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let value = answer["items"][0]["value"].as_str()?;
    match value.strip_suffix('m') {
        Some(milli) => Some(milli.parse::<f64>().ok()? / 1000.0),
        None => value.parse().ok(),
    }
}

/// Watches the fleet's marker pod through `changes` changes; each one's
/// delay until the API served it, or `None` if it never did within its
/// period.
async fn watch_marker(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    path: &str,
    changes: u32,
) -> anyhow::Result<Vec<Option<u64>>> {
    let now_ms = || unix_ms(SystemTime::now());
    let period = Fleet::MARKER_PERIOD.as_millis() as u64;
    let mut sender = connect(addr, tls).await?;
    let mut change_at = (now_ms() / period + 1) * period;
    let mut delays = Vec::new();
    for _ in 0..changes {
        let want = Fleet::marker(change_at);
        let mut seen = None;
        while now_ms() < change_at + period {
            if sender.is_closed() {
                sender = connect(addr, tls).await?;
            }
            let value = first_value(&mut sender, path).await;
            let at = now_ms();
            if at >= change_at && value == Some(want) {
                seen = Some(at - change_at);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        delays.push(seen);
        change_at += period;
    }
    Ok(delays)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = args.url.host().context("the URL needs a host")?;
    let https = args.url.scheme_str() == Some("https");
    let grpcs = args.url.scheme_str() == Some("grpcs");
    let port = args.url.port_u16().unwrap_or(if https || grpcs { 443 } else { 80 });
    let addr: SocketAddr = tokio::net::lookup_host((host, port)).await?.next().context("no address")?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: load is only ever sent to this machine");
    }
    let tls = match (https, &args.kubeconfig) {
        (true, Some(path)) => Some(tls_config(path)?),
        (true, None) => bail!("https needs --kubeconfig for the CA and client certificate"),
        (false, _) => None,
    };
    if grpcs && args.kubeconfig.is_none() {
        bail!("grpcs needs --kubeconfig for the CA");
    }
    let headers: Vec<(String, String)> = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).context("header: Name: value")
        })
        .collect::<anyhow::Result<_>>()?;
    let path = args.url.path_and_query().map_or("/", |p| p.as_str()).to_string();
    if let Some(changes) = args.freshness_changes {
        let mut delays = watch_marker(addr, tls.as_ref(), &path, changes).await?;
        let missed = delays.iter().filter(|d| d.is_none()).count();
        delays.sort_unstable();
        let seen: Vec<u64> = delays.into_iter().flatten().collect();
        let median = seen.get(seen.len() / 2).copied().unwrap_or(0);
        let max = seen.last().copied().unwrap_or(0);
        println!("freshness    {changes} changes: median {median} ms, max {max} ms, missed {missed}");
        return Ok(());
    }
    let ask = match (grpcs, &args.kubeconfig) {
        (true, Some(kubeconfig)) => {
            let scaler_metadata = args
                .keda_metadata
                .iter()
                .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).context("key=value"))
                .collect::<anyhow::Result<_>>()?;
            let object =
                ScaledObjectRef { name: "loadgen".into(), namespace: args.keda_namespace.clone(), scaler_metadata };
            Ask::Keda {
                ca: kubeconfig_ca(kubeconfig)?,
                request: GetMetricsRequest { scaled_object_ref: Some(object), metric_name: String::new() },
            }
        }
        _ => Ask::Http { path, headers },
    };

    let rss_before = args.pid.and_then(rss_kib);
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let rate = args.rate.filter(|r| *r > 0.0);
    for _ in 0..args.concurrency {
        let (issued, errors, tls, ask) = (issued.clone(), errors.clone(), tls.clone(), ask.clone());
        let total = args.requests;
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut connection: Option<Connection> = None;
            loop {
                let k = issued.fetch_add(1, Ordering::Relaxed);
                if k >= total || Instant::now() >= deadline {
                    break;
                }
                // A request counts from when it was due if it is late (the
                // server held its connection up: no coordinated omission), or
                // from when it is sent if it waited for its time (the timer's
                // millisecond granularity is the generator's, not the server's).
                let due = match rate.map(|r| started + Duration::from_secs_f64(k as f64 / r)) {
                    Some(due) if Instant::now() < due => {
                        tokio::time::sleep_until(due.into()).await;
                        Some(Instant::now())
                    }
                    late => late,
                };
                if connection.as_ref().is_none_or(Connection::is_closed) {
                    match Connection::open(addr, tls.as_ref(), &ask).await {
                        Ok(c) => connection = Some(c),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let c = connection.as_mut().expect("connected above");
                let t = due.unwrap_or_else(Instant::now);
                let ok = c.send(&ask).await;
                latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    connection = None;
                }
            }
            latencies
        }));
    }
    let mut latencies: Vec<u32> = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed();
    let rss_after = args.pid.and_then(rss_kib);
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!("target       {}", args.url);
    println!(
        "requests     {} in {:.1} s over {} connections",
        latencies.len(),
        elapsed.as_secs_f64(),
        args.concurrency
    );
    match rate {
        Some(r) => println!(
            "throughput   {:.0} req/s (open loop at {r:.0} req/s; a late request counts from its due time)",
            latencies.len() as f64 / elapsed.as_secs_f64()
        ),
        None => println!("throughput   {:.0} req/s", latencies.len() as f64 / elapsed.as_secs_f64()),
    }
    println!("latency      p50 {} µs, p99 {} µs, max {} µs", at(0.5), at(0.99), latencies.last().copied().unwrap_or(0));
    println!("errors       {}", errors.load(Ordering::Relaxed));
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!("target RSS   {before} KiB before, {after} KiB after ({:+} KiB)", after as i64 - before as i64);
    }
    if errors.load(Ordering::Relaxed) > 0 {
        bail!("requests failed");
    }
    Ok(())
}
