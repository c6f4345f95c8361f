#!/usr/bin/env bash
# A simulated Kubernetes node, built and torn down by the tests (tests/sim/) and by demos:
# pods as network namespaces on a bridge (198.18.7.0/24), their processes in cgroup v2
# directories shaped as a kubelet with containerd makes them
# (<cgroup2>/kubepods/<qos>/pod<uid>/<64-hex id>), the kubelet's log layout under a
# root directory, and Service cluster IPs DNAT'ed by nft in the root namespace as
# kube-proxy does. Pod-to-pod traffic is routed through the root namespace (pods have /32
# addresses and the bridge as gateway for 198.18.0.0/15 only), so conntrack sees and un-NATs both directions
# without br_netfilter.
#
# Usage (root):
#   scripts/simnode.sh up   [ROOT]    build it; describes itself in ROOT/sim.json
#   scripts/simnode.sh down [ROOT]    remove everything, restore sysctls
#   scripts/simnode.sh exec ROOT POD CONTAINER CMD...   run CMD as that container
#       (its cgroup, its pod's network namespace)
# ROOT defaults to /tmp/alogsim. `up` first runs `down`, so leftovers never pile up.
set -euo pipefail

P=alogsim                       # prefix of every name made here
BR=${P}0
GW=198.18.7.1
ROOT=${2:-/tmp/alogsim}
STATE=$ROOT/state

die() { echo "simnode: $*" >&2; exit 1; }

cgroup2() {
    # The cgroup v2 mount, from mountinfo ("... - cgroup2 ..."); hybrid hosts have it at
    # /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup.
    awk '$0 ~ / - cgroup2 / && $4 == "/" { print $5; exit }' /proc/self/mountinfo
}

hex64() { printf '%s' "$1" | sha256sum | cut -c1-64; }

# key | namespace | pod name | uid | ip | qos | containers (name,name)
PODS=(
    "web|shop|web-7d4b9c8f6d-x2x9k|5f0c2a1e-7b3d-4c8e-9a6f-1d2e3f4a5b61|198.18.7.11|besteffort|web"
    "cart|shop|cart-0|6a1d3b2f-8c4e-4d9f-8b7a-2e3f4a5b6c72|198.18.7.12|burstable|cart,proxy"
    "pay|pay|payment-5f8b9c7d44-q2w7z|7b2e4c3a-9d5f-4eaa-9c8b-3f4a5b6c7d83|198.18.7.13|besteffort|payment"
)
# name | namespace | cluster ip | port | backend pod key | target port
SERVICES=(
    "cart|shop|198.19.7.10|80|cart|8080"
    "payment|pay|198.19.7.11|80|pay|8080"
)

field() { echo "$1" | cut -d'|' -f"$2"; }

pod_cgroup() { # key -> pod cgroup dir
    local line
    for line in "${PODS[@]}"; do
        if [[ $(field "$line" 1) == "$1" ]]; then
            echo "$(cgroup2)/kubepods/$(field "$line" 6)/pod$(field "$line" 4)"
            return
        fi
    done
    die "no pod $1"
}

down() {
    local cg line key
    cg=$(cgroup2 || true)
    if [[ -f $STATE/pids ]]; then
        while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$STATE/pids"
    fi
    for line in "${PODS[@]}"; do
        key=$(field "$line" 1)
        local dir
        dir=$cg/kubepods/$(field "$line" 6)/pod$(field "$line" 4)
        if [[ -n $cg && -d $dir ]]; then
            # Anything still running in the pod (a test's server) goes too.
            for procs in "$dir"/*/cgroup.procs; do
                [[ -f $procs ]] || continue
                while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$procs"
            done
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                rmdir "$dir"/*/ 2>/dev/null || true
                rmdir "$dir" 2>/dev/null && break
                sleep 0.1
            done
        fi
        ip netns del "$P-$key" 2>/dev/null || true
    done
    if [[ -f $STATE/made_kubepods && -n $cg ]]; then
        rmdir "$cg"/kubepods/besteffort "$cg"/kubepods/burstable "$cg"/kubepods 2>/dev/null || true
    fi
    nft delete table ip "$P" 2>/dev/null || true
    ip link del "$BR" 2>/dev/null || true
    if [[ -f $STATE/ip_forward ]]; then
        sysctl -qw net.ipv4.ip_forward="$(cat "$STATE/ip_forward")" || true
    fi
    # Only a directory this script made (it holds sim.json or state/) is removed.
    if [[ -d $STATE || -f $ROOT/sim.json ]]; then
        rm -rf "$ROOT"
    fi
}

