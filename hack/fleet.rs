//! A simulated fleet on loopback, for measuring the adapter at cluster scale
//! without a cluster (`hack/bench.sh`):
//!
//! - `feeds`: N agents' `/v1/pods` feeds (P pods each) from one server
//!   ([`kube_gpu_metrics::sim::fleet`]);
//! - `adapter`: the real adapter (HTTPS, client certificates, the collector
//!   polling every feed each second) with the fleet's pod labels indexed as a
//!   cluster's reflectors would give them.
//!
//! ```text
//! cargo run --release --example fleet -- feeds --agents 1000 --pods 10 --listen 127.0.0.1:19600
//! cargo run --release --example fleet -- adapter --feeds http://127.0.0.1:19600 --agents 1000 --pods 10 \
//!     --listen 127.0.0.1:19643 --kubeconfig-out fleet.kubeconfig
//! ```
//!
//! Loopback only: both refuse any other address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};
use kube_gpu_metrics::adapter::PollArgs;
use kube_gpu_metrics::adapter::keda::server::KedaSetup;
use kube_gpu_metrics::k8s::labels::LabelIndex;
use kube_gpu_metrics::sim::fleet::Fleet;
use kube_gpu_metrics::standalone::{LocalAdapter, start_local_adapter};
use tokio::sync::watch;

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

async fn feeds(fleet: Fleet, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "fleet feeds listening on http://{} ({} agents × {} pods)",
        listener.local_addr()?,
        fleet.agents,
        fleet.pods
    );
    fleet.serve(listener).await?;
    Ok(())
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
    let fleet = Fleet { agents, pods };
    let local = LocalAdapter {
        listen,
        agents: fleet.urls(&feeds),
        labels: std::sync::Arc::new(LabelIndex::new(fleet.labels())),
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
            Command::Feeds { agents, pods, listen } => feeds(Fleet { agents, pods }, listen).await,
            Command::Adapter { feeds, agents, pods, listen, kubeconfig_out, poll_interval, max_age, keda_listen } => {
                let fleet =
                    FleetAdapter { feeds, agents, pods, listen, kubeconfig_out, poll_interval, max_age, keda_listen };
                adapter(fleet).await
            }
        }
    })
}
