"""IMAP with real clients against the real binary: curl imap://, s-nail in
batch mode, fetchmail over IMAP (keep, seen state, IDLE), mbsync (isync)
syncing a mailbox both ways twice with nothing lost or duplicated; and the
same structure answers and the same mbsync run against a private Dovecot
on loopback, which pins down what the RFC leaves open (line counts,
default charset, section boundaries)."""
import imaplib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import harness
from dovecot import Dovecot
from harness import Node, check, diag, test, wait_until

PASSWORD = 'correct horse 42'
FAST = {'auth.fail_delay': '0'}

MULTIPART = (b'From: Ann <ann@remote.test>\r\n'
             b'To: alice@example.test\r\n'
             b'Subject: parts\r\n'
             b'Message-ID: <parts@remote.test>\r\n'
             b'MIME-Version: 1.0\r\n'
             b'Content-Type: multipart/mixed; boundary="outer"\r\n'
             b'\r\n'
             b'preamble\r\n'
             b'--outer\r\n'
             b'Content-Type: text/plain; charset=utf-8\r\n'
             b'\r\n'
             b'first part\r\n'
             b'second line\r\n'
             b'--outer\r\n'
             b'Content-Type: message/rfc822\r\n'
             b'\r\n'
             b'From: Dan <dan@remote.test>\r\n'
             b'Subject: inner\r\n'
             b'Content-Type: multipart/alternative; boundary=inner\r\n'
             b'\r\n'
             b'--inner\r\n'
             b'Content-Type: text/plain\r\n'
             b'\r\n'
             b'inner plain\r\n'
             b'--inner\r\n'
             b'Content-Type: text/html; format=flowed\r\n'
             b'\r\n'
             b'<p>inner html</p>\r\n'
             b'--inner--\r\n'
             b'--outer\r\n'
             b'Content-Type: application/octet-stream\r\n'
             b'Content-Disposition: attachment; filename="a.bin"\r\n'
             b'Content-Transfer-Encoding: base64\r\n'
             b'\r\n'
             b'AAECAw==\r\n'
             b'--outer--\r\n')

SAMPLES = [
    MULTIPART,
    b'From: Bob <bob@remote.test>\r\nTo: a@b, "C D" <c@d>\r\nSubject: plain\r\n'
    b'Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n\r\nline 1\r\nline 2\r\n',
    b'Subject: no final line end\r\n\r\nline1\r\nline2',
    b'To: grp: a@b, c@d;, e@f\r\nSubject: groups\r\n\r\nx\r\n',
    b'Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: in digest\r\n\r\nbody\r\n--d--\r\n',
    b'Content-Type: text/plain\r\n\r\n\r\n',
    b'Subject: empty body\r\n\r\n',
]


def have(tool):
    return shutil.which(tool) is not None


def new_node(conf=None):
    c = dict(FAST)
    c.update(conf or {})
    n = Node(conf=c)
    rc, out, err = n.cli('user', 'add', 'alice', input=PASSWORD + '\n')
    if rc != 0:
        raise RuntimeError('user add: %s' % err)
    return n


def deliver(n, i):
    s = n.smtp()
    try:
        s.sendmail('bob@remote.test', ['alice@example.test'],
                   b'From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\n'
                   b'Subject: message %d\r\nMessage-ID: <m%d@remote.test>\r\n\r\nbody %d\r\n' % (i, i, i))
    finally:
        s.quit()


