#!/bin/bash
# accept.sh - SMTP accept benchmark: mailnode versus an untuned Postfix.
#
# Both servers are loaded with Postfix's smtp-source, alternately, run by
# run (mailnode, postfix, mailnode, postfix, ...). Every run starts a fresh
# server with an empty store/queue and stops it afterwards. See
# bench/README.md for what is measured and how to read the output.
#
# Environment knobs (defaults in brackets):
#   MSGS=20000          messages per run
#   REPS=3              repetitions per server and configuration
#   CONCS="1 10 50"     smtp-source session counts
#   SIZES="1024 51200"  message payload sizes in bytes
#   SERVERS="mailnode postfix"   which servers to run
#   SLOW=1              also run the slow-fsync variant (0 = skip)
#   SLOW_MSGS=2000      messages per slow-fsync run
#   SLOW_CONCS=$CONCS   session counts for the slow-fsync variant
#   SLOW_SIZES=1024     sizes for the slow-fsync variant
#   SLOW_US=8000        added latency per flush (microseconds)
#   SLOW_METHOD=auto    dm (dm-delay device), shim (LD_PRELOAD) or auto
#   BIG=1, BIG_MB=100   the single large message test (0 = skip)
#   MAILNODE=./mailnode binary (relative to the repository root)
#   BENCH_DIR=/var/tmp  where work directories are created (use a real disk,
#                       not tmpfs: fsync is what is being measured)
#   BASE_PORT=25800     loopback ports BASE_PORT..BASE_PORT+2 are used
#   RUN_TIMEOUT=1800    limit for one smtp-source run (s)
#   DRAIN_TIMEOUT=600   limit for Postfix to empty its queue after a run (s)
#   SAMPLE_MS=100       PSS sampling interval
#   OUT=bench/results   where the per-run TSV and the report are written

set -u
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
. "$BENCH/lib/postfix-instance.sh"

MSGS=${MSGS:-20000}
REPS=${REPS:-3}
CONCS=${CONCS:-"1 10 50"}
SIZES=${SIZES:-"1024 51200"}
SERVERS=${SERVERS:-"mailnode postfix"}
SLOW=${SLOW:-1}
SLOW_MSGS=${SLOW_MSGS:-2000}
SLOW_CONCS=${SLOW_CONCS:-$CONCS}
SLOW_SIZES=${SLOW_SIZES:-1024}
SLOW_US=${SLOW_US:-8000}
SLOW_METHOD=${SLOW_METHOD:-auto}
BIG=${BIG:-1}
BIG_MB=${BIG_MB:-100}
MAILNODE=${MAILNODE:-./mailnode}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
BASE_PORT=${BASE_PORT:-25800}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-600}
SAMPLE_MS=${SAMPLE_MS:-100}
OUT=${OUT:-$BENCH/results}

MN_PORT=$BASE_PORT
PF_PORT=$((BASE_PORT + 1))
SINK_PORT=$((BASE_PORT + 2))
SMTP_SOURCE=/usr/sbin/smtp-source
PYTHON=$(command -v /usr/bin/python3 || command -v python3)
RCPT=bench@bench.test

