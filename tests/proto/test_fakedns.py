"""The fake DNS server other protocol tests rely on (tests/proto/fakedns.py):
what it answers over UDP and TCP, so that a failure in a delivery test
points at the node and not at the fixture."""

import struct

import harness
from harness import check, test
from fakedns import FakeDNS, query

RECORDS = {
    'example.test': {'MX': [(20, 'mx2.example.test'), (10, 'mx1.example.test')]},
    'mx1.example.test': {'A': ['127.0.0.1'], 'AAAA': ['::1']},
    'mx2.example.test': {'A': ['127.0.0.2']},
    'implicit.test': {'A': ['127.0.0.3']},
    'nullmx.test': {'MX': [(0, '.')]},
    'alias.test': {'CNAME': 'example.test'},
    'broken.test': 'SERVFAIL',
    'silent.test': 'TIMEOUT',
    'big.test': {'A': ['127.0.0.9'], 'TC': True},
}


HOSTILE = {
    'mx.forge.test': {'A': ['127.0.0.1'], 'POISON': {'A': ['127.0.0.66']},
                      'FORGE': ['id', 'question', 'type', 'port', 'addr']},
    'loop.test': {'CNAME': 'loop2.test'},
    'loop2.test': {'CNAME': 'loop.test'},
    'tcclose.test': {'MX': [(10, 'mx.forge.test')], 'TC': 'close'},
    'tchalf.test': {'MX': [(10, 'mx.forge.test')], 'TC': 'half'},
    'bad.test': {'MALFORMED': 'count_lies'},
}


@test
def answers():
    with FakeDNS(RECORDS) as dns:
        rcode, tc, an = query(dns.port, 'Example.TEST.', 'MX')
        check('mx answer', rcode == 0 and not tc and
              sorted(v for t, v in an) == [(10, 'mx1.example.test'), (20, 'mx2.example.test')], an)
        rcode, _, an = query(dns.port, 'mx1.example.test', 'AAAA')
        check('aaaa answer', rcode == 0 and an == [('AAAA', '::1')], an)
        rcode, _, an = query(dns.port, 'implicit.test', 'MX')
        check('nodata is empty noerror', rcode == 0 and an == [], (rcode, an))
        rcode, _, an = query(dns.port, 'nowhere.test', 'A')
        check('unknown name is nxdomain', rcode == 3 and an == [], (rcode, an))
        rcode, _, an = query(dns.port, 'nullmx.test', 'MX')
        check('null mx', rcode == 0 and an == [('MX', (0, ''))], an)
        rcode, _, an = query(dns.port, 'alias.test', 'MX')
        check('cname followed', rcode == 0 and an[0] == ('CNAME', 'example.test') and len(an) == 3, an)
        rcode, _, _ = query(dns.port, 'broken.test', 'MX')
        check('servfail', rcode == 2, rcode)
        try:
            query(dns.port, 'silent.test', 'A', timeout=0.5)
            check('timeout name is silent', False, 'got an answer')
        except OSError:
            check('timeout name is silent', True)
        rcode, tc, an = query(dns.port, 'big.test', 'A')
        check('udp truncated', tc and an == [], (tc, an))
        rcode, tc, an = query(dns.port, 'big.test', 'A', proto='tcp')
        check('tcp full answer', not tc and an == [('A', '127.0.0.9')], (tc, an))
        check('queries logged', ('big.test', 'A', 'tcp') in dns.queries, dns.queries)
        dns.set('late.test', {'A': ['127.0.0.10']})
        check('records added while running', query(dns.port, 'late.test')[2] == [('A', '127.0.0.10')])
        check('resolver string', dns.resolver == '127.0.0.1:%d' % dns.port, dns.resolver)


def replies(port, name, qtype=1, wait=1.0):
    """Every datagram that comes back to one query within wait seconds:
    [(source, id, question name)]."""
    import socket
    import struct
    from fakedns import decode_name, encode_name
    q = struct.pack('!HHHHHH', 0x4242, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack('!HH', qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(wait)
    out = []
    try:
        s.sendto(q, ('127.0.0.1', port))
        while len(out) < 20:
            data, src = s.recvfrom(4096)
            out.append((src, struct.unpack('!H', data[:2])[0], decode_name(data, 12)[0]))
    except OSError:
        pass
    finally:
        s.close()
    return out


@test
def fixture_is_hostile():
    """The fake server misbehaves the way the node test relies on."""
    with FakeDNS(HOSTILE) as dns:
        got = replies(dns.port, 'mx.forge.test')
        srcs = {src for src, _, _ in got}
        check('fixture_five_forgeries_then_the_answer', len(got) == 6, got)
        check('fixture_forged_wrong_id', any(i != 0x4242 for _, i, _ in got), got)
        check('fixture_forged_wrong_question', any(q != 'mx.forge.test' for _, _, q in got), got)
        check('fixture_forged_other_sources', len(srcs) == 3 and ('127.0.0.2' in {a for a, _ in srcs}), srcs)
        check('fixture_real_answer_last', got and got[-1] == (('127.0.0.1', dns.port), 0x4242, 'mx.forge.test'),
              got[-1:])
        rcode, _, an = query(dns.port, 'loop.test', 'A')
        check('fixture_cname_loop', rcode == 0 and len(an) >= 4 and all(t == 'CNAME' for t, _ in an), an)
        rcode, tc, an = query(dns.port, 'tcclose.test', 'MX')
        check('fixture_truncated_over_udp', tc and an == [], (tc, an))
        for name in ('tcclose.test', 'tchalf.test'):
            try:
                query(dns.port, name, 'MX', proto='tcp', timeout=2)
                check('fixture_tcp_closes_early_' + name, False, 'got an answer')
            except (OSError, TypeError, struct.error):
                check('fixture_tcp_closes_early_' + name, True)
        try:
            query(dns.port, 'bad.test', 'A')
            check('fixture_malformed', False, 'parsed')
        except (ValueError, struct.error, IndexError):
            check('fixture_malformed', True)


harness.main()
