"""TLS against the real binary: STLS on POP3 (RFC 2595), STARTTLS on SMTP
and submission (RFC 3207), STARTTLS to smarthosts with `relayhost.tls`,
with a private CA made here by the openssl command.

Checked the way clients see it: python's poplib/smtplib, swaks and
`openssl s_client -starttls`; plaintext sent behind STLS/STARTTLS in the
same packet is dropped, never answered (CVE-2011-0411); EHLO is required
again after the switch; STARTTLS and STLS are offered once, and not at all
without a certificate or in a `make TLS=none` build; `relayhost.tls =
require` keeps mail queued when the smarthost offers no STARTTLS or its
certificate does not verify, and delivers through a private Postfix.

The SMTP tests run once smtpd.c / smtpc.c speak STARTTLS (they are
skipped, with a note, while the source has no trace of it)."""
import base64
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time

import harness
from harness import Node, check, test, wait_until
from sink import Sink

ROOT = harness.ROOT
PASSWORD = 'tls pass 42'
FAST = {'auth.fail_delay': '0'}


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


OUTSIDE = _outside_address()


def _source_has(path, needle):
    try:
        with open(os.path.join(ROOT, path)) as f:
            return needle in f.read()
    except OSError:
        return False


SMTPD_TLS = _source_has('src/smtpd.c', 'tls_start_server')
SMTPC_TLS = _source_has('src/smtpc.c', 'tls_start_client')


