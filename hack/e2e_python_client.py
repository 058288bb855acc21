"""The official Python kubernetes client reads the custom and external metrics APIs
of `kube-gpu-metrics standalone`, the way client-go does. Usage: e2e_python_client.py KUBECONFIG"""
import json, sys
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
api = client.ApiClient()

def get(path, query=()):
    method, url, headers, body, _ = api.param_serialize(
        "GET", path, query_params=list(query), header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers)
    response.read()
    return response.status, json.loads(response.data)

status, body = get("/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/*/nvidia_gpu_utilization_percent",
                   [("labelSelector", "app=reasoning-suite")])
assert status == 200 and body["items"][0]["describedObject"]["name"].startswith("reasoning-suite-"), body
status, external = get("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/nvidia_gpu_weighted_utilization_percent",
                       [("labelSelector", "nvidia.com/gpu.product=NVIDIA-GeForce-RTX-3060")])
assert status == 200 and external["kind"] == "ExternalMetricValueList" and len(external["items"]) == 1, external
status, error = get("/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/*/nvidia_gpu_utilization_percent",
                    [("labelSelector", "app in (")])
assert status == 400 and error["kind"] == "Status" and error["reason"] == "BadRequest", (status, error)
print("python kubernetes client: values, external metrics and a 400 Status")
