#!/usr/bin/env bash
# A real Kubernetes control plane on loopback: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler v1.20.2, built from Debian's
# source package (the upstream tree with its vendor/), for the e2e and by hand.
#
#   hack/cluster.sh up [--hpa-sync-period 15s]   install, build once, start, wait for /readyz
#   hack/cluster.sh up --node mainpc             …and a real GPU node: containerd, the kubelet and a
#                                                device plugin for the fake NVML's GPU (hack/cluster-node.sh)
#   hack/cluster.sh env                          prints: export KUBECONFIG=…
#   hack/cluster.sh down                         stops exactly what up started
#   hack/cluster.sh restart kube-apiserver       one component, stopped and started with the same flags
#   hack/cluster.sh build                        only installs and builds (into the cache)
#
# The binaries are built once into $KGM_CLUSTER_CACHE (default
# ~/.cache/kube-gpu-metrics/kubernetes-1.20.2) and reused. The running
# cluster's state (PKI, etcd data, logs, PIDs, kubeconfigs) lives in
# $KGM_CLUSTER_DIR (default target/cluster in this checkout).
#
# Without a kubelet: nodelifecycle is off (no heartbeats to miss), and
# Endpoints cannot hold loopback addresses, so an APIService reaches a
# loopback server through a Service of type ExternalName (localhost).
# The comments beside the flags below say why each is set.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

version=1.20.2
cache=${KGM_CLUSTER_CACHE:-$HOME/.cache/kube-gpu-metrics/kubernetes-$version}
state=${KGM_CLUSTER_DIR:-$repo/target/cluster}
bin="$cache/bin"
# shellcheck source=hack/cluster-node.sh
. "$repo/hack/cluster-node.sh"

# Loopback ports; the defaults keep clear of standalone's (6443, 9402, 9443).
etcd_port=${KGM_CLUSTER_ETCD_PORT:-23790}
apiserver_port=${KGM_CLUSTER_APISERVER_PORT:-16443}
controller_manager_port=${KGM_CLUSTER_CONTROLLER_MANAGER_PORT:-10257}
scheduler_port=${KGM_CLUSTER_SCHEDULER_PORT:-10259}

log() { printf '[cluster] %s\n' "$*"; }
die() { printf '[cluster] FAIL: %s\n' "$*" >&2; exit 1; }

# Runs a command; on failure prints the command and the last lines of its output.
run_logged() {
    local what=$1 logfile=$2
    shift 2
    if ! "$@" >"$logfile" 2>&1; then
        printf '[cluster] FAIL: %s\n  command: %s\n  last lines of %s:\n' "$what" "$*" "$logfile" >&2
        tail -n 25 "$logfile" | sed 's/^/    /' >&2
        exit 1
    fi
}

sudo_if_needed() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# --- install and build -------------------------------------------------------

install_packages() {
    local missing=()
    command -v etcd >/dev/null || missing+=(etcd-server)
    [ -x /usr/lib/go-1.19/bin/go ] || missing+=(golang-1.19-go)
    [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || missing+=(golang-github-modern-go-reflect2-dev)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    command -v rsync >/dev/null || missing+=(rsync)
    command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing from Debian: ${missing[*]}"
        mkdir -p "$cache"
        run_logged "apt-get update" "$cache/apt.log" sudo_if_needed apt-get update
        run_logged "apt-get install ${missing[*]}" "$cache/apt.log" \
            sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

# Debian's source package carries the upstream tree with a complete vendor/.
fetch_source() {
    local src="$cache/src"
    [ -f "$src/Makefile" ] && return 0
    local list=/etc/apt/sources.list.d/kube-gpu-metrics-deb-src.sources
    if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src ' /etc/apt/sources.list; then
        log "adding a deb-src entry for bookworm ($list)"
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            | sudo_if_needed tee "$list" >/dev/null
        run_logged "apt-get update (deb-src)" "$cache/apt.log" sudo_if_needed apt-get update
    fi
    log "fetching Debian's source package kubernetes (upstream v$version, 34 MB)"
    local dl="$cache/download"
    rm -rf "$dl" && mkdir -p "$dl"
    (cd "$dl" && run_logged "apt-get source --download-only kubernetes" "$cache/source.log" \
        apt-get source --download-only kubernetes)
    local dsc
    dsc=$(ls "$dl"/kubernetes_*.dsc 2>/dev/null | head -n1) || true
    [ -n "$dsc" ] || die "apt-get source gave no kubernetes_*.dsc in $dl"
    case "$dsc" in *"+really$version"*) ;; *) die "expected the source of v$version, got $(basename "$dsc")" ;; esac
    log "unpacking $(basename "$dsc")"
    rm -rf "$src"
    run_logged "dpkg-source -x" "$cache/source.log" dpkg-source --skip-debianization -x "$dsc" "$src"
    rm -rf "$dl"
}