@test
def curl_imap():
    if not check('curl installed (tools/deps.sh)', have('curl')):
        return
    with new_node() as n:
        for i in range(3):
            deliver(n, i)
        base = 'imap://127.0.0.1:%d' % n.port('imap')
        m = n.imap()
        m.login('alice', PASSWORD)
        m.select('INBOX')
        typ, data = m.uid('SEARCH', 'ALL')
        uid = data[0].split()[1].decode()
        typ, data = m.uid('FETCH', uid, '(BODY.PEEK[])')
        want = data[0][1]
        p = subprocess.run(['curl', '-s', '-u', 'alice:' + PASSWORD, base + '/INBOX;UID=' + uid],
                           stdout=subprocess.PIPE, timeout=30)
        check('curl fetches the message byte for byte', p.returncode == 0 and p.stdout == want,
              (p.returncode, p.stdout[:100]))
        p = subprocess.run(['curl', '-s', '-u', 'alice:' + PASSWORD, base + '/'],
                           stdout=subprocess.PIPE, timeout=30)
        check('curl lists the folders', b'"Sent"' in p.stdout and b'\\Sent' in p.stdout, p.stdout)
        path = n.path('up.eml')
        with open(path, 'wb') as f:
            f.write(b'Subject: uploaded\r\n\r\nby curl\r\n')
        p = subprocess.run(['curl', '-s', '-u', 'alice:' + PASSWORD, '-T', path, base + '/Sent'],
                           stdout=subprocess.PIPE, timeout=30)
        check('curl APPENDs', p.returncode == 0, p.returncode)
        m.select('Sent')
        typ, data = m.fetch('1', '(BODY.PEEK[])')
        check('the appended message is there', data[0][1] == b'Subject: uploaded\r\n\r\nby curl\r\n', data)
        m.logout()


@test
def s_nail_batch():
    if not check('s-nail installed (tools/deps.sh)', have('s-nail')):
        return
    with new_node() as n:
        for i in range(3):
            deliver(n, i)
        port = n.port('imap')
        env = dict(os.environ, HOME=n.dir, MAILRC='/dev/null')
        script = b'headers\nprint 2\ncopy 1 +Trash\ndelete 3\nquit\n'
        p = subprocess.run(['s-nail', '-#', '-N', '-S', 'v15-compat', '-S', 'folder=imap://alice@127.0.0.1:%d' % port,
                            '-S', 'password-alice@127.0.0.1:%d=%s' % (port, PASSWORD),
                            '-f', 'imap://alice@127.0.0.1:%d' % port],
                           input=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, env=env)
        out = p.stdout + p.stderr
        check('s-nail lists the headers', b'message 0' in out and b'message 2' in out, out[-500:])
        check('s-nail prints message 2', b'body 1' in out, out[-500:])
        m = n.imap()
        m.login('alice', PASSWORD)
        typ, data = m.status('INBOX', '(MESSAGES)')
        check('s-nail delete + quit expunged one', b'MESSAGES 2' in data[0], data)
        typ, data = m.status('Trash', '(MESSAGES)')
        check('s-nail copied one to Trash', b'MESSAGES 1' in data[0], data)
        m.logout()


