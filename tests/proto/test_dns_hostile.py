"""The resolver against a hostile DNS server (tests/proto/fakedns.py):
forged replies (wrong id, question, type, source port or address) are
ignored, malformed answers, a truncated answer whose TCP retry closes
early, a CNAME loop and SERVFAIL keep the mail queued (temporary), while
NXDOMAIN and a null MX (RFC 7505) bounce it (permanent); an MX that names
an address is no route; an MX that points back at the node itself keeps
the mail queued instead of looping.  The daemon must survive all of it:
run under SAN=1 and MAILNODE_VALGRIND=1 too."""

import poplib
import smtplib

import harness
from harness import Node, check, test, wait_until
from fakedns import FakeDNS
from sink import Sink

PW = 'secret-pass'
T = harness.TIME_SCALE

POISON_MX = {'MX': [(1, 'poison.test')]}
POISON_A = {'A': ['127.0.0.66']}
FORGE_ALL = ['id', 'question', 'type', 'port', 'addr']

RECORDS = {
    # Every answer on the way is preceded by forgeries.
    'forge.test': {'MX': [(10, 'mx.forge.test')], 'FORGE': FORGE_ALL, 'POISON': POISON_MX},
    'mx.forge.test': {'A': ['127.0.0.1'], 'FORGE': FORGE_ALL, 'POISON': POISON_A},
    'poison.test': {'A': ['127.0.0.66']},
    # Malformed answers, to the MX question or to the exchange's address.
    'ptr.test': {'MALFORMED': 'ptr_loop'},
    'count.test': {'MALFORMED': 'count_lies'},
    'rdlen.test': {'MALFORMED': 'rdlen'},
    'label.test': {'MALFORMED': 'label_0x40'},
    'garbage.test': {'MALFORMED': 'garbage'},
    'cut.test': {'MALFORMED': 'cut'},
    'badaddr.test': {'MX': [(10, 'mx.badaddr.test')]},
    'mx.badaddr.test': {'MALFORMED': 'count_lies'},
    # Truncated over UDP; over TCP the server closes early.
    'tcclose.test': {'MX': [(10, 'mx.forge.test')], 'TC': 'close'},
    'tchalf.test': {'MX': [(10, 'mx.forge.test')], 'TC': 'half'},
    # A CNAME loop.
    'loop.test': {'CNAME': 'loop2.test'},
    'loop2.test': {'CNAME': 'loop.test'},
    'servfail.test': 'SERVFAIL',
    'nullmx.test': {'MX': [(0, '.')]},
    # The exchange is an address written as a name.
    'literal.test': {'MX': [(10, '127.0.0.1')]},
}

TEMPORARY = ['ptr.test', 'count.test', 'rdlen.test', 'label.test', 'garbage.test', 'cut.test',
             'badaddr.test', 'tcclose.test', 'tchalf.test', 'loop.test', 'servfail.test',
             'literal.test']
PERMANENT = {'nosuch.test': '5.1.2', 'nullmx.test': '5.1.10'}


def add_user(n, name):
    rc, out, err = n.cli('user', 'add', name, input=PW + '\n')
    assert rc == 0, err


def mailbox(n, user):
    p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=20 * T)
    try:
        p.user(user)
        p.pass_(PW)
        return [b''.join(l + b'\r\n' for l in p.retr(i)[1]) for i in range(1, len(p.list()[1]) + 1)]
    finally:
        p.quit()


def send(n, rcpts):
    with smtplib.SMTP('127.0.0.1', n.port('smtp'), timeout=30 * T) as s:
        for r in rcpts:
            s.sendmail('alice@example.test', [r], 'Subject: to %s\r\n\r\nhello\r\n' % r)


