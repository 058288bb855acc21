#!/usr/bin/env bash
# End to end on loopback: the release binary's agents, checked by promtool and
# scraped by a real Prometheus, whose HTTP API must then return their series.
#
# Installs what it needs (Debian's prometheus package) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

log() { printf '[e2e] %s\n' "$*"; }
fail() { printf '[e2e] FAIL: %s\n' "$*" >&2; exit 1; }

install_tools() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v curl >/dev/null; then
        return
    fi
    log "installing prometheus (Debian) and curl"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus curl >/dev/null
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
log "building the release binary"
cargo build --release --quiet
bin=target/release/kube-gpu-metrics

# 1. standalone: two simulated nodes of the reference cluster.
"$bin" standalone --agent-port 19402 --seed 7 >"$work/standalone.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:19402/readyz
wait_http http://127.0.0.1:19403/readyz

# 2. the agent over the fake libnvidia-ml, with one GPU lost and one field unsupported.
gcc -shared -fPIC -O2 -o "$work/libnvidia-ml.so" hack/fake-nvml/fake_nvml.c -lpthread
cat >"$work/nvml.conf" <<'CONF'
gpu name="NVIDIA GeForce RTX 4090" uuid=GPU-e2e-4090 util=63 mem_util=41 mem_total=25757220864 mem_used=9663676416 temp=66 power_mw=351000 sm_clock_mhz=2520
gpu name="NVIDIA GeForce RTX 3060" uuid=GPU-e2e-3060 util=22 mem_util=12 mem_total=12884901888 mem_used=3221225472 temp=51 power_mw=101000 sm_clock_mhz=1777
gpu name="NVIDIA GeForce RTX 3060" uuid=GPU-e2e-lost util=5
error 1 power NOT_SUPPORTED
error 2 * GPU_IS_LOST
CONF
FAKE_NVML_CONFIG="$work/nvml.conf" "$bin" agent --gpu-source nvml --nvml-lib "$work/libnvidia-ml.so" \
    --listen 127.0.0.1:19412 --node-name e2e-node --no-attribution >"$work/agent.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:19412/readyz
sleep 1.5

# 3. promtool on every exposition, text format.
for port in 19402 19403 19412; do
    curl -fs "http://127.0.0.1:$port/metrics" >"$work/metrics-$port.txt"
    promtool check metrics <"$work/metrics-$port.txt" || fail "promtool check metrics on :$port"
done
log "promtool check metrics: clean on 3 agents"
# GPU 2 was lost before it could name itself: it is down, with no UUID or model.
grep -q '^nvidia_gpu_up{node="e2e-node",gpu="2"} 0$' "$work/metrics-19412.txt" || fail "lost GPU not reported down"
if grep -q '^nvidia_gpu_power_watts{node="e2e-node",gpu="1"' "$work/metrics-19412.txt"; then
    fail "unsupported power reported"
fi

# 4. a real Prometheus scrapes all three (it negotiates OpenMetrics, gzipped).
cat >"$work/prometheus.yml" <<'YAML'
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: kube-gpu-metrics
    static_configs:
      - targets: ["127.0.0.1:19402", "127.0.0.1:19403", "127.0.0.1:19412"]
YAML
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address=127.0.0.1:19090 >"$work/prometheus.log" 2>&1 &
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
expect_series 'nvidia_gpu_utilization_percent' 4
expect_series 'nvidia_gpu_up == 0' 1
expect_series 'nvidia_gpu_utilization_percent{node="e2e-node",model="NVIDIA GeForce RTX 4090"} == 63' 1
expect_series 'nvidia_gpu_pod_utilization_percent{namespace="ai-system-gpu",sharing="shared"}' 4
expect_series 'count by (node) (nvidia_gpu_power_watts)' 3
expect_series 'kube_gpu_metrics_scrapes_total{format="openmetrics"} > 0' 3

log "PASS"
