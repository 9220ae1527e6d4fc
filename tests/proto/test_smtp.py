"""ESMTP server: the command set, extensions, limits, smuggling, relay
policy, AUTH, local delivery byte for byte, persistence and crash safety.
Real clients: python's smtplib and poplib, raw sockets, swaks."""
import hashlib
import os
import poplib
import shutil
import smtplib
import socket
import subprocess
import threading
import time

import harness
from harness import Node, check, test, wait_until

PW = 'secret-pass'


def add_user(n, name, pw=PW):
    rc, out, err = n.cli('user', 'add', name, input=pw + '\n')
    assert rc == 0, 'user add %s: %s %s' % (name, rc, err)


def fetch_all(n, user, pw=PW):
    """Every message of the mailbox as the bytes POP3 serves (CRLF lines)."""
    p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=20)
    try:
        p.user(user)
        p.pass_(pw)
        msgs = []
        count = len(p.list()[1])
        for i in range(1, count + 1):
            _, lines, _ = p.retr(i)
            msgs.append(b''.join(l + b'\r\n' for l in lines))
        return msgs
    finally:
        p.quit()


def strip_trace(msg):
    """The message without the Return-Path and Received lines we add."""
    lines = msg.split(b'\r\n')
    i = 0
    assert lines[0].startswith(b'Return-Path: <'), lines[0]
    i = 1
    assert lines[i].startswith(b'Received: from '), lines[i]
    i += 1
    while lines[i].startswith(b'\t'):
        i += 1
    return b'\r\n'.join(lines[i:])


def node(conf=None, **kw):
    n = Node(conf=conf, **kw)
    add_user(n, 'alice')
    add_user(n, 'bob')
    return n


@test
def ehlo_and_command_set():
    with node() as n, n.raw() as c:
        check('greeting', c.recv_reply().code == 220)
        check('mail_before_helo_503', c.cmd('MAIL FROM:<a@b.test>').code == 503)
        r = c.cmd('EHLO client.test')
        kw = [l.split()[0].upper() for l in r.lines[1:]]
        for ext in ('PIPELINING', 'SIZE', '8BITMIME', 'ENHANCEDSTATUSCODES', 'CHUNKING', 'DSN', 'AUTH'):
            check('ehlo_has_' + ext.lower(), ext in kw, r.lines)
        check('ehlo_size_value', any(l.startswith('SIZE ') and l.split()[1].isdigit() for l in r.lines))
        check('helo', c.cmd('HELO client.test').code == 250)
        r = c.cmd('MAIL FROM:<x@remote.test> SIZE=10')
        check('helo_session_has_no_parameters', r.code == 555, r.raw)
        check('ehlo_without_arg_501', c.cmd('EHLO').code == 501)
        check('ehlo_again', c.cmd('EHLO client.test').code == 250)
        check('noop', c.cmd('NOOP').raw.startswith(b'250 2.0.0'))
        check('rset', c.cmd('RSET').raw.startswith(b'250 2.0.0'))
        r = c.cmd('HELP')
        check('help_214', r.code == 214)
        check('vrfy_252', c.cmd('VRFY alice').code == 252)
        check('expn_refused', c.cmd('EXPN staff').code == 502)
        for verb in ('TURN', 'SEND FROM:<a@b.test>', 'SOML FROM:<a@b.test>', 'SAML FROM:<a@b.test>'):
            check('obsolete_502_' + verb.split()[0].lower(), c.cmd(verb).code == 502)
        check('unknown_500', c.cmd('FROB').code == 500)
        check('rcpt_before_mail_503', c.cmd('RCPT TO:<alice@example.test>').code == 503)
        check('data_before_mail_503', c.cmd('DATA').code == 503)
        check('mail_ok', c.cmd('MAIL FROM:<x@remote.test>').raw.startswith(b'250 2.1.0'))
        check('nested_mail_503', c.cmd('MAIL FROM:<x@remote.test>').code == 503)
        check('data_without_rcpt_554', c.cmd('DATA').code == 554)
        check('bad_param_555', c.cmd('RCPT TO:<alice@example.test> FOO=bar').code == 555)
        r = c.cmd('RCPT TO:<alice@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.test')
        check('rcpt_ok', r.code == 250, r.raw)
        r = c.cmd('RCPT TO:<bob@example.test> NOTIFY=NEVER,SUCCESS')
        check('bad_notify_501', r.code == 501, r.raw)
        check('unknown_user_550', c.cmd('RCPT TO:<nobody@example.test>').raw.startswith(b'550 5.1.1'))
        r = c.cmd('QUIT')
        check('quit_221', r.code == 221)
        check('closed_after_quit', c.closed(5))


