"""IMAP4rev1 server (RFC 3501 and the extensions announced) against the real
binary with python imaplib and raw sockets: login and SASL-IR, folders with
special-use, SELECT/EXAMINE/STATUS, FETCH items and sections byte for byte,
STORE, SEARCH, COPY/MOVE with COPYUID, APPEND with LITERAL+ and APPENDUID,
EXPUNGE/CLOSE/UNSELECT, IDLE seeing SMTP, sendmail and other sessions,
POP3 and IMAP sharing a mailbox both ways, UIDs across restarts, limits and
bad input."""
import base64
import imaplib
import os
import re
import socket
import subprocess
import time

import harness
from harness import Node, check, test, wait_until

PASSWORD = 'correct horse 42'
SENDER = 'bob@remote.test'
FAST = {'auth.fail_delay': '0'}


def new_node(conf=None, users=('alice',)):
    c = dict(FAST)
    c.update(conf or {})
    n = Node(conf=c)
    for u in users:
        rc, out, err = n.cli('user', 'add', u, input=PASSWORD + '\n')
        if rc != 0:
            raise RuntimeError('user add %s: %s %s' % (u, rc, err))
    return n


def deliver(n, body, rcpt='alice@example.test', sender=SENDER):
    s = n.smtp()
    try:
        s.sendmail(sender, [rcpt], body)
    finally:
        s.quit()


def message(i, extra=b''):
    return (b'From: Bob <bob@remote.test>\r\n'
            b'To: alice@example.test, "Carol C." <carol@example.test>\r\n'
            b'Subject: message %d\r\n'
            b'Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n'
            b'Message-ID: <m%d@remote.test>\r\n'
            b'\r\n'
            b'line one of %d\r\n'
            b'.a line starting with a dot\r\n'
            b'8-bit: \xc3\xa9t\xc3\xa9\r\n'
            b'last line\r\n' % (i, i, i)) + extra


MULTIPART = (b'From: Ann <ann@remote.test>\r\n'
             b'To: alice@example.test\r\n'
             b'Subject: parts\r\n'
             b'MIME-Version: 1.0\r\n'
             b'Content-Type: multipart/mixed; boundary="outer"\r\n'
             b'\r\n'
             b'preamble\r\n'
             b'--outer\r\n'
             b'Content-Type: text/plain; charset=utf-8\r\n'
             b'\r\n'
             b'first part\r\n'
             b'second line\r\n'
             b'--outer\r\n'
             b'Content-Type: message/rfc822\r\n'
             b'Content-Description: forwarded\r\n'
             b'\r\n'
             b'From: Dan <dan@remote.test>\r\n'
             b'Subject: inner\r\n'
             b'Content-Type: multipart/alternative; boundary=inner\r\n'
             b'\r\n'
             b'--inner\r\n'
             b'Content-Type: text/plain\r\n'
             b'\r\n'
             b'inner plain\r\n'
             b'--inner\r\n'
             b'Content-Type: text/html\r\n'
             b'Content-Transfer-Encoding: quoted-printable\r\n'
             b'\r\n'
             b'<p>inner html</p>\r\n'
             b'--inner--\r\n'
             b'\r\n'
             b'--outer\r\n'
             b'Content-Type: application/octet-stream; name="a.bin"\r\n'
             b'Content-Disposition: attachment; filename="a.bin"\r\n'
             b'Content-Transfer-Encoding: base64\r\n'
             b'\r\n'
             b'AAECAw==\r\n'
             b'--outer--\r\n'
             b'epilogue\r\n')


def login(n, user='alice'):
    m = n.imap()
    m.login(user, PASSWORD)
    return m


def fetch1(m, what, num='1', uid=False):
    """The data of a one-message FETCH as bytes (literal contents joined)."""
    typ, data = m.uid('FETCH', num, what) if uid else m.fetch(num, what)
    if typ != 'OK':
        raise RuntimeError('FETCH %s: %s %r' % (what, typ, data))
    out = b''
    for d in data:
        if isinstance(d, tuple):
            out += d[0] + b'\r\n' + d[1]
        elif d:
            out += d
    return out


def literal(m, what, num='1'):
    typ, data = m.fetch(num, what)
    for d in data:
        if isinstance(d, tuple):
            return d[1]
    raise RuntimeError('no literal in %r' % data)


def pop_retr_all(n):
    p = n.pop3()
    p.user('alice')
    p.pass_(PASSWORD)
    out = {}
    for line in p.uidl()[1]:
        num, uid = line.split()
        out[int(uid)] = b'\r\n'.join(p.retr(int(num))[1]) + b'\r\n'
    p.quit()
    return out


class Conn:
    """A raw IMAP client: send a tagged command, read to its tagged reply."""

    def __init__(self, n, port=None):
        self.c = n.raw(port or 'imap')
        self.greeting = self.c.recv_line()
        self.n = 0

    def cmd(self, text, timeout=None):
        self.n += 1
        tag = 'a%d' % self.n
        self.c.send('%s %s\r\n' % (tag, text))
        return self.until(tag, timeout)

    def until(self, tag, timeout=None):
        lines = []
        while True:
            line = self.c.recv_line(timeout).decode('utf-8', 'replace')[:-2]
            lines.append(line)
            if line.startswith(tag + ' '):
                return lines

    def close(self):
        self.c.close()


# ---------------------------------------------------------------- tests

