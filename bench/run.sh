#!/usr/bin/env bash
# k8s-alog benchmark: cost and completeness of `k8s-alog record`, per hook rung, next to a
# no-capture baseline, same-hook floors (bpftrace with empty programs on the hooks a rung uses:
# no tool hooking there can cost less) and a peer doing the same job by packet capture (tshark).
#
# Workloads (nginx on loopback, driven by wrk): keep-alive at saturation, keep-alive at a fixed
# 5,000 and 20,000 req/s, connection churn (Connection: close), HTTPS keep-alive. Each workload
# runs rounds of the arms back to back (order rotated each round); the report gives medians.
# Arms:
#   baseline             nothing
#   floor:syscalls       bpftrace, empty programs on raw_syscalls:sys_enter+sys_exit (alias: floor)
#   floor:tracepoint     bpftrace, empty programs on the tracepoint rung's tracepoints
#   floor:syscall        bpftrace, empty programs on the syscall rung's tracepoints
#   k8s-alog             k8s-alog record, hooks chosen by itself (auto)
#   k8s-alog:RUNG        the same with K8S_ALOG_HOOKS=RUNG (tracepoint, syscall, fentry, kprobe);
#                        a rung the kernel refuses (exit code 5) is skipped with a line saying so
#   tshark               tshark on lo, HTTP decoded
# Run as root: ./bench/run.sh (or `make bench`). Needs the packages bench/deps.sh installs;
# installs nothing itself.
#
# Environment:
#   BENCH_ROUNDS     rounds per workload (default: 3 for saturation, 2 for the others)
#   BENCH_SECONDS    load duration per arm, s (default 6)
#   BENCH_WORKLOADS  subset, e.g. "saturation churn" (default: saturation rate5k rate20k churn https)
#   BENCH_ARMS       subset of arms (default: baseline floor:tracepoint floor:syscall
#                    k8s-alog:tracepoint k8s-alog:syscall k8s-alog:fentry k8s-alog:kprobe tshark)
#   BENCH_OUT        report path (default /tmp/k8s-alog-bench-<time>.txt; raw results in <path>.json)
#   BENCH_NICE       niceness for the whole run, inherited by nginx, wrk and every capture arm alike
#                    (default -10: other work on a shared machine disturbs the figures less; 0: as is)
#   BENCH_KEEP=1     keep the temporary directory (nginx config, logs, each arm's outputs)
#   K8S_ALOG_BIN     binary to measure (default target/release/k8s-alog)
# Quick smoke run: BENCH_ROUNDS=1 BENCH_SECONDS=2 ./bench/run.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
LIB="$HERE/lib.py"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BIN=${K8S_ALOG_BIN:-$ROOT/target/release/k8s-alog}
SECS=${BENCH_SECONDS:-6}
SAT_ROUNDS=${BENCH_ROUNDS:-3}
ROUNDS=${BENCH_ROUNDS:-2}
read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-saturation rate5k rate20k churn https}"
DEFAULT_ARMS="baseline floor:tracepoint floor:syscall k8s-alog:tracepoint k8s-alog:syscall k8s-alog:fentry k8s-alog:kprobe tshark"
read -r -a ARMS <<<"${BENCH_ARMS:-$DEFAULT_ARMS}"
OUT=${BENCH_OUT:-/tmp/k8s-alog-bench-$(date +%Y%m%d-%H%M%S).txt}
THREADS=2
# Each floor arm: the tracepoints bpftrace puts an empty program on (category:event). The
# tracepoint and syscall floors hold exactly the hooks the k8s-alog rung of that name uses
# (sched_process_exec aside: it fires on exec only).
declare -A FLOOR_TPS=(
    [floor:syscalls]="raw_syscalls:sys_enter raw_syscalls:sys_exit"
    [floor:tracepoint]="sock:sock_send_length sock:sock_recv_length sock:inet_sock_set_state tcp:tcp_sendmsg_locked tcp:tcp_send_reset tcp:tcp_receive_reset"
    [floor:syscall]="raw_syscalls:sys_exit sock:inet_sock_set_state tcp:tcp_send_reset tcp:tcp_receive_reset"
)
BODY=$(printf '%0100d' 0 | tr 0 x) # the 100-byte response body

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------ checks (install nothing)
[[ $EUID -eq 0 ]] || die "run as root (BPF, tshark on lo, sysctl)"
[[ "$SECS" =~ ^[0-9]+$ && "$SECS" -ge 1 ]] || die "BENCH_SECONDS must be a whole number >= 1"
[[ "$SAT_ROUNDS" =~ ^[0-9]+$ && "$SAT_ROUNDS" -ge 1 ]] || die "BENCH_ROUNDS must be a whole number >= 1"
declare -A PKG=([nginx]=nginx [wrk]=wrk [bpftrace]=bpftrace [tshark]=tshark [curl]=curl
    [openssl]=openssl [python3]=python3 [bpftool]=bpftool [unshare]=util-linux [sysctl]=procps)
