"""The sendmail command: local injection with and without a running daemon,
checked the way a user sees it (POP3, the queue, exit codes)."""
import os
import re
import subprocess

import harness
from harness import BIN, Node, check, test

EX_USAGE, EX_DATAERR, EX_NOUSER = 64, 65, 67


def add_user(n, name, password='secret'):
    rc, out, err = n.cli('user', 'add', name, input=password + '\n')
    if rc != 0:
        raise RuntimeError('user add %s: %d %s' % (name, rc, err))


def pop3_fetch(n, user, password='secret'):
    """Every message in the mailbox, byte for byte (dot-stuffing undone)."""
    msgs = []
    with n.raw('pop3') as c:
        def cmd(line):
            c.send(line + '\r\n')
            r = c.recv_line()
            if not r.startswith(b'+OK'):
                raise RuntimeError('POP3 %s: %r' % (line.split()[0], r))
            return r
        if not c.recv_line().startswith(b'+OK'):
            raise RuntimeError('no POP3 greeting')
        cmd('USER ' + user)
        cmd('PASS ' + password)
        count = int(cmd('STAT').split()[1])
        for i in range(1, count + 1):
            cmd('RETR %d' % i)
            data = c.recv_until(b'\r\n.\r\n', timeout=30)[:-3]
            lines = data.split(b'\r\n')
            msgs.append(b'\r\n'.join(l[1:] if l.startswith(b'.') else l for l in lines))
        cmd('QUIT')
    return msgs


def header_of(msg):
    return msg.split(b'\r\n\r\n', 1)[0]


def body_of(msg):
    return msg.split(b'\r\n\r\n', 1)[1]


def fields(msg, name):
    """Values of the header fields called name (unfolded)."""
    out = []
    for f in re.split(rb'\r\n(?![ \t])', header_of(msg)):
        key, _, value = f.partition(b':')
        if key.strip().lower() == name.lower().encode():
            out.append(value.replace(b'\r\n', b'').strip().decode('latin-1'))
    return out


def queue_count(n):
    rc, out, err = n.cli('queue', 'count')
    return int(out.strip()) if rc == 0 and out.strip().isdigit() else None


def mailbox_empty(n, user):
    rc, out, err = n.cli('mailbox', 'list', user)
    return rc == 0 and not out.strip()


@test
def daemon_stopped():
    with Node(start=False) as n:
        add_user(n, 'alice')
        msg = 'Subject: offline\nTo: alice@example.test\n\nwritten while the daemon was down\n'
        rc, out, err = n.cli('sendmail', 'alice@example.test', input=msg)
        check('offline_exit_0', rc == 0, err)
        check('offline_silent', out == '' and err == '', repr(out + err))
        rc, out, err = n.cli('mailbox', 'list', 'alice')
        check('offline_mailbox_list', rc == 0 and out.strip() != '', out + err)
        n.start()
        msgs = pop3_fetch(n, 'alice')
        if not check('offline_delivered', len(msgs) == 1, msgs):
            return
        m = msgs[0]
        first = header_of(m).split(b'\r\n')
        check('return_path_first', first[0].startswith(b'Return-Path: <'), first[0])
        check('received_second', first[1].startswith(b'Received: by node.test (mailnode) id '),
              first[1])
        rec = fields(m, 'Received')
        check('received_uid', len(rec) == 1 and '(uid %d)' % os.getuid() in rec[0], rec)
        check('received_date', len(rec) == 1 and re.search(r';\s*\w{3}, \d+ \w{3} \d{4} ', rec[0]),
              rec)
        mid = fields(m, 'Message-ID')
        check('message_id_added', len(mid) == 1 and re.match(r'^<[0-9A-Z]{16}\.[0-9a-f]+@node\.test>$',
                                                             mid[0]), mid)
        check('date_added', len(fields(m, 'Date')) == 1, fields(m, 'Date'))
        frm = fields(m, 'From')
        check('from_added', len(frm) == 1 and frm[0].endswith('@node.test'), frm)
        check('subject_kept', fields(m, 'Subject') == ['offline'])
        check('body_crlf', body_of(m) == b'written while the daemon was down\r\n', body_of(m))
        check('no_bare_lf', b'\n' not in m.replace(b'\r\n', b''), m)


