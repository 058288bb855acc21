//! The custom metrics adapter, laid out along its pipeline:
//!
//! ```text
//! cluster (kube-rs: agents, pod labels + nodes) ─┐
//! source (agents | prometheus) ─► admission ─────┴► store ─► provider ─► http
//! ```
//!
//! - [`cluster`] watches the agents, pods and nodes (and reads the
//!   front-proxy CA).
//! - [`source`] polls the agents' feeds or Prometheus in rounds.
//! - [`admission`] checks every round against the cluster: node isolation,
//!   one value per pod, bounded time and values.
//! - [`store`] holds the admitted view, swapped whole.
//! - [`provider`] answers queries (select, fresh, aggregate), no HTTP.
//! - [`http`] serves custom.metrics.k8s.io and external.metrics.k8s.io over
//!   HTTPS ([`tls`], [`http::auth`]), with [`readiness`].
//! - [`keda`] serves KEDA's external scaler over gRPC from the same provider.

pub mod admission;
pub mod cluster;
pub mod http;
pub mod keda;
pub mod provider;
pub mod readiness;
pub mod source;
pub mod store;
pub mod tls;

#[cfg(test)]
pub(crate) mod fixtures;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::sync::watch;

use crate::k8s::labels::{LabelIndex, LabelMaps};
use crate::listener::ConnectionSlots;
use crate::shutdown::Tasks;
use admission::Rejections;
use cluster::{AgentDiscovery, ClusterOutputs};
use http::auth::{AuthArgs, Authenticator, Authorizer};
use keda::KedaScaler;
use keda::server::{DEFAULT_KEDA_LISTEN, KedaListen, KedaSetup};
use keda::target::{ClusterTargets, ScaleTargets};
use provider::Provider;
use readiness::Readiness;
use source::agents::{AgentSource, AgentTarget};
use source::fetch::{FetchLimits, Fetcher};
use source::prometheus::config::QueryConfig;
use source::prometheus::{PrometheusError, PrometheusSettings, PrometheusSource};
use store::MetricStore;
use tls::{CertResolver, CertSource, LocalCa, TlsError};

/// How requests are authorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthorizationMode {
    /// A SubjectAccessReview per request (in a cluster).
    SubjectAccessReview,
    /// Every authenticated user (no cluster; tests and demos).
    AlwaysAllow,
}

/// Where the adapter's values come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// Poll the kube-gpu-metrics agents' feeds (freshest: one sample interval).
    Agents,
    /// Query an existing Prometheus (e.g. one scraping dcgm-exporter).
    Prometheus,
}

/// Flags of the adapter.
#[derive(Clone, Debug, Args)]
pub struct AdapterArgs {
    /// HTTPS address.
    #[arg(long = "secure-listen", env = "KGM_SECURE_LISTEN", default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,

    /// Serving certificate (PEM); reloaded when it changes. Without it a
    /// self-signed certificate is made at start.
    #[arg(long, env = "KGM_TLS_CERT_FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// Serving certificate's private key (PEM).
    #[arg(long, env = "KGM_TLS_PRIVATE_KEY_FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,

    /// How often the certificate files are checked for changes.
    #[arg(long, env = "KGM_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// Where values come from: the agents, or an existing Prometheus.
    #[arg(long, env = "KGM_SOURCE", value_enum, default_value = "agents")]
    pub source: SourceKind,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub prometheus: PrometheusArgs,

    /// Agents to poll, as base URLs (`http://10.0.0.5:9402`), besides the
    /// discovered ones.
    #[arg(long = "agent", env = "KGM_AGENTS", value_delimiter = ',')]
    pub agents: Vec<String>,

    /// Find agents by watching their pods (needs a cluster).
    #[arg(long, env = "KGM_DISCOVER_AGENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub discover_agents: bool,

    /// Namespace of the agent pods.
    #[arg(long, env = "KGM_AGENT_NAMESPACE", default_value = "kube-gpu-metrics")]
    pub agent_namespace: String,