class PKI:
    """A private CA and a server certificate for localhost, 127.0.0.1 and
    the outside address, made with the openssl command."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix='mailnode-pki-')
        os.chmod(self.dir, 0o755)       # a private Postfix reads these too
        self.ca = self.path('ca.pem')
        self.cert = self.path('server.pem')
        self.key = self.path('server.key')
        ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
        self._openssl('req', '-x509', *ec, '-keyout', self.path('ca.key'), '-out', self.ca,
                      '-days', '3', '-subj', '/CN=mailnode test CA')
        self._openssl('req', *ec, '-keyout', self.key, '-out', self.path('server.csr'),
                      '-subj', '/CN=localhost')
        san = 'DNS:localhost,IP:127.0.0.1' + (',IP:%s' % OUTSIDE if OUTSIDE else '')
        with open(self.path('ext.cnf'), 'w') as f:
            f.write('subjectAltName=%s\nbasicConstraints=CA:FALSE\n'
                    'keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' % san)
        self._openssl('x509', '-req', '-in', self.path('server.csr'), '-CA', self.ca,
                      '-CAkey', self.path('ca.key'), '-CAcreateserial', '-out', self.cert,
                      '-days', '3', '-extfile', self.path('ext.cnf'))
        # a key that belongs to no certificate here
        self._openssl('genpkey', '-algorithm', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
                      '-out', self.path('other.key'))
        for name in os.listdir(self.dir):
            os.chmod(self.path(name), 0o644)

    def path(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, *args):
        p = subprocess.run(['openssl'] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        if p.returncode != 0:
            raise RuntimeError('openssl %s: %s' % (args[0], p.stderr.decode(errors='replace')))

    def conf(self):
        return {'tls.cert': self.cert, 'tls.key': self.key}

    def context(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        return ctx

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


PKI_ = PKI()


def tls_node(conf=None, users=('alice',), tls=True):
    c = dict(FAST)
    if tls:
        c.update(PKI_.conf())
    c.update(conf or {})
    n = Node(conf=c)
    for u in users:
        rc, out, err = n.cli('user', 'add', u, input=PASSWORD + '\n')
        if rc != 0:
            n.close()
            raise RuntimeError('user add %s: %s %s' % (u, rc, err))
    return n


def deliver(n, body, rcpt='alice@example.test'):
    s = n.smtp()
    try:
        s.sendmail('bob@remote.test', [rcpt], body)
    finally:
        s.quit()


def message(i):
    return (b'From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: tls %d\r\n\r\n'
            b'secret line %d\r\n.dot line\r\n' % (i, i))


def capa(p):
    """poplib CAPA as a set of capability names."""
    return set(p.capa().keys())


def recv_nothing(sock, secs):
    """True if nothing (and no close) arrives on sock within secs.  The
    socket's timeout is restored: a TLS handshake started on it next may
    be slow (valgrind, a small CPU) and must not inherit the short one."""
    saved = sock.gettimeout()
    sock.settimeout(secs)
    try:
        data = sock.recv(4096)
    except (socket.timeout, ssl.SSLWantReadError):
        return True, b''
    finally:
        sock.settimeout(saved)
    return False, data


def read_line(sock, timeout=10.0):
    sock.settimeout(timeout)
    buf = b''
    while not buf.endswith(b'\r\n'):
        b = sock.recv(1)
        if not b:
            break
        buf += b
    return buf


def read_smtp_reply(sock, timeout=10.0):
    lines = []
    while True:
        line = read_line(sock, timeout)
        lines.append(line)
        if len(line) < 4 or line[3:4] != b'-':
            return b''.join(lines)


# ------------------------------------------------------------------ POP3


@test
def pop3_stls_poplib_login_retr():
    with tls_node() as n:
        deliver(n, message(1))
        p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=10 * harness.TIME_SCALE)
        try:
            before = capa(p)
            check('pop3_capa_lists_stls', 'STLS' in before, before)
            r = p.stls(context=PKI_.context())
            check('pop3_stls_ok', r.startswith(b'+OK'), r)
            check('pop3_stls_is_tls', isinstance(p.sock, ssl.SSLSocket) and
                  p.sock.version() in ('TLSv1.2', 'TLSv1.3'), getattr(p.sock, 'version', lambda: None)())
            after = capa(p)
            check('pop3_capa_no_stls_after', 'STLS' not in after and 'USER' in after, after)
            p.user('alice')
            r = p.pass_(PASSWORD)
            check('pop3_tls_login', r.startswith(b'+OK'), r)
            r, lines, octets = p.retr(1)
            body = b'\r\n'.join(lines)
            check('pop3_tls_retr', b'secret line 1' in body and b'\r\n.dot line' in body, body)
            r = p.quit()
            check('pop3_tls_quit', r.startswith(b'+OK'), r)
        finally:
            try:
                p.close()
            except Exception:
                pass
        check('pop3_tls_logged', 'tls: TLSv1.' in n.log(), n.log()[-500:])


@test
def pop3_stls_injection_dropped():
    """STLS and CAPA in one packet: CAPA was sent in the clear before the
    handshake and must not be answered, neither before nor after it."""
    with tls_node() as n:
        s = socket.create_connection(('127.0.0.1', n.port('pop3')), timeout=10 * harness.TIME_SCALE)
        try:
            greet = read_line(s)
            check('pop3_inj_greeting', greet.startswith(b'+OK'), greet)
            s.sendall(b'STLS\r\nCAPA\r\n')
            r = read_line(s)
            check('pop3_inj_stls_ok', r == b'+OK Begin TLS negotiation\r\n', r)
            # nothing more in the clear: the next bytes would be a CAPA reply
            quiet, extra = recv_nothing(s, 0.5)
            check('pop3_inj_no_plaintext_reply', quiet, extra)
            t = PKI_.context().wrap_socket(s, server_hostname='127.0.0.1')
            quiet, extra = recv_nothing(t, 1.0)
            check('pop3_inj_no_reply_after_handshake', quiet, extra)
            t.settimeout(10 * harness.TIME_SCALE)
            t.sendall(b'CAPA\r\n')
            r = read_line(t)
            check('pop3_inj_session_usable', r.startswith(b'+OK'), r)
            t.close()
        finally:
            s.close()


@test
def pop3_stls_refusals():
    with tls_node() as n:
        p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=10 * harness.TIME_SCALE)
        try:
            r = p._shortcmd('USER alice')
            try:
                p._shortcmd('STLS')
                check('pop3_stls_after_user_refused', False, 'accepted')
            except poplib.error_proto as e:
                check('pop3_stls_after_user_refused', str(e).startswith("b'-ERR"), e)
        finally:
            p.close()
        p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=10 * harness.TIME_SCALE)
        try:
            p.stls(context=PKI_.context())
            try:
                p._shortcmd('STLS')
                check('pop3_second_stls_refused', False, 'accepted')
            except poplib.error_proto as e:
                check('pop3_second_stls_refused', '-ERR' in str(e), e)
            p.user('alice')
            p.pass_(PASSWORD)
            try:
                p._shortcmd('STLS')
                check('pop3_stls_in_transaction_refused', False, 'accepted')
            except poplib.error_proto as e:
                check('pop3_stls_in_transaction_refused', '-ERR' in str(e), e)
            p.quit()
        finally:
            p.close()


@test
def pop3_openssl_s_client():
    with tls_node() as n:
        p = subprocess.run(['openssl', 's_client', '-starttls', 'pop3', '-connect',
                            '127.0.0.1:%d' % n.port('pop3'), '-CAfile', PKI_.ca,
                            '-verify_return_error', '-verify_ip', '127.0.0.1', '-quiet'],
                           input=b'CAPA\r\nUSER alice\r\nPASS ' + PASSWORD.encode() + b'\r\nSTAT\r\nQUIT\r\n',
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        out = p.stdout.decode(errors='replace')
        check('pop3_s_client_exit_0', p.returncode == 0, p.stderr.decode(errors='replace')[-400:])
        check('pop3_s_client_session', '+OK capability list follows' in out and
              '+OK alice has 0 messages' in out and 'signing off' in out, out)


@test
def pop3_tls_lifts_cleartext_refusal_off_loopback():
    if not OUTSIDE:
        harness.diag('no non-loopback address: STLS cleartext test skipped')
        return
    with tls_node() as n:
        port = harness.free_ports(1)[0]
        n.configure({'listen.pop3': '127.0.0.1:%d, %s:%d' % (n.port('pop3'), OUTSIDE, port)})
        n.restart()
        p = poplib.POP3(OUTSIDE, port, timeout=10 * harness.TIME_SCALE)
        try:
            c = capa(p)
            check('pop3_off_loopback_no_user_in_clear', 'USER' not in c and 'STLS' in c, c)
            try:
                p.user('alice')
                check('pop3_off_loopback_user_refused_in_clear', False, 'accepted')
            except poplib.error_proto as e:
                check('pop3_off_loopback_user_refused_in_clear', '[AUTH]' in str(e), e)
            p.stls(context=PKI_.context())
            c = capa(p)
            check('pop3_off_loopback_user_under_tls', 'USER' in c and 'PLAIN' in str(p.capa().get('SASL')), c)
            p.user('alice')
            r = p.pass_(PASSWORD)
            check('pop3_off_loopback_login_under_tls', r.startswith(b'+OK'), r)
            p.quit()
        finally:
            p.close()
        p = poplib.POP3(OUTSIDE, port, timeout=10 * harness.TIME_SCALE)
        try:
            p.stls(context=PKI_.context())
            cred = base64.b64encode(b'\0alice\0' + PASSWORD.encode()).decode()
            r = p._shortcmd('AUTH PLAIN ' + cred)
            check('pop3_off_loopback_auth_plain_under_tls', r.startswith(b'+OK'), r)
            p.quit()
        finally:
            p.close()


@test
def pop3_no_stls_without_certificate():
    with tls_node(tls=False) as n:
        p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=10 * harness.TIME_SCALE)
        try:
            c = capa(p)
            check('pop3_no_cert_no_stls_capa', 'STLS' not in c, c)
            try:
                p._shortcmd('STLS')
                check('pop3_no_cert_stls_refused', False, 'accepted')
            except poplib.error_proto as e:
                check('pop3_no_cert_stls_refused', '-ERR' in str(e), e)
            p.quit()
        finally:
            p.close()


@test
def pop3_handshake_garbage_closes():
    """Not TLS after +OK: the handshake fails and the connection closes;
    the daemon goes on serving."""
    with tls_node() as n:
        c = n.raw('pop3')
        c.recv_line()
        c.send('STLS\r\n')
        r = c.recv_line()
        check('pop3_garbage_stls_ok', r.startswith(b'+OK'), r)
        c.send('USER alice\r\nPASS x\r\n')
        check('pop3_garbage_closed', c.closed(timeout=10 * harness.TIME_SCALE))
        c.close()
        check('pop3_garbage_logged', wait_until(lambda: 'handshake with client' in n.log(), 5),
              n.log()[-400:])
        p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=10 * harness.TIME_SCALE)
        p.stls(context=PKI_.context())
        p.user('alice')
        check('pop3_after_garbage_still_serving', p.pass_(PASSWORD).startswith(b'+OK'))
        p.quit()


@test
def pop3_tls_large_retr():
    """A message larger than the loop's buffers streams through TLS."""
    with tls_node() as n:
        big = b'From: bob@remote.test\r\nSubject: big\r\n\r\n' + \
            b''.join(b'line %06d ..........................................................\r\n' % i
                     for i in range(30000))
        deliver(n, big)
        p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=30)
        try:
            p.stls(context=PKI_.context())
            p.user('alice')
            p.pass_(PASSWORD)
            r, lines, octets = p.retr(1)
            got = b'\r\n'.join(lines)
            check('pop3_tls_big_retr_complete', got.endswith(b'line 029999 ' + b'.' * 58) and
                  got.count(b'\r\nline ') == 30000, (len(got), got[-80:]))
            p.quit()
        finally:
            p.close()


