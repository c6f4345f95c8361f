#!/usr/bin/env bash
# Install the Debian packages `make bench` (bench/run.sh) needs. Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(nginx wrk bpftrace tshark curl openssl python3 bpftool procps)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "bench/deps.sh: all present (${pkgs[*]})"
    exit 0
fi
# tshark's postinst asks whether non-root users may capture; answer "no" up front.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian starts nginx on port 80 after installing it; the benchmark runs its own instance.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    systemctl stop nginx || true
fi
echo "bench/deps.sh: installed ${missing[*]}"
