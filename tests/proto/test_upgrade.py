"""Upgrade: a database written by mailnode 0.1.0 (schema 3, made by
tests/fixtures/make_schema3.py) is migrated when this mailnode starts on
it, and nothing is lost: users and their passwords, aliases, domains,
every mailbox message byte for byte, the queued remote mail (delivered
after a flush, each message once) and the held mail (released on
request)."""
import os
import poplib
import shutil

import harness
from harness import Node, check, test, wait_until
from sink import Sink

PW = 'secret-pass'
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fixtures')


def subjects(n, user):
    p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=20)
    try:
        p.user(user)
        p.pass_(PW)
        out = []
        for i in range(1, len(p.list()[1]) + 1):
            data = b'\r\n'.join(p.retr(i)[1])
            subj = [l for l in data.split(b'\r\n') if l.startswith(b'Subject: ')]
            text = subj[0][9:].decode() if subj else '?'
            # the text the fixture wrote, whole
            out.append(text if data.endswith(b'fixture text ' + text.encode()) else text + ' (damaged)')
        return sorted(out)
    finally:
        p.quit()


def pop_octets(n, user):
    p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=20)
    try:
        p.user(user)
        p.pass_(PW)
        return p.stat()[1]
    finally:
        p.quit()


def count(n):
    rc, out, err = n.cli('queue', 'count')
    return int(out.strip()) if rc == 0 and out.strip().isdigit() else -1


@test
def schema3_database_migrates_with_nothing_lost():
    with Sink() as sink:
        # First with a relayhost that is not there, so that nothing leaves
        # while the migrated queue is counted; then with the sink.
        closed = harness.free_ports(1)[0]
        # The fixture's mail was received when the fixture was made: the
        # warning and bounce ages are set far off, so that the test does not
        # change its outcome as the fixture grows older.
        n = Node(conf={'relayhost': '127.0.0.1:%d' % closed, 'retry.initial': '1h',
                       'queue.warn_after': '3650d', 'queue.lifetime': '3650d'}, start=False)
        try:
            shutil.copy(os.path.join(FIXTURES, 'schema3.db'), n.db)
            shutil.copy(os.path.join(FIXTURES, 'schema3.db.key'), n.db + '.key')
            os.chmod(n.db, 0o600)
            os.chmod(n.db + '.key', 0o600)
            n.start()
            check('migrated_logged', 'database schema migrated from 3' in n.log(), n.log()[-600:])
            rc, out, err = n.cli('user', 'list')
            check('users_kept', rc == 0 and 'alice' in out and 'bob' in out, out + err)
            rc, out, err = n.cli('alias', 'list')
            check('alias_kept', 'postmaster' in out and 'alice' in out, out + err)
            rc, out, err = n.cli('domain', 'list')
            check('hold_domain_kept', 'site.test' in out and 'hold' in out, out + err)
            check('passwords_and_mailboxes_kept',
                  subjects(n, 'alice') == ['local-1', 'local-2', 'local-both'], subjects(n, 'alice'))
            check('shared_body_kept', subjects(n, 'bob') == ['local-bob', 'local-both'], subjects(n, 'bob'))
            check('queue_counted', count(n) == 7, count(n))
            rc, out, err = n.cli('status')
            check('status_counts', '7 messages, 7 recipients (3 held' in out and '5 messages for 2 users' in out,
                  out + err)
            # per-destination backlogs, counted when the schema was migrated
            check('status_backlogs', 'backlog 4 recipients' in out and
                  any('site.test' in l and '3 messages, 3 recipients' in l for l in out.splitlines()), out + err)
            # the mailbox usage counters (quotas) start from what the mailboxes hold
            rc, out, err = n.cli('user', 'list', '--long')
            use = {l.split('\t')[0]: l.split('\t')[1:3] for l in out.splitlines()}
            check('usage_counters_migrated', rc == 0 and use.get('alice') == ['3', str(pop_octets(n, 'alice'))]
                  and use.get('bob') == ['2', str(pop_octets(n, 'bob'))], out + err)
            # the queued remote mail goes out, each message once
            n.stop()
            n.configure({'relayhost': '127.0.0.1:%d' % sink.port})
            n.start()
            rc, out, err = n.cli('flush', '--wait', '--timeout', '60s')
            check('remote_delivered', sink.wait_for(4, timeout=30), len(sink.messages))
            ids = sorted(sink.message_ids())
            check('remote_each_once', ids == ['<remote-%d@fixture.test>' % i for i in range(4)], ids)
            check('remote_text_whole', all(m.data.endswith(b'fixture text remote-%s\r\n'
                                                            % m.message_id[8:9].encode())
                                           for m in sink.messages), [m.data[-40:] for m in sink.messages])
            check('held_still_held', wait_until(lambda: count(n) == 3, timeout=10), count(n))
            # the held mail is released on request (ETRN-style flush of the domain)
            n.cli('domain', 'del', 'site.test')
            rc, out, err = n.cli('domain', 'add', 'site.test', '--hold', '--owner', 'alice',
                                 '--host', '127.0.0.1:%d' % sink.port)
            check('domain_host_set', rc == 0, out + err)
            n.cli('flush', 'site.test')
            check('held_released', sink.wait_for(7, timeout=30), len(sink.messages))
            ids = sorted(sink.message_ids())[4:]
            check('held_each_once', sorted(i for i in sink.message_ids() if 'held' in i) ==
                  ['<held-%d@fixture.test>' % i for i in range(3)], ids)
            check('queue_empty_after', wait_until(lambda: count(n) == 0, timeout=10), count(n))
            # a second start finds the schema current
            n.restart()
            check('second_start_no_migration', n.log().count('database schema migrated') == 1)
            check('mailboxes_after_restart', subjects(n, 'alice') == ['local-1', 'local-2', 'local-both'])
        finally:
            n.close()


harness.main()