@test
def greeting_capability_login():
    with new_node() as n:
        c = Conn(n)
        check('greeting is OK with CAPABILITY', c.greeting.startswith(b'* OK [CAPABILITY IMAP4rev1'), c.greeting)
        r = c.cmd('CAPABILITY')
        caps = r[0].split()
        for cap in ('IMAP4rev1', 'LITERAL+', 'SASL-IR', 'IDLE', 'UIDPLUS', 'MOVE', 'SPECIAL-USE',
                    'UNSELECT', 'NAMESPACE', 'ID', 'ENABLE', 'AUTH=PLAIN'):
            check('capability %s' % cap, cap in caps, r[0])
        r = c.cmd('SELECT INBOX')
        check('SELECT before login is BAD', r[-1].startswith('a2 BAD'), r)
        r = c.cmd('LOGIN alice "wrong"')
        check('bad password NO [AUTHENTICATIONFAILED]', '[AUTHENTICATIONFAILED]' in r[-1] and ' NO ' in r[-1], r)
        r = c.cmd('LOGIN nobody "%s"' % PASSWORD)
        check('unknown user gets the same answer', '[AUTHENTICATIONFAILED]' in r[-1], r)
        r = c.cmd('LOGIN alice "%s"' % PASSWORD)
        check('LOGIN OK', r[-1].startswith('a5 OK'), r)
        r = c.cmd('LOGIN alice "%s"' % PASSWORD)
        check('second LOGIN is BAD', r[-1].startswith('a6 BAD'), r)
        r = c.cmd('ID ("name" "test")')
        check('ID answers', r[0].startswith('* ID ("name" "mailnode"'), r)
        r = c.cmd('NAMESPACE')
        check('NAMESPACE', r[0] == '* NAMESPACE (("" "/")) NIL NIL', r)
        r = c.cmd('ENABLE UTF8=ACCEPT')
        check('ENABLE of an unknown extension: empty ENABLED', r[0] == '* ENABLED' and r[-1].startswith('a9 OK'), r)
        r = c.cmd('FROB')
        check('unknown command BAD', r[-1].startswith('a10 BAD'), r)
        r = c.cmd('LOGOUT')
        check('LOGOUT BYE then OK', r[0].startswith('* BYE') and r[-1].startswith('a11 OK'), r)
        c.close()


@test
def authenticate_plain_sasl_ir():
    with new_node() as n:
        ir = base64.b64encode(b'\0alice\0' + PASSWORD.encode()).decode()
        c = Conn(n)
        r = c.cmd('AUTHENTICATE PLAIN %s' % ir)
        check('AUTHENTICATE PLAIN with initial response', r[-1].startswith('a1 OK'), r)
        c.close()
        c = Conn(n)
        c.c.send('a1 AUTHENTICATE PLAIN\r\n')
        cont = c.c.recv_line()
        check('continuation without initial response', cont.startswith(b'+'), cont)
        c.c.send(ir + '\r\n')
        r = c.until('a1')
        check('AUTHENTICATE PLAIN after continuation', r[-1].startswith('a1 OK'), r)
        c.close()
        c = Conn(n)
        bad = base64.b64encode(b'\0alice\0nope').decode()
        r = c.cmd('AUTHENTICATE PLAIN %s' % bad)
        check('wrong password by SASL', ' NO ' in r[-1], r)
        c.c.send('a9 AUTHENTICATE PLAIN\r\n')
        c.c.recv_line()
        c.c.send('*\r\n')
        r = c.until('a9')
        check('"*" cancels', r[-1].startswith('a9 BAD'), r)
        c.close()
        m = n.imap()
        typ, _ = m.authenticate('PLAIN', lambda _: b'\0alice\0' + PASSWORD.encode())
        check('imaplib authenticate PLAIN', typ == 'OK')
        m.logout()


@test
def folders_special_use():
    with new_node() as n:
        m = login(n)
        typ, data = m.list()
        names = {re.search(rb'"([^"]*)"$', d).group(1): d for d in data}
        for name, attr in ((b'Sent', b'\\Sent'), (b'Drafts', b'\\Drafts'), (b'Trash', b'\\Trash'),
                           (b'Junk', b'\\Junk'), (b'INBOX', None)):
            check('LIST has %s' % name.decode(), name in names, data)
            if attr:
                check('%s is %s' % (name.decode(), attr.decode()), attr in names.get(name, b''), data)
        check('CREATE a/b/c', m.create('a/b/c')[0] == 'OK')
        typ, data = m.list('""', 'a/%')
        check('LIST a/% finds a/b only', data == [b'(\\HasChildren) "/" "a/b"'], data)
        typ, data = m.list('""', 'a*')
        check('LIST a* finds all three', len(data) == 3, data)
        check('CREATE existing is NO', m.create('a/b')[0] == 'NO')
        check('CREATE with wildcard is NO', m.create('"x*y"')[0] == 'NO')
        check('RENAME a to z', m.rename('a', 'z')[0] == 'OK')
        typ, data = m.list('""', 'z*')
        check('children renamed too', sorted(data) == sorted([b'(\\HasChildren) "/" "z"',
              b'(\\HasChildren) "/" "z/b"', b'(\\HasNoChildren) "/" "z/b/c"']), data)
        check('DELETE z/b/c', m.delete('z/b/c')[0] == 'OK')
        check('DELETE INBOX is NO', m.delete('INBOX')[0] == 'NO')
        check('DELETE missing is NO', m.delete('nothere')[0] == 'NO')
        check('UNSUBSCRIBE z', m.unsubscribe('z')[0] == 'OK')
        typ, data = m.lsub('""', 'z*')
        check('LSUB lists subscribed only', data == [b'() "/" "z/b"'] or
              (len(data) == 1 and b'"z/b"' in data[0]), data)
        typ, data = m.list('""', '""')
        check('LIST "" "" gives the separator', data == [b'(\\Noselect) "/" ""'], data)
        typ, data = m.status('inbox', '(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)')
        check('STATUS inbox (any case)', typ == 'OK' and b'MESSAGES 0' in data[0], data)
        m.logout()


