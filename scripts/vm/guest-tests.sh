#!/usr/bin/env bash
# Runs inside a guest booted by run.sh (see test-kernels.sh): `k8s-alog doctor`, then each
# test binary given, against the k8s-alog binary given. Prints one `matrix:` line per step
# for test-kernels.sh to collect; exits non-zero if doctor did not say "capture runs fully"
# or a test binary failed.
#
#   guest-tests.sh K8S_ALOG_BIN NAME=TEST_BINARY...
set -uo pipefail

bin=$1
shift
export K8S_ALOG_BIN=$bin
# Emulated CPUs (TCG) start the capture many times slower: attaching kprobes alone takes
# seconds. Only the start-up wait is longer; every assertion stays as it is.
export K8S_ALOG_TEST_START_SECS=${K8S_ALOG_TEST_START_SECS:-120}
rc=0

t0=$(date +%s)
doc=$("$bin" doctor --timeout 1 2>&1)
drc=$?
hooks=$(printf '%s\n' "$doc" | awk '$1 == "hooks" { printf "%s%s=%s", sep, $2, $3; sep = "," }')
printf '%s\n' "$doc" | sed 's/^/  doctor| /'
echo "matrix: doctor exit=$drc hooks=${hooks:-none} kernel=$(uname -r) lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null | sed 's/.*\[\(.*\)\].*/\1/') secs=$(($(date +%s) - t0))"
((drc == 0)) || rc=1

for spec in "$@"; do
    name=${spec%%=*}
    test=${spec#*=}
    t0=$(date +%s)
    out=$("$test" --test-threads=1 2>&1)
    trc=$?
    printf '%s\n' "$out" | sed "s/^/  $name| /"
    summary=$(printf '%s\n' "$out" | grep -E '^test result:' | tail -n 1)
    passed=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$summary")
    failed=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$summary")
    echo "matrix: $name exit=$trc passed=${passed:-0} failed=${failed:-?} secs=$(($(date +%s) - t0))"
    ((trc == 0)) || rc=1
done
exit "$rc"
