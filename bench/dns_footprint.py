#!/usr/bin/env python3
"""What the resolver costs: file size and idle memory of two mailnode
builds side by side, in one run (e.g. the hand-written resolver against
the c-ares one, or a dynamic against a static build).

    bench/dns_footprint.py OLD_BINARY NEW_BINARY [more binaries...]

For each binary: its size on disk, the size of its libcares.so if it is
linked dynamically, then a daemon (tests/proto/harness.py Node, loopback
only) is started with a fake DNS server as `resolver` and measured from
/proc/PID/status and smaps_rollup: once idle after start, and once idle
after a relay of five messages to five domains resolved by MX (so the
resolver has opened, used and closed its sockets).  The binaries run in
turn, ROUNDS times (default 3), and the median is printed, with the
difference of each binary to the one before it on the command line.  Memory is
VmRSS (what the kernel counts, shared library pages included) and
Private (Private_Clean + Private_Dirty: the pages only this process
holds).  The machine is shared: figures move by some tens of KiB from
run to run.
"""

import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'tests', 'proto'))

import harness                                   # noqa: E402
from harness import Node, wait_until             # noqa: E402
from fakedns import FakeDNS                      # noqa: E402
from sink import Sink                            # noqa: E402

ROUNDS = int(os.environ.get('ROUNDS', '3'))


def mem(pid):
    out = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                out['rss'] = int(line.split()[1])
    priv = 0
    with open('/proc/%d/smaps_rollup' % pid) as f:
        for line in f:
            if line.startswith(('Private_Clean:', 'Private_Dirty:')):
                priv += int(line.split()[1])
    out['private'] = priv
    return out


def libcares(binary):
    try:
        out = subprocess.run(['ldd', binary], capture_output=True, text=True).stdout
    except OSError:
        return 0
    for line in out.splitlines():
        if 'libcares' in line and '=>' in line:
            path = line.split('=>')[1].split('(')[0].strip()
            return os.path.getsize(os.path.realpath(path))
    return 0


def one(binary):
    harness.BIN = binary
    records = {}
    for i in range(5):
        records['d%d.test' % i] = {'MX': [(10, 'mx.d%d.test' % i)]}
        records['mx.d%d.test' % i] = {'A': ['127.0.0.1']}
    with Sink() as sink, FakeDNS(records) as dns:
        with Node(conf={'resolver': dns.resolver, 'delivery.port': sink.port,
                        'retry.initial': '1s'}) as n:
            time.sleep(1.0)
            idle = mem(n.proc.pid)
            import smtplib
            with smtplib.SMTP('127.0.0.1', n.port('smtp'), timeout=30) as s:
                for i in range(5):
                    s.sendmail('a@example.test', ['x@d%d.test' % i],
                               'Subject: %d\r\n\r\nbody\r\n' % i)
            ok = wait_until(lambda: len(sink.messages) >= 5, timeout=60)
            time.sleep(1.0)
            after = mem(n.proc.pid)
            return idle, after, ok


def main():
    bins = [os.path.abspath(b) for b in sys.argv[1:]]
    if len(bins) < 2:
        sys.exit(__doc__)
    res = {b: [] for b in bins}
    for _ in range(ROUNDS):
        for b in bins:
            res[b].append(one(b))
    print('%-36s %10s %10s %9s %9s %9s %9s %s' % ('binary', 'bytes', 'libcares', 'idleRSS', 'idlePriv',
                                                  'usedRSS', 'usedPriv', 'relayed'))
    prev = None
    for b in bins:
        r = res[b]
        row = (os.path.getsize(b), libcares(b),
               statistics.median(x[0]['rss'] for x in r), statistics.median(x[0]['private'] for x in r),
               statistics.median(x[1]['rss'] for x in r), statistics.median(x[1]['private'] for x in r))
        print('%-36s %10d %10d %8dK %8dK %8dK %8dK %s' % ((b[-36:],) + row + (all(x[2] for x in r),)))
        if prev is not None:
            print('%-36s %+10d %+10d %+8dK %+8dK %+8dK %+8dK' %
                  (('  difference to the row above',) + tuple(row[i] - prev[i] for i in range(6))))
        prev = row


if __name__ == '__main__':
    main()