@test
def every_reply_has_enhanced_code():
    with node() as n, n.raw() as c:
        c.recv_reply()
        replies = [c.cmd(x) for x in ('EHLO a.test', 'NOOP', 'FROB', 'MAIL FROM:<>', 'RCPT TO:<nobody@example.test>',
                                     'RCPT TO:<alice@example.test>', 'RSET', 'VRFY x', 'QUIT')]
        bad = [r.raw for r in replies[1:] if not (len(r.lines[-1]) > 5 and r.lines[-1][0] in '245'
                                                   and r.lines[-1][1] == '.')]
        check('enhanced_status_codes', not bad, bad)


@test
def local_delivery_byte_exact():
    with node() as n:
        body8 = bytes(range(128, 256)) + b' 8-bit line'
        binary = bytes(b for b in range(256) if b not in (10, 13))
        msg = (b'From: Carol <carol@remote.test>\r\nTo: alice@example.test\r\nSubject: exact\r\n'
               b'\r\n.leading dot\r\n..two dots\r\n.\r\nline after a lone dot\r\n' + body8 + b'\r\n'
               + binary + b'\r\n' + b'x' * 998 + b'\r\nlast line\r\n')
        s = n.smtp()
        s.ehlo('client.test')
        r = s.sendmail('carol@remote.test', ['alice@example.test', 'bob@example.test'], msg,
                       mail_options=['BODY=8BITMIME'])
        s.quit()
        check('sendmail_accepted', r == {}, r)
        for user in ('alice', 'bob'):
            got = fetch_all(n, user)
            check('one_message_' + user, len(got) == 1, len(got))
            if got:
                check('return_path_' + user, got[0].startswith(b'Return-Path: <carol@remote.test>\r\n'))
                check('received_added_' + user, b'\r\nReceived: from client.test' in got[0][:200])
                check('body_sha256_' + user,
                      hashlib.sha256(strip_trace(got[0])).hexdigest() == hashlib.sha256(msg).hexdigest(),
                      got[0][-200:])
        check('log_accepted', 'accepted from=<carol@remote.test>' in n.log())
        check('log_delivered', 'to=<alice@example.test> delivered to mailbox' in n.log())


@test
def pipelining_in_order():
    with node() as n, n.raw() as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        c.send(b'MAIL FROM:<p@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\n'
               b'RCPT TO:<bob@example.test>\r\nDATA\r\n')
        codes = [c.recv_reply().code for _ in range(5)]
        check('pipelined_group_replies', codes == [250, 250, 550, 250, 354], codes)
        # the message, then a second whole transaction in one write
        c.send(b'Subject: one\r\n\r\nbody one\r\n.\r\nMAIL FROM:<p@remote.test>\r\nRCPT TO:<alice@example.test>\r\n'
               b'DATA\r\nSubject: two\r\n\r\nbody two\r\n.\r\nNOOP\r\nQUIT\r\n')
        replies = [c.recv_reply() for _ in range(7)]
        codes = [r.code for r in replies]
        check('pipelined_second_transaction', codes == [250, 250, 250, 354, 250, 250, 221], codes)
        check('queued_as_reply', replies[0].lines[0].startswith('2.0.0 Ok: queued as '), replies[0].raw)
        msgs = fetch_all(n, 'alice')
        check('both_delivered', len(msgs) == 2 and b'body one' in msgs[0] and b'body two' in msgs[1], len(msgs))


