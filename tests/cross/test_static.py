"""The static build (`make static TLS=mbedtls`, the boxes' build) where it
differs from the dynamic one: user and uid lookups.

A static glibc program that asks the C library's name services for a user
it does not find in /etc/passwd loads the host's NSS modules (systemd,
sss, ...), built for the shared C library, and crashes.  mailnode's static
build reads /etc/passwd itself.  tests/cross/run sets MAILNODE_BIN to
./mailnode-static; the smoke test also runs with it there.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'proto'))

import harness                                 # noqa: E402
from harness import BIN, Node, check, test    # noqa: E402

NO_SUCH_UID = 4242      # a uid with no /etc/passwd entry (checked below)


def uid_unknown(uid):
    with open('/etc/passwd') as f:
        return all(line.split(':')[2:3] != [str(uid)] for line in f if line.count(':') >= 2)


@test
def static_unknown_user_refused():
    n = Node(start=False, conf={'user': 'no-such-user-here'})
    try:
        try:
            n.start()
            check('static_unknown_user_refused', False, 'started')
        except RuntimeError as e:
            check('static_unknown_user_refused', 'no such user' in str(e) and 'status -' not in str(e),
                  str(e)[-300:])
    finally:
        n.close()


@test
def static_known_user_drop():
    n = Node(start=False, conf={'user': 'nobody'})
    try:
        os.chmod(n.dir, 0o777)
        n.start()
        with open('/proc/%d/status' % n.proc.pid) as f:
            uids = [l.split()[1:] for l in f if l.startswith('Uid:')][0]
        check('static_runs_as_nobody', all(u == '65534' for u in uids), uids)
    finally:
        n.close()


@test
def static_caller_without_passwd_entry():
    check('static_test_uid_unknown', uid_unknown(NO_SUCH_UID), NO_SUCH_UID)
    n = Node(start=False, conf={'user': 'nobody'})
    try:
        os.chmod(n.dir, 0o777)
        os.chmod(n.conf_path, 0o644)
        # `run` by a non-root caller looks up the caller's name to compare it
        # with `user`: a uid unknown to /etc/passwd must get the clear refusal.
        p = subprocess.run(['setpriv', '--reuid=%d' % NO_SUCH_UID, '--regid=%d' % NO_SUCH_UID,
                            '--clear-groups', BIN, '-c', n.conf_path, 'run'],
                           capture_output=True, text=True, timeout=30)
        check('static_run_unknown_uid_refused', p.returncode == 77 and 'needs the daemon started as root' in p.stderr,
              '%s %s' % (p.returncode, p.stderr[-300:]))
    finally:
        n.close()


harness.main()
