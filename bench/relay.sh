#!/bin/bash
# relay.sh - end-to-end relay throughput: mailnode versus an untuned Postfix,
# both relaying into the same kind of sink on loopback.
#
#   smtp-source --SMTP--> mailnode | Postfix --SMTP--> smtp-sink
#
# Each run starts a fresh relay (empty store/queue) whose relayhost is a
# fresh smtp-sink, loads it with MSGS messages from smtp-source and measures
# the time from the first connection until the sink has counted every
# message, the relay's CPU and the peak memory of all its processes. Runs
# alternate mailnode, Postfix, mailnode, ... See bench/README.md.
#
# Environment knobs (defaults in brackets):
#   MSGS=5000  SIZE=1024  CONC=10   messages, payload bytes, smtp-source sessions
#   REPS=3                         runs per server
#   SERVERS="mailnode postfix"     which relays
#   MAILNODE=./mailnode            binary under test
#   BENCH_DIR=/var/tmp             work directories (a real disk, not tmpfs)
#   BASE_PORT=25810                mailnode, Postfix, sink on BASE_PORT..+2
#   RUN_TIMEOUT=900                limit for one run (s)
#   STALL=60                       give up when the sink's count has not
#                                  moved for this long (s)
#   SAMPLE_MS=100                  memory sampling interval
#   OUT=bench/results              report and TSV

set -u
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
. "$BENCH/lib/postfix-instance.sh"

MSGS=${MSGS:-5000}
SIZE=${SIZE:-1024}
CONC=${CONC:-10}
REPS=${REPS:-3}
SERVERS=${SERVERS:-"mailnode postfix"}
MAILNODE=${MAILNODE:-./mailnode}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
BASE_PORT=${BASE_PORT:-25810}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
STALL=${STALL:-60}
SAMPLE_MS=${SAMPLE_MS:-100}
OUT=${OUT:-$BENCH/results}

MN_PORT=$BASE_PORT
PF_PORT=$((BASE_PORT + 1))
SINK_PORT=$((BASE_PORT + 2))
SMTP_SOURCE=/usr/sbin/smtp-source
RCPT=rcpt@remote.test

