#!/usr/bin/env bash
# A/B of two agent binaries in one run, as a user feels them: CPU and RSS
# at 1 s sampling while Prometheus scrapes gzipped OpenMetrics every 15 s,
# and scrape throughput beside the static-bytes server, plain and gzipped.
#
#   hack/ab-agent.sh BASELINE_AGENT CANDIDATE_AGENT [SECONDS] [ROUNDS]
#
# Both agents run the simulated node of the throughput bench (8 RTX 4090s,
# 16 pods) at the same time, pinned to CPU 0, so that the machine's noise
# falls on both alike. CPU is the sum of every thread's run time from
# /proc/<pid>/task/*/schedstat (nanoseconds, where utime and stime count
# 10 ms ticks). Then wrk (-t1 -c8, 3 s a run, on CPU 1) loads each agent and
# the static-bytes server (hack/static_server.rs, serving the candidate's
# body) in turn, ROUNDS times, plain and with Accept-Encoding: gzip, and the
# medians are compared. Writes Markdown tables to stdout. Needs wrk, curl
# and taskset.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 2 ] || { echo "usage: $0 BASELINE_AGENT CANDIDATE_AGENT [SECONDS] [ROUNDS]" >&2; exit 2; }
baseline=$1 candidate=$2 seconds=${3:-120} rounds=${4:-3}
command -v wrk >/dev/null || { echo "$0: wrk is missing (apt-get install wrk)" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --quiet --example static-server
if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0) load_cpu=(taskset -c 1); else server_cpu=() load_cpu=(); fi
gpus=rtx4090,rtx4090,rtx4090,rtx4090,rtx4090,rtx4090,rtx4090,rtx4090
prometheus_headers=(-H 'Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5' -H 'Accept-Encoding: gzip')

started=0
start_agent() { # binary port; sets $started to its PID
    "${server_cpu[@]}" "$1" --gpu-source sim --sim-gpus "$gpus" --listen "127.0.0.1:$2" --node-name ab \
        --log warn >"$work/agent-$2.log" 2>&1 &
    started=$!
    pids+=($started)
}
# Starts the baseline on :19730 and the candidate on :19731 (PIDs $a and $b)
# and waits until both answer.
start_both() {
    start_agent "$baseline" 19730
    a=$started
    start_agent "$candidate" 19731
    b=$started
    wait_http http://127.0.0.1:19730/readyz
    wait_http http://127.0.0.1:19731/readyz
}
wait_http() { for _ in $(seq 300); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$1 did not answer" >&2; exit 1; }
run_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ns += $1} END {printf "%.0f", ns}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

echo "| Round | Agent | CPU, µs per second | RSS after ${seconds} s |"
echo "| --- | --- | --- | --- |"
for ((round = 1; round <= rounds; round++)); do
    start_both
    sleep 5
    a0=$(run_ns "$a") b0=$(run_ns "$b")
    for ((t = 0; t < seconds; t++)); do
        if ((t % 15 == 0)); then
            for port in 19730 19731; do curl -fs "${prometheus_headers[@]}" -o /dev/null "http://127.0.0.1:$port/metrics"; done
        fi
        sleep 1
    done
    a1=$(run_ns "$a") b1=$(run_ns "$b")
    for pair in "baseline $a $a0 $a1" "candidate $b $b0 $b1"; do
        read -r name pid from to <<<"$pair"
        awk -v r="$round" -v n="$name" -v ns=$((to - from)) -v s="$seconds" -v kib="$(rss_kib "$pid")" \
            'BEGIN {printf "| %d | %s | %.1f | %.1f MiB |\n", r, n, ns / s / 1000, kib / 1024}'
    done
    kill "$a" "$b"
    wait "$a" "$b" 2>/dev/null || true
done

# Throughput: each agent, then the static-bytes server, plain and gzipped.
start_both
sleep 1.5
curl -fs http://127.0.0.1:19731/metrics >"$work/plain"
curl -fs "${prometheus_headers[@]}" http://127.0.0.1:19731/metrics >"$work/gzip"
"${server_cpu[@]}" target/release/examples/static-server --listen 127.0.0.1:19732 --body "$work/plain" 2>/dev/null &
pids+=($!)
"${server_cpu[@]}" target/release/examples/static-server --listen 127.0.0.1:19733 --body "$work/gzip" \
    --content-type 'application/openmetrics-text; version=1.0.0; charset=utf-8' --content-encoding gzip 2>/dev/null &
pids+=($!)
wait_http http://127.0.0.1:19732/
wait_http http://127.0.0.1:19733/
rps() { "${load_cpu[@]}" wrk -t1 -c8 -d3s "$@" | awk '/^Requests\/sec/ {print $2}'; }
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo
echo "wrk -t1 -c8, 3 s a run, the three servers in turn, $rounds rounds; medians:"
echo
echo "| Body | baseline req/s | candidate req/s | static-bytes req/s | baseline ÷ static | candidate ÷ static |"
echo "| --- | --- | --- | --- | --- | --- |"
for body in plain gzip; do
    if [ "$body" = gzip ]; then headers=("${prometheus_headers[@]}") static=19733; else headers=() static=19732; fi
    for ((round = 1; round <= rounds; round++)); do
        rps "${headers[@]}" http://127.0.0.1:19730/metrics >>"$work/$body-a"
        rps "${headers[@]}" http://127.0.0.1:19731/metrics >>"$work/$body-b"
        rps "${headers[@]}" "http://127.0.0.1:$static/metrics" >>"$work/$body-s"
    done
    awk -v body="$body ($(wc -c <"$work/$body") bytes)" -v a="$(median <"$work/$body-a")" \
        -v b="$(median <"$work/$body-b")" -v s="$(median <"$work/$body-s")" \
        'BEGIN {printf "| %s | %.0f | %.0f | %.0f | %.2f | %.2f |\n", body, a, b, s, a / s, b / s}'
done
