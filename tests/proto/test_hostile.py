"""Hostile and mistaken peers: requests and inputs that must not lose,
multiply, leak or loop mail, against the running daemon with raw sockets
and the standard library's clients."""

import os
import re
import smtplib
import socket
import time

import harness
from harness import Node, check, diag, test, wait_until
from sink import Sink
from fakedns import FakeDNS

PW = 'hostile-secret-1'
SITE = 'site.test'


# ------------------------------------------------------------------ helpers

def add_user(n, name, pw=PW):
    rc, out, err = n.cli('user', 'add', name, input=pw + '\n')
    assert rc == 0, 'user add %s: %s' % (name, err)


def add_hold(n, domain, owner=None, host=None):
    args = ['domain', 'add', domain, '--hold']
    if owner:
        args += ['--owner', owner]
    if host:
        args += ['--host', host]
    rc, out, err = n.cli(*args)
    assert rc == 0, 'domain add %s: %s' % (domain, err)


def queue_listing(n):
    """`queue list` output: queue ids and recipients, to see that nothing
    was touched."""
    rc, out, err = n.cli('queue', 'list')
    return out if rc == 0 else 'queue list failed: %s' % err


def held(n, domain=None):
    count = 0
    for line in queue_listing(n).splitlines():
        if line.startswith('    ') and '(held)' in line:
            addr = line.split()[0].lower()
            if domain is None or addr.endswith('@' + domain):
                count += 1
    return count


def message(subject, rcpt, extra=''):
    return ('From: sender@remote.test\r\nTo: %s\r\nSubject: %s\r\n%s\r\n'
            'body line\r\n' % (rcpt, subject, extra)).encode()


def submit(n, rcpt, count, tag='held', sender='sender@remote.test'):
    c = smtplib.SMTP('127.0.0.1', n.port('smtp'), timeout=20)
    try:
        for i in range(count):
            c.sendmail(sender, [rcpt], message('%s %d' % (tag, i), rcpt))
    finally:
        c.quit()


def etrn(n, arg):
    with n.raw('smtp') as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        r = c.cmd('ETRN ' + arg)
        c.cmd('QUIT')
        return r


def received_count(n):
    """Received fields over every held message (`queue show`)."""
    total = 0
    for qid in re.findall(r'^([0-9A-Za-z]{8,})\s', queue_listing(n), re.M):
        rc, out, err = n.cli('queue', 'show', qid)
        total += len(re.findall(r'^Received:', out, re.M | re.I))
    return total


# ------------------------------------------- 1. ETRN must never deliver to us

@test
def etrn_owner_without_host_is_atrn_only():
    with Node(conf={'retry.initial': '1s'}) as n:
        add_user(n, 'site')
        add_hold(n, SITE, owner='site')
        submit(n, 'someone@' + SITE, 3)
        before = queue_listing(n)
        check('etrn_atrn_site_held', held(n, SITE) == 3, before)
        r = etrn(n, SITE)
        check('etrn_atrn_site_459', r.code == 459 and 'ATRN' in r.text, r.raw)
        r = etrn(n, '@' + SITE)
        check('etrn_at_atrn_site_459', r.code == 459, r.raw)
        time.sleep(1.5)
        check('etrn_atrn_site_untouched', queue_listing(n) == before,
              'before %r after %r' % (before[-300:], queue_listing(n)[-300:]))
        check('etrn_atrn_site_logged', 'only the owner' in n.log(), n.log()[-600:])


@test
def etrn_host_is_own_listener():
    with Node(conf={'retry.initial': '1s'}) as n:
        add_hold(n, SITE, host='127.0.0.1:%d' % n.port('smtp'))
        submit(n, 'someone@' + SITE, 3)
        before = queue_listing(n)
        received = received_count(n)
        r = etrn(n, SITE)
        check('etrn_self_host_458', r.code == 458 and 'loop' in r.text, r.raw)
        # another listener of ours is ourselves too
        n.cli('domain', 'del', SITE)
        add_hold(n, SITE, host='127.0.0.1:%d' % n.port('submission'))
        r = etrn(n, SITE)
        check('etrn_self_other_port_458', r.code == 458, r.raw)
        for _ in range(5):
            etrn(n, SITE)
        time.sleep(1.5)
        after = queue_listing(n)
        check('etrn_self_same_queue_ids', after == before, 'before %r after %r' % (before[-300:], after[-300:]))
        check('etrn_self_no_received_added', received_count(n) == received,
              '%d -> %d' % (received, received_count(n)))
        check('etrn_self_logged', 'loop back' in n.log(), n.log()[-600:])


