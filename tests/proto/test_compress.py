"""COMPRESS DEFLATE between mailnodes (RFC 4978 model, zio.c).

Two mailnodes relay, release by ETRN and turn around by ATRN over one raw
deflate stream per direction; messages arrive byte-exact.  The extension
is advertised only inside TLS when TLS is possible, can be switched off
per destination (compress.never) or in all (compress = no), is never sent
to peers that do not offer it (our sink, Postfix's smtp-sink), and
Postfix delivering to a mailnode is unaffected.  A raw client checks the
server side: the plain 220, limits on inflated octets, a deflate bomb and
a corrupt stream."""
import os
import poplib
import random
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import zlib

import harness
from harness import Node, check, test, wait_until, free_ports
from sink import Sink

ROOT = harness.ROOT
PFI = os.path.join(ROOT, 'bench', 'lib', 'postfix-instance.sh')
PW = 'mbox-pass-1'
UPW = 'field-secret-1'
SITE = 'site.test'

WORDS = ('the field station reports that the generator ran for six hours and the '
         'satellite modem kept its lock until the evening when the wind rose again '
         'please send the spare parts list with the next supply flight and confirm '
         'receipt of the water samples numbers twelve to forty').split()


def text_mail(i, size, rcpt='bob@example.test'):
    """Realistic text: varied words in wrapped lines, some dot lines."""
    rnd = random.Random(i)
    lines = []
    n = 0
    while n < size:
        line = ' '.join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 12)))
        if rnd.random() < 0.03:
            line = '.' + line           # dot-stuffing exercised
        lines.append(line)
        n += len(line) + 2
    head = ('From: ops@field.test\r\nTo: %s\r\nSubject: report %d\r\n'
            'Message-ID: <report-%d@field.test>\r\n\r\n' % (rcpt, i, i))
    return (head + '\r\n'.join(lines) + '\r\n').encode()


def binary_mail(i, size):
    rnd = random.Random(1000 + i)
    raw = bytes(rnd.getrandbits(8) for _ in range(size))
    body = raw.replace(b'\r', b'').replace(b'\n', b'').replace(b'\0', b'x')
    body = b'\r\n'.join(body[k:k + 900] for k in range(0, len(body), 900))
    return (b'From: ops@field.test\r\nTo: bob@example.test\r\nSubject: binary %d\r\n'
            b'Content-Transfer-Encoding: 8bit\r\n\r\n' % i) + body + b'\r\n'


def add_user(n, name, pw=PW):
    harness.add_user(n, name, pw)


def mailbox(n, user):
    return harness.pop3_messages(n, user, PW, timeout=30)


queued = harness.queue_count


def compressed_sessions(log):
    """[(plain_out, raw_out, plain_in, raw_in)] from the close log lines."""
    return [tuple(int(x) for x in m) for m in re.findall(
        r'compressed session: sent (\d+) octets as (\d+), received (\d+) as (\d+)', log)]


def unstuffed(body):
    """What arrives: the same text (POP3 retr undoes dot-stuffing)."""
    return body


def pair(a_conf=None, b_conf=None):
    b = Node(conf=b_conf or {}, name='b')
    add_user(b, 'bob')
    c = {'relayhost': '127.0.0.1:%d' % b.port('smtp'), 'retry.initial': '1s', 'retry.max': '2s',
         'local_domains': 'a.test'}
    c.update(a_conf or {})
    a = Node(conf=c, name='a')
    return a, b


def relay(a, msgs, rcpt='bob@example.test'):
    s = a.smtp(timeout=60)
    try:
        for m in msgs:
            s.sendmail('ops@field.test', [rcpt], m)
    finally:
        s.quit()


def same_text(got, m):
    """got ends with m, or (a relay that adds header fields such as Date:
    did) its body and Subject: are m's."""
    if got.endswith(m):
        return True
    gh, _, gb = got.partition(b'\r\n\r\n')
    mh, _, mb = m.partition(b'\r\n\r\n')
    subj = [l for l in mh.split(b'\r\n') if l.startswith(b'Subject:')]
    return gb == mb and subj and subj[0] in gh.split(b'\r\n')


def arrived_exact(b, msgs, timeout=60, loose=False):
    got = wait_until(lambda: len(mailbox(b, 'bob')) >= len(msgs), timeout, 0.3)
    if not got:
        return 'only %d of %d arrived' % (len(mailbox(b, 'bob')), len(msgs))
    box = mailbox(b, 'bob')
    for m in msgs:
        if sum(1 for x in box if (same_text(x, m) if loose else x.endswith(m))) != 1:
            return 'message %r not found exactly once' % m[:60]
    return None


