//! `standalone`: the whole pipeline on localhost, no GPU or cluster needed.
//!
//! Two agents, one per simulated node of the reference cluster: `mainpc` with
//! an RTX 4090 and `pc2` with an RTX 3060, each time-sliced between the seed
//! workloads, on consecutive ports; and the adapter over HTTPS, polling them.
//! With `--gpu-source nvml` one agent reads the local GPUs instead.
//!
//! There is no kube-apiserver: the adapter has its own CA, authenticates
//! clients by a certificate from it (written into a kubeconfig, so plain
//! `kubectl get --raw` works) and allows every authenticated user.
//!
//! With `--cluster KUBECONFIG` the simulated nodes join a real cluster
//! instead, whose own controllers act on them ([`cluster`]).

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use base64::Engine;

use crate::adapter::keda::server::KedaSetup;
use crate::adapter::source::agents::AgentTarget;
use crate::adapter::source::prometheus::PrometheusSettings;
use crate::adapter::tls::{CertSource, LocalCa, PemPair};
use crate::adapter::{
    AdapterError, AdapterSetup, AuthorizationMode, ClientAuth, DEFAULT_MAX_CONNECTIONS, Limits, PollArgs,
    PrometheusArgs, RunningAdapter, SourceSetup,
};
use crate::agent::exposition::MetricNames;
use crate::agent::{AgentArgs, AgentSetup, RunningAgent, SamplingArgs};
use crate::attribution::Unattributed;
use crate::gpu::model::GpuModelId;
use crate::gpu::nvml::NvmlOpener;
use crate::gpu::{GpuArgs, GpuSourceKind};
use crate::hpa::spec::{HpaSpec, MetricSpec, parse_hpa};
use crate::hpa::sync::{MetricsReader, Scale, sync};
use crate::hpa::{Autoscaler, PodValue};
use crate::k8s::labels::LabelIndex;
use crate::sim::scenario::Scenario;
use crate::sim::{SimAttribution, SimNode, SimOpener};
use crate::twin::live::{DeploymentStatus, LiveSetup, LiveTwin};
use crate::twin::model::read_deployments;
use crate::twin::{deployment_for, read_hpa};

pub mod cluster;

/// Flags of `standalone`: its own, plus the agent's sampling, the GPU
/// source (simulated by default), the adapter's polling and its Prometheus
/// source, flattened in as they are.
#[derive(Clone, Debug, Args)]
pub struct StandaloneArgs {
    /// Address every server binds to.
    #[arg(long, env = "KGM_STANDALONE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port of the first agent (`mainpc`); the next node gets the next port.
    /// 0 picks free ports.
    #[arg(long, env = "KGM_STANDALONE_AGENT_PORT", default_value_t = 9402)]
    pub agent_port: u16,

    /// Port of the adapter (HTTPS). 0 picks a free port.
    #[arg(long, env = "KGM_STANDALONE_ADAPTER_PORT", default_value_t = 6443)]
    pub adapter_port: u16,

    /// Where the kubeconfig for the adapter is written.
    #[arg(long, env = "KGM_KUBECONFIG_OUT", default_value = "standalone.kubeconfig")]
    pub kubeconfig_out: PathBuf,

    /// Port of KEDA's external scaler (gRPC over TLS) [default: 9443; if
    /// that port is taken the scaler is left off with a warning, while a
    /// port given here must bind]. 0 picks a free port.
    #[arg(long, env = "KGM_STANDALONE_KEDA_PORT")]
    pub keda_port: Option<u16>,

    /// A CA (PEM) whose client certificates the KEDA scaler then requires.
    #[arg(long, env = "KGM_KEDA_CLIENT_CA_FILE")]
    pub keda_client_ca_file: Option<PathBuf>,

    /// Where the standalone CA (PEM) is written, for gRPC clients of the KEDA
    /// scaler (the kubeconfig embeds it too).
    #[arg(long, env = "KGM_CA_OUT", default_value = "standalone-ca.pem")]
    pub ca_out: PathBuf,

