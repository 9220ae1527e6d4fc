"""Failure notices an operator and a sender can act on:

- a message that expires in the queue bounces with the real last error:
  the connection error when the next hop was never reached, the peer's
  last reply (and its enhanced status code) when it kept deferring;
- a notification that cannot be delivered (null reverse-path) reaches the
  postmaster as a double bounce, once; a double bounce that fails in turn
  is logged and dropped, never bounced again.
"""
import poplib
import re
import time

import harness
from harness import Node, check, test, wait_until
from sink import Sink

PW = 'bounce-pw-1'


def add_user(n, name, pw=PW):
    harness.add_user(n, name, pw)


def mailbox(n, user):
    return harness.pop3_messages(n, user, PW, timeout=20)


queued = harness.queue_count


def send(n, sender, rcpts, subject='expiring'):
    s = n.smtp()
    try:
        s.sendmail(sender, rcpts, ('From: alice@example.test\r\nTo: %s\r\nSubject: %s\r\n\r\nbody\r\n'
                                   % (rcpts[0], subject)).encode())
    finally:
        s.quit()


def unfold(b):
    return re.sub(rb'\r\n[ \t]+', b' ', b)


def failures(n, user):
    return [m for m in mailbox(n, user) if b'Action: failed' in m]


EXPIRY = {'retry.initial': '1s', 'retry.max': '1s', 'queue.lifetime': '4s', 'queue.warn_after': '0'}


@test
def expiry_carries_connection_error():
    closed = harness.free_ports(1)[0]
    conf = dict(EXPIRY, relayhost='127.0.0.1:%d' % closed)
    with Node(conf=conf) as n:
        add_user(n, 'alice')
        send(n, 'alice@example.test', ['far@remote.test'])
        got = wait_until(lambda: failures(n, 'alice'), timeout=40)
        check('expiry_dsn', bool(got), n.log()[-800:])
        if not got:
            return
        d = unfold(got[0])
        report = d.split(b'message/delivery-status')[-1]
        check('status_447_without_peer_code', b'Status: 4.4.7' in report, report[:600])
        check('diagnostic_is_connection_error',
              re.search(rb'Diagnostic-Code: x-mailnode; cannot connect to 127\.0\.0\.1 \[127\.0\.0\.1\]: '
                        rb'Connection refused', report) is not None, report[:700])
        check('last_attempt_date', b'Last-Attempt-Date: ' in report)
        human = d.split(b'message/delivery-status')[0]
        check('human_says_expired', b'given up after 4 seconds in the queue' in human, human[-1200:])
        check('human_shows_last_error', b'Connection refused' in human and b'The last error' in human,
              human[-1200:])
        check('no_check_the_domain_advice', b'check the domain' not in human, human[-800:])
        check('log_has_last_error', re.search(r'status=expired \(.*last error: X-mailnode; cannot connect',
                                              n.log()) is not None, n.log()[-600:])
        check('queue_empty', wait_until(lambda: queued(n) == 0, timeout=10))


@test
def expiry_carries_last_reply():
    with Sink(rcpt_replies={'full@remote.test': '452 4.2.2 mailbox full, try later'}) as sink:
        conf = dict(EXPIRY, relayhost='127.0.0.1:%d' % sink.port)
        with Node(conf=conf) as n:
            add_user(n, 'alice')
            send(n, 'alice@example.test', ['full@remote.test'])
            got = wait_until(lambda: failures(n, 'alice'), timeout=40)
            check('expiry_dsn', bool(got), n.log()[-800:])
            if not got:
                return
            d = unfold(got[0])
            report = d.split(b'message/delivery-status')[-1]
            check('status_from_peer', b'Status: 4.2.2' in report, report[:600])
            check('diagnostic_smtp_reply', b'Diagnostic-Code: smtp; 452 4.2.2 mailbox full, try later' in report,
                  report[:700])
            check('peer_tried', len(sink.sessions) >= 1)
            human = d.split(b'message/delivery-status')[0]
            check('human_shows_reply', b'452 4.2.2 mailbox full' in human, human[-1000:])


