"""Protocol smoke test of a cross-built mailnode under qemu-user.

tests/cross/run sets MAILNODE_BIN to a wrapper that runs the cross-built
binary (ARM, or big-endian s390x) under qemu-user, and MAILNODE_PEER_BIN to
the native ./mailnode.  Checks:
- SMTP accept -> POP3 read, byte for byte (8-bit text, dot lines, a large
  message), python smtplib and a raw POP3 client on loopback;
- sendmail while the daemon is down, delivered when it starts;
- kill -9 during a load: every message acknowledged with 250 is there;
- a database written by the native binary is read by the emulated one (the
  SQLite file and the compressed bodies are the same on every
  architecture);
- ETRN and ATRN (`mailnode poll`) between the emulated node and a native
  node, both ways round.
"""
import os
import smtplib
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'proto'))

import harness                                              # noqa: E402
from harness import BIN, Node, Raw, check, diag, test, wait_until    # noqa: E402

PEER_BIN = os.environ.get('MAILNODE_PEER_BIN', os.path.join(ROOT, 'mailnode'))
SENDER = 'sender@remote.test'
PW = 'smoke-pass-1'
SITE = 'site.test'
OWNER = 'siteowner'


def add_user(n, name, pw=PW):
    rc, out, err = n.cli('user', 'add', name, input=pw + '\n')
    assert rc == 0, 'user add %s: %s' % (name, err)


def message(subject, body_lines=20, extra=b''):
    head = ('From: %s\r\nTo: alice@example.test\r\nSubject: %s\r\n'
            'Message-ID: <%s@remote.test>\r\n\r\n' % (SENDER, subject, subject.replace(' ', '.')))
    body = b''.join(b'line %d of %s\r\n' % (i, subject.encode()) for i in range(body_lines))
    return head.encode() + body + extra


def pop3_all(n, user, pw=PW):
    """Every message in user's maildrop as raw bytes (unstuffed), via a raw
    POP3 client; deletes nothing."""
    c = Raw(n.port('pop3'), timeout=30 * harness.TIME_SCALE)
    try:
        c.recv_line()
        c.send(b'USER %s\r\n' % user.encode())
        c.recv_line()
        c.send(b'PASS %s\r\n' % pw.encode())
        r = c.recv_line()
        if not r.startswith(b'+OK'):
            raise AssertionError('PASS: %r' % r)
        c.send(b'STAT\r\n')
        count = int(c.recv_line().split()[1])
        msgs = []
        for i in range(1, count + 1):
            c.send(b'RETR %d\r\n' % i)
            first = c.recv_line()
            if not first.startswith(b'+OK'):
                raise AssertionError('RETR %d: %r' % (i, first))
            raw = c.recv_until(b'\r\n.\r\n')
            body = raw[:-5] + b'\r\n' if raw != b'.\r\n' else b''
            lines = body.split(b'\r\n')
            msgs.append(b'\r\n'.join(l[1:] if l.startswith(b'.') else l for l in lines))
        c.send(b'QUIT\r\n')
        return msgs
    finally:
        c.close()


def strip_trace(m):
    """The message as the client sent it: without the Return-Path and
    Received fields the node put in front."""
    lines = m.split(b'\r\n')
    i = 0
    while i < len(lines) and (lines[i].startswith(b'Return-Path:') or lines[i].startswith(b'Received:')
                              or (i and lines[i][:1] in (b' ', b'\t'))):
        i += 1
    return b'\r\n'.join(lines[i:])


def subjects(n, user):
    rc, out, err = n.cli('mailbox', 'list', user)
    if rc != 0:
        return None
    return [l.split('\t')[5] for l in out.splitlines() if l.count('\t') >= 5]


# ------------------------------------------------------------ single node

@test
def smtp_to_pop3_byte_exact():
    with Node(listeners=('smtp', 'pop3')) as n:
        add_user(n, 'alice')
        sent = [
            message('plain'),
            message('eightbit', 5, 'Grüße aus dem Feld, ½ € \r\n'.encode()),
            message('dots', 3, b'.\r\n..two dots\r\n.leading\r\nend\r\n'),
            # 600 KB: several body chunks, compressed and read back
            message('large', 12000),
        ]
        s = smtplib.SMTP('127.0.0.1', n.port('smtp'), timeout=60 * harness.TIME_SCALE)
        for m in sent:
            s.sendmail(SENDER, ['alice@example.test'], m)
        s.quit()
        got = wait_until(lambda: len(subjects(n, 'alice') or []) == len(sent), 20)
        check('smoke_all_accepted', got, subjects(n, 'alice'))
        msgs = pop3_all(n, 'alice')
        check('smoke_pop3_count', len(msgs) == len(sent), len(msgs))
        for want, m in zip(sent, msgs):
            subj = want.split(b'Subject: ')[1].split(b'\r\n')[0].decode()
            check('smoke_pop3_byte_exact_%s' % subj, strip_trace(m) == want,
                  '%d bytes served, %d sent' % (len(m), len(want)))


@test
def sendmail_while_down():
    with Node(listeners=('smtp', 'pop3'), start=False) as n:
        add_user(n, 'alice')
        text = 'To: alice@example.test\nSubject: offline\n\nwritten while the daemon was down\n'
        rc, out, err = n.cli('sendmail', '-t', input=text, timeout=120)
        check('smoke_sendmail_down_exit_0', rc == 0, err)
        n.start()
        msgs = pop3_all(n, 'alice')
        check('smoke_sendmail_down_delivered', len(msgs) == 1
              and msgs[0].endswith(b'\r\n\r\nwritten while the daemon was down\r\n'), msgs)