@test
def select_fetch_matches_pop3():
    with new_node() as n:
        for i in range(3):
            deliver(n, message(i))
        pop = pop_retr_all(n)
        m = login(n)
        typ, data = m.select('INBOX')
        check('SELECT: 3 messages', data == [b'3'], data)
        check('SELECT: UIDVALIDITY given', 'UIDVALIDITY' in m.untagged_responses)
        check('SELECT is READ-WRITE', 'READ-WRITE' in m.untagged_responses)
        typ, data = m.uid('FETCH', '1:*', '(UID RFC822.SIZE)')
        uids = [int(re.search(rb'UID (\d+)', d).group(1)) for d in data]
        check('IMAP UIDs are the POP3 UIDLs', sorted(uids) == sorted(pop), (uids, list(pop)))
        for k, uid in enumerate(uids):
            body = literal(m, '(BODY.PEEK[])', str(k + 1))
            check('BODY[] of %d equals POP3 RETR' % uid, body == pop[uid], (body[:80], pop[uid][:80]))
            size = int(re.search(rb'RFC822.SIZE (\d+)', data[k]).group(1))
            check('RFC822.SIZE of %d is the octet count' % uid, size == len(pop[uid]))
        flags = fetch1(m, '(FLAGS)')
        check('PEEK does not set \\Seen', b'\\Seen' not in flags, flags)
        body = literal(m, '(BODY[TEXT])')
        check('BODY[TEXT] is the body', body.startswith(b'line one of 0\r\n') and body.endswith(b'last line\r\n'), body)
        flags = fetch1(m, '(FLAGS)')
        check('BODY[TEXT] sets \\Seen', b'\\Seen' in flags, flags)
        hdr = literal(m, '(BODY.PEEK[HEADER.FIELDS (subject MESSAGE-ID)])', '2')
        check('HEADER.FIELDS', hdr == b'Subject: message 1\r\nMessage-ID: <m1@remote.test>\r\n\r\n', hdr)
        hdr = literal(m, '(BODY.PEEK[HEADER.FIELDS.NOT (Received Return-Path From To Date)])', '2')
        check('HEADER.FIELDS.NOT', hdr == b'Subject: message 1\r\nMessage-ID: <m1@remote.test>\r\n\r\n', hdr)
        part = literal(m, '(BODY.PEEK[]<5.10>)', '3')
        check('partial <5.10>', part == pop[uids[2]][5:15], part)
        d = fetch1(m, '(BODY.PEEK[]<100000.10>)', '3')
        check('partial beyond the end is empty', b'BODY[]<100000> ""' in d or b'{0}' in d, d)
        env = fetch1(m, '(ENVELOPE)', '2')
        # RFC 3501 9: env-to = "(" 1*address ")", no space between them.
        check('ENVELOPE', b'ENVELOPE ("Tue, 1 Jul 2003 10:52:37 +0200" "message 1" (("Bob" NIL "bob" "remote.test"))'
              in env and b'((NIL NIL "alice" "example.test")("Carol C." NIL "carol" "example.test"))' in env
              and b'"<m1@remote.test>")' in env, env)
        d = fetch1(m, 'FAST', '1')
        check('FAST macro', b'FLAGS' in d and b'INTERNALDATE "' in d and b'RFC822.SIZE' in d, d)
        try:
            typ = m.fetch('9', '(FLAGS)')[0]
        except imaplib.IMAP4.error as e:
            typ = 'BAD' if 'BAD' in str(e) else str(e)
        check('FETCH beyond the last message is BAD', typ == 'BAD', typ)
        m.logout()


@test
def bodystructure_and_sections():
    with new_node() as n:
        deliver(n, MULTIPART)
        m = login(n)
        m.select('INBOX')
        bs = fetch1(m, '(BODYSTRUCTURE)')
        check('multipart/mixed with three parts', bs.count(b'"mixed"') == 1 and b'"alternative"' in bs, bs)
        check('text part with size and lines',
              b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 23 1 NIL NIL NIL NIL)' in bs, bs)
        check('message/rfc822 part with envelope',
              b'"message" "rfc822" NIL NIL "forwarded" "7bit"' in bs and b'"inner"' in bs, bs)
        check('attachment disposition', b'("attachment" ("filename" "a.bin"))' in bs, bs)
        check('multipart extension data', b'"mixed" ("boundary" "outer") NIL NIL NIL)' in bs, bs)
        body = fetch1(m, '(BODY)')
        check('BODY has no extension data', b'"mixed")' in body and b'attachment' not in body, body)
        check('BODY[1]', literal(m, '(BODY.PEEK[1])') == b'first part\r\nsecond line', )
        check('BODY[1.MIME]', literal(m, '(BODY.PEEK[1.MIME])') == b'Content-Type: text/plain; charset=utf-8\r\n\r\n')
        check('BODY[2.HEADER] is the inner header',
              literal(m, '(BODY.PEEK[2.HEADER])').startswith(b'From: Dan <dan@remote.test>\r\n'))
        check('BODY[2.1] is the inner first part', literal(m, '(BODY.PEEK[2.1])') == b'inner plain')
        check('BODY[2.2.MIME]', literal(m, '(BODY.PEEK[2.2.MIME])') ==
              b'Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n')
        check('BODY[3] base64 data', literal(m, '(BODY.PEEK[3])') == b'AAECAw==')
        d = fetch1(m, '(BODY.PEEK[2.HEADER.FIELDS (SUBJECT)])')
        check('BODY[2.HEADER.FIELDS (SUBJECT)]', b'Subject: inner\r\n\r\n' in d, d)
        d = fetch1(m, '(BODY.PEEK[7])')
        check('missing part is empty', b'{0}' in d or b'""' in d, d)
        m.logout()


