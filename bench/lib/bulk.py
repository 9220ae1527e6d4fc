#!/usr/bin/env python3
"""bulk.py - time one bulk TCP transfer (the reference for bench/dialup.sh).

  bulk.py serve ADDR PORT [COUNT]     accept COUNT connections (default 1); for
                                      each, read an 8-byte length N, then N
                                      bytes, then answer one byte "k"
  bulk.py send ADDR PORT NBYTES       connect, send the length and NBYTES,
                                      wait for the answer; print the seconds
                                      from connect() to the answer and the
                                      achieved payload rate in bit/s

The time covers what an SMTP client on a fresh connection cannot avoid
either: the TCP handshake, slow start, the bytes at the link rate, and the
confirmation that they all arrived.
"""
import socket
import struct
import sys
import time


def serve(addr, port, count):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(4)
    print("ready", flush=True)
    for _ in range(count):
        s, _peer = ls.accept()
        with s:
            hdr = b""
            while len(hdr) < 8:
                b = s.recv(8 - len(hdr))
                if not b:
                    break
                hdr += b
            if len(hdr) < 8:
                continue
            left = struct.unpack("!Q", hdr)[0]
            while left > 0:
                b = s.recv(min(left, 65536))
                if not b:
                    break
                left -= len(b)
            if left == 0:
                s.sendall(b"k")


def send(addr, port, nbytes):
    chunk = b"x" * 65536
    t0 = time.monotonic()
    s = socket.create_connection((addr, port), timeout=600)
    s.sendall(struct.pack("!Q", nbytes))
    left = nbytes
    while left > 0:
        n = min(left, len(chunk))
        s.sendall(chunk[:n])
        left -= n
    ok = s.recv(1)
    t1 = time.monotonic()
    s.close()
    if ok != b"k":
        print("bulk.py: no confirmation", file=sys.stderr)
        sys.exit(1)
    secs = t1 - t0
    print("%.3f %.0f" % (secs, nbytes * 8 / secs))


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    elif len(sys.argv) == 5 and sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
