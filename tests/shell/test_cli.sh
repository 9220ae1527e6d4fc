#!/usr/bin/env bash
# The command line as an operator meets it: database creation and
# ownership, error messages and exit codes (sysexits(3)), the one
# configuration check, status/queue/config output, the sendmail
# personalities.  Runs the built binary with temporary configurations.
#
# Prints "ok NAME" or "FAIL NAME: reason" per check (see tests/run);
# exits non-zero if anything failed.  Run from anywhere.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
ROOT=$PWD
BIN=${MAILNODE_BIN:-$ROOT/mailnode}
case $BIN in /*) ;; *) BIN=$ROOT/$BIN ;; esac

failed=0
ok()   { echo "ok $1"; }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
# expect NAME WANT_RC GOT_RC OUTPUT [PATTERN]: exit status and a pattern.
expect() {
    local name=$1 want=$2 got=$3 out=$4 pat=${5:-}
    if [ "$got" != "$want" ]; then
        fail "$name" "exit $got, want $want: $(printf '%s' "$out" | head -c 300 | tr '\n' ' ')"
    elif [ -n "$pat" ] && ! grep -qE -- "$pat" <<<"$out"; then
        fail "$name" "output lacks /$pat/: $(printf '%s' "$out" | head -c 300 | tr '\n' ' ')"
    else
        ok "$name"
    fi
}

T=$(mktemp -d /tmp/mailnode-cli-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
unset MAILNODE_CONF

# A free TCP port on the loopback address.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# port_open PORT: 0 once something listens (bounded: 10 s).
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# conf FILE KEY=VALUE...: a configuration with no listeners unless given.
conf() {
    local f=$1; shift
    {
        echo "hostname = node.test"
        echo "listen.smtp ="
        echo "listen.submission ="
        echo "listen.pop3 ="
        echo "listen.odmr ="
        echo "listen.imap ="
        echo "listen.imaps ="
        for kv in "$@"; do echo "${kv%%=*} = ${kv#*=}"; done
    } >"$f"
}

# --- read-only commands never create a database ------------------------------

conf "$T/ro.conf" "database=$T/ro/none.db"
mkdir -p "$T/ro"
for cmd in "status" "queue list" "queue count" "user list" "domain list" "alias list"; do
    # shellcheck disable=SC2086
    out=$("$BIN" -c "$T/ro.conf" $cmd 2>&1); rc=$?
    expect "ro_${cmd// /_}_no_db" 66 "$rc" "$out" "no database $T/ro/none.db"
done
if [ -e "$T/ro/none.db" ] || [ -e "$T/ro/none.db.key" ]; then
    fail ro_nothing_created "$(ls "$T/ro")"
else
    ok ro_nothing_created
fi
out=$(echo pw-1234567 | "$BIN" -c "$T/ro.conf" user add ann 2>&1); rc=$?
expect write_command_creates 0 "$rc" "$out" "added"
[ -f "$T/ro/none.db" ] && [ -f "$T/ro/none.db.key" ] && ok write_created_db_and_key ||
    fail write_created_db_and_key "$(ls "$T/ro")"

# --- database open errors say why ---------------------------------------------

conf "$T/nodir.conf" "database=$T/missing/dir/m.db"
out=$(echo pw-1234567 | "$BIN" -c "$T/nodir.conf" user add ann 2>&1); rc=$?
expect db_missing_dir_73 73 "$rc" "$out" "directory $T/missing/dir does not exist"
out=$("$BIN" -c "$T/nodir.conf" run 2>&1); rc=$?
expect db_missing_dir_run_73 73 "$rc" "$out" "does not exist"

if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1 && command -v setpriv >/dev/null; then
    as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
    mkdir -p "$T/perm" && chmod 755 "$T/perm" "$T"
    conf "$T/perm.conf" "database=$T/perm/p.db"
    echo pw-1234567 | "$BIN" -c "$T/perm.conf" user add ann >/dev/null 2>&1
    out=$(as_nobody "$BIN" -c "$T/perm.conf" status 2>&1); rc=$?
    expect db_permission_77 77 "$rc" "$out" "no permission to read and write $T/perm/p.db"
    out=$(as_nobody "$BIN" -c "$T/perm.conf" user add bob 2>&1 </dev/null); rc=$?
    expect db_permission_write_77 77 "$rc" "$out" "no permission"

    # --- user = nobody: what root creates belongs to nobody -------------------
    mkdir -p "$T/own" && chown nobody "$T/own"
    port=$(free_port)
    conf "$T/own.conf" "database=$T/own/o.db" "user=nobody" "listen.smtp=127.0.0.1:$port"
    echo pw-1234567 | "$BIN" -c "$T/own.conf" user add ann >/dev/null 2>&1
    owner=$(stat -c %U "$T/own/o.db" "$T/own/o.db.key" | sort -u | tr '\n' ' ')
    [ "$owner" = "nobody " ] && ok root_creates_for_user || fail root_creates_for_user "owners: $owner"
    chown root "$T/own/o.db"        # as an older version left it
    "$BIN" -c "$T/own.conf" run >"$T/own.log" 2>&1 &
    PIDS+=($!)
    if wait_port "$port"; then
        ok run_as_nobody_starts
    else
        fail run_as_nobody_starts "$(tail -3 "$T/own.log")"
    fi
    kill "${PIDS[-1]}" 2>/dev/null; wait "${PIDS[-1]}" 2>/dev/null
    [ "$(stat -c %U "$T/own/o.db")" = nobody ] && ok run_fixes_ownership ||
        fail run_fixes_ownership "$(stat -c %U "$T/own/o.db")"
    mkdir -p "$T/rootdir"
    conf "$T/rootdir.conf" "database=$T/rootdir/r.db" "user=nobody" "listen.smtp=127.0.0.1:$port"
    echo pw-1234567 | "$BIN" -c "$T/rootdir.conf" user add ann >/dev/null 2>&1
    out=$(timeout 20 "$BIN" -c "$T/rootdir.conf" run 2>&1); rc=$?
    expect run_dir_not_writable_says_chown 77 "$rc" "$out" "chown nobody $T/rootdir"
else
    fail db_permission "needs root, the user nobody and setpriv (util-linux)"
fi

# --- one configuration check, for every command -----------------------------------

# bad KEY=VALUE NAME PATTERN: every command refuses it with exit 78 and
# FILE:LINE: key (the key is on line 9: after the eight lines conf writes).
bad() {
    local kv=$1 name=$2 pat=$3 key=${1%%=*}
    conf "$T/bad.conf" "database=$T/bad.db" "$kv"
    for cmd in "run" "status" "queue list" "user list" "sendmail" "flush" "poll"; do
        # shellcheck disable=SC2086
        out=$(timeout 20 "$BIN" -c "$T/bad.conf" $cmd root </dev/null 2>&1); rc=$?
        expect "conf_${name}_${cmd// /_}" 78 "$rc" "$out" "$T/bad.conf:9: $key: $pat"
    done
}
bad "listen.smtp=localhost:25" listen "not addr:port"
bad "upstream.mode=turn" upstream_mode "use etrn or atrn"
bad "hostname=my host" hostname "not a domain name"
bad "tls.cert=$T/nonexistent.pem" tls_cert "$T/nonexistent.pem: no such file"
bad "relayhost=smtp example.org" relayhost "not host"
bad "upstream=upstream.example" upstream "not host:port"
bad "log=file" log "use stderr or syslog"
bad "delivery.port=0" delivery_port "port"
bad "user=no-such-user-$$" user "no such user"
bad "resolver=dns.example" resolver "not a numeric"

# A certificate that exists but is not one: `run` names the line too.
echo "not a certificate" >"$T/bad.pem"
conf "$T/badcert.conf" "database=$T/badcert.db" "tls.cert=$T/bad.pem" "listen.smtp=127.0.0.1:$(free_port)"
out=$(timeout 20 "$BIN" -c "$T/badcert.conf" run 2>&1); rc=$?
expect conf_bad_certificate_run 78 "$rc" "$out" "$T/badcert.conf:9: tls.cert: tls.cert $T/bad.pem"

# Comments after white space, in every key.
conf "$T/comment.conf" "database=$T/comment.db # the spool" "local_domains=ours.example # ours" \
    "relay_networks=10.0.0.0/8 # lan" "retry.initial=1m # soon" "vrfy=no # not telling"
out=$("$BIN" -c "$T/comment.conf" config 2>&1); rc=$?
expect conf_comment_after_value 0 "$rc" "$out" "^local_domains = ours.example$"
# (grep reads a here-string: grep -q ending a pipe under pipefail can
# fail at random on the writer's SIGPIPE.)
if grep -qx "relay_networks = 10.0.0.0/8" <<<"$out" &&
    grep -qx "retry.initial = 1m" <<<"$out" &&
    grep -qx "database = $T/comment.db" <<<"$out"; then
    ok conf_comment_every_key
else
    fail conf_comment_every_key "$(printf '%s' "$out" | grep -E '^(relay_networks|retry.initial|database) ')"
fi
expect config_marks_defaults 0 "$rc" "$out" "^retry.max = 4h  # default$"
expect config_shows_derived 0 "$rc" "$out" "^keyfile = $T/comment.db.key  # derived$"
out=$("$BIN" -c "$T/comment.conf" config -n 2>&1); rc=$?
expect config_n_only_set 0 "$rc" "$out" "^vrfy = no$"
grep -q "# default" <<<"$out" && fail config_n_no_defaults "$out" || ok config_n_no_defaults
# Implicit local domains, and domains from the database.
conf "$T/implicit.conf" "database=$T/implicit.db"
echo pw-1234567 | "$BIN" -c "$T/implicit.conf" user add ann >/dev/null 2>&1
"$BIN" -c "$T/implicit.conf" domain add extra.example --local >/dev/null 2>&1
out=$("$BIN" -c "$T/implicit.conf" config 2>&1); rc=$?
expect config_implicit_local_domains 0 "$rc" "$out" "^local_domains = localhost, node.test  # derived$"
expect config_database_domains 0 "$rc" "$out" "^#   extra.example  local$"
# domain mod: in place, each option replaces its field.
"$BIN" -c "$T/implicit.conf" domain add site.example --hold --owner ann >/dev/null 2>&1
out=$("$BIN" -c "$T/implicit.conf" domain mod site.example --host 192.0.2.7:2525 2>&1); rc=$?
expect domain_mod_host 0 "$rc" "$out" "^domain site.example changed: hold, owner ann, host 192.0.2.7:2525$"
out=$("$BIN" -c "$T/implicit.conf" domain list 2>&1)
expect domain_mod_listed 0 0 "$out" "^site.example	hold	ann	192.0.2.7:2525$"
out=$("$BIN" -c "$T/implicit.conf" domain mod site.example --owner - 2>&1); rc=$?
expect domain_mod_clear_owner 0 "$rc" "$out" "owner -, host 192.0.2.7:2525$"
out=$("$BIN" -c "$T/implicit.conf" domain mod site.example --local 2>&1); rc=$?
expect domain_mod_local_needs_no_host 64 "$rc" "$out" "apply to --hold domains only"
out=$("$BIN" -c "$T/implicit.conf" domain mod site.example --owner nosuch 2>&1); rc=$?
expect domain_mod_unknown_owner_67 67 "$rc" "$out" "no such user"
out=$("$BIN" -c "$T/implicit.conf" domain mod none.example --hold 2>&1); rc=$?
expect domain_mod_unknown_domain_65 65 "$rc" "$out" "no domain none.example"
out=$("$BIN" -c "$T/implicit.conf" domain mod site.example --local --host - 2>&1); rc=$?
expect domain_mod_to_local 0 "$rc" "$out" "^domain site.example changed: local, owner -, host -$"
out=$("$BIN" -c "$T/implicit.conf" domain add site.example --hold 2>&1); rc=$?
expect domain_add_exists_says_mod 65 "$rc" "$out" "domain mod site.example"
[ -e "$T/comment.db # the spool" ] && fail conf_comment_path "a file named with the comment" ||
    ok conf_comment_path
printf 'hostname = node.test\npassword_path_test = 1\n' >"$T/unknown.conf"
out=$("$BIN" -c "$T/unknown.conf" status 2>&1); rc=$?
expect conf_unknown_key_78 78 "$rc" "$out" "$T/unknown.conf:2: unknown key 'password_path_test'"

# --- a second daemon on the same database ----------------------------------------

p1=$(free_port); p2=$(free_port)
conf "$T/two.conf" "database=$T/two.db" "listen.smtp=127.0.0.1:$p1"
"$BIN" -c "$T/two.conf" run >"$T/two.log" 2>&1 &
PIDS+=($!); first=$!
if wait_port "$p1"; then
    out=$(timeout 20 "$BIN" -c "$T/two.conf" run 2>&1); rc=$?
    expect second_daemon_names_pid 75 "$rc" "$out" "another mailnode \(pid $first\) is running on $T/two.db"
    # The same database behind other ports: still the lock that speaks.
    conf "$T/two-b.conf" "database=$T/two.db" "listen.smtp=127.0.0.1:$p2"
    out=$(timeout 20 "$BIN" -c "$T/two-b.conf" run 2>&1); rc=$?
    expect second_daemon_other_port 75 "$rc" "$out" "another mailnode \(pid $first\)"
else
    fail second_daemon_names_pid "first daemon did not start: $(tail -3 "$T/two.log")"
fi

# --- make install: links and sample configurations ----------------------------------

if make --no-print-directory -s install DESTDIR="$T/pkg" PREFIX=/usr INSTALL_SENDMAIL=1 >"$T/install.log" 2>&1; then
    probs=""
    for l in usr/sbin/sendmail usr/bin/mailq usr/bin/newaliases usr/lib/sendmail; do
        [ -L "$T/pkg/$l" ] || probs="$probs $l missing;"
    done
    [ "$(readlink "$T/pkg/usr/bin/mailq")" = mailnode ] || probs="$probs mailq -> $(readlink "$T/pkg/usr/bin/mailq");"
    [ "$(readlink "$T/pkg/usr/lib/sendmail")" = /usr/sbin/sendmail ] || probs="$probs /usr/lib/sendmail -> $(readlink "$T/pkg/usr/lib/sendmail");"
    for f in field-node.conf upstream-relay.conf; do
        [ -f "$T/pkg/usr/share/doc/mailnode/examples/$f" ] || probs="$probs examples/$f missing;"
    done
    [ -z "$probs" ] && ok install_links_and_samples || fail install_links_and_samples "$probs"
    # The installed mailq is the queue listing.
    conf "$T/mq.conf" "database=$T/mq.db"
    echo pw-1234567 | "$BIN" -c "$T/mq.conf" user add ann >/dev/null 2>&1
    out=$(MAILNODE_CONF=$T/mq.conf "$T/pkg/usr/bin/mailq" 2>&1); rc=$?
    expect installed_mailq_runs 0 "$rc" "$out" ""
else
    fail install_links_and_samples "make install failed: $(tail -3 "$T/install.log")"
fi

[ "$failed" -eq 0 ]
