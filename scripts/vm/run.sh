#!/usr/bin/env bash
# Runs a command as root inside a real Debian kernel booted in QEMU, with this machine's
# whole userland visible (its root, read-only, under a throw-away tmpfs overlay).
#
#   scripts/vm/run.sh KERNEL [options] -- COMMAND [ARGS...]
#
#   KERNEL            6.1 or 6.12 (the table is in kernels.sh)
#   --append STR      more kernel command line, e.g. lockdown=integrity (repeatable)
#   --timeout SECS    kill the VM after SECS and exit 124 (default 1800)
#   --env NAME=VALUE  set a variable for COMMAND (repeatable; --env NAME passes ours)
#   --mem MB          guest memory (default 2048); the overlay lives in it
#   --smp N           guest CPUs (default 2)
#   --accel A         auto (default), tcg or kvm; auto uses KVM only if a probe boot worked
#   --console FILE    keep the guest's kernel console there
#   -v, --verbose     say how long boot and the run took
#
# COMMAND runs in the caller's working directory, with the caller's PATH, HOME=/root, and
# K8S_ALOG_* and RUST_* passed through; stdin is empty. Its stdout and stderr arrive here
# on stdout and stderr, the kernel's console does not (it is shown only if the VM fails).
# Exit status: COMMAND's, 124 on timeout, 125 when the VM itself failed.
# Needs root and: qemu-system-x86, kmod, busybox-static (`make deps` installs them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kernels.sh
. "$here/kernels.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

kernel="" append="" timeout=1800 mem=2048 smp=2 accel=${K8S_ALOG_VM_ACCEL:-auto}
console_keep="" verbose=0
envs=()
while (($#)); do
    case $1 in
    --) shift; break ;;
    --append) append+=" ${2:?--append needs a value}"; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --env) envs+=("${2:?--env needs NAME=VALUE}"); shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    --accel) accel=${2:?}; shift 2 ;;
    --console) console_keep=${2:?}; shift 2 ;;
    -v | --verbose) verbose=1; shift ;;
    -h | --help) usage ;;
    -*) echo "vm: unknown option $1" >&2; usage ;;
    *) [[ -z $kernel ]] || { echo "vm: unexpected '$1' (missing -- before the command?)" >&2; usage; }
       kernel=$1; shift ;;
    esac