up() {
    command -v nft >/dev/null || die "nft not found (apt-get install nftables)"
    local cg
    cg=$(cgroup2)
    [[ -n $cg ]] || die "no cgroup v2 mount"
    down
    mkdir -p "$STATE" "$ROOT/var/log/pods" "$ROOT/var/log/containers"
    cat /proc/sys/net/ipv4/ip_forward >"$STATE/ip_forward"
    [[ -d $cg/kubepods ]] || touch "$STATE/made_kubepods"
    : >"$STATE/pids"

    ip link add "$BR" type bridge
    ip addr add "$GW/24" dev "$BR"
    ip link set "$BR" up
    sysctl -qw net.ipv4.ip_forward=1

    local json_pods="" i=0 line
    for line in "${PODS[@]}"; do
        i=$((i + 1))
        local key ns name uid ip qos ctrs
        key=$(field "$line" 1) ns=$(field "$line" 2) name=$(field "$line" 3)
        uid=$(field "$line" 4) ip=$(field "$line" 5) qos=$(field "$line" 6) ctrs=$(field "$line" 7)
        local netns=$P-$key host_if=${P}h$i
        ip netns add "$netns"
        ip link add "$host_if" type veth peer name eth0 netns "$netns"
        ip link set "$host_if" master "$BR" up
        ip -n "$netns" link set lo up
        ip -n "$netns" addr add "$ip/32" dev eth0
        ip -n "$netns" link set eth0 up
        ip -n "$netns" route add "$GW" dev eth0 scope link
        # No default route: pods reach 198.18.0.0/15 (pods, Service IPs) and nothing
        # off this machine.
        ip -n "$netns" route add 198.18.0.0/15 via "$GW" dev eth0
        # Every packet between pods goes through the root namespace (as with routed
        # CNIs): redirects to a neighbour pod would bypass the DNAT.
        ip netns exec "$netns" sysctl -qw net.ipv4.conf.all.accept_redirects=0 net.ipv4.conf.eth0.accept_redirects=0

        # cgroups: the sandbox (pause) and one per container, as containerd + runc make them.
        local pod_cg=$cg/kubepods/$qos/pod$uid sandbox
        sandbox=$(hex64 "sandbox-$uid")
        mkdir -p "$pod_cg/$sandbox"
        # A pause process: holds the sandbox cgroup and the pod's network namespace.
        # (Join the cgroup before entering the namespace: `ip netns exec` would hide the
        # cgroup mount behind a fresh /sys.)
        sh -c "echo \$\$ > '$pod_cg/$sandbox/cgroup.procs'; exec nsenter --net=/run/netns/$netns sleep 1000000" </dev/null >/dev/null 2>&1 &
        echo $! >>"$STATE/pids"

        local pod_log=$ROOT/var/log/pods/${ns}_${name}_${uid} json_ctrs="" c
        for c in ${ctrs//,/ }; do
            local cid
            cid=$(hex64 "container-$uid-$c")
            mkdir -p "$pod_cg/$cid" "$pod_log/$c"
            : >"$pod_log/$c/0.log"
            ln -s "$pod_log/$c/0.log" "$ROOT/var/log/containers/${name}_${ns}_${c}-${cid}.log"
            json_ctrs+="${json_ctrs:+,}{\"name\":\"$c\",\"id\":\"$cid\",\"cgroup\":\"$pod_cg/$cid\"}"
        done
        json_pods+="${json_pods:+,}
    {\"key\":\"$key\",\"namespace\":\"$ns\",\"name\":\"$name\",\"uid\":\"$uid\",\"ip\":\"$ip\",\"qos\":\"$qos\",\"netns\":\"$netns\",\"sandbox_id\":\"$sandbox\",\"sandbox_cgroup\":\"$pod_cg/$sandbox\",\"containers\":[$json_ctrs]}"
    done

    # kube-proxy's part: DNAT from each Service IP to its backend, for traffic from pods
    # (prerouting) and from the node itself (output).
    local rules="" json_svcs=""
    for line in "${SERVICES[@]}"; do
        local sname sns sip sport backend tport bip
        sname=$(field "$line" 1) sns=$(field "$line" 2) sip=$(field "$line" 3)
        sport=$(field "$line" 4) backend=$(field "$line" 5) tport=$(field "$line" 6)
        bip=""
        local l2
        for l2 in "${PODS[@]}"; do
            [[ $(field "$l2" 1) == "$backend" ]] && bip=$(field "$l2" 5)
        done
        rules+="        ip daddr $sip tcp dport $sport dnat to $bip:$tport"$'\n'
        json_svcs+="${json_svcs:+,}
    {\"name\":\"$sname\",\"namespace\":\"$sns\",\"ip\":\"$sip\",\"port\":$sport,\"backend\":\"$backend\",\"target_port\":$tport}"
    done
    nft -f - <<EOF
table ip $P {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
$rules    }
    chain output {
        type nat hook output priority -100; policy accept;
$rules    }
    # Defence in depth: nothing from the pods is forwarded off 198.18.0.0/15.
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip saddr 198.18.7.0/24 ip daddr != 198.18.0.0/15 drop
    }
}
EOF

    cat >"$ROOT/sim.json" <<EOF
{
  "root": "$ROOT",
  "cgroup_root": "$cg",
  "kubelet_pods_dir": "$ROOT/var/log/pods",
  "gateway": "$GW",
  "pods": [$json_pods
  ],
  "services": [$json_svcs
  ]
}
EOF
    echo "simnode: up; $ROOT/sim.json describes it"
}

run_in() { # ROOT POD CONTAINER CMD...
    local key=$1 ctr=$2
    shift 2
    local pod_cg line uid=""
    pod_cg=$(pod_cgroup "$key")
    for line in "${PODS[@]}"; do
        [[ $(field "$line" 1) == "$key" ]] && uid=$(field "$line" 4)
    done
    echo $$ >"$pod_cg/$(hex64 "container-$uid-$ctr")/cgroup.procs"
    exec nsenter --net="/run/netns/$P-$key" -- "$@"
}

case ${1:-} in
up) up ;;
down) down ;;
exec)
    [[ $# -ge 5 ]] || die "usage: $0 exec ROOT POD CONTAINER CMD..."
    shift 2
    run_in "$@"
    ;;
*) die "usage: $0 up|down [ROOT] | exec ROOT POD CONTAINER CMD..." ;;
esac
