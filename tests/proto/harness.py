"""Helpers for protocol tests: run the real mailnode binary and talk to it.

A test script looks like this:

    import harness
    from harness import Node, check, test

    @test
    def greeting():
        with Node() as n:
            c = n.raw('smtp')
            r = c.recv_reply()
            check('greeting is 220', r.code == 220, r.text)

    harness.main()

Output follows the runner's convention: one "ok NAME" or "FAIL NAME: reason"
line per check. A @test function that raises prints a FAIL line named after
it; one that returns without calling check() prints "ok NAME". Anything
else (daemon logs, tracebacks) goes to stderr, prefixed with "#".

Environment: MAILNODE_BIN (default: ./mailnode at the repository root),
MAILNODE_TEST_KEEP=1 keeps the temporary directories for inspection,
MAILNODE_ONLY=name,name runs only the tests (functions) so named.
MAILNODE_VALGRIND=1 runs the daemon under valgrind (memcheck): its reports
land in the daemon's log, where the sanitizer scan turns them into FAILs,
and a definite leak makes the daemon exit with status 99.
MAILNODE_EMULATED=1 says MAILNODE_BIN runs under qemu-user (tests/cross/run):
waits are stretched as for a slow machine.  Node(bin=PATH) runs another
binary for one node (an x86 peer of an ARM node).
"""

import atexit
import collections
import os
import poplib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get('MAILNODE_BIN', os.path.join(ROOT, 'mailnode'))
KEEP = os.environ.get('MAILNODE_TEST_KEEP') == '1'
LISTENERS = ('smtp', 'submission', 'pop3', 'odmr', 'imap')
# Every listener kind; imaps (implicit TLS) only when a test asks for it.
ALL_KINDS = LISTENERS + ('imaps',)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
VALGRIND = os.environ.get('MAILNODE_VALGRIND') == '1'
VALGRIND_CMD = ['valgrind', '--error-exitcode=99', '--leak-check=full',
                '--errors-for-leak-kinds=definite', '-q']
# Waits are stretched by this factor where the daemon runs slower.
TIME_SCALE = 1.0
if VALGRIND:
    # Everything runs 10-50 times slower under valgrind.
    START_TIMEOUT = 60.0
    STOP_TIMEOUT = 120.0
    TIME_SCALE = 6.0
elif os.environ.get('MAILNODE_EMULATED') == '1':
    START_TIMEOUT = 30.0
    STOP_TIMEOUT = 30.0
    TIME_SCALE = 3.0

_passed = 0
_failed = 0
_tests = []
_nodes = []
_checks_in_test = None      # checks made by the running @test, or None


def diag(*lines):
    """Print diagnostic lines to stderr, where the runner does not count them."""
    for text in lines:
        for line in str(text).splitlines() or ['']:
            print('# ' + line, file=sys.stderr)
    sys.stderr.flush()


def _report(name, ok, detail=''):
    global _passed, _failed
    if ok:
        _passed += 1
        print('ok %s' % name, flush=True)
    else:
        _failed += 1
        detail = ' '.join(str(detail or 'check failed').split())
        if len(detail) > 300:
            detail = detail[:300] + '...'
        print('FAIL %s: %s' % (name, detail), flush=True)


def check(name, cond, detail=''):
    """Report one check; return whether it passed, so tests can stop early."""
    global _checks_in_test
    if _checks_in_test is not None:
        _checks_in_test += 1
    _report(name, bool(cond), detail)
    return bool(cond)


def test(fn):
    """Register a test function, run in order by main()."""
    _tests.append(fn)
    return fn


def add_user(n, name, pw):
    """`mailnode user add NAME` on node n with password pw; asserts it worked."""
    rc, out, err = n.cli('user', 'add', name, input=pw + '\n')
    assert rc == 0, err


def pop3_messages(n, user, pw, timeout=30):
    """Every message in user's mailbox on n, over POP3, as bytes with CRLF."""
    p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=timeout * TIME_SCALE)
    try:
        p.user(user)
        p.pass_(pw)
        out = []
        for i in range(1, len(p.list()[1]) + 1):
            out.append(b''.join(l + b'\r\n' for l in p.retr(i)[1]))
        return out
    finally:
        p.quit()


def queue_count(n):
    """`mailnode queue count` on n, or -1 when it fails."""
    rc, out, err = n.cli('queue', 'count')
    return int(out.strip()) if rc == 0 and out.strip().isdigit() else -1


