"""`mailnode flush` and the control socket: what an operator and an
interface hook see, with and without a running daemon, and delivery runs
started by a flush (queued while the relay was down, then flushed to a
sink)."""
import os
import shutil
import signal
import socket
import stat
import subprocess
import time

import harness
from harness import BIN, Node, check, diag, test, wait_until
from sink import Sink

EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM = 69, 75, 77
NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']


def ctl_path(n):
    return n.db + '.ctl'


def ctl(n, request, timeout=5.0):
    """Sends one raw request line to the control socket; returns the whole
    answer (the daemon closes after it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(ctl_path(n))
        s.sendall(request)
        data = b''
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                # The daemon closed with part of an overlong request unread.
                break
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


def as_nobody(args, timeout=30):
    p = subprocess.run(NOBODY + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    return p.returncode, p.stdout.decode('utf-8', 'replace'), p.stderr.decode('utf-8', 'replace')


def queue_count(n):
    rc, out, err = n.cli('queue', 'count')
    return int(out.strip()) if rc == 0 and out.strip().isdigit() else None


def submit(n, count, rcpt='someone@remote.test', tag='m'):
    """count messages for a remote recipient, over SMTP; their Message-IDs."""
    ids = []
    c = n.smtp()
    try:
        for i in range(count):
            mid = '<%s-%d-%d@flush.test>' % (tag, i, os.getpid())
            c.sendmail('sender@example.test', [rcpt],
                       ('From: sender@example.test\r\nTo: %s\r\nMessage-ID: %s\r\n'
                        'Subject: %s %d\r\n\r\nbody %d\r\n' % (rcpt, mid, tag, i, i)).encode())
            ids.append(mid)
    finally:
        c.quit()
    return ids


# --- the control socket -------------------------------------------------------

@test
def no_daemon():
    with Node(start=False) as n:
        rc, out, err = n.cli('flush')
        check('no_daemon_exit_69', rc == EX_UNAVAILABLE, 'rc=%s %s' % (rc, err))
        check('no_daemon_message',
              'the daemon is not running (no control socket at %s); queued mail goes out when it starts'
              % ctl_path(n) in err, err)
        rc, out, err = n.cli('flush', '--wait')
        check('no_daemon_wait_exit_69', rc == EX_UNAVAILABLE, 'rc=%s %s' % (rc, err))


@test
def usage():
    with Node(start=False) as n:
        rc, out, err = n.cli('flush', '--help')
        check('help_exit_0', rc == 0 and 'usage: mailnode flush' in out, out + err)
        rc, out, err = n.cli('flush', '--bogus')
        check('bad_option_exit_64', rc == 64, 'rc=%s' % rc)
        rc, out, err = n.cli('flush', '--wait', '--timeout', 'soon')
        check('bad_timeout_exit_64', rc == 64 and 'duration' in err, 'rc=%s %s' % (rc, err))
        rc, out, err = n.cli('flush', 'bad domain\r\nPING')
        check('bad_domain_exit_64', rc == 64, 'rc=%s %s' % (rc, err))
        rc, out, err = n.cli('flush', 'a.test', 'b.test')
        check('two_domains_exit_64', rc == 64, 'rc=%s' % rc)


@test
def flush_with_daemon():
    with Node() as n:
        rc, out, err = n.cli('flush')
        check('flush_exit_0', rc == 0, 'rc=%s %s' % (rc, err))
        check('flush_says_requested', out.strip() == 'flush requested', repr(out))
        rc, out, err = n.cli('flush', 'Remote.Test')
        check('flush_domain_exit_0', rc == 0, 'rc=%s %s' % (rc, err))
        check('flush_logged', wait_until(lambda: 'flush requested for remote.test' in n.log(), 5),
              n.log()[-500:])


@test
def socket_mode():
    with Node() as n:
        st = os.lstat(ctl_path(n))
        check('ctl_is_socket', stat.S_ISSOCK(st.st_mode), oct(st.st_mode))
        check('ctl_mode_0600', stat.S_IMODE(st.st_mode) == 0o600, oct(stat.S_IMODE(st.st_mode)))
        check('ctl_owner_is_daemon_user', st.st_uid == os.geteuid(), st.st_uid)
        n.stop()
        check('ctl_removed_at_stop', not os.path.exists(ctl_path(n)), 'still there')


@test
def requests():
    with Node() as n:
        check('ping', ctl(n, b'PING\n') == b'PONG\n')
        check('ping_crlf', ctl(n, b'PING\r\n') == b'PONG\n')
        check('ping_no_newline_then_close', ctl_half_close(n, b'PING') == b'PONG\n')
        check('garbage', ctl(n, b'HELLO THERE\n') == b'ERR unknown request\n')
        check('binary_garbage', ctl(n, b'\x00\xff\x01\n').startswith(b'ERR'))
        check('lower_case_is_unknown', ctl(n, b'ping\n') == b'ERR unknown request\n')
        check('bad_domain', ctl(n, b'FLUSH a\x01b\n') == b'ERR bad domain\n')
        check('too_long', ctl(n, b'FLUSH ' + b'a' * 3000 + b'\n').startswith(b'ERR'))
        check('flush_ok', ctl(n, b'FLUSH\n') == b'OK\n')
        check('one_request_per_connection', ctl(n, b'PING\nPING\n') == b'PONG\n')
        # An idle client does not hold a slot for ever; the daemon lives on.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(ctl_path(n))
        try:
            check('still_serving_with_idle_client', ctl(n, b'PING\n') == b'PONG\n')
        finally:
            s.close()
        check('daemon_alive', n.running())


def ctl_half_close(n, data):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(ctl_path(n))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b''
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


@test
def nobody_refused():
    if not shutil.which('setpriv'):
        check('nobody_refused', False, 'setpriv not found (util-linux)')
        return
    with Node() as n:
        # The binary and the configuration must be reachable for uid 65534.
        os.chmod(n.dir, 0o755)
        os.chmod(n.conf_path, 0o644)
        rc, out, err = as_nobody([BIN, '-c', n.conf_path, 'flush'])
        check('nobody_fs_refused_exit_77', rc == EX_NOPERM, 'rc=%s %s' % (rc, err))
        check('nobody_fs_refused_message', 'permission denied' in err, err)
        # With the file mode widened by hand, the daemon still checks who
        # is calling (SO_PEERCRED).
        os.chmod(ctl_path(n), 0o666)
        rc, out, err = as_nobody([BIN, '-c', n.conf_path, 'flush'])
        check('nobody_peercred_refused_exit_77', rc == EX_NOPERM, 'rc=%s %s' % (rc, err))
        check('nobody_peercred_message', 'permission denied' in err, err)
        rc, out, err = as_nobody(['python3', '-c', (
            'import socket,sys\n'
            's=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n'
            'd=b""\n'
            'try:\n'
            '    s.sendall(b"PING\\n")\n'
            'except OSError: pass\n'
            'while True:\n'
            '    c=s.recv(100)\n'
            '    if not c: break\n'
            '    d+=c\n'
            'sys.stdout.write(d.decode())\n'), ctl_path(n)])
        check('nobody_raw_err_permission_denied', out == 'ERR permission denied\n', repr(out + err))
        check('refusal_logged', 'refused a client running as uid 65534' in n.log(), n.log()[-500:])
        rc, out, err = n.cli('flush')
        check('root_still_allowed', rc == 0, 'rc=%s %s' % (rc, err))


@test
def stale_socket():
    with Node() as n:
        n.kill9()
        check('stale_left_behind', os.path.exists(ctl_path(n)))
        n.start()
        check('restart_over_stale_socket', ctl(n, b'PING\n') == b'PONG\n')
        rc, out, err = n.cli('flush')
        check('flush_after_restart', rc == 0, 'rc=%s %s' % (rc, err))


@test
def control_path_taken():
    with Node(start=False) as n:
        with open(ctl_path(n), 'w') as f:
            f.write('not a socket\n')
        try:
            n.start()
            started = True
        except RuntimeError as e:
            started = False
            diag(str(e)[:300])
        check('not_a_socket_refuses_start', not started)
        check('not_a_socket_names_path', ctl_path(n) in n.log(), n.log()[-500:])
        check('not_a_socket_kept', open(ctl_path(n)).read() == 'not a socket\n')
    with Node() as a:
        with Node(start=False, name='second') as b:
            b.configure({'control': ctl_path(a)})
            try:
                b.start()
                started = True
            except RuntimeError:
                started = False
            check('socket_in_use_refuses_start', not started)
            check('socket_in_use_message', 'in use' in b.log(), b.log()[-500:])
        check('first_daemon_unharmed', ctl(a, b'PING\n') == b'PONG\n')


# --- delivery runs (need the scheduler) ------------------------------------------

def relay_node(sink, **extra):
    conf = {'relayhost': '127.0.0.1:%d' % sink.port, 'retry.initial': '1h', 'retry.max': '1h'}
    conf.update(extra)
    return Node(conf=conf, listeners=('smtp',))


def status_has_error(n):
    rc, out, err = n.cli('status')
    return 'last error' in out


@test
def flush_wait_delivers():
    sink = Sink(start=False)
    try:
        with relay_node(sink) as n:
            ids = submit(n, 5)
            check('queued_while_relay_down', wait_until(lambda: queue_count(n) == 5, 10),
                  'queue count %s' % queue_count(n))
            # The first attempt fails (connection refused): the destination
            # now waits an hour unless something resets it.
            wait_until(lambda: status_has_error(n), 10)
            sink.start()
            rc, out, err = n.cli('flush', '--wait', '--timeout', '60s', timeout=90)
            check('flush_wait_exit_0', rc == 0, 'rc=%s out=%r err=%r' % (rc, out, err))
            check('sink_got_all', sorted(sink.message_ids()) == sorted(ids),
                  '%d of %d' % (len(sink.messages), len(ids)))
            check('queue_empty_after_flush', queue_count(n) == 0, 'count %s' % queue_count(n))
            check('no_duplicates', len(sink.messages) == len(set(sink.message_ids())),
                  '%d messages, %d distinct' % (len(sink.messages), len(set(sink.message_ids()))))
            diag('flush --wait said: ' + out.strip())
    finally:
        sink.stop()


@test
def flush_wait_relay_down():
    sink = Sink(start=False)
    try:
        with relay_node(sink) as n:
            submit(n, 2, tag='down')
            wait_until(lambda: queue_count(n) == 2, 10)
            rc, out, err = n.cli('flush', '--wait', '--timeout', '60s', timeout=90)
            check('relay_down_exit_75', rc == EX_TEMPFAIL, 'rc=%s out=%r err=%r' % (rc, out, err))
            check('relay_down_still_queued', queue_count(n) == 2, 'count %s' % queue_count(n))
            check('relay_down_summary_printed', out.strip() != '', repr(out))
    finally:
        sink.stop()


@test
def flush_wait_timeout():
    # A relay that accepts the connection and never greets: the run
    # outlasts the client's --timeout.
    quiet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    quiet.bind(('127.0.0.1', 0))
    quiet.listen(16)
    port = quiet.getsockname()[1]
    try:
        with Node(conf={'relayhost': '127.0.0.1:%d' % port, 'retry.initial': '1h'},
                  listeners=('smtp',)) as n:
            submit(n, 1, tag='slow')
            t0 = time.monotonic()
            rc, out, err = n.cli('flush', '--wait', '--timeout', '2s', timeout=60)
            took = time.monotonic() - t0
            check('timeout_exit_69', rc == EX_UNAVAILABLE, 'rc=%s %s' % (rc, err))
            check('timeout_bounded', took < 10, '%.1f s' % took)
            check('timeout_daemon_alive', n.running() and ctl(n, b'PING\n') == b'PONG\n')
    finally:
        quiet.close()


@test
def waiter_goes_away():
    quiet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    quiet.bind(('127.0.0.1', 0))
    quiet.listen(16)
    port = quiet.getsockname()[1]
    try:
        with Node(conf={'relayhost': '127.0.0.1:%d' % port, 'retry.initial': '1h'},
                  listeners=('smtp',)) as n:
            submit(n, 1, tag='gone')
            p = subprocess.Popen([BIN, '-c', n.conf_path, 'flush', '--wait'],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            check('waiter_gone_logged', wait_until(lambda: 'flush waiter went away' in n.log(), 5),
                  n.log()[-500:])
            check('waiter_gone_daemon_alive', n.running() and ctl(n, b'PING\n') == b'PONG\n')
    finally:
        quiet.close()


harness.main()
