#!/bin/bash
# ondemand.sh - releasing held mail over a slow, long-latency link:
# mailnode ETRN, mailnode ATRN (ODMR) and Postfix ETRN.
#
# Two network namespaces, the upstream U and the field node F, joined by the
# user-space link emulator (bench/lib/linkemu.c, capture on U's side). The
# upstream holds MSGS messages of SIZE bytes for site.test; the field node
# (mailnode, site.test local) runs `mailnode poll` at t0, and the time until
# the last message is in the field node's mailbox is compared with the
# physical floor (payload * 8 / rate + 3.5 RTT, as in bench/dialup.sh).
#
#   etrn      mailnode upstream; the field node sends ETRN to U's SMTP port,
#             the upstream connects back to F and delivers (--host).
#   atrn      mailnode upstream; the field node authenticates on U's ODMR port,
#             ATRN, the connection turns around and carries the mail.
#   postfix   a private, untuned Postfix instance in U holds the mail
#             (defer_transports on a transport of its own, fast_flush_domains)
#             and flushes it to F on the field node's ETRN.
#
# Environment knobs (defaults in brackets):
#   PROFILE=satellite         satellite = 1 Mbit/s, 600 ms RTT; modem = 64 kbit/s,
#                             300 ms; or RATE:RTT_MS, e.g. 256k:100
#   MODES="etrn atrn postfix" which releases to time; etrn-plain and
#                             atrn-plain: the same with compress = no on
#                             both mailnodes (etrn and atrn use COMPRESS
#                             DEFLATE, on by default between mailnodes)
#   MSGS=500  SIZE=2048       held messages, bytes each (CRLF form, as queued)
#   BODY=synthetic            synthetic = repeated alphabet lines; text = varied
#                             words and numbers (ordinary mail, ~3:1 deflate)
#   REPS=1                    runs per mode
#   QUEUE=auto                link queue in bytes (auto: max(64 KB, BDP))
#   MTU=1500                  MTU of the link
#   MAILNODE=./mailnode       binary under test
#   BENCH_DIR=/var/tmp        work directories
#   WAIT_TIMEOUT=600          limit for one release (s)
#   OUT=bench/results         report and TSV
#   KEEP=0                    1: keep each run's pcap and logs in OUT

set -u
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
. "$BENCH/lib/postfix-instance.sh"

PROFILE=${PROFILE:-satellite}
MODES=${MODES:-"etrn atrn postfix"}
BODY=${BODY:-synthetic}
MSGS=${MSGS:-500}
SIZE=${SIZE:-2048}
REPS=${REPS:-1}
QUEUE=${QUEUE:-auto}
MTU=${MTU:-1500}
MAILNODE=${MAILNODE:-./mailnode}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-600}
OUT=${OUT:-$BENCH/results}
KEEP=${KEEP:-0}

# RFC 2544 benchmarking addresses; they exist only inside the namespaces.
ADDR_U=198.18.0.2
ADDR_F=198.18.0.1
U_SMTP=2525           # mailnode upstream: SMTP (ETRN)
U_ODMR=3366           # mailnode upstream: ODMR (ATRN)
PF_PORT=2527          # Postfix upstream: smtpd (ETRN)
F_SMTP=2526           # field node: SMTP (ETRN connect-back, turnaround)
NS_U=mnod-u$$
NS_F=mnod-f$$
IF_U=tunU
IF_F=tunF
FUSER=fielduser
FPASS=field-bench-pass
PYTHON=$(command -v /usr/bin/python3 || command -v python3)

