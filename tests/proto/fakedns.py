"""A small authoritative-looking DNS server for protocol tests.

Serves UDP and TCP on 127.0.0.1 (the same random port for both) from a
background thread, standard library only.  Point the node at it with
`resolver = 127.0.0.1:PORT` (see FakeDNS.resolver).

    from fakedns import FakeDNS

    records = {
        'example.test':   {'MX': [(10, 'mx1.example.test'), (20, 'mx2.example.test')]},
        'mx1.example.test': {'A': ['127.0.0.1'], 'AAAA': ['::1']},
        'mx2.example.test': {'A': ['127.0.0.2']},
        'implicit.test':  {'A': ['127.0.0.1']},          # no MX: implicit MX
        'nullmx.test':    {'MX': [(0, '.')]},            # RFC 7505 null MX
        'alias.test':     {'CNAME': 'example.test'},
        'broken.test':    'SERVFAIL',                    # or 'REFUSED', 'TIMEOUT' (no answer)
        'big.test':       {'A': ['127.0.0.9'], 'TC': True},  # UDP answers truncated
    }
    with FakeDNS(records) as dns:
        ... dns.port, dns.resolver ("127.0.0.1:PORT"), dns.queries ...

A hostile server, for the resolver's own tests: an entry may also carry

        'poison.test': {'A': ['127.0.0.1'],
                        'POISON': {'A': ['127.0.0.66']},   # what forgeries claim
                        'FORGE': ['id', 'question', 'type', 'port', 'addr']},
        'bad.test':    {'MALFORMED': 'ptr_loop'},   # or 'count_lies', 'rdlen',
                                                    # 'label_0x40', 'garbage', 'cut'
        'drop.test':   {'A': ['127.0.0.1'], 'TC': 'close'},  # or 'half'

FORGE sends, over UDP and before the real answer, one forged reply per
kind: the wrong query id, another question name, another type, the right
id and question but from another port of the same address ('port') or
from 127.0.0.2 ('addr'); each carries the POISON records.  MALFORMED
answers every question for the name with a damaged message that keeps the
query id and question, so that it reaches the parser.  TC 'close' reads
the TCP query and closes without an answer; 'half' sends the length and
half of the answer, then closes.

Names not in the table get NXDOMAIN; a listed name without records of the
asked type gets an empty NOERROR answer (NODATA).  CNAMEs are followed in
the answer (up to 8 hops); MX answers carry the A/AAAA of their exchanges
in the additional section when the table has them.  Names are matched
without regard to case; a trailing dot is ignored.  `queries` lists
(name, type, 'udp' or 'tcp') in arrival order.
"""

import ipaddress
import selectors
import socket
import struct
import threading

TYPES = {'A': 1, 'NS': 2, 'CNAME': 5, 'SOA': 6, 'MX': 15, 'TXT': 16, 'AAAA': 28}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {'NOERROR': 0, 'FORMERR': 1, 'SERVFAIL': 2, 'NXDOMAIN': 3, 'NOTIMP': 4, 'REFUSED': 5}


def _norm(name):
    return name.rstrip('.').lower()


def encode_name(name):
    """Uncompressed wire form of a dotted name ('' or '.' is the root)."""
    out = b''
    for label in _norm(name).split('.') if _norm(name) else []:
        raw = label.encode('ascii')
        if not 0 < len(raw) < 64:
            raise ValueError('bad label in %r' % name)
        out += bytes([len(raw)]) + raw
    return out + b'\0'


def decode_name(msg, off):
    """Returns (name, offset after the name); follows compression pointers
    backwards only."""
    labels, end, limit = [], None, off
    for _ in range(128):
        if off >= len(msg):
            raise ValueError('name runs past the end')
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise ValueError('cut pointer')
            target = (n & 0x3F) << 8 | msg[off + 1]
            if end is None:
                end = off + 2
            if target >= limit:
                raise ValueError('forward pointer')
            off = limit = target
            continue
        if n & 0xC0:
            raise ValueError('bad label type')
        if n == 0:
            return '.'.join(labels).lower(), (end if end is not None else off + 1)
        if off + 1 + n > len(msg):
            raise ValueError('label runs past the end')
        labels.append(msg[off + 1:off + 1 + n].decode('ascii', 'replace'))
        off += 1 + n
    raise ValueError('too many labels')


