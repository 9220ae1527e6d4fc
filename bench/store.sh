#!/bin/bash
# store.sh - what the store costs the disk: bytes written and flushes per
# message, mailnode versus an untuned Postfix in the same run.
#
#   relay   smtp-source --SMTP--> mailnode | Postfix --SMTP--> smtp-sink
#           bytes the file system wrote per relayed message (accept, queue,
#           delivery, removal, checkpoints and journal), fsyncs per message
#   drain   DRAIN messages queued while the sink is down, then the sink
#           comes up and the queue is flushed: time, fsyncs per delivered
#           message, with every fsync made slow (SLOW_US, an SD card)
#   pop3    (mailnode) messages stored into a local mailbox, then all
#           deleted over POP3: bytes written per message
#   local   messages accepted and stored into a local mailbox (mailnode:
#           its database; Postfix: its queue, then virtual(8) into a
#           Maildir on the same file system): bytes written per accepted
#           message, and the ratio Postfix / mailnode
#
# Each server's database or queue directory is the only thing on a fresh
# ext4 file system on a loop device; the device's written-sector counter
# (/sys/block/loopN/stat) over the run, after the server stopped and a
# sync, is what the run wrote to "the card": data, metadata, journal.
# Logs are written elsewhere for both.  See bench/README.md.
#
# Knobs (defaults in brackets):
#   MSGS=2000 SIZES="1024 51200" CONC=10   relay phase
#   DRAIN=1000 SLOW_US=8000                drain phase (0 DRAIN: skip)
#   POP=1000                               pop3 phase (0: skip)
#   LOCAL=1000                             local phase: messages of 1 KiB
#   REPS=1  SERVERS="mailnode postfix"  PHASES="relay drain pop3 local"
#   MAILNODE=./mailnode  OLD=              OLD: a second mailnode binary
#                                          (e.g. the previous release) run
#                                          beside it as "mailnode-old"
#   BENCH_DIR=/var/tmp  BASE_PORT=25830  OUT=bench/results  TIMEOUT=600

set -u
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
. "$BENCH/lib/postfix-instance.sh"

MSGS=${MSGS:-2000}
SIZES=${SIZES:-"1024 51200"}
CONC=${CONC:-10}
DRAIN=${DRAIN:-1000}
SLOW_US=${SLOW_US:-8000}
POP=${POP:-1000}
LOCAL=${LOCAL:-1000}
REPS=${REPS:-1}
SERVERS=${SERVERS:-"mailnode postfix"}
PHASES=${PHASES:-"relay drain pop3 local"}
MAILNODE=${MAILNODE:-./mailnode}
OLD=${OLD:-}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
BASE_PORT=${BASE_PORT:-25830}
OUT=${OUT:-$BENCH/results}
TIMEOUT=${TIMEOUT:-600}

SRV_PORT=$BASE_PORT
SINK_PORT=$((BASE_PORT + 1))
POP_PORT=$((BASE_PORT + 2))
SMTP_SOURCE=/usr/sbin/smtp-source

