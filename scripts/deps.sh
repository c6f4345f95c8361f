#!/usr/bin/env bash
# Install what building and testing k8s-alog needs on a Debian machine (run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(clang libelf-dev zlib1g-dev pkg-config bpftool make curl nginx wrk python3 iproute2)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-gnu || rustup target add x86_64-unknown-linux-gnu