@test
def store_flags_and_keywords():
    with new_node() as n:
        for i in range(3):
            deliver(n, message(i))
        m = login(n)
        m.select('INBOX')
        typ, data = m.store('1:2', '+FLAGS', '(\\Flagged $Label1)')
        check('+FLAGS answers FETCH', typ == 'OK' and len(data) == 2 and b'\\Flagged' in data[0]
              and b'$Label1' in data[0], data)
        typ, data = m.store('2', '-FLAGS', '($Label1)')
        check('-FLAGS', b'$Label1' not in data[0] and b'\\Flagged' in data[0], data)
        typ, data = m.store('3', 'FLAGS.SILENT', '(\\Answered \\Draft)')
        check('FLAGS.SILENT answers nothing', typ == 'OK' and data == [None], data)
        d = fetch1(m, '(FLAGS)', '3')
        check('FLAGS replaced', b'\\Answered' in d and b'\\Draft' in d and b'\\Flagged' not in d, d)
        typ, data = m.uid('STORE', '1:*', '+FLAGS', '(\\Seen)')
        check('UID STORE returns UID', all(b'UID ' in x for x in data) and len(data) == 3, data)
        try:
            typ = m.store('1', '+FLAGS', '(\\Recent)')[0]
        except imaplib.IMAP4.error as e:
            typ = 'BAD' if 'BAD' in str(e) else str(e)
        check('\\Recent cannot be stored', typ == 'BAD', typ)
        m.logout()
        m = login(n)
        m.select('INBOX')
        d = fetch1(m, '(FLAGS)', '1')
        check('flags kept across sessions', b'\\Flagged' in d and b'$Label1' in d and b'\\Seen' in d, d)
        typ, data = m.select('INBOX', readonly=True)
        check('EXAMINE is READ-ONLY', 'READ-ONLY' in m.untagged_responses)
        typ, data = m.store('1', '+FLAGS', '(\\Deleted)')
        check('STORE in EXAMINE is NO', typ == 'NO', data)
        m.logout()


@test
def search_keys():
    with new_node() as n:
        for i in range(5):
            deliver(n, message(i, b'needle %d here\r\n' % i if i == 3 else b''))
        deliver(n, MULTIPART)
        m = login(n)
        m.select('INBOX')
        m.store('2', '+FLAGS', '(\\Flagged)')
        m.store('1:2', '+FLAGS', '(\\Seen)')

        def s(*crit):
            try:
                typ, data = m.search(None, *crit)
            except imaplib.IMAP4.error as e:
                return 'BAD' if 'BAD' in str(e) else str(e)
            if typ != 'OK':
                return typ
            return [int(x) for x in data[0].split()]
        check('ALL', s('ALL') == [1, 2, 3, 4, 5, 6])
        check('SEEN', s('SEEN') == [1, 2])
        check('UNSEEN', s('UNSEEN') == [3, 4, 5, 6])
        check('FLAGGED', s('FLAGGED') == [2])
        check('SUBJECT', s('SUBJECT', '"message 3"') == [4])
        check('SUBJECT case-insensitive', s('SUBJECT', 'MESSAGE') == [1, 2, 3, 4, 5])
        check('FROM', s('FROM', 'ann@') == [6])
        check('TO', s('TO', 'carol') == [1, 2, 3, 4, 5])
        check('BODY', s('BODY', 'NEEDLE') == [4])
        check('TEXT finds header text too', s('TEXT', 'm2@remote') == [3])
        check('BODY does not find the header', s('BODY', 'm2@remote') == [])
        check('HEADER', s('HEADER', 'Message-ID', 'm4@') == [5])
        typ, data = m.fetch('1:*', '(RFC822.SIZE)')
        sizes = [int(re.search(rb'RFC822.SIZE (\d+)', d).group(1)) for d in data]
        cut = sizes[5] - 1
        check('LARGER', s('LARGER', str(cut)) == [i + 1 for i, z in enumerate(sizes) if z > cut], sizes)
        check('SMALLER', s('SMALLER', str(sizes[0] + 1)) == [i + 1 for i, z in enumerate(sizes)
                                                           if z < sizes[0] + 1], sizes)
        check('NOT', s('NOT', 'SEEN') == [3, 4, 5, 6])
        check('OR', s('OR', 'FLAGGED', 'SUBJECT', 'parts') == [2, 6])
        check('list', s('(SEEN', 'FLAGGED)') == [2])
        check('sequence set', s('2:4', 'UNSEEN') == [3, 4])
        today = time.strftime('%d-%b-%Y')
        check('SINCE today', s('SINCE', today) == [1, 2, 3, 4, 5, 6])
        check('BEFORE today', s('BEFORE', today) == [])
        check('ON today', s('ON', today) == [1, 2, 3, 4, 5, 6])
        check('SENTON the Date header', s('SENTON', '1-Jul-2003') == [1, 2, 3, 4, 5])
        check('SENTBEFORE', s('SENTBEFORE', '2-Jul-2003') == [1, 2, 3, 4, 5])
        typ, data = m.uid('SEARCH', 'UID', '1:*')
        check('UID SEARCH returns UIDs', typ == 'OK' and len(data[0].split()) == 6, data)
        check('CHARSET UTF-8', s('CHARSET', 'UTF-8', 'SUBJECT', 'parts') == [6])
        check('unknown CHARSET is NO', s('CHARSET', 'KOI8-R', 'ALL') == 'NO')
        check('bad key is BAD', s('FROB') == 'BAD')
        m.logout()


