"""Protocol robustness: the daemon under abuse keeps serving a normal client.

While 500 idle connections are held open and a slow-loris client dribbles
its DATA one byte per 100 ms, other clients send random garbage and NUL
bytes (SMTP and POP3), a 10 MB line without a line end, and 10,000
pipelined commands in one send.  Throughout, a normal client sends mail
with smtplib and reads it back with poplib; afterwards the mail queued
before the abuse is all still there, the slow client's message was
accepted, and the daemon's memory (VmHWM from /proc) stayed under a bound.
The figures are printed as diagnostics.

Every loop is bounded in count and time; every socket is closed."""
import os
import poplib
import random
import resource
import selectors
import smtplib
import socket
import threading
import time

import harness
from harness import Node, check, diag, test

PASSWORD = 'robust pass 7'
SENDER = 'sender@remote.test'
IDLE_CONNS = 500
# The daemon's peak resident memory must stay under this.  Sanitizers and
# valgrind change memory use beyond comparison: there it is only printed.
MEM_LIMIT_KB = 64 * 1024
MEASURE_MEM = os.environ.get('MAILNODE_SAN', '0') != '1' and \
    os.environ.get('MAILNODE_VALGRIND', '0') != '1'
SLOW = os.environ.get('MAILNODE_VALGRIND', '0') == '1'


def raise_fd_limit(want):
    """The test holds hundreds of sockets and the daemon inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        want = hard
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def proc_mem(pid):
    """(VmRSS, VmHWM) in kB of a process, or (None, None)."""
    rss = hwm = None
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    rss = int(line.split()[1])
                elif line.startswith('VmHWM:'):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def message(subject, body=b'hello\r\n'):
    return (b'From: <%s>\r\nTo: <alice@example.test>\r\nSubject: %s\r\n\r\n'
            % (SENDER.encode(), subject.encode())) + body


def pop_subjects(n, timeout=20):
    """Subjects of every message in alice's maildrop, read over POP3."""
    p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=timeout)
    try:
        p.user('alice')
        p.pass_(PASSWORD)
        count, _ = p.stat()
        subjects = []
        for i in range(1, count + 1):
            _, lines, _ = p.retr(i)
            for line in lines:
                if line.startswith(b'Subject: '):
                    subjects.append(line[9:].decode('latin-1'))
                    break
        return subjects
    finally:
        try:
            p.quit()
        except Exception:
            p.close()


