"""Resumable transfers between mailnodes (XRESUME, resume.c).

Node a relays to node b through a TCP proxy that cuts the connection
after a number of octets, several times in a row.  With XRESUME the
message goes on where it stopped: it arrives once, byte-exact, and the
octets that crossed the "link" stay well under twice its size.  With
resume = no on b the same cuts make a send everything again (the test can
tell the two apart).  A raw client checks the server side: the offset it
reports, a wrong hash (451, partial dropped), a repeat after a lost 250
(same queue id, stored once), a restart of b in the middle, bad ids."""
import hashlib
import poplib
import random
import re
import socket
import threading
import time

import harness
from harness import Node, check, test, wait_until

PW = 'mbox-pass-1'
WORDS = ('the field station reports that the generator ran for six hours and the '
         'satellite modem kept its lock until the evening when the wind rose again '
         'please send the spare parts list with the next supply flight and confirm '
         'receipt of the water samples numbers twelve to forty').split()


def text_mail(seed, size):
    """Text with random words and random numbers: deflate gets ~3:1."""
    rnd = random.Random(seed)
    lines, n = [], 0
    while n < size:
        line = ' '.join(rnd.choice(WORDS) if rnd.random() < 0.7 else '%08x' % rnd.getrandbits(32)
                        for _ in range(rnd.randint(6, 12)))
        lines.append(line)
        n += len(line) + 2
    head = ('From: ops@field.test\r\nTo: bob@example.test\r\nSubject: big report %d\r\n'
            'Message-ID: <big-%d@field.test>\r\n\r\n' % (seed, seed))
    return (head + '\r\n'.join(lines) + '\r\n').encode()


class CuttingProxy:
    """Forwards 127.0.0.1:port to target; connection k (0-based) is cut
    after cuts[k] octets from the client when k < len(cuts).  Counts the
    octets forwarded in each direction over all connections."""

    def __init__(self, target_port, cuts):
        self.target = target_port
        self.cuts = list(cuts)
        self.up = 0                     # client -> server octets forwarded
        self.down = 0
        self.connections = 0
        self.cut_done = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(('127.0.0.1', 0))
        self.ls.listen(8)
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        self.threads = []
        t = threading.Thread(target=self.accept_loop, daemon=True)
        t.start()
        self.threads.append(t)

    def accept_loop(self):
        while not self.stop.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                k = self.connections
                self.connections += 1
            limit = self.cuts[k] if k < len(self.cuts) else None
            t = threading.Thread(target=self.serve, args=(c, limit), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def hard_close(s):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
        except OSError:
            pass
        s.close()

    def serve(self, c, limit):
        try:
            u = socket.create_connection(('127.0.0.1', self.target), timeout=10)
        except OSError:
            c.close()
            return
        socks = [c, u]
        for s in socks:
            s.settimeout(0.2)
        sent = 0
        idle_until = time.monotonic() + 120
        try:
            while not self.stop.is_set() and time.monotonic() < idle_until:
                moved = False
                for src, dst in ((c, u), (u, c)):
                    try:
                        d = src.recv(65536)
                    except socket.timeout:
                        continue
                    if not d:
                        return
                    moved = True
                    if src is c and limit is not None and sent + len(d) >= limit:
                        d = d[:limit - sent]
                        dst.sendall(d)
                        with self.lock:
                            self.up += len(d)
                            self.cut_done += 1
                        return          # the link drops
                    dst.sendall(d)
                    with self.lock:
                        if src is c:
                            self.up += len(d)
                            sent += len(d)
                        else:
                            self.down += len(d)
                if moved:
                    idle_until = time.monotonic() + 120
        except OSError:
            pass
        finally:
            for s in socks:
                self.hard_close(s)

    def close(self):
        self.stop.set()
        self.ls.close()
        for t in self.threads:
            t.join(5)


def add_user(n, name, pw=PW):
    harness.add_user(n, name, pw)


def mailbox(n, user):
    return harness.pop3_messages(n, user, PW, timeout=60)


def mailbox_count(n, user):
    try:
        p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=30)
    except OSError:
        return -1
    try:
        p.user(user)
        p.pass_(PW)
        return len(p.list()[1])
    finally:
        p.quit()


queued = harness.queue_count


