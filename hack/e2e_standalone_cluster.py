"""`standalone --cluster` against the real control plane of hack/cluster.sh,
and the scaling twin checked against the upstream controllers.

1. Bad input stops it before anything is registered: an unreachable API, a
   user without the rights it needs (the verb and resource named), a Node of
   the same name that is not its own.
2. The real scheduler respects the simulated nodes' taints and GPU capacity:
   three one-GPU pods without the `gpu` toleration, two slots on mainpc.
3. For each reference scenario, the example Deployment and HPA (as
   autoscaling/v2beta2) on the simulated nodes, with the load scripted:
   the real HPA scales, the real scheduler places, the pods start after their
   start-up time, the values reach the custom metrics API through
   kube-apiserver; on shutdown nothing is left. The same scenario through
   `simulate` at the same sync period, start-up time and behaviour: the
   sequences of replica counts and the placements must be equal. Prints the
   side-by-side table (BENCHMARKS.md, README).

Usage: e2e_standalone_cluster.py ARGS (see --help)
"""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_cluster import APP_NS, METRIC, Cluster, fail, service_account_token, token_kubeconfig, wait_until  # noqa: E402

OWNER = "kube-gpu-metrics.io/standalone"
NODES = ("mainpc", "pc2")
STARTUP = 10  # seconds, for both the real kubelets' pods and the twin's
# (scenario, seconds run, the load change the events are timed from)
SCENARIOS = [
    ("hack/scenarios/reasoning-step.yaml", 200, [30, 150]),
    ("hack/scenarios/reasoning-surge.yaml", 120, [30]),
    ("hack/scenarios/reasoning-scale-down.yaml", 160, [30, 90]),
]


def log(msg):
    print(f"[e2e-standalone-cluster] {msg}", flush=True)


class Standalone:
    """One `standalone --cluster` process."""

    def __init__(self, args, kubeconfig, name, *extra):
        self.log_path = os.path.join(args.work, f"{name}.log")
        self.out = open(self.log_path, "w")
        cmd = [args.bin, "standalone", "--cluster", kubeconfig, "--agent-port", "0", "--adapter-port", "0",
               "--keda-port", "0", "--ca-out", os.path.join(args.work, f"{name}-ca.pem"), *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "RUST_LOG": "info"})

    def finished(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            if self.finished(60) is None:
                self.proc.kill()
                fail(f"standalone did not stop within 60 s of SIGINT (log: {self.log_path})")
        return self.proc.returncode

    def output(self):
        self.out.flush()
        return open(self.log_path).read()


def registered(cluster):
    """What standalone registers that is there now."""
    found = []
    for node in NODES:
        if cluster.kubectl("get", "node", node, check=False).returncode == 0:
            found.append(f"node/{node}")
        if cluster.kubectl("get", "lease", node, "-n", "kube-node-lease", check=False).returncode == 0:
            found.append(f"lease/{node}")
    for kind, name in [("runtimeclass", "nvidia"), ("apiservice", "v1beta2.custom.metrics.k8s.io"),
                       ("apiservice", "v1beta1.custom.metrics.k8s.io"), ("apiservice", "v1beta1.external.metrics.k8s.io"),
                       ("clusterrole", "kube-gpu-metrics-standalone:metrics-reader")]:
        if cluster.kubectl("get", kind, name, check=False).returncode == 0:
            found.append(f"{kind}/{name}")
    namespace = cluster.kubectl("get", "namespace", "kube-gpu-metrics-standalone", "-o", "json", check=False)
    if namespace.returncode == 0 and json.loads(namespace.stdout)["status"]["phase"] != "Terminating":
        found.append("namespace/kube-gpu-metrics-standalone")
    return found


def refused(args, cluster, kubeconfig, name, expect):
    """standalone must exit non-zero with `expect` in its output, having registered nothing."""
    s = Standalone(args, kubeconfig, name, "--duration", "30s")
    code = s.finished(60)
    if code is None:
        s.stop()
        fail(f"{name}: standalone ran instead of refusing ({s.log_path})")
    out = s.output()
    if code == 0 or expect not in out:
        fail(f"{name}: expected an error with {expect!r}, got exit {code}:\n{out[-1500:]}")
    left = [x for x in registered(cluster) if x != "node/mainpc" or name != "node-clash"]
    if left:
        fail(f"{name}: registered {left} before refusing")
    error = next((line for line in out.splitlines() if expect in line), "").strip()
    log(f"refused ({name}): {error}")


def bad_input(args, cluster):
    bad = os.path.join(args.work, "unreachable.kubeconfig")
    config = yaml.safe_load(open(args.kubeconfig))
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    yaml.safe_dump(config, open(bad, "w"))
    refused(args, cluster, bad, "unreachable", "does not answer")

    cluster.kubectl("create", "serviceaccount", "standalone-limited", "-n", "default")
    token = service_account_token(cluster, "default", "standalone-limited")
    limited = os.path.join(args.work, "limited.kubeconfig")
    token_kubeconfig(limited, cluster.server, os.path.join(args.pki, "ca.crt"), token)
    refused(args, cluster, limited, "no-rights", "may not create nodes")
    cluster.kubectl("delete", "serviceaccount", "standalone-limited", "-n", "default")

    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({"apiVersion": "v1", "kind": "Node",
                                                              "metadata": {"name": "mainpc"}}))
    refused(args, cluster, args.kubeconfig, "node-clash", "node mainpc exists and is not a simulated node")
    if cluster.kubectl("get", "node", "mainpc", "-o", "jsonpath={.metadata.annotations}").stdout.find(OWNER) >= 0:
        fail("the clashing node was taken over")
    cluster.kubectl("delete", "node", "mainpc")


