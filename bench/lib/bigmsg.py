#!/usr/bin/env python3
"""Send one large message over SMTP without holding it in memory.

usage: bigmsg.py HOST PORT FROM TO BYTES

The body is generated line by line (76 characters + CRLF) and streamed in
1 MiB writes. Prints "code seconds bytes" and exits 0 if the final reply is
2xx.
"""
import socket
import sys
import time


def reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("connection closed by server")
        lines.append(line.decode("latin-1").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return int(lines[-1][:3]), lines


def expect(f, want, what):
    code, lines = reply(f)
    if code // 100 != want:
        raise SystemExit("%s: %s" % (what, " | ".join(lines)))
    return lines


def main():
    host, port, sender, rcpt, size = sys.argv[1:6]
    port, size = int(port), int(size)
    s = socket.create_connection((host, port), timeout=900)
    f = s.makefile("rb")
    expect(f, 2, "banner")
    s.sendall(b"EHLO bench.client\r\n")
    ehlo = expect(f, 2, "EHLO")
    has_size = any(l[4:].upper().startswith("SIZE") for l in ehlo)
    mail = "MAIL FROM:<%s>" % sender
    if has_size:
        mail += " SIZE=%d" % size
    s.sendall(mail.encode() + b"\r\n")
    expect(f, 2, "MAIL")
    s.sendall(("RCPT TO:<%s>\r\n" % rcpt).encode())
    expect(f, 2, "RCPT")
    s.sendall(b"DATA\r\n")
    expect(f, 3, "DATA")
    t0 = time.monotonic()
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: large message\r\n"
            "Message-ID: <big.%d@bench.client>\r\n\r\n" % (sender, rcpt, int(time.time())))
    s.sendall(head.encode())
    sent = len(head)
    line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n")
    chunk = line * (1048576 // len(line))
    while sent + len(chunk) <= size:
        s.sendall(chunk)
        sent += len(chunk)
    rest = (size - sent) // len(line)
    if rest > 0:
        s.sendall(line * rest)
        sent += len(line) * rest
    s.sendall(b".\r\n")
    code, lines = reply(f)
    dt = time.monotonic() - t0
    try:
        s.sendall(b"QUIT\r\n")
        reply(f)
    except Exception:
        pass
    print("%d %.3f %d %s" % (code, dt, sent, lines[-1]))
    return 0 if code // 100 == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