# ----------------------------------------------------------- configuration


@test
def tls_config_errors():
    with tls_node(users=()) as n:
        n.stop()
        n.configure({'tls.cert': n.path('missing.pem')})
        try:
            n.start()
            check('missing_cert_refused', False, 'started')
        except RuntimeError as e:
            check('missing_cert_refused', 'missing.pem' in str(e), str(e)[-400:])
        n.configure({'tls.cert': PKI_.cert, 'tls.key': PKI_.path('other.key')})
        try:
            n.start()
            check('mismatched_key_refused', False, 'started')
        except RuntimeError as e:
            check('mismatched_key_refused', 'other.key' in str(e) and 'does not match' in str(e),
                  str(e)[-400:])
        n.configure({'tls.cert': PKI_.cert, 'tls.key': PKI_.key, 'relayhost.tls': 'maybe'})
        rc, out, err = n.cli('queue', 'count')
        check('bad_relayhost_tls_refused', rc != 0 and 'relayhost.tls' in err and 'require' in err, err)
        n.configure({'relayhost.tls': 'REQUIRE', 'upstream.tls': 'sometimes'})
        rc, out, err = n.cli('queue', 'count')
        check('bad_upstream_tls_refused', rc != 0 and 'upstream.tls' in err, err)
        n.configure({'upstream.tls': 'none', 'tls.cert': None, 'tls.key': PKI_.key})
        rc, out, err = n.cli('queue', 'count')
        check('key_without_cert_refused', rc != 0 and 'tls.key' in err, err)


