"""Offline bundles between two nodes with no network between them: keys and
peers, export and import, receipts, resending, volumes, duplicates (also
against SMTP), every kind of bad input, and kill -9 during an import.

Node A is a field node (local domain a.test) whose upstream is node B
(local domain b.test).  Nothing ever connects A to B: the bundle files are
the only path."""
import os
import signal
import smtplib
import sqlite3
import subprocess
import time

import harness
from harness import BIN, Node, check, test

EX_DATAERR, EX_NOINPUT, EX_NOUSER, EX_TEMPFAIL, EX_NOPERM = 65, 66, 67, 75, 77


def q(n, sql, *args):
    """One query on a node's database (read-only, beside the node)."""
    db = sqlite3.connect('file:%s?mode=ro' % n.db, uri=True, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def mbox_count(n):
    return q(n, 'SELECT count(*) FROM mbox')[0][0]


def queued(n):
    return q(n, 'SELECT count(DISTINCT message_id) FROM rcpt WHERE state=0')[0][0]


def cli_ok(n, *args, input=None, timeout=300):
    rc, out, err = n.cli(*args, input=input, timeout=timeout)
    if rc != 0:
        raise RuntimeError('mailnode %s: status %d: %s' % (' '.join(map(str, args)), rc, err[-800:]))
    return out, err


def pair(a_conf=None, b_conf=None, start=False):
    """A (field node) and B (its upstream), each knowing the other's key."""
    closed = harness.free_ports(1)[0]
    a = Node(conf=dict({'local_domains': 'a.test', 'relayhost': '127.0.0.1:%d' % closed},
                       **(a_conf or {})), listeners=('smtp',) if start else (), start=start, name='a')
    b = Node(conf=dict({'local_domains': 'b.test', 'relayhost': '127.0.0.1:%d' % closed},
                       **(b_conf or {})), listeners=('smtp', 'pop3') if start else (), start=start, name='b')
    ka = cli_ok(a, 'key', 'show')[0].strip()
    kb = cli_ok(b, 'key', 'show')[0].strip()
    cli_ok(a, 'peer', 'add', 'up', '--key', kb)
    cli_ok(b, 'peer', 'add', 'site', '--key', ka, '--domains', 'a.test')
    cli_ok(b, 'user', 'add', 'bob', input='secret\n')
    cli_ok(a, 'user', 'add', 'alice', input='secret\n')
    return a, b


def inject(n, i, rcpt='bob@b.test', body=None, msgid=None):
    text = ('From: alice@a.test\nTo: %s\nSubject: message %d\nMessage-ID: <%s>\n\n%s\n'
            % (rcpt, i, msgid or 'm%d.%d@a.test' % (i, os.getpid()),
               body or 'Hello Bob, this is message number %d from the field site.' % i))
    cli_ok(n, 'sendmail', '-f', 'alice@a.test', rcpt, input=text)


def export(n, path, *extra, peer='up'):
    rc, out, err = n.cli('bundle', 'export', '--peer', peer, '-o', path, *extra, timeout=600)
    if rc != 0:
        raise RuntimeError('export: %d %s' % (rc, err[-500:]))
    return err


def receipts(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith('receipt-'))


@test
def keys_and_peers():
    with Node(listeners=(), start=False, name='k') as n:
        rc, out, err = n.cli('key', 'show')
        line = out.strip()
        check('key_show_line', rc == 0 and line.startswith('mnb1 ') and len(line.split()) == 3, out + err)
        check('key_file_private', os.stat(n.db + '.bundle-key').st_mode & 0o777 == 0o600)
        rc2, out2, _ = n.cli('key', 'show')
        check('key_stable', out2 == out)
        rc, _, err = n.cli('peer', 'add', 'x', '--key', 'mnb1 notakey')
        check('peer_add_bad_key', rc == EX_DATAERR and '--key' in err, err)
        rc, _, err = n.cli('peer', 'add', 'x', '--key', line, '--domains', 'bad domain!')
        check('peer_add_bad_domains', rc == EX_DATAERR, err)
        cli_ok(n, 'peer', 'add', 'x', '--key', line, '--domains', 'One.test, two.test')
        rc, _, err = n.cli('peer', 'add', 'y', '--key', line)
        check('peer_add_same_key_twice', rc == EX_DATAERR, err)
        out, _ = cli_ok(n, 'peer', 'list')
        check('peer_list', out.startswith('x\tone.test,two.test\tmnb1 '), out)
        cli_ok(n, 'peer', 'del', 'x')
        rc, _, _ = n.cli('peer', 'del', 'x')
        check('peer_del_unknown', rc == EX_NOUSER)
        check('peer_list_empty', cli_ok(n, 'peer', 'list')[0] == '')


@test
def round_trip_envelope_and_receipt():
    a, b = pair(start=True)
    with a, b:
        # DSN parameters through SMTP into A: they must come out of B intact.
        s = smtplib.SMTP('127.0.0.1', a.port('smtp'), timeout=30)
        s.ehlo('client.test')
        msg = b'From: alice@a.test\r\nSubject: dsn\r\nMessage-ID: <dsn.1@a.test>\r\n\r\nd\xc3\xa9j\xc3\xa0 vu\r\n'
        s.sendmail('alice@a.test', ['carol@far.test', 'bob@b.test'], msg,
                   mail_options=['BODY=8BITMIME', 'ENVID=env+2Bid1', 'RET=HDRS'],
                   rcpt_options=['NOTIFY=SUCCESS,DELAY', 'ORCPT=rfc822;carol@far.test'])
        s.quit()
        for i in range(3):
            inject(a, i)
        check('queued_on_a', queued(a) == 4, str(queued(a)))
        bdir = a.path('out')
        os.mkdir(bdir)
        path = os.path.join(bdir, 'x.mnb')
        export(a, path)
        check('exported_stay_queued', queued(a) == 4)
        check('marked_in_transit', q(a, 'SELECT count(*) FROM bundle_transit')[0][0] == 5)
        with open(path, 'rb') as f:
            data = f.read()
        check('encrypted', b'Hello Bob' not in data and b'carol@far.test' not in data)
        out, _ = cli_ok(b, 'bundle', 'import', path)
        check('import_summary', '4 messages, 4 stored' in out, out)
        check('local_delivered', mbox_count(b) == 4, str(mbox_count(b)))
        rows = q(b, "SELECT m.envid, m.ret_full, m.eightbit, m.size, r.addr, r.notify, r.orcpt, m.sender"
                    " FROM message m JOIN rcpt r ON r.message_id=m.id WHERE r.addr='carol@far.test'")
        check('relay_queued_on_b', len(rows) == 1, str(rows))
        if rows:
            envid, ret_full, eightbit, size, addr, notify, orcpt, sender = rows[0]
            check('envid_kept', envid == 'env+2Bid1', envid)   # xtext, as SMTP carries it
            check('ret_kept', ret_full == 0)
            check('body_8bit_kept', eightbit == 1)
            check('notify_kept', notify == 1 | 4, str(notify))
            check('orcpt_kept', orcpt == 'rfc822;carol@far.test', orcpt)
            check('sender_kept', sender == 'alice@a.test')
        # The message text arrives byte for byte, under a Received field
        # that names the bundle.
        c = b.pop3()
        c.user('bob')
        c.pass_('secret')
        texts = [b'\r\n'.join(c.retr(i + 1)[1]) for i in range(len(c.list()[1]))]
        c.quit()
        dsn = [t for t in texts if b'Subject: dsn' in t]
        check('text_intact', len(dsn) == 1 and dsn[0].endswith(b'd\xc3\xa9j\xc3\xa0 vu'), repr(dsn)[:300])
        check('received_names_bundle', dsn and b'Received: from site (bundle ' in dsn[0] and
              b'with BUNDLE' in dsn[0], repr(dsn)[:400])
        # The receipt removes the messages from A's queue.
        rs = receipts(bdir)
        check('receipt_written', len(rs) == 1, str(os.listdir(bdir)))
        out, _ = cli_ok(a, 'bundle', 'import', rs[0])
        check('receipt_acknowledges', '4 messages acknowledged' in out, out)
        check('queue_empty_after_receipt', queued(a) == 0, str(queued(a)))
        rc, out, err = a.cli('bundle', 'import', rs[0])
        check('receipt_replay_refused', rc == EX_DATAERR and 'replay' in err, err)
        # Nothing left to export.
        err = export(a, os.path.join(bdir, 'y.mnb'))
        check('nothing_left', ': 0 messages' in err, err)


@test
def resend_without_receipt_and_duplicates():
    a, b = pair(a_conf={'bundle.resend_after': '1s'})
    with a, b:
        for i in range(5):
            inject(a, i)
        d = a.path('out')
        os.mkdir(d)
        export(a, os.path.join(d, 'one.mnb'))
        cli_ok(b, 'bundle', 'import', os.path.join(d, 'one.mnb'))
        check('first_delivery', mbox_count(b) == 5)
        # The receipt is lost; once resend_after passed, the mail goes again.
        for f in receipts(d):
            os.unlink(f)
        err = export(a, os.path.join(d, 'early.mnb'), '--max-bytes', '1M')
        check('not_resent_early', ': 0 messages' in err, err)
        time.sleep(2.2)
        err = export(a, os.path.join(d, 'two.mnb'))
        check('resent_after_timeout', ': 5 messages' in err, err)
        out, _ = cli_ok(b, 'bundle', 'import', os.path.join(d, 'two.mnb'))
        check('duplicates_dropped', '0 stored, 5 duplicates dropped' in out and mbox_count(b) == 5, out)
        rs = receipts(d)
        cli_ok(a, 'bundle', 'import', *rs)
        check('acknowledged', queued(a) == 0)


@test
def volumes_any_order():
    a, b = pair()
    with a, b:
        n = 40
        import base64
        for i in range(n):
            # Base64 of random bytes: text that compresses little, so the
            # volumes fill up.
            inject(a, i, body=base64.encodebytes(os.urandom(1500)).decode())
        d = a.path('vol')
        os.mkdir(d)
        export(a, os.path.join(d, 'v'), '--max-bytes', '8K')
        vols = sorted(f for f in os.listdir(d) if f.startswith('v.'))
        sizes = [os.path.getsize(os.path.join(d, f)) for f in vols]
        check('several_volumes', len(vols) >= 3, str(vols))
        check('volumes_within_limit', all(s <= 8192 for s in sizes), str(sizes))
        check('volumes_numbered', vols[0] == 'v.001' and not any(f.endswith('.tmp') for f in os.listdir(d)))
        for f in reversed(vols):
            cli_ok(b, 'bundle', 'import', os.path.join(d, f))
        check('all_delivered_once', mbox_count(b) == n, str(mbox_count(b)))
        rc, out, err = b.cli('bundle', 'import', *[os.path.join(d, f) for f in vols])
        check('reimport_refused', rc == EX_DATAERR and err.count('replay') == len(vols), err[-300:])
        check('reimport_adds_nothing', mbox_count(b) == n)
        big = 'x' * 20000
        inject(a, 999, body=''.join('%s %d\n' % (big[:70], k) for k in range(400)))
        rc, out, err = a.cli('bundle', 'export', '--peer', 'up', '-o', os.path.join(d, 'w'), '--max-bytes', '4K')
        check('too_big_left_queued', rc == 0 and 'does not fit' in err and ': 0 messages' in err and
              q(a, 'SELECT count(*) FROM bundle_transit')[0][0] == n, err)


@test
def null_sender_failure_to_postmaster():
    """A notification (null reverse-path) that cannot be delivered after
    import goes to the postmaster as a double bounce, never in silence."""
    a, b = pair()
    with a, b:
        text = 'From: MAILER-DAEMON@a.test\nTo: nosuch@b.test\nSubject: a notice\n\nReport.\n'
        cli_ok(a, 'sendmail', '-f', '<>', 'nosuch@b.test', input=text)
        check('null_queued_on_a', queued(a) == 1, str(queued(a)))
        bdir = a.path('out')
        os.mkdir(bdir)
        path = os.path.join(bdir, 'n.mnb')
        export(a, path)
        out, err = cli_ok(b, 'bundle', 'import', path)
        rows = q(b, "SELECT count(*) FROM mbox")
        check('null_double_bounce_kept', rows[0][0] == 1, '%s; %s %s' % (rows, out, err[-500:]))
        texts = q(b, "SELECT m.sender FROM message m")
        check('null_double_bounce_null_sender', all(t[0] == '' for t in texts), str(texts))


def tamper(src, dst, fn):
    with open(src, 'rb') as f:
        data = bytearray(f.read())
    data = fn(data)
    with open(dst, 'wb') as f:
        f.write(data)


@test
def bad_input_changes_nothing():
    a, b = pair()
    with a, b:
        for i in range(3):
            inject(a, i)
        d = a.path('bad')
        os.mkdir(d)
        good = os.path.join(d, 'good.mnb')
        export(a, good)
        size = os.path.getsize(good)

        def flip(off):
            def f(data):
                data[off] ^= 0x40
                return data
            return f

        cases = [
            ('not_a_bundle', lambda data: bytearray(b'hello world\n' * 10), EX_DATAERR, 'not a mailnode bundle'),
            ('empty', lambda data: bytearray(), EX_DATAERR, 'not a mailnode bundle'),
            ('bad_signature', flip(14), EX_DATAERR, 'bad signature'),
            ('sealed_key_altered', flip(120), EX_DATAERR, 'bad signature'),
            ('tampered_frame', flip(size // 2 + 150), EX_DATAERR, 'altered'),
            ('tampered_last_byte', flip(size - 1), EX_DATAERR, 'altered'),
            ('truncated', lambda data: data[:size - 30], EX_DATAERR, 'truncated'),
            ('truncated_header', lambda data: data[:100], EX_DATAERR, 'truncated'),
            ('trailing_garbage', lambda data: data + b'extra', EX_DATAERR, 'after the final frame'),
            ('version', flip(8), EX_DATAERR, 'version'),
        ]
        for name, fn, want, text in cases:
            p = os.path.join(d, name)
            tamper(good, p, fn)
            rc, out, err = b.cli('bundle', 'import', p)
            check('bad_' + name, rc == want and text in err, 'status %d: %s' % (rc, err[-300:]))
        rc, out, err = b.cli('bundle', 'import', os.path.join(d, 'missing'))
        check('bad_missing_file', rc == EX_NOINPUT, err)
        check('bad_nothing_stored', mbox_count(b) == 0 and queued(b) == 0 and not receipts(d) and
              q(b, 'SELECT count(*) FROM bundle_volume')[0][0] == 0)
        # Unknown sender: C is not a peer of B.
        with Node(listeners=(), start=False, name='c') as c:
            kb = cli_ok(b, 'key', 'show')[0].strip()
            cli_ok(c, 'peer', 'add', 'up', '--key', kb)
            inject(c, 1)
            cp = os.path.join(d, 'from_c.mnb')
            export(c, cp)
            rc, out, err = b.cli('bundle', 'import', cp)
            check('bad_unknown_sender', rc == EX_NOPERM and 'unknown sender' in err, err)
        # Wrong recipient: a node that knows A but is not the addressee.
        with Node(listeners=(), start=False, name='d') as dn:
            ka = cli_ok(a, 'key', 'show')[0].strip()
            cli_ok(dn, 'peer', 'add', 'site', '--key', ka)
            rc, out, err = dn.cli('bundle', 'import', good)
            check('bad_wrong_recipient', rc == EX_NOUSER and 'another node' in err, err)
            check('bad_wrong_recipient_nothing', mbox_count(dn) == 0 and queued(dn) == 0)
        check('bad_still_nothing', mbox_count(b) == 0 and queued(b) == 0)
        # The good one still imports, once.
        out, _ = cli_ok(b, 'bundle', 'import', good)
        check('good_after_bad', mbox_count(b) == 3, out)
        rc, out, err = b.cli('bundle', 'import', good)
        check('bad_replay', rc == EX_DATAERR and 'replay' in err and mbox_count(b) == 3, err)


@test
def bigger_than_disk():
    """The database on a 4 MiB tmpfs (a private mount namespace): a bundle
    of more mail than fits is refused before anything is stored."""
    if os.geteuid() != 0 or subprocess.run(['which', 'unshare'], stdout=subprocess.DEVNULL).returncode:
        check('bigger_than_disk', True)   # needs root for the mount; nothing to test here
        return
    a, b = pair()
    with a, b:
        body = ''.join('%08d %s\n' % (k, 'abcdefghij' * 6) for k in range(3000))   # ~210 KB
        for i in range(30):
            inject(a, i, body=body)
        d = a.path('disk')
        os.mkdir(d)
        p = os.path.join(d, 'big.mnb')
        export(a, p)
        small = b.path('small')
        os.mkdir(small)
        conf = b.path('small.conf')
        with open(b.conf_path) as f, open(conf, 'w') as g:
            g.write(f.read().replace(b.db, os.path.join(small, 'mailnode.db')))
        script = ('set -e; mount -t tmpfs -o size=4m tmpfs %(s)s; cp %(db)s %(db)s.bundle-key %(db)s.key %(s)s/;'
                  ' for f in %(db)s-wal %(db)s-shm; do [ -f $f ] && cp $f %(s)s/ || true; done;'
                  ' set +e; %(bin)s -c %(c)s bundle import %(p)s; echo "rc=$?";'
                  ' %(bin)s -c %(c)s mailbox list bob | wc -l' %
                  {'s': small, 'db': b.db, 'bin': BIN, 'c': conf, 'p': p})
        r = subprocess.run(['unshare', '-m', 'sh', '-c', script], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120)
        out, err = r.stdout.decode(), r.stderr.decode()
        check('disk_refused', 'rc=75' in out and 'bigger than the free disk space' in err, out + err[-400:])
        check('disk_nothing_stored', out.strip().endswith('\n0') or out.strip().split('\n')[-1] == '0', out)


def fill(n, count, conns=4):
    """count messages into n over SMTP, conns sessions in parallel."""
    import threading
    errors = []

    def worker(k):
        try:
            s = smtplib.SMTP('127.0.0.1', n.port('smtp'), timeout=120)
            s.ehlo('filler.test')
            for i in range(k, count, conns):
                s.sendmail('alice@a.test', ['bob@b.test'],
                           ('From: alice@a.test\r\nTo: bob@b.test\r\nSubject: bulk %d\r\n'
                            'Message-ID: <bulk%d.%d@a.test>\r\n\r\nBulk message %d of the field site.\r\n'
                            % (i, i, os.getpid(), i)).encode())
            s.quit()
        except Exception as e:
            errors.append(e)
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    if errors:
        raise errors[0]


@test
def ten_thousand_and_kill9():
    # Under valgrind the daemon is 10-50 times slower: fewer messages, the
    # same checks.
    N = 1000 if harness.VALGRIND else 10000
    a, b = pair(start=True)
    with a, b:
        fill(a, N)
        a.stop()
        b.stop()
        check('big_queued', queued(a) == N, str(queued(a)))
        d = a.path('big')
        os.mkdir(d)
        p = os.path.join(d, 'big.mnb')
        export(a, p)
        # A copy of B's empty database for the kill -9 run.
        b2 = Node(conf=dict(b.conf), listeners=(), start=False, name='b2')
        b2.configure({'database': b2.db})
        for suffix in ('', '-wal', '-shm', '.key', '.bundle-key'):
            if os.path.exists(b.db + suffix):
                with open(b.db + suffix, 'rb') as f, open(b2.db + suffix, 'wb') as g:
                    g.write(f.read())
        os.chmod(b2.db + '.bundle-key', 0o600)
        out, _ = cli_ok(b, 'bundle', 'import', p, timeout=600)
        check('ten_thousand_stored', mbox_count(b) == N and '%d stored' % N in out, out)
        # kill -9 in the middle of the second pass.
        errf = open(b2.path('import.err'), 'w+')
        proc = subprocess.Popen([BIN, '-c', b2.conf_path, 'bundle', 'import', p],
                                stdout=errf, stderr=errf)
        deadline = time.monotonic() + 300
        seen = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                seen = mbox_count(b2)
            except sqlite3.Error:
                seen = 0
            if seen > 0:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        errf.seek(0)
        said = errf.read()
        errf.close()
        partial = mbox_count(b2)
        if not 0 < partial < N:
            harness.diag('kill -9 after seeing %d; import said: %s' % (seen, said[-600:]))
        check('kill9_mid_import', 0 < partial < N, 'mailbox had %d of %d at the kill' % (partial, N))
        check('kill9_no_half_messages',
              q(b2, 'SELECT count(*) FROM body WHERE complete=0')[0][0] == 0 and
              q(b2, 'SELECT count(*) FROM mbox m LEFT JOIN body b ON b.id=m.body_id WHERE b.id IS NULL')[0][0] == 0)
        out, _ = cli_ok(b2, 'bundle', 'import', p, timeout=600)
        check('kill9_second_import_completes', mbox_count(b2) == N, '%d: %s' % (mbox_count(b2), out))
        check('kill9_duplicates_reported', '%d duplicates dropped' % partial in out, out)
        b2.close()


@test
def bundle_and_smtp_delivered_once():
    a, b = pair(start=True)
    with a, b:
        inject(a, 1, msgid='same.1@a.test')
        inject(a, 2, msgid='same.2@a.test')
        d = a.path('mix')
        os.mkdir(d)
        p = os.path.join(d, 'mix.mnb')
        export(a, p)
        # Message 1 arrives by SMTP first, then by bundle; message 2 the
        # other way round.
        s = smtplib.SMTP('127.0.0.1', b.port('smtp'), timeout=30)
        s.sendmail('alice@a.test', ['bob@b.test'],
                   b'From: alice@a.test\r\nSubject: message 1\r\nMessage-ID: <same.1@a.test>\r\n\r\nby smtp\r\n')
        s.quit()
        out, _ = cli_ok(b, 'bundle', 'import', p)
        check('mix_bundle_after_smtp', mbox_count(b) == 2 and '1 duplicates dropped' in out, out)
        s = smtplib.SMTP('127.0.0.1', b.port('smtp'), timeout=30)
        s.sendmail('alice@a.test', ['bob@b.test'],
                   b'From: alice@a.test\r\nSubject: message 2\r\nMessage-ID: <same.2@a.test>\r\n\r\nby smtp\r\n')
        s.sendmail('alice@a.test', ['bob@b.test'],
                   b'From: alice@a.test\r\nSubject: other\r\nMessage-ID: <other@a.test>\r\n\r\nnew\r\n')
        s.quit()
        check('mix_smtp_after_bundle', mbox_count(b) == 3, str(mbox_count(b)))
        check('mix_logged', 'already delivered by bundle' in b.log())


harness.main()
