"""The daemon starts on a fresh database, speaks SMTP, and stops cleanly."""
import harness
from harness import Node, check, test


@test
def smtp_session():
    with Node() as n:
        with n.raw('smtp') as c:
            r = c.recv_reply()
            check('greeting_220', r.code == 220, r.raw)
            r = c.cmd('EHLO client.test')
            check('ehlo_250', r.code == 250, r.raw)
            r = c.cmd('QUIT')
            check('quit_221', r.code == 221, r.raw)
        check('sigterm_exit_0', n.stop() == 0, n.log()[-500:])


harness.main()
