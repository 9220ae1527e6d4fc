"""A small SMTP server that takes mail and remembers it: the far end of
delivery tests.

    from sink import Sink

    with Sink() as s:                       # listening on 127.0.0.1, s.port
        ... configure a node with relayhost = 127.0.0.1:s.port, send mail ...
        s.wait_for(3, timeout=10)           # True once 3 messages arrived
        m = s.messages[0]                   # .mail_from .rcpts .data .via ...

Knobs (keyword arguments of Sink):
    host, port        where to listen (port 0: any free port)
    start             False: choose the port now, listen later with start()
    pipelining, eightbitmime, chunking, dsn, smtputf8, enhancedstatuscodes
                      which ESMTP extensions EHLO advertises (default: all
                      on except smtputf8); BDAT is refused unless chunking
    size              int: advertise SIZE and refuse bigger messages (552);
                      str: advertise "SIZE <str>" as it is (a broken peer), enforce nothing
    rcpt_replies      {address: "450 4.2.1 busy"}: forced replies to RCPT
                      TO for those addresses (lower case), or a callable
                      address -> reply string or None
    mail_reply        forced reply to every MAIL FROM, e.g. "421 4.3.2 go away"
    data_reply        forced final reply to message data, e.g. "451 4.3.0 later",
                      or a callable Message -> reply string or None
    data_delay        seconds to wait before answering message data (a slow
                      peer or a long link: deliveries spread out in time)
    drop_after_data   a set of message numbers (1-based, counted over the
                      sink's life) after whose data the connection is cut
                      instead of answered: the message is recorded in
                      `dropped`, not `messages` (the sender must retry)
    auth              (user, password): advertise AUTH PLAIN LOGIN and
                      require it for MAIL
    greeting          the 220 line's text; a string starting with a code
                      other than 220 ("554 no service") refuses sessions
    helo_name         name in the greeting and EHLO reply
    read_rate         octets per second the sink reads at most, through a
                      small receive buffer (a slow link); None: full speed

What it records (all lists are appended under a lock; read them freely):
    messages          Message tuples for accepted mail, in arrival order
    dropped           messages whose connection was cut after data
    sessions          Session objects: .peer .helo .commands .batches
                      (command lines grouped by the read that carried
                      them: pipelining shows as several per batch)
                      .messages .closed_by_client
    connections       how many connections were accepted

Every socket operation has a timeout; stop() closes everything and joins
the threads.  Run as a program (python3 sink.py --help) it serves on the
given address and writes one JSON line per accepted message to a file or
to stdout, for a sink in another network namespace.
"""

import base64
import collections
import json
import re
import socket
import sys
import threading
import time

Message = collections.namedtuple(
    'Message', 'mail_from rcpts data via mail_params rcpt_params session number')
Message.__doc__ = ('One accepted message: envelope sender ("" for <>), recipients '
                   '(list), data (bytes, dot-stuffing undone, CRLF), via ("DATA" '
                   'or "BDAT"), MAIL parameters (dict, upper-case keys), RCPT '
                   'parameters (list of dicts), session number, message number.')


def _header(data, name):
    """The first header field called name in data, unfolded, or None."""
    head = data.split(b'\r\n\r\n', 1)[0]
    for field in re.split(rb'\r\n(?![ \t])', head):
        key, sep, value = field.partition(b':')
        if sep and key.strip().lower() == name.lower().encode():
            return value.replace(b'\r\n', b'').strip().decode('latin-1')
    return None


Message.header = lambda m, name: _header(m.data, name)
Message.message_id = property(lambda m: _header(m.data, 'Message-ID'))


class Session:
    """What happened on one connection."""

    def __init__(self, number, peer):
        self.number = number
        self.peer = peer
        self.helo = None
        self.esmtp = False
        self.commands = []
        self.batches = []
        self.messages = []
        self.closed_by_client = False
        self.error = None


class _Closed(Exception):
    pass


_PARAM = re.compile(r'([A-Za-z0-9][A-Za-z0-9-]*)(?:=(\S*))?$')


