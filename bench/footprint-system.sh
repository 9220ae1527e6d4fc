#!/usr/bin/env bash
# footprint-system.sh - memory of the ARM builds measured on a real ARM
# Linux kernel (qemu-system, full-system emulation), not under qemu-user.
#
#   bench/footprint-system.sh ARCH BINARY...     ARCH: arm64 or armhf
#
# Boots Debian's own kernel for ARCH (linux-image-*-cloud-arm64 under
# `qemu-system-aarch64 -M virt -cpu cortex-a53 -m 256`, linux-image-*-armmp
# under `qemu-system-arm -M virt,highmem=off -cpu cortex-a15 -m 256`: a
# 32-bit kernel without LPAE cannot reach the PCI window above 4 GB) with
# an initramfs holding busybox (busybox-static), the BINARYs, a TLS
# certificate and the virtio network modules.  Its /init starts each
# BINARY in turn as `mailnode run` in the state bench/lib/footprint.py
# measures on x86-64 (SMTP, submission and POP3 listening, TLS configured
# with the certificate unless the name ends in -none, a fresh database),
# waits a few seconds, prints the daemon's VmRSS and VmHWM (/proc/PID/status) and Rss,
# Pss and Anonymous (/proc/PID/smaps_rollup), then the same with 50 SMTP
# sessions open (each past EHLO, opened from this host through qemu's user
# network: hostfwd on 127.0.0.1 only, nothing leaves the machine).  These
# are the kernel's own figures for the process, as on a board; only the
# CPU is emulated (slowly: boot and each start take a while under TCG,
# every wait is bounded).
#
# The kernel and busybox packages are fetched with `apt-get download` (the
# dpkg architecture must be added, as `make cross-deps` does) into
# $OUT/system/ARCH and unpacked there; nothing is installed.  Needs
# qemu-system-arm, cpio, openssl (tools/deps.sh with CROSS=1).
#   OUT=/tmp/mailnode-footprint   cache and work directory
#   SYSTEM_TIMEOUT=900            seconds before the whole boot is abandoned
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/mailnode-footprint}
ARCH=${1:?usage: footprint-system.sh arm64|armhf BINARY...}
shift
[ $# -gt 0 ] || { echo "footprint-system.sh: no binaries given" >&2; exit 2; }

case $ARCH in
arm64) kpkg=linux-image-cloud-arm64 qemu=qemu-system-aarch64 machine="-M virt -cpu cortex-a53" ;;
armhf) kpkg=linux-image-armmp qemu=qemu-system-arm machine="-M virt,highmem=off -cpu cortex-a15" ;;
*) echo "footprint-system.sh: ARCH is arm64 or armhf, not $ARCH" >&2; exit 2 ;;
esac
for t in "$qemu" cpio gzip openssl apt-get dpkg-deb; do
    command -v "$t" >/dev/null || { echo "footprint-system.sh: $t is required (make cross-deps)" >&2; exit 1; }
done

CACHE=$OUT/system/$ARCH
mkdir -p "$CACHE"
cd "$CACHE"

# fetch PACKAGE : the newest .deb of PACKAGE:ARCH into $CACHE (once)
fetch() {
    local deb
    deb=$(ls "$1"_*_"$ARCH".deb 2>/dev/null | tail -n 1)
    if [ -z "$deb" ]; then
        # apt's sandbox user must be able to write here
        chmod 777 "$CACHE"
        apt-get download -q "$1:$ARCH" >"$CACHE/apt.log" 2>&1 || { cat "$CACHE/apt.log" >&2; return 1; }
        deb=$(ls "$1"_*_"$ARCH".deb | tail -n 1)
    fi
    echo "$deb"
}