    /// Label selector of the agent pods.
    #[arg(
        long,
        env = "KGM_AGENT_SELECTOR",
        default_value = "app.kubernetes.io/name=kube-gpu-metrics,app.kubernetes.io/component=agent"
    )]
    pub agent_selector: String,

    /// The discovered agents' port.
    #[arg(long, env = "KGM_AGENT_PORT", default_value_t = 9402)]
    pub agent_port: u16,

    /// A file holding the token the agents' `/v1/pods` requires (their
    /// `--feed-token-file`).
    #[arg(long, env = "KGM_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub poll: PollArgs,

    /// KEDA's external scaler (gRPC over TLS, with the serving certificate)
    /// [default: 0.0.0.0:9443; if that port is taken the scaler is left off
    /// with a warning, while an address given here must bind]; `off` to not
    /// serve it.
    #[arg(long, env = "KGM_KEDA_LISTEN")]
    pub keda_listen: Option<KedaListen>,

    /// A CA (PEM) that must have signed the client certificate KEDA presents
    /// to the scaler (the trigger's `tlsClientCert`); without it any client
    /// that trusts the serving certificate is answered.
    #[arg(long, env = "KGM_KEDA_CLIENT_CA_FILE")]
    pub keda_client_ca_file: Option<PathBuf>,

    /// Connections open at once on each port; more are closed at once.
    #[arg(long, env = "KGM_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// How requests are authorized.
    #[arg(long, env = "KGM_AUTHORIZATION_MODE", value_enum, default_value = "subject-access-review")]
    pub authorization_mode: AuthorizationMode,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: AuthArgs,
}

/// Flags of the Prometheus source, shared by `adapter` and `standalone`.
#[derive(Clone, Debug, Args)]
pub struct PrometheusArgs {
    /// Prometheus' base URL, with `--source prometheus`
    /// (`http://prometheus-operated.monitoring.svc:9090`).
    #[arg(long, env = "KGM_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,

    /// The PromQL per metric, with `--source prometheus` (default: the
    /// built-in dcgm-exporter queries, deploy/prometheus/dcgm-queries.yaml).
    #[arg(long, env = "KGM_PROMETHEUS_QUERIES", requires = "prometheus_url")]
    pub prometheus_queries: Option<PathBuf>,
}

/// Flags of polling and of what a round may take in, shared by `adapter`
/// and `standalone`.
#[derive(Clone, Debug, Args)]
pub struct PollArgs {
    /// Time between poll rounds (of the agents or of Prometheus).
    #[arg(long, env = "KGM_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Time one agent (or one Prometheus query) may take to answer.
    #[arg(long, env = "KGM_POLL_TIMEOUT", default_value = "800ms", value_parser = humantime::parse_duration)]
    pub poll_timeout: Duration,

    /// Largest feed accepted from an agent (or answer from Prometheus), bytes.
    #[arg(long, env = "KGM_MAX_FEED_BYTES", default_value_t = 8 << 20)]
    pub max_feed_bytes: usize,

    /// Feed and answer bodies read at once across all agents, bytes; the
    /// rest wait their turn within `--poll-timeout`.
    #[arg(long, env = "KGM_MAX_ROUND_BYTES", default_value_t = 32 << 20)]
    pub max_round_bytes: usize,

    /// Pods admitted per poll round across all feeds; a feed that would
    /// pass the budget is refused whole, with a log line.
    #[arg(long, env = "KGM_MAX_ROUND_PODS", default_value_t = 100_000)]
    pub max_round_pods: usize,

    /// Oldest sample served (default: three of the agent's sample intervals,
    /// or of the Prometheus queries' `scrapeInterval`; never over 10 min).
    #[arg(long, env = "KGM_MAX_AGE", value_parser = humantime::parse_duration)]
    pub max_age: Option<Duration>,
}

impl Default for PollArgs {
    /// The flags' defaults.
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            poll: PollArgs,
        }
        Defaults::parse_from(["defaults"]).poll
    }
}

impl PrometheusArgs {
    /// The settings, if a URL is given: the URL checked and the query file
    /// read (or the built-in dcgm-exporter queries).
    pub fn settings(&self) -> Result<Option<PrometheusSettings>, PrometheusError> {
        let Some(url) = &self.prometheus_url else { return Ok(None) };
        PrometheusSettings::check_url(url)?;
        let config = match &self.prometheus_queries {
            Some(path) => QueryConfig::read(path)?,
            None => QueryConfig::dcgm(),
        };
        Ok(Some(PrometheusSettings { url: url.clone(), config }))
    }
}

