#!/usr/bin/env bash
# footprint.sh - binary sizes and memory of mailnode's builds beside Postfix
# and Dovecot, measured in one run.
#
#   bench/footprint.sh            build what is missing, then measure
#   FOOTPRINT_BUILD=0 ...         measure the binaries already in $OUT/bin
#   FOOTPRINT_TRIPLETS="aarch64-linux-gnu arm-linux-gnueabihf"  (default)
#   OUT=/tmp/mailnode-footprint   where the binaries and daemons' files go
#   FOOTPRINT_SYSTEM=1            the ARM static builds on a real ARM kernel
#                                 (bench/footprint-system.sh; 0: skip)
#   FOOTPRINT_STORE=1000          messages for the bytes-written phase (0: skip)
#   FOOTPRINT_STORE_REPS=3        its repetitions (the mean is compared)
#
# Prints, per build: the file size, the idle daemon's RSS and PSS (VmRSS,
# smaps_rollup) a few seconds after start with TLS configured (a
# certificate loaded) and the SMTP, submission and POP3 listeners open,
# and, for the native builds, RSS with 50 SMTP sessions open (each past
# EHLO).  Then the same for a private untuned Postfix (master and every
# child: smtpd, and the rest, the sum; and smtpd alone) and a private
# Dovecot (IMAP, all its processes).
#
# ARM builds run under qemu-user: the figure given is the qemu process's
# RSS minus that of qemu running a static "pause()" program of the same
# architecture, which leaves the guest's pages plus the extra translated
# code; an estimate, shown with "~".  The native x86-64 static builds
# carry the same code and libraries, and their figures are exact.
# Then bench/footprint-system.sh boots each architecture's Debian kernel
# under qemu-system with the static builds in its initramfs and reports
# the kernel's own figures for them (idle RSS, HWM, PSS, anonymous; RSS
# with 50 sessions): the real ARM numbers, which the qemu-user estimates
# are checked against.
# Last, bytes written per accepted message: bench/store.sh's "local"
# phase, FOOTPRINT_STORE messages of 1 KiB accepted over SMTP into a local
# mailbox on a fresh ext4 on a loop device, mailnode (the x86-64 build;
# the store is the same on every architecture) against Postfix delivering
# into a Maildir, device bytes per message and the ratio.
# Needs root (Postfix, Dovecot), postfix, dovecot-imapd, openssl, and for
# the ARM builds `make cross-deps`.  The machine is shared and has two
# cores: sizes and RSS do not depend on that, timing is not measured.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/mailnode-footprint}
TRIPLETS=${FOOTPRINT_TRIPLETS-aarch64-linux-gnu arm-linux-gnueabihf}
BIN=$OUT/bin
mkdir -p "$BIN"
cd "$ROOT"

# build_as NAME PATH MAKEARGS... : make, copy PATH (what it built) to $BIN/NAME
build_as() {
    local name=$1 path=$2
    shift 2
    [ "${FOOTPRINT_BUILD:-1}" = 1 ] || return 0
    [ -x "$BIN/$name" ] && [ "$BIN/$name" -nt mailnode.c ] && return 0
    echo "# building $name: make $*" >&2
    make -s -j2 "$@" >"$OUT/build-$name.log" 2>&1 || { cat "$OUT/build-$name.log" >&2; return 1; }
    cp "$path" "$BIN/$name"
}

build_as x86_64-dynamic-openssl mailnode TLS=openssl
build_as x86_64-static-none mailnode-static static TLS=none
build_as x86_64-static-mbedtls mailnode-static static TLS=mbedtls
build_as x86_64-static-openssl mailnode-static static TLS=openssl
for t in $TRIPLETS; do
    build_as "$t-dynamic-openssl" "build/$t/mailnode" CROSS="$t" TLS=openssl
    build_as "$t-static-none" "build/$t/mailnode-static" CROSS="$t" static TLS=none
    build_as "$t-static-mbedtls" "build/$t/mailnode-static" CROSS="$t" static TLS=mbedtls
    build_as "$t-static-openssl" "build/$t/mailnode-static" CROSS="$t" static TLS=openssl
    # the baseline for qemu's own memory
    if [ ! -x "$BIN/$t-pause" ]; then
        printf '#include <unistd.h>\nint main(void) { pause(); return 0; }\n' >"$OUT/pause.c"
        "$t-gcc" -static -Os -s -o "$BIN/$t-pause" "$OUT/pause.c"
    fi
done
# Restore the native ./mailnode the way `make` builds it.
[ "${FOOTPRINT_BUILD:-1}" != 1 ] || make -s -j2 >/dev/null 2>&1 || true

python3 "$ROOT/bench/lib/footprint.py" "$OUT" $TRIPLETS

if [ "${FOOTPRINT_SYSTEM:-1}" = 1 ]; then
    for t in $TRIPLETS; do
        case $t in aarch64-linux-gnu) arch=arm64 ;; arm-linux-gnueabihf) arch=armhf ;; *) continue ;; esac
        echo
        OUT=$OUT bash "$ROOT/bench/footprint-system.sh" "$arch" \
            "$BIN/$t-static-none" "$BIN/$t-static-mbedtls" "$BIN/$t-static-openssl" ||
            echo "$arch on a real kernel: not measured (see above)"
    done
fi

if [ "${FOOTPRINT_STORE:-1000}" -gt 0 ]; then
    echo
    echo "bytes written per accepted message (bench/store.sh, phase local, ${FOOTPRINT_STORE:-1000} x 1 KiB, ${FOOTPRINT_STORE_REPS:-3} runs each):"
    PHASES=local LOCAL=${FOOTPRINT_STORE:-1000} REPS=${FOOTPRINT_STORE_REPS:-3} SERVERS="mailnode postfix" \
        MAILNODE=$BIN/x86_64-dynamic-openssl OUT=$OUT/store BASE_PORT=${STORE_BASE_PORT:-25930} \
        bash "$ROOT/bench/store.sh" | grep -E '^  local|^local:|failed|only'
fi