@test
def mailnode_pair_round_trip_compressed():
    a, b = pair()
    with a, b:
        msgs = [text_mail(i, 2000 + 500 * i) for i in range(10)] + \
               [text_mail(99, 1200 * 1024), binary_mail(1, 40000)]
        relay(a, msgs)
        diff = arrived_exact(b, msgs)
        check('pair_byte_exact', diff is None, diff or '')
        if not check('pair_queue_empty', wait_until(lambda: queued(a) == 0, 10)):
            harness.diag(a.log()[-3000:], b.log()[-3000:])
        sessions = wait_until(lambda: compressed_sessions(a.log()), 10)
        check('pair_compressed', sessions, a.log()[-1500:])
        if sessions:
            plain, raw = sum(s[0] for s in sessions), sum(s[1] for s in sessions)
            harness.diag('text+binary relay: %d octets sent as %d (%.2f)' % (plain, raw, raw / plain))
            check('pair_fewer_link_bytes', raw < plain * 0.7, '%d -> %d' % (plain, raw))
        check('pair_receiver_compressed', compressed_sessions(b.log()), b.log()[-800:])


def fast_switches(log):
    """Level-1 switches of each compressed session, from the close log lines."""
    return [int(x) for x in re.findall(r'compressed session: .* fast level (\d+) times', log)]


@test
def deflate_level_follows_the_link():
    """A fast link (loopback, the receiver keeps up) lets the sender drop to
    deflate level 1, where the compressor would limit the session; a slow
    link, where the socket pushes back, keeps level 6.  Both byte-exact."""
    a, b = pair()
    with a, b:
        msgs = [text_mail(7, 4 * 1024 * 1024)]
        relay(a, msgs)
        diff = arrived_exact(b, msgs, timeout=120)
        check('fast_link_byte_exact', diff is None, diff or '')
        n = wait_until(lambda: fast_switches(a.log()), 10)
        check('fast_link_level_1', n and max(n) >= 1, a.log()[-1500:])
    b = Node(name='b')
    add_user(b, 'bob')
    with b, harness.LinkProxy(b.port('smtp'), rate=150 * 1024) as px:
        a = Node(conf={'relayhost': '127.0.0.1:%d' % px.port, 'retry.initial': '1s', 'retry.max': '2s',
                       'local_domains': 'a.test'}, name='a')
        with a:
            msgs = [text_mail(8, 1024 * 1024)]
            relay(a, msgs)
            diff = arrived_exact(b, msgs, timeout=120)
            check('slow_link_byte_exact', diff is None, diff or '')
            n = wait_until(lambda: fast_switches(a.log()), 10)
            check('slow_link_compressed', n, a.log()[-1500:])
            check('slow_link_keeps_level_6', n and max(n) == 0, a.log()[-1500:])

