#!/bin/bash
# compress.sh - relay throughput on loopback at full speed: mailnode to
# mailnode with COMPRESS DEFLATE, the same without, and an untuned Postfix
# relaying the same messages to smtp-sink (the anchor), in one run.
#
#   sender (mailnode | Postfix) --SMTP, loopback--> receiver (mailnode | smtp-sink)
#
# MSGS messages of SIZE bytes (ordinary text, ~3:1 under deflate) are
# queued in the sender while its relay target is down; at t0 the target
# is up and the sender is told to flush; the time until the receiver has
# them all, the sender's CPU seconds and the octets its compressed
# sessions carried are reported.  The machine's other load shows in the
# figures: say so next to them.
#
# Environment knobs (defaults in brackets):
#   MSGS=2000  SIZE=4096            messages, bytes each (CRLF form)
#   REPS=2                          runs per mode
#   MODES="deflate plain postfix"   deflate/plain: mailnode -> mailnode with
#                                   compress = yes / no on the receiver;
#                                   postfix: Postfix -> smtp-sink
#   MAILNODE=./mailnode             binary under test
#   BENCH_DIR=/var/tmp              work directories (a real disk)
#   BASE_PORT=25910                 sender, receiver on BASE_PORT, +1
#   RUN_TIMEOUT=600                 limit for one run (s)
#   OUT=bench/results               report and TSV

set -u
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
. "$BENCH/lib/postfix-instance.sh"

MSGS=${MSGS:-2000}
SIZE=${SIZE:-4096}
REPS=${REPS:-2}
MODES=${MODES:-"deflate plain postfix"}
MAILNODE=${MAILNODE:-./mailnode}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
BASE_PORT=${BASE_PORT:-25910}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
OUT=${OUT:-$BENCH/results}
S_PORT=$BASE_PORT
R_PORT=$((BASE_PORT + 1))
PYTHON=$(command -v /usr/bin/python3 || command -v python3)

