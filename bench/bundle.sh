#!/bin/bash
# bundle.sh - offline bundles against SMTP on the wire.
#
# Two mailnodes, A (field node) and B (its upstream), on loopback.  The
# same realistic text messages (headers with Received trace, 1-6 KB of
# prose) are moved from A to B twice: once as a bundle (export on A,
# import on B), once by SMTP (A relays to B through a byte-counting TCP
# proxy: both directions, the whole dialogue).  Printed: bytes per
# message each way and their ratio (goal < 0.5), export and import
# throughput, and the peak RSS of the importer on a large bundle
# (incompressible bodies, so the file really is that big).
#
# Environment knobs (defaults in brackets):
#   MSGS=2000        messages for the byte and throughput comparison
#   BIG_MB=256       raw size of the large bundle (1024 for the 1 GB case)
#   MAILNODE=./mailnode   binary (relative to the repository root)
#   BENCH_DIR=/var/tmp    where work directories are created
#
# The machine is shared (2 cores, other builds and tests running): the
# throughput figures vary from run to run; the byte counts do not.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export MSGS=${MSGS:-2000} BIG_MB=${BIG_MB:-256}
export MAILNODE=${MAILNODE:-$ROOT/mailnode} BENCH_DIR=${BENCH_DIR:-/var/tmp}
[ -x "$MAILNODE" ] || { echo "bundle.sh: $MAILNODE not built (make)" >&2; exit 2; }
exec python3 - <<'EOF'
import os, random, resource, shutil, smtplib, socket, subprocess, sys, tempfile, threading, time

BIN = os.environ['MAILNODE']
MSGS = int(os.environ['MSGS'])
BIG_MB = int(os.environ['BIG_MB'])
work = tempfile.mkdtemp(prefix='mailnode-bench-bundle-', dir=os.environ['BENCH_DIR'])
procs = []

def free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p

def node(name, domain, extra=''):
    d = os.path.join(work, name); os.mkdir(d)
    port = free_port()
    with open(os.path.join(d, 'c.conf'), 'w') as f:
        f.write('hostname = %s.test\ndatabase = %s/db\nlisten.smtp = 127.0.0.1:%d\nlisten.submission =\n'
                'listen.pop3 =\nlisten.imap =\nlocal_domains = %s\nrelay_networks = 127.0.0.0/8\nlog = stderr\n%s'
                % (name, d, port, domain, extra))
    return {'dir': d, 'conf': os.path.join(d, 'c.conf'), 'port': port}

def cli(n, *args, inp=None):
    p = subprocess.run([BIN, '-c', n['conf']] + list(args), input=inp, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if p.returncode:
        sys.exit('mailnode %s: %s' % (' '.join(args), p.stderr.decode()[-500:]))
    return p.stdout.decode()

def start(n):
    p = subprocess.Popen([BIN, '-c', n['conf'], 'run'], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(n['dir'], 'log'), 'w'))
    procs.append(p)
    for _ in range(200):
        try:
            socket.create_connection(('127.0.0.1', n['port']), 1).close(); return p
        except OSError:
            time.sleep(0.05)
    sys.exit('daemon did not start: ' + open(os.path.join(n['dir'], 'log')).read()[-500:])

def stop(p):
    p.terminate(); p.wait(30); procs.remove(p)

WORDS = ('the of and to in is that for it as was with be by on not he this are or his from at which but have '
         'an they you were her she there been one all we their has would when if so no will more can out '
         'field site supply water pump generator report weekly fuel battery solar panel crew truck road '
         'meeting schedule please attached update thanks regards tomorrow morning camp clinic samples').split()

def prose(rng, n):
    out, line = [], []
    while sum(len(x) + 1 for x in out) < n:
        line.append(rng.choice(WORDS))
        if len(' '.join(line)) > 66:
            out.append(' '.join(line)); line = []
            if rng.random() < 0.15:
                out.append('')
    return '\r\n'.join(out) + '\r\n'

def message(rng, i):
    date = time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime(1700000000 + i * 37))
    hdr = ('Received: from laptop%d.a.test ([10.0.0.%d])\r\n\tby a.test (mailnode) with ESMTPSA id Q%015d;\r\n\t%s\r\n'
           'From: Field User %d <user%d@a.test>\r\nTo: Office <office@b.test>\r\nSubject: %s\r\nDate: %s\r\n'
           'Message-ID: <%d.%d@a.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
           % (i % 7, i % 250, i, date, i % 5, i % 5, prose(rng, 30).strip(), date, i, os.getpid()))
    return hdr + prose(rng, rng.randint(1000, 6000))

def fill(n, msgs):
    errs = []
    def worker(k):
        try:
            s = smtplib.SMTP('127.0.0.1', n['port'], timeout=300)
            for i in range(k, len(msgs), 4):
                s.sendmail('user@a.test', ['office@b.test'], msgs[i].encode())
            s.quit()
        except Exception as e:
            errs.append(e)
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    [t.start() for t in ts]; [t.join() for t in ts]
    if errs:
        raise errs[0]

class Proxy(threading.Thread):
    """Counts every byte between A and B, both ways."""
    def __init__(self, target):
        super().__init__(daemon=True)
        self.s = socket.socket(); self.s.bind(('127.0.0.1', 0)); self.s.listen(16)
        self.port = self.s.getsockname()[1]; self.target = target; self.bytes = 0
        self.lock = threading.Lock()
    def pump(self, a, b):
        while True:
            try:
                d = a.recv(65536)
            except OSError:
                d = b''
            if not d:
                try: b.shutdown(socket.SHUT_WR)
                except OSError: pass
                return
            with self.lock:
                self.bytes += len(d)
            b.sendall(d)
    def run(self):
        while True:
            c, _ = self.s.accept()
            u = socket.create_connection(('127.0.0.1', self.target))
            threading.Thread(target=self.pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self.pump, args=(u, c), daemon=True).start()

