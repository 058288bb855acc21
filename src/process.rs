//! What every binary does around its work: log setup, the async runtime,
//! the signals that begin shutdown, and the grace given at exit.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio::sync::watch;

/// How long the process may take to exit once its servers have drained: a
/// GPU read hung inside the driver is left behind rather than waited for.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines (Kubernetes components'
    /// `--logging-format=json`).
    Json,
}

/// The logging flags every binary takes.
#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log filter, e.g. `info` or `kube_gpu_metrics=debug`.
    #[arg(long, global = true, env = "KGM_LOG", default_value = "info")]
    pub log: String,

    /// Log line format.
    #[arg(long, global = true, env = "KGM_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Installs the log subscriber, then runs `work` on a two-worker runtime
/// with a shutdown flag that turns true on SIGTERM or SIGINT. Blocking
/// threads still inside a hung driver call get [`EXIT_GRACE`], no more.
pub fn run<F, Fut>(logs: &LogArgs, work: F) -> anyhow::Result<()>
where
    F: FnOnce(watch::Sender<bool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    init_logs(logs)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let (shutdown_tx, _) = watch::channel(false);
        let signals = shutdown_tx.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            // Stored even before `work` has subscribed, so no signal is lost.
            signals.send_replace(true);
        });
        work(shutdown_tx).await
    });
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

fn init_logs(logs: &LogArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&logs.log).context("--log is not a valid filter")?;
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match logs.log_format {
        LogFormat::Text => subscriber.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => subscriber.json().flatten_event(true).with_current_span(false).init(),
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