@test
def etrn_mx_is_this_node():
    # The domain has no host and no owner: the release looks up the MX,
    # which is this node on another name.
    records = {SITE: {'MX': [(10, 'mx.' + SITE)]}, 'mx.' + SITE: {'A': ['127.0.0.1']}}
    with FakeDNS(records) as dns:
        with Node(start=False) as n:
            n.configure({'resolver': dns.resolver, 'delivery.port': n.port('smtp')})
            n.start()
            add_hold(n, SITE)
            submit(n, 'someone@' + SITE, 2)
            before = queue_listing(n)
            received = received_count(n)
            r1 = etrn(n, SITE)
            check('etrn_mx_self_first_reply_ok', r1.code in (250, 253, 458), r1.raw)
            wait_until(lambda: 'loops back to myself' in n.log(), 10)
            time.sleep(0.5)
            r2 = etrn(n, SITE)
            check('etrn_mx_self_second_458', r2.code == 458, r2.raw)
            time.sleep(1.0)
            check('etrn_mx_self_untouched', queue_listing(n) == before and received_count(n) == received,
                  queue_listing(n)[-400:])
            check('etrn_mx_self_logged', 'loops back to myself' in n.log(), n.log()[-600:])


@test
def etrn_peer_greets_with_our_name():
    # A host that is this node behind another address or a port forward:
    # recognised by its greeting.
    with Sink(helo_name='node.test') as sink:
        with Node() as n:
            add_hold(n, SITE, host='127.0.0.1:%d' % sink.port)
            submit(n, 'someone@' + SITE, 2)
            before = queue_listing(n)
            r = etrn(n, SITE)
            check('etrn_greeting_self_started', r.code in (250, 253), r.raw)
            wait_until(lambda: 'loops back to myself' in n.log(), 10)
            time.sleep(0.5)
            check('etrn_greeting_self_nothing_sent', not sink.messages,
                  '%d messages reached the look-alike' % len(sink.messages))
            check('etrn_greeting_self_untouched', queue_listing(n) == before, queue_listing(n)[-400:])
            check('etrn_greeting_self_next_458', etrn(n, SITE).code == 458)


# ----------------------------------------- 2. nothing smuggled into headers

def bare_breaks(data):
    """Offsets of a CR not followed by LF or an LF not preceded by CR."""
    bad = []
    for i, b in enumerate(data):
        if b == 13 and data[i + 1:i + 2] != b'\n':
            bad.append(i)
        elif b == 10 and (i == 0 or data[i - 1] != 13):
            bad.append(i)
    return bad


def bare_cr(data):
    return [i for i, b in enumerate(data) if b == 13 and data[i + 1:i + 2] != b'\n']


def pop3_retr_raw(n, user, pw, number):
    with n.raw('pop3') as c:
        c.recv_line()
        c.send('USER %s\r\n' % user)
        c.recv_line()
        c.send('PASS %s\r\n' % pw)
        r = c.recv_line()
        assert r.startswith(b'+OK'), r
        c.send('RETR %d\r\n' % number)
        data = c.recv_until(b'\r\n.\r\n')
        c.send('QUIT\r\n')
        return data


SMUGGLED_BODIES = [
    b'Subject: cr\r\n\r\nline one\rX-Injected: yes\r\nend\r\n',
    b'Subject: lf\r\n\r\nline one\nX-Injected: yes\n.\nend\r\n',
    b'Subject: crdot\r\n\r\nx\r.\rMAIL FROM:<evil@remote.test>\r\nend\r\n',
]


@test
def helo_smuggling_refused():
    with Node() as n:
        for bad in (b'EHLO x\r.\r', b'EHLO x\rX-Injected:\tyes', b'HELO x\rX-Injected: yes',
                    b'EHLO x\ty', b'EHLO caf\xc3\xa9.test', b'EHLO a;b', b'EHLO [1.2.3.4',
                    b'EHLO [1.2 3.4]', b'EHLO <x>'):
            with n.raw('smtp') as c:
                c.recv_reply()
                r = c.cmd(bad)
                check('helo_refused_%r' % bad[5:15], r.code == 501, r.raw)
                r = c.cmd('MAIL FROM:<a@remote.test>')
                check('helo_refused_no_session_%r' % bad[5:15], r.code == 503, r.raw)
        for good in ('EHLO client.test', 'EHLO [127.0.0.1]', 'EHLO [IPv6:::1]', 'HELO my_pc',
                     'EHLO localhost'):
            with n.raw('smtp') as c:
                c.recv_reply()
                check('helo_accepted_%s' % good.split()[1], c.cmd(good).code == 250)