@test
def bdat_chunking():
    with node() as n, n.raw() as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        # BDAT before MAIL: the chunk is read and refused, the session stays in step
        c.send(b'BDAT 10\r\n0123456789')
        check('bdat_without_mail_503', c.recv_reply().code == 503)
        check('in_step_after_refused_chunk', c.cmd('NOOP').code == 250)
        part1 = b'Subject: chunked\r\n\r\nfirst part, '
        part2 = b'second part\r\n.not a terminator\r\n'
        c.send(b'MAIL FROM:<b@remote.test>\r\nRCPT TO:<alice@example.test>\r\n')
        c.send(b'BDAT %d\r\n' % len(part1) + part1 + b'BDAT %d LAST\r\n' % len(part2) + part2)
        codes = [c.recv_reply().code for _ in range(4)]
        check('bdat_pipelined', codes == [250, 250, 250, 250], codes)
        c.send(b'MAIL FROM:<b@remote.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT 0 LAST\r\n')
        codes = [c.recv_reply().code for _ in range(3)]
        check('bdat_zero_last', codes == [250, 250, 250], codes)
        check('data_after_bdat_503', c.cmd('MAIL FROM:<b@remote.test>').code == 250
              and c.cmd('RCPT TO:<alice@example.test>').code == 250
              and (c.send(b'BDAT 3\r\nabc') or c.recv_reply().code == 250)
              and c.cmd('DATA').code == 503)
        c.cmd('RSET')
        msgs = fetch_all(n, 'alice')
        check('bdat_messages', len(msgs) == 2, len(msgs))
        if msgs:
            check('bdat_body_exact', strip_trace(msgs[0]) == part1 + part2, msgs[0][-120:])


@test
def smuggling_cannot_end_data():
    tricks = [b'\n.\n', b'\r.\r', b'\n.\r\n', b'\r\n.\n', b'\r.\r\n', b'\r\n.\r']
    with node() as n, n.raw() as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        for i, t in enumerate(tricks):
            c.send(b'MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n')
            codes = [c.recv_reply().code for _ in range(3)]
            smuggled = (b'MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n'
                        b'Subject: smuggled\r\n\r\nsmuggled\r\n')
            c.send(b'Subject: trick %d\r\n\r\nbefore' % i + t + smuggled + b'.\r\n')
            r = c.recv_reply()
            check('trick_%d_one_message' % i, codes == [250, 250, 354] and r.code == 250, (codes, r.raw))
            # nothing else may be pending: a NOOP is answered next
            check('trick_%d_no_extra_replies' % i, c.cmd('NOOP').raw.startswith(b'250 2.0.0 Ok'))
        check('bob_got_nothing', len(fetch_all(n, 'bob')) == 0)
        msgs = fetch_all(n, 'alice')
        check('alice_got_all_tricks', len(msgs) == len(tricks), len(msgs))
        check('smuggled_text_is_data', all(b'smuggled' in m for m in msgs))