case $MAILNODE in /*) ;; *) MAILNODE=$ROOT/${MAILNODE#./} ;; esac

die() { echo "accept.sh: $*" >&2; exit 1; }
log() { echo "$*" | tee -a "$REPORT" >&2; }
say() { echo "$*" | tee -a "$REPORT"; }

[ "$(id -u)" = 0 ] || die "must run as root (Postfix instances, cgroups)"
[ -x "$SMTP_SOURCE" ] && [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/postfix ] ||
    die "Debian package postfix is required (smtp-source, smtp-sink, postfix)"
command -v gcc >/dev/null || die "gcc is required (builds bench/lib/*.c)"

# ---------------------------------------------------------------- cleanup
WORK=""
MN_PID=""
SAMPLER_PID=""
SOURCE_PID=""
PF_DIRS=""
CG_ROOT=""
DM_NAME=""
LOOP_DEV=""
SLOW_MNT=""
CLEANED=0

cleanup() {
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    trap '' INT TERM
    [ -n "$SOURCE_PID" ] && { kill -TERM "$SOURCE_PID" 2>/dev/null; wait "$SOURCE_PID" 2>/dev/null; }
    [ -n "$SAMPLER_PID" ] && { kill -TERM "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; }
    [ -n "$MN_PID" ] && mn_stop
    local d
    for d in $PF_DIRS; do [ -d "$d" ] && pfi_destroy "$d"; done
    if [ -n "$SLOW_MNT" ]; then
        timeout 60 umount "$SLOW_MNT" 2>/dev/null || timeout 30 umount -l "$SLOW_MNT" 2>/dev/null
    fi
    [ -n "$DM_NAME" ] && timeout 30 dmsetup remove "$DM_NAME" 2>/dev/null
    [ -n "$LOOP_DEV" ] && timeout 30 losetup -d "$LOOP_DEV" 2>/dev/null
    if [ -n "$CG_ROOT" ] && [ -d "$CG_ROOT" ]; then
        for d in "$CG_ROOT"/*/; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
        rmdir "$CG_ROOT" 2>/dev/null
    fi
    [ -n "$WORK" ] && [ -d "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "accept.sh: interrupted" >&2; exit 130' INT TERM

mkdir -p "$OUT" || die "cannot create $OUT"
STAMP=$(date +%Y%m%d-%H%M%S)
TSV=$OUT/accept-$STAMP.tsv
REPORT=$OUT/accept-$STAMP.txt
: > "$REPORT"
printf 'variant\tserver\tsize\tconc\trep\tmsgs\trc\tsecs\trate\tcpu_acc_ms\tcpu_all_ms\tpss_peak_kb\tmax_procs\tfsyncs\tmem_peak_kb\n' > "$TSV"

WORK=$(mktemp -d "$BENCH_DIR/mailnode-bench.XXXXXX") || die "mktemp in $BENCH_DIR failed"
chmod 755 "$WORK"
mkdir -p "$WORK/bin"
gcc -O2 -Wall -o "$WORK/bin/procmon" "$BENCH/lib/procmon.c" || die "building procmon failed"
gcc -O2 -Wall -shared -fPIC -o "$WORK/bin/slowfsync.so" "$BENCH/lib/slowfsync.c" -ldl ||
    die "building slowfsync.so failed"
chmod 755 "$WORK/bin" "$WORK/bin/slowfsync.so"
PROCMON=$WORK/bin/procmon

# refuse to run next to a system-wide Postfix on our ports
for p in $MN_PORT $PF_PORT $SINK_PORT; do
    if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then
        die "port $p on 127.0.0.1 is in use (set BASE_PORT)"
    fi
done

# ---------------------------------------------------------------- cgroups
# cgroup v2: a group per server run gives CPU of every process that ever ran
# in it (cpu.stat usage_usec) and, with the memory controller, memory.peak.
# Without cgroup v2 the CPU of the process tree is read from /proc (procmon).
CG_BASE=""
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG_BASE=/sys/fs/cgroup
elif grep -q ' /sys/fs/cgroup/unified cgroup2 ' /proc/mounts 2>/dev/null; then
    CG_BASE=/sys/fs/cgroup/unified
fi
if [ -n "$CG_BASE" ] && mkdir "$CG_BASE/mailnode-bench.$$" 2>/dev/null; then
    CG_ROOT=$CG_BASE/mailnode-bench.$$
    if [ ! -f "$CG_ROOT/cpu.stat" ]; then
        rmdir "$CG_ROOT"; CG_ROOT=""
    else
        grep -qw memory "$CG_BASE/cgroup.subtree_control" 2>/dev/null &&
            echo +memory > "$CG_ROOT/cgroup.subtree_control" 2>/dev/null
    fi
fi

CG_SEQ=0
cg_new() {   # prints the path of a new, empty group ("" without cgroups)
    [ -n "$CG_ROOT" ] || { echo ""; return; }
    CG_SEQ=$((CG_SEQ + 1))
    mkdir "$CG_ROOT/r$CG_SEQ" && echo "$CG_ROOT/r$CG_SEQ"
}
cg_drop() { [ -n "$1" ] && [ -d "$1" ] && rmdir "$1" 2>/dev/null; return 0; }

# cpu_ms CGROUP ROOTPID: CPU used so far by the server
cpu_ms() {
    if [ -n "$1" ]; then
        awk '$1 == "usage_usec" { printf "%d\n", $2 / 1000 }' "$1/cpu.stat"
    else
        "$PROCMON" cpu "$2"
    fi
}
mem_peak_kb() {
    if [ -n "$1" ] && [ -r "$1/memory.peak" ]; then
        echo $(( $(cat "$1/memory.peak") / 1024 ))
    else
        echo -
    fi
}

# ---------------------------------------------------------------- slow fsync
SLOW_HOW=""
setup_slow() {
    local method=$SLOW_METHOD
    if [ "$method" = auto ]; then
        if timeout 10 dmsetup targets 2>/dev/null | grep -q '^delay'; then
            method=dm
        else
            method=shim
        fi
    fi
    if [ "$method" = dm ]; then
        local ms=$(( (SLOW_US + 999) / 1000 )) img=$WORK/slow.img sectors
        truncate -s 6G "$img" &&
        LOOP_DEV=$(losetup -f --show "$img") &&
        sectors=$(blockdev --getsz "$LOOP_DEV") &&
        DM_NAME=mailnode-bench-$$ &&
        # reads undelayed; every write and flush request delayed by $ms ms
        dmsetup create "$DM_NAME" --table "0 $sectors delay $LOOP_DEV 0 0 $LOOP_DEV 0 $ms" &&
        mkfs.ext4 -q -F "/dev/mapper/$DM_NAME" &&
        mkdir -p "$WORK/slow" &&
        mount "/dev/mapper/$DM_NAME" "$WORK/slow" &&
        SLOW_MNT=$WORK/slow && chmod 755 "$SLOW_MNT" || {
            log "dm-delay setup failed; falling back to the LD_PRELOAD shim"
            method=shim
        }
        [ "$method" = dm ] && SLOW_HOW="dm-delay ${ms} ms per write/flush (loop device on $BENCH_DIR)"
    fi
    if [ "$method" = shim ]; then
        SLOW_HOW="LD_PRELOAD shim: +${SLOW_US} us per fsync/fdatasync (bench/lib/slowfsync.c)"
    fi
    SLOW_METHOD=$method
}

# ---------------------------------------------------------------- mailnode
MN_STATIC=0
if [ -x "$MAILNODE" ] && ! ldd "$MAILNODE" >/dev/null 2>&1; then MN_STATIC=1; fi

mn_write_conf() {   # DIR
    cat > "$1/mailnode.conf" <<EOF
database = $1/mailnode.db
listen.smtp = 127.0.0.1:$MN_PORT
listen.submission =
listen.pop3 =
listen.odmr =
hostname = bench.test
local_domains = bench.test
relay_networks = 127.0.0.0/8
message_size_limit = 100M
max_connections = 200
EOF
}

# mn_start DIR CGROUP [NAME=VALUE...] : fresh store, user "bench", server up
mn_start() {
    local dir=$1 cg=$2
    shift 2
    mkdir -p "$dir" && mn_write_conf "$dir"
    printf 'bench-password\n' | timeout 30 "$MAILNODE" -c "$dir/mailnode.conf" user add bench \
        >>"$dir/mailnode.log" 2>&1 || { log "mailnode user add failed (see $dir/mailnode.log)"; return 1; }
    (
        [ -n "$cg" ] && echo "$BASHPID" > "$cg/cgroup.procs"
        exec env "$@" "$MAILNODE" -c "$dir/mailnode.conf" run
    ) >>"$dir/mailnode.log" 2>&1 </dev/null &
    MN_PID=$!
    if ! pfi_wait_port "$MN_PORT" 20; then
        log "mailnode did not answer on 127.0.0.1:$MN_PORT:"
        tail -5 "$dir/mailnode.log" >&2
        mn_stop
        return 1
    fi
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

# ---------------------------------------------------------------- postfix
# pf_start DIR CGROUP [NAME=VALUE...] (pairs go to import_environment)
pf_start() {
    local dir=$1 cg=$2
    shift 2
    PF_DIRS="$PF_DIRS $dir"
    pfi_create "$dir" "$PF_PORT" "$SINK_PORT" "$@" || return 1
    pfi_sink_start "$dir" "$SINK_PORT" || return 1
    (
        [ -n "$cg" ] && echo "$BASHPID" > "$cg/cgroup.procs"
        pfi_start "$dir"
    ) || return 1
}

pf_stop() {
    pfi_destroy "$1"
    PF_DIRS=${PF_DIRS/ $1/}
}

# ---------------------------------------------------------------- one run
RUN_SEQ=0
# run_one VARIANT SERVER SIZE CONC REP MSGS
run_one() {
    local variant=$1 server=$2 size=$3 conc=$4 rep=$5 msgs=$6
    local base=$WORK dir cg pid port c0 c1 c2 t0 t1 rc secs rate fsyncs="-" peak="- -"
    local penv=()
    RUN_SEQ=$((RUN_SEQ + 1))
    [ "$variant" = slow ] && [ "$SLOW_METHOD" = dm ] && base=$SLOW_MNT
    dir=$base/run$RUN_SEQ-$server
    mkdir -p "$dir" && chmod 755 "$dir"
    if [ "$variant" = slow ] && [ "$SLOW_METHOD" = shim ]; then
        : > "$dir/fsyncs"; chmod 666 "$dir/fsyncs"
        penv=(LD_PRELOAD="$WORK/bin/slowfsync.so" SLOWFSYNC_US="$SLOW_US" SLOWFSYNC_COUNT="$dir/fsyncs")
    fi
    cg=$(cg_new)
    if [ "$server" = mailnode ]; then
        port=$MN_PORT
        mn_start "$dir" "$cg" "${penv[@]}" || { cg_drop "$cg"; return 1; }
        pid=$MN_PID
    else
        port=$PF_PORT
        if ! pf_start "$dir/pf" "$cg" "${penv[@]}"; then
            pf_stop "$dir/pf"; cg_drop "$cg"; return 1
        fi
        pid=$(pfi_master_pid "$dir/pf")
    fi
    [ -n "$cg" ] && [ -f "$cg/memory.reset" ] 2>/dev/null && echo 0 > "$cg/memory.reset" 2>/dev/null
    "$PROCMON" peak "$pid" "$SAMPLE_MS" "$dir/peak" &
    SAMPLER_PID=$!
    c0=$(cpu_ms "$cg" "$pid")
    [ -f "$dir/fsyncs" ] && : > "$dir/fsyncs"
    t0=$(date +%s.%N)
    # in the background + wait, so that a signal to this script is handled
    # at once (bash defers traps while a foreground child runs)
    timeout "$RUN_TIMEOUT" "$SMTP_SOURCE" -s "$conc" -m "$msgs" -l "$size" \
        -f from@example.com -t "$RCPT" "127.0.0.1:$port" >"$dir/source.log" 2>&1 &
    SOURCE_PID=$!
    wait "$SOURCE_PID"
    rc=$?
    SOURCE_PID=""
    t1=$(date +%s.%N)
    c1=$(cpu_ms "$cg" "$pid")
    if [ "$server" = postfix ]; then
        pfi_drain "$dir/pf" "$DRAIN_TIMEOUT" || log "  postfix queue not empty after ${DRAIN_TIMEOUT}s"
    else
        sleep 0.5
    fi
    c2=$(cpu_ms "$cg" "$pid")
    kill -TERM "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=""
    [ -r "$dir/peak" ] && peak=$(cat "$dir/peak")
    [ -f "$dir/fsyncs" ] && fsyncs=$(stat -c %s "$dir/fsyncs")
    local mpeak
    mpeak=$(mem_peak_kb "$cg")
    if [ "$server" = postfix ]; then
        local sent
        sent=$(grep -c 'status=sent' "$dir/pf/maillog" 2>/dev/null)
        [ "${sent:-0}" -ge "$msgs" ] || log "  postfix relayed only ${sent:-0} of $msgs messages to the sink"
        pf_stop "$dir/pf"
    else
        mn_stop
    fi
    cg_drop "$cg"
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    if [ "$rc" = 0 ]; then
        rate=$(awk -v n="$msgs" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
    else
        rate=-
        log "  smtp-source exit $rc: $(tail -2 "$dir/source.log" | tr '\n' ' ')"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$variant" "$server" "$size" "$conc" "$rep" "$msgs" "$rc" "$secs" "$rate" \
        "$((c1 - c0))" "$((c2 - c0))" ${peak% *} ${peak#* } "$fsyncs" "$mpeak" >> "$TSV"
    log "$(printf '  %-6s %-8s size=%-6s c=%-3s rep=%s  %7s msg/s  %6s s  cpu %5s/%5s ms  pss %s kB (%s procs)  fsyncs %s' \
        "$variant" "$server" "$size" "$conc" "$rep" "$rate" "$secs" "$((c1 - c0))" "$((c2 - c0))" \
        "${peak% *}" "${peak#* }" "$fsyncs")"
    rm -rf "$dir"
    return 0
}

# ---------------------------------------------------------------- main
HAVE_MN=0
case " $SERVERS " in
*" mailnode "*)
    if [ -x "$MAILNODE" ]; then
        HAVE_MN=1
    else
        log "mailnode binary $MAILNODE not found: running the Postfix half only (build with 'make')"
        SERVERS=postfix
    fi ;;
esac

say "mailnode accept benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "host: $(nproc) cpus, kernel $(uname -r), postfix $(dpkg-query -W -f '${Version}' postfix 2>/dev/null)"
say "work dir: $WORK ($(stat -f -c %T "$WORK") on $(df --output=source "$WORK" | tail -1))"
if [ -n "$CG_ROOT" ]; then
    say "cpu accounting: cgroup v2 cpu.stat, one group per run under $CG_ROOT"
else
    say "cpu accounting: /proc process tree (utime+stime+cutime+cstime)"
fi
say "load: smtp-source, one message per connection, MSGS=$MSGS REPS=$REPS sessions {$CONCS} sizes {$SIZES}"
say ""

if [ "$HAVE_MN" = 1 ]; then
    say "binary size: $(stat -c %s "$MAILNODE") bytes ($MAILNODE)$([ "$MN_STATIC" = 1 ] && echo ', static')"
    [ -x "$ROOT/mailnode-static" ] &&
        say "binary size: $(stat -c %s "$ROOT/mailnode-static") bytes ($ROOT/mailnode-static)"
    d=$WORK/idle
    if mn_start "$d" ""; then
        sleep 1
        say "mailnode idle: VmRSS $(awk '/^VmRSS/ { print $2 }' /proc/$MN_PID/status) kB, PSS $("$PROCMON" pss "$MN_PID") kB"
        mn_stop
    fi
    rm -rf "$d"
fi
case " $SERVERS " in *" postfix "*)
    d=$WORK/pf-idle
    if pf_start "$d" ""; then
        sleep 1
        say "postfix idle: PSS $("$PROCMON" pss "$(pfi_master_pid "$d")") kB (master, qmgr, pickup, postlogd)"
    fi
    pf_stop "$d" ;;
esac
say ""

# interleaved runs: for each configuration and repetition, every server once
run_matrix() {   # VARIANT MSGS "SIZES" "CONCS"
    local variant=$1 msgs=$2 size conc rep srv
    for size in $3; do
        for conc in $4; do
            for rep in $(seq "$REPS"); do
                for srv in $SERVERS; do
                    if [ "$variant" = slow ] && [ "$srv" = mailnode ] &&
                       [ "$SLOW_METHOD" = shim ] && [ "$MN_STATIC" = 1 ]; then
                        continue
                    fi
                    run_one "$variant" "$srv" "$size" "$conc" "$rep" "$msgs" ||
                        log "  run failed: $variant $srv size=$size c=$conc rep=$rep"
                done
            done
        done
    done
}

log "runs (cpu: accept window / incl. queue drain):"
run_matrix normal "$MSGS" "$SIZES" "$CONCS"
if [ "$SLOW" = 1 ]; then
    setup_slow
    log "slow-fsync variant: $SLOW_HOW"
    [ "$SLOW_METHOD" = shim ] && [ "$MN_STATIC" = 1 ] &&
        log "  $MAILNODE is static: LD_PRELOAD cannot apply, mailnode skipped in this variant"
    run_matrix slow "$SLOW_MSGS" "$SLOW_SIZES" "$SLOW_CONCS"
fi

# ---------------------------------------------------------------- large message
BIG_LINE=""
if [ "$HAVE_MN" = 1 ] && [ "$BIG" = 1 ]; then
    d=$WORK/big
    if mn_start "$d" ""; then
        hwm0=$(awk '/^VmHWM/ { print $2 }' /proc/$MN_PID/status)
        bytes=$((BIG_MB * 1000 * 1000 - 65536))
        r=$(timeout 900 "$PYTHON" "$BENCH/lib/bigmsg.py" 127.0.0.1 "$MN_PORT" from@example.com "$RCPT" "$bytes" 2>&1)
        hwm1=$(awk '/^VmHWM/ { print $2 }' /proc/$MN_PID/status)
        BIG_LINE="large message: $bytes bytes -> '${r}'; mailnode VmHWM ${hwm0} kB before, ${hwm1} kB after"
        mn_stop
    else
        BIG_LINE="large message: mailnode did not start"
    fi
    rm -rf "$d"
fi

# ---------------------------------------------------------------- summary
summary() {   # VARIANT
    awk -F'\t' -v want="$1" '
    function med(key,   n, i, j, t, a) {
        n = cnt[key]
        if (n == 0) return ""
        for (i = 1; i <= n; i++) a[i] = val[key, i]
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function add(k, v) { if (v == "-" || v == "") return; cnt[k]++; val[k, cnt[k]] = v + 0 }
    function f(v, fmt) { return v == "" ? "-" : sprintf(fmt, v) }
    function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b) }
    NR > 1 && $1 == want && $7 == 0 {
        cfg = $3 SUBSEP $4
        if (!(cfg in seen)) { seen[cfg] = 1; order[++ncfg] = cfg }
        add($2 SUBSEP "rate" SUBSEP cfg, $9)
        add($2 SUBSEP "cpu" SUBSEP cfg, $10 / $6)
        add($2 SUBSEP "cpuall" SUBSEP cfg, $11 / $6)
        add($2 SUBSEP "pss" SUBSEP cfg, $12 / 1024)
        if ($14 != "-") add($2 SUBSEP "fs" SUBSEP cfg, $14 / $6)
    }
    END {
        if (ncfg == 0) { print "  (no successful runs)"; exit }
        printf "%-6s %4s | %9s %9s %6s | %7s %7s %7s %6s | %7s %7s %6s", \
            "size", "conc", "mn msg/s", "pf msg/s", "mn/pf", "mn cpu", "pf cpu", "pf+rly", "mn/pf", "mn PSS", "pf PSS", "mn/pf"
        if (want == "slow") printf " | %6s %6s", "mn fs", "pf fs"
        printf "\n"
        printf "%-6s %4s | %9s %9s %6s | %7s %7s %7s %6s | %7s %7s %6s", \
            "", "", "", "", "", "ms/msg", "ms/msg", "ms/msg", "", "MB", "MB", ""
        if (want == "slow") printf " | %6s %6s", "/msg", "/msg"
        printf "\n"
        for (i = 1; i <= ncfg; i++) {
            cfg = order[i]; split(cfg, p, SUBSEP)
            size = p[1] >= 1024 ? sprintf("%dK", p[1] / 1024) : p[1]
            mr = med("mailnode" SUBSEP "rate" SUBSEP cfg); pr = med("postfix" SUBSEP "rate" SUBSEP cfg)
            mc = med("mailnode" SUBSEP "cpuall" SUBSEP cfg); pc = med("postfix" SUBSEP "cpu" SUBSEP cfg)
            pa = med("postfix" SUBSEP "cpuall" SUBSEP cfg)
            mp = med("mailnode" SUBSEP "pss" SUBSEP cfg); pp = med("postfix" SUBSEP "pss" SUBSEP cfg)
            printf "%-6s %4s | %9s %9s %6s | %7s %7s %7s %6s | %7s %7s %6s", size, p[2], \
                f(mr, "%.0f"), f(pr, "%.0f"), ratio(mr, pr), \
                f(mc, "%.3f"), f(pc, "%.3f"), f(pa, "%.3f"), ratio(mc, pc), \
                f(mp, "%.1f"), f(pp, "%.1f"), ratio(mp, pp)
            if (want == "slow")
                printf " | %6s %6s", f(med("mailnode" SUBSEP "fs" SUBSEP cfg), "%.3f"), f(med("postfix" SUBSEP "fs" SUBSEP cfg), "%.3f")
            printf "\n"
        }
    }' "$TSV"
}

say ""
say "================================ summary (medians of $REPS runs) ================================"
say "mn = mailnode (local mailbox), pf = Postfix (relays to smtp-sink); msg/s = accepted per second of"
say "smtp-source wall time; cpu = server CPU per message in the accept window (mn: incl. 0.5 s settle),"
say "pf+rly = Postfix CPU including draining its queue to the sink; PSS = peak summed PSS of all server"
say "processes. mn/pf > 1 means mailnode is faster (msg/s) or uses more (cpu, PSS)."
say ""
say "normal storage, MSGS=$MSGS:"
summary normal | tee -a "$REPORT"
if [ "$SLOW" = 1 ]; then
    say ""
    say "slow fsync ($SLOW_HOW), MSGS=$SLOW_MSGS; fs/msg = flush calls per message:"
    summary slow | tee -a "$REPORT"
fi
say ""
if [ "$HAVE_MN" = 1 ]; then
    say "binary size: $(stat -c %s "$MAILNODE") bytes$([ -x "$ROOT/mailnode-static" ] && echo ", mailnode-static $(stat -c %s "$ROOT/mailnode-static") bytes")"
    [ -n "$BIG_LINE" ] && say "$BIG_LINE"
fi
say "per-run data: $TSV"
say "report:       $REPORT"