@test
def kill9_during_load():
    with Node(listeners=('smtp', 'pop3')) as n:
        add_user(n, 'alice')
        acked = []
        stop = threading.Event()

        def sender():
            try:
                s = smtplib.SMTP('127.0.0.1', n.port('smtp'), timeout=30 * harness.TIME_SCALE)
                for i in range(2000):
                    if stop.is_set():
                        break
                    subj = 'load %d' % i
                    s.sendmail(SENDER, ['alice@example.test'], message(subj, 10))
                    acked.append(subj)
            except (OSError, smtplib.SMTPException):
                pass                    # the daemon was killed mid-transaction

        t = threading.Thread(target=sender)
        t.start()
        wait_until(lambda: len(acked) >= 15, 60)
        n.kill9()
        stop.set()
        t.join(60 * harness.TIME_SCALE)
        before = list(acked)
        diag('kill -9 after %d acknowledged messages' % len(before))
        check('smoke_load_running', len(before) >= 15, len(before))
        n.start()
        got = subjects(n, 'alice') or []
        missing = [s for s in before if s not in got]
        check('smoke_kill9_nothing_lost', not missing, 'missing %d: %s' % (len(missing), missing[:5]))
        check('smoke_kill9_no_duplicates', len(got) == len(set(got)), len(got) - len(set(got)))
        msgs = pop3_all(n, 'alice')
        check('smoke_kill9_readable', len(msgs) == len(got), '%d vs %d' % (len(msgs), len(got)))


@test
def database_from_native_binary():
    """A node moved from an x86 box to an ARM (or big-endian) one keeps its database."""
    with Node(listeners=('smtp', 'pop3'), bin=PEER_BIN, name='native') as n:
        add_user(n, 'alice')
        sent = [message('moved %d' % i, 200) for i in range(3)]
        s = smtplib.SMTP('127.0.0.1', n.port('smtp'), timeout=30)
        for m in sent:
            s.sendmail(SENDER, ['alice@example.test'], m)
        s.quit()
        wait_until(lambda: len(subjects(n, 'alice') or []) == 3, 20)
        n.stop()
        n.bin = BIN
        n.start()
        msgs = pop3_all(n, 'alice')
        check('smoke_native_db_read_by_emulated', [strip_trace(m) for m in msgs] == sent,
              '%d messages' % len(msgs))


# ------------------------------------------------ ETRN / ATRN across arches

def pwfile(n):
    p = n.path('upstream.pw')
    with open(p, 'w') as f:
        f.write(PW + '\n')
    os.chmod(p, 0o600)
    return p


def poll_between(mode, field_bin, up_bin, tag, count=5):
    field = Node(conf={'local_domains': 'field.test,' + SITE}, listeners=('smtp', 'pop3'),
                 start=False, name='field', bin=field_bin)
    add_user(field, 'someone')
    up = Node(conf={'local_domains': 'up.test', 'retry.initial': '2s', 'retry.max': '5s'},
              listeners=('smtp', 'odmr'), start=False, name='upstream', bin=up_bin)
    with field, up:
        add_user(up, OWNER)
        rc, out, err = up.cli('domain', 'add', SITE, '--hold', '--owner', OWNER,
                              '--host', '127.0.0.1:%d' % field.port('smtp'))
        assert rc == 0, err
        up.start()
        port = up.port('odmr') if mode == 'atrn' else up.port('smtp')
        field.configure({'upstream': '127.0.0.1:%d' % port, 'upstream.mode': mode,
                         'upstream.domains': SITE, 'upstream.user': OWNER,
                         'upstream.password_file': pwfile(field), 'upstream.interval': '1h'})
        field.start()
        want = ['%s %d' % (tag, i) for i in range(count)]
        s = smtplib.SMTP('127.0.0.1', up.port('smtp'), timeout=30 * harness.TIME_SCALE)
        for subj in want:
            s.sendmail(SENDER, ['someone@' + SITE], message(subj, 5))
        s.quit()
        rc, out, err = field.cli('poll', timeout=300)
        check('smoke_%s_poll_exit_0' % tag, rc == 0, 'rc %s: %s %s' % (rc, out[-300:], err[-300:]))
        wait_until(lambda: len(subjects(field, 'someone') or []) >= count, 30)
        got = subjects(field, 'someone') or []
        check('smoke_%s_all_once' % tag, sorted(got) == sorted(want),
              'got %s; upstream log: %s' % (got, up.log()[-400:]))


@test
def etrn_emulated_field_native_upstream():
    poll_between('etrn', BIN, PEER_BIN, 'etrn_emulated_field')


@test
def atrn_emulated_field_native_upstream():
    poll_between('atrn', BIN, PEER_BIN, 'atrn_emulated_field')


@test
def etrn_native_field_emulated_upstream():
    poll_between('etrn', PEER_BIN, BIN, 'etrn_emulated_upstream')


@test
def atrn_native_field_emulated_upstream():
    poll_between('atrn', PEER_BIN, BIN, 'atrn_emulated_upstream')


harness.main()