class FakeDNS:
    def __init__(self, records=None, host='127.0.0.1'):
        self.records = {}
        for name, value in (records or {}).items():
            self.records[_norm(name)] = value
        self.host = host
        self.queries = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._udp, self._tcp = self._bind(host)
        self.port = self._udp.getsockname()[1]
        # Forgeries leave from another port, and from another address.
        self._udp_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp_port.bind((host, 0))
        self._udp_addr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._udp_addr.bind(('127.0.0.2', 0))
        except OSError:
            self._udp_addr.close()
            self._udp_addr = None
        self.forged = 0         # forged replies sent
        self._thread = threading.Thread(target=self._serve, name='fakedns', daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------

    @property
    def resolver(self):
        return '%s:%d' % (self.host, self.port)

    def set(self, name, value):
        """Adds or replaces the records of one name while running."""
        with self._lock:
            self.records[_norm(name)] = value

    def stop(self):
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        self._udp.close()
        self._tcp.close()
        self._udp_port.close()
        if self._udp_addr:
            self._udp_addr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- sockets -----------------------------------------------------------

    @staticmethod
    def _bind(host):
        """A UDP and a TCP socket on the same free port."""
        last = None
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((host, 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((host, udp.getsockname()[1]))
                tcp.listen(16)
                return udp, tcp
            except OSError as e:
                last = e
                udp.close()
                tcp.close()
        raise OSError('fakedns: no port free for both UDP and TCP: %s' % last)

    def _serve(self):
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, 'udp')
        sel.register(self._tcp, selectors.EVENT_READ, 'tcp')
        while not self._stop.is_set():
            for key, _ in sel.select(0.1):
                try:
                    if key.data == 'udp':
                        data, peer = self._udp.recvfrom(4096)
                        for via, forged in self._forgeries(data):
                            sock = {'port': self._udp_port, 'addr': self._udp_addr}.get(via, self._udp)
                            if sock:
                                sock.sendto(forged, peer)
                                self.forged += 1
                        reply = self._answer(data, 'udp')
                        if reply:
                            self._udp.sendto(reply, peer)
                    else:
                        conn, _ = self._tcp.accept()
                        self._serve_tcp(conn)
                except OSError:
                    pass
        sel.close()

    def _serve_tcp(self, conn):
        conn.settimeout(2.0)
        try:
            while True:
                head = self._recv_exact(conn, 2)
                if not head:
                    return
                data = self._recv_exact(conn, struct.unpack('!H', head)[0])
                if data is None:
                    return
                reply = self._answer(data, 'tcp')
                if reply is None:
                    return
                early = self._tcp_close_early(data)
                if early == 'close':
                    return
                if early == 'half':
                    conn.sendall(struct.pack('!H', len(reply)) + reply[:len(reply) // 2])
                    return
                conn.sendall(struct.pack('!H', len(reply)) + reply)
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def _recv_exact(conn, n):
        buf = b''
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    # -- answers -------------------------------------------------------------

    @staticmethod
    def _rr(name, rtype, rdata):
        return encode_name(name) + struct.pack('!HHIH', rtype, 1, 300, len(rdata)) + rdata

    @staticmethod
    def _rdata(rtype, value):
        if rtype == 'A':
            return ipaddress.IPv4Address(value).packed
        if rtype == 'AAAA':
            return ipaddress.IPv6Address(value).packed
        if rtype == 'MX':
            pref, host = value
            return struct.pack('!H', pref) + encode_name(host)
        if rtype in ('CNAME', 'NS'):
            return encode_name(value)
        if rtype == 'TXT':
            raw = value.encode()
            return bytes([len(raw)]) + raw
        raise ValueError('fakedns: unsupported type %s' % rtype)

    def _values(self, entry, rtype):
        v = entry.get(rtype, [])
        if rtype == 'CNAME':
            return [v] if v else []
        return list(v)

    def _parse_query(self, data):
        """(qid, flags, qname, qtype, question bytes) of a query, or None."""
        if len(data) < 12:
            return None
        qid, flags, qd = struct.unpack('!HHH', data[:6])
        if flags & 0x8000 or qd != 1:
            return None
        try:
            qname, off = decode_name(data, 12)
        except ValueError:
            return None
        if off + 4 > len(data):
            return None
        qtype = struct.unpack('!H', data[off:off + 2])[0]
        return qid, flags, qname, qtype, data[12:off + 4]

    def _entry(self, qname):
        with self._lock:
            entry = self.records.get(qname)
        return entry if isinstance(entry, dict) else None

    def _tcp_close_early(self, data):
        q = self._parse_query(data)
        entry = q and self._entry(q[2])
        return entry.get('TC') if entry and entry.get('TC') in ('close', 'half') else None

    def _forgeries(self, data):
        """[(via, bytes)] to send before the real UDP answer."""
        q = self._parse_query(data)
        entry = q and self._entry(q[2])
        if not entry or not entry.get('FORGE'):
            return []
        qid, flags, qname, qtype, question = q
        poison = entry.get('POISON', {})
        want = TYPE_NAMES.get(qtype)

        def forged(rid, name, rtype):
            answers = [self._rr(name, rtype, self._rdata(want, v)) for v in self._values(poison, want)] \
                if want in poison else []
            head = struct.pack('!HHHHHH', rid, 0x8580 | (flags & 0x0100), 1, len(answers), 0, 0)
            return head + encode_name(name) + struct.pack('!HH', rtype, 1) + b''.join(answers)

        out = []
        for kind in entry['FORGE']:
            if kind == 'id':
                out.append(('main', forged(qid ^ 0x5555, qname, qtype)))
            elif kind == 'question':
                out.append(('main', forged(qid, 'forged.' + qname, qtype)))
            elif kind == 'type':
                out.append(('main', forged(qid, qname, 16)))
            elif kind in ('port', 'addr'):
                out.append((kind, forged(qid, qname, qtype)))
        return out

    def _malformed(self, kind, qid, flags, question, qtype):
        """A damaged answer that keeps the id and the question."""
        head = lambda an, ns=0, ar=0: struct.pack('!HHHHHH', qid, 0x8580 | (flags & 0x0100), 1, an, ns, ar)
        rd = b'\x7f\0\0\x01' if qtype != 28 else b'\0' * 15 + b'\x01'
        rtype = 28 if qtype == 28 else (15 if qtype == 15 else 1)
        if rtype == 15:
            rd = b'\0\x0a\xc0\x0c'
        fixed = lambda n: struct.pack('!HHIH', rtype, 1, 300, n)
        at = 12 + len(question)
        if kind == 'ptr_loop':          # the owner points at itself
            return head(1) + question + struct.pack('!H', 0xc000 | at) + fixed(len(rd)) + rd
        if kind == 'count_lies':        # five answers announced, one present
            return head(5, 2, 3) + question + b'\xc0\x0c' + fixed(len(rd)) + rd
        if kind == 'rdlen':             # RDLENGTH runs past the end
            return head(1) + question + b'\xc0\x0c' + fixed(200) + rd
        if kind == 'label_0x40':        # an obsolete extended label type
            return head(1) + question + b'\x41x\0' + fixed(len(rd)) + rd
        if kind == 'cut':               # cut inside the answer record
            return (head(1) + question + b'\xc0\x0c' + fixed(len(rd)) + rd)[:at + 5]
        return head(3) + question + bytes(range(7, 250, 3))   # garbage records

    def _answer(self, data, proto):
        """The reply to one query, or None to stay silent."""
        if len(data) < 12:
            return None
        qid, flags, qd = struct.unpack('!HHH', data[:6])
        if flags & 0x8000 or qd != 1:
            return None
        try:
            qname, off = decode_name(data, 12)
        except ValueError:
            return None
        if off + 4 > len(data):
            return None
        qtype, qclass = struct.unpack('!HH', data[off:off + 4])
        question = data[12:off + 4]
        with self._lock:
            self.queries.append((qname, TYPE_NAMES.get(qtype, str(qtype)), proto))
            entry = self.records.get(qname)
            records = self.records

        def reply(rcode, answers=(), additional=(), tc=False):
            fl = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode   # QR AA RD RA
            if tc:
                fl |= 0x0200
            head = struct.pack('!HHHHHH', qid, fl, 1, len(answers), 0, len(additional))
            return head + question + b''.join(answers) + b''.join(additional)

        if isinstance(entry, str):
            if entry.upper() == 'TIMEOUT':
                return None
            return reply(RCODES[entry.upper()])
        if entry is None:
            return reply(RCODES['NXDOMAIN'])
        if entry.get('MALFORMED'):
            return self._malformed(entry['MALFORMED'], qid, flags, question, qtype)
        if entry.get('TC') and proto == 'udp':
            return reply(0, tc=True)
        want = TYPE_NAMES.get(qtype)
        answers, additional = [], []
        name = qname
        for _ in range(9):
            cur = records.get(name)
            if not isinstance(cur, dict):
                if cur is None and name != qname:
                    return reply(RCODES['NXDOMAIN'], answers)
                break
            if want and want != 'CNAME' and cur.get(want):
                for v in self._values(cur, want):
                    answers.append(self._rr(name, qtype, self._rdata(want, v)))
                break
            target = cur.get('CNAME')
            if not target or want == 'CNAME':
                if want == 'CNAME' and target:
                    answers.append(self._rr(name, 5, self._rdata('CNAME', target)))
                break
            answers.append(self._rr(name, 5, self._rdata('CNAME', target)))
            name = _norm(target)
        if want == 'MX':
            final = records.get(name)
            for pref, host in (self._values(final, 'MX') if isinstance(final, dict) else []):
                glue = records.get(_norm(host))
                if isinstance(glue, dict):
                    for t in ('A', 'AAAA'):
                        for v in self._values(glue, t):
                            additional.append(self._rr(host, TYPES[t], self._rdata(t, v)))
        return reply(0, answers, additional)


def query(port, name, qtype='A', proto='udp', host='127.0.0.1', timeout=3.0, qid=0x4242):
    """Asks one question; returns (rcode, tc, [(type, value)...]) of the
    answer section.  For tests of the fake server itself."""
    q = struct.pack('!HHHHHH', qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + \
        struct.pack('!HH', TYPES[qtype], 1)
    if proto == 'udp':
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        try:
            s.sendto(q, (host, port))
            data = s.recv(65535)
        finally:
            s.close()
    else:
        s = socket.create_connection((host, port), timeout)
        try:
            s.sendall(struct.pack('!H', len(q)) + q)
            n = struct.unpack('!H', FakeDNS._recv_exact(s, 2))[0]
            data = FakeDNS._recv_exact(s, n)
        finally:
            s.close()
    rid, flags, qd, an = struct.unpack('!HHHH', data[:8])
    assert rid == qid
    _, off = decode_name(data, 12)
    off += 4
    out = []
    for _ in range(an):
        _, off = decode_name(data, off)
        rtype, _, _, rdlen = struct.unpack('!HHIH', data[off:off + 10])
        off += 10
        rd = data[off:off + rdlen]
        tname = TYPE_NAMES.get(rtype, str(rtype))
        if tname == 'A':
            val = str(ipaddress.IPv4Address(rd))
        elif tname == 'AAAA':
            val = str(ipaddress.IPv6Address(rd))
        elif tname == 'MX':
            val = (struct.unpack('!H', rd[:2])[0], decode_name(data, off + 2)[0])
        elif tname == 'CNAME':
            val = decode_name(data, off)[0]
        else:
            val = rd
        out.append((tname, val))
        off += rdlen
    return flags & 0x0F, bool(flags & 0x0200), out
