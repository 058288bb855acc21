# A real GPU node for hack/cluster.sh (sourced by it, not run): containerd
# 1.6 and runc from Debian, the kubelet v1.20.2 from the same source tree as
# the control plane, and a device plugin advertising the fake NVML's GPUs.
#
# What this machine needs, and why (DESIGN.md, "A real node"):
# - cgroup v1 without systemd as PID 1: the cgroupfs driver everywhere;
# - root lacks CAP_SYS_RESOURCE: containerd's restrict_oom_score_adj;
# - the 1.20 kubelet insists on setting vm/overcommit_memory, kernel/panic
#   and kernel/panic_on_oops: it runs in its own mount namespace, where
#   private copies of those files are bound over /proc/sys, so the host's
#   settings never change (nor do its iptables: makeIPTablesUtilChains off);
# - pods use hostNetwork; a CNI config with only `loopback` lets containerd
#   report its network ready without a bridge. The node's address is the
#   machine's own (the kubelet refuses a loopback node IP), so a pod's IP is
#   that address; nothing is routed or forwarded;
# - images come from OCI archives made by hack/oci_image.py and imported with
#   ctr: no registry.
#
# Everything lives under $state/node, /run/kube-gpu-metrics and the kubelet's
# /var/lib/kubelet; `down` kills every process in the node's cgroups and its
# shims, unmounts what is mounted there and removes the cgroups.

node_dir="$state/node"
kubelet_root=/var/lib/kubelet
kubelet_marker="$kubelet_root/.kube-gpu-metrics-node"
containerd_state=/run/kube-gpu-metrics/containerd
containerd_sock="$containerd_state/containerd.sock"
pause_image=kube-gpu-metrics.local/pause:3.2
workload_image=kube-gpu-metrics.local/gpu-workload:e2e
gpu_uuid=GPU-4090c0de-0000-4000-8000-000000000001
# The fake NVML on a fixed host path, so a pod can mount it (hack/e2e-node/fake-nvml).
fake_nvml_dir=/run/kube-gpu-metrics/fake-nvml
# The cgroup hierarchies the kubelet and runc make kubepods in (v1, and runc's in the hybrid unified one).
cgroup_hierarchies() { find /sys/fs/cgroup -mindepth 1 -maxdepth 1 -type d; }

