#!/usr/bin/env bash
# The capture tests on real kernels (`make test-kernels`): each configuration boots a Debian
# kernel in QEMU (run.sh) and runs inside it `k8s-alog doctor` and the capture test binaries
# (real servers and clients on the guest's loopback) against the static binary, then prints
# the matrix: kernel, boot options, the hook rung of each hook, tests passed, time.
#
#   scripts/vm/test-kernels.sh [CONFIG...]
#
# CONFIG is KERNEL[,lockdown][,hooks=RUNG][:SUITE+SUITE...], e.g. `6.1`, `6.12`,
# `6.1,lockdown,hooks=kprobe:http1+http2`. SUITE is http1, http2 or tls (default all three).
# Without arguments: $K8S_ALOG_KERNELS, else the CI matrix below.
#
# Environment: K8S_ALOG_BIN (default the static build), K8S_ALOG_VM_TIMEOUT (seconds per
# configuration, default 2400). Needs root, `make deps`, and a built tree: the
# static binary (`make static`) and the test binaries (`cargo test --release --no-run`);
# `make test-kernels` builds both.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$(dirname "$here")")
cd "$root"

# 6.1 and 6.12 pick their own rungs (6.1: fentry everywhere; 6.12: socket tracepoints and
# fentry for the send start); the locked-down 6.1 runs are forced onto the kprobe and
# syscall rungs, so that every rung runs on an old kernel too.
default_matrix="6.1 6.12 6.1,lockdown,hooks=kprobe:http1+http2 6.1,lockdown,hooks=syscall:http1"
read -r -a configs <<<"${*:-${K8S_ALOG_KERNELS:-$default_matrix}}"
bin=${K8S_ALOG_BIN:-$root/target/x86_64-unknown-linux-gnu/release/k8s-alog}
timeout=${K8S_ALOG_VM_TIMEOUT:-2400}
[[ -x $bin ]] || { echo "test-kernels: no binary at $bin (make static)" >&2; exit 2; }

# The test binaries, as cargo built them (the newest of each name).
declare -A tests=()
while IFS=' ' read -r name path; do
    tests[$name]=$path
done < <(cargo test --release --no-run --message-format=json \
    --test capture_http1 --test capture_http2 --test capture_tls 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"].replace("capture_", ""), m["executable"])
')
for s in http1 http2 tls; do
    [[ -n ${tests[$s]:-} ]] || { echo "test-kernels: test binary capture_$s not found" >&2; exit 2; }
done

results=()
fail=0 total_passed=0 total_failed=0
for cfg in "${configs[@]}"; do
    spec=${cfg%%:*}
    suites=http1+http2+tls
    [[ $cfg == *:* ]] && suites=${cfg#*:}
    IFS=, read -r -a parts <<<"$spec"
    kernel=${parts[0]}
    append=() envs=() hooks=auto
    for p in "${parts[@]:1}"; do
        case $p in
        lockdown) append=(--append lockdown=integrity) ;;
        hooks=*) hooks=${p#hooks=}; envs=(--env "K8S_ALOG_HOOKS=$hooks") ;;
        *) echo "test-kernels: unknown option '$p' in $cfg" >&2; exit 2 ;;
        esac
    done
    args=()
    IFS=+ read -r -a want <<<"$suites"
    for s in "${want[@]}"; do
        [[ -n ${tests[$s]:-} ]] || { echo "test-kernels: unknown suite '$s' in $cfg" >&2; exit 2; }
        args+=("$s=${tests[$s]}")
    done
    log=$(mktemp /tmp/k8s-alog-kernel.XXXXXX)
    echo "== $cfg: booting $kernel (log $log)" >&2
    t0=$(date +%s)
    rc=0
    "$here/run.sh" "$kernel" "${append[@]}" "${envs[@]}" --timeout "$timeout" -- \
        bash "$here/guest-tests.sh" "$bin" "${args[@]}" >"$log" 2>&1 || rc=$?
    secs=$(($(date +%s) - t0))
    grep -E '^matrix: |^vm: |test result|panicked|FAILED' "$log" >&2 || true
    doctor=$(grep -m1 '^matrix: doctor' "$log" || true)
    krel=$(sed -n 's/.* kernel=\([^ ]*\).*/\1/p' <<<"$doctor")
    rungs=$(sed -n 's/.* hooks=\([^ ]*\).*/\1/p' <<<"$doctor")
    dexit=$(sed -n 's/.* exit=\([0-9]*\).*/\1/p' <<<"$doctor")
    line=""
    while read -r _ name _ p f _; do
        p=${p#passed=} f=${f#failed=}
        [[ $f =~ ^[0-9]+$ ]] || f=1
        line+="$name $p/$((p + f)) "
        total_passed=$((total_passed + p)) total_failed=$((total_failed + f))
    done < <(grep -E '^matrix: (http1|http2|tls) ' "$log")
    ((rc == 0)) && status=ok || { status="FAILED (exit $rc)"; fail=1; }
    [[ ${#append[@]} -gt 0 ]] && opts=lockdown=integrity || opts=-
    results+=("$(printf '%-22s %-12s %-6s %-52s %-8s %-28s %6ss %s' "${krel:-$kernel}" "$opts" "$hooks" \
        "${rungs:-?}" "${dexit:-?}" "$line" "$secs" "$status")")
    ((rc == 0)) && rm -f "$log"
done

echo
printf '%-22s %-12s %-6s %-52s %-8s %-28s %7s %s\n' kernel boot forced "rung per hook (doctor)" doctor "tests passed" time status
printf '%s\n' "${results[@]}"
echo "kernels: $total_passed passed, $total_failed failed"
exit "$fail"