@test
def limits():
    conf = {'message_size_limit': '20K', 'max_recipients': '3', 'max_connections': '6',
            'max_received': '100'}
    with node(conf) as n, n.raw() as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        check('command_line_too_long_500', c.cmd('NOOP ' + 'x' * 600).code == 500)
        check('session_goes_on', c.cmd('NOOP').code == 250)
        check('local_part_65_553', c.cmd('MAIL FROM:<%s@remote.test>' % ('a' * 65)).code == 553)
        check('local_part_64_ok', c.cmd('MAIL FROM:<%s@remote.test>' % ('a' * 64)).code == 250)
        c.cmd('RSET')
        long_domain = '.'.join(['d' * 60] * 4) + '.tst'     # 247 octets, fine
        check('domain_247_ok', c.cmd('MAIL FROM:<a@%s>' % long_domain).code == 250)
        c.cmd('RSET')
        too_long = '.'.join(['d' * 63] * 4) + '.test'        # 260 octets
        check('domain_too_long_refused', c.cmd('MAIL FROM:<a@%s>' % too_long).code in (501, 553))
        check('size_param_too_big_552', c.cmd('MAIL FROM:<a@remote.test> SIZE=30000').code == 552)
        check('size_param_ok', c.cmd('MAIL FROM:<a@remote.test> SIZE=1000').code == 250)
        # the limit counts distinct recipients (duplicates are merged)
        for rcpt in ('alice@example.test', 'alice@example.test', 'r1@remote.test', 'r2@remote.test'):
            c.cmd('RCPT TO:<%s>' % rcpt)
        check('max_recipients_452', c.cmd('RCPT TO:<bob@example.test>').raw.startswith(b'452 4.5.3'))
        check('data_354', c.cmd('DATA').code == 354)
        c.send(b'Subject: big\r\n\r\n' + (b'y' * 900 + b'\r\n') * 30 + b'.\r\n')
        check('message_too_big_552', c.recv_reply().raw.startswith(b'552 5.3.4'))
        c.cmd('MAIL FROM:<a@remote.test>')
        c.cmd('RCPT TO:<alice@example.test>')
        c.cmd('DATA')
        c.send(b'Subject: long line\r\n\r\n' + b'z' * 1200 + b'\r\n.\r\n')
        check('text_line_too_long_refused', c.recv_reply().code == 500)
        c.cmd('MAIL FROM:<a@remote.test>')
        c.cmd('RCPT TO:<alice@example.test>')
        c.cmd('DATA')
        c.send(b''.join(b'Received: from hop%d.test by x\r\n' % i for i in range(100)) + b'\r\nloop\r\n.\r\n')
        check('hundred_received_554', c.recv_reply().raw.startswith(b'554 5.4.6'))
        c.cmd('MAIL FROM:<a@remote.test>')
        c.cmd('RCPT TO:<alice@example.test>')
        c.cmd('DATA')
        c.send(b''.join(b'Received: from hop%d.test by x\r\n' % i for i in range(99)) + b'\r\nok\r\n.\r\n')
        check('ninety_nine_received_ok', c.recv_reply().code == 250)
        check('nothing_oversized_stored', len(fetch_all(n, 'alice')) == 1)
        # max_connections: the seventh concurrent connection gets 421
        extra = [n.raw() for _ in range(5)]
        try:
            for e in extra:
                e.recv_reply()
            with n.raw() as over:
                check('max_connections_421', over.recv_reply().code == 421)
        finally:
            for e in extra:
                e.close()


@test
def path_syntax():
    with node({'relay_networks': ''}) as n, n.raw() as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        check('null_sender_ok', c.cmd('MAIL FROM:<>').code == 250)
        check('quoted_local_part_rcpt', c.cmd('RCPT TO:<"alice"@example.test>').code == 250)
        check('source_route_stripped', c.cmd('RCPT TO:<@hop1.test,@hop2.test:alice@example.test>').code == 250)
        check('postmaster_needs_user_or_alias', c.cmd('RCPT TO:<postmaster>').code in (250, 550))
        check('ip_literal_relay_denied', c.cmd('RCPT TO:<alice@[192.0.2.1]>').code in (550, 554))
        check('missing_brackets_501', c.cmd('RCPT TO:alice@example.test').code == 501)
        check('unclosed_501', c.cmd('RCPT TO:<alice@example.test').code == 501)
        check('space_in_path_501', c.cmd('RCPT TO:<ali ce@example.test>').code == 501)
        check('eight_bit_address_refused', c.cmd(b'RCPT TO:<\xc3\xa9@example.test>').code in (501, 553))


@test
def relay_battery():
    with node({'relay_networks': ''}) as n, n.raw() as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        c.cmd('MAIL FROM:<x@remote.test>')
        tries = {
            'plain_remote': '<victim@remote.test>',
            'percent_hack': '<victim%remote.test@example.test>',
            'bang_path': '<remote.test!victim@example.test>',
            'source_route': '<@example.test:victim@remote.test>',
            'quoted_at': '<"victim@remote.test"@example.test>',
            'percent_hack_ip': '<victim%[192.0.2.1]@example.test>',
            'uppercase_remote': '<victim@REMOTE.TEST>',
            'trailing_dot': '<victim@remote.test.>',
        }
        for name, path in tries.items():
            r = c.cmd('RCPT TO:%s' % path)
            check('no_relay_' + name, r.code in (501, 550, 553, 554), r.raw)
        c.cmd('RSET')
        rc, out, err = n.cli('queue', 'count')
        check('nothing_queued', out.strip() == '0', out + err)
        check('relay_denied_5_7_1', b'554 5.7.1' in c.cmd('RCPT TO:<v@remote.test>').raw
              or c.cmd('MAIL FROM:<x@remote.test>') and c.cmd('RCPT TO:<v@remote.test>').raw.startswith(b'554 5.7.1'))


