"""Clock trouble: the wall clock of a field box steps by days (it booted
with a wrong clock, then NTP or GPS set it).  The daemon runs under
libfaketime, whose offset the test changes while it runs (the monotonic
clocks are left alone, as a real step leaves them): a step forward must not
expire or bounce the queue, a step back must not push retries days away,
and a restart with the clock behind must carry on where the node stopped."""
import os
import shutil
import tempfile

import harness
from harness import Node, check, test, wait_until
from sink import Sink

LIBS = ['/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1',
        '/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1',
        '/usr/lib/arm-linux-gnueabihf/faketime/libfaketime.so.1']
LIB = next((p for p in LIBS if os.path.exists(p)), None)


class FakeClock:
    """The daemon's (and its commands') wall clock: real time plus an
    offset read from a file at every clock call."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix='mailnode-clock-')
        self.file = os.path.join(self.dir, 'offset')
        self.set('+0')

    def set(self, offset):
        tmp = self.file + '.tmp'
        with open(tmp, 'w') as f:
            f.write(offset + '\n')
        os.rename(tmp, self.file)

    def env(self):
        e = {'LD_PRELOAD': LIB, 'FAKETIME_TIMESTAMP_FILE': self.file, 'FAKETIME_NO_CACHE': '1',
             'FAKETIME_DONT_FAKE_MONOTONIC': '1', 'FAKETIME_DONT_RESET': '1'}
        # A sanitizer build refuses a preloaded library ahead of its runtime
        # unless told that the order is intended.
        asan = os.environ.get('ASAN_OPTIONS', '')
        e['ASAN_OPTIONS'] = (asan + ':' if asan else '') + 'verify_asan_link_order=0'
        return e

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def start_faked(n, clock):
    saved = dict(os.environ)
    os.environ.update(clock.env())
    try:
        n.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def relay_node(sink, clock, extra):
    conf = {'relayhost': '127.0.0.1:%d' % sink.port, 'retry.initial': '2s', 'retry.max': '3s'}
    conf.update(extra)
    n = Node(conf=conf, start=False)
    rc, out, err = n.cli('user', 'add', 'carol', input='carol-pw\n')
    check('clock_user_added', rc == 0, err)
    start_faked(n, clock)
    return n


def send(n, subject):
    s = n.smtp()
    try:
        s.sendmail('carol@example.test', ['dave@remote.test'],
                   ('From: carol@example.test\r\nSubject: %s\r\n\r\nbody\r\n' % subject).encode())
    finally:
        s.close()


def deferred(n):
    return wait_until(lambda: 'connection refused' in n.log().lower() or 'deferred' in n.log(), timeout=20)


@test
def step_forward_does_not_expire_the_queue():
    if not LIB:
        check('faketime_installed', False, 'libfaketime not found: apt-get install faketime')
        return
    clock = FakeClock()
    sink = Sink(start=False)
    # Real time passes too (slowly under valgrind): the lifetime must be
    # long enough that the message cannot expire for real during the test.
    life = int(60 * harness.TIME_SCALE)
    n = relay_node(sink, clock, {'queue.lifetime': '%ds' % life})
    try:
        send(n, 'forward')
        check('forward_deferred_while_relay_down', deferred(n), n.log()[-1500:])
        clock.set('+3d')
        stepped = wait_until(lambda: 'stepped forward by 259' in n.log(), timeout=20)
        check('forward_step_noticed', stepped, n.log()[-1500:])
        # Longer than one expiry scan (every queue.lifetime/4): with
        # arrival times on the wall clock, the message would now be three
        # days old and expire.
        wait_until(lambda: 'status=expired' in n.log(), timeout=(life / 4 + 3) / harness.TIME_SCALE)
        check('forward_nothing_expired', 'status=expired' not in n.log() and 'bounced' not in n.log(),
              n.log()[-1500:])
        rc, out, err = n.cli('queue', 'count', env=clock.env())
        check('forward_still_queued', rc == 0 and out.strip().startswith('1'), out + err)
        sink.start()
        check('forward_delivered_once_relay_up', sink.wait_for(1, timeout=30 * harness.TIME_SCALE),
              n.log()[-1500:])
        p = n.pop3()
        try:
            p.user('carol')
            p.pass_('carol-pw')
            dsns = len(p.list()[1])
        finally:
            p.quit()
        check('forward_no_bounce_to_sender', dsns == 0, '%d messages for the sender' % dsns)
    finally:
        n.close()
        sink.stop()
        clock.close()


@test
def step_back_does_not_stall_retries():
    if not LIB:
        return
    clock = FakeClock()
    sink = Sink(start=False)
    n = relay_node(sink, clock, {})
    try:
        send(n, 'back')
        check('back_deferred_while_relay_down', deferred(n), n.log()[-1500:])
        clock.set('-3d')
        check('back_step_noticed', wait_until(lambda: 'stepped back by 259' in n.log(), timeout=20),
              n.log()[-1500:])
        sink.start()
        # With retry times on the wall clock the next try would be three
        # days away; retry.max is 3 s.
        check('back_retried_and_delivered', sink.wait_for(1, timeout=30 * harness.TIME_SCALE), n.log()[-2000:])
        # The offset is saved for the node's other processes.
        saved = wait_until(lambda: 'queue time is the wall clock +259' in n.log(), timeout=10)
        check('back_offset_saved', saved, n.log()[-1000:])
    finally:
        n.close()
        sink.stop()
        clock.close()


@test
def restart_with_clock_behind_carries_on():
    if not LIB:
        return
    clock = FakeClock()
    sink = Sink(start=False)
    n = relay_node(sink, clock, {})
    try:
        send(n, 'before restart')
        check('restart_deferred_while_relay_down', deferred(n), n.log()[-1500:])
        n.stop()
        # The box reboots with its clock two days behind (no RTC).
        clock.set('-2d')
        rc, out, err = n.cli('sendmail', '-f', 'carol@example.test', 'dave@remote.test',
                             input='Subject: queued while down\n\nx\n', env=clock.env())
        check('restart_sendmail_daemon_down', rc == 0, err)
        start_faked(n, clock)
        sink.start()
        check('restart_both_delivered', sink.wait_for(2, timeout=30 * harness.TIME_SCALE), n.log()[-2000:])
    finally:
        n.close()
        sink.stop()
        clock.close()


harness.main()
