"""mailnode backup and restore: a consistent copy taken while the daemon
accepts mail, a backup killed with SIGKILL half-way, restores of databases
written by every earlier schema version, and a newer schema refused."""
import hashlib
import os
import poplib
import smtplib
import sqlite3
import subprocess
import threading
import time

import harness
from harness import Node, check, test, wait_until

DATA = os.path.join(harness.ROOT, 'tests', 'data')
PW = 'alice-pw'


def pop3_messages(n, user, pw):
    """{subject: full message bytes} of a mailbox, read over POP3."""
    p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=30 * harness.TIME_SCALE)
    out = {}
    try:
        p.user(user)
        p.pass_(pw)
        for i in range(1, len(p.list()[1]) + 1):
            lines = p.retr(i)[1]
            msg = b'\r\n'.join(lines) + b'\r\n'
            subj = next((l[9:].decode() for l in lines if l.startswith(b'Subject: ')), '')
            out[subj] = msg
    finally:
        p.quit()
    return out


def body_for(i):
    return ('Subject: m%04d\r\n\r\n' % i + ''.join('line %d of message %d\r\n' % (k, i) for k in range(40))).encode()


class Sender(threading.Thread):
    """Sends numbered messages to alice until stopped; records which got 250."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.acked, self.errors = port, [], []
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def run(self):
        i = 0
        while not self.halt.is_set() and i < 100000:
            try:
                s = smtplib.SMTP('127.0.0.1', self.port, timeout=30 * harness.TIME_SCALE)
                s.sendmail('carol@remote.test', ['alice@example.test'], body_for(i))
                s.quit()
                with self.lock:
                    self.acked.append(i)
            except Exception as e:       # noqa: BLE001 -- reported by the test
                self.errors.append('m%04d: %r' % (i, e))
            i += 1

    def acked_now(self):
        with self.lock:
            return list(self.acked)


def quick_check(path):
    db = sqlite3.connect(path)
    try:
        return db.execute('PRAGMA quick_check').fetchone()[0]
    finally:
        db.close()


def sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@test
def backup_while_accepting_mail():
    with Node() as n:
        rc, out, err = n.cli('user', 'add', 'alice', input=PW + '\n')
        check('backup_user_added', rc == 0, err)
        rc, out, err = n.cli('key', 'show')          # makes the bundle key pair
        check('backup_bundle_key_made', rc == 0, err)
        snd = Sender(n.port('smtp'))
        snd.start()
        try:
            wait_until(lambda: len(snd.acked_now()) >= 20, timeout=60 * harness.TIME_SCALE)
            before = set(snd.acked_now())
            bk = n.path('backup.db')
            # paced so that the copy spans many of the daemon's commits
            rc, out, err = n.cli('backup', '--rate', '256k', bk, timeout=120)
            after = set(snd.acked_now())
            check('backup_exit_0', rc == 0, err + out)
            check('backup_reports_key', 'node key copied' in out, out)
            check('daemon_acked_mail_during_backup', len(after) > len(before), '%d' % (len(after) - len(before)))
            wait_until(lambda: len(snd.acked_now()) >= len(after) + 5, timeout=30 * harness.TIME_SCALE)
        finally:
            snd.halt.set()
            snd.join(60)
        check('daemon_kept_accepting', not snd.errors and len(snd.acked_now()) > len(after),
              '%d errors: %s' % (len(snd.errors), snd.errors[:3]))
        check('backup_copy_checks_ok', quick_check(bk) == 'ok')
        check('backup_key_mode_0600', os.stat(bk + '.key').st_mode & 0o777 == 0o600)
        check('backup_key_is_node_key', sha(bk + '.key') == sha(n.db + '.key'))
        check('backup_bundle_key_copied', sha(bk + '.bundle-key') == sha(n.db + '.bundle-key')
              and os.stat(bk + '.bundle-key').st_mode & 0o777 == 0o600)
        check('backup_no_tmp_left', not os.path.exists(bk + '.tmp'))
        with Node(start=False, name='restored') as r:
            rc, out, err = r.cli('restore', bk)
            check('restore_exit_0', rc == 0, err + out)
            check('restore_installs_key', sha(r.db + '.key') == sha(bk + '.key'), out)
            check('restore_installs_bundle_key', sha(r.db + '.bundle-key') == sha(bk + '.bundle-key'), out)
            r.start()
            got = pop3_messages(r, 'alice', PW)
        nums = {int(s[1:]) for s in got if s.startswith('m')}
        missing = sorted(before - nums)
        check('every_message_acked_before_backup_restored', not missing, 'missing %s' % missing[:10])
        check('nothing_acked_after_backup_invented', nums <= after | set(range(max(after) + 2)),
              'unexpected %s' % sorted(nums - after)[:10])
        bad = [s for s, m in got.items() if s.startswith('m') and not m.endswith(body_for(int(s[1:])).split(b'\r\n\r\n', 1)[1])]
        check('restored_messages_byte_exact', not bad, 'differ: %s' % bad[:5])


def fill(n, count, size):
    """count incompressible messages of about size bytes, through sendmail."""
    for i in range(count):
        blob = os.urandom(size * 3 // 4).hex()[:size]
        body = '\n'.join(blob[k:k + 76] for k in range(0, len(blob), 76))
        rc, out, err = n.cli('sendmail', 'alice@example.test',
                             input='Subject: big %d\n\n%s\n' % (i, body), timeout=120)
        if rc != 0:
            return err
    return None


@test
def backup_killed_half_way_leaves_old_backup_and_database():
    with Node() as n:
        n.cli('user', 'add', 'alice', input=PW + '\n')
        err = fill(n, 6, 1 << 20)
        check('filled', err is None, err)
        bk = n.path('nightly.db')
        rc, out, err = n.cli('backup', bk, timeout=120)
        check('first_backup', rc == 0, err)
        first = sha(bk)
        # more mail, then a slow backup killed in the middle
        n.cli('sendmail', 'alice@example.test', input='Subject: after first\n\nx\n')
        p = subprocess.Popen([harness.BIN, '-c', n.conf_path, 'backup', '--rate', '1M', bk],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            started = wait_until(lambda: os.path.exists(bk + '.tmp') and os.path.getsize(bk + '.tmp') > 0,
                                 timeout=30 * harness.TIME_SCALE)
            still_running = p.poll() is None
            p.kill()
        finally:
            p.wait(30)
        check('backup_was_half_way_when_killed', started and still_running,
              'tmp=%s running=%s' % (started, still_running))
        check('earlier_backup_untouched', sha(bk) == first)
        check('live_database_checks_ok', quick_check(n.db) == 'ok')
        s = n.smtp()
        try:
            s.sendmail('carol@remote.test', ['alice@example.test'], b'Subject: after kill\r\n\r\nx\r\n')
            accepted = True
        except smtplib.SMTPException as e:
            accepted = repr(e)
        finally:
            s.close()
        check('daemon_accepts_after_killed_backup', accepted is True, accepted)
        rc, out, err = n.cli('backup', bk, timeout=120)
        check('backup_again_after_kill', rc == 0 and not os.path.exists(bk + '.tmp'), err)
        with Node(start=False, name='restored') as r:
            rc, out, err = r.cli('restore', bk)
            check('restore_after_kill', rc == 0, err)
            r.start()
            got = pop3_messages(r, 'alice', PW)
        want = {'big %d' % i for i in range(6)} | {'after first', 'after kill'}
        check('restored_all_messages', want <= set(got), 'have %s' % sorted(got))


@test
def restore_refused_while_daemon_runs():
    with Node() as n:
        bk = n.path('b.db')
        rc, out, err = n.cli('backup', '--no-key', bk)
        check('backup_no_key', rc == 0 and not os.path.exists(bk + '.key'), err + out)
        rc, out, err = n.cli('restore', bk)
        check('restore_while_running_is_75', rc == 75, 'rc=%d' % rc)
        check('restore_while_running_says_stop', 'stop the daemon first' in err, err)


@test
def newer_schema_refused():
    with Node() as n:
        n.cli('user', 'add', 'alice', input=PW + '\n')
        n.cli('sendmail', 'alice@example.test', input='Subject: keep me\n\nx\n')
        bk = n.path('b.db')
        rc, out, err = n.cli('backup', bk)
        check('backup_for_downgrade', rc == 0, err)
        db = sqlite3.connect(bk)
        mine = db.execute('PRAGMA user_version').fetchone()[0]
        db.execute('PRAGMA user_version=%d' % (mine + 1))
        db.commit()
        db.close()
        n.stop()
        before = sha(n.db)
        rc, out, err = n.cli('restore', bk)
        check('restore_newer_is_65', rc == 65, 'rc=%d %s' % (rc, err))
        check('restore_newer_says_why', 'newer than this mailnode' in err, err)
        check('restore_newer_leaves_database', sha(n.db) == before and not os.path.exists(n.db + '.restore'))
        # the daemon itself on a database from the future
        db = sqlite3.connect(n.db)
        db.execute('PRAGMA user_version=%d' % (mine + 1))
        db.commit()
        db.close()
        try:
            n.start()
            started = True
        except RuntimeError as e:
            started = str(e)
        check('daemon_refuses_newer_schema', started is not True and 'newer than this mailnode' in started,
              started)


def fixture_versions():
    return sorted(int(f[8:-4]) for f in os.listdir(DATA) if f.startswith('schema-v') and f.endswith('.sql'))


@test
def restore_from_every_earlier_schema():
    versions = fixture_versions()
    check('fixtures_present', versions[:3] == [1, 2, 3], versions)
    for v in versions:
        with Node(start=False, name='v%d' % v,
                  conf={'relayhost': '127.0.0.1:%d' % harness.free_ports(1)[0]}) as n:
            old = n.path('old.db')
            db = sqlite3.connect(old)
            with open(os.path.join(DATA, 'schema-v%d.sql' % v)) as f:
                db.executescript(f.read())
            db.close()
            rc, out, err = n.cli('restore', old)
            check('v%d_restore' % v, rc == 0, err + out)
            db = sqlite3.connect(n.db)
            now = db.execute('PRAGMA user_version').fetchone()[0]
            db.close()
            check('v%d_migrated' % v, now >= v and now >= versions[-1], 'schema %d' % now)
            rc, out, err = n.cli('queue', 'list')
            check('v%d_queue_kept' % v, 'dave@remote.test' in out and 'eve@site.test' in out, out + err)
            rc, out, err = n.cli('alias', 'list')
            check('v%d_alias_kept' % v, 'postmaster' in out, out + err)
            n.start()
            a = pop3_messages(n, 'alice', 'alice-pw')
            b = pop3_messages(n, 'bob', 'bob-pw')
            big = ''.join('line %05d of the big fixture message, long enough to span chunks\r\n' % i
                          for i in range(1, 2001)).encode()
            check('v%d_mailboxes' % v, {'fixture 1', 'fixture 2', 'fixture 3', 'fixture big'} <= set(a)
                  and 'fixture big' in b, '%s %s' % (sorted(a), sorted(b)))
            check('v%d_bodies_byte_exact' % v,
                  a.get('fixture big', b'').endswith(big) and b.get('fixture big', b'').endswith(big)
                  and a.get('fixture 2', b'').endswith(b'\r\n\r\nbody of message 2\r\n'))
            # and it still takes mail
            s = n.smtp()
            try:
                s.sendmail('x@remote.test', ['bob@example.test'], b'Subject: new\r\n\r\nnew\r\n')
            finally:
                s.close()
            check('v%d_accepts_new_mail' % v, 'new' in pop3_messages(n, 'bob', 'bob-pw'))


harness.main()