def relay_through_cuts(name, size, cuts, a_conf=None, b_conf=None):
    """a -> proxy (cutting) -> b; returns (arrived messages, proxy, a log, b log, body)."""
    body = text_mail(size, size)
    b = Node(conf=b_conf or {}, name='b')
    proxy = None
    a = None
    try:
        add_user(b, 'bob')
        proxy = CuttingProxy(b.port('smtp'), cuts)
        c = {'relayhost': '127.0.0.1:%d' % proxy.port, 'retry.initial': '1s', 'retry.max': '1s',
             'local_domains': 'a.test'}
        c.update(a_conf or {})
        a = Node(conf=c, name='a')
        s = a.smtp(timeout=60)
        s.sendmail('ops@field.test', ['bob@example.test'], body)
        s.quit()
        done = wait_until(lambda: queued(a) == 0, timeout=(60 + 20 * len(cuts)) * harness.TIME_SCALE,
                          interval=0.3)
        check(name + '_delivered', done, a.log()[-1500:])
        # Nothing more arrives later (a duplicate would come within a retry).
        wait_until(lambda: mailbox_count(b, 'bob') > 1, timeout=2 * harness.TIME_SCALE, interval=0.3)
        got = mailbox(b, 'bob')
        return got, proxy, a.log(), b.log(), body
    finally:
        if a:
            a.close()
        if proxy:
            proxy.close()
        b.close()


@test
def resumed_across_cuts():
    size = 3 * 1024 * 1024
    cuts = [700 * 1024, 700 * 1024, 700 * 1024, 700 * 1024]
    got, proxy, alog, blog, body = relay_through_cuts('resume', size, cuts, b_conf={'compress': 'no'})
    check('resume_cut_several_times', proxy.cut_done == len(cuts), '%d cuts' % proxy.cut_done)
    check('resume_arrives_once', len(got) == 1, '%d copies' % len(got))
    check('resume_byte_exact', len(got) == 1 and got[0].endswith(body),
          [len(g) for g in got])
    ratio = proxy.up / len(body)
    harness.diag('resume: %d octets message, %d octets up the link over %d connections (%.2fx)'
                 % (len(body), proxy.up, proxy.connections, ratio))
    check('resume_link_octets_under_1_2x', ratio < 1.2, '%.2fx' % ratio)
    check('resume_sender_resumed', len(re.findall(r'resuming at octet [1-9]', alog)) >= 3, alog[-2000:])
    check('resume_receiver_held', 'octets held for the next attempt' in blog, blog[-2000:])


@test
def resumed_across_cuts_compressed():
    # Compression on (the default between mailnodes): offsets count the
    # message's octets, the link carries deflated ones.
    size = 2 * 1024 * 1024
    cuts = [200 * 1024, 200 * 1024, 200 * 1024]
    got, proxy, alog, blog, body = relay_through_cuts('resume_z', size, cuts)
    check('resume_z_cut_several_times', proxy.cut_done == len(cuts), '%d cuts' % proxy.cut_done)
    check('resume_z_arrives_once', len(got) == 1, '%d copies' % len(got))
    check('resume_z_byte_exact', len(got) == 1 and got[0].endswith(body))
    ratio = proxy.up / len(body)
    harness.diag('resume compressed: %d octets message, %d octets up the link over %d connections (%.2fx)'
                 % (len(body), proxy.up, proxy.connections, ratio))
    check('resume_z_link_octets_under_message', ratio < 1.0, '%.2fx' % ratio)
    check('resume_z_sender_resumed', 'resuming at octet' in alog, alog[-2000:])


@test
def without_resume_everything_again():
    # The control: b does not offer XRESUME; each attempt starts from zero.
    size = 3 * 1024 * 1024
    cuts = [900 * 1024, 900 * 1024, 900 * 1024, 900 * 1024]
    got, proxy, alog, blog, body = relay_through_cuts('noresume', size, cuts,
                                                      b_conf={'compress': 'no', 'resume': 'no'})
    check('noresume_arrives_once', len(got) == 1 and got[0].endswith(body), '%d copies' % len(got))
    ratio = proxy.up / len(body)
    harness.diag('no resume: %d octets message, %d octets up the link (%.2fx)' % (len(body), proxy.up, ratio))
    check('noresume_sends_again', ratio > 2.0, '%.2fx' % ratio)
    check('noresume_never_asked', 'XRESUME' not in alog and 'resuming at' not in alog)