case $MAILNODE in /*) ;; *) MAILNODE=$ROOT/${MAILNODE#./} ;; esac

die() { echo "relay.sh: $*" >&2; exit 1; }
log() { echo "$*" | tee -a "$REPORT" >&2; }
say() { echo "$*" | tee -a "$REPORT"; }

[ "$(id -u)" = 0 ] || die "must run as root (Postfix instances)"
[ -x "$SMTP_SOURCE" ] && [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/postfix ] ||
    die "Debian package postfix is required (smtp-source, smtp-sink, postfix)"
command -v gcc >/dev/null || die "gcc is required (builds bench/lib/procmon.c)"

# ---------------------------------------------------------------- cleanup
WORK=""
MN_PID=""
SAMPLER_PID=""
SOURCE_PID=""
SINK_DIR=""
PF_DIR=""
cleanup() {
    trap - EXIT INT TERM HUP
    [ -n "$SOURCE_PID" ] && { kill -TERM "$SOURCE_PID" 2>/dev/null; wait "$SOURCE_PID" 2>/dev/null; }
    [ -n "$SAMPLER_PID" ] && { kill -TERM "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; }
    [ -n "$MN_PID" ] && mn_stop
    [ -n "$PF_DIR" ] && pfi_destroy "$PF_DIR"
    [ -n "$SINK_DIR" ] && pfi_sink_stop "$SINK_DIR"
    [ -n "$WORK" ] && [ -d "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "relay.sh: interrupted" >&2; exit 130' INT TERM HUP

mkdir -p "$OUT" "$BENCH_DIR" || die "cannot create $OUT or $BENCH_DIR"
STAMP=$(date -u +%Y%m%d-%H%M%S)
TSV=$OUT/relay-$STAMP.tsv
REPORT=$OUT/relay-$STAMP.txt
: > "$REPORT"
printf 'server\tsize\tconc\trep\tmsgs\tsunk\tsrc_rc\taccept_secs\tsecs\trate\tcpu_ms\tpss_peak_kb\tmax_procs\thwm_kb\n' > "$TSV"

WORK=$(mktemp -d "$BENCH_DIR/mailnode-relay.XXXXXX") || die "mktemp in $BENCH_DIR failed"
chmod 755 "$WORK"
mkdir -p "$WORK/bin"
gcc -O2 -Wall -o "$WORK/bin/procmon" "$BENCH/lib/procmon.c" || die "building procmon failed"
PROCMON=$WORK/bin/procmon

for p in $MN_PORT $PF_PORT $SINK_PORT; do
    if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then
        die "port $p on 127.0.0.1 is in use (set BASE_PORT)"
    fi
done

# ---------------------------------------------------------------- sink
# smtp-sink -c prints "sess=N quit=N mesg=N" followed by CR after every
# message and session end; the last mesg= is the number received so far.
sink_start() {   # DIR
    local i
    SINK_DIR=$1
    mkdir -p "$1"
    /usr/sbin/smtp-sink -c -u postfix "127.0.0.1:$SINK_PORT" 256 </dev/null >"$1/sink.log" 2>&1 &
    echo $! > "$1/sink.pid"
    pfi_wait_port "$SINK_PORT" 10 || { log "smtp-sink not answering on $SINK_PORT"; return 1; }
}
sink_count() {   # DIR
    tail -c 200 "$1/sink.log" 2>/dev/null | tr '\r' '\n' | awk -F'mesg=' 'NF > 1 { n = $2 + 0 } END { print n + 0 }'
}
sink_stop() { [ -n "$SINK_DIR" ] && pfi_sink_stop "$SINK_DIR"; SINK_DIR=""; }

# ---------------------------------------------------------------- relays
mn_start() {   # DIR
    local dir=$1
    mkdir -p "$dir"
    cat > "$dir/mailnode.conf" <<EOF
database = $dir/mailnode.db
hostname = relay.bench.test
listen.smtp = 127.0.0.1:$MN_PORT
listen.submission =
listen.pop3 =
listen.odmr =
local_domains = relay.bench.test
relay_networks = 127.0.0.0/8
relayhost = 127.0.0.1:$SINK_PORT
max_connections = 200
EOF
    "$MAILNODE" -c "$dir/mailnode.conf" run >>"$dir/mailnode.log" 2>&1 </dev/null &
    MN_PID=$!
    pfi_wait_port "$MN_PORT" 20 || { log "mailnode did not answer on 127.0.0.1:$MN_PORT: $(tail -3 "$dir/mailnode.log")"; return 1; }
}
mn_stop() {
    local i
    [ -n "$MN_PID" ] || return 0
    kill -TERM "$MN_PID" 2>/dev/null
    for i in $(seq 100); do pfi_gone "$MN_PID" && break; sleep 0.1; done
    pfi_gone "$MN_PID" || kill -KILL "$MN_PID" 2>/dev/null
    wait "$MN_PID" 2>/dev/null
    MN_PID=""
}
pf_start() {   # DIR
    PF_DIR=$1
    pfi_create "$1" "$PF_PORT" "$SINK_PORT" && pfi_start "$1"
}
pf_stop() { [ -n "$PF_DIR" ] && pfi_destroy "$PF_DIR"; PF_DIR=""; }

# ---------------------------------------------------------------- one run
run_one() {   # SERVER REP
    local srv=$1 rep=$2 dir=$WORK/run-$1-$2 pid port t0 t1 ta rc n prev since secs asecs rate
    local c0 c1 peak="- -" hwm=-
    mkdir -p "$dir" && chmod 755 "$dir"
    sink_start "$dir/sink" || { sink_stop; return 1; }
    if [ "$srv" = mailnode ]; then
        port=$MN_PORT
        mn_start "$dir" || { mn_stop; sink_stop; return 1; }
        pid=$MN_PID
    else
        port=$PF_PORT
        pf_start "$dir/pf" || { pf_stop; sink_stop; return 1; }
        pid=$(pfi_master_pid "$dir/pf")
    fi
    "$PROCMON" peak "$pid" "$SAMPLE_MS" "$dir/peak" &
    SAMPLER_PID=$!
    c0=$("$PROCMON" cpu "$pid")
    t0=$(date +%s.%N)
    timeout "$RUN_TIMEOUT" "$SMTP_SOURCE" -s "$CONC" -m "$MSGS" -l "$SIZE" \
        -f from@example.com -t "$RCPT" "127.0.0.1:$port" >"$dir/source.log" 2>&1 &
    SOURCE_PID=$!
    # wait until the sink has every message (or nothing moves for STALL s)
    prev=-1; since=$SECONDS; ta=""
    while [ $((SECONDS - since)) -lt "$STALL" ] && [ $((SECONDS - ${t0%.*})) -lt "$RUN_TIMEOUT" ]; do
        if [ -z "$ta" ] && pfi_gone "$SOURCE_PID"; then
            ta=$(date +%s.%N)
        fi
        n=$(sink_count "$dir/sink")
        [ "$n" -ge "$MSGS" ] && break
        [ "$n" != "$prev" ] && { prev=$n; since=$SECONDS; }
        sleep 0.05
    done
    t1=$(date +%s.%N)
    wait "$SOURCE_PID"
    rc=$?
    SOURCE_PID=""
    [ -n "$ta" ] || ta=$(date +%s.%N)
    c1=$("$PROCMON" cpu "$pid")
    [ "$srv" = mailnode ] && hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
    kill -TERM "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=""
    [ -r "$dir/peak" ] && peak=$(cat "$dir/peak")
    n=$(sink_count "$dir/sink")
    if [ "$n" -lt "$MSGS" ]; then   # keep the relay's log of a failed run
        cat "$dir/mailnode.log" "$dir/pf/maillog" > "$OUT/relay-$STAMP-$srv-$rep.log" 2>/dev/null
        "$MAILNODE" -c "$dir/mailnode.conf" status >> "$OUT/relay-$STAMP-$srv-$rep.log" 2>&1
    fi
    if [ "$srv" = mailnode ]; then mn_stop; else pf_stop; fi
    sink_stop
    asecs=$(awk -v a="$t0" -v b="$ta" 'BEGIN { printf "%.3f", b - a }')
    if [ "$n" -ge "$MSGS" ]; then
        secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        rate=$(awk -v n="$MSGS" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
    else
        secs=-; rate=-
        log "  $srv rep=$rep: the sink has $n of $MSGS messages (stalled for ${STALL}s or timed out); log in $OUT/relay-$STAMP-$srv-$rep.log"
    fi
    [ "$rc" = 0 ] || log "  $srv rep=$rep: smtp-source exit $rc: $(tail -2 "$dir/source.log" | tr '\n' ' ')"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$srv" "$SIZE" "$CONC" "$rep" "$MSGS" "$n" "$rc" \
        "$asecs" "$secs" "$rate" "$((c1 - c0))" ${peak% *} ${peak#* } "${hwm:--}" >> "$TSV"
    log "$(printf '  %-8s rep=%s  %8s msg/s  all sunk %7s s  accepted %7s s  cpu %6s ms  pss %s kB (%s procs)  hwm %s kB' \
        "$srv" "$rep" "$rate" "$secs" "$asecs" "$((c1 - c0))" "${peak% *}" "${peak#* }" "${hwm:--}")"
    rm -rf "$dir"
}

# ---------------------------------------------------------------- main
case " $SERVERS " in
*" mailnode "*)
    if [ ! -x "$MAILNODE" ]; then
        log "mailnode binary $MAILNODE not found: running the Postfix half only (build with 'make')"
        SERVERS=${SERVERS/mailnode/}
    fi ;;
esac

say "mailnode relay benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "host: $(nproc) cpus, kernel $(uname -r), postfix $(dpkg-query -W -f '${Version}' postfix 2>/dev/null)"
say "load: smtp-source -s $CONC -m $MSGS -l $SIZE (one message per session) -> relay -> smtp-sink; REPS=$REPS"
say ""
log "runs:"
for rep in $(seq "$REPS"); do
    for srv in $SERVERS; do
        run_one "$srv" "$rep" || log "  run failed: $srv rep=$rep"
    done
done

say ""
say "======================== summary (medians of $REPS runs) ========================"
say "msg/s = MSGS / (first connection -> sink has all); cpu = relay CPU per message over the"
say "whole run; PSS = peak of the summed PSS of all relay processes (sampled every ${SAMPLE_MS} ms);"
say "RSS = mailnode's VmHWM (one process). mn/pf > 1: mailnode faster (msg/s) or uses more."
say ""
awk -F'\t' '
function med(k,   n, i, j, t, a) {
    n = cnt[k]; if (n == 0) return ""
    for (i = 1; i <= n; i++) a[i] = val[k, i]
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function add(k, v) { if (v == "-" || v == "") return; cnt[k]++; val[k, cnt[k]] = v + 0 }
function f(v, fmt) { return v == "" ? "-" : sprintf(fmt, v) }
function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b) }
NR > 1 {
    add($1 SUBSEP "rate", $10); if ($8 > 0) add($1 SUBSEP "acc", $5 / $8)
    if ($10 != "-") add($1 SUBSEP "cpu", $11 / $5)
    if ($12 != "-") add($1 SUBSEP "pss", $12 / 1024)
    add($1 SUBSEP "procs", $13)
    if ($14 != "-") add($1 SUBSEP "hwm", $14 / 1024)
}
END {
    printf "%-9s | %9s %10s | %9s | %8s %6s | %8s\n", "", "msg/s", "accepted/s", "cpu ms/msg", "PSS MB", "procs", "RSS MB"
    for (i = 1; i <= 2; i++) {
        s = i == 1 ? "mailnode" : "postfix"
        printf "%-9s | %9s %10s | %9s | %8s %6s | %8s\n", s, f(med(s SUBSEP "rate"), "%.0f"), f(med(s SUBSEP "acc"), "%.0f"), \
            f(med(s SUBSEP "cpu"), "%.3f"), f(med(s SUBSEP "pss"), "%.1f"), f(med(s SUBSEP "procs"), "%d"), f(med(s SUBSEP "hwm"), "%.1f")
    }
    printf "%-9s | %9s %10s | %9s | %8s %6s |\n", "mn/pf", ratio(med("mailnode" SUBSEP "rate"), med("postfix" SUBSEP "rate")), \
        ratio(med("mailnode" SUBSEP "acc"), med("postfix" SUBSEP "acc")), ratio(med("mailnode" SUBSEP "cpu"), med("postfix" SUBSEP "cpu")), \
        ratio(med("mailnode" SUBSEP "pss"), med("postfix" SUBSEP "pss")), ""
}' "$TSV" | tee -a "$REPORT"
say ""
say "per-run data: $TSV"
say "report:       $REPORT"
