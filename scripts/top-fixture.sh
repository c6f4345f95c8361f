#!/usr/bin/env bash
# Records tests/fixtures/top/session.jsonl, the recorded session the `top` snapshot tests
# render: real traffic between the simulated node's pods (scripts/simnode.sh), captured
# by `k8s-alog record`. HTTP/1 pod to pod and through Service IPs, 404s and 503s, app to
# sidecar over loopback, and gRPC calls (every status the test server knows).
#
# Usage (root, after `cargo build --release`): scripts/top-fixture.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-tests/fixtures/top/session.jsonl}
BIN=$PWD/target/release/k8s-alog
ROOT=/tmp/alogsim-topfix
PY=/usr/bin/python3
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
[[ -x $BIN ]] || { echo "build first: cargo build --release" >&2; exit 1; }

exec 9>/run/lock/alogsim.lock
flock 9
pids=()
STUBS=$(mktemp -d)
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    scripts/simnode.sh down "$ROOT" >/dev/null 2>&1 || true
    rm -rf "$STUBS"
}
trap cleanup EXIT
scripts/simnode.sh up "$ROOT" >/dev/null
X() { scripts/simnode.sh exec "$ROOT" "$@"; }

$PY -m grpc_tools.protoc -I tests/fixtures/grpc --python_out="$STUBS" \
    --grpc_python_out="$STUBS" tests/fixtures/grpc/alog_test.proto

ready() { # fifo-less wait for "READY" in a log file
    for _ in $(seq 200); do grep -q READY "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "server did not start: $1" >&2; cat "$1" >&2; exit 1
}
X cart cart $PY tests/fixtures/http_server.py 8080 >"$STUBS/cart.log" 2>&1 &
pids+=($!)
X pay payment $PY tests/fixtures/http_server.py 8080 >"$STUBS/pay.log" 2>&1 &
pids+=($!)
X cart proxy $PY tests/fixtures/grpc/grpc_server.py 50051 "$STUBS" >"$STUBS/grpc.log" 2>&1 &
pids+=($!)
ready "$STUBS/cart.log"
ready "$STUBS/pay.log"
ready "$STUBS/grpc.log"

mkdir -p "$(dirname "$OUT")"
rm -f "$OUT" # record appends
"$BIN" record --out "$OUT" --stats-interval 1 \
    --kubelet-pods-dir "$ROOT/var/log/pods" --containerd-state "$ROOT/absent" \
    --cri-socket "$ROOT/absent/cri.sock" --node-name sim-node 2>"$STUBS/record.log" &
rec=$!
sleep 3

CURL=(curl -q -s -o /dev/null --noproxy '*' --max-time 10)
for round in 1 2 3 4 5 6; do
    # web -> cart by pod IP, keep-alive: 10 requests on one connection, 1 of them a 500.
    urls=()
    for i in $(seq 9); do urls+=("http://198.18.7.12:8080/bytes/$((i * 100))"); done
    urls+=("http://198.18.7.12:8080/status/500")
    X web web "${CURL[@]}" "${urls[@]}" >/dev/null
    # web -> cart through its Service IP: one 200 and one 404.
    X web web "${CURL[@]}" http://198.19.7.10/bytes/2048
    X web web "${CURL[@]}" http://198.19.7.10/missing
    # cart -> payment (another namespace) through its Service IP: 200, and a 503 every
    # other round.
    X cart cart "${CURL[@]}" http://198.19.7.11/bytes/64
    if ((round % 2 == 0)); then X cart cart "${CURL[@]}" http://198.19.7.11/status/503; fi
    # App to sidecar inside the cart pod.
    X cart proxy "${CURL[@]}" http://127.0.0.1:8080/bytes/10
    # gRPC inside the cart pod: every call of the test service once.
    X cart cart $PY tests/fixtures/grpc/grpc_client.py 50051 "$STUBS" >/dev/null
    # A refused connection: nothing listens on 9999.
    X web web "${CURL[@]}" http://198.18.7.13:9999/ || true
    sleep 1
done
sleep 2
kill -INT $rec
wait $rec
cat "$STUBS/record.log" >&2
# Only the simulated node's traffic (anything else this machine did meanwhile is not
# part of the fixture); statistics records stay.
$PY - "$OUT" <<'PYEOF'
import json, sys
path = sys.argv[1]
keep = []
for line in open(path):
    r = json.loads(line)
    sim = lambda e: (e.get("addr") or "").startswith(("198.18.", "198.19.")) or "pod" in e
    if r["kind"] == "stats" or (sim(r["client"]) and sim(r["server"])):
        keep.append(line)
open(path, "w").writelines(keep)
PYEOF
echo "wrote $OUT: $(wc -l <"$OUT") records" >&2