# The vendored reflect2 1.0.1 predates Go 1.18's map iterator: a kube-apiserver
# built with it under Go 1.19 segfaults on its first PATCH. Debian's 1.0.2 fixes it.
patch_reflect2() {
    local vendored="$cache/src/vendor/github.com/modern-go/reflect2"
    if ! cmp -s /usr/share/gocode/src/github.com/modern-go/reflect2/go_above_118.go "$vendored/go_above_118.go"; then
        log "replacing vendor/github.com/modern-go/reflect2 (1.0.1) with Debian's 1.0.2"
        rm -rf "$vendored"
        cp -rL /usr/share/gocode/src/github.com/modern-go/reflect2 "$vendored"
    fi
}

# Prints the build's own step lines, and a count every 250 packages compiled.
show_progress() {
    local n=0 line
    while IFS= read -r line; do
        n=$((n + 1))
        case "$line" in "+++ "*) log "  $line" ;; esac
        [ $((n % 250)) -ne 0 ] || log "  $n packages compiled ($((SECONDS - started))s)"
    done
}

# Builds the named commands (cmd/NAME) that the cache lacks, showing progress.
build() {
    local todo=()
    for cmd in "$@"; do [ -x "$bin/$cmd" ] || todo+=("cmd/$cmd"); done
    [ ${#todo[@]} -gt 0 ] || return 0
    install_packages
    fetch_source
    patch_reflect2
    local buildlog="$cache/build.log" started=$SECONDS
    log "building ${todo[*]} with Go 1.19 (about 5 minutes on 2 cores the first time; log: $buildlog)"
    mkdir -p "$bin"
    # GOFLAGS=-v names each package as it compiles: a line every 250 packages shows progress.
    # A failed make shows as a missing binary below, with the log's last lines.
    (cd "$cache/src" && PATH=/usr/lib/go-1.19/bin:$PATH GOFLAGS=-v \
        make WHAT="${todo[*]}" KUBE_BUILD_PLATFORMS=linux/amd64 2>&1) \
        | tee "$buildlog" | show_progress || true
    for cmd in "${todo[@]}"; do
        local name=${cmd#cmd/} out="$cache/src/_output/local/bin/linux/amd64/${cmd#cmd/}"
        if [ ! -x "$out" ]; then
            printf '[cluster] FAIL: building %s\n  command: make WHAT="%s" (in %s)\n  last lines of %s:\n' \
                "$cmd" "${todo[*]}" "$cache/src" "$buildlog" >&2
            tail -n 25 "$buildlog" | sed 's/^/    /' >&2
            exit 1
        fi
        cp "$out" "$bin/$name.tmp" && mv "$bin/$name.tmp" "$bin/$name"
    done
    log "built ${todo[*]} in $((SECONDS - started))s into $bin"
}


# --- PKI ---------------------------------------------------------------------

# make_cert NAME CA SUBJECT [SANS]: a key and a certificate signed by CA (ca or front-proxy-ca).
make_cert() {
    local name=$1 ca=$2 subject=$3 sans=${4:-} pki="$state/pki"
    local ext="$pki/$name.ext"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' >"$ext"
    if [ -n "$sans" ]; then
        printf 'extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$sans" >>"$ext"
    else
        printf 'extendedKeyUsage=clientAuth\n' >>"$ext"
    fi
    openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
        -days 30 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$pki/$name.csr" "$ext"
}

make_ca() {
    local name=$1 subject=$2 pki="$state/pki"
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subject" -days 30 -sha256 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        -out "$pki/$name.crt" 2>/dev/null
}

make_pki() {
    local pki="$state/pki"
    log "making the PKI in $pki: cluster CA, front-proxy CA, component client certificates, service-account keys"
    mkdir -p "$pki"
    make_ca ca "/CN=kube-gpu-metrics-cluster-ca"
    make_ca front-proxy-ca "/CN=kube-gpu-metrics-front-proxy-ca"
    make_cert apiserver ca "/CN=kube-apiserver" \
        "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:127.0.0.1,IP:10.96.0.1"
    make_cert admin ca "/O=system:masters/CN=kubernetes-admin"
    make_cert kube-controller-manager ca "/CN=system:kube-controller-manager"
    make_cert kube-scheduler ca "/CN=system:kube-scheduler"
    make_cert front-proxy-client front-proxy-ca "/CN=front-proxy-client"
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

# write_kubeconfig FILE USER: a kubeconfig for the client certificate pki/USER.crt.
write_kubeconfig() {
    local file=$1 user=$2 pki="$state/pki"
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-gpu-metrics
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$pki/$user.crt")
    client-key-data: $(base64 -w0 "$pki/$user.key")
contexts:
- name: kube-gpu-metrics
  context: {cluster: kube-gpu-metrics, user: $user}
current-context: kube-gpu-metrics
EOF
}

# --- processes ---------------------------------------------------------------

# start NAME COMMAND…: runs it in the background, its output in logs/NAME.log, its PID in pids/NAME.
start() {
    local name=$1
    shift
    log "starting $name (log: $state/logs/$name.log)"
    mkdir -p "$state/cmd"
    printf '%s\0' "$@" >"$state/cmd/$name"
    setsid "$@" >>"$state/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$state/pids/$name"
}

alive() { [ -f "$state/pids/$1" ] && kill -0 "$(cat "$state/pids/$1")" 2>/dev/null; }

# wait_for NAME URL SECONDS [curl args…]: polls URL until it answers 200; fails with NAME's last log lines.
wait_for() {
    local name=$1 url=$2 timeout=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; do
        if ! alive "$name"; then
            printf '[cluster] FAIL: %s exited; last lines of %s:\n' "$name" "$state/logs/$name.log" >&2
            tail -n 25 "$state/logs/$name.log" | sed 's/^/    /' >&2
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            printf '[cluster] FAIL: %s did not answer %s within %ss; last lines of %s:\n' \
                "$name" "$url" "$timeout" "$state/logs/$name.log" >&2
            tail -n 25 "$state/logs/$name.log" | sed 's/^/    /' >&2
            exit 1
        fi
        sleep 0.5
    done
}

up() {
    local hpa_sync_period=15s downscale_stabilization=5m0s node=""
    node_replicas=2
    while [ $# -gt 0 ]; do
        case "$1" in
        --hpa-sync-period) hpa_sync_period=${2:?--hpa-sync-period needs a duration}; shift 2 ;;
        --hpa-downscale-stabilization) downscale_stabilization=${2:?--hpa-downscale-stabilization needs a duration}; shift 2 ;;
        --node) node=${2:?--node needs a node name}; shift 2 ;;
        --gpu-replicas) node_replicas=${2:?--gpu-replicas needs a number}; shift 2 ;;
        *) die "unknown option to up: $1 (options: --hpa-sync-period DURATION, --hpa-downscale-stabilization DURATION, --node NAME, --gpu-replicas N)" ;;
        esac
    done
    case "$node_replicas" in [1-9] | [1-5][0-9] | 6[0-4]) ;; *) die "--gpu-replicas $node_replicas: must be 1 to 64" ;; esac
    for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet device-plugin; do
        ! alive "$name" || die "$name is already running (PID $(cat "$state/pids/$name")): run '$0 down' first"
    done
    ! grep -qs " $state/" /proc/self/mountinfo || die "something is still mounted under $state: run '$0 down' first"
    install_packages
    build kube-apiserver kube-controller-manager kube-scheduler
    local started=$SECONDS pki="$state/pki"
    rm -rf "$state" && mkdir -p "$state/logs" "$state/pids"
    make_pki
    write_kubeconfig "$state/admin.kubeconfig" admin
    write_kubeconfig "$state/kube-controller-manager.kubeconfig" kube-controller-manager
    write_kubeconfig "$state/kube-scheduler.kubeconfig" kube-scheduler

    start etcd etcd --name kube-gpu-metrics --data-dir "$state/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-cluster "kube-gpu-metrics=http://127.0.0.1:$((etcd_port + 1))"
    wait_for etcd "http://127.0.0.1:$etcd_port/health" 30

    # Endpoints refuse loopback addresses: no endpoint reconciler for the kubernetes Service.
    start kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$apiserver_port" --insecure-port 0 \
        --endpoint-reconciler-type none --service-cluster-ip-range 10.96.0.0/12 \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
        --allow-privileged=true \
        --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
        --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
        --requestheader-extra-headers-prefix X-Remote-Extra- \
        --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key"
    local admin=(--cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
    wait_for kube-apiserver "https://127.0.0.1:$apiserver_port/readyz" 120 "${admin[@]}"

    # Without a kubelet, nodelifecycle is off: there are no heartbeats, and it would taint and evict.
    local controllers='*,-nodelifecycle'
    [ -z "$node" ] || controllers='*'
    start kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig "$state/kube-controller-manager.kubeconfig" \
        --authentication-kubeconfig "$state/kube-controller-manager.kubeconfig" \
        --authorization-kubeconfig "$state/kube-controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$controller_manager_port" --port 0 --leader-elect=false \
        --controllers "$controllers" --use-service-account-credentials \
        --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
        --horizontal-pod-autoscaler-sync-period "$hpa_sync_period" \
        --horizontal-pod-autoscaler-downscale-stabilization "$downscale_stabilization"
    start kube-scheduler "$bin/kube-scheduler" \
        --kubeconfig "$state/kube-scheduler.kubeconfig" \
        --authentication-kubeconfig "$state/kube-scheduler.kubeconfig" \
        --authorization-kubeconfig "$state/kube-scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$scheduler_port" --port 0 --leader-elect=false
    wait_for kube-controller-manager "https://127.0.0.1:$controller_manager_port/healthz" 60 -k
    wait_for kube-scheduler "https://127.0.0.1:$scheduler_port/healthz" 60 -k
    # The service-account and token controllers have run once the default ServiceAccount has its token.
    local deadline=$((SECONDS + 60))
    until curl -fsS "${admin[@]}" "https://127.0.0.1:$apiserver_port/api/v1/namespaces/default/serviceaccounts/default" \
        2>/dev/null | grep -q '"secrets"'; do
        [ $SECONDS -lt $deadline ] || die "the default ServiceAccount got no token within 60s (see $state/logs/kube-controller-manager.log)"
        sleep 0.5
    done
    log "control plane v$version ready in $((SECONDS - started))s at https://127.0.0.1:$apiserver_port"
    log "  HPA sync period $hpa_sync_period, downscale stabilization $downscale_stabilization"
    [ -z "$node" ] || node_up "$node"
    log "  kubeconfig: $state/admin.kubeconfig   (or: eval \"\$(hack/cluster.sh env)\")"
}

