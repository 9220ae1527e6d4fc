#!/usr/bin/env python3
"""sink.py - counting SMTP sink for bench/dialup.sh.

  sink.py ADDR PORT STATUSFILE [--no-chunking] [--no-pipelining]

Accepts every message and throws it away. Advertises PIPELINING, 8BITMIME,
CHUNKING (BDAT, RFC 3030), SIZE and ENHANCEDSTATUSCODES (Postfix's
smtp-sink has no BDAT). Replies to pipelined commands are grouped: all
commands found in one read are answered in one write, as RFC 2920
servers do.

After every accepted message STATUSFILE is replaced (atomically) with one
line:
    MESSAGES CONTENT_BYTES SESSIONS LAST_TIME
MESSAGES counts accepted messages (a DATA or BDAT LAST transaction with at
least one recipient), CONTENT_BYTES the message bytes as received (after
removing dot-stuffing, without the final "."), SESSIONS the connections
so far, LAST_TIME the wall-clock time (time.time()) of the last accepted
message. SIGUSR1 zeroes the counters.
"""
import asyncio
import os
import signal
import sys
import time


class Stats:
    msgs = 0
    content = 0
    sessions = 0
    last = 0.0
    path = None

    @classmethod
    def write(cls):
        tmp = cls.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d %d %d %.6f\n" % (cls.msgs, cls.content, cls.sessions, cls.last))
        os.replace(tmp, cls.path)


class Session(asyncio.Protocol):
    chunking = True
    pipelining = True

    def connection_made(self, transport):
        self.t = transport
        self.buf = bytearray()
        self.mode = "cmd"        # cmd | data | bdat
        self.need = 0            # bytes left in the current BDAT chunk
        self.last_chunk = False
        self.rcpts = 0
        self.mail = False
        self.size = 0
        self.out = []
        Stats.sessions += 1
        self.t.write(b"220 sink.bench.test ESMTP\r\n")

    def reply(self, s):
        self.out.append(s.encode() + b"\r\n")

    def accept_message(self):
        if self.rcpts > 0:
            Stats.msgs += 1
            Stats.content += self.size
            Stats.last = time.time()
            Stats.write()
            self.reply("250 2.0.0 Ok: queued")
        else:
            self.reply("554 5.5.1 Error: no valid recipients")
        self.mail = False
        self.rcpts = 0
        self.size = 0

    def data_received(self, data):
        self.buf += data
        self.process()
        if self.out:
            self.t.write(b"".join(self.out))
            self.out = []

    def process(self):
        buf = self.buf
        pos = 0
        while True:
            if self.mode == "bdat":
                take = min(self.need, len(buf) - pos)
                self.size += take
                self.need -= take
                pos += take
                if self.need > 0:
                    break
                self.mode = "cmd"
                if self.last_chunk:
                    self.accept_message()
                else:
                    self.reply("250 2.0.0 Ok: chunk received")
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = bytes(buf[pos:nl + 1])
            pos = nl + 1
            if self.mode == "data":
                if line in (b".\r\n", b".\n"):
                    self.mode = "cmd"
                    self.accept_message()
                else:
                    if line.startswith(b"."):
                        line = line[1:]
                    self.size += len(line)
                continue
            self.command(line.rstrip(b"\r\n").decode("latin-1"))
            if self.t.is_closing():
                break
        del buf[:pos]

    def command(self, line):
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb == "EHLO":
            ext = ["sink.bench.test"]
            if self.pipelining:
                ext.append("PIPELINING")
            ext += ["SIZE 104857600", "8BITMIME", "ENHANCEDSTATUSCODES"]
            if self.chunking:
                ext.append("CHUNKING")
            for i, e in enumerate(ext):
                self.reply("250%s%s" % (" " if i == len(ext) - 1 else "-", e))
        elif verb == "HELO":
            self.reply("250 sink.bench.test")
        elif verb == "MAIL":
            self.mail = True
            self.rcpts = 0
            self.size = 0
            self.reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            if self.mail:
                self.rcpts += 1
                self.reply("250 2.1.5 Ok")
            else:
                self.reply("503 5.5.1 Error: need MAIL command")
        elif verb == "DATA":
            if self.rcpts:
                self.mode = "data"
                self.reply("354 End data with <CR><LF>.<CR><LF>")
            else:
                self.reply("554 5.5.1 Error: no valid recipients")
        elif verb == "BDAT" and self.chunking:
            parts = arg.split()
            try:
                n = int(parts[0])
            except (IndexError, ValueError):
                self.reply("501 5.5.4 Syntax: BDAT size [LAST]")
                return
            self.mode = "bdat"
            self.need = n
            self.last_chunk = len(parts) > 1 and parts[1].upper() == "LAST"
        elif verb == "RSET":
            self.mail = False
            self.rcpts = 0
            self.size = 0
            self.reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            self.reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            self.reply("221 2.0.0 Bye")
            self.t.write(b"".join(self.out))
            self.out = []
            self.t.close()
        else:
            self.reply("502 5.5.2 Error: command not recognized")


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    addr, port, Stats.path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if "--no-chunking" in sys.argv[4:]:
        Session.chunking = False
    if "--no-pipelining" in sys.argv[4:]:
        Session.pipelining = False
    Stats.write()

    def zero():
        Stats.msgs = Stats.content = Stats.sessions = 0
        Stats.last = 0.0
        Stats.write()

    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGUSR1, zero)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    server = loop.run_until_complete(loop.create_server(Session, addr, port, backlog=256, reuse_address=True))
    print("ready", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