@test
def t_option_and_bcc():
    with Node() as n:
        for u in ('alice', 'bob', 'carol'):
            add_user(n, u)
        msg = ('From: Sender <sender@example.test>\n'
               'To: Alice <alice@example.test>,\n'
               '  "Bob, B." <bob@example.test>\n'
               'Bcc: carol\n'
               'Date: Mon, 1 Jan 2024 00:00:00 +0000\n'
               'Message-ID: <given@example.test>\n'
               'Subject: with -t\n'
               '\n'
               'hello\n')
        rc, out, err = n.cli('sendmail', '-t', '-f', 'sender@example.test', input=msg)
        check('t_exit_0', rc == 0, err)
        got = {}
        for u in ('alice', 'bob', 'carol'):
            got[u] = pop3_fetch(n, u)
            check('t_delivered_%s' % u, len(got[u]) == 1, got[u])
        if len(got['carol']) != 1:
            return
        m = got['carol'][0]
        check('bcc_removed', b'bcc' not in header_of(m).lower() and b'carol' not in header_of(m),
              header_of(m))
        check('message_id_kept', fields(m, 'Message-ID') == ['<given@example.test>'],
              fields(m, 'Message-ID'))
        check('date_kept', fields(m, 'Date') == ['Mon, 1 Jan 2024 00:00:00 +0000'])
        check('from_kept', fields(m, 'From') == ['Sender <sender@example.test>'])
        check('return_path_is_f', header_of(m).startswith(b'Return-Path: <sender@example.test>'),
              header_of(m)[:80])
        check('folded_to_kept', b'To: Alice <alice@example.test>,\r\n  "Bob, B." <bob@example.test>'
              in header_of(m), header_of(m))
        # Arguments together with -t are added (as Postfix does).
        msg = 'To: alice@example.test\nSubject: both\n\nx\n'
        rc, out, err = n.cli('sendmail', '-t', 'bob', input=msg)
        check('t_plus_args_exit_0', rc == 0, err)
        check('t_plus_args_alice', len(pop3_fetch(n, 'alice')) == 2)
        check('t_plus_args_bob', len(pop3_fetch(n, 'bob')) == 2)


@test
def full_name_and_sender():
    with Node() as n:
        add_user(n, 'alice')
        rc, out, err = n.cli('sendmail', '-F', 'Joe Q. "Quote" User', '-f', 'joe', 'alice',
                             input='Subject: x\n\nbody\n')
        check('fullname_exit_0', rc == 0, err)
        msgs = pop3_fetch(n, 'alice')
        if check('fullname_delivered', len(msgs) == 1):
            check('fullname_from', fields(msgs[0], 'From') ==
                  ['"Joe Q. \\"Quote\\" User" <joe@node.test>'], fields(msgs[0], 'From'))
            check('fullname_return_path', msgs[0].startswith(b'Return-Path: <joe@node.test>'),
                  msgs[0][:60])
        # A null sender.
        rc, out, err = n.cli('sendmail', '-f', '<>', 'alice', input='Subject: y\n\nbody\n')
        check('null_sender_exit_0', rc == 0, err)
        msgs = pop3_fetch(n, 'alice')
        check('null_sender_return_path', len(msgs) == 2 and
              msgs[1].startswith(b'Return-Path: <>\r\n'), msgs[-1][:60] if msgs else msgs)


@test
def dot_handling():
    with Node() as n:
        add_user(n, 'alice')
        msg = 'Subject: dots\n\nbefore\n..two\n.\nafter\n'
        rc, out, err = n.cli('sendmail', 'alice', input=msg)
        check('dot_exit_0', rc == 0, err)
        rc, out, err = n.cli('sendmail', '-oi', 'alice', input=msg)
        check('oi_exit_0', rc == 0, err)
        rc, out, err = n.cli('sendmail', '-i', 'alice', input=msg)
        check('i_exit_0', rc == 0, err)
        msgs = pop3_fetch(n, 'alice')
        if check('dot_three_messages', len(msgs) == 3, len(msgs)):
            check('dot_ends_input', body_of(msgs[0]) == b'before\r\n..two\r\n', body_of(msgs[0]))
            check('oi_keeps_dot', body_of(msgs[1]) == b'before\r\n..two\r\n.\r\nafter\r\n',
                  body_of(msgs[1]))
            check('i_keeps_dot', body_of(msgs[2]) == body_of(msgs[1]), body_of(msgs[2]))