@test
def no_bare_line_break_leaves():
    with Sink() as sink:
        with Node(conf={'relayhost': '127.0.0.1:%d' % sink.port, 'retry.initial': '1s'}) as n:
            add_user(n, 'bob')
            for i, body in enumerate(SMUGGLED_BODIES):
                for verb in ('DATA', 'BDAT'):
                    with n.raw('smtp') as c:
                        c.recv_reply()
                        c.cmd('EHLO client.test')
                        check('smuggle_mail_%d_%s' % (i, verb),
                              c.cmd('MAIL FROM:<alice@remote.test>').code == 250)
                        c.cmd('RCPT TO:<bob@example.test>')
                        c.cmd('RCPT TO:<far@remote.test>')
                        if verb == 'DATA':
                            c.cmd('DATA')
                            c.send(body + b'.\r\n')
                        else:
                            c.send(b'BDAT %d LAST\r\n' % len(body) + body)
                        r = c.recv_reply()
                        check('smuggle_accepted_%d_%s' % (i, verb), r.code == 250, r.raw)
                        c.cmd('QUIT')
            want = 2 * len(SMUGGLED_BODIES)
            got = sink.wait_for(want, timeout=20)
            check('smuggle_relayed', got, '%d of %d' % (len(sink.messages), want))
            for m in sink.messages:
                check('relay_no_bare_cr_lf_%d' % m.number, not bare_breaks(m.data), m.data[:300])
                head = m.data.split(b'\r\n\r\n', 1)[0]
                check('relay_no_injected_field_%d' % m.number,
                      not re.search(rb'^X-Injected', head, re.M) and head.count(b'Received:') == 1,
                      head[:300])
            for k in range(1, want + 1):
                data = pop3_retr_raw(n, 'bob', PW, k)
                check('pop3_no_bare_cr_lf_%d' % k, not bare_breaks(data), data[:300])
                head = data.split(b'\r\n\r\n', 1)[0]
                check('pop3_no_injected_field_%d' % k, b'X-Injected' not in head, head[:300])
            mbox = n.path('out.mbox')
            rc, out, err = n.cli('mailbox', 'export', 'bob', '--mbox', mbox)
            check('export_mbox_ok', rc == 0, err)
            data = open(mbox, 'rb').read() if rc == 0 else b''
            check('export_mbox_no_bare_cr', data and not bare_cr(data), data[:300])
            md = n.path('out.maildir')
            rc, out, err = n.cli('mailbox', 'export', 'bob', '--maildir', md)
            check('export_maildir_ok', rc == 0, err)
            files = [os.path.join(md, 'new', f) for f in os.listdir(os.path.join(md, 'new'))] if rc == 0 else []
            check('export_maildir_files', len(files) == want, files)
            for f in files:
                data = open(f, 'rb').read()
                check('export_maildir_no_bare_cr_%s' % os.path.basename(f)[:12], not bare_cr(data), data[:200])


# --------------------------------------------- 3. success DSNs relay nothing

SECRET = 'the-whole-secret-content-line'


def dsn_case(site_dsn):
    """An unauthenticated client outside relay_networks asks for a success
    notice with RET=FULL to a forged sender; the held mail is released to
    a site with or without DSN.  Returns (site sink messages, notices that
    reached the forged sender's side)."""
    with Sink(dsn=site_dsn) as site, Sink() as far:
        conf = {'relay_networks': '10.255.255.0/24', 'relayhost': '127.0.0.1:%d' % far.port,
                'retry.initial': '1s'}
        with Node(conf=conf) as n:
            add_hold(n, SITE, host='127.0.0.1:%d' % site.port)
            with n.raw('smtp') as c:
                c.recv_reply()
                c.cmd('EHLO attacker.test')
                r = c.cmd('MAIL FROM:<victim@remote.test> RET=FULL')
                check('dsn_%s_mail_ok' % site_dsn, r.code == 250, r.raw)
                r = c.cmd('RCPT TO:<someone@%s> NOTIFY=SUCCESS' % SITE)
                check('dsn_%s_rcpt_ok' % site_dsn, r.code == 250, r.raw)
                c.cmd('DATA')
                c.send('Subject: spam\r\n\r\n%s\r\n.\r\n' % SECRET)
                check('dsn_%s_accepted' % site_dsn, c.recv_reply().code == 250)
                c.cmd('QUIT')
            r = etrn(n, SITE)
            check('dsn_%s_etrn' % site_dsn, r.code in (250, 253), r.raw)
            site.wait_for(1, timeout=15)
            # whatever notice there is goes out through the relayhost
            far.wait_for(1, timeout=5)
            time.sleep(0.5)
            return list(site.messages), list(far.messages), n.log()


@test
def success_dsn_to_dsn_capable_site():
    site, notices, log = dsn_case(True)
    check('dsn_capable_delivered', len(site) == 1, len(site))
    if site:
        m = site[0]
        check('dsn_capable_notify_passed_on',
              m.rcpt_params and m.rcpt_params[0].get('NOTIFY', '').upper() == 'SUCCESS', m.rcpt_params)
        check('dsn_capable_ret_hdrs', m.mail_params.get('RET', '').upper() == 'HDRS', m.mail_params)
    check('dsn_capable_no_notice_from_us', not notices,
          [n.data[:400] for n in notices])


@test
def success_dsn_to_plain_site_is_relayed_headers_only():
    site, notices, log = dsn_case(False)
    check('dsn_plain_delivered', len(site) == 1, len(site))
    check('dsn_plain_one_notice', len(notices) == 1, len(notices))
    if notices:
        d = notices[0]
        check('dsn_plain_to_sender', d.rcpts == ['victim@remote.test'] and d.mail_from == '', (d.mail_from, d.rcpts))
        check('dsn_plain_action_relayed', re.search(rb'^Action: relayed', d.data, re.M | re.I), d.data[:800])
        check('dsn_plain_not_delivered', not re.search(rb'^Action: delivered', d.data, re.M | re.I))
        check('dsn_plain_no_content', SECRET.encode() not in d.data, d.data[-600:])



