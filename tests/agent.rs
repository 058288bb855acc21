//! The real `kube-gpu-metrics-agent` binary against the fake libnvidia-ml and
//! a fake kubelet, spoken to over HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube_gpu_metrics::attribution::podresources::proto::{
    ClaimResource, ContainerDevices, ContainerResources, DynamicResource, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
};

/// The binary the DaemonSet runs.
const BIN: &str = env!("CARGO_BIN_EXE_kube-gpu-metrics-agent");
/// The binary with every mode, whose `agent` is the same agent.
const MAIN_BIN: &str = env!("CARGO_BIN_EXE_kube-gpu-metrics");

/// Built by build.rs from hack/fake-nvml.
fn fake_nvml() -> &'static str {
    env!("FAKE_NVML_LIB")
}

const TWO_GPUS: &str = "\
driver 550.54.14
gpu name=\"NVIDIA GeForce RTX 4090\" uuid=GPU-4090-0000 util=42 mem_util=30 mem_total=25757220864 mem_used=8589934592 temp=61 power_mw=312000 sm_clock_mhz=2520
gpu name=\"NVIDIA GeForce RTX 3060\" uuid=GPU-3060-0001 util=17 mem_util=9 mem_total=12884901888 mem_used=2147483648 temp=48 power_mw=95500 sm_clock_mhz=1777
";

const LABELS_4090: &str = "node=\"testnode\",gpu=\"0\",uuid=\"GPU-4090-0000\",model=\"NVIDIA GeForce RTX 4090\"";
const LABELS_3060: &str = "node=\"testnode\",gpu=\"1\",uuid=\"GPU-3060-0001\",model=\"NVIDIA GeForce RTX 3060\"";

/// A temporary directory holding `config` as the fake NVML's `nvml.conf`.
fn config_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nvml.conf"), config).unwrap();
    dir
}

/// Starts the binary with `args` (and the fake NVML config, if any) and
/// waits for the address it announces.
fn spawn(args: &[&str], nvml_config: Option<&Path>) -> (Child, SocketAddr) {
    spawn_binary(BIN, args, nvml_config)
}

fn spawn_binary(binary: &str, args: &[&str], nvml_config: Option<&Path>) -> (Child, SocketAddr) {
    let mut command = Command::new(binary);
    command.args(args).env("KGM_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(config) = nvml_config {
        command.env("FAKE_NVML_CONFIG", config);
    }
    let mut child = command.spawn().expect("start the agent");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("agent listening on http://").nth(1) {
                let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
            }
            eprintln!("agent: {line}");
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("agent printed its address");
    (child, addr)
}

/// A running agent process, killed on drop.
struct Agent {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent over the fake NVML with `config`, plus `extra` flags.
    fn start(config: &str, extra: &[&str]) -> Agent {
        Self::start_in(config_dir(config), extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Agent {
        Self::launch(BIN, &[], dir, extra)
    }

    /// Starts `binary` with `leading` arguments first (the mode, for the
    /// binary with every mode), over the fake NVML config in `dir`.
    fn launch(binary: &str, leading: &[&str], dir: tempfile::TempDir, extra: &[&str]) -> Agent {
        let mut args = leading.to_vec();
        args.extend(["--gpu-source", "nvml", "--nvml-lib", fake_nvml()]);
        args.extend(["--listen", "127.0.0.1:0", "--node-name", "testnode", "--interval", "200ms"]);
        args.extend(extra);
        let (child, addr) = spawn_binary(binary, &args, Some(&dir.path().join("nvml.conf")));
        Agent { child, addr, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the fake NVML config; the fake re-reads it on its next call.
    fn set_config(&self, config: &str) {
        let tmp = self.path("nvml.conf.new");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(tmp, self.path("nvml.conf")).unwrap();
    }

    fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[])
    }

    fn metrics(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }

    /// Scrapes until `pred` holds, or fails with the last scrape.
    fn metrics_until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics();
            if pred(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last scrape:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh connection; reads to close.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Response { status, headers, body: raw[split + 4..].to_vec() }
}

/// The value of the one sample line that starts with `prefix`.
fn value(text: &str, prefix: &str) -> Option<String> {
    text.lines().find(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().to_string())
}

#[test]
fn nvml_gpus_are_served_with_the_fakes_values_and_labels() {
    let agent = Agent::start(TWO_GPUS, &["--no-attribution"]);
    let text = agent.metrics_until("a sample", |t| t.contains("nvidia_gpu_utilization_percent{"));
    for line in [
        format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}} 42.0"),
        format!("nvidia_gpu_utilization_percent{{{LABELS_3060}}} 17.0"),
        format!("nvidia_gpu_memory_utilization_percent{{{LABELS_4090}}} 30.0"),
        format!("nvidia_gpu_memory_used_bytes{{{LABELS_4090}}} 8589934592"),
        format!("nvidia_gpu_memory_total_bytes{{{LABELS_3060}}} 12884901888"),
        format!("nvidia_gpu_temperature_celsius{{{LABELS_3060}}} 48.0"),
        format!("nvidia_gpu_power_watts{{{LABELS_4090}}} 312.0"),
        format!("nvidia_gpu_power_watts{{{LABELS_3060}}} 95.5"),
        format!("nvidia_gpu_sm_clock_hertz{{{LABELS_4090}}} 2520000000.0"),
        format!("nvidia_gpu_up{{{LABELS_4090}}} 1"),
        format!(
            "nvidia_gpu_info{{{LABELS_3060},pci_bus_id=\"00000000:02:00.0\",driver_version=\"550.54.14\",cuda_version=\"12.4\"}} 1"
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    assert!(!text.contains("kube_gpu_metrics_pod_resources_up"), "attribution is off");
    assert_eq!(agent.get("/healthz").status, 200);
    assert_eq!(agent.get("/readyz").status, 200);

    let feed: serde_json::Value = serde_json::from_slice(&agent.get("/v1/pods").body).unwrap();
    assert_eq!(feed["node"], "testnode");
    assert_eq!(feed["gpus"][1]["utilizationPercent"], 17.0);
    assert_eq!(feed["pods"], serde_json::json!([]));
}

#[test]
fn a_lost_gpu_reports_down_while_the_other_keeps_reporting() {
    let agent = Agent::start(TWO_GPUS, &["--no-attribution"]);
    agent.metrics_until("a sample", |t| t.contains(&format!("nvidia_gpu_up{{{LABELS_3060}}} 1")));
    agent.set_config(&format!("{TWO_GPUS}error 1 * GPU_IS_LOST\n"));
    let text = agent.metrics_until("GPU 1 down", |t| t.contains(&format!("nvidia_gpu_up{{{LABELS_3060}}} 0")));
    // No stale value for the lost GPU; the other one carries on.
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{LABELS_3060}}}")), None);
    assert_eq!(value(&text, &format!("nvidia_gpu_power_watts{{{LABELS_3060}}}")), None);
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}}")).as_deref(), Some("42.0"));
    assert_eq!(value(&text, &format!("nvidia_gpu_up{{{LABELS_4090}}}")).as_deref(), Some("1"));
    let errors: u64 = value(&text, "kube_gpu_metrics_nvml_errors_total{node=\"testnode\",call=\"device_handle\"}")
        .unwrap()
        .parse()
        .unwrap();
    assert!(errors >= 1, "{text}");

    // The GPU comes back: values return.
    agent.set_config(TWO_GPUS);
    agent.metrics_until("GPU 1 back", |t| t.contains(&format!("nvidia_gpu_utilization_percent{{{LABELS_3060}}} 17.0")));
}