def wait_until(pred, timeout=10.0, interval=0.05):
    """Poll pred() until it returns something true or timeout passes."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (all held open while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(('127.0.0.1', 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening(port):
    """Whether a socket listens on port, seen in /proc/net (no connection
    is made, so the daemon logs no session for the probe)."""
    for path in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == '0A' and int(fields[1].rsplit(':', 1)[1], 16) == port:
                        return True
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return False


def _port_open(port):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=0.5):
            return True
    except OSError:
        return False


SANITIZER_MARKS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer',
                   'runtime error:', 'WARNING: AddressSanitizer',
                   # valgrind: "==PID== Invalid read of size 4", ...
                   '== Invalid', '== Conditional jump', '== Syscall param',
                   '== Use of uninitialised', '== Mismatched free', 'definitely lost')


def sanitizer_report(text):
    """The first line of a sanitizer report in text, or None."""
    for line in text.splitlines():
        if any(mark in line for mark in SANITIZER_MARKS):
            return line.strip()
    return None


class LinkProxy:
    """A link on loopback: forwards 127.0.0.1:port to target_port, each
    octet delayed by `delay` seconds in either direction (a long link that
    holds whatever is in flight), the client's octets at most `rate` per
    second (a slow link: the sender meets push-back).  Every thread ends
    when the proxy is closed or after `life` seconds."""

    def __init__(self, target_port, rate=None, delay=0.0, life=300):
        self.target, self.rate, self.delay = target_port, rate, delay
        self.stop = threading.Event()
        self.deadline = time.monotonic() + life
        self.ls = socket.create_server(('127.0.0.1', 0))
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                c, _ = self.ls.accept()
            except OSError:
                continue
            try:
                u = socket.create_connection(('127.0.0.1', self.target), timeout=10)
            except OSError:
                c.close()               # the far end is down: so is the link
                continue
            for src, dst, rate in ((c, u, self.rate), (u, c, None)):
                q = collections.deque()
                ev = threading.Event()
                threading.Thread(target=self._read, args=(src, q, ev, rate), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, q, ev), daemon=True).start()

    def _live(self):
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def _read(self, src, q, ev, rate):
        src.settimeout(0.2)
        try:
            while self._live():
                try:
                    d = src.recv(4096 if rate else 65536)
                except socket.timeout:
                    continue
                q.append((time.monotonic() + self.delay, d))
                ev.set()
                if not d:
                    return
                if rate:
                    time.sleep(len(d) / rate)
        except OSError:
            q.append((0, b''))
            ev.set()

    def _write(self, dst, q, ev):
        try:
            while self._live():
                if not q:
                    ev.wait(0.2)
                    ev.clear()
                    continue
                due, d = q[0]
                if due > time.monotonic():
                    time.sleep(min(0.2, due - time.monotonic()))
                    continue
                q.popleft()
                if not d:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(d)
        except OSError:
            pass

    def close(self):
        self.stop.set()
        self.ls.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Node:
    """One mailnode daemon with its own temporary directory, config and database.

    conf: keys to add or override; a value of None removes the key.
    listeners: which of smtp, submission, pop3, odmr, imap, imaps get a free port; the
    others are set empty (disabled).
    """

    def __init__(self, conf=None, listeners=LISTENERS, start=True, name='node', bin=None):
        self.name = name
        self.bin = bin or BIN
        self.dir = tempfile.mkdtemp(prefix='mailnode-%s-' % name)
        self.conf_path = os.path.join(self.dir, 'mailnode.conf')
        self.log_path = os.path.join(self.dir, 'mailnode.log')
        self.db = os.path.join(self.dir, 'mailnode.db')
        self.proc = None
        self.ports = {}
        for kind, port in zip(listeners, free_ports(len(listeners))):
            self.ports[kind] = port
        self.conf = {
            'hostname': '%s.test' % name,
            'database': self.db,
            'local_domains': 'example.test',
            'relay_networks': '127.0.0.0/8',
        }
        for kind in ALL_KINDS:
            self.conf['listen.' + kind] = \
                '127.0.0.1:%d' % self.ports[kind] if kind in self.ports else ''
        self.configure(conf or {})
        _nodes.append(self)
        if start:
            self.start()

    # --- configuration -----------------------------------------------------

    def configure(self, changes):
        """Apply changes (None deletes a key) and rewrite the config file."""
        for key, value in changes.items():
            if value is None:
                self.conf.pop(key, None)
            else:
                self.conf[key] = str(value)
        with open(self.conf_path, 'w') as f:
            f.write('# written by tests/proto/harness.py\n')
            for key, value in self.conf.items():
                f.write('%s = %s\n' % (key, value))

    def port(self, kind='smtp'):
        return self.ports[kind]

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    # --- process control ---------------------------------------------------

    def start(self, timeout=START_TIMEOUT):
        """Start `mailnode -c CONF run`, wait until its SMTP port (or first
        listener) accepts connections. Raises RuntimeError on failure."""
        if self.running():
            raise RuntimeError('%s: already running' % self.name)
        env = dict(os.environ)
        env.pop('MAILNODE_CONF', None)
        log = open(self.log_path, 'ab')
        try:
            self.proc = subprocess.Popen(
                (VALGRIND_CMD if VALGRIND else []) + [self.bin, '-c', self.conf_path, 'run'],
                cwd=self.dir, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        # Every listener, not only the first: they are opened one after
        # the other, and a slow run (valgrind) shows the gap.
        waiting = list(self.ports.values())
        wait_port = waiting[0] if waiting else None
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc, self.proc = self.proc.returncode, None
                raise RuntimeError('%s: mailnode exited with status %s at startup; log:\n%s'
                                   % (self.name, rc, self.log()[-2000:]))
            wait_port = waiting[0]
            if _listening(wait_port):
                waiting.pop(0)
                continue
            time.sleep(0.05)
        if not waiting:
            return
        self.kill9()
        raise RuntimeError('%s: port %d not accepting connections after %.0f s; log:\n%s'
                           % (self.name, wait_port, timeout, self.log()[-2000:]))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit status
        (negative: killed by that signal) or None if it was not running.
        A slow stop, a non-zero status or a sanitizer report is a FAIL."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                _report('%s-stop' % self.name, False,
                        'no exit within %.0f s of SIGTERM, killed' % timeout)
                return proc.returncode
        rc = proc.returncode
        if rc != 0:
            _report('%s-exit' % self.name, False, 'mailnode exited with status %s' % rc)
            diag(self.log()[-3000:])
        self._scan_log()
        return rc

    def kill9(self):
        """SIGKILL, as in a power cut. Returns the exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._scan_log()
        return proc.returncode

    def restart(self, timeout=START_TIMEOUT):
        self.stop()
        self.start(timeout)

    def _scan_log(self):
        found = sanitizer_report(self.log())
        if found and not getattr(self, '_sanitizer_reported', False):
            self._sanitizer_reported = True
            _report('%s-sanitizer' % self.name, False, found)
            diag(self.log()[-6000:])

    def log(self):
        """Everything the daemon wrote to stderr (and stdout) so far."""
        try:
            with open(self.log_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''

    # --- clients -----------------------------------------------------------

    def cli(self, *args, input=None, timeout=60, binary=False, env=None):
        """Run `mailnode -c CONF ARGS...`; returns (rc, stdout, stderr), as
        str unless binary=True. input may be str or bytes."""
        e = dict(os.environ)
        e.pop('MAILNODE_CONF', None)
        e.update(env or {})
        if isinstance(input, str):
            input = input.encode()
        p = subprocess.run([self.bin, '-c', self.conf_path] + [str(a) for a in args],
                           input=input if input is not None else b'',
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           cwd=self.dir, env=e, timeout=timeout)
        found = sanitizer_report(p.stderr.decode('utf-8', 'replace'))
        if found:
            _report('cli-sanitizer', False, 'mailnode %s: %s' % (' '.join(map(str, args)), found))
            diag(p.stderr.decode('utf-8', 'replace')[-6000:])
        if binary:
            return p.returncode, p.stdout, p.stderr
        return (p.returncode, p.stdout.decode('utf-8', 'replace'),
                p.stderr.decode('utf-8', 'replace'))

    def raw(self, kind='smtp', timeout=10.0):
        """A raw client connected to listener kind (or a port number)."""
        port = kind if isinstance(kind, int) else self.ports[kind]
        return raw(port, timeout)

    def smtp(self, kind='smtp', timeout=10.0):
        import smtplib
        return smtplib.SMTP('127.0.0.1', self.ports[kind], timeout=timeout * TIME_SCALE)

    def pop3(self, timeout=10.0):
        import poplib
        return poplib.POP3('127.0.0.1', self.ports['pop3'], timeout=timeout * TIME_SCALE)

    def imap(self, timeout=10.0):
        import imaplib
        return imaplib.IMAP4('127.0.0.1', self.ports['imap'], timeout=timeout * TIME_SCALE)

    # --- cleanup -----------------------------------------------------------

    def close(self):
        """Stop the daemon (if running) and remove the temporary directory."""
        if self.proc is not None:
            self.stop()
        if self in _nodes:
            _nodes.remove(self)
        if KEEP:
            diag('%s: kept %s' % (self.name, self.dir))
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


Reply = collections.namedtuple('Reply', 'code lines raw')
Reply.text = property(lambda r: '\n'.join(r.lines))
Reply.__doc__ = 'One SMTP reply: code (int), lines (text after the code), raw bytes.'


class Raw:
    """A plain socket client for exact protocol tests. Every read has a timeout."""

    def __init__(self, port, timeout=10.0, host='127.0.0.1'):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout * TIME_SCALE)
        self.buf = b''

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError('timed out; received so far: %r' % self.buf[-500:])
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError('timed out; received so far: %r' % self.buf[-500:]) from None
        if not chunk:
            raise ConnectionError('connection closed; received so far: %r' % self.buf[-500:])
        self.buf += chunk

    def recv_until(self, marker, timeout=None):
        """Bytes up to and including marker; the rest stays buffered."""
        if isinstance(marker, str):
            marker = marker.encode()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout) * TIME_SCALE
        while marker not in self.buf:
            self._fill(deadline)
        i = self.buf.index(marker) + len(marker)
        data, self.buf = self.buf[:i], self.buf[i:]
        return data

    def recv_line(self, timeout=None):
        return self.recv_until(b'\r\n', timeout)

    def recv_reply(self, timeout=None):
        """One complete SMTP reply, multi-line ("250-...") included.
        Raises ValueError on a malformed line."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout) * TIME_SCALE
        raw_reply, lines, code = b'', [], None
        while True:
            line = self.recv_until(b'\r\n', max(0.0, deadline - time.monotonic()))
            raw_reply += line
            text = line[:-2].decode('utf-8', 'replace')
            if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in ' -'):
                raise ValueError('malformed reply line %r' % line)
            if code is None:
                code = int(text[:3])
            elif int(text[:3]) != code:
                raise ValueError('reply code changed within a reply: %r' % raw_reply)
            lines.append(text[4:])
            if len(text) == 3 or text[3] == ' ':
                return Reply(code, lines, raw_reply)

    def cmd(self, line, timeout=None):
        """Send one command line (CRLF added) and return its reply."""
        self.send(line.encode() + b'\r\n' if isinstance(line, str) else line + b'\r\n')
        return self.recv_reply(timeout)

    def closed(self, timeout=None):
        """True if the peer closes the connection within timeout (data before
        the close is discarded)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout) * TIME_SCALE
        try:
            while True:
                self._fill(deadline)
                self.buf = b''
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def raw(port, timeout=10.0):
    return Raw(port, timeout)


