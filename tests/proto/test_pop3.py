"""POP3 server (RFC 1939, 2449, 5034) against the real binary: login, the
maildrop as a client sees it byte for byte, deletion only at QUIT, the
mailbox lock, stable UIDs, bad input, and `mailnode mailbox list|export`."""
import base64
import hashlib
import os
import poplib
import socket
import time

import harness
from harness import Node, check, test, wait_until

PASSWORD = 'correct horse 42'
SENDER = 'bob@remote.test'
FAST = {'auth.fail_delay': '0'}


def new_node(conf=None, users=('alice',)):
    c = dict(FAST)
    c.update(conf or {})
    n = Node(conf=c)
    for u in users:
        rc, out, err = n.cli('user', 'add', u, input=PASSWORD + '\n')
        if rc != 0:
            raise RuntimeError('user add %s: %s %s' % (u, rc, err))
    return n


def deliver(n, body, rcpt='alice@example.test', sender=SENDER):
    """Sends body (bytes, CRLF lines, ending in CRLF) over SMTP."""
    s = n.smtp()
    try:
        s.sendmail(sender, [rcpt], body)
    finally:
        s.quit()


def message(i, extra=b''):
    return (b'From: Bob <bob@remote.test>\r\n'
            b'To: alice@example.test\r\n'
            b'Subject: message %d\r\n'
            b'\r\n'
            b'line one of %d\r\n'
            b'.a line starting with a dot\r\n'
            b'..two dots\r\n'
            b'.\r\n'
            b'8-bit: \xc3\xa9t\xc3\xa9 \xff\xfe\r\n'
            b'last line\r\n' % (i, i)) + extra


def strip_trace(served, sender=SENDER):
    """The message as sent: served minus the Return-Path prefix and the
    Received header the SMTP server added.  None if the prefix is wrong."""
    prefix = b'Return-Path: <%s>\r\n' % sender.encode()
    if not served.startswith(prefix):
        return None
    rest = served[len(prefix):]
    lines = rest.split(b'\r\n')
    i = 0
    while i < len(lines) and lines[i].startswith(b'Received:'):
        i += 1
        while i < len(lines) and lines[i][:1] in (b' ', b'\t'):
            i += 1
    return b'\r\n'.join(lines[i:])


def sha(b):
    return hashlib.sha256(b).hexdigest()


class Pop:
    """A raw POP3 client: exact bytes, every read with a timeout."""

    def __init__(self, n, port=None, host='127.0.0.1'):
        self.c = harness.Raw(port or n.port('pop3'), 10.0, host) if host != '127.0.0.1' \
            else n.raw('pop3')
        self.greeting = self.c.recv_line()

    def send(self, data):
        self.c.send(data)

    def line(self, timeout=None):
        return self.c.recv_line(timeout)

    def cmd(self, text, timeout=None):
        self.c.send(text.encode() + b'\r\n' if isinstance(text, str) else text + b'\r\n')
        return self.line(timeout)

    def multi(self, timeout=None):
        """The body of a multi-line response, raw (still byte-stuffed)."""
        data = self.c.recv_until(b'\r\n.\r\n', timeout)
        return data

    def login(self, user='alice', password=PASSWORD):
        r = self.cmd('USER ' + user)
        if not r.startswith(b'+OK'):
            return r
        return self.cmd('PASS ' + password)

    def closed(self, timeout=5.0):
        return self.c.closed(timeout)

    def close(self):
        self.c.close()


def unstuff(raw):
    """Multi-line body (without the terminator) to the message bytes."""
    assert raw.endswith(b'\r\n.\r\n')
    body = raw[:-3]
    out = []
    for line in body.split(b'\r\n')[:-1]:
        out.append(line[1:] if line.startswith(b'.') else line)
    return b'\r\n'.join(out) + b'\r\n'


def poplib_login(n):
    p = n.pop3()
    p.user('alice')
    p.pass_(PASSWORD)
    return p


