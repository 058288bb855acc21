//! The custom metrics adapter: polls the agents, keeps the freshest value of
//! every pod and node, and serves `custom.metrics.k8s.io` (v1beta1, v1beta2)
//! and `external.metrics.k8s.io` over HTTPS behind an `APIService`.

pub mod api;
pub mod auth;
pub mod collector;
pub mod discovery;
pub mod labels;
pub mod prometheus;
pub mod quantity;
pub mod selector;
pub mod server;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::sync::watch;

use auth::{AuthArgs, Authenticator, Authorizer};
use collector::{Collector, PollSettings};
use labels::LabelIndex;
use prometheus::{PrometheusSettings, PrometheusSource, QueryConfig};
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
pub enum Source {
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
    pub source: Source,

    /// Prometheus' base URL, with `--source prometheus`
    /// (`http://prometheus-operated.monitoring.svc:9090`).
    #[arg(long, env = "KGM_PROMETHEUS_URL", required_if_eq("source", "prometheus"))]
    pub prometheus_url: Option<String>,

    /// The PromQL per metric, with `--source prometheus` (default: the
    /// built-in dcgm-exporter queries, deploy/prometheus/dcgm-queries.yaml).
    #[arg(long, env = "KGM_PROMETHEUS_QUERIES")]
    pub prometheus_queries: Option<PathBuf>,

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

    /// The agents' port.
    #[arg(long, env = "KGM_AGENT_PORT", default_value_t = 9402)]
    pub agent_port: u16,

    /// Time between poll rounds (of the agents or of Prometheus).
    #[arg(long, env = "KGM_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Time one agent (or one Prometheus query) may take to answer.
    #[arg(long, env = "KGM_POLL_TIMEOUT", default_value = "800ms", value_parser = humantime::parse_duration)]
    pub poll_timeout: Duration,

    /// A file holding the token the agents' `/v1/pods` requires (their
    /// `--feed-token-file`).
    #[arg(long, env = "KGM_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,

    /// Largest feed accepted from an agent (or answer from Prometheus), bytes.
    #[arg(long, env = "KGM_MAX_FEED_BYTES", default_value_t = 8 << 20)]
    pub max_feed_bytes: usize,

    /// Oldest sample served (default: three of the agent's sample intervals,
    /// or of the Prometheus queries' `scrapeInterval`).
    #[arg(long, env = "KGM_MAX_AGE", value_parser = humantime::parse_duration)]
    pub max_age: Option<Duration>,