class CompressPeer:
    """A peer that offers COMPRESS DEFLATE (as a mailnode does) and records
    what the client sent with its COMPRESS command, before any reply.  With
    refuse=True it answers COMPRESS with 504 and then takes plain SMTP."""

    def __init__(self, refuse=False, offer_sessions=None):
        self.refuse = refuse
        self.offer_sessions = offer_sessions    # COMPRESS offered in the first N sessions only
        self.sessions = []              # per COMPRESS: octets that came with it
        self.after_ehlo = []            # per session: octets that came with EHLO
        self.bodies = []
        self.stop = threading.Event()
        self.ls = socket.create_server(('127.0.0.1', 0))
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.stop.is_set():
            try:
                c, _ = self.ls.accept()
            except (socket.timeout, OSError):
                continue
            try:
                c.settimeout(20)
                self.serve(c, len(self.after_ehlo))
            except (OSError, zlib.error, ValueError):
                pass
            finally:
                c.close()

    def serve(self, c, number):
        buf, de, co = b'', None, None
        offer = self.offer_sessions is None or number < self.offer_sessions

        def say(line):
            out = line.encode() + b'\r\n'
            c.sendall(co.compress(out) + co.flush(zlib.Z_SYNC_FLUSH) if co else out)

        def more():
            d = c.recv(65536)
            if not d:
                raise ValueError('closed')
            return de.decompress(d) if de else d

        say('220 peer.test ESMTP')
        while True:
            while b'\r\n' not in buf:
                buf += more()
            line, _, buf = buf.partition(b'\r\n')
            verb = line.split(b' ')[0].upper()
            if verb == b'EHLO':
                buf += self.unasked(c)
                self.after_ehlo.append(len(buf))
                ext = ['peer.test', 'PIPELINING', '8BITMIME', 'CHUNKING'] + (['COMPRESS DEFLATE'] if offer else [])
                for i, e in enumerate(ext):
                    say('250%s%s' % (' ' if i == len(ext) - 1 else '-', e))
            elif verb == b'COMPRESS' and not offer:
                say('503 5.5.1 COMPRESS not offered')
            elif verb == b'COMPRESS':
                buf += self.unasked(c)
                self.sessions.append(len(buf))
                if self.refuse:
                    say('504 5.5.4 not today')
                    self.refuse = False     # a second session may compress
                    buf = b''
                    continue
                say('220 2.0.0 DEFLATE active')
                de, co = zlib.decompressobj(-15), zlib.compressobj(6, zlib.DEFLATED, -15)
                buf = de.decompress(buf)
            elif verb in (b'MAIL', b'RCPT', b'RSET', b'NOOP'):
                say('250 2.0.0 Ok')
            elif verb == b'BDAT':
                n = int(line.split(b' ')[1])
                while len(buf) < n:
                    buf += more()
                self.bodies.append(buf[:n])
                buf = buf[n:]
                say('250 2.0.0 Ok: %d octets' % n)
            elif verb == b'QUIT':
                say('221 2.0.0 Bye')
                return
            else:
                say('500 5.5.2 what')

    @staticmethod
    def unasked(c):
        """What the client sends within 0.5 s without waiting for a reply."""
        time.sleep(0.5)
        c.setblocking(False)
        try:
            return c.recv(65536)
        except BlockingIOError:
            return b''
        finally:
            c.setblocking(True)
            c.settimeout(20)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.ls.close()


@test
def compress_pipelined_with_the_mail():
    """The client sends its mail right behind COMPRESS, compressed, without
    waiting for the 220 (a round trip less on a long link); a peer that
    offers COMPRESS and then refuses it costs one session, loses nothing,
    and is then asked and waited for."""
    for refuse in (False, True):
        name = 'refused' if refuse else 'pipelined'
        with CompressPeer(refuse) as peer:
            n = Node(conf={'relayhost': '127.0.0.1:%d' % peer.port, 'retry.initial': '1s',
                           'retry.max': '2s'}, name=name)
            with n:
                msgs = [text_mail(20 + i, 3000, 'x@remote.test') for i in range(3)]
                relay(n, msgs, 'x@remote.test')
                ok = wait_until(lambda: queued(n) == 0 and len(peer.bodies) >= 3, 60, 0.2)
                check('%s_delivered' % name, ok, n.log()[-1500:])
                check('%s_byte_exact' % name, all(sum(1 for b in peer.bodies if b.endswith(m)) == 1
                                                  for m in msgs), '%d bodies' % len(peer.bodies))
                if not refuse:
                    check('pipelined_mail_sent_with_compress', peer.sessions and peer.sessions[0] > 0,
                          peer.sessions)
                    check('pipelined_first_ehlo_waited', peer.after_ehlo[:1] == [0], peer.after_ehlo)
                    # The next session goes on what the peer offered: EHLO,
                    # COMPRESS and the mail in one go.
                    more = [text_mail(30 + i, 3000, 'x@remote.test') for i in range(2)]
                    relay(n, more, 'x@remote.test')
                    ok = wait_until(lambda: queued(n) == 0 and len(peer.bodies) >= 5, 60, 0.2)
                    check('early_delivered', ok and all(sum(1 for b in peer.bodies if b.endswith(m)) == 1
                                                        for m in more), n.log()[-1500:])
                    check('early_ehlo_carries_the_mail', len(peer.after_ehlo) >= 2 and
                          peer.after_ehlo[-1] > 100, peer.after_ehlo)
                    # What the peer offered is kept in the database: the
                    # first session after a restart goes early as well.
                    n.restart()
                    last = [text_mail(35, 3000, 'x@remote.test')]
                    relay(n, last, 'x@remote.test')
                    ok = wait_until(lambda: queued(n) == 0 and len(peer.bodies) >= 6, 60, 0.2)
                    check('early_after_restart_delivered', ok and sum(1 for b in peer.bodies
                                                                      if b.endswith(last[0])) == 1)
                    check('early_after_restart', len(peer.after_ehlo) >= 3 and peer.after_ehlo[-1] > 100,
                          peer.after_ehlo)
                else:
                    check('refused_first_session_given_up', 'refused it' in n.log(), n.log()[-1500:])
                    check('refused_then_waits', len(peer.sessions) >= 2 and peer.sessions[-1] == 0,
                          peer.sessions)

