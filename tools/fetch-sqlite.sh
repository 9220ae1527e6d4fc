#!/usr/bin/env bash
# Fetch the SQLite amalgamation (sqlite3.c, sqlite3.h) into the current
# directory, checking every checksum. Called by the Makefile, which passes:
#
#   SQLITE_URL          where the tarball is downloaded from
#   SQLITE_TGZ_SHA256   checksum of the tarball
#   SQLITE_TGZ_PATH     directory of the amalgamation inside the tarball
#   SQLITE_C_SHA256     checksum of sqlite3.c
#   SQLITE_H_SHA256     checksum of sqlite3.h
#   SQLITE_TARBALL      optional: a local copy of the tarball to use instead
#                       of downloading (offline builds); checked all the same
set -euo pipefail

: "${SQLITE_URL:?} ${SQLITE_TGZ_SHA256:?} ${SQLITE_TGZ_PATH:?}"
: "${SQLITE_C_SHA256:?} ${SQLITE_H_SHA256:?}"

fail() { echo "fetch-sqlite: $*" >&2; exit 1; }

verify() {          # verify FILE SHA256 WHAT
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$2" ]; then
        fail "checksum mismatch for $3
    expected sha256 $2
    got      sha256 $got
  The file is corrupt or not the expected release; it was not used."
    fi
}

command -v sha256sum >/dev/null || fail "sha256sum not found (install coreutils)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mailnode-sqlite.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tgz=$tmp/sqlite.tgz

if [ -n "${SQLITE_TARBALL:-}" ]; then
    [ -f "$SQLITE_TARBALL" ] || fail "SQLITE_TARBALL=$SQLITE_TARBALL: no such file"
    echo "fetch-sqlite: using $SQLITE_TARBALL"
    cp "$SQLITE_TARBALL" "$tgz"
else
    echo "fetch-sqlite: downloading $SQLITE_URL"
    if command -v curl >/dev/null; then
        curl -fsSL --retry 3 --connect-timeout 20 --max-time 600 -o "$tgz" "$SQLITE_URL" ||
            fail "download failed: $SQLITE_URL (check the network, or pass SQLITE_TARBALL=FILE, or use SQLITE=system)"
    elif command -v wget >/dev/null; then
        wget -q --tries=3 --timeout=60 -O "$tgz" "$SQLITE_URL" ||
            fail "download failed: $SQLITE_URL (check the network, or pass SQLITE_TARBALL=FILE, or use SQLITE=system)"
    else
        fail "neither curl nor wget found: run 'make deps', or pass SQLITE_TARBALL=FILE, or use SQLITE=system"
    fi
fi

verify "$tgz" "$SQLITE_TGZ_SHA256" "${SQLITE_URL##*/}"

tar -xzf "$tgz" -C "$tmp" "$SQLITE_TGZ_PATH/sqlite3.c" "$SQLITE_TGZ_PATH/sqlite3.h" ||
    fail "sqlite3.c/sqlite3.h not found in the tarball under $SQLITE_TGZ_PATH"
verify "$tmp/$SQLITE_TGZ_PATH/sqlite3.c" "$SQLITE_C_SHA256" sqlite3.c
verify "$tmp/$SQLITE_TGZ_PATH/sqlite3.h" "$SQLITE_H_SHA256" sqlite3.h

# Move into place only once everything checked out; the header first, so
# that sqlite3.c appearing means both are there.
cp "$tmp/$SQLITE_TGZ_PATH/sqlite3.h" sqlite3.h.tmp && mv -f sqlite3.h.tmp sqlite3.h
cp "$tmp/$SQLITE_TGZ_PATH/sqlite3.c" sqlite3.c.tmp && mv -f sqlite3.c.tmp sqlite3.c
echo "fetch-sqlite: sqlite3.c and sqlite3.h $(sed -n 's/^#define SQLITE_VERSION  *"\(.*\)"/\1/p' sqlite3.h) ok"
