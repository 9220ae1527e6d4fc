#!/usr/bin/env bash
# Rebuilds tests/data/schema-vN.sql: a database written by the mailnode of
# an earlier schema version, with real data in it, dumped as SQL.
#
#   tests/data/make-schema-fixtures.sh COMMIT VERSION
#
# amalgamates src/ as it was at COMMIT and builds it (with the sqlite3.o of
# this tree),
# lets that binary create users, a hold domain, an alias, mailbox messages
# (one of several chunks) and queued mail, and dumps the database.  The
# fixtures in the tree were made with:
#   8064fed^ 1   (schema 1)     27bee3c^ 2   (schema 2)     HEAD 3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
commit=$1 version=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/tree"
git archive "$commit" src tools | tar -x -C "$work/tree"
# Some commits forgot modules in src/MODULES (their committed mailnode.c
# was then stale): add them before main.c.
(cd "$work/tree" && for f in src/*.c; do
     b=${f#src/}
     grep -qx "$b" src/MODULES || sed -i "/^main.c\$/i $b" src/MODULES
 done && tools/amalgamate.sh >/dev/null)
cp "$work/tree/mailnode.c" "$work/tree/mailnode.h" "$work/"
[ -f sqlite3.o ] || make sqlite3.o
cc -std=c11 -D_GNU_SOURCE -O1 -I. -o "$work/mailnode" "$work/mailnode.c" sqlite3.o -lsodium -lz -lm
cat > "$work/c.conf" <<CONF
hostname = old.test
database = $work/m.db
local_domains = example.test
CONF
mn() { "$work/mailnode" -c "$work/c.conf" "$@"; }
echo 'alice-pw' | mn user add alice
echo 'bob-pw' | mn user add bob
mn domain add site.test --hold
mn alias add postmaster alice
for i in 1 2 3; do
    printf 'From: carol@example.test\nSubject: fixture %s\n\nbody of message %s\n' "$i" "$i" |
        mn sendmail -f carol@example.test alice@example.test
done
{ printf 'From: carol@example.test\nSubject: fixture big\n\n'
  for i in $(seq 1 2000); do printf 'line %05d of the big fixture message, long enough to span chunks\n' "$i"; done
} | mn sendmail -f carol@example.test bob@example.test postmaster@example.test
printf 'Subject: fixture remote\n\nfor a remote host\n' | mn sendmail -f alice@example.test dave@remote.test
printf 'Subject: fixture held\n\nfor the field site\n' | mn sendmail -f alice@example.test eve@site.test
python3 - "$work/m.db" "$version" > "tests/data/schema-v$version.sql" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
v = db.execute('PRAGMA user_version').fetchone()[0]
assert v == int(sys.argv[2]), 'schema %d, expected %s' % (v, sys.argv[2])
print('-- mailnode database, schema %d, made by tests/data/make-schema-fixtures.sh' % v)
for line in db.iterdump():
    print(line)
print('PRAGMA user_version=%d;' % v)
PY
echo "tests/data/schema-v$version.sql written"
