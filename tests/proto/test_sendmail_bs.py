"""`sendmail -bs`: SMTP on standard input and output, as the calling user.

Driven by python through pipes (reply by reply, so that what is visible
after each 250 can be checked from outside: the message is committed
before the reply), from a file, by a client that leaves in the middle of
the data, and by swaks --pipe.  Under MAILNODE_VALGRIND=1 the -bs process
itself runs under valgrind.
"""
import os
import pwd
import re
import select
import shutil
import subprocess
import time

import harness
from harness import BIN, Node, check, test, wait_until
from sink import Sink

PW = 'bs-pw-1'
ME = pwd.getpwuid(os.getuid()).pw_name


def add_user(n, name):
    rc, out, err = n.cli('user', 'add', name, input=PW + '\n')
    assert rc == 0, err


def subjects(n, user):
    rc, out, err = n.cli('mailbox', 'list', user)
    return [l.split('\t')[-1] for l in out.splitlines() if l.strip()] if rc == 0 else None


def bs_argv(n):
    return (harness.VALGRIND_CMD if harness.VALGRIND else []) + [BIN, '-c', n.conf_path, 'sendmail', '-bs']


class Bs:
    """A `sendmail -bs` process spoken to through its pipes."""

    def __init__(self, n, stdin=subprocess.PIPE):
        self.p = subprocess.Popen(bs_argv(n), stdin=stdin, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=n.dir)
        self.buf = b''

    def reply(self, timeout=10.0):
        """One SMTP reply (all its lines) as (code, text of the last line, all lines)."""
        deadline = time.monotonic() + timeout * harness.TIME_SCALE
        lines = []
        while True:
            while b'\r\n' not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError('no reply; got %r' % (lines, ))
                r, _, _ = select.select([self.p.stdout], [], [], left)
                if r:
                    chunk = os.read(self.p.stdout.fileno(), 4096)
                    if not chunk:
                        raise EOFError('end of output; got %r' % (lines, ))
                    self.buf += chunk
            line, self.buf = self.buf.split(b'\r\n', 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] != b'-':
                return int(line[:3]), line[4:].decode(), lines

    def cmd(self, line):
        self.p.stdin.write(line.encode() + b'\r\n')
        self.p.stdin.flush()
        return self.reply()

    def finish(self, timeout=10.0):
        """Close our side; the exit status and the error output."""
        try:
            self.p.stdin.close()
        except (BrokenPipeError, AttributeError):
            pass
        try:
            rc = self.p.wait(timeout=timeout * harness.TIME_SCALE)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None, 'did not end'
        err = self.p.stderr.read().decode('utf-8', 'replace')
        self.p.stdout.close()
        self.p.stderr.close()
        return rc, err


def clean_exit(name, rc, err):
    found = harness.sanitizer_report(err)
    check(name, rc == 0 and not found, '%r %s' % (rc, found or err[-2000:]))


@test
def bs_session_through_pipes():
    with Sink() as sink, Node(conf={'relayhost': '127.0.0.1:%d' % sink.port, 'retry.initial': '1s'}) as n:
        add_user(n, 'alice')
        bs = Bs(n)
        code, text, _ = bs.reply()
        check('greeting_220', code == 220 and 'ESMTP' in text, text)
        code, text, lines = bs.cmd('EHLO client.test')
        ext = ' '.join(lines)
        check('ehlo_250', code == 250, lines)
        check('ehlo_pipelining_dsn', 'PIPELINING' in ext and 'DSN' in ext, lines)
        check('ehlo_no_auth_etrn_starttls', not re.search(r'AUTH|ETRN|STARTTLS|COMPRESS', ext), lines)
        # The local user counts as authenticated: any sender (as sendmail
        # -f), relaying to a remote domain.
        code, text, _ = bs.cmd('MAIL FROM:<someone@elsewhere.test>')
        check('mail_any_sender', code == 250, text)
        code, text, _ = bs.cmd('RCPT TO:<alice@example.test>')
        check('rcpt_local', code == 250, text)
        code, text, _ = bs.cmd('RCPT TO:<far@remote.test>')
        check('rcpt_remote_relayed', code == 250, text)
        code, text, _ = bs.cmd('RCPT TO:<nobody@example.test>')
        check('rcpt_unknown_refused', code == 550, text)
        code, text, _ = bs.cmd('DATA')
        check('data_354', code == 354, text)
        code, text, _ = bs.cmd('Subject: over the pipe\r\n\r\n..dot line\r\nbody\r\n.')
        m = re.search(r'queued as (\w+)', text)
        check('data_250_queued', code == 250 and m, text)
        # Committed before the 250: another process sees it now, while
        # the session is still open.
        check('in_mailbox_at_250', subjects(n, 'alice') == ['over the pipe'], subjects(n, 'alice'))
        check('relayed_by_daemon', sink.wait_for(1, timeout=20), n.log()[-800:])
        if sink.messages:
            data = sink.messages[0].data
            check('received_names_local_user', re.search(
                (r'Received: from client\.test \(local user %s\)\r\n\tby node\.test \(mailnode\) with ESMTP id '
                 % re.escape(ME)).encode(), data) is not None, data[:300])
            check('dot_unstuffed', b'\r\n.dot line\r\nbody\r\n' in data, data[-80:])
            check('envelope_sender', sink.messages[0].mail_from == 'someone@elsewhere.test',
                  sink.messages[0].mail_from)
        if m:
            check('daemon_logged_accepted', wait_until(
                lambda: '%s: accepted from=local' % m.group(1) in n.log(), timeout=10), n.log()[-600:])
        code, text, _ = bs.cmd('ETRN example.test')
        check('etrn_refused', code == 502, text)
        code, text, _ = bs.cmd('AUTH PLAIN AGFsaWNlAHg=')
        check('auth_not_needed', code == 503, text)
        code, text, _ = bs.cmd('QUIT')
        check('quit_221', code == 221, text)
        rc, err = bs.finish()
        clean_exit('exit_0', rc, err)