missing=()
for cmd in nginx wrk bpftrace tshark curl openssl python3 bpftool unshare sysctl; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
if ((${#missing[@]})); then
    log "missing Debian packages: ${missing[*]}"
    log "install them with ./bench/deps.sh (or: apt-get install ${missing[*]})"
    exit 1
fi
[[ -x "$BIN" ]] || die "no binary at $BIN: run 'cargo build --release' first (make bench does)"
for w in "${WORKLOADS[@]}"; do
    case $w in saturation | rate5k | rate20k | churn | https) ;; *) die "unknown workload '$w'" ;; esac
done
for i in "${!ARMS[@]}"; do
    [[ ${ARMS[$i]} == floor ]] && ARMS[$i]=floor:syscalls # the floor's former name
    case ${ARMS[$i]} in
        baseline | floor:syscalls | floor:tracepoint | floor:syscall | tshark) ;;
        k8s-alog | k8s-alog:tracepoint | k8s-alog:fentry | k8s-alog:kprobe | k8s-alog:syscall) ;;
        *) die "unknown arm '${ARMS[$i]}' (arms: baseline floor:syscalls floor:tracepoint floor:syscall k8s-alog k8s-alog:RUNG tshark; RUNG: tracepoint fentry kprobe syscall)" ;;
    esac
done

NICE=${BENCH_NICE:--10}
[[ "$NICE" =~ ^-?[0-9]+$ ]] || die "BENCH_NICE must be an integer"
if [[ $NICE != 0 && -z ${BENCH_IN_SESSION:-} && -w /proc/self/autogroup ]] &&
    [[ $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null) == 1 ]]; then
    # With autogroup scheduling, niceness only counts inside a session's group: run in a
    # session of our own and make that group nice (other sessions keep their own groups).
    BENCH_IN_SESSION=1 setsid "$BASH" "$HERE/run.sh" "$@" &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
    rc=0
    while kill -0 "$child" 2>/dev/null; do
        wait "$child" && rc=0 || rc=$?
    done
    exit "$rc"
fi
if [[ $NICE != 0 ]]; then
    renice -n "$NICE" -p $$ >/dev/null 2>&1 || log "could not renice to $NICE"
    if [[ -n ${BENCH_IN_SESSION:-} ]]; then
        echo "$NICE" >/proc/self/autogroup 2>/dev/null || log "could not set the autogroup's niceness to $NICE"
    fi
fi

# ------------------------------------------------------------------ state and clean-up
START=$EPOCHREALTIME
WORK=$(mktemp -d /tmp/k8s-alog-bench.XXXXXX)
mkdir -p "$WORK/nginx" "$WORK/arms" "$WORK/tmp"
# measure one binary throughout, even if target/ is rebuilt while the benchmark runs
cp "$BIN" "$WORK/k8s-alog"
BIN_INFO="$BIN, built $(date -r "$BIN" '+%Y-%m-%d %H:%M:%S'), sha256 $(sha256sum "$BIN" | cut -c1-12)"
BIN=$WORK/k8s-alog
PIDS=()          # every background process still running that this script started
NGINX_PID=""
STATS_OLD=""     # kernel.bpf_stats_enabled before the run
declare -A UNAVAIL=() # arm -> why it cannot run here (found when it first failed to start)