@test
def login_and_failures():
    with new_node() as n:
        deliver(n, message(1))
        c = Pop(n)
        check('pop3_greeting', c.greeting == b'+OK mailnode POP3 ready\r\n', c.greeting)
        wrong = c.login('alice', 'wrong password')
        unknown = c.login('nobody', PASSWORD)
        check('pop3_wrong_password_auth_code', wrong.startswith(b'-ERR [AUTH]'), wrong)
        check('pop3_unknown_user_same_reply', wrong == unknown, (wrong, unknown))
        r = c.cmd('STAT')
        check('pop3_stat_before_login_refused', r.startswith(b'-ERR'), r)
        r = c.login()
        check('pop3_login_ok', r.startswith(b'+OK') and b'1 messages' in r, r)
        r = c.cmd('USER alice')
        check('pop3_user_in_transaction_refused', r.startswith(b'-ERR'), r)
        r = c.cmd('STAT')
        check('pop3_session_goes_on', r.startswith(b'+OK 1 '), r)
        check('pop3_quit', c.cmd('QUIT').startswith(b'+OK'))
        c.close()
        log = n.log()
        check('pop3_log_login', 'login user=alice' in log, log[-500:])
        check('pop3_log_failure', 'authentication failed user=nobody' in log, log[-800:])


@test
def failures_slowed_then_closed():
    with new_node({'auth.fail_delay': '1s', 'auth.max_failures': '3'}) as n:
        c = Pop(n)
        t0 = time.monotonic()
        r1 = c.login('alice', 'bad1')
        t1 = time.monotonic()
        r2 = c.login('alice', 'bad2')
        t2 = time.monotonic()
        check('pop3_fail_delay_first', t1 - t0 >= 0.9, '%.2f s' % (t1 - t0))
        check('pop3_fail_delay_grows', t2 - t1 >= 1.9, '%.2f s' % (t2 - t1))
        check('pop3_fail_replies', r1.startswith(b'-ERR [AUTH]') and r2 == r1, (r1, r2))
        r3 = c.login('alice', 'bad3')
        check('pop3_third_failure_reply', r3.startswith(b'-ERR [AUTH]'), r3)
        check('pop3_closed_after_max_failures', c.closed(5.0))
        c.close()


@test
def maildrop_byte_exact():
    with new_node() as n:
        msgs = [message(1), message(2, b'.\r\n..\r\n.end\r\n'), message(3)]
        # A bigger one: several store chunks, dots at every kind of offset.
        big = bytearray(message(4))
        i = 0
        while len(big) < 300000:
            big += b'.%d a line that starts with a dot \xe2\x82\xac\r\n' % i
            big += b'plain line %d\r\n' % i
            i += 1
        msgs.append(bytes(big))
        for m in msgs:
            deliver(n, m)
        p = poplib_login(n)
        count, octets = p.stat()
        check('pop3_stat_count', count == len(msgs), count)
        resp, listing, _ = p.list()
        sizes = [int(x.split()[1]) for x in listing]
        check('pop3_list_sums_to_stat', sum(sizes) == octets, (sizes, octets))
        resp, uidl, _ = p.uidl()
        uids = [x.split()[1] for x in uidl]
        check('pop3_uidl_unique', len(set(uids)) == len(msgs), uids)
        ok_sha = ok_size = True
        for k, m in enumerate(msgs, 1):
            resp, lines, octs = p.retr(k)
            served = b'\r\n'.join(lines) + b'\r\n'
            if len(served) != sizes[k - 1]:
                ok_size = False
                harness.diag('message %d: served %d, listed %d' % (k, len(served), sizes[k - 1]))
            tail = strip_trace(served)
            if tail is None or sha(tail) != sha(m):
                ok_sha = False
                harness.diag('message %d differs' % k)
        check('pop3_retr_byte_exact_sha256', ok_sha)
        check('pop3_list_octets_exact', ok_size)
        r = p.list(2)
        check('pop3_list_one', r.split()[1:] == [b'2', str(sizes[1]).encode()], r)
        r = p.uidl(3)
        check('pop3_uidl_one', r.split()[2] == uids[2], r)
        p.quit()

        # The raw wire: byte-stuffing and the terminator.
        c = Pop(n)
        c.login()
        r = c.cmd('RETR 2')
        raw = c.multi()
        check('pop3_retr_status', r.startswith(b'+OK'), r)
        check('pop3_retr_stuffed', b'\r\n..a line starting with a dot\r\n' in raw and
              b'\r\n...two dots\r\n' in raw and b'\r\n..\r\n...\r\n..end\r\n' in raw, raw[-200:])
        check('pop3_retr_unstuffs', strip_trace(unstuff(raw)) == msgs[1])

        # TOP: header, blank line, n body lines, stuffed the same way.
        c.cmd('TOP 1 0')
        top0 = unstuff(c.multi())
        check('pop3_top_0_header_only', top0.endswith(b'Subject: message 1\r\n\r\n'), top0[-80:])
        c.cmd('TOP 1 2')
        top2 = c.multi()
        check('pop3_top_2_lines', top2.endswith(
            b'\r\n\r\nline one of 1\r\n..a line starting with a dot\r\n.\r\n'), top2[-120:])
        c.cmd('TOP 1 1000')
        topall = unstuff(c.multi())
        check('pop3_top_more_than_body_is_whole', strip_trace(topall) == msgs[0])
        r = c.cmd('TOP 1')
        check('pop3_top_needs_two_args', r.startswith(b'-ERR'), r)
        r = c.cmd('RETR 9')
        check('pop3_retr_no_such', r.startswith(b'-ERR'), r)
        r = c.cmd('RETR 0')
        check('pop3_retr_zero', r.startswith(b'-ERR'), r)
        r = c.cmd('RETR -1')
        check('pop3_retr_negative', r.startswith(b'-ERR'), r)
        c.cmd('QUIT')
        c.close()