case $MAILNODE in /*) ;; *) MAILNODE=$ROOT/${MAILNODE#./} ;; esac

die() { echo "ondemand.sh: $*" >&2; exit 1; }
log() { echo "$*" | tee -a "$REPORT" >&2; }
say() { echo "$*" | tee -a "$REPORT"; }
inF() { ip netns exec "$NS_F" "$@"; }
inU() { ip netns exec "$NS_U" "$@"; }

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, TUN devices, Postfix)"
[ -c /dev/net/tun ] || die "/dev/net/tun is missing (kernel without TUN)"
command -v ip >/dev/null || die "iproute2 (ip) is required"
command -v gcc >/dev/null || die "gcc is required (builds bench/lib/linkemu.c)"
[ -n "$PYTHON" ] || die "python3 is required"
[ -x "$MAILNODE" ] || die "$MAILNODE not found (run make)"
case " $MODES " in *" postfix "*)
    [ -x /usr/sbin/postfix ] || die "Debian package postfix is required (or MODES='etrn atrn')" ;;
esac

# ---------------------------------------------------------------- cleanup
WORK=""
LE_PID=""
F_PID=""
U_PID=""
PF_DIR=""
cleanup() {
    trap - EXIT INT TERM HUP
    local p
    for p in $F_PID $U_PID; do kill -TERM "$p" 2>/dev/null; done
    [ -n "$PF_DIR" ] && pfi_destroy "$PF_DIR"
    [ -n "$LE_PID" ] && kill -TERM "$LE_PID" 2>/dev/null
    for p in $F_PID $U_PID $LE_PID; do wait "$p" 2>/dev/null; done
    ip netns del "$NS_F" 2>/dev/null
    ip netns del "$NS_U" 2>/dev/null
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "ondemand.sh: interrupted" >&2; exit 130' INT TERM HUP

mkdir -p "$OUT" "$BENCH_DIR" || die "cannot create $OUT or $BENCH_DIR"
STAMP=$(date -u +%Y%m%d-%H%M%S)
REPORT=$OUT/ondemand-$STAMP.txt
TSV=$OUT/ondemand-$STAMP.tsv
: > "$REPORT"
WORK=$(mktemp -d "$BENCH_DIR/mailnode-ondemand.XXXXXX") || die "mktemp failed"
chmod 755 "$WORK"
mkdir -p "$WORK/bin"
gcc -O2 -Wall -o "$WORK/bin/linkemu" "$BENCH/lib/linkemu.c" || die "cannot build linkemu"
LINKEMU=$WORK/bin/linkemu

# ---------------------------------------------------------------- helpers
# fill PORT : MSGS messages of SIZE bytes for someone@site.test over one SMTP
# session to 127.0.0.1:PORT inside U (loopback: the link is not involved).
FILL_PY='
import random, smtplib, sys
port, n, size, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
W = ("the field station reports that the generator ran for six hours and the satellite modem kept its "
     "lock until the evening when the wind rose again please send the spare parts list with the next "
     "supply flight and confirm receipt of the water samples numbers twelve to forty").split()
rnd = random.Random(11)
def line_of(k):
    if kind != "text":
        return "%04d %s" % (k, "abcdefghijklmnopqrstuvwxyz0123456789" * 2)
    t = ""
    while len(t) < 74:
        t += (rnd.choice(W) if rnd.random() < 0.8 else str(rnd.randint(0, 99999))) + " "
    return t[:74]
c = smtplib.SMTP("127.0.0.1", port, timeout=120)
for i in range(n):
    head = ("From: Sender <sender@remote.test>\r\nTo: <someone@site.test>\r\n"
            "Subject: ondemand %d\r\nMessage-ID: <ondemand.%d@remote.test>\r\n"
            "Date: Mon, 1 Jun 2026 12:00:00 +0000\r\n\r\n" % (i, i))
    body, used, k = [], len(head), 0
    while used + 74 + 2 <= size:
        body.append(line_of(k)); used += 76; k += 1
    if size - used >= 3:
        body.append("x" * (size - used - 2))
    c.sendmail("sender@remote.test", ["someone@site.test"], (head + "\r\n".join(body) + "\r\n").encode())
c.quit()
'

# last_delivery LOG N : epoch time of the Nth "delivered to mailbox" line
# (mailnode logs local time with milliseconds), or nothing
last_delivery() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import sys, time, datetime
path, n = sys.argv[1], int(sys.argv[2])
seen = 0
for line in open(path, errors="replace"):
    if "delivered to mailbox" in line:
        seen += 1
        if seen == n:
            stamp = line.split()[0]
            d = datetime.datetime.strptime(stamp[:23], "%Y-%m-%dT%H:%M:%S.%f")
            print("%.3f" % (time.mktime(d.timetuple()) + d.microsecond / 1e6))
            break
EOF
}
delivered() { local n; n=$(grep -c 'delivered to mailbox' "$1" 2>/dev/null); echo "${n:-0}"; }

wait_port_in() {   # NS PORT : a 220 banner on 127.0.0.1:PORT inside NS
    ip netns exec "$1" bash -c ". '$BENCH/lib/postfix-instance.sh' && pfi_wait_port $2 20"
}

net_up() {   # RATE RTT_MS QUEUE RUNDIR : both interfaces up
    local rate=$1 rtt=$2 q=$3 dir=$4 i
    ip netns add "$NS_U" && ip netns add "$NS_F" || return 1
    ip -n "$NS_U" link set lo up && ip -n "$NS_F" link set lo up || return 1
    rm -f "$dir/le.ready"
    "$LINKEMU" --nsA "$NS_U" --nsB "$NS_F" --ifA "$IF_U" --ifB "$IF_F" --rate "$rate" --rtt "$rtt" \
        --queue "$q" --pcap "$dir/link.pcap" --stats "$dir/link.stats" --ready "$dir/le.ready" \
        2>>"$dir/linkemu.log" &
    LE_PID=$!
    for i in $(seq 50); do [ -e "$dir/le.ready" ] && break; sleep 0.1; done
    [ -e "$dir/le.ready" ] || { log "linkemu did not start: $(tail -3 "$dir/linkemu.log" 2>/dev/null)"; return 1; }
    ip -n "$NS_U" link set "$IF_U" mtu "$MTU" &&
    ip -n "$NS_F" link set "$IF_F" mtu "$MTU" &&
    ip -n "$NS_U" addr add "$ADDR_U" peer "$ADDR_F" dev "$IF_U" &&
    ip -n "$NS_F" addr add "$ADDR_F" peer "$ADDR_U" dev "$IF_F" &&
    ip -n "$NS_U" link set "$IF_U" up &&
    ip -n "$NS_F" link set "$IF_F" up || return 1
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

link_stats() {   # RUNDIR : ask linkemu for its counters (link.stats)
    local i m0
    m0=$(stat -c %Y.%N "$1/link.stats" 2>/dev/null)
    kill -USR1 "$LE_PID" 2>/dev/null
    for i in $(seq 20); do
        [ "$(stat -c %Y.%N "$1/link.stats" 2>/dev/null)" != "$m0" ] && break
        sleep 0.05
    done
}

stop_pid() {   # PID
    local i
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null
    for i in $(seq 50); do pfi_gone "$1" && break; sleep 0.1; done
    pfi_gone "$1" || kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

# ---------------------------------------------------------------- nodes
field_start() {   # DIR MODE
    local dir=$1 mode=${2%-plain} up z=yes
    [ "$2" != "$mode" ] && z=no
    mkdir -p "$dir"
    case $mode in
    etrn) up="$ADDR_U:$U_SMTP m=etrn" ;;
    atrn) up="$ADDR_U:$U_ODMR m=atrn" ;;
    postfix) up="$ADDR_U:$PF_PORT m=etrn" ;;
    esac
    printf '%s\n' "$FPASS" > "$dir/upstream.pw"
    chmod 600 "$dir/upstream.pw"
    cat > "$dir/mailnode.conf" <<EOF
database = $dir/mailnode.db
hostname = field.bench.test
listen.smtp = 127.0.0.1:$F_SMTP,$ADDR_F:$F_SMTP
listen.submission =
listen.pop3 =
listen.odmr =
local_domains = site.test
upstream = ${up% m=*}
upstream.mode = ${up#* m=}
upstream.domains = site.test
upstream.user = $FUSER
upstream.password_file = $dir/upstream.pw
upstream.interval = 1h
compress = $z
EOF
    echo "bench-pass" | timeout 30 "$MAILNODE" -c "$dir/mailnode.conf" user add someone >>"$dir/mailnode.log" 2>&1 ||
        { log "field: user add failed (see $dir/mailnode.log)"; return 1; }
    (exec ip netns exec "$NS_F" "$MAILNODE" -c "$dir/mailnode.conf" run) >>"$dir/mailnode.log" 2>&1 </dev/null &
    F_PID=$!
    wait_port_in "$NS_F" "$F_SMTP" || { log "field node did not start: $(tail -3 "$dir/mailnode.log")"; return 1; }
}

mn_upstream_start() {   # DIR COMPRESS
    local dir=$1
    mkdir -p "$dir"
    cat > "$dir/mailnode.conf" <<EOF
database = $dir/mailnode.db
hostname = upstream.bench.test
listen.smtp = 127.0.0.1:$U_SMTP,$ADDR_U:$U_SMTP
listen.submission =
listen.pop3 =
listen.odmr = $ADDR_U:$U_ODMR
local_domains = upstream.test
relay_networks = 127.0.0.0/8
compress = ${2:-yes}
EOF
    local c="timeout 30 $MAILNODE -c $dir/mailnode.conf"
    { echo "$FPASS" | $c user add "$FUSER" &&
      $c domain add site.test --hold --owner "$FUSER" --host "$ADDR_F:$F_SMTP"; } >>"$dir/mailnode.log" 2>&1 ||
        { log "upstream: setup failed (see $dir/mailnode.log)"; return 1; }
    (exec ip netns exec "$NS_U" "$MAILNODE" -c "$dir/mailnode.conf" run) >>"$dir/mailnode.log" 2>&1 </dev/null &
    U_PID=$!
    wait_port_in "$NS_U" "$U_SMTP" || { log "upstream did not start: $(tail -3 "$dir/mailnode.log")"; return 1; }
}

mn_upstream_fill() {   # DIR
    local dir=$1 i n=0
    inU timeout 300 "$PYTHON" -c "$FILL_PY" "$U_SMTP" "$MSGS" "$SIZE" "$BODY" 2>>"$dir/fill.log" ||
        { log "upstream: filling failed: $(tail -2 "$dir/fill.log")"; return 1; }
    for i in $(seq 100); do
        n=$(timeout 30 "$MAILNODE" -c "$dir/mailnode.conf" queue list 2>/dev/null | grep -c '(held)')
        [ "$n" -ge "$MSGS" ] && return 0
        sleep 0.2
    done
    log "upstream: $n of $MSGS messages held"
    return 1
}

pf_upstream_start() {   # DIR
    local dir=$1 etc
    PF_DIR=$dir
    pfi_create "$dir" "$PF_PORT" 2599 || return 1
    etc=$dir/etc
    # smtpd also on U's link address; a transport of its own for site.test,
    # deferred until the site asks (ETRN -> flush service -> qmgr).
    cat >> "$etc/master.cf" <<EOF
$ADDR_U:$PF_PORT inet n  -       n       -       -       smtpd
fieldsite unix  -       -       n       -       -       smtp
EOF
    echo "site.test fieldsite:[$ADDR_F]:$F_SMTP" > "$etc/transport"
    postconf -c "$etc" -e "relay_domains = site.test" 'fast_flush_domains = $relay_domains' \
        "transport_maps = texthash:$etc/transport" "defer_transports = fieldsite" \
        "smtpd_etrn_restrictions = permit_mynetworks, reject" "mynetworks = 127.0.0.0/8, $ADDR_F/32" \
        "inet_interfaces = all" "relayhost =" "myhostname = upstream.bench.test" || return 1
    inU bash -c ". '$BENCH/lib/postfix-instance.sh' && pfi_start '$dir'" ||
        { log "postfix did not start (see $dir/maillog)"; return 1; }
}

pf_upstream_fill() {   # DIR
    local dir=$1 i n=0
    inU timeout 300 "$PYTHON" -c "$FILL_PY" "$PF_PORT" "$MSGS" "$SIZE" "$BODY" 2>>"$dir/fill.log" ||
        { log "postfix: filling failed: $(tail -2 "$dir/fill.log")"; return 1; }
    for i in $(seq 300); do
        n=$(grep -c 'status=deferred (deferred transport)' "$dir/maillog" 2>/dev/null)
        [ "${n:-0}" -ge "$MSGS" ] && [ "$(find "$dir/queue/deferred" -type f | wc -l)" -ge "$MSGS" ] && return 0
        sleep 0.2
    done
    log "postfix: only ${n:-0} of $MSGS messages deferred after 60 s (see $dir/maillog)"
    return 1
}

# ---------------------------------------------------------------- one run
# run_one MODE RATE RTT_MS REP
run_one() {
    local mode=$1 rate=$2 rtt=$3 rep=$4
    local dir=$WORK/run-$mode-$rep q t0 t1 tlast n secs floor ratio prc psecs got uniq port ws wsv_conns wsv_wire
    mkdir -p "$dir" && chmod 755 "$dir"
    q=$QUEUE
    [ "$q" = auto ] && q=$(awk -v r="$rate" -v t="$rtt" 'BEGIN { b = r / 8 * t / 1000; printf "%d", (b > 65536 ? b : 65536) }')
    net_up "$rate" "$rtt" "$q" "$dir" || { log "network setup failed"; net_down; return 1; }
    local fail=""
    if [ "$mode" = postfix ]; then
        pf_upstream_start "$dir/up" || fail=1
    else
        local z=yes
        [ "${mode%-plain}" != "$mode" ] && z=no
        mn_upstream_start "$dir/up" "$z" || fail=1
    fi
    # The field node starts before any mail is held: its start-up poll finds
    # nothing, and the release below is the measured one. A `mailnode poll`
    # made while that first exchange is still in flight would be answered
    # with its result, so wait for it to finish (a few RTTs).
    [ -z "$fail" ] && { field_start "$dir/field" "$mode" || fail=1; }
    if [ -z "$fail" ]; then
        for i in $(seq 150); do
            grep -q 'upstream exchange' "$dir/field/mailnode.log" 2>/dev/null && break
            sleep 0.2
        done
        sleep 1
    fi
    if [ -z "$fail" ]; then
        if [ "$mode" = postfix ]; then pf_upstream_fill "$dir/up" || fail=1
        else mn_upstream_fill "$dir/up" || fail=1; fi
    fi
    if [ -n "$fail" ]; then
        stop_pid "$F_PID"; F_PID=""; stop_pid "$U_PID"; U_PID=""
        [ -n "$PF_DIR" ] && pfi_destroy "$PF_DIR"; PF_DIR=""
        net_down
        return 1
    fi
    kill -USR2 "$LE_PID"            # zero the link's counters
    sleep 0.3

    # t0: the field node asks
    t0=$(date +%s.%N)
    inF timeout "$WAIT_TIMEOUT" "$MAILNODE" -c "$dir/field/mailnode.conf" poll >"$dir/poll.out" 2>&1
    prc=$?
    t1=$(date +%s.%N)
    psecs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    local end=$((SECONDS + WAIT_TIMEOUT))
    n=0
    while [ $SECONDS -lt $end ]; do
        n=$(delivered "$dir/field/mailnode.log")
        [ "$n" -ge "$MSGS" ] && break
        sleep 0.2
    done
    if [ "$n" -ge "$MSGS" ]; then
        tlast=$(last_delivery "$dir/field/mailnode.log" "$MSGS")
        secs=$(awk -v a="$t0" -v b="$tlast" 'BEGIN { printf "%.2f", b - a }')
    else
        log "  $mode: the field node has $n of $MSGS messages after ${WAIT_TIMEOUT}s; poll: $(tr '\n' ' ' < "$dir/poll.out" | tail -c 300)"
        secs=-
    fi
    # let the sessions finish (QUIT) so that the capture is complete
    for i in $(seq 50); do
        [ "$(inF ss -Htn state established 2>/dev/null | grep -c "$ADDR_U")" -eq 0 ] && break
        sleep 0.1
    done
    link_stats "$dir"
    got=$(timeout 60 "$MAILNODE" -c "$dir/field/mailnode.conf" mailbox list someone 2>/dev/null | wc -l)
    uniq=$(timeout 60 "$MAILNODE" -c "$dir/field/mailnode.conf" mailbox list someone 2>/dev/null |
           awk -F'\t' '{ print $6 }' | sort -u | wc -l)
    local left
    if [ "$mode" = postfix ]; then left=$(pfi_queue_count "$dir/up"); else
        left=$(timeout 30 "$MAILNODE" -c "$dir/up/mailnode.conf" queue count 2>/dev/null); fi
    stop_pid "$F_PID"; F_PID=""
    stop_pid "$U_PID"; U_PID=""
    [ -n "$PF_DIR" ] && pfi_destroy "$PF_DIR"; PF_DIR=""
    local pingrtt
    pingrtt=$(inF ping -c 3 -i 0.3 -W 5 "$ADDR_U" 2>/dev/null | awk -F/ '/^rtt/ { printf "%.1f", $5 }')
    net_down

    # delivery connection: to F's SMTP port (ETRN), or the ODMR connection
    port=$F_SMTP; [ "${mode%-plain}" = atrn ] && port=$U_ODMR
    ws=$("$PYTHON" "$BENCH/lib/wirestats.py" "$dir/link.pcap" "$port" 2>/dev/null)
    wsv() { echo "$ws" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
    local lin lout
    lin=$(awk '$1 == "ab_in_bytes" { print $2 }' "$dir/link.stats" 2>/dev/null)
    lout=$(awk '$1 == "ba_in_bytes" { print $2 }' "$dir/link.stats" 2>/dev/null)
    floor=$(awk -v m="$MSGS" -v s="$SIZE" -v r="$rate" -v t="$rtt" 'BEGIN { printf "%.2f", m * s * 8 / r + 3.5 * t / 1000 }')
    # the same floor for the bytes that really crossed the link towards F
    # (trace headers, SMTP commands, TCP/IP headers, retransmissions)
    local wfloor qd
    wfloor=$(awk -v b="${lin:-0}" -v r="$rate" -v t="$rtt" 'BEGIN { printf "%.2f", b * 8 / r + 3.5 * t / 1000 }')
    qd=$(awk '$1 == "ab_qdrops" || $1 == "ba_qdrops" { s += $2 } END { print s + 0 }' "$dir/link.stats" 2>/dev/null)
    ratio=$(awk -v s="$secs" -v f="$floor" 'BEGIN { if (s == "-" || f == 0) print "-"; else printf "%.2f", s / f }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$mode" "$rate" "$rtt" "$rep" "$MSGS" "$SIZE" "$got" "$uniq" "$secs" "$floor" "$ratio" \
        "$prc" "$psecs" "$(wsv conns)" "${lin:-0}" "${lout:-0}" "${left:-?}" "${pingrtt:--}" \
        "$wfloor" "${qd:-0}" "$(wsv retrans)" >> "$TSV"
    log "$(printf '  %-8s rep=%s  %7s s  floor %6s s (wire %6s s)  x%-5s  poll rc=%s %5ss  got %s (%s distinct)  conns %s  U->F %s B  F->U %s B  drops %s  left %s  ping %s ms' \
        "$mode" "$rep" "$secs" "$floor" "$wfloor" "$ratio" "$prc" "$psecs" "$got" "$uniq" "$(wsv conns)" \
        "${lin:-0}" "${lout:-0}" "${qd:-0}" "${left:-?}" "${pingrtt:--}")"
    log "           poll said: $(tr '\n' ' ' < "$dir/poll.out" | cut -c1-200)"
    if [ "$KEEP" = 1 ]; then
        cp "$dir/link.pcap" "$OUT/ondemand-$STAMP-$mode-$rep.pcap"
        cp "$dir/field/mailnode.log" "$OUT/ondemand-$STAMP-$mode-$rep.field.log"
        cp "$dir/up/mailnode.log" "$OUT/ondemand-$STAMP-$mode-$rep.upstream.log" 2>/dev/null
        cp "$dir/up/maillog" "$OUT/ondemand-$STAMP-$mode-$rep.maillog" 2>/dev/null
    fi
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
params=$(profile_params "$PROFILE") || die "unknown profile $PROFILE"
set -- $params
RATE=$1 RTT=$2

say "mailnode on-demand release benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "host: $(nproc) cpus, kernel $(uname -r), postfix $(dpkg-query -W -f '${Version}' postfix 2>/dev/null)"
say "link: $PROFILE ($((RATE / 1000)) kbit/s, $RTT ms RTT), user-space emulator, MTU $MTU; $MSGS held messages of $SIZE bytes"
say ""
printf 'mode\trate\trtt_ms\trep\tmsgs\tsize\treceived\tdistinct\tsecs\tfloor\tratio\tpoll_rc\tpoll_secs\tconns\tbytes_u2f\tbytes_f2u\tleft\tping_ms\twire_floor\tqdrops\tretrans\n' > "$TSV"

log "runs:"
for rep in $(seq "$REPS"); do
    for mode in $MODES; do
        case $mode in etrn|atrn|etrn-plain|atrn-plain|postfix) ;; *) log "unknown mode $mode"; continue ;; esac
        run_one "$mode" "$RATE" "$RTT" "$rep" || log "  run failed: $mode rep=$rep"
    done
done

say ""
say "=========================== summary (medians of $REPS runs) ==========================="
say "time = \`mailnode poll\` started -> last message in the field node's mailbox;"
say "floor = MSGS*SIZE*8/rate + 3.5 RTT; wire = the same for the IP bytes that went U->F;"
say "poll = how long the poll command itself took (ETRN: until the 250; ATRN: the whole transfer);"
say "conns = TCP connections to F:$F_SMTP (ETRN) or U:$U_ODMR (ATRN, the field node's start-up poll"
say "included); U->F, F->U = IP bytes that entered the link in each direction; drops = link queue drops."
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
NR > 1 {
    k = $1
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
    add(k SUBSEP "secs", $9); add(k SUBSEP "floor", $10); add(k SUBSEP "ratio", $11)
    add(k SUBSEP "got", $7); add(k SUBSEP "uniq", $8); add(k SUBSEP "psecs", $13)
    add(k SUBSEP "conns", $14); add(k SUBSEP "u2f", $15); add(k SUBSEP "f2u", $16)
    add(k SUBSEP "wfloor", $19); add(k SUBSEP "qd", $20)
    rc[k] = rc[k] (rc[k] == "" ? "" : ",") $12
}
END {
    if (nk == 0) { print "  (no runs)"; exit }
    desc["etrn"] = "mailnode ETRN"; desc["atrn"] = "mailnode ATRN (ODMR)"; desc["postfix"] = "Postfix ETRN (flush)"
    desc["etrn-plain"] = "mailnode ETRN no zip"; desc["atrn-plain"] = "mailnode ATRN no zip"
    printf "%-22s | %7s %7s %6s %6s | %7s %7s | %9s %5s | %9s %8s %5s\n", "release", "time s", "floor s", "ratio", \
        "wire s", "poll s", "poll rc", "received", "conns", "U->F B", "F->U B", "drops"
    for (i = 1; i <= nk; i++) {
        k = order[i]
        printf "%-22s | %7s %7s %6s %6s | %7s %7s | %4s/%-4s %5s | %9s %8s %5s\n", desc[k], \
            f(med(k SUBSEP "secs"), "%.2f"), f(med(k SUBSEP "floor"), "%.2f"), f(med(k SUBSEP "ratio"), "%.2f"), \
            f(med(k SUBSEP "wfloor"), "%.2f"), \
            f(med(k SUBSEP "psecs"), "%.2f"), rc[k], f(med(k SUBSEP "uniq"), "%d"), f(med(k SUBSEP "got"), "%d"), \
            f(med(k SUBSEP "conns"), "%d"), f(med(k SUBSEP "u2f"), "%d"), f(med(k SUBSEP "f2u"), "%d"), \
            f(med(k SUBSEP "qd"), "%d")
    }
}' "$TSV" | tee -a "$REPORT"
say ""
say "(received = distinct/total messages in the field mailbox; anything but $MSGS/$MSGS is a failure)"
say "per-run data: $TSV"
say "report:       $REPORT"