# ----------------------------------------------------------- TLS=none build


def _build_without_tls():
    """./mailnode built with make TLS=none in a scratch copy; path or None."""
    scratch = tempfile.mkdtemp(prefix='mailnode-notls-')
    for name in ('Makefile', 'mailnode.c', 'mailnode.h', 'sqlite3.c', 'sqlite3.h', 'sqlite3.o'):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy2(os.path.join(ROOT, name), scratch)
    shutil.copytree(os.path.join(ROOT, 'tools'), os.path.join(scratch, 'tools'))
    if os.path.exists(os.path.join(ROOT, 'build', 'sqlite3.flags')):
        os.makedirs(os.path.join(scratch, 'build'))
        shutil.copy2(os.path.join(ROOT, 'build', 'sqlite3.flags'), os.path.join(scratch, 'build'))
    args = ['make', '-s', 'TLS=none']
    if os.environ.get('MAILNODE_SAN') == '1':
        args.append('SAN=1')
    p = subprocess.run(args, cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=600)
    binary = os.path.join(scratch, 'mailnode')
    if p.returncode != 0 or not os.access(binary, os.X_OK):
        harness.diag(p.stdout.decode(errors='replace')[-2000:])
        return scratch, None
    return scratch, binary


@test
def tls_none_build_offers_nothing():
    scratch, binary = _build_without_tls()
    try:
        if not check('tls_none_builds', binary is not None, 'make TLS=none failed'):
            return
        nm = subprocess.run(['nm', binary], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        check('tls_none_no_openssl', b'SSL_new' not in nm.stdout)
        saved = harness.BIN
        harness.BIN = binary
        try:
            with tls_node() as n:
                p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=10 * harness.TIME_SCALE)
                c = capa(p)
                check('tls_none_no_stls', 'STLS' not in c, c)
                try:
                    p._shortcmd('STLS')
                    check('tls_none_stls_refused', False, 'accepted')
                except poplib.error_proto as e:
                    check('tls_none_stls_refused', '-ERR' in str(e), e)
                p.quit()
                s = n.smtp()
                s.ehlo('client.test')
                check('tls_none_no_starttls', not s.has_extn('starttls'), s.esmtp_features)
                s.quit()
                check('tls_none_warns', 'built without TLS' in n.log(), n.log()[-400:])
        finally:
            harness.BIN = saved
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -------------------------------------------------------------- SMTP server


def smtpd_pending():
    if not SMTPD_TLS:
        harness.diag('src/smtpd.c has no STARTTLS yet: SMTP server TLS tests skipped')
        return True
    return False


@test
def smtp_starttls_smtplib():
    if smtpd_pending():
        return
    with tls_node() as n:
        for kind in ('smtp', 'submission'):
            s = n.smtp(kind)
            try:
                s.ehlo('client.test')
                check('%s_offers_starttls' % kind, s.has_extn('starttls'), s.esmtp_features)
                code, text = s.starttls(context=PKI_.context())
                check('%s_starttls_220' % kind, code == 220, (code, text))
                code, text = s.ehlo('client.test')
                check('%s_ehlo_after_tls' % kind, code == 250, (code, text))
                check('%s_no_second_starttls' % kind, not s.has_extn('starttls'), s.esmtp_features)
                sender = 'bob@remote.test'
                if kind == 'submission':
                    s.login('alice', PASSWORD)
                    sender = 'alice@example.test'   # submission.sender_login_match
                s.sendmail(sender, ['alice@example.test'], message(7))
            finally:
                s.quit()
        p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=10 * harness.TIME_SCALE)
        p.user('alice')
        p.pass_(PASSWORD)
        check('smtp_tls_mail_delivered', len(p.list()[1]) == 2)
        p.quit()


