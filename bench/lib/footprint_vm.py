"""Runs the ARM system that bench/footprint-system.sh prepared and reports
what its /init measured:

    python3 footprint_vm.py ARCH QEMU "MACHINE ARGS" KERNEL INITRD TIMEOUT CONSOLE_LOG BINARY...

The guest prints lines starting "FP " on its serial console (stdout of
qemu, copied to CONSOLE_LOG).  On "FP sessions NAME" this side opens the
50 SMTP sessions through qemu's hostfwd on 127.0.0.1, then connects to the
second forwarded port to tell the guest they are open; on "FP busy NAME"
it closes them.  Every wait is bounded by TIMEOUT for the whole run."""
import os
import select
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from footprint import SESSIONS, free_ports, sessions   # noqa: E402

GUEST_SMTP, GUEST_SIGNAL = 2525, 2600


def lines(proc, log, deadline):
    """Console lines of the guest until it exits or the deadline passes."""
    buf = b''
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        data = os.read(fd, 65536)
        if not data:
            break
        log.write(data)
        log.flush()
        buf += data
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            yield line.decode('utf-8', 'replace').strip('\r')


def signal_guest(port):
    """Tells the guest the sessions are open (its nc -l exits on a connect)."""
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
            s.sendall(b'go\n')
    except OSError:
        pass


def main():
    arch, qemu, machine, kernel, initrd, timeout, console = sys.argv[1:8]
    binaries = sys.argv[8:]
    sizes = {os.path.basename(b): os.path.getsize(b) for b in binaries}
    smtp, sig = free_ports(2)
    net = 'user,id=n0,hostfwd=tcp:127.0.0.1:%d-:%d,hostfwd=tcp:127.0.0.1:%d-:%d' % (
        smtp, GUEST_SMTP, sig, GUEST_SIGNAL)
    argv = ([qemu] + machine.split() +
            ['-m', '256', '-smp', '1', '-nodefaults', '-display', 'none', '-monitor', 'none',
             '-serial', 'stdio', '-no-reboot', '-kernel', kernel, '-initrd', initrd,
             '-append', 'console=ttyAMA0 panic=-1 quiet',
             '-netdev', net, '-device', 'virtio-net-pci,netdev=n0,romfile=',
             '-device', 'virtio-rng-pci'])
    start = time.monotonic()
    deadline = start + float(timeout)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    idle, busy, notes, mbed = {}, {}, [], None
    kernel_line, booted, socks, ended = None, None, [], False
    try:
        with open(console, 'wb') as log:
            for line in lines(proc, log, deadline):
                f = line.split()
                if not f or f[0] != 'FP':
                    continue
                if f[1] == 'kernel':
                    kernel_line, booted = f[2:], time.monotonic() - start
                elif f[1] == 'idle':
                    idle[f[2]] = [int(x) for x in f[3:8]]
                elif f[1] == 'sessions':
                    try:
                        socks = sessions(smtp, SESSIONS)
                    except OSError as e:
                        notes.append('%s: opening the sessions failed: %s' % (f[2], e))
                    signal_guest(sig)
                    # the guest may not have been listening yet: say it again
                    for _ in range(20):
                        ready, _, _ = select.select([proc.stdout], [], [], 5.0)
                        if ready:
                            break
                        signal_guest(sig)
                elif f[1] == 'busy':
                    busy[f[2]] = [int(x) for x in f[3:9]]
                    for s in socks:
                        s.close()
                    socks = []
                elif f[1] in ('fail', 'warn'):
                    notes.append(' '.join(f[2:]))
                elif f[1] == 'end':
                    ended = True
    finally:
        for s in socks:
            s.close()
        try:
            proc.wait(60 if ended else 1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not kernel_line:
        print('%s: the system did not boot within %s s; see %s' % (arch, timeout, console))
        return 1
    print('%s on a real kernel: Linux %s %s, %d MB RAM (%s, TCG; booted in %.0f s)'
          % (arch, kernel_line[0], kernel_line[1], int(kernel_line[2]) // 1024,
             qemu + ' ' + machine, booted))
    print('RSS: smaps_rollup, counted over the page tables; VmRSS and VmHWM: the kernel\'s counters')
    print('(Linux 6.1 adds a thread\'s faults to them in batches, so they may lag RSS by up to')
    print('64 pages); "50 sess": with %d SMTP sessions open past EHLO.' % SESSIONS)
    print('%-38s %9s %10s %10s %10s %10s %10s %11s %11s %10s'
          % ('build', 'size', 'idle RSS', 'idle PSS', 'anon', 'VmRSS', 'VmHWM',
             'RSS 50 sess', 'VmRSS 50', 'anon 50'))
    order = [os.path.basename(b) for b in binaries]
    for name in sorted(idle, key=lambda n: order.index(n) if n in order else len(order)):
        vmrss, hwm, rss, pss, anon = idle[name]
        b = busy.get(name)
        print('%-38s %9s %7d kB %7d kB %7d kB %7d kB %7d kB %8s kB %8s kB %7s kB%s'
              % (name, '%.2f MB' % (sizes.get(name, 0) / 1e6), rss, pss, anon, vmrss, hwm,
                 b[2] if b else '-', b[0] if b else '-', b[4] if b else '-',
                 '' if not b or b[5] >= SESSIONS else '  (only %d sessions established)' % b[5]))
        if name.endswith('-mbedtls'):
            mbed = (name, rss)
    if mbed:
        print('idle RSS of %s: %d kB = %.2f MiB = %.2f MB'
              % (mbed[0], mbed[1], mbed[1] / 1024.0, mbed[1] * 1024 / 1e6))
    for n in notes:
        print('  note: %s' % n)
    if not ended:
        print('  the run did not finish within %s s; see %s' % (timeout, console))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