@test
def success_dsn_local_delivery_is_delivered_headers_only():
    with Node(conf={'relay_networks': '10.255.255.0/24'}) as n:
        add_user(n, 'alice')
        add_user(n, 'bob')
        with n.raw('smtp') as c:
            c.recv_reply()
            c.cmd('EHLO stranger.test')
            c.cmd('MAIL FROM:<alice@example.test> RET=FULL ENVID=e1')
            check('local_dsn_rcpt', c.cmd('RCPT TO:<bob@example.test> NOTIFY=SUCCESS').code == 250)
            c.cmd('DATA')
            c.send('Subject: local\r\n\r\n%s\r\n.\r\n' % SECRET)
            check('local_dsn_accepted', c.recv_reply().code == 250)
            c.cmd('QUIT')
        count = wait_until(lambda: pop3_stat(n, 'alice')[0] >= 1, 10)
        check('local_dsn_sent', count, pop3_stat(n, 'alice'))
        if count:
            data = pop3_retr_raw(n, 'alice', PW, 1)
            check('local_dsn_action_delivered', re.search(rb'^Action: delivered', data, re.M | re.I), data[:600])
            check('local_dsn_headers_only', SECRET.encode() not in data and b'Subject: local' in data,
                  data[-500:])


# ------------------------------------------- 4. duplicates make one copy

def pop3_stat(n, user, pw=PW):
    p = n.pop3()
    try:
        p.user(user)
        p.pass_(pw)
        return p.stat()
    finally:
        p.quit()


def pipelined_rcpts(n, rcpts, body=b'Subject: dup\r\n\r\nhello\r\n'):
    """One transaction with every RCPT pipelined; returns the RCPT codes
    and the final reply code."""
    with n.raw('smtp', timeout=30) as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        cmds = b'MAIL FROM:<alice@remote.test>\r\n' + b''.join(
            b'RCPT TO:<%s>\r\n' % r.encode() for r in rcpts) + b'DATA\r\n'
        c.send(cmds)
        c.recv_reply()
        codes = [c.recv_reply().code for _ in rcpts]
        data = c.recv_reply()
        if data.code != 354:
            return codes, data.code
        c.send(body + b'.\r\n')
        final = c.recv_reply().code
        c.cmd('QUIT')
        return codes, final


@test
def duplicate_rcpts_one_copy():
    with Sink() as sink:
        with Node(conf={'relayhost': '127.0.0.1:%d' % sink.port, 'max_recipients': 5,
                        'retry.initial': '1s'}) as n:
            add_user(n, 'bob')
            add_user(n, 'carol')
            n.cli('alias', 'add', 'robert', 'bob')
            n.cli('alias', 'add', 'team', 'bob,carol')
            rcpts = ['bob@example.test'] * 1000
            codes, final = pipelined_rcpts(n, rcpts)
            check('dup_1000_all_250', codes.count(250) == 1000, sorted(set(codes)))
            check('dup_1000_accepted', final == 250, final)
            count, size = pop3_stat(n, 'bob')
            check('dup_1000_one_copy', count == 1, 'STAT %d messages, %d octets' % (count, size))
            # aliases and case variants of one mailbox, and a remote
            # address repeated: one copy each; the limit (5) counts
            # distinct recipients only
            rcpts = (['bob@example.test', 'robert@example.test', 'BOB@example.test', 'team@example.test',
                      'carol@example.test'] * 20 + ['far@remote.test'] * 30 +
                     ['d%d@remote.test' % i for i in range(2)] * 3)
            codes, final = pipelined_rcpts(n, rcpts)
            check('dup_mixed_all_250', codes.count(250) == len(rcpts),
                  [(r, c) for r, c in zip(rcpts, codes) if c != 250][:5])
            check('dup_mixed_accepted', final == 250, final)
            check('dup_mixed_bob_one_more', pop3_stat(n, 'bob')[0] == 2, pop3_stat(n, 'bob'))
            check('dup_mixed_carol_one', pop3_stat(n, 'carol')[0] == 1, pop3_stat(n, 'carol'))
            sink.wait_for(1, timeout=15)
            time.sleep(0.5)
            got = [r for m in sink.messages for r in m.rcpts]
            check('dup_remote_once', sorted(got) == sorted(['far@remote.test', 'd0@remote.test',
                                                             'd1@remote.test']), got)
            # a sixth distinct recipient is over the limit
            codes, final = pipelined_rcpts(n, ['x%d@remote.test' % i for i in range(6)] + ['x0@remote.test'])
            check('dup_limit_counts_distinct', codes[:5] == [250] * 5 and codes[5] == 452 and codes[6] == 250,
                  codes)


# ------------------------------ 5, 7. password guessing: shared counters

class From(harness.Raw):
    """A raw client whose source address is src (any of 127.0.0.0/8 is
    this host), to be another client address on loopback."""

    def __init__(self, src, port, timeout=10.0):
        self.timeout = timeout
        self.buf = b''
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout * harness.TIME_SCALE)
        self.sock.bind((src, 0))
        self.sock.connect(('127.0.0.1', port))