@test
def relay_from_trusted_network_and_auth():
    # a smarthost that is down: the relayed message stays in the queue
    with node({'relay_networks': '127.0.0.0/8', 'relayhost': '127.0.0.1:1', 'retry.initial': '1h'}) as n:
        s = n.smtp()
        r = s.sendmail('alice@example.test', ['far@remote.test'], b'Subject: out\r\n\r\nrelay me\r\n')
        s.quit()
        check('relay_from_network', r == {}, r)
        rc, out, err = n.cli('queue', 'list')
        check('queued_for_remote', 'far@remote.test' in out and 'queued' in out, out + err)
        rc, out, err = n.cli('queue', 'count')
        check('queue_count_1', out.strip() == '1', out)
    with node({'relay_networks': ''}) as n:
        s = n.smtp()
        s.ehlo('client.test')
        try:
            s.sendmail('alice@example.test', ['far@remote.test'], b'Subject: x\r\n\r\nx\r\n')
            check('relay_denied_without_auth', False, 'accepted')
        except smtplib.SMTPRecipientsRefused as e:
            code = list(e.recipients.values())[0][0]
            check('relay_denied_without_auth', code == 554, e.recipients)
        s.rset()
        try:
            s.login('alice', 'wrong')
            check('wrong_password_535', False)
        except smtplib.SMTPAuthenticationError as e:
            check('wrong_password_535', e.smtp_code == 535, e)
        s.login('alice', PW)
        r = s.sendmail('alice@example.test', ['far@remote.test'], b'Subject: x\r\n\r\nx\r\n')
        check('relay_after_auth', r == {}, r)
        s.quit()
        for mech in ('CRAM-MD5', 'LOGIN', 'PLAIN'):
            s = n.smtp()
            s.ehlo('client.test')
            s.user, s.password = 'bob', PW
            try:
                code, _ = s.auth(mech, getattr(s, 'auth_' + mech.lower().replace('-', '_')),
                                 initial_response_ok=(mech == 'PLAIN'))
                check('auth_' + mech.lower(), code == 235, code)
            except smtplib.SMTPException as e:
                check('auth_' + mech.lower(), False, e)
            s.quit()


@test
def submission_requires_auth():
    with node() as n:
        s = smtplib.SMTP('127.0.0.1', n.port('submission'), timeout=10)
        s.ehlo('client.test')
        code, _ = s.mail('alice@example.test')
        check('submission_530_without_auth', code == 530, code)
        s.rset()
        s.login('alice', PW)
        r = s.sendmail('alice@example.test', ['bob@example.test'], b'Subject: sub\r\n\r\nsubmitted\r\n')
        check('submission_after_auth', r == {}, r)
        s.quit()
        check('submitted_delivered', len(fetch_all(n, 'bob')) == 1)


