"""Checks that the Helm chart's default render is the kustomize base.

Usage: e2e_helm.py KUSTOMIZE_BASE.yaml HELM_DEFAULT.yaml

- The same objects: kind, namespace and name, every one. The base's Namespace
  is the one exception: a chart installs into the release's namespace
  (`helm install --namespace kube-gpu-metrics --create-namespace`).
- The same specs: RBAC rules and bindings, APIServices, Services, the PDB,
  NetworkPolicies, the ServiceMonitor, the PrometheusRule's alerts, the
  dashboard's JSON, and the agent's and adapter's pod specs, once the image
  and the settings the chart states with their default values (names mode,
  intervals, source, pull policy) are set aside.
"""
import difflib
import json
import sys

import yaml

base_path, helm_path = sys.argv[1:3]


def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


def key(doc):
    m = doc["metadata"]
    return (doc["kind"], m.get("namespace", ""), m["name"])


base = {key(d): d for d in load(base_path) if d["kind"] != "Namespace"}
helm = {key(d): d for d in load(helm_path)}
problems = []
if set(base) != set(helm):
    problems.append(f"only in kustomize base: {sorted(set(base) - set(helm))}")
    problems.append(f"only in the chart: {sorted(set(helm) - set(base))}")

# Settings the chart writes out with their defaults, which the base leaves to
# the binary's own defaults.
CHART_DEFAULT_ENV = {
    "KGM_NAMES": "native",
    "KGM_DCGM_HOSTNAME_LABEL": "hostname",
    "KGM_INTERVAL": "1s",
    "KGM_POLL_INTERVAL": "1s",
    "KGM_SOURCE": "agents",
}


def pod_spec(doc):
    spec = yaml.safe_load(yaml.safe_dump(doc["spec"]["template"]["spec"]))
    for c in spec["containers"]:
        c.pop("image")
        c.pop("imagePullPolicy", None)
        env = c.get("env", [])
        for e in env:
            if e["name"] in CHART_DEFAULT_ENV and e.get("value") != CHART_DEFAULT_ENV[e["name"]]:
                problems.append(f"{key(doc)}: {e['name']}={e.get('value')} is not the default")
        c["env"] = [e for e in env if e["name"] not in CHART_DEFAULT_ENV]
    return spec


def comparable(doc):
    kind = doc["kind"]
    if kind in ("DaemonSet", "Deployment"):
        rest = {k: v for k, v in doc["spec"].items() if k != "template"}
        return rest, doc["spec"]["template"]["metadata"], pod_spec(doc)
    if kind == "ConfigMap":
        return doc["data"], doc["metadata"].get("annotations")
    if kind in ("ClusterRole", "Role"):
        return doc["rules"]
    if kind in ("ClusterRoleBinding", "RoleBinding"):
        return doc["roleRef"], doc["subjects"]
    if kind == "ServiceAccount":
        return doc.get("automountServiceAccountToken")
    return doc["spec"]


for k in sorted(set(base) & set(helm)):
    if comparable(base[k]) != comparable(helm[k]):
        dump = lambda d: json.dumps(comparable(d), indent=1, sort_keys=True).splitlines()
        diff = [l for l in difflib.unified_diff(dump(base[k]), dump(helm[k]), "base", "helm", n=1, lineterm="")]
        problems.append(f"{k} differs:\n" + "\n".join(diff[:20]))
    selector = lambda d: {n: v for n, v in d["metadata"].get("labels", {}).items() if n.startswith("app.kubernetes.io/")}
    for name, value in selector(base[k]).items():
        if selector(helm[k]).get(name) != value:
            problems.append(f"{k}: label {name}={value} missing in the chart")

for p in problems:
    print(f"e2e_helm: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"e2e_helm: the chart's default render has the base's {len(base)} objects, spec for spec")
