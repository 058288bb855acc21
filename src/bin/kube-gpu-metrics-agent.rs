//! The `kube-gpu-metrics-agent` binary: the node agent alone, as the
//! DaemonSet runs it. It takes the flags of `kube-gpu-metrics agent`, and
//! holds none of the adapter's, KEDA's or the twin's code, so the pages a
//! node pays for are the agent's own.
#![forbid(unsafe_code)]

use clap::Parser;

use kube_gpu_metrics::agent::{self, AgentCommand};
use kube_gpu_metrics::process::{self, LogArgs};

/// The kube-gpu-metrics node agent: reads GPUs over NVML, attributes them to
/// pods, serves /metrics and /v1/pods.
#[derive(Debug, Parser)]
#[command(name = "kube-gpu-metrics-agent", version)]
struct Cli {
    #[command(flatten)]
    logs: LogArgs,

    #[command(flatten)]
    agent: AgentCommand,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    process::run(&cli.logs, |shutdown_tx| agent::run(cli.agent, shutdown_tx.subscribe()))
}
