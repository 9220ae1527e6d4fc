#!/usr/bin/env python3
"""Measures the POP3 server; prints numbers, asserts nothing about speed.

  bench/pop3.py [--messages N] [--big-mb M]

1. A mailbox of N messages (default 10,000), delivered over SMTP: the time
   of the login (which loads the maildrop listing), STAT, LIST and UIDL.
2. One message of M MB (default 100), delivered over SMTP; the daemon is
   restarted so that its memory high-water mark counts only the POP3 side;
   the time of RETR and the daemon's peak RSS (VmHWM) during it.

Uses the test harness (tests/proto/harness.py) and ./mailnode, or
MAILNODE_BIN.  MAILNODE_TEST_KEEP=1 keeps the temporary directory.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'proto'))
import harness  # noqa: E402
from harness import Node  # noqa: E402

PASSWORD = 'bench password'


def vm(pid, key):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])     # kB
    return -1


class Pop:
    def __init__(self, port):
        self.c = harness.raw(port, timeout=600)
        self.c.recv_line()

    def cmd(self, line):
        self.c.send(line.encode() + b'\r\n')
        return self.c.recv_line()

    def multi(self):
        return self.c.recv_until(b'\r\n.\r\n')


def login(port):
    p = Pop(port)
    p.cmd('USER alice')
    r = p.cmd('PASS ' + PASSWORD)
    if not r.startswith(b'+OK'):
        raise SystemExit('login failed: %r' % r)
    return p, r


def bench_mailbox(n, count):
    msg = (b'From: bench@remote.test\r\nTo: alice@example.test\r\nSubject: bench %d\r\n\r\n'
           + b'A short line of text for the benchmark mailbox.\r\n' * 20)
    t0 = time.monotonic()
    s = n.smtp(timeout=60)
    for i in range(count):
        s.sendmail('bench@remote.test', ['alice@example.test'], msg % i)
    s.quit()
    t_deliver = time.monotonic() - t0
    port = n.port('pop3')
    t0 = time.monotonic()
    p, greeting = login(port)
    t_login = time.monotonic() - t0
    t0 = time.monotonic()
    stat = p.cmd('STAT')
    t_stat = time.monotonic() - t0
    t0 = time.monotonic()
    p.cmd('LIST')
    listing = p.multi()
    t_list = time.monotonic() - t0
    t0 = time.monotonic()
    p.cmd('UIDL')
    uidl = p.multi()
    t_uidl = time.monotonic() - t0
    # DELE everything (pipelined), then QUIT: the deletions and their commit.
    p.c.send(b''.join(b'DELE %d\r\n' % i for i in range(1, count + 1)))
    for _ in range(count):
        p.c.recv_line()
    t0 = time.monotonic()
    quit_r = p.cmd('QUIT')
    t_quit = time.monotonic() - t0
    lines = listing.count(b'\r\n') - 1
    print('mailbox of %d messages (delivered over SMTP in %.1f s)' % (count, t_deliver))
    print('  login (USER/PASS, loads the listing): %7.1f ms  %s'
          % (t_login * 1e3, greeting.decode().strip()))
    print('  STAT:                                 %7.1f ms  %s' % (t_stat * 1e3, stat.decode().strip()))
    print('  LIST (%d lines, %d bytes):        %7.1f ms' % (lines, len(listing), t_list * 1e3))
    print('  UIDL (%d bytes):                    %7.1f ms' % (len(uidl), t_uidl * 1e3))
    print('  DELE all, QUIT (deletions committed): %7.1f ms  %s'
          % (t_quit * 1e3, quit_r.decode().strip()))


def bench_big(n, mb):
    line = b'%08d the quick brown fox jumps over the lazy dog, 0123456789 ABCDEF.\r\n'
    header = b'From: bench@remote.test\r\nTo: alice@example.test\r\nSubject: big\r\n\r\n'
    target = mb * 1024 * 1024

    class Body:
        """The message, generated line by line (smtplib wants bytes)."""
        def build(self):
            parts = [header]
            size = len(header)
            i = 0
            while size < target:
                chunk = line % i
                if i % 50 == 0:
                    chunk = b'.' + chunk        # some lines need stuffing
                parts.append(chunk)
                size += len(chunk)
                i += 1
            return b''.join(parts)
    body = Body().build()
    t0 = time.monotonic()
    s = n.smtp(timeout=600)
    s.sendmail('bench@remote.test', ['alice@example.test'], body)
    s.quit()
    t_deliver = time.monotonic() - t0
    del body
    # Restart: the high-water mark then counts only what POP3 costs.
    n.restart()
    pid = n.proc.pid
    base = vm(pid, 'VmHWM')
    p, _ = login(n.port('pop3'))
    after_login = vm(pid, 'VmHWM')
    # Argon2id (the password check) takes its 8 MB at login; reset the
    # high-water mark (Linux >= 4.0) so that the peak below is RETR's.
    try:
        with open('/proc/%d/clear_refs' % pid, 'w') as f:
            f.write('5')
        reset = True
    except OSError:
        reset = False
    t0 = time.monotonic()
    r = p.cmd('RETR 1')
    sock = p.c.sock
    sock.settimeout(600)
    buf = p.c.buf
    p.c.buf = b''
    total = 0
    tail = b''
    data = buf
    while True:
        if data:
            total += len(data)
            tail = (tail + data)[-5:]
            if tail == b'\r\n.\r\n':
                break
        data = sock.recv(1 << 20)
        if not data:
            raise SystemExit('connection closed during RETR')
    t_retr = time.monotonic() - t0
    peak = vm(pid, 'VmHWM')
    rss = vm(pid, 'VmRSS')
    p.cmd('QUIT')
    print('one message of %d MB (delivered over SMTP in %.1f s)' % (mb, t_deliver))
    print('  RETR: %s, %d bytes on the wire in %.2f s (%.0f MB/s)'
          % (r.decode().strip(), total, t_retr, total / t_retr / 1e6))
    print('  daemon VmHWM: %d kB after restart, %d kB after login' % (base, after_login))
    print('  daemon peak RSS during RETR: %d kB%s (VmRSS after: %d kB)'
          % (peak, '' if reset else ' (high-water mark not reset: includes login)', rss))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--messages', type=int, default=10000)
    ap.add_argument('--big-mb', type=int, default=100)
    args = ap.parse_args()
    conf = {'message_size_limit': '%dM' % (args.big_mb + 50), 'auth.fail_delay': '0'}
    with Node(conf=conf, name='bench') as n:
        rc, _, err = n.cli('user', 'add', 'alice', input=PASSWORD + '\n')
        if rc:
            raise SystemExit('user add: %s' % err)
        if args.messages:
            bench_mailbox(n, args.messages)
    with Node(conf=conf, name='bench') as n:
        n.cli('user', 'add', 'alice', input=PASSWORD + '\n')
        if args.big_mb:
            bench_big(n, args.big_mb)


if __name__ == '__main__':
    main()
