#!/usr/bin/env bash
# Installs what scripts/vm/run.sh needs on a Debian machine (run as root): QEMU, kmod
# (depmod for the unpacked kernels, modprobe inside the guest) and a static busybox (the
# guest's init).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(qemu-system-x86 kmod busybox-static xz-utils)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