def _params(text):
    out = {}
    for item in text.split():
        m = _PARAM.match(item)
        if not m:
            raise ValueError(item)
        out[m.group(1).upper()] = m.group(2) if m.group(2) is not None else True
    return out


def _path(arg, keyword):
    """'FROM:<a@b> SIZE=10' -> ('a@b', {'SIZE': '10'}); raises ValueError."""
    if not arg[:len(keyword) + 1].upper() == keyword + ':':
        raise ValueError(arg)
    rest = arg[len(keyword) + 1:].lstrip()
    if not rest.startswith('<') or '>' not in rest:
        raise ValueError(arg)
    end = rest.index('>')
    addr = rest[1:end]
    if ':' in addr and addr.startswith('@'):
        addr = addr.split(':', 1)[1]          # RFC 5321 C: drop a source route
    return addr, _params(rest[end + 1:])


class Sink:
    LINE_MAX = 4096
    IDLE_TIMEOUT = 120.0

    def __init__(self, host='127.0.0.1', port=0, start=True, pipelining=True,
                 eightbitmime=True, chunking=True, dsn=True, smtputf8=False,
                 enhancedstatuscodes=True, size=None, rcpt_replies=None,
                 mail_reply=None, data_reply=None, data_delay=0.0, drop_after_data=(), auth=None,
                 greeting=None, helo_name='sink.test', read_rate=None):
        self.host = host
        # octets per second the sink reads at most (a slow link), or None
        self.read_rate = read_rate
        self.pipelining = pipelining
        self.eightbitmime = eightbitmime
        self.chunking = chunking
        self.dsn = dsn
        self.smtputf8 = smtputf8
        self.enhancedstatuscodes = enhancedstatuscodes
        self.size = size
        self.rcpt_replies = rcpt_replies or {}
        self.mail_reply = mail_reply
        self.data_reply = data_reply
        self.data_delay = data_delay
        self.drop_after_data = set(drop_after_data)
        self.auth = auth
        self.greeting = greeting
        self.helo_name = helo_name
        self.messages = []
        self.dropped = []
        self.sessions = []
        self.connections = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._count = 0                 # messages seen (accepted + dropped)
        self._socks = set()
        self._threads = []
        self._listener = None
        self._stopping = False
        # Choose the port now so a node can be configured before the sink
        # is up ("queue mail while the relay is down").
        if port == 0:
            probe = socket.socket(self._family(), socket.SOCK_STREAM)
            try:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
            finally:
                probe.close()
        self.port = port
        if start:
            self.start()

    def _family(self):
        return socket.AF_INET6 if ':' in self.host else socket.AF_INET

    # --- life cycle --------------------------------------------------------

    def start(self, timeout=5.0):
        """Listen (again, after stop()) on the same port."""
        if self._listener is not None:
            return
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(self._family(), socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self.port))
                break
            except OSError:
                s.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        s.listen(64)
        s.settimeout(0.2)
        self._stopping = False
        self._listener = s
        t = threading.Thread(target=self._accept_loop, args=(s,), daemon=True)
        self._threads.append(t)
        t.start()

    def stop(self, timeout=5.0):
        """Stop listening and cut every open connection."""
        self._stopping = True
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        self._listener = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # --- waiting -----------------------------------------------------------

    def wait_for(self, n, timeout=10.0):
        """True once at least n messages were accepted (within timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def message_ids(self):
        """Message-ID of every accepted message, in arrival order."""
        with self._lock:
            return [m.message_id for m in self.messages]

    def recipients(self):
        """Every accepted recipient of every message, in arrival order."""
        with self._lock:
            return [r for m in self.messages for r in m.rcpts]

    # --- serving -----------------------------------------------------------

    def _accept_loop(self, listener):
        try:
            while not self._stopping:
                try:
                    conn, peer = listener.accept()
                except socket.timeout:
                    continue
                except OSError:
                    break
                if self.read_rate:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                with self._lock:
                    self.connections += 1
                    sess = Session(self.connections, peer)
                    self.sessions.append(sess)
                    self._socks.add(conn)
                t = threading.Thread(target=self._serve, args=(conn, sess), daemon=True)
                self._threads.append(t)
                t.start()
        finally:
            listener.close()

    def _serve(self, conn, sess):
        conn.settimeout(self.IDLE_TIMEOUT)
        try:
            _Conversation(self, conn, sess).run()
        except _Closed:
            pass
        except (OSError, ValueError) as e:
            sess.error = '%s: %s' % (type(e).__name__, e)
        finally:
            with self._lock:
                self._socks.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _record(self, msg, sess, dropped=False):
        with self._cond:
            if dropped:
                self.dropped.append(msg)
            else:
                self.messages.append(msg)
                sess.messages.append(msg)
            self._cond.notify_all()

    def _next_number(self):
        with self._lock:
            self._count += 1
            return self._count


class _Conversation:
    """One SMTP session (RFC 5321 server side, with RFC 3030 BDAT)."""

    def __init__(self, sink, conn, sess):
        self.sink = sink
        self.conn = conn
        self.sess = sess
        self.buf = b''
        self.out = []
        self._batch = []
        self.reset()
        self.authed = sink.auth is None

    def reset(self):
        self.mail_from = None
        self.mail_params = {}
        self.rcpts = []
        self.rcpt_params = []
        self.bdat = None                # bytes so far of a BDAT transfer
        self.bdat_failed = None         # reply for the rest of a refused BDAT transfer

    # --- I/O ---------------------------------------------------------------

    def _recv(self):
        if self.sink._stopping:
            raise _Closed()
        if self.sink.read_rate:
            # A slow link: a twentieth of the rate per 50 ms.
            time.sleep(0.05)
            chunk = self.conn.recv(max(1, self.sink.read_rate // 20))
        else:
            chunk = self.conn.recv(65536)
        if not chunk:
            self.sess.closed_by_client = not self.sink._stopping
            raise _Closed()
        self.buf += chunk
        # Commands parsed from here on arrived in this read.
        self._batch = []
        self.sess.batches.append(self._batch)

    def reply(self, text):
        self.out.append(text if text.endswith('\r\n') else text + '\r\n')

    def flush(self):
        if self.out:
            self.conn.sendall(''.join(self.out).encode('utf-8'))
            self.out = []

    def line(self):
        """The next command line (without CRLF); replies wait while more
        pipelined commands are already buffered (RFC 2920 3.2)."""
        while b'\n' not in self.buf:
            self.flush()
            if len(self.buf) > Sink.LINE_MAX:
                raise ValueError('command line too long')
            self._recv()
        raw, self.buf = self.buf.split(b'\n', 1)
        text = raw.rstrip(b'\r').decode('utf-8', 'replace')
        self.sess.commands.append(text)
        self._batch.append(text)
        return text

    def exactly(self, n):
        while len(self.buf) < n:
            self.flush()
            self._recv()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def data_lines(self):
        """DATA content up to the lone dot, dot-stuffing undone."""
        lines = []
        while True:
            while b'\r\n' not in self.buf:
                self.flush()
                self._recv()
            raw, self.buf = self.buf.split(b'\r\n', 1)
            if raw == b'.':
                return b''.join(lines)
            if raw.startswith(b'.'):
                raw = raw[1:]
            lines.append(raw + b'\r\n')

    # --- the session -------------------------------------------------------

    def run(self):
        s = self.sink
        greeting = s.greeting or '220 %s ESMTP sink' % s.helo_name
        if not greeting[:3].isdigit():
            greeting = '220 ' + greeting
        self.reply(greeting)
        if not greeting.startswith('220'):
            self.flush()
            while True:                     # RFC 5321 3.1: 554, then only QUIT
                cmd = self.line()
                if cmd.upper().startswith('QUIT'):
                    self.reply('221 2.0.0 bye')
                    self.flush()
                    return
                self.reply('503 5.5.1 no service')
        while True:
            cmd = self.line()
            verb, _, arg = cmd.partition(' ')
            verb = verb.upper()
            handler = getattr(self, 'cmd_' + verb.replace('-', '_'), None)
            if handler is None:
                self.reply('500 5.5.2 unknown command')
                continue
            if handler(arg.strip()) == 'quit':
                self.flush()
                return

    def ext(self):
        s = self.sink
        exts = []
        if s.pipelining:
            exts.append('PIPELINING')
        if s.size is not None:
            exts.append('SIZE %s' % s.size)
        if s.eightbitmime:
            exts.append('8BITMIME')
        if s.chunking:
            exts.append('CHUNKING')
        if s.dsn:
            exts.append('DSN')
        if s.smtputf8:
            exts.append('SMTPUTF8')
        if s.enhancedstatuscodes:
            exts.append('ENHANCEDSTATUSCODES')
        if s.auth:
            exts.append('AUTH PLAIN LOGIN')
        return exts

    def cmd_EHLO(self, arg):
        if not arg:
            self.reply('501 5.5.4 EHLO needs a domain')
            return
        self.sess.helo, self.sess.esmtp = arg, True
        self.reset()
        lines = ['%s greets %s' % (self.sink.helo_name, arg)] + self.ext()
        for i, text in enumerate(lines):
            self.reply('250%s%s' % (' ' if i == len(lines) - 1 else '-', text))

    def cmd_HELO(self, arg):
        if not arg:
            self.reply('501 5.5.4 HELO needs a domain')
            return
        self.sess.helo, self.sess.esmtp = arg, False
        self.reset()
        self.reply('250 %s' % self.sink.helo_name)

    def cmd_NOOP(self, arg):
        self.reply('250 2.0.0 ok')

    def cmd_RSET(self, arg):
        self.reset()
        self.reply('250 2.0.0 ok')

    def cmd_QUIT(self, arg):
        self.reply('221 2.0.0 bye')
        return 'quit'

    def cmd_VRFY(self, arg):
        self.reply('252 2.1.5 cannot verify')

    def cmd_AUTH(self, arg):
        if not self.sink.auth:
            self.reply('502 5.5.1 no AUTH here')
            return
        mech, _, initial = arg.partition(' ')
        mech = mech.upper()
        try:
            if mech == 'PLAIN':
                if not initial:
                    self.reply('334 ')
                    self.flush()
                    initial = self.line()
                parts = base64.b64decode(initial, validate=True).split(b'\0')
                user, password = parts[1].decode(), parts[2].decode()
            elif mech == 'LOGIN':
                if initial:
                    user = base64.b64decode(initial, validate=True).decode()
                else:
                    self.reply('334 VXNlcm5hbWU6')
                    self.flush()
                    user = base64.b64decode(self.line(), validate=True).decode()
                self.reply('334 UGFzc3dvcmQ6')
                self.flush()
                password = base64.b64decode(self.line(), validate=True).decode()
            else:
                self.reply('504 5.5.4 unknown mechanism')
                return
        except (ValueError, IndexError):
            self.reply('501 5.5.2 cannot decode')
            return
        if (user, password) == tuple(self.sink.auth):
            self.authed = True
            self.reply('235 2.7.0 authenticated')
        else:
            self.reply('535 5.7.8 bad credentials')

    def cmd_MAIL(self, arg):
        if self.sess.helo is None:
            self.reply('503 5.5.1 EHLO first')
            return
        if self.mail_from is not None:
            self.reply('503 5.5.1 nested MAIL')
            return
        if not self.authed:
            self.reply('530 5.7.0 authentication required')
            return
        try:
            addr, params = _path(arg, 'FROM')
        except ValueError:
            self.reply('501 5.5.4 syntax: MAIL FROM:<address>')
            return
        if self.sink.mail_reply:
            self.reply(self.sink.mail_reply)
            return
        size = params.get('SIZE')
        if isinstance(self.sink.size, int) and size not in (None, True) and size.isdigit() \
                and int(size) > self.sink.size:
            self.reply('552 5.3.4 message too big')
            return
        self.mail_from, self.mail_params = addr, params
        self.reply('250 2.1.0 sender ok')

    def cmd_RCPT(self, arg):
        if self.mail_from is None:
            self.reply('503 5.5.1 MAIL first')
            return
        try:
            addr, params = _path(arg, 'TO')
        except ValueError:
            self.reply('501 5.5.4 syntax: RCPT TO:<address>')
            return
        forced = self.sink.rcpt_replies
        forced = forced(addr) if callable(forced) else forced.get(addr.lower())
        if forced:
            self.reply(forced)
            return
        self.rcpts.append(addr)
        self.rcpt_params.append(params)
        self.reply('250 2.1.5 recipient ok')

    def _finish(self, data, via):
        """Data received: record it and queue the final reply, or cut the
        connection (drop_after_data)."""
        s = self.sink
        if s.data_delay:
            time.sleep(s.data_delay)
        number = s._next_number()
        msg = Message(self.mail_from, list(self.rcpts), data, via, dict(self.mail_params),
                      list(self.rcpt_params), self.sess.number, number)
        if number in s.drop_after_data:
            s._record(msg, self.sess, dropped=True)
            self.out = []
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise _Closed()
        forced = s.data_reply(msg) if callable(s.data_reply) else s.data_reply
        if isinstance(s.size, int) and len(data) > s.size:
            forced = '552 5.3.4 message too big'
        if forced:
            self.reply(forced)
        else:
            s._record(msg, self.sess)
            self.reply('250 2.0.0 accepted as message %d' % number)
        self.reset()

    def cmd_DATA(self, arg):
        if self.bdat is not None:
            self.reply('503 5.5.1 DATA after BDAT')
            return
        if self.mail_from is None:
            self.reply('503 5.5.1 MAIL first')
            return
        if not self.rcpts:
            self.reply('554 5.5.1 no valid recipients')
            return
        self.reply('354 end with <CRLF>.<CRLF>')
        self.flush()
        self._finish(self.data_lines(), 'DATA')

    def cmd_BDAT(self, arg):
        parts = arg.split()
        if not parts or not parts[0].isdigit() or len(parts) > 2 or \
                (len(parts) == 2 and parts[1].upper() != 'LAST'):
            self.reply('501 5.5.4 syntax: BDAT size [LAST]')
            return
        size, last = int(parts[0]), len(parts) == 2
        chunk = self.exactly(size)      # RFC 3030 3: read the chunk whatever happens
        if not self.sink.chunking:
            self.reply('502 5.5.1 BDAT not offered')
            return
        if self.bdat_failed or self.mail_from is None or not self.rcpts:
            self.reply(self.bdat_failed or '503 5.5.1 MAIL and RCPT first')
            if last:
                self.reset()
            return
        self.bdat = (self.bdat or b'') + chunk
        if not last:
            self.reply('250 2.0.0 %d octets received' % size)
            return
        self._finish(self.bdat, 'BDAT')


def main(argv):
    import argparse
    import signal
    p = argparse.ArgumentParser(description='SMTP sink: accepts mail and writes one JSON line per message.')
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=0)
    p.add_argument('--jsonl', help='append message records to this file (default: stdout)')
    p.add_argument('--no-pipelining', action='store_true')
    p.add_argument('--no-chunking', action='store_true')
    p.add_argument('--no-8bitmime', action='store_true')
    p.add_argument('--size', type=int)
    p.add_argument('--data-delay', type=float, default=0.0,
                   help='seconds to wait before answering message data')
    a = p.parse_args(argv)
    sink = Sink(a.host, a.port, pipelining=not a.no_pipelining, chunking=not a.no_chunking,
                eightbitmime=not a.no_8bitmime, size=a.size, data_delay=a.data_delay)
    out = open(a.jsonl, 'a') if a.jsonl else sys.stdout
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *x: done.set())
    signal.signal(signal.SIGINT, lambda *x: done.set())
    print('ready %d' % sink.port, flush=True)
    if a.jsonl:
        sys.stdout.close()
    written = 0
    while True:
        stopping = done.is_set()
        if stopping:
            sink.stop()
        else:
            sink.wait_for(written + 1, timeout=0.2)
        with sink._lock:
            fresh = sink.messages[written:]
        for m in fresh:
            out.write(json.dumps({'from': m.mail_from, 'rcpts': m.rcpts, 'size': len(m.data),
                                  'message_id': m.message_id, 'via': m.via,
                                  'session': m.session, 'number': m.number}) + '\n')
        written += len(fresh)
        out.flush()
        if stopping:
            break
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
