"""Turns the raw outputs of hack/bench.sh into its summary (markdown, with
every figure beside its baseline from the same run) and the scaling chart.

Usage: bench_report.py OUT_DIR SERIES QUICK WORK_DIR FLEET_SIZES

Without the scrape, criterion and footprint outputs (`hack/bench.sh
--fleet`), only the fleet section is written.
"""
import glob
import json
import os
import re
import subprocess
import sys

out, series, quick, work = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
fleet_sizes = [int(n) for n in sys.argv[5].split()]
full = os.path.exists(os.path.join(out, "wrk-agent-c1.txt"))
# The adapter's memory limit in the manifests (deploy/base/adapter.yaml).
ADAPTER_LIMIT_MIB = int(re.search(r"limits: \{memory: (\d+)Mi\}", open("deploy/base/adapter.yaml").read()).group(1))
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

# The summary table: one row per figure with a goal or a baseline, every one
# from this run.
MACHINE = "{} vCPU {}".format(os.cpu_count(), next(
    (l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
     if l.startswith("Model name")), "unknown CPU"))
DATE = subprocess.run(["date", "-u", "+%Y-%m-%d"], capture_output=True, text=True).stdout.strip()
COMMAND = "`hack/bench.sh" + (" --quick" if quick else "" if full else " --fleet") + "`"
summary = []


def figure(name, goal, value, baseline, ratio_text, met):
    verdict = "—" if met is None else ("met" if met else "**missed**")
    summary.append(f"| {name} | {goal} | {value} | {baseline} | {ratio_text} | {MACHINE} | {DATE} | {COMMAND} | {verdict} |")

if full:
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
    a = results[("agent", 8)]
    for server, goal, limit in (("static", "≥ 0.90×", 0.90), ("nginx", "≥ 1.0×", 1.0), ("python", "≥ 100×", 100)):
        figure(f"scrape throughput, agent ÷ {names[server]}, wrk c=8", goal, f"{a:,.0f} req/s",
               f"{results[(server, 8)]:,.0f} req/s", ratio(a, results[(server, 8)]), a / results[(server, 8)] >= limit)

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
        "8 GPUs x 16 pods, text + OpenMetrics, then gzip OpenMetrics once",
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
        emit(f"- Render, 8 GPUs × 16 pods with every field: {fmt_ns(render)}, {ratio(render, base_render)} of prometheus-client "
             "(reported; no goal since the render-time goal was retired: what users feel is the agent's CPU, RSS and throughput).")
        figure("render, 8 GPUs × 16 pods, text + OpenMetrics", "none (reported)", fmt_ns(render),
               f"prometheus-client, one format: {fmt_ns(base_render)}", ratio(render, base_render), None)
    if static and handler:
        figure("scrape handler, Prometheus' headers (gzip OpenMetrics)", "none (reported)", fmt_ns(handler),
               f"a static-bytes response: {fmt_ns(static)}", ratio(handler, static), None)
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
    figure("agent RSS, 8 GPUs, 1 s sampling", "≤ 10 MiB", f"{agent_rss / 1024:.1f} MiB",
           f"static-bytes server: {static_rss / 1024:.1f} MiB", ratio(agent_rss, static_rss), agent_rss <= 10240)
    figure("agent CPU, 8 GPUs, 1 s sampling, scraped every 15 s", "≤ 0.2 % of a core", f"{cpu(agent_ticks):.2f} %",
           f"static-bytes server: {cpu(static_ticks):.2f} %", "—", cpu(agent_ticks) <= 0.2)
    emit(f"Goals: RSS ≤ 10 MiB {'met' if agent_rss <= 10240 else 'MISSED'}; CPU ≤ 0.2 % {'met' if cpu(agent_ticks) <= 0.2 else 'MISSED'} "
         f"(CPU is counted in {1000 // hz} ms ticks: {agent_ticks} ticks in {seconds} s).")

# 4. Fleet.
def loadgen(name):
    text = read(name)
    p50, p99, mx = map(int, re.search(r"p50 (\d+) µs, p99 (\d+) µs, max (\d+) µs", text).groups())
    errors = int(re.search(r"errors\s+(\d+)", text).group(1))
    return p50, p99, mx, errors


emit("")
emit("## Adapter at fleet scale: simulated agents of 10 pods, one adapter polling each every second")
emit("")
emit("HTTPS (and KEDA's gRPC over TLS) at 1 000 req/s while polling, open loop (a late request counts from its due "
     "time), 16 connections. The HPA query and KEDA's GetMetrics select `app=app-7`, 200 pods at every size (an app "
     "has 200 pods), so what grows is the fleet, not the answer. Freshness is a pod's GPU load changing until the "
     "API serves it, watched beside the HPA query's load.")
