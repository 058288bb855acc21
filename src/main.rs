//! The `kube-gpu-metrics` binary: command-line wiring only.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};

use kube_gpu_metrics::adapter::{self, AdapterArgs};
use kube_gpu_metrics::agent::{self, AgentCommand};
use kube_gpu_metrics::hpa::preview::{self, PreviewArgs};
use kube_gpu_metrics::process::{self, LogArgs};
use kube_gpu_metrics::standalone::{self, StandaloneArgs};
use kube_gpu_metrics::twin::{self, SimulateArgs};

/// GPU-aware autoscaling metrics for Kubernetes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    logs: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Node agent: reads GPUs over NVML, attributes them to pods, serves /metrics and /v1/pods.
    ///
    /// The DaemonSet runs the same agent, with the same flags, as the smaller
    /// `kube-gpu-metrics-agent` binary.
    Agent(AgentCommand),
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
    process::run(&cli.logs, |shutdown_tx| run(cli.command, shutdown_tx))
}

async fn run(command: Command, shutdown_tx: tokio::sync::watch::Sender<bool>) -> anyhow::Result<()> {
    match command {
        Command::Agent(command) => agent::run(command, shutdown_tx.subscribe()).await?,
        Command::Adapter(args) => adapter::run(args, shutdown_tx.subscribe()).await?,
        Command::HpaPreview(args) => println!("{}", preview::run(&args).await?),
        Command::Simulate(args) => print!("{}", twin::run(&args)?),
        Command::Standalone(args) => standalone::run(args, shutdown_tx).await.context("standalone failed")?,
    }
    Ok(())
}
