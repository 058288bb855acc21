//! Freshness: how long after a GPU's value changes it can be seen, through
//! the real binaries (the agent over the fake libnvidia-ml, adapters over
//! HTTPS), by three routes measured on the same changes:
//!
//! - direct: agent → adapter polling the agents → custom metrics API, at
//!   defaults (1 s sampling, 1 s polling);
//! - Prometheus: agent → a real Prometheus scraping every 15 s → a PromQL
//!   instant query (what prometheus-adapter answers from);
//! - Prometheus-backed adapter: the same Prometheus → `adapter --source
//!   prometheus` (1 s polling) → custom metrics API.
//!
//! A fourth route is KEDA's activation push: `standalone` flips a pod's
//! simulated load across `activationTargetValue` every 2.5–3.5 s (random, so
//! flips land at every phase of the 1 s sampling and 1 s polling), and each
//! flip is timed from its scenario instant to the `StreamIsActive` message
//! that reports it.
//!
//! The Prometheus routes run when a `prometheus` binary is found (PATH or
//! `KGM_PROMETHEUS_BIN`); `KGM_SCRAPE_INTERVAL` changes the 15 s.
//! `cargo bench --bench freshness` takes 20 measurements (`KGM_CHANGES`
//! changes it); in test mode (`cargo test --benches`) it takes one, as a
//! smoke run.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_gpu_metrics::adapter::tls::{LocalCa, PemPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_kube-gpu-metrics");

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary and waits for the line announcing its address.
fn start(args: &[&str], env: &[(&str, &Path)], announce: &str) -> (Process, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .env("KGM_LOG", "warn,kube_gpu_metrics=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kube-gpu-metrics");
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let announce = announce.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(addr) = line.split(&announce).nth(1) {
                let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("the address");
    (Process(child), addr)
}

fn config(util: u32) -> String {
    format!(
        "gpu name=\"NVIDIA GeForce RTX 4090\" uuid=GPU-fresh util={util} mem_util=10 mem_total=25757220864 mem_used=1073741824\n"
    )
}

/// A plain HTTP GET on loopback; the body of a 200.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    text.starts_with("HTTP/1.1 200").then(|| text.split("\r\n\r\n").nth(1).map(str::to_string))?
}

/// The value PromQL gives for the GPU right now.
async fn promql_value(prometheus: SocketAddr) -> Option<String> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", "DCGM_FI_DEV_GPU_UTIL{hostname=\"fresh-node\"}")
        .finish();
    let body = http_get(prometheus, &format!("/api/v1/query?{query}")).await?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str().map(str::to_string)
}

/// Starts a real Prometheus scraping the agent, if one is installed.
fn start_prometheus(dir: &Path, agent: SocketAddr, scrape: &str) -> Option<(Process, SocketAddr)> {
    let bin = std::env::var("KGM_PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    if Command::new(&bin).arg("--version").output().is_err() {
        println!("freshness: no prometheus binary ({bin}); the Prometheus routes are not measured");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = dir.join("prometheus.yml");
    let text = format!(
        "global: {{scrape_interval: {scrape}, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: agent\n    static_configs: [{{targets: [\"{agent}\"]}}]\n"
    );
    std::fs::write(&config, text).unwrap();
    let child = Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Some((Process(child), port))
}

async fn node_value(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Option<String> {
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut stream = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.ok()?;
    let request = "GET /apis/custom.metrics.k8s.io/v1beta2/nodes/fresh-node/nvidia_gpu_utilization_percent HTTP/1.1\r\nHost: localhost\r\nX-Remote-User: bench\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split("\r\n\r\n").nth(1)?;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json["items"][0]["value"].as_str().map(str::to_string)
}

fn client_config(ca: &LocalCa, client: &PemPair) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap(),
        )
        .unwrap();
    Arc::new(config)
}