@test
def dele_quit_rset_drop():
    with new_node() as n:
        for i in range(4):
            deliver(n, message(i))
        c = Pop(n)
        c.login()
        r = c.cmd('DELE 1')
        check('pop3_dele', r.startswith(b'+OK'), r)
        r = c.cmd('DELE 1')
        check('pop3_dele_twice', r.startswith(b'-ERR'), r)
        r = c.cmd('RETR 1')
        check('pop3_retr_deleted', r.startswith(b'-ERR'), r)
        r = c.cmd('STAT')
        check('pop3_stat_excludes_deleted', r.startswith(b'+OK 3 '), r)
        r = c.cmd('LIST')
        listing = c.multi()
        check('pop3_list_excludes_deleted', not listing.startswith(b'1 '), listing)
        r = c.cmd('RSET')
        check('pop3_rset', r.startswith(b'+OK') and b'4 messages' in r, r)
        check('pop3_stat_after_rset', c.cmd('STAT').startswith(b'+OK 4 '))
        c.cmd('DELE 2')
        c.cmd('DELE 3')
        # Dropped without QUIT: nothing is deleted.
        c.close()
        c = None

        def relogin():
            p = Pop(n)
            r = p.login()
            if r.startswith(b'+OK'):
                return p
            p.close()
            return None
        c = wait_until(relogin, 5.0)
        check('pop3_lock_released_after_drop', c is not None)
        if not c:
            return
        r = c.cmd('STAT')
        check('pop3_drop_deletes_nothing', r.startswith(b'+OK 4 '), r)
        c.cmd('UIDL')
        uidl_before = c.multi()
        c.cmd('DELE 2')
        c.cmd('DELE 4')
        r = c.cmd('QUIT')
        check('pop3_quit_after_dele', r.startswith(b'+OK') and b'2 messages left' in r, r)
        check('pop3_quit_closes', c.closed())
        c.close()
        p = poplib_login(n)
        count, _ = p.stat()
        check('pop3_quit_deleted', count == 2, count)
        _, uidl, _ = p.uidl()
        before = [l.split()[1] for l in uidl_before.split(b'\r\n') if l and l != b'.']
        check('pop3_remaining_uids', [x.split()[1] for x in uidl] == [before[0], before[2]],
              (uidl, before))
        p.quit()
        rc, out, err = n.cli('mailbox', 'list', 'alice')
        check('pop3_cli_list_after_quit', rc == 0 and len(out.splitlines()) == 2, (rc, out, err))
        check('pop3_log_quit', 'deleted=2' in n.log(), n.log()[-500:])


@test
def mailbox_lock():
    with new_node() as n:
        deliver(n, message(1))
        a = Pop(n)
        check('pop3_first_session', a.login().startswith(b'+OK'))
        b = Pop(n)
        r = b.login()
        check('pop3_second_session_in_use', r.startswith(b'-ERR [IN-USE]'), r)
        r = b.cmd('NOOP')
        check('pop3_in_use_stays_in_authorization', r.startswith(b'-ERR'), r)
        a.cmd('QUIT')
        a.close()
        r = wait_until(lambda: (lambda x: x if x.startswith(b'+OK') else None)(b.login()), 5.0)
        check('pop3_lock_released_after_quit', r is not None)
        b.close()


