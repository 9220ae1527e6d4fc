#!/usr/bin/env python3
"""IMAP: mailnode and a private Dovecot side by side on the same mailbox;
prints both figures and their ratio, asserts nothing about speed.

  bench/imap.py [--messages N] [--idle N] [--reps R]

Both servers get the same N messages by APPEND (default 10,000), then,
R times each (default 3, median printed):

Timings use a minimal client that reads the replies and parses nothing,
so that they measure the server, not a client library.

  login+SELECT      a new connection, LOGIN, SELECT INBOX (both servers
                    check an Argon2id password hash)
  UID FETCH flags   UID FETCH 1:* (FLAGS)
  last 100 headers  FETCH of BODY.PEEK[HEADER] of the last 100 messages
  SEARCH SUBJECT    SEARCH SUBJECT of one message's subject
  mbsync bytes      a first full mbsync of the mailbox through a counting
                    relay: octets both ways on the wire, with COMPRESS=DEFLATE
                    (isync uses it when offered) and without it (the relay
                    hides the capability from mbsync)

With --only mbsync just the mbsync runs; --no-fsync writes "FSync no" into
mbsync's configuration, so that its own fsyncs of the maildir (which
dominate its time on a busy disk and vary 3x between runs) leave the
server's share visible; the CPU the server spent on each sync is printed
too (Dovecot: its master and children, exited ones included).

and, once, the memory of --idle clients (default 500) logged in, INBOX
selected, in IDLE: proportional set size (PSS) of all the server's
processes, minus what it used before they connected.

Needs root (Dovecot), dovecot-imapd, isync (mbsync) and ./mailnode (or
MAILNODE_BIN).  Loopback only.  The machine is shared: run it when it is
quiet and read the figures as rough.
"""
import argparse
import imaplib
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'tests', 'proto'))
import harness  # noqa: E402
from dovecot import Dovecot  # noqa: E402
from harness import Node  # noqa: E402

PASSWORD = 'correct horse 42'


def message(i):
    return (b'From: Sender %d <sender%d@remote.test>\r\nTo: alice@example.test\r\n'
            b'Subject: bench message %d\r\nMessage-ID: <b%d@remote.test>\r\n'
            b'Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n\r\n' % (i % 97, i % 97, i, i)
            + b'A short line of text for the benchmark mailbox.\r\n' * 20)