#[test]
fn an_unsupported_field_is_omitted_not_zero() {
    let agent = Agent::start(
        &format!("{TWO_GPUS}error 1 power NOT_SUPPORTED\nerror 0 clock NOT_SUPPORTED\n"),
        &["--no-attribution"],
    );
    let text = agent.metrics_until("a sample", |t| t.contains("nvidia_gpu_utilization_percent{"));
    assert_eq!(value(&text, &format!("nvidia_gpu_power_watts{{{LABELS_3060}}}")), None);
    assert_eq!(value(&text, &format!("nvidia_gpu_power_watts{{{LABELS_4090}}}")).as_deref(), Some("312.0"));
    assert_eq!(value(&text, &format!("nvidia_gpu_sm_clock_hertz{{{LABELS_4090}}}")), None);
    assert_eq!(value(&text, &format!("nvidia_gpu_up{{{LABELS_3060}}}")).as_deref(), Some("1"));
    assert_eq!(
        value(&text, "kube_gpu_metrics_nvml_errors_total{node=\"testnode\",call=\"power\"}").as_deref(),
        Some("0")
    );
}

#[test]
fn a_broken_drivers_impossible_values_are_dropped_and_counted() {
    // GPU 1 reports 250 % busy, 4294967295 °C and more memory used than it has.
    let config = TWO_GPUS.replace(
        "util=17 mem_util=9 mem_total=12884901888 mem_used=2147483648 temp=48",
        "util=250 mem_util=9 mem_total=12884901888 mem_used=22884901888 temp=4294967295",
    );
    let agent = Agent::start(&config, &["--no-attribution"]);
    let text = agent.metrics_until("a sample", |t| t.contains("nvidia_gpu_utilization_percent{"));
    for family in ["nvidia_gpu_utilization_percent", "nvidia_gpu_temperature_celsius", "nvidia_gpu_memory_used_bytes"] {
        assert_eq!(value(&text, &format!("{family}{{{LABELS_3060}}}")), None, "{family}");
        assert!(value(&text, &format!("{family}{{{LABELS_4090}}}")).is_some(), "{family}");
    }
    // The GPU stays up, with what it reports sanely; each dropped value counts as its call's error.
    assert_eq!(value(&text, &format!("nvidia_gpu_up{{{LABELS_3060}}}")).as_deref(), Some("1"));
    assert_eq!(
        value(&text, &format!("nvidia_gpu_memory_utilization_percent{{{LABELS_3060}}}")).as_deref(),
        Some("9.0")
    );
    for call in ["utilization", "temperature", "memory"] {
        let errors = value(&text, &format!("kube_gpu_metrics_nvml_errors_total{{node=\"testnode\",call=\"{call}\"}}"));
        assert!(errors.as_deref().is_some_and(|e| e.parse::<u64>().unwrap() >= 1), "{call}: {errors:?}");
    }
}

#[test]
fn init_failure_keeps_health_up_and_recovers_when_the_driver_loads() {
    let agent = Agent::start(&format!("init_error DRIVER_NOT_LOADED\n{TWO_GPUS}"), &["--no-attribution"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let readyz = loop {
        let r = agent.get("/readyz");
        let body = String::from_utf8_lossy(&r.body).to_string();
        if body.contains("NVML") || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(readyz.status, 503);
    let reason = String::from_utf8(readyz.body).unwrap();
    assert!(reason.contains("NVML init failed") && reason.contains("driver is not loaded"), "{reason}");
    assert_eq!(agent.get("/healthz").status, 200);
    let text = agent.metrics();
    assert!(text.contains("kube_gpu_metrics_gpu_source_up{node=\"testnode\"} 0"));
    assert!(!text.contains("nvidia_gpu_utilization_percent{"));

    agent.set_config(TWO_GPUS);
    agent.metrics_until("recovery", |t| t.contains(&format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}} 42.0")));
    assert_eq!(agent.get("/readyz").status, 200);
}

#[test]
fn http_surface_methods_head_gzip_and_openmetrics() {
    let agent = Agent::start(TWO_GPUS, &["--no-attribution"]);
    agent.metrics_until("a sample", |t| t.contains("nvidia_gpu_utilization_percent{"));

    let post = request(agent.addr, "POST", "/metrics", &[]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(agent.get("/nope").status, 404);

    let head = request(agent.addr, "HEAD", "/metrics", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    assert!(length > 1000);

    let om = request(
        agent.addr,
        "GET",
        "/metrics",
        &[
            ("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
            ("Accept-Encoding", "gzip"),
        ],
    );
    assert_eq!(om.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert_eq!(om.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&om.body[..]).read_to_string(&mut text).unwrap();
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains(&format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}} 42.0")));
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut agent = Agent::start(TWO_GPUS, &["--no-attribution"]);
    agent.metrics_until("a sample", |t| t.contains("nvidia_gpu_up{"));
    let status = Command::new("kill").args(["-TERM", &agent.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- pod attribution against a fake kubelet ----

/// A kubelet PodResources server on a unix socket, answering what it holds.
#[derive(Clone, Default)]
struct FakeKubelet(Arc<Mutex<ListPodResourcesResponse>>);

#[tonic::async_trait]
impl PodResourcesLister for FakeKubelet {
    async fn list(
        &self,
        _: tonic::Request<ListPodResourcesRequest>,
    ) -> Result<tonic::Response<ListPodResourcesResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.lock().unwrap().clone()))
    }
}

/// Serves the fake kubelet at `socket` on a thread of its own, until the
/// returned sender is dropped or sent to (the kubelet stopping: its socket
/// goes away and every connection closes).
fn serve_kubelet(socket: &Path, kubelet: FakeKubelet) -> tokio::sync::oneshot::Sender<()> {
    let socket = socket.to_path_buf();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let _ = std::fs::remove_file(&socket);
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            ready_tx.send(()).unwrap();
            tonic::transport::Server::builder()
                .add_service(PodResourcesListerServer::new(kubelet))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            let _ = std::fs::remove_file(&socket);
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    stop_tx
}

fn pod(namespace: &str, name: &str, container: &str, device_ids: &[&str]) -> PodResources {
    PodResources {
        name: name.into(),
        namespace: namespace.into(),
        containers: vec![ContainerResources {
            name: container.into(),
            devices: vec![
                ContainerDevices {
                    resource_name: "nvidia.com/gpu".into(),
                    device_ids: device_ids.iter().map(|s| s.to_string()).collect(),
                    topology: None,
                },
                ContainerDevices {
                    resource_name: "example.com/fpga".into(),
                    device_ids: vec!["fpga0".into()],
                    topology: None,
                },
            ],
            cpu_ids: vec![],
            memory: vec![],
            dynamic_resources: vec![],
        }],
    }
}

/// A pod whose one container got devices through a ResourceClaim: each
/// `(driver, device)` is one claimed device.
fn dra_pod(namespace: &str, name: &str, claim: &str, devices: &[(&str, &str)]) -> PodResources {
    let mut pod = pod(namespace, name, "main", &[]);
    pod.containers[0].dynamic_resources = vec![DynamicResource {
        claim_name: claim.into(),
        claim_namespace: namespace.into(),
        claim_resources: devices
            .iter()
            .map(|(driver, device)| ClaimResource {
                cdi_devices: vec![],
                driver_name: driver.to_string(),
                pool_name: "testnode".into(),
                device_name: device.to_string(),
            })
            .collect(),
    }];
    pod
}

fn with_resource(resource_name: &str, mut pod: PodResources) -> PodResources {
    pod.containers[0].devices[0].resource_name = resource_name.into();
    pod
}

const UID_VISION: &str = "aaaaaaaa-1111-4111-8111-000000000001";
const UID_TUTOR: &str = "bbbbbbbb-2222-4222-8222-000000000002";

/// GPU 0 exclusive to a trainer; GPU 1 time-sliced between two pods whose
/// processes (pids 501; 502 and 503) have their own NVML samples and
/// memory, beside a host process (777) that is in no pod.
fn attribution_fixture(dir: &Path) -> FakeKubelet {
    std::fs::write(
        dir.join("nvml.conf"),
        format!(
            "{TWO_GPUS}process 1 pid=501 sm=30 mem=11 used_mib=3072\nprocess 1 pid=502 sm=12 mem=4 used_mib=1024\n\
             process 1 pid=503 sm=8 mem=2 used_mib=512 kind=graphics\nprocess 1 pid=777 sm=3 mem=1 used_mib=2048\n"
        ),
    )
    .unwrap();
    for (pid, cgroup) in [
        (501, format!("0::/kubepods/burstable/pod{UID_VISION}/0123abcd\n")),
        (
            502,
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-ab.scope\n",
                UID_TUTOR.replace('-', "_")
            ),
        ),
        (503, format!("12:pids:/kubepods/besteffort/pod{UID_TUTOR}/ef01\n")),
        (777, "0::/system.slice/ollama.service\n".to_string()),
    ] {
        std::fs::create_dir_all(dir.join(format!("proc/{pid}"))).unwrap();
        std::fs::write(dir.join(format!("proc/{pid}/cgroup")), cgroup).unwrap();
    }
    std::fs::write(
        dir.join("checkpoint"),
        format!(
            r#"{{"Data":{{"PodDeviceEntries":[
                {{"PodUID":"{UID_VISION}","ContainerName":"vision","ResourceName":"nvidia.com/gpu","DeviceIDs":{{"-1":["GPU-3060-0001::0"]}}}},
                {{"PodUID":"{UID_TUTOR}","ContainerName":"tutor","ResourceName":"nvidia.com/gpu","DeviceIDs":{{"-1":["GPU-3060-0001::1"]}}}}
            ]}},"Checksum":1}}"#
        ),
    )
    .unwrap();
    let kubelet = FakeKubelet::default();
    *kubelet.0.lock().unwrap() = ListPodResourcesResponse {
        pod_resources: vec![
            pod("ai-system-gpu", "trainer-0", "train", &["GPU-4090-0000"]),
            pod("ai-system-gpu", "vision-a", "vision", &["GPU-3060-0001::0"]),
            // The device plugin's renamed resource for time-sliced replicas.
            with_resource("nvidia.com/gpu.shared", pod("ai-system-gpu", "tutor-b", "tutor", &["GPU-3060-0001::1"])),
            pod("kube-system", "no-gpu", "c", &[]),
        ],
    };
    kubelet
}

