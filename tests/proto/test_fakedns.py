"""The fake DNS server other protocol tests rely on (tests/proto/fakedns.py):
what it answers over UDP and TCP, so that a failure in a delivery test
points at the node and not at the fixture."""

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


harness.main()
