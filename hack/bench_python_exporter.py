"""The peer a user would write by hand: the same series as the agent's
/metrics, served by Python's prometheus_client (its own HTTP server, its
registry encoding the families on every scrape). hack/bench.sh measures it
beside the agent.

Usage: bench_python_exporter.py METRICS.txt PORT
"""
import sys
import time

from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import REGISTRY, Collector

metrics_path, port = sys.argv[1], int(sys.argv[2])
families = list(text_string_to_metric_families(open(metrics_path).read()))


class Families(Collector):
    """Yields the parsed families; the registry encodes them per scrape."""

    def collect(self):
        return iter(families)


REGISTRY.register(Families())
start_http_server(port, addr="127.0.0.1")
print(f"python exporter listening on http://127.0.0.1:{port} ({len(families)} families)", flush=True)
while True:
    time.sleep(3600)
