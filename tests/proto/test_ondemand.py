"""On-demand relay (ETRN, RFC 1985; ODMR/ATRN, RFC 2645) against real
clients and servers:

- fetchmail as the ODMR client of mailnode's ODMR server, relaying what it
  receives to a second mailnode (--smtphost); wrong password, a domain the
  user does not own, nothing held;
- ETRN clients against mailnode's SMTP server: fetchmail (proto etrn),
  msmtp (--rmqs), curl (-X 'ETRN ...') and a raw socket for the exact
  reply codes; the held mail reaches the domain's --host exactly once;
- mailnode field node <-> mailnode upstream (`mailnode poll`, both modes),
  and a scripted ODMR provider answering 450/451/453 or dropping the
  connection after the turnaround;
- bad input on the ODMR port, a site that vanishes after the 250;
- a private Postfix instance as the ETRN upstream of a mailnode field node;
- two network namespaces joined by a veth pair: link up -> the field node
  sends its queue and pulls its mail by itself, both modes.

Needs fetchmail, msmtp and curl (tools/deps.sh installs them); the Postfix
test needs Debian's postfix and root; the namespace test root and `ip`.
A missing tool is a FAIL line that says so, never a silent pass."""
import base64
import hmac
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

import harness
from harness import BIN, Node, Raw, check, diag, free_ports, test, wait_until
from sink import Sink

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PFI = os.path.join(ROOT, 'bench', 'lib', 'postfix-instance.sh')

PW = 'field-secret-1'
USER = 'fielduser'
MBOX_PW = 'mbox-pass-1'
SITE = 'site.test'

EX_OK, EX_UNAVAILABLE, EX_TEMPFAIL = 0, 69, 75


# ------------------------------------------------------------------ helpers

def add_user(n, name, pw=PW):
    rc, out, err = n.cli('user', 'add', name, input=pw + '\n')
    assert rc == 0, 'user add %s: %s' % (name, err)


def add_hold(n, domain, owner=USER, host=None):
    args = ['domain', 'add', domain, '--hold', '--owner', owner]
    if host:
        args += ['--host', host]
    rc, out, err = n.cli(*args)
    assert rc == 0, 'domain add %s: %s' % (domain, err)


def held(n, domain=None):
    """Recipients shown as "(held)" by `queue list` (for domain, if given)."""
    rc, out, err = n.cli('queue', 'list')
    if rc != 0:
        return -1
    count = 0
    for line in out.splitlines():
        if not line.startswith('    ') or '(held)' not in line:
            continue
        addr = line.split()[0].lower()
        if domain is None or addr.endswith('@' + domain):
            count += 1
    return count


def queued(n):
    rc, out, err = n.cli('queue', 'count')
    return int(out.strip()) if rc == 0 and out.strip().isdigit() else -1


def subjects(n, user):
    """Subjects in user's mailbox, oldest first (`mailnode mailbox list`)."""
    rc, out, err = n.cli('mailbox', 'list', user)
    if rc != 0:
        return None
    return [l.split('\t')[5] for l in out.splitlines() if l.count('\t') >= 5]


