"""The adapter as deployed, against the real control plane of hack/cluster.sh,
with the upstream HPA controller scaling a real Deployment on our metric.

1. Server-side validation: `kubectl apply --dry-run=server` of every rendered
   manifest; objects whose API v1.20 does not serve are listed with the reason.
2. deploy/base applied for real, changed only where a loopback test must: the
   adapter's Service becomes ExternalName localhost (Endpoints refuse loopback
   addresses), the APIServices get the test CA and the adapter's port, and the
   adapter Deployment has no replicas (the adapter runs here, as its
   ServiceAccount, with that account's token).
3. Two GPU nodes (e2e_cluster_node.py) and the real agent on each, over the
   fake libnvidia-ml; the agents are found through their DaemonSet's pods.
4. The reference Deployment and HPA (deploy/examples, as autoscaling/v2beta2):
   the upstream HPA scales up and down through the aggregator, reports
   ScalingActive=False while the adapter is down, and recovers; with only
   v1beta1, and only v1beta2, registered; an External HPA; 403 for a
   ServiceAccount without the binding; an agent down; kube-apiserver
   restarted under the adapter's watchers.

Prints a RELIABILITY row per fault, with the times measured.

Usage: e2e_cluster.py ARGS (see --help)
"""
import argparse
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml
from kubernetes import client, config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_cluster_node import GpuNode  # noqa: E402
from e2e_proto import load_proto  # noqa: E402

NS = "kube-gpu-metrics"
APP_NS = "ai-system-gpu"
ADAPTER_SA = "kube-gpu-metrics-adapter"
SERVICE_DNS = f"kube-gpu-metrics-adapter.{NS}.svc"
METRIC = "nvidia_gpu_utilization_percent"
SELECTOR = "app%3Dreasoning-suite"
POD_QUERY = f"namespaces/{APP_NS}/pods/*/{METRIC}?labelSelector={SELECTOR}"
NODES = [("mainpc", "127.0.0.2", "GPU-4090e2e0-0000-4000-8000-000000000001", "NVIDIA GeForce RTX 4090", []),
         ("pc2", "127.0.0.3", "GPU-3060e2e0-0000-4000-8000-000000000002", "NVIDIA GeForce RTX 3060",
          [{"key": "gpu", "value": "true", "effect": "NoSchedule"}])]
# APIs v1.20 does not serve, and why their objects are left out.
UNSERVED = {
    ("policy/v1", "PodDisruptionBudget"): "policy/v1 is served from v1.21 (v1.20 has policy/v1beta1 only)",
    "monitoring.coreos.com": "a CRD of the Prometheus Operator, not installed here",
    "cert-manager.io": "a CRD of cert-manager, not installed here",
}

reliability = []


def log(msg):
    print(f"[e2e-cluster] {msg}", flush=True)


