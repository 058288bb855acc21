"""The agent on a real node: the kubelet v1.20.2 and containerd of
`hack/cluster.sh up --node mainpc`, with the fake NVML's process list holding
the containers' real PIDs.

1. The project's image, built without a registry (hack/oci_image.py: the
   release binaries and the libraries they load, the Dockerfile's user and
   entrypoint), imported into containerd. deploy/base applied through
   hack/e2e-node (the image, and the fake NVML mounted): the agent runs as the
   DaemonSet's pod with the manifest's hostPID, volumes, security context and
   probes. The adapter runs on this host as its ServiceAccount, behind the
   APIServices, as in e2e_cluster.py.
2. Attribution against what the real kubelet writes, checked in the agent's
   /metrics and /v1/pods and through kube-apiserver's custom metrics API:
   exclusive, then time-sliced; a pod deleted (its checkpoint entry stays);
   Guaranteed, Burstable and BestEffort pods (three cgroup layouts); a pod
   recreated under the same name.
3. Faults, each timed, with no pod ever given another's value: the kubelet
   restarted, the device plugin restarted, a container killed (new PID).
4. The reference Deployment (image swapped for the local one) and HPA: the
   upstream HPA scales it on the fake NVML's utilization of its PIDs; the new
   pod starts in containerd, gets a GPU replica, and its value reaches the API.

Prints a RELIABILITY row per fault.
"""
import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_cluster import (  # noqa: E402
    ADAPTER_SA, NS, Cluster, Processes, apiservice_available, apply_base, fail, serving_cert,
    service_account_token, token_kubeconfig, wait_until)

NODE = "mainpc"
TEST_NS = "gpu-node-e2e"
APP_NS = "ai-system-gpu"
AGENT = "http://127.0.0.1:9402"
GPU_LINE = ('gpu name="NVIDIA GeForce RTX 4090" uuid={uuid} util={util} mem_util={mem_util} '
            "mem_total=25757220864 mem_used={used} temp=55 power_mw={power} sm_clock_mhz=2100")
MIB = 1 << 20
reliability = []


def log(msg):
    print(f"[e2e-node] {msg}", flush=True)