@test
def bs_from_file_without_daemon():
    n = Node(start=False)
    with n:
        add_user(n, 'alice')
        script = n.path('script.smtp')
        with open(script, 'wb') as f:
            f.write(b'EHLO filer.test\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\n'
                    b'RCPT TO:<far@remote.test>\r\nDATA\r\nSubject: from a file\r\n\r\nx\r\n.\r\n'
                    b'MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT 23 LAST\r\n'
                    b'Subject: chunked\r\n\r\nyy\r\nQUIT\r\n')
        with open(script, 'rb') as f:
            bs = Bs(n, stdin=f)
            rc, err = bs.finish(timeout=20)
        out = bs.buf.decode() if False else ''
        clean_exit('exit_0', rc, err)
        check('both_in_mailbox', subjects(n, 'alice') == ['from a file', 'chunked'], subjects(n, 'alice'))
        rc, out, err = n.cli('queue', 'count')
        check('remote_copy_queued', out.strip() == '1', out + err)


@test
def bs_client_leaves_in_data():
    with Node() as n:
        add_user(n, 'alice')
        bs = Bs(n)
        bs.reply()
        bs.cmd('EHLO client.test')
        bs.cmd('MAIL FROM:<a@b.test>')
        bs.cmd('RCPT TO:<alice@example.test>')
        code, text, _ = bs.cmd('DATA')
        check('data_354', code == 354, text)
        bs.p.stdin.write(b'Subject: cut off\r\n\r\nhalf a mess')
        bs.p.stdin.flush()
        rc, err = bs.finish()
        clean_exit('exit_0_when_input_ends', rc, err)
        check('nothing_stored', subjects(n, 'alice') == [], subjects(n, 'alice'))
        # A complete message whose client does not wait for the 250 is kept.
        bs = Bs(n)
        bs.reply()
        bs.cmd('EHLO client.test')
        bs.cmd('MAIL FROM:<a@b.test>')
        bs.cmd('RCPT TO:<alice@example.test>')
        bs.cmd('DATA')
        bs.p.stdin.write(b'Subject: complete\r\n\r\nwhole\r\n.\r\n')
        bs.p.stdin.flush()
        rc, err = bs.finish()
        clean_exit('exit_0_after_dot', rc, err)
        check('complete_kept', subjects(n, 'alice') == ['complete'], subjects(n, 'alice'))


@test
def bs_swaks_pipe():
    if not shutil.which('swaks'):
        check('swaks_installed', False, 'swaks not found (tools/deps.sh installs it)')
        return
    with Node() as n:
        add_user(n, 'alice')
        cmd = ' '.join(bs_argv(n))
        p = subprocess.run(['swaks', '--pipe', cmd, '--from', 'me@client.test', '--to', 'alice@example.test',
                            '--helo', 'swaks.test', '--header', 'Subject: via swaks', '--body', 'hello'],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=n.dir,
                           timeout=60 * harness.TIME_SCALE)
        out = p.stdout.decode('utf-8', 'replace')
        check('swaks_ok', p.returncode == 0 and re.search(r'<-\s+250 2\.0\.0 Ok: queued as', out), out[-1500:])
        check('swaks_quit', re.search(r'<-\s+221', out), out[-500:])
        check('in_mailbox', subjects(n, 'alice') == ['via swaks'], subjects(n, 'alice'))
        check('no_valgrind_or_sanitizer_report', not harness.sanitizer_report(out), out[-2000:])


@test
def bs_cannot_open_database():
    with Node(start=False) as n:
        n.configure({'database': n.path('missing-dir', 'mailnode.db')})
        bs = Bs(n)
        try:
            code, text, _ = bs.reply()
        except (EOFError, TimeoutError) as e:
            code, text = 0, str(e)
        check('greeting_421', code == 421, text)
        rc, err = bs.finish()
        check('exit_73_with_reason', rc == 73 and 'missing-dir' in err, '%r %s' % (rc, err))


if __name__ == '__main__':
    harness.main()