ENCODED = [
    # RFC 2047 encoded words: B and Q, UTF-8 and ISO-8859-1, two adjacent
    # words (the space between them goes), lower-case q, and one broken word.
    (b'From: =?iso-8859-1?Q?J=F6rg_M=FCller?= <jm@remote.test>\r\n'
     b'To: =?UTF-8?q?Zo=C3=AB?= <zoe@example.test>\r\n'
     b'Subject: =?utf-8?B?R3LDvMOfZSBhdXMgZGVtIEZlbGQ=?=\r\n\r\nbody\r\n'),
    (b'From: Plain <plain@remote.test>\r\n'
     b'To: alice@example.test\r\n'
     b'Cc: =?utf-8?B?0JjQstCw0L0g0J/QtdGC0YDQvtCy?= <ivan@remote.test>\r\n'
     b'Subject: =?utf-8?Q?caf=C3=A9?= =?utf-8?Q?_au_lait?= and =?utf-8?X?bogus?=\r\n\r\nbody\r\n'),
]


@test
def search_encoded_words():
    with new_node() as n:
        for b in ENCODED:
            deliver(n, b)
        m = login(n)
        m.select('INBOX')

        def s(key, text):
            m.literal = text.encode('utf-8')
            typ, data = m.search('UTF-8', key)
            return [int(x) for x in data[0].split()] if typ == 'OK' else typ
        check('2047 B subject', s('SUBJECT', 'Grüße aus') == [1])
        check('2047 subject case-insensitive beyond ASCII', s('SUBJECT', 'GRÜßE') == [1])
        check('2047 subject decoded text only', s('SUBJECT', 'Feld') == [1] and s('SUBJECT', 'R3LD') == [])
        check('2047 Q latin-1 from', s('FROM', 'jörg müller') == [1])
        check('2047 from case-insensitive', s('FROM', 'MÜLLER') == [1])
        check('2047 from address still found', s('FROM', 'jm@remote') == [1])
        check('2047 lower-case q to', s('TO', 'zoë') == [1] and s('TO', 'ZOË') == [1])
        check('2047 cyrillic cc', s('CC', 'иван петров') == [2] and s('CC', 'ИВАН') == [2])
        check('2047 adjacent words joined', s('SUBJECT', 'café au lait') == [2])
        check('2047 broken word left as is', s('SUBJECT', '=?utf-8?X?bogus?=') == [2])
        check('2047 no false match', s('SUBJECT', 'grusse') == [])
        typ, data = m.search(None, 'SUBJECT', 'lait')
        check('2047 ASCII search without CHARSET', typ == 'OK' and data[0].split() == [b'2'], data)
        m.logout()


@test
def copy_move_append_expunge():
    with new_node() as n:
        for i in range(4):
            deliver(n, message(i))
        m = login(n)
        typ, data = m.select('INBOX')
        typ, data = m.copy('1:2', 'Trash')
        check('COPY with COPYUID', typ == 'OK' and b'[COPYUID ' in data[0], data)
        typ, data = m.copy('1', 'Nowhere')
        check('COPY to a missing mailbox: TRYCREATE', typ == 'NO' and b'TRYCREATE' in data[0], data)
        typ, data = m.uid('MOVE', '3:*', 'Junk')   # a UID range beyond the last still includes it
        check('UID MOVE', typ == 'OK', data)
        check('MOVE sends COPYUID and EXPUNGE', 'COPYUID' in m.untagged_responses.get('OK', [b''])[0].decode()
              if m.untagged_responses.get('OK') else True)
        typ, data = m.status('Junk', '(MESSAGES)')
        check('MOVE put the messages in Junk', b'MESSAGES 2' in data[0] or b'MESSAGES 1' in data[0], data)
        typ, data = m.search(None, 'ALL')
        left = len(data[0].split())
        check('MOVE took them from INBOX', left in (2, 3), data)
        typ, data = m.append('Drafts', '(\\Draft \\Seen)', '"01-Jan-2020 10:00:00 +0000"',
                             b'Subject: draft\r\n\r\ndraft text\r\n')
        check('APPEND with APPENDUID', typ == 'OK' and b'[APPENDUID ' in data[0], data)
        typ, data = m.append('Missing', None, None, b'Subject: x\r\n\r\nx\r\n')
        check('APPEND to a missing mailbox: TRYCREATE', typ == 'NO' and b'TRYCREATE' in data[0], data)
        m.select('Drafts')
        d = fetch1(m, '(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])')
        check('APPENDed message as given', b'\\Draft' in d and b'01-Jan-2020' in d
              and d.endswith(b'Subject: draft\r\n\r\ndraft text\r\n)'), d)
        m.select('INBOX')
        m.store('1', '+FLAGS', '(\\Deleted)')
        typ, data = m.expunge()
        check('EXPUNGE reports 1', data == [b'1'], data)
        m.store('1', '+FLAGS', '(\\Deleted)')
        typ, data = m.unselect() if hasattr(m, 'unselect') else m._simple_command('UNSELECT')
        check('UNSELECT does not expunge', typ == 'OK')
        typ, data = m.select('INBOX')
        n_before = int(data[0])
        m.close()
        typ, data = m.select('INBOX')
        check('CLOSE expunged the \\Deleted', int(data[0]) == n_before - 1, (n_before, data))
        m.logout()