    /// A YAML file scripting the simulated load per workload (see
    /// `hack/scenarios/`); unnamed workloads keep their moving load. With
    /// it, the HPAs (`--hpa`) scale their Deployments live: a Deployment's
    /// load is then its demand in RTX 4090s' percent, spread over its ready
    /// pods.
    #[arg(long, env = "KGM_SCENARIO")]
    pub scenario: Option<PathBuf>,

    /// HPA manifests that scale the simulated Deployments under
    /// `--scenario`, used as written [default: the reference HPA,
    /// deploy/examples/reasoning-gpu-hpa.yaml]; repeat for several.
    #[arg(long = "hpa", env = "KGM_HPA", value_delimiter = ',', requires = "scenario")]
    pub hpa: Vec<PathBuf>,

    /// The scaled Deployments' tolerations, start-up time and initial
    /// replicas (`simulate`'s format) [default: tolerate the `gpu` taint,
    /// 45 s to start]; with `--cluster`, only the start-up times.
    #[arg(long, env = "KGM_DEPLOYMENTS")]
    pub deployments: Option<PathBuf>,

    /// Join a real cluster: the simulated nodes register with the API
    /// server this kubeconfig reaches, and its own scheduler, controllers
    /// and HPAs act on them; standalone runs their pods and the pipeline.
    /// Without it, standalone simulates the control plane too.
    #[arg(long, env = "KGM_CLUSTER", value_name = "KUBECONFIG", conflicts_with_all = ["hpa", "fixed_replicas"])]
    pub cluster: Option<PathBuf>,

    /// With `--cluster`: leave the nodes registered on shutdown.
    #[arg(long, env = "KGM_KEEP_NODES", requires = "cluster")]
    pub keep_nodes: bool,

    /// With `--cluster`: write each second's replicas, pods, placements and
    /// unserved work here (CSV, `simulate`'s timeline format).
    #[arg(long, env = "KGM_TIMELINE", requires = "cluster")]
    pub timeline: Option<PathBuf>,

    /// How often the HPAs sync (kube-controller-manager's
    /// `--horizontal-pod-autoscaler-sync-period`).
    #[arg(long, env = "KGM_HPA_SYNC_PERIOD", default_value = "15s", value_parser = humantime::parse_duration)]
    pub hpa_sync_period: Duration,

    /// Under `--scenario`, keep every Deployment at its pods: the scenario
    /// only scripts each pod's load, as a percent of its GPU.
    #[arg(long, env = "KGM_FIXED_REPLICAS", requires = "scenario")]
    pub fixed_replicas: bool,

    /// Stop after this long (default: run until interrupted).
    #[arg(long, env = "KGM_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub gpu: GpuArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub sampling: SamplingArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub poll: PollArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub prometheus: PrometheusArgs,
}

/// The KEDA scaler's port when `--keda-port` is not given.
pub const DEFAULT_KEDA_PORT: u16 = 9443;

/// The reference cluster's nodes: name and GPU.
pub const REFERENCE_NODES: [(&str, GpuModelId); 2] = [("mainpc", GpuModelId::Rtx4090), ("pc2", GpuModelId::Rtx3060)];

fn agent_args(args: &StandaloneArgs, node: &str, offset: u16) -> AgentArgs {
    let port = if args.agent_port == 0 { 0 } else { args.agent_port + offset };
    AgentArgs {
        listen: SocketAddr::new(args.host, port),
        node_name: node.to_string(),
        sampling: args.sampling.clone(),
        no_attribution: true,
        feed_token_file: None,
    }
}

/// What `standalone` runs: its agents, the labels of their simulated pods
/// and nodes, and the live twin that scales them under `--scenario`.
pub struct Prepared {
    /// One agent per node.
    pub agents: Vec<AgentSetup>,
    /// The API's labels and placements.
    pub labels: Arc<LabelIndex>,
    /// The twin, unless there is no scenario, `--fixed-replicas`, or real
    /// GPUs.
    pub live: Option<LiveTwin>,
}