@test
def smtp_starttls_injection_dropped():
    if smtpd_pending():
        return
    with tls_node() as n:
        s = socket.create_connection(('127.0.0.1', n.port('smtp')), timeout=10 * harness.TIME_SCALE)
        try:
            read_smtp_reply(s)
            s.sendall(b'EHLO client.test\r\n')
            r = read_smtp_reply(s)
            check('smtp_inj_ehlo', b'STARTTLS' in r, r)
            s.sendall(b'STARTTLS\r\nRSET\r\n')
            r = read_smtp_reply(s)
            check('smtp_inj_220', r.startswith(b'220'), r)
            quiet, extra = recv_nothing(s, 0.5)
            check('smtp_inj_no_plaintext_reply', quiet, extra)
            t = PKI_.context().wrap_socket(s, server_hostname='127.0.0.1')
            quiet, extra = recv_nothing(t, 1.0)
            check('smtp_inj_rset_not_answered', quiet, extra)
            t.settimeout(10 * harness.TIME_SCALE)
            t.sendall(b'MAIL FROM:<bob@remote.test>\r\n')
            r = read_smtp_reply(t)
            check('smtp_ehlo_required_again', r.startswith(b'503'), r)
            t.sendall(b'EHLO client.test\r\n')
            r = read_smtp_reply(t)
            check('smtp_ehlo_after_tls_ok', r.startswith(b'250') and b'STARTTLS' not in r, r)
            t.sendall(b'STARTTLS\r\n')
            r = read_smtp_reply(t)
            check('smtp_second_starttls_refused', r[:1] in (b'5',), r)
            t.sendall(b'QUIT\r\n')
            read_smtp_reply(t)
            t.close()
        finally:
            s.close()