/// Why the adapter could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No kube client, but the flags need one.
    #[error(
        "a Kubernetes client is needed for {needed} but none could be made ({source}); set KUBECONFIG, run in a cluster, or use {alternative}"
    )]
    Kube {
        /// What needed it.
        needed: &'static str,
        /// What to use instead.
        alternative: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The front-proxy settings could not be read.
    #[error(transparent)]
    FrontProxy(#[from] cluster::FrontProxyError),
    /// The Prometheus source is misconfigured.
    #[error(transparent)]
    Prometheus(#[from] PrometheusError),
    /// The agent token file is unusable.
    #[error(transparent)]
    Token(std::io::Error),
    /// The listener could not bind.
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The flag that set it.
        flag: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How clients prove who they are.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// The aggregation layer's front proxy; the CA from a file or, when
    /// `None`, from the cluster's ConfigMap (with its names and headers).
    FrontProxy {
        /// The CA, PEM.
        ca: Option<String>,
        /// Allowed common names, user and group headers.
        authenticator: Authenticator,
    },
    /// Direct clients with a certificate from this CA (standalone).
    ClientCertificate {
        /// The CA, PEM.
        ca: String,
    },
}

/// Where values come from.
#[derive(Clone, Debug)]
pub enum SourceSetup {
    /// The agents.
    Agents {
        /// Static agents: `--agent` URLs, or agents whose node the caller
        /// knows (standalone's simulated nodes in a real cluster).
        targets: Vec<AgentTarget>,
        /// Agents found in the cluster, if any.
        discovery: Option<AgentDiscovery>,
        /// The feed token.
        token: Option<Arc<str>>,
    },
    /// An existing Prometheus.
    Prometheus(PrometheusSettings),
}

/// Limits on what the adapter takes in.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time between poll rounds.
    pub poll_interval: Duration,
    /// Time one agent or query may take.
    pub poll_timeout: Duration,
    /// Largest feed or answer, bytes.
    pub max_feed_bytes: usize,
    /// Bodies read at once, bytes.
    pub max_round_bytes: usize,
    /// Pods admitted per round.
    pub max_round_pods: usize,
    /// Connections open at once.
    pub max_connections: usize,
}

/// The default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

impl Limits {
    /// The limits the flags set.
    pub fn new(poll: &PollArgs, max_connections: usize) -> Self {
        Self {
            poll_interval: poll.poll_interval,
            poll_timeout: poll.poll_timeout,
            max_feed_bytes: poll.max_feed_bytes,
            max_round_bytes: poll.max_round_bytes,
            max_round_pods: poll.max_round_pods,
            max_connections,
        }
    }
}

/// Everything an adapter runs with, once the flags are parsed and the files
/// read. Parsing starts nothing; [`start`] does.
#[derive(Clone, Debug)]
pub struct AdapterSetup {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// Serving certificate.
    pub cert: CertSource,
    /// How often certificate files are checked.
    pub tls_reload_interval: Duration,
    /// Authentication.
    pub client_auth: ClientAuth,
    /// Authorization (SubjectAccessReviews need the cluster), and how long an
    /// answer is reused.
    pub authorization: (AuthorizationMode, Duration),
    /// Where values come from.
    pub source: SourceSetup,
    /// Labels and placements kept by the caller (standalone, whose live twin
    /// replaces them as it scales); `None` to watch the cluster when one is
    /// used, or to trust static agents without one.
    pub labels: Option<Arc<LabelIndex>>,
    /// Limits.
    pub limits: Limits,
    /// Oldest sample served.
    pub max_age: Option<Duration>,
    /// KEDA's external scaler, if served.
    pub keda: Option<KedaSetup>,
    /// The cluster to use, where the caller read its kubeconfig
    /// (`standalone --cluster`); `None` to find one as kubectl does.
    pub kube_config: Option<kube::Config>,
}

impl AdapterSetup {
    /// Parses the flags and reads the files they name. Starts nothing.
    pub fn from_args(args: AdapterArgs) -> Result<Self, AdapterError> {
        let source = match args.source {
            SourceKind::Prometheus => SourceSetup::Prometheus(args.prometheus.settings()?.ok_or_else(|| {
                PrometheusError::Url { url: String::new(), reason: "is required with --source prometheus".into() }
            })?),
            SourceKind::Agents => SourceSetup::Agents {
                targets: args.agents.iter().map(AgentTarget::unbound).collect(),
                discovery: args.discover_agents.then(|| AgentDiscovery {
                    namespace: args.agent_namespace.clone(),
                    selector: args.agent_selector.clone(),
                    port: args.agent_port,
                }),
                token: args
                    .agent_token_file
                    .as_deref()
                    .map(|p| crate::k8s::token::read_token(p, "--agent-token-file"))
                    .transpose()
                    .map_err(AdapterError::Token)?,
            },
        };
        let ca = match &args.auth.requestheader_client_ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                what: "--requestheader-client-ca-file",
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let cert = match (&args.tls_cert_file, &args.tls_private_key_file) {
            (Some(cert), Some(key)) => CertSource::Files { cert: cert.clone(), key: key.clone() },
            _ => {
                tracing::warn!(
                    "no --tls-cert-file/--tls-private-key-file: serving a self-signed certificate; \
                     the APIService then needs insecureSkipTLSVerify, which is not for production"
                );
                let ca = LocalCa::new("kube-gpu-metrics self-signed")?;
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
                CertSource::Fixed(ca.serving(&["localhost", "127.0.0.1", host.as_str()])?)
            }
        };
        Ok(Self {
            listen: args.listen,
            cert,
            tls_reload_interval: args.tls_reload_interval,
            client_auth: ClientAuth::FrontProxy {
                ca,
                authenticator: Authenticator::FrontProxy {
                    allowed_names: args.auth.requestheader_allowed_names.clone(),
                    username_headers: args.auth.requestheader_username_headers.clone(),
                    group_headers: args.auth.requestheader_group_headers.clone(),
                },
            },
            authorization: (args.authorization_mode, args.auth.authorization_cache_ttl),
            source,
            labels: None,
            kube_config: None,
            limits: Limits::new(&args.poll, args.max_connections),
            max_age: args.poll.max_age,
            keda: match args.keda_listen {
                Some(KedaListen::Off) => None,
                Some(KedaListen::At(listen)) => Some(KedaSetup {
                    listen,
                    required: true,
                    client_ca_file: args.keda_client_ca_file,
                    flag: "--keda-listen",
                }),
                None => Some(KedaSetup {
                    listen: DEFAULT_KEDA_LISTEN.parse().expect("the default address parses"),
                    required: false,
                    client_ca_file: args.keda_client_ca_file,
                    flag: "--keda-listen",
                }),
            },
        })
    }

    fn needs_cluster(&self) -> Option<&'static str> {
        if matches!(&self.source, SourceSetup::Agents { discovery: Some(_), .. }) {
            return Some("agent discovery");
        }
        if self.authorization.0 == AuthorizationMode::SubjectAccessReview {
            return Some("SubjectAccessReviews");
        }
        if matches!(self.client_auth, ClientAuth::FrontProxy { ca: None, .. }) {
            return Some("the front-proxy CA");
        }
        None
    }
}