fn attribution_flags(dir: &Path) -> Vec<String> {
    vec![
        "--pod-resources-socket".into(),
        dir.join("kubelet.sock").display().to_string(),
        "--kubelet-checkpoint".into(),
        dir.join("checkpoint").display().to_string(),
        "--proc-root".into(),
        dir.join("proc").display().to_string(),
    ]
}

#[test]
fn kubelet_pods_label_gpus_and_shared_pods_get_their_process_shares() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = attribution_fixture(dir.path());
    let _kubelet = serve_kubelet(&dir.path().join("kubelet.sock"), kubelet);
    let flags = attribution_flags(dir.path());
    let agent = Agent::start_in(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    let text = agent.metrics_until("pod labels", |t| t.contains("pod=\"tutor-b\""));
    let exclusive = format!("{LABELS_4090},namespace=\"ai-system-gpu\",pod=\"trainer-0\",container=\"train\"");
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{exclusive}}}")).as_deref(), Some("42.0"));
    // The shared GPU's device series carry no pod labels…
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{LABELS_3060}}}")).as_deref(), Some("17.0"));
    // …and each pod gets its own processes' share, not the device's 17 %.
    let vision =
        format!("{LABELS_3060},namespace=\"ai-system-gpu\",pod=\"vision-a\",container=\"vision\",sharing=\"shared\"");
    let tutor =
        format!("{LABELS_3060},namespace=\"ai-system-gpu\",pod=\"tutor-b\",container=\"tutor\",sharing=\"shared\"");
    assert_eq!(value(&text, &format!("nvidia_gpu_pod_utilization_percent{{{vision}}}")).as_deref(), Some("30.0"));
    assert_eq!(value(&text, &format!("nvidia_gpu_pod_utilization_percent{{{tutor}}}")).as_deref(), Some("20.0"));
    assert!(text.contains("kube_gpu_metrics_pod_resources_up{node=\"testnode\"} 1"));
    assert!(!text.contains("kube_gpu_metrics_pod_attribution_unresolved{"), "{text}");

    let feed: serde_json::Value = serde_json::from_slice(&agent.get("/v1/pods").body).unwrap();
    let pods = feed["pods"].as_array().unwrap();
    let find = |name: &str| pods.iter().find(|p| p["pod"] == name).unwrap_or_else(|| panic!("{name} in {feed}"));
    assert_eq!(find("trainer-0")["utilizationPercent"], 42.0);
    assert_eq!(find("trainer-0")["sharing"], "exclusive");
    assert_eq!(find("trainer-0")["memoryUsedBytes"], 8589934592u64);
    assert_eq!(find("vision-a")["utilizationPercent"], 30.0);
    assert_eq!(find("tutor-b")["utilizationPercent"], 20.0);
    assert_eq!(find("tutor-b")["sharing"], "shared");
    // Each pod's memory is its own processes' (compute and graphics); the
    // host process's 2 GiB stays on the device series only.
    assert_eq!(find("vision-a")["memoryUsedBytes"], 3072u64 << 20);
    assert_eq!(find("tutor-b")["memoryUsedBytes"], 1536u64 << 20);
    assert_eq!(
        value(&text, &format!("nvidia_gpu_pod_memory_used_bytes{{{tutor}}}")).as_deref(),
        Some((1536u64 << 20).to_string().as_str())
    );
    assert_eq!(
        value(&text, &format!("nvidia_gpu_pod_memory_used_bytes{{{exclusive},sharing=\"exclusive\"}}")).as_deref(),
        Some("8589934592"),
        "no checkpoint entry for the trainer: the device's value, as it holds the whole GPU"
    );
    // Idle tracking and energy per pod start with the first sample.
    assert!(value(&text, &format!("nvidia_gpu_pod_last_active_timestamp_seconds{{{tutor}}}")).is_some());
    assert!(text.contains("# TYPE nvidia_gpu_pod_energy_joules_total counter"));
    assert!(feed["timestampMs"].as_u64().unwrap() > 1_700_000_000_000);
}

#[test]
fn a_missing_stopped_or_restarted_kubelet_degrades_to_unlabelled_series_then_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = attribution_fixture(dir.path());
    let socket = dir.path().join("kubelet.sock");
    let flags = attribution_flags(dir.path());
    let agent = Agent::start_in(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    let text =
        agent.metrics_until("a sample", |t| t.contains("kube_gpu_metrics_pod_resources_up{node=\"testnode\"} 0"));
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}}")).as_deref(), Some("42.0"));
    assert!(!text.contains("pod=\""));

    // The kubelet comes up: the agent reconnects on its own (backoff ≤ 2 s here).
    let running = serve_kubelet(&socket, kubelet.clone());
    let text = agent.metrics_until("pod labels", |t| t.contains("pod=\"trainer-0\""));
    assert!(text.contains("kube_gpu_metrics_pod_resources_up{node=\"testnode\"} 1"));
    let errors: u64 = value(&text, "kube_gpu_metrics_pod_resources_errors_total").unwrap().parse().unwrap();
    assert!(errors >= 1);

    // The kubelet stops mid-run (socket gone, connections closed): labels go,
    // GPU series stay.
    drop(running);
    let text =
        agent.metrics_until("labels gone", |t| t.contains("kube_gpu_metrics_pod_resources_up{node=\"testnode\"} 0"));
    assert!(!text.contains("pod=\""));
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}}")).as_deref(), Some("42.0"));
    // It restarts: the agent reconnects by itself.
    let _restarted = serve_kubelet(&socket, kubelet);
    agent.metrics_until("labels back", |t| t.contains("pod=\"trainer-0\""));
}