forget() { # PID: drop it from PIDS (it has been reaped)
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

alive() { # PID: running (not a zombie); no fork
    local _a _b st
    { read -r _a _b st _ <"/proc/$1/stat"; } 2>/dev/null || return 1
    [[ -n $st && $st != Z ]]
}

STOP_RC=0
stop_pid() { # PID SIGNAL TIMEOUT_S [WAITER]: signal PID, wait up to TIMEOUT_S for WAITER (default
    # PID; a wrapper that exits when PID does) to exit, then SIGTERM, then SIGKILL; reap WAITER
    # and leave its exit code in STOP_RC
    local pid=$1 sig=$2 t=$3 waiter=${4:-$1} i rc=0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < t * 20; i++)); do
        alive "$waiter" || break
        sleep 0.05
    done
    if alive "$waiter" && [[ $sig != TERM ]]; then
        log "pid $pid did not exit ${t}s after SIG$sig: SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 60; i++)); do
            alive "$waiter" || break
            sleep 0.05
        done
    fi
    if alive "$waiter"; then
        log "pid $pid did not exit after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$waiter" 2>/dev/null || rc=$?
    forget "$waiter"
    forget "$pid"
    STOP_RC=$rc
}

_wrap() { # DIR CMD...: the wrapper subshell's body (see start_capture)
    local d=$1
    shift
    "$@" &
    echo $! >"$d/cap.pid"
    local rc=0
    wait $! || rc=$?
    times >"$d/cap.times"
    exit "$rc"
}

