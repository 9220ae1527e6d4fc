"""Outbound delivery against real peers: a smarthost that counts (our sink),
Postfix's smtp-sink, a private Postfix instance; PIPELINING and BDAT seen
at the peer, temporary then permanent failures, DSNs into the sender's
mailbox, lifetime expiry, 7-bit conversion, null senders, MX lookups via a
loopback DNS server, and a kill -9 in the middle of a batch."""
import re
import os
import poplib
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time

import harness
from harness import Node, check, test, wait_until
from sink import Sink

PW = 'secret-pass'


def add_user(n, name, pw=PW):
    harness.add_user(n, name, pw)


def mailbox(n, user):
    return harness.pop3_messages(n, user, PW, timeout=20)


queued = harness.queue_count


def send(n, sender, rcpts, body, opts=()):
    s = n.smtp()
    try:
        return s.sendmail(sender, rcpts, body, mail_options=list(opts))
    finally:
        s.quit()


def relay_node(sink, extra=None):
    conf = {'relayhost': '127.0.0.1:%d' % sink.port, 'retry.initial': '1s', 'retry.max': '2s'}
    conf.update(extra or {})
    n = Node(conf=conf)
    add_user(n, 'alice')
    return n


def msg(i, size=200):
    return ('From: alice@example.test\r\nTo: x@remote.test\r\nSubject: batch %d\r\n'
            'Message-ID: <batch-%d@example.test>\r\n\r\n' % (i, i) + 'body line\r\n' * (size // 11)).encode()


@test
def smarthost_batch_pipelined_bdat():
    with Sink() as sink, relay_node(sink, {'retry.initial': '1h'}) as n:
        sink.stop()                               # the link is down: mail queues
        for i in range(30):
            send(n, 'alice@example.test', ['r%d@remote.test' % (i % 3)], msg(i))
        check('queued_while_down', queued(n) == 30, queued(n))
        sink.start()
        rc, out, err = n.cli('flush', '--wait', '--timeout', '60s')
        check('flush_wait_exit_0', rc == 0, out + err)
        check('all_arrived', sink.wait_for(30, timeout=30), len(sink.messages))
        check('queue_empty', queued(n) == 0, queued(n))
        check('one_connection', sink.connections <= 2, sink.connections)
        sess = [s for s in sink.sessions if s.messages]
        cmds = [c for s in sess for c in s.commands]
        check('bdat_used', any(c.upper().startswith('BDAT') for c in cmds), cmds[:8])
        check('no_data_command', not any(c.upper() == 'DATA' for c in cmds))
        # pipelining across messages: far fewer reads than messages
        batches = sum(len(s.batches) for s in sess)
        check('pipelined_across_messages', batches < 30, batches)
        ids = sink.message_ids()
        check('each_once', len(ids) == 30 and len(set(ids)) == 30, len(set(ids)))
        body = sink.messages[0].data
        check('received_header_added', body.startswith(b'Received: from '), body[:80])


@test
def batch_of_many_recipients_stays_in_step():
    """Sixty queued messages of 100 recipients each (one transaction each)
    go out in one pipelined session over a long link: more commands than
    the client keeps replies outstanding for, so it must wait for replies
    rather than lose count.  Every recipient arrives once, on its own
    message, and nothing bounces."""
    N = 60
    rc_all = [['m%d-r%d@remote.test' % (i, k) for k in range(100)] for i in range(N)]
    # Over a long link that holds all in flight (0.5 s each way) the client
    # has written everything it may before the first reply comes back.
    with Sink() as sink, harness.LinkProxy(sink.port, delay=0.5) as link, \
            Node(conf={'relayhost': '127.0.0.1:%d' % link.port, 'retry.initial': '1h',
                       }) as n:
        add_user(n, 'alice')
        sink.stop()
        for i in range(N):
            send(n, 'alice@example.test', rc_all[i], msg(100 + i))
        check('many_rcpts_queued', queued(n) == N, queued(n))
        sink.start()
        rc, out, err = n.cli('flush', '--wait', '--timeout', '50s')
        check('many_rcpts_flush_exit_0', rc == 0, out + err)
        check('many_rcpts_all_arrived', sink.wait_for(N, timeout=60), len(sink.messages))
        got = {}
        for m in sink.messages:
            subj = re.search(rb'Subject: batch (\d+)', m.data)
            got.setdefault(int(subj.group(1)) - 100 if subj else -1, []).extend(m.rcpts)
        check('many_rcpts_each_on_its_message',
              all(sorted(got.get(i, [])) == sorted(rc_all[i]) for i in range(N)),
              {k: (len(v), len(set(v)), sorted(set(v) - set(rc_all[k]))[:3] if 0 <= k < N else v[:3])
               for k, v in got.items() if k < 0 or k >= N or sorted(v) != sorted(rc_all[k])})
        check('many_rcpts_queue_empty', queued(n) == 0, queued(n))
        check('many_rcpts_no_bounce', not any(m.mail_from == '' for m in sink.messages)
              and 'bounce' not in n.log().lower(), n.log()[-1500:])

@test
def smarthost_without_chunking_uses_data():
    with Sink(chunking=False) as sink, relay_node(sink) as n:
        for i in range(5):
            send(n, 'alice@example.test', ['a@remote.test', 'b@remote.test'], msg(i))
        check('arrived', sink.wait_for(5, timeout=20), len(sink.messages))
        cmds = [c.upper() for s in sink.sessions for c in s.commands]
        check('data_used', 'DATA' in cmds and not any(c.startswith('BDAT') for c in cmds))
        check('both_rcpts_in_one_transaction', all(len(m.rcpts) == 2 for m in sink.messages))


@test
def dot_stuffing_round_trip():
    with Sink(chunking=False) as sink, relay_node(sink) as n:
        body = b'Subject: dots\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n'
        send(n, 'alice@example.test', ['d@remote.test'], body)
        check('arrived', sink.wait_for(1, timeout=20))
        if sink.messages:
            check('text_exact', sink.messages[0].data.endswith(body), sink.messages[0].data[-80:])


@test
def temporary_then_success():
    state = {'n': 0}

    def rcpt(addr):
        state['n'] += 1
        return '451 4.3.0 try later' if state['n'] == 1 else None

    with Sink(rcpt_replies=rcpt) as sink, relay_node(sink) as n:
        send(n, 'alice@example.test', ['later@remote.test'], msg(1))
        check('retried_and_delivered', sink.wait_for(1, timeout=30), n.log()[-600:])
        check('deferred_logged', 'status=deferred' in n.log())
        check('queue_empty', wait_until(lambda: queued(n) == 0, timeout=10))
        check('no_bounce', len(mailbox(n, 'alice')) == 0)


@test
def permanent_failure_bounces_to_sender():
    with Sink(rcpt_replies={'nobody@remote.test': '550 5.1.1 no such user here'}) as sink, relay_node(sink) as n:
        send(n, 'alice@example.test', ['nobody@remote.test', 'ok@remote.test'], msg(1),
             opts=['RET=HDRS', 'ENVID=env123'])
        check('good_rcpt_delivered', sink.wait_for(1, timeout=20))
        got = wait_until(lambda: mailbox(n, 'alice'), timeout=20)
        check('dsn_in_sender_mailbox', got and len(got) == 1, got)
        if got:
            d = got[0]
            check('dsn_null_sender', d.startswith(b'Return-Path: <>\r\n'), d[:60])
            check('dsn_multipart_report', b'multipart/report' in d and b'report-type=delivery-status' in d)
            check('dsn_final_recipient', b'Final-Recipient: rfc822; nobody@remote.test' in d
                  or b'Final-Recipient: rfc822;nobody@remote.test' in d, d[-1500:])
            check('dsn_action_failed', b'Action: failed' in d)
            check('dsn_status_511', b'Status: 5.1.1' in d)
            check('dsn_diagnostic', b'no such user here' in d)
            check('dsn_envid', b'Original-Envelope-Id: env123' in d)
            check('dsn_only_failed_rcpt', b'ok@remote.test' not in d.split(b'Subject: batch 1')[0]
                  .split(b'message/delivery-status')[-1])
        check('queue_empty', wait_until(lambda: queued(n) == 0, timeout=10))


@test
def no_bounce_for_null_sender():
    with Sink(rcpt_replies={'nobody@remote.test': '550 5.1.1 no'}) as sink, relay_node(sink) as n:
        send(n, '', ['nobody@remote.test'], msg(1))
        check('failed_logged', wait_until(lambda: 'status=bounced' in n.log(), timeout=20))
        time.sleep(1)
        check('no_notification', 'sender notification' not in n.log())
        check('queue_empty', wait_until(lambda: queued(n) == 0, timeout=10))


@test
def notify_never_and_success():
    # RFC 3461 6.2: to a next hop without DSN the success notice says
    # "relayed" (a DSN-capable one gets NOTIFY and reports itself:
    # test_hostile.py).
    with Sink(rcpt_replies={'nobody@remote.test': '550 5.1.1 no'}, dsn=False) as sink, relay_node(sink) as n:
        s = n.smtp()
        s.ehlo('client.test')
        s.mail('alice@example.test')
        s.rcpt('nobody@remote.test', ['NOTIFY=NEVER'])
        s.rcpt('yes@remote.test', ['NOTIFY=SUCCESS'])
        s.data(msg(1))
        s.quit()
        check('delivered', sink.wait_for(1, timeout=20))
        got = wait_until(lambda: mailbox(n, 'alice'), timeout=20)
        check('one_success_dsn', got and len(got) == 1 and b'Action: relayed' in got[0], got)
        check('no_failure_dsn', not got or b'Action: failed' not in got[0])


@test
def lifetime_expiry():
    with Sink() as sink:
        port = sink.port
    with Node(conf={'relayhost': '127.0.0.1:%d' % port, 'retry.initial': '1s', 'retry.max': '1s',
                    'queue.lifetime': '4s', 'queue.warn_after': '2s'}) as n:
        add_user(n, 'alice')
        send(n, 'alice@example.test', ['far@remote.test'], msg(1))
        got = wait_until(lambda: [m for m in mailbox(n, 'alice') if b'Action: failed' in m], timeout=30)
        check('expired_dsn', bool(got), n.log()[-800:])
        if got:
            check('expired_status_447', b'Status: 4.4.7' in got[0])
        check('delay_warning_sent', wait_until(lambda: [m for m in mailbox(n, 'alice') if b'Action: delayed' in m],
                                               timeout=5))
        # outcomes are committed within STORE_OUTCOME_MS
        check('queue_empty', wait_until(lambda: queued(n) == 0, timeout=5))


@test
def seven_bit_peer_gets_converted_text():
    with Sink(eightbitmime=False) as sink, relay_node(sink) as n:
        body = ('From: alice@example.test\r\nSubject: caf\u00e9?\r\n'.replace('\u00e9?', 'e') +
                'MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
                'Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\r\n').encode('utf-8')
        send(n, 'alice@example.test', ['x@remote.test'], body, opts=['BODY=8BITMIME'])
        check('arrived', sink.wait_for(1, timeout=20), n.log()[-500:])
        if sink.messages:
            data = sink.messages[0].data
            check('seven_bit_only', all(b < 128 for b in data), [b for b in data if b >= 128][:5])
            check('quoted_printable', b'Content-Transfer-Encoding: quoted-printable' in data)
            check('no_body_8bitmime_param', 'BODY' not in sink.messages[0].mail_params, sink.messages[0].mail_params)


@test
def size_limit_of_peer():
    with Sink(size=1000) as sink, relay_node(sink) as n:
        send(n, 'alice@example.test', ['x@remote.test'], msg(1, size=5000))
        got = wait_until(lambda: mailbox(n, 'alice'), timeout=20)
        check('too_big_bounced', got and b'Status: 5.3.4' in got[0], n.log()[-600:])
        check('nothing_sent', len(sink.messages) == 0)


@test
def postfix_smtp_sink_peer():
    sinkbin = shutil.which('smtp-sink') or '/usr/sbin/smtp-sink'
    if not os.path.exists(sinkbin):
        check('smtp_sink_installed', False, 'postfix smtp-sink not found')
        return
    port = harness.free_ports(1)[0]
    p = subprocess.Popen([sinkbin, '-u', 'nobody', '-c', '127.0.0.1:%d' % port, '100'],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        with Node(conf={'relayhost': '127.0.0.1:%d' % port, 'retry.initial': '1s'}) as n:
            for i in range(20):
                send(n, 'a@example.test', ['far@remote.test'], msg(i))
            check('smtp_sink_took_all', wait_until(lambda: queued(n) == 0, timeout=30), n.log()[-500:])
            check('sent_logged_20', n.log().count('status=sent') == 20)
    finally:
        p.terminate()
        p.wait(5)


@test
def mx_lookup_via_dns():
    from fakedns import FakeDNS
    with Sink() as sink:
        records = {
            # the preferred MX refuses connections; the second one takes the mail
            'remote.test': {'MX': [(20, 'backup.remote.test'), (10, 'mx.remote.test')]},
            'mx.remote.test': {'A': ['127.0.0.2']},
            'backup.remote.test': {'A': ['127.0.0.1']},
            'implicit.test': {'A': ['127.0.0.1']},
            'nullmx.test': {'MX': [(0, '.')]},
        }
        with FakeDNS(records) as dns:
            with Node(conf={'resolver': '127.0.0.1:%d' % dns.port, 'retry.initial': '1s',
                            'delivery.port': sink.port, 'relay_networks': '127.0.0.0/8'}) as n:
                add_user(n, 'alice')
                send(n, 'alice@example.test', ['x@remote.test'], msg(1))
                send(n, 'alice@example.test', ['y@implicit.test'], msg(2))
                check('mx_failover_delivered', sink.wait_for(2, timeout=30), n.log()[-800:])
                check('preferred_mx_tried_first', 'mx.remote.test [127.0.0.2]' in n.log(), n.log()[-800:])
                send(n, 'alice@example.test', ['x@nosuch.test'], msg(3))
                send(n, 'alice@example.test', ['x@nullmx.test'], msg(4))
                got = wait_until(lambda: len(mailbox(n, 'alice')) >= 2 and mailbox(n, 'alice'), timeout=20)
                check('two_bounces', got and len(got) == 2, n.log()[-800:])
                if got:
                    allb = b''.join(got)
                    check('nxdomain_status', b'Status: 5.1.2' in allb)
                    check('null_mx_status', b'Status: 5.1.10' in allb)


@test
def hold_release_and_status():
    with Sink() as sink, relay_node(sink, {'retry.initial': '1h'}) as n:
        sink.stop()
        send(n, 'alice@example.test', ['far@remote.test'], msg(1))
        check('deferred_while_down', wait_until(lambda: 'deferred' in n.log(), timeout=20), n.log()[-400:])
        rc, out, err = n.cli('queue', 'list')
        check('list_shows_last_error', 'far@remote.test' in out and 'next try' in out, out)
        qid = out.split()[0] if out.strip() else ''
        # Delivery outcomes are committed in batches (within a fraction of a
        # second): the deferral's record may trail its log line.
        st = {}

        def status_has_error():
            st['out'] = n.cli('status')[1]
            return '[relayhost]' in st['out'] and 'last error' in st['out']
        check('status_shows_destination_error', wait_until(status_has_error, timeout=10), st.get('out'))
        rc, out, err = n.cli('queue', 'hold', qid)
        check('hold_ok', rc == 0 and 'held' in out, out + err)
        rc, out, err = n.cli('queue', 'list')
        check('list_shows_held', '(held' in out, out)
        sink.start()
        n.cli('flush', '--wait', '--timeout', '30s')
        time.sleep(1)
        check('held_not_delivered', len(sink.messages) == 0 and queued(n) == 1, len(sink.messages))
        rc, out, err = n.cli('queue', 'release', qid)
        check('release_ok', rc == 0, out + err)
        n.cli('flush')
        check('released_delivered', sink.wait_for(1, timeout=20), n.log()[-400:])
        rc, out, err = n.cli('queue', 'hold', 'NOSUCHID')
        check('hold_unknown_id', rc != 0 and 'no message' in err, err)


@test
def loopback_connection_keeps_backoff():
    # RFC 5321 4.5.4.1 lets a connection from an unreachable host end its
    # backoff, but a loopback client is one of our own, not the relayhost
    # on 127.0.0.1 coming back (test_hostile.py: no retry storm).
    with Sink() as sink, relay_node(sink, {'retry.initial': '1h', 'retry.max': '2h'}) as n:
        sink.stop()
        send(n, 'alice@example.test', ['far@remote.test'], msg(1))
        check('backing_off', wait_until(lambda: 'next try in' in n.log(), timeout=20), n.log()[-300:])
        sink.start()
        with n.raw() as c:
            c.recv_reply()
            c.cmd('QUIT')
        time.sleep(1.5)
        check('loopback_contact_no_retry', len(sink.messages) == 0 and 'retrying now' not in n.log(),
              n.log()[-400:])
        n.cli('flush')
        check('flush_still_retries', sink.wait_for(1, timeout=20), n.log()[-400:])


@test
def kill9_mid_batch_loses_nothing():
    with Sink(chunking=False) as sink:
        port = sink.port
        sink.stop()
        n = Node(conf={'relayhost': '127.0.0.1:%d' % port, 'retry.initial': '1h'})
        try:
            for i in range(200):
                send(n, 'a@example.test', ['far@remote.test'], msg(i, size=3000))
            # a slow peer: each message takes time, so the kill lands mid-batch
            sink2 = Sink(port=port, data_reply=lambda m: (time.sleep(0.01), None)[1])
            try:
                n.cli('flush')
                wait_until(lambda: len(sink2.messages) >= 40, timeout=30)
                n.kill9()
                got_before = len(sink2.messages)
                n.configure({'retry.initial': '1s'})
                n.start()
                n.cli('flush')
                check('rest_delivered', wait_until(lambda: queued(n) == 0, timeout=60), queued(n))
                ids = sink2.message_ids()
                missing = set('<batch-%d@example.test>' % i for i in range(200)) - set(ids)
                check('none_lost', not missing, sorted(missing)[:5])
                dups = len(ids) - len(set(ids))
                check('killed_mid_batch', 0 < got_before < 200, got_before)
                harness.diag('kill -9 mid-batch: %d delivered before, %d duplicates after restart'
                             % (got_before, dups))
                # Outcomes are committed in batches (STORE_OUTCOME_BATCH, 64)
                # and up to SMTPC_WINDOW (64) messages are on the wire: a
                # crash resends at most those.
                check('few_duplicates', dups <= 64 + 64, dups)
            finally:
                sink2.stop()
        finally:
            n.close()


harness.main()