@test
def hostile_answers():
    with Sink() as sink, FakeDNS(RECORDS) as dns:
        with Node(conf={'resolver': dns.resolver, 'delivery.port': sink.port,
                        'retry.initial': '1h', 'retry.max': '2h'}) as n:
            add_user(n, 'alice')
            rcpts = ['x@forge.test'] + ['x@' + d for d in TEMPORARY] + ['x@' + d for d in PERMANENT]
            send(n, rcpts)

            # Forgeries are ignored: the mail reaches the real exchange.
            check('forged_replies_ignored', sink.wait_for(1, timeout=30 * T), n.log()[-1500:])
            check('forged_replies_sent', dns.forged >= 10, dns.forged)
            check('poison_never_used', '127.0.0.66' not in n.log() and 'poison.test' not in n.log(),
                  [l for l in n.log().splitlines() if 'poison' in l or '127.0.0.66' in l][:3])

            # Temporary: deferred, still queued; permanent: bounced.
            def settled():
                log = n.log()
                return all('%s: deferred' % d in log for d in TEMPORARY) and \
                    all('%s: undeliverable' % d in log for d in PERMANENT)
            done = wait_until(settled, timeout=60 * T)
            log = n.log()
            for d in TEMPORARY:
                check('temporary_%s' % d, '%s: deferred' % d in log and '%s: undeliverable' % d not in log,
                      [l for l in log.splitlines() if d in l][-3:])
            # The bounced recipients leave the queue once their DSNs are out.
            listing = lambda: n.cli('queue', 'list')[1]
            wait_until(lambda: not any('x@%s' % d in listing() for d in PERMANENT), timeout=30 * T)
            out = listing()
            for d in TEMPORARY:
                check('queued_%s' % d, 'x@%s' % d in out, out[-800:])
            for d in PERMANENT:
                check('not_queued_%s' % d, 'x@%s' % d not in out, out[-800:])
            got = wait_until(lambda: len(mailbox(n, 'alice')) >= len(PERMANENT) and mailbox(n, 'alice'),
                             timeout=30 * T)
            bounces = b''.join(got or [])
            for d, status in PERMANENT.items():
                check('bounced_%s' % d, ('x@%s' % d).encode() in bounces and
                      ('Status: %s' % status).encode() in bounces, bounces[-600:])
            check('no_more_bounces', got and len(got) == len(PERMANENT), len(got or []))
            check('settled', done, log[-1500:])
            check('literal_mx_named', 'is not a host name' in log, log[-800:])
            check('only_real_delivery', len(sink.messages) == 1, len(sink.messages))
            check('daemon_alive', n.running())
            # The node still resolves after all that.
            send(n, ['y@forge.test'])
            check('still_resolving', sink.wait_for(2, timeout=30 * T), n.log()[-800:])


@test
def mx_points_at_ourselves():
    """The domain's MX is this node: relaying there would be a loop (RFC
    5321 5.1). The node sees that its exchange is itself and keeps the
    mail queued (a configuration error the operator can fix), without
    sending it to itself, bouncing it or crashing."""
    with Sink() as sink:
        n = Node(conf={'retry.initial': '1h', 'retry.max': '2h', 'max_received': '5'},
                 start=False, name='self')
        with FakeDNS({'self.test': {'MX': [(10, 'mx.self.test')]},
                      'mx.self.test': {'A': ['127.0.0.1']}}) as dns:
            n.configure({'resolver': dns.resolver, 'delivery.port': n.port('smtp')})
            with n:
                n.start()
                add_user(n, 'alice')
                send(n, ['x@self.test'])
                seen = wait_until(lambda: 'self.test: deferred' in n.log(), timeout=60 * T)
                log = n.log()
                check('self_mx_deferred', seen and 'loops back to myself' in log,
                      [l for l in log.splitlines() if 'self.test' in l][-3:])
                check('self_mx_not_sent_to_itself', log.count(': accepted from=') == 1,
                      log.count(': accepted from='))
                rc, out, err = n.cli('queue', 'list')
                check('self_mx_still_queued', 'x@self.test' in out, out)
                check('self_mx_no_bounce', mailbox(n, 'alice') == [])
                check('self_mx_not_delivered_elsewhere', len(sink.messages) == 0, len(sink.messages))
                check('self_mx_daemon_alive', n.running())


harness.main()