#[test]
fn a_shared_gpu_without_the_checkpoint_reports_why_not_a_copied_value() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = attribution_fixture(dir.path());
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let _kubelet = serve_kubelet(&dir.path().join("kubelet.sock"), kubelet);
    let flags = attribution_flags(dir.path());
    let agent = Agent::start_in(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    let text = agent.metrics_until("pod labels", |t| t.contains("pod=\"tutor-b\""));
    let unresolved = format!(
        "kube_gpu_metrics_pod_attribution_unresolved{{{LABELS_3060},namespace=\"ai-system-gpu\",pod=\"tutor-b\",container=\"tutor\",reason=\"pod-uid-unknown\"}}"
    );
    assert_eq!(value(&text, &unresolved).as_deref(), Some("1"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("nvidia_gpu_pod_utilization_percent{") && l.contains("tutor-b")));
    // The exclusive GPU needs no checkpoint.
    assert!(text.lines().any(|l| l.starts_with("nvidia_gpu_pod_utilization_percent{") && l.contains("trainer-0")));
}

#[test]
fn mps_clients_get_their_memory_and_a_reason_for_utilization() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = attribution_fixture(dir.path());
    // Under MPS the server (pid 600, in the device plugin's pod) runs the
    // clients' kernels: NVML samples only it, and lists the clients in the
    // MPS list with their memory.
    std::fs::write(
        dir.path().join("nvml.conf"),
        format!(
            "{TWO_GPUS}process 1 pid=600 sm=45 mem=20 used_mib=64\n\
             process 1 pid=501 sm=none used_mib=3000 kind=mps\nprocess 1 pid=502 sm=none used_mib=1000 kind=mps\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("proc/600")).unwrap();
    std::fs::write(
        dir.path().join("proc/600/cgroup"),
        "0::/kubepods/burstable/podcccccccc-3333-4333-8333-000000000003/mps\n",
    )
    .unwrap();
    let _kubelet = serve_kubelet(&dir.path().join("kubelet.sock"), kubelet);
    let flags = attribution_flags(dir.path());
    let agent = Agent::start_in(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    let text = agent.metrics_until("MPS clients", |t| t.contains("reason=\"mps-client-unsampled\""));
    for (pod, container, mib) in [("vision-a", "vision", 3000u64), ("tutor-b", "tutor", 1000)] {
        let labels = format!("{LABELS_3060},namespace=\"ai-system-gpu\",pod=\"{pod}\",container=\"{container}\"");
        assert_eq!(
            value(&text, &format!("nvidia_gpu_pod_memory_used_bytes{{{labels},sharing=\"shared\"}}")),
            Some((mib << 20).to_string()),
            "{text}"
        );
        let unresolved =
            format!("kube_gpu_metrics_pod_attribution_unresolved{{{labels},reason=\"mps-client-unsampled\"}}");
        assert_eq!(value(&text, &unresolved).as_deref(), Some("1"));
        assert!(!text.lines().any(|l| l.starts_with("nvidia_gpu_pod_utilization_percent{") && l.contains(pod)));
    }
}

#[test]
fn a_failing_process_list_leaves_pod_memory_absent_and_counts_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = attribution_fixture(dir.path());
    let config = std::fs::read_to_string(dir.path().join("nvml.conf")).unwrap();
    std::fs::write(dir.path().join("nvml.conf"), format!("{config}error 1 running UNKNOWN\n")).unwrap();
    let _kubelet = serve_kubelet(&dir.path().join("kubelet.sock"), kubelet);
    let flags = attribution_flags(dir.path());
    let agent = Agent::start_in(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    let text = agent.metrics_until("pod labels", |t| t.contains("pod=\"tutor-b\""));
    assert!(!text.lines().any(|l| l.starts_with("nvidia_gpu_pod_memory_used_bytes{") && l.contains("tutor-b")));
    // Utilization shares do not depend on the lists.
    assert!(text.lines().any(|l| l.starts_with("nvidia_gpu_pod_utilization_percent{") && l.contains("tutor-b")));
    let errors = value(&text, "kube_gpu_metrics_nvml_errors_total{node=\"testnode\",call=\"running_processes\"}");
    assert!(errors.unwrap().parse::<u64>().unwrap() >= 1);
}

/// An A100 in MIG mode (two MIG devices) beside a GeForce board.
fn mig_config(second: &str) -> String {
    format!(
        "gpu name=\"NVIDIA A100-SXM4-80GB\" uuid=GPU-a100-0000 mem_total=85899345920 mem_used=6442450944 mig_mode=1\n\
         mig 0 uuid=MIG-aaaa gi=1 ci=0 profile=3g.40gb mem_total=42949672960 mem_used=5368709120\n\
         {second}\
         gpu name=\"NVIDIA GeForce RTX 3060\" uuid=GPU-3060-0001 util=17 mem_total=12884901888 mem_used=2147483648\n"
    )
}

#[test]
fn mig_devices_are_read_and_a_pod_on_one_gets_its_values_through_reconfiguration() {
    let dir =
        config_dir(&mig_config("mig 0 uuid=MIG-bbbb gi=2 ci=0 profile=1g.10gb mem_total=10737418240 mem_used=0\n"));
    let kubelet = FakeKubelet::default();
    kubelet.0.lock().unwrap().pod_resources = vec![
        with_resource("nvidia.com/mig-3g.40gb", pod("ai", "llm-0", "main", &["MIG-aaaa"])),
        // A MIG UUID NVML does not know (a stale kubelet view): no series, no harm.
        with_resource("nvidia.com/mig-1g.10gb", pod("ai", "ghost-0", "main", &["MIG-gone"])),
        pod("ai", "vision-0", "main", &["GPU-3060-0001"]),
    ];
    let _kubelet = serve_kubelet(&dir.path().join("kubelet.sock"), kubelet);
    let flags = attribution_flags(dir.path());
    let agent = Agent::start_in(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    let held = "mig_uuid=\"MIG-aaaa\",gpu_instance_id=\"1\",compute_instance_id=\"0\",mig_profile=\"3g.40gb\"";
    let llm = "namespace=\"ai\",pod=\"llm-0\",container=\"main\"";
    let text = agent.metrics_until("the MIG pod", |t| t.contains("pod=\"llm-0\""));
    let a100 = "node=\"testnode\",gpu=\"0\",uuid=\"GPU-a100-0000\",model=\"NVIDIA A100-SXM4-80GB\"";
    assert_eq!(
        value(&text, &format!("nvidia_gpu_mig_memory_used_bytes{{{a100},{held},{llm}}}")),
        Some("5368709120".into())
    );
    assert_eq!(
        value(&text, &format!("nvidia_gpu_pod_memory_used_bytes{{{a100},{held},{llm},sharing=\"exclusive\"}}")),
        Some("5368709120".into())
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "kube_gpu_metrics_pod_attribution_unresolved{{{a100},{held},{llm},reason=\"mig-utilization-unmeasured\"}}"
            )
        ),
        Some("1".into())
    );
    assert!(text.contains("mig_uuid=\"MIG-bbbb\""), "{text}");
    assert!(!text.contains("ghost-0"), "{text}");
    assert!(text.contains("pod=\"vision-0\""), "{text}");
    // No utilization is made up for the A100 (NVML answers none in MIG mode) or its pod.
    assert!(!text.lines().any(|l| l.starts_with("nvidia_gpu_utilization_percent{") && l.contains("GPU-a100")));
    let feed: serde_json::Value = serde_json::from_slice(&agent.get("/v1/pods").body).unwrap();
    let llm_feed = feed["pods"].as_array().unwrap().iter().find(|p| p["pod"] == "llm-0").unwrap();
    assert_eq!(llm_feed["gpus"], serde_json::json!(["MIG-aaaa"]));
    assert_eq!(llm_feed["memoryUsedBytes"], 5368709120u64);
    assert_eq!(llm_feed["reason"], "mig-utilization-unmeasured");

    // Reconfigured while the agent runs: MIG-bbbb gives way to two new devices.
    agent.set_config(&mig_config(
        "mig 0 uuid=MIG-cccc gi=3 ci=0 profile=1g.10gb mem_total=10737418240 mem_used=1073741824\n\
         mig 0 uuid=MIG-dddd gi=4 ci=0 profile=1g.10gb mem_total=10737418240 mem_used=0\n",
    ));
    let text = agent.metrics_until("the new MIG devices", |t| t.contains("MIG-dddd") && !t.contains("MIG-bbbb"));
    assert!(text.contains("mig_uuid=\"MIG-cccc\",gpu_instance_id=\"3\""), "{text}");
    assert!(text.contains(&format!("{held},{llm}")), "{text}");
    assert_eq!(value(&text, "kube_gpu_metrics_nvml_errors_total{node=\"testnode\",call=\"mig\"}"), Some("0".into()));

    // MIG turned off: the devices go, the GPU stays.
    agent.set_config(&mig_config("").replace("mig_mode=1", "mig_mode=0"));
    let text = agent.metrics_until("MIG off", |t| !t.contains("mig_uuid="));
    assert!(text.contains("nvidia_gpu_memory_used_bytes{node=\"testnode\",gpu=\"0\""), "{text}");
}

#[test]
fn gpm_measures_each_mig_device_and_its_pod_gets_that_utilization() {
    // An H100 in MIG mode (GPM): a 3g instance at 60 %, a 1g instance split
    // into two compute instances (GPM measures the instance, not them).
    let config = |util: u32| {
        format!(
            "gpu name=\"NVIDIA H100 80GB HBM3\" uuid=GPU-h100-0000 mem_total=85899345920 mem_used=6442450944 mig_mode=1 gpm=1 energy_mj=1000000\n\
             mig 0 uuid=MIG-aaaa gi=1 ci=0 profile=3g.40gb mem_total=42949672960 mem_used=5368709120 util={util}\n\
             mig 0 uuid=MIG-bbbb gi=2 ci=0 profile=1c.2g.20gb mem_total=21474836480 mem_used=0 util=90\n\
             mig 0 uuid=MIG-cccc gi=2 ci=1 profile=1c.2g.20gb mem_total=21474836480 mem_used=0 util=90\n"
        )
    };
    let dir = config_dir(&config(60));
    let kubelet = FakeKubelet::default();
    kubelet.0.lock().unwrap().pod_resources = vec![
        with_resource("nvidia.com/mig-3g.40gb", pod("ai", "llm-0", "main", &["MIG-aaaa"])),
        with_resource("nvidia.com/mig-1c.2g.20gb", pod("ai", "embed-0", "main", &["MIG-bbbb"])),
    ];
    let _kubelet = serve_kubelet(&dir.path().join("kubelet.sock"), kubelet);
    let flags = attribution_flags(dir.path());
    let agent = Agent::start_in(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    let h100 = "node=\"testnode\",gpu=\"0\",uuid=\"GPU-h100-0000\",model=\"NVIDIA H100 80GB HBM3\"";
    let held = "mig_uuid=\"MIG-aaaa\",gpu_instance_id=\"1\",compute_instance_id=\"0\",mig_profile=\"3g.40gb\"";
    let llm = "namespace=\"ai\",pod=\"llm-0\",container=\"main\"";
    let pod_util = format!("nvidia_gpu_pod_utilization_percent{{{h100},{held},{llm},sharing=\"exclusive\"}}");
    // The first read has one GPM sample; the second has an interval.
    let text = agent.metrics_until("GPM utilization", |t| value(t, &pod_util).is_some());
    let busy: f64 = value(&text, &pod_util).unwrap().parse().unwrap();
    assert!((busy - 60.0).abs() < 0.5, "{busy}");
    let device: f64 =
        value(&text, &format!("nvidia_gpu_mig_utilization_percent{{{h100},{held},{llm}}}")).unwrap().parse().unwrap();
    assert_eq!(device, busy);
    // The split instance: no value for either compute instance, and the
    // pod on one says why; the parent GPU has none either.
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("nvidia_gpu_mig_utilization_percent{") && l.contains("gpu_instance_id=\"2\"")),
        "{text}"
    );
    assert!(text.contains("pod=\"embed-0\",container=\"main\",reason=\"mig-utilization-unmeasured\"} 1"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("nvidia_gpu_utilization_percent{") && l.contains("GPU-h100")));
    assert_eq!(value(&text, "kube_gpu_metrics_nvml_errors_total{node=\"testnode\",call=\"gpm\"}"), Some("0".into()));
    // The feed carries it, for the custom metrics API.
    let feed: serde_json::Value = serde_json::from_slice(&agent.get("/v1/pods").body).unwrap();
    let llm_feed = feed["pods"].as_array().unwrap().iter().find(|p| p["pod"] == "llm-0").unwrap();
    assert_eq!(llm_feed["gpus"], serde_json::json!(["MIG-aaaa"]));
    assert!((llm_feed["utilizationPercent"].as_f64().unwrap() - 60.0).abs() < 0.5, "{llm_feed}");

    // The load changes: the next intervals show it.
    agent.set_config(&config(20));
    agent.metrics_until("the new GPM utilization", |t| {
        value(t, &pod_util).and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| (v - 20.0).abs() < 0.5)
    });

    // A GPM failure: the device's utilization goes, counted; nothing else does.
    agent.set_config(&format!("{}error 0 gpm UNKNOWN\n", config(20)));
    let text = agent.metrics_until("the GPM error", |t| {
        value(t, "kube_gpu_metrics_nvml_errors_total{node=\"testnode\",call=\"gpm\"}").is_some_and(|v| v != "0")
    });
    let text = if value(&text, &pod_util).is_some() {
        agent.metrics_until("no utilization", |t| value(t, &pod_util).is_none())
    } else {
        text
    };
    assert!(text.contains(&format!("nvidia_gpu_mig_memory_used_bytes{{{h100},{held},{llm}}} 5368709120")), "{text}");
    assert!(text.contains("pod=\"llm-0\",container=\"main\",reason=\"mig-utilization-unmeasured\"} 1"), "{text}");
}