@test
def uids_stable_and_never_reused():
    with new_node() as n:
        for i in range(3):
            deliver(n, message(i))
        p = poplib_login(n)
        before = [x.split()[1] for x in p.uidl()[1]]
        p.dele(3)                           # the highest uid
        p.quit()
        n.restart()
        p = poplib_login(n)
        after = [x.split()[1] for x in p.uidl()[1]]
        check('pop3_uids_stable_across_restart', after == before[:2], (before, after))
        p.quit()
        deliver(n, message(9))
        p = poplib_login(n)
        now = [x.split()[1] for x in p.uidl()[1]]
        check('pop3_uid_not_reused', len(now) == 3 and now[2] not in before and
              int(now[2]) > max(int(x) for x in before), (before, now))
        p.quit()


@test
def bad_input():
    with new_node() as n:
        deliver(n, message(1))
        c = Pop(n)
        r = c.cmd(b'\x00\xff\xfe garbage')
        check('pop3_garbage', r.startswith(b'-ERR'), r)
        r = c.cmd('FROB')
        check('pop3_unknown_command', r.startswith(b'-ERR'), r)
        r = c.cmd('APOP alice 0123456789abcdef0123456789abcdef')
        check('pop3_apop_not_offered', r.startswith(b'-ERR'), r)
        r = c.cmd('X' * 300)
        check('pop3_long_line', r == b'-ERR line too long\r\n', r)
        # Longer than the input buffer, in pieces, then a newline.
        c.send(b'Y' * 40000)
        r = c.line()
        check('pop3_huge_line', r == b'-ERR line too long\r\n', r)
        c.send(b'Y' * 1000 + b'\r\n')
        r = c.cmd('')
        check('pop3_empty_line', r.startswith(b'-ERR'), r)
        r = c.cmd('PASS x')
        check('pop3_pass_without_user', r.startswith(b'-ERR'), r)
        r = c.login()
        check('pop3_login_after_garbage', r.startswith(b'+OK'), r)
        for bad in ('DELE', 'DELE x', 'DELE 1 2', 'DELE 99999999999999999999', 'LIST 0',
                    'TOP 1 -1', 'TOP x 1', 'STAT 1', 'AUTH PLAIN', 'PASS x'):
            r = c.cmd(bad)
            if not r.startswith(b'-ERR'):
                check('pop3_bad_args', False, (bad, r))
                break
        else:
            check('pop3_bad_args', True)
        r = c.cmd('Z' * 300)
        check('pop3_long_line_in_transaction', r == b'-ERR line too long\r\n', r)
        r = c.cmd('stat')
        check('pop3_lower_case_verbs', r.startswith(b'+OK 1 '), r)
        c.cmd('QUIT')
        c.close()
        p = poplib_login(n)
        check('pop3_garbage_changed_nothing', p.stat()[0] == 1)
        p.quit()


@test
def auth_plain_and_login():
    with new_node() as n:
        deliver(n, message(1))
        cred = base64.b64encode(b'\0alice\0' + PASSWORD.encode()).decode()
        c = Pop(n)
        r = c.cmd('CAPA')
        capa = c.multi()
        check('pop3_capa', r.startswith(b'+OK') and b'\r\nUIDL\r\n' in capa and
              b'RESP-CODES' in capa and b'AUTH-RESP-CODE' in capa and
              b'SASL PLAIN' in capa and b'TOP\r\n' in capa and b'PIPELINING' in capa, capa)
        r = c.cmd('AUTH PLAIN ' + cred)
        check('pop3_auth_plain_initial', r.startswith(b'+OK'), r)
        c.cmd('QUIT')
        c.close()

        c = Pop(n)
        r = c.cmd('AUTH PLAIN')
        check('pop3_auth_plain_continue', r == b'+ \r\n', r)
        r = c.cmd('*')
        check('pop3_auth_cancel', r.startswith(b'-ERR'), r)
        r = c.cmd('AUTH PLAIN')
        r = c.cmd(base64.b64encode(b'\0alice\0wrong').decode())
        check('pop3_auth_plain_wrong', r.startswith(b'-ERR [AUTH]'), r)
        r = c.cmd('AUTH PLAIN')
        r = c.cmd(cred)
        check('pop3_auth_plain_continuation', r.startswith(b'+OK'), r)
        c.cmd('QUIT')
        c.close()

        c = Pop(n)
        r = c.cmd('AUTH LOGIN')
        r2 = c.cmd(base64.b64encode(b'alice').decode())
        r3 = c.cmd(base64.b64encode(PASSWORD.encode()).decode())
        check('pop3_auth_login', r.startswith(b'+ ') and r2.startswith(b'+ ') and
              r3.startswith(b'+OK'), (r, r2, r3))
        c.cmd('QUIT')
        c.close()

        c = Pop(n)
        r = c.cmd('AUTH X-UNKNOWN')
        check('pop3_auth_unknown_mech', r.startswith(b'-ERR'), r)
        c.cmd('AUTH PLAIN')
        r = c.cmd('A' * 3000)
        check('pop3_auth_long_response', r.startswith(b'-ERR'), r)
        r = c.cmd('NOOP')
        check('pop3_after_auth_abort', r.startswith(b'-ERR'), r)
        c.close()


