"""The operator's side, against the running binary with real clients:

- postmaster, root, abuse and MAILER-DAEMON reach the admin (the `admin`
  key, or the first user created), aliases override that, and until there
  is an admin such mail is kept in a holding mailbox that the first user
  inherits; the daemon warns at start-up while nobody reads it;
- expiry and double bounces (DSNs), `sendmail -bs`, the sendmail
  personalities, the `accepted` log line, log levels.
"""
import os
import smtplib
import subprocess

import harness
from harness import BIN, Node, check, test, wait_until

PW = 'operator-pw-1'


def add_user(n, name, pw=PW):
    rc, out, err = n.cli('user', 'add', name, input=pw + '\n')
    assert rc == 0, 'user add %s: %s %s' % (name, out, err)
    return out


def mailbox(n, user):
    """The subject column of `mailnode mailbox list USER`."""
    rc, out, err = n.cli('mailbox', 'list', user)
    if rc != 0:
        return None
    return [l.split('\t') for l in out.splitlines() if l.strip()]


def sendmail(n, *args, text='Subject: cron\n\nreport\n'):
    p = subprocess.run([BIN, '-c', n.conf_path, 'sendmail'] + list(args),
                       input=text.encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, cwd=n.dir, timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


# ------------------------------------------------------------ admin routing

@test
def postmaster_without_users():
    with Node() as n:
        check('admin_startup_warning', 'postmaster' in n.log() and 'no user yet' in n.log(),
              n.log()[-500:])
        s = n.smtp()
        s.ehlo('client.test')
        code, msg = s.docmd('MAIL FROM:<x@client.test>')
        code, msg = s.docmd('RCPT TO:<postmaster@example.test>')
        check('postmaster_accepted_fresh_node', code == 250, '%d %s' % (code, msg))
        code, msg = s.docmd('RCPT TO:<Postmaster>')
        check('bare_postmaster_accepted', code == 250, '%d %s' % (code, msg))
        code, msg = s.docmd('RCPT TO:<abuse@example.test>')
        check('abuse_accepted_fresh_node', code == 250, '%d %s' % (code, msg))
        code, msg = s.docmd('RCPT TO:<nobody-here@example.test>')
        check('unknown_still_refused', code == 550, '%d %s' % (code, msg))
        s.docmd('RSET')
        s.sendmail('x@client.test', ['postmaster@example.test'], 'Subject: one\r\n\r\nhi\r\n')
        s.quit()
        rc, out, err = sendmail(n, 'root')
        check('cron_sendmail_root_exit_0', rc == 0, '%d %s' % (rc, err))
        rc, out, err = sendmail(n, 'MAILER-DAEMON@example.test')
        check('mailer_daemon_exit_0', rc == 0, '%d %s' % (rc, err))
        box = mailbox(n, 'postmaster')
        check('holding_mailbox_has_3', box is not None and len(box) == 3, repr(box))
        rc, out, err = n.cli('user', 'list')
        check('holding_mailbox_listed', 'postmaster' in out and 'no login' in out, out)
        out = add_user(n, 'alice')
        check('first_user_inherits', 'moved to alice' in out, out)
        box = mailbox(n, 'alice')
        check('admin_has_held_mail', box is not None and len(box) == 3, repr(box))
        rc, out, err = n.cli('user', 'list')
        check('holding_mailbox_gone', 'postmaster' not in out, out)
        rc, out, err = sendmail(n, 'root')
        box = mailbox(n, 'alice')
        check('root_to_first_user', rc == 0 and len(box) == 4, '%d %s %r' % (rc, err, box))
        # POP3 sees it as the admin's own mail.
        p = n.pop3()
        p.user('alice')
        p.pass_(PW)
        count = p.stat()[0]
        p.quit()
        check('admin_reads_by_pop3', count == 4, str(count))


@test
def admin_key_and_aliases():
    with Node(conf={'admin': 'bob'}) as n:
        add_user(n, 'alice')
        add_user(n, 'bob')
        add_user(n, 'carol')
        rc, out, err = sendmail(n, 'root@example.test')
        check('admin_key_wins', rc == 0 and len(mailbox(n, 'bob')) == 1 and not mailbox(n, 'alice'),
              '%r %r' % (mailbox(n, 'bob'), mailbox(n, 'alice')))
        rc, out, err = n.cli('alias', 'add', 'abuse', 'carol')
        assert rc == 0, err
        rc, out, err = sendmail(n, 'abuse@example.test')
        check('alias_overrides_admin', rc == 0 and len(mailbox(n, 'carol')) == 1
              and len(mailbox(n, 'bob')) == 1, '%r %r' % (mailbox(n, 'carol'), mailbox(n, 'bob')))
        n.stop()
        n.configure({'admin': 'dave'})
        n.start()
        check('admin_missing_warning', 'admin = dave: no such user' in n.log(), n.log()[-500:])
        n.stop()
        # A user actually named postmaster is an ordinary user.
        add_user(n, 'postmaster', 'pm-pass-1')
        rc, out, err = sendmail(n, 'postmaster@example.test')
        check('real_postmaster_user', rc == 0 and len(mailbox(n, 'postmaster')) == 1,
              repr(mailbox(n, 'postmaster')))


@test
def holding_box_becomes_user():
    with Node() as n:
        rc, out, err = sendmail(n, 'postmaster')
        out = add_user(n, 'postmaster')
        check('holding_box_gets_password', 'added' in out and len(mailbox(n, 'postmaster')) == 1, out)
        p = n.pop3()
        p.user('postmaster')
        p.pass_(PW)
        count = p.stat()[0]
        p.quit()
        check('holding_box_pop3_after_add', count == 1, str(count))


# ------------------------------------------------------------------- poll

@test
def poll_own_mail_stays_queued():
    closed = harness.free_ports(1)[0]           # nothing listens there
    field = Node(start=False, name='field')
    up = Node(conf={'local_domains': 'up.test'}, listeners=('smtp',), start=False, name='up')
    with field, up:
        add_user(up, 'site')
        rc, out, err = up.cli('domain', 'add', 'site.test', '--hold', '--owner', 'site',
                              '--host', '127.0.0.1:%d' % field.port('smtp'))
        assert rc == 0, err
        up.start()
        field.configure({'relayhost': '127.0.0.1:%d' % closed, 'upstream': '127.0.0.1:%d' % up.port(),
                         'upstream.mode': 'etrn', 'upstream.domains': 'site.test',
                         'upstream.interval': '1h', 'retry.initial': '1h'})
        field.start()
        rc, out, err = sendmail(field, 'someone@far.test')
        assert rc == 0, err
        rc, out, err = field.cli('poll', timeout=120)
        check('poll_exit_75_when_own_mail_queued', rc == 75, 'rc %s: %s %s' % (rc, out, err))
        check('poll_counts_deferred', '1 deferred' in out, out)
        check('poll_says_still_queued', 'still queued: 1 recipient' in out, out)
        field.stop()
        rc, out, err = field.cli('poll', timeout=120)
        check('poll_nodaemon_exit_75', rc == 75, 'rc %s: %s %s' % (rc, out, err))


harness.main()