def pss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open('/proc/%d/smaps_rollup' % pid) as f:
                for line in f:
                    if line.startswith('Pss:'):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def timed(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.monotonic()
        fn()
        out.append(time.monotonic() - t0)
    return statistics.median(out)


class Relay:
    """A TCP relay on loopback that counts the octets it carries."""

    def __init__(self, port, hide_compress=False):
        """hide_compress: the server's COMPRESS=DEFLATE capability is
        renamed on its way to the client, which then does not compress."""
        self.target = port
        self.hide = hide_compress
        self.ls = socket.socket()
        self.ls.bind(('127.0.0.1', 0))
        self.ls.listen(4)
        self.port = self.ls.getsockname()[1]
        self.up = self.down = 0
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def pipe(self, a, b, up):
        while True:
            try:
                d = a.recv(65536)
            except OSError:
                d = b''
            if not d:
                try:
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if up:
                self.up += len(d)
            else:
                self.down += len(d)
                if self.hide:
                    d = d.replace(b'COMPRESS=DEFLATE', b'X-NOCOMPRESS-ZZZ')
            b.sendall(d)

    def serve(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            s = socket.create_connection(('127.0.0.1', self.target))
            threading.Thread(target=self.pipe, args=(c, s, True), daemon=True).start()
            threading.Thread(target=self.pipe, args=(s, c, False), daemon=True).start()

    def close(self):
        self.ls.close()


MBSYNC_FSYNC = True


def cpu_seconds(pids):
    """utime + stime of the processes and of their reaped children."""
    t = 0
    for p in pids:
        try:
            with open('/proc/%d/stat' % p) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            t += sum(int(x) for x in fields[11:15])
        except (OSError, ValueError, IndexError):
            pass
    return t / os.sysconf('SC_CLK_TCK')


def mbsync_bytes(port, work, hide_compress, pids=lambda: []):
    relay = Relay(port, hide_compress)
    os.makedirs(os.path.join(work, 'm', 'INBOX'), exist_ok=True)
    rc = os.path.join(work, 'mbsyncrc')
    with open(rc, 'w') as f:
        if not MBSYNC_FSYNC:
            f.write('FSync no\n\n')
        f.write('IMAPAccount a\nHost 127.0.0.1\nPort %d\nUser alice\nPass "%s"\nSSLType None\n'
                'AuthMechs LOGIN\n\nIMAPStore r\nAccount a\n\nMaildirStore l\nPath %s/m/\n'
                'Inbox %s/m/INBOX\n\nChannel c\nFar :r:INBOX\nNear :l:INBOX\nCreate Near\n'
                'SyncState *\n' % (relay.port, PASSWORD, work, work))
    c0 = cpu_seconds(pids())
    t0 = time.monotonic()
    p = subprocess.run(['mbsync', '-c', rc, '-a'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=1800)
    if p.returncode or os.environ.get('BENCH_DEBUG'):
        print('# mbsync (%d): %s' % (p.returncode, p.stdout.decode(errors='replace')[-800:]))
    if p.returncode:
        print('# mbsync failed (%d): %s' % (p.returncode, p.stdout.decode(errors='replace')[-500:]))
    took = time.monotonic() - t0
    server_cpu = cpu_seconds(pids()) - c0
    time.sleep(0.2)
    relay.close()
    if os.environ.get('BENCH_DEBUG'):
        print('# relay up %d down %d' % (relay.up, relay.down))
    return relay.up + relay.down, took, server_cpu


class Raw:
    """A minimal client that times the server, not a client library:
    send one command, read until its tagged reply."""

    def __init__(self, port):
        self.s = socket.create_connection(('127.0.0.1', port), timeout=600)
        self.buf = b''
        self.n = 0
        self.read_until(b'\r\n')

    def read_until(self, marker):
        while marker not in self.buf:
            d = self.s.recv(262144)
            if not d:
                raise ConnectionError('closed')
            self.buf += d
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def cmd(self, text):
        """Reads until the tagged reply, scanning each octet once (the
        messages here never hold a CRLF followed by this run's tags)."""
        self.n += 1
        tag = b'x%d ' % self.n
        self.s.sendall(tag + text.encode() + b'\r\n')
        data = bytearray(self.buf)
        scanned = 0
        while True:
            start = 0 if data.startswith(tag) else -1
            if start < 0:
                i = data.find(b'\r\n' + tag, max(0, scanned - len(tag) - 2))
                start = i + 2 if i >= 0 else -1
            if start >= 0:
                end = data.find(b'\r\n', start)
                if end >= 0:
                    if not data[start:end].startswith(tag + b'OK'):
                        raise RuntimeError('%s: %r' % (text, bytes(data[start:end])))
                    self.buf = bytes(data[end + 2:])
                    return bytes(data[:end + 2])
            scanned = len(data)
            d = self.s.recv(262144)
            if not d:
                raise ConnectionError('closed')
            data += d

    def close(self):
        self.s.close()


def run_ops(port, n, reps):
    res = {}

    def login_select():
        c = Raw(port)
        c.cmd('LOGIN alice "%s"' % PASSWORD)
        c.cmd('SELECT INBOX')
        c.cmd('LOGOUT') if False else None
        c.close()
    res['login+SELECT'] = timed(login_select, reps)
    c = Raw(port)
    c.cmd('LOGIN alice "%s"' % PASSWORD)
    c.cmd('SELECT INBOX')
    res['UID FETCH 1:* (FLAGS)'] = timed(lambda: c.cmd('UID FETCH 1:* (FLAGS)'), reps)
    res['headers of last 100'] = timed(lambda: c.cmd('FETCH %d:%d (BODY.PEEK[HEADER])' % (n - 99, n)), reps)
    res['SEARCH SUBJECT'] = timed(lambda: c.cmd('SEARCH SUBJECT "bench message %d"' % (n // 2)), reps)
    out = c.cmd('SEARCH SUBJECT "bench message %d"' % (n // 2))
    if b'* SEARCH %d\r\n' % (n // 2 + 1) not in out:
        print('# warning: SEARCH answered %r' % out[:80])
    c.close()
    return res


def idle_memory(connect, pids_fn, count):
    before = pss_kb(pids_fn())
    conns = []
    for i in range(count):
        m = connect()
        m.select('INBOX')
        tag = m._new_tag()
        m.send(tag + b' IDLE\r\n')
        m.readline()
        conns.append(m)
    time.sleep(1.0)
    after = pss_kb(pids_fn())
    for m in conns:
        try:
            m.send(b'DONE\r\n')
            m.shutdown()
        except OSError:
            pass
    return before, after


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--messages', type=int, default=10000)
    ap.add_argument('--idle', type=int, default=500)
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--only', choices=('mbsync',), help='run only the mbsync syncs')
    ap.add_argument('--no-fsync', action='store_true', help='mbsync does not fsync its maildir')
    a = ap.parse_args()
    global MBSYNC_FSYNC
    MBSYNC_FSYNC = not a.no_fsync
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), max(hard, 8192)))

    print('# filling both mailboxes with %d messages...' % a.messages)
    n = Node(conf={'auth.fail_delay': '0', 'imap.max_per_user': '0', 'max_connections': '2000',
                   'limit.connections_per_ip': '0'})
    n.cli('user', 'add', 'alice', input=PASSWORD + '\n')
    m = n.imap(timeout=120)
    m.login('alice', PASSWORD)
    for i in range(a.messages):
        m.append('INBOX', None, None, message(i))
    m.logout()
    dv = Dovecot(PASSWORD, extra='default_process_limit = 2000\ndefault_client_limit = 4000\n'
                                 'protocol imap {\n  mail_max_userip_connections = 5000\n}\n'
                                 'service imap {\n  process_limit = 2000\n}\n'
                                 'service imap-login {\n  process_min_avail = 1\n}\n'
                                 # COMPRESS=DEFLATE in Dovecot is the imap_zlib plugin.
                                 'mail_plugins = $mail_plugins zlib\n'
                                 'protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n', hashed=True)
    m = dv.imap()
    for i in range(a.messages):
        m.append('INBOX', None, None, message(i))
    m.logout()

    def ours():
        c = imaplib.IMAP4('127.0.0.1', n.port('imap'), timeout=600)
        c.login('alice', PASSWORD)
        return c

    def theirs():
        c = imaplib.IMAP4('127.0.0.1', dv.port, timeout=600)
        c.login('alice', PASSWORD)
        return c
    try:
        print('%-24s %12s %12s %8s' % ('operation', 'mailnode', 'dovecot', 'ratio'))
        if not a.only:
            r_ours = run_ops(n.port('imap'), a.messages, a.reps)
            r_dv = run_ops(dv.port, a.messages, a.reps)
            for k in r_ours:
                print('%-24s %10.1fms %10.1fms %8.2f' % (k, r_ours[k] * 1000, r_dv[k] * 1000,
                                                        r_ours[k] / r_dv[k]))
        work = tempfile.mkdtemp(prefix='mailnode-bench-mbsync-')
        try:
            for hide in (True, False):
                w = os.path.join(work, 'plain' if hide else 'z')
                os.mkdir(w)
                os.mkdir(os.path.join(w, 'a'))
                os.mkdir(os.path.join(w, 'b'))
                b1, t1, c1 = mbsync_bytes(n.port('imap'), os.path.join(w, 'a'), hide, lambda: [n.proc.pid])
                b2, t2, c2 = mbsync_bytes(dv.port, os.path.join(w, 'b'), hide, dv.pids)
                what = 'without COMPRESS' if hide else 'with COMPRESS'
                print('%-24s %10.2fMB %10.2fMB %8.2f' % ('mbsync bytes ' + what, b1 / 1e6, b2 / 1e6, b1 / b2))
                print('%-24s %11.1fs %11.1fs %8.2f' % ('mbsync time ' + what, t1, t2, t1 / t2))
                print('%-24s %11.2fs %11.2fs %8.2f' % ('server CPU ' + what, c1, c2, c1 / max(c2, 0.01)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if a.only:
            return
        o0, o1 = idle_memory(ours, lambda: [n.proc.pid], a.idle)
        d0, d1 = idle_memory(theirs, dv.pids, a.idle)
        print('%-24s %10.1fMB %10.1fMB %8.3f' % ('PSS, %d IDLE clients' % a.idle, (o1 - o0) / 1024,
                                                  (d1 - d0) / 1024, (o1 - o0) / max(1, d1 - d0)))
        print('%-24s %10.1fMB %10.1fMB' % ('PSS total with them', o1 / 1024, d1 / 1024))
    finally:
        dv.close()
        n.close()


if __name__ == '__main__':
    main()