start_capture() { # DIR OUTFILE|err CMD...: start CMD (stdout to OUTFILE, stderr to DIR/err) in a
    # wrapper subshell that reaps it and records the CPU of its whole tree (DIR/cap.times, the
    # children line of `times`), so work done after the last /proc snapshot (tshark drains its
    # backlog after SIGINT) still counts. Sets CAP_PID (CMD) and WRAP_PID (wrapper).
    local d=$1 out=$2 i
    shift 2
    rm -f "$d/cap.pid"
    if [[ $out == err ]]; then
        _wrap "$d" "$@" >>"$d/err" 2>&1 &
    else
        _wrap "$d" "$@" >"$out" 2>>"$d/err" &
    fi
    WRAP_PID=$!
    PIDS+=("$WRAP_PID")
    for ((i = 0; i < 500; i++)); do
        [[ -s $d/cap.pid ]] && break
        sleep 0.01
    done
    CAP_PID=$(<"$d/cap.pid")
    PIDS+=("$CAP_PID")
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do
        [[ $p == "$NGINX_PID" ]] && continue
        alive "$p" && kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        [[ $p == "$NGINX_PID" ]] && continue
        for _ in 1 2 3 4 5 6 7 8 9 10; do alive "$p" || break; sleep 0.1; done
        alive "$p" && kill -KILL "$p" 2>/dev/null || true
    done
    if [[ -n $NGINX_PID ]]; then
        local workers
        workers=$(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null || true)
        kill -TERM "$NGINX_PID" 2>/dev/null || true # fast shutdown: the master stops its workers
        for _ in $(seq 30); do alive "$NGINX_PID" || break; sleep 0.1; done
        if alive "$NGINX_PID"; then
            kill -KILL "$NGINX_PID" 2>/dev/null || true
            for p in $workers; do kill -KILL "$p" 2>/dev/null || true; done
        fi
    fi
    wait 2>/dev/null || true
    if [[ -n $STATS_OLD ]]; then
        sysctl -qw "kernel.bpf_stats_enabled=$STATS_OLD" || log "could not restore kernel.bpf_stats_enabled=$STATS_OLD"
    fi
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ------------------------------------------------------------------ nginx on loopback
read -r HTTP_PORT HTTPS_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$WORK/nginx/key.pem" -out "$WORK/nginx/cert.pem" 2>/dev/null \
    || die "openssl could not make a self-signed certificate"

NG=$WORK/nginx
cat >"$NG/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections 8192; }
http {
    log_format bench '\$status \$request_completion';
    access_log $NG/access.log bench;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path $NG/tmp;
    default_type text/plain;
    server {
        listen 127.0.0.1:$HTTP_PORT backlog=4096;
        location /r { return 200 "$BODY"; }
    }
    server {
        listen 127.0.0.1:$HTTPS_PORT ssl backlog=4096;
        ssl_certificate $NG/cert.pem;
        ssl_certificate_key $NG/key.pem;
        location /r { return 200 "$BODY"; }
    }
}
EOF
nginx -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" -t -q 2>"$NG/t.err" || die "nginx -t: $(cat "$NG/t.err")"
nginx -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" 2>>"$NG/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/r" && curl -sk -o /dev/null "https://127.0.0.1:$HTTPS_PORT/r" && break
    alive "$NGINX_PID" || die "nginx exited: $(tail -3 "$NG/error.log")"
    sleep 0.1
done
got=$(curl -s "http://127.0.0.1:$HTTP_PORT/r") || die "nginx does not answer on $HTTP_PORT"
[[ ${#got} -eq 100 ]] || die "unexpected response body (${#got} bytes)"
curl -sk -o /dev/null "https://127.0.0.1:$HTTPS_PORT/r" || die "nginx does not answer HTTPS on $HTTPS_PORT"
log "binary: $BIN_INFO"
log "nginx (pid $NGINX_PID) on 127.0.0.1:$HTTP_PORT (http) and :$HTTPS_PORT (https), dir $WORK"

STATS_OLD=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1

# ------------------------------------------------------------------ one arm
now_us() { local t=${EPOCHREALTIME}; echo "${t/./}"; }

has_line() { # FILE STRING: FILE has a line containing STRING (no fork)
    local line
    [[ -r $1 ]] || return 1
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line == *"$2"* ]] && return 0
    done <"$1"
    return 1
}

wait_ready() { # PID FILE STRING: 0 ready, 1 exited, 2 timeout (30 s)
    local pid=$1 f=$2 s=$3 i
    for ((i = 0; i < 3000; i++)); do
        has_line "$f" "$s" && return 0
        alive "$pid" || { has_line "$f" "$s" && return 0; return 1; }
        sleep 0.01
    done
    return 2
}

NARMS=0
TOTAL_ARMS=0
for w in "${WORKLOADS[@]}"; do
    r=$ROUNDS
    [[ $w == saturation ]] && r=$SAT_ROUNDS
    TOTAL_ARMS=$((TOTAL_ARMS + r * ${#ARMS[@]}))
done

run_arm() { # WORKLOAD ROUND ARM
    local w=$1 round=$2 arm=$3 port url d pid="" ready rc t0 t1 t2 t3 t4="" t5 t6 wpid names="" capout=""
    local -a wrk_args=(-t"$THREADS" -c32 -d"${SECS}s" --timeout 5s -s "$HERE/wrk.lua")
    local rate=0
    port=$HTTP_PORT
    url="http://127.0.0.1:$HTTP_PORT/r"
    case $w in
        saturation) ;;
        rate5k) rate=5000; wrk_args[1]=-c64 ;;
        rate20k) rate=20000; wrk_args[1]=-c64 ;;
        churn) wrk_args+=(-H "Connection: close") ;;
        https) port=$HTTPS_PORT; url="https://127.0.0.1:$HTTPS_PORT/r" ;;
    esac
    NARMS=$((NARMS + 1))
    d=$WORK/arms/$(printf '%s.%02d.%s' "$w" "$round" "$arm")
    mkdir -p "$d"
    printf 'workload=%s\nround=%s\narm=%s\n' "$w" "$round" "$arm" >"$d/meta"
    : >"$NG/access.log" # nginx appends (O_APPEND): truncating restarts the count
    : >"$d/err"

    if [[ -n ${UNAVAIL[$arm]:-} ]]; then # refused here before: no point starting it again
        echo "unavailable=${UNAVAIL[$arm]}" >>"$d/meta"
        printf '[%3d/%d] ' "$NARMS" "$TOTAL_ARMS" >&2
        python3 "$LIB" arm "$d" >&2 || log "could not summarise $d"
        return 0
    fi

    t0=$(now_us)
    case $arm in
        floor:*)
            local tp prog="" tracefs=1
            for tp in ${FLOOR_TPS[$arm]}; do
                prog+="tracepoint:$tp {} "
                names+="${names:+,}${tp#*:}"
                [[ -d /sys/kernel/tracing/events/${tp%%:*} || -d /sys/kernel/debug/tracing/events/${tp%%:*} ]] || tracefs=0
            done
            if ((tracefs)); then
                start_capture "$d" err bpftrace -e "$prog"
            else
                # tracefs is not mounted here: mount it in a private mount namespace for bpftrace only
                start_capture "$d" err unshare --mount --propagation private -- sh -c \
                    'mount -t tracefs nodev /sys/kernel/tracing && exec "$@"' sh bpftrace -e "$prog"
            fi
            # names: the programs bpftrace loads are named after the events (lib.py matches
            # the kernel's 15-character cut of longer names)
            ready="Attaching" ;;
        k8s-alog*)
            capout=$d/out.jsonl
            local hooks=auto
            [[ $arm == k8s-alog:* ]] && hooks=${arm#k8s-alog:}
            start_capture "$d" /dev/null env K8S_ALOG_HOOKS="$hooks" "$BIN" record --out "$d/out.jsonl" --port "$port"
            # every program it holds (the data hooks of its rung, on_state, on_send_reset,
            # on_receive_reset, on_exec, and whatever else this version loads, e.g. TLS uprobes)
            ready="capturing:"; names="*" ;;
        tshark)
            # -l: flush each line, so what it has decoded by the end of the load can be counted
            capout=$d/ts.out
            start_capture "$d" "$d/ts.out" env TMPDIR="$WORK/tmp" tshark -l -i lo -f "tcp port $port" \
                -d "tcp.port==$port,http" -Y http -T fields -e http.request.method -e http.response.code
            ready="Capturing on" ;;
    esac
    [[ $arm == baseline ]] || pid=$CAP_PID
    if [[ -n $pid ]]; then
        rc=0
        wait_ready "$pid" "$d/err" "$ready" || rc=$?
        t1=$(now_us)
        if ((rc != 0)); then
            stop_pid "$pid" INT 5 "$WRAP_PID"
            echo "exit_code=$STOP_RC" >>"$d/meta"
            # exited before it was ready: k8s-alog with code 5 (no hook of the forced rung here)
            # or bpftrace (no such tracepoint, not allowed): skip this arm from now on
            if [[ $rc == 1 && ($arm == floor:* || ($arm == k8s-alog:* && $STOP_RC == 5)) ]]; then
                UNAVAIL[$arm]=$(python3 "$LIB" errline "$d/err")
                log "$arm: not available on this kernel: ${UNAVAIL[$arm]}"
                echo "unavailable=${UNAVAIL[$arm]}" >>"$d/meta"
            else
                echo "error=$arm not ready ($([[ $rc == 1 ]] && echo exited || echo timeout)): $(tail -c 300 "$d/err" | tr '\n' ' ')" >>"$d/meta"
            fi
            printf '[%3d/%d] ' "$NARMS" "$TOTAL_ARMS" >&2
            python3 "$LIB" arm "$d" >&2 || log "could not summarise $d"
            return 0
        fi
        echo "attach_ms=$(((t1 - t0) / 1000))" >>"$d/meta"
        if [[ $arm == k8s-alog* ]]; then
            echo "attach_ms_self=$(sed -n 's/.*attached in \([0-9]*\) ms.*/\1/p' "$d/err" | head -1)" >>"$d/meta"
        fi
    fi
    sleep 0.5 # let the capture settle (tshark: dumpcap starts just before its banner)
    python3 "$LIB" snap start "${pid:-0}" "$names" "$NGINX_PID" >"$d/snap0.json"
    times >"$d/times0" # children's CPU so far: the difference after wrk is wrk's CPU
    t2=$(now_us)

    BENCH_RATE=$rate BENCH_THREADS=$THREADS wrk "${wrk_args[@]}" "$url" >"$d/wrk.out" 2>&1 &
    wpid=$!
    PIDS+=("$wpid")
    rc=0
    wait "$wpid" || rc=$?
    forget "$wpid"
    ((rc == 0)) || echo "error=wrk exit code $rc: $(tail -c 300 "$d/wrk.out" | tr '\n' ' ')" >>"$d/meta"

    times >"$d/times1"
    t3=$(now_us)
    # end of the load window; then the capture finishes what the load queued (at most 3 s)
    python3 "$LIB" snap end "${pid:-0}" "$names" "$NGINX_PID" "$capout" >"$d/snap1.json"
    if [[ -n $pid ]]; then
        alive "$pid" || echo "error=$arm exited during the load: $(tail -c 300 "$d/err" | tr '\n' ' ')" >>"$d/meta"
        t4=$(now_us)
        # bpftrace sometimes ignores SIGINT for a long time here; SIGTERM stops it as cleanly
        if [[ $arm == floor:* ]]; then stop_pid "$pid" TERM 10 "$WRAP_PID"; else stop_pid "$pid" INT 30 "$WRAP_PID"; fi
        echo "exit_code=$STOP_RC" >>"$d/meta"
        echo "drain_ms=$((($(now_us) - t3) / 1000))" >>"$d/meta"
    fi
    t5=$(now_us)
    # requests made: answered 200 and the whole response handed to the kernel ($request_completion)
    printf 'made=%s\nmade_other=%s\n' "$(grep -c '^200 OK$' "$NG/access.log" || true)" \
        "$(grep -vc '^200 OK$' "$NG/access.log" || true)" >>"$d/meta"
    printf '[%3d/%d] ' "$NARMS" "$TOTAL_ARMS" >&2
    python3 "$LIB" arm "$d" >&2 || log "could not summarise $d"
    [[ ${BENCH_KEEP:-0} == 1 ]] || rm -f "$d/out.jsonl" "$d/ts.out"
    t6=$(now_us)
    # where the time went (s): start-up to ready+0.5 s, load, snapshots+settle, stop, parse
    printf 'phase_s=%s %s %s %s %s\n' "$(((t2 - t0) / 1000))" "$(((t3 - t2) / 1000))" "$((((${t4:-$t3}) - t3) / 1000))" \
        "$(((t5 - ${t4:-$t3}) / 1000))" "$(((t6 - t5) / 1000))" >>"$d/meta"
    sleep 0.5 # gap between arms
}