/// A started adapter.
pub struct RunningAdapter {
    /// The bound address.
    pub addr: SocketAddr,
    /// The KEDA scaler's bound address, if served.
    pub keda_addr: Option<SocketAddr>,
    /// The values, for status lines.
    pub provider: Provider,
    /// What `/readyz` waits for.
    pub readiness: Readiness,
    /// Finishes when every task has stopped, in order: the server (after
    /// draining), the source, the cluster watchers, the certificate reloader.
    pub done: tokio::task::JoinHandle<()>,
}

/// Runs the adapter the flags describe until `shutdown` turns true and
/// every task has stopped.
pub async fn run(args: AdapterArgs, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    use anyhow::Context;
    let running = start(AdapterSetup::from_args(args)?, shutdown).await?;
    tracing::info!("adapter listening on https://{}", running.addr);
    if let Some(addr) = running.keda_addr {
        tracing::info!("KEDA external scaler listening on {addr} (gRPC over TLS)");
    }
    running.done.await.context("adapter task failed")
}

/// Makes the kube client if the setup needs one, reads the front-proxy
/// settings, binds, and starts every task; returns once listening.
pub async fn start(setup: AdapterSetup, shutdown: watch::Receiver<bool>) -> Result<RunningAdapter, AdapterError> {
    // A cluster is used whenever one is configured (for labels and node
    // isolation), and required where the flags need it.
    let needed = setup.needs_cluster();
    // Fixed labels (standalone) need no cluster unless the flags do: no
    // kubeconfig is even looked for then.
    let client = if setup.labels.is_some() && needed.is_none() {
        None
    } else {
        let client = match setup.kube_config.clone() {
            Some(config) => kube::Client::try_from(config),
            None => kube::Client::try_default().await,
        };
        match (client, needed) {
            (Ok(client), _) => Some(client),
            (Err(source), Some(needed)) => {
                return Err(AdapterError::Kube {
                    needed,
                    alternative: "--discover-agents=false --authorization-mode always-allow --requestheader-client-ca-file",
                    source,
                });
            }
            (Err(e), None) => {
                tracing::warn!(
                    error = %e,
                    "no Kubernetes API: the --agent feeds are trusted for the pods they name, and only an empty label selector matches"
                );
                None
            }
        }
    };
    let (client_ca, authenticator) = match setup.client_auth {
        ClientAuth::ClientCertificate { ca } => (ca, Authenticator::ClientCertificate),
        ClientAuth::FrontProxy { ca: Some(ca), authenticator } => (ca, authenticator),
        ClientAuth::FrontProxy { ca: None, .. } => {
            let client = client.clone().expect("a client exists when the CA comes from the cluster");
            let config = cluster::fetch_request_header_config(client).await?;
            let authenticator = Authenticator::FrontProxy {
                allowed_names: config.allowed_names,
                username_headers: config.username_headers,
                group_headers: config.group_headers,
            };
            (config.client_ca, authenticator)
        }
    };
    let authorizer = match setup.authorization {
        (AuthorizationMode::AlwaysAllow, _) => Authorizer::AllowAll,
        (AuthorizationMode::SubjectAccessReview, ttl) => {
            Authorizer::subject_access_review(client.clone().expect("a client exists for SubjectAccessReviews"), ttl)
        }
    };

    let resolver = CertResolver::new(setup.cert)?;
    let roots =
        tls::root_store(client_ca.as_bytes(), std::path::Path::new("client CA"), "--requestheader-client-ca-file")?;
    let client_ca = tls::ClientCa::new(roots)?;
    let tls = Arc::new(tls::server_config(resolver.clone(), client_ca.clone())?);
    let bind_error = |source| AdapterError::Bind { addr: setup.listen, flag: "--secure-listen", source };
    let listener = tokio::net::TcpListener::bind(setup.listen).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let keda = match setup.keda {
        Some(keda) => bind_keda(keda, resolver.clone()).await?,
        None => None,
    };

    let readiness = Readiness::default();
    let store = Arc::new(MetricStore::new(setup.max_age));
    let rejections = Arc::new(Rejections::default());
    let limits = setup.limits;
    let fetcher = Fetcher::new(FetchLimits {
        timeout: limits.poll_timeout,
        max_body_bytes: limits.max_feed_bytes,
        max_in_flight_bytes: limits.max_round_bytes,
    });
    let source_ready = readiness.check("source", "no round has been polled yet");

    // The cluster first: the source admits against what it learns.
    let (static_targets, discovery) = match &setup.source {
        SourceSetup::Agents { targets, discovery, .. } => (targets.clone(), discovery.clone()),
        SourceSetup::Prometheus(_) => (Vec::new(), None),
    };
    let (targets_tx, targets_rx) = watch::channel(static_targets.clone());
    let (synced_tx, synced_rx) = watch::channel(false);
    let mut background = Tasks::default();
    // Labels come from standalone's twin, the cluster, or nowhere; KEDA's
    // scaler learns ScaledObjects' targets from the same place.
    let (labels, scale_targets) = match (setup.labels, client.clone()) {
        (Some(index), _) => {
            synced_tx.send_replace(true);
            (index, ScaleTargets::Simulated)
        }
        (None, Some(client)) => {
            let labels =
                Arc::new(LabelIndex::new(LabelMaps { placements: Some(Default::default()), ..LabelMaps::default() }));
            let outputs = ClusterOutputs { targets: targets_tx, labels: labels.clone(), synced: synced_tx };
            let watch =
                cluster::run(client.clone(), discovery, static_targets, outputs, readiness.clone(), shutdown.clone());
            background.push("cluster watchers", tokio::spawn(watch));
            (labels, ScaleTargets::Cluster(ClusterTargets::new(client)))
        }
        (None, None) => {
            synced_tx.send_replace(true);
            (Arc::new(LabelIndex::default()), ScaleTargets::NoCluster)
        }
    };

    let poll = match setup.source {
        SourceSetup::Prometheus(settings) => {
            let source = PrometheusSource::new(settings, fetcher, store.clone(), labels.clone(), rejections.clone());
            let run = source::run(source, limits.poll_interval, synced_rx, source_ready, shutdown.clone());
            tokio::spawn(run)
        }
        SourceSetup::Agents { token, .. } => {
            let source = AgentSource::new(
                fetcher,
                token,
                targets_rx,
                store.clone(),
                labels.clone(),
                rejections.clone(),
                limits.max_round_pods,
            );
            let run = source::run(source, limits.poll_interval, synced_rx, source_ready, shutdown.clone());
            tokio::spawn(run)
        }
    };

    let provider = Provider::new(store);
    let service = Arc::new(http::server::AdapterService {
        provider: provider.clone(),
        authenticator,
        authorizer,
        readiness: readiness.clone(),
        rejections,
        connections: ConnectionSlots::new(limits.max_connections, "--max-connections"),
    });
    let server = http::server::serve(listener, tls, client_ca, service, shutdown.clone());
    let reloader = resolver.watch(setup.tls_reload_interval, shutdown.clone());
    let mut tasks = Tasks::default();
    tasks.push("https server", tokio::spawn(server));
    let keda_addr = keda.as_ref().map(|k| k.addr);
    if let Some(BoundKeda { listener, tls, client_ca, .. }) = keda {
        let scaler =
            KedaScaler::new(provider.clone(), readiness.clone(), scale_targets, limits.poll_interval, shutdown.clone());
        let slots = Arc::new(ConnectionSlots::new(limits.max_connections, "--max-connections"));
        let server = keda::server::serve(listener, tls, client_ca, scaler, slots, shutdown);
        tasks.push("keda scaler", tokio::spawn(server));
    }
    tasks.push("source", poll);
    for (name, task) in background.into_inner() {
        tasks.push(name, task);
    }
    tasks.push("certificate reloader", tokio::spawn(reloader));
    let done = tokio::spawn(tasks.drain());
    Ok(RunningAdapter { addr, keda_addr, provider, readiness, done })
}

