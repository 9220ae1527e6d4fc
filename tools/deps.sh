#!/usr/bin/env bash
# Install (as root) or list (otherwise) the Debian packages needed to build
# and test mailnode. Environment: SQLITE=system adds libsqlite3-dev; FUZZ=1 and
# VALGRIND=1 add what `make fuzz` and `make test-valgrind` need; CROSS=1
# (make cross-deps) what the cross builds and their tests under qemu-user
# need for each of CROSS_TRIPLETS, and qemu-system-arm for
# bench/footprint-system.sh.
set -euo pipefail

pkgs="build-essential pkg-config libsodium-dev zlib1g-dev libssl-dev curl ca-certificates python3 swaks fetchmail msmtp groff-base postfix"
# IMAP clients for the protocol tests, and Dovecot as the reference server.
pkgs="$pkgs isync s-nail dovecot-imapd"
# c-ares, the DNS resolver library (headers, pkg-config file and libcares.a
# for `make static`).
pkgs="$pkgs libc-ares-dev"
# faketime: tests/proto/test_clock.py steps the daemon's wall clock.
pkgs="$pkgs faketime"
# mbedTLS: the second TLS backend (make TLS=mbedtls), the static boxes' TLS.
pkgs="$pkgs libmbedtls-dev"
[ "${SQLITE:-}" != system ] || pkgs="$pkgs libsqlite3-dev"
# FUZZ=1 (make fuzz): clang with libFuzzer; VALGRIND=1 (make test-valgrind).
[ "${FUZZ:-}" != 1 ] || pkgs="$pkgs clang libclang-rt-dev"
[ "${VALGRIND:-}" != 1 ] || pkgs="$pkgs valgrind"
# CROSS=1: a cross compiler and the -dev packages of the target's
# architecture (multiarch) per triplet, and qemu-user to run the results.
# s390x (big-endian, a test target only) is no longer in Debian 12's
# security archive, so its zlib and OpenSSL lag behind the amd64 ones and
# multiarch cannot install both versions side by side: their s390x packages
# are unpacked into the cross compiler's own sysroot /usr/TRIPLET instead
# ("sysroot" packages, see unpack_sysroot below), and its C library is the
# cross one (libc6-dev-s390x-cross).
cross_arches=""
sysroot_pkgs=""
if [ "${CROSS:-}" = 1 ]; then
    pkgs="$pkgs qemu-user-static"
    # bench/footprint-system.sh: a real ARM kernel under qemu-system to
    # measure the ARM builds' memory (the kernel and busybox it boots are
    # fetched with apt-get download, not installed).
    pkgs="$pkgs qemu-system-arm cpio"
    for t in ${CROSS_TRIPLETS:-aarch64-linux-gnu arm-linux-gnueabihf s390x-linux-gnu}; do
        multiarch="libc6-dev libsodium-dev zlib1g-dev libssl-dev libc-ares-dev libmbedtls-dev"
        case $t in
        aarch64-linux-gnu)   a=arm64 ;;
        arm-linux-gnueabihf) a=armhf ;;
        s390x-linux-gnu)     a=s390x
                             multiarch="libsodium-dev libc-ares-dev libmbedtls-dev"
                             pkgs="$pkgs libc6-dev-s390x-cross"
                             sysroot_pkgs="$sysroot_pkgs $t:$a:zlib1g $t:$a:zlib1g-dev $t:$a:libssl3 $t:$a:libssl-dev" ;;
        *) echo "deps: unknown cross triplet $t (aarch64-linux-gnu, arm-linux-gnueabihf, s390x-linux-gnu)" >&2; exit 2 ;;
        esac
        cross_arches="$cross_arches $a"
        pkgs="$pkgs gcc-$t"
        for p in $multiarch; do
            pkgs="$pkgs $p:$a"
        done
    done
fi

if ! command -v dpkg-query >/dev/null; then
    echo "deps: dpkg-query not found, so this is not Debian; make sure the equivalents of"
    echo "deps:   $pkgs"
    echo "deps: are installed"
    exit 0
fi

# A package counts as present when dpkg has it installed, whatever its
# selection state ("hold ok installed" too) and on whichever architecture.
missing=""
for p in $pkgs; do
    status=$(dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null || true)
    printf '%s\n' "$status" | grep -qx installed || missing="$missing $p"
done
# A sysroot package is present when its marker (written after unpacking)
# is there.
sysroot_marker() { echo "/usr/$1/share/mailnode-sysroot/$3"; }
missing_sysroot=""
for e in $sysroot_pkgs; do
    IFS=: read -r t a p <<<"$e"
    [ -e "$(sysroot_marker "$t" "$a" "$p")" ] || missing_sysroot="$missing_sysroot $e"
