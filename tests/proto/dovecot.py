"""A private Dovecot IMAP server for tests and benchmarks: its own config,
base_dir, state and maildirs under a temporary directory, one loopback
port, one user (alice); mail stored as uid 65534.  Needs root and the
dovecot-imapd package."""
import imaplib
import os
import shutil
import signal
import subprocess
import tempfile

import harness
from harness import wait_until

PASSWORD = 'correct horse 42'


class Dovecot:
    """A private Dovecot on a loopback port: its own config, base_dir,
    state and maildirs under a temporary directory; one user alice."""

    def __init__(self, password=PASSWORD, extra='', hashed=False):
        """hashed: store the password as Argon2id (as mailnode does), so
        that a login costs the same work on both servers."""
        self.password = password
        self.dir = tempfile.mkdtemp(prefix='mailnode-dovecot-')
        os.chmod(self.dir, 0o755)
        self.port = harness.free_ports(1)[0]
        for d in ('run', 'state', 'mail', 'home'):
            os.mkdir(os.path.join(self.dir, d))
        os.chmod(os.path.join(self.dir, 'mail'), 0o777)
        os.chmod(os.path.join(self.dir, 'home'), 0o777)
        with open(os.path.join(self.dir, 'passwd'), 'w') as f:
            if hashed:
                p = subprocess.run(['doveadm', 'pw', '-s', 'ARGON2ID', '-p', password],
                                   stdout=subprocess.PIPE, check=True, timeout=60)
                f.write('alice:%s\n' % p.stdout.decode().strip())
            else:
                f.write('alice:{PLAIN}%s\n' % password)
        self.conf = os.path.join(self.dir, 'dovecot.conf')
        with open(self.conf, 'w') as f:
            f.write(DOVECOT_CONF.replace('@DIR@', self.dir).replace('@PORT@', str(self.port)) + extra)
        subprocess.run(['dovecot', '-c', self.conf], check=True, timeout=30)
        if not wait_until(lambda: harness._port_open(self.port), timeout=10):
            raise RuntimeError('dovecot did not start: %s' % self.log())

    def log(self):
        try:
            with open(os.path.join(self.dir, 'dovecot.log')) as f:
                return f.read()[-2000:]
        except OSError:
            return ''

    def imap(self):
        m = imaplib.IMAP4('127.0.0.1', self.port, timeout=10)
        m.login('alice', self.password)
        return m

    def pids(self):
        """Every process of this instance (the master and its children)."""
        try:
            with open(os.path.join(self.dir, 'run', 'master.pid')) as f:
                master = int(f.read().strip())
        except (OSError, ValueError):
            return []
        out = [master]
        for d in os.listdir('/proc'):
            if d.isdigit():
                try:
                    with open('/proc/%s/stat' % d) as f:
                        if int(f.read().rsplit(')', 1)[1].split()[1]) == master:
                            out.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        return out

    def close(self):
        try:
            with open(os.path.join(self.dir, 'run', 'master.pid')) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not os.path.exists('/proc/%d' % pid), timeout=10)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


DOVECOT_CONF = '''
base_dir = @DIR@/run
state_dir = @DIR@/state
log_path = @DIR@/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:@DIR@/mail/%u
first_valid_uid = 100
passdb {
  driver = passwd-file
  args = @DIR@/passwd
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=@DIR@/home/%u
}
namespace inbox {
  inbox = yes
  separator = /
  mailbox Sent {
    special_use = \\Sent
    auto = create
  }
  mailbox Trash {
    special_use = \\Trash
    auto = create
  }
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = @PORT@
  }
  inet_listener imaps {
    port = 0
  }
}
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
'''
