#!/usr/bin/env python3
"""wirestats.py - bytes on the wire and client turns from a linkemu capture.

  wirestats.py PCAP SERVER_PORT [SINCE]

SINCE (seconds since the epoch): packets captured before it are left out
(a warm-up before the measurement).

Reads a classic pcap with raw IPv4 packets (LINKTYPE_RAW, as written by
linkemu --pcap, on the client's side of the link) and prints one line of
name=value pairs for the TCP connections to SERVER_PORT:

  conns       connections (client SYNs, retransmitted SYNs not counted)
  wire        IP bytes in both directions (headers included)
  wire_c2s    IP bytes client -> server;  wire_s2c  server -> client
  pay_c2s     TCP payload bytes client -> server (retransmissions included)
  pay_s2c     TCP payload bytes server -> client
  pkts        IP packets in both directions
  turns       client turns, summed over all connections
  retrans     client payload segments that resent already-sent bytes

A client turn is a client data segment sent after a server data segment
that acknowledged everything the client had sent: the client had said all
it had to say, heard the answer and only then went on. The EHLO after the
greeting is one turn, and so is each stop-and-wait exchange (MAIL, RCPT,
DATA, the end of data, RSET, QUIT for a client without PIPELINING). A
client that keeps sending while replies to earlier commands arrive (it
pipelines across messages) makes no turn there, because those replies do
not acknowledge its newer data. Because the capture is on the client's
side, "sent" and "arrived" are as the client saw them.
"""
import struct
import sys


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    port = int(sys.argv[2])
    since = float(sys.argv[3]) if len(sys.argv) == 4 else 0.0
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    if len(data) < 24:
        print("conns=0 wire=0 wire_c2s=0 wire_s2c=0 pay_c2s=0 pay_s2c=0 pkts=0 turns=0 retrans=0")
        return
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xa1b2c3d4, 0xa1b23c4d) else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype not in (101, 12, 228):
        sys.exit("wirestats.py: link type %d is not raw IP" % linktype)
    conns = {}   # client port -> state
    tot = dict(conns=0, wire=0, wire_c2s=0, wire_s2c=0, pay_c2s=0, pay_s2c=0, pkts=0, turns=0, retrans=0)
    off = 24
    while off + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if sec + usec / 1e6 < since:
            continue
        if len(pkt) < 20 or pkt[0] >> 4 != 4 or pkt[9] != 6:
            continue
        ihl = (pkt[0] & 15) * 4
        iplen = struct.unpack("!H", pkt[2:4])[0]
        tcp = pkt[ihl:]
        if len(tcp) < 20:
            continue
        sport, dport, seq, ack = struct.unpack("!HHII", tcp[:12])
        thl = (tcp[12] >> 4) * 4
        flags = tcp[13]
        paylen = iplen - ihl - thl
        if dport == port:
            c2s, cport = True, sport
        elif sport == port:
            c2s, cport = False, dport
        else:
            continue
        tot["pkts"] += 1
        tot["wire"] += iplen
        syn = flags & 0x02
        if c2s and syn and not flags & 0x10:
            st = conns.get(cport)
            if st is None or st["isn"] != seq:
                tot["conns"] += 1
                # nxt: client bytes sent so far (relative, SYN counts 1)
                conns[cport] = st = {"isn": seq, "nxt": 1, "waiting": False}
        st = conns.get(cport)
        if c2s:
            tot["wire_c2s"] += iplen
            tot["pay_c2s"] += paylen
            if st is None or paylen <= 0:
                continue
            rel = (seq - st["isn"]) & 0xffffffff
            end = rel + paylen
            if end <= st["nxt"]:
                tot["retrans"] += 1
            if st["waiting"]:
                tot["turns"] += 1
                st["waiting"] = False
            if end > st["nxt"]:
                st["nxt"] = end
        else:
            tot["wire_s2c"] += iplen
            tot["pay_s2c"] += paylen
            if st is None or paylen <= 0 or not flags & 0x10:
                continue
            acked = (ack - st["isn"]) & 0xffffffff
            if acked >= st["nxt"]:
                st["waiting"] = True
    print(" ".join("%s=%d" % (k, v) for k, v in tot.items()))


if __name__ == "__main__":
    main()