/// Builds the agents, the labels, and the live twin.
pub fn prepare(args: &StandaloneArgs) -> anyhow::Result<Prepared> {
    let scenario = args.scenario.as_deref().map(Scenario::read).transpose()?;
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    if scenario.is_some() {
        // Its t = 0, for anyone timing what the pipeline does with it.
        tracing::info!(unix_ms = (start * 1000.0) as u64, "scenario clock started");
    }
    if args.gpu.gpu_source == GpuSourceKind::Nvml {
        // Real GPUs' pods are not known here: the agent is trusted.
        let node = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_string());
        let agent = AgentSetup {
            agent: agent_args(args, &node, 0),
            opener: Arc::new(NvmlOpener::new(args.gpu.nvml_lib.clone())),
            attribution: Box::new(Unattributed),
        };
        return Ok(Prepared { agents: vec![agent], labels: Arc::new(LabelIndex::default()), live: None });
    }
    let sims: Vec<Arc<SimNode>> = REFERENCE_NODES
        .iter()
        .map(|&(node, model)| {
            let sim = SimNode::new(node, &[model], args.gpu.seed);
            Arc::new(match &scenario {
                Some(scenario) => sim.with_scenario(scenario.clone(), start),
                None => sim,
            })
        })
        .collect();
    let labels = Arc::new(LabelIndex::new(crate::sim::current_label_maps(&sims)));
    let agents = sims
        .iter()
        .zip(0..)
        .map(|(sim, offset)| AgentSetup {
            agent: agent_args(args, &sim.node, offset),
            opener: Arc::new(SimOpener(sim.clone())),
            attribution: Box::new(SimAttribution(sim.clone())),
        })
        .collect();
    let live = match scenario {
        Some(scenario) if !args.fixed_replicas => {
            let deployments = match &args.deployments {
                Some(path) => read_deployments(path)?,
                None => Vec::new(),
            };
            let hpas = if args.hpa.is_empty() {
                vec![parse_hpa(REFERENCE_HPA).expect("the embedded reference HPA parses")]
            } else {
                args.hpa.iter().map(|p| read_hpa(p)).collect::<anyhow::Result<_>>()?
            };
            let scaled = hpas.into_iter().map(|hpa| (deployment_for(&deployments, &hpa), hpa)).collect();
            let setup = LiveSetup { scaled, sync_period: args.hpa_sync_period, scenario, start, seed: args.gpu.seed };
            Some(LiveTwin::new(setup, sims, labels.clone())?)
        }
        _ => None,
    };
    Ok(Prepared { agents, labels, live })
}

/// A kubeconfig for the adapter: its CA, and a client certificate from it.
pub fn kubeconfig(server: &str, ca_pem: &str, client: &PemPair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-gpu-metrics-standalone
  cluster:
    server: {server}
    certificate-authority-data: {}
users:
- name: standalone-admin
  user:
    client-certificate-data: {}
    client-key-data: {}
contexts:
- name: kube-gpu-metrics-standalone
  context:
    cluster: kube-gpu-metrics-standalone
    user: standalone-admin
current-context: kube-gpu-metrics-standalone
",
        b64(ca_pem),
        b64(&client.cert),
        b64(&client.key),
    )
}

/// An adapter on this machine with its own CA: client-certificate auth,
/// every user allowed, and a kubeconfig written for kubectl and clients.
pub struct LocalAdapter {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// Agent base URLs to poll.
    pub agents: Vec<String>,
    /// Pod and node labels, for selectors.
    pub labels: Arc<LabelIndex>,
    /// Polling and its limits.
    pub poll: PollArgs,
    /// Values from Prometheus instead of the agents.
    pub prometheus: Option<PrometheusSettings>,
    /// Where the kubeconfig goes.
    pub kubeconfig_out: PathBuf,
    /// KEDA's external scaler, if served.
    pub keda: Option<KedaSetup>,
    /// Where the CA goes, if anywhere.
    pub ca_out: Option<PathBuf>,
}

