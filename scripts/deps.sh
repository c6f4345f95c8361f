#!/usr/bin/env bash
# Install what building and testing k8s-alog needs on a Debian machine (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
pkgs=(
    # build
    clang libelf-dev zlib1g-dev pkg-config bpftool make
    # real peers for the capture tests
    curl nginx wrk python3 python3-pip nghttp2-client nghttp2-server openssl golang-go gcc libssl-dev
    # the simulated node and the real containerd of the Kubernetes tests
    iproute2 nftables containerd runc containernetworking-plugins busybox-static
    # shipping checks: a real DNS server for the static binary's resolver test
    dnsmasq-base
    # `top` end to end: the dashboard in a real terminal
    tmux
    # other kernels booted in QEMU (scripts/vm): the emulator, depmod/modprobe, the guest's init
    qemu-system-x86 kmod busybox-static xz-utils
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# gRPC and HTTP/2 test peers, for the interpreter the tests run (Debian's).
py=/usr/bin/python3
if ! "$py" -c 'import grpc, grpc_tools, h2' 2>/dev/null; then
    "$py" -m pip install -q --break-system-packages --root-user-action=ignore \
        -r tests/fixtures/grpc/requirements.txt -r tests/fixtures/h2/requirements.txt
fi
# Kubernetes JSON schemas for the deploy/ manifests' check (tests/ship.rs).
if ! "$py" -c 'import kubernetes_validate' 2>/dev/null; then
    "$py" -m pip install -q --break-system-packages --root-user-action=ignore 'kubernetes-validate==1.37.0'
fi
rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-gnu || rustup target add x86_64-unknown-linux-gnu
