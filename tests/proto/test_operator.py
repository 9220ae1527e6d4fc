"""The operator's side, against the running binary with real clients:

- postmaster, root, abuse and MAILER-DAEMON reach the admin (the `admin`
  key, or the first user created), aliases override that, and until there
  is an admin such mail is kept in a holding mailbox that the first user
  inherits; the daemon warns at start-up while nobody reads it;
- the sendmail personalities, the `accepted` log line, log levels.
(Expiry notices and double bounces: test_bounces.py; `sendmail -bs`:
test_sendmail_bs.py.)
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
        # The warning follows the listeners (a slow start logs it later).
        check('admin_startup_warning',
              wait_until(lambda: 'postmaster' in n.log() and 'no user yet' in n.log(), timeout=10),
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


# ------------------------------------------------------- status and queue

def relay_down_node(extra=None):
    closed = harness.free_ports(1)[0]
    c = {'relayhost': '127.0.0.1:%d' % closed, 'retry.initial': '1h', 'retry.max': '2h'}
    c.update(extra or {})
    return Node(conf=c, listeners=('smtp',)), closed


def qids(n):
    rc, out, err = n.cli('queue', 'list')
    return [l.split()[0] for l in out.splitlines() if l and not l.startswith(' ')]


@test
def status_daemon_and_relayhost_backlog():
    import json
    n, closed = relay_down_node()
    with n:
        rc, out, err = sendmail(n, 'someone@example.com')
        assert rc == 0, err
        n.cli('flush', '--wait', '--timeout', '30s')
        rc, out, err = n.cli('status')
        check('status_daemon_running_pid', 'running, pid %d' % n.proc.pid in out, out)
        check('status_listeners', '127.0.0.1:%d' % n.port() in out and 'smtp' in out, out)
        check('status_version', 'mailnode 0.' in out or 'mailnode 1.' in out, out)
        check('status_backlog_under_relayhost',
              '[relayhost] 127.0.0.1:%d' % closed in out and 'backlog 1 recipient,' in out, out)
        check('status_no_domain_line', 'example.com' not in out, out)
        check('status_relayhost_down', '    down,' in out, out)
        check('status_last_error_with_time', 'last error at ' in out, out)
        rc, out, err = n.cli('status', '--json')
        try:
            j = json.loads(out)
        except ValueError as e:
            j = None
            check('status_json_parses', False, '%s: %r' % (e, out[:300]))
        if j is not None:
            d = j['destinations']
            check('status_json_daemon', j['daemon']['running'] is True and j['daemon']['pid'] == n.proc.pid,
                  repr(j['daemon']))
            check('status_json_destination', len(d) == 1 and d[0]['relayhost'] and d[0]['backlog'] == 1
                  and d[0]['state'] == 'down' and d[0]['last_error'] and d[0]['last_error_at'], repr(d))
            check('status_json_queue', j['queue']['messages'] == 1 and j['queue']['recipients'] == 1,
                  repr(j['queue']))
        # queue list: attempts, last error and the relayhost's next try
        rc, out, err = n.cli('queue', 'list')
        import re
        check('queue_list_attempts', re.search(r'0 attempts, relayhost not reached in \d+ tr(y|ies),', out), out)
        check('queue_list_next_try_future', 'next try' in out and 'now (due)' not in out, out)
        check('queue_list_last_error', 'last error at' in out, out)
        n.stop()
        rc, out, err = n.cli('status')
        check('status_daemon_not_running', 'daemon        not running' in out, out)
        rc, out, err = n.cli('status', '--json')
        check('status_json_not_running', rc == 0 and json.loads(out)['daemon']['running'] is False, out)


@test
def status_direct_destinations():
    closed = harness.free_ports(1)[0]
    with Node(conf={'resolver': '127.0.0.1:%d' % closed, 'retry.initial': '1h'},
              listeners=('smtp',)) as n:
        sendmail(n, 'a@far.test')
        sendmail(n, 'b@other.test')
        rc, out, err = n.cli('status')
        check('status_each_domain', 'far.test' in out and 'other.test' in out, out)
        check('status_untried_backlog', out.count('backlog 1 recipient,') == 2, out)


@test
def queue_delete_forms():
    n, closed = relay_down_node()
    with n:
        for i in range(3):
            sendmail(n, 'x%d@one.test' % i)
        sendmail(n, 'y@two.test', 'z@one.test')
        sendmail(n, 'w@two.test')
        ids = qids(n)
        check('queue_has_5', len(ids) == 5, repr(ids))
        rc, out, err = n.cli('queue', 'show', ids[0], ids[1])
        check('queue_show_several', rc == 0 and ids[0] in out and ids[1] in out
              and out.count('Subject: cron') == 2, out[-300:])
        rc, out, err = n.cli('queue', 'list', '--domain', 'two.test')
        check('queue_list_domain', rc == 0 and len([l for l in out.splitlines() if not l.startswith(' ')]) == 2,
              out)
        rc, out, err = n.cli('queue', 'delete', ids[0], ids[1])
        check('queue_delete_several', rc == 0 and len(qids(n)) == 3, out + err)
        rc, out, err = n.cli('queue', 'delete', ids[2], 'NOSUCHID')
        check('queue_delete_bad_id_65', rc == 65 and ids[2] not in qids(n), '%d %s' % (rc, err))
        rc, out, err = n.cli('queue', 'delete', '--domain', 'TWO.test')
        left = qids(n)
        # The message to y@two.test and z@one.test keeps z; w's goes.
        check('queue_delete_domain', rc == 0 and '2 recipients for two.test deleted' in out
              and len(left) == 1, out + err + repr(left))
        rc, out, err = n.cli('queue', 'list')
        check('queue_delete_domain_keeps_others', 'z@one.test' in out and 'two.test' not in out, out)
        rc, out, err = n.cli('queue', 'delete', '--all')
        check('queue_delete_all_needs_yes', rc == 64 and len(qids(n)) == 1, '%d %s' % (rc, err))
        rc, out, err = n.cli('queue', 'delete', '--all', '--yes')
        check('queue_delete_all', rc == 0 and qids(n) == [] and '1 message deleted' in out, out + err)


@test
def held_message_does_not_expire():
    n, closed = relay_down_node({'queue.lifetime': '3s', 'queue.warn_after': '0'})
    with n:
        add_user(n, 'alice')
        sendmail(n, 'kept@far.test', text='From: alice@example.test\nSubject: kept\n\nx\n')
        ids = qids(n)
        rc, out, err = n.cli('queue', 'hold', ids[0])
        sendmail(n, 'gone@far.test', text='From: alice@example.test\nSubject: gone\n\nx\n')
        # The other message expires (bounced to its sender, alice); the held one stays.
        gone = wait_until(lambda: 'gone@far.test' not in n.cli('queue', 'list')[1], 40)
        check('unheld_expires', gone, n.cli('queue', 'list')[1])
        rc, out, err = n.cli('queue', 'list')
        check('held_not_expired', 'kept@far.test' in out and 'held by queue hold' in out, out)


# ------------------------------------------------------ sendmail habits

@test
def sendmail_personalities():
    closed = harness.free_ports(1)[0]
    with Node(conf={'relayhost': '127.0.0.1:%d' % closed, 'retry.initial': '1h'}) as n:
        env = dict(os.environ, MAILNODE_CONF=n.conf_path)
        links = {}
        for name in ('sendmail', 'mailq', 'newaliases'):
            links[name] = n.path(name)
            os.symlink(BIN, links[name])

        def run(argv, text=b''):
            p = subprocess.run(argv, input=text, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, cwd=n.dir, timeout=60)
            return p.returncode, p.stdout.decode(), p.stderr.decode()
        rc, out, err = run([links['sendmail'], 'far@remote.test'], b'Subject: q\n\nq\n')
        check('sendmail_link_queues', rc == 0, err)
        rc, out, err = run([links['mailq']])
        check('mailq_lists_queue', rc == 0 and 'far@remote.test' in out, out + err)
        rc, out2, err = run([links['sendmail'], '-bp'])
        check('sendmail_bp_lists_queue', rc == 0 and out2 == out, out2 + err)
        before = n.log().count('retry timers reset')
        rc, out, err = run([links['sendmail'], '-q'])
        check('sendmail_q_flushes', rc == 0 and wait_until(
            lambda: n.log().count('retry timers reset') > before, 10), out + err)
        rc, out, err = run([links['sendmail'], '-q15m'])
        check('sendmail_q_interval_flushes', rc == 0, out + err)
        rc, out, err = run([links['newaliases']])
        check('newaliases_ok', rc == 0 and 'nothing to rebuild' in out, out + err)
        rc, out, err = run([links['sendmail'], '-bi'])
        check('sendmail_bi_ok', rc == 0 and 'nothing to rebuild' in out, out + err)


# -------------------------------------------------------------------- logs

@test
def log_lines():
    import base64
    with Node(conf={'log.level': 'debug', 'log': 'syslog' if not os.path.exists('/dev/log') else 'stderr',
                    'relayhost': '127.0.0.1:%d' % harness.free_ports(1)[0]}) as n:
        add_user(n, 'alice')
        if not os.path.exists('/dev/log'):
            check('syslog_fallback_to_stderr', 'no syslog daemon listens' in n.log(), n.log()[-400:])
        s = n.smtp()
        s.ehlo('client.test')
        secret = 'very-secret-pw'
        code, msg = s.docmd('AUTH PLAIN', base64.b64encode(b'\0alice\0' + secret.encode()).decode())
        s.quit()
        log = n.log()
        check('debug_trace_commands', 'smtpd <<< ehlo client.test' in log.lower(), log[-500:])
        check('debug_trace_replies', 'smtpd >>> 250' in log, log[-500:])
        check('debug_trace_auth_masked', 'smtpd <<< AUTH PLAIN ****' in log and secret not in log
              and base64.b64encode(b'\0alice\0' + secret.encode()).decode() not in log, log[-500:])
        check('debug_trace_smtpd_states', 'smtpd INIT -> READY' in log, log[-500:])
        p = n.pop3()
        p.user('alice')
        p.pass_(PW)
        p.quit()
        log = n.log()
        check('debug_trace_pop3', 'pop3 <<< USER alice' in log and 'pop3 <<< PASS ****' in log
              and 'pop3 >>> +OK' in log and PW not in log, log[-500:])
        check('debug_trace_pop3_states', 'pop3 AUTHORIZATION -> TRANSACTION' in log, log[-500:])
        rc, out, err = sendmail(n, 'far@remote.test')
        qid = [l.split()[0] for l in n.cli('queue', 'list')[1].splitlines() if l and l[0] != ' ']
        check('accepted_line_for_sendmail', wait_until(
            lambda: qid and ('%s: accepted from=local' % qid[0]) in n.log(), 10), n.log()[-500:])
        before = n.log().count('retry timers reset')
        n.cli('flush')
        wait_until(lambda: n.log().count('retry timers reset') > before, 10)
        lines = [l for l in n.log().splitlines()[-40:] if 'flush' in l and ' info: ' in l]
        check('flush_logged_once', len([l for l in lines if 'retry timers reset' in l]) == 1
              and not any('control: flush requested' in l for l in lines), repr(lines))
    with Node(conf={'log.level': 'info'}) as n:
        s = n.smtp()
        s.ehlo('client.test')
        s.quit()
        check('info_has_no_trace', 'smtpd <<<' not in n.log(), n.log()[-300:])


harness.main()
