"""Measures what bench/footprint.sh built: python3 footprint.py OUT [TRIPLET...].

OUT/bin holds the binaries named ARCH-KIND-TLS (x86_64-static-mbedtls,
aarch64-linux-gnu-dynamic-openssl, ...) and ARCH-pause for the qemu
baseline.  See bench/footprint.sh for what is measured and how."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'proto'))
import harness                       # noqa: E402
from harness import free_ports, wait_until   # noqa: E402

OUT = BIN = None                     # set by main(); footprint_vm.py imports this
TRIPLETS = []
QEMU = {'aarch64-linux-gnu': 'qemu-aarch64-static', 'arm-linux-gnueabihf': 'qemu-arm-static'}
SESSIONS = 50
SETTLE = 3.0                        # seconds idle before reading RSS


def kb(pid, field):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rollup(pid, field):
    try:
        with open('/proc/%d/smaps_rollup' % pid) as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss(pid):
    return rollup(pid, 'Pss')


def file_rss(pid, path):
    """RSS of the mappings of file path (a binary's text and data)."""
    total, mine = 0, False
    try:
        with open('/proc/%d/smaps' % pid) as f:
            for line in f:
                head = line.split()
                if '-' in head[0] and ':' not in head[0]:
                    mine = len(head) >= 6 and os.path.realpath(head[5]) == os.path.realpath(path)
                elif mine and line.startswith('Rss:'):
                    total += int(head[1])
    except OSError:
        pass
    return total


def children(pid):
    out = []
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                with open('/proc/%s/stat' % d) as f:
                    if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def tree(pid):
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children(p))
    return seen


def port_open(port):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=0.5):
            return True
    except OSError:
        return False


def make_cert(d):
    cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
                    '-days', '2', '-subj', '/CN=localhost'],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def sessions(port, n):
    """n SMTP sessions past EHLO; an error if the server refuses one."""
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection(('127.0.0.1', port), timeout=30)
            socks.append(s)
            banner = s.recv(512)
            if not banner.startswith(b'220'):
                raise OSError('session %d refused: %r' % (i + 1, banner[:80]))
            s.sendall(b'EHLO bench.test\r\n')
            data = b''
            deadline = time.monotonic() + 30
            while b'250 ' not in data and time.monotonic() < deadline:
                more = s.recv(4096)
                if not more:
                    raise OSError('session %d closed after EHLO: %r' % (i + 1, data[:80]))
                data += more
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def mailnode(binary, qemu=None, tls=True, with_sessions=False):
    """(rss_kb, pss_kb, rss_50_kb or None, anon_kb, binary_file_kb) of an
    idle mailnode daemon."""
    d = tempfile.mkdtemp(prefix='mailnode-footprint-')
    try:
        smtp, sub, pop = free_ports(3)
        conf = os.path.join(d, 'mailnode.conf')
        with open(conf, 'w') as f:
            f.write('hostname = footprint.test\ndatabase = %s/mailnode.db\n'
                    'local_domains = example.test\nlisten.smtp = 127.0.0.1:%d\n'
                    'listen.submission = 127.0.0.1:%d\nlisten.pop3 = 127.0.0.1:%d\n'
                    'listen.odmr =\nlisten.imap =\n' % (d, smtp, sub, pop))
            if tls:
                cert, key = make_cert(d)
                f.write('tls.cert = %s\ntls.key = %s\n' % (cert, key))
        argv = ([qemu, binary] if qemu else [binary]) + ['-c', conf, 'run']
        log = open(os.path.join(d, 'log'), 'wb')
        p = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=d)
        try:
            if not wait_until(lambda: port_open(smtp), 60):
                raise RuntimeError('%s did not start: %s' % (binary, open(os.path.join(d, 'log')).read()))
            time.sleep(SETTLE)
            rss, ps = kb(p.pid, 'VmRSS'), pss(p.pid)
            anon, text = rollup(p.pid, 'Anonymous'), file_rss(p.pid, binary)
            rss50 = None
            if with_sessions:
                socks = sessions(smtp, SESSIONS)
                time.sleep(1.0)
                rss50 = kb(p.pid, 'VmRSS')
                for s in socks:
                    s.close()
            return rss, ps, rss50, anon, text
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def qemu_baseline(triplet):
    p = subprocess.Popen([QEMU[triplet], os.path.join(BIN, triplet + '-pause')])
    try:
        time.sleep(1.0)
        return kb(p.pid, 'VmRSS'), pss(p.pid)
    finally:
        p.kill()
        p.wait()