def pods_of(cluster, selector, namespace=APP_NS):
    return cluster.core.list_namespaced_pod(namespace, label_selector=selector).items


def capacity_and_taints(args, cluster):
    s = Standalone(args, args.kubeconfig, "capacity")
    wait_until("the simulated nodes Ready", lambda: all(node_ready(cluster, n) for n in NODES), 60)
    untolerated = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "untolerated", "namespace": "default"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "untolerated"}},
                 "template": {"metadata": {"labels": {"app": "untolerated"}}, "spec": {
                     "nodeSelector": {"nvidia.com/gpu.present": "true"},
                     "containers": [{"name": "main", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}},
    }
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(untolerated))

    def placed():
        pods = pods_of(cluster, "app=untolerated", "default")
        running = [p for p in pods if p.status.phase == "Running"]
        pending = [p for p in pods if p.status.phase == "Pending" and not p.spec.node_name]
        return (running, pending) if len(running) == 2 and len(pending) == 1 else None

    running, pending = wait_until("two pods Running and one Pending", placed, 60)
    if {p.spec.node_name for p in running} != {"mainpc"}:
        fail(f"a pod without the gpu toleration ran on {[p.spec.node_name for p in running]}")
    events = cluster.core.list_namespaced_event("default", field_selector=f"involvedObject.name={pending[0].metadata.name}").items
    why = next((e.message for e in events if e.reason == "FailedScheduling"), "")
    if "nvidia.com/gpu" not in why or "taint" not in why:
        fail(f"the pending pod's FailedScheduling does not name both reasons: {why!r}")
    log(f"scheduler: 2 untolerated pods on mainpc's 2 GPU slots, the third Pending: {why}")
    cluster.kubectl("delete", "deployment", "untolerated", "-n", "default", "--wait=true")
    if s.stop() != 0:
        fail(f"standalone exited {s.proc.returncode} on SIGINT ({s.log_path})")


def node_ready(cluster, name):
    try:
        node = cluster.core.read_node(name)
    except Exception:  # noqa: BLE001 (not yet registered)
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def apply_reference(args, cluster):
    cluster.kubectl("apply", "-f", f"{args.examples}/reasoning-suite-deployment.yaml")
    hpa = yaml.safe_load(open(f"{args.examples}/reasoning-gpu-hpa.yaml"))
    hpa["apiVersion"] = "autoscaling/v2beta2"  # v1.20 has no autoscaling/v2; the fields are the same
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(hpa))


