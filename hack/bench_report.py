"""Turns the raw outputs of hack/bench.sh into its summary (markdown, with
every figure beside its baseline from the same run) and the scaling chart.

Usage: bench_report.py OUT_DIR SERIES QUICK WORK_DIR
"""
import glob
import json
import os
import re
import subprocess
import sys

out, series, quick, work = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
problems = []


def read(name):
    return open(os.path.join(out, name)).read()


def duration_us(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def wrk(name, connections):
    text = read(f"wrk-{name}-c{connections}.txt")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = duration_us(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = duration_us(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
    # The peer failing under load is a finding; the agent failing is a problem.
    if errors and name == "agent":
        problems.append(f"wrk {name} c={connections}: {errors.group(0)}")
    return rps, p50, p99, errors.group(0) if errors else ""


def criterion():
    """Median time (ns) of every criterion benchmark, by (group, function)."""
    medians = {}
    for path in glob.glob("target/criterion/**/new/benchmark.json", recursive=True):
        meta = json.load(open(path))
        estimates = json.load(open(os.path.join(os.path.dirname(path), "estimates.json")))
        function = meta.get("function_id") or meta.get("value_str")
        if meta.get("value_str") and meta.get("function_id"):
            function = f"{meta['function_id']}/{meta['value_str']}"
        medians[(meta["group_id"], function)] = estimates["median"]["point_estimate"]
    return medians


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def ratio(value, baseline):
    return f"{value / baseline:.2f}" if baseline else "—"


lines = []
emit = lines.append

# 1. Scrape throughput.
sizes = {port: int(open(os.path.join(work, f"bytes-{port}")).read()) for port in (19700, 19701, 19702, 19703)}
emit("")
emit(f"## Scrape throughput: the same {sizes[19700]:,}-byte text payload ({series} series, 8 GPUs × 16 pods)")
emit("")
emit("wrk -t1, one run per row, servers on CPU 0 and wrk on CPU 1. Ratios are the agent's throughput over the row's.")
emit("")
emit("| Server | c | req/s | p50 | p99 | agent ÷ this | errors |")
emit("| --- | --- | --- | --- | --- | --- | --- |")
names = {
    "agent": "kube-gpu-metrics-agent `/metrics`",
    "static": "static-bytes hyper 1 server (the limit)",
    "nginx": "nginx, one worker, static file",
    "python": "Python prometheus_client exporter (the peer)",
}
results = {}
for c in (1, 8, 32):
    agent_rps = wrk("agent", c)[0]
    for server in ("agent", "static", "nginx", "python"):
        rps, p50, p99, errors = wrk(server, c)
        results[(server, c)] = rps
        emit(f"| {names[server]} | {c} | {rps:,.0f} | {p50:.0f} µs | {p99:.0f} µs | {ratio(agent_rps, rps)} | {errors or 0} |")
emit("")
emit(f"Body sizes: agent {sizes[19700]}, static {sizes[19701]}, nginx {sizes[19702]}, python {sizes[19703]} bytes.")
for c in (1, 8, 32):
    a = results[("agent", c)]
    goals = [
        ("≥ 0.90× static hyper", a / results[("static", c)] >= 0.90),
        ("≥ 1.0× nginx", a / results[("nginx", c)] >= 1.0),
        ("≥ 100× Python", a / results[("python", c)] >= 100),
    ]
    emit(f"Goals at c={c}: " + ", ".join(f"{g}: {'met' if ok else 'MISSED'}" for g, ok in goals) + ".")

# 2. Criterion.
medians = criterion()
emit("")
emit("## Render, scrape path and adapter query (criterion medians)")
emit("")
emit("| Benchmark | Median | Baseline (same run) | Ratio |")
emit("| --- | --- | --- | --- |")
base_render = medians.get(("render", "8 GPUs x 16 pods, prometheus-client OpenMetrics only (baseline)"))
for function in (
    "8 GPUs x 16 pods, text + OpenMetrics",
    "8 GPUs x 16 pods, dcgm names, text + OpenMetrics",
    "8 GPUs x 16 pods, native + dcgm names, text + OpenMetrics",
    "8 GPUs x 16 pods, text + OpenMetrics + gzip",
):
    value = medians.get(("render", function))
    if value:
        emit(f"| render {function} | {fmt_ns(value)} | prometheus-client, one format: {fmt_ns(base_render)} | {ratio(value, base_render)} |")
static = medians.get(("scrape", "static bytes baseline"))
handler = medians.get(("scrape", "agent handler (negotiate, gzip OpenMetrics)"))
if static and handler:
    emit(f"| scrape handler, Prometheus' headers | {fmt_ns(handler)} | static bytes response: {fmt_ns(static)} | {ratio(handler, static)} |")
encode = medians.get(("adapter query, 10000 pods", "baseline: serialize the 200-item answer"))
for function in ("HPA query, labelSelector app=app-7 (200 match)", "no selector (all 10000 match)"):
    value = medians.get(("adapter query, 10000 pods", function))
    if value:
        emit(f"| adapter {function}, 10 000 pods | {fmt_ns(value)} | JSON of the answer: {fmt_ns(encode)} | {ratio(value, encode)} |")
call = medians.get(("gpu read", "one NVML call (baseline)"))
for function in ("every field", "every field, 16 processes (time-sliced)"):
    value = medians.get(("gpu read", function))
    if value and call:
        emit(f"| one GPU's read, {function} (fake NVML) | {fmt_ns(value)} | one NVML call: {fmt_ns(call)} | {ratio(value, call)} |")
exposition = read("criterion-exposition.txt")
for line in exposition.splitlines():
    if line.startswith("allocations per"):
        emit(f"- {line}")
render = medians.get(("render", "8 GPUs x 16 pods, text + OpenMetrics"))
if render:
    emit(f"- Render goal ≤ 9 µs for 8 GPUs × 16 pods with every field: {'met' if render <= 9000 else 'MISSED'} ({fmt_ns(render)}).")
for line in read("criterion-adapter.txt").splitlines():
    if line.startswith("selector query over"):
        emit(f"- {line}")

# Scaling.
csv = os.path.join(out, "scaling.csv")
rows = []
for pods in (100, 1000, 10000, 100000):
    r = medians.get(("scaling-render", str(pods)))
    q = medians.get(("scaling-query", str(pods)))
    if r and q:
        rows.append((pods, r, q))
with open(csv, "w") as f:
    f.write("pods,render_ns,query_ns\n")
    for row in rows:
        f.write(",".join(str(x) for x in row) + "\n")
emit("")
emit("## Scaling with the number of pods")
emit("")
emit("| Pods | Render (8 GPUs) | per pod | HPA query (2 % match) | per pod |")
emit("| --- | --- | --- | --- | --- |")
for pods, r, q in rows:
    emit(f"| {pods:,} | {fmt_ns(r)} | {r / pods:.0f} ns | {fmt_ns(q)} | {q / pods:.0f} ns |")
if len(rows) == 4:
    growth = lambda i: (rows[3][i] / rows[0][i]) / (rows[3][0] / rows[0][0])
    emit(f"From 100 to 100 000 pods (1 000×), time grows {rows[3][1] / rows[0][1]:.0f}× (render) and "
         f"{rows[3][2] / rows[0][2]:.0f}× (query): {growth(1):.2f} and {growth(2):.2f} of linear.")
    gnuplot = f"""
set terminal pngcairo size 900,560 font ",11"
set output "{os.path.join(out, 'scaling.png')}"
set datafile separator ","
set title "kube-gpu-metrics: time per render and per HPA query vs pods"
set logscale xy
set xlabel "pods"
set ylabel "time (µs), median"
set key top left
set rmargin 8
set grid
set xtics ("100" 100, "1 000" 1000, "10 000" 10000, "100 000" 100000)
plot "{csv}" every ::1 using 1:($2/1000) with linespoints lw 2 title "render, text + OpenMetrics (8 GPUs)", \\
     "{csv}" every ::1 using 1:($3/1000) with linespoints lw 2 title "adapter HPA selector query (2 % match)", \\
     "{csv}" every ::1 using 1:($1*{rows[0][2] / rows[0][0] / 1000}) with lines dt 2 title "linear from the query at 100 pods"
"""
    subprocess.run(["gnuplot"], input=gnuplot, text=True, check=True)

# 3. Footprint.
agent_ticks, agent_rss, static_ticks, static_rss, hz = map(int, read("footprint.txt").split())
seconds = 5 if quick else 60
emit("")
emit(f"## Agent footprint: fake NVML, 8 GPUs, 1 s sampling, {seconds} s, scraped every 15 s")
emit("")
emit("| Process | RSS | CPU | agent ÷ this |")
emit("| --- | --- | --- | --- |")
cpu = lambda ticks: ticks / hz / seconds * 100
emit(f"| agent | {agent_rss / 1024:.1f} MiB | {cpu(agent_ticks):.2f} % of a core | — |")
emit(f"| static-bytes hyper server (baseline) | {static_rss / 1024:.1f} MiB | {cpu(static_ticks):.2f} % | RSS {agent_rss / static_rss:.2f}× |")
emit(f"Goals: RSS ≤ 10 MiB {'met' if agent_rss <= 10240 else 'MISSED'}; CPU ≤ 0.2 % {'met' if cpu(agent_ticks) <= 0.2 else 'MISSED'} "
     f"(CPU is counted in {1000 // hz} ms ticks: {agent_ticks} ticks in {seconds} s).")

# 4. Fleet.
adapter_ticks, feeds_ticks, fleet_seconds, hz, fleet_rss = map(int, read("fleet-polling.txt").split())
emit("")
emit("## Adapter at fleet scale: 1 000 simulated agents, 10 000 pods")
emit("")
emit(f"Polling every agent each second for {fleet_seconds} s: adapter {adapter_ticks / hz / fleet_seconds:.3f} cores "
     f"(goal < 0.5: {'met' if adapter_ticks / hz / fleet_seconds < 0.5 else 'MISSED'}), RSS {fleet_rss / 1024:.1f} MiB; "
     f"the feed server serving those 1 000 feeds/s (baseline): {feeds_ticks / hz / fleet_seconds:.3f} cores "
     f"(ratio {ratio(adapter_ticks, feeds_ticks)}).")
emit("")
emit("HTTPS (and KEDA's gRPC over TLS) at 1 000 req/s, open loop (a late request counts from its due time), 16 connections:")
emit("")
emit("| Adapter | Request | p50 | p99 | max | errors | adapter CPU |")
emit("| --- | --- | --- | --- | --- | --- | --- |")
p99s = {}
seconds = 2 if quick else 10
for mode, what in (("polling", "polling 1 000 agents every second"), ("alone", "query path alone (no polling)")):
    for name, label in (("discovery", "discovery (baseline: TLS + HTTP + auth)"), ("hpa", "HPA query `app=app-7` (200 of 10 000 pods)"),
                        ("keda", "KEDA `GetMetrics`, podSelector `app=app-7` (gRPC)")):
        text = read(f"fleet-{mode}-{name}.txt")
        p50, p99, mx = map(int, re.search(r"p50 (\d+) µs, p99 (\d+) µs, max (\d+) µs", text).groups())
        errors = int(re.search(r"errors\s+(\d+)", text).group(1))
        ticks = int(read(f"fleet-{mode}-{name}-ticks.txt"))
        p99s[(mode, name)] = p99
        emit(f"| {what} | {label} | {p50} µs | {p99} µs | {mx} µs | {errors} | {ticks / hz / seconds:.2f} cores |")
for mode in ("polling", "alone"):
    hpa_p99 = p99s[(mode, "hpa")]
    emit(f"- {mode}: p99 HPA query ÷ discovery {ratio(hpa_p99, p99s[(mode, 'discovery')])}; "
         f"goal p99 ≤ 5 ms: {'met' if hpa_p99 <= 5000 else 'MISSED'} ({hpa_p99 / 1000:.2f} ms); "
         f"KEDA GetMetrics p99 ÷ HPA query {ratio(p99s[(mode, 'keda')], hpa_p99)}.")

# 5. Freshness.
emit("")
emit("## Freshness: a GPU change until it can be read")
emit("")
for line in read("freshness.txt").splitlines():
    if line.startswith("freshness"):
        emit(f"- {line}")

print("\n".join(lines))
if problems:
    print("\n".join(f"PROBLEM: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