done
missing=${missing# }
missing_sysroot=${missing_sysroot# }
[ -n "$missing$missing_sysroot" ] || exit 0

if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages: $missing $missing_sysroot" >&2
    if [ -n "$missing" ]; then
        echo "deps: install them with:" >&2
        echo "    sudo apt-get install -y $missing" >&2
    fi
    [ -z "$missing_sysroot" ] || echo "deps: run 'make cross-deps' as root for:$missing_sysroot" >&2
    exit 1
fi

# Two runs at once (CI's valgrind and sanitizer runs) take turns: apt and
# dpkg refuse a second caller instead of waiting.
if command -v flock >/dev/null && [ -z "${MAILNODE_DEPS_LOCKED:-}" ]; then
    export MAILNODE_DEPS_LOCKED=1
    exec flock -w 1800 "${TMPDIR:-/tmp}/mailnode-deps.lock" "$0" "$@"
fi

echo "deps: installing $missing $missing_sysroot"
export DEBIAN_FRONTEND=noninteractive
# The cross builds' libraries come from the target's architecture.
added_arch=0
for a in $cross_arches; do
    if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
        dpkg --add-architecture "$a"
        added_arch=1
    fi
done
# Postfix is a test peer and the benchmarks' anchor, run as private
# instances on loopback: the system instance gets no configuration, so it
# neither starts nor takes port 25.
if command -v debconf-set-selections >/dev/null; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi
# An apt or dpkg run outside this script (the flock above does not cover
# it) holds dpkg's lock: wait for it rather than fail.
apt_install() { apt-get install -y -q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=600 "$@"; }
# A fresh image has empty package lists; otherwise update only on failure.
if [ "$added_arch" = 1 ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    apt-get update -q
fi
# shellcheck disable=SC2086
if ! apt_install $missing; then
    echo "deps: install failed; updating the package lists and retrying"
    apt-get update -q
    apt_install $missing
fi

# Unpack a sysroot package's s390x .deb into /usr/TRIPLET, where the cross
# compiler looks first for headers (include/) and libraries (lib/), and
# where qemu-user -L /usr/TRIPLET finds the shared libraries at run time.
# Multiarch subdirectories are flattened (OpenSSL's opensslconf.h lives
# under include/TRIPLET/) and pkg-config files point at the sysroot.
unpack_sysroot() {
    local t=$1 a=$2 p=$3 dir root=/usr/$1
    dir=$(mktemp -d)
    chmod 0755 "$dir"
    chown _apt "$dir" 2>/dev/null || true   # apt downloads as _apt
    (cd "$dir" && apt-get download -q "$p:$a" >/dev/null) || { rm -rf "$dir"; return 1; }
    dpkg-deb -x "$dir"/*.deb "$dir/x" || { rm -rf "$dir"; return 1; }
    mkdir -p "$root/include" "$root/lib/pkgconfig" "$root/share/mailnode-sysroot"
    [ ! -d "$dir/x/usr/include" ] || cp -a "$dir/x/usr/include/." "$root/include/"
    if [ -d "$root/include/$t" ]; then
        cp -a "$root/include/$t/." "$root/include/" && rm -rf "${root:?}/include/$t"
    fi
    for l in "$dir/x/lib/$t" "$dir/x/usr/lib/$t"; do
        [ ! -d "$l" ] || cp -a "$l/." "$root/lib/"
    done
    # An absolute link (libz.so -> /lib/TRIPLET/libz.so.1.2.13) would point
    # out of the sysroot: make it relative to lib/.
    for l in "$root"/lib/*; do
        [ -L "$l" ] || continue
        case $(readlink "$l") in /*) ln -sfn "$(basename "$(readlink "$l")")" "$l" ;; esac
    done
    for pc in "$root"/lib/pkgconfig/*.pc; do
        [ -e "$pc" ] || continue
        sed -i -e "s|^prefix=.*|prefix=$root|" -e 's|^libdir=.*|libdir=${prefix}/lib|' \
            -e 's|^includedir=.*|includedir=${prefix}/include|' "$pc"
    done
    dpkg-deb -f "$dir"/*.deb Version >"$(sysroot_marker "$t" "$a" "$p")"
    rm -rf "$dir"
}
for e in $missing_sysroot; do
    IFS=: read -r t a p <<<"$e"
    echo "deps: unpacking $p:$a into /usr/$t"
    unpack_sysroot "$t" "$a" "$p" || { echo "deps: could not unpack $p:$a" >&2; exit 1; }
done
