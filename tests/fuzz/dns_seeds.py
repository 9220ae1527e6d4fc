#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/fuzz_dns.c into
tests/fuzz/corpus/fuzz_dns: DNS answers laid out the way real recursive
servers write them (every name compressed against the question, authority
and additional sections, CNAME chains, null MX, NXDOMAIN with an SOA) and
malformed ones (pointer loops, forward pointers, pointers past the end,
counts that lie, cuts, names over 255 bytes, 0x40/0x80 label types).

    tests/fuzz/dns_seeds.py [DIR]
"""

import os
import socket
import struct
import sys

A, NS, CNAME, SOA, MX, TXT, AAAA = 1, 2, 5, 6, 15, 16, 28


def name(n):
    out = b''
    for label in n.rstrip('.').split('.') if n.rstrip('.') else []:
        out += bytes([len(label)]) + label.encode()
    return out + b'\0'


def ptr(off):
    return struct.pack('>H', 0xc000 | off)


def header(qid=0x1234, flags=0x8180, qd=1, an=0, ns=0, ar=0, rcode=0):
    return struct.pack('>HHHHHH', qid, flags | rcode, qd, an, ns, ar)


def rr(owner, rtype, rdata, ttl=300):
    return owner + struct.pack('>HHIH', rtype, 1, ttl, len(rdata)) + rdata


def a(ip):
    return socket.inet_pton(socket.AF_INET6 if ':' in ip else socket.AF_INET, ip)


def question(qname, qtype):
    return name(qname) + struct.pack('>HH', qtype, 1)


def seeds():
    out = {}
    # A large provider's MX answer: five exchanges, compressed, with glue.
    q = question('example.com', MX)
    body, recs = b'', []
    for pref, host in [(5, 'mx1'), (10, 'mx2'), (10, 'mx3'), (20, 'alt1.mx'), (30, 'alt2.mx')]:
        recs.append(rr(ptr(12), MX, struct.pack('>H', pref) + name(host)[:-1] + ptr(12)))
    body = b''.join(recs)
    glue = rr(name('mx1.example.com'), A, a('192.0.2.1')) + rr(name('mx1.example.com'), AAAA, a('2001:db8::1'))
    out['mx_provider'] = header(an=5, ar=2) + q + body + glue
    # Through a CNAME, as recursive servers answer it.
    q = question('www.example.org', MX)
    out['mx_cname'] = (header(an=2) + q + rr(ptr(12), CNAME, name('mail.example.net')) +
                       rr(name('mail.example.net'), MX, struct.pack('>H', 10) + name('mx.example.net')))
    # RFC 7505 null MX; NXDOMAIN with the SOA in the authority section.
    q = question('nomail.example', MX)
    out['null_mx'] = header(an=1) + q + rr(ptr(12), MX, b'\0\0\0')
    soa = name('ns.example') + name('hostmaster.example') + struct.pack('>IIIII', 1, 7200, 900, 1209600, 300)
    out['nxdomain_soa'] = header(rcode=3, ns=1) + question('gone.example', MX) + rr(name('example'), SOA, soa)
    out['nodata'] = header(ns=1) + question('txt.example', MX) + rr(name('example'), SOA, soa)
    # A and AAAA answers, one through a two-hop chain.
    q = question('host.example', A)
    out['a_two'] = header(an=2) + q + rr(ptr(12), A, a('192.0.2.7')) + rr(ptr(12), A, a('192.0.2.8'))
    q = question('v6.example', AAAA)
    out['aaaa_chain'] = (header(an=3) + q + rr(ptr(12), CNAME, name('b.example')) +
                         rr(name('b.example'), CNAME, name('c.example')) +
                         rr(name('c.example'), AAAA, a('2001:db8::7')))
    # A CNAME loop, and a truncated answer.
    q = question('loop.example', A)
    out['cname_loop'] = (header(an=2) + q + rr(ptr(12), CNAME, name('loop2.example')) +
                         rr(name('loop2.example'), CNAME, name('loop.example')))
    out['truncated_tc'] = header(flags=0x8380) + question('big.example', A)
    # Malformed: a pointer to itself, forward, past the end, into the header.
    q = question('bad.example', A)
    at = 12 + len(q)
    out['ptr_self'] = header(an=1) + q + ptr(at) + struct.pack('>HHIH', A, 1, 300, 4) + a('192.0.2.9')
    out['ptr_forward'] = header(an=1) + q + ptr(at + 2) + name('x.example')[:0] + \
        struct.pack('>HHIH', A, 1, 300, 4) + a('192.0.2.9')
    out['ptr_past_end'] = header(an=1) + q + ptr(0x3fff) + struct.pack('>HHIH', A, 1, 300, 4) + a('192.0.2.9')
    out['ptr_header'] = header(an=1) + q + ptr(2) + struct.pack('>HHIH', A, 1, 300, 4) + a('192.0.2.9')
    # Counts that lie; RDLENGTH past the end; an A of 5 bytes; cuts.
    good = header(an=1) + q + rr(ptr(12), A, a('192.0.2.9'))
    out['count_lies'] = header(an=7, ns=3, ar=9) + q + rr(ptr(12), A, a('192.0.2.9'))
    out['rdlen_past_end'] = good[:-6] + struct.pack('>H', 200) + good[-4:]
    out['a_five_bytes'] = header(an=1) + q + rr(ptr(12), A, a('192.0.2.9') + b'\0')
    out['cut_in_rr'] = out['mx_provider'][:60]
    out['cut_header'] = good[:7]
    # Names over 255 bytes, built from pointers, as owner and as exchange.
    q = question('long.example', MX)
    msg = header(an=1) + q
    prev = 12
    for _ in range(5):
        here = len(msg)
        msg += bytes([63]) + b'x' * 63 + ptr(prev)
        prev = here
    out['name_too_long'] = msg + rr(ptr(12), MX, b'\0\x0a' + ptr(prev))
    # Extended label types 0x40 and 0x80.
    q = question('label.example', A)
    out['label_0x40'] = header(an=1) + q + b'\x41x\0' + struct.pack('>HHIH', A, 1, 300, 4) + a('192.0.2.9')
    out['label_0x80'] = header(an=1) + q + b'\x81x\0' + struct.pack('>HHIH', A, 1, 300, 4) + a('192.0.2.9')
    # An exchange that is an address literal, and one that is ourselves.
    q = question('odd.example', MX)
    out['mx_literal'] = (header(an=2) + q + rr(ptr(12), MX, b'\0\x0a' + name('192.0.2.25')) +
                         rr(ptr(12), MX, b'\0\x14' + name('localhost')))
    return out


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'corpus', 'fuzz_dns')
    os.makedirs(d, exist_ok=True)
    for k, v in sorted(seeds().items()):
        with open(os.path.join(d, k), 'wb') as f:
            f.write(v)
    print('%d seeds in %s' % (len(seeds()), d))


if __name__ == '__main__':
    main()