@test
def literal_plus_append_raw():
    with new_node() as n:
        c = Conn(n)
        c.cmd('LOGIN alice "%s"' % PASSWORD)
        msg = b'Subject: lit\r\n\r\nliteral plus\r\n'
        c.c.send(b'a7 APPEND INBOX (\\Seen) {%d+}\r\n%s\r\n' % (len(msg), msg))
        r = c.until('a7')
        check('APPEND with {N+} needs no continuation', r[-1].startswith('a7 OK [APPENDUID'), r)
        c.c.send(b'a8 APPEND INBOX {%d}\r\n' % len(msg))
        cont = c.c.recv_line()
        check('synchronizing literal gets a continuation', cont.startswith(b'+'), cont)
        c.c.send(msg + b'\r\n')
        r = c.until('a8')
        check('then APPEND completes', r[-1].startswith('a8 OK'), r)
        r = c.cmd('SELECT {5+}\r\nINBOX')
        check('mailbox name as a literal', r[-1].startswith('a2 OK'), r)
        r = c.cmd('FETCH 1 (BODY[])')
        check('the appended message, byte for byte', msg.decode() in '\r\n'.join(r), r)
        c.c.send(b'a9 APPEND INBOX {999999999}\r\n')
        r = c.until('a9')
        check('oversized APPEND refused before its data', ' NO [TOOBIG]' in r[-1], r)
        c.c.send(b'a10 LOGIN {100000+}\r\n')
        c.c.send(b'x' * 100000 + b' x\r\n')
        r = c.until('a10')
        check('oversized literal+ is read and refused', 'BAD' in r[-1], r)
        r = c.cmd('NOOP')
        check('the session goes on', r[-1].startswith('a4 OK'), r)
        c.close()


@test
def pop3_and_imap_share_the_mailbox():
    with new_node() as n:
        for i in range(3):
            deliver(n, message(i))
        m = login(n)
        m.select('INBOX')
        p = n.pop3()
        p.user('alice')
        p.pass_(PASSWORD)
        check('POP3 can log in while IMAP has the mailbox open', p.stat()[0] == 3)
        p.dele(1)
        p.quit()
        typ, data = m.noop()
        check('IMAP NOOP reports the POP3 deletion as EXPUNGE', m.untagged_responses.get('EXPUNGE') == [b'1']
              or b'1' in (m.untagged_responses.get('EXPUNGE') or []), m.untagged_responses)
        m.store('1', '+FLAGS', '(\\Deleted)')
        m.expunge()
        p = n.pop3()
        p.user('alice')
        p.pass_(PASSWORD)
        check('a message expunged over IMAP is gone for POP3', p.stat()[0] == 1)
        p.quit()
        m.append('Sent', None, None, b'Subject: s\r\n\r\nsent\r\n')
        p = n.pop3()
        p.user('alice')
        p.pass_(PASSWORD)
        check('POP3 sees INBOX only', p.stat()[0] == 1)
        p.quit()
        m.logout()


@test
def uids_stable_across_restart():
    with new_node() as n:
        for i in range(3):
            deliver(n, message(i))
        m = login(n)
        m.select('INBOX')
        v1 = m.untagged_responses['UIDVALIDITY'][0]
        typ, d1 = m.uid('SEARCH', 'ALL')
        m.logout()
        n.restart()
        m = login(n)
        m.select('INBOX')
        v2 = m.untagged_responses['UIDVALIDITY'][0]
        typ, d2 = m.uid('SEARCH', 'ALL')
        check('UIDVALIDITY unchanged after restart', v1 == v2, (v1, v2))
        check('UIDs unchanged after restart', d1 == d2, (d1, d2))
        nxt = m.untagged_responses['UIDNEXT'][0]
        deliver(n, message(9))
        m.noop()
        typ, d3 = m.uid('SEARCH', 'ALL')
        check('new mail gets UIDNEXT', d3[0].split()[-1] == nxt, (nxt, d3))
        m.logout()


def idle_wait(c, pattern, secs):
    deadline = time.monotonic() + secs * harness.TIME_SCALE
    got = []
    while time.monotonic() < deadline:
        try:
            line = c.c.recv_line(timeout=max(0.1, deadline - time.monotonic())).decode()
        except TimeoutError:
            break
        got.append(line)
        if re.search(pattern, line):
            return got
    return None


@test
def idle_sees_smtp_sendmail_and_other_sessions():
    with new_node() as n:
        deliver(n, message(0))
        c = Conn(n)
        c.cmd('LOGIN alice "%s"' % PASSWORD)
        c.cmd('SELECT INBOX')
        c.c.send('i1 IDLE\r\n')
        check('IDLE continuation', c.c.recv_line().startswith(b'+'))
        deliver(n, message(1))
        check('IDLE sees SMTP delivery within a second or two', idle_wait(c, r'^\* 2 EXISTS', 3))
        rc, out, err = n.cli('sendmail', 'alice@example.test', input=message(2).decode('utf-8', 'replace'))
        check('sendmail delivered', rc == 0, err)
        check('IDLE sees sendmail delivery', idle_wait(c, r'^\* 3 EXISTS', 3))
        m = login(n)
        m.select('INBOX')
        m.store('1', '+FLAGS', '(\\Flagged)')
        check('IDLE sees another session\'s flag change', idle_wait(c, r'^\* 1 FETCH .*\\Flagged', 3))
        m.store('2', '+FLAGS', '(\\Deleted)')
        m.expunge()
        check('IDLE sees another session\'s expunge', idle_wait(c, r'^\* 2 EXPUNGE', 3))
        m.logout()
        c.c.send('DONE\r\n')
        r = c.until('i1')
        check('DONE ends IDLE', r[-1].startswith('i1 OK'), r)
        c.close()


