"""A full disk: the database lives on a small tmpfs the test mounts; mail
that no longer fits gets 452 (or 451), everything acknowledged before is
still there, the node keeps serving, and takes mail again once there is
room."""
import base64
import os
import poplib
import smtplib
import subprocess
import tempfile

import harness
from harness import Node, check, test

PW = 'secret-pass'


def mailbox_count(n, user):
    p = poplib.POP3('127.0.0.1', n.port('pop3'), timeout=20)
    try:
        p.user(user)
        p.pass_(PW)
        return len(p.list()[1])
    finally:
        p.quit()


@test
def disk_full_refuses_and_keeps_accepted_mail():
    if os.geteuid() != 0:
        check('disk_full_needs_root', False, 'mounting a tmpfs needs root')
        return
    mnt = tempfile.mkdtemp(prefix='mailnode-full-')
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt], capture_output=True)
    if r.returncode != 0:
        check('tmpfs_mounted', False, r.stderr.decode())
        return
    try:
        # ballast the administrator can remove to make room later
        ballast = os.path.join(mnt, 'ballast')
        with open(ballast, 'wb') as f:
            f.write(b'\0' * (1024 * 1024))
        with Node(conf={'database': os.path.join(mnt, 'mailnode.db'), 'keyfile': os.path.join(mnt, 'key')}) as n:
            rc, out, err = n.cli('user', 'add', 'alice', input=PW + '\n')
            check('user_added', rc == 0, err)
            codes = []
            for i in range(60):
                body = base64.b64encode(os.urandom(60000))       # does not compress
                lines = b'\r\n'.join(body[k:k + 76] for k in range(0, len(body), 76))
                msg = b'Subject: filler %d\r\n\r\n' % i + lines + b'\r\n'
                s = smtplib.SMTP('127.0.0.1', n.port('smtp'), timeout=30)
                try:
                    s.sendmail('x@remote.test', ['alice@example.test'], msg)
                    codes.append(250)
                except smtplib.SMTPDataError as e:
                    codes.append(e.smtp_code)
                except smtplib.SMTPException as e:
                    codes.append(getattr(e, 'smtp_code', -1))
                finally:
                    try:
                        s.quit()
                    except (smtplib.SMTPException, OSError):
                        pass
                if codes[-1] != 250 and codes.count(250) and len([c for c in codes if c != 250]) >= 3:
                    break
            accepted = codes.count(250)
            refused = [c for c in codes if c != 250]
            harness.diag('disk full: %d accepted, then %s' % (accepted, refused[:5]))
            check('some_accepted', accepted > 0, codes)
            check('refused_with_452_or_451', refused and all(c in (452, 451) for c in refused), codes)
            check('no_acknowledged_message_lost', mailbox_count(n, 'alice') == accepted,
                  (mailbox_count(n, 'alice'), accepted))
            with n.raw() as c:
                check('still_serving', c.recv_reply().code == 220)
            # room again: the administrator removes something, new mail is taken
            os.unlink(ballast)
            s = smtplib.SMTP('127.0.0.1', n.port('smtp'), timeout=30)
            try:
                r = s.sendmail('x@remote.test', ['alice@example.test'], b'Subject: small\r\n\r\nfits again\r\n')
                check('accepts_again_after_space_freed', r == {}, r)
            except smtplib.SMTPException as e:
                check('accepts_again_after_space_freed', False, e)
            finally:
                s.quit()
    finally:
        subprocess.run(['umount', '-l', mnt])
        os.rmdir(mnt)


@test
def bdat_disk_full_answers_452():
    """RFC 3030 chunks that no longer fit get 452 4.3.1, as DATA does."""
    if os.geteuid() != 0:
        check('bdat_disk_full_needs_root', False, 'mounting a tmpfs needs root')
        return
    mnt = tempfile.mkdtemp(prefix='mailnode-full-')
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', mnt], capture_output=True)
    if r.returncode != 0:
        check('tmpfs_mounted', False, r.stderr.decode())
        return
    try:
        with Node(conf={'database': os.path.join(mnt, 'mailnode.db'), 'keyfile': os.path.join(mnt, 'key')}) as n:
            rc, out, err = n.cli('user', 'add', 'alice', input=PW + '\n')
            check('user_added', rc == 0, err)
            with n.raw() as c:
                c.recv_reply()
                c.cmd('EHLO client.test')
                check('mail_ok', c.cmd('MAIL FROM:<x@remote.test>').code == 250)
                check('rcpt_ok', c.cmd('RCPT TO:<alice@example.test>').code == 250)
                reply = None
                for i in range(80):                   # 80 x 64 KB: far more than fits
                    chunk = base64.b64encode(os.urandom(49152))    # 64 KB that do not compress
                    c.send(b'BDAT %d\r\n' % len(chunk) + chunk)
                    reply = c.recv_reply(timeout=30)
                    if reply.code != 250:
                        break
                harness.diag('bdat on a full disk: %s after %d chunks' % (reply and reply.text, i))
                check('bdat_full_is_452', reply is not None and reply.code == 452, reply and reply.text)
                check('bdat_full_is_431', reply is not None and '4.3.1' in reply.text, reply and reply.text)
                check('session_usable', c.cmd('RSET').code == 250)
    finally:
        subprocess.run(['umount', '-l', mnt])
        os.rmdir(mnt)


harness.main()