#[test]
fn gpus_claimed_through_dra_are_attributed_and_a_malformed_claim_spares_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = attribution_fixture(dir.path());
    *kubelet.0.lock().unwrap() = ListPodResourcesResponse {
        pod_resources: vec![
            // NVIDIA's DRA driver names whole GPUs gpu-<index>.
            dra_pod("research", "notebook-0", "notebook-gpu", &[("gpu.nvidia.com", "gpu-1")]),
            // A partition the agent cannot place, a claim from a kubelet
            // that names no device, and another driver's device.
            dra_pod("research", "mig-job", "mig-claim", &[("gpu.nvidia.com", "gpu-0-mig-1g.10gb-0")]),
            dra_pod("research", "old-kubelet", "claim", &[("gpu.nvidia.com", "")]),
            dra_pod("research", "nic-job", "rdma", &[("rdma.example.com", "nic-0")]),
        ],
    };
    let _kubelet = serve_kubelet(&dir.path().join("kubelet.sock"), kubelet);
    let flags = attribution_flags(dir.path());
    let agent = Agent::start_in(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    let text = agent.metrics_until("the claimed GPU", |t| t.contains("pod=\"notebook-0\""));
    let claimed = format!("{LABELS_3060},namespace=\"research\",pod=\"notebook-0\",container=\"main\"");
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{claimed}}}")).as_deref(), Some("17.0"));
    assert!(!text.contains("pod=\"mig-job\"") && !text.contains("pod=\"nic-job\"") && !text.contains("old-kubelet"));
    // GPU 0, claimed by no placeable device, keeps its unlabelled series.
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}}")).as_deref(), Some("42.0"));
    assert!(text.contains("kube_gpu_metrics_pod_resources_up{node=\"testnode\"} 1"));
}

