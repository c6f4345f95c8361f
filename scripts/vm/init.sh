#!/bin/busybox sh
# /init of the test VM's initramfs (built by run.sh). Mounts the host's root (9p, read-only)
# under a tmpfs overlay, so the guest sees the host's userland and may write anywhere
# without touching the host; runs the job run.sh left on the "job" share in that root;
# leaves its exit status there; powers off.
#
# The job share holds: vm.conf (sourced here), job.sh (run by the host's bash in the new
# root), and receives status and start-uptime.

/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

J=/job
fail() {
    echo "vm-init: $*" >&2
    echo "vm-init: $*" >>$J/init-error
    sync
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# In dependency order; modules built into this kernel are simply not in the list.
while read -r m; do
    insmod "/modules/$m.ko" || echo "vm-init: insmod $m failed" >&2
done </modules/order

opts9p="trans=virtio,version=9p2000.L,msize=512000"
mkdir -p $J /lower /rw /newroot
mount -t 9p -o "$opts9p,cache=none" job $J || fail "cannot mount the job share"
# shellcheck disable=SC1091
. $J/vm.conf || fail "no vm.conf on the job share"
mount -t 9p -o "$opts9p,cache=loose,ro" hostroot /lower || fail "cannot mount the host root (9p)"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot ||
    fail "cannot mount the overlay"

R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm $R/dev/mqueue
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t mqueue mqueue $R/dev/mqueue 2>/dev/null
# devtmpfs lacks these links; bash process substitution needs /dev/fd.
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
mount -t bpf bpf $R/sys/fs/bpf
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t securityfs securityfs $R/sys/kernel/security 2>/dev/null
# A fresh /run as after a boot: the host's netns files, pid files and sockets in it mean
# nothing here (and `ip netns add` would trip over them).
if [ "$VM_FRESH_RUN" = 1 ]; then
    mount -t tmpfs -o mode=0755,nosuid,nodev run $R/run
    mkdir -m 1777 $R/run/lock
fi
mkdir -p $R/run/k8s-alog-vm
mount --move $J $R/run/k8s-alog-vm
J=$R/run/k8s-alog-vm

# The kernel's own modules, so modprobe in the guest loads what the tests need.
kver=$(uname -r)
mkdir -p "$R/lib/modules/$kver"
mount --bind "$R$VM_MODDIR" "$R/lib/modules/$kver" || fail "cannot bind $VM_MODDIR"

hostname "$VM_HOSTNAME"
ip link set lo up

# The job's stdout and stderr are virtio ports the host reads; find them by name.
port() {
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${p##*/}"; return; }
    done
    echo /dev/console
}
out=$(port stdout)
err=$(port stderr)

cut -d' ' -f1 /proc/uptime >$J/start-uptime
env -i chroot $R /bin/bash /run/k8s-alog-vm/job.sh </dev/null >"$out" 2>"$err"
echo $? >$J/status.tmp
mv $J/status.tmp $J/status
sync
poweroff -f
