#!/bin/bash
# dialup.sh - batch delivery over a slow, long-latency link: mailnode versus
# an untuned Postfix.
#
# Two network namespaces, the field node F and the upstream U, are joined by
# a point-to-point link emulated in user space (bench/lib/linkemu.c: a TUN
# device in each namespace, a serializer at the link rate and a one-way delay
# of RTT/2 per direction). MSGS messages of SIZE bytes are queued in the
# sender in F while F's interface is down; at t0 the interface comes up and
# the sender is told to flush; the time until the sink in U has accepted all
# of them is compared with the physical floor and with one bulk TCP
# transfer of the same bytes. See bench/README.md.
#
# Environment knobs (defaults in brackets):
#   PROFILES="modem satellite"   modem = 64 kbit/s, 300 ms RTT;
#                                satellite = 1 Mbit/s, 600 ms RTT;
#                                or RATE:RTT_MS entries, e.g. 256k:100
#   SERVERS="mailnode postfix"   which senders (mailnode is skipped if
#                                ./mailnode does not exist); besides
#                                mailnode and postfix (both to the sink):
#                                mn2mn = mailnode to a mailnode receiver
#                                in U (COMPRESS DEFLATE, XRESUME),
#                                mn2mn-plain = the same with compress = no,
#                                mn2mn-noresume = compress, resume = no
#   MSGS=100  SIZE=2048          queued messages, bytes each (CRLF form)
#   BODY=synthetic               synthetic = repeated alphabet lines (as
#                                before); text = varied words and numbers,
#                                as ordinary mail compresses (about 3:1)
#   REPS=1                       runs per profile and server
#   WARM=0                       1: toward a mailnode receiver (mn2mn*), the
#                                sender delivers one message first with the
#                                link up, as a node in service has: it knows
#                                what the receiver offers (EHLO, COMPRESS and
#                                mail go in one round trip)
#   QUEUE=auto                   link queue in bytes (auto: max(64 KB, BDP))
#   MTU=1500                     MTU of the link
#   MAILNODE=./mailnode          binary under test
#   BENCH_DIR=/var/tmp           work directories
#   WAIT_TIMEOUT=600             limit for one delivery run (s)
#   STALL=120                    give up a run when the sink's count has not
#                                moved for this long (s)
#   LINGER=5                     seconds to let connections close after the
#                                last message before the capture ends
#   BULK=1                       also time one bulk TCP transfer per run
#   FLAP=""                      UP:DOWN seconds: after t0 the link goes down
#                                for DOWN s after every UP s (F's interface),
#                                e.g. FLAP=180:60 with MSGS=1 SIZE=5000000;
#                                both nodes then use smtp.timeout.* =
#                                FLAP_TIMEOUT (30s), so an outage ends the
#                                session and the link-up event starts the next
#   OUT=bench/results            report and TSV

set -u
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
. "$BENCH/lib/postfix-instance.sh"

PROFILES=${PROFILES:-"modem satellite"}
SERVERS=${SERVERS:-"mailnode postfix"}
MSGS=${MSGS:-100}
SIZE=${SIZE:-2048}
REPS=${REPS:-1}
WARM=${WARM:-0}
QUEUE=${QUEUE:-auto}
MTU=${MTU:-1500}
MAILNODE=${MAILNODE:-./mailnode}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-600}
STALL=${STALL:-120}
LINGER=${LINGER:-5}
BULK=${BULK:-1}
OUT=${OUT:-$BENCH/results}
BODY=${BODY:-synthetic}
FLAP=${FLAP:-}
FLAP_TIMEOUT=${FLAP_TIMEOUT:-30s}
FLAP_PID=""

# Addresses from 198.18.0.0/15, the block reserved for benchmarking
# (RFC 2544); they exist only inside the two namespaces made here.
ADDR_F=198.18.0.1
ADDR_U=198.18.0.2
SINK_PORT=2525
BULK_PORT=2600
MN_PORT=2526          # mailnode's SMTP listener, loopback of F
PF_PORT=2527          # Postfix's smtpd, loopback of F
NS_F=mnbench-f$$
NS_U=mnbench-u$$
IF_F=tunF
IF_U=tunU
PYTHON=$(command -v /usr/bin/python3 || command -v python3)