# ------------------------------------------------------------------ rounds
log "workloads: ${WORKLOADS[*]}; arms: ${ARMS[*]}; ${SECS} s per load; rounds: saturation $SAT_ROUNDS, others $ROUNDS ($TOTAL_ARMS arm runs)"
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for w in "${WORKLOADS[@]}"; do
    nr=$ROUNDS
    [[ $w == saturation ]] && nr=$SAT_ROUNDS
    for ((round = 1; round <= nr; round++)); do
        n=${#ARMS[@]}
        for ((i = 0; i < n; i++)); do
            run_arm "$w" "$round" "${ARMS[$(((i + round - 1) % n))]}"
        done
    done
done

runtime=$(python3 -c "print(round(($(now_us) - ${START/./}) / 1e6))")
meta=$(python3 -c '
import json, os, sys
print(json.dumps({"when": sys.argv[1], "cpus": str(os.cpu_count()), "kernel": os.uname().release,
  "workloads": sys.argv[2].split(), "runtime_s": sys.argv[3], "binary": sys.argv[6],
  "note": "load average at end " + open("/proc/loadavg").read().split()[0] + "; " + sys.argv[4] + " s per load; niceness " + sys.argv[5]}))' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${WORKLOADS[*]}" "$runtime" "$SECS" "$(ps -o ni= -p $$ | tr -d ' ')$([[ -r /proc/self/autogroup ]] && echo " ($(sed 's/.*nice/autogroup nice/' /proc/self/autogroup))")" "$BIN_INFO")
echo >&2
python3 "$LIB" report "$WORK/arms" "$OUT" "$meta"
log "report written to $OUT (raw results: $OUT.json); total runtime ${runtime} s"
