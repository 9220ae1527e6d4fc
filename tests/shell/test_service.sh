#!/usr/bin/env bash
# The service files as `make install` installs them:
#   - the systemd unit passes `systemd-analyze verify` without a warning,
#     has the hardening the README promises, and scores at most 3.0 in
#     `systemd-analyze security` (when systemd-analyze is there);
#   - the OpenWrt procd init script parses (`sh -n`), and run against a
#     stand-in for /etc/rc.common's procd helpers it asks procd for
#     `mailnode -c /etc/mailnode.conf run` with respawn, and its reload
#     sends SIGHUP;
#   - the daemon started the way both files start it reloads on SIGHUP and
#     stops on SIGTERM.
# Prints "ok NAME" / "FAIL NAME: reason"; exits non-zero if anything failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
ROOT=$PWD
failed=0
ok()   { echo "ok $1"; }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

tmp=$(mktemp -d /tmp/mailnode-service.XXXXXX)
pid=
cleanup() {
    [ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
    rm -rf "$tmp"
}
trap cleanup EXIT

# Installed with PREFIX inside the temporary directory, so the unit's
# ExecStart names a binary that exists (verify checks it).
if make --no-print-directory -s install SAN="${MAILNODE_SAN:-0}" PREFIX="$tmp/usr" INSTALL_PROCD=1 INITD_DIR="$tmp/etc/init.d" \
        >"$tmp/install.log" 2>&1; then
    ok service_install
else
    fail service_install "$(tail -n 5 "$tmp/install.log" | tr '\n' ' ')"
    exit 1
fi
unit=$tmp/usr/lib/systemd/system/mailnode.service
initd=$tmp/etc/init.d/mailnode
for f in "$unit" "$initd" "$tmp/usr/lib/sysusers.d/mailnode.conf" "$tmp/usr/bin/mailnode"; do
    [ -f "$f" ] || fail service_files "$f not installed"
done
[ -x "$initd" ] || fail service_initd_executable "$initd is not executable"
grep -q "^ExecStart=$tmp/usr/bin/mailnode run\$" "$unit" && ok service_execstart_path ||
    fail service_execstart_path "$(grep ExecStart= "$unit")"

# --- systemd -------------------------------------------------------------------

missing=""
for want in NoNewPrivileges=yes ProtectSystem=strict ReadWritePaths=/var/lib/mailnode PrivateTmp=yes \
            RuntimeDirectory=mailnode StateDirectory=mailnode Restart=on-failure \
            'ExecReload=/bin/kill -HUP $MAINPID' User=mailnode AmbientCapabilities=CAP_NET_BIND_SERVICE; do
    grep -qxF "$want" "$unit" || missing="$missing $want"
done
[ -z "$missing" ] && ok service_unit_hardening || fail service_unit_hardening "missing:$missing"

if command -v systemd-analyze >/dev/null; then
    out=$(systemd-analyze verify --man=no "$unit" 2>&1)
    rc=$?
    [ $rc -eq 0 ] && [ -z "$out" ] && ok service_unit_verify ||
        fail service_unit_verify "rc=$rc $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"
    # A broken directive must make verify complain: the check above can fail.
    sed 's/^ProtectSystem=strict/ProtectSystem=bogus/' "$unit" > "$tmp/broken.service"
    out=$(systemd-analyze verify --man=no "$tmp/broken.service" 2>&1)
    [ -n "$out" ] && ok service_unit_verify_catches_errors ||
        fail service_unit_verify_catches_errors "no complaint about ProtectSystem=bogus"
    score=$(systemd-analyze security --offline=yes "$unit" 2>&1 | sed -n 's/.*Overall exposure level for mailnode.service: \([0-9.]*\).*/\1/p')
    if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }'; then
        ok "service_unit_exposure_$score"
    else
        fail service_unit_exposure "systemd-analyze security says '${score:-nothing}' (want <= 3.0)"
    fi
else
    echo "# systemd-analyze not installed: verify left out" >&2
fi

# --- OpenWrt procd -----------------------------------------------------------------

sh -n "$initd" && ok service_procd_parses || fail service_procd_parses "sh -n failed"

# What /etc/rc.common and procd.sh would provide, recording the calls.
cat > "$tmp/procd-standin.sh" <<'EOF'
calls=
procd_open_instance() { calls="$calls|open"; }
procd_set_param() { calls="$calls|$*"; }
procd_close_instance() { calls="$calls|close"; }
procd_send_signal() { calls="$calls|signal $*"; }
EOF
conf_ok=$tmp/etc/mailnode.conf
: > "$conf_ok"
calls=$(sh -c '. "$1"; sed -e "1d" -e "s|^CONF=.*|CONF=$2|" "$3" > "$4"; . "$4"; start_service; reload_service; echo "$calls"' \
        sh "$tmp/procd-standin.sh" "$conf_ok" "$initd" "$tmp/initd-body.sh" 2>&1)
case $calls in
*"|open|command $tmp/usr/bin/mailnode -c $conf_ok run|respawn 3600 5 5|"*"|close|signal mailnode * HUP"*)
    ok service_procd_instance ;;
*)  fail service_procd_instance "$calls" ;;
esac
out=$(sh -c '. "$1"; sed -e "1d" -e "s|^CONF=.*|CONF=/nonexistent/mailnode.conf|" "$2" > "$3"; . "$3"; start_service; echo "rc=$? $calls"' \
      sh "$tmp/procd-standin.sh" "$initd" "$tmp/initd-body2.sh" 2>&1)
case $out in
*"is missing"*"rc=1 ") ok service_procd_needs_conf ;;
*) fail service_procd_needs_conf "$out" ;;
esac

# --- the daemon as the services run it: SIGHUP reloads, SIGTERM stops ----------

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/run.conf" <<EOF
database = $tmp/mailnode.db
listen.smtp = 127.0.0.1:$port
listen.submission =
listen.pop3 =
listen.imap =
EOF
"$tmp/usr/bin/mailnode" -c "$tmp/run.conf" run > "$tmp/daemon.log" 2>&1 &
pid=$!
up=0
for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; then up=1; break; fi
    sleep 0.1
done
[ $up = 1 ] && ok service_daemon_started || fail service_daemon_started "$(tail -n 5 "$tmp/daemon.log" | tr '\n' ' ')"
echo 'max_recipients = 7' >> "$tmp/run.conf"
kill -HUP "$pid"
reloaded=0
for _ in $(seq 1 50); do
    grep -qi 'reload' "$tmp/daemon.log" && { reloaded=1; break; }
    sleep 0.1
done
kill -0 "$pid" 2>/dev/null && [ $reloaded = 1 ] && ok service_sighup_reloads ||
    fail service_sighup_reloads "$(tail -n 3 "$tmp/daemon.log" | tr '\n' ' ')"
kill -TERM "$pid"
stopped=0
for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { stopped=1; break; }
    sleep 0.1
done
if [ $stopped = 1 ]; then
    wait "$pid"; rc=$?; pid=
    [ $rc = 0 ] && ok service_sigterm_stops || fail service_sigterm_stops "exit status $rc"
else
    fail service_sigterm_stops "still running 10 s after SIGTERM"
fi

[ "$failed" -eq 0 ]