@test
def pipelining_and_streaming():
    with new_node() as n:
        big = bytearray(message(1))
        while len(big) < 3 * 1024 * 1024:
            big += b'..%07d stuffed and streamed through a small buffer\r\n' % len(big)
        deliver(n, bytes(big))
        deliver(n, message(2))
        c = Pop(n)
        # Everything in one write: replies must come back in order, the big
        # RETR streamed whole before STAT is answered.
        c.send(b'USER alice\r\nPASS %s\r\nRETR 1\r\nSTAT\r\nRETR 2\r\nLIST\r\nQUIT\r\n'
               % PASSWORD.encode())
        ok = c.line().startswith(b'+OK') and c.line().startswith(b'+OK')
        r = c.line()
        raw1 = c.multi(30)
        stat = c.line()
        c.line()
        raw2 = c.multi()
        c.line()
        c.multi()
        quit_r = c.line()
        check('pop3_pipelined_login', ok)
        check('pop3_streamed_big_retr', r.startswith(b'+OK') and
              strip_trace(unstuff(raw1)) == bytes(big))
        check('pop3_pipelined_order', stat.startswith(b'+OK 2 '), stat)
        check('pop3_pipelined_second_retr', strip_trace(unstuff(raw2)) == message(2))
        check('pop3_pipelined_quit', quit_r.startswith(b'+OK'), quit_r)
        c.close()


@test
def big_mailbox_list():
    # More LIST lines than the output buffer holds: LIST and UIDL stream.
    with new_node() as n:
        s = n.smtp()
        for i in range(1500):
            s.sendmail(SENDER, ['alice@example.test'], b'Subject: %d\r\n\r\nx\r\n' % i)
        s.quit()
        p = poplib_login(n)
        count, octets = p.stat()
        _, listing, _ = p.list()
        _, uidl, _ = p.uidl()
        check('pop3_big_list', count == 1500 and len(listing) == 1500 and len(uidl) == 1500
              and sum(int(x.split()[1]) for x in listing) == octets, (count, len(listing)))
        p.quit()


@test
def idle_timeout():
    with new_node({'pop3.timeout': '2s'}) as n:
        deliver(n, message(1))
        c = Pop(n)
        c.login()
        c.cmd('DELE 1')
        r = c.line(timeout=6)
        check('pop3_autologout', r.startswith(b'-ERR') and b'autologout' in r, r)
        check('pop3_autologout_closes', c.closed())
        c.close()
        p = wait_until(lambda: _try_login(n), 5.0)
        check('pop3_autologout_deletes_nothing', p is not None and p.stat()[0] == 1)
        if p:
            p.quit()


def _try_login(n):
    try:
        return poplib_login(n)
    except poplib.error_proto:
        return None