@test
def expiry_session_error_quotes_reply():
    # The relayhost refuses the whole session: the error is this node's
    # ("... greeted with: 421 ..."), the status the peer's code.
    with Sink(greeting='421 4.3.2 closed for maintenance') as sink:
        conf = dict(EXPIRY, relayhost='127.0.0.1:%d' % sink.port)
        with Node(conf=conf) as n:
            add_user(n, 'alice')
            send(n, 'alice@example.test', ['far@remote.test'])
            got = wait_until(lambda: failures(n, 'alice'), timeout=40)
            check('expiry_dsn', bool(got), n.log()[-800:])
            if got:
                report = unfold(got[0]).split(b'message/delivery-status')[-1]
                check('status_432', b'Status: 4.3.2' in report, report[:600])
                check('diagnostic_names_greeting', re.search(
                    rb'Diagnostic-Code: x-mailnode; .*421 4\.3\.2 closed for maintenance', report) is not None,
                    report[:700])


def postmaster_notices(n, user='alice'):
    return [m for m in mailbox(n, user) if b'Subject: Postmaster notice' in m]


@test
def double_bounce_on_expiry():
    closed = harness.free_ports(1)[0]
    conf = dict(EXPIRY, relayhost='127.0.0.1:%d' % closed)
    with Node(conf=conf) as n:
        add_user(n, 'alice')                    # the first user: the admin, who reads postmaster
        add_user(n, 'bob')
        send(n, '', ['far@remote.test'], subject='a bounce from elsewhere')
        got = wait_until(lambda: postmaster_notices(n), timeout=40)
        check('double_bounce_to_postmaster', len(got) == 1, n.log()[-1000:])
        if got:
            d = unfold(got[0])
            check('null_sender', d.startswith(b'Return-Path: <>\r\n'), d[:80])
            check('to_postmaster', b'To: <postmaster@' in d, d[:600])
            check('report_attached', b'message/rfc822' in d and b'Subject: a bounce from elsewhere' in d)
            report = d.split(b'message/delivery-status')[1]
            check('final_recipient', b'Final-Recipient: rfc822; far@remote.test' in report, report[:500])
            check('expiry_reason', b'Connection refused' in report, report[:700])
        check('logged', 'double bounce to postmaster' in n.log(), n.log()[-600:])
        check('nothing_to_others', mailbox(n, 'bob') == [])
        check('queue_empty', wait_until(lambda: queued(n) == 0, timeout=10))
        time.sleep(1)
        check('only_once', len(postmaster_notices(n)) == 1)


@test
def double_bounce_on_permanent_failure_and_no_third():
    # The postmaster's mail goes elsewhere (an alias) and fails there too:
    # the double bounce is dropped with a log line, never bounced again.
    replies = {'nobody@remote.test': '550 5.1.1 no such user',
               'pm@remote.test': '550 5.1.1 no such postmaster'}
    with Sink(rcpt_replies=replies) as sink:
        with Node(conf={'relayhost': '127.0.0.1:%d' % sink.port, 'retry.initial': '1s'}) as n:
            add_user(n, 'alice')
            send(n, '', ['nobody@remote.test'], subject='bounce one')
            got = wait_until(lambda: postmaster_notices(n), timeout=30)
            check('double_bounce_to_admin', len(got) == 1, n.log()[-1000:])
            if got:
                report = unfold(got[0]).split(b'message/delivery-status')[1]
                check('status_511', b'Status: 5.1.1' in report, report[:500])
                check('peer_reply', b'550 5.1.1 no such user' in report, report[:600])
            rc, out, err = n.cli('alias', 'add', 'postmaster', 'pm@remote.test')
            check('alias_added', rc == 0, out + err)
            send(n, '', ['nobody@remote.test'], subject='bounce two')
            check('discarded_logged', wait_until(lambda: 'double bounce undeliverable, discarded' in n.log(),
                                                 timeout=30), n.log()[-1000:])
            check('queue_empty', wait_until(lambda: queued(n) == 0, timeout=10), n.cli('queue', 'list')[1])
            time.sleep(1)
            tried = [r for s in sink.sessions for c in s.commands for r in [c] if c.upper().startswith('RCPT')]
            check('postmaster_tried_once', sum('pm@remote.test' in r for r in tried) == 1, tried)
            check('no_third_notice', n.log().count('double bounce to postmaster') == 2, n.log()[-1500:])
            check('admin_got_only_first', len(postmaster_notices(n)) == 1)


if __name__ == '__main__':
    harness.main()