/// Starts a [`LocalAdapter`] and writes its kubeconfig.
pub async fn start_local_adapter(
    local: LocalAdapter,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<RunningAdapter> {
    let ca = LocalCa::new("kube-gpu-metrics standalone CA")?;
    let host = local.listen.ip().to_string();
    let serving = ca.serving(&["localhost", host.as_str()])?;
    let client = ca.client("standalone-admin", &["system:masters"])?;
    let setup = AdapterSetup {
        listen: local.listen,
        cert: CertSource::Fixed(serving),
        tls_reload_interval: Duration::from_secs(3600),
        client_auth: ClientAuth::ClientCertificate { ca: ca.cert_pem.clone() },
        authorization: (AuthorizationMode::AlwaysAllow, Duration::ZERO),
        source: match local.prometheus {
            Some(settings) => SourceSetup::Prometheus(settings),
            None => SourceSetup::Agents {
                targets: local.agents.iter().map(AgentTarget::unbound).collect(),
                discovery: None,
                token: None,
            },
        },
        labels: Some(local.labels),
        limits: Limits::new(&local.poll, DEFAULT_MAX_CONNECTIONS),
        max_age: local.poll.max_age,
        keda: local.keda,
        kube_config: None,
    };
    let adapter = crate::adapter::start(setup, shutdown).await.map_err(|e| match e {
        // Standalone's own flag, not the adapter's.
        AdapterError::Bind { addr, source, flag } => {
            let flag = if flag == "--secure-listen" { "--adapter-port" } else { flag };
            anyhow::anyhow!("cannot listen on {addr} ({flag}): {source}")
        }
        other => other.into(),
    })?;
    let server = format!("https://{}", adapter.addr);
    std::fs::write(&local.kubeconfig_out, kubeconfig(&server, &ca.cert_pem, &client))
        .map_err(|e| anyhow::anyhow!("cannot write {} (--kubeconfig-out): {e}", local.kubeconfig_out.display()))?;
    if let Some(path) = &local.ca_out {
        std::fs::write(path, &ca.cert_pem)
            .map_err(|e| anyhow::anyhow!("cannot write {} (--ca-out): {e}", path.display()))?;
    }
    Ok(adapter)
}

/// Runs until `shutdown` turns true or `--duration` passes.
pub async fn run(args: StandaloneArgs, shutdown_tx: watch::Sender<bool>) -> anyhow::Result<()> {
    if let Some(kubeconfig) = args.cluster.clone() {
        if args.gpu.gpu_source == GpuSourceKind::Nvml {
            anyhow::bail!("--cluster runs simulated GPU nodes: it cannot take --gpu-source nvml");
        }
        return cluster::run(args, &kubeconfig, shutdown_tx).await;
    }
    if args.deployments.is_some() && args.scenario.is_none() {
        anyhow::bail!(
            "--deployments sets the scaled Deployments of --scenario (or, with --cluster, start-up times): give --scenario too"
        );
    }
    let shutdown = shutdown_tx.subscribe();
    let mut agents: Vec<RunningAgent> = Vec::new();
    let Prepared { agents: setups, labels, live } = prepare(&args)?;
    for setup in setups {
        let listen = setup.agent.listen;
        let agent = crate::agent::start(setup, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (--agent-port): {e}"))?;
        agents.push(agent);
    }
    let local = LocalAdapter {
        listen: SocketAddr::new(args.host, args.adapter_port),
        agents: agents.iter().map(|a| format!("http://{}", a.addr)).collect(),
        labels,
        poll: args.poll.clone(),
        prometheus: args.prometheus.settings()?,
        kubeconfig_out: args.kubeconfig_out.clone(),
        keda: Some(KedaSetup {
            listen: SocketAddr::new(args.host, args.keda_port.unwrap_or(DEFAULT_KEDA_PORT)),
            required: args.keda_port.is_some(),
            client_ca_file: args.keda_client_ca_file.clone(),
            flag: "--keda-port",
        }),
        ca_out: Some(args.ca_out.clone()),
    };
    let adapter = start_local_adapter(local, shutdown.clone()).await?;

    println!("kube-gpu-metrics standalone: the pipeline on localhost\n");
    for agent in &agents {
        let node = &agent.state.snapshot.load().data.node;
        println!("  agent {node:<8} http://{}/metrics   http://{}/v1/pods", agent.addr, agent.addr);
    }
    let kubeconfig = args.kubeconfig_out.display();
    println!("  adapter        https://{}   (kubeconfig: {kubeconfig})", adapter.addr);
    if let Some(addr) = adapter.keda_addr {
        println!("  keda-scaler    {addr}   (gRPC over TLS, CA: {})", args.ca_out.display());
    }
    if let Some(url) = &args.prometheus.prometheus_url {
        println!("  values from    {url} (the agents are not polled; Prometheus must scrape them)");
    }
    let first = agents[0].addr;
    let series = if args.sampling.names == MetricNames::Dcgm {
        "DCGM_FI_DEV_GPU_UTIL"
    } else {
        "nvidia_gpu_utilization_percent"
    };
    println!("\nTry:\n  curl -s http://{first}/metrics | grep {series}");
    println!(
        "  kubectl --kubeconfig {kubeconfig} get --raw \"/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/*/nvidia_gpu_utilization_percent?labelSelector=app%3Dreasoning-suite\""
    );
    println!(
        "  kubectl --kubeconfig {kubeconfig} get --raw \"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/nvidia_gpu_weighted_utilization_percent\"\n"
    );

    stop_after(args.duration, &shutdown_tx);
    // A live twin that panics would leave the simulated load where it was, served with fresh
    // timestamps: standalone stops instead, and says why.
    let twin_failed = Arc::new(std::sync::OnceLock::<String>::new());
    let scaling = live.map(|live| {
        let (tx, rx) = watch::channel(Vec::new());
        let twin = tokio::spawn(live.run(adapter.provider.clone(), tx, shutdown.clone()));
        let (failed, stop) = (twin_failed.clone(), shutdown_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = twin.await
                && e.is_panic()
            {
                let reason = crate::shutdown::panic_message(e.into_panic());
                tracing::error!(panic = %reason, "the live twin panicked: stopping, rather than serve a load it no longer drives");
                let _ = failed.set(reason);
                let _ = stop.send(true);
            }
        });
        rx
    });
    status_loop(&agents, &adapter, scaling, shutdown.clone()).await;
    let _ = adapter.done.await;
    for agent in agents {
        let _ = agent.done.await;
    }
    match twin_failed.get() {
        Some(reason) => Err(anyhow::anyhow!("the live twin panicked ({reason}); standalone stopped")),
        None => Ok(()),
    }
}

/// Turns `shutdown` true once `duration` (`--duration`) has passed, if given.
fn stop_after(duration: Option<Duration>, shutdown: &watch::Sender<bool>) {
    if let Some(duration) = duration {
        let tx = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let _ = tx.send(true);
        });
    }
}