# stop NAME: SIGTERM, then SIGKILL after 10 s; true if it was running.
stop() {
    local name=$1 pidfile="$state/pids/$1" pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    rm -f "$pidfile"
    kill -0 "$pid" 2>/dev/null || return 1
    log "stopping $name (PID $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    log "$name did not stop within 10s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

down() {
    local stopped=0
    [ ! -d "$node_dir" ] || node_down
    for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
        if stop "$name"; then stopped=$((stopped + 1)); fi
    done
    log "stopped $stopped process(es); state left in $state"
}

# restart NAME: stops one component and starts it again with the same flags.
restart() {
    local name=${1:?restart needs a component: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, or the node parts containerd, kubelet, device-plugin}
    [ -f "$state/cmd/$name" ] || die "$name was never started here ($state/cmd/$name)"
    local cmd
    mapfile -d '' cmd <"$state/cmd/$name"
    stop "$name" || true
    start "$name" "${cmd[@]}"
    local pki="$state/pki"
    case "$name" in
    etcd) wait_for etcd "http://127.0.0.1:$etcd_port/health" 30 ;;
    kube-apiserver) wait_for kube-apiserver "https://127.0.0.1:$apiserver_port/readyz" 120 \
        --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" ;;
    kube-controller-manager) wait_for "$name" "https://127.0.0.1:$controller_manager_port/healthz" 60 -k ;;
    kube-scheduler) wait_for "$name" "https://127.0.0.1:$scheduler_port/healthz" 60 -k ;;
    kubelet) wait_for kubelet "http://127.0.0.1:10248/healthz" 60 ;;
    esac
    log "$name restarted"
}

case "${1:-}" in
up) shift; up "$@" ;;
down) down ;;
restart) shift; restart "$@" ;;
env)
    printf 'export KUBECONFIG=%s\n' "$state/admin.kubeconfig"
    if [ -f "$fake_nvml_dir/nvml.conf" ]; then
        printf 'export KGM_CLUSTER_WORKLOAD_IMAGE=%s\n' "$workload_image"
        printf 'export KGM_CLUSTER_FAKE_NVML_LIB=%s\n' "$fake_nvml_dir/libnvidia-ml.so"
        printf 'export KGM_CLUSTER_FAKE_NVML_CONFIG=%s\n' "$fake_nvml_dir/nvml.conf"
        printf 'export KGM_CLUSTER_CONTAINERD=%s\n' "$containerd_sock"
    fi
    ;;
build) build kube-apiserver kube-controller-manager kube-scheduler kubelet ;;
*) die "usage: $0 up [--hpa-sync-period DURATION] [--hpa-downscale-stabilization DURATION] [--node NAME [--gpu-replicas N]] | down | env | restart COMPONENT | build" ;;
esac