@test
def smtp_swaks_tls():
    if smtpd_pending():
        return
    if not shutil.which('swaks'):
        check('swaks_installed', False, 'swaks not found')
        return
    with tls_node() as n:
        p = subprocess.run(['swaks', '--server', '127.0.0.1', '--port', str(n.port('smtp')),
                            '--from', 'bob@remote.test', '--to', 'alice@example.test',
                            '--tls', '--tls-verify', '--tls-ca-path', PKI_.ca,
                            '--tls-verify-host', '127.0.0.1'],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode(errors='replace')
        if p.returncode != 0 and 'tls-verify-host' in out:
            p = subprocess.run(['swaks', '--server', '127.0.0.1', '--port', str(n.port('smtp')),
                                '--from', 'bob@remote.test', '--to', 'alice@example.test',
                                '--tls', '--tls-ca-path', PKI_.ca],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            out = p.stdout.decode(errors='replace')
        check('swaks_tls_exit_0', p.returncode == 0, out[-600:])
        check('swaks_tls_started', 'TLS started' in out and '250' in out, out[-600:])


@test
def smtp_openssl_s_client():
    if smtpd_pending():
        return
    with tls_node() as n:
        p = subprocess.run(['openssl', 's_client', '-starttls', 'smtp', '-connect',
                            '127.0.0.1:%d' % n.port('smtp'), '-CAfile', PKI_.ca,
                            '-verify_return_error', '-verify_ip', '127.0.0.1', '-quiet'],
                           input=b'EHLO client.test\r\nNOOP\r\nQUIT\r\n',
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        out = p.stdout.decode(errors='replace')
        check('smtp_s_client_exit_0', p.returncode == 0, p.stderr.decode(errors='replace')[-400:])
        check('smtp_s_client_session', '250 ' in out and '221' in out, out)


# -------------------------------------------------------------- SMTP client


def smtpc_pending():
    if not SMTPC_TLS:
        harness.diag('src/smtpc.c has no STARTTLS yet: SMTP client TLS tests skipped')
        return True
    return False


def queued(n):
    rc, out, err = n.cli('queue', 'count')
    return int(out.strip()) if rc == 0 and out.strip().isdigit() else -1


def relay_msg(i):
    return ('From: alice@example.test\r\nTo: far@remote.test\r\nSubject: relay %d\r\n'
            'Message-ID: <tls-relay-%d@example.test>\r\n\r\nbody\r\n' % (i, i)).encode()


def send(n, i):
    s = n.smtp()
    try:
        s.sendmail('alice@example.test', ['far@remote.test'], relay_msg(i))
    finally:
        s.quit()


@test
def relayhost_tls_require_without_starttls_stays_queued():
    if smtpc_pending():
        return
    with Sink() as sink:
        with Node(conf={'relayhost': '127.0.0.1:%d' % sink.port, 'relayhost.tls': 'require',
                        'retry.initial': '1h'}) as n:
            send(n, 1)
            n.cli('flush', '--wait', '--timeout', '30s')
            time.sleep(0.5)
            check('require_no_starttls_nothing_sent', len(sink.messages) == 0, len(sink.messages))
            check('require_no_starttls_queued', queued(n) == 1, queued(n))
            check('require_no_starttls_logged', 'TLS' in n.log() or 'tls' in n.log(), n.log()[-600:])


def smarthost(users=('far',)):
    """A second mailnode with STARTTLS that takes mail for remote.test."""
    c = dict(FAST)
    c.update(PKI_.conf())
    c['local_domains'] = 'remote.test'
    b = Node(conf=c, name='smarthost')
    for u in users:
        b.cli('user', 'add', u, input=PASSWORD + '\n')
    return b


@test
def relayhost_tls_require_verifies_certificate():
    if smtpc_pending() or smtpd_pending():
        return
    with smarthost() as b:
        conf = {'relayhost': '127.0.0.1:%d' % b.port('smtp'), 'relayhost.tls': 'require',
                'retry.initial': '1h'}
        with Node(conf=conf) as n:
            send(n, 1)
            n.cli('flush', '--wait', '--timeout', '30s')
            time.sleep(0.5)
            check('require_untrusted_ca_queued', queued(n) == 1, n.log()[-600:])
            check('require_untrusted_ca_logged', 'verif' in n.log(), n.log()[-600:])
            n.stop()
            n.configure({'tls.ca_file': PKI_.ca})
            n.start()
            n.cli('flush', '--wait', '--timeout', '30s')
            check('require_trusted_ca_delivered', wait_until(lambda: queued(n) == 0, 20),
                  n.log()[-600:])
            check('require_trusted_ca_logged_verified', 'certificate verified' in n.log(),
                  n.log()[-600:])
        check('smarthost_saw_tls', 'tls: TLSv1.' in b.log(), b.log()[-600:])


@test
def relayhost_tls_may_uses_starttls():
    if smtpc_pending() or smtpd_pending():
        return
    with smarthost() as b:
        with Node(conf={'relayhost': '127.0.0.1:%d' % b.port('smtp'), 'retry.initial': '1s'}) as n:
            send(n, 2)
            check('may_delivered', wait_until(lambda: queued(n) == 0, 20), n.log()[-600:])
            check('may_used_tls', 'tls: TLSv1.' in n.log() and 'tls: TLSv1.' in b.log(),
                  n.log()[-600:])
        with Node(conf={'relayhost': '127.0.0.1:%d' % b.port('smtp'), 'retry.initial': '1s',
                        'relayhost.tls': 'none'}) as n:
            send(n, 3)
            check('none_delivered', wait_until(lambda: queued(n) == 0, 20), n.log()[-600:])
            check('none_no_tls', 'tls: TLSv1.' not in n.log(), n.log()[-600:])


def _postfix_tls_instance(port, sinkport):
    """A private Postfix with STARTTLS on 127.0.0.1:port relaying to
    smtp-sink on sinkport; its directory, or None when that cannot run."""
    script = os.path.join(ROOT, 'bench', 'lib', 'postfix-instance.sh')
    if os.geteuid() != 0 or not os.path.exists('/usr/sbin/postfix') or not os.path.exists(script):
        return None
    d = tempfile.mkdtemp(prefix='mailnode-pf-')
    os.chmod(d, 0o755)
    sh = lambda *a: subprocess.run(['bash', script] + list(a), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, timeout=120)
    p = sh('create', d, str(port), str(sinkport))
    if p.returncode != 0:
        harness.diag(p.stdout.decode(errors='replace'))
        shutil.rmtree(d, ignore_errors=True)
        return None
    with open(os.path.join(d, 'etc', 'main.cf'), 'a') as f:
        f.write('smtpd_tls_cert_file = %s\nsmtpd_tls_key_file = %s\n'
                'smtpd_tls_security_level = may\nsmtpd_tls_loglevel = 1\n'
                % (PKI_.cert, PKI_.key))
    # the benchmark instance has no TLS: smtpd needs the TLS manager
    with open(os.path.join(d, 'etc', 'master.cf'), 'a') as f:
        f.write('tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n')
    for cmd in (('sink-start', d, str(sinkport)), ('start', d)):
        p = sh(*cmd)
        if p.returncode != 0:
            harness.diag(p.stdout.decode(errors='replace'))
            sh('destroy', d)
            shutil.rmtree(d, ignore_errors=True)
            return None
    return d, sh


@test
def postfix_tls_smarthost():
    if smtpc_pending():
        return
    port, sinkport = harness.free_ports(2)
    pf = _postfix_tls_instance(port, sinkport)
    if not pf:
        harness.diag('no private Postfix (needs root and the postfix package): test skipped')
        return
    d, sh = pf
    try:
        conf = {'relayhost': '127.0.0.1:%d' % port, 'relayhost.tls': 'require',
                'tls.ca_file': PKI_.ca, 'retry.initial': '1s'}
        with Node(conf=conf) as n:
            for i in range(3):
                send(n, 10 + i)
            check('postfix_tls_delivered', wait_until(lambda: queued(n) == 0, 30), n.log()[-800:])
            check('postfix_tls_verified', 'certificate verified' in n.log(), n.log()[-800:])
        maillog = ''
        try:
            with open(os.path.join(d, 'maillog'), errors='replace') as f:
                maillog = f.read()
        except OSError:
            pass
        check('postfix_saw_tls', 'TLS connection established from' in maillog,
              [l for l in maillog.splitlines() if 'warning' in l or 'TLS' in l][-5:])
    finally:
        sh('destroy', d)
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------ mailnode tls selfsigned

def _openssl_out(*args):
    p = subprocess.run(['openssl'] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60)
    return p.returncode, p.stdout.decode(errors='replace')


@test
def selfsigned_certificate():
    """`mailnode tls selfsigned` makes a key and certificate that python's
    ssl, openssl s_client and mailnode's own relay client accept when they
    pin it, and that nothing else vouches for."""
    with Node(conf=dict(FAST), start=False, name='selfsigned') as n:
        cert, key = n.path('tls-cert.pem'), n.path('tls-key.pem')
        rc, out, err = n.cli('tls', 'selfsigned', '--cn', 'localhost', '--days', '30')
        check('selfsigned_exit_0', rc == 0, err)
        check('selfsigned_files', os.path.isfile(cert) and os.path.isfile(key), os.listdir(n.dir))
        if not os.path.isfile(cert):
            return
        check('selfsigned_key_private', os.stat(key).st_mode & 0o777 == 0o600, oct(os.stat(key).st_mode))
        check('selfsigned_prints_config', 'tls.cert = %s' % cert in out and 'tls.key = %s' % key in out, out)
        rc, text = _openssl_out('x509', '-in', cert, '-noout', '-text')
        check('selfsigned_parses', rc == 0, text[-300:])
        check('selfsigned_subject_cn', 'Subject: CN = localhost' in text, text[:600])
        check('selfsigned_self_issued', 'Issuer: CN = localhost' in text, text[:600])
        check('selfsigned_san_dns', 'DNS:localhost' in text, text)
        check('selfsigned_not_ca', 'CA:FALSE' in text, text)
        check('selfsigned_ec_p256', 'prime256v1' in text or 'P-256' in text, text[:900])
        rc, fp = _openssl_out('x509', '-in', cert, '-noout', '-fingerprint', '-sha256')
        fp = fp.strip().split('=', 1)[-1]
        check('selfsigned_fingerprint', rc == 0 and fp and fp in out, (fp, out))
        rc, days = _openssl_out('x509', '-in', cert, '-noout', '-checkend', str(29 * 86400))
        check('selfsigned_valid_30_days', rc == 0, days)
        rc, days = _openssl_out('x509', '-in', cert, '-noout', '-checkend', str(31 * 86400))
        check('selfsigned_expires_after_30_days', rc != 0, days)
        before = open(cert, 'rb').read()
        rc, out2, err2 = n.cli('tls', 'selfsigned', '--cn', 'localhost')
        check('selfsigned_keeps_existing', rc == 73 and open(cert, 'rb').read() == before
              and 'exists' in err2, (rc, err2))
        rc, out2, err2 = n.cli('tls', 'selfsigned', '--cn', 'bad name!', '-o', n.dir, '--force')
        check('selfsigned_bad_name_64', rc == 64 and 'host name' in err2, (rc, err2))
        rc, out2, err2 = n.cli('tls', 'selfsigned', '--days', '0', '--force')
        check('selfsigned_bad_days_64', rc == 64 and '--days' in err2, (rc, err2))
        check('selfsigned_bad_args_kept_files', open(cert, 'rb').read() == before)

        # STARTTLS with the certificate pinned as the only CA.
        n.configure({'tls.cert': cert, 'tls.key': key})
        n.cli('user', 'add', 'alice', input=PASSWORD + '\n')
        n.start()
        ctx = ssl.create_default_context(cafile=cert)
        s = smtplib.SMTP('localhost', n.port('smtp'), timeout=10 * harness.TIME_SCALE)
        s.ehlo('client.test')
        s.starttls(context=ctx)
        s.ehlo('client.test')
        check('selfsigned_smtplib_starttls_verified', isinstance(s.sock, ssl.SSLSocket)
              and s.sock.getpeercert()['subject'][0][0] == ('commonName', 'localhost'))
        s.quit()
        p = poplib.POP3('localhost', n.port('pop3'), timeout=10 * harness.TIME_SCALE)
        p.stls(context=ctx)
        p.user('alice')
        p.pass_(PASSWORD)
        check('selfsigned_pop3_stls_verified', p.stat()[0] == 0)
        p.quit()
        r = subprocess.run(['openssl', 's_client', '-starttls', 'smtp', '-connect',
                            '127.0.0.1:%d' % n.port('smtp'), '-CAfile', cert, '-verify_hostname',
                            'localhost', '-verify_return_error', '-brief'],
                           input=b'QUIT\r\n', stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=30 * harness.TIME_SCALE)
        text = r.stdout.decode(errors='replace')
        check('selfsigned_s_client_verified', r.returncode == 0 and 'Verification: OK' in text, text[-500:])
        # Without the pin nothing vouches for it.
        try:
            s = smtplib.SMTP('localhost', n.port('smtp'), timeout=10 * harness.TIME_SCALE)
            s.ehlo('client.test')
            s.starttls(context=PKI_.context())
            check('selfsigned_untrusted_refused', False, 'handshake succeeded')
        except ssl.SSLCertVerificationError:
            check('selfsigned_untrusted_refused', True)
        except (OSError, smtplib.SMTPException) as e:
            check('selfsigned_untrusted_refused', False, repr(e))


@test
def selfsigned_address_relay():
    """A certificate for an address (--cn 127.0.0.1): mailnode's relay
    client with `relayhost.tls = require` and the certificate as its
    tls.ca_file checks the iPAddress name and delivers; pinned to another
    certificate it keeps the mail queued."""
    c = dict(FAST)
    c['local_domains'] = 'remote.test'
    with Node(conf=c, start=False, name='smarthost') as b:
        rc, out, err = b.cli('tls', 'selfsigned', '--cn', '127.0.0.1', '-o', b.dir)
        check('selfsigned_ip_exit_0', rc == 0, err)
        rc, text = _openssl_out('x509', '-in', b.path('tls-cert.pem'), '-noout', '-text')
        check('selfsigned_san_ip', 'IP Address:127.0.0.1' in text, text)
        b.configure({'tls.cert': b.path('tls-cert.pem'), 'tls.key': b.path('tls-key.pem')})
        b.cli('user', 'add', 'far', input=PASSWORD + '\n')
        b.start()
        conf = {'relayhost': '127.0.0.1:%d' % b.port('smtp'), 'relayhost.tls': 'require',
                'retry.initial': '1h', 'tls.ca_file': PKI_.ca}
        with Node(conf=conf) as n:
            send(n, 40)
            n.cli('flush', '--wait', '--timeout', '30s')
            check('selfsigned_other_pin_queued', queued(n) == 1, n.log()[-600:])
            n.stop()
            n.configure({'tls.ca_file': b.path('tls-cert.pem')})
            n.start()
            n.cli('flush', '--wait', '--timeout', '30s')
            check('selfsigned_ip_delivered', wait_until(lambda: queued(n) == 0, 20), n.log()[-600:])
            check('selfsigned_ip_verified', 'certificate verified' in n.log(), n.log()[-600:])
            # A pinned certificate for another name than the address dialled.
            other = b.path('other')
            os.mkdir(other)
            rc, out, err = b.cli('tls', 'selfsigned', '--cn', 'localhost', '-o', other)
            b.stop()
            b.configure({'tls.cert': os.path.join(other, 'tls-cert.pem'),
                         'tls.key': os.path.join(other, 'tls-key.pem')})
            b.start()
            n.stop()
            n.configure({'tls.ca_file': os.path.join(other, 'tls-cert.pem')})
            n.start()
            send(n, 41)
            n.cli('flush', '--wait', '--timeout', '30s')
            check('selfsigned_ip_name_mismatch_queued', queued(n) == 1, n.log()[-600:])


import atexit
atexit.register(PKI_.close)
harness.main()