/// Prints one status line per second: rewritten in place on a terminal,
/// every tenth second otherwise (logs stay readable).
/// With the live twin, the line shows each scaled Deployment's replicas and
/// pods; without it, what the reference HPA would decide.
async fn status_loop(
    agents: &[RunningAgent],
    adapter: &RunningAdapter,
    scaling: Option<watch::Receiver<Vec<DeploymentStatus>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tty = std::io::stdout().is_terminal();
    let hpa = parse_hpa(REFERENCE_HPA).expect("the embedded reference HPA parses");
    let mut autoscaler = Autoscaler::default();
    // The first line waits for the first poll round to reach the adapter.
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(2), Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shutdown::stopped(&mut shutdown) => break,
        }
        n += 1;
        if !tty && n % 10 != 1 {
            continue;
        }
        let mut line = status_line(agents);
        line.push_str(" | ");
        match &scaling {
            Some(scaling) => {
                let deployments: Vec<String> = scaling.borrow().iter().map(ToString::to_string).collect();
                line.push_str(&deployments.join(" | "));
            }
            None => line.push_str(&hpa_status(
                &hpa,
                adapter.provider.view_at(std::time::SystemTime::now()),
                &mut autoscaler,
            )),
        }
        let mut out = std::io::stdout().lock();
        let _ = if tty { write!(out, "\r\x1b[2K{line}") } else { writeln!(out, "{line}") };
        let _ = out.flush();
    }
    if tty {
        println!();
    }
}

/// The reference HPA of the cluster plan, which the status line evaluates.
pub const REFERENCE_HPA: &str = include_str!("../deploy/examples/reasoning-gpu-hpa.yaml");

