#!/usr/bin/env bash
# A first look at k8s-alog with no cluster: a simulated Kubernetes node
# (scripts/simnode.sh) with a shop in it (web -> cart Service -> payment Service, with
# slow requests and errors; scripts/demo_traffic.py), and k8s-alog watching it.
#
# Usage (root): scripts/demo.sh BINARY [ARGS...]
#   e.g. scripts/demo.sh ./target/release/k8s-alog record --out -
# Runs until the tool exits or Ctrl-C; everything it made is removed on exit.
# DEMO_ROOT (default /tmp/alogsim-demo) holds the node's files; DEMO_RATE (default 5)
# is the shopper's requests per second; DEMO_SECONDS ends the demo after that long.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $# -ge 2 ]] || { echo "usage: $0 BINARY ARGS..." >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "demo: needs root (namespaces, cgroups, eBPF): sudo make demo" >&2; exit 3; }
BIN=$1
shift
ROOT=${DEMO_ROOT:-/tmp/alogsim-demo}
RATE=${DEMO_RATE:-5}
PY=$(command -v /usr/bin/python3 || command -v python3)
SIM=scripts/simnode.sh
LOCK=/run/lock/alogsim.lock

# One simulated node per machine: wait for whoever uses it (tests) to finish, and hold
# the lock for the whole demo. Children do not inherit the lock's descriptor.
mkdir -p /run/lock
exec 9>"$LOCK"
if ! flock -n 9; then
    echo "demo: the simulated node is in use (a test?); waiting for $LOCK ..." >&2
    flock 9
fi

pids=()
cleanup() {
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    bash "$SIM" down "$ROOT" 9>&- >/dev/null 2>&1 || true
    echo "demo: simulated node removed" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$SIM" up "$ROOT" 9>&- >&2

# The shop: payment (pay/payment-...), cart (shop/cart-0) calling payment through its
# Service IP, and a shopper in web (shop/web-...) calling cart through its Service IP.
start() { # POD CONTAINER ARGS...
    local pod=$1 ctr=$2
    shift 2
    bash "$SIM" exec "$ROOT" "$pod" "$ctr" "$PY" scripts/demo_traffic.py "$@" 9>&- >/dev/null 2>&1 &
    pids+=($!)
}
wait_port() { # IP PORT
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "demo: $1:$2 did not come up" >&2
    exit 1
}
svc_ip() { "$PY" -c "import json,sys; print([s['ip'] for s in json.load(open(sys.argv[1]))['services'] if s['name']==sys.argv[2]][0])" "$ROOT/sim.json" "$1"; }
pod_ip() { "$PY" -c "import json,sys; print([p['ip'] for p in json.load(open(sys.argv[1]))['pods'] if p['key']==sys.argv[2]][0])" "$ROOT/sim.json" "$1"; }

start pay payment payment 8080
wait_port "$(pod_ip pay)" 8080
start cart cart cart 8080 "http://$(svc_ip payment):80"
wait_port "$(pod_ip cart)" 8080

echo "demo: shop is up: web -> cart ($(svc_ip cart)) -> payment ($(svc_ip payment)); $RATE requests/s" >&2
echo "demo: running: $BIN $* (Ctrl-C ends the demo)" >&2

# The tool reads the node's metadata from the simulated node's kubelet layout.
tool_args=("$@" --kubelet-pods-dir "$ROOT/var/log/pods" --node-name sim-node)
start web web client "http://$(svc_ip cart):80" "$RATE"
if [[ -n ${DEMO_SECONDS:-} ]]; then
    timeout --foreground -s INT "$DEMO_SECONDS" "$BIN" "${tool_args[@]}" 9>&- || true
else
    "$BIN" "${tool_args[@]}" 9>&- || true
fi
