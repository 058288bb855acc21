//! The node agent: samples GPUs and pod attribution on an interval and serves
//! the result as Prometheus `/metrics` and the `/v1/pods` feed.

pub mod exposition;
pub mod feed;
pub mod ledger;
pub mod sample;
pub mod sampler;
pub mod self_metrics;
pub mod server;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::Args;
use tokio::sync::watch;

use crate::attribution::Attribution;
use crate::attribution::AttributionArgs;
use crate::gpu::GpuArgs;
use sampler::{Sampler, SamplerSettings};
use self_metrics::AgentMetrics;
use snapshot::{AgentState, Snapshot};

/// Flags of sampling, shared by `agent` and `standalone`.
#[derive(Clone, Debug, Args)]
pub struct SamplingArgs {
    /// How often GPUs are sampled.
    #[arg(long, env = "KGM_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// How long one GPU's read may take before the GPU is marked down for
    /// that sample (default: the sample interval).
    #[arg(long, env = "KGM_GPU_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub gpu_read_timeout: Option<Duration>,

    /// Which metric names `/metrics` uses: `native` (`nvidia_gpu_*`),
    /// `dcgm` (dcgm-exporter's `DCGM_FI_DEV_*`), or `both`.
    #[arg(long, env = "KGM_NAMES", value_enum, default_value = "native")]
    pub names: exposition::MetricNames,

    /// The label that names the node on dcgm-exporter's families:
    /// `hostname`, as dcgm-exporter writes it since 4.8.3, or `Hostname`,
    /// as it wrote it before, for dashboards and queries pinned to that.
    #[arg(long, env = "KGM_DCGM_HOSTNAME_LABEL", value_enum, default_value = "hostname")]
    pub dcgm_hostname_label: exposition::HostnameLabel,

    /// How often the rarely-changing fields are read: the power limit, ECC
    /// counts, remapped rows and retired pages. Utilization, memory and power
    /// are read every `--interval`.
    #[arg(long, env = "KGM_HEALTH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
}

/// Flags of the agent's sampling and serving.
#[derive(Clone, Debug, Args)]
pub struct AgentArgs {
    /// Address `/metrics`, `/healthz`, `/readyz` and `/v1/pods` are served on.
    #[arg(long, env = "KGM_LISTEN", default_value = "0.0.0.0:9402")]
    pub listen: SocketAddr,

    /// This node's name (set it from the downward API's `spec.nodeName`).
    #[arg(long, env = "KGM_NODE_NAME", default_value = "localhost")]
    pub node_name: String,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub sampling: SamplingArgs,

    /// Turn pod attribution off (no kubelet on this host).
    #[arg(long, env = "KGM_NO_ATTRIBUTION")]
    pub no_attribution: bool,

    /// A file holding a token that `/v1/pods` requires as
    /// `Authorization: Bearer <token>` (the adapter's `--agent-token-file`).
    /// `/metrics` and the health endpoints stay open.
    #[arg(long, env = "KGM_FEED_TOKEN_FILE")]
    pub feed_token_file: Option<std::path::PathBuf>,
}

/// The `agent` command's flags: sampling and serving, the GPU source, and
/// attribution. `kube-gpu-metrics agent` and `kube-gpu-metrics-agent` take
/// the same ones.
#[derive(Clone, Debug, Args)]
pub struct AgentCommand {
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(flatten)]
    pub attribution: AttributionArgs,
}

/// Runs the agent the command describes until `shutdown` turns true and its
/// server and sampler have stopped.
pub async fn run(command: AgentCommand, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    use anyhow::Context;
    let listen = command.agent.listen;
    let setup = AgentSetup::from_args(command.agent, &command.gpu, &command.attribution);
    let running = start(setup, shutdown).await.with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    tracing::info!("agent listening on http://{}", running.addr);
    running.done.await.context("agent task failed")
}

/// Everything an agent runs with.
pub struct AgentSetup {
    /// Sampling and serving flags.
    pub agent: AgentArgs,
    /// Where GPU readings come from.
    pub opener: Arc<dyn crate::gpu::GpuSourceOpener>,
    /// Who holds which GPU.
    pub attribution: Box<dyn Attribution>,
}

impl AgentSetup {
    /// The setup `agent` runs with: the chosen GPU source, and the kubelet for
    /// attribution unless it is turned off.
    pub fn from_args(agent: AgentArgs, gpu: &GpuArgs, attribution: &AttributionArgs) -> Self {
        use crate::attribution::{Unattributed, kubelet::KubeletAttribution};
        use crate::gpu::{GpuSourceKind, nvml::NvmlOpener};
        use crate::sim::{SimAttribution, SimNode, SimOpener};
        match gpu.gpu_source {
            GpuSourceKind::Sim => {
                let node = Arc::new(SimNode::new(&agent.node_name, &gpu.sim_gpus, gpu.seed));
                Self { agent, opener: Arc::new(SimOpener(node.clone())), attribution: Box::new(SimAttribution(node)) }
            }
            GpuSourceKind::Nvml => {
                let attribution: Box<dyn Attribution> = if agent.no_attribution {
                    Box::new(Unattributed)
                } else {
                    Box::new(KubeletAttribution::new(attribution))
                };
                Self { agent, opener: Arc::new(NvmlOpener::new(gpu.nvml_lib.clone())), attribution }
            }
        }
    }
}

/// A started agent: where it listens, and its state.
pub struct RunningAgent {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The snapshot and counters.
    pub state: AgentState,
    /// Finishes when the server and sampler have stopped.
    pub done: tokio::task::JoinHandle<()>,
}

/// Binds the listener, starts the sampler and the server, and returns once
/// the agent is listening. Both stop when `shutdown` turns true.
pub async fn start(setup: AgentSetup, shutdown: watch::Receiver<bool>) -> std::io::Result<RunningAgent> {
    let metrics = Arc::new(AgentMetrics::default());
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty(
        &setup.agent.node_name,
        setup.agent.sampling.interval,
        &metrics,
    )));
    let feed_token = setup
        .agent
        .feed_token_file
        .as_deref()
        .map(|p| crate::k8s::token::read_token(p, "--feed-token-file"))
        .transpose()?;
    let state = AgentState { snapshot, metrics, feed_token };
    let listener = tokio::net::TcpListener::bind(setup.agent.listen).await?;
    let addr = listener.local_addr()?;
    let settings = SamplerSettings {
        node: setup.agent.node_name.clone(),
        interval: setup.agent.sampling.interval,
        read_timeout: setup.agent.sampling.gpu_read_timeout.unwrap_or(setup.agent.sampling.interval),
        naming: exposition::Naming {
            names: setup.agent.sampling.names,
            dcgm_hostname_label: setup.agent.sampling.dcgm_hostname_label,
        },
        health_interval: setup.agent.sampling.health_interval,
    };
    let sampler = Sampler::new(settings, setup.opener, setup.attribution, state.clone());
    let sampler_task = tokio::spawn(sampler.run(shutdown.clone()));
    let server_task = tokio::spawn(server::serve(listener, state.clone(), shutdown));
    let done = tokio::spawn(async move {
        let _ = server_task.await;
        let _ = sampler_task.await;
    });
    Ok(RunningAgent { addr, state, done })
}
