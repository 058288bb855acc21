//! The real `kube-gpu-metrics adapter` binary over HTTPS: certificates made
//! with rcgen, agents and a kube-apiserver faked on loopback, every answer
//! checked as bytes and JSON.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use kube_gpu_metrics::adapter::tls::{LocalCa, PemPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_kube-gpu-metrics");
const PODS: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A node feed as an agent serves it, sampled `age_ms` ago.
fn feed(node: &str, age_ms: u64, pods: &[(&str, f64)]) -> Vec<u8> {
    let uuid = format!("GPU-{node}");
    let pods: Vec<Value> = pods
        .iter()
        .map(|(name, util)| {
            // `namespace/pod`, or a pod of ai-system-gpu.
            let (namespace, pod) = name.split_once('/').unwrap_or(("ai-system-gpu", name));
            json!({"namespace": namespace, "pod": pod, "gpus": [uuid], "sharing": "exclusive", "utilizationPercent": util})
        })
        .collect();
    serde_json::to_vec(&json!({
        "node": node,
        "timestampMs": now_ms() - age_ms,
        "intervalMs": 1000,
        "gpus": [{"index": 0, "uuid": uuid, "model": "NVIDIA GeForce RTX 4090", "up": true, "utilizationPercent": 55.0, "memoryUsedBytes": 1024}],
        "pods": pods,
    }))
    .unwrap()
}

type Handler = Arc<dyn Fn(&http::Request<hyper::body::Incoming>) -> (u16, Vec<u8>) + Send + Sync>;

/// A plain HTTP server on loopback, answering with `handler`, on its own thread.
fn serve_http(handler: Handler) -> SocketAddr {
    serve_http_on("127.0.0.1:0".parse().unwrap(), handler)
}

/// [`serve_http`] on a given address.
fn serve_http_on(addr: SocketAddr, handler: Handler) -> SocketAddr {
    serve_async_on(addr, move |req| std::future::ready(handler(&req)))
}

/// A plain HTTP server on loopback whose `handler` may wait, on its own
/// thread; every answer is JSON.
fn serve_async_on<F, Fut>(addr: SocketAddr, handler: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = (u16, Vec<u8>)> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let answer = handler(req);
                        async move {
                            let (status, body) = answer.await;
                            let mut response = http::Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

/// What a fake agent answers: a feed stamped at request time, or raw bytes.
#[derive(Clone)]
enum AgentAnswer {
    Feed {
        node: &'static str,
        age_ms: u64,
        pods: Vec<(&'static str, f64)>,
    },
    Raw(u16, Vec<u8>),
    /// A fresh feed, after a delay.
    Slow(Duration, &'static str, Vec<(&'static str, f64)>),
}

/// An agent whose answer the test sets.
#[derive(Clone)]
struct FakeAgent(Arc<Mutex<AgentAnswer>>);

impl FakeAgent {
    fn start(node: &'static str, pods: &[(&'static str, f64)]) -> (FakeAgent, SocketAddr) {
        Self::start_on("127.0.0.1:0".parse().unwrap(), node, pods)
    }

    fn start_on(addr: SocketAddr, node: &'static str, pods: &[(&'static str, f64)]) -> (FakeAgent, SocketAddr) {
        let agent = FakeAgent(Arc::new(Mutex::new(AgentAnswer::Feed { node, age_ms: 0, pods: pods.to_vec() })));
        let state = agent.0.clone();
        let addr = serve_http_on(
            addr,
            Arc::new(move |req| {
                assert_eq!(req.uri().path(), "/v1/pods");
                match state.lock().unwrap().clone() {
                    AgentAnswer::Feed { node, age_ms, pods } => (200, feed(node, age_ms, &pods)),
                    AgentAnswer::Raw(status, body) => (status, body),
                    AgentAnswer::Slow(delay, node, pods) => {
                        // Blocks this fake agent's own thread only.
                        std::thread::sleep(delay);
                        (200, feed(node, 0, &pods))
                    }
                }
            }),
        );
        (agent, addr)
    }

    fn set(&self, answer: AgentAnswer) {
        *self.0.lock().unwrap() = answer;
    }
}

/// The certificates of a test cluster.
struct Pki {
    dir: tempfile::TempDir,
    serving_ca: LocalCa,
    front_proxy_ca: LocalCa,
    aggregator: PemPair,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let serving_ca = LocalCa::new("serving-ca").unwrap();
        let front_proxy_ca = LocalCa::new("front-proxy-ca").unwrap();
        let aggregator = front_proxy_ca.client("front-proxy-client", &[]).unwrap();
        let serving = serving_ca.serving(&["localhost", "127.0.0.1"]).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &serving.cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &serving.key).unwrap();
        std::fs::write(dir.path().join("front-proxy-ca.crt"), &front_proxy_ca.cert_pem).unwrap();
        Pki { dir, serving_ca, front_proxy_ca, aggregator }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn flags(&self) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            "--tls-cert-file".into(),
            p("tls.crt"),
            "--tls-private-key-file".into(),
            p("tls.key"),
            "--tls-reload-interval".into(),
            "200ms".into(),
            "--requestheader-client-ca-file".into(),
            p("front-proxy-ca.crt"),
            "--requestheader-allowed-names".into(),
            "front-proxy-client".into(),
        ]
    }
}

struct Adapter {
    child: Child,
    addr: SocketAddr,
}

