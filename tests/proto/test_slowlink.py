"""Slow links: timeouts follow progress, not deadlines.

A peer that trickles a message a few hundred octets at a time, for much
longer than the timeout, keeps its session in both directions (inbound
DATA and BDAT, outbound DATA and BDAT); a peer that stops moving octets
altogether is dropped after the timeout.  The trickling peers are python
sockets that read or write a little per interval; every wait is bounded."""
import socket
import threading
import time

import harness
from harness import Node, check, test, wait_until
from sink import Sink

TIMEOUT = 2          # smtp.timeout.command and smtp.timeout.data, seconds
TRICKLE_FOR = 3 * TIMEOUT + 1


def conf(extra=None):
    c = {'smtp.timeout.command': '%ds' % TIMEOUT, 'smtp.timeout.data': '%ds' % TIMEOUT,
         'retry.initial': '1s', 'retry.max': '2s'}
    c.update(extra or {})
    return c


def text_body(size):
    line = b'The quick brown fox jumps over the lazy dog, slowly, over a radio link.\r\n'
    head = b'From: a@example.test\r\nTo: b@remote.test\r\nSubject: trickle\r\n\r\n'
    return head + line * (size // len(line))


def queued(n):
    rc, out, err = n.cli('queue', 'count')
    return int(out.strip()) if rc == 0 and out.strip().isdigit() else -1


def with_user(n):
    rc, out, err = n.cli('user', 'add', 'bob', input='secret-pass\n')
    assert rc == 0, err
    return n


def start_txn(c, rcpt='bob@example.test'):
    c.recv_reply()
    check_reply(c.cmd('EHLO trickle.test'), 250)
    check_reply(c.cmd('MAIL FROM:<a@example.test>'), 250)
    check_reply(c.cmd('RCPT TO:<%s>' % rcpt), 250)


def check_reply(r, code):
    if r.code != code:
        raise AssertionError('expected %d, got %d %s' % (code, r.code, r.text))


def trickle(c, data, seconds):
    """Send data in equal pieces spread over about `seconds`."""
    pieces = 40
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        c.send(data[i:i + step])
        time.sleep(seconds / pieces)


@test
def inbound_data_trickle_is_accepted():
    with Node(conf=conf()) as n:
        with_user(n)
        c = n.raw('smtp', timeout=30)
        start_txn(c)
        check_reply(c.cmd('DATA'), 354)
        body = text_body(8000)
        trickle(c, body + b'.\r\n', TRICKLE_FOR)
        r = c.recv_reply()
        check('inbound_data_trickle_250', r.code == 250, '%d %s' % (r.code, r.text))
        c.close()


@test
def inbound_bdat_trickle_is_accepted():
    with Node(conf=conf()) as n:
        with_user(n)
        c = n.raw('smtp', timeout=30)
        start_txn(c)
        body = text_body(8000)
        c.send(b'BDAT %d LAST\r\n' % len(body))
        trickle(c, body, TRICKLE_FOR)
        r = c.recv_reply()
        check('inbound_bdat_trickle_250', r.code == 250, '%d %s' % (r.code, r.text))
        c.close()


@test
def inbound_stall_times_out():
    with Node(conf=conf()) as n:
        with_user(n)
        c = n.raw('smtp', timeout=30)
        start_txn(c)
        check_reply(c.cmd('DATA'), 354)
        c.send(text_body(2000))
        # Nothing more: after the data timeout the server says 421 and closes.
        r = c.recv_reply(timeout=5 * TIMEOUT)
        check('inbound_stall_421', r.code == 421, '%d %s' % (r.code, r.text))
        check('inbound_stall_closed', c.closed(timeout=5 * TIMEOUT))
        check('inbound_stall_nothing_stored', queued(n) == 0)


class SlowPeer:
    """An SMTP server that reads message data `rate` octets per tick
    (tick 0.05 s), or stops reading after `stall_after` octets."""

    def __init__(self, chunking, rate=2048, stall_after=None):
        self.chunking = chunking
        self.rate = rate
        self.stall_after = stall_after
        self.messages = []
        self.stop = threading.Event()
        self.ls = socket.socket()
        # A small receive buffer: the sender really waits for our reads.
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.ls.bind(('127.0.0.1', 0))
        self.ls.listen(4)
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.session(s)
            except (OSError, ValueError):
                pass
            finally:
                s.close()

    def session(self, s):
        s.settimeout(30)
        buf = b''

        def line():
            nonlocal buf
            while b'\r\n' not in buf:
                d = s.recv(4096)
                if not d or self.stop.is_set():
                    raise ValueError('closed')
                buf += d
            l, buf = buf.split(b'\r\n', 1)
            return l

        def body(n=None):
            """Slowly: n octets (BDAT) or up to CRLF.CRLF (DATA)."""
            nonlocal buf
            got = buf
            buf = b''
            while (n is not None and len(got) < n) or (n is None and b'\r\n.\r\n' not in got):
                if self.stall_after is not None and len(got) >= self.stall_after:
                    # Stop reading: wait for the sender to give up (bounded).
                    for _ in range(400):
                        if self.stop.is_set():
                            break
                        time.sleep(0.05)
                    raise ValueError('stalled')
                d = s.recv(self.rate)
                if not d:
                    raise ValueError('closed')
                got += d
                time.sleep(0.05)
            if n is not None:
                buf = got[n:]
                return got[:n]
            i = got.index(b'\r\n.\r\n')
            buf = got[i + 5:]
            return got[:i + 2]

        s.sendall(b'220 slow.test ESMTP\r\n')
        while True:
            l = line()
            verb = l[:4].upper()
            if verb == b'EHLO':
                s.sendall(b'250-slow.test\r\n250-PIPELINING\r\n' +
                          (b'250-CHUNKING\r\n' if self.chunking else b'') + b'250 8BITMIME\r\n')
            elif verb == b'BDAT':
                n = int(l.split()[1])
                self.messages.append(body(n))
                s.sendall(b'250 2.0.0 ok\r\n')
            elif verb == b'DATA':
                s.sendall(b'354 go\r\n')
                self.messages.append(body())
                s.sendall(b'250 2.0.0 ok\r\n')
            elif verb == b'QUIT':
                s.sendall(b'221 bye\r\n')
                return
            else:
                s.sendall(b'250 ok\r\n')

    def close(self):
        self.stop.set()
        self.ls.close()
        self.t.join(15)


def outbound(chunking):
    # 600 KB at about 40 KB/s through a 4 KB window: much longer than the
    # timeouts, and far more than the socket buffers hold.
    peer = SlowPeer(chunking, rate=2048)
    try:
        with Node(conf=conf({'relayhost': '127.0.0.1:%d' % peer.port})) as n:
            body = text_body(600 * 1024)
            s = n.smtp(timeout=30)
            s.sendmail('a@example.test', ['b@remote.test'], body)
            s.quit()
            got = wait_until(lambda: peer.messages, timeout=60, interval=0.2)
            name = 'outbound_%s_trickle' % ('bdat' if chunking else 'data')
            check(name + '_arrives', got, n.log()[-1500:])
            if got:
                check(name + '_intact', peer.messages[0].endswith(body),
                      len(peer.messages[0]))
                check(name + '_dequeued', wait_until(lambda: queued(n) == 0, timeout=10))
            check(name + '_no_timeout', 'did not answer in time' not in n.log(), n.log()[-1500:])
    finally:
        peer.close()


@test
def outbound_data_trickle_is_delivered():
    outbound(False)


@test
def outbound_bdat_trickle_is_delivered():
    outbound(True)


@test
def outbound_stall_times_out():
    peer = SlowPeer(True, rate=4096, stall_after=64 * 1024)
    try:
        with Node(conf=conf({'relayhost': '127.0.0.1:%d' % peer.port, 'retry.initial': '1h'})) as n:
            body = text_body(2 * 1024 * 1024)
            s = n.smtp(timeout=30)
            s.sendmail('a@example.test', ['b@remote.test'], body)
            s.quit()
            gave_up = wait_until(lambda: 'did not answer in time' in n.log(), timeout=8 * TIMEOUT + 10,
                                 interval=0.2)
            check('outbound_stall_gives_up', gave_up, n.log()[-1500:])
            check('outbound_stall_still_queued', queued(n) == 1)
    finally:
        peer.close()


@test
def pacing_rate_hint():
    # A bad hint stops the start with the reason; a good one paces but delivers.
    n = Node(conf={'pacing.rate': '[relayhost]=fast'}, start=False)
    try:
        n.start()
        check('pacing_rate_bad_refused', False, 'started with a bad pacing.rate')
    except RuntimeError as e:
        check('pacing_rate_bad_refused', 'pacing.rate' in n.log(), n.log()[-500:])
    n.close()
    peer = SlowPeer(True, rate=65536)
    try:
        with Node(conf=conf({'relayhost': '127.0.0.1:%d' % peer.port,
                             'pacing.rate': '[relayhost]=8M, upstream=64k'})) as n:
            body = text_body(300 * 1024)
            s = n.smtp(timeout=30)
            s.sendmail('a@example.test', ['b@remote.test'], body)
            s.quit()
            got = wait_until(lambda: peer.messages, timeout=30, interval=0.2)
            check('pacing_rate_delivers', got and peer.messages[0].endswith(body), n.log()[-800:])
    finally:
        peer.close()


def batch_order(large_conf):
    """Queue one 400 KB message and then 20 short ones while the relay is
    down, bring up a relay that reads 64 KB/s, flush: the order in which
    they arrive over the one session."""
    sink = Sink(start=False, read_rate=64 * 1024)
    try:
        c = conf({'relayhost': '127.0.0.1:%d' % sink.port, 'retry.initial': '1h', 'retry.max': '2h'})
        c.update(large_conf)
        with Node(conf=c) as n:
            s = n.smtp(timeout=30)
            big = text_body(400 * 1024).replace(b'Subject: trickle', b'Message-ID: <big@t>\r\nSubject: big')
            s.sendmail('a@example.test', ['b@remote.test'], big)
            for i in range(20):
                small = text_body(2048).replace(b'Subject: trickle', b'Message-ID: <s%d@t>\r\nSubject: s' % i)
                s.sendmail('a@example.test', ['b@remote.test'], small)
            s.quit()
            check_reply_ok = wait_until(lambda: queued(n) == 21, timeout=20)
            if not check_reply_ok:
                raise AssertionError('not queued: %d' % queued(n))
            sink.start()
            rc, out, err = n.cli('flush')
            if rc != 0:
                raise AssertionError('flush: %s' % err)
            if not sink.wait_for(21, timeout=120 * harness.TIME_SCALE):
                raise AssertionError('arrived: %d of 21; %s' % (len(sink.messages), n.log()[-800:]))
            ids = sink.message_ids()
            big_ok = [m for m in sink.messages if m.message_id == '<big@t>' and m.data.endswith(big)]
            return ids, len(big_ok) == 1, len(sink.sessions)
    finally:
        sink.stop()


@test
def small_before_large():
    ids, intact, sessions = batch_order({})
    check('small_before_large_last', ids[-1] == '<big@t>', ids)
    check('small_before_large_all_small_first', sorted(ids[:-1]) == sorted('<s%d@t>' % i for i in range(20)), ids)
    check('small_before_large_intact', intact)
    check('small_before_large_one_session', sessions == 1, sessions)


@test
def small_before_large_off():
    # delivery.large = 0: queue order, the large one (queued first) first.
    ids, intact, sessions = batch_order({'delivery.large': '0'})
    check('small_before_large_off_queue_order', ids[0] == '<big@t>', ids)
    check('small_before_large_off_intact', intact)


harness.main()
