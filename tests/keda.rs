//! KEDA's external scaler on the real `kube-gpu-metrics standalone` binary,
//! called over TLS by a tonic client generated from KEDA's
//! `externalscaler.proto`, as KEDA's `external` and `external-push`
//! triggers call it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube_gpu_metrics::adapter::keda::proto::external_scaler_client::ExternalScalerClient;
use kube_gpu_metrics::adapter::keda::proto::{GetMetricsRequest, ScaledObjectRef};
use kube_gpu_metrics::adapter::tls::{LocalCa, PemPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const BIN: &str = env!("CARGO_BIN_EXE_kube-gpu-metrics");
const NAMESPACE: &str = "ai-system-gpu";

/// A running `standalone`, its KEDA scaler's address and CA.
struct Standalone {
    child: Child,
    dir: tempfile::TempDir,
    keda: String,
    ca: String,
    /// The first agent's address.
    agent: String,
}

impl Standalone {
    /// Starts standalone on free ports with `scenario` (YAML) and `extra`
    /// flags; returns once the scaler answers.
    async fn start(scenario: &str, extra: &[&str]) -> Standalone {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("scenario.yaml"), scenario).unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut child = Command::new(BIN)
            .args(["standalone", "--agent-port", "0", "--adapter-port", "0", "--keda-port", "0"])
            .args(["--interval", "200ms", "--poll-interval", "200ms"])
            .args(["--kubeconfig-out", &path("kubeconfig"), "--ca-out", &path("ca.pem")])
            // The scenario scripts each pod's load; no HPA scales them meanwhile.
            .args(["--scenario", &path("scenario.yaml"), "--fixed-replicas"])
            .args(extra)
            .env("KGM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut agent = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let line = line.trim_start();
                if let Some(rest) = line.strip_prefix("agent ") {
                    // "agent mainpc   http://127.0.0.1:9402/metrics   …"
                    let metrics = rest.split_whitespace().nth(1).unwrap_or_default();
                    agent.get_or_insert(metrics.trim_start_matches("http://").trim_end_matches("/metrics").to_string());
                }
                if let Some(rest) = line.strip_prefix("keda-scaler") {
                    let keda = rest.split_whitespace().next().unwrap().to_string();
                    let _ = tx.send((keda, agent.clone().expect("agents are listed first")));
                }
            }
        });
        let (keda, agent) = rx.recv_timeout(Duration::from_secs(30)).expect("standalone printed the keda-scaler line");
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        Standalone { child, dir, keda, ca, agent }
    }

    /// A client of this standalone's scaler, trusting its CA, with `identity` if given.
    async fn client(&self, identity: Option<&PemPair>) -> ExternalScalerClient<Channel> {
        client_of(&self.keda, &self.ca, identity).await
    }
}

