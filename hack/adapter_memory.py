"""Adapter memory under hostile load (RELIABILITY.md, "Resource bounds").

    python3 hack/adapter_memory.py target/release/kube-gpu-metrics PODS_PER_FEED FEEDS

Serves FEEDS agent feeds of PODS_PER_FEED pods each on loopback (refreshed
twice a second), runs the adapter binary over them for 15 s, then opens 6 700
TCP connections that never start a TLS handshake, closes them, and prints the
adapter's RSS at each step and its non-zero self-metrics. Loopback only;
bounded in time and count.
"""
import json, os, socket, ssl, subprocess, sys, threading, time, http.server, socketserver
BIN = sys.argv[1]
N_PODS = int(sys.argv[2]); N_FEEDS = int(sys.argv[3])
def body(node):
    pods = [{"namespace": "n", "pod": f"{node}-{i:05d}", "gpus": [], "sharing": "x",
             "utilizationPercent": 50} for i in range(N_PODS)]
    return {"node": node, "timestampMs": 0, "intervalMs": 1000,
            "gpus": [{"index": 0, "uuid": "GPU-0", "model": "NVIDIA GeForce RTX 4090", "up": True, "utilizationPercent": 50.0}],
            "pods": pods}
feeds = {}
NODES = [f"n{i}" for i in range(N_FEEDS)]
def refresh():
    templates = {n: body(n) for n in NODES}
    while True:
        for n, t in templates.items():
            t["timestampMs"] = int(time.time() * 1000)
            feeds[n] = json.dumps(t).encode()
        time.sleep(0.5)
threading.Thread(target=refresh, daemon=True).start()
while len(feeds) < N_FEEDS: time.sleep(0.1)
print(f"{N_FEEDS} feeds of {N_PODS} pods, {len(feeds[NODES[0]])} bytes each", flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = feeds[self.server.node]
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers(); 
        try: self.wfile.write(b)
        except Exception: pass
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
ports = []
for n in NODES:
    s = S(("127.0.0.1", 0), H); s.node = n; ports.append(s.server_address[1])
    threading.Thread(target=s.serve_forever, daemon=True).start()
ca = "/tmp/kgm-adapter-memory-ca.pem"
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "/tmp/kgm-adapter-memory-ca.key", "-out", ca, "-days", "1", "-subj", "/CN=x"], check=True, capture_output=True)
agents = ",".join(f"http://127.0.0.1:{p}" for p in ports)
proc = subprocess.Popen([BIN, "adapter", "--secure-listen", "127.0.0.1:16443", "--discover-agents=false", "--authorization-mode", "always-allow",
                         "--requestheader-client-ca-file", ca, "--agent", agents],
                        stderr=open("/tmp/kgm-adapter-memory-adapter.log", "w"), env={**os.environ, "KUBECONFIG": "/nonexistent"})
def rss():
    for l in open(f"/proc/{proc.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) / 1024
peak = 0
t0 = time.time()
while time.time() - t0 < 15:
    peak = max(peak, rss()); time.sleep(0.1)
print(f"15 s of polling: RSS now {rss():.1f} MiB, peak {peak:.1f} MiB", flush=True)
# 6700 connections that never send a certificate (or anything)
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
conns = []
peak2 = 0
for i in range(6700):
    try:
        c = socket.create_connection(("127.0.0.1", 16443), timeout=2); conns.append(c)
    except Exception as e:
        pass
    if i % 500 == 0: peak2 = max(peak2, rss())
time.sleep(1); peak2 = max(peak2, rss())
print(f"6700 idle connections: RSS {rss():.1f} MiB, peak {peak2:.1f} MiB", flush=True)
for c in conns: c.close()
time.sleep(6)
print(f"after they closed: RSS {rss():.1f} MiB", flush=True)
m = subprocess.run(["curl", "-sk", "https://127.0.0.1:16443/metrics"], capture_output=True, text=True).stdout
print("\n".join(l for l in m.splitlines() if not l.startswith("#") and (" 0" not in l[-2:])), flush=True)
proc.terminate(); proc.wait()
