#!/bin/bash
# scale.sh - does queue work depend on the queue's size?  mailnode with a
# big queue (QUEUED messages over DESTS destinations, and HELD messages
# for a hold domain) against the same mailnode with a small one (SMALL).
#
#   queue count, status        wall time of the command
#   accept                     smtp-source ACCEPT x 1 KiB at CONC sessions
#   drain                      the first DRAIN messages the relayhost (a
#                              smtp-sink) receives after a flush, per second
#   release                    `flush site.test` of a hold domain with 50
#                              held messages: time until the first arrives
#
# Everything on 127.0.0.1; the relayhost is down while the queue fills.
# Knobs: QUEUED=100000 SMALL=1000 DESTS=1000 ACCEPT=2000 DRAIN=2000 CONC=10
#        MAILNODE=./mailnode BENCH_DIR=/var/tmp BASE_PORT=25860 OUT=bench/results

set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib/postfix-instance.sh"
QUEUED=${QUEUED:-100000}
SMALL=${SMALL:-1000}
DESTS=${DESTS:-1000}
ACCEPT=${ACCEPT:-2000}
DRAIN=${DRAIN:-2000}
CONC=${CONC:-10}
MAILNODE=${MAILNODE:-./mailnode}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
BASE_PORT=${BASE_PORT:-25860}
OUT=${OUT:-$ROOT/bench/results}
PORT=$BASE_PORT SINK_PORT=$((BASE_PORT + 1)) SITE_PORT=$((BASE_PORT + 2))
case $MAILNODE in /*) ;; *) MAILNODE=$ROOT/${MAILNODE#./} ;; esac

die() { echo "scale.sh: $*" >&2; exit 1; }
[ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/smtp-sink ] || die "Debian's postfix package is needed (smtp-source, smtp-sink)"
WORK="" MN_PID="" SINKS=""
cleanup() {
    [ -n "$MN_PID" ] && { kill -TERM "$MN_PID" 2>/dev/null; wait "$MN_PID" 2>/dev/null; }
    for p in $SINKS; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
mkdir -p "$OUT"
REPORT=$OUT/scale-$(date -u +%Y%m%d-%H%M%S).txt
WORK=$(mktemp -d "$BENCH_DIR/mailnode-scale.XXXXXX") || die "mktemp failed"
say() { echo "$*" | tee -a "$REPORT"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

mn() { "$MAILNODE" -c "$WORK/mn.conf" "$@"; }
mn_start() {
    cat > "$WORK/mn.conf" <<EOF
database = $WORK/mn.db
hostname = scale.bench.test
listen.smtp = 127.0.0.1:$PORT
listen.submission =
listen.pop3 =
listen.odmr =
local_domains = scale.bench.test
relay_networks = 127.0.0.0/8
relayhost = 127.0.0.1:$SINK_PORT
retry.initial = 1h
max_connections = 200
EOF
    "$MAILNODE" -c "$WORK/mn.conf" run >>"$WORK/mn.log" 2>&1 </dev/null &
    MN_PID=$!
    pfi_wait_port "$PORT" 20 || die "mailnode did not start: $(tail -3 "$WORK/mn.log")"
}
mn_stop() { kill -TERM "$MN_PID" 2>/dev/null; wait "$MN_PID" 2>/dev/null; MN_PID=""; }
sink() {   # PORT LOG
    /usr/sbin/smtp-sink -c -u postfix "127.0.0.1:$1" 256 </dev/null >"$2" 2>&1 &
    SINKS="$SINKS $!"
    pfi_wait_port "$1" 10
}
sink_count() { tail -c 200 "$1" 2>/dev/null | tr '\r' '\n' | awk -F'mesg=' 'NF > 1 { n = $2 + 0 } END { print n + 0 }'; }
sinks_stop() { for p in $SINKS; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; SINKS=""; }

# N messages to DESTS domains, pipelined, 50 per session (the queue fills
# fast; the relayhost is down, so they stay)
fill() {   # N DOMAINFMT
    python3 - "$PORT" "$1" "$DESTS" "$2" <<'EOF'
import smtplib, sys
port, n, dests, fmt = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
body = b'Subject: scale\r\n\r\n' + b'x' * 500 + b'\r\n' + b'y' * 500 + b'\r\n'
i = 0
while i < n:
    s = smtplib.SMTP('127.0.0.1', port, timeout=120)
    for _ in range(min(50, n - i)):
        s.sendmail('a@example.com', ['r%d@%s' % (i, fmt % (i % dests) if '%' in fmt else fmt)], body)
        i += 1
    s.quit()
EOF
}

wait_queued() {   # N
    local end=$((SECONDS + 300))
    while [ $SECONDS -lt $end ]; do [ "$(mn queue count 2>/dev/null)" -ge "$1" ] && return 0; sleep 0.5; done
    return 1
}

one() {   # LABEL QUEUED
    local label=$1 n=$2 t0 t1 c
    rm -f "$WORK"/mn.db* "$WORK"/*.log
    mn_start
    printf 'x\n' | mn user add bench >/dev/null 2>&1
    mn domain add site.test --hold --host "127.0.0.1:$SITE_PORT" >/dev/null || die "domain add failed"
    fill "$n" "d%d.test"
    fill 50 "site.test"
    wait_queued $((n + 50)) || die "queue did not fill"
    sleep 2                                   # the first attempt (relayhost down) is over
    c=$(mn queue count)
    t0=$(now); mn queue count >/dev/null; t1=$(now); local tcount; tcount=$(secs "$t0" "$t1")
    t0=$(now); mn status >/dev/null; t1=$(now); local tstatus; tstatus=$(secs "$t0" "$t1")
    t0=$(now)
    /usr/sbin/smtp-source -s "$CONC" -m "$ACCEPT" -l 1024 -f a@example.com -t r@remote.test "127.0.0.1:$PORT" >/dev/null 2>&1
    t1=$(now); local acc; acc=$(awk -v n="$ACCEPT" -v s="$(secs "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }')
    # release of one hold domain: the first message at the site
    sink "$SITE_PORT" "$WORK/site.log"
    t0=$(now); mn flush site.test >/dev/null
    while [ "$(sink_count "$WORK/site.log")" -lt 1 ] && [ "$(secs "$t0" "$(now)" | cut -d. -f1)" -lt 60 ]; do sleep 0.005; done
    t1=$(now); local rel; rel=$(secs "$t0" "$t1")
    # drain: the relayhost comes up
    sink "$SINK_PORT" "$WORK/sink.log"
    t0=$(now); mn flush >/dev/null
    while [ "$(sink_count "$WORK/sink.log")" -lt "$DRAIN" ] && [ "$(secs "$t0" "$(now)" | cut -d. -f1)" -lt 600 ]; do sleep 0.05; done
    t1=$(now); local drn; drn=$(awk -v n="$DRAIN" -v s="$(secs "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }')
    say "$(printf '%-6s queued %7s  count %ss  status %ss  accept %s msg/s  release first after %ss  drain %s msg/s' \
        "$label" "$c" "$tcount" "$tstatus" "$acc" "$rel" "$drn")"
    mn_stop; sinks_stop
}

say "mailnode scale benchmark $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cpus (shared)"
say "queue over $DESTS destinations + 50 held for site.test; accept $ACCEPT x 1 KiB at c=$CONC; drain: first $DRAIN"
one small "$SMALL"
one big "$QUEUED"