class FakeGpu:
    """The node's one GPU in the fake NVML's config, rewritten atomically."""

    def __init__(self, path):
        self.path = path
        self.uuid = re.search(r"\buuid=(\S+)", open(path).read()).group(1)

    def set(self, util, processes):
        """`processes`: {pid: (sm percent, used MiB)}."""
        used = sum(mib for _, mib in processes.values()) * MIB
        lines = ["driver 550.54.14", "cuda 12040",
                 GPU_LINE.format(uuid=self.uuid, util=util, mem_util=util // 2, used=used, power=80000 + util * 3000)]
        lines += [f"process {self.uuid} pid={pid} sm={sm} mem={sm // 2} used_mib={mib}"
                  for pid, (sm, mib) in sorted(processes.items())]
        with open(self.path + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(self.path + ".tmp", self.path)


def get(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def feed_pods():
    """{pod name: (sharing, utilization or reason)} from the agent's /v1/pods."""
    doc = yaml.safe_load(get(f"{AGENT}/v1/pods"))
    return {p["pod"]: (p["sharing"], p.get("utilizationPercent", p.get("reason")))
            for p in doc["pods"] if p["namespace"] in (TEST_NS, APP_NS)}


def metrics_pods():
    """{pod name: utilization} from the agent's nvidia_gpu_pod_utilization_percent series."""
    out = {}
    for line in get(f"{AGENT}/metrics").splitlines():
        if line.startswith("nvidia_gpu_pod_utilization_percent{"):
            pod = re.search(r'\bpod="([^"]*)"', line).group(1)
            out[pod] = float(line.rsplit(" ", 1)[1])
    return out


def api_pods(cluster, namespace, selector):
    status, data = cluster.raw(f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/*/"
                               f"nvidia_gpu_utilization_percent?labelSelector={selector}")
    if status != 200 or not isinstance(data, dict):
        return None
    return {i["describedObject"]["name"]: float(i["value"].rstrip("m")) / (1000 if i["value"].endswith("m") else 1)
            for i in data["items"]}


def expect_everywhere(cluster, what, expected, timeout=30):
    """Waits until the feed, /metrics and the custom metrics API all give `expected` {pod: (sharing, util)}."""
    utils = {pod: util for pod, (_, util) in expected.items()}
    wait_until(f"{what}: /v1/pods", lambda: feed_pods() == expected, timeout, 0.2)
    wait_until(f"{what}: /metrics", lambda: metrics_pods() == utils, 10, 0.2)
    wait_until(f"{what}: the custom metrics API through kube-apiserver",
               lambda: api_pods(cluster, TEST_NS, "e2e%3Dnode") == utils, 30, 0.5)
    log(f"{what}: {expected} in /v1/pods, /metrics and the custom metrics API")


# --- pods ----------------------------------------------------------------------

QOS_RESOURCES = {
    "Guaranteed": {"requests": {"cpu": "50m", "memory": "32Mi", "nvidia.com/gpu": 1},
                   "limits": {"cpu": "50m", "memory": "32Mi", "nvidia.com/gpu": 1}},
    "Burstable": {"requests": {"cpu": "10m", "memory": "16Mi", "nvidia.com/gpu": 1},
                  "limits": {"memory": "64Mi", "nvidia.com/gpu": 1}},
    "BestEffort": {"limits": {"nvidia.com/gpu": 1}},
}


def gpu_pod(name, qos, image):
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": TEST_NS, "labels": {"e2e": "node"}},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "runtimeClassName": "nvidia",
            "hostNetwork": True,
            "automountServiceAccountToken": False,
            # busybox's sleep as PID 1 ignores SIGTERM: do not wait 30 s for it.
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "work", "image": image, "imagePullPolicy": "Never",
                            "resources": QOS_RESOURCES[qos]}],
        },
    }


class Node:
    def __init__(self, cluster, containerd, image):
        self.cluster = cluster
        self.containerd = containerd
        self.image = image

    def pid_of(self, namespace, name):
        """The host PID of the pod's first container, from containerd's task state."""
        pod = self.cluster.core.read_namespaced_pod(name, namespace)
        statuses = pod.status.container_statuses or []
        if not statuses or not statuses[0].container_id or not statuses[0].state.running:
            return None
        cid = statuses[0].container_id.split("://", 1)[1]
        path = f"{os.path.dirname(self.containerd)}/io.containerd.runtime.v2.task/k8s.io/{cid}/init.pid"
        return int(open(path).read()) if os.path.exists(path) else None

    def create(self, name, qos):
        self.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(gpu_pod(name, qos, self.image)))
        pid = wait_until(f"pod {name} ({qos}) Running in containerd", lambda: self.pid_of(TEST_NS, name), 60)
        pod = self.cluster.core.read_namespaced_pod(name, TEST_NS)
        if pod.status.qos_class != qos:
            fail(f"pod {name}: QoS class {pod.status.qos_class}, expected {qos}")
        cgroup = open(f"/proc/{pid}/cgroup").read()
        log(f"pod {name} ({qos}) on {pod.spec.node_name}, PID {pid}, "
            f"cgroup {re.search(r'memory:(.*)', cgroup).group(1)}")
        return pid

    def delete(self, name):
        self.cluster.kubectl("delete", "pod", "-n", TEST_NS, name, "--wait=true", "--timeout=60s")


def checkpoint_pods():
    """Pod UIDs in the kubelet's device-manager checkpoint."""
    data = yaml.safe_load(open("/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint"))
    return {e["PodUID"] for e in data["Data"]["PodDeviceEntries"] or []}


# --- the steps -------------------------------------------------------------------

def build_image(args):
    out = os.path.join(args.work, "kube-gpu-metrics-image.tar")
    passwd = os.path.join(args.work, "passwd")
    with open(passwd, "w") as f:
        f.write("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    started = time.monotonic()
    subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "oci_image.py"),
                    "--name", "kube-gpu-metrics.local/kube-gpu-metrics:e2e", "--out", out,
                    "--binary", f"{args.bin}:/usr/local/bin/kube-gpu-metrics",
                    "--binary", f"{args.agent_bin}:/usr/local/bin/kube-gpu-metrics-agent",
                    "--file", f"{passwd}:/etc/passwd:644",
                    "--user", "65532:65532", "--entrypoint", "kube-gpu-metrics",
                    "--import", args.containerd], check=True)
    log(f"image kube-gpu-metrics.local/kube-gpu-metrics:e2e ({os.path.getsize(out) // MIB} MiB) built and imported "
        f"in {time.monotonic() - started:.1f}s")


def deploy(args, cluster, procs):
    rendered = cluster.kubectl("kustomize", args.overlay).stdout
    base = os.path.join(args.work, "base.yaml")
    with open(base, "w") as f:
        f.write(rendered)
    ca_crt, crt, key = serving_cert(args.work)
    versions = {"v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io", "v1beta1.external.metrics.k8s.io"}
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"}))
    apiservices = apply_base(cluster, base, ca_crt, args.adapter_port, versions)
    started = time.monotonic()
    wait_until("the agent DaemonSet's pod Running and Ready on the real node", lambda: any(
        p.spec.node_name == NODE and p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        for p in cluster.core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/component=agent").items), 90)
    log(f"the agent runs as the DaemonSet's pod on {NODE}, Ready in {time.monotonic() - started:.1f}s "
        "(readinessProbe /readyz by the kubelet)")
    token = service_account_token(cluster, NS, ADAPTER_SA)
    kubeconfig = os.path.join(args.work, "adapter.kubeconfig")
    token_kubeconfig(kubeconfig, cluster.server, f"{args.pki}/ca.crt", token)
    procs.start("adapter", [args.bin, "adapter", "--secure-listen", f"127.0.0.1:{args.adapter_port}",
                            "--tls-cert-file", crt, "--tls-private-key-file", key, "--keda-listen", "off"],
                {"KUBECONFIG": kubeconfig, "KGM_LOG": "info"})
    for svc in apiservices:
        name = svc["metadata"]["name"]
        wait_until(f"APIService {name} Available=True", lambda: apiservice_available(cluster, name), 60)


def attribution(cluster, node, gpu):
    cluster.kubectl("create", "namespace", TEST_NS, check=False)
    # Exclusive: one pod holds a time-slice replica of the GPU, nobody else does.
    solo = node.create("solo", "Guaranteed")
    gpu.set(37, {solo: (37, 1000)})
    expect_everywhere(cluster, "exclusive", {"solo": ("exclusive", 37.0)})

    # Time-sliced: two pods on the same GPU's two replicas, split by their PIDs.
    tutor = node.create("tutor", "Burstable")
    gpu.set(80, {solo: (30, 1000), tutor: (50, 2000)})
    expect_everywhere(cluster, "time-sliced", {"solo": ("shared", 30.0), "tutor": ("shared", 50.0)})

    # Deleted: the kubelet keeps its checkpoint entry until the next Allocate.
    solo_uid = cluster.core.read_namespaced_pod("solo", TEST_NS).metadata.uid
    node.delete("solo")
    gpu.set(50, {tutor: (50, 2000)})
    expect_everywhere(cluster, "solo deleted", {"tutor": ("exclusive", 50.0)})
    stale = solo_uid in checkpoint_pods()
    log(f"the deleted pod's checkpoint entry {'stays' if stale else 'is gone'} until the next Allocate")

    # BestEffort takes the freed replica.
    batch = node.create("batch", "BestEffort")
    if solo_uid in checkpoint_pods():
        fail("the next Allocate left the deleted pod's checkpoint entry")
    gpu.set(65, {tutor: (20, 2000), batch: (45, 500)})
    expect_everywhere(cluster, "BestEffort beside Burstable", {"tutor": ("shared", 20.0), "batch": ("shared", 45.0)})

    # Recreated under the same name: a new UID and a new PID; the old PID is gone.
    node.delete("tutor")
    tutor = node.create("tutor", "Burstable")
    gpu.set(70, {tutor: (45, 2000), batch: (25, 500)})
    expect_everywhere(cluster, "tutor recreated", {"tutor": ("shared", 45.0), "batch": ("shared", 25.0)})
    return {"tutor": tutor, "batch": batch}


def watch_feed(expected, until, timeout, idle=()):
    """Polls /v1/pods every 0.2 s until `until()` is true, then until the feed equals `expected` again.

    Fails if any pod is ever given a value other than its expected one: a missing value (with a
    reason) is honest, and so is 0 for the pods in `idle`, whose processes are gone. Returns (the
    distinct states seen, seconds until `until()` held, seconds until the feed was right again)."""
    started = time.monotonic()
    seen, fault_done = [], None
    while time.monotonic() - started < timeout:
        try:
            state = feed_pods()
        except OSError as e:
            state = {"<agent>": str(e)}
        for pod, (_, value) in state.items():
            if pod in expected and isinstance(value, float) and value != expected[pod][1] \
                    and not (pod in idle and value == 0):
                fail(f"{pod} was given {value}, expected {expected[pod][1]} or no value: {state}")
        if state not in seen:
            seen.append(state)
        if fault_done is None and until():
            fault_done = time.monotonic() - started
        if fault_done is not None and state == expected:
            return seen, fault_done, time.monotonic() - started
        time.sleep(0.2)
    fail(f"the feed was not {expected} within {timeout}s; states seen: {seen}")


def describe(states, expected):
    other = [s for s in states if s != expected]
    if not other:
        return "every pod kept its value throughout"
    return "; then ".join(
        ", ".join(f"{pod}: {v[1] if isinstance(v, tuple) else v}" for pod, v in s.items())
        or "no pod series (the GPU served without pod labels)" for s in other)


def recovery(states, expected, back, took):
    if all(s == expected for s in states):
        return f"none needed (the restart took {back:.1f}s)"
    return f"back (healthz) {back:.1f}s after the restart began; every pod's value {took - back:.1f}s later"


def faults(args, cluster, node, gpu, pids):
    expected = {"tutor": ("shared", 45.0), "batch": ("shared", 25.0)}
    for component, what in (("kubelet", "the kubelet restarted (PodResources socket gone and back)"),
                            ("device-plugin", "the device plugin restarted")):
        restart = subprocess.Popen(["bash", args.cluster, "restart", component], stdout=subprocess.DEVNULL)
        states, back, took = watch_feed(expected, lambda: restart.poll() is not None, 120)
        if restart.returncode != 0:
            fail(f"hack/cluster.sh restart {component} failed")
        reliability.append((what, describe(states, expected), recovery(states, expected, back, took)))
        log(f"{what}: {describe(states, expected)}; recovery: {recovery(states, expected, back, took)}")

    # A container killed: the kubelet starts it again with a new PID, which the driver lists once it runs.
    old = pids["batch"]
    restart = {}

    def restarted_and_listed():
        if "pid" not in restart:
            pid = node.pid_of(TEST_NS, "batch")
            if pid and pid != old:
                restart["pid"], restart["after"] = pid, time.monotonic() - started
                gpu.set(70, {pids["tutor"]: (45, 2000), pid: (25, 500)})
        return "pid" in restart

    started = time.monotonic()
    os.kill(old, 9)
    gpu.set(70, {pids["tutor"]: (45, 2000)})
    states, _, took = watch_feed(expected, restarted_and_listed, 90, idle={"batch"})
    after = restart["after"]
    reliability.append(("a container killed and restarted (new PID)", describe(states, expected),
                        f"container back in {after:.1f}s; its value {took - after:.1f}s after the new PID was listed"))
    log(f"batch killed (PID {old}) and restarted (PID {restart['pid']}) in {after:.1f}s; "
        f"{describe(states, expected)}; value back {took - after:.1f}s later")
    pids["batch"] = restart["pid"]


def reference_deployment(args, cluster, gpu):
    for name in ("tutor", "batch"):
        cluster.kubectl("delete", "pod", "-n", TEST_NS, name, "--wait=true", "--timeout=60s")
    docs = [d for d in yaml.safe_load_all(open(f"{args.examples}/reasoning-suite-deployment.yaml")) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            container = spec["containers"][0]
            container["image"], container["imagePullPolicy"] = args.workload_image, "Never"
            # This machine has 2 cores: one core per replica would leave the second Pending.
            container["resources"]["requests"]["cpu"] = "100m"
            spec["hostNetwork"], spec["automountServiceAccountToken"] = True, False
            spec["terminationGracePeriodSeconds"] = 1
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    hpa = yaml.safe_load(open(f"{args.examples}/reasoning-gpu-hpa.yaml"))
    hpa["apiVersion"] = "autoscaling/v2beta2"

    def ready_pods():
        pods = cluster.core.list_namespaced_pod(APP_NS, label_selector="app=reasoning-suite").items
        return sorted(p.metadata.name for p in pods if not p.metadata.deletion_timestamp and any(
            c.type == "Ready" and c.status == "True" for c in p.status.conditions or []))

    first = wait_until("reasoning-suite's pod Ready (readinessProbe nvidia-smi -L)", ready_pods, 60)[0]
    node = Node(cluster, args.containerd, args.workload_image)
    pid = node.pid_of(APP_NS, first)
    gpu.set(95, {pid: (95, 4000)})
    wait_until("95 for the first pod through the API", lambda: api_pods(cluster, APP_NS, "app%3Dreasoning-suite")
               == {first: 95.0}, 30)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(hpa))
    started = time.monotonic()
    wait_until("the upstream HPA scaling reasoning-suite to 2",
               lambda: cluster.apps.read_namespaced_deployment_scale("reasoning-suite", APP_NS).spec.replicas == 2,
               6 * args.sync_period + 30)
    scaled = time.monotonic() - started
    pods = wait_until("the second pod Ready on the real node", lambda: (lambda r: r if len(r) == 2 else None)(ready_pods()), 90)
    second = [p for p in pods if p != first][0]
    ready = time.monotonic() - started
    placed = cluster.core.read_namespaced_pod(second, APP_NS).spec.node_name
    second_pid = node.pid_of(APP_NS, second)
    gpu.set(95, {pid: (55, 4000), second_pid: (40, 3000)})
    wait_until("both pods' values through the API", lambda: api_pods(cluster, APP_NS, "app%3Dreasoning-suite")
               == {first: 55.0, second: 40.0}, 30)
    log(f"the upstream HPA scaled reasoning-suite 1 → 2 {scaled:.1f}s after it was created at 95/70; pod {second} "
        f"started by containerd on {placed} (PID {second_pid}), Ready {ready:.1f}s after; its 40 % reached the API")
    cluster.kubectl("delete", "hpa", "-n", APP_NS, "reasoning-gpu-hpa")
    cluster.kubectl("delete", "deployment", "-n", APP_NS, "reasoning-suite", "--wait=true", "--timeout=60s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--cluster", required=True, help="hack/cluster.sh (restarts the kubelet and the device plugin)")
    p.add_argument("--pki", required=True)
    p.add_argument("--kubectl", required=True)
    p.add_argument("--bin", required=True)
    p.add_argument("--agent-bin", required=True)
    p.add_argument("--overlay", required=True, help="hack/e2e-node: deploy/base with the image and the fake NVML")
    p.add_argument("--examples", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--sync-period", type=float, required=True)
    p.add_argument("--adapter-port", type=int, default=18443)
    args = p.parse_args()
    args.containerd = os.environ["KGM_CLUSTER_CONTAINERD"]
    args.workload_image = os.environ["KGM_CLUSTER_WORKLOAD_IMAGE"]
    os.makedirs(args.work, exist_ok=True)

    cluster = Cluster(args)
    procs = Processes(args.work)
    gpu = FakeGpu(os.environ["KGM_CLUSTER_FAKE_NVML_CONFIG"])
    try:
        build_image(args)
        deploy(args, cluster, procs)
        node = Node(cluster, args.containerd, args.workload_image)
        pids = attribution(cluster, node, gpu)
        faults(args, cluster, node, gpu, pids)
        reference_deployment(args, cluster, gpu)
    except SystemExit as e:
        if e.code:
            print(f"--- last lines of adapter.log ---\n{procs.tail('adapter')}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
    log("reliability rows (fault | what the agent answered meanwhile | recovery):")
    for row in reliability:
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
