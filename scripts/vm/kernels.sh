#!/usr/bin/env bash
# Debian kernels the test VM can boot, fetched with apt-get download and unpacked into a cache.
#
#   scripts/vm/kernels.sh KERNEL     fetch (if needed) and print the unpacked kernel's directory
#   scripts/vm/kernels.sh --list     show the table
#
# Sourced by run.sh for vm_kernel_fetch. Only Debian's archives are used, so whatever
# apt can reach on the machine decides which exact build is booted; run.sh prints it.

# KERNEL name -> extended regexp on package names; the newest match (sort -V) is used.
# Generic flavours only: the cloud flavour has no 9p, which the guest mounts the host with.
VM_KERNELS=(
    "6.1    ^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"
    "6.12   ^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$"
)

VM_CACHE=${K8S_ALOG_VM_CACHE:-/var/cache/k8s-alog-vm}

vm_die() { echo "vm: $*" >&2; exit 125; }

vm_kernel_pattern() {
    local row name pat
    for row in "${VM_KERNELS[@]}"; do
        read -r name pat <<<"$row"
        [[ $name == "$1" ]] && { echo "$pat"; return 0; }
    done
    return 1
}

# Newest package matching $1 whose candidate version apt knows, as "name version".
vm_kernel_newest() {
    local pkg ver
    pkg=$(apt-cache search --names-only "$1" 2>/dev/null | awk '{print $1}' | grep -E "$1" | sort -V | tail -n1)
    [[ -n $pkg ]] || return 1
    ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
    [[ -n $ver && $ver != "(none)" ]] || return 1
    echo "$pkg $ver"
}

# Newest earlier unpacked kernel whose package matches $1, for when apt cannot help.
vm_kernel_cached() {
    local d
    for d in "$VM_CACHE"/*_*/.complete; do
        d=${d%/.complete}
        [[ -e $d/package ]] && grep -Eq "$1" <<<"$(cut -d' ' -f1 "$d/package")" && echo "$d"
    done | sort -V | tail -n1 || true
}

# Unpacks KERNEL into $VM_CACHE/<package>_<version>/ and prints that directory. The caller
# holds the cache lock. The chosen package is reported on stderr.
vm_kernel_fetch() {
    local kernel=$1 pat found pkg ver dir tmp deb kver
    local names=("${VM_KERNELS[@]%% *}")
    pat=$(vm_kernel_pattern "$kernel") || vm_die "unknown kernel '$kernel' (known: ${names[*]})"
    found=$(vm_kernel_newest "$pat") || {
        # Fresh machines have no package lists yet.
        apt-get update -qq >/dev/null 2>&1 || true
        found=$(vm_kernel_newest "$pat")
    } || found=""
    if [[ -z $found ]]; then
        dir=$(vm_kernel_cached "$pat")
        [[ -n $dir ]] || vm_die "no Debian package matches '$pat' (apt-cache search); is deb.debian.org/debian-security in the apt sources?"
        echo "vm: kernel package not found by apt, using cached $(basename "$dir")" >&2
        echo "$dir"
        return 0
    fi
    read -r pkg ver <<<"$found"
    dir=$VM_CACHE/${pkg}_${ver}
    if [[ ! -e $dir/.complete ]]; then
        # Leftovers of an interrupted fetch (we hold the lock, so nobody else is fetching).
        rm -rf "$dir" "$VM_CACHE"/.fetch.*
        tmp=$(mktemp -d "$VM_CACHE/.fetch.XXXXXX")
        # The sandbox user _apt cannot write into a root-only temp dir.
        if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$ver") >&2; then
            rm -rf "$tmp"
            dir=$(vm_kernel_cached "$pat")
            [[ -n $dir ]] || vm_die "apt-get download $pkg=$ver failed"
            echo "vm: apt-get download $pkg=$ver failed, using cached $(basename "$dir")" >&2
            echo "$dir"
            return 0
        fi
        deb=$(compgen -G "$tmp/*.deb" | head -n1)
        mkdir "$tmp/root"
        dpkg-deb -x "$deb" "$tmp/root"
        kver=$(basename "$(compgen -G "$tmp/root/lib/modules/*" | head -n1)")
        [[ -n $kver && -e $tmp/root/boot/vmlinuz-$kver ]] || { rm -rf "$tmp"; vm_die "$pkg has no vmlinuz/modules"; }
        # The package ships no modules.dep (its postinst runs depmod); modprobe in the guest needs it.
        depmod -b "$tmp/root" "$kver"
        rm -f "$deb"
        echo "$kver" >"$tmp/root/kernel-release"
        echo "$pkg $ver" >"$tmp/root/package"
        mv "$tmp/root" "$dir"
        rmdir "$tmp"
        touch "$dir/.complete"
    fi
    echo "$dir"
}

# Prints the image QEMU should boot from the unpacked kernel in $1. Under TCG, unpacking a
# bzImage's payload costs seconds per boot (about 5 s for 6.1's xz), so the payload is
# unpacked once into an ELF vmlinux, which QEMU boots directly through its PVH entry
# point. Falls back to the bzImage when that cannot be had. The caller holds the lock.
vm_kernel_image() {
    local kdir=$1 kver cfg vmlinuz elf magic unpack off
    kver=$(cat "$kdir/kernel-release")
    cfg=$kdir/boot/config-$kver vmlinuz=$kdir/boot/vmlinuz-$kver elf=$kdir/boot/vmlinux-$kver
    if [[ ! -e $elf && ! -e $elf.none ]]; then
        case $(grep -oE '^CONFIG_KERNEL_(XZ|ZSTD|GZIP)=y' "$cfg") in
        *XZ*) magic='\xfd7zXZ\x00' unpack=(xz -dcq --single-stream) ;;
        *ZSTD*) magic='\x28\xb5\x2f\xfd' unpack=(zstd -dcq) ;;
        *GZIP*) magic='\x1f\x8b\x08' unpack=(gzip -dcq) ;;
        *) magic="" ;;
        esac
        off=""
        [[ -n $magic ]] && grep -q '^CONFIG_PVH=y' "$cfg" &&
            off=$(LC_ALL=C grep -obUaP "$magic" "$vmlinuz" | head -n1 | cut -d: -f1)
        # The payload is followed by more of the bzImage, which the decompressors complain
        # about after writing everything: judge by the result.
        [[ -n $off ]] && { tail -c +$((off + 1)) "$vmlinuz" | "${unpack[@]}" >"$elf.tmp" 2>/dev/null || true; }
        if [[ -s $elf.tmp && $(head -c 4 "$elf.tmp" | od -An -c | tr -d ' ') == '177ELF' ]]; then
            mv "$elf.tmp" "$elf"
        else
            rm -f "$elf.tmp"
            touch "$elf.none"
        fi
    fi
    if [[ -e $elf ]]; then echo "$elf"; else echo "$vmlinuz"; fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    case ${1:-} in
    --list) printf '%s\n' "${VM_KERNELS[@]}" ;;
    "" | -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    *)
        mkdir -p "$VM_CACHE"
        exec 9>"$VM_CACHE/.lock"
        flock 9
        d=$(vm_kernel_fetch "$1")
        echo "vm: kernel $(cat "$d/package") ($(cat "$d/kernel-release"))" >&2
        echo "$d"
        ;;
    esac
fi