class RefusingPeer:
    """A peer that offers XRESUME and CHUNKING and refuses every MAIL;
    it counts the octets that follow (a BDAT and its body)."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(('127.0.0.1', 0))
        self.ls.listen(4)
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        self.stop = threading.Event()
        self.mails = self.bdats = self.rsets = self.octets_after_mail = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.serve(c)
            except OSError:
                pass
            finally:
                c.close()

    def serve(self, c):
        c.settimeout(30)
        f = c.makefile('rb')
        c.sendall(b'220 refusing.test ESMTP\r\n')
        while True:
            line = f.readline(4096)
            if not line:
                return
            if self.mails:
                self.octets_after_mail += len(line)
            verb = line.split(b' ', 1)[0].strip().upper()
            if verb == b'EHLO':
                c.sendall(b'250-refusing.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n'
                          b'250-8BITMIME\r\n250-XRESUME\r\n250 SIZE 0\r\n')
            elif verb == b'MAIL':
                self.mails += 1
                c.sendall(b'550 5.7.1 Sender refused\r\n')
            elif verb == b'RCPT':
                c.sendall(b'503 5.5.1 MAIL first\r\n')
            elif verb == b'BDAT':
                self.bdats += 1
                n = int(line.split()[1])
                while n > 0:
                    d = f.read(min(n, 65536))
                    if not d:
                        return
                    n -= len(d)
                    self.octets_after_mail += len(d)
                c.sendall(b'503 5.5.1 MAIL first\r\n')
            elif verb == b'RSET':
                self.rsets += 1
                c.sendall(b'250 2.0.0 Ok\r\n')
            elif verb == b'QUIT':
                c.sendall(b'221 2.0.0 Bye\r\n')
                return
            else:
                c.sendall(b'502 5.5.1 Not here\r\n')

    def close(self):
        self.stop.set()
        self.ls.close()
        self.thread.join(5)


@test
def refused_mail_sends_no_body():
    """A resumable message waits for MAIL's reply before its BDAT; when MAIL
    is refused, no body follows, only RSET."""
    size = 300 * 1024
    body = text_mail(size, size)
    peer = RefusingPeer()
    a = None
    try:
        a = Node(conf={'relayhost': '127.0.0.1:%d' % peer.port, 'retry.initial': '1h',
                       'local_domains': 'field.test', 'compress': 'no'}, name='a')
        add_user(a, 'ops')
        s = a.smtp(timeout=60)
        s.sendmail('ops@field.test', ['bob@example.test'], body)
        s.quit()
        check('refused_bounced', wait_until(lambda: len(harness.pop3_messages(a, 'ops', PW)) == 1,
                                            timeout=60), a.log()[-1500:])
        harness.diag('refused MAIL: %d MAIL, %d BDAT, %d RSET, %d octets after MAIL' %
                     (peer.mails, peer.bdats, peer.rsets, peer.octets_after_mail))
        check('refused_mail_seen', peer.mails == 1, peer.mails)
        check('refused_no_bdat', peer.bdats == 0, peer.bdats)
        check('refused_no_body_sent', peer.octets_after_mail < 1024, peer.octets_after_mail)
    finally:
        if a:
            a.close()
        peer.close()


# ------------------------------------------------------------ raw client

def tid_for(data, qid='QIDTEST1', rd='0123456789abcdef'):
    return '%s.%s.%s' % (qid, rd, hashlib.blake2b(data, digest_size=32).hexdigest())


def expect(r, code, what):
    if r.code != code:
        raise AssertionError('%s: expected %d, got %d %s' % (what, code, r.code, r.text))


def txn(c, tid, size):
    expect(c.cmd('MAIL FROM:<ops@field.test> SIZE=%d XRESUME=%s' % (size, tid)), 250, 'MAIL')
    r = c.last
    expect(c.cmd('RCPT TO:<bob@example.test>'), 250, 'RCPT')
    m = re.search(r'XRESUME=(\d+)', r.text)
    return int(m.group(1)) if m else None


class Client:
    def __init__(self, n):
        self.c = n.raw('smtp', timeout=60)
        self.c.recv_reply()
        self.ehlo = self.c.cmd('EHLO field.test')
        self.last = None

    def cmd(self, line):
        self.last = self.c.cmd(line)
        return self.last

    def send(self, data):
        self.c.send(data)

    def recv_reply(self):
        return self.c.recv_reply(timeout=60)

    def close(self):
        self.c.close()


@test
def server_side():
    data = text_mail(7, 200 * 1024)
    tid = tid_for(data)
    with Node(conf={'compress': 'no'}) as n:
        add_user(n, 'bob')
        c = Client(n)
        check('server_advertises_xresume', 'XRESUME' in c.ehlo.text, c.ehlo.text)
        check('server_fresh_offset_0', txn(c, tid, len(data)) == 0)
        # 80000 octets of a BDAT that never ends: the link drops.
        c.send(b'BDAT %d LAST\r\n' % len(data) + data[:80000])
        time.sleep(0.3)
        c.close()
        c = Client(n)
        held = None
        for _ in range(int(50 * harness.TIME_SCALE)):
            held = txn(c, tid, len(data))
            if held:
                break
            c.cmd('RSET')
            time.sleep(0.1)
        check('server_reports_held', held == 80000, held)
        c.send(b'BDAT %d LAST\r\n' % (len(data) - held) + data[held:])
        r = c.recv_reply()
        check('server_resumed_accepted', r.code == 250, r.text)
        qid = r.text.split()[-1]
        # The 250 "was lost": the repeat is told everything is held and
        # gets the same queue id; nothing is stored twice.
        again = txn(c, tid, len(data))
        check('server_repeat_offset_full', again == len(data), again)
        c.send(b'BDAT 0 LAST\r\n')
        r = c.recv_reply()
        check('server_repeat_same_qid', r.code == 250 and r.text.split()[-1] == qid, r.text)
        c.cmd('QUIT')
        c.close()
        got = mailbox(n, 'bob')
        check('server_stored_once', len(got) == 1, len(got))
        check('server_byte_exact', len(got) == 1 and got[0].endswith(data))


@test
def server_wrong_hash_and_restart():
    data = text_mail(8, 150 * 1024)
    wrong = tid_for(data + b'x', qid='QIDWRONG')
    with Node(conf={'compress': 'no'}) as n:
        add_user(n, 'bob')
        c = Client(n)
        check('hash_fresh', txn(c, wrong, len(data)) == 0)
        c.send(b'BDAT %d LAST\r\n' % len(data) + data)
        r = c.recv_reply()
        check('hash_mismatch_451', r.code == 451, r.text)
        check('hash_partial_dropped', txn(c, wrong, len(data)) == 0)
        c.cmd('RSET')
        # Held octets survive a restart of the receiver.
        tid = tid_for(data, qid='QIDRESTART')
        check('restart_fresh', txn(c, tid, len(data)) == 0)
        c.send(b'BDAT %d LAST\r\n' % len(data) + data[:100000])
        time.sleep(0.3)
        c.close()
        ok = wait_until(lambda: 'octets held for the next attempt' in n.log(), timeout=10 * harness.TIME_SCALE)
        check('restart_saved', ok, n.log()[-800:])
        n.restart()
        c = Client(n)
        held = txn(c, tid, len(data))
        check('restart_held', held == 100000, '%r %s' % (held, n.log()[-1500:]))
        c.send(b'BDAT %d LAST\r\n' % (len(data) - held) + data[held:])
        r = c.recv_reply()
        check('restart_accepted', r.code == 250, r.text)
        # Bad ids: a clear 501, the session goes on.
        c.cmd('RSET')
        r = c.cmd('MAIL FROM:<ops@field.test> XRESUME=short')
        check('bad_tid_501', r.code == 501, r.text)
        r = c.cmd('MAIL FROM:<ops@field.test> XRESUME=%s' % ('Q' * 10 + '.' + 'g' * 64))
        check('bad_tid_hex_501', r.code == 501, r.text)
        r = c.cmd('MAIL FROM:<ops@field.test>')
        check('bad_tid_session_goes_on', r.code == 250, r.text)
        c.close()
        got = mailbox(n, 'bob')
        check('restart_stored_once_exact', len(got) == 1 and got[0].endswith(data), len(got))


@test
def resume_off_not_advertised():
    with Node(conf={'resume': 'no'}) as n:
        c = Client(n)
        check('resume_off_no_ehlo', 'XRESUME' not in c.ehlo.text, c.ehlo.text)
        r = c.cmd('MAIL FROM:<ops@field.test> XRESUME=%s' % tid_for(b'x'))
        check('resume_off_param_555', r.code == 555, r.text)
        c.close()


harness.main()