/// What an HPA reads from standalone's own adapter: every metric of the
/// HPA, for the scale target's pods (`app=<scaleTargetRef.name>`, the label
/// the simulated cluster's pods carry), and External metrics as the
/// external metrics API answers them.
struct AdapterMetrics<'a> {
    snapshot: crate::adapter::provider::RequestView,
    namespace: &'a str,
    pods: kube::core::Selector,
}

impl MetricsReader for AdapterMetrics<'_> {
    fn pods(&mut self, name: &str) -> Result<Vec<PodValue>, String> {
        let metric = crate::adapter::provider::metric(name).map_err(|e| e.to_string())?;
        let values = self.snapshot.pods(metric, &kube::core::Selector::default(), self.namespace, &self.pods);
        Ok(values.into_iter().map(|v| PodValue { pod: v.name.to_string(), value: Some(v.value) }).collect())
    }

    fn external(&mut self, name: &str, selector: Option<&str>) -> Result<f64, String> {
        let metric = crate::adapter::provider::metric(name).map_err(|e| e.to_string())?;
        let selector = match selector {
            Some(s) => crate::k8s::selector::parse_selector(s).map_err(|e| e.to_string())?,
            None => kube::core::Selector::default(),
        };
        self.snapshot.external(metric, &selector).map(|(v, _)| v).ok_or_else(|| format!("no value for {name}"))
    }
}

/// `reasoning-gpu-hpa 61/70 → 1 replica`: what the HPA would decide from
/// the adapter's current values (`snapshot`), with its stabilization
/// history, through the same sync as `hpa-preview` and the twin.
pub(crate) fn hpa_status(
    hpa: &HpaSpec,
    snapshot: crate::adapter::provider::RequestView,
    autoscaler: &mut Autoscaler,
) -> String {
    let selector: kube::core::Selector = kube::core::Expression::Equal("app".into(), hpa.target_name.clone()).into();
    let mut reader = AdapterMetrics { snapshot, namespace: &hpa.namespace, pods: selector };
    let running = hpa
        .metrics
        .iter()
        .find_map(|m| match m {
            MetricSpec::Pods { name, .. } => reader.pods(name).ok().map(|v| v.len() as u32),
            _ => None,
        })
        .unwrap_or(hpa.min.max(1));
    let scale = Scale { replicas: running, ready: running, unready: 0, scaled_to_zero: false };
    let outcome = sync(hpa, &mut reader, scale, autoscaler, std::time::Instant::now());
    if !outcome.active {
        let why = outcome.metrics.iter().find_map(|m| m.proposal.as_ref().err()).cloned().unwrap_or_default();
        return format!("{}: {why}", hpa.name);
    }
    let values: Vec<String> = outcome
        .metrics
        .iter()
        .filter_map(|m| m.proposal.as_ref().ok().map(|p| format!("{:.0}/{}", p.current, m.target)))
        .collect();
    let verb = if outcome.replicas == running { "keeps" } else { "→" };
    format!("{} {} {verb} {} replica(s)", hpa.name, values.join(" "), outcome.replicas)
}

/// `mainpc 4090 61% (2 pods) | pc2 3060 34% (2 pods)`.
pub fn status_line(agents: &[RunningAgent]) -> String {
    let parts: Vec<String> = agents
        .iter()
        .map(|agent| {
            let snapshot = agent.state.snapshot.load();
            let data = &snapshot.data;
            let gpus: Vec<String> = data
                .gpus
                .iter()
                .map(|g| {
                    let model = g.identity.model.rsplit(' ').next().unwrap_or("GPU");
                    match (g.up, g.reading.utilization_percent) {
                        (true, Some(u)) => format!("{model} {u:>3.0}%"),
                        _ => format!("{model} down"),
                    }
                })
                .collect();
            let pods =
                data.usages.iter().map(|u| (&u.namespace, &u.pod)).collect::<std::collections::BTreeSet<_>>().len();
            format!(
                "{} {} ({pods} pods)",
                data.node,
                if gpus.is_empty() { "no GPU".to_string() } else { gpus.join(", ") }
            )
        })
        .collect();
    parts.join(" | ")
}
