//! Freshness: how long after a GPU's value changes the custom metrics API
//! shows it, at default settings (1 s sampling, 1 s polling), through the
//! real binaries: the agent over the fake libnvidia-ml, and the adapter over
//! HTTPS.
//!
//! `cargo bench --bench freshness` takes 20 measurements; in test mode
//! (`cargo test --benches`) it takes one, as a smoke run.

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

fn main() {
    let measurements = if std::env::args().any(|a| a == "--bench") { 20 } else { 1 };
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
    let (_adapter, adapter) = start(
        &[
            "adapter",
            "--secure-listen",
            "127.0.0.1:0",
            "--discover-agents=false",
            "--authorization-mode",
            "always-allow",
            "--agent",
            &agent_url,
            "--tls-cert-file",
            &path("tls.crt"),
            "--tls-private-key-file",
            &path("tls.key"),
            "--requestheader-client-ca-file",
            &path("ca.crt"),
        ],
        &[],
        "adapter listening on https://",
    );
    let tls = client_config(&ca, &client);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let mut latencies: Vec<Duration> = Vec::new();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while node_value(adapter, &tls).await.as_deref() != Some("10") {
            assert!(Instant::now() < deadline, "the adapter never served the first value");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 0..measurements {
            let util = if i % 2 == 0 { 80 } else { 20 };
            // Land the change at a random point of the sample period.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
            let tmp = dir.path().join("nvml.conf.new");
            std::fs::write(&tmp, config(util)).unwrap();
            std::fs::rename(&tmp, &nvml_config).unwrap();
            let changed = Instant::now();
            let want = util.to_string();
            while node_value(adapter, &tls).await.as_deref() != Some(want.as_str()) {
                assert!(changed.elapsed() < Duration::from_secs(15), "value {util} never reached the API");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies.push(changed.elapsed());
        }
    });
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "freshness, GPU value change → custom metrics API, defaults (1 s sample, 1 s poll), {} changes: min {:.0} ms, median {:.0} ms, max {:.0} ms",
        latencies.len(),
        ms(latencies[0]),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1])
    );
}