def pop3_login(n, user, pw, src='127.0.0.1'):
    """The reply to PASS (or what closed the connection)."""
    with From(src, n.port('pop3')) as c:
        try:
            c.recv_line()
            c.send('USER %s\r\n' % user)
            c.recv_line()
            c.send('PASS %s\r\n' % pw)
            r = c.recv_line().decode()
            c.send('QUIT\r\n')
            return r
        except (ConnectionError, TimeoutError) as e:
            return 'closed: %s' % e


def smtp_auth(n, user, pw, src='127.0.0.1'):
    import base64
    with From(src, n.port('smtp')) as c:
        try:
            c.recv_reply()
            c.cmd('EHLO client.test')
            token = base64.b64encode(('\0%s\0%s' % (user, pw)).encode()).decode()
            return c.cmd('AUTH PLAIN ' + token).code
        except (ConnectionError, TimeoutError):
            return 0


@test
def pop3_guessing_per_address():
    conf = {'relay_networks': '10.255.255.0/24', 'auth.fail_delay': '0s',
            'limit.auth_failures_per_ip': 4, 'limit.auth_failures_per_user': 0}
    with Node(conf=conf) as n:
        add_user(n, 'bob')
        # 20 parallel connections, each guessing until it is cut off
        conns = [From('127.0.0.1', n.port('pop3')) for _ in range(20)]
        verified = 0
        try:
            for c in conns:
                c.recv_line()
            for round_ in range(5):
                for c in conns:
                    try:
                        c.send('USER bob\r\nPASS wrong-%d\r\n' % round_)
                    except OSError:
                        pass
                for c in conns:
                    try:
                        c.recv_line(timeout=5)
                        r = c.recv_line(timeout=5)
                        verified += r.startswith(b'-ERR [AUTH]')
                    except (ConnectionError, TimeoutError, OSError):
                        pass
        finally:
            for c in conns:
                c.close()
        diag('parallel POP3 guessing: %d passwords checked' % verified)
        check('pop3_guesses_bounded_per_address', verified <= 4, '%d guesses checked' % verified)
        r = pop3_login(n, 'bob', PW)
        check('pop3_blocked_even_right_password', not r.startswith('+OK'), r)
        check('smtp_auth_shares_counter', smtp_auth(n, 'bob', PW) in (421, 0))
        r = pop3_login(n, 'bob', PW, src='127.0.0.5')
        check('pop3_other_address_unaffected', r.startswith('+OK'), r)


@test
def guessing_per_account_across_protocols():
    conf = {'auth.fail_delay': '0s', 'limit.auth_failures_per_ip': 0, 'limit.auth_failures_per_user': 3}
    with Node(conf=conf) as n:
        add_user(n, 'bob')
        add_user(n, 'alice')
        pop3_login(n, 'bob', 'wrong-1', src='127.0.0.2')
        smtp_auth(n, 'bob', 'wrong-2', src='127.0.0.3')
        pop3_login(n, 'bob', 'wrong-3', src='127.0.0.4')
        r = pop3_login(n, 'bob', PW, src='127.0.0.6')
        check('account_backing_off_pop3', r.startswith('-ERR'), r)
        check('account_backing_off_smtp', smtp_auth(n, 'bob', PW, src='127.0.0.7') == 535)
        check('other_account_unaffected', pop3_login(n, 'alice', PW).startswith('+OK'))
        check('account_backoff_logged', 'account bob' in n.log(), n.log()[-500:])


@test
def relay_networks_exempt_from_address_limit():
    # mailnode.conf(5): clients in relay_networks are not limited per
    # address; the account counter still applies (off here).
    conf = {'auth.fail_delay': '0s', 'limit.auth_failures_per_ip': 3, 'limit.auth_failures_per_user': 0}
    with Node(conf=conf) as n:
        add_user(n, 'bob')
        codes = [smtp_auth(n, 'bob', 'wrong') for _ in range(5)]
        pops = [pop3_login(n, 'bob', 'wrong') for _ in range(3)]
        check('trusted_failures_535', codes == [535] * 5, codes)
        check('trusted_still_logs_in_smtp', smtp_auth(n, 'bob', PW) == 235)
        check('trusted_still_logs_in_pop3', pop3_login(n, 'bob', PW).startswith('+OK'))


# ------------------------------------------------- 6. connection slots

def settled(n, kinds=('smtp', 'pop3')):
    """True when no TCP connection to the node's ports is open any more
    (the harness's start-up probe included): /proc/net/tcp has only the
    listening sockets and TIME_WAIT left for them."""
    ports = {'%04X' % n.port(k) for k in kinds if k in n.ports}
    with open('/proc/net/tcp') as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].split(':')[1] in ports and fields[3] not in ('0A', '06'):
                return False
    return True


def greeting(c):
    try:
        return c.recv_line(timeout=5).decode()
    except (ConnectionError, TimeoutError) as e:
        return 'none: %s' % e