#[test]
fn sixteen_processes_on_a_shared_gpu_are_each_attributed() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = attribution_fixture(dir.path());
    // Eight processes of each pod on the 3060, half of them graphics.
    let mut config = TWO_GPUS.to_string();
    for i in 0..16u32 {
        let pid = 1000 + i;
        let kind = if i % 2 == 0 { "compute" } else { "graphics" };
        config.push_str(&format!("process 1 pid={pid} sm=2 mem=1 used_mib={} kind={kind}\n", 100 + i));
        let uid = if i < 8 { UID_VISION } else { UID_TUTOR };
        std::fs::create_dir_all(dir.path().join(format!("proc/{pid}"))).unwrap();
        std::fs::write(dir.path().join(format!("proc/{pid}/cgroup")), format!("0::/kubepods/pod{uid}/c\n")).unwrap();
    }
    std::fs::write(dir.path().join("nvml.conf"), config).unwrap();
    let _kubelet = serve_kubelet(&dir.path().join("kubelet.sock"), kubelet);
    let flags = attribution_flags(dir.path());
    let agent = Agent::start_in(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    let text = agent.metrics_until("pod memory", |t| t.contains("nvidia_gpu_pod_memory_used_bytes{"));
    let memory = |pod: &str| {
        text.lines()
            .find(|l| l.starts_with("nvidia_gpu_pod_memory_used_bytes{") && l.contains(&format!("pod=\"{pod}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(memory("vision-a"), Some((100..108).sum::<u64>() << 20));
    assert_eq!(memory("tutor-b"), Some((108..116).sum::<u64>() << 20));
    // The pass duration is printed, not asserted (BENCHMARKS.md has the figures).
    let mut passes = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(1100));
        let text = String::from_utf8(agent.get("/metrics").body).unwrap();
        passes.push(value(&text, "kube_gpu_metrics_sample_duration_seconds").unwrap().parse::<f64>().unwrap() * 1e6);
    }
    passes.sort_by(f64::total_cmp);
    println!(
        "sample pass, 2 GPUs, 16 processes on one: median {:.0} us, min {:.0}, max {:.0}",
        passes[5], passes[0], passes[9]
    );
}

// ---- real hardware ----

#[test]
#[ignore = "needs GPU"]
fn the_real_nvml_library_reports_every_gpu() {
    let args = ["--listen", "127.0.0.1:0", "--node-name", "gpu-host", "--no-attribution", "--interval", "500ms"];
    let (mut child, addr) = spawn(&args, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while request(addr, "GET", "/readyz", &[]).status != 200 {
        assert!(Instant::now() < deadline, "NVML never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let text = String::from_utf8(request(addr, "GET", "/metrics", &[]).body).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    println!("{text}");
    let up: Vec<&str> = text.lines().filter(|l| l.starts_with("nvidia_gpu_up{")).collect();
    assert!(!up.is_empty(), "no GPU found");
    assert!(up.iter().all(|l| l.ends_with(" 1") && l.contains("uuid=\"GPU-")), "{up:?}");
    for family in
        ["nvidia_gpu_utilization_percent{", "nvidia_gpu_memory_total_bytes{", "nvidia_gpu_temperature_celsius{"]
    {
        assert_eq!(text.lines().filter(|l| l.starts_with(family)).count(), up.len(), "{family}");
    }
    for family in ["nvidia_gpu_memory_clock_hertz{", "nvidia_gpu_energy_joules_total{", "nvidia_gpu_power_limit_watts{"]
    {
        assert_eq!(text.lines().filter(|l| l.starts_with(family)).count(), up.len(), "{family}");
    }
    let duration: f64 = value(&text, "kube_gpu_metrics_sample_duration_seconds").unwrap().parse().unwrap();
    println!(
        "sample pass: {:.1} us for {} GPU(s), {:.1} us per GPU",
        duration * 1e6,
        up.len(),
        duration * 1e6 / up.len() as f64
    );
}

// ---- hostile clients and the feed token ----

#[test]
fn the_feed_can_require_a_token_that_the_adapter_sends() {
    let dir = config_dir(TWO_GPUS);
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
    let token_file = dir.path().join("token").display().to_string();
    let agent = Agent::start_in(dir, &["--no-attribution", "--feed-token-file", &token_file]);
    agent.metrics_until("a sample", |t| t.contains("nvidia_gpu_utilization_percent{"));

    assert_eq!(agent.get("/v1/pods").status, 401);
    let wrong = request(agent.addr, "GET", "/v1/pods", &[("Authorization", "Bearer s3cret-tokeN")]);
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    let right = request(agent.addr, "GET", "/v1/pods", &[("Authorization", "Bearer s3cret-token")]);
    assert_eq!(right.status, 200);
    // Prometheus and the probes need no token.
    assert_eq!(agent.get("/metrics").status, 200);
    assert_eq!(agent.get("/readyz").status, 200);

    // The adapter's agent source, with and without the token.
    use kube_gpu_metrics::adapter::source::agents::AgentSource;
    use kube_gpu_metrics::adapter::source::fetch::{FetchLimits, Fetcher};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let base = format!("http://{}", agent.addr);
    runtime.block_on(async {
        let limits =
            FetchLimits { timeout: Duration::from_secs(2), max_body_bytes: 1 << 20, max_in_flight_bytes: 1 << 20 };
        let fetcher = Fetcher::new(limits);
        let feed = AgentSource::fetch(&fetcher, Some("s3cret-token"), &base).await.unwrap();
        assert_eq!(feed.node, "testnode");
        let err = AgentSource::fetch(&fetcher, None, &base).await.unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
    });
}

#[test]
fn oversized_headers_get_431() {
    let agent = Agent::start(TWO_GPUS, &["--no-attribution"]);
    let huge = "x".repeat(64 * 1024);
    let answer = request(agent.addr, "GET", "/metrics", &[("X-Padding", &huge)]);
    assert_eq!(answer.status, 431);
    // The agent is unharmed.
    assert_eq!(agent.get("/healthz").status, 200);
}

#[test]
fn a_slowloris_client_is_cut_off_by_the_header_read_timeout() {
    let agent = Agent::start(TWO_GPUS, &["--no-attribution"]);
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    // Half a request head, then nothing.
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest).is_ok();
    assert!(closed, "the connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(29), "closed only by the client's own timeout");
    assert_eq!(agent.get("/healthz").status, 200);
}

#[test]
fn a_hung_nvml_call_marks_only_its_gpu_down_and_blocks_no_scrape() {
    // GPU 1's utilization call takes 3 s; the read deadline is 400 ms.
    let agent = Agent::start(
        &format!("{TWO_GPUS}delay 1 utilization 3000\n"),
        &["--no-attribution", "--gpu-read-timeout", "400ms"],
    );
    let text = agent.metrics_until("GPU 1 reported down", |t| t.contains(&format!("nvidia_gpu_up{{{LABELS_3060}}} 0")));
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}}")).as_deref(), Some("42.0"));
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{LABELS_3060}}}")), None);
    // Scrapes answer at once while the call hangs.
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(agent.get("/metrics").status, 200);
    }
    let scrape_time = started.elapsed();
    eprintln!("20 scrapes during a hung NVML call: {scrape_time:?}");
    let text = agent.metrics_until("the timeout counted", |t| {
        value(t, "kube_gpu_metrics_gpu_read_timeouts_total").is_some_and(|v| v != "0")
    });
    assert_eq!(value(&text, &format!("nvidia_gpu_up{{{LABELS_4090}}}")).as_deref(), Some("1"));
}