def remove_reference(cluster):
    cluster.kubectl("delete", "hpa.v2beta2.autoscaling", "reasoning-gpu-hpa", "-n", APP_NS, "--ignore-not-found")
    cluster.kubectl("delete", "deployment", "reasoning-suite", "-n", APP_NS, "--ignore-not-found", "--wait=true")
    wait_until("the reference pods gone", lambda: not pods_of(cluster, "app=reasoning-suite"), 60)


def read_timeline(path, deployment="reasoning-suite"):
    return [r for r in csv.DictReader(open(path)) if r["deployment"] == deployment]


def decisions(rows, until, changes):
    """The replica counts in order, each with its time after the last load change; the node of each new pod;
    the nodes of the pods left at the end (which the ReplicaSet kept when it scaled down)."""
    counts, placements, seen, left = [], [], set(), []
    for r in rows:
        t = int(r["t"])
        if t >= until:
            break
        left = sorted(p.split("=")[0].split("@")[1] for p in filter(None, r["pods"].split(";")))
        desired = int(r["desired"])
        if desired and (not counts or counts[-1][0] != desired):
            since = max([c for c in changes if c <= t], default=0)
            counts.append((desired, t - since))
        for pod in filter(None, r["pods"].split(";")):
            name, node = pod.split("=")[0].split("@")
            if name not in seen:
                seen.add(name)
                placements.append(node)
    unserved = sum(float(r["unserved"]) for r in rows if changes[0] <= int(r["t"]) < until)
    return counts, placements, left, unserved