@test
def refused_connections_hold_no_slot():
    conf = {'relay_networks': '127.0.0.2/32', 'max_connections': 6, 'limit.connections_reserved': 0,
            'limit.connections_per_ip': 3}
    with Node(conf=conf) as n:
        wait_until(lambda: settled(n), 10)
        # 127.0.0.9: not the harness's own start-up probe from 127.0.0.1
        held = [From('127.0.0.9', n.port('smtp')) for _ in range(3)]
        refused = []
        try:
            for c in held:
                check('idle_%d_greeted' % held.index(c), greeting(c).startswith('220'))
            for _ in range(50):
                refused.append(From('127.0.0.9', n.port('smtp')))
            first = greeting(refused[0])
            check('over_per_ip_421', first.startswith('421'), first)
            check('over_per_ip_closed', refused[-1].closed(timeout=5))
            # the 50 refused ones are still open on our side: they must
            # not count against max_connections
            with From('127.0.0.2', n.port('smtp')) as t:
                r = greeting(t)
                check('trusted_client_served', r.startswith('220'), r)
            with From('127.0.0.3', n.port('pop3')) as p:
                r = greeting(p)
                check('pop3_client_served', r.startswith('+OK'), r)
        finally:
            for c in held + refused:
                c.close()


@test
def reserve_and_listener_limits():
    conf = {'relay_networks': '127.0.0.2/32', 'max_connections': 8, 'limit.connections_reserved': 3,
            'limit.connections_per_ip': 0, 'max_connections.pop3': 2}
    with Node(conf=conf) as n:
        wait_until(lambda: settled(n), 10)
        socks = []
        try:
            for i in range(5):          # 8 - 3 reserved: five strangers on port 25
                c = From('127.0.0.%d' % (10 + i), n.port('smtp'))
                socks.append(c)
                check('stranger_%d_served' % i, greeting(c).startswith('220'))
            c = From('127.0.0.20', n.port('smtp'))
            socks.append(c)
            r = greeting(c)
            check('stranger_over_reserve_421', r.startswith('421 4.3.2'), r)
            c = From('127.0.0.2', n.port('smtp'))
            socks.append(c)
            r = greeting(c)
            check('trusted_uses_reserve', r.startswith('220'), r)
            c = From('127.0.0.21', n.port('pop3'))
            socks.append(c)
            r = greeting(c)
            check('pop3_uses_reserve', r.startswith('+OK'), r)
            c = From('127.0.0.22', n.port('pop3'))
            socks.append(c)
            r = greeting(c)
            check('pop3_second_ok', r.startswith('+OK'), r)
            c = From('127.0.0.23', n.port('pop3'))
            socks.append(c)
            r = greeting(c)
            check('pop3_listener_limit', r.startswith('-ERR [SYS/TEMP]'), r)
        finally:
            for c in socks:
                c.close()


# ---------------------------------------------------- 8. memory per session

MEASURE_MEM = os.environ.get('MAILNODE_SAN', '0') != '1' and not harness.VALGRIND
# mailnode.conf(5), max_recipients.untrusted: a stranger's session costs at
# most about 100 KB (buffers, the body chunk, 100 recipients); 100 of them
# must stay under 16 MB over the idle daemon.
SESSION_BUDGET_KB = 160