#[test]
fn a_missing_nvml_library_is_not_ready_until_it_appears() {
    let dir = config_dir(TWO_GPUS);
    let library = dir.path().join("driver/libnvidia-ml.so.1");
    let library_flag = library.display().to_string();
    let mut args = vec!["--gpu-source", "nvml", "--nvml-lib", library_flag.as_str()];
    args.extend(["--listen", "127.0.0.1:0", "--node-name", "testnode", "--no-attribution", "--interval", "200ms"]);
    let (child, addr) = spawn(&args, Some(&dir.path().join("nvml.conf")));
    let agent = Agent { child, addr, dir };
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = loop {
        let r = agent.get("/readyz");
        let body = String::from_utf8_lossy(&r.body).to_string();
        if r.status == 503 && body.contains("NVML init failed") {
            break body;
        }
        assert!(Instant::now() < deadline, "never reported the missing library");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reason.contains(&library_flag), "{reason}");
    assert_eq!(agent.get("/healthz").status, 200);

    // The driver gets installed: the agent picks it up without a restart.
    std::fs::create_dir_all(library.parent().unwrap()).unwrap();
    std::fs::copy(fake_nvml(), &library).unwrap();
    agent.metrics_until("recovery", |t| t.contains(&format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}} 42.0")));
    assert_eq!(agent.get("/readyz").status, 200);
}

#[test]
fn sigterm_exits_in_time_even_while_an_nvml_call_hangs() {
    // GPU 1's utilization call hangs for 40 s.
    let mut agent = Agent::start(
        &format!("{TWO_GPUS}delay 1 utilization 40000\n"),
        &["--no-attribution", "--gpu-read-timeout", "300ms"],
    );
    agent.metrics_until("GPU 1 reported down", |t| t.contains(&format!("nvidia_gpu_up{{{LABELS_3060}}} 0")));
    // SIGHUP is not a reason to stop.
    assert!(Command::new("kill").args(["-HUP", &agent.child.id().to_string()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.get("/healthz").status, 200, "the agent survives SIGHUP");
    let signalled = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &agent.child.id().to_string()]).status().unwrap().success());
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    eprintln!("exit {:?} after SIGTERM with a 40 s NVML hang in flight", signalled.elapsed());
}

#[test]
fn a_slow_nvml_open_does_not_mark_every_gpu_down() {
    // Opening (the device count) takes 1.5 s; each read may take 500 ms.
    let agent =
        Agent::start(&format!("{TWO_GPUS}delay * count 1500\n"), &["--no-attribution", "--gpu-read-timeout", "500ms"]);
    let text = agent.metrics_until("a first sample", |t| t.contains("nvidia_gpu_up{"));
    assert_eq!(value(&text, &format!("nvidia_gpu_up{{{LABELS_4090}}}")).as_deref(), Some("1"), "{text}");
    assert_eq!(value(&text, &format!("nvidia_gpu_up{{{LABELS_3060}}}")).as_deref(), Some("1"), "{text}");
    assert_eq!(value(&text, "kube_gpu_metrics_gpu_read_timeouts_total").as_deref(), Some("0"));
}

#[test]
fn kube_gpu_metrics_agent_is_the_same_agent_as_the_agent_mode() {
    let dedicated = Agent::start(TWO_GPUS, &["--no-attribution", "--names", "both"]);
    let gpu_lines = |text: &str| -> Vec<String> {
        text.lines().filter(|l| l.starts_with("nvidia_gpu_") || l.starts_with("DCGM_FI_")).map(str::to_owned).collect()
    };
    // Settled: a first sample, and both GPUs registered for XID events (the
    // last-XID gauge appears once the event thread has them).
    let settled = |t: &str| t.contains("nvidia_gpu_up{") && t.matches("DCGM_FI_DEV_XID_ERRORS{").count() == 2;
    let expected = gpu_lines(&dedicated.metrics_until("a first sample and XID registration", settled));
    assert!(expected.iter().any(|l| l.starts_with("nvidia_gpu_utilization_percent{")), "{expected:?}");

    let mode = Agent::launch(MAIN_BIN, &["agent"], config_dir(TWO_GPUS), &["--no-attribution", "--names", "both"]);
    let served = gpu_lines(&mode.metrics_until("a first sample and XID registration", settled));
    assert_eq!(served, expected);
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "--gpu-source", "sim", "--listen", "127.0.0.1:0"])
        .env("KGM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let entry: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first}: {e}"));
    assert_eq!(entry["level"], "INFO");
    assert!(entry["message"].as_str().unwrap().starts_with("agent listening on http://127.0.0.1:"), "{entry}");
    assert!(entry["timestamp"].is_string());
}

/// GPU 0 as a data center board reports it (memory temperature, ECC, row
/// remapping, retired pages, throttling); GPU 1 keeps the fake's GeForce
/// defaults, where those calls answer NOT_SUPPORTED.
const TELEMETRY: &str = "\
driver 550.54.14
cuda 12040
gpu name=\"NVIDIA GeForce RTX 4090\" uuid=GPU-4090-0000 util=42 mem_util=30 mem_total=25757220864 mem_used=8589934592 temp=61 power_mw=312000 sm_clock_mhz=2520 mem_clock_mhz=10501 mem_temp=85 energy_mj=5000500 pcie_replay=7 pcie_tx_kbs=100 pcie_rx_kbs=200 enc_util=11 dec_util=13 fan=55 pstate=0 clock_events=0x44 viol_power_ns=2500000000 viol_thermal_ns=1000000 power_limit_mw=400000 ecc=1 ecc_sbe_vol=3 ecc_dbe_vol=1 ecc_sbe_agg=30 ecc_dbe_agg=2 remap=1 remap_corr=2 remap_unc=1 remap_pending=1 remap_failure=0 retired=1 retired_sbe=5 retired_dbe=1 retired_pending=1
gpu name=\"NVIDIA GeForce RTX 3060\" uuid=GPU-3060-0001 util=17 mem_util=9 mem_total=12884901888 mem_used=2147483648 temp=48 power_mw=95500 sm_clock_mhz=1777
";

