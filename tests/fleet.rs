//! The adapter at fleet scale, in process: a simulated fleet's feeds on
//! loopback, polled by the real adapter with its default limits.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kube_gpu_metrics::adapter::PollArgs;
use kube_gpu_metrics::adapter::store::Metric;
use kube_gpu_metrics::k8s::labels::LabelIndex;
use kube_gpu_metrics::sim::fleet::{Fleet, NAMESPACE};
use kube_gpu_metrics::standalone::{LocalAdapter, start_local_adapter};
use tokio::sync::watch;

/// 5 000 nodes of 10 pods: every pod and every node of a round is admitted
/// at the default round budget, byte budget, feed size and timeouts. A
/// default that refused a fleet of this size would leave pods out here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_limits_admit_a_round_of_5000_nodes_and_50000_pods() {
    let fleet = Fleet { agents: 5_000, pods: 10 };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feeds = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(fleet.serve(listener));
    let dir = tempfile::tempdir().unwrap();
    let local = LocalAdapter {
        listen: "127.0.0.1:0".parse().unwrap(),
        agents: fleet.urls(&feeds),
        labels: Arc::new(LabelIndex::new(fleet.labels())),
        poll: PollArgs::default(),
        prometheus: None,
        kubeconfig_out: dir.path().join("kubeconfig"),
        keda: None,
        ca_out: None,
    };
    let (stop, shutdown) = watch::channel(false);
    let adapter = start_local_adapter(local, shutdown).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut pods, mut nodes) = (0, 0);
    while (pods, nodes) != (50_000, 5_000) {
        assert!(Instant::now() < deadline, "admitted {pods} pods on {nodes} nodes, want 50 000 on 5 000");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let view = adapter.provider.view_at(SystemTime::now());
        pods = view.view().pods.get(NAMESPACE).map_or(0, |p| p.len());
        nodes = view.view().nodes.len();
    }
    let view = adapter.provider.view_at(SystemTime::now());
    let store = view.view();
    // Each pod's value is its own feed's, on its own node.
    for (agent, n) in [(0, 1), (2_499, 7), (4_999, 9)] {
        let pod = &store.pods[NAMESPACE][&Fleet::pod_name(agent, n)];
        let want = fleet.feed(agent, 0).pods[n].utilization_percent;
        assert_eq!(pod.sample.get(Metric::Utilization), want, "pod {agent}-{n}");
        assert_eq!(&*pod.node, format!("node-{agent}"));
    }
    stop.send(true).unwrap();
    adapter.done.await.unwrap();
    server.abort();
}