def _outside_address():
    """A local address that is not loopback, or None."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(('192.0.2.1', 9))     # TEST-NET-1: no packet is sent
        ip = s.getsockname()[0]
        s.close()
        return None if ip.startswith('127.') else ip
    except OSError:
        return None


@test
def cleartext_refused_off_loopback():
    ip = _outside_address()
    if not ip:
        harness.diag('no non-loopback address: cleartext test skipped')
        return
    with new_node() as n:
        port = harness.free_ports(1)[0]
        n.configure({'listen.pop3': '127.0.0.1:%d, %s:%d' % (n.port('pop3'), ip, port)})
        n.restart()
        c = Pop(n, port=port, host=ip)
        r = c.cmd('USER alice')
        check('pop3_cleartext_user_refused', r.startswith(b'-ERR [AUTH]'), r)
        cred = base64.b64encode(b'\0alice\0' + PASSWORD.encode()).decode()
        r = c.cmd('AUTH PLAIN ' + cred)
        check('pop3_cleartext_plain_refused', r.startswith(b'-ERR [AUTH]'), r)
        c.cmd('CAPA')
        capa = c.multi()
        check('pop3_capa_no_user_off_loopback', b'\r\nUSER\r\n' not in capa, capa)
        c.close()
        n.configure({'auth.cleartext': 'yes'})
        n.restart()
        c = Pop(n, port=port, host=ip)
        r = c.login()
        check('pop3_cleartext_allowed_by_config', r.startswith(b'+OK'), r)
        c.close()


@test
def mailbox_export():
    with new_node() as n:
        m1 = message(1, b'From the start of a line\r\n>From quoted\r\n>>From twice\r\n')
        m2 = message(2)
        deliver(n, m1)
        deliver(n, m2, sender='')
        rc, out, err = n.cli('mailbox', 'list', 'alice')
        rows = [l.split('\t') for l in out.splitlines()]
        check('pop3_cli_list', rc == 0 and len(rows) == 2 and rows[0][5] == 'message 1' and
              rows[0][4] == 'Bob <bob@remote.test>', (rc, out, err))
        rc, out, err = n.cli('mailbox', 'list', 'nobody')
        check('pop3_cli_list_unknown_user', rc == os.EX_NOUSER, (rc, err))
        rc, out, err = n.cli('mailbox', 'list', '--help')
        check('pop3_cli_list_help', rc == 0 and 'usage' in out, (rc, out))

        mbox = n.path('out.mbox')
        rc, out, err = n.cli('mailbox', 'export', 'alice', '--mbox', mbox)
        check('pop3_cli_export_mbox_rc', rc == 0, (rc, err))
        data = open(mbox, 'rb').read()
        check('pop3_mbox_no_crlf', b'\r\n' not in data)
        check('pop3_mbox_from_lines', data.startswith(b'From bob@remote.test ') and
              b'\n\nFrom MAILER-DAEMON ' in data, data[:200])
        check('pop3_mboxrd_quoting', b'\n>From the start of a line\n>>From quoted\n>>>From twice\n'
              in data, data)
        # Undo the mboxrd quoting and compare with what was sent.
        parts = data.split(b'\n\nFrom ')
        first = parts[0].split(b'\n', 1)[1] + b'\n'
        lines = [l[1:] if l.lstrip(b'>').startswith(b'From ') and l.startswith(b'>') else l
                 for l in first.split(b'\n')]
        back = b'\r\n'.join(lines)
        check('pop3_mbox_roundtrip', strip_trace(back) == m1, back[-200:])

        md = n.path('Maildir')
        rc, out, err = n.cli('mailbox', 'export', 'alice', '--maildir', md, '--delete')
        check('pop3_cli_export_maildir_rc', rc == 0, (rc, err))
        files = sorted(os.listdir(os.path.join(md, 'new'))) if os.path.isdir(md) else []
        check('pop3_maildir_layout', len(files) == 2 and
              all(os.path.isdir(os.path.join(md, d)) for d in ('cur', 'new', 'tmp')), files)
        if len(files) == 2:
            texts = [open(os.path.join(md, 'new', f), 'rb').read() for f in files]
            got = sorted(strip_trace(t.replace(b'\n', b'\r\n'), SENDER) or
                         strip_trace(t.replace(b'\n', b'\r\n'), '') or b'' for t in texts)
            check('pop3_maildir_contents', got == sorted([m1, m2]))
        rc, out, err = n.cli('mailbox', 'list', 'alice')
        check('pop3_export_delete_empties', rc == 0 and out == '', (rc, out, err))
        rc, out, err = n.cli('mailbox', 'export', 'alice')
        check('pop3_cli_export_usage', rc == os.EX_USAGE, (rc, err))


harness.main()