def postfix():
    """(idle sum, idle smtpd-less master, with 50 sessions sum, smtpd each) in kB."""
    pfi = os.path.join(ROOT, 'bench', 'lib', 'postfix-instance.sh')
    d = tempfile.mkdtemp(prefix='mailnode-footprint-pf-', dir='/var/tmp')
    os.chmod(d, 0o755)
    port, sink = free_ports(2)

    def sh(*args):
        subprocess.run(['bash', pfi] + list(args), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sh('create', d, str(port), str(sink))
        sh('start', d)
        with open(os.path.join(d, 'queue', 'pid', 'master.pid')) as f:
            master = int(f.read().split()[0])
        wait_until(lambda: port_open(port), 30)
        time.sleep(SETTLE)
        idle = tree(master)
        idle_sum = sum(kb(p, 'VmRSS') for p in idle)
        idle_pss = sum(pss(p) for p in idle)
        master_rss = kb(master, 'VmRSS')
        socks = sessions(port, SESSIONS)
        time.sleep(1.0)
        busy = tree(master)
        busy_sum = sum(kb(p, 'VmRSS') for p in busy)
        smtpd = [kb(p, 'VmRSS') for p in busy if b'smtpd' in open('/proc/%d/cmdline' % p, 'rb').read()]
        for s in socks:
            s.close()
        return idle_sum, idle_pss, master_rss, len(idle), busy_sum, smtpd
    finally:
        subprocess.run(['bash', pfi, 'destroy', d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dovecot():
    from dovecot import Dovecot
    dv = Dovecot()
    try:
        time.sleep(SETTLE)
        pids = dv.pids()
        return sum(kb(p, 'VmRSS') for p in pids), sum(pss(p) for p in pids), len(pids)
    finally:
        dv.close()


def size(name):
    p = os.path.join(BIN, name)
    return os.path.getsize(p) if os.path.exists(p) else None


def mb(n):
    return '%.2f MB' % (n / 1e6)


def main():
    global OUT, BIN, TRIPLETS
    OUT, TRIPLETS = sys.argv[1], sys.argv[2:]
    BIN = os.path.join(OUT, 'bin')
    print('mailnode footprint (%s; shared 2-core machine, other work running: '
          'sizes and RSS are not timing)' % time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
    print()
    print('RSS = anonymous memory + file pages; of the file pages, "binary" is the'
          ' mapped program itself (clean, shared with the page cache, reclaimable).')
    print('%-38s %9s %10s %10s %10s %10s %12s' % ('build', 'size', 'idle RSS', 'idle PSS', 'anon',
                                                 'binary', 'RSS 50 sess'))
    rows = {}
    estimates = []
    for name in ('x86_64-dynamic-openssl', 'x86_64-static-none', 'x86_64-static-mbedtls',
                 'x86_64-static-openssl'):
        if size(name) is None:
            continue
        tls = not name.endswith('-none')
        rss, ps, rss50, anon, text = mailnode(os.path.join(BIN, name), tls=tls, with_sessions=True)
        rows[name] = (rss, ps, anon)
        print('%-38s %9s %7d kB %7d kB %7d kB %7d kB %9d kB' % (name, mb(size(name)), rss, ps, anon,
                                                               text, rss50))
    for t in TRIPLETS:
        base_rss, base_pss = qemu_baseline(t)
        for kind in ('dynamic-openssl', 'static-none', 'static-mbedtls', 'static-openssl'):
            name = '%s-%s' % (t, kind)
            if size(name) is None:
                continue
            binary = os.path.join(BIN, name)
            # a dynamic build's loader and libraries come from /usr/TRIPLET
            os.environ['QEMU_LD_PREFIX'] = '/usr/' + t
            rss, ps, _, anon, text = mailnode(binary, qemu=QEMU[t], tls=not kind.endswith('-none'))
            native = rows.get('x86_64-' + kind)
            if native and kind.startswith('static'):
                estimates.append((name, text + native[2]))
            print('%-38s %9s  ~%5d kB  ~%5d kB %10s %7d kB %12s' % (name, mb(size(name)), rss - base_rss,
                                                                ps - base_pss, '-', text, '-'))
        print('%-38s %9s %7d kB %7d kB   (subtracted above)' % (t + ' qemu baseline', '', base_rss,
                                                              base_pss))
    if estimates:
        print()
        print('estimated idle RSS on the box: the binary\'s resident pages as qemu maps them')
        print('plus the anonymous memory of the same x86-64 build (same code, same libraries):')
        for name, est in estimates:
            print('  %-38s ~%d kB (%.2f MiB)' % (name, est, est / 1024.0))
    print()
    idle_sum = None
    try:
        idle_sum, idle_pss, master_rss, nproc, busy_sum, smtpd = postfix()
        print('Postfix (untuned, private instance): idle %d kB RSS over %d processes '
              '(PSS %d kB; master %d kB); with %d sessions %d kB over %d smtpd '
              '(smtpd %d kB each on average)'
              % (idle_sum, nproc, idle_pss, master_rss, SESSIONS, busy_sum, len(smtpd),
                 sum(smtpd) // max(1, len(smtpd))))
    except Exception as e:              # noqa: BLE001 - a missing anchor is reported, not fatal
        print('Postfix: not measured: %s' % e)
    try:
        dv_rss, dv_pss, dv_n = dovecot()
        print('Dovecot (IMAP, private instance): idle %d kB RSS over %d processes (PSS %d kB)'
              % (dv_rss, dv_n, dv_pss))
    except Exception as e:              # noqa: BLE001
        print('Dovecot: not measured: %s' % e)
    if idle_sum and 'x86_64-static-mbedtls' in rows:
        print()
        print('ratio: Postfix idle RSS (all processes) / mailnode x86_64-static-mbedtls idle RSS = %.1f'
              % (idle_sum / rows['x86_64-static-mbedtls'][0]))


if __name__ == '__main__':
    main()