case $MAILNODE in /*) ;; *) MAILNODE=$ROOT/${MAILNODE#./} ;; esac
[ -z "$OLD" ] || case $OLD in /*) ;; *) OLD=$ROOT/${OLD#./} ;; esac
[ -z "$OLD" ] || SERVERS="$SERVERS mailnode-old"

die() { echo "store.sh: $*" >&2; exit 1; }
say() { echo "$*" | tee -a "$REPORT"; }

[ "$(id -u)" = 0 ] || die "must run as root (loop devices, Postfix)"
for t in losetup mkfs.ext4 mount gcc python3 "$SMTP_SOURCE" /usr/sbin/smtp-sink /usr/sbin/postfix; do
    command -v "$t" >/dev/null || die "$t is required"
done

WORK="" LOOP="" MNT="" SRV_PID="" PF_DIR="" SINK_DIR=""
cleanup() {
    trap - EXIT INT TERM HUP
    [ -n "$SRV_PID" ] && mn_stop
    [ -n "$PF_DIR" ] && pfi_stop "$PF_DIR"
    [ -n "$SINK_DIR" ] && pfi_sink_stop "$SINK_DIR"
    fs_drop
    [ -n "$WORK" ] && [ -d "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "store.sh: interrupted" >&2; exit 130' INT TERM HUP

mkdir -p "$OUT" "$BENCH_DIR" || die "cannot create $OUT or $BENCH_DIR"
STAMP=$(date -u +%Y%m%d-%H%M%S)
REPORT=$OUT/store-$STAMP.txt
TSV=$OUT/store-$STAMP.tsv
: > "$REPORT"
printf 'phase\tserver\tsize\trep\tmsgs\tbytes\tbytes_per_msg\tproc_write_bytes\tfsyncs\tsecs\n' > "$TSV"
WORK=$(mktemp -d "$BENCH_DIR/mailnode-store.XXXXXX") || die "mktemp failed"
chmod 755 "$WORK"
gcc -O2 -shared -fPIC -o "$WORK/slowfsync.so" "$BENCH/lib/slowfsync.c" -ldl || die "building the shim failed"

# ------------------------------------------------------------ the "card"
fs_new() {   # a fresh ext4 on a loop device, mounted at $MNT
    fs_drop
    truncate -s 2G "$WORK/card.img" || return 1
    LOOP=$(losetup -f --show "$WORK/card.img") || { LOOP=""; return 1; }
    # Initialise inode tables and journal now, not in the background
    # while we count.
    mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP" || return 1
    MNT=$WORK/card
    mkdir -p "$MNT" && mount "$LOOP" "$MNT" && chmod 755 "$MNT"
}
fs_drop() {
    if [ -n "$MNT" ] && mountpoint -q "$MNT"; then umount "$MNT" || umount -l "$MNT"; fi
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    LOOP="" MNT=""
    rm -f "$WORK/card.img" 2>/dev/null
}
fs_written() {   # bytes written to the device so far (after a sync)
    sync -f "$MNT" 2>/dev/null || sync
    awk '{ printf "%.0f\n", $7 * 512 }' "/sys/block/${LOOP#/dev/}/stat"
}

# ------------------------------------------------------------ servers
sink_up() { SINK_DIR=$WORK/sink; pfi_sink_start "$SINK_DIR" "$SINK_PORT" >/dev/null; }
sink_down() { pfi_sink_stop "$SINK_DIR"; SINK_DIR=""; }
sink_count() { tail -c 200 "$WORK/sink/sink.log" 2>/dev/null | tr '\r' '\n' | awk -F'mesg=' 'NF > 1 { n = $2 + 0 } END { print n + 0 }'; }
sink_up_counting() {
    SINK_DIR=$WORK/sink; mkdir -p "$SINK_DIR"
    /usr/sbin/smtp-sink -c -u postfix "127.0.0.1:$SINK_PORT" 256 </dev/null >"$SINK_DIR/sink.log" 2>&1 &
    echo $! > "$SINK_DIR/sink.pid"
    pfi_wait_port "$SINK_PORT" 10
}

mn_conf() {   # BIN
    cat > "$WORK/mailnode.conf" <<EOF
database = $MNT/mailnode.db
hostname = relay.bench.test
listen.smtp = 127.0.0.1:$SRV_PORT
listen.submission =
listen.pop3 = 127.0.0.1:$POP_PORT
listen.odmr =
listen.imap =
local_domains = relay.bench.test
relay_networks = 127.0.0.0/8
relayhost = 127.0.0.1:$SINK_PORT
retry.initial = 1h
max_connections = 200
EOF
}
mn_start() {   # BIN SLOW_US
    local bin=$1
    mn_conf
    SLOWFSYNC_US=$2 SLOWFSYNC_COUNT=$WORK/fsyncs LD_PRELOAD=$WORK/slowfsync.so \
        "$bin" -c "$WORK/mailnode.conf" run >>"$WORK/mailnode.log" 2>&1 </dev/null &
    SRV_PID=$!
    pfi_wait_port "$SRV_PORT" 20
}
mn_stop() {
    local i
    [ -n "$SRV_PID" ] || return 0
    kill -TERM "$SRV_PID" 2>/dev/null
    for i in $(seq 300); do pfi_gone "$SRV_PID" && break; sleep 0.1; done
    pfi_gone "$SRV_PID" || kill -KILL "$SRV_PID" 2>/dev/null
    wait "$SRV_PID" 2>/dev/null
    SRV_PID=""
}
mn_queued() { "$1" -c "$WORK/mailnode.conf" queue count 2>/dev/null || echo -1; }
pf_start() {   # SLOW_US [local]
    PF_DIR=$WORK/pf
    rm -rf "$PF_DIR"
    pfi_create "$PF_DIR" "$SRV_PORT" "$SINK_PORT" LD_PRELOAD="$WORK/slowfsync.so" \
        SLOWFSYNC_US="$1" SLOWFSYNC_COUNT="$WORK/fsyncs" || return 1
    # the queue on the card; DIR/queue points there so that the
    # postfix-instance.sh helpers find master.pid
    sed -i "s|^queue_directory = .*|queue_directory = $MNT/queue|" "$PF_DIR/etc/main.cf"
    mkdir -p "$MNT/queue" && chmod 755 "$MNT/queue"
    rmdir "$PF_DIR/queue" && ln -s "$MNT/queue" "$PF_DIR/queue" || return 1
    : > "$WORK/fsyncs"; chmod 666 "$WORK/fsyncs"
    [ "${2:-}" != local ] || pf_local
    pfi_start "$PF_DIR"
}
pf_local() {   # deliver relay.bench.test into $MNT/mail/bench/ (a Maildir) on the card
    local uid gid
    uid=$(id -u postfix) gid=$(id -g postfix)
    mkdir -p "$MNT/mail" && chown postfix: "$MNT/mail"
    cat >> "$PF_DIR/etc/main.cf" <<EOF
virtual_mailbox_domains = relay.bench.test
virtual_mailbox_base = $MNT/mail
virtual_mailbox_maps = static:bench/
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
virtual_minimum_uid = 1
EOF
    echo 'virtual   unix  -       n       n       -       -       virtual' >> "$PF_DIR/etc/master.cf"
}
pf_stored() { find "$MNT/mail/bench/new" -type f 2>/dev/null | wc -l; }
pf_stop() { [ -n "$PF_DIR" ] && pfi_stop "$PF_DIR"; rm -rf "$PF_DIR"; PF_DIR=""; }
pf_queued() { find "$MNT/queue/incoming" "$MNT/queue/active" "$MNT/queue/deferred" "$MNT/queue/maildrop" -type f 2>/dev/null | wc -l; }

bin_of() { case $1 in mailnode) echo "$MAILNODE" ;; mailnode-old) echo "$OLD" ;; esac; }
fsyncs() { stat -c %s "$WORK/fsyncs" 2>/dev/null || echo 0; }
wait_for() {   # CMD... : until it succeeds, at most TIMEOUT s (CMD runs each time)
    local end=$((SECONDS + TIMEOUT))
    while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.05; done
    return 1
}
all_sunk() { [ "$(sink_count)" -ge "$1" ]; }
# predicates for wait_for: each call counts again
pf_empty() { [ "$(pf_queued)" -eq 0 ]; }
pf_deferred() { [ "$(find "$MNT/queue/deferred" -type f | wc -l)" -ge "$1" ]; }
pf_all_stored() { [ "$(pf_stored)" -ge "$1" ]; }
mn_empty() { [ "$(mn_queued "$1")" -eq 0 ]; }
mn_holds() { [ "$(mn_queued "$1")" -ge "$2" ]; }
record() {   # PHASE SERVER SIZE REP MSGS BYTES PROCW FSYNCS SECS
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" \
        "$(( $6 / $5 ))" "$7" "$8" "$9" >> "$TSV"
    say "$(printf '  %-6s %-12s %6s B  rep %s: %7d B/msg on the device  (%s B/msg by the process)  %s fsyncs/msg  %s s' \
        "$1" "$2" "$3" "$4" "$(( $6 / $5 ))" "$( [ "$7" = - ] && echo - || echo $(( $7 / $5 )))" \
        "$(awk -v f="$8" -v n="$5" 'BEGIN { printf "%.3f", f / n }')" "$9")"
}
proc_wbytes() { awk '/^write_bytes/ { print $2 }' "/proc/$1/io" 2>/dev/null || echo -; }

# ------------------------------------------------------------ phases
relay_one() {   # SERVER SIZE REP
    local srv=$1 size=$2 rep=$3 b0 b1 f0 f1 t0 t1 w=-
    fs_new || { say "  loop device setup failed"; return 1; }
    sink_up_counting || return 1
    : > "$WORK/fsyncs"
    if [ "$srv" = postfix ]; then pf_start 0 || return 1; else mn_start "$(bin_of "$srv")" 0 || return 1; fi
    b0=$(fs_written); f0=$(fsyncs); t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$SMTP_SOURCE" -s "$CONC" -m "$MSGS" -l "$size" -f from@example.com \
        -t rcpt@remote.test "127.0.0.1:$SRV_PORT" >"$WORK/source.log" 2>&1
    wait_for all_sunk "$MSGS" || say "  $srv: the sink has only $(sink_count) of $MSGS"
    if [ "$srv" = postfix ]; then
        wait_for pf_empty
    else
        wait_for mn_empty "$(bin_of "$srv")"
        w=$(proc_wbytes "$SRV_PID")
    fi
    t1=$(date +%s.%N)
    f1=$(fsyncs)
    if [ "$srv" = postfix ]; then pf_stop; else mn_stop; fi
    b1=$(fs_written)
    sink_down
    record relay "$srv" "$size" "$rep" "$MSGS" $((b1 - b0)) "$w" $((f1 - f0)) \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
}

drain_one() {   # SERVER REP
    local srv=$1 rep=$2 b0 b1 f0 f1 t0 t1 bin
    fs_new || return 1
    : > "$WORK/fsyncs"
    if [ "$srv" = postfix ]; then
        pf_start "$SLOW_US" || return 1
    else
        bin=$(bin_of "$srv"); mn_start "$bin" "$SLOW_US" || return 1
    fi
    # the sink is down: everything queues
    timeout "$TIMEOUT" "$SMTP_SOURCE" -s "$CONC" -m "$DRAIN" -l 1024 -f from@example.com \
        -t rcpt@remote.test "127.0.0.1:$SRV_PORT" >"$WORK/source.log" 2>&1
    if [ "$srv" = postfix ]; then
        wait_for pf_deferred "$DRAIN"
    else
        wait_for mn_holds "$bin" "$DRAIN"
        sleep 1                               # the first (failed) attempt is over
    fi
    sink_up_counting || return 1
    b0=$(fs_written); f0=$(fsyncs); t0=$(date +%s.%N)
    if [ "$srv" = postfix ]; then
        postqueue -c "$PF_DIR/etc" -f
    else
        "$bin" -c "$WORK/mailnode.conf" flush >/dev/null
    fi
    wait_for all_sunk "$DRAIN" || say "  $srv: the sink has only $(sink_count) of $DRAIN"
    t1=$(date +%s.%N)
    if [ "$srv" = postfix ]; then wait_for pf_empty; else wait_for mn_empty "$bin"; fi
    f1=$(fsyncs)
    if [ "$srv" = postfix ]; then pf_stop; else mn_stop; fi
    b1=$(fs_written)
    sink_down
    record drain "$srv" 1024 "$rep" "$DRAIN" $((b1 - b0)) - $((f1 - f0)) \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
}

pop_one() {   # SERVER REP (mailnode only)
    local srv=$1 rep=$2 b0 b1 f0 f1 t0 t1 bin
    bin=$(bin_of "$srv")
    fs_new || return 1
    : > "$WORK/fsyncs"
    mn_start "$bin" 0 || return 1
    printf 'benchpw\n' | "$bin" -c "$WORK/mailnode.conf" user add bench >/dev/null 2>&1
    b0=$(fs_written); f0=$(fsyncs); t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$SMTP_SOURCE" -s "$CONC" -m "$POP" -l 1024 -f from@example.com \
        -t bench@relay.bench.test "127.0.0.1:$SRV_PORT" >"$WORK/source.log" 2>&1
    python3 - "$POP_PORT" "$POP" <<'EOF' || say "  pop3 client failed"
import poplib, sys
p = poplib.POP3('127.0.0.1', int(sys.argv[1]), timeout=60)
p.user('bench'); p.pass_('benchpw')
n = len(p.list()[1])
for i in range(1, n + 1):
    p.dele(i)
p.quit()
sys.exit(0 if n == int(sys.argv[2]) else 1)
EOF
    t1=$(date +%s.%N)
    f1=$(fsyncs)
    mn_stop
    b1=$(fs_written)
    record pop3 "$srv" 1024 "$rep" "$POP" $((b1 - b0)) - $((f1 - f0)) \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
}

local_one() {   # SERVER REP
    local srv=$1 rep=$2 b0 b1 f0 f1 t0 t1 bin w=- w0="" n
    fs_new || return 1
    : > "$WORK/fsyncs"
    if [ "$srv" = postfix ]; then
        pf_start 0 local || return 1
    else
        bin=$(bin_of "$srv")
        mn_start "$bin" 0 || return 1
        printf 'benchpw\n' | "$bin" -c "$WORK/mailnode.conf" user add bench >/dev/null 2>&1
        w0=$(proc_wbytes "$SRV_PID")
    fi
    b0=$(fs_written); f0=$(fsyncs); t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$SMTP_SOURCE" -s "$CONC" -m "$LOCAL" -l 1024 -f from@example.com \
        -t bench@relay.bench.test "127.0.0.1:$SRV_PORT" >"$WORK/source.log" 2>&1
    if [ "$srv" = postfix ]; then
        wait_for pf_all_stored "$LOCAL" || say "  postfix: only $(pf_stored) of $LOCAL in the Maildir"
        wait_for pf_empty
    else
        # 250 after DATA means stored: nothing to wait for
        w=$(proc_wbytes "$SRV_PID")
        [ "$w" = - ] || [ -z "$w0" ] || [ "$w0" = - ] || w=$((w - w0))
    fi
    t1=$(date +%s.%N)
    f1=$(fsyncs)
    if [ "$srv" = postfix ]; then pf_stop; else mn_stop; fi
    b1=$(fs_written)
    if [ "$srv" != postfix ]; then
        n=$("$bin" -c "$WORK/mailnode.conf" status 2>/dev/null | awk '$1 == "mailboxes" { print $2 + 0 }')
        [ "${n:-0}" -ge "$LOCAL" ] || say "  $srv: only ${n:-0} of $LOCAL in the mailbox"
    fi
    record local "$srv" 1024 "$rep" "$LOCAL" $((b1 - b0)) "$w" $((f1 - f0)) \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
}

say "mailnode store benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "host: $(nproc) cpus, kernel $(uname -r), postfix $(dpkg-query -W -f '${Version}' postfix 2>/dev/null); ext4 on a loop device per run"
say "relay: smtp-source -s $CONC -m $MSGS (sizes $SIZES); drain: $DRAIN x 1 KiB, fsync +$SLOW_US us; pop3: $POP x 1 KiB; local: $LOCAL x 1 KiB"
for rep in $(seq "$REPS"); do
    case " $PHASES " in *" relay "*)
        for size in $SIZES; do
            for srv in $SERVERS; do relay_one "$srv" "$size" "$rep" || say "  relay run failed: $srv $size"; done
        done ;;
    esac
    case " $PHASES " in *" drain "*)
        [ "$DRAIN" -gt 0 ] && for srv in $SERVERS; do drain_one "$srv" "$rep" || say "  drain run failed: $srv"; done ;;
    esac
    case " $PHASES " in *" pop3 "*)
        [ "$POP" -gt 0 ] && for srv in $SERVERS; do
            [ "$srv" = postfix ] && continue
            pop_one "$srv" "$rep" || say "  pop3 run failed: $srv"
        done ;;
    esac
    case " $PHASES " in *" local "*)
        [ "$LOCAL" -gt 0 ] && for srv in $SERVERS; do local_one "$srv" "$rep" || say "  local run failed: $srv"; done ;;
    esac
done
case " $PHASES " in *" local "*)
    # mean bytes per message of each server over the repetitions
    awk -F'\t' '$1 == "local" { b[$2] += $7; n[$2]++ }
        END { if (n["mailnode"] && n["postfix"] && b["mailnode"] > 0)
                  printf "local: bytes written per accepted message: mailnode %d, Postfix %d: Postfix / mailnode = %.1f\n",
                      b["mailnode"] / n["mailnode"], b["postfix"] / n["postfix"],
                      (b["postfix"] / n["postfix"]) / (b["mailnode"] / n["mailnode"]) }' "$TSV" |
        while IFS= read -r line; do say "$line"; done ;;
esac
say ""
say "per-run figures in $TSV"