# the versioned kernel package the meta-package points to
kver=$(apt-cache depends "$kpkg:$ARCH" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { sub(/:.*/, "", $2); print $2; exit }')
[ -n "$kver" ] || { echo "footprint-system.sh: apt knows no $kpkg:$ARCH (dpkg --add-architecture $ARCH; apt-get update)" >&2; exit 1; }
kdeb=$(fetch "$kver")
bdeb=$(fetch busybox-static)
if [ ! -d "kernel-$kver" ]; then
    rm -rf "kernel-$kver.tmp" && dpkg-deb -x "$kdeb" "kernel-$kver.tmp" && mv "kernel-$kver.tmp" "kernel-$kver"
fi
[ -d busybox ] || { dpkg-deb -x "$bdeb" busybox.tmp && mv busybox.tmp busybox; }
KERNEL=$(ls "$CACHE/kernel-$kver"/boot/vmlinuz-*)
MODDIR=$(ls -d "$CACHE/kernel-$kver"/lib/modules/*)

# ------------------------------------------------------------ initramfs
RD=$CACHE/root
rm -rf "$RD"
mkdir -p "$RD"/{bin,proc,sys,dev,etc,mn,var,lib/fp}
cp busybox/bin/busybox "$RD/bin/busybox"
i=0
for b in "$@"; do
    i=$((i + 1))
    # the order of the measurements is the order given
    cp "$b" "$RD/mn/$(printf '%02d' $i)-$(basename "$b")"
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$RD/etc/key.pem" -out "$RD/etc/cert.pem" -days 2 -subj /CN=localhost \
    >/dev/null 2>&1

# virtio-net (and virtio-rng, so that the guest's random pool fills at
# once) as modules, in modprobe's order: a module's dependencies first.
python3 - "$MODDIR" "$RD/lib/fp" virtio_pci virtio_net virtio_rng >"$RD/etc/modules" <<'EOF'
import os, re, shutil, sys
moddir, dest, want = sys.argv[1], sys.argv[2], sys.argv[3:]
norm = lambda name: name.replace('-', '_')
# the package has no modules.dep (depmod writes it at installation):
# read each module's "depends=" from its .modinfo strings
path = {}
for d, _, files in os.walk(moddir):
    for f in files:
        if f.endswith('.ko'):
            path[norm(f[:-3])] = os.path.join(d, f)
order = []
def add(name):
    if name in order or name not in path:     # built in, or already there
        return
    with open(path[name], 'rb') as f:
        m = re.search(rb'\0depends=([^\0]*)\0', f.read())
    for dep in (m.group(1).decode().split(',') if m else []):
        if dep:
            add(norm(dep))
    order.append(name)
    shutil.copy(path[name], os.path.join(dest, name + '.ko'))
for w in want:
    add(w)
print('\n'.join(order))
EOF

cat >"$RD/init" <<'EOF'
#!/bin/busybox sh
# Measures each /mn/* daemon; lines starting "FP " are read by the host.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /etc/modules); do insmod /lib/fp/$m.ko || echo "FP warn insmod $m failed"; done
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
net=1
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
else
    net=0
    echo "FP warn no network device: idle figures only"
fi
echo "FP kernel $(uname -r) $(uname -m) $(awk '/MemTotal/ { print $2 }' /proc/meminfo)"

# listening PORTHEX : a socket in LISTEN on that port (IPv4 or IPv6)
listening() { cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=":$1" '$2 ~ p"$" && $4 == "0A" { f = 1 } END { exit !f }'; }
established() { cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=":$1" '$2 ~ p"$" && $4 == "01" { n++ } END { print n + 0 }'; }
field() { awk -v k="$2:" '$1 == k { print $2; exit }' "$1"; }
figures() {   # PID: VmRSS VmHWM Rss Pss Anonymous, kB
    echo "$(field /proc/$1/status VmRSS) $(field /proc/$1/status VmHWM)" \
         "$(field /proc/$1/smaps_rollup Rss) $(field /proc/$1/smaps_rollup Pss)" \
         "$(field /proc/$1/smaps_rollup Anonymous)"
}
# bounded: until CMD succeeds, at most TENTHS tenths of a second
until_ok() { t=$1; shift; n=0; until "$@"; do n=$((n + 1)); [ $n -lt $t ] || return 1; sleep 0.1; done; }

for b in /mn/*; do
    name=${b##*/}; name=${name#??-}
    d=/var/$name
    mkdir -p $d
    {
        echo "hostname = footprint.test"
        echo "database = $d/mailnode.db"
        echo "local_domains = example.test"
        echo "listen.smtp = 0.0.0.0:2525"
        echo "listen.submission = 0.0.0.0:2587"
        echo "listen.pop3 = 0.0.0.0:2110"
        echo "listen.odmr ="
        echo "listen.imap ="
        # the host's sessions come from qemu's gateway: trusted, as
        # loopback is in the x86-64 runs (no per-address limit)
        echo "relay_networks = 10.0.2.0/24"
        case $name in *-none) ;; *) echo "tls.cert = /etc/cert.pem"; echo "tls.key = /etc/key.pem" ;; esac
    } >$d/mailnode.conf
    (cd $d && exec $b -c $d/mailnode.conf run </dev/null >$d/log 2>&1) &
    pid=$!
    if ! until_ok 1800 listening 09DD; then
        echo "FP fail $name did not listen:"; cat $d/log; kill -9 $pid; continue
    fi
    sleep 3
    echo "FP idle $name $(figures $pid)"
    if [ $net = 0 ]; then kill -9 $pid; wait $pid; continue; fi
    # the host opens the sessions, then connects to port 2600 to say so
    nc -l -p 2600 </dev/null >/dev/null 2>&1 &
    nc=$!
    until_ok 300 listening 0A28
    echo "FP sessions $name"
    until_ok 6000 eval '! kill -0 $nc 2>/dev/null' || { echo "FP warn $name: no signal from the host"; kill $nc; }
    sleep 1
    echo "FP busy $name $(figures $pid) $(established 09DD)"
    kill -TERM $pid
    until_ok 300 eval '! kill -0 $pid 2>/dev/null' || kill -9 $pid
    wait $pid
    # the host closes its sessions before the next daemon listens
    until_ok 300 eval '[ "$(established 09DD)" = 0 ]'
done
echo "FP end"
poweroff -f
EOF
chmod 755 "$RD/init"
(cd "$RD" && find . | cpio -o -H newc --quiet -R 0:0 | gzip -1) >"$CACHE/initrd.gz"

exec python3 "$ROOT/bench/lib/footprint_vm.py" "$ARCH" "$qemu" "$machine" "$KERNEL" \
    "$CACHE/initrd.gz" "${SYSTEM_TIMEOUT:-900}" "$CACHE/console.log" "$@"