def scenario_run(args, cluster, scenario, seconds, changes, deployments):
    name = os.path.splitext(os.path.basename(scenario))[0]
    timeline = os.path.join(args.work, f"{name}-cluster.csv")
    s = Standalone(args, args.kubeconfig, name, "--scenario", scenario, "--deployments", deployments,
                   "--timeline", timeline)
    started = time.monotonic()
    # The Deployment asks for the nvidia RuntimeClass, which standalone creates: applied once it is there.
    wait_until("the simulated nodes Ready", lambda: all(node_ready(cluster, n) for n in NODES), 60)
    apply_reference(args, cluster)
    checks = {}

    def check():
        pods = pods_of(cluster, "app=reasoning-suite")
        status, served = cluster.raw(f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{APP_NS}/pods/*/{METRIC}"
                                     "?labelSelector=app%3Dreasoning-suite")
        values = {i["describedObject"]["name"]: i["value"] for i in served["items"]} if status == 200 else {}
        for p in pods:
            ready = next((c for c in p.status.conditions or [] if c.type == "Ready"), None)
            if p.spec.node_name and ready and ready.status == "True" and p.metadata.name not in checks:
                took = (ready.last_transition_time - p.status.start_time).total_seconds()
                checks[p.metadata.name] = (p.spec.node_name, took)
            if p.metadata.name in checks and values.get(p.metadata.name, "0") not in ("0", "0m"):
                checks[p.metadata.name] += ("served",) if len(checks[p.metadata.name]) == 2 else ()

    while time.monotonic() - started < seconds:
        if s.proc.poll() is not None:
            fail(f"{name}: standalone stopped (log: {s.log_path}):\n{s.output()[-1500:]}")
        try:
            check()
        except Exception as e:  # noqa: BLE001 (the API mid-change; checked again next second)
            log(f"{name}: check failed once ({e})")
        time.sleep(1)
    if s.stop() != 0:
        fail(f"{name}: standalone exited {s.proc.returncode} on SIGINT ({s.log_path})")
    left = registered(cluster)
    if left:
        fail(f"{name}: left behind on shutdown: {left}")
    left_pods = [p.metadata.name for p in cluster.core.list_pod_for_all_namespaces().items if p.spec.node_name in NODES]
    if left_pods:
        fail(f"{name}: pods still bound to the removed nodes: {left_pods}")
    remove_reference(cluster)
    return timeline, checks


def twin_run(args, scenario, seconds, deployments, hpa):
    name = os.path.splitext(os.path.basename(scenario))[0]
    out = os.path.join(args.work, f"{name}-twin")
    done = subprocess.run([args.bin, "simulate", "--hpa", hpa, "--scenario", scenario, "--deployments", deployments,
                           "--hpa-sync-period", f"{args.sync_period}s", "--duration", f"{seconds}s", "--runs", "1",
                           "--out", out], capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"simulate {name}: {done.stderr}")
    return os.path.join(out, "run-0.csv")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--pki", required=True)
    p.add_argument("--kubectl", required=True)
    p.add_argument("--bin", required=True)
    p.add_argument("--examples", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--sync-period", type=int, required=True, help="kube-controller-manager's HPA sync period, s")
    p.add_argument("--downscale-stabilization", type=int, required=True,
                   help="kube-controller-manager's --horizontal-pod-autoscaler-downscale-stabilization, s")
    p.add_argument("--table", help="write the comparison table (Markdown) here")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    cluster = Cluster(args)

    bad_input(args, cluster)
    capacity_and_taints(args, cluster)

    deployments = os.path.join(args.work, "deployments.yaml")
    yaml.safe_dump({"deployments": [{"name": "reasoning-suite", "startup": f"{STARTUP}s",
                                     "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}]},
                   open(deployments, "w"))
    # The twin reads the behaviour from the HPA: the controller's default
    # scale-down window is kube-controller-manager's flag, written out here.
    hpa = yaml.safe_load(open(f"{args.examples}/reasoning-gpu-hpa.yaml"))
    hpa["spec"]["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": args.downscale_stabilization}}
    twin_hpa = os.path.join(args.work, "twin-hpa.yaml")
    yaml.safe_dump(hpa, open(twin_hpa, "w"))

    table = ["| scenario | controllers | replicas (s after the last load change) | new pods on | pods at the end on "
             "| unserved %·s from the first change |",
             "|---|---|---|---|---|---|"]
    differences = []
    for scenario, seconds, changes in SCENARIOS:
        name = os.path.splitext(os.path.basename(scenario))[0]
        timeline, checks = scenario_run(args, cluster, scenario, seconds, changes, deployments)
        real = decisions(read_timeline(timeline), seconds, changes)
        twin = decisions(read_timeline(twin_run(args, scenario, seconds, deployments, twin_hpa)), seconds, changes)
        for who, (counts, placements, left, unserved) in [("upstream v1.20.2", real), ("twin (simulate)", twin)]:
            sequence = " → ".join(f"{n} ({t} s)" for n, t in counts)
            table.append(f"| {name} | {who} | {sequence} | {', '.join(placements)} | {', '.join(left)} "
                         f"| {unserved:,.0f} |")
        log(f"{name}: upstream {real[0]} on {real[1]}, left on {real[2]}; twin {twin[0]} on {twin[1]}, left on {twin[2]}")
        if [n for n, _ in real[0]] != [n for n, _ in twin[0]] or real[1:3] != twin[1:3]:
            differences.append(f"{name}: upstream {real[0]} on {real[1]}, left on {real[2]}; "
                               f"twin {twin[0]} on {twin[1]}, left on {twin[2]}")
        # The proof, from the real run: scaled up, onto a node that can take it, started after its start-up time,
        # its value served through kube-apiserver; scaled back down when the load fell.
        counts = [n for n, _ in real[0]]
        if max(counts) < 2:
            fail(f"{name}: the real HPA never scaled up: {real[0]}")
        new = {pod: c for pod, c in checks.items() if len(c) == 3}
        if len(new) < max(counts) - 1:
            fail(f"{name}: not every new pod became Ready with its value served: {checks}")
        early = {pod: c for pod, c in checks.items() if c[1] < STARTUP - 1 and pod in new}
        if early:
            fail(f"{name}: pods Ready before their start-up time: {early}")
        if name == "reasoning-scale-down" and counts[-1] != 1:
            fail(f"{name}: the real HPA did not scale back down: {real[0]}")
    for line in table:
        print(line, flush=True)
    if args.table:
        open(args.table, "w").write("\n".join(table) + "\n")
    if differences:
        fail("the twin's decisions differ from upstream's:\n  " + "\n  ".join(differences))
    log("the twin's replica sequences and placements equal upstream's in every scenario")


if __name__ == "__main__":
    main()
