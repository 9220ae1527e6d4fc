"""Mailbox quotas against the real binary: quota.default and `mailnode user
quota`, the usage counters after SMTP deliveries, IMAP APPEND/COPY/EXPUNGE
and POP3 DELE, SMTP RCPT 452 4.2.2 for a full mailbox (the other recipients
of the same message unaffected, the sender's retry accepted once there is
room), IMAP QUOTA (RFC 9208: GETQUOTA, GETQUOTAROOT, OVERQUOTA, DELETED-
STORAGE), POP3 unaffected, and usage in `user list --long/--json` and
`status` (text and JSON)."""
import imaplib
import json
import re
import smtplib

import harness
from harness import Node, check, test

PASSWORD = 'correct horse 42'
FAST = {'auth.fail_delay': '0'}


def new_node(conf=None, users=('alice', 'bob')):
    c = dict(FAST)
    c.update(conf or {})
    n = Node(conf=c)
    for u in users:
        rc, out, err = n.cli('user', 'add', u, input=PASSWORD + '\n')
        if rc != 0:
            raise RuntimeError('user add %s: %s %s' % (u, rc, err))
    return n


def body(i, size=1000):
    head = (b'From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\n'
            b'Subject: quota %d\r\nMessage-ID: <q%d@remote.test>\r\n\r\n' % (i, i))
    line = b'x' * 76 + b'\r\n'
    return head + line * max(1, (size - len(head)) // len(line))


def usage(n):
    """{user: (messages, bytes, quota, from)} from `user list --long`."""
    rc, out, err = n.cli('user', 'list', '--long')
    if rc != 0:
        raise RuntimeError('user list --long: %d %s' % (rc, err))
    u = {}
    for line in out.splitlines():
        name, msgs, used, quota, frm = line.split('\t')
        u[name] = (int(msgs), int(used), int(quota), frm)
    return u


def imap_sizes(n, user='alice', folders=('INBOX',)):
    """Sum of RFC822.SIZE over the user's folders, as IMAP sees them."""
    m = n.imap()
    m.login(user, PASSWORD)
    total = 0
    for f in folders:
        m.select(f, readonly=True)
        typ, data = m.fetch('1:*', '(RFC822.SIZE)')
        for d in data:
            if d:
                mm = re.search(rb'RFC822\.SIZE (\d+)', d)
                total += int(mm.group(1)) if mm else 0
    m.logout()
    return total


def smtp_raw(n):
    c = n.raw('smtp')
    c.recv_reply()
    c.cmd('EHLO client.test')
    return c


@test
def cli_quota_and_listing():
    with new_node() as n:
        rc, out, err = n.cli('user', 'quota', 'alice', '5K')
        check('quota_set_exit_0', rc == 0 and '5120' in out, '%d %s %s' % (rc, out, err))
        u = usage(n)
        check('list_long_own_quota', u['alice'] == (0, 0, 5120, 'own'), repr(u))
        check('list_long_default_none', u['bob'] == (0, 0, 0, 'default'), repr(u))
        rc, out, err = n.cli('user', 'list')
        check('plain_list_names_only', out.split() == ['alice', 'bob'], out)
        rc, out, err = n.cli('user', 'list', '--json')
        j = json.loads(out)
        check('list_json', rc == 0 and j[0]['name'] == 'alice' and j[0]['quota'] == 5120 and
              j[0]['quota_from'] == 'own' and j[1]['quota'] == 0, out)
        rc, out, err = n.cli('user', 'quota', 'alice', 'lots')
        check('bad_size_refused', rc == 64 and 'not a size' in err, '%d %s' % (rc, err))
        rc, out, err = n.cli('user', 'quota', 'nobody', '1M')
        check('unknown_user_refused', rc == 67 and 'no user nobody' in err, '%d %s' % (rc, err))
        rc, out, err = n.cli('user', 'list', '--wide')
        check('bad_list_option_usage', rc == 64, '%d %s' % (rc, err))
        rc, out, err = n.cli('user', 'quota', 'alice', '0')
        check('quota_none', rc == 0 and usage(n)['alice'][2:] == (0, 'own'), out + err)
        rc, out, err = n.cli('user', 'quota', 'alice', 'default')
        check('quota_back_to_default', rc == 0 and usage(n)['alice'][3] == 'default', out + err)
        rc, out, err = n.cli('user', '--help')
        check('help_mentions_quota', 'quota NAME SIZE' in out and '--json' in out, out)


@test
def quota_default_applies():
    with new_node({'quota.default': '2K'}) as n:
        n.cli('user', 'quota', 'bob', '0')
        u = usage(n)
        check('default_in_force', u['alice'][2:] == (2048, 'default'), repr(u))
        check('own_zero_is_no_limit', u['bob'][2:] == (0, 'own'), repr(u))
        s = n.smtp()
        for i in range(3):
            s.sendmail('bob@remote.test', ['bob@example.test'], body(i, 1500))
        s.sendmail('bob@remote.test', ['alice@example.test'], body(10, 1500))
        try:
            s.sendmail('bob@remote.test', ['alice@example.test'], body(12, 1500))
            refused = None
        except smtplib.SMTPRecipientsRefused as e:
            refused = e.recipients['alice@example.test']
        s.quit()
        check('default_quota_refuses_when_full',
              refused is not None and refused[0] == 452 and b'4.2.2' in refused[1] and b'Mailbox full' in refused[1],
              repr(refused))
        u = usage(n)
        check('bob_unlimited_has_3', u['bob'][0] == 3, repr(u))
        check('alice_has_1', u['alice'][0] == 1, repr(u))


@test
def smtp_rcpt_and_counters():
    with new_node() as n:
        n.cli('user', 'quota', 'alice', '3K')
        s = n.smtp()
        s.sendmail('bob@remote.test', ['alice@example.test'], body(1, 1200))
        s.sendmail('bob@remote.test', ['alice@example.test'], body(2, 1200))
        s.quit()
        u = usage(n)
        check('counter_after_delivery', u['alice'][0] == 2 and u['alice'][1] == imap_sizes(n), repr(u))
        # 2.4 KB of 3 KiB used: a declared SIZE that does not fit is refused,
        # one that fits is taken.
        c = smtp_raw(n)
        r = c.cmd('MAIL FROM:<bob@remote.test> SIZE=1200')
        r = c.cmd('RCPT TO:<alice@example.test>')
        check('rcpt_size_over_quota_452', r.code == 452 and '4.2.2' in r.text, r.text)
        c.cmd('RSET')
        c.cmd('MAIL FROM:<bob@remote.test> SIZE=300')
        r = c.cmd('RCPT TO:<alice@example.test>')
        check('rcpt_size_fits_250', r.code == 250, r.text)
        c.cmd('RSET')
        # Fill it (accepted mail may end over the limit), then one message
        # for alice and bob: alice 452, bob gets it.
        c.cmd('MAIL FROM:<bob@remote.test>')
        c.cmd('RCPT TO:<alice@example.test>')
        c.cmd('DATA')
        c.send(body(3, 1200) + b'.\r\n')
        r = c.recv_reply()
        check('filling_message_accepted', r.code == 250, r.text)
        c.cmd('MAIL FROM:<bob@remote.test>')
        r1 = c.cmd('RCPT TO:<alice@example.test>')
        r2 = c.cmd('RCPT TO:<bob@example.test>')
        check('full_mailbox_rcpt_452', r1.code == 452 and r1.text.find('4.2.2') >= 0 and 'Mailbox full' in r1.text,
              r1.text)
        check('other_rcpt_250', r2.code == 250, r2.text)
        c.cmd('DATA')
        c.send(body(4, 500) + b'.\r\n')
        r = c.recv_reply()
        check('message_for_other_rcpt_accepted', r.code == 250, r.text)
        c.cmd('QUIT')
        c.close()
        u = usage(n)
        check('bob_got_it_alice_not', u['bob'][0] == 1 and u['alice'][0] == 3, repr(u))
        check('alice_counter_exact', u['alice'][1] == imap_sizes(n), '%r %d' % (u, imap_sizes(n)))
        # POP3 is unaffected by the quota; DELE brings the counter down.
        p = n.pop3()
        p.user('alice')
        p.pass_(PASSWORD)
        cnt, size = p.stat()
        check('pop3_works_when_full', cnt == 3 and size > 0, '%d %d' % (cnt, size))
        p.retr(1)
        p.dele(1)
        p.dele(2)
        p.quit()
        u = usage(n)
        check('counter_after_pop3_dele', u['alice'][0] == 1 and u['alice'][1] == imap_sizes(n), repr(u))
        s = n.smtp()
        refused = s.sendmail('bob@remote.test', ['alice@example.test'], body(5, 1200))
        s.quit()
        check('retry_accepted_after_delete', refused == {} and usage(n)['alice'][0] == 2, repr(refused))


@test
def imap_quota_commands():
    with new_node() as n:
        m = n.imap()
        m.login('alice', PASSWORD)
        typ, caps = m.capability()
        caps = caps[0].split()
        check('capability_quota', b'QUOTA' in caps and b'QUOTA=RES-STORAGE' in caps, caps)
        check('no_quotaset', b'QUOTASET' not in caps, caps)
        typ, data = m.getquotaroot('INBOX')
        check('no_limit_no_root', typ == 'OK' and data[0] in ([b'"INBOX"'], [b'INBOX']), repr(data))
        typ, data = m.getquota('""')
        check('no_limit_getquota_no', typ == 'NO', repr((typ, data)))
        n.cli('user', 'quota', 'alice', '4K')
        s = n.smtp()
        s.sendmail('bob@remote.test', ['alice@example.test'], body(1, 1500))
        s.quit()
        used = usage(n)['alice'][1]
        want = b'"" (STORAGE %d 4)' % ((used + 1023) // 1024)
        typ, data = m.getquotaroot('INBOX')
        check('getquotaroot', typ == 'OK' and data[0] in ([b'"INBOX" ""'], [b'INBOX ""']) and data[1] == [want], repr(data))
        typ, data = m.getquota('""')
        check('getquota', typ == 'OK' and data == [want], repr(data))
        typ, data = m.getquotaroot('Nope')
        check('getquotaroot_unknown_mailbox', typ == 'NO', repr(data))
        typ, data = m._simple_command('SETQUOTA', '""', '(STORAGE 99999)')
        check('setquota_refused', typ == 'NO', repr(data))
        # APPEND that fits, then one that does not: OVERQUOTA before the literal.
        typ, data = m.append('INBOX', None, None, body(2, 1500))
        check('append_fits', typ == 'OK', repr(data))
        c = n.raw('imap')
        c.recv_line()
        c.send('a1 LOGIN alice "%s"\r\n' % PASSWORD)
        for _ in range(5):
            if c.recv_line().startswith(b'a1 '):
                break
        c.send('a2 APPEND INBOX {2000}\r\n')
        line = c.recv_line()
        check('append_over_quota_no_before_literal', line.startswith(b'a2 NO [OVERQUOTA]'), line)
        c.close()
        u = usage(n)['alice']
        check('counter_after_append', u[0] == 2 and u[1] == imap_sizes(n), repr(u))
        # COPY to Trash would cross it: all or nothing.
        m.select('INBOX')
        typ, data = m.copy('1:2', 'Trash')
        check('copy_over_quota', typ == 'NO' and b'OVERQUOTA' in data[0], repr((typ, data)))
        typ, data = m.status('Trash', '(MESSAGES)')
        check('copy_left_nothing', b'MESSAGES 0' in data[0], repr(data))
        check('counter_after_refused_copy', usage(n)['alice'][0] == 2, repr(usage(n)))
        # MOVE uses no more room: allowed.
        typ, data = m._simple_command('MOVE', '2', 'Trash')
        check('move_allowed', typ == 'OK', repr(data))
        check('counter_after_move', usage(n)['alice'][:2] == (2, imap_sizes(n, folders=('INBOX', 'Trash'))),
              repr(usage(n)))
        # DELETED-STORAGE, then EXPUNGE brings the counter down.
        m.select('INBOX')
        m.store('1', '+FLAGS', '\\Deleted')
        typ, data = m.status('INBOX', '(MESSAGES DELETED-STORAGE)')
        size1 = imap_sizes(n)
        check('deleted_storage', typ == 'OK' and b'DELETED-STORAGE %d' % ((size1 + 1023) // 1024) in data[0],
              repr(data))
        m.expunge()
        u = usage(n)['alice']
        check('counter_after_expunge', u[0] == 1 and u[1] == imap_sizes(n, folders=('Trash',)), repr(u))
        typ, data = m.append('INBOX', None, None, body(3, 1500))
        check('append_after_expunge', typ == 'OK', repr(data))
        m.logout()


@test
def status_shows_usage():
    with new_node() as n:
        n.cli('user', 'quota', 'alice', '2K')
        s = n.smtp()
        s.sendmail('bob@remote.test', ['alice@example.test'], body(1, 1200))
        s.quit()
        c = smtp_raw(n)             # no SIZE=: taken, and the mailbox ends over its quota
        c.cmd('MAIL FROM:<bob@remote.test>')
        c.cmd('RCPT TO:<alice@example.test>')
        c.cmd('DATA')
        c.send(body(2, 1200) + b'.\r\n')
        c.recv_reply()
        c.cmd('QUIT')
        c.close()
        rc, out, err = n.cli('status')
        line = [l for l in out.splitlines() if l.strip().startswith('alice')]
        check('status_text_user_line', rc == 0 and line and '2 messages' in line[0] and 'of 2 KiB' in line[0]
              and 'FULL' in line[0], out)
        rc, out, err = n.cli('status', '--json')
        j = json.loads(out)
        by = {u['name']: u for u in j['mailboxes']['by_user']}
        check('status_json_usage', by['alice']['messages'] == 2 and by['alice']['quota'] == 2048 and
              by['alice']['full'] is True and by['alice']['bytes'] == usage(n)['alice'][1] and
              by['bob']['full'] is False and j['mailboxes']['quota_default'] == 0, out)


harness.main()