install_node_packages() {
    local missing=()
    command -v containerd >/dev/null || missing+=(containerd)
    command -v runc >/dev/null || missing+=(runc)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    [ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
    command -v gcc >/dev/null || missing+=(gcc libc6-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing from Debian: ${missing[*]}"
        run_logged "apt-get install ${missing[*]}" "$cache/apt.log" \
            sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
        log "installing grpcio and grpcio-tools from PyPI (the device plugin)"
        run_logged "pip install grpcio grpcio-tools" "$cache/pip.log" python3 -m pip install -q grpcio grpcio-tools
    fi
}

# The fake NVML the node's GPUs come from: one RTX 4090, idle, as mainpc has.
write_fake_nvml() {
    mkdir -p "$fake_nvml_dir"
    gcc -shared -fPIC -O2 -o "$fake_nvml_dir/libnvidia-ml.so" "$repo/hack/fake-nvml/fake_nvml.c" -lpthread
    cat >"$fake_nvml_dir/nvml.conf" <<EOF
driver 550.54.14
cuda 12040
gpu name="NVIDIA GeForce RTX 4090" uuid=$gpu_uuid util=0 mem_util=0 mem_total=25757220864 mem_used=0 temp=40 power_mw=30000 sm_clock_mhz=210
EOF
}

# The pause image from Kubernetes' own pause.c, and a workload image: a static
# busybox, with an nvidia-smi that lists the GPUs the device plugin gave it.
build_node_images() {
    local images="$node_dir/images"
    mkdir -p "$images"
    gcc -Os -static -o "$images/pause" "$cache/src/build/pause/linux/pause.c"
    python3 "$repo/hack/oci_image.py" --name "$pause_image" --out "$images/pause.tar" \
        --file "$images/pause:/pause:755" --entrypoint /pause --import "$containerd_sock"
    cat >"$images/nvidia-smi" <<'EOF'
#!/bin/sh
# nvidia-smi -L as far as a readiness probe needs it: the GPUs this container was given.
[ -n "$NVIDIA_VISIBLE_DEVICES" ] || { echo "No devices were found"; exit 6; }
i=0
for uuid in $(echo "$NVIDIA_VISIBLE_DEVICES" | tr , ' '); do
    echo "GPU $i: NVIDIA GPU (UUID: $uuid)"
    i=$((i + 1))
done
EOF
    local links=()
    for applet in sh sleep cat echo tr env ls ps; do links+=(--link "/bin/busybox:/bin/$applet"); done
    python3 "$repo/hack/oci_image.py" --name "$workload_image" --out "$images/workload.tar" \
        --file /bin/busybox:/bin/busybox:755 --file "$images/nvidia-smi:/usr/bin/nvidia-smi:755" "${links[@]}" \
        --cmd sleep --cmd infinity --import "$containerd_sock"
}

write_containerd_config() {
    mkdir -p "$node_dir/cni/net.d"
    cat >"$node_dir/cni/net.d/10-loopback.conflist" <<'EOF'
{"cniVersion": "0.4.0", "name": "loopback", "plugins": [{"type": "loopback"}]}
EOF
    # The `nvidia` runtime handler is what the GPU Operator's container toolkit
    # adds; here it is plain runc, for pods with runtimeClassName: nvidia.
    cat >"$node_dir/containerd.toml" <<EOF
version = 2
root = "$node_dir/containerd"
state = "$containerd_state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$containerd_sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni/net.d"
EOF
}

write_kubelet_config() {
    local name=$1 pki="$state/pki"
    cat >"$node_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
# The kubelet would otherwise add its chains to the host's iptables.
makeIPTablesUtilChains: false
# A shared disk and a shared machine: evict only when truly out, never collect images.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
nodeStatusUpdateFrequency: 10s
EOF
    make_cert "kubelet-$name" ca "/O=system:nodes/CN=system:node:$name"
    write_kubeconfig "$node_dir/kubelet.kubeconfig" "kubelet-$name"
}

# The kubelet in its own mount namespace, with private copies of the sysctl
# files it writes bound over /proc/sys; `exec` keeps the recorded PID its own.
kubelet_command() {
    local name=$1
    local script="mkdir -p '$node_dir/sysctl'
for f in vm/overcommit_memory kernel/panic kernel/panic_on_oops; do
    copy='$node_dir/sysctl/'\$(echo \$f | tr / .)
    cat /proc/sys/\$f >\"\$copy\"
    mount --bind \"\$copy\" /proc/sys/\$f
done
exec \"\$@\""
    printf '%s\0' unshare -m --propagation private sh -c "$script" kubelet \
        "$bin/kubelet" --config "$node_dir/kubelet.yaml" --kubeconfig "$node_dir/kubelet.kubeconfig" \
        --container-runtime remote --container-runtime-endpoint "unix://$containerd_sock" \
        --pod-infra-container-image "$pause_image" --root-dir "$kubelet_root" \
        --hostname-override "$name" \
        --node-labels "nvidia.com/gpu.present=true,nvidia.com/gpu.product=NVIDIA-GeForce-RTX-4090,nvidia.com/gpu.count=1,nvidia.com/gpu.replicas=$node_replicas" \
        --v 1
}

node_up() {
    local name=$1 pki="$state/pki"
    [ -z "$(ls -A /run/kube-gpu-metrics 2>/dev/null)" ] || die "/run/kube-gpu-metrics is not empty: a node is running ('$0 down' first)"
    if [ -e "$kubelet_root" ] && [ ! -e "$kubelet_marker" ]; then
        die "$kubelet_root exists and is not this script's: a kubelet runs or ran on this machine; not touching it"
    fi
    install_node_packages
    build kubelet
    local started=$SECONDS
    mkdir -p "$node_dir" "$containerd_state" "$kubelet_root/device-plugins"
    touch "$kubelet_marker"
    # What the node makes outside its own folders, removed by down only if it made it.
    local made
    for made in /run/containerd /var/log/pods /var/log/containers; do
        [ -e "$made" ] || echo "$made" >>"$node_dir/made"
    done
    write_fake_nvml
    write_containerd_config
    write_kubelet_config "$name"

    start containerd containerd --config "$node_dir/containerd.toml"
    local deadline=$((SECONDS + 30))
    until ctr --address "$containerd_sock" version >/dev/null 2>&1; do
        alive containerd || die "containerd exited; last lines of $state/logs/containerd.log: $(tail -n 5 "$state/logs/containerd.log")"
        [ $SECONDS -lt $deadline ] || die "containerd did not answer on $containerd_sock within 30s"
        sleep 0.2
    done
    build_node_images

    mapfile -d '' kubelet_cmd < <(kubelet_command "$name")
    start kubelet "${kubelet_cmd[@]}"
    wait_for kubelet "http://127.0.0.1:10248/healthz" 60
    start device-plugin python3 "$repo/hack/device_plugin.py" \
        --proto "$cache/src/staging/src/k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto" \
        --nvml-config "$fake_nvml_dir/nvml.conf" --replicas "$node_replicas" --plugin-dir "$kubelet_root/device-plugins"

    # Ready, untainted (node lifecycle runs with a real kubelet), and the GPUs allocatable.
    local admin=(--cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
    deadline=$((SECONDS + 90))
    until curl -fsS "${admin[@]}" "https://127.0.0.1:$apiserver_port/api/v1/nodes/$name" 2>/dev/null | python3 -c '
import json, sys
n = json.load(sys.stdin)
ready = any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
gpus = n["status"].get("allocatable", {}).get("nvidia.com/gpu", "0")
sys.exit(0 if ready and gpus != "0" and not n["spec"].get("taints") else 1)'; do
        for p in kubelet device-plugin containerd; do
            alive "$p" || die "$p exited; last lines of $state/logs/$p.log: $(tail -n 8 "$state/logs/$p.log")"
        done
        [ $SECONDS -lt $deadline ] || die "node $name not Ready, untainted, with nvidia.com/gpu allocatable within 90s (logs: $state/logs/kubelet.log, device-plugin.log)"
        sleep 1
    done
    log "node $name Ready in $((SECONDS - started))s: nvidia.com/gpu allocatable $node_replicas (1 GPU × $node_replicas time-slice replicas)"
}

# Every PID in the node's cgroups (containers and pods), from every hierarchy.
kubepods_pids() {
    local h
    for h in $(cgroup_hierarchies); do
        [ -d "$h/kubepods" ] && find "$h/kubepods" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u
}

node_down() {
    stop device-plugin || true
    stop kubelet || true
    # Containers first, then their shims (they outlive containerd), then containerd.
    local pids
    pids=$(kubepods_pids)
    [ -z "$pids" ] || { log "killing $(echo "$pids" | wc -l) container process(es)"; kill -KILL $pids 2>/dev/null || true; }
    pids=$(pgrep -f "containerd-shim-runc-v2 .*-address $containerd_sock" || true)
    [ -z "$pids" ] || { log "killing $(echo "$pids" | wc -w) containerd shim(s)"; kill -KILL $pids 2>/dev/null || true; }
    stop containerd || true
    sleep 0.5
    # Mounts under the node's folders, deepest first.
    local mounts
    mounts=$(awk '{print $5}' /proc/self/mountinfo | grep -E "^($node_dir|/run/kube-gpu-metrics|$kubelet_root)(/|$)" | sort -r || true)
    for m in $mounts; do umount -l "$m" 2>/dev/null || true; done
    [ -z "$mounts" ] || log "unmounted $(echo "$mounts" | wc -l) mount(s)"
    local h n=0
    for h in $(cgroup_hierarchies); do
        if [ -d "$h/kubepods" ]; then
            find "$h/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [ ! -d "$h/kubepods" ] || log "WARNING: $h/kubepods could not be removed"
            n=$((n + 1))
        fi
    done
    [ $n -eq 0 ] || log "removed the kubepods cgroups from $n hierarchies"
    if [ -e "$kubelet_marker" ]; then rm -rf "$kubelet_root"; fi
    rm -rf /run/kube-gpu-metrics "$node_dir/containerd"
    if [ -f "$node_dir/made" ]; then xargs rm -rf <"$node_dir/made"; fi
    rm -f "$node_dir/made"
}