case $MAILNODE in /*) ;; *) MAILNODE=$ROOT/${MAILNODE#./} ;; esac

die() { echo "dialup.sh: $*" >&2; exit 1; }
log() { echo "$*" | tee -a "$REPORT" >&2; }
say() { echo "$*" | tee -a "$REPORT"; }
inF() { ip netns exec "$NS_F" "$@"; }
inU() { ip netns exec "$NS_U" "$@"; }

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, TUN devices, Postfix)"
[ -c /dev/net/tun ] || die "/dev/net/tun is missing (kernel without TUN)"
command -v ip >/dev/null || die "iproute2 (ip) is required"
command -v gcc >/dev/null || die "gcc is required (builds bench/lib/linkemu.c)"
[ -n "$PYTHON" ] || die "python3 is required"
case " $SERVERS " in *" postfix "*)
    [ -x /usr/sbin/postfix ] && [ -x /usr/sbin/sendmail ] ||
        die "Debian package postfix is required (or SERVERS=mailnode)" ;;
esac

# ---------------------------------------------------------------- cleanup
WORK=""
LE_PID=""
SINK_PID=""
MN_PID=""
RCV_PID=""
BULK_PID=""
PF_DIR=""
cleanup() {
    trap - EXIT INT TERM HUP
    local p
    for p in $FLAP_PID $BULK_PID $MN_PID $RCV_PID $SINK_PID; do
        kill -TERM "$p" 2>/dev/null
    done
    [ -n "$PF_DIR" ] && pfi_destroy "$PF_DIR"
    [ -n "$LE_PID" ] && kill -TERM "$LE_PID" 2>/dev/null
    for p in $BULK_PID $MN_PID $RCV_PID $SINK_PID $LE_PID; do
        wait "$p" 2>/dev/null
    done
    ip netns del "$NS_F" 2>/dev/null
    ip netns del "$NS_U" 2>/dev/null
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "dialup.sh: interrupted" >&2; exit 130' INT TERM HUP

mkdir -p "$OUT" "$BENCH_DIR" || die "cannot create $OUT or $BENCH_DIR"
STAMP=$(date -u +%Y%m%d-%H%M%S)
REPORT=$OUT/dialup-$STAMP.txt
TSV=$OUT/dialup-$STAMP.tsv
: > "$REPORT"
WORK=$(mktemp -d "$BENCH_DIR/mailnode-dialup.XXXXXX") || die "mktemp failed"
chmod 755 "$WORK"

mkdir -p "$WORK/bin"
gcc -O2 -Wall -o "$WORK/bin/linkemu" "$BENCH/lib/linkemu.c" || die "cannot build linkemu"
LINKEMU=$WORK/bin/linkemu

# ---------------------------------------------------------------- messages
# MSGS files of exactly SIZE bytes once LF is turned into CRLF on the wire.
make_messages() {
    "$PYTHON" - "$WORK/msgs" "$MSGS" "$SIZE" "$BODY" <<'EOF'
import os, random, sys
d, n, size, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.makedirs(d, exist_ok=True)
WORDS = ("the field station reports that the generator ran for six hours and the "
         "satellite modem kept its lock until the evening when the wind rose again "
         "please send the spare parts list with the next supply flight and confirm "
         "receipt of the water samples numbers twelve to forty").split()
rnd = random.Random(11)
def line_of(k):
    if kind != "text":
        return "%04d %s" % (k, "abcdefghijklmnopqrstuvwxyz0123456789" * 2)
    return " ".join(rnd.choice(WORDS) if rnd.random() < 0.8 else str(rnd.randint(0, 99999))
                    for _ in range(rnd.randint(6, 12)))
for i in range(n):
    head = ("From: Field Sender <a@field.test>\nTo: <rcpt@remote.test>\n"
            "Subject: dialup bench message %d\nMessage-ID: <dialup.%d@field.test>\n"
            "Date: Mon, 1 Jun 2026 12:00:00 +0000\n\n" % (i, i))
    lines = head.count("\n")
    body = []
    used = len(head) + lines
    k = 0
    while True:
        line = line_of(k)
        if used + len(line) + 2 > size:
            break
        body.append(line); used += len(line) + 2; k += 1
    left = size - used
    if left >= 3:
        body.append("x" * (left - 2)); used += left
    text = head + "\n".join(body) + "\n"
    with open(os.path.join(d, "%03d.eml" % i), "w") as f:
        f.write(text)
EOF
}

# ---------------------------------------------------------------- network
# net_up RATE RTT_MS QUEUE RUNDIR : namespaces, linkemu (capture on F's side),
# addresses; U's interface up, F's interface down (the link is down).
net_up() {
    local rate=$1 rtt=$2 q=$3 dir=$4 i
    ip netns add "$NS_F" && ip netns add "$NS_U" || return 1
    ip -n "$NS_F" link set lo up && ip -n "$NS_U" link set lo up || return 1
    rm -f "$dir/le.ready"
    "$LINKEMU" --nsA "$NS_F" --nsB "$NS_U" --ifA "$IF_F" --ifB "$IF_U" --rate "$rate" --rtt "$rtt" \
        --queue "$q" --pcap "$dir/link.pcap" --stats "$dir/link.stats" --ready "$dir/le.ready" \
        2>>"$dir/linkemu.log" &
    LE_PID=$!
    for i in $(seq 50); do [ -e "$dir/le.ready" ] && break; sleep 0.1; done
    [ -e "$dir/le.ready" ] || { log "linkemu did not start (see $dir/linkemu.log)"; return 1; }
    ip -n "$NS_F" link set "$IF_F" mtu "$MTU" &&
    ip -n "$NS_U" link set "$IF_U" mtu "$MTU" &&
    ip -n "$NS_F" addr add "$ADDR_F" peer "$ADDR_U" dev "$IF_F" &&
    ip -n "$NS_U" addr add "$ADDR_U" peer "$ADDR_F" dev "$IF_U" &&
    ip -n "$NS_U" link set "$IF_U" up || return 1
}

net_down() {
    if [ -n "$LE_PID" ]; then
        kill -TERM "$LE_PID" 2>/dev/null
        wait "$LE_PID" 2>/dev/null
        LE_PID=""
    fi
    ip netns del "$NS_F" 2>/dev/null
    ip netns del "$NS_U" 2>/dev/null
    return 0
}

link_stats() {   # RUNDIR : ask linkemu for its counters (written to link.stats)
    local i m0
    m0=$(stat -c %Y.%N "$1/link.stats" 2>/dev/null)
    kill -USR1 "$LE_PID" 2>/dev/null
    for i in $(seq 20); do
        [ "$(stat -c %Y.%N "$1/link.stats" 2>/dev/null)" != "$m0" ] && break
        sleep 0.05
    done
}
stat_of() { awk -v k="$2" '$1 == k { print $2 }' "$1/link.stats" 2>/dev/null; }

sink_start() {   # RUNDIR
    local i
    # not through inU: $! must be the sink itself (ip netns exec execs it)
    ip netns exec "$NS_U" "$PYTHON" "$BENCH/lib/sink.py" "$ADDR_U" "$SINK_PORT" "$1/sink.status" \
        >"$1/sink.log" 2>&1 </dev/null &
    SINK_PID=$!
    for i in $(seq 50); do grep -q ready "$1/sink.log" 2>/dev/null && return 0; sleep 0.1; done
    log "sink did not start: $(tail -2 "$1/sink.log")"
    return 1
}
sink_stop() {
    [ -n "$SINK_PID" ] || return 0
    kill -TERM "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null; SINK_PID=""
}
sink_field() { awk -v n="$2" '{ print $n }' "$1/sink.status" 2>/dev/null; }

# ------------------------------------------------- mailnode as the receiver
flap_conf() {   # the timeouts of both nodes in a flapping run
    [ -n "$FLAP" ] && printf 'smtp.timeout.command = %s\nsmtp.timeout.data = %s\n' "$FLAP_TIMEOUT" "$FLAP_TIMEOUT"
}
# flap_start : F's interface down for DOWN s after every UP s, until killed
flap_start() {
    local up=${FLAP%%:*} down=${FLAP#*:}
    ( trap 'exit 0' TERM
      while :; do
          sleep "$up"; ip -n "$NS_F" link set "$IF_F" down
          sleep "$down"; ip -n "$NS_F" link set "$IF_F" up
      done ) &
    FLAP_PID=$!
}
flap_stop() {
    [ -n "$FLAP_PID" ] || return 0
    kill -TERM "$FLAP_PID" 2>/dev/null; wait "$FLAP_PID" 2>/dev/null; FLAP_PID=""
    ip -n "$NS_F" link set "$IF_F" up 2>/dev/null
}
# rcv_start RUNDIR COMPRESS [RESUME] : a mailnode in U in the sink's place, taking
# mail for remote.test into the mailbox of user rcpt.
rcv_start() {
    local d=$1/rcv i
    mkdir -p "$d" && chmod 755 "$d"
    cat > "$d/mailnode.conf" <<EOF
database = $d/mailnode.db
hostname = upstream.bench.test
listen.smtp = $ADDR_U:$SINK_PORT
listen.submission =
listen.pop3 =
listen.odmr =
listen.imap =
local_domains = remote.test
relay_networks = $ADDR_F/32
compress = $2
resume = ${3:-yes}
$(flap_conf)
EOF
    for u in rcpt warm; do
        echo 'bench-pass-1' | timeout 30 "$MAILNODE" -c "$d/mailnode.conf" user add $u >>"$d/mailnode.log" 2>&1 ||
            { log "receiver: user add failed (see $d/mailnode.log)"; return 1; }
    done
    (exec ip netns exec "$NS_U" "$MAILNODE" -c "$d/mailnode.conf" run) >>"$d/mailnode.log" 2>&1 </dev/null &
    RCV_PID=$!
    for i in $(seq 100); do
        inU ss -Htln "sport = :$SINK_PORT" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    log "receiver mailnode did not start: $(tail -3 "$d/mailnode.log")"
    return 1
}
rcv_count() { timeout 10 "$MAILNODE" -c "$1/rcv/mailnode.conf" mailbox list rcpt 2>/dev/null | grep -c .; }
rcv_stop() {
    local i
    [ -n "$RCV_PID" ] || return 0
    kill -TERM "$RCV_PID" 2>/dev/null
    for i in $(seq 50); do pfi_gone "$RCV_PID" && break; sleep 0.1; done
    pfi_gone "$RCV_PID" || kill -KILL "$RCV_PID" 2>/dev/null
    wait "$RCV_PID" 2>/dev/null
    RCV_PID=""
}
# deflate figures of the sender's compressed sessions: "plain->deflated,N ms"
deflate_of() {
    awk -v skip="${WARM_LINES:-0}" '/compressed session: sent/ && ++k > skip { for (i = 1; i <= NF; i++) { if ($i == "sent") p += $(i + 1);
         if ($i == "as" && !a) { z += $(i + 1); a = 1 } if ($i == "deflate") ms += $(i + 1) } a = 0 }
         END { if (p) printf "%d->%d,%dms", p, z, ms; else printf "-" }' "$1/mailnode.log" 2>/dev/null
}

# ---------------------------------------------------------------- senders
mn_conf() {   # DIR
    cat > "$1/mailnode.conf" <<EOF
database = $1/mailnode.db
hostname = field.bench.test
listen.smtp = 127.0.0.1:$MN_PORT
listen.submission =
listen.pop3 =
listen.odmr =
local_domains = field.test
relayhost = $ADDR_U:$SINK_PORT
# only the link-up event (or "mailnode flush") may start delivery
retry.initial = 1h
$(flap_conf)
EOF
}

# mn_warm DIR : with a mailnode receiver, the sender delivers one message
# to it (user warm) while the link is up, as a node in service has talked
# to its upstream before: it knows what the receiver offers (smtpc.c).
mn_warm() {
    local dir=$1 f i
    (exec ip netns exec "$NS_F" "$MAILNODE" -c "$dir/mailnode.conf" run) >>"$dir/mailnode.log" 2>&1 </dev/null &
    MN_PID=$!
    sleep 0.5
    ip -n "$NS_F" link set "$IF_F" up
    f=$(ls "$WORK"/msgs/*.eml | head -1)
    timeout 30 "$MAILNODE" -c "$dir/mailnode.conf" sendmail -f a@field.test warm@remote.test <"$f" \
        >>"$dir/mailnode.log" 2>&1
    for i in $(seq 600); do   # until the sender has its 250 and has closed the session
        grep -q "compressed session" "$dir/mailnode.log" &&
            [ "$(timeout 10 "$MAILNODE" -c "$dir/mailnode.conf" queue count 2>/dev/null)" = 0 ] && break
        [ $((i % 20)) = 0 ] && mn_kick "$dir"
        sleep 0.1
    done
    ip -n "$NS_F" link set "$IF_F" down
    [ "$i" -lt 600 ] || { log "warm-up message did not arrive"; return 1; }
    WARM_LINES=$(grep -c "compressed session: sent" "$dir/mailnode.log")   # deflate_of leaves them out
}

# mn_prepare DIR : queue the messages, start the daemon in F (link down)
mn_prepare() {
    local dir=$1 f n i
    mn_conf "$dir"
    WARM_LINES=0
    if [ "$WARM" = 1 ] && [ -n "$RCV_PID" ]; then
        mn_warm "$dir" || return 1
    fi
    for f in "$WORK"/msgs/*.eml; do
        timeout 30 "$MAILNODE" -c "$dir/mailnode.conf" sendmail -f a@field.test rcpt@remote.test \
            <"$f" >>"$dir/mailnode.log" 2>&1 || { log "mailnode sendmail failed (see $dir/mailnode.log)"; return 1; }
    done
    [ -n "$MN_PID" ] || {
        (exec ip netns exec "$NS_F" "$MAILNODE" -c "$dir/mailnode.conf" run) >>"$dir/mailnode.log" 2>&1 </dev/null &
        MN_PID=$!
    }
    # the daemon tries at start (or at once), fails (network unreachable) and defers
    sleep 2
    pfi_gone "$MN_PID" && { log "mailnode run exited: $(tail -3 "$dir/mailnode.log")"; return 1; }
    n=$(timeout 10 "$MAILNODE" -c "$dir/mailnode.conf" queue count 2>>"$dir/mailnode.log")
    [ "$n" = "$MSGS" ] || { log "mailnode queue count is '$n', expected $MSGS"; return 1; }
}
mn_kick() {   # DIR : at t0, besides the netlink event
    timeout 30 ip netns exec "$NS_F" "$MAILNODE" -c "$1/mailnode.conf" flush >>"$1/mailnode.log" 2>&1
}
mn_stop() {
    local i
    [ -n "$MN_PID" ] || return 0
    kill -TERM "$MN_PID" 2>/dev/null
    for i in $(seq 50); do pfi_gone "$MN_PID" && break; sleep 0.1; done
    pfi_gone "$MN_PID" || kill -KILL "$MN_PID" 2>/dev/null
    wait "$MN_PID" 2>/dev/null
    MN_PID=""
}
mn_left() { timeout 10 "$MAILNODE" -c "$1/mailnode.conf" queue count 2>/dev/null; }

# pf_prepare DIR : private Postfix in F relaying to the sink; queue the
# messages with Postfix's sendmail while the link is down, so that every
# one of them has been tried once and sits in the deferred queue.
pf_prepare() {
    local dir=$1/pf f i n
    PF_DIR=$dir
    pfi_create "$dir" "$PF_PORT" "$SINK_PORT" || return 1
    postconf -c "$dir/etc" -e "relayhost = [$ADDR_U]:$SINK_PORT" "myhostname = field.bench.test" \
        "mydomain = field.test" || return 1
    inF bash -c ". '$BENCH/lib/postfix-instance.sh' && pfi_start '$dir'" || return 1
    for f in "$WORK"/msgs/*.eml; do
        timeout 30 /usr/sbin/sendmail -C "$dir/etc" -f a@field.test rcpt@remote.test <"$f" ||
            { log "postfix sendmail failed (see $dir/maillog)"; return 1; }
    done
    for i in $(seq 300); do
        n=$(find "$dir/queue/deferred" -type f 2>/dev/null | wc -l)
        [ "$n" -ge "$MSGS" ] && [ "$(pfi_queue_count "$dir")" -eq "$n" ] && return 0
        sleep 0.2
    done
    log "postfix: only $n of $MSGS messages deferred after 60 s (see $dir/maillog)"
    return 1
}
pf_kick() { timeout 30 /usr/sbin/postqueue -c "$PF_DIR/etc" -f >/dev/null 2>&1; }
pf_left() { pfi_queue_count "$PF_DIR"; }
pf_stop() { [ -n "$PF_DIR" ] && pfi_destroy "$PF_DIR"; PF_DIR=""; }

# ---------------------------------------------------------------- one run
# connections from F to the sink that are not closed yet
open_conns() {
    inF ss -Htn state established state fin-wait-1 state fin-wait-2 state closing state last-ack \
        dst "$ADDR_U" dport = :$SINK_PORT 2>/dev/null | wc -l
}

# run_one PROFILE RATE RTT_MS SERVER REP
run_one() {
    local prof=$1 rate=$2 rtt=$3 srv=$4 rep=$5
    local dir=$WORK/run-$prof-$srv-$rep q t0 last n secs content floor ratio left
    local bulk=- pingrtt=- ws i end prev since
    mkdir -p "$dir" && chmod 755 "$dir"
    q=$QUEUE
    [ "$q" = auto ] && q=$(awk -v r="$rate" -v t="$rtt" 'BEGIN { b = r / 8 * t / 1000; printf "%d", (b > 65536 ? b : 65536) }')
    net_up "$rate" "$rtt" "$q" "$dir" || { log "network setup failed"; net_down; return 1; }
    case $srv in
    mn2mn) rcv_start "$dir" yes || { rcv_stop; net_down; return 1; } ;;
    mn2mn-plain) rcv_start "$dir" no || { rcv_stop; net_down; return 1; } ;;
    mn2mn-noresume) rcv_start "$dir" yes no || { rcv_stop; net_down; return 1; } ;;
    *) sink_start "$dir" || { net_down; return 1; } ;;
    esac
    if [ "$srv" != postfix ]; then
        mn_prepare "$dir" || { mn_stop; rcv_stop; sink_stop; net_down; return 1; }
    else
        pf_prepare "$dir" || { pf_stop; sink_stop; net_down; return 1; }
    fi
    [ -n "$SINK_PID" ] && kill -USR1 "$SINK_PID"          # zero the sink's counters
    kill -USR2 "$LE_PID"            # zero the link's counters
    sleep 0.3

    # t0: the link comes up; the sender is also told to flush at once
    t0=$(date +%s.%N)
    ip -n "$NS_F" link set "$IF_F" up
    if [ "$srv" != postfix ]; then mn_kick "$dir" & else pf_kick & fi
    local kick=$!
    [ -n "$FLAP" ] && flap_start

    end=$((SECONDS + WAIT_TIMEOUT))
    n=0; prev=-1; since=$SECONDS; last=""
    while [ $SECONDS -lt $end ] && [ $((SECONDS - since)) -lt "$STALL" ]; do
        if [ -n "$RCV_PID" ]; then
            # a mailnode receiver: its mailbox, polled (0.1 s resolution)
            n=$(rcv_count "$dir")
            [ "${n:-0}" -ge "$MSGS" ] && { last=$(date +%s.%N); break; }
            pfi_gone "$RCV_PID" && { log "  the receiver died: $(tail -2 "$dir/rcv/mailnode.log")"; break; }
        else
            n=$(sink_field "$dir" 1)
            [ "${n:-0}" -ge "$MSGS" ] && break
            pfi_gone "$SINK_PID" && { log "  the sink died: $(tail -2 "$dir/sink.log")"; break; }
        fi
        [ "${n:-0}" != "$prev" ] && { prev=${n:-0}; since=$SECONDS; }
        sleep 0.1
    done
    wait $kick 2>/dev/null
    flap_stop
    if [ -n "$RCV_PID" ]; then
        content=$((MSGS * SIZE))    # the messages as queued (CRLF form)
        # the receiver's own time of the last delivery (ms), not the poll's
        local lt
        lt=$(grep "delivered to mailbox" "$dir/rcv/mailnode.log" 2>/dev/null | grep -v "warm@" | tail -1 | cut -d' ' -f1)
        lt=$(date -d "${lt/T/ }" +%s.%N 2>/dev/null) && [ -n "$last" ] &&
            awk -v a="$lt" -v b="$last" -v t="$t0" 'BEGIN { exit !(a > t && a <= b) }' && last=$lt
    else
        last=$(sink_field "$dir" 4)
        content=$(sink_field "$dir" 2)
    fi
    if [ "${n:-0}" -lt "$MSGS" ]; then
        log "  $prof $srv: the sink has ${n:-0} of $MSGS messages (no progress for ${STALL}s, or ${WAIT_TIMEOUT}s passed)"
        secs=-
    else
        secs=$(awk -v a="$t0" -v b="$last" 'BEGIN { printf "%.2f", b - a }')
    fi
    # let the sender finish its sessions (QUIT) so the capture is complete
    for i in $(seq $((LINGER * 10))); do
        [ "$(open_conns)" -eq 0 ] && break
        sleep 0.1
    done
    if [ "${n:-0}" -lt "$MSGS" ]; then   # keep the sender's log of a failed run
        cat "$dir/mailnode.log" "$dir/pf/maillog" > "$OUT/dialup-$STAMP-$prof-$srv-$rep.log" 2>/dev/null
        [ "$srv" != postfix ] && timeout 10 "$MAILNODE" -c "$dir/mailnode.conf" status \
            >> "$OUT/dialup-$STAMP-$prof-$srv-$rep.log" 2>&1
    fi
    link_stats "$dir"
    cp "$dir/link.stats" "$dir/link.stats.smtp" 2>/dev/null
    local defl=- resumed=-
    if [ "$srv" != postfix ]; then
        left=$(mn_left "$dir"); defl=$(deflate_of "$dir")
        resumed=$(grep -c 'resuming at octet' "$dir/mailnode.log")
        mn_stop
    else left=$(pf_left); pf_stop; fi
    rcv_stop

    # emulator check: ping RTT on the idle link (small packets)
    pingrtt=$(inF ping -c 4 -i 0.3 -W 5 "$ADDR_U" 2>/dev/null | awk -F/ '/^rtt/ { printf "%.1f", $5 }')
    # reference: one bulk TCP connection carrying the same payload
    if [ "$BULK" = 1 ] && [ "${content:-0}" -gt 0 ]; then
        ip netns exec "$NS_U" "$PYTHON" "$BENCH/lib/bulk.py" serve "$ADDR_U" "$BULK_PORT" 1 >"$dir/bulk-serve.log" 2>&1 &
        BULK_PID=$!
        for i in $(seq 50); do grep -q ready "$dir/bulk-serve.log" 2>/dev/null && break; sleep 0.1; done
        bulk=$(timeout "$WAIT_TIMEOUT" ip netns exec "$NS_F" "$PYTHON" "$BENCH/lib/bulk.py" send \
            "$ADDR_U" "$BULK_PORT" "$content" 2>>"$dir/bulk-serve.log" | awk '{ print $1 }')
        [ -n "$bulk" ] || bulk=-
        kill -TERM "$BULK_PID" 2>/dev/null; wait "$BULK_PID" 2>/dev/null; BULK_PID=""
    fi
    sink_stop
    net_down

    ws=$("$PYTHON" "$BENCH/lib/wirestats.py" "$dir/link.pcap" "$SINK_PORT" "$t0")
    wsv() { echo "$ws" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
    floor=$(awk -v c="${content:-0}" -v r="$rate" -v t="$rtt" 'BEGIN { printf "%.2f", c * 8 / r + 3.5 * t / 1000 }')
    ratio=$(awk -v s="$secs" -v f="$floor" 'BEGIN { if (s == "-" || f == 0) print "-"; else printf "%.2f", s / f }')
    local qd
    qd=$(awk '$1 == "ab_qdrops" || $1 == "ba_qdrops" { s += $2 } END { print s + 0 }' "$dir/link.stats.smtp" 2>/dev/null)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$prof" "$rate" "$rtt" "$srv" "$rep" "$MSGS" "${n:-0}" "$secs" "${content:-0}" "$floor" "$ratio" "$bulk" \
        "$(wsv conns)" "$(wsv wire)" "$(wsv wire_c2s)" "$(wsv pay_c2s)" "$(wsv turns)" "$(wsv retrans)" \
        "${qd:-0}" "${pingrtt:--}" >> "$TSV"
    log "$(printf '  %-9s %-11s rep=%s  %7s s  floor %6s s  x%-5s bulk %6s s  conns %-3s wire %7s B  turns %-4s drops %-3s left %s  ping %s ms  deflate %s' \
        "$prof" "$srv" "$rep" "$secs" "$floor" "$ratio" "$bulk" "$(wsv conns)" "$(wsv wire)" "$(wsv turns)" \
        "${qd:-0}" "${left:-?}" "${pingrtt:--}" "$defl")$([ -n "$FLAP" ] && echo "  resumed $resumed x")"
    [ "${KEEP:-0}" = 1 ] && { cp "$dir/link.pcap" "$OUT/dialup-$STAMP-$prof-$srv-$rep.pcap"; cp "$dir/mailnode.log" "$OUT/dialup-$STAMP-$prof-$srv-$rep.log"; }
    rm -rf "$dir"
    return 0
}

profile_params() {   # NAME -> "RATE RTT_MS"
    case $1 in
    modem) echo "64000 300" ;;
    satellite) echo "1000000 600" ;;
    *:*) awk -v p="$1" 'BEGIN {
            split(p, a, ":"); r = a[1]; m = 1
            if (r ~ /[kK]$/) { m = 1e3; sub(/[kK]$/, "", r) } else if (r ~ /[mM]$/) { m = 1e6; sub(/[mM]$/, "", r) }
            printf "%d %s\n", r * m, a[2] }' ;;
    *) return 1 ;;
    esac
}

# ---------------------------------------------------------------- main
if [ ! -x "$MAILNODE" ]; then
    log "mailnode binary $MAILNODE not found: running the Postfix half only (build with 'make')"
    SERVERS=$(echo " $SERVERS " | sed 's/ mn2mn-plain / /; s/ mn2mn / /; s/ mailnode / /')
fi

say "mailnode dial-up benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "host: $(nproc) cpus, kernel $(uname -r), postfix $(dpkg-query -W -f '${Version}' postfix 2>/dev/null)"
say "link: user-space emulator (bench/lib/linkemu.c), MTU $MTU, queue ${QUEUE} bytes; $MSGS messages of $SIZE bytes"
say "sink: bench/lib/sink.py (PIPELINING, 8BITMIME, CHUNKING) in the upstream namespace; mn2mn*: a mailnode there"
say "bodies: $BODY${FLAP:+; link flapping UP:DOWN = $FLAP s, smtp timeouts $FLAP_TIMEOUT}${WARM:+; warm = $WARM (1: mailnode senders delivered one message to a mailnode receiver before)}"
say ""
printf 'profile\trate\trtt_ms\tserver\trep\tmsgs\treceived\tsecs\tpayload\tfloor\tratio\tbulk\tconns\twire\twire_c2s\tpay_c2s\tturns\tretrans\tqdrops\tping_ms\n' > "$TSV"

make_messages || die "cannot generate messages"
log "runs:"
for prof in $PROFILES; do
    params=$(profile_params "$prof") || { log "unknown profile $prof"; continue; }
    set -- $params
    for rep in $(seq "$REPS"); do
        for srv in $SERVERS; do
            run_one "$prof" "$1" "$2" "$srv" "$rep" || log "  run failed: $prof $srv rep=$rep"
        done
    done
done

say ""
say "=============================== summary (medians of $REPS runs) ==============================="
say "time = link up -> last message accepted by the sink; floor = payload*8/rate + 3.5 RTT, payload ="
say "message bytes the sink received from that sender; bulk = one TCP connection carrying the same"
say "payload; wire = IP bytes in both directions, +c2s = client->server IP bytes over the payload;"
say "turns/msg = client turns (bench/lib/wirestats.py) per message."
say ""
awk -F'\t' -v msgs="$MSGS" '
function med(k,   n, i, j, t, a) {
    n = cnt[k]; if (n == 0) return ""
    for (i = 1; i <= n; i++) a[i] = val[k, i]
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function add(k, v) { if (v == "-" || v == "") return; cnt[k]++; val[k, cnt[k]] = v + 0 }
function f(v, fmt) { return v == "" ? "-" : sprintf(fmt, v) }
NR > 1 {
    key = $1 SUBSEP $4
    if (!(key in seen)) { seen[key] = 1; order[++nk] = key; desc[key] = sprintf("%s (%g kbit/s, %d ms)", $1, $2 / 1000, $3) }
    add(key SUBSEP "secs", $8); add(key SUBSEP "pay", $9); add(key SUBSEP "floor", $10)
    if ($8 != "-") add(key SUBSEP "ratio", $8 / $10)
    add(key SUBSEP "bulk", $12); add(key SUBSEP "conns", $13); add(key SUBSEP "wire", $14)
    if ($16 > 0) add(key SUBSEP "c2s", ($15 / $9 - 1) * 100)
    add(key SUBSEP "turns", $17 / $6); add(key SUBSEP "ping", $20)
}
END {
    if (nk == 0) { print "  (no runs)"; exit }
    printf "%-30s %-11s | %7s %7s %6s | %7s %6s | %5s %8s %6s %9s | %7s\n", "profile", "server", "time s", "floor s", "ratio", \
        "bulk s", "ratio", "conns", "wire B", "+c2s", "turns/msg", "ping ms"
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, p, SUBSEP)
        b = med(k SUBSEP "bulk"); fl = med(k SUBSEP "floor")
        printf "%-30s %-11s | %7s %7s %6s | %7s %6s | %5s %8s %5s%% %9s | %7s\n", desc[k], p[2], \
            f(med(k SUBSEP "secs"), "%.2f"), f(fl, "%.2f"), f(med(k SUBSEP "ratio"), "%.2f"), \
            f(b, "%.2f"), (b == "" || fl == "") ? "-" : sprintf("%.2f", b / fl), \
            f(med(k SUBSEP "conns"), "%d"), f(med(k SUBSEP "wire"), "%d"), f(med(k SUBSEP "c2s"), "%.0f"), \
            f(med(k SUBSEP "turns"), "%.2f"), f(med(k SUBSEP "ping"), "%.1f")
    }
}' "$TSV" | tee -a "$REPORT"
say ""
say "per-run data: $TSV"
say "report:       $REPORT"