emit("")
emit(f"| Agents | Pods | Adapter CPU | RSS (limit {ADAPTER_LIMIT_MIB} Mi) | feed server (baseline) | HPA query p50 / p99 | "
     "p99 ÷ discovery p99 | KEDA p99 | freshness median / max | failed requests | items rejected |")
emit("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
curve = []
knees = {}
for agents in fleet_sizes:
    _, adapter_ticks, feeds_ticks, seconds, hz, rss_kib, feed_bytes = map(int, read(f"fleet-{agents}-polling.txt").split())
    cores = adapter_ticks / hz / seconds
    hpa = loadgen(f"fleet-{agents}-hpa.txt")
    discovery = loadgen(f"fleet-{agents}-discovery.txt")
    keda = loadgen(f"fleet-{agents}-keda.txt")
    fresh = re.search(r"median (\d+) ms, max (\d+) ms, missed (\d+)", read(f"fleet-{agents}-freshness.txt"))
    median_ms, max_ms, missed = map(int, fresh.groups())
    errors = hpa[3] + discovery[3] + keda[3]
    rejected = sum(float(v) for v in re.findall(r"^kube_gpu_metrics_adapter_feed_items_rejected_total\{[^}]*\} (\S+)$",
                                                read(f"fleet-{agents}-metrics.txt"), re.M))
    # Up to 5 000 agents the defaults must admit everything and answer every request.
    if agents <= 5000 and (errors or rejected):
        problems.append(f"fleet {agents}: {errors} failed requests, {rejected:.0f} items rejected")
    rss_mib = rss_kib / 1024
    curve.append((agents, cores, rss_mib, hpa[1] / 1000, max_ms / 1000 if not missed else float("nan")))
    fresh_text = f"{median_ms} ms / {max_ms} ms" + (f", {missed} missed" if missed else "")
    emit(f"| {agents:,} | {agents * 10:,} | {cores:.3f} cores | {rss_mib:.0f} MiB | {feeds_ticks / hz / seconds:.3f} cores | "
         f"{hpa[0] / 1000:.2f} / {hpa[1] / 1000:.2f} ms | {ratio(hpa[1], discovery[1])} | {keda[1] / 1000:.2f} ms | {fresh_text} | {errors} | {rejected:.0f} |")
    if agents == max(n for n in fleet_sizes if n <= 5000):
        at = f"fleet of {agents:,} agents, {agents * 10:,} pods"
        figure(f"{at}: adapter CPU polling", "< 1 core", f"{cores:.3f} cores",
               f"feed server: {feeds_ticks / hz / seconds:.3f} cores", ratio(adapter_ticks, feeds_ticks), cores < 1.0)
        figure(f"{at}: adapter RSS", f"≤ {ADAPTER_LIMIT_MIB} Mi (the manifests' limit)", f"{rss_mib:.0f} MiB", "—", "—",
               rss_mib <= ADAPTER_LIMIT_MIB)
        figure(f"{at}: HPA query p99 at 1 000 req/s while polling", "≤ 1.5× discovery", f"{hpa[1] / 1000:.2f} ms",
               f"discovery p99: {discovery[1] / 1000:.2f} ms", ratio(hpa[1], discovery[1]), hpa[1] <= 1.5 * discovery[1])
        figure(f"{at}: KEDA GetMetrics p99 at 1 000 req/s while polling", "≤ 1.5× discovery", f"{keda[1] / 1000:.2f} ms",
               f"discovery p99: {discovery[1] / 1000:.2f} ms", ratio(keda[1], discovery[1]), keda[1] <= 1.5 * discovery[1])
        figure(f"{at}: freshness under that load, median / max", "≤ 2 s / ≤ 3 s", f"{median_ms} / {max_ms} ms", "—", "—",
               median_ms <= 2000 and max_ms <= 3000 and not missed)
        figure(f"{at}: failed requests and refused items", "0", f"{errors} / {rejected:.0f}", "—", "—",
               errors == 0 and rejected == 0)
    for name, passed in (("1 core", cores > 1.0), (f"the {ADAPTER_LIMIT_MIB} Mi limit", rss_mib > ADAPTER_LIMIT_MIB),
                         ("the freshness goal (2 s median, 3 s max)", median_ms > 2000 or max_ms > 3000 or missed > 0),
                         ("p99 ÷ discovery 1.5", hpa[1] > 1.5 * discovery[1])):
        if passed and name not in knees:
            knees[name] = agents
    feed_size = feed_bytes
    if os.path.exists(os.path.join(out, f"fleet-{agents}-replicas.txt")):
        two_ticks, two_seconds = map(int, read(f"fleet-{agents}-replicas.txt").split())
        one, two = feeds_ticks / hz / seconds, two_ticks / hz / two_seconds
        replicas = (agents, one, two, feed_size)
emit("")
for name in ("1 core", f"the {ADAPTER_LIMIT_MIB} Mi limit", "the freshness goal (2 s median, 3 s max)", "p99 ÷ discovery 1.5"):
    emit(f"- One adapter passes {name}: " + (f"at {knees[name]:,} agents." if name in knees else f"not up to {fleet_sizes[-1]:,} agents."))
agents, one, two, feed_size = replicas
emit(f"- Two adapter replicas at {agents:,} agents: every agent serves its feed ({feed_size:,} bytes) twice a second; "
     f"the feed server standing in for all {agents:,} agents used {one:.3f} cores for one adapter and {two:.3f} for two "
     f"({two / one if one else 0:.2f}×), {(two - one) / agents * 1e6:.1f} µs of CPU per agent per second more, and "
     f"{feed_size * agents * 8 / 1e6:.1f} Mbit/s more across the cluster ({feed_size * 8 / 1e3:.1f} kbit/s per agent).")
alone = [(name, loadgen(f"fleet-{fleet_sizes[0]}-alone-{name}.txt")) for name in ("discovery", "hpa", "keda")]
emit(f"- The query path alone at {fleet_sizes[0]:,} agents (polled once): " + ", ".join(
    f"{name} p50 {r[0] / 1000:.2f} ms, p99 {r[1] / 1000:.2f} ms" for name, r in alone) + ".")
with open(os.path.join(out, "fleet.csv"), "w") as f:
    f.write("agents,cores,rss_mib,hpa_p99_ms,freshness_max_s\n")
    for row in curve:
        f.write(",".join(str(x) for x in row) + "\n")
if len(curve) > 1:
    fleet_csv = os.path.join(out, "fleet.csv")
    gnuplot = f"""
set terminal pngcairo size 1200,420 font ",10"
set output "{os.path.join(out, 'fleet.png')}"
set datafile separator ","
set multiplot layout 1,3 title "One kube-gpu-metrics adapter polling N agents (10 pods each) every second, 2 vCPU"
set logscale x
set xrange [{fleet_sizes[0] * 0.8}:{fleet_sizes[-1] * 1.25}]
set grid
set xlabel "agents"
set key top left
set title "adapter CPU (cores)"
plot "{fleet_csv}" every ::1 using 1:2 with linespoints lw 2 title "polling", 1 with lines dt 2 title "1 core"
set title "adapter RSS (MiB)"
plot "{fleet_csv}" every ::1 using 1:3 with linespoints lw 2 title "RSS", {ADAPTER_LIMIT_MIB} with lines dt 2 title "limit"
set title "HPA query p99 (ms, left) and freshness max (s, right)"
set ytics nomirror
set y2tics
set y2range [0:*]
plot "{fleet_csv}" every ::1 using 1:4 with linespoints lw 2 title "HPA query p99, ms", \\
     "{fleet_csv}" every ::1 using 1:5 axes x1y2 with linespoints lw 2 title "freshness max, s", \\
     3 axes x1y2 with lines dt 2 title "3 s"
unset multiplot
"""
    subprocess.run(["gnuplot"], input=gnuplot, text=True, check=True)

if full:
    # 5. Freshness.
    emit("")
    emit("## Freshness: a GPU change until it can be read")
    emit("")
    for line in read("freshness.txt").splitlines():
        if line.startswith("freshness"):
            emit(f"- {line}")
        direct = re.match(r"freshness, GPU change → custom metrics API, direct.*median (\d+) ms, max (\d+) ms", line)
        if direct:
            median_ms, max_ms = map(int, direct.groups())
            figure("freshness, direct path (GPU change → custom metrics API), median / max", "≤ 2 s / ≤ 3 s",
                   f"{median_ms} / {max_ms} ms", "—", "—", median_ms <= 2000 and max_ms <= 3000)

print("")
print("## Summary")
print("")
print("| Figure | Goal | Value | Baseline (same run) | Ratio | Machine | Date | Command | Goal met |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
print("\n".join(summary))
print("\n".join(lines))
if problems:
    print("\n".join(f"PROBLEM: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