case $MAILNODE in /*) ;; *) MAILNODE=$ROOT/${MAILNODE#./} ;; esac

die() { echo "compress.sh: $*" >&2; exit 1; }
log() { echo "$*" | tee -a "$REPORT" >&2; }
say() { echo "$*" | tee -a "$REPORT"; }

[ -x "$MAILNODE" ] || die "$MAILNODE not found (make)"
case " $MODES " in *" postfix "*)
    [ "$(id -u)" = 0 ] && [ -x /usr/sbin/postfix ] && [ -x /usr/sbin/smtp-sink ] ||
        die "the postfix mode needs root and the Debian package postfix (or MODES='deflate plain')" ;;
esac

WORK=""
PIDS=""
PF_DIR=""
cleanup() {
    trap - EXIT INT TERM HUP
    local p
    for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    [ -n "$PF_DIR" ] && { pfi_sink_stop "$PF_DIR"; pfi_destroy "$PF_DIR"; }
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "compress.sh: interrupted" >&2; exit 130' INT TERM HUP

mkdir -p "$OUT" "$BENCH_DIR" || die "cannot create $OUT or $BENCH_DIR"
STAMP=$(date -u +%Y%m%d-%H%M%S)
REPORT=$OUT/compress-$STAMP.txt
TSV=$OUT/compress-$STAMP.tsv
: > "$REPORT"
WORK=$(mktemp -d "$BENCH_DIR/mailnode-compress.XXXXXX") || die "mktemp failed"
chmod 755 "$WORK"

# fill PORT : MSGS text messages of SIZE bytes over one SMTP session
FILL_PY='
import random, smtplib, sys
port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
W = ("the field station reports that the generator ran for six hours and the satellite modem kept its "
     "lock until the evening when the wind rose again please send the spare parts list with the next "
     "supply flight and confirm receipt of the water samples numbers twelve to forty").split()
rnd = random.Random(11)
c = smtplib.SMTP("127.0.0.1", port, timeout=120)
for i in range(n):
    head = ("From: Field <a@field.test>\r\nTo: <rcpt@remote.test>\r\nSubject: report %d\r\n"
            "Message-ID: <cmp.%d@field.test>\r\n\r\n" % (i, i))
    body, used = [], len(head)
    while True:
        t = ""
        while len(t) < 72:
            t += (rnd.choice(W) if rnd.random() < 0.8 else str(rnd.randint(0, 99999))) + " "
        if used + len(t) + 2 > size:
            break
        body.append(t); used += len(t) + 2
    c.sendmail("a@field.test", ["rcpt@remote.test"], (head + "\r\n".join(body) + "\r\n").encode())
c.quit()
'

cpu_of() {   # PID -> user+system seconds
    awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

mn_node() {   # DIR PORT EXTRA-LINES : config only
    mkdir -p "$1"
    cat > "$1/mailnode.conf" <<EOF
database = $1/mailnode.db
listen.smtp = 127.0.0.1:$2
listen.submission =
listen.pop3 =
listen.odmr =
listen.imap =
$3
EOF
}

mn_run() {   # DIR -> pid in LAST_PID
    ("$MAILNODE" -c "$1/mailnode.conf" run) >>"$1/mailnode.log" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS="$PIDS $LAST_PID"
}

stop_pid() {
    local i
    kill -TERM "$1" 2>/dev/null
    for i in $(seq 100); do pfi_gone "$1" && break; sleep 0.1; done
    pfi_gone "$1" || kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

run_mn() {   # MODE REP
    local mode=$1 rep=$2 d=$WORK/run-$1-$2 z=yes s_pid r_pid t0 t1 n=0 c0 c1 i secs defl
    [ "$mode" = plain ] && z=no
    mn_node "$d/r" "$R_PORT" "hostname = receiver.bench.test
local_domains = remote.test
relay_networks = 127.0.0.0/8
compress = $z"
    echo 'bench-pass-1' | "$MAILNODE" -c "$d/r/mailnode.conf" user add rcpt >>"$d/r/mailnode.log" 2>&1 ||
        { log "receiver setup failed"; return 1; }
    mn_node "$d/s" "$S_PORT" "hostname = sender.bench.test
local_domains = field.test
relayhost = 127.0.0.1:$R_PORT
retry.initial = 1h"
    mn_run "$d/s"; s_pid=$LAST_PID
    pfi_wait_port "$S_PORT" 20 || { log "sender did not start"; return 1; }
    timeout 600 "$PYTHON" -c "$FILL_PY" "$S_PORT" "$MSGS" "$SIZE" || { log "fill failed"; return 1; }
    for i in $(seq 300); do
        [ "$("$MAILNODE" -c "$d/s/mailnode.conf" queue count 2>/dev/null)" = "$MSGS" ] && break
        sleep 0.2
    done
    mn_run "$d/r"; r_pid=$LAST_PID
    pfi_wait_port "$R_PORT" 20 || { log "receiver did not start"; return 1; }
    c0=$(cpu_of "$s_pid")
    t0=$(date +%s.%N)
    "$MAILNODE" -c "$d/s/mailnode.conf" flush >/dev/null 2>&1
    for i in $(seq $((RUN_TIMEOUT * 10))); do
        n=$("$MAILNODE" -c "$d/r/mailnode.conf" mailbox list rcpt 2>/dev/null | grep -c .)
        [ "$n" -ge "$MSGS" ] && break
        sleep 0.1
    done
    t1=$(date +%s.%N)
    c1=$(cpu_of "$s_pid")
    local rc1
    rc1=$(cpu_of "$r_pid")
    stop_pid "$s_pid"; stop_pid "$r_pid"
    defl=$(awk '/compressed session: sent/ { for (i = 1; i <= NF; i++) { if ($i == "sent") p += $(i + 1);
         if ($i == "as" && !a) { z += $(i + 1); a = 1 } if ($i == "deflate") ms += $(i + 1) } a = 0 }
         END { if (p) printf "%d->%d (%.2fx), deflate %d ms", p, z, z / p, ms; else printf "-" }' "$d/s/mailnode.log")
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    [ "$n" -ge "$MSGS" ] || secs=-
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$rep" "$n" "$secs" "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')" "$defl" >> "$TSV"
    log "$(printf '  %-8s rep=%s  %5s msgs  %7s s  %7s msg/s  sender cpu %5s s  receiver cpu %5s s  %s' "$mode" "$rep" "$n" "$secs" \
        "$(awk -v s="$secs" -v n="$n" 'BEGIN { if (s == "-" || s == 0) print "-"; else printf "%.0f", n / s }')" \
        "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')" "$rc1" "$defl")"
    rm -rf "$d"
}

run_pf() {   # REP
    local rep=$1 d=$WORK/run-postfix-$1 t0 t1 n=0 i secs
    PF_DIR=$d/pf
    pfi_create "$PF_DIR" "$S_PORT" "$R_PORT" || return 1
    pfi_start "$PF_DIR" || { log "postfix did not start"; return 1; }
    timeout 600 "$PYTHON" -c "$FILL_PY" "$S_PORT" "$MSGS" "$SIZE" || { log "fill failed"; return 1; }
    for i in $(seq 600); do
        [ "$(find "$PF_DIR/queue/deferred" -type f | wc -l)" -ge "$MSGS" ] && break
        sleep 0.2
    done
    pfi_sink_start "$PF_DIR" "$R_PORT" || return 1
    t0=$(date +%s.%N)
    /usr/sbin/postqueue -c "$PF_DIR/etc" -f >/dev/null 2>&1
    pfi_drain "$PF_DIR" "$RUN_TIMEOUT"
    t1=$(date +%s.%N)
    n=$((MSGS - $(pfi_queue_count "$PF_DIR")))
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' postfix "$rep" "$n" "$secs" - - >> "$TSV"
    log "$(printf '  %-8s rep=%s  %5s msgs  %7s s  %7s msg/s  (to smtp-sink, uncompressed)' postfix "$rep" "$n" "$secs" \
        "$(awk -v s="$secs" -v n="$n" 'BEGIN { if (s == 0) print "-"; else printf "%.0f", n / s }')")"
    pfi_sink_stop "$PF_DIR"
    pfi_destroy "$PF_DIR"
    PF_DIR=""
    rm -rf "$d"
}

say "mailnode compression benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "host: $(nproc) cpus (shared), kernel $(uname -r), postfix $(dpkg-query -W -f '${Version}' postfix 2>/dev/null)"
say "$MSGS text messages of $SIZE bytes, relayed on loopback from a queue filled while the target was down"
printf 'mode\trep\treceived\tsecs\tsender_cpu\tdeflate\n' > "$TSV"
log "runs:"
for rep in $(seq "$REPS"); do
    for mode in $MODES; do
        case $mode in
        deflate|plain) run_mn "$mode" "$rep" || log "  run failed: $mode rep=$rep" ;;
        postfix) run_pf "$rep" || log "  run failed: postfix rep=$rep" ;;
        *) log "unknown mode $mode" ;;
        esac
    done
done
say ""
awk -F'\t' 'NR > 1 && $4 != "-" { s[$1] += $4; c[$1]++; n[$1] = $3 }
    END { for (m in s) printf "  %-8s mean %.2f s  %.0f msg/s\n", m, s[m] / c[m], n[m] / (s[m] / c[m])
          if (c["plain"] && c["deflate"])
              printf "  deflate/plain throughput: %.2f\n", (s["plain"] / c["plain"]) / (s["deflate"] / c["deflate"]) }' "$TSV" |
    tee -a "$REPORT"
say "per-run data: $TSV"