/// A client of the scaler at `address`, trusting `ca` (PEM), with `identity` if given.
async fn client_of(address: &str, ca: &str, identity: Option<&PemPair>) -> ExternalScalerClient<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
    }
    let channel =
        Channel::from_shared(format!("https://{address}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    ExternalScalerClient::new(channel)
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn object(name: &str, metadata: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        namespace: NAMESPACE.into(),
        scaler_metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

fn metrics_request(object: ScaledObjectRef) -> GetMetricsRequest {
    GetMetricsRequest { metric_name: "nvidia_gpu_utilization_percent".into(), scaled_object_ref: Some(object) }
}

/// Asks until the adapter has values for `object` (its first rounds), then
/// returns the sum.
async fn metric_sum(client: &mut ExternalScalerClient<Channel>, object: &ScaledObjectRef) -> f64 {
    for _ in 0..100 {
        match client.get_metrics(metrics_request(object.clone())).await {
            Ok(answer) => {
                let values = answer.into_inner().metric_values;
                assert_eq!(values.len(), 1, "{values:?}");
                assert_eq!(values[0].metric_name, "nvidia_gpu_utilization_percent");
                assert_eq!(values[0].metric_value, values[0].metric_value_float.round() as i64);
                return values[0].metric_value_float;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no value within 10 s");
}

/// Waits until both simulated nodes' pods are in the adapter: every
/// workload of [`CONSTANT`] sums to 140.
async fn wait_for_every_pod(client: &mut ExternalScalerClient<Channel>) {
    let all = object("all", &[("targetValue", "50"), ("podSelector", "app")]);
    for _ in 0..100 {
        if (metric_sum(client, &all).await - 140.0).abs() < 2.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the adapter never had both nodes' pods");
}

const CONSTANT: &str = "workloads:\n  reasoning-suite: [{load: 60}]\n  coordination-suite: [{load: 20}]\n  vision-dream-suite: [{load: 45}]\n  tutoring-suite: [{load: 15}]\n";

#[tokio::test]
async fn every_rpc_answers_as_keda_expects() {
    let standalone = Standalone::start(CONSTANT, &[]).await;
    let mut client = standalone.client(None).await;
    wait_for_every_pod(&mut client).await;
    let reasoning = object("reasoning-suite", &[("targetValue", "70"), ("activationTargetValue", "50")]);

    let spec = client.get_metric_spec(reasoning.clone()).await.unwrap().into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(spec.metric_specs[0].metric_name, "nvidia_gpu_utilization_percent");
    assert_eq!((spec.metric_specs[0].target_size_float, spec.metric_specs[0].target_size), (70.0, 70));

    // One pod at a constant 60 %.
    let sum = metric_sum(&mut client, &reasoning).await;
    assert!((sum - 60.0).abs() < 1.0, "{sum}");
    assert!(client.is_active(reasoning.clone()).await.unwrap().into_inner().result);
    let quiet = object("reasoning-suite", &[("targetValue", "70"), ("activationTargetValue", "80")]);
    assert!(!client.is_active(quiet).await.unwrap().into_inner().result);

    // A selector that matches no pod is never called inactive: standalone has no ScaledObjects, so a
    // workload at zero cannot be told from a typo, and the answer names podSelector.
    let typo = object("reasoning-suit", &[("targetValue", "70")]);
    let status = client.is_active(typo.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().starts_with("podSelector \"app=reasoning-suit\" matches no pod"), "{}", status.message());
    let status = client.get_metrics(metrics_request(typo)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // GetMetrics for another metric than the ScaledObject's is refused, naming the field.
    let other = GetMetricsRequest {
        metric_name: "nvidia_gpu_memory_used_bytes".into(),
        scaled_object_ref: Some(reasoning.clone()),
    };
    let status = client.get_metrics(other).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("metricName: "), "{}", status.message());

    // Two workloads by selector: the sum of both pods; memory adds bytes.
    let both = object("so", &[("targetValue", "30"), ("podSelector", "app in (reasoning-suite,tutoring-suite)")]);
    let sum = metric_sum(&mut client, &both).await;
    assert!((sum - 75.0).abs() < 2.0, "{sum}");
    let memory =
        object("reasoning-suite", &[("targetValue", "8589934592"), ("metricName", "nvidia_gpu_memory_used_bytes")]);
    // KEDA asks for the metric GetMetricSpec named.
    let request =
        GetMetricsRequest { metric_name: "nvidia_gpu_memory_used_bytes".into(), scaled_object_ref: Some(memory) };
    let answer = client.get_metrics(request).await.unwrap().into_inner();
    assert!(answer.metric_values[0].metric_value_float > 1e9, "{answer:?}");

    // The first push is the current answer.
    let mut stream = client.stream_is_active(reasoning.clone()).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert!(first.result);

    let status = client.stream_metric_spec(reasoning).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn bad_metadata_is_invalid_argument_naming_the_key() {
    let standalone = Standalone::start(CONSTANT, &[]).await;
    let mut client = standalone.client(None).await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "targetValue"),
        (&[("targetValue", "seventy")], "targetValue"),
        (&[("targetValue", "70"), ("activationTargetValue", "high")], "activationTargetValue"),
        (&[("targetValue", "70"), ("metricName", "DCGM_FI_DEV_GPU_UTIL")], "metricName"),
        (&[("targetValue", "70"), ("podSelector", "app in (reasoning-suite")], "podSelector"),
    ];
    for (metadata, key) in cases {
        let bad = object("reasoning-suite", metadata);
        let answers = [
            client.is_active(bad.clone()).await.map(|_| ()),
            client.get_metric_spec(bad.clone()).await.map(|_| ()),
            client.get_metrics(metrics_request(bad.clone())).await.map(|_| ()),
            client.stream_is_active(bad.clone()).await.map(|_| ()),
        ];
        for answer in answers {
            let status = answer.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{metadata:?}: {status:?}");
            assert!(status.message().contains(key), "{metadata:?}: {}", status.message());
        }
    }
    let status =
        client.get_metrics(GetMetricsRequest { metric_name: "x".into(), scaled_object_ref: None }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("scaledObjectRef"), "{}", status.message());
}

#[tokio::test]
async fn a_client_certificate_is_required_only_with_a_client_ca() {
    let keda_ca = LocalCa::new("keda-ca").unwrap();
    let other_ca = LocalCa::new("someone-else").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("keda-ca.pem");
    std::fs::write(&ca_file, &keda_ca.cert_pem).unwrap();
    let standalone = Standalone::start(CONSTANT, &["--keda-client-ca-file", ca_file.to_str().unwrap()]).await;
    let reasoning = object("reasoning-suite", &[("targetValue", "70")]);

    let keda = keda_ca.client("keda-operator", &[]).unwrap();
    let mut trusted = standalone.client(Some(&keda)).await;
    assert_eq!(trusted.get_metric_spec(reasoning.clone()).await.unwrap().into_inner().metric_specs.len(), 1);

    let stranger = other_ca.client("keda-operator", &[]).unwrap();
    for identity in [None, Some(&stranger)] {
        let mut client = standalone.client(identity).await;
        let status = client.get_metric_spec(reasoning.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("--keda-client-ca-file"), "{}", status.message());
    }

    // Plain HTTP/2 without TLS gets nothing.
    let plain = Channel::from_shared(format!("http://{}", standalone.keda)).unwrap().connect().await;
    if let Ok(channel) = plain {
        let status = ExternalScalerClient::new(channel).get_metric_spec(reasoning).await.unwrap_err();
        assert_ne!(status.code(), Code::Ok);
    }
}

#[tokio::test]
async fn a_stream_pushes_activation_as_soon_as_the_load_jumps() {
    // reasoning-suite idles at 20 % for 4 s, then runs at 90 %.
    let scenario = "workloads:\n  reasoning-suite:\n    - {for: 4s, load: 20}\n    - {load: 90}\n";
    let standalone = Standalone::start(scenario, &[]).await;
    let mut client = standalone.client(None).await;
    let reasoning = object("reasoning-suite", &[("targetValue", "70"), ("activationTargetValue", "50")]);
    let mut stream = client.stream_is_active(reasoning).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while seen.last() != Some(&true) {
        let message = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no push within 15 s; seen {seen:?}"))
            .unwrap()
            .expect("the stream stays open");
        seen.push(message.result);
    }
    // The idle answer first, then one push when the load jumped; never a repeat.
    assert_eq!(seen, [false, true]);
}

#[tokio::test]
async fn a_thousand_held_streams_leave_unary_calls_on_the_same_connection_answered() {
    let standalone = Standalone::start(CONSTANT, &[]).await;
    // Clones of one client share its channel: one HTTP/2 connection, as KEDA holds one per address.
    let client = standalone.client(None).await;
    wait_for_every_pod(&mut client.clone()).await;
    let open_all = futures::future::join_all((0..1000).map(|i| {
        let mut client = client.clone();
        async move {
            let object =
                object(&format!("pushed-{i}"), &[("targetValue", "70"), ("podSelector", "app=reasoning-suite")]);
            let mut stream = client.stream_is_active(object).await.unwrap().into_inner();
            // Each stream answers at once; it is then held open.
            stream.message().await.unwrap().expect("the first answer");
            stream
        }
    }));
    // Over the server's per-connection stream limit, the rest would queue behind the held ones.
    let opened = tokio::time::timeout(Duration::from_secs(30), open_all)
        .await
        .expect("1,000 streams open on one connection and each answers");
    assert_eq!(opened.len(), 1000);
    let reasoning = object("reasoning-suite", &[("targetValue", "70"), ("activationTargetValue", "50")]);
    for _ in 0..5 {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.clone().get_metrics(metrics_request(reasoning.clone())),
        )
        .await
        .expect("GetMetrics answers beside 1,000 held streams")
        .unwrap();
        assert_eq!(answer.into_inner().metric_values[0].metric_value, 60);
        assert!(client.clone().is_active(reasoning.clone()).await.unwrap().into_inner().result);
    }
    drop(opened);
}

#[tokio::test]
async fn ceil_of_the_sum_over_the_target_is_what_hpa_preview_proposes() {
    let standalone = Standalone::start(CONSTANT, &[]).await;
    let mut client = standalone.client(None).await;
    wait_for_every_pod(&mut client).await;
    let selector = "app in (reasoning-suite,vision-dream-suite,tutoring-suite)";
    for target in [20.0_f64, 35.0, 90.0] {
        let target_text = target.to_string();
        let scaled = object("reasoning-suite", &[("targetValue", &target_text), ("podSelector", selector)]);
        let sum = metric_sum(&mut client, &scaled).await;
        let keda_replicas = (sum / target).ceil() as u32;

        let hpa = standalone.dir.path().join(format!("hpa-{target}.yaml"));
        std::fs::write(
            &hpa,
            format!(
                "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: reasoning-suite, namespace: {NAMESPACE}}}\n\
                 spec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: reasoning-suite}}\n  minReplicas: 1\n  maxReplicas: 20\n\
                 \x20 metrics:\n  - type: Pods\n    pods:\n      metric: {{name: nvidia_gpu_utilization_percent}}\n      target: {{type: AverageValue, averageValue: \"{target}\"}}\n"
            ),
        )
        .unwrap();
        let output = Command::new(BIN)
            .args(["hpa-preview", "--hpa", hpa.to_str().unwrap(), "--selector", selector])
            .arg("--kubeconfig")
            .arg(standalone.dir.path().join("kubeconfig"))
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{report} {}", String::from_utf8_lossy(&output.stderr));
        let proposed: u32 = report
            .split("metrics propose ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no proposal in {report}"));
        assert_eq!(keda_replicas, proposed, "target {target}: sum {sum}\n{report}");
    }
}

#[tokio::test]
async fn an_adapter_without_a_cluster_says_it_cannot_evaluate_pod_selectors() {
    let standalone = Standalone::start(CONSTANT, &[]).await;
    let mut client = standalone.client(None).await;
    wait_for_every_pod(&mut client).await;
    // A plain adapter polling standalone's agents by URL: fresh values for every pod, but no pod labels.
    let ca = standalone.dir.path().join("ca.pem");
    let serving_ca = LocalCa::new("test").unwrap();
    let serving = serving_ca.serving(&["localhost"]).unwrap();
    let (cert, key) = (standalone.dir.path().join("adapter.crt"), standalone.dir.path().join("adapter.key"));
    std::fs::write(&cert, &serving.cert).unwrap();
    std::fs::write(&key, &serving.key).unwrap();
    let mut adapter = Command::new(BIN)
        .args(["adapter", "--secure-listen", "127.0.0.1:0", "--keda-listen", "127.0.0.1:0", "--discover-agents=false"])
        .args(["--tls-cert-file", cert.to_str().unwrap(), "--tls-private-key-file", key.to_str().unwrap()])
        .args(["--authorization-mode", "always-allow", "--requestheader-client-ca-file", ca.to_str().unwrap()])
        .args(["--agent", &format!("http://{}", standalone.agent)])
        .env("KGM_LOG", "info")
        .env("KGM_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = adapter.stderr.take().unwrap();
    let keda = BufReader::new(logs)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            Some(line.split("KEDA external scaler listening on ").nth(1)?.split_whitespace().next()?.to_string())
        })
        .expect("the adapter logs its KEDA address");
    let mut client = client_of(&keda, &serving_ca.cert_pem, None).await;
    for metadata in [&[("targetValue", "70")][..], &[("targetValue", "70"), ("podSelector", "app=reasoning-suite")]] {
        let status = client.is_active(object("reasoning-suite", metadata)).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().starts_with("podSelector: this adapter runs without a cluster"),
            "{}",
            status.message()
        );
    }
    let _ = adapter.kill();
    let _ = adapter.wait();
}