def fail(msg):
    print(f"[e2e-cluster] FAIL: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def wait_until(what, predicate, timeout, interval=0.5):
    """Polls `predicate` until it returns a truthy value; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 (shown if the wait times out)
            last = e
        time.sleep(interval)
    fail(f"{what}: not within {timeout}s" + (f" (last error: {last})" if last else ""))


def unserved_reason(doc):
    api = doc.get("apiVersion", "")
    return UNSERVED.get((api, doc.get("kind"))) or UNSERVED.get(api.split("/")[0])


def pem_b64(path):
    return base64.b64encode(open(path, "rb").read()).decode()


class Cluster:
    def __init__(self, args):
        self.args = args
        config.load_kube_config(args.kubeconfig)
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.server = yaml.safe_load(open(args.kubeconfig))["clusters"][0]["cluster"]["server"]
        self.tls = ssl.create_default_context(cafile=f"{args.pki}/ca.crt")
        self.tls.load_cert_chain(f"{args.pki}/admin.crt", f"{args.pki}/admin.key")

    def kubectl(self, *words, stdin=None, check=True, kubeconfig=None, extra=()):
        cmd = [self.args.kubectl, "--kubeconfig", kubeconfig or self.args.kubeconfig, *extra, *words]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
        if check and done.returncode != 0:
            fail(f"{' '.join(words)}: {done.stderr.strip()}")
        return done

    def raw(self, path):
        """GET through kube-apiserver as the admin: (status, parsed JSON or text)."""
        req = urllib.request.Request(self.server + path, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.tls, timeout=10) as r:
                status, data = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read().decode()
        return status, json.loads(data) if data.startswith("{") else data

    def hpa(self, name):
        _, data = self.raw(f"/apis/autoscaling/v2beta2/namespaces/{APP_NS}/horizontalpodautoscalers/{name}")
        return data

    def condition(self, hpa_name, kind):
        for c in (self.hpa(hpa_name).get("status") or {}).get("conditions") or []:
            if c["type"] == kind:
                return c
        return None

    def replicas(self):
        return self.apps.read_namespaced_deployment_scale("reasoning-suite", APP_NS).spec.replicas

    def running_pods(self):
        pods = self.core.list_namespaced_pod(APP_NS, label_selector="app=reasoning-suite").items
        return sorted((p.metadata.name, p.spec.node_name) for p in pods
                      if p.status.phase == "Running" and not p.metadata.deletion_timestamp)

    def rescales(self, hpa_name, to):
        """How many times the HPA logged SuccessfulRescale to `to` (repeats are one Event, counted)."""
        events = self.core.list_namespaced_event(APP_NS, field_selector=f"involvedObject.name={hpa_name}").items
        return sum(e.count or 1 for e in events
                   if e.reason == "SuccessfulRescale" and e.message.startswith(f"New size: {to};"))


class Processes:
    """The agents and the adapter, started and stopped by name."""

    def __init__(self, work):
        self.work = work
        self.running = {}

    def start(self, name, cmd, env=None):
        logfile = open(os.path.join(self.work, f"{name}.log"), "ab")
        self.running[name] = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT,
                                              env={**os.environ, **(env or {})})

    def stop(self, name):
        proc = self.running.pop(name, None)
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for name in list(self.running):
            self.stop(name)

    def tail(self, name, lines=20):
        path = os.path.join(self.work, f"{name}.log")
        return "".join(open(path, errors="replace").readlines()[-lines:]) if os.path.exists(path) else ""


def openssl(*words):
    subprocess.run(["openssl", *words], check=True, capture_output=True)


def serving_cert(work):
    """A test CA and the adapter's serving certificate for its Service's name."""
    ca_key, ca_crt = f"{work}/adapter-ca.key", f"{work}/adapter-ca.crt"
    key, csr, crt, ext = f"{work}/adapter.key", f"{work}/adapter.csr", f"{work}/adapter.crt", f"{work}/adapter.ext"
    openssl("req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-subj",
            "/CN=kube-gpu-metrics-e2e-ca", "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
            "-out", ca_crt)
    with open(ext, "w") as f:
        f.write(f"basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:{SERVICE_DNS},DNS:localhost\n")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-subj", f"/CN={SERVICE_DNS}", "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
            "-extfile", ext, "-out", crt)
    return ca_crt, crt, key


def service_account_token(cluster, namespace, name):
    def token():
        sa = cluster.core.read_namespaced_service_account(name, namespace)
        for ref in sa.secrets or []:
            secret = cluster.core.read_namespaced_secret(ref.name, namespace)
            if secret.data and "token" in secret.data:
                return base64.b64decode(secret.data["token"]).decode()
        return None
    return wait_until(f"a token for ServiceAccount {namespace}/{name}", token, 30)


def token_kubeconfig(path, server, ca_file, token):
    with open(path, "w") as f:
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": pem_b64(ca_file)}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        }, f)


# --- 1. server-side validation ---------------------------------------------

def validate_manifests(cluster, rendered):
    namespaces = set()
    for path in rendered:
        for doc in yaml.safe_load_all(open(path)):
            if doc and doc.get("kind") == "Namespace":
                namespaces.add(doc["metadata"]["name"])
            elif doc and doc.get("metadata", {}).get("namespace"):
                namespaces.add(doc["metadata"]["namespace"])
    for ns in sorted(namespaces):
        cluster.kubectl("create", "namespace", ns, check=False)
    for path in rendered:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        served, left_out = [], []
        for doc in docs:
            reason = unserved_reason(doc)
            if reason:
                left_out.append(f"{doc['kind']} {doc['metadata']['name']} ({doc['apiVersion']}): {reason}")
            else:
                served.append(doc)
        done = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(served), check=False)
        if done.returncode != 0:
            fail(f"kube-apiserver refused {os.path.basename(path)}:\n{done.stderr}")
        log(f"{os.path.basename(path)}: {len(served)} objects accepted by kube-apiserver (dry-run=server)")
        for line in left_out:
            log(f"  not served by v1.20, left out: {line}")


# --- 2. the base, as deployed -----------------------------------------------

def apply_base(cluster, base, ca_crt, port, versions):
    docs = []
    for doc in yaml.safe_load_all(open(base)):
        if not doc or unserved_reason(doc):
            continue
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Service" and name == "kube-gpu-metrics-adapter":
            # Endpoints refuse loopback: kube-apiserver dials localhost:<APIService port> instead.
            doc["spec"] = {"type": "ExternalName", "externalName": "localhost", "ports": doc["spec"]["ports"]}
        elif kind == "APIService":
            if doc["spec"]["version"] + "." + doc["spec"]["group"] not in versions:
                continue
            doc["spec"].pop("insecureSkipTLSVerify", None)
            doc["spec"]["caBundle"] = pem_b64(ca_crt)
            doc["spec"]["service"]["port"] = port
        elif kind == "Deployment" and name == "kube-gpu-metrics-adapter":
            doc["spec"]["replicas"] = 0  # the adapter runs on this host, as its ServiceAccount
        docs.append(doc)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    return [d for d in docs if d["kind"] == "APIService"]


def apiservice_available(cluster, name):
    status, data = cluster.raw(f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
    if status != 200:
        return False
    return any(c["type"] == "Available" and c["status"] == "True" for c in (data.get("status") or {}).get("conditions", []))


def set_apiservices(cluster, all_apiservices, names):
    """Registers exactly the APIServices `names` (the others are deleted)."""
    for svc in all_apiservices:
        name = svc["metadata"]["name"]
        if name in names:
            cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(svc))
        else:
            cluster.kubectl("delete", "apiservice", name, "--ignore-not-found")
    for name in names:
        wait_until(f"APIService {name} Available=True", lambda: apiservice_available(cluster, name), 60)


def served_pods(cluster, version="v1beta2"):
    status, data = cluster.raw(f"/apis/custom.metrics.k8s.io/{version}/{POD_QUERY}")
    if status != 200 or not isinstance(data, dict):
        return None
    return sorted((i["describedObject"]["name"], i["value"]) for i in data["items"])


# --- the fake GPUs ---------------------------------------------------------

def write_gpu(work, node, util):
    name, _, uuid, model, _ = node
    total = 25757220864 if "4090" in model else 12884901888
    line = (f'gpu name="{model}" uuid={uuid} util={util} mem_util={util // 2} mem_total={total} '
            f"mem_used={total // 4} temp=55 power_mw={100000 + util * 1000} sm_clock_mhz=2100\n")
    path = f"{work}/{name}/nvml.conf"
    with open(path + ".tmp", "w") as f:
        f.write("driver 550.54.14\ncuda 12040\n" + line)
    os.replace(path + ".tmp", path)


def set_load(work, utils):
    for node, util in zip(NODES, utils):
        write_gpu(work, node, util)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", required=True, help="the admin kubeconfig of hack/cluster.sh")
    p.add_argument("--cluster", required=True, help="hack/cluster.sh (restarts kube-apiserver)")
    p.add_argument("--pki", required=True, help="the cluster's PKI folder (cluster CA, front-proxy CA)")
    p.add_argument("--kubectl", required=True)
    p.add_argument("--bin", required=True, help="target/release/kube-gpu-metrics")
    p.add_argument("--agent-bin", required=True, help="target/release/kube-gpu-metrics-agent")
    p.add_argument("--nvml-lib", required=True, help="the fake libnvidia-ml.so")
    p.add_argument("--proto", required=True, help="the kubelet's podresources v1 api.proto")
    p.add_argument("--base", required=True, help="the rendered kustomize base")
    p.add_argument("--validate", nargs="*", default=[], help="rendered manifests to dry-run on the server")
    p.add_argument("--examples", required=True, help="deploy/examples")
    p.add_argument("--work", required=True)
    p.add_argument("--sync-period", type=float, required=True, help="the HPA sync period the cluster runs with (s)")
    p.add_argument("--keda-proto", required=True, help="KEDA's externalscaler.proto")
    p.add_argument("--adapter-port", type=int, default=18443)
    p.add_argument("--keda-port", type=int, default=18543)
    args = p.parse_args()

    cluster = Cluster(args)
    procs = Processes(args.work)
    nodes = []
    try:
        run(args, cluster, procs, nodes)
    except SystemExit as e:
        if e.code:
            for name in sorted(procs.running) + ["adapter"]:
                print(f"--- last lines of {name}.log ---\n{procs.tail(name)}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        for node in nodes:
            node.stop()
    log("reliability rows (fault | what the upstream HPA and the API did | recovery):")
    for row in reliability:
        print("| " + " | ".join(row) + " |", flush=True)


def run(args, cluster, procs, nodes):
    work, sync = args.work, args.sync_period
    # One HPA sync, plus the aggregator's discovery and our max-age, is how long a change takes to act.
    act = 4 * sync + 20

    validate_manifests(cluster, args.validate)

    # 2. The base as deployed, and the adapter as its ServiceAccount.
    ca_crt, crt, key = serving_cert(work)
    versions = {"v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io", "v1beta1.external.metrics.k8s.io"}
    apiservices = apply_base(cluster, args.base, ca_crt, args.adapter_port, versions)
    log(f"deploy/base applied; APIServices {sorted(a['metadata']['name'] for a in apiservices)} → localhost:{args.adapter_port}")
    token = service_account_token(cluster, NS, ADAPTER_SA)
    adapter_kubeconfig = f"{work}/adapter.kubeconfig"
    token_kubeconfig(adapter_kubeconfig, cluster.server, f"{args.pki}/ca.crt", token)
    adapter_cmd = [args.bin, "adapter", "--secure-listen", f"127.0.0.1:{args.adapter_port}", "--tls-cert-file", crt,
                   "--tls-private-key-file", key, "--keda-listen", f"127.0.0.1:{args.keda_port}"]

    def start_adapter():
        procs.start("adapter", adapter_cmd, {"KUBECONFIG": adapter_kubeconfig, "KGM_LOG": "info"})

    # 3. Two GPU nodes, the agent DaemonSet's pods on them, and the real agents.
    proto = load_proto(args.proto)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"}))
    for name, ip, uuid, _, taints in NODES:
        os.makedirs(f"{work}/{name}", exist_ok=True)
        node = GpuNode(cluster.core, name, ip, [uuid], taints, work, proto)
        node.start()
        nodes.append(node)
    set_load(work, [40, 40])
    for node, (name, ip, _, _, _) in zip(nodes, NODES):
        procs.start(f"agent-{name}", [
            args.agent_bin, "--gpu-source", "nvml", "--nvml-lib", args.nvml_lib, "--node-name", name,
            "--listen", f"{ip}:9402", "--pod-resources-socket", node.socket, "--kubelet-checkpoint", node.checkpoint,
        ], {"FAKE_NVML_CONFIG": f"{work}/{name}/nvml.conf"})
    wait_until("the DaemonSet's agent pods Running on both nodes", lambda: sorted(
        p.spec.node_name for p in cluster.core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/component=agent").items
        if p.status.phase == "Running") == ["mainpc", "pc2"], 60)
    start_adapter()
    for svc in apiservices:
        name = svc["metadata"]["name"]
        wait_until(f"APIService {name} Available=True", lambda: apiservice_available(cluster, name), 60)
    log("every APIService Available=True")

    # Discovery and the three query shapes, through kube-apiserver.
    for group in ("custom.metrics.k8s.io/v1beta2", "custom.metrics.k8s.io/v1beta1", "external.metrics.k8s.io/v1beta1"):
        data = wait_until(f"discovery of {group}", lambda: (lambda r: r[0] == 200 and r[1])(cluster.raw(f"/apis/{group}")), 20)
        names = {r["name"] for r in data["resources"]}
        if group.startswith("custom") and f"pods/{METRIC}" not in names:
            fail(f"discovery of {group} lacks pods/{METRIC}: {sorted(names)}")
    log("discovery answers through the aggregator for all three group versions")

    deployment = [d for d in yaml.safe_load_all(open(f"{args.examples}/reasoning-suite-deployment.yaml")) if d]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(deployment))
    pods = wait_until("reasoning-suite's pod Running", lambda: cluster.running_pods(), 60)
    log(f"reasoning-suite scheduled by kube-scheduler: {pods}")
    items = wait_until("the pod's value through the aggregator", lambda: served_pods(cluster), 20)
    if [n for n, _ in items] != [n for n, _ in pods] or items[0][1] != "40":
        fail(f"pods by selector: {items}, expected {pods} at 40")
    status, node_value = cluster.raw(f"/apis/custom.metrics.k8s.io/v1beta2/nodes/mainpc/{METRIC}")
    if status != 200 or node_value["items"][0]["value"] != "40":
        fail(f"node query: {status} {node_value}")
    status, external = cluster.raw("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/nvidia_gpu_weighted_utilization_percent")
    if status != 200 or external["items"][0]["value"] != "40":
        fail(f"external query: {status} {external}")
    log("pods by selector, node and external answer through kube-apiserver (40 %)")

    # 4. The upstream HPA.
    hpa = yaml.safe_load(open(f"{args.examples}/reasoning-gpu-hpa.yaml"))
    hpa["apiVersion"] = "autoscaling/v2beta2"  # v1.20 has no autoscaling/v2; the fields are the same
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(hpa))
    hpa_name = hpa["metadata"]["name"]

    def active():
        c = cluster.condition(hpa_name, "ScalingActive")
        return c if c and c["status"] == "True" else None

    c = wait_until("ScalingActive=True", active, act)
    if c["reason"] != "ValidMetricFound":
        fail(f"ScalingActive: {c}")
    log(f"HPA {hpa_name}: ScalingActive=True/ValidMetricFound at 40/70, {cluster.replicas()} replica")

    def scale(utils, to, what):
        before = cluster.rescales(hpa_name, to)
        set_load(work, utils)
        started = time.monotonic()
        wait_until(f"{what}: the HPA scales to {to}", lambda: cluster.replicas() == to, act + 30)
        wait_until(f"{what}: a SuccessfulRescale event to {to}", lambda: cluster.rescales(hpa_name, to) > before, 10)
        wait_until(f"{what}: {to} pod(s) Running", lambda: len(cluster.running_pods()) == to, 60)
        log(f"{what}: scaled to {to} in {time.monotonic() - started:.1f}s, pods {cluster.running_pods()}")

    scale([95, 95], 2, "load 95/70")
    wait_until("both pods' values through the aggregator",
               lambda: (lambda s: s and len(s) == 2 and all(v == "95" for _, v in s))(served_pods(cluster)), 20)
    scale([20, 20], 1, "load 20/70")

    # The adapter down, and back.
    procs.stop("adapter")
    stopped = time.monotonic()

    def inactive():
        c = cluster.condition(hpa_name, "ScalingActive")
        return c if c and c["status"] == "False" else None

    c = wait_until("ScalingActive=False while the adapter is down", inactive, act)
    down_after = time.monotonic() - stopped
    if c["reason"] != "FailedGetPodsMetric":
        fail(f"ScalingActive while the adapter is down: {c}")
    log(f"adapter down: ScalingActive=False/{c['reason']} after {down_after:.1f}s; replicas kept at {cluster.replicas()}")
    start_adapter()
    restarted = time.monotonic()
    wait_until("the API through the aggregator once the adapter is back", lambda: served_pods(cluster), act)
    api_back = time.monotonic() - restarted
    wait_until("ScalingActive=True once the adapter is back", active, act)
    hpa_back = time.monotonic() - restarted
    log(f"adapter back: the API answers after {api_back:.1f}s, ScalingActive=True after {hpa_back:.1f}s")
    reliability.append((
        "Adapter stopped and restarted under the real HPA (v1.20 control plane)",
        f"ScalingActive=False/FailedGetPodsMetric after {down_after:.1f}s, replicas kept; no value served",
        f"API through the aggregator {api_back:.1f}s after the restart, HPA ScalingActive=True after {hpa_back:.1f}s "
        f"(sync period {sync:g}s)"))

    # Only v1beta1, then only v1beta2: the HPA finds what is served by discovery at each sync.
    set_apiservices(cluster, apiservices, {"v1beta1.custom.metrics.k8s.io", "v1beta1.external.metrics.k8s.io"})
    wait_until("v1beta2 gone from discovery", lambda: cluster.raw("/apis/custom.metrics.k8s.io/v1beta2")[0] == 404, 30)
    scale([95, 95], 2, "only v1beta1 registered, load 95/70")
    set_apiservices(cluster, apiservices, {"v1beta2.custom.metrics.k8s.io", "v1beta1.external.metrics.k8s.io"})
    wait_until("v1beta1 gone from discovery", lambda: cluster.raw("/apis/custom.metrics.k8s.io/v1beta1")[0] == 404, 30)
    scale([20, 20], 1, "only v1beta2 registered, load 20/70")
    set_apiservices(cluster, apiservices, versions)

    # An agent down: the pod on its node has no value within max-age, and the HPA says so.
    (pod_name, pod_node), = cluster.running_pods()
    agent = f"agent-{pod_node}"
    agent_cmd = procs.running[agent].args
    procs.stop(agent)
    stopped = time.monotonic()
    c = wait_until(f"ScalingActive=False with {agent} down", inactive, act)
    agent_down_after = time.monotonic() - stopped
    if served_pods(cluster):
        fail(f"{pod_name} is still served with {agent} down: {served_pods(cluster)}")
    log(f"{agent} down: ScalingActive=False/{c['reason']} after {agent_down_after:.1f}s")
    procs.start(agent, agent_cmd, {"FAKE_NVML_CONFIG": f"{work}/{pod_node}/nvml.conf"})
    restarted = time.monotonic()
    wait_until(f"ScalingActive=True once {agent} is back", active, act)
    agent_back = time.monotonic() - restarted
    log(f"{agent} back: ScalingActive=True after {agent_back:.1f}s")
    reliability.append((
        f"The agent on the node of the only pod stopped ({pod_node}), real HPA",
        f"the pod dropped out of the API (max-age); ScalingActive=False/{c['reason']} after {agent_down_after:.1f}s; "
        "replicas kept",
        f"ScalingActive=True {agent_back:.1f}s after the agent restarted"))

    # kube-apiserver restarted under the adapter's watchers, then the only pod replaced: once the
    # watchers have re-listed, the API lists exactly the running pods; at no time is a pod served
    # with another node's value (61 % is mainpc's GPU, 23 % pc2's).
    set_load(work, [61, 23])
    node_value = {"mainpc": "61", "pc2": "23"}
    wait_until("the new load served", lambda: served_pods(cluster) == [(pod_name, node_value[pod_node])], 20)
    placed = {pod_name: pod_node}
    stopped = time.monotonic()
    subprocess.run(["bash", args.cluster, "restart", "kube-apiserver"], check=True)
    wait_until("kube-apiserver ready again", lambda: cluster.raw("/readyz")[0] == 200, 60)
    restarted = time.monotonic()
    outage = restarted - stopped
    cluster.core.delete_namespaced_pod(pod_name, APP_NS)
    misplaced = []

    def resynced():
        running = cluster.running_pods()
        placed.update(running)
        served = served_pods(cluster) or []
        misplaced.extend((n, v) for n, v in served if n not in placed or node_value[placed[n]] != v)
        consistent = [n for n, _ in served] == [n for n, _ in running] and pod_name not in dict(running)
        return (running, served) if running and consistent else None

    running, served = wait_until("the API's running pods served with their own node's values, the deleted one gone",
                                 resynced, 60)
    resync = time.monotonic() - restarted
    if misplaced:
        fail(f"served with another node's value, or never placed by the API: {sorted(set(misplaced))}")
    log(f"kube-apiserver restarted ({outage:.1f}s away): the adapter served exactly the running pods {served} "
        f"{resync:.1f}s after /readyz")
    reliability.append((
        "kube-apiserver restarted under the adapter's watchers (SIGTERM, then SIGKILL after 10 s), then the only pod "
        "deleted",
        "watchers re-listed after their backoff; the deleted pod left the API; the running pods were served with their "
        "own node's value, polled every 0.5 s throughout: never a pod with another node's value or one the API did not "
        "place",
        f"kube-apiserver away {outage:.1f}s; {resync:.1f}s from its /readyz to the API listing exactly the running "
        "pods"))

    # 403 for a ServiceAccount without the binding: from kube-apiserver, and from our adapter's
    # SubjectAccessReview when the request reaches it with that user (as the aggregator sends it).
    cluster.kubectl("create", "serviceaccount", "unbound", "-n", "default", check=False)
    unbound_kubeconfig = f"{work}/unbound.kubeconfig"
    token_kubeconfig(unbound_kubeconfig, cluster.server, f"{args.pki}/ca.crt",
                     service_account_token(cluster, "default", "unbound"))
    done = cluster.kubectl("get", "--raw", f"/apis/custom.metrics.k8s.io/v1beta2/{POD_QUERY}", check=False,
                           kubeconfig=unbound_kubeconfig)
    if done.returncode == 0 or "Forbidden" not in done.stderr and "forbidden" not in done.stderr:
        fail(f"an unbound ServiceAccount was not refused: {done.stdout} {done.stderr}")
    ctx = ssl.create_default_context(cafile=ca_crt)
    ctx.load_cert_chain(f"{args.pki}/front-proxy-client.crt", f"{args.pki}/front-proxy-client.key")
    ctx.check_hostname = False

    def direct(user):
        req = urllib.request.Request(
            f"https://127.0.0.1:{args.adapter_port}/apis/custom.metrics.k8s.io/v1beta2/{POD_QUERY}",
            headers={"X-Remote-User": user, "X-Remote-Group": "system:serviceaccounts"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, body = direct("system:serviceaccount:default:unbound")
    if status != 403 or body.get("kind") != "Status" or body.get("reason") != "Forbidden":
        fail(f"the adapter let an unbound ServiceAccount read: {status} {body}")
    status, body = direct("system:serviceaccount:kube-system:horizontal-pod-autoscaler")
    if status != 200:
        fail(f"the adapter refused the HPA's ServiceAccount: {status} {body}")
    log("an unbound ServiceAccount gets 403 through the aggregator, and 403 (Status Forbidden) from the adapter's "
        "SubjectAccessReview; the HPA's ServiceAccount gets 200")

    # The external metric through an HPA of type External. It starts from one replica at a low load,
    # whatever the steps before left (the pod replaced under a restarting kube-apiserver can leave two):
    # otherwise it may already stand at its maxReplicas, and no rescale to 2 can be seen.
    cluster.kubectl("delete", "hpa.v2beta2.autoscaling", hpa_name, "-n", APP_NS)
    set_load(work, [20, 20])
    cluster.kubectl("scale", "deployment", "reasoning-suite", "-n", APP_NS, "--replicas", "1")
    wait_until("one reasoning-suite pod Running before the External HPA", lambda: len(cluster.running_pods()) == 1, 60)
    external_hpa = {
        "apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "reasoning-gpu-external-hpa", "namespace": APP_NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "reasoning-suite"},
            "minReplicas": 1, "maxReplicas": 2,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": "nvidia_gpu_weighted_utilization_percent"},
                "target": {"type": "Value", "value": "60"}}}],
        },
    }
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(external_hpa))
    hpa_name = "reasoning-gpu-external-hpa"
    c = wait_until("External HPA ScalingActive=True", active, act)
    if c["reason"] != "ValidMetricFound":
        fail(f"External HPA ScalingActive: {c}")
    scale([95, 95], 2, "External HPA, pool at 95/60")
    log("the External HPA read nvidia_gpu_weighted_utilization_percent and scaled")

    keda_scaler(args, cluster, ca_crt, hpa_name)


SCALED_OBJECT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {"group": "keda.sh", "scope": "Namespaced",
             "names": {"plural": "scaledobjects", "singular": "scaledobject", "kind": "ScaledObject"},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def keda_scaler(args, cluster, ca_crt, hpa_name):
    """KEDA's scaler as deployed: the ScaledObject and its target read with the adapter's own RBAC,
    called by a client generated from KEDA's proto. (KEDA's CRD only: its operator is not here.)"""
    import grpc
    pb, rpc = load_proto(args.keda_proto)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(SCALED_OBJECT_CRD))
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "reasoning-suite", "namespace": APP_NS},
        "spec": {"scaleTargetRef": {"name": "reasoning-suite"}, "minReplicaCount": 0, "triggers": [
            {"type": "external", "metadata": {"scalerAddress": f"{SERVICE_DNS}:9443", "targetValue": "70"}}]},
    }
    wait_until("the ScaledObject CRD served", lambda: cluster.kubectl(
        "apply", "-f", "-", stdin=yaml.safe_dump(scaled_object), check=False).returncode == 0, 30)
    channel = grpc.secure_channel(
        f"127.0.0.1:{args.keda_port}", grpc.ssl_channel_credentials(open(ca_crt, "rb").read()),
        options=[("grpc.ssl_target_name_override", SERVICE_DNS)])
    scaler = rpc.ExternalScalerStub(channel)

    def ref(**metadata):
        return pb.ScaledObjectRef(name="reasoning-suite", namespace=APP_NS, scalerMetadata={"targetValue": "70", **metadata})

    # No podSelector: the Deployment's own selector, read through its /scale.
    # (A pod that just started counts once the adapter has its first value.)
    def summed():
        pods = cluster.running_pods()
        answer = scaler.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(), metricName=METRIC), timeout=10)
        return [round(v.metricValueFloat) for v in answer.metricValues] == [95 * len(pods)]

    wait_until("KEDA GetMetrics: the sum over the Deployment's own pods (95 each)", summed, 20)
    # A typo in podSelector while the Deployment runs: an error naming it, never "inactive".
    try:
        scaler.IsActive(ref(podSelector="app=reasoning-suit"), timeout=10)
        fail("KEDA IsActive answered for a podSelector that matches no pod of a running Deployment")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION or "Deployment reasoning-suite has" not in e.details():
            fail(f"KEDA IsActive with a podSelector typo: {e.code()} {e.details()}")
    # At zero replicas, inactive is the right answer.
    cluster.kubectl("delete", "hpa.v2beta2.autoscaling", hpa_name, "-n", APP_NS)
    cluster.kubectl("scale", "deployment/reasoning-suite", "-n", APP_NS, "--replicas=0")
    wait_until("reasoning-suite at zero pods", lambda: not cluster.running_pods(), 30)
    wait_until("KEDA IsActive false at zero replicas",
               lambda: scaler.IsActive(ref(), timeout=10).result is False, 20)
    log("KEDA: podSelector defaulted from the target's /scale (sum of the pods' values), a typo refused with "
        "FAILED_PRECONDITION naming the Deployment's replicas, inactive at zero replicas")


if __name__ == "__main__":
    main()