def vm_rss(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return None


@test
def memory_per_stranger_session_bounded():
    sessions, rcpts_each = 100, 1000
    conf = {'relay_networks': '10.255.255.0/24', 'max_connections': sessions + 10,
            'limit.connections_per_ip': 0}
    with Node(conf=conf) as n:
        add_user(n, 'site')
        add_hold(n, SITE, owner='site')
        pid = n.proc.pid
        base = vm_rss(pid)
        conns = []
        codes = {}
        try:
            for i in range(sessions):
                c = From('127.0.0.%d' % (10 + i % 50), n.port('smtp'), timeout=60)
                conns.append(c)
                c.recv_reply()
                c.cmd('EHLO stranger.test')
                c.cmd('MAIL FROM:<a@remote.test>')
                # long, distinct addresses: the worst case for storage
                c.send(b''.join(b'RCPT TO:<%s-%04d-%03d@%s>\r\n' % (b'r' * 40, k, i, SITE.encode())
                                for k in range(rcpts_each)))
            for c in conns:
                for _ in range(rcpts_each):
                    code = c.recv_reply(timeout=60).code
                    codes[code] = codes.get(code, 0) + 1
            rss = vm_rss(pid)
        finally:
            for c in conns:
                c.close()
        grown = rss - base
        diag('%d stranger sessions x %d RCPT: VmRSS %d kB -> %d kB (+%d kB, %.0f kB per session); '
             'replies %s' % (sessions, rcpts_each, base, rss, grown, grown / sessions, codes))
        check('stranger_rcpt_limit', codes.get(250) == sessions * 100 and codes.get(452) == sessions * 900,
              codes)
        if MEASURE_MEM:
            check('stranger_sessions_memory_budget', grown < sessions * SESSION_BUDGET_KB,
                  '+%d kB for %d sessions' % (grown, sessions))


# ------------------------------------- 9. no retry storm toward a relayhost

@test
def no_retry_storm_from_loopback_clients():
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    dead_port = probe.getsockname()[1]
    probe.close()                       # nothing listens there: the relayhost is down
    conf = {'relayhost': '127.0.0.1:%d' % dead_port, 'retry.initial': '1h', 'retry.max': '2h'}
    with Node(conf=conf) as n:
        submit(n, 'far@remote.test', 1)
        check('relayhost_backing_off', wait_until(lambda: 'next try in' in n.log(), 20), n.log()[-300:])
        attempts = n.log().count('cannot connect to')
        # a load of local clients on loopback, as during a test run
        for i in range(30):
            with n.raw('smtp') as c:
                c.recv_reply()
                c.cmd('QUIT')
        time.sleep(1.5)
        more = n.log().count('cannot connect to') - attempts
        diag('connection attempts to the down relayhost after 30 loopback clients: %d' % more)
        check('no_retry_per_loopback_client', more == 0 and 'retrying now' not in n.log(),
              '%d more attempts' % more)



def _ip(*args, check_rc=True):
    import subprocess
    p = subprocess.run(['ip'] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=20)
    if check_rc and p.returncode != 0:
        raise RuntimeError('ip %s: %s' % (' '.join(args), p.stderr.decode().strip()))
    return p.stdout.decode()


CONNECT_MANY = r"""
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    s = socket.create_connection((host, port), timeout=10)
    s.recv(512)
    s.sendall(b'QUIT\r\n')
    s.recv(512)
    s.close()
    time.sleep(0.05)
"""


@test
def down_relayhost_connecting_ends_backoff_once_per_step():
    # Not on loopback: the node in one network namespace, its relayhost's
    # address (nothing listening) in another, joined by a veth pair.  The
    # relayhost keeps connecting to us; only one early retry per step.
    import shutil
    import subprocess
    import sys
    if os.geteuid() != 0 or not shutil.which('ip'):
        check('netns_available', False, 'needs root and iproute2 for network namespaces')
        return
    tag = '%d' % os.getpid()
    ns_a, ns_b = 'i9hA-' + tag, 'i9hB-' + tag
    veth_a, veth_b = 'i9a' + tag[-7:], 'i9b' + tag[-7:]
    net = '10.209.%d' % (os.getpid() % 250)
    addr_a, addr_b = net + '.1', net + '.2'
    n = None
    try:
        _ip('netns', 'add', ns_a)
        _ip('netns', 'add', ns_b)
        _ip('link', 'add', veth_a, 'netns', ns_a, 'type', 'veth', 'peer', 'name', veth_b, 'netns', ns_b)
        for ns, dev, addr in ((ns_a, veth_a, addr_a), (ns_b, veth_b, addr_b)):
            _ip('-n', ns, 'link', 'set', 'lo', 'up')
            _ip('-n', ns, 'addr', 'add', addr + '/24', 'dev', dev)
            _ip('-n', ns, 'link', 'set', dev, 'up')
        n = Node(start=False, listeners=('smtp',))
        port = n.port('smtp')
        n.configure({'listen.smtp': '%s:%d' % (addr_a, port), 'relayhost': '%s:%d' % (addr_b, port),
                     'retry.initial': '1h', 'retry.max': '2h'})
        log = open(n.log_path, 'ab')
        n.proc = subprocess.Popen(['ip', 'netns', 'exec', ns_a, harness.BIN, '-c', n.conf_path, 'run'],
                                  cwd=n.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        # the database is ready (created, migrated) once the daemon says so
        check('netns_node_up', wait_until(lambda: ' started: database' in n.log(), 20), n.log()[-300:])
        rc, out, err = n.cli('sendmail', '-f', 'alice@example.test', 'far@remote.test',
                             input='Subject: x\r\n\r\nbody\r\n')
        check('netns_submitted', rc == 0, err)
        n.cli('flush')
        check('netns_backing_off', wait_until(lambda: 'next try in' in n.log(), 20), n.log()[-400:])
        p = subprocess.run(['ip', 'netns', 'exec', ns_b, sys.executable, '-c', CONNECT_MANY, addr_a,
                            str(port), '30'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        check('netns_peer_connected', p.returncode == 0, p.stderr.decode()[-300:])
        time.sleep(1.0)
        early = n.log().count('connected to us: retrying now')
        diag('30 connections from the down relayhost: %d early retries' % early)
        check('netns_one_early_retry_per_step', early == 1, '%d early retries' % early)
    finally:
        if n is not None:
            n.close()
        for ns in (ns_a, ns_b):
            _ip('netns', 'del', ns, check_rc=False)
        left = _ip('netns', 'list', check_rc=False)
        check('netns_removed', ns_a not in left and ns_b not in left, left)


# ------------------------------------- 10. export never follows planted links

@test
def export_refuses_planted_links():
    with Node() as n:
        add_user(n, 'bob')
        submit(n, 'bob@example.test', 2, tag='export')
        shared = n.path('shared')
        os.mkdir(shared)
        os.chmod(shared, 0o1777)
        victim = n.path('victim')
        with open(victim, 'w') as f:
            f.write('precious\n')
        link = os.path.join(shared, 'bob.mbox')
        os.symlink(victim, link)
        rc, out, err = n.cli('mailbox', 'export', 'bob', '--mbox', link)
        check('mbox_symlink_refused', rc != 0 and 'symbolic link' in err, (rc, err))
        check('mbox_symlink_victim_untouched', open(victim).read() == 'precious\n')
        hard = os.path.join(shared, 'hard.mbox')
        os.link(victim, hard)
        rc, out, err = n.cli('mailbox', 'export', 'bob', '--mbox', hard)
        check('mbox_hardlink_refused', rc != 0, (rc, err))
        check('mbox_hardlink_victim_untouched', open(victim).read() == 'precious\n')
        fine = os.path.join(shared, 'fine.mbox')
        rc, out, err = n.cli('mailbox', 'export', 'bob', '--mbox', fine)
        check('mbox_new_file_ok', rc == 0 and os.stat(fine).st_mode & 0o777 == 0o600, (rc, err))
        size = os.path.getsize(fine)
        rc, out, err = n.cli('mailbox', 'export', 'bob', '--mbox', fine)
        check('mbox_append_to_own_file', rc == 0 and os.path.getsize(fine) == 2 * size, (rc, err))
        # Maildir: a planted new/ or a Maildir that is itself a link
        elsewhere = n.path('elsewhere')
        os.mkdir(elsewhere)
        md = os.path.join(shared, 'Maildir')
        os.mkdir(md)
        os.symlink(elsewhere, os.path.join(md, 'new'))
        rc, out, err = n.cli('mailbox', 'export', 'bob', '--maildir', md)
        check('maildir_new_symlink_refused', rc != 0, (rc, err))
        check('maildir_nothing_elsewhere', os.listdir(elsewhere) == [], os.listdir(elsewhere))
        md2 = os.path.join(shared, 'Maildir2')
        os.symlink(elsewhere, md2)
        rc, out, err = n.cli('mailbox', 'export', 'bob', '--maildir', md2)
        check('maildir_symlink_refused', rc != 0, (rc, err))
        check('maildir_nothing_elsewhere_2', os.listdir(elsewhere) == [], os.listdir(elsewhere))
        md3 = os.path.join(shared, 'Maildir3')
        rc, out, err = n.cli('mailbox', 'export', 'bob', '--maildir', md3)
        check('maildir_fresh_ok', rc == 0 and len(os.listdir(os.path.join(md3, 'new'))) == 2, (rc, err))


# --------------------------------------- 11. submission: sender = login

def submit_as(n, user, sender, rcpt='carol@example.test'):
    import base64
    with n.raw('submission') as c:
        c.recv_reply()
        c.cmd('EHLO client.test')
        token = base64.b64encode(('\0%s\0%s' % (user, PW)).encode()).decode()
        r = c.cmd('AUTH PLAIN ' + token)
        assert r.code == 235, r.raw
        return c.cmd('MAIL FROM:<%s>' % sender).code


@test
def submission_sender_login_match():
    with Node() as n:
        for u in ('bob', 'carol', 'site'):
            add_user(n, u)
        n.cli('alias', 'add', 'robert', 'bob')
        n.cli('alias', 'add', 'team', 'bob,carol')
        add_hold(n, SITE, owner='site')
        check('own_address', submit_as(n, 'bob', 'bob@example.test') == 250)
        check('own_alias', submit_as(n, 'bob', 'robert@example.test') == 250)
        check('null_sender', submit_as(n, 'bob', '') == 250)
        check('other_user_553', submit_as(n, 'bob', 'carol@example.test') == 553)
        check('shared_alias_553', submit_as(n, 'bob', 'team@example.test') == 553)
        check('foreign_553', submit_as(n, 'bob', 'ceo@bank.test') == 553)
        check('site_owner_own_domain', submit_as(n, 'site', 'anyone@' + SITE) == 250)
        check('site_owner_subdomain', submit_as(n, 'site', 'x@mail.' + SITE) == 250)
        check('not_owner_site_553', submit_as(n, 'bob', 'anyone@' + SITE) == 553)
        check('refusal_logged', 'not owned by user bob' in n.log())
        n.stop()
        n.configure({'submission.sender_login_match': 'no'})
        n.start()
        check('off_any_sender', submit_as(n, 'bob', 'ceo@bank.test') == 250)


# ------------------------------- a next hop advertising an invalid SIZE

@test
def invalid_size_from_next_hop_ignored():
    for bad in ('-1', '12abc', '99999999999999999999999', 'x'):
        with Sink(size=bad) as sink:
            with Node(conf={'relayhost': '127.0.0.1:%d' % sink.port, 'retry.initial': '1s'}) as n:
                submit(n, 'far@remote.test', 2, tag='size')
                got = sink.wait_for(2, timeout=15)
                check('size_%s_delivered' % bad[:6], got and len(sink.messages) == 2,
                      '%d delivered; %s' % (len(sink.messages), n.log()[-300:]))
                check('size_%s_no_bounce' % bad[:6], 'status=bounced' not in n.log(), n.log()[-300:])
                if sink.messages:
                    check('size_%s_no_size_param' % bad[:6], 'SIZE' not in sink.messages[0].mail_params,
                          sink.messages[0].mail_params)


harness.main()