# --- running -------------------------------------------------------------------

def _cleanup():
    for node in list(_nodes):
        try:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
            node.proc = None
            node.close()
        except Exception:
            pass


atexit.register(_cleanup)


def _on_signal(signum, frame):
    # The runner's timeout sends SIGTERM: turn it into an exit so that
    # atexit stops the daemons and removes the temporary directories.
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def exit_code():
    return 1 if _failed else 0


def main():
    """Run the registered tests in order and exit with the right status."""
    global _checks_in_test
    if not os.access(BIN, os.X_OK):
        _report(os.path.basename(sys.argv[0]), False, '%s is not an executable: run make' % BIN)
        sys.exit(1)
    only = set(filter(None, os.environ.get('MAILNODE_ONLY', '').split(',')))
    for fn in _tests:
        if only and fn.__name__ not in only:
            continue
        _checks_in_test = 0
        before = list(_nodes)
        try:
            fn()
        except Exception as e:
            _report(fn.__name__, False, '%s: %s' % (type(e).__name__, e))
            diag(traceback.format_exc())
        else:
            if _checks_in_test == 0:
                _report(fn.__name__, True)
        finally:
            _checks_in_test = None
            # Nodes a test forgot to close must not leak into the next one;
            # nodes made outside the tests live until exit.
            for node in [n for n in _nodes if n not in before]:
                node.close()
    sys.stdout.flush()
    sys.exit(exit_code())