fn adapter_args<'a>(path: &'a dyn Fn(&str) -> String, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "adapter",
        "--secure-listen",
        "127.0.0.1:0",
        "--keda-listen",
        "off",
        "--discover-agents=false",
        "--authorization-mode",
        "always-allow",
        "--tls-cert-file",
        &path("tls.crt"),
        "--tls-private-key-file",
        &path("tls.key"),
        "--requestheader-client-ca-file",
        &path("ca.crt"),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn summary(name: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "freshness, {name}, {} changes: min {:.0} ms, median {:.0} ms, max {:.0} ms",
        latencies.len(),
        ms(latencies[0]),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1])
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let measurements: usize = match std::env::var("KGM_CHANGES") {
        Ok(n) => n.parse().expect("KGM_CHANGES is a count"),
        Err(_) if bench => 20,
        Err(_) => 1,
    };
    let scrape = std::env::var("KGM_SCRAPE_INTERVAL").unwrap_or_else(|_| "15s".into());
    let dir = tempfile::tempdir().unwrap();
    let nvml_config = dir.path().join("nvml.conf");
    std::fs::write(&nvml_config, config(10)).unwrap();
    let (_agent, agent) = start(
        &[
            "agent",
            "--gpu-source",
            "nvml",
            "--nvml-lib",
            env!("FAKE_NVML_LIB"),
            "--listen",
            "127.0.0.1:0",
            "--node-name",
            "fresh-node",
            "--no-attribution",
            "--names",
            "both",
        ],
        &[("FAKE_NVML_CONFIG", &nvml_config)],
        "agent listening on http://",
    );

    let ca = LocalCa::new("bench-ca").unwrap();
    let serving = ca.serving(&["localhost", "127.0.0.1"]).unwrap();
    let client = ca.client("front-proxy-client", &[]).unwrap();
    for (name, text) in [("tls.crt", &serving.cert), ("tls.key", &serving.key), ("ca.crt", &ca.cert_pem)] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = |n: &str| dir.path().join(n).display().to_string();
    let agent_url = format!("http://{agent}");
    let direct_args = adapter_args(&path, &["--agent", &agent_url]);
    let direct_args: Vec<&str> = direct_args.iter().map(String::as_str).collect();
    let (_direct, direct) = start(&direct_args, &[], "adapter listening on https://");

    let prometheus = start_prometheus(dir.path(), agent, &scrape);
    let backed = prometheus.as_ref().map(|(_, prometheus)| {
        let url = format!("http://{prometheus}");
        let args = adapter_args(&path, &["--source", "prometheus", "--prometheus-url", &url]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start(&args, &[], "adapter listening on https://")
    });
    let tls = client_config(&ca, &client);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // Per route: (name, its latencies).
    let mut routes: Vec<(String, Vec<Duration>)> =
        vec![("GPU change → custom metrics API, direct (1 s sample, 1 s poll)".into(), Vec::new())];
    if prometheus.is_some() {
        routes.push((format!("GPU change → PromQL, Prometheus scraping every {scrape}"), Vec::new()));
        routes.push((
            format!("GPU change → custom metrics API, --source prometheus ({scrape} scrape, 1 s poll)"),
            Vec::new(),
        ));
    }
    let limit = humantime::parse_duration(&scrape).unwrap() + Duration::from_secs(15);
    runtime.block_on(async {
        let values = async |want: &str| -> Vec<bool> {
            let mut seen = vec![node_value(direct, &tls).await.as_deref() == Some(want)];
            if let (Some((_, prometheus)), Some((_, backed))) = (&prometheus, &backed) {
                seen.push(promql_value(*prometheus).await.as_deref() == Some(want));
                seen.push(node_value(*backed, &tls).await.as_deref() == Some(want));
            }
            seen
        };
        let started = Instant::now();
        while !values("10").await.iter().all(|s| *s) {
            assert!(started.elapsed() < limit + Duration::from_secs(20), "the first value never reached every route");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 0..measurements {
            let util = if i % 2 == 0 { 80 } else { 20 };
            // Land the change at a random point of the sample period, and of
            // the scrape interval when Prometheus is measured: the loop above
            // ends just after a scrape, which would otherwise bias every
            // Prometheus route toward a whole interval.
            let period =
                if prometheus.is_some() { humantime::parse_duration(&scrape).unwrap() } else { Duration::from_secs(1) };
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..period.as_millis() as u64))).await;
            let tmp = dir.path().join("nvml.conf.new");
            std::fs::write(&tmp, config(util)).unwrap();
            std::fs::rename(&tmp, &nvml_config).unwrap();
            let changed = Instant::now();
            let want = util.to_string();
            let mut arrived: Vec<Option<Duration>> = vec![None; routes.len()];
            while arrived.iter().any(Option::is_none) {
                assert!(changed.elapsed() < limit, "value {util} never reached every route: {arrived:?}");
                for (slot, seen) in arrived.iter_mut().zip(values(&want).await) {
                    if seen && slot.is_none() {
                        *slot = Some(changed.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for ((_, latencies), at) in routes.iter_mut().zip(arrived) {
                latencies.push(at.expect("every route arrived"));
            }
        }
    });
    for (name, latencies) in routes {
        summary(&name, latencies);
    }
    summary(
        "load change → KEDA StreamIsActive push (standalone: 1 s sample, 1 s poll)",
        activation_latencies(measurements.max(2)),
    );
}

/// Runs `standalone` with reasoning-suite's load flipping between 10 % and
/// 90 % every 2.5–3.5 s, and times each flip from its scenario instant to the
/// push that reports it (activation at 50 %).
fn activation_latencies(flips: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let mut scenario = String::from("workloads:\n  reasoning-suite:\n");
    // Segment k lasts steps[k]; flip k happens when segment k - 1 ends.
    let steps: Vec<Duration> = (0..=flips).map(|_| Duration::from_millis(fastrand::u64(2500..3500))).collect();
    for (k, step) in steps.iter().enumerate() {
        let load = if k % 2 == 0 { 10 } else { 90 };
        scenario.push_str(&format!("    - {{for: {}ms, load: {load}}}\n", step.as_millis()));
    }
    std::fs::write(dir.path().join("scenario.yaml"), scenario).unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let mut child = Command::new(BIN)
        .args(["standalone", "--agent-port", "0", "--adapter-port", "0", "--keda-port", "0"])
        .args([
            "--scenario",
            &path("scenario.yaml"),
            // One pod whose load flips: no HPA scales it meanwhile.
            "--fixed-replicas",
            "--kubeconfig-out",
            &path("kubeconfig"),
            "--ca-out",
            &path("ca.pem"),
        ])
        .env("KGM_LOG", "warn,kube_gpu_metrics::standalone=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start standalone");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout_tx = tx.clone();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(rest) = line.trim_start().strip_prefix("keda-scaler") {
                let _ = stdout_tx.send(("keda", rest.split_whitespace().next().unwrap().to_string()));
            }
        }
    });
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("unix_ms=").nth(1) {
                let _ = tx.send(("start", rest.split_whitespace().next().unwrap().to_string()));
            }
        }
    });
    let _standalone = Process(child);
    let (mut keda, mut start_ms) = (None, None);
    while keda.is_none() || start_ms.is_none() {
        let (what, value) = rx.recv_timeout(Duration::from_secs(20)).expect("standalone started");
        match what {
            "keda" => keda = Some(value),
            _ => start_ms = Some(value.parse::<u64>().unwrap()),
        }
    }
    let start = std::time::UNIX_EPOCH + Duration::from_millis(start_ms.unwrap());
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use kube_gpu_metrics::adapter::keda::proto::ScaledObjectRef;
        use kube_gpu_metrics::adapter::keda::proto::external_scaler_client::ExternalScalerClient;
        use tonic::transport::{Certificate, Channel, ClientTlsConfig};
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)).domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{}", keda.unwrap())).unwrap().tls_config(tls).unwrap();
        let mut client = ExternalScalerClient::new(channel.connect().await.unwrap());
        let object = ScaledObjectRef {
            name: "reasoning-suite".into(),
            namespace: "ai-system-gpu".into(),
            scaler_metadata: [("targetValue", "70"), ("activationTargetValue", "50")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut stream = client.stream_is_active(object).await.unwrap().into_inner();
        let mut latencies = Vec::new();
        // The first message is the state before any flip.
        let first = stream.message().await.unwrap().expect("a first answer");
        assert!(!first.result, "reasoning-suite starts idle");
        for k in 1..=flips {
            let message =
                tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("a push per flip");
            let active = message.unwrap().expect("the stream stays open").result;
            assert_eq!(active, k % 2 == 1, "flip {k}");
            let flipped = start + steps[..k].iter().sum::<Duration>();
            latencies.push(std::time::SystemTime::now().duration_since(flipped).unwrap_or_default());
        }
        latencies
    })
}
