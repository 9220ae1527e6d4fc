"""Link watching (netlink): two network namespaces joined by a veth pair,
the daemon in A, an SMTP sink in B at the relayhost address.  Mail queued
while the link is down leaves when it comes back, with no `mailnode
flush`; a link flapping during a batch loses nothing and duplicates
nothing.  Needs root and `ip netns`."""
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time

import harness
from harness import BIN, Node, check, diag, test, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
SINK = os.path.join(HERE, 'sink.py')
TAG = '%d' % (os.getpid() % 100000)
NS_A, NS_B = 'mnA-' + TAG, 'mnB-' + TAG
VETH_A, VETH_B = 'mnva' + TAG, 'mnvb' + TAG        # at most 15 characters
ADDR_A, ADDR_B = '10.77.0.1', '10.77.0.2'
SINK_PORT = 2525
SMTP_PORT = 2526
# The sink answers each message's data after this long, so that a batch
# of 50 takes a few seconds and the link flaps in the middle of sessions.
DATA_DELAY = 0.1


def ip(*args, check_rc=True, timeout=20):
    p = subprocess.run(['ip'] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise RuntimeError('ip %s: %s' % (' '.join(args), p.stderr.decode().strip()))
    return p.stdout.decode()


def can_run():
    """None if the test can run here, else why not."""
    if os.geteuid() != 0:
        return 'needs root (network namespaces)'
    if not shutil.which('ip'):
        return 'the ip command (iproute2) is not installed'
    probe = 'mnprobe-' + TAG
    try:
        ip('netns', 'add', probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return '`ip netns add` does not work here: %s' % e
    ip('netns', 'del', probe, check_rc=False)
    return None


def link(state):
    ip('-n', NS_A, 'link', 'set', VETH_A, state)


def setup_net():
    ip('netns', 'add', NS_A)
    ip('netns', 'add', NS_B)
    ip('link', 'add', VETH_A, 'netns', NS_A, 'type', 'veth', 'peer', 'name', VETH_B, 'netns', NS_B)
    for ns, dev, addr in ((NS_A, VETH_A, ADDR_A), (NS_B, VETH_B, ADDR_B)):
        ip('-n', ns, 'link', 'set', 'lo', 'up')
        ip('-n', ns, 'addr', 'add', addr + '/24', 'dev', dev)
        ip('-n', ns, 'link', 'set', dev, 'up')


def teardown_net():
    for ns in (NS_A, NS_B):
        out = ''
        try:
            out = ip('netns', 'pids', ns, check_rc=False)
        except Exception:
            pass
        for pid in out.split():
            try:
                os.kill(int(pid), 9)
            except (ValueError, OSError):
                pass
        # Deleting a namespace destroys the veth end inside it.
        try:
            ip('netns', 'del', ns, check_rc=False)
        except Exception as e:
            diag('teardown %s: %s' % (ns, e))
    left = ip('netns', 'list', check_rc=False)
    if NS_A in left or NS_B in left:
        check('namespaces_removed', False, left)


class NsSink:
    """sink.py running in namespace B; messages come back as JSON lines."""

    def __init__(self, path):
        self.path = path
        self.proc = subprocess.Popen(
            ['ip', 'netns', 'exec', NS_B, sys.executable, SINK, '--host', ADDR_B,
             '--port', str(SINK_PORT), '--jsonl', path, '--data-delay', str(DATA_DELAY)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline() if ready else b''
        if not line.startswith(b'ready'):
            self.stop()
            raise RuntimeError('sink did not start: %r %r' % (line, self.proc.stderr.read()[-500:]))

    def records(self):
        try:
            with open(self.path) as f:
                return [json.loads(l) for l in f if l.strip()]
        except FileNotFoundError:
            return []

    def message_ids(self):
        return [r['message_id'] for r in self.records()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_in_ns(n):
    """Starts the node's daemon in namespace A (`ip netns exec` execs, so
    the process is mailnode itself) and waits for its control socket."""
    log = open(n.log_path, 'ab')
    try:
        n.proc = subprocess.Popen(['ip', 'netns', 'exec', NS_A, BIN, '-c', n.conf_path, 'run'],
                                  cwd=n.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    finally:
        log.close()

    def pong():
        if n.proc.poll() is not None:
            raise RuntimeError('mailnode exited with %s: %s' % (n.proc.returncode, n.log()[-1000:]))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(n.db + '.ctl')
            s.sendall(b'PING\n')
            return s.recv(16) == b'PONG\n'
        except OSError:
            return False
        finally:
            s.close()
    if not wait_until(pong, 10):
        raise RuntimeError('control socket did not answer; log:\n' + n.log()[-1000:])


SUBMIT = r'''
import smtplib, sys
port, tag, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = smtplib.SMTP('127.0.0.1', port, timeout=30)
for i in range(count):
    mid = '<%s-%d@link.test>' % (tag, i)
    c.sendmail('sender@example.test', ['peer@remote.test'],
               ('From: sender@example.test\r\nTo: peer@remote.test\r\nMessage-ID: %s\r\n'
                'Subject: %s %d\r\n\r\n' % (mid, tag, i) + 'line of text\r\n' * 50).encode())
    print(mid)
c.quit()
'''


def submit_in_ns(tag, count):
    p = subprocess.run(['ip', 'netns', 'exec', NS_A, sys.executable, '-c', SUBMIT,
                        str(SMTP_PORT), tag, str(count)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if p.returncode != 0:
        raise RuntimeError('submission failed: %s' % p.stderr.decode()[-500:])
    return p.stdout.decode().split()


def flap(times):
    for _ in range(times):
        time.sleep(0.4)
        link('down')
        time.sleep(0.3)
        link('up')


def queue_count(n):
    rc, out, err = n.cli('queue', 'count')
    return int(out.strip()) if rc == 0 and out.strip().isdigit() else None


@test
def link_events():
    why = can_run()
    if why:
        check('link_test_can_run', False, why)
        return
    n = sink = None
    try:
        setup_net()
        n = Node(start=False, listeners=(), name='linked')
        n.configure({'listen.smtp': '127.0.0.1:%d' % SMTP_PORT,
                     'relayhost': '%s:%d' % (ADDR_B, SINK_PORT),
                     # Only a link event can bring delivery back quickly.
                     'retry.initial': '1h', 'retry.max': '1h',
                     'smtp.timeout.connect': '5s'})
        sink = NsSink(n.path('sink.jsonl'))
        start_in_ns(n)
        check('link_watch_started', 'link: watching' in n.log(), n.log()[-500:])

        # 1. Down, queue, up: delivered without a manual flush.
        link('down')
        ids = submit_in_ns('down', 3)
        check('queued_while_down', wait_until(lambda: queue_count(n) == 3, 10),
              'queue count %s' % queue_count(n))
        time.sleep(1.5)                 # the first attempt fails: network unreachable
        check('nothing_delivered_while_down', sink.records() == [], sink.records())
        t0 = time.monotonic()
        link('up')
        got = wait_until(lambda: sorted(sink.message_ids()) == sorted(ids), 10)
        check('delivered_after_link_up', got, '%d of 3 after %.1f s; log: %s'
              % (len(sink.records()), time.monotonic() - t0, n.log()[-800:]))
        if got:
            diag('link up -> delivered in %.1f s' % (time.monotonic() - t0))
        check('link_event_logged', 'starting a delivery run' in n.log(), n.log()[-500:])
        check('queue_empty', wait_until(lambda: queue_count(n) == 0, 5), queue_count(n))

        # 2. Flapping during a batch: every message once.  The link goes
        # down eight times while the 50 messages are submitted and, at the
        # sink's pace, delivered.
        before = len(sink.records())
        flapper = threading.Thread(target=flap, args=(8,))
        flapper.start()
        try:
            batch = submit_in_ns('flap', 50)
        finally:
            flapper.join(60)
        link('up')
        mid = len([m for m in sink.message_ids() if m in set(batch)])
        diag('after the flapping: %d of %d arrived' % (mid, len(batch)))
        done = wait_until(lambda: set(batch) <= set(sink.message_ids()), 60, 0.2)
        got_ids = [m for m in sink.message_ids()[before:] if m in set(batch)]
        missing = set(batch) - set(got_ids)
        dups = len(got_ids) - len(set(got_ids))
        diag('flapping: %d sent, %d distinct received, %d duplicates, %d missing'
             % (len(batch), len(set(got_ids)), dups, len(missing)))
        check('flap_all_delivered', done and not missing, '%d missing: %s; log: %s'
              % (len(missing), sorted(missing)[:5], n.log()[-800:]))
        log = n.log().lower()
        explained = any(k in log for k in ('after data', 'after the data', 'in doubt', 'after end of data'))
        check('flap_no_unexplained_duplicates', dups == 0 or explained,
              '%d duplicates and no connection cut after data in the log' % dups)
        check('flap_queue_empty', wait_until(lambda: queue_count(n) == 0, 10), queue_count(n))
        runs = n.log().count('starting a delivery run')
        deferred = n.log().count('deferred:')
        diag('link-triggered delivery runs: %d; deferrals logged: %d' % (runs, deferred))
    finally:
        if n is not None:
            n.stop()
        if sink is not None:
            sink.stop()
        teardown_net()
        if n is not None:
            n.close()


harness.main()