@test
def compress_early_on_a_stale_offer():
    """A peer that offered COMPRESS last time and no longer does: the
    session sent on the old offer is given up, the mail goes again in the
    next one, plain, and arrives once."""
    with CompressPeer(offer_sessions=1) as peer:
        n = Node(conf={'relayhost': '127.0.0.1:%d' % peer.port, 'retry.initial': '1s', 'retry.max': '2s'},
                 name='stale')
        with n:
            first = [text_mail(40, 3000, 'x@remote.test')]
            relay(n, first, 'x@remote.test')
            check('stale_first_delivered', wait_until(lambda: queued(n) == 0 and len(peer.bodies) == 1, 60, 0.2),
                  n.log()[-1500:])
            more = [text_mail(41 + i, 3000, 'x@remote.test') for i in range(2)]
            relay(n, more, 'x@remote.test')
            ok = wait_until(lambda: queued(n) == 0 and len(peer.bodies) >= 3, 60, 0.2)
            check('stale_delivered_once', ok and all(sum(1 for b in peer.bodies if b.endswith(m)) == 1
                                                     for m in first + more), n.log()[-1500:])
            check('stale_session_given_up', 'no longer offers what it did' in n.log(), n.log()[-1500:])
            check('stale_then_waits', len(peer.after_ehlo) >= 3 and peer.after_ehlo[-1] == 0, peer.after_ehlo)


@test
def compress_never_and_compress_no():
    a, b = pair(a_conf={'compress.never': '[relayhost]'})
    with a, b:
        msgs = [text_mail(i, 3000) for i in range(3)]
        relay(a, msgs)
        diff = arrived_exact(b, msgs)
        check('never_delivered', diff is None, diff or '')
        check('never_not_compressed', not compressed_sessions(a.log() + b.log()), a.log()[-800:])
    a, b = pair(b_conf={'compress': 'no'})
    with a, b:
        c = b.raw('smtp')
        c.recv_reply()
        r = c.cmd('EHLO x.test')
        check('no_not_advertised', 'COMPRESS DEFLATE' not in r.lines, r.lines)
        r = c.cmd('COMPRESS DEFLATE')
        check('no_refused_503', r.code == 503, r.text)
        c.close()
        msgs = [text_mail(i, 3000) for i in range(3)]
        relay(a, msgs)
        diff = arrived_exact(b, msgs)
        check('no_delivered', diff is None, diff or '')
        check('no_not_compressed', not compressed_sessions(a.log() + b.log()))