def blast(port, data, timeout=30.0, tail=b''):
    """Sends data (then tail) while reading whatever comes back, so that
    neither side blocks on a full buffer.  Returns (bytes sent, bytes
    received, 'closed' | 'open').  The peer may close at any point."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=10)
    sel = selectors.DefaultSelector()
    received = bytearray()
    sent = 0
    payload = memoryview(data + tail)
    state = 'open'
    try:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = time.monotonic() + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            events = sel.select(0.2)
            if not events and sent == len(payload):
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.5:
                    break
                continue
            for _, mask in events:
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        chunk = None
                    except OSError:
                        chunk = b''
                    if chunk == b'':
                        return sent, bytes(received), 'closed'
                    if chunk:
                        quiet_since = None
                        if len(received) < 1 << 20:
                            received += chunk
                if mask & selectors.EVENT_WRITE and sent < len(payload):
                    try:
                        sent += sock.send(payload[sent:sent + 262144])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        return sent, bytes(received), 'closed'
                    if sent == len(payload):
                        sel.modify(sock, selectors.EVENT_READ)
        return sent, bytes(received), state
    finally:
        sel.close()
        sock.close()


class Prober(threading.Thread):
    """The normal client: sends a message every interval with smtplib and
    checks over POP3 that the maildrop grew by one."""

    def __init__(self, n, interval=0.5, max_rounds=400):
        super().__init__(daemon=True)
        self.n = n
        self.interval = interval
        self.max_rounds = max_rounds
        self.stop_event = threading.Event()
        self.sent = []
        self.errors = []
        self.latencies = []

    def run(self):
        for i in range(self.max_rounds):
            if self.stop_event.is_set():
                break
            subject = 'probe %d' % i
            t0 = time.monotonic()
            try:
                s = smtplib.SMTP('127.0.0.1', self.n.port('smtp'), timeout=20)
                try:
                    s.sendmail(SENDER, ['alice@example.test'], message(subject))
                finally:
                    s.quit()
                self.sent.append(subject)
                p = poplib.POP3('127.0.0.1', self.n.port('pop3'), timeout=20)
                try:
                    p.user('alice')
                    p.pass_(PASSWORD)
                    p.stat()
                finally:
                    p.quit()
            except Exception as e:                  # recorded, checked by the test
                self.errors.append('%s: %s: %s' % (subject, type(e).__name__, e))
            self.latencies.append(time.monotonic() - t0)
            self.stop_event.wait(self.interval)


class SlowLoris(threading.Thread):
    """A client that sends its DATA one byte per 100 ms, then ends it
    properly and expects the message to be accepted."""

    def __init__(self, n, duration):
        super().__init__(daemon=True)
        self.n = n
        self.duration = duration
        self.result = None

    def run(self):
        c = None
        try:
            c = self.n.raw('smtp', timeout=30)
            c.recv_reply()
            for line in ('EHLO slow.test', 'MAIL FROM:<%s>' % SENDER, 'RCPT TO:<alice@example.test>'):
                r = c.cmd(line)
                if r.code != 250:
                    self.result = '%s: %d' % (line, r.code)
                    return
            r = c.cmd('DATA')
            if r.code != 354:
                self.result = 'DATA: %d' % r.code
                return
            text = b'Subject: slow loris\r\n\r\n' + b'x' * 100000
            deadline = time.monotonic() + self.duration
            i = 0
            while time.monotonic() < deadline and i < len(text):
                c.send(text[i:i + 1])
                i += 1
                time.sleep(0.1)
            r = c.cmd('\r\n.')
            self.result = r.code
            c.cmd('QUIT')
        except Exception as e:
            self.result = '%s: %s' % (type(e).__name__, e)
        finally:
            if c:
                c.close()


@test
def robustness_under_abuse():
    raise_fd_limit(4096)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < IDLE_CONNS + 200:
        check('fd_limit', False, 'RLIMIT_NOFILE is %d, need %d' % (soft, IDLE_CONNS + 200))
        return
    dead_port = harness.free_ports(1)[0]
    n = Node(conf={'max_connections': 1000, 'auth.fail_delay': '0',
                   'relayhost': '127.0.0.1:%d' % dead_port, 'retry.initial': '1h'})
    idle = []
    prober = loris = None
    rng = random.Random(6)
    try:
        rc, out, err = n.cli('user', 'add', 'alice', input=PASSWORD + '\n')
        if not check('user_add', rc == 0, err):
            return
        pid = n.proc.pid
        base_rss, base_hwm = proc_mem(pid)

        # Mail queued before the abuse: 10 into the mailbox, 10 held in
        # the queue (the relayhost does not answer).
        s = n.smtp()
        try:
            for i in range(10):
                s.sendmail(SENDER, ['alice@example.test'], message('before %d' % i))
                s.sendmail(SENDER, ['far%d@remote.test' % i], message('queued %d' % i))
        finally:
            s.quit()
        rc, out, _ = n.cli('queue', 'count')
        queued_before = out.strip()
        check('queued_before', queued_before == '10', out)

        prober = Prober(n, interval=1.0 if SLOW else 0.5)
        prober.start()
        loris = SlowLoris(n, duration=60 if SLOW else 20)
        loris.start()

        # 500 idle connections, a fifth of them POP3; each gets its greeting.
        t0 = time.monotonic()
        greeted = 0
        for i in range(IDLE_CONNS):
            kind = 'pop3' if i % 5 == 0 else 'smtp'
            sock = socket.create_connection(('127.0.0.1', n.port(kind)), timeout=10)
            idle.append(sock)
        for sock in idle:
            try:
                if sock.recv(512)[:1] in (b'2', b'+'):
                    greeted += 1
            except OSError:
                pass
        check('idle_connections_greeted', greeted == IDLE_CONNS,
              '%d of %d greeted' % (greeted, IDLE_CONNS))
        rss, hwm = proc_mem(pid)
        diag('%d idle connections open after %.1f s: VmRSS %s kB, VmHWM %s kB'
             % (len(idle), time.monotonic() - t0, rss, hwm))

        # Random garbage and NUL bytes, 1 MB to each service, over as many
        # connections as it takes (the server may close on errors).
        for kind in ('smtp', 'pop3'):
            total, conns, t0 = 0, 0, time.monotonic()
            while total < 1 << 20 and conns < 300 and time.monotonic() - t0 < 60:
                size = rng.choice((4096, 65536, 262144))
                junk = rng.randbytes(size)
                if conns % 3 == 0:
                    junk = junk.replace(b'\n', b'\0')           # NULs, no line ends
                sent, _, _ = blast(n.port(kind), junk, timeout=20)
                total += sent
                conns += 1
            diag('%s garbage: %d bytes over %d connections in %.1f s'
                 % (kind, total, conns, time.monotonic() - t0))
            check('garbage_%s_daemon_alive' % kind, n.running())

        # An endless line: 10 MB without LF, then a command on a line of
        # its own, which must be answered normally.
        for kind, cmd, ok in (('smtp', b'NOOP', b'250 '), ('pop3', b'CAPA', b'+OK capability')):
            t0 = time.monotonic()
            sent, got, state = blast(n.port(kind), b'A' * (10 << 20),
                                     tail=b'\r\n' + cmd + b'\r\n', timeout=60)
            diag('%s endless line: %d bytes sent in %.1f s, %d bytes back, %s'
                 % (kind, sent, time.monotonic() - t0, len(got), state))
            check('endless_line_%s_all_sent' % kind, sent == (10 << 20) + len(cmd) + 4, sent)
            check('endless_line_%s_refused' % kind,
                  b'line too long' in got, got[:300])
            check('endless_line_%s_then_served' % kind, ok in got, got[-300:])

        # 10,000 pipelined commands in one send; every reply, in order.
        c = n.raw('smtp', timeout=60)
        try:
            c.recv_reply()
            c.cmd('EHLO pipeliner.test')
            cmds, want = [], []
            for i in range(10000):
                if i % 10 == 9:
                    cmds.append(b'VRFY someone\r\n')
                    want.append(252)
                else:
                    cmds.append(b'NOOP\r\n' if i % 2 else b'RSET\r\n')
                    want.append(250)
            t0 = time.monotonic()
            sender = threading.Thread(target=c.sock.sendall, args=(b''.join(cmds),), daemon=True)
            sender.start()
            got = []
            deadline = time.monotonic() + (300 if SLOW else 60)
            try:
                # A reply overdue by 10 s means the server stopped reading.
                while len(got) < len(want) and time.monotonic() < deadline:
                    got.append(c.recv_reply(timeout=min(10.0, max(0.1, deadline - time.monotonic()))).code)
            except (TimeoutError, ConnectionError, ValueError) as e:
                diag('pipelining stopped after %d replies: %s' % (len(got), str(e)[:200]))
            sender.join(10)
            diag('10,000 pipelined commands answered in %.2f s' % (time.monotonic() - t0))
            check('pipelined_all_answered', len(got) == len(want), '%d replies' % len(got))
            first_bad = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None)
            check('pipelined_in_order', first_bad is None,
                  'reply %s is %s, want %s' % (first_bad, first_bad is not None and got[first_bad],
                                              first_bad is not None and want[first_bad]))
            r = c.cmd('NOOP')
            check('pipelined_session_still_usable', r.code == 250, r.text)
        finally:
            c.close()
        # The same for POP3: 10,000 commands (all refused before login).
        c = n.raw('pop3', timeout=60)
        try:
            c.recv_line()
            t0 = time.monotonic()
            sender = threading.Thread(target=c.sock.sendall, args=(b'NOOP\r\n' * 10000,), daemon=True)
            sender.start()
            lines = 0
            try:
                while lines < 10000:
                    if not c.recv_line(timeout=10).startswith(b'-ERR'):
                        break
                    lines += 1
            except (TimeoutError, ConnectionError) as e:
                diag('POP3 pipelining stopped after %d replies: %s' % (lines, str(e)[:200]))
            sender.join(10)
            diag('10,000 pipelined POP3 commands answered in %.2f s' % (time.monotonic() - t0))
            check('pop3_pipelined_all_answered', lines == 10000, '%d replies' % lines)
        finally:
            c.close()

        rss, hwm = proc_mem(pid)
        diag('after garbage, endless lines and pipelining: VmRSS %s kB, VmHWM %s kB' % (rss, hwm))

        # The slow client finishes; then the normal client stops.
        loris.join(120 if SLOW else 40)
        check('slowloris_accepted', loris.result == 250, loris.result)
        prober.stop_event.set()
        prober.join(60)
        check('normal_client_never_failed', not prober.errors, '; '.join(prober.errors[:3]))
        check('normal_client_served_throughout', len(prober.sent) >= 10,
              '%d messages sent' % len(prober.sent))
        if prober.latencies:
            worst = max(prober.latencies)
            diag('normal client: %d rounds (send + POP3 login), worst %.2f s, median %.3f s'
                 % (len(prober.latencies), worst, sorted(prober.latencies)[len(prober.latencies) // 2]))
            check('normal_client_latency', worst < (30 if SLOW else 5), '%.2f s' % worst)

        # Memory stayed bounded.
        rss, hwm = proc_mem(pid)
        diag('daemon memory: at start VmRSS %s kB / VmHWM %s kB; at the end VmRSS %s kB / '
             'VmHWM %s kB (limit %d kB%s)' % (base_rss, base_hwm, rss, hwm, MEM_LIMIT_KB,
                                              '' if MEASURE_MEM else ', not checked here'))
        if MEASURE_MEM:
            check('memory_bounded', hwm is not None and hwm < MEM_LIMIT_KB, '%s kB' % hwm)
    finally:
        if prober:
            prober.stop_event.set()
        for sock in idle:
            sock.close()
        if prober:
            prober.join(30)
        if loris:
            loris.join(5)

    # No mail was lost: the queue and the mailbox after the abuse.
    try:
        check('daemon_survived', n.running())
        rc, out, _ = n.cli('queue', 'count')
        check('queue_intact', out.strip() == queued_before, '%s, was %s' % (out.strip(), queued_before))
        subjects = pop_subjects(n)
        missing = [s for s in ['before %d' % i for i in range(10)] + prober.sent
                   if s not in subjects]
        check('mailbox_intact', not missing, 'missing: %s' % missing[:5])
        check('slowloris_in_mailbox', 'slow loris' in subjects)
    finally:
        n.close()


harness.main()
