"""The migration path, checked end to end: agents with dcgm-exporter's names,
a real Prometheus scraping them, `standalone --prometheus-url` serving the
custom metrics API from that Prometheus, and a plain adapter polling the same
agents directly.

Usage: e2e_migration.py KUBECONFIG PROMETHEUS_URL DIRECT_ADAPTER_URL

- The HPA's selector query (kubectl, through the Prometheus-backed adapter)
  answers with the value of DCGM_FI_DEV_GPU_UTIL in Prometheus.
- Every node's nvidia_gpu_utilization_percent agrees between the
  Prometheus-backed adapter and the adapter polling the agents.
"""
import base64
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import yaml

kubeconfig, prometheus, direct = sys.argv[1:4]
kubectl = os.environ["KUBECTL"]
HPA_QUERY = ("/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/*/nvidia_gpu_utilization_percent"
             "?labelSelector=app%3Dreasoning-suite")
NODES = "/apis/custom.metrics.k8s.io/v1beta2/nodes/*/nvidia_gpu_utilization_percent"


def quantity(text):
    scale = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    return float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text)


def via_kubectl(path):
    out = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "get", "--raw", path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def promql(query):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    body = json.load(urllib.request.urlopen(url, timeout=5))
    assert body["status"] == "success", body
    return {r["metric"].get("pod", ""): float(r["value"][1]) for r in body["data"]["result"]}


# The direct adapter trusts standalone's CA as its front-proxy CA: present
# standalone's client certificate, as kube-apiserver's aggregator would.
config = yaml.safe_load(open(kubeconfig))
user = config["users"][0]["user"]
files = tempfile.mkdtemp()
for name, key in (("client.crt", "client-certificate-data"), ("client.key", "client-key-data")):
    with open(os.path.join(files, name), "wb") as f:
        f.write(base64.b64decode(user[key]))
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the direct adapter's certificate is self-signed
context.load_cert_chain(os.path.join(files, "client.crt"), os.path.join(files, "client.key"))


def via_direct(path):
    request = urllib.request.Request(direct + path, headers={"X-Remote-User": "e2e", "X-Remote-Group": "e2e"})
    return json.load(urllib.request.urlopen(request, context=context, timeout=5))


def nodes(body):
    return {i["describedObject"]["name"]: quantity(i["value"]) for i in body["items"]}


deadline = time.time() + 30
while True:
    try:
        hpa = via_kubectl(HPA_QUERY)
        from_prometheus, from_agents = nodes(via_kubectl(NODES)), nodes(via_direct(NODES))
        dcgm = promql('max by (pod) (DCGM_FI_DEV_GPU_UTIL{pod=~"reasoning-suite-.+"})')
        if hpa["items"] and len(from_prometheus) == 2 and len(from_agents) == 2 and dcgm:
            break
    except (subprocess.CalledProcessError, OSError) as e:
        last = e
    if time.time() > deadline:
        sys.exit(f"migration: no values within 30 s ({locals().get('last')})")
    time.sleep(0.5)

(item,) = hpa["items"]
pod, value = item["describedObject"]["name"], quantity(item["value"])
assert value == dcgm[pod], f"HPA query {pod}={value}, DCGM_FI_DEV_GPU_UTIL in Prometheus {dcgm[pod]}"
assert item["windowSeconds"] == 15, item
for node, v in from_agents.items():
    assert abs(from_prometheus[node] - v) < 1e-9, f"node {node}: Prometheus path {from_prometheus[node]}, agents {v}"
print(f"migration: HPA query {pod} = {value:g} = DCGM_FI_DEV_GPU_UTIL in Prometheus; "
      f"nodes via Prometheus {from_prometheus} = via the agents {from_agents}")
