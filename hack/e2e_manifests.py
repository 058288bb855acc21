"""Checks the rendered manifests, the dashboard and the Dockerfile, and writes
every PromQL expression they hold for the Prometheus step of hack/e2e.sh.

Usage: e2e_manifests.py OUT_DIR RENDERED.yaml...

- CRD objects (ServiceMonitor, PodMonitor, PrometheusRule, cert-manager) have
  no schema in kubernetes-validate: their fields are checked here.
- The PrometheusRule groups go to OUT_DIR/rules.yml for `promtool check rules`.
- Alert expressions go to OUT_DIR/alert-exprs.txt, dashboard panel expressions
  (template variables expanded to match everything) to OUT_DIR/panel-exprs.txt.
"""
import json
import os
import re
import sys

import yaml

out_dir, rendered = sys.argv[1], sys.argv[2:]
problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


rule_groups = {}
kinds = {}
for path in rendered:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        kinds.setdefault(os.path.basename(path), set()).add(kind)
        where = f"{path}: {kind}/{name}"
        spec = doc.get("spec", {})
        if kind == "ServiceMonitor":
            need(spec.get("selector", {}).get("matchLabels"), f"{where}: spec.selector.matchLabels")
            need(all(e.get("port") for e in spec.get("endpoints", [])) and spec.get("endpoints"), f"{where}: endpoints need a port")
        elif kind == "PodMonitor":
            need(spec.get("selector", {}).get("matchLabels"), f"{where}: spec.selector.matchLabels")
            need(spec.get("podMetricsEndpoints"), f"{where}: podMetricsEndpoints")
        elif kind == "PrometheusRule":
            for group in spec.get("groups", []):
                need(group.get("name") and group.get("rules"), f"{where}: a group needs a name and rules")
                for rule in group.get("rules", []):
                    need(rule.get("alert") and rule.get("expr"), f"{where}: every rule needs alert and expr")
                    need(rule.get("labels", {}).get("severity") in ("warning", "critical"), f"{where}: {rule.get('alert')} severity")
                    need(rule.get("annotations", {}).get("summary"), f"{where}: {rule.get('alert')} summary")
                rule_groups[group["name"]] = group
        elif kind == "Certificate":
            need(spec.get("secretName") and spec.get("issuerRef", {}).get("name"), f"{where}: secretName and issuerRef")
        elif kind == "Issuer":
            need("selfSigned" in spec or "ca" in spec, f"{where}: selfSigned or ca")
        elif kind == "APIService":
            need(spec.get("service", {}).get("name") == "kube-gpu-metrics-adapter", f"{where}: service")
            need(("caBundle" in spec) != bool(spec.get("insecureSkipTLSVerify")) or doc["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from"),
                 f"{where}: either a CA bundle (or its injection) or insecureSkipTLSVerify")
        elif kind == "DaemonSet":
            pod = spec["template"]["spec"]
            c = pod["containers"][0]
            need(c["securityContext"].get("readOnlyRootFilesystem") is True, f"{where}: read-only root filesystem")
            need(c["securityContext"].get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities dropped")
            need(pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp")
            need(c.get("livenessProbe") and c.get("readinessProbe"), f"{where}: probes")
            need(any(m["mountPath"] == "/var/lib/kubelet/pod-resources" and m.get("readOnly") for m in c["volumeMounts"]), f"{where}: pod-resources read-only")
            need(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1, f"{where}: maxUnavailable 1")

# The prod overlay must verify TLS.
prod = [p for p in rendered if p.endswith("prod.yaml")]
for path in prod:
    text = open(path).read()
    need("insecureSkipTLSVerify" not in text, f"{path}: prod must not skip TLS verification")

with open(os.path.join(out_dir, "rules.yml"), "w") as f:
    yaml.safe_dump({"groups": list(rule_groups.values())}, f, sort_keys=False)
with open(os.path.join(out_dir, "alert-exprs.txt"), "w") as f:
    for group in rule_groups.values():
        for rule in group["rules"]:
            f.write(" ".join(rule["expr"].split()) + "\n")

# The dashboard: current schema, datasource as a variable, node/namespace/pod variables.
dashboard = json.load(open("dashboards/kube-gpu-metrics.json"))
need(dashboard.get("schemaVersion", 0) >= 39, "dashboard: schemaVersion")
variables = {v["name"]: v for v in dashboard["templating"]["list"]}
need(variables.get("datasource", {}).get("type") == "datasource", "dashboard: datasource variable")
for name in ("node", "namespace", "pod"):
    need(name in variables, f"dashboard: ${name} variable")
exprs = []
for panel in dashboard["panels"]:
    if panel["type"] == "row":
        continue
    need(panel.get("datasource", {}).get("uid") == "${datasource}", f"dashboard: panel {panel['title']} datasource")
    for target in panel.get("targets", []):
        expr = target["expr"]
        for var in ("node", "namespace", "pod"):
            expr = expr.replace(f"${var}", ".*")
        expr = expr.replace("$__rate_interval", "1m")
        need("$" not in expr, f"dashboard: unexpanded variable in {expr}")
        exprs.append(f"{panel['title']}\t{expr}")
with open(os.path.join(out_dir, "panel-exprs.txt"), "w") as f:
    f.write("\n".join(exprs) + "\n")

# The Dockerfile, checked the way a linter would: sources exist, non-root, an entrypoint.
dockerfile = open("Dockerfile").read()
for line in dockerfile.splitlines():
    m = re.match(r"COPY\s+(?!--from)(.*)", line)
    if m:
        for source in m.group(1).split()[:-1]:
            need(os.path.exists(source), f"Dockerfile: COPY source {source} is missing")
# What the build reads must be copied: files src/ embeds, and every target
# path the manifest names (cargo reads them all).
copied = [m.group(1).split()[:-1] for m in re.finditer(r"^COPY\s+(?!--from)(.*)$", dockerfile, re.M)]
copied = [c.rstrip("/") for group in copied for c in group]
under_copy = lambda path: any(path == c or path.startswith(c + "/") for c in copied)
for root, _, files in os.walk("src"):
    for name in files:
        if name.endswith(".rs"):
            source = os.path.join(root, name)
            for included in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', open(source).read()):
                path = os.path.normpath(os.path.join(root, included))
                need(under_copy(path), f"Dockerfile: {source} embeds {path}, which is not copied")
for path in re.findall(r'^path = "([^"]+)"', open("Cargo.toml").read(), re.M):
    need(under_copy(path), f"Dockerfile: Cargo.toml names {path}, which is not copied")
need(re.search(r"^USER 65532", dockerfile, re.M), "Dockerfile: final stage runs as non-root")
need('ENTRYPOINT ["kube-gpu-metrics"]' in dockerfile, "Dockerfile: ENTRYPOINT")
need("--platform=$BUILDPLATFORM" in dockerfile, "Dockerfile: cross-compiles on the build platform")

if problems:
    print("\n".join("FAIL " + p for p in problems))
    sys.exit(1)
print(f"manifests: {len(rendered)} renders, {sum(len(g['rules']) for g in rule_groups.values())} alert rules, {len(exprs)} panel queries checked")
