//! The `kube-gpu-metrics` binary: command-line wiring only.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use kube_gpu_metrics::adapter::{self, AdapterArgs, AdapterSetup};
use kube_gpu_metrics::agent::{self, AgentArgs, AgentSetup};
use kube_gpu_metrics::attribution::AttributionArgs;
use kube_gpu_metrics::gpu::GpuArgs;
use kube_gpu_metrics::hpa::preview::{self, PreviewArgs};
use kube_gpu_metrics::standalone::{self, StandaloneArgs};
use kube_gpu_metrics::twin::{self, SimulateArgs};

/// How long the process may take to exit once its servers have drained: a
/// GPU read hung inside the driver is left behind rather than waited for.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines (Kubernetes components'
    /// `--logging-format=json`).
    Json,
}

/// GPU-aware autoscaling metrics for Kubernetes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log filter, e.g. `info` or `kube_gpu_metrics=debug`.
    #[arg(long, global = true, env = "KGM_LOG", default_value = "info")]
    log: String,

    /// Log line format.
    #[arg(long, global = true, env = "KGM_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Node agent: reads GPUs over NVML, attributes them to pods, serves /metrics and /v1/pods.
    Agent {
        #[command(flatten)]
        agent: AgentArgs,
        #[command(flatten)]
        gpu: GpuArgs,
        #[command(flatten)]
        attribution: AttributionArgs,
    },
    /// Custom metrics API server: serves custom.metrics.k8s.io and external.metrics.k8s.io over HTTPS.
    Adapter(AdapterArgs),
    /// The whole pipeline on localhost with simulated RTX 4090 and RTX 3060 nodes.
    #[command(mut_arg("gpu_source", |a| a.default_value("sim")), mut_arg("sim_gpus", |a| a.hide(true)))]
    Standalone(StandaloneArgs),
    /// What an HPA manifest would decide with the served metrics, and why.
    HpaPreview(PreviewArgs),
    /// A closed-loop twin of the cluster and its HPAs: what they will do under a scenario.
    Simulate(SimulateArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log is not a valid filter")?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run(cli.command));
    // Blocking threads still inside a hung driver call are not waited for.
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

async fn run(command: Command) -> anyhow::Result<()> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let signals = shutdown_tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = signals.send(true);
    });
    match command {
        Command::Agent { agent, gpu, attribution } => {
            let listen = agent.listen;
            let setup = AgentSetup::from_args(agent, &gpu, &attribution);
            let running = agent::start(setup, shutdown_rx)
                .await
                .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
            tracing::info!("agent listening on http://{}", running.addr);
            running.done.await.context("agent task failed")?;
        }
        Command::Adapter(args) => {
            let setup = AdapterSetup::from_args(args)?;
            let running = adapter::start(setup, shutdown_rx).await?;
            tracing::info!("adapter listening on https://{}", running.addr);
            if let Some(addr) = running.keda_addr {
                tracing::info!("KEDA external scaler listening on {addr} (gRPC over TLS)");
            }
            running.done.await.context("adapter task failed")?;
        }
        Command::HpaPreview(args) => {
            println!("{}", preview::run(&args).await?);
        }
        Command::Simulate(args) => {
            print!("{}", twin::run(&args)?);
        }
        Command::Standalone(args) => {
            standalone::run(args, shutdown_tx).await.context("standalone failed")?;
        }
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT. SIGHUP, which would otherwise end the
/// process with no drain, is logged and ignored: the serving certificate
/// is re-read on its own when its files change.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("install the SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hangup.recv() => tracing::info!("SIGHUP ignored: nothing to reload by signal (certificates reload when their files change); still running"),
        }
    }
}