@test
def swaks_client():
    if not shutil.which('swaks'):
        check('swaks_installed', False, 'swaks not found')
        return
    with node() as n:
        p = subprocess.run(['swaks', '--server', '127.0.0.1', '--port', str(n.port('smtp')),
                            '--from', 'swaks@remote.test', '--to', 'alice@example.test',
                            '--helo', 'swaks.test', '--pipeline', '--header', 'Subject: via swaks',
                            '--body', 'hello from swaks'], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode('utf-8', 'replace')
        check('swaks_exit_0', p.returncode == 0, out[-500:])
        check('swaks_saw_250_queued', 'queued as' in out, out[-500:])
        msgs = fetch_all(n, 'alice')
        check('swaks_delivered', len(msgs) == 1 and b'hello from swaks' in msgs[0])


@test
def timeouts():
    with node({'smtp.timeout.command': '2s'}) as n, n.raw() as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        r = c.recv_reply(timeout=8)
        check('idle_timeout_421', r.code == 421 and '4.4.2' in r.text, r.raw)
        check('closed_after_timeout', c.closed(5))


@test
def persistence_across_restart():
    with node({'relayhost': '127.0.0.1:1', 'retry.initial': '1h'}) as n:
        s = n.smtp()
        s.sendmail('x@remote.test', ['alice@example.test'], b'Subject: keep\r\n\r\nkept\r\n')
        s.sendmail('alice@example.test', ['far@remote.test'], b'Subject: out\r\n\r\nqueued\r\n')
        s.quit()
        n.restart()
        msgs = fetch_all(n, 'alice')
        check('mailbox_survives_restart', len(msgs) == 1 and b'kept' in msgs[0])
        rc, out, err = n.cli('queue', 'list')
        check('queue_survives_restart', 'far@remote.test' in out, out)


def _sender(port, count, acked, stop):
    for i in range(count):
        if stop.is_set():
            return
        try:
            s = smtplib.SMTP('127.0.0.1', port, timeout=10)
            tag = 'crash-%d-%d' % (threading.get_ident(), i)
            s.sendmail('load@remote.test', ['alice@example.test'],
                       ('Subject: %s\r\n\r\n%s\r\n' % (tag, tag * 20)).encode())
            acked.append(tag)
            s.quit()
        except (OSError, smtplib.SMTPException):
            return


@test
def kill9_loses_nothing_accepted():
    with node() as n:
        acked, stop = [], threading.Event()
        threads = [threading.Thread(target=_sender, args=(n.port('smtp'), 400, acked, stop)) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 60, timeout=60)
        n.kill9()
        stop.set()
        for t in threads:
            t.join(30)
        n.start()
        msgs = fetch_all(n, 'alice')
        have = set()
        for m in msgs:
            for line in m.split(b'\r\n'):
                if line.startswith(b'Subject: crash-'):
                    have.add(line[9:].decode())
        lost = [t for t in acked if t not in have]
        check('load_was_running', len(acked) >= 60, len(acked))
        check('no_acknowledged_message_lost', not lost, '%d lost of %d' % (len(lost), len(acked)))


@test
def per_address_limits():
    # relay_networks empty: the loopback client counts as a stranger here
    with node({'relay_networks': '', 'limit.connections_per_ip': '3', 'limit.auth_failures_per_ip': '3',
               'limit.messages_per_minute': '2', 'auth.fail_delay': '0s'}) as n:
        held = [n.raw() for _ in range(3)]
        try:
            for c in held:
                c.recv_reply()
            with n.raw() as extra:
                r = extra.recv_reply()
                check('fourth_connection_421', r.code == 421, r.raw)
        finally:
            for c in held:
                c.close()
        time.sleep(0.3)
        for i in range(3):
            s = n.smtp()
            s.ehlo('x.test')
            try:
                s.login('alice', 'wrong')
            except smtplib.SMTPException:
                pass
            try:
                s.quit()
            except smtplib.SMTPException:
                pass
        with n.raw() as c:
            c.recv_reply()
            c.cmd('EHLO x.test')
            r = c.cmd('AUTH PLAIN ' + 'AGFsaWNlAHNlY3JldC1wYXNz')
            check('auth_blocked_after_failures_421', r.code == 421, r.raw)
        codes = []
        for i in range(3):
            with n.raw() as c:
                c.recv_reply()
                c.cmd('EHLO x.test')
                codes.append(c.cmd('MAIL FROM:<a@remote.test>').code)
        check('message_rate_limited', codes == [250, 250, 421], codes)


@test
def drops_root_after_binding():
    if os.geteuid() != 0:
        check('drop_root_needs_root', False, 'the test runs the daemon as root')
        return
    n = Node(start=False, conf={'user': 'nobody'})
    try:
        os.chmod(n.dir, 0o777)          # the database directory must be writable by the user
        n.start()
        pid = n.proc.pid
        with open('/proc/%d/status' % pid) as f:
            uids = [l.split()[1:] for l in f if l.startswith('Uid:')][0]
        check('runs_as_nobody', all(u == '65534' for u in uids), uids)
        check('database_owned_by_nobody', os.stat(n.db).st_uid == 65534, os.stat(n.db).st_uid)
        with n.raw() as c:
            check('serves_after_drop', c.recv_reply().code == 220)
        check('drop_logged', 'running as user nobody' in n.log())
    finally:
        n.close()
    n = Node(start=False, conf={'user': 'no-such-user-here'})
    try:
        try:
            n.start()
            check('unknown_user_refused', False, 'started')
        except RuntimeError as e:
            check('unknown_user_refused', 'no such user' in str(e), str(e)[-300:])
    finally:
        n.close()


harness.main()