@test
def fetchmail_imap_keep_and_idle():
    if not check('fetchmail installed (tools/deps.sh)', have('fetchmail')):
        return
    with new_node() as n:
        for i in range(3):
            deliver(n, i)
        out = n.path('fetched.mbox')
        rc = n.path('fetchmailrc')
        with open(rc, 'w') as f:
            f.write('set no syslog\npoll 127.0.0.1 port %d protocol imap user "alice" password "%s" '
                    'is "%s" here keep sslproto "" mda "/bin/sh -c \'cat >> %s\'"\n'
                    % (n.port('imap'), PASSWORD, os.environ.get('USER', 'root'), out))
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=n.dir, FETCHMAILHOME=n.dir)

        def run(*extra):
            return subprocess.run(['fetchmail', '-f', rc, '-d0', '--nodetach'] + list(extra),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, env=env)

        def count():
            try:
                with open(out, 'rb') as f:
                    return len(re.findall(rb'^Subject: message', f.read(), re.M))
            except OSError:
                return 0
        p = run()
        check('fetchmail fetched the three messages', count() == 3, p.stdout[-500:])
        p = run()
        check('a second run fetches nothing again (kept, seen)', count() == 3 and p.returncode == 1,
              (p.returncode, p.stdout[-300:]))
        proc = subprocess.Popen(['fetchmail', '-f', rc, '-d0', '--nodetach', '--idle'],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            time.sleep(1.0)
            deliver(n, 7)
            check('fetchmail in IDLE gets new mail at once', wait_until(lambda: count() == 4, timeout=15))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


MBSYNC_RC = '''IMAPAccount acc
Host 127.0.0.1
Port {port}
User alice
Pass "{password}"
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account acc

MaildirStore local
Path {dir}/maildir/
Inbox {dir}/maildir/INBOX
SubFolders Verbatim

Channel ch
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
'''


def maildir_messages(root):
    """{(folder, message-id or subject)} of every message in a maildir tree."""
    found = []
    for dirpath, dirnames, files in os.walk(root):
        if os.path.basename(dirpath) not in ('cur', 'new'):
            continue
        folder = os.path.relpath(os.path.dirname(dirpath), root)
        for fn in files:
            with open(os.path.join(dirpath, fn), 'rb') as f:
                text = f.read()
            mid = re.search(rb'^Message-ID: (.*)$', text, re.M | re.I) or \
                re.search(rb'^Subject: (.*)$', text, re.M | re.I)
            found.append((folder, mid.group(1).strip().decode() if mid else fn, fn))
    return found


def mbsync_scenario(imap_factory, port, workdir):
    """Two syncs each way with changes on both sides in between; returns
    a list of (name, ok, detail) results."""
    results = []
    rc = os.path.join(workdir, 'mbsyncrc')
    with open(rc, 'w') as f:
        f.write(MBSYNC_RC.format(port=port, password=PASSWORD, dir=workdir))
    os.makedirs(os.path.join(workdir, 'maildir'), exist_ok=True)

    def sync():
        return subprocess.run(['mbsync', '-c', rc, '-a'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=120)
    p = sync()
    local = maildir_messages(os.path.join(workdir, 'maildir'))
    inbox = sorted(m for f, m, _ in local if f == 'INBOX')
    results.append(('first sync pulls INBOX', p.returncode == 0 and inbox ==
                    ['<m0@remote.test>', '<m1@remote.test>', '<m2@remote.test>', '<m3@remote.test>'],
                    (p.returncode, inbox, p.stdout[-300:])))
    # Local changes: a new message in Sent, message m1 flagged, m2 trashed.
    sent_new = os.path.join(workdir, 'maildir', 'Sent', 'new')
    os.makedirs(sent_new, exist_ok=True)
    with open(os.path.join(sent_new, '100.local.host'), 'wb') as f:
        f.write(b'From: alice@example.test\r\nSubject: written offline\r\nMessage-ID: <local1@x>\r\n\r\nhi\r\n')
    for f, m, fn in local:
        d = os.path.join(workdir, 'maildir', f)
        sub = 'cur' if os.path.exists(os.path.join(d, 'cur', fn)) else 'new'
        path = os.path.join(d, sub, fn)
        if m == '<m1@remote.test>':
            base = fn.split(':2,')[0]
            os.rename(path, os.path.join(d, 'cur', base + ':2,FS'))
        if m == '<m2@remote.test>':
            os.unlink(path)
    # Remote changes: m3 deleted, a new message arrives.
    im = imap_factory()
    im.select('INBOX')
    typ, data = im.search(None, 'HEADER', 'Message-ID', 'm3@remote.test')
    im.store(data[0].decode(), '+FLAGS', '(\\Deleted)')
    im.expunge()
    im.append('INBOX', None, None, b'Subject: late\r\nMessage-ID: <late@remote.test>\r\n\r\nlate\r\n')
    im.logout()
    p = sync()
    p2 = sync()
    local = maildir_messages(os.path.join(workdir, 'maildir'))
    inbox = sorted(m for f, m, _ in local if f == 'INBOX')
    results.append(('second sync brings both sides together', p.returncode == 0 and p2.returncode == 0 and
                    inbox == ['<late@remote.test>', '<m0@remote.test>', '<m1@remote.test>'],
                    (p.returncode, p2.returncode, inbox, p.stdout[-300:])))
    im = imap_factory()
    im.select('INBOX')
    typ, data = im.fetch('1:*', '(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])')
    remote = {}
    for d in data:
        if isinstance(d, tuple):
            mid = re.search(rb'Message-ID: (\S+)', d[1], re.I)
            remote[mid.group(1).decode() if mid else '?'] = d[0]
    results.append(('remote INBOX as local, nothing duplicated',
                    sorted(remote) == ['<late@remote.test>', '<m0@remote.test>', '<m1@remote.test>'], remote))
    results.append(('local flag reached the server', b'\\Flagged' in remote.get('<m1@remote.test>', b''), remote))
    im.select('Sent')
    typ, data = im.fetch('1:*', '(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])')
    sent = [d[1] for d in data if isinstance(d, tuple)]
    results.append(('local message uploaded once', len(sent) == 1 and b'local1@x' in sent[0], sent))
    im.logout()
    counts = sorted((f, m) for f, m, _ in local)
    results.append(('no duplicates in the maildir', len(counts) == len(set(counts)), counts))
    return results


@test
def mbsync_both_ways_twice():
    if not check('mbsync installed (tools/deps.sh)', have('mbsync')):
        return
    with new_node() as n:
        for i in range(4):
            deliver(n, i)

        def factory():
            m = n.imap()
            m.login('alice', PASSWORD)
            return m
        for name, ok, detail in mbsync_scenario(factory, n.port('imap'), n.dir):
            check('mailnode: ' + name, ok, detail)


@test
def dovecot_same_mbsync_and_structure():
    if not check('dovecot and mbsync installed, running as root', have('dovecot') and have('mbsync')
                 and os.geteuid() == 0):
        return
    dv = Dovecot()
    try:
        m = dv.imap()
        for i in range(4):
            m.append('INBOX', None, None,
                     b'From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\n'
                     b'Subject: message %d\r\nMessage-ID: <m%d@remote.test>\r\n\r\nbody %d\r\n' % (i, i, i))
        m.logout()
        work = tempfile.mkdtemp(prefix='mailnode-mbsync-dv-')
        try:
            for name, ok, detail in mbsync_scenario(dv.imap, dv.port, work):
                check('dovecot: ' + name, ok, detail)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # The same messages in both servers: the structure answers agree.
        with new_node() as n:
            ours = n.imap()
            ours.login('alice', PASSWORD)
            theirs = dv.imap()
            for srv in (ours, theirs):
                srv.create('Cmp')
                for s in SAMPLES:
                    srv.append('Cmp', None, None, s)
                srv.select('Cmp')
            items = ['BODYSTRUCTURE', 'BODY', 'ENVELOPE', 'RFC822.SIZE', 'BODY.PEEK[1]', 'BODY.PEEK[1.MIME]',
                     'BODY.PEEK[2]', 'BODY.PEEK[2.HEADER]', 'BODY.PEEK[2.TEXT]', 'BODY.PEEK[2.1]',
                     'BODY.PEEK[2.2.MIME]', 'BODY.PEEK[3]', 'BODY.PEEK[TEXT]', 'BODY.PEEK[HEADER]',
                     'BODY.PEEK[HEADER.FIELDS (SUBJECT TO)]', 'BODY.PEEK[]<3.20>']
            for i in range(1, len(SAMPLES) + 1):
                for it in items:
                    a = ours.fetch(str(i), '(%s)' % it)
                    b = theirs.fetch(str(i), '(%s)' % it)
                    check('same %s of sample %d as dovecot' % (it, i), a == b, (a, b))
            ours.logout()
            theirs.logout()
    finally:
        dv.close()


harness.main()