@test
def large_message_streams():
    with new_node({'message_size_limit': '20M'}) as n:
        big = b'Subject: big\r\n\r\n' + b''.join(b'%09d abcdefghijklmnopqrstuvwxyz0123456789\r\n' % i
                                                  for i in range(200000))
        deliver(n, big)
        m = login(n)
        m.select('INBOX')
        size = int(re.search(rb'RFC822.SIZE (\d+)', fetch1(m, '(RFC822.SIZE)')).group(1))
        body = literal(m, '(BODY.PEEK[TEXT])')
        check('8 MB BODY[TEXT] intact', body == big[len(b'Subject: big\r\n\r\n'):], len(body))
        tail = literal(m, '(BODY.PEEK[]<%d.100>)' % (size - 100))
        check('partial at the end of a large message', tail == big[-100:], tail)
        m.logout()


@test
def limits_and_bad_input():
    with new_node({'imap.max_per_user': '2', 'imap.timeout': '2s'}) as n:
        c = Conn(n)
        c.c.send(b'a1 ' + b'x' * 9000 + b'\r\n')
        r = c.c.recv_line()
        check('over-long line: BAD [TOOBIG]', b'BAD' in r and b'TOOBIG' in r, r)
        r = c.cmd('NOOP')
        check('the session survives', r[-1].startswith('a1 OK'), r)
        r = c.cmd('LOGIN "unterminated')
        check('bad quoting is BAD', 'BAD' in r[-1], r)
        c.c.send(b'+bad NOOP\r\n')
        check('bad tag is BAD', b'BAD' in c.c.recv_line())
        m1, m2 = login(n), login(n)
        m3 = n.imap()
        try:
            m3.login('alice', PASSWORD)
            ok = False
        except imaplib.IMAP4.error as e:
            ok = 'LIMIT' in str(e)
        check('third session of a user refused (imap.max_per_user)', ok)
        m1.logout()
        m2.logout()
        deadline = time.monotonic() + 10
        bye = b''
        while time.monotonic() < deadline and b'BYE' not in bye:
            try:
                bye += c.c.recv_line(timeout=1)
            except TimeoutError:
                continue
            except ConnectionError:
                break
        check('idle timeout: BYE autologout', b'BYE' in bye, bye)
        c.close()


@test
def cleartext_login_policy():
    # Over loopback LOGIN works (nothing leaves the host); the policy for
    # other addresses is auth.cleartext, shared with POP3 and SMTP.
    with new_node() as n:
        c = Conn(n)
        check('loopback: no LOGINDISABLED', b'LOGINDISABLED' not in c.greeting, c.greeting)
        c.close()


@test
def condstore():
    with new_node() as n:
        for i in range(3):
            deliver(n, message(i))
        c = Conn(n)
        c.cmd('LOGIN alice "%s"' % PASSWORD)
        check('CONDSTORE announced', 'CONDSTORE' in ' '.join(c.cmd('CAPABILITY')))
        r = c.cmd('SELECT INBOX (CONDSTORE)')
        hms = [int(x) for x in re.findall(r'HIGHESTMODSEQ (\d+)', ' '.join(r))]
        check('SELECT gives HIGHESTMODSEQ', len(hms) == 1 and ' OK ' in r[-1], r)
        r = c.cmd('FETCH 1:* (MODSEQ)')
        mods = [int(x) for x in re.findall(r'MODSEQ \((\d+)\)', ' '.join(r))]
        check('every message has a MODSEQ, at most HIGHESTMODSEQ',
              len(mods) == 3 and max(mods) <= hms[0] and len(set(mods)) == 3, (mods, hms))
        r = c.cmd('STORE 2 +FLAGS (\\Flagged)')
        m2 = int(re.search(r'MODSEQ \((\d+)\)', ' '.join(r)).group(1))
        check('STORE raises the MODSEQ', m2 > hms[0], (m2, hms))
        r = c.cmd('UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)' % hms[0])
        fetched = [l for l in r if l.startswith('* ') and 'FETCH' in l]
        check('CHANGEDSINCE: only the changed message', len(fetched) == 1 and '\\Flagged' in fetched[0]
              and 'MODSEQ' in fetched[0], r)
        r = c.cmd('STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)' % hms[0])
        check('UNCHANGEDSINCE: MODIFIED names the message changed since', '[MODIFIED 2]' in r[-1], r)
        r = c.cmd('FETCH 2 (FLAGS)')
        check('and it was not changed', '\\Seen' not in r[0], r)
        r = c.cmd('SEARCH MODSEQ %d' % (hms[0] + 1))
        check('SEARCH MODSEQ with the highest', r[0].startswith('* SEARCH 1 2 (MODSEQ'), r)
        r = c.cmd('STATUS INBOX (HIGHESTMODSEQ)')
        st = int(re.search(r'HIGHESTMODSEQ (\d+)', r[0]).group(1))
        check('STATUS HIGHESTMODSEQ moved', st > hms[0], r)
        deliver(n, message(9))
        r = c.cmd('FETCH 4 (MODSEQ)')
        m4 = int(re.search(r'MODSEQ \((\d+)\)', ' '.join(r)).group(1))
        check('new mail gets a MODSEQ above the others', m4 > st, (m4, st, r))
        c.close()
        m = login(n)
        typ, data = m._simple_command('ENABLE', 'CONDSTORE')
        check('ENABLE CONDSTORE', typ == 'OK' and m.untagged_responses.get('ENABLED') == [b'CONDSTORE'],
              m.untagged_responses)
        m.logout()