    /// How requests are authorized.
    #[arg(long, env = "KGM_AUTHORIZATION_MODE", value_enum, default_value = "subject-access-review")]
    pub authorization_mode: AuthorizationMode,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: AuthArgs,
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
    Discovery(#[from] discovery::DiscoveryError),
    /// The Prometheus source is misconfigured.
    #[error(transparent)]
    Prometheus(#[from] prometheus::PrometheusError),
    /// The agent token file is unusable.
    #[error(transparent)]
    Token(std::io::Error),
    /// The listener could not bind.
    #[error("cannot listen on {addr} (--secure-listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Everything an adapter runs with, once the flags are resolved.
pub struct AdapterSetup {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// Serving certificate.
    pub cert: CertSource,
    /// How often certificate files are checked.
    pub tls_reload_interval: Duration,
    /// Front-proxy or client CA, PEM.
    pub client_ca: String,
    /// Authentication.
    pub authenticator: Authenticator,
    /// Authorization.
    pub authorizer: Authorizer,
    /// Polling.
    pub poll: PollSettings,
    /// Oldest sample served.
    pub max_age: Option<Duration>,
    /// Query Prometheus instead of polling agents.
    pub prometheus: Option<PrometheusSettings>,
    /// Agents to poll; updated by discovery when there is one.
    pub agents: watch::Receiver<Vec<String>>,
    /// Labels for selectors.
    pub labels: Arc<LabelIndex>,
}

/// A started adapter.
pub struct RunningAdapter {
    /// The bound address.
    pub addr: SocketAddr,
    /// The store, for status lines.
    pub store: Arc<MetricStore>,
    /// Finishes when the server and collector have stopped.
    pub done: tokio::task::JoinHandle<()>,
}

fn kube_error(needed: &'static str, alternative: &'static str) -> impl FnOnce(kube::Error) -> AdapterError {
    move |source| AdapterError::Kube { needed, alternative, source }
}

impl AdapterSetup {
    /// Resolves the flags: reads the front-proxy CA, makes the kube client
    /// and starts discovery as the flags ask.
    pub async fn from_args(args: AdapterArgs) -> Result<Self, AdapterError> {
        let from_agents = args.source == Source::Agents;
        let prometheus = match (args.source, &args.prometheus_url) {
            (Source::Prometheus, Some(url)) => {
                PrometheusSettings::check_url(url)?;
                let config = match &args.prometheus_queries {
                    Some(path) => QueryConfig::read(path)?,
                    None => QueryConfig::dcgm(),
                };
                Some(PrometheusSettings {
                    url: url.clone(),
                    config,
                    interval: args.poll_interval,
                    timeout: args.poll_timeout,
                    max_body_bytes: args.max_feed_bytes,
                })
            }
            _ => None,
        };
        let discover_agents = args.discover_agents && from_agents;
        let needs_kube = discover_agents
            || args.authorization_mode == AuthorizationMode::SubjectAccessReview
            || args.auth.requestheader_client_ca_file.is_none();
        let client = if needs_kube {
            let needed = "agent discovery, SubjectAccessReviews or the front-proxy CA";
            let alternative =
                "--discover-agents=false --authorization-mode always-allow --requestheader-client-ca-file";
            Some(kube::Client::try_default().await.map_err(kube_error(needed, alternative))?)
        } else {
            None
        };

        let (client_ca, allowed_names, username_headers, group_headers) = match &args.auth.requestheader_client_ca_file
        {
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                    what: "--requestheader-client-ca-file",
                    path: path.clone(),
                    source,
                })?;
                (
                    pem,
                    args.auth.requestheader_allowed_names.clone(),
                    args.auth.requestheader_username_headers.clone(),
                    args.auth.requestheader_group_headers.clone(),
                )
            }
            None => {
                let client = client.clone().expect("a client exists when the CA comes from the cluster");
                let config = discovery::fetch_request_header_config(client).await?;
                (config.client_ca, config.allowed_names, config.username_headers, config.group_headers)
            }
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

        let authorizer = match args.authorization_mode {
            AuthorizationMode::AlwaysAllow => Authorizer::AllowAll,
            AuthorizationMode::SubjectAccessReview => Authorizer::subject_access_review(
                client.clone().expect("a client exists for SubjectAccessReviews"),
                args.auth.authorization_cache_ttl,
            ),
        };

        let labels = Arc::new(LabelIndex::default());
        let (agents_tx, agents_rx) = watch::channel(args.agents.clone());
        if let Some(client) = client {
            let discovery = discover_agents.then(|| discovery::AgentDiscovery {
                namespace: args.agent_namespace.clone(),
                selector: args.agent_selector.clone(),
                port: args.agent_port,
            });
            tokio::spawn(discovery::run(client, discovery, args.agents.clone(), agents_tx, labels.clone()));
        }

        Ok(Self {
            listen: args.listen,
            cert,
            tls_reload_interval: args.tls_reload_interval,
            client_ca,
            authenticator: Authenticator::FrontProxy { allowed_names, username_headers, group_headers },
            authorizer,
            poll: PollSettings {
                interval: args.poll_interval,
                timeout: args.poll_timeout,
                max_body_bytes: args.max_feed_bytes,
                token: args
                    .agent_token_file
                    .as_deref()
                    .map(|p| crate::agent::read_token(p, "--agent-token-file"))
                    .transpose()
                    .map_err(AdapterError::Token)?,
            },
            max_age: args.max_age,
            prometheus,
            agents: agents_rx,
            labels,
        })
    }
}

/// Binds, starts polling and serving, and returns once listening.
pub async fn start(setup: AdapterSetup, shutdown: watch::Receiver<bool>) -> Result<RunningAdapter, AdapterError> {
    let resolver = CertResolver::new(setup.cert)?;
    resolver.watch(setup.tls_reload_interval);
    let roots = tls::root_store(setup.client_ca.as_bytes(), std::path::Path::new("client CA"))?;
    let client_ca = tls::ClientCa::new(roots)?;
    let tls = Arc::new(tls::server_config(resolver, client_ca.clone())?);
    let listener = tokio::net::TcpListener::bind(setup.listen)
        .await
        .map_err(|source| AdapterError::Bind { addr: setup.listen, source })?;
    let addr = listener.local_addr().map_err(|source| AdapterError::Bind { addr: setup.listen, source })?;

    let store = Arc::new(MetricStore::new(setup.max_age));
    let (ready, collector_task) = match setup.prometheus {
        Some(settings) => {
            let source = PrometheusSource::new(settings, store.clone());
            (source.answered_once.clone(), tokio::spawn(source.run(shutdown.clone())))
        }
        None => {
            let collector = Collector::new(setup.poll, store.clone(), setup.agents);
            (collector.polled_once.clone(), tokio::spawn(collector.run(shutdown.clone())))
        }
    };
    let service = Arc::new(server::AdapterService {
        api: api::MetricsApi::new(store.clone(), setup.labels),
        authenticator: setup.authenticator,
        authorizer: setup.authorizer,
        ready,
    });
    let server_task = tokio::spawn(server::serve(listener, tls, client_ca, service, shutdown));
    let done = tokio::spawn(async move {
        let _ = server_task.await;
        let _ = collector_task.await;
    });
    Ok(RunningAdapter { addr, store, done })
}
