//! A simulated fleet on loopback, for measuring the adapter at cluster scale
//! without a cluster (`hack/bench.sh`):
//!
//! - `feeds`: N agents' `/v1/pods` feeds (P pods each) from one server, at
//!   `/agent-<i>/v1/pods`, re-rendered every second like real agents;
//! - `adapter`: the real adapter (HTTPS, client certificates, the collector
//!   polling every feed each second) with the fleet's pod labels indexed as a
//!   cluster's reflectors would give them: namespace `fleet`, pod
//!   `pod-<agent>-<n>`, label `app=app-<k>` over 50 apps.
//!
//! ```text
//! cargo run --release --example fleet -- feeds --agents 1000 --pods 10 --listen 127.0.0.1:19600
//! cargo run --release --example fleet -- adapter --feeds http://127.0.0.1:19600 --agents 1000 --pods 10 \
//!     --listen 127.0.0.1:19643 --kubeconfig-out fleet.kubeconfig
//! ```
//!
//! Loopback only: both refuse any other address.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use arc_swap::ArcSwap;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube_gpu_metrics::adapter::PollArgs;
use kube_gpu_metrics::adapter::keda::server::KedaSetup;
use kube_gpu_metrics::feed::{FeedGpu, FeedPod, NodeFeed};
use kube_gpu_metrics::k8s::labels::{LabelIndex, LabelMaps};
use kube_gpu_metrics::standalone::{LocalAdapter, start_local_adapter};
use tokio::sync::watch;

const NAMESPACE: &str = "fleet";
const APPS: usize = 50;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve N agents' feeds.
    Feeds {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        pods: usize,
        #[arg(long, default_value = "127.0.0.1:19600")]
        listen: SocketAddr,
    },
    /// Run the adapter over the fleet's feeds.
    Adapter {
        /// Base URL of `feeds`.
        #[arg(long, default_value = "http://127.0.0.1:19600")]
        feeds: String,
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        pods: usize,
        #[arg(long, default_value = "127.0.0.1:19643")]
        listen: SocketAddr,
        /// Where the kubeconfig (CA, client certificate) for `loadgen` goes.
        #[arg(long, default_value = "fleet.kubeconfig")]
        kubeconfig_out: PathBuf,
        /// Time between poll rounds; a long one measures the query path
        /// alone (values then stay servable for `--max-age`).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        poll_interval: Duration,
        /// Oldest value served.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        max_age: Duration,
        /// Also serve KEDA's external scaler here (its clients trust the
        /// kubeconfig's CA).
        #[arg(long)]
        keda_listen: Option<SocketAddr>,
    },
}

fn pod_name(agent: usize, n: usize) -> String {
    format!("pod-{agent}-{n}")
}

fn app_of(agent: usize, pods: usize, n: usize) -> String {
    format!("app-{}", (agent * pods + n) % APPS)
}

/// Agent `agent`'s feed at `now_ms`: one RTX 4090 shared by its pods.
fn feed(agent: usize, pods: usize, now_ms: u64) -> NodeFeed {
    let uuid = format!("GPU-fleet-{agent:05}");
    NodeFeed {
        node: format!("node-{agent}"),
        timestamp_ms: now_ms,
        interval_ms: 1000,
        gpus: vec![FeedGpu {
            index: 0,
            uuid: uuid.clone(),
            model: "NVIDIA GeForce RTX 4090".into(),
            up: true,
            utilization_percent: Some(((agent * 7) % 100) as f64),
            memory_utilization_percent: Some(20.0),
            memory_used_bytes: Some(8 << 30),
            memory_total_bytes: Some(24 << 30),
        }],
        pods: (0..pods)
            .map(|n| FeedPod {
                namespace: NAMESPACE.into(),
                pod: pod_name(agent, n),
                gpus: vec![uuid.clone()],
                sharing: "shared".into(),
                utilization_percent: Some(((agent + n * 13) % 100) as f64),
                memory_utilization_percent: Some(10.0),
                memory_used_bytes: None,
                reason: None,
            })
            .collect(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn render(agents: usize, pods: usize) -> HashMap<String, Bytes> {
    let now = now_ms();
    (0..agents)
        .map(|a| {
            let body = serde_json::to_vec(&feed(a, pods, now)).expect("a feed serializes");
            (format!("/agent-{a}/v1/pods"), Bytes::from(body))
        })
        .collect()
}

async fn feeds(agents: usize, pods: usize, listen: SocketAddr) -> anyhow::Result<()> {
    let bodies = Arc::new(ArcSwap::from_pointee(render(agents, pods)));
    let refresh = bodies.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            refresh.store(Arc::new(render(agents, pods)));
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("fleet feeds listening on http://{} ({agents} agents × {pods} pods)", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let body = bodies.load().get(req.uri().path()).cloned();
                async move {
                    let response = match body {
                        Some(body) => Response::new(Full::new(body)),
                        None => {
                            let mut r = Response::new(Full::new(Bytes::from_static(b"no such agent")));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

struct FleetAdapter {
    feeds: String,
    agents: usize,
    pods: usize,
    listen: SocketAddr,
    kubeconfig_out: PathBuf,
    poll_interval: Duration,
    max_age: Duration,
    keda_listen: Option<SocketAddr>,
}

async fn adapter(fleet: FleetAdapter) -> anyhow::Result<()> {
    let FleetAdapter { feeds, agents, pods, listen, kubeconfig_out, poll_interval, max_age, keda_listen } = fleet;
    let mut labels = LabelMaps::default();
    let namespace = labels.pods.entry(NAMESPACE.into()).or_default();
    for a in 0..agents {
        for n in 0..pods {
            namespace.insert(pod_name(a, n), [("app".to_string(), app_of(a, pods, n))].into_iter().collect());
        }
    }
    let urls: Vec<String> = (0..agents).map(|a| format!("{}/agent-{a}", feeds.trim_end_matches('/'))).collect();
    let local = LocalAdapter {
        listen,
        agents: urls,
        labels: std::sync::Arc::new(LabelIndex::new(labels)),
        poll: PollArgs { poll_interval, max_age: Some(max_age), ..PollArgs::default() },
        prometheus: None,
        kubeconfig_out,
        keda: keda_listen.map(|listen| KedaSetup {
            listen,
            required: true,
            client_ca_file: None,
            flag: "--keda-listen",
        }),
        ca_out: None,
    };
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let running = start_local_adapter(local, shutdown).await?;
    eprintln!("fleet adapter listening on https://{} ({agents} agents × {pods} pods)", running.addr);
    if let Some(addr) = running.keda_addr {
        eprintln!("fleet KEDA scaler listening on {addr}");
    }
    running.done.await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let addr = match &cli.command {
        Command::Feeds { listen, .. } | Command::Adapter { listen, .. } => *listen,
    };
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: the fleet only runs on this machine");
    }
    // The agent's and adapter's runtime settings.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Feeds { agents, pods, listen } => feeds(agents, pods, listen).await,
            Command::Adapter { feeds, agents, pods, listen, kubeconfig_out, poll_interval, max_age, keda_listen } => {
                let fleet =
                    FleetAdapter { feeds, agents, pods, listen, kubeconfig_out, poll_interval, max_age, keda_listen };
                adapter(fleet).await
            }
        }
    })
}