def message(subject, rcpt, size=300):
    head = ('From: sender@remote.test\r\nTo: %s\r\nSubject: %s\r\n'
            'Message-ID: <%s@remote.test>\r\n\r\n' % (rcpt, subject, subject.replace(' ', '.')))
    return (head + 'body of the held message\r\n' * max(1, size // 26)).encode()


def submit(port, rcpt, tag, count, size=300, host='127.0.0.1'):
    """count messages to rcpt over one SMTP session; returns their subjects."""
    subs = []
    c = smtplib.SMTP(host, port, timeout=30)
    try:
        for i in range(count):
            s = 'od %s %d' % (tag, i)
            c.sendmail('sender@remote.test', [rcpt], message(s, rcpt, size))
            subs.append(s)
    finally:
        c.quit()
    return subs


def sink_subjects(sink):
    return [m.header('Subject') for m in sink.messages]


def exactly_once(got, want):
    """None if got holds every item of want exactly once and nothing else,
    else a description of the difference."""
    got = list(got or [])
    extra = [s for s in got if s not in set(want)]
    dups = sorted({s for s in got if got.count(s) > 1})
    missing = sorted(set(want) - set(got))
    if not extra and not dups and not missing:
        return None
    return 'missing %d %s, duplicates %d %s, unexpected %d %s' % (
        len(missing), missing[:3], len(dups), dups[:3], len(extra), extra[:3])


def field_node(conf=None, start=True, name='field'):
    """A field node: site.test is local, the user "someone" reads it."""
    c = {'local_domains': 'field.test,' + SITE}
    c.update(conf or {})
    n = Node(conf=c, listeners=('smtp', 'pop3'), start=False, name=name)
    add_user(n, 'someone', MBOX_PW)
    if start:
        n.start()
    return n


def upstream_node(host=None, extra_domains=(), conf=None, name='upstream'):
    """An upstream: site.test held for USER (released to host)."""
    c = {'local_domains': 'up.test', 'retry.initial': '2s', 'retry.max': '5s'}
    c.update(conf or {})
    n = Node(conf=c, listeners=('smtp', 'odmr'), start=False, name=name)
    add_user(n, USER)
    add_hold(n, SITE, USER, host)
    for dom, owner, h in extra_domains:
        if owner != USER and owner not in users(n):
            add_user(n, owner, 'other-pass-1')
        add_hold(n, dom, owner, h)
    n.start()
    return n


def users(n):
    rc, out, err = n.cli('user', 'list')
    return out.split()


def pwfile(n, pw=PW):
    path = n.path('upstream.pw')
    with open(path, 'w') as f:
        f.write(pw + '\n')
    os.chmod(path, 0o600)
    return path


def tool(name):
    """None if the program is installed, else a FAIL-worthy reason."""
    if shutil.which(name):
        return None
    return '%s is not installed (apt-get install %s; tools/deps.sh lists it)' % (name, name)


def run(argv, timeout=60, env=None, input=None):
    """(rc, combined output); rc 124 on timeout."""
    e = dict(os.environ)
    e.update(env or {})
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           input=(input or '').encode(), env=e, timeout=timeout)
        return p.returncode, p.stdout.decode('utf-8', 'replace')
    except subprocess.TimeoutExpired as ex:
        out = ex.stdout.decode('utf-8', 'replace') if ex.stdout else ''
        return 124, out + '\n[timed out after %s s]' % timeout


class Fetchmail:
    """fetchmail with a generated run control file (mode 0600) in its own
    FETCHMAILHOME; never a daemon, never syslog, bounded by a timeout."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix='mailnode-fetchmail-')
        os.chmod(self.dir, 0o700)

    def run(self, poll_line, timeout=60, verbose=True):
        rc_path = os.path.join(self.dir, 'fetchmailrc')
        with open(rc_path, 'w') as f:
            f.write('set no syslog\n%s\n' % poll_line)
        os.chmod(rc_path, 0o600)
        argv = ['fetchmail', '-f', rc_path, '--nosyslog', '--nodetach',
                '--pidfile', os.path.join(self.dir, 'fetchmail.pid')]
        if verbose:
            argv.append('-v')
        return run(argv, timeout=timeout, env={'FETCHMAILHOME': self.dir, 'HOME': self.dir})

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def cram_md5(c, user, pw):
    """AUTH CRAM-MD5 on a Raw connection; returns the final reply."""
    r = c.cmd('AUTH CRAM-MD5')
    if r.code != 334:
        return r
    challenge = base64.b64decode(r.lines[0])
    digest = hmac.new(pw.encode(), challenge, 'md5').hexdigest()
    return c.cmd(base64.b64encode(('%s %s' % (user, digest)).encode()).decode())


def ehlo_keywords(reply):
    return [l.split()[0].upper() for l in reply.lines[1:] if l.split()]


def serve_turned(c, name='site.test', timeout=30, quit_after=None, pipelining=True):
    """Be the SMTP server on a turned-around connection: greet, answer,
    collect messages until QUIT.  Returns (messages, commands).
    quit_after=N: cut the connection after the Nth message's data.
    pipelining: advertise PIPELINING (commands are answered one by one
    either way)."""
    msgs, cmds = [], []
    deadline = time.monotonic() + timeout
    c.send('220 %s ESMTP turned around\r\n' % name)
    while time.monotonic() < deadline:
        line = c.recv_line(timeout=max(0.1, deadline - time.monotonic()))
        cmd = line.decode('latin-1').rstrip('\r\n')
        cmds.append(cmd)
        verb = cmd.split(' ', 1)[0].upper()
        if verb in ('EHLO', 'HELO'):
            c.send('250-%s\r\n%s250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n'
                   % (name, '250-PIPELINING\r\n' if pipelining else ''))
        elif verb in ('MAIL', 'RCPT', 'RSET', 'NOOP'):
            c.send('250 2.0.0 ok\r\n')
        elif verb == 'DATA':
            c.send('354 go ahead\r\n')
            data = c.recv_until(b'\r\n.\r\n', timeout=max(0.1, deadline - time.monotonic()))
            msgs.append(data)
            if quit_after is not None and len(msgs) >= quit_after:
                c.close()
                return msgs, cmds
            c.send('250 2.0.0 accepted\r\n')
        elif verb == 'QUIT':
            c.send('221 2.0.0 bye\r\n')
            break
        else:
            c.send('502 5.5.1 not here\r\n')
    return msgs, cmds


def data_subject(data):
    for line in data.split(b'\r\n'):
        if line.lower().startswith(b'subject:'):
            return line.split(b':', 1)[1].strip().decode('latin-1')
        if not line:
            break
    return None


# --------------------------------------------------- 1. fetchmail as ODMR client

def odmr_pair(n_held=10, extra=()):
    """(upstream, site) with n_held messages held for site.test at the upstream."""
    site = field_node(name='site')
    up = upstream_node(host='127.0.0.1:%d' % site.port('smtp'), extra_domains=extra)
    subs = submit(up.port('smtp'), 'someone@' + SITE, 'fm', n_held) if n_held else []
    return up, site, subs


def fetchmail_odmr_line(up, site, domains=SITE, user=USER, pw=PW):
    return ('poll 127.0.0.1 proto odmr port %d timeout 30 user "%s" password "%s" '
            'fetchdomains %s smtphost 127.0.0.1/%d' % (up.port('odmr'), user, pw, domains,
                                                        site.port('smtp')))


@test
def fetchmail_odmr_releases_all():
    why = tool('fetchmail')
    if why:
        check('fetchmail_odmr_can_run', False, why)
        return
    up, site, subs = odmr_pair(10, extra=(('other.test', 'otheruser', None),))
    with up, site, Fetchmail() as fm:
        other = submit(up.port('smtp'), 'x@other.test', 'other', 2)
        check('odmr_held_before', held(up, SITE) == 10 and held(up, 'other.test') == 2,
              'held %s / %s' % (held(up, SITE), held(up, 'other.test')))
        rc, out = fm.run(fetchmail_odmr_line(up, site), timeout=90)
        check('fetchmail_odmr_exit_0', rc == 0, 'rc %s: %s' % (rc, out[-600:]))
        check('fetchmail_odmr_turnaround', 'Turnaround' in out, out[-400:])
        got = wait_until(lambda: len(subjects(site, 'someone') or []) >= 10, 20)
        diff = exactly_once(subjects(site, 'someone'), subs)
        check('fetchmail_odmr_all_arrived_once', got and diff is None, diff or 'nothing arrived')
        check('fetchmail_odmr_nothing_left_held', wait_until(lambda: held(up, SITE) == 0, 10),
              held(up, SITE))
        check('fetchmail_odmr_other_domain_untouched', held(up, 'other.test') == 2,
              held(up, 'other.test'))
        # And once more: nothing to fetch now.
        rc, out = fm.run(fetchmail_odmr_line(up, site), timeout=60)
        check('fetchmail_odmr_second_run_no_mail', 'no mail' in out.lower(), 'rc %s: %s' % (rc, out[-400:]))
        check('fetchmail_odmr_second_run_no_duplicates',
              exactly_once(subjects(site, 'someone'), subs) is None, subjects(site, 'someone'))
        # The whole message arrived (POP3): headers and body.
        import poplib
        p = poplib.POP3('127.0.0.1', site.port('pop3'), timeout=20)
        try:
            p.user('someone')
            p.pass_(MBOX_PW)
            text = b'\r\n'.join(p.retr(1)[1])
        finally:
            p.quit()
        check('fetchmail_odmr_message_intact', b'body of the held message' in text
              and b'Subject: od fm 0' in text, text[:300])


@test
def fetchmail_odmr_wrong_password():
    why = tool('fetchmail')
    if why:
        check('fetchmail_odmr_wrong_password_can_run', False, why)
        return
    up, site, subs = odmr_pair(3)
    with up, site, Fetchmail() as fm:
        rc, out = fm.run(fetchmail_odmr_line(up, site, pw='not-the-password'), timeout=60)
        check('fetchmail_bad_password_fails', rc != 0, 'rc %s: %s' % (rc, out[-400:]))
        check('fetchmail_bad_password_nothing_released', held(up, SITE) == 3, held(up, SITE))
        check('fetchmail_bad_password_nothing_arrived', subjects(site, 'someone') == [],
              subjects(site, 'someone'))


@test
def fetchmail_odmr_foreign_domain():
    why = tool('fetchmail')
    if why:
        check('fetchmail_odmr_foreign_can_run', False, why)
        return
    up, site, subs = odmr_pair(2, extra=(('other.test', 'otheruser', None),))
    with up, site, Fetchmail() as fm:
        other = submit(up.port('smtp'), 'x@other.test', 'foreign', 2)
        rc, out = fm.run(fetchmail_odmr_line(up, site, domains='other.test'), timeout=60)
        check('fetchmail_foreign_refused', rc != 0 and 'refused' in out.lower(),
              'rc %s: %s' % (rc, out[-400:]))
        check('fetchmail_foreign_nothing_released',
              held(up, 'other.test') == 2 and held(up, SITE) == 2,
              '%s / %s' % (held(up, 'other.test'), held(up, SITE)))
        # a list naming both: all or nothing
        rc, out = fm.run(fetchmail_odmr_line(up, site, domains='site.test,other.test'), timeout=60)
        check('fetchmail_mixed_list_refused', rc != 0, 'rc %s: %s' % (rc, out[-400:]))
        check('fetchmail_mixed_list_nothing_released',
              held(up, 'other.test') == 2 and held(up, SITE) == 2,
              '%s / %s' % (held(up, 'other.test'), held(up, SITE)))
        check('fetchmail_foreign_nothing_arrived', subjects(site, 'someone') == [],
              subjects(site, 'someone'))


@test
def fetchmail_odmr_nothing_held():
    why = tool('fetchmail')
    if why:
        check('fetchmail_odmr_nothing_can_run', False, why)
        return
    up, site, subs = odmr_pair(0)
    with up, site, Fetchmail() as fm:
        rc, out = fm.run(fetchmail_odmr_line(up, site), timeout=60)
        check('fetchmail_no_mail_reported', 'you have no mail' in out.lower(),
              'rc %s: %s' % (rc, out[-400:]))
        check('fetchmail_no_mail_exit_0', rc == 0, 'rc %s' % rc)


# --------------------------------------------------------- 2. ETRN clients

def etrn_setup(sink, n_site=5, n_sub=0):
    up = upstream_node(host='127.0.0.1:%d' % sink.port,
                       extra_domains=(('sub.site.test', USER, '127.0.0.1:%d' % sink.port),
                                      ('empty.test', USER, '127.0.0.1:%d' % sink.port)))
    subs = submit(up.port('smtp'), 'someone@' + SITE, 'etrn', n_site) if n_site else []
    sub2 = submit(up.port('smtp'), 'someone@sub.site.test', 'etrnsub', n_sub) if n_sub else []
    return up, subs, sub2


@test
def etrn_raw_reply_codes():
    with Sink() as sink:
        up, subs, sub2 = etrn_setup(sink, 5, 2)
        with up:
            time.sleep(1.0)
            check('etrn_held_not_delivered', sink.messages == [] and held(up, SITE) == 5,
                  '%d delivered, %d held' % (len(sink.messages), held(up, SITE)))
            c = up.raw('smtp')
            c.recv_reply()
            r = c.cmd('EHLO field.test')
            check('etrn_advertised', 'ETRN' in ehlo_keywords(r), r.lines)
            r = c.cmd('ETRN')
            check('etrn_missing_arg_501', r.code == 501, r.raw)
            r = c.cmd('ETRN a..b')
            check('etrn_bad_domain_501', r.code == 501, r.raw)
            r = c.cmd('ETRN unknown.test')
            check('etrn_unknown_domain_459', r.code == 459 and 'unknown.test' in r.text, r.raw)
            r = c.cmd('ETRN up.test')
            check('etrn_local_domain_459', r.code == 459, r.raw)
            r = c.cmd('ETRN empty.test')
            check('etrn_nothing_waiting_251', r.code == 251 and 'empty.test' in r.text, r.raw)
            r = c.cmd('MAIL FROM:<a@remote.test>')
            r = c.cmd('ETRN site.test')
            check('etrn_in_transaction_503', r.code == 503, r.raw)
            check('etrn_503_released_nothing', held(up, SITE) == 5, held(up, SITE))
            c.cmd('RSET')
            r = c.cmd('ETRN site.test')
            check('etrn_held_domain_25x', r.code in (250, 252, 253), r.raw)
            if r.code == 253:
                check('etrn_253_counts', ' 5 ' in ' %s ' % r.text, r.raw)
            check('etrn_text_names_node', 'site.test' in r.text, r.raw)
            got = sink.wait_for(5, timeout=20)
            diff = exactly_once(sink_subjects(sink), subs)
            check('etrn_delivered_once', got and diff is None, diff or 'nothing arrived')
            check('etrn_one_session', len([s for s in sink.sessions if s.messages]) == 1,
                  [len(s.messages) for s in sink.sessions])
            check('etrn_subdomain_not_released', held(up, 'sub.site.test') == 2,
                  held(up, 'sub.site.test'))
            r = c.cmd('ETRN @site.test')
            check('etrn_at_domain_25x', r.code in (250, 252, 253), r.raw)
            sink.wait_for(7, timeout=20)
            diff = exactly_once(sink_subjects(sink), subs + sub2)
            check('etrn_at_releases_subdomains', diff is None, diff)
            # The sink has every copy before the node has recorded the
            # last 250s: wait for those outcomes to commit.
            wait_until(lambda: queued(up) == 0, 10)
            r = c.cmd('ETRN @site.test')
            check('etrn_at_nothing_left_251', r.code == 251, r.raw)
            r = c.cmd('ETRN @unknown.test')
            check('etrn_at_unknown_459', r.code == 459, r.raw)
            more = submit(up.port('smtp'), 'someone@' + SITE, 'hash', 2)
            r = c.cmd('ETRN #site.test')
            check('etrn_hash_queue_25x', r.code in (250, 252, 253), r.raw)
            sink.wait_for(9, timeout=20)
            diff = exactly_once(sink_subjects(sink), subs + sub2 + more)
            check('etrn_hash_delivered', diff is None, diff)
            r = c.cmd('QUIT')
            c.close()
            check('etrn_queue_empty', wait_until(lambda: queued(up) == 0, 10), queued(up))


@test
def etrn_repeated_no_duplicates():
    # A slow site: 20 messages take about 3 s, ETRNs keep coming meanwhile.
    with Sink(data_delay=0.15) as sink:
        up, subs, _ = etrn_setup(sink, 20)
        with up:
            codes = []
            for i in range(8):
                with up.raw('smtp') as c:
                    c.recv_reply()
                    c.cmd('EHLO field.test')
                    codes.append(c.cmd('ETRN site.test').code)
                    codes.append(c.cmd('ETRN site.test').code)
                    c.cmd('QUIT')
                time.sleep(0.2)
            check('etrn_repeated_codes_ok', all(x in (250, 251, 252, 253) for x in codes), codes)
            sink.wait_for(20, timeout=60)
            time.sleep(1.0)
            diff = exactly_once(sink_subjects(sink), subs)
            check('etrn_repeated_exactly_once', diff is None, diff)
            check('etrn_repeated_queue_empty', wait_until(lambda: queued(up) == 0, 10), queued(up))
            diag('repeated ETRN: replies %s, %d sessions at the site' % (codes, sink.connections))


@test
def etrn_fetchmail():
    why = tool('fetchmail')
    if why:
        check('etrn_fetchmail_can_run', False, why)
        return
    with Sink() as sink, Fetchmail() as fm:
        up, subs, sub2 = etrn_setup(sink, 4, 2)
        with up:
            line = 'poll 127.0.0.1 proto etrn port %d timeout 30 fetchdomains site.test' % up.port('smtp')
            rc, out = fm.run(line)
            check('etrn_fetchmail_exit_0', rc == 0, 'rc %s: %s' % (rc, out[-500:]))
            check('etrn_fetchmail_started', 'started' in out.lower(), out[-400:])
            got = sink.wait_for(4, timeout=20)
            diff = exactly_once(sink_subjects(sink), subs)
            check('etrn_fetchmail_delivered_once', got and diff is None, diff or 'nothing arrived')
            line = 'poll 127.0.0.1 proto etrn port %d timeout 30 fetchdomains nowhere.test' % up.port('smtp')
            rc, out = fm.run(line)
            check('etrn_fetchmail_unknown_fails', rc != 0 and 'not allowed' in out.lower(),
                  'rc %s: %s' % (rc, out[-400:]))
            line = 'poll 127.0.0.1 proto etrn port %d timeout 30 fetchdomains empty.test' % up.port('smtp')
            rc, out = fm.run(line)
            check('etrn_fetchmail_no_messages_waiting', 'no messages waiting' in out.lower(),
                  'rc %s: %s' % (rc, out[-400:]))


@test
def etrn_msmtp():
    why = tool('msmtp')
    if why:
        check('etrn_msmtp_can_run', False, why)
        return
    with Sink() as sink:
        up, subs, sub2 = etrn_setup(sink, 3, 2)
        with up:
            base = ['msmtp', '--host=127.0.0.1', '--port=%d' % up.port('smtp'), '--timeout=30']
            rc, out = run(base + ['--rmqs=site.test'], timeout=60)
            check('etrn_msmtp_plain_exit_0', rc == 0, 'rc %s: %s' % (rc, out[-400:]))
            got = sink.wait_for(3, timeout=20)
            diff = exactly_once(sink_subjects(sink), subs)
            check('etrn_msmtp_plain_delivered', got and diff is None, diff or 'nothing arrived')
            check('etrn_msmtp_plain_sub_still_held', held(up, 'sub.site.test') == 2,
                  held(up, 'sub.site.test'))
            rc, out = run(base + ['--rmqs=@site.test'], timeout=60)
            check('etrn_msmtp_at_exit_0', rc == 0, 'rc %s: %s' % (rc, out[-400:]))
            sink.wait_for(5, timeout=20)
            diff = exactly_once(sink_subjects(sink), subs + sub2)
            check('etrn_msmtp_at_delivered_subdomain', diff is None, diff)
            more = submit(up.port('smtp'), 'someone@' + SITE, 'msmtphash', 1)
            rc, out = run(base + ['--rmqs=#site.test'], timeout=60)
            check('etrn_msmtp_hash_exit_0', rc == 0, 'rc %s: %s' % (rc, out[-400:]))
            sink.wait_for(6, timeout=20)
            check('etrn_msmtp_hash_delivered', exactly_once(sink_subjects(sink), subs + sub2 + more) is None,
                  exactly_once(sink_subjects(sink), subs + sub2 + more))
            rc, out = run(base + ['--rmqs=unknown.test'], timeout=60)
            check('etrn_msmtp_unknown_fails', rc != 0 and '459' in out, 'rc %s: %s' % (rc, out[-400:]))


@test
def etrn_curl():
    why = tool('curl')
    if why:
        check('etrn_curl_can_run', False, why)
        return
    with Sink() as sink:
        up, subs, _ = etrn_setup(sink, 3)
        with up:
            url = 'smtp://127.0.0.1:%d' % up.port('smtp')
            rc, out = run(['curl', '-sS', '--max-time', '30', url, '-X', 'ETRN site.test'], timeout=60)
            diag('curl ETRN site.test: rc %s, %r' % (rc, out.strip()))
            check('etrn_curl_exit_0', rc == 0, 'rc %s: %s' % (rc, out[-300:]))
            check('etrn_curl_reply_shown', out.strip()[:3] in ('250', '252', '253'), out[-300:])
            got = sink.wait_for(3, timeout=20)
            diff = exactly_once(sink_subjects(sink), subs)
            check('etrn_curl_delivered_once', got and diff is None, diff or 'nothing arrived')
            # curl prints a 2xx reply to a custom command; a 4xx/5xx one makes
            # it exit 8 ("Command failed: 459").
            rc, out = run(['curl', '-sS', '--max-time', '30', url, '-X', 'ETRN unknown.test'], timeout=60)
            diag('curl ETRN unknown.test: rc %s, %r' % (rc, out.strip()))
            check('etrn_curl_unknown_459', rc == 8 and '459' in out, 'rc %s: %s' % (rc, out[-300:]))


# ------------------------------------------- 3. mailnode field <-> mailnode upstream

def poll_pair(mode, count, field_running=True):
    """(field, upstream, subjects): count messages held for site.test."""
    field = field_node(start=False)
    up = upstream_node(host='127.0.0.1:%d' % field.port('smtp'))
    port = up.port('odmr') if mode == 'atrn' else up.port('smtp')
    field.configure({'upstream': '127.0.0.1:%d' % port, 'upstream.mode': mode,
                     'upstream.domains': SITE, 'upstream.user': USER,
                     'upstream.password_file': pwfile(field), 'upstream.interval': '1h'})
    if field_running:
        field.start()
        # The daemon's own first exchange (a second after start) must be
        # over before mail is held, or it, not the poll under test, moves
        # part of it (a slow run, under valgrind, starts it late).
        wait_until(lambda: 'poll: upstream exchange' in field.log(), 20)
    subs = submit(up.port('smtp'), 'someone@' + SITE, 'poll-%s' % mode, count)
    return field, up, subs


def poll_case(mode, field_running):
    tag = '%s_%s' % (mode, 'daemon' if field_running else 'nodaemon')
    field, up, subs = poll_pair(mode, 20, field_running)
    with field, up:
        check('poll_%s_held' % tag, held(up, SITE) == 20, held(up, SITE))
        t0 = time.monotonic()
        rc, out, err = field.cli('poll', timeout=120)
        secs = time.monotonic() - t0
        diag('poll %s: rc %s in %.2f s; stdout %r; stderr %r' % (tag, rc, secs, out[-300:], err[-300:]))
        check('poll_%s_exit_0' % tag, rc == 0, 'rc %s: %s %s' % (rc, out[-300:], err[-300:]))
        got = wait_until(lambda: len(subjects(field, 'someone') or []) >= 20, 20)
        diff = exactly_once(subjects(field, 'someone'), subs)
        check('poll_%s_all_once' % tag, got and diff is None, diff or 'nothing arrived; log: %s'
              % up.log()[-500:])
        # what moved, per domain, on standard output (not only in log lines)
        check('poll_%s_names_domain_and_count' % tag, SITE in out and '20' in out, repr(out[-300:]))
        check('poll_%s_upstream_empty' % tag, wait_until(lambda: queued(up) == 0, 10), queued(up))
        rc, out, err = field.cli('status')
        check('poll_%s_status_shows_upstream' % tag, rc == 0 and 'upstream' in out.lower(), out[-500:])
        # second poll: nothing waiting, still a success, no duplicates
        rc, out, err = field.cli('poll', timeout=120)
        check('poll_%s_again_exit_0' % tag, rc == 0, 'rc %s: %s %s' % (rc, out[-300:], err[-300:]))
        time.sleep(0.5 if mode == 'atrn' else 2.0)
        check('poll_%s_again_no_duplicates' % tag,
              exactly_once(subjects(field, 'someone'), subs) is None,
              exactly_once(subjects(field, 'someone'), subs))


@test
def poll_atrn_with_daemon():
    poll_case('atrn', True)


@test
def poll_atrn_without_daemon():
    poll_case('atrn', False)


@test
def poll_etrn_with_daemon():
    poll_case('etrn', True)


@test
def poll_sends_own_queue_first():
    """The field node's own outbound mail leaves before the request."""
    with Sink() as smarthost:
        field, up, subs = poll_pair('atrn', 3, field_running=False)
        with field, up:
            field.configure({'relayhost': '127.0.0.1:%d' % smarthost.port, 'retry.initial': '1h'})
            rc, out, err = field.cli('sendmail', '-f', 'someone@site.test', 'far@remote.test',
                                     input=message('outbound 1', 'far@remote.test').decode())
            check('poll_outbound_queued', rc == 0 and queued(field) == 1, '%s %s' % (rc, err))
            rc, out, err = field.cli('poll', timeout=120)
            check('poll_outbound_exit_0', rc == 0, 'rc %s: %s %s' % (rc, out[-300:], err[-300:]))
            check('poll_outbound_sent', smarthost.wait_for(1, 10) and queued(field) == 0,
                  '%d at the smarthost, %d queued' % (len(smarthost.messages), queued(field)))
            check('poll_outbound_then_fetched',
                  exactly_once(subjects(field, 'someone'), subs) is None,
                  exactly_once(subjects(field, 'someone'), subs))


@test
def poll_upstream_unreachable():
    field = field_node(start=False)
    with field:
        dead = free_ports(1)[0]
        for mode in ('atrn', 'etrn'):
            field.configure({'upstream': '127.0.0.1:%d' % dead, 'upstream.mode': mode,
                             'upstream.domains': SITE, 'upstream.user': USER,
                             'upstream.password_file': pwfile(field)})
            rc, out, err = field.cli('poll', timeout=60)
            check('poll_unreachable_%s_exit_69' % mode, rc == EX_UNAVAILABLE,
                  'rc %s: %s %s' % (rc, out[-200:], err[-200:]))


class FakeProvider:
    """A scripted ODMR provider: EHLO, AUTH CRAM-MD5 (any answer accepted),
    then ATRN gets `behaviour`: a reply line ("450 ...") or "drop" (250,
    then the connection is cut) or "stall" (250, then silence)."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.commands = []
        self.sessions = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.sessions += 1
            try:
                self._serve(conn)
            except Exception as e:
                self.commands.append('! %s' % e)
            finally:
                conn.close()

    def _serve(self, conn):
        conn.settimeout(15)
        f = conn.makefile('rb')
        conn.sendall(b'220 fake.upstream ESMTP ODMR\r\n')
        while True:
            line = f.readline(4096)
            if not line:
                return
            cmd = line.decode('latin-1').strip()
            self.commands.append(cmd)
            verb = cmd.split(' ', 1)[0].upper()
            if verb == 'EHLO':
                conn.sendall(b'250-fake.upstream\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n')
            elif verb == 'AUTH':
                conn.sendall(b'334 ' + base64.b64encode(b'<1.2@fake.upstream>') + b'\r\n')
                self.commands.append(f.readline(4096).decode('latin-1').strip())
                conn.sendall(b'235 2.7.0 ok\r\n')
            elif verb == 'ATRN':
                if self.behaviour in ('drop', 'stall'):
                    conn.sendall(b'250 OK now reversing the connection\r\n')
                    if self.behaviour == 'stall':
                        time.sleep(8)
                    return
                conn.sendall(self.behaviour.encode() + b'\r\n')
            elif verb == 'QUIT':
                conn.sendall(b'221 bye\r\n')
                return
            else:
                conn.sendall(b'502 5.5.1 no\r\n')

    def close(self):
        self.stopping = True
        self.sock.close()
        self.thread.join(5)


@test
def poll_against_scripted_provider():
    field = field_node(start=False)
    with field:
        field.configure({'upstream.mode': 'atrn', 'upstream.domains': SITE,
                         'upstream.user': USER, 'upstream.password_file': pwfile(field),
                         'smtp.timeout.connect': '5s'})
        cases = [('450 4.7.1 Access denied to site.test', '450', False),
                 ('451 4.3.0 busy, try again later', '451', False),
                 ('453 4.7.0 You have no mail', '453', True),
                 ('drop', 'drop', False),
                 ('stall', 'stall', False)]
        for running in (False, True):
            if running:
                field.start()
            where = 'daemon' if running else 'nodaemon'
            for behaviour, name, ok in cases:
                fake = FakeProvider(behaviour)
                try:
                    field.configure({'upstream': '127.0.0.1:%d' % fake.port})
                    if running:
                        field.restart()     # the daemon polls with the config it read
                    t0 = time.monotonic()
                    rc, out, err = field.cli('poll', timeout=90)
                    secs = time.monotonic() - t0
                finally:
                    fake.close()
                diag('poll vs provider %s (%s): rc %s in %.1f s, %r %r; saw %s'
                     % (name, where, rc, secs, out.strip()[-200:], err.strip()[-200:], fake.commands))
                if ok:
                    check('poll_provider_%s_%s_exit_0' % (name, where), rc == 0,
                          'rc %s: %s %s' % (rc, out[-200:], err[-200:]))
                else:
                    check('poll_provider_%s_%s_fails' % (name, where), rc != 0 and rc < 124,
                          'rc %s: %s %s' % (rc, out[-200:], err[-200:]))
                    if name in ('451', 'drop'):
                        check('poll_provider_%s_%s_exit_75' % (name, where), rc == EX_TEMPFAIL,
                              'rc %s' % rc)
                sent = [c for c in fake.commands if c.upper().startswith('ATRN')]
                # (a daemon may also have polled by itself when it started)
                check('poll_provider_%s_%s_sent_atrn' % (name, where),
                      sent and set(sent) == {'ATRN site.test'}, fake.commands)
                check('poll_provider_%s_%s_authenticated' % (name, where),
                      'AUTH CRAM-MD5' in fake.commands, fake.commands)
        # nothing corrupted: the node still works, its mailbox and queue are empty
        check('poll_provider_mailbox_empty', subjects(field, 'someone') == [],
              subjects(field, 'someone'))
        check('poll_provider_queue_empty', queued(field) == 0, queued(field))
        with field.raw('smtp') as c:
            check('poll_provider_node_alive', c.recv_reply().code == 220)
        rc, out, err = field.cli('status')
        check('poll_provider_status_ok', rc == 0 and 'upstream' in out.lower(), out[-400:])


class FakeEtrnUpstream:
    """A scripted ETRN upstream: phase 'slow' answers ETRN with 251 after
    SLOW seconds, phase 'fast' answers 253 at once.  Records per session
    (phase at ETRN time, commands)."""
    SLOW = 3.0

    def __init__(self):
        self.phase = 'fast'
        self.sessions = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.threads = [threading.Thread(target=self._loop, daemon=True)]
        self.threads[0].start()

    def _loop(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn):
        sess = {'phase': None, 'commands': []}
        self.sessions.append(sess)
        try:
            conn.settimeout(15)
            f = conn.makefile('rb')
            conn.sendall(b'220 fake.upstream ESMTP\r\n')
            while True:
                line = f.readline(4096)
                if not line:
                    return
                cmd = line.decode('latin-1').strip()
                sess['commands'].append(cmd)
                verb = cmd.split(' ', 1)[0].upper()
                if verb == 'EHLO':
                    conn.sendall(b'250-fake.upstream\r\n250 ETRN\r\n')
                elif verb == 'ETRN':
                    sess['phase'] = self.phase
                    if self.phase == 'slow':
                        time.sleep(self.SLOW)
                        conn.sendall(b'251 2.0.0 OK, no messages waiting for node site.test\r\n')
                    else:
                        conn.sendall(b'253 2.0.0 OK, 7 pending messages for node site.test started\r\n')
                elif verb == 'QUIT':
                    conn.sendall(b'221 bye\r\n')
                    return
                else:
                    conn.sendall(b'250 ok\r\n')
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stopping = True
        self.sock.close()
        for t in self.threads:
            t.join(self.SLOW + 2)


@test
def poll_during_running_exchange():
    """`mailnode poll` while the daemon's previous exchange is still waiting
    for its answer: the command must report an exchange made after it was
    asked for, not the answer to the earlier request (mail held in between
    would otherwise be reported as "no messages waiting")."""
    fake = FakeEtrnUpstream()
    field = field_node(start=False)
    first = None
    try:
        field.configure({'upstream': '127.0.0.1:%d' % fake.port, 'upstream.mode': 'etrn',
                         'upstream.domains': SITE, 'upstream.interval': '1h'})
        field.start()
        time.sleep(1.0)                      # a start-up exchange, if any, is over
        fake.phase = 'slow'
        first = subprocess.Popen([BIN, '-c', field.conf_path, 'poll'], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        seen = wait_until(lambda: any(x['phase'] == 'slow' for x in fake.sessions), 10)
        check('poll_overlap_first_in_flight', seen, [x['commands'] for x in fake.sessions])
        fake.phase = 'fast'                  # mail is held now: a new ETRN gets 253
        rc, out, err = field.cli('poll', timeout=60)
        first_out = first.communicate(timeout=30)[0].decode('utf-8', 'replace')
        diag('overlapping polls: first %r (rc %s), second %r (rc %s); sessions %s'
             % (first_out.strip(), first.returncode, out.strip(), rc,
                [(x['phase'], x['commands']) for x in fake.sessions]))
        check('poll_overlap_second_exit_0', rc == 0, 'rc %s: %s %s' % (rc, out, err))
        check('poll_overlap_second_reports_fresh_exchange', '253' in out,
              'second poll printed %r (the first poll\'s exchange was still waiting)' % out.strip())
        check('poll_overlap_fresh_etrn_sent',
              any(x['phase'] == 'fast' and any(c.upper().startswith('ETRN') for c in x['commands'])
                  for x in fake.sessions), [(x['phase'], x['commands']) for x in fake.sessions])
    finally:
        if first is not None and first.poll() is None:
            first.kill()
            first.wait()
        field.close()
        fake.close()


# ------------------------------------------------------- 4. bad input (ODMR port)

@test
def odmr_bad_input_and_vanishing_site():
    up = upstream_node(extra_domains=(('other.test', 'otheruser', None),))
    with up:
        subs = submit(up.port('smtp'), 'someone@' + SITE, 'vanish', 6)
        with up.raw('odmr') as c:
            check('odmr_greeting_220', c.recv_reply().code == 220)
            r = c.cmd('EHLO site.test')
            kw = ehlo_keywords(r)
            auth = [l for l in r.lines if l.upper().startswith('AUTH')]
            check('odmr_ehlo_atrn', 'ATRN' in kw, r.lines)
            check('odmr_ehlo_auth_cram_md5', auth and 'CRAM-MD5' in auth[0].upper(), r.lines)
            r = c.cmd('ATRN site.test')
            check('odmr_atrn_before_auth_530', r.code == 530, r.raw)
            r = c.cmd('MAIL FROM:<a@b.test>')
            check('odmr_mail_refused', r.code >= 500, r.raw)
            r = c.cmd('AUTH CRAM-MD5')
            check('odmr_auth_challenge', r.code == 334, r.raw)
            r = c.cmd('!!!not base64!!!')
            check('odmr_auth_garbage_501_535', r.code in (501, 535), r.raw)
            r = c.cmd('AUTH CRAM-MD5')
            r = c.cmd(base64.b64encode(b'no-digest-here').decode())
            check('odmr_auth_malformed_535_501', r.code in (501, 535), r.raw)
            r = c.cmd('AUTH')
            check('odmr_auth_no_mechanism_501', r.code in (501, 504), r.raw)
            r = cram_md5(c, USER, 'wrong-password')
            check('odmr_auth_wrong_password_535', r.code == 535, r.raw)
            r = c.cmd('ATRN site.test')
            check('odmr_atrn_after_failed_auth_530', r.code == 530, r.raw)
            r = cram_md5(c, USER, PW)
            check('odmr_auth_ok_235', r.code == 235, r.raw)
            for bad in ('ATRN a..b', 'ATRN a, b', 'ATRN ,', 'ATRN site.test,', 'ATRN ,site.test',
                        'ATRN site.test,,other.test', 'ATRN -bad..', 'ATRN ' + 'x' * 300 + '.test'):
                r = c.cmd(bad)
                check('odmr_%s_501' % bad.replace(' ', '_')[:30], r.code == 501, r.raw)
            r = c.cmd('ATRN other.test')
            check('odmr_atrn_not_owned_450', r.code == 450, r.raw)
            r = c.cmd('ATRN site.test,other.test')
            check('odmr_atrn_partly_owned_450', r.code == 450, r.raw)
            r = c.cmd('ATRN unknown.test')
            check('odmr_atrn_unknown_450', r.code == 450, r.raw)
            check('odmr_nothing_released_yet', held(up, SITE) == 6, held(up, SITE))
            # the turnaround, and the site vanishes
            r = c.cmd('ATRN site.test')
            check('odmr_atrn_250_single_line', r.code == 250 and len(r.lines) == 1, r.raw)
        time.sleep(1.0)
        check('odmr_vanished_still_held', wait_until(lambda: held(up, SITE) == 6, 10), held(up, SITE))

        # the site answers the 220, takes two messages, acknowledges the
        # first and vanishes before answering the second one's data
        r, msgs, cmds = atrn_turned(up, '', quit_after=2)
        check('odmr_atrn_no_argument_250', r.code == 250, r.raw)
        acked = [data_subject(m) for m in msgs[:1]]
        unacked = [data_subject(m) for m in msgs[1:]]
        diag('vanished after %d messages (acknowledged %s, not %s)' % (len(msgs), acked, unacked))
        check('odmr_cut_batch_rest_held',
              wait_until(lambda: held(up, SITE) == 6 - len(acked), 10),
              'held %s after %d acknowledged' % (held(up, SITE), len(acked)))

        # a later, proper ATRN releases everything still held, once
        r, msgs, cmds = atrn_turned(up, SITE)
        check('odmr_later_atrn_250', r.code == 250, r.raw)
        later = [data_subject(m) for m in msgs]
        diff = exactly_once(later, [s for s in subs if s not in acked])
        check('odmr_later_atrn_releases_rest_once', diff is None,
              '%s (acknowledged before the cut: %s)' % (diff, acked))
        check('odmr_later_nothing_held', wait_until(lambda: held(up, SITE) == 0, 10), held(up, SITE))
        check('odmr_later_quit_sent', cmds and cmds[-1].upper() == 'QUIT', cmds[-3:])
        check('odmr_queue_empty', wait_until(lambda: queued(up) == 0, 10), queued(up))


def atrn_turned(up, arg, quit_after=None, user=USER, pw=PW, timeout=20, pipelining=True):
    """Authenticate on the ODMR port, ATRN arg, and serve the turned
    connection.  A 451 (the domain still busy with an earlier session) is
    retried for up to timeout seconds.  Returns (reply, messages, commands)."""
    deadline = time.monotonic() + timeout
    while True:
        with up.raw('odmr') as c:
            c.recv_reply()
            c.cmd('EHLO site.test')
            cram_md5(c, user, pw)
            r = c.cmd(('ATRN ' + arg).strip())
            if r.code == 250:
                try:
                    msgs, cmds = serve_turned(c, quit_after=quit_after, pipelining=pipelining)
                except (ConnectionError, TimeoutError) as e:
                    return r, [], [str(e)]
                return r, msgs, cmds
        if r.code != 451 or time.monotonic() > deadline:
            return r, [], []
        time.sleep(0.5)


@test
def odmr_second_session_451():
    up = upstream_node()
    with up:
        submit(up.port('smtp'), 'someone@' + SITE, 'busy', 3)
        a = up.raw('odmr')
        b = up.raw('odmr')
        try:
            for c in (a, b):
                c.recv_reply()
                c.cmd('EHLO site.test')
                check('odmr_busy_auth', cram_md5(c, USER, PW).code == 235)
            r = a.cmd('ATRN site.test')
            check('odmr_first_session_250', r.code == 250, r.raw)
            r = b.cmd('ATRN site.test')
            check('odmr_second_session_451', r.code == 451, r.raw)
            msgs, cmds = serve_turned(a)
            check('odmr_first_session_delivers', len(msgs) == 3, len(msgs))
        finally:
            a.close()
            b.close()


@test
def release_to_site_without_pipelining():
    """RFC 5321 peers need not offer PIPELINING: every command then waits
    for its reply.  Both release paths must still deliver."""
    with Sink(pipelining=False, chunking=False) as sink:
        up, subs, _ = etrn_setup(sink, 3)
        with up:
            with up.raw('smtp') as c:
                c.recv_reply()
                c.cmd('EHLO field.test')
                r = c.cmd('ETRN site.test')
            check('nopipe_etrn_25x', r.code in (250, 252, 253), r.raw)
            got = sink.wait_for(3, timeout=20)
            diff = exactly_once(sink_subjects(sink), subs)
            check('nopipe_etrn_delivered', got and diff is None,
                  '%s; the site saw %s' % (diff or 'nothing arrived',
                                          [s.commands[:6] for s in sink.sessions]))
    up = upstream_node()
    with up:
        subs = submit(up.port('smtp'), 'someone@' + SITE, 'nopipe', 3)
        r, msgs, cmds = atrn_turned(up, SITE, pipelining=False)
        check('nopipe_atrn_250', r.code == 250, r.raw)
        diff = exactly_once([data_subject(m) for m in msgs], subs)
        check('nopipe_atrn_delivered', diff is None, '%s; the site saw %s' % (diff, cmds[:6]))


# ------------------------------------------------- 5. Postfix as the ETRN upstream

def pfi(*args, timeout=60):
    # $0 must not be the library's path, or it runs in command mode
    p = subprocess.run(['bash', '-c', '. "$1" && shift && "$@"', 'bash', PFI] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode('utf-8', 'replace')


def postfix_can_run():
    if os.geteuid() != 0:
        return 'needs root (a private Postfix instance)'
    for prog in ('/usr/sbin/postfix', '/usr/sbin/postconf', '/usr/sbin/postqueue'):
        if not os.access(prog, os.X_OK):
            return '%s is missing (Debian package postfix)' % prog
    return None


@test
def postfix_etrn_upstream():
    why = postfix_can_run()
    if why:
        check('postfix_etrn_can_run', False, why)
        return
    pf_dir = tempfile.mkdtemp(prefix='mailnode-pfetrn-', dir='/var/tmp')
    field = None
    try:
        pf_port, unused = free_ports(2)
        field = field_node(start=False)
        rc, out = pfi('pfi_create', pf_dir, pf_port, unused)
        assert rc == 0, out
        etc = os.path.join(pf_dir, 'etc')
        # site.test goes to the field node, through a transport of its own
        # that is deferred until the site asks (ETRN -> flush service).
        with open(os.path.join(etc, 'master.cf'), 'a') as f:
            f.write('fieldsite unix  -       -       n       -       -       smtp\n')
        with open(os.path.join(etc, 'transport'), 'w') as f:
            f.write('%s fieldsite:[127.0.0.1]:%d\n' % (SITE, field.port('smtp')))
        rc, out = run(['postconf', '-c', etc, '-e', 'relay_domains = %s' % SITE,
                       'fast_flush_domains = $relay_domains',
                       'transport_maps = texthash:%s' % os.path.join(etc, 'transport'),
                       'defer_transports = fieldsite',
                       'smtpd_etrn_restrictions = permit_mynetworks, reject',
                       'relayhost ='])
        assert rc == 0, out
        rc, out = pfi('pfi_start', pf_dir)
        assert rc == 0, 'postfix start: %s' % out
        # The field daemon first (it may poll once when it starts: nothing
        # is waiting yet), then the mail arrives at Postfix and waits.
        field.configure({'upstream': '127.0.0.1:%d' % pf_port, 'upstream.mode': 'etrn',
                         'upstream.domains': SITE, 'upstream.interval': '1h'})
        field.start()
        time.sleep(1.5)
        subs = submit(pf_port, 'someone@' + SITE, 'postfix', 3)

        def deferred():
            try:
                with open(os.path.join(pf_dir, 'maillog')) as f:
                    return f.read().count('status=deferred (deferred transport)') >= 3
            except OSError:
                return False
        ok = wait_until(deferred, 30, 0.2)
        if not check('postfix_holds_mail', ok, 'not deferred in 30 s: %s' % tail(pf_dir)):
            return
        time.sleep(1.0)
        check('postfix_nothing_before_etrn', subjects(field, 'someone') == [],
              subjects(field, 'someone'))
        rc, out, err = field.cli('poll', timeout=120)
        diag('poll against Postfix: rc %s, %r %r' % (rc, out[-300:], err[-300:]))
        check('postfix_etrn_poll_exit_0', rc == 0, 'rc %s: %s %s' % (rc, out[-300:], err[-300:]))
        got = wait_until(lambda: len(subjects(field, 'someone') or []) >= 3, 40, 0.2)
        diff = exactly_once(subjects(field, 'someone'), subs)
        check('postfix_etrn_delivered_once', got and diff is None,
              '%s; postfix log: %s' % (diff or 'nothing arrived', tail(pf_dir)))
        log = open(os.path.join(pf_dir, 'maillog')).read()
        check('postfix_saw_etrn', 'etrn=1' in log or 'ETRN' in log, tail(pf_dir))
    finally:
        if field is not None:
            field.close()
        pfi('pfi_destroy', pf_dir)
        shutil.rmtree(pf_dir, ignore_errors=True)


def tail(pf_dir, n=6):
    try:
        with open(os.path.join(pf_dir, 'maillog')) as f:
            return ' | '.join(f.read().splitlines()[-n:])
    except OSError as e:
        return str(e)


# ------------------------------------------------- 6. two namespaces, link events

TAG = '%d' % (os.getpid() % 100000)
NS_F, NS_U = 'odF-' + TAG, 'odU-' + TAG
VETH_F, VETH_U = 'odvf' + TAG, 'odvu' + TAG
# RFC 2544 benchmarking addresses, only inside the namespaces made here.
ADDR_F, ADDR_U = '198.18.10.1', '198.18.10.2'
F_SMTP, U_SMTP, U_ODMR = 2526, 2525, 3366


def ip(*args, check_rc=True, timeout=20):
    p = subprocess.run(['ip'] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise RuntimeError('ip %s: %s' % (' '.join(args), p.stderr.decode().strip()))
    return p.stdout.decode()


def netns_can_run():
    if os.geteuid() != 0:
        return 'needs root (network namespaces)'
    if not shutil.which('ip'):
        return 'the ip command (iproute2) is not installed'
    probe = 'odprobe-' + TAG
    try:
        ip('netns', 'add', probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return '`ip netns add` does not work here: %s' % e
    ip('netns', 'del', probe, check_rc=False)
    return None


def net_setup():
    ip('netns', 'add', NS_F)
    ip('netns', 'add', NS_U)
    ip('link', 'add', VETH_F, 'netns', NS_F, 'type', 'veth', 'peer', 'name', VETH_U, 'netns', NS_U)
    for ns, dev, addr in ((NS_F, VETH_F, ADDR_F), (NS_U, VETH_U, ADDR_U)):
        ip('-n', ns, 'link', 'set', 'lo', 'up')
        ip('-n', ns, 'addr', 'add', addr + '/24', 'dev', dev)
        ip('-n', ns, 'link', 'set', dev, 'up')


def net_teardown():
    for ns in (NS_F, NS_U):
        try:
            for pid in ip('netns', 'pids', ns, check_rc=False).split():
                try:
                    os.kill(int(pid), 9)
                except (ValueError, OSError):
                    pass
            ip('netns', 'del', ns, check_rc=False)
        except Exception as e:
            diag('teardown %s: %s' % (ns, e))
    left = ip('netns', 'list', check_rc=False)
    if NS_F in left or NS_U in left:
        check('ondemand_namespaces_removed', False, left)


def field_link(state):
    ip('-n', NS_F, 'link', 'set', VETH_F, state)


def start_in(ns, n):
    """The node's daemon in namespace ns; waits for its control socket."""
    log = open(n.log_path, 'ab')
    try:
        n.proc = subprocess.Popen(['ip', 'netns', 'exec', ns, BIN, '-c', n.conf_path, 'run'],
                                  cwd=n.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    finally:
        log.close()

    def pong():
        if n.proc.poll() is not None:
            raise RuntimeError('%s exited with %s: %s' % (n.name, n.proc.returncode, n.log()[-1000:]))
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
        raise RuntimeError('%s: control socket did not answer; log:\n%s' % (n.name, n.log()[-1000:]))


SUBMIT = r'''
import smtplib, sys
host, port, rcpt, tag, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
c = smtplib.SMTP(host, port, timeout=30)
for i in range(count):
    s = 'od %s %d' % (tag, i)
    c.sendmail('sender@remote.test', [rcpt], ('From: sender@remote.test\r\nTo: %s\r\nSubject: %s\r\n'
               'Message-ID: <%s.%d@remote.test>\r\n\r\n' % (rcpt, s, tag, i) + 'text\r\n' * 40).encode())
    print(s)
c.quit()
'''


def submit_in(ns, port, rcpt, tag, count):
    p = subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, '-c', SUBMIT, '127.0.0.1',
                        str(port), rcpt, tag, str(count)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if p.returncode != 0:
        raise RuntimeError('submission in %s failed: %s' % (ns, p.stderr.decode()[-500:]))
    return p.stdout.decode().splitlines()


@test
def netns_link_up_sends_and_fetches():
    why = netns_can_run()
    if why:
        check('ondemand_netns_can_run', False, why)
        return
    up = field = None
    try:
        net_setup()
        up = Node(start=False, listeners=(), name='nsup')
        up.configure({'listen.smtp': '127.0.0.1:%d,%s:%d' % (U_SMTP, ADDR_U, U_SMTP),
                      'listen.odmr': '%s:%d' % (ADDR_U, U_ODMR),
                      'local_domains': 'up.test', 'relay_networks': '127.0.0.0/8',
                      'retry.initial': '2s', 'retry.max': '5s'})
        add_user(up, USER)
        add_user(up, 'boss', MBOX_PW)
        add_hold(up, SITE, USER, '%s:%d' % (ADDR_F, F_SMTP))
        start_in(NS_U, up)

        field = Node(start=False, listeners=(), name='nsfield')
        field.configure({'listen.smtp': '127.0.0.1:%d,%s:%d' % (F_SMTP, ADDR_F, F_SMTP),
                         'local_domains': 'field.test,' + SITE,
                         'relayhost': '%s:%d' % (ADDR_U, U_SMTP),
                         'upstream.domains': SITE, 'upstream.user': USER,
                         'upstream.password_file': pwfile(field),
                         'upstream.interval': '1h',
                         'retry.initial': '1h', 'retry.max': '1h',
                         'smtp.timeout.connect': '5s'})
        add_user(field, 'someone', MBOX_PW)

        for mode, port in (('atrn', U_ODMR), ('etrn', U_SMTP)):
            field_link('down')
            field.configure({'upstream': '%s:%d' % (ADDR_U, port), 'upstream.mode': mode})
            start_in(NS_F, field)
            out_before = len(subjects(up, 'boss') or [])
            in_before = len(subjects(field, 'someone') or [])
            outbound = []
            for i in range(3):
                s = 'od out-%s %d' % (mode, i)
                rc, o, e = field.cli('sendmail', '-f', 'someone@site.test', 'boss@up.test',
                                     input=message(s, 'boss@up.test').decode())
                assert rc == 0, e
                outbound.append(s)
            inbound = submit_in(NS_U, U_SMTP, 'someone@' + SITE, 'in-' + mode, 5)
            time.sleep(2.0)       # whatever the field node tries now fails: no link
            check('netns_%s_held_upstream' % mode, held(up, SITE) == 5, held(up, SITE))
            check('netns_%s_queued_field' % mode, queued(field) == 3, queued(field))
            t0 = time.monotonic()
            field_link('up')

            def done():
                o = subjects(up, 'boss') or []
                i = subjects(field, 'someone') or []
                return len(o) >= out_before + 3 and len(i) >= in_before + 5
            ok = wait_until(done, 20, 0.2)
            secs = time.monotonic() - t0
            got_out = (subjects(up, 'boss') or [])[out_before:]
            got_in = (subjects(field, 'someone') or [])[in_before:]
            diag('netns %s: link up -> %d/3 sent, %d/5 fetched in %.1f s'
                 % (mode, len(got_out), len(got_in), secs))
            check('netns_%s_queue_sent_on_link_up' % mode, exactly_once(got_out, outbound) is None,
                  '%s; field log: %s' % (exactly_once(got_out, outbound), field.log()[-600:]))
            check('netns_%s_mail_fetched_on_link_up' % mode, ok and exactly_once(got_in, inbound) is None,
                  '%s after %.1f s; field log: %s; upstream log: %s'
                  % (exactly_once(got_in, inbound), secs, field.log()[-500:], up.log()[-300:]))
            # the release's outcomes are committed within STORE_OUTCOME_MS
            check('netns_%s_nothing_held_after' % mode, wait_until(lambda: held(up, SITE) == 0, 5),
                  held(up, SITE))
            field.stop()
    finally:
        for n in (field, up):
            if n is not None and n.proc is not None:
                n.stop()
        net_teardown()
        for n in (field, up):
            if n is not None:
                n.close()


# ONDEMAND_ONLY=name,name runs only those tests (while debugging one).
_only = [x for x in os.environ.get('ONDEMAND_ONLY', '').split(',') if x]
if _only:
    harness._tests[:] = [t for t in harness._tests if t.__name__ in _only]

harness.main()