@test
def refused_messages():
    with Node() as n:
        add_user(n, 'alice')
        cases = [
            ('garbage_header', ['alice'], 'this is not a header\n\nbody\n', EX_DATAERR),
            ('no_colon', ['alice'], 'Subject: ok\nX-Broken\n\nbody\n', EX_DATAERR),
            ('nul_byte', ['alice'], 'Subject: x\n\nbo\0dy\n', EX_DATAERR),
            ('unknown_user', ['alice', 'nosuchuser@example.test'], 'Subject: x\n\nb\n', EX_NOUSER),
            ('bad_address', ['a b@example.test'], 'Subject: x\n\nb\n', EX_DATAERR),
            ('no_recipients', [], 'Subject: x\n\nb\n', EX_USAGE),
            ('t_no_recipients', ['-t'], 'Subject: x\n\nb\n', EX_USAGE),
            ('unknown_option', ['-Z', 'alice'], 'Subject: x\n\nb\n', EX_USAGE),
            ('missing_value', ['-f'], 'Subject: x\n\nb\n', EX_USAGE),
            ('bx_unknown_mode', ['-bx'], '', EX_USAGE),
            ('loop', ['alice'], ''.join('Received: from h%d\n' % i for i in range(100)) + '\nb\n',
             EX_DATAERR),
        ]
        for name, args, msg, want in cases:
            rc, out, err = n.cli('sendmail', *args, input=msg)
            check(name, rc == want and err.strip() != '', 'rc=%d err=%r' % (rc, err))
        rc, out, err = n.cli('sendmail', 'alice', 'nosuchuser@example.test',
                             input='Subject: x\n\nb\n')
        check('nouser_names_address', 'nosuchuser@example.test' in err, err)
        rc, out, err = n.cli('sendmail', '-f', 'bad address', 'alice', input='Subject: x\n\nb\n')
        check('bad_sender_refused', rc != 0, 'rc=%d' % rc)
        check('nothing_stored_mailbox', mailbox_empty(n, 'alice'))
        check('nothing_stored_queue', queue_count(n) == 0, queue_count(n))
        rc, out, err = n.cli('sendmail', '--help')
        check('help_exit_0', rc == 0 and 'usage' in out, out + err)


@test
def size_limit():
    with Node(conf={'message_size_limit': '64K'}) as n:
        add_user(n, 'alice')
        big = 'Subject: big\n\n' + ('x' * 99 + '\n') * 1000
        rc, out, err = n.cli('sendmail', 'alice', input=big)
        check('too_big_refused', rc == EX_DATAERR and 'message_size_limit' in err,
              'rc=%d %s' % (rc, err))
        small = 'Subject: small\n\n' + ('x' * 99 + '\n') * 100
        rc, out, err = n.cli('sendmail', 'alice', input=small)
        check('small_ok', rc == 0, err)
        check('only_small_stored', len(pop3_fetch(n, 'alice')) == 1)


@test
def large_body():
    with Node() as n:
        add_user(n, 'alice')
        line = b'0123456789' * 7 + b'\n'
        body = line * (3 * 1024 * 1024 // len(line))
        rc, out, err = n.cli('sendmail', 'alice', input=b'Subject: large\n\n' + body, binary=True)
        check('large_exit_0', rc == 0, err)
        msgs = pop3_fetch(n, 'alice')
        if check('large_delivered', len(msgs) == 1):
            check('large_body_exact', body_of(msgs[0]) == body.replace(b'\n', b'\r\n'),
                  len(body_of(msgs[0])))


@test
def remote_and_aliases():
    # The remote copy must stay queued to be seen: a relayhost that
    # refuses keeps it there (the domain's DNS would answer at once).
    dead = harness.free_ports(1)[0]
    with Node(conf={'relayhost': '127.0.0.1:%d' % dead, 'retry.initial': '1h'}) as n:
        add_user(n, 'alice')
        rc, out, err = n.cli('alias', 'add', 'team', 'alice,friend@remote.example')
        check('alias_added', rc == 0, err)
        rc, out, err = n.cli('sendmail', 'team', input='Subject: to the team\n\nhi\n')
        check('alias_exit_0', rc == 0, err)
        check('alias_local_copy', len(pop3_fetch(n, 'alice')) == 1)
        rc, out, err = n.cli('queue', 'count')
        check('alias_remote_queued', rc == 0 and out.strip() == '1', (rc, out, err))
        rc, out, err = n.cli('queue', 'list')
        check('queue_lists_remote', 'friend@remote.example' in out, (rc, out, err))


@test
def invoked_as_sendmail():
    with Node() as n:
        add_user(n, 'alice')
        link = n.path('sendmail')
        os.symlink(BIN, link)
        env = dict(os.environ, MAILNODE_CONF=n.conf_path)
        p = subprocess.run([link, '-oi', '-t'], input=b'To: alice@example.test\nSubject: link\n\nvia link\n',
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=60,
                           cwd=n.dir)
        check('symlink_exit_0', p.returncode == 0, p.stderr)
        msgs = pop3_fetch(n, 'alice')
        check('symlink_delivered', len(msgs) == 1 and body_of(msgs[0]) == b'via link\r\n', msgs)
        p = subprocess.run([link, '-bx'], input=b'', stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=60)
        check('symlink_usage_error', p.returncode == EX_USAGE, p.stderr)


harness.main()