done
[[ -n $kernel && $# -gt 0 ]] || usage
[[ $timeout =~ ^[0-9]+$ && $mem =~ ^[0-9]+$ && $smp =~ ^[0-9]+$ ]] || vm_die "--timeout, --mem and --smp take numbers"
[[ $accel == auto || $accel == tcg || $accel == kvm ]] || vm_die "--accel is auto, tcg or kvm"
((EUID == 0)) || vm_die "needs root (it shares / with the guest and caches in $VM_CACHE)"
for tool in qemu-system-x86_64 depmod busybox apt-get dpkg-deb flock; do
    command -v "$tool" >/dev/null || vm_die "$tool is missing; run make deps (scripts/deps.sh)"
done

tmp=$(mktemp -d /tmp/k8s-alog-vm.XXXXXX)
qpid="" tails=()
# shellcheck disable=SC2317 # (run by the EXIT trap)
cleanup() {
    [[ -n $qpid ]] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null
    ((${#tails[@]})) && kill "${tails[@]}" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Modules the initramfs loads to reach the host root; absent ones are built in.
INITRAMFS_MODULES="virtio_pci virtio_console virtio-rng 9pnet_virtio 9p overlay"
INITRAMFS_FORMAT=1 # bump when the build below changes

# Builds (or reuses) $kdir/initramfs.gz: busybox, init.sh as /init, and the modules above
# decompressed (busybox insmod reads plain .ko only) with their dependencies.
build_initramfs() {
    local kdir=$1 kver moddir key root line mod deps d f
    kver=$(cat "$kdir/kernel-release")
    moddir=$kdir/lib/modules/$kver
    key=$({ echo "$INITRAMFS_FORMAT $kver $INITRAMFS_MODULES"; sha256sum "$here/init.sh" /bin/busybox; } | sha256sum | cut -c1-16)
    [[ -e $kdir/initramfs.gz && $(cat "$kdir/initramfs.key" 2>/dev/null) == "$key" ]] && return 0

    declare -A dep=() path=() seen=()
    while IFS= read -r line; do
        f=${line%%:*}
        mod=${f##*/}; mod=${mod%%.ko*}
        path[$mod]=$f
        deps=""
        for d in ${line#*:}; do d=${d##*/}; deps+=" ${d%%.ko*}"; done
        dep[$mod]=$deps
    done <"$moddir/modules.dep"
    local order=()
    visit() {
        [[ -n ${seen[$1]:-} ]] && return 0
        seen[$1]=1
        local x
        for x in ${dep[$1]}; do visit "$x"; done
        order+=("$1")
    }
    for mod in $INITRAMFS_MODULES; do
        [[ -n ${path[$mod]:-} ]] && visit "$mod" && continue
        grep -q "/${mod}\.ko" "$moddir/modules.builtin" || vm_die "module $mod is neither in modules.dep nor built into $kver"
    done

    root=$tmp/initramfs
    mkdir -p "$root/bin" "$root/modules"
    cp /bin/busybox "$root/bin/busybox"
    install -m 0755 "$here/init.sh" "$root/init"
    for mod in "${order[@]}"; do
        f=$moddir/${path[$mod]}
        case $f in
        *.ko.xz) xz -dc "$f" ;;
        *.ko.zst) zstd -qdc "$f" ;;
        *.ko.gz) gzip -dc "$f" ;;
        *) cat "$f" ;;
        esac >"$root/modules/$mod.ko"
        echo "$mod" >>"$root/modules/order"
    done
    (cd "$root" && find . | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$kdir/initramfs.gz.new"
    mv "$kdir/initramfs.gz.new" "$kdir/initramfs.gz"
    echo "$key" >"$kdir/initramfs.key"
    rm -rf "$root"
}

qemu_base() { # ACCEL CPU INITRD: sets qargs
    qargs=(-accel "$1" -cpu "$2" -m "$mem" -smp "$smp" -nographic -nodefaults -no-reboot
        -kernel "$image" -initrd "$3")
}

# KVM fails on some nested hosts (MSR writes refused, or a silent hang before the kernel
# prints anything), so it is used only if a tiny boot under it works. The result is cached per
# host kernel, QEMU and CPU. Sets accel_used and cpu.
choose_accel() {
    local cache id c probe r="tcg max"
    case $accel in
    tcg) accel_used=tcg cpu=max; return 0 ;;
    kvm) accel_used=kvm cpu=host; return 0 ;;
    esac
    [[ -r /dev/kvm && -w /dev/kvm ]] || { accel_used=tcg cpu=max; return 0; }
    id=$({ uname -r; qemu-system-x86_64 --version | head -n1; grep -m1 'model name' /proc/cpuinfo; } | sha256sum | cut -c1-16)
    cache=$VM_CACHE/accel-$id
    if [[ ! -e $cache ]]; then
        probe=$tmp/probe
        mkdir -p "$probe/bin"
        cp /bin/busybox "$probe/bin/"
        printf '#!/bin/busybox sh\n/bin/busybox echo K8S-ALOG-VM-PROBE-OK\n/bin/busybox poweroff -f\n' >"$probe/init"
        chmod +x "$probe/init"
        (cd "$probe" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$tmp/probe.gz"
        for c in host host,-arch-capabilities; do
            qemu_base kvm "$c" "$tmp/probe.gz"
            # (QEMU aborts on a refused MSR; the braces keep bash's "Aborted" quiet.)
            if { timeout -k 2 20 qemu-system-x86_64 "${qargs[@]}" -serial "file:$tmp/probe.log" \
                -append "console=ttyS0 panic=-1" </dev/null >/dev/null; } 2>/dev/null &&
                grep -q K8S-ALOG-VM-PROBE-OK "$tmp/probe.log"; then
                r="kvm $c"
                break
            fi
        done
        echo "$r" >"$cache"
    fi
    read -r accel_used cpu <"$cache"
}

sq() { printf '%q' "$1"; }

mkdir -p "$VM_CACHE"
exec 9>"$VM_CACHE/.lock"
flock 9
kdir=$(vm_kernel_fetch "$kernel")
build_initramfs "$kdir"
image=$(vm_kernel_image "$kdir")
choose_accel
flock -u 9
exec 9>&-
kver=$(cat "$kdir/kernel-release")
how="KVM -cpu $cpu"
[[ $accel_used == tcg ]] && how="TCG (emulated, no KVM)"
echo "vm: kernel $kver, package $(cat "$kdir/package"), $how" >&2

# The job: what the guest's init reads from the "job" share.
job=$tmp/job
mkdir -p "$job"
cwd=$(pwd -P)
fresh_run=1
[[ $cwd == /run || $cwd == /run/* ]] && fresh_run=0
[[ $kdir != *"'"* ]] || vm_die "cache path must not contain a quote"
{
    echo "VM_MODDIR='$kdir/lib/modules/$kver'"
    echo "VM_HOSTNAME=k8s-alog-vm"
    echo "VM_FRESH_RUN=$fresh_run"
} >"$job/vm.conf"
{
    echo "# Generated by scripts/vm/run.sh; runs under the host's bash in the guest."
    path=$PATH
    for d in /usr/local/sbin /usr/sbin /sbin; do [[ :$path: == *:$d:* ]] || path+=:$d; done
    echo "export PATH=$(sq "$path") HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb"
    while IFS= read -r name; do
        [[ $name =~ ^(K8S_ALOG_|RUST_) ]] && echo "export $name=$(sq "${!name}")"
    done < <(compgen -e)
    for e in ${envs[@]+"${envs[@]}"}; do
        name=${e%%=*}
        [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || vm_die "--env $e: bad name"
        if [[ $e == *=* ]]; then echo "export $name=$(sq "${e#*=}")"; else echo "export $name=$(sq "${!name:-}")"; fi
    done
    echo "cd -- $(sq "$cwd") || exit 125"
    printf 'exec --'
    for a in "$@"; do printf ' %s' "$(sq "$a")"; done
    echo
} >"$job/job.sh"
: >"$tmp/stdout"
: >"$tmp/stderr"

qemu_base "$accel_used" "$cpu" "$kdir/initramfs.gz"
set -- "${qargs[@]}" \
    -append "console=ttyS0 quiet panic=-1$append" \
    -serial "file:$tmp/console.log" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$job,mount_tag=job,security_model=none" \
    -device virtio-rng-pci \
    -device virtio-serial-pci \
    -chardev "file,id=out,path=$tmp/stdout" -device virtserialport,chardev=out,name=stdout \
    -chardev "file,id=err,path=$tmp/stderr" -device virtserialport,chardev=err,name=stderr

t0=$(date +%s.%N)
timeout -k 10 "$timeout" qemu-system-x86_64 "$@" </dev/null >"$tmp/qemu.log" 2>&1 &
qpid=$!
tail -c +1 -s 0.2 --pid="$qpid" -f "$tmp/stdout" &
tails+=($!)
tail -c +1 -s 0.2 --pid="$qpid" -f "$tmp/stderr" >&2 &
tails+=($!)
rc=0
wait "$qpid" || rc=$?
qpid=""
wait "${tails[@]}" || true
tails=()
t1=$(date +%s.%N)
[[ -z $console_keep ]] || cp "$tmp/console.log" "$console_keep"

# The console without SeaBIOS's terminal escapes, marked as ours.
show() { sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g; /^\s*$/d; s/^/vm| /' >&2; }
if ((rc == 124)); then
    echo "vm: timed out after ${timeout}s; last console lines:" >&2
    tail -n 20 "$tmp/console.log" | show
    exit 124
fi
if [[ ! -s $job/status ]]; then
    echo "vm: the guest reported no exit status (qemu exit $rc); its console:" >&2
    cat "$tmp/qemu.log" "$job/init-error" 2>/dev/null | show || true
    tail -n 40 "$tmp/console.log" | show
    exit 125
fi
if ((verbose)); then
    printf 'vm: command started %.1fs after boot, VM ran %.1fs in all\n' \
        "$(cat "$job/start-uptime")" "$(awk "BEGIN {print $t1 - $t0}")" >&2
fi
exit "$(cat "$job/status")"