#[test]
fn every_field_is_served_where_the_gpu_has_it_and_absent_where_it_has_not() {
    let agent = Agent::start(TELEMETRY, &["--no-attribution", "--names", "both"]);
    let text = agent.metrics_until("a sample", |t| t.contains("nvidia_gpu_power_limit_watts{"));
    let g0 = LABELS_4090;
    for (series, want) in [
        (format!("nvidia_gpu_memory_clock_hertz{{{g0}}}"), "10501000000.0"),
        (format!("nvidia_gpu_memory_temperature_celsius{{{g0}}}"), "85.0"),
        (format!("nvidia_gpu_energy_joules_total{{{g0}}}"), "5000.5"),
        (format!("nvidia_gpu_pcie_replays_total{{{g0}}}"), "7"),
        (format!("nvidia_gpu_pcie_transmit_bytes_per_second{{{g0}}}"), "102400.0"),
        (format!("nvidia_gpu_pcie_receive_bytes_per_second{{{g0}}}"), "204800.0"),
        (format!("nvidia_gpu_encoder_utilization_percent{{{g0}}}"), "11.0"),
        (format!("nvidia_gpu_decoder_utilization_percent{{{g0}}}"), "13.0"),
        (format!("nvidia_gpu_fan_speed_percent{{{g0}}}"), "55.0"),
        (format!("nvidia_gpu_performance_state{{{g0}}}"), "0"),
        (format!("nvidia_gpu_memory_reserved_bytes{{{g0}}}"), "352321536"),
        (format!("nvidia_gpu_power_limit_watts{{{g0}}}"), "400.0"),
        (format!("nvidia_gpu_clock_event_active{{{g0},reason=\"sw_power_cap\"}}"), "1"),
        (format!("nvidia_gpu_clock_event_active{{{g0},reason=\"hw_thermal_slowdown\"}}"), "1"),
        (format!("nvidia_gpu_clock_event_active{{{g0},reason=\"gpu_idle\"}}"), "0"),
        (format!("nvidia_gpu_clock_event_violation_seconds_total{{{g0},reason=\"power\"}}"), "2.5"),
        (format!("nvidia_gpu_clock_event_violation_seconds_total{{{g0},reason=\"thermal\"}}"), "0.001"),
        (format!("nvidia_gpu_ecc_errors_total{{{g0},error=\"uncorrected\",counter=\"volatile\"}}"), "1"),
        (format!("nvidia_gpu_ecc_errors_total{{{g0},error=\"corrected\",counter=\"aggregate\"}}"), "30"),
        (format!("nvidia_gpu_remapped_rows_total{{{g0},error=\"correctable\"}}"), "2"),
        (format!("nvidia_gpu_remapped_rows_pending{{{g0}}}"), "1"),
        (format!("nvidia_gpu_remapped_rows_failed{{{g0}}}"), "0"),
        (format!("nvidia_gpu_retired_pages{{{g0},cause=\"single_bit_ecc\"}}"), "5"),
        (format!("nvidia_gpu_retired_pages_pending{{{g0}}}"), "1"),
    ] {
        assert_eq!(value(&text, &series).as_deref(), Some(want), "{series}\n{text}");
    }
    // The GeForce board: what it lacks is absent, never 0, and no error.
    let g1 = LABELS_3060;
    for family in [
        "nvidia_gpu_memory_temperature_celsius",
        "nvidia_gpu_ecc_errors_total",
        "nvidia_gpu_remapped_rows_total",
        "nvidia_gpu_remapped_rows_pending",
        "nvidia_gpu_retired_pages",
    ] {
        assert!(!text.lines().any(|l| l.starts_with(&format!("{family}{{{g1}"))), "{family} for the 3060\n{text}");
    }
    assert!(value(&text, &format!("nvidia_gpu_fan_speed_percent{{{g1}}}")).is_some());
    for call in ["ecc", "remapped_rows", "retired_pages", "field_values"] {
        let errors = value(&text, &format!("kube_gpu_metrics_nvml_errors_total{{node=\"testnode\",call=\"{call}\"}}"));
        assert_eq!(errors.as_deref(), Some("0"), "{call}");
    }
    // dcgm-exporter's names and units for the same fields.
    let d0 = "gpu=\"0\",UUID=\"GPU-4090-0000\",pci_bus_id=\"00000000:01:00.0\",device=\"nvidia0\",modelName=\"NVIDIA GeForce RTX 4090\",hostname=\"testnode\",DCGM_FI_DRIVER_VERSION=\"550.54.14\"";
    for (series, want) in [
        ("DCGM_FI_DEV_MEM_CLOCK", "10501"),
        ("DCGM_FI_DEV_MEMORY_TEMP", "85"),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "5000500"),
        ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "7"),
        ("DCGM_FI_DEV_ENC_UTIL", "11"),
        ("DCGM_FI_DEV_DEC_UTIL", "13"),
        ("DCGM_FI_DEV_FB_RESERVED", "336"),
        ("DCGM_FI_DEV_POWER_VIOLATION", "2500000"),
        ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "1"),
        ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "2"),
        ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "1"),
        ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "0"),
        ("DCGM_FI_DEV_RETIRED_SBE", "5"),
    ] {
        assert_eq!(value(&text, &format!("{series}{{{d0}}}")).as_deref(), Some(want), "{series}\n{text}");
    }
}

#[test]
fn a_failing_field_is_counted_and_absent_while_the_rest_report() {
    let config = format!("{TELEMETRY}error 0 energy UNKNOWN\nerror 0 ecc UNKNOWN\n");
    let agent = Agent::start(&config, &["--no-attribution"]);
    let text = agent.metrics_until("the errors counted", |t| {
        value(t, "kube_gpu_metrics_nvml_errors_total{node=\"testnode\",call=\"energy\"}").is_some_and(|v| v != "0")
    });
    let g0 = LABELS_4090;
    assert_eq!(value(&text, &format!("nvidia_gpu_energy_joules_total{{{g0}}}")), None);
    assert!(!text.contains(&format!("nvidia_gpu_ecc_errors_total{{{g0}")), "{text}");
    assert!(
        value(&text, "kube_gpu_metrics_nvml_errors_total{node=\"testnode\",call=\"ecc\"}").is_some_and(|v| v != "0")
    );
    assert_eq!(value(&text, &format!("nvidia_gpu_up{{{g0}}}")).as_deref(), Some("1"));
    assert_eq!(value(&text, &format!("nvidia_gpu_utilization_percent{{{g0}}}")).as_deref(), Some("42.0"));
    assert_eq!(value(&text, &format!("nvidia_gpu_retired_pages_pending{{{g0}}}")).as_deref(), Some("1"));
}

#[test]
fn health_fields_are_read_every_health_interval_not_every_sample() {
    let agent = Agent::start(TELEMETRY, &["--no-attribution", "--health-interval", "1h"]);
    let series = format!("nvidia_gpu_ecc_errors_total{{{LABELS_4090},error=\"uncorrected\",counter=\"volatile\"}}");
    agent.metrics_until("ECC counts", |t| value(t, &series).as_deref() == Some("1"));
    agent.set_config(&TELEMETRY.replace("ecc_dbe_vol=1", "ecc_dbe_vol=4").replace("util=42", "util=43"));
    // Utilization moves at the next sample; ECC waits for the next health read.
    agent.metrics_until("the new utilization", |t| {
        value(t, &format!("nvidia_gpu_utilization_percent{{{LABELS_4090}}}")).as_deref() == Some("43.0")
    });
    std::thread::sleep(Duration::from_secs(1));
    let text = String::from_utf8(agent.get("/metrics").body).unwrap();
    assert_eq!(value(&text, &series).as_deref(), Some("1"), "five samples later, the last health read stands");
}

#[test]
fn xid_errors_come_from_nvml_events_and_one_gpu_failing_to_register_spares_the_others() {
    // GPU 1 cannot be registered for events; GPU 0 can.
    let config = format!("{TWO_GPUS}error 1 events GPU_IS_LOST\n");
    // With the node label pinned to dcgm-exporter's name before 4.8.3.
    let agent = Agent::start(&config, &["--no-attribution", "--names", "both", "--dcgm-hostname-label", "Hostname"]);
    let dcgm0 = "gpu=\"0\",UUID=\"GPU-4090-0000\",pci_bus_id=\"00000000:01:00.0\",device=\"nvidia0\",modelName=\"NVIDIA GeForce RTX 4090\",Hostname=\"testnode\",DCGM_FI_DRIVER_VERSION=\"550.54.14\"";
    let text = agent.metrics_until("the XID gauge", |t| t.contains(&format!("DCGM_FI_DEV_XID_ERRORS{{{dcgm0}}} 0")));
    assert!(!text.contains("nvidia_gpu_xid_errors_total{"), "no XID yet, no series\n{text}");
    agent.set_config(&format!("{config}xid 0 79\nxid 1 48\nxid 0 79\nxid 0 13\n"));
    let xid = |code: &str| format!("nvidia_gpu_xid_errors_total{{{LABELS_4090},xid=\"{code}\"}}");
    let text = agent.metrics_until("XID 13", |t| value(t, &xid("13")).is_some());
    assert_eq!(value(&text, &xid("79")).as_deref(), Some("2"));
    assert_eq!(value(&text, &xid("13")).as_deref(), Some("1"));
    assert_eq!(value(&text, &format!("DCGM_FI_DEV_XID_ERRORS{{{dcgm0}}}")).as_deref(), Some("13"));
    // The unregistered GPU has no XID series at all, not a count of 0.
    assert!(!text.lines().any(|l| l.starts_with(&format!("nvidia_gpu_xid_errors_total{{{LABELS_3060}"))), "{text}");
    assert!(!text.contains("DCGM_FI_DEV_XID_ERRORS{gpu=\"1\""), "{text}");
    assert_eq!(value(&text, &format!("nvidia_gpu_up{{{LABELS_3060}}}")).as_deref(), Some("1"));
}