@test
def foreign_peers_never_get_compress():
    with Sink() as sink:
        with Node(conf={'relayhost': '127.0.0.1:%d' % sink.port, 'retry.initial': '1s'}) as n:
            relay(n, [text_mail(i, 3000, 'x@remote.test') for i in range(5)], 'x@remote.test')
            check('sink_took_all', sink.wait_for(5, timeout=30))
            cmds = [c for s in sink.sessions for c in s.commands]
            check('sink_no_compress', not any(c.upper().startswith(b'COMPRESS') if isinstance(c, bytes)
                                              else c.upper().startswith('COMPRESS') for c in cmds), cmds[:20])
    sinkbin = shutil.which('smtp-sink') or '/usr/sbin/smtp-sink'
    if not os.path.exists(sinkbin):
        check('smtp_sink_installed', False, 'postfix smtp-sink not found (Debian package postfix)')
        return
    port = free_ports(1)[0]
    p = subprocess.Popen([sinkbin, '-u', 'nobody', '127.0.0.1:%d' % port, '100'],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Node(conf={'relayhost': '127.0.0.1:%d' % port, 'retry.initial': '1s'}) as n:
            relay(n, [text_mail(i, 3000, 'x@remote.test') for i in range(5)], 'x@remote.test')
            check('smtp_sink_took_all', wait_until(lambda: queued(n) == 0, timeout=30), n.log()[-500:])
            check('smtp_sink_no_compress', 'COMPRESS' not in n.log() and not compressed_sessions(n.log()))
    finally:
        p.terminate()
        p.wait(5)


def postfix_can_run():
    if os.geteuid() != 0:
        return 'needs root (a private Postfix instance)'
    for prog in ('/usr/sbin/postfix', '/usr/sbin/postconf'):
        if not os.access(prog, os.X_OK):
            return '%s is missing (Debian package postfix)' % prog
    return None


def pfi(*args, timeout=60):
    p = subprocess.run(['bash', '-c', '. "$1" && shift && "$@"', 'bash', PFI] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode('utf-8', 'replace')


@test
def postfix_to_mailnode_unchanged():
    why = postfix_can_run()
    if why:
        check('postfix_can_run', False, why)
        return
    pf_dir = tempfile.mkdtemp(prefix='mailnode-pfz-', dir='/var/tmp')
    try:
        with Node(name='b') as b:
            add_user(b, 'bob')
            pf_port = free_ports(1)[0]
            # Postfix relays everything to relayhost = [127.0.0.1]:(our port).
            rc, out = pfi('pfi_create', pf_dir, pf_port, b.port('smtp'))
            assert rc == 0, out
            rc, out = pfi('pfi_start', pf_dir)
            assert rc == 0, out
            msgs = [text_mail(i, 4000) for i in range(5)]
            s = smtplib.SMTP('127.0.0.1', pf_port, timeout=30)
            for m in msgs:
                s.sendmail('ops@field.test', ['bob@example.test'], m)
            s.quit()
            diff = arrived_exact(b, msgs, timeout=60, loose=True)
            log = ''
            try:
                log = open(os.path.join(pf_dir, 'maillog')).read()
            except OSError:
                pass
            if diff:
                harness.diag('arrived: %r' % mailbox(b, 'bob')[:1], 'sent: %r' % msgs[:1])
            check('postfix_delivered_exact', diff is None, (diff or '') + log[-600:])
            check('postfix_no_compress', not compressed_sessions(b.log()))
    finally:
        pfi('pfi_destroy', pf_dir)
        shutil.rmtree(pf_dir, ignore_errors=True)


# --- the server side, with a raw client ---------------------------------------

class Z:
    """A raw client that switches to deflate after COMPRESS."""

    def __init__(self, n):
        self.c = n.raw('smtp', timeout=20)
        self.co = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.de = zlib.decompressobj(-15)
        self.buf = b''

    def start(self):
        self.c.recv_reply()
        self.c.cmd('EHLO z.test')
        return self.c.cmd('COMPRESS DEFLATE')

    def send(self, data, flush=True):
        self.c.send(self.co.compress(data) + (self.co.flush(zlib.Z_SYNC_FLUSH) if flush else b''))

    def send_raw(self, data):
        self.c.send(data)

    def reply(self, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            m = re.match(rb'(\d{3})[- ].*?\r\n', self.buf)
            lines = []
            while True:
                m = re.match(rb'(\d{3})([- ])(.*?)\r\n', self.buf)
                if not m:
                    break
                lines.append(m.group(3))
                self.buf = self.buf[m.end():]
                if m.group(2) == b' ':
                    return int(m.group(1)), b'\n'.join(lines).decode()
            if time.monotonic() > deadline:
                raise TimeoutError('no reply: %r' % self.buf[-200:])
            self.c.sock.settimeout(max(0.1, deadline - time.monotonic()))
            d = self.c.sock.recv(65536)
            if not d:
                raise ConnectionError('closed')
            self.buf += self.de.decompress(d)

    def closed(self, timeout=10):
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.c.sock.settimeout(max(0.1, deadline - time.monotonic()))
                if not self.c.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except OSError:
            return False
        return False


@test
def server_side_raw():
    with Node(conf={'message_size_limit': '100K'}) as n:
        add_user(n, 'bob')
        z = Z(n)
        r = z.start()
        check('raw_220_plain', r.code == 220, r.text)
        z.send(b'MAIL FROM:<a@z.test>\r\nRCPT TO:<bob@example.test>\r\n')
        check('raw_mail_250', z.reply()[0] == 250)
        check('raw_rcpt_250', z.reply()[0] == 250)
        body = text_mail(5, 3000)
        z.send(b'BDAT %d LAST\r\n' % len(body) + body)
        code, text = z.reply()
        check('raw_bdat_250', code == 250, text)
        # Limits count inflated octets: 300 KB of text compresses far below 100K.
        big = text_mail(6, 300 * 1024)
        z.send(b'MAIL FROM:<a@z.test>\r\nRCPT TO:<bob@example.test>\r\n')
        z.reply()
        z.send(b'BDAT %d LAST\r\n' % len(big) + big)
        z.reply()
        code, text = z.reply()
        check('raw_limit_on_inflated_552', code == 552, '%d %s' % (code, text))
        z.send(b'COMPRESS DEFLATE\r\n')
        code, text = z.reply()
        check('raw_twice_503', code == 503, text)
        z.send(b'QUIT\r\n')
        check('raw_quit_221', z.reply()[0] == 221)
        box = mailbox(n, 'bob')
        check('raw_stored_exact', len(box) == 1 and box[0].endswith(body))

        # A bomb: 64 MB of one octet in a DATA body compresses to ~64 KB.
        z = Z(n)
        z.start()
        z.send(b'MAIL FROM:<a@z.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n')
        z.reply(), z.reply(), z.reply()
        chunk = b'A' * (1 << 20)
        try:
            for _ in range(64):
                z.send(chunk)
        except OSError:
            pass
        check('raw_bomb_cut_off', z.closed(20), n.log()[-500:])
        check('raw_bomb_logged', 'inflates beyond' in n.log(), n.log()[-500:])

        # A corrupt stream ends the session; the node lives on.
        z = Z(n)
        z.start()
        z.send_raw(b'\xff\xff\xff\xff garbage that is not deflate')
        check('raw_corrupt_cut_off', z.closed(10))
        c = n.raw('smtp')
        check('raw_node_lives', c.recv_reply().code == 220)
        c.close()


# --- on-demand relay between mailnodes ------------------------------------------

def field_node():
    n = Node(conf={'local_domains': 'field.test,' + SITE}, listeners=('smtp', 'pop3'), start=False,
             name='field')
    add_user(n, 'someone')
    return n


def upstream_node(host):
    n = Node(conf={'local_domains': 'up.test', 'retry.initial': '2s', 'retry.max': '5s'},
             listeners=('smtp', 'odmr'), start=False, name='upstream')
    add_user(n, 'fielduser', UPW)
    rc, out, err = n.cli('domain', 'add', SITE, '--hold', '--owner', 'fielduser', '--host', host)
    assert rc == 0, err
    n.start()
    return n


def ondemand(mode):
    field = field_node()
    up = upstream_node('127.0.0.1:%d' % field.port('smtp'))
    pwf = field.path('up.pw')
    with open(pwf, 'w') as f:
        f.write(UPW + '\n')
    os.chmod(pwf, 0o600)
    field.configure({'upstream': '127.0.0.1:%d' % up.port('odmr' if mode == 'atrn' else 'smtp'),
                     'upstream.mode': mode, 'upstream.domains': SITE, 'upstream.user': 'fielduser',
                     'upstream.password_file': pwf, 'upstream.interval': '1h'})
    field.start()
    with field, up:
        msgs = [text_mail(i, 3000 + 100 * i, 'someone@' + SITE) for i in range(20)]
        s = smtplib.SMTP('127.0.0.1', up.port('smtp'), timeout=30)
        for m in msgs:
            s.sendmail('ops@remote.test', ['someone@' + SITE], m)
        s.quit()
        rc, out, err = field.cli('poll', timeout=120)
        check('%s_poll_ok' % mode, rc == 0, '%s %s' % (out[-300:], err[-300:]))
        got = wait_until(lambda: len(mailbox(field, 'someone')) >= 20, 30, 0.3)
        box = mailbox(field, 'someone') if got else []
        ok = got and all(sum(1 for x in box if x.endswith(m)) == 1 for m in msgs) and len(box) == 20
        check('%s_all_once_exact' % mode, ok, '%d arrived' % len(box))
        sessions = compressed_sessions(up.log())
        check('%s_release_compressed' % mode, sessions, up.log()[-1000:])
        if sessions:
            plain, raw = sum(s[0] for s in sessions), sum(s[1] for s in sessions)
            harness.diag('%s release: %d octets sent as %d (%.2f)' % (mode, plain, raw, raw / plain))


@test
def etrn_release_compressed():
    ondemand('etrn')


@test
def atrn_turnaround_compressed():
    ondemand('atrn')


harness.main()