class ZConn:
    """A raw client after COMPRESS DEFLATE (RFC 4978): raw deflate both ways."""

    def __init__(self, sock, leftover=b''):
        import zlib
        self.sock = sock
        self.z_out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.z_in = zlib.decompressobj(-15)
        self.buf = self.z_in.decompress(leftover)
        self.wire_in = len(leftover)

    def send(self, data):
        import zlib
        self.sock.sendall(self.z_out.compress(data) + self.z_out.flush(zlib.Z_SYNC_FLUSH))

    def until(self, marker, timeout=10):
        deadline = time.monotonic() + timeout * harness.TIME_SCALE
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError('got %r' % self.buf[-300:])
            self.sock.settimeout(left)
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError('closed; got %r' % self.buf[-300:])
            self.wire_in += len(d)
            self.buf += self.z_in.decompress(d)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out


@test
def compress_deflate():
    with new_node({'message_size_limit': '20M'}) as n:
        big = b'Subject: big\r\n\r\n' + b''.join(b'line %06d of a long and very compressible text\r\n' % i
                                                  for i in range(40000))
        deliver(n, big)
        c = Conn(n)
        check('COMPRESS=DEFLATE announced after login',
              'COMPRESS=DEFLATE' in ' '.join(c.cmd('LOGIN alice "%s"' % PASSWORD)))
        # The command after COMPRESS, compressed, in the same packet.
        import zlib
        zo = zlib.compressobj(6, zlib.DEFLATED, -15)
        first = zo.compress(b'b1 SELECT INBOX\r\n') + zo.flush(zlib.Z_SYNC_FLUSH)
        c.c.send(b'a9 COMPRESS DEFLATE\r\n' + first)
        line = c.c.recv_line()
        check('COMPRESS answered in the clear', line == b'a9 OK DEFLATE active\r\n', line)
        z = ZConn(c.c.sock, c.c.buf)
        z.z_out = zo
        r = z.until(b'b1 OK')
        check('a pipelined compressed command is answered compressed', b'* 1 EXISTS' in r, r)
        before = z.wire_in
        z.send(b'b2 FETCH 1 (BODY.PEEK[])\r\n')
        r = z.until(b'b2 OK FETCH completed\r\n', timeout=30)
        wire = z.wire_in - before
        check('the message arrives whole through DEFLATE', big in r, len(r))
        check('and compressed on the wire (%d octets for %d)' % (wire, len(big)), wire < len(big) // 5,
              (wire, len(big)))
        z.send(b'b3 COMPRESS DEFLATE\r\n')
        r = z.until(b'b3 ')
        r += z.until(b'\r\n')
        check('a second COMPRESS is refused', b'b3 NO [COMPRESSIONACTIVE]' in r, r)
        z.send(b'b4 LOGOUT\r\n')
        r = z.until(b'b4 OK')
        check('LOGOUT through DEFLATE', b'* BYE' in r, r)
        c.close()


def make_cert(d):
    key, cert = os.path.join(d, 'k.pem'), os.path.join(d, 'c.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
                    '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost',
                    '-addext', 'subjectAltName=IP:127.0.0.1'],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60)
    return cert, key


@test
def starttls_and_implicit_tls():
    import ssl
    import tempfile
    d = tempfile.mkdtemp(prefix='mailnode-imap-tls-')
    try:
        cert, key = make_cert(d)
        ctx = ssl.create_default_context(cafile=cert)
        n = Node(conf=dict(FAST, **{'tls.cert': cert, 'tls.key': key}),
                 listeners=('smtp', 'imap', 'imaps'))
        with n:
            n.cli('user', 'add', 'alice', input=PASSWORD + '\n')
            c = Conn(n)
            check('STARTTLS offered', 'STARTTLS' in c.greeting.decode(), c.greeting)
            c.c.send('a1 STARTTLS\r\na2 LOGIN alice "%s"\r\n' % PASSWORD)
            r = c.c.recv_line()
            check('STARTTLS OK', r.startswith(b'a1 OK'), r)
            s = ctx.wrap_socket(c.c.sock, server_hostname='127.0.0.1')
            s.settimeout(10)
            s.sendall(b'b1 CAPABILITY\r\n')
            data = b''
            while b'b1 ' not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            check('the command sent in the clear after STARTTLS was dropped', b'a2' not in data, data)
            check('no STARTTLS after TLS', b'STARTTLS' not in data, data)
            s.close()
            m = n.imap()
            m.starttls(ssl_context=ctx)
            check('imaplib STARTTLS then LOGIN', m.login('alice', PASSWORD)[0] == 'OK')
            m.logout()
            m = imaplib.IMAP4_SSL('127.0.0.1', n.port('imaps'), ssl_context=ctx, timeout=10)
            check('implicit TLS greeting', m.welcome.startswith(b'* OK'), m.welcome)
            check('implicit TLS LOGIN', m.login('alice', PASSWORD)[0] == 'OK')
            typ, data = m.select('INBOX')
            check('SELECT over TLS', typ == 'OK', data)
            m.logout()
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


@test
def imaps_without_certificate_refused():
    n = Node(conf=dict(FAST), listeners=('smtp', 'imaps'), start=False)
    with n:
        rc, out, err = n.cli('run', timeout=30)
        check('listen.imaps without tls.cert: mailnode run exits with EX_CONFIG', rc == 78, (rc, err))
        check('and says why', 'listen.imaps' in err and 'tls.cert' in err, err)


harness.main()