/// The KEDA scaler's port, bound, with its TLS settings.
struct BoundKeda {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    client_ca: Option<tls::ClientCa>,
}

/// Reads the KEDA client CA and binds the scaler's port, so that either
/// failing stops the start with the flag named; only the default port,
/// taken, leaves the scaler off (`None`) with a warning.
async fn bind_keda(setup: KedaSetup, resolver: Arc<CertResolver>) -> Result<Option<BoundKeda>, AdapterError> {
    let what = "--keda-client-ca-file";
    let client_ca = match &setup.client_ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.clone(), source })?;
            Some(tls::ClientCa::new(tls::root_store(&pem, path, what)?)?)
        }
        None => None,
    };
    let tls = Arc::new(tls::grpc_server_config(resolver, client_ca.clone())?);
    let bind_error = |source| AdapterError::Bind { addr: setup.listen, flag: setup.flag, source };
    let listener = match tokio::net::TcpListener::bind(setup.listen).await {
        Ok(listener) => listener,
        Err(e) if !setup.required => {
            tracing::warn!(
                addr = %setup.listen,
                error = %e,
                "KEDA external scaler not served: its default port cannot be bound; choose another with {}",
                setup.flag
            );
            return Ok(None);
        }
        Err(e) => return Err(bind_error(e)),
    };
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok(Some(BoundKeda { listener, addr, tls, client_ca }))
}