impl Adapter {
    fn start(pki: &Pki, agents: &[SocketAddr], extra: &[&str], kubeconfig: Option<&Path>) -> Adapter {
        let agents: Vec<String> = agents.iter().map(|a| format!("http://{a}")).collect();
        let mut cmd = Command::new(BIN);
        cmd.arg("adapter");
        if !extra.contains(&"--secure-listen") {
            cmd.args(["--secure-listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--keda-listen") {
            cmd.args(["--keda-listen", "127.0.0.1:0"]);
        }
        if !extra.iter().any(|a| a.starts_with("--discover-agents")) {
            cmd.arg("--discover-agents=false");
        }
        if !agents.is_empty() {
            cmd.args(["--agent", &agents.join(",")]);
        }
        cmd.args(["--poll-interval", "200ms"])
            .args(pki.flags())
            .args(extra)
            .env("KGM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match kubeconfig {
            Some(path) => cmd.env("KUBECONFIG", path),
            None => cmd.env_remove("KUBECONFIG"),
        };
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("adapter listening on https://").nth(1) {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
                }
                eprintln!("adapter: {line}");
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).expect("adapter printed its address");
        Adapter { child, addr }
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM.
fn sigterm(adapter: &Adapter) {
    let pid = adapter.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

/// Waits for the process to exit (at most 15 s).
async fn exit_status(adapter: &mut Adapter) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = adapter.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running 15 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Answer {
    status: u16,
    body: Value,
    server_cert: Vec<u8>,
}

/// A client config trusting `ca`, presenting `client` if given.
fn client_config(ca: &str, client: Option<&PemPair>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(pair) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pair.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Connects over TLS and sends one request with `Connection: close`; returns
/// the stream to read the answer from.
async fn send(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let _ = tls.write_all(request.as_bytes()).await;
    tls
}

/// One HTTPS request, trusting `ca`, presenting `client` if given.
async fn https(
    addr: SocketAddr,
    ca: &str,
    client: Option<&PemPair>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut tls = send(addr, client_config(ca, client), method, path, headers).await;
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let body = serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null);
    Answer { status, body, server_cert }
}

/// A request through the aggregation layer, as kube-apiserver sends it.
async fn via_aggregator(pki: &Pki, adapter: &Adapter, path: &str) -> Answer {
    let headers = [
        ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
        ("X-Remote-Group", "system:serviceaccounts"),
    ];
    https(adapter.addr, &pki.serving_ca.cert_pem, Some(&pki.aggregator), "GET", path, &headers).await
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A list answer's described objects and values, in order.
fn pod_values(body: &Value) -> Vec<(String, String)> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["describedObject"]["name"].as_str().unwrap().into(), i["value"].as_str().unwrap().into()))
        .collect()
}

fn assert_status(answer: &Answer, code: u16, reason: &str) {
    assert_eq!(answer.status, code, "{}", answer.body);
    assert_eq!(answer.body["kind"], "Status");
    assert_eq!(answer.body["apiVersion"], "v1");
    assert_eq!(answer.body["status"], "Failure");
    assert_eq!(answer.body["reason"], reason);
    assert_eq!(answer.body["code"], code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_discovery_and_values_through_the_aggregation_layer() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[("reasoning-suite-a", 42.5), ("reasoning-suite-b", 70.0)]);
    let adapter = Adapter::start(&pki, &[agent_addr], &["--authorization-mode", "always-allow"], None);

    // The aggregator's availability check: discovery, authenticated, no SAR.
    let discovery = via_aggregator(&pki, &adapter, "/apis/custom.metrics.k8s.io/v1beta2").await;
    assert_eq!(discovery.status, 200);
    assert_eq!(discovery.body["kind"], "APIResourceList");
    assert!(
        discovery.body["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods/nvidia_gpu_utilization_percent")
    );
    assert_eq!(via_aggregator(&pki, &adapter, "/apis/external.metrics.k8s.io/v1beta1").await.status, 200);
    assert_eq!(via_aggregator(&pki, &adapter, "/openapi/v2").await.body["swagger"], "2.0");

    let path = format!("{PODS}/%2A/nvidia_gpu_utilization_percent");
    let mut body = Value::Null;
    until("values", async || {
        body = via_aggregator(&pki, &adapter, &path).await.body;
        body["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    assert_eq!(body["kind"], "MetricValueList");
    assert_eq!(body["items"][0]["describedObject"]["name"], "reasoning-suite-a");
    assert_eq!(body["items"][0]["value"], "42500m");
    assert_eq!(body["items"][1]["value"], "70");
    assert_eq!(body["items"][0]["windowSeconds"], 1);

    let v1 = via_aggregator(&pki, &adapter, "/apis/custom.metrics.k8s.io/v1beta1/namespaces/ai-system-gpu/pods/reasoning-suite-b/nvidia_gpu_utilization_percent").await;
    assert_eq!(v1.body["items"][0]["metricName"], "nvidia_gpu_utilization_percent");
    assert_eq!(v1.body["items"][0]["window"], 1);
    let node = via_aggregator(
        &pki,
        &adapter,
        "/apis/custom.metrics.k8s.io/v1beta2/nodes/mainpc/nvidia_gpu_utilization_percent",
    )
    .await;
    assert_eq!(node.body["items"][0]["value"], "55");

    // Health endpoints answer probes, which carry no certificate.
    let health = https(adapter.addr, &pki.serving_ca.cert_pem, None, "GET", "/readyz", &[]).await;
    assert_eq!(health.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_a_status_with_the_right_code() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[("p", 1.0)]);
    let adapter = Adapter::start(&pki, &[agent_addr], &["--authorization-mode", "always-allow"], None);
    let ca = pki.serving_ca.cert_pem.as_str();
    let path = format!("{PODS}/%2A/nvidia_gpu_utilization_percent");

    // No certificate, a certificate from another CA, a name not allowed, no user header: 401.
    assert_status(&https(adapter.addr, ca, None, "GET", &path, &[]).await, 401, "Unauthorized");
    let stranger = LocalCa::new("evil-ca").unwrap().client("front-proxy-client", &[]).unwrap();
    let answer = https(adapter.addr, ca, Some(&stranger), "GET", &path, &[("X-Remote-User", "admin")]).await;
    assert_status(&answer, 401, "Unauthorized");
    let other_name = pki.front_proxy_ca.client("someone-else", &[]).unwrap();
    let answer = https(adapter.addr, ca, Some(&other_name), "GET", &path, &[("X-Remote-User", "admin")]).await;
    assert_status(&answer, 401, "Unauthorized");
    assert_status(&https(adapter.addr, ca, Some(&pki.aggregator), "GET", &path, &[]).await, 401, "Unauthorized");

    let user = [("X-Remote-User", "admin")];
    let answer = https(adapter.addr, ca, Some(&pki.aggregator), "POST", &path, &user).await;
    assert_status(&answer, 405, "MethodNotAllowed");
    let answer = via_aggregator(&pki, &adapter, &format!("{path}?labelSelector=app%3D%3D%3Dx")).await;
    assert_status(&answer, 400, "BadRequest");
    assert!(answer.body["message"].as_str().unwrap().contains("labelSelector"));
    assert_status(&via_aggregator(&pki, &adapter, &format!("{PODS}/%2A/cpu")).await, 404, "NotFound");
    assert_status(&via_aggregator(&pki, &adapter, "/apis/custom.metrics.k8s.io/v9").await, 404, "NotFound");
    assert_status(
        &via_aggregator(&pki, &adapter, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/x/pods/..%2Fsecret/m").await,
        404,
        "NotFound",
    );
    let big = https(
        adapter.addr,
        ca,
        Some(&pki.aggregator),
        "GET",
        &path,
        &[("X-Remote-User", "a"), ("Content-Length", "10000000")],
    )
    .await;
    assert_status(&big, 413, "RequestEntityTooLarge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_access_review_denial_is_403() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[("p", 1.0)]);
    // kube-apiserver, as far as the adapter sees it: SubjectAccessReviews
    // answered from a recorded denial.
    let cluster = FakeCluster { review: (false, "no RBAC policy matched", Duration::ZERO), ..FakeCluster::reference() };
    let reviews = cluster.reviews.clone();
    let kubeconfig = kubeconfig(&pki, fake_apiserver(cluster));
    let adapter =
        Adapter::start(&pki, &[agent_addr], &["--authorization-mode", "subject-access-review"], Some(&kubeconfig));
    let path = format!("{PODS}/%2A/nvidia_gpu_utilization_percent");
    let answer = via_aggregator(&pki, &adapter, &path).await;
    assert_status(&answer, 403, "Forbidden");
    let message = answer.body["message"].as_str().unwrap();
    assert!(message.contains("horizontal-pod-autoscaler") && message.contains("no RBAC policy matched"), "{message}");
    assert!(reviews.load(Ordering::SeqCst) > 0);
    // Discovery needs no review.
    assert_eq!(via_aggregator(&pki, &adapter, "/apis/custom.metrics.k8s.io/v1beta1").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_garbled_and_oversized_feeds_are_never_served() {
    let pki = Pki::new();
    let (good, good_addr) = FakeAgent::start("mainpc", &[("fresh", 10.0)]);
    let (bad, bad_addr) = FakeAgent::start("pc2", &[("soon-stale", 20.0)]);
    let adapter = Adapter::start(
        &pki,
        &[good_addr, bad_addr],
        &["--authorization-mode", "always-allow", "--max-feed-bytes", "4096"],
        None,
    );
    let path = format!("{PODS}/%2A/nvidia_gpu_utilization_percent");
    let names = async || -> Vec<String> {
        pod_values(&via_aggregator(&pki, &adapter, &path).await.body).into_iter().map(|(name, _)| name).collect()
    };
    until("both agents", async || names().await.len() == 2).await;

    // The second agent starts sending garbage: its pods drop out after max-age (3 s).
    bad.set(AgentAnswer::Raw(200, b"{not json".to_vec()));
    let started = Instant::now();
    until("stale pods dropped", async || names().await == ["fresh"]).await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "dropped before max-age: {:?}", started.elapsed());
    let by_name = via_aggregator(&pki, &adapter, &format!("{PODS}/soon-stale/nvidia_gpu_utilization_percent")).await;
    assert_status(&by_name, 404, "NotFound");

    // An oversized body is refused whole; an old sample is refused at once.
    bad.set(AgentAnswer::Feed { node: "pc2", age_ms: 0, pods: vec![("huge", 1.0); 200] });
    good.set(AgentAnswer::Feed { node: "mainpc", age_ms: 60_000, pods: vec![("fresh", 10.0)] });
    until("nothing served", async || names().await.is_empty()).await;

    good.set(AgentAnswer::Feed { node: "mainpc", age_ms: 0, pods: vec![("fresh", 11.0)] });
    until("fresh again", async || names().await == ["fresh"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_without_restart() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[]);
    let adapter = Adapter::start(&pki, &[agent_addr], &["--authorization-mode", "always-allow"], None);
    let before = via_aggregator(&pki, &adapter, "/apis").await.server_cert;

    // An invalid replacement is refused; the old certificate keeps serving.
    std::fs::write(pki.path("tls.crt"), "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(via_aggregator(&pki, &adapter, "/apis").await.server_cert, before);

    let rotated = pki.serving_ca.serving(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(pki.path("tls.key"), &rotated.key).unwrap();
    std::fs::write(pki.path("tls.crt"), &rotated.cert).unwrap();
    let mut after = before.clone();
    until("the new certificate", async || {
        after = via_aggregator(&pki, &adapter, "/apis").await.server_cert;
        after != before
    })
    .await;
    assert_eq!(after, CertificateDer::from_pem_slice(rotated.cert.as_bytes()).unwrap().to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_adapter_serves_again_and_sigterm_stops_it_cleanly() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[("reasoning-suite-a", 33.0)]);
    let first = Adapter::start(&pki, &[agent_addr], &["--authorization-mode", "always-allow"], None);
    let port = first.addr.port().to_string();
    let path = format!("{PODS}/reasoning-suite-a/nvidia_gpu_utilization_percent");
    until("values", async || via_aggregator(&pki, &first, &path).await.status == 200).await;

    // SIGTERM: the process exits 0.
    let mut first = first;
    sigterm(&first);
    let status = exit_status(&mut first).await;
    assert!(status.success(), "{status}");

    // A new process on the same port: empty store first (a Status, not a
    // 500), then values after its first poll.
    let listen = format!("127.0.0.1:{port}");
    let second = Adapter::start(
        &pki,
        &[agent_addr],
        &["--authorization-mode", "always-allow", "--secure-listen", &listen],
        None,
    );
    let first_answer = via_aggregator(&pki, &second, &path).await;
    assert!(first_answer.status == 200 || first_answer.status == 404, "{}", first_answer.body);
    until("values again", async || via_aggregator(&pki, &second, &path).await.body["items"][0]["value"] == "33").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[]);
    let adapter = Adapter::start(&pki, &[agent_addr], &["--authorization-mode", "always-allow"], None);
    let huge = "x".repeat(64 * 1024);
    let headers = [("X-Remote-User", "a"), ("X-Padding", huge.as_str())];
    let ca = pki.serving_ca.cert_pem.as_str();
    let status = https_status(adapter.addr, ca, &pki.aggregator, &headers).await;
    assert_eq!(status, 431);
    assert_eq!(via_aggregator(&pki, &adapter, "/apis").await.status, 200);
}

/// Only the status line: hyper's 431 answer has no JSON body.
async fn https_status(addr: SocketAddr, ca: &str, client: &PemPair, headers: &[(&str, &str)]) -> u16 {
    let mut tls = send(addr, client_config(ca, Some(client)), "GET", "/apis", headers).await;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_drops_out_without_holding_up_the_others() {
    let pki = Pki::new();
    let (fast, fast_addr) = FakeAgent::start("mainpc", &[("fast", 10.0)]);
    let (slow, slow_addr) = FakeAgent::start("pc2", &[("slow", 20.0)]);
    let adapter = Adapter::start(
        &pki,
        &[fast_addr, slow_addr],
        &["--authorization-mode", "always-allow", "--poll-timeout", "300ms"],
        None,
    );
    let path = format!("{PODS}/%2A/nvidia_gpu_utilization_percent");
    let values = async || -> Vec<(String, String)> { pod_values(&via_aggregator(&pki, &adapter, &path).await.body) };
    until("both agents", async || values().await.len() == 2).await;

    // pc2's agent now answers after 2 s, past the 300 ms poll timeout.
    slow.set(AgentAnswer::Slow(Duration::from_secs(2), "pc2", vec![("slow", 20.0)]));
    until("the slow agent's pod dropped", async || values().await == [("fast".to_string(), "10".to_string())]).await;
    // The fast agent keeps being polled: a new value shows up.
    fast.set(AgentAnswer::Feed { node: "mainpc", age_ms: 0, pods: vec![("fast", 12.5)] });
    until("the fast agent's new value", async || values().await == [("fast".to_string(), "12500m".to_string())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_gets_no_answer() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[("p", 1.0)]);
    let adapter = Adapter::start(&pki, &[agent_addr], &["--authorization-mode", "always-allow"], None);
    let mut tcp = tokio::net::TcpStream::connect(adapter.addr).await.unwrap();
    let request =
        format!("GET {PODS}/%2A/nvidia_gpu_utilization_percent HTTP/1.1\r\nHost: x\r\nX-Remote-User: a\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut raw)).await;
    assert!(!String::from_utf8_lossy(&raw).contains("HTTP/1.1"), "answered in plaintext: {raw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[("p", 1.0)]);
    // A kube-apiserver that takes 2 s over every SubjectAccessReview.
    let cluster = FakeCluster { review: (true, "", Duration::from_secs(2)), ..FakeCluster::reference() };
    let kubeconfig = kubeconfig(&pki, fake_apiserver(cluster));
    let mut adapter =
        Adapter::start(&pki, &[agent_addr], &["--authorization-mode", "subject-access-review"], Some(&kubeconfig));
    let path = format!("{PODS}/p/nvidia_gpu_utilization_percent");
    // Wait for data through a first (slow) request, then start the one to interrupt.
    until("values", async || via_aggregator(&pki, &adapter, &path).await.status == 200).await;
    let in_flight = {
        let (addr, ca, aggregator) = (adapter.addr, pki.serving_ca.cert_pem.clone(), pki.aggregator.clone());
        let path = path.replace("/p/", "/p2/");
        tokio::spawn(async move {
            https(addr, &ca, Some(&aggregator), "GET", &path, &[("X-Remote-User", "someone-else")]).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&adapter);
    // The request in flight gets its answer (404: no pod p2), not a reset.
    let answer = in_flight.await.unwrap();
    assert_status(&answer, 404, "NotFound");
    let status = exit_status(&mut adapter).await;
    assert!(status.success(), "{status}");
}

/// What a fake Prometheus answers to `/api/v1/query`.
#[derive(Clone, Copy)]
enum PrometheusAnswer {
    /// Pod `p1` on node `n1` at `value`, scraped `age_ms` ago.
    Scraped { value: f64, age_ms: u64 },
    /// A refused query, as Prometheus explains bad PromQL.
    BadData,
}

/// A Prometheus HTTP API on loopback answering the adapter's queries in
/// Prometheus' own format; every PromQL it was sent is kept.
fn fake_prometheus(answer: Arc<Mutex<PrometheusAnswer>>, seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    serve_http(Arc::new(move |req| {
        assert_eq!(req.uri().path(), "/api/v1/query");
        let promql = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "query")
            .map(|(_, v)| v.into_owned())
            .expect("a query parameter");
        seen.lock().unwrap().push(promql.clone());
        let (value, age_ms) = match *answer.lock().unwrap() {
            PrometheusAnswer::BadData => {
                let body =
                    json!({"status": "error", "errorType": "bad_data", "error": "1:13: parse error: unexpected \"(\""});
                return (400, serde_json::to_vec(&body).unwrap());
            }
            PrometheusAnswer::Scraped { value, age_ms } => (value, age_ms),
        };
        let now = now_ms() as f64 / 1000.0;
        let labels = if promql.contains("namespace!=\"\"") {
            json!({"namespace": "ai-system-gpu", "pod": "p1", "Hostname": "n1"})
        } else {
            json!({"Hostname": "n1", "modelName": "NVIDIA GeForce RTX 4090"})
        };
        let value = if promql.starts_with("count by") {
            1.0
        } else if promql.contains("timestamp(") {
            now - age_ms as f64 / 1000.0
        } else {
            value
        };
        let result = json!([{"metric": labels, "value": [now, value.to_string()]}]);
        (
            200,
            serde_json::to_vec(&json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
                .unwrap(),
        )
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_source_serves_the_same_api_and_never_a_stale_or_refused_value() {
    let pki = Pki::new();
    let answer = Arc::new(Mutex::new(PrometheusAnswer::Scraped { value: 63.0, age_ms: 500 }));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let prometheus = fake_prometheus(answer.clone(), seen.clone());
    let url = format!("http://{prometheus}");
    let adapter = Adapter::start(
        &pki,
        &[],
        &[
            "--source",
            "prometheus",
            "--prometheus-url",
            &url,
            "--authorization-mode",
            "always-allow",
            "--max-age",
            "3s",
        ],
        None,
    );
    let path = format!("{PODS}/%2A/nvidia_gpu_utilization_percent");
    let values = async || -> Vec<(String, String)> {
        let answer = via_aggregator(&pki, &adapter, &path).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        pod_values(&answer.body)
    };
    until("the value from Prometheus", async || values().await == [("p1".to_string(), "63".to_string())]).await;
    let node =
        via_aggregator(&pki, &adapter, "/apis/custom.metrics.k8s.io/v1beta1/nodes/n1/nvidia_gpu_utilization_percent")
            .await;
    assert_eq!(node.body["items"][0]["value"], "63", "{}", node.body);
    assert_eq!(node.body["items"][0]["window"], 15, "the scrape interval is the window");
    assert!(seen.lock().unwrap().iter().any(|q| q.contains("DCGM_FI_DEV_GPU_UTIL{namespace!=\"\",pod!=\"\"}")));

    // Bad PromQL: the last good value is served only until it ages out (3 s),
    // then the pod is NotFound; the process keeps running.
    *answer.lock().unwrap() = PrometheusAnswer::BadData;
    let refused_at = Instant::now();
    until("the refused value ages out", async || values().await.is_empty()).await;
    assert!(refused_at.elapsed() >= Duration::from_millis(1500), "dropped early: {:?}", refused_at.elapsed());
    let by_name = via_aggregator(&pki, &adapter, &format!("{PODS}/p1/nvidia_gpu_utilization_percent")).await;
    assert_status(&by_name, 404, "NotFound");

    // Prometheus answers again, but with a series it last scraped a minute ago.
    *answer.lock().unwrap() = PrometheusAnswer::Scraped { value: 70.0, age_ms: 60_000 };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(values().await.is_empty(), "a stale series is not served");
    *answer.lock().unwrap() = PrometheusAnswer::Scraped { value: 71.0, age_ms: 0 };
    until("fresh again", async || values().await == [("p1".to_string(), "71".to_string())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_prometheus_is_not_ready_and_serves_nothing() {
    let pki = Pki::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}");
    let adapter = Adapter::start(
        &pki,
        &[],
        &["--source", "prometheus", "--prometheus-url", &url, "--authorization-mode", "always-allow"],
        None,
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ready = via_aggregator(&pki, &adapter, "/readyz").await;
    assert_status(&ready, 503, "ServiceUnavailable");
    let by_name = via_aggregator(&pki, &adapter, &format!("{PODS}/p1/nvidia_gpu_utilization_percent")).await;
    assert_status(&by_name, 404, "NotFound");
}

#[test]
fn a_bad_prometheus_url_or_query_file_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("queries.yaml");
    std::fs::write(&queries, "labels: {}\n").unwrap();
    for (args, want) in [
        (vec!["--prometheus-url", "https://prometheus:9090"], "https is not supported"),
        (vec!["--prometheus-url", "http://p:9090", "--prometheus-queries", queries.to_str().unwrap()], "queries.yaml"),
        (vec![], "--prometheus-url"),
    ] {
        let output = Command::new(BIN)
            .args([
                "adapter",
                "--source",
                "prometheus",
                "--discover-agents=false",
                "--authorization-mode",
                "always-allow",
            ])
            .args(["--requestheader-client-ca-file", "/nonexistent"])
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(want), "{stderr}");
    }
}

/// What the fake kube-apiserver holds and how it answers.
#[derive(Clone)]
struct FakeCluster {
    /// Pods: `namespace/name`, node, `app` label.
    pods: Vec<(&'static str, &'static str, &'static str)>,
    /// Agent pods: node and IP.
    agents: Vec<(&'static str, &'static str)>,
    /// How long the first pods list takes.
    slow_first_list: Duration,
    /// SubjectAccessReviews: allowed, reason, delay.
    review: (bool, &'static str, Duration),
    /// SubjectAccessReviews answered.
    reviews: Arc<AtomicUsize>,
    /// Pods lists answered.
    lists: Arc<AtomicUsize>,
}

impl FakeCluster {
    /// The reference cluster: mainpc and pc2, with pods `p`, `p2` and the
    /// reasoning-suite on mainpc, reasoning-suite-c on pc2, coredns on mainpc.
    fn reference() -> Self {
        Self {
            pods: vec![
                ("ai-system-gpu/p", "mainpc", "p"),
                ("ai-system-gpu/p2", "mainpc", "p"),
                ("ai-system-gpu/reasoning-suite-a", "mainpc", "reasoning-suite"),
                ("ai-system-gpu/reasoning-suite-c", "pc2", "reasoning-suite"),
                ("kube-system/coredns-abc", "mainpc", "coredns"),
            ],
            agents: Vec::new(),
            slow_first_list: Duration::ZERO,
            review: (true, "", Duration::ZERO),
            reviews: Arc::default(),
            lists: Arc::default(),
        }
    }

    async fn answer(&self, req: &http::Request<hyper::body::Incoming>) -> (u16, Value) {
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or_default();
        if query.contains("watch=true") {
            // Nothing changes during a test: hold the watch open.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return (200, Value::Null);
        }
        let list = |kind: &str, items: Vec<Value>| json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": items});
        match path {
            "/apis/authorization.k8s.io/v1/subjectaccessreviews" => {
                let (allowed, reason, delay) = self.review;
                tokio::time::sleep(delay).await;
                self.reviews.fetch_add(1, Ordering::SeqCst);
                let review = json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                    "metadata": {}, "spec": {}, "status": {"allowed": allowed, "reason": reason}});
                (201, review)
            }
            "/api/v1/pods" => {
                if self.lists.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(self.slow_first_list).await;
                }
                let items = self
                    .pods
                    .iter()
                    .map(|(id, node, app)| {
                        let (namespace, name) = id.split_once('/').unwrap();
                        json!({"metadata": {"name": name, "namespace": namespace, "labels": {"app": app},
                                "managedFields": [{"manager": "kubelet"}]},
                               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
                               "status": {"phase": "Running"}})
                    })
                    .collect();
                (200, list("PodList", items))
            }
            "/api/v1/namespaces/kube-gpu-metrics/pods" => {
                let items = self
                    .agents
                    .iter()
                    .map(|(node, ip)| {
                        json!({"metadata": {"name": format!("agent-{node}"), "namespace": "kube-gpu-metrics"},
                               "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "i"}]},
                               "status": {"phase": "Running", "podIP": ip}})
                    })
                    .collect();
                (200, list("PodList", items))
            }
            "/api/v1/nodes" => {
                let items = ["mainpc", "pc2"]
                    .iter()
                    .map(|n| json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": n}}))
                    .collect();
                let mut nodes = list("PartialObjectMetadataList", items);
                nodes["apiVersion"] = json!("meta.k8s.io/v1");
                (200, nodes)
            }
            _ => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}),
            ),
        }
    }
}

/// A kube-apiserver on loopback answering from `cluster`, watches held open.
fn fake_apiserver(cluster: FakeCluster) -> SocketAddr {
    serve_async_on("127.0.0.1:0".parse().unwrap(), move |req| {
        let cluster = cluster.clone();
        async move {
            let (status, body) = cluster.answer(&req).await;
            (status, serde_json::to_vec(&body).unwrap())
        }
    })
}

/// A kubeconfig for a plain-HTTP kube-apiserver at `addr`.
fn kubeconfig(pki: &Pki, addr: SocketAddr) -> PathBuf {
    let path = pki.path("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\nusers:\n- name: u\n  user:\n    token: test\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    path
}

/// A plain-HTTP GET on the adapter's port over TLS without a client
/// certificate (what probes and scrapers send): status and body text.
async fn probe(adapter: &Adapter, pki: &Pki, path: &str) -> (u16, String) {
    let mut tls = send(adapter.addr, client_config(&pki.serving_ca.cert_pem, None), "GET", path, &[]).await;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_speaks_only_for_its_own_pods() {
    let pki = Pki::new();
    // Two agents on the same port, one per node, as a DaemonSet has them.
    let (_mainpc, mainpc_addr) =
        FakeAgent::start_on("127.0.0.1:0".parse().unwrap(), "mainpc", &[("reasoning-suite-a", 42.5)]);
    let pc2_ip = "127.0.0.2";
    // The agent on pc2 is hostile: it claims kube-system's DNS and a pod on mainpc.
    let (pc2, _) = FakeAgent::start_on(
        SocketAddr::new(pc2_ip.parse().unwrap(), mainpc_addr.port()),
        "pc2",
        &[("kube-system/coredns-abc", 77.0), ("reasoning-suite-a", 0.5), ("reasoning-suite-c", 80.0), ("ghost", 9.0)],
    );
    let cluster = FakeCluster { agents: vec![("mainpc", "127.0.0.1"), ("pc2", pc2_ip)], ..FakeCluster::reference() };
    let kubeconfig = kubeconfig(&pki, fake_apiserver(cluster));
    let port = mainpc_addr.port().to_string();
    let adapter = Adapter::start(
        &pki,
        &[],
        &["--discover-agents=true", "--agent-port", &port, "--authorization-mode", "always-allow"],
        Some(&kubeconfig),
    );
    let selector = format!("{PODS}/%2A/nvidia_gpu_utilization_percent?labelSelector=app%3Dreasoning-suite");
    until("both nodes' pods", async || pod_values(&via_aggregator(&pki, &adapter, &selector).await.body).len() == 2)
        .await;
    let want = vec![("reasoning-suite-a".to_string(), "42500m".to_string()), ("reasoning-suite-c".into(), "80".into())];
    assert_eq!(pod_values(&via_aggregator(&pki, &adapter, &selector).await.body), want);
    // By name, the same single value as in the list.
    let a = via_aggregator(&pki, &adapter, &format!("{PODS}/reasoning-suite-a/nvidia_gpu_utilization_percent")).await;
    assert_eq!(pod_values(&a.body), want[..1]);
    let dns =
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/kube-system/pods/coredns-abc/nvidia_gpu_utilization_percent";
    assert_status(&via_aggregator(&pki, &adapter, dns).await, 404, "NotFound");
    let (_, metrics) = probe(&adapter, &pki, "/metrics").await;
    let rejected = "kube_gpu_metrics_adapter_feed_items_rejected_total";
    assert!(counter(&metrics, &format!("{rejected}{{reason=\"pod_on_other_node\"}}")) >= 2.0, "{metrics}");
    assert!(counter(&metrics, &format!("{rejected}{{reason=\"unknown_pod\"}}")) >= 1.0, "{metrics}");

    // The agent on pc2 now names itself mainpc: refused whole, mainpc's values stand.
    pc2.set(AgentAnswer::Feed { node: "mainpc", age_ms: 0, pods: vec![("reasoning-suite-a", 1.0)] });
    let nodes = "/apis/custom.metrics.k8s.io/v1beta2/nodes/pc2/nvidia_gpu_utilization_percent";
    until("pc2's values to drop out", async || via_aggregator(&pki, &adapter, nodes).await.status == 404).await;
    assert_eq!(pod_values(&via_aggregator(&pki, &adapter, &selector).await.body), want[..1]);
    let (_, metrics) = probe(&adapter, &pki, "/metrics").await;
    assert!(counter(&metrics, &format!("{rejected}{{reason=\"node_mismatch\"}}")) >= 2.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_synced_caches_and_a_first_round() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[("reasoning-suite-a", 42.5)]);
    let (_agent2, agent2_addr) = FakeAgent::start("pc2", &[("reasoning-suite-c", 80.0)]);
    // The first pods list takes 2 s.
    let cluster = FakeCluster { slow_first_list: Duration::from_secs(2), ..FakeCluster::reference() };
    let kubeconfig = kubeconfig(&pki, fake_apiserver(cluster));
    let adapter =
        Adapter::start(&pki, &[agent_addr, agent2_addr], &["--authorization-mode", "always-allow"], Some(&kubeconfig));
    let (status, body) = probe(&adapter, &pki, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reason"], "ServiceUnavailable");
    assert!(body["message"].as_str().unwrap().contains("pods-cache"), "{body}");
    until("ready", async || probe(&adapter, &pki, "/readyz").await.0 == 200).await;
    // Ready: the HPA's selector query lists the fresh pods at once.
    let selector = format!("{PODS}/%2A/nvidia_gpu_utilization_percent?labelSelector=app%3Dreasoning-suite");
    assert_eq!(pod_values(&via_aggregator(&pki, &adapter, &selector).await.body).len(), 2);
    let (_, verbose) = probe(&adapter, &pki, "/readyz?verbose").await;
    for check in ["[+]pods-cache ok", "[+]nodes-cache ok", "[+]source ok", "readyz check passed"] {
        assert!(verbose.contains(check), "{verbose}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_never_answered_leave_the_adapter_unready() {
    let pki = Pki::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let adapter = Adapter::start(&pki, &[closed], &["--authorization-mode", "always-allow"], None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, body) = probe(&adapter, &pki, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("source"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_or_out_of_range_feed_is_refused_and_breaks_nothing() {
    let pki = Pki::new();
    let (_good, good_addr) = FakeAgent::start("mainpc", &[("reasoning-suite-a", 42.5)]);
    let year_10000 = serde_json::to_vec(&json!({"node": "pc2", "timestampMs": 253_402_300_805_000u64, "intervalMs": 1000,
        "gpus": [], "pods": [{"namespace": "ai-system-gpu", "pod": "reasoning-suite-c", "gpus": [], "sharing": "exclusive", "utilizationPercent": 50.0}]}))
    .unwrap();
    let (_future, future_addr) = FakeAgent::start("pc2", &[]);
    _future.set(AgentAnswer::Raw(200, year_10000));
    let (_huge, huge_addr) = FakeAgent::start("n3", &[("reasoning-suite-h", 1e308), ("reasoning-suite-n", -5.0)]);
    let adapter =
        Adapter::start(&pki, &[good_addr, future_addr, huge_addr], &["--authorization-mode", "always-allow"], None);
    let all = format!("{PODS}/%2A/nvidia_gpu_utilization_percent");
    until("values", async || !pod_values(&via_aggregator(&pki, &adapter, &all).await.body).is_empty()).await;
    for _ in 0..5 {
        let answer = via_aggregator(&pki, &adapter, &all).await;
        assert_eq!(answer.status, 200);
        assert_eq!(pod_values(&answer.body), [("reasoning-suite-a".to_string(), "42500m".to_string())]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ns = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/metrics/nvidia_gpu_utilization_percent";
    assert_eq!(pod_values(&via_aggregator(&pki, &adapter, ns).await.body)[0].1, "42500m");
    let (_, metrics) = probe(&adapter, &pki, "/metrics").await;
    let rejected = "kube_gpu_metrics_adapter_feed_items_rejected_total";
    assert!(counter(&metrics, &format!("{rejected}{{reason=\"future_timestamp\"}}")) >= 2.0, "{metrics}");
    assert!(counter(&metrics, &format!("{rejected}{{reason=\"value_out_of_range\"}}")) >= 2.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_survived_and_connections_over_the_limit_are_closed() {
    let pki = Pki::new();
    let (_agent, agent_addr) = FakeAgent::start("mainpc", &[("p", 1.0)]);
    let mut adapter =
        Adapter::start(&pki, &[agent_addr], &["--max-connections", "4", "--authorization-mode", "always-allow"], None);
    let pid = adapter.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(probe(&adapter, &pki, "/healthz").await.0, 200, "the adapter survives SIGHUP");
    // Four idle connections hold every slot; a fifth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(adapter.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = tokio::net::TcpStream::connect(adapter.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    // Once the idle ones go, the port serves again.
    drop(idle);
    // Slots free as the server notices each close, so every request from
    // here on may still meet a full port: each is tried until it is served.
    let served = async |path: &str| -> Option<String> {
        let tcp = tokio::net::TcpStream::connect(adapter.addr).await.ok()?;
        let config = client_config(&pki.serving_ca.cert_pem, None);
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        let raw = String::from_utf8(raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    };
    until("a free slot", async || served("/healthz").await.is_some()).await;
    let mut metrics = String::new();
    until("the adapter's metrics", async || match served("/metrics").await {
        Some(raw) => {
            metrics = raw;
            true
        }
        None => false,
    })
    .await;
    assert!(counter(&metrics, "kube_gpu_metrics_adapter_connections_refused_total") >= 1.0, "{metrics}");
    sigterm(&adapter);
    assert!(exit_status(&mut adapter).await.success());
}

#[tokio::test]
async fn a_keda_port_asked_for_must_bind_and_the_default_one_taken_leaves_the_scaler_off() {
    let pki = Pki::new();
    let base = |cmd: &mut Command| {
        cmd.args(["adapter", "--secure-listen", "127.0.0.1:0", "--discover-agents=false"])
            .args(["--authorization-mode", "always-allow"])
            .args(pki.flags())
            .env_remove("KUBECONFIG")
            .env("KGM_LOG", "info");
    };
    // An address given must bind: the start stops, naming the flag.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let mut cmd = Command::new(BIN);
    base(&mut cmd);
    let output = cmd.args(["--keda-listen", &taken_addr]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {taken_addr} (--keda-listen)")), "{stderr}");

    // The default port taken (by this test, or by anything else): the
    // adapter serves the metrics APIs and leaves the scaler off, saying so.
    let _default = std::net::TcpListener::bind("0.0.0.0:9443");
    let mut cmd = Command::new(BIN);
    base(&mut cmd);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut warned = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the adapter started");
        warned |= line.contains("KEDA external scaler not served");
        if line.contains("adapter listening on https://") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning that the scaler is off");
}

/// Reads the client certificate and CA that `standalone` writes into its
/// kubeconfig.
fn standalone_credentials(kubeconfig: &Path) -> (String, PemPair) {
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let decode = |v: &serde_yaml_ng::Value| {
        use base64::Engine;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
    };
    let ca = decode(&config["clusters"][0]["cluster"]["certificate-authority-data"]);
    let user = &config["users"][0]["user"];
    (ca, PemPair { cert: decode(&user["client-certificate-data"]), key: decode(&user["client-key-data"]) })
}

#[test]
fn durations_past_their_bounds_are_refused_at_start_naming_the_file_field_and_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    // A step of u64::MAX seconds after a 1 s step: it overflowed when added (a panic, then a frozen load).
    std::fs::write(
        path("scenario.yaml"),
        "workloads:\n  reasoning-suite:\n    - {for: 1s, load: 10}\n    - {for: 18446744073709551615s, load: 95}\n",
    )
    .unwrap();
    std::fs::write(path("ok.yaml"), "workloads:\n  reasoning-suite:\n    - {load: 10}\n").unwrap();
    // A startup that wrapped around: the pod was ready at once.
    std::fs::write(
        path("deployments.yaml"),
        "deployments:\n- name: reasoning-suite\n  startup: 18446744073709551615s\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(BIN).args(args).env("KGM_LOG", "warn").output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    let standalone = ["standalone", "--agent-port", "0", "--adapter-port", "0", "--keda-port", "0"];
    let hpa = "deploy/examples/reasoning-gpu-hpa.yaml";
    let scenario = path("scenario.yaml");
    let deployments = path("deployments.yaml");
    let ok = path("ok.yaml");
    let out = path("out");
    for (args, wanted) in [
        (
            [&standalone[..], &["--scenario", &scenario]].concat(),
            [scenario.as_str(), "--scenario", "for \"18446744073709551615s\": at most 30days"],
        ),
        (
            vec!["simulate", "--hpa", hpa, "--scenario", &scenario, "--out", &out],
            [scenario.as_str(), "--scenario", "at most 30days"],
        ),
        (
            vec!["simulate", "--hpa", hpa, "--scenario", &ok, "--deployments", &deployments, "--out", &out],
            [deployments.as_str(), "--deployments", "startup \"18446744073709551615s\": at most 1day"],
        ),
        // Not a duration, but the same kind of answer: where the output could not go, and which flag.
        (
            vec!["simulate", "--hpa", hpa, "--scenario", &ok, "--duration", "30s", "--out", "/proc"],
            ["--out /proc: cannot write /proc/run-0.csv", "", ""],
        ),
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for part in wanted {
            assert!(stderr.contains(part), "{args:?}: {part:?} not in {stderr}");
        }
    }
}

#[test]
fn hpa_preview_and_simulate_refuse_an_impossible_hpa_with_kube_apiservers_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let reference = std::fs::read_to_string("deploy/examples/reasoning-gpu-hpa.yaml").unwrap();
    std::fs::write(
        path("hpa.yaml"),
        reference.replace("minReplicas: 1", "minReplicas: 5").replace("maxReplicas: 3", "maxReplicas: 2"),
    )
    .unwrap();
    std::fs::write(path("scenario.yaml"), "workloads:\n  reasoning-suite:\n    - {load: 10}\n").unwrap();
    let wanted = "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`";
    std::fs::write(
        path("list.json"),
        r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":[]}"#,
    )
    .unwrap();
    let (hpa, scenario, out, list) = (path("hpa.yaml"), path("scenario.yaml"), path("out"), path("list.json"));
    for args in [
        vec!["hpa-preview", "--hpa", &hpa, "--metrics", &list, "--current-replicas", "1"],
        vec!["simulate", "--hpa", &hpa, "--scenario", &scenario, "--out", &out],
    ] {
        let output = Command::new(BIN).args(&args).env("KGM_LOG", "warn").output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&hpa) && stderr.contains(wanted), "{args:?}: {stderr}");
    }
}

#[test]
fn small_inputs_that_would_exhaust_memory_or_time_are_refused_naming_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    // One 1,000-step list, aliased by 2,000 workloads: 2 million steps from 30 kB.
    let list = "    - {for: 1s, load: 10}\n".repeat(1000);
    let aliases: String = (0..2000).map(|i| format!("  w{i}: *steps\n")).collect();
    std::fs::write(path("aliases.yaml"), format!("x-steps: &steps\n{list}workloads:\n{aliases}")).unwrap();
    // 100,000 levels of nesting in an unknown field.
    let deep = format!("workloads: {{a: [{{load: 1}}]}}\nx: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    std::fs::write(path("deep.yaml"), deep).unwrap();
    std::fs::write(path("ok.yaml"), "workloads:\n  reasoning-suite:\n    - {load: 10}\n").unwrap();
    let nodes: String = (0..2000).map(|i| format!("- {{name: n{i}, gpus: [rtx4090]}}\n")).collect();
    std::fs::write(path("cluster.yaml"), format!("nodes:\n{nodes}")).unwrap();
    let hpa = "deploy/examples/reasoning-gpu-hpa.yaml";
    let (aliases, deep, ok, cluster, out) =
        (path("aliases.yaml"), path("deep.yaml"), path("ok.yaml"), path("cluster.yaml"), path("out"));
    let simulate = |extra: &[&str]| {
        let mut args = vec!["simulate", "--hpa", hpa, "--out", &out];
        args.extend_from_slice(extra);
        let output = Command::new(BIN).args(&args).env("KGM_LOG", "warn").output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    for (extra, code, wanted) in [
        (vec!["--scenario", &aliases], 1, "line 1003: YAML aliases (*name) are not read here"),
        (vec!["--scenario", &deep], 1, "line 2: nested deeper than 64 levels"),
        (vec!["--scenario", &ok, "--cluster", &cluster], 1, "--cluster"),
        (vec!["--scenario", &ok, "--runs", "100000000"], 2, "'--runs <RUNS>': 100000000 is not in 1..=1000"),
        (vec!["--scenario", &ok, "--duration", "1y"], 2, "'--duration <DURATION>': at most 1day"),
    ] {
        let (status, stderr) = simulate(&extra);
        assert_eq!(status, Some(code), "{extra:?}: {stderr}");
        assert!(stderr.contains(wanted), "{extra:?}: {wanted:?} not in {stderr}");
    }
    let (_, stderr) = simulate(&["--scenario", &ok, "--cluster", &cluster]);
    assert!(stderr.contains("2000 nodes: at most 1000"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_with_a_scenario_scales_the_deployment_and_serves_the_new_pod() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    // 40 % of a 4090, then 150 %: more than one pod can serve.
    std::fs::write(
        path("scenario.yaml"),
        "workloads:\n  reasoning-suite:\n    - {for: 2s, load: 40}\n    - {load: 150}\n",
    )
    .unwrap();
    // The reference HPA, up to 2 replicas.
    let hpa = std::fs::read_to_string("deploy/examples/reasoning-gpu-hpa.yaml").unwrap();
    std::fs::write(path("hpa.yaml"), hpa.replace("maxReplicas: 3", "maxReplicas: 2")).unwrap();
    std::fs::write(
        path("deployments.yaml"),
        "deployments:\n- name: reasoning-suite\n  startup: 2s\n  tolerations: [{key: gpu, operator: Exists}]\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["standalone", "--agent-port", "0", "--adapter-port", "0", "--keda-port", "0"])
        .args(["--interval", "200ms", "--poll-interval", "200ms", "--hpa-sync-period", "2s"])
        .args(["--kubeconfig-out", &path("kubeconfig"), "--ca-out", &path("ca.pem")])
        .args(["--scenario", &path("scenario.yaml"), "--deployments", &path("deployments.yaml")])
        .args(["--hpa", &path("hpa.yaml")])
        .env("KGM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _child = Kill(child);
    // `  agent pc2      http://…/metrics   http://…/v1/pods`, `  adapter        https://…`.
    // Standalone's stdout is read to its end, so that it never writes into a
    // closed pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut agents, mut adapter) = (std::collections::HashMap::new(), None);
    while adapter.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("standalone printed its adapter line");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["agent", node, metrics, ..] => {
                agents.insert(node.to_string(), metrics.strip_suffix("/metrics").unwrap().to_string());
            }
            ["adapter", url, ..] => adapter = url.strip_prefix("https://").map(|a| a.parse::<SocketAddr>().unwrap()),
            _ => {}
        }
    }
    let adapter = adapter.expect("the adapter line");
    let (ca, client) = standalone_credentials(&dir.path().join("kubeconfig"));
    let list = format!("{PODS}/*/nvidia_gpu_utilization_percent?labelSelector=app%3Dreasoning-suite");

    // After the step: a second pod, busy once started.
    let deadline = Instant::now() + Duration::from_secs(40);
    let pods = loop {
        let answer = https(adapter, &ca, Some(&client), "GET", &list, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let pods = pod_values(&answer.body);
        let busy = pods.iter().filter(|(_, v)| v.trim_end_matches('m').parse::<f64>().unwrap() > 0.0).count();
        if pods.len() >= 2 && busy == pods.len() {
            break pods;
        }
        assert!(Instant::now() < deadline, "no second busy pod: {pods:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The seed pod stays on mainpc; the new one is on pc2 (the scheduler
    // spreads the Deployment onto the tainted node it tolerates), under a
    // new name from the same ReplicaSet.
    let (mainpc, pc2) = (
        http_get(&format!("{}/v1/pods", agents["mainpc"])).await,
        http_get(&format!("{}/v1/pods", agents["pc2"])).await,
    );
    let on = |feed: &str| pods.iter().map(|(n, _)| n.clone()).filter(|n| feed.contains(n.as_str())).collect::<Vec<_>>();
    let (seed, new) = (on(&mainpc), on(&pc2));
    assert_eq!((seed.len(), new.len()), (1, 1), "mainpc {seed:?}, pc2 {new:?} of {pods:?}");
    let hash = seed[0].trim_start_matches("reasoning-suite-").split('-').next().unwrap();
    assert!(new[0].starts_with(&format!("reasoning-suite-{hash}-")), "{} is not of {}'s ReplicaSet", new[0], seed[0]);
    assert_ne!(new[0], seed[0]);
}

/// A plain HTTP GET's body (the agents' feeds).
async fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_once('/').unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}