def timed(cmd):
    """Runs cmd; returns (seconds, peak RSS in KiB of that child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    el = time.monotonic() - t
    if p.returncode:
        sys.exit('%s: %s' % (' '.join(cmd), p.stderr.decode()[-500:]))
    return el, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before

try:
    rng = random.Random(16)
    msgs = [message(rng, i) for i in range(MSGS)]
    raw = sum(len(m) for m in msgs)
    closed = free_port()
    a = node('a', 'a.test', 'relayhost = 127.0.0.1:%d\nretry.initial = 1h\n' % closed)
    b = node('b', 'b.test')
    cli(b, 'user', 'add', 'office', inp=b'secret\n')
    ka, kb = cli(a, 'key', 'show').strip(), cli(b, 'key', 'show').strip()
    cli(a, 'peer', 'add', 'up', '--key', kb); cli(b, 'peer', 'add', 'site', '--key', ka, '--domains', 'a.test')
    pa = start(a)
    fill(a, msgs)
    stop(pa)
    bundle = os.path.join(work, 'x.mnb')
    te, _, _ = timed([BIN, '-c', a['conf'], 'bundle', 'export', '--peer', 'up', '-o', bundle])
    bsize = os.path.getsize(bundle)
    # The import on a copy of B, so that B still has no mail for the SMTP run.
    b2 = node('b2', 'b.test')
    for suf in ('db', 'db-wal', 'db-shm', 'db.key', 'db.bundle-key'):
        if os.path.exists(os.path.join(b['dir'], suf)):
            shutil.copy2(os.path.join(b['dir'], suf), os.path.join(b2['dir'], suf))
    ti, _, _ = timed([BIN, '-c', b2['conf'], 'bundle', 'import', '--receipt-dir', work, bundle])
    # The same messages by SMTP, A to B through the counting proxy.
    pb = start(b)
    px = Proxy(b['port']); px.start()
    with open(a['conf'], 'a') as f:
        f.write('relayhost = 127.0.0.1:%d\nretry.initial = 5m\n' % px.port)
    pa = start(a)
    t0 = time.monotonic()
    cli(a, 'flush')                     # the closed relayhost's backoff is forgotten
    while time.monotonic() - t0 < 300:
        if cli(a, 'queue', 'count').strip() == '0':
            break
        time.sleep(0.5)
    else:
        sys.exit('SMTP relay did not finish: ' + open(os.path.join(a['dir'], 'log')).read()[-800:])
    tsmtp = time.monotonic() - t0
    stop(pa); stop(pb)
    smtp = px.bytes
    print('messages: %d, %.0f bytes of text each on average' % (MSGS, raw / MSGS))
    print('SMTP A->B on the wire (both directions, mailnode to mailnode): %d bytes, %.0f per message'
          % (smtp, smtp / MSGS))
    print('bundle: %d bytes, %.0f per message; ratio bundle/SMTP = %.3f (goal < 0.5)' % (bsize, bsize / MSGS, bsize / smtp))
    print('export: %.2f s, %.0f msg/s; import: %.2f s, %.0f msg/s; SMTP relay of the same: %.2f s, %.0f msg/s'
          % (te, MSGS / te, ti, MSGS / ti, tsmtp, MSGS / tsmtp))
    # Large bundle: incompressible bodies, BIG_MB raw.
    c = node('c', 'a.test', 'relayhost = 127.0.0.1:%d\nmessage_size_limit = 100M\n' % closed)
    d = node('d', 'b.test')
    cli(d, 'user', 'add', 'office', inp=b'secret\n')
    kc, kd = cli(c, 'key', 'show').strip(), cli(d, 'key', 'show').strip()
    cli(c, 'peer', 'add', 'up', '--key', kd); cli(d, 'peer', 'add', 'site', '--key', kc, '--domains', 'a.test')
    import base64
    pc = start(c)
    per = 4 << 20
    n_big = max(1, (BIG_MB << 20) // per)
    s = smtplib.SMTP('127.0.0.1', c['port'], timeout=600)
    for i in range(n_big):
        body = base64.encodebytes(os.urandom(per * 3 // 4)).replace(b'\n', b'\r\n')
        s.sendmail('user@a.test', ['office@b.test'], b'Subject: big %d\r\nMessage-ID: <big%d@a.test>\r\n\r\n' % (i, i) + body)
    s.quit()
    stop(pc)
    big = os.path.join(work, 'big.mnb')
    tbe, _, _ = timed([BIN, '-c', c['conf'], 'bundle', 'export', '--peer', 'up', '-o', big])
    p = subprocess.run(['/usr/bin/time', '-f', '%M %e', BIN, '-c', d['conf'], 'bundle', 'import',
                        '--receipt-dir', work, big], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rss_kb, tbi = p.stderr.decode().strip().split('\n')[-1].split()
    print('large bundle: %d MB file, %d messages; export %.1f s (%.1f MB/s), import %.1f s (%.1f MB/s), '
          'importer peak RSS %.1f MB' % (os.path.getsize(big) >> 20, n_big, tbe, (os.path.getsize(big) >> 20) / tbe,
                                         float(tbi), (os.path.getsize(big) >> 20) / float(tbi), int(rss_kb) / 1024))
    print('(2-core machine shared with other builds and tests: times vary between runs; byte counts do not)')
finally:
    for p in list(procs):
        p.kill(); p.wait()
    shutil.rmtree(work, ignore_errors=True)
EOF
