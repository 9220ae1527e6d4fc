/*
 * pace.c: TCP on slow, long and lossy links.  Two jobs that both read
 * the kernel's view of a connection:
 *
 * - progress: a session's timeout is an idle timer (loop.c); octets the
 *   kernel has moved (acknowledged by the peer, or received) count as
 *   progress even when the program itself could not write or read for a
 *   while, because a large send buffer drains slowly over a slow link;
 * - pacing: a single long connection must not overrun a link queue of
 *   one bandwidth-delay product.  Outbound sockets keep little unsent
 *   data in the kernel (TCP_NOTSENT_LOWAT), and with a rate hint for the
 *   destination (`pacing.rate`) the kernel paces at that rate
 *   (SO_MAX_PACING_RATE) and the send buffer is sized from the measured
 *   round-trip time and the rate, so slow start cannot flood the queue.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <netinet/tcp.h>

#ifndef SO_MAX_PACING_RATE
#define SO_MAX_PACING_RATE 47
#endif
#ifndef TCP_NOTSENT_LOWAT
#define TCP_NOTSENT_LOWAT 25
#endif

/* Unsent octets the kernel may hold beyond what is in flight: enough to
 * keep a fast link busy between two loop turns, small enough that a
 * writer learns at once when a slow link takes more. */
#define PACE_NOTSENT_LOWAT (32 * 1024)

/* The kernel's struct tcp_info (linux/tcp.h) up to the byte counters,
 * which the C library's copy of the structure lacks. */
struct pace_tcp_info {
    uint8_t state, ca_state, retransmits, probes, backoff, options, wscale, flags;
    uint32_t rto, ato, snd_mss, rcv_mss;
    uint32_t unacked, sacked, lost, retrans, fackets;
    uint32_t last_data_sent, last_ack_sent, last_data_recv, last_ack_recv;
    uint32_t pmtu, rcv_ssthresh, rtt, rttvar, snd_ssthresh, snd_cwnd, advmss, reordering;
    uint32_t rcv_rtt, rcv_space;
    uint32_t total_retrans;
    uint64_t pacing_rate, max_pacing_rate;
    uint64_t bytes_acked, bytes_received;
};

static int pace_info(int fd, struct pace_tcp_info *ti)
{
    socklen_t len = sizeof *ti;
    memset(ti, 0, sizeof *ti);
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len) < 0)
        return -1;
    /* An old kernel without the byte counters: no progress is seen and
     * the idle timer follows the program's own reads and writes. */
    return len >= offsetof(struct pace_tcp_info, bytes_received) + sizeof ti->bytes_received ? 0 : -1;
}

uint64_t pace_moved(int fd)
{
    struct pace_tcp_info ti;
    if (pace_info(fd, &ti))
        return 0;
    return ti.bytes_acked + ti.bytes_received;
}

/* "64k" (bit/s), "1M", "9600": bits per second -> octets per second. */
static int pace_parse_rate(const char *s, uint64_t *bytes_per_s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v <= 0)
        return -1;
    if (*end == 'k' || *end == 'K')
        v *= 1e3, end++;
    else if (*end == 'm' || *end == 'M')
        v *= 1e6, end++;
    else if (*end == 'g' || *end == 'G')
        v *= 1e9, end++;
    if (*end || v < 8)
        return -1;
    *bytes_per_s = (uint64_t)(v / 8);
    return 0;
}

int pace_conf_check(const struct conf *c, char *err, size_t n)
{
    for (size_t i = 0; i < c->n_pacing_rate; i++) {
        const char *eq = strchr(c->pacing_rate[i], '=');
        uint64_t r;
        if (!eq || eq == c->pacing_rate[i] || pace_parse_rate(eq + 1, &r)) {
            snprintf(err, n, "pacing.rate: '%s' is not DESTINATION=RATE (example: [relayhost]=64k)",
                     c->pacing_rate[i]);
            return -1;
        }
    }
    return 0;
}

/* 1 if item (a destination, or "*") names dest or host. */
static int pace_match(const char *item, size_t len, const char *dest, const char *host)
{
    if (len == 1 && item[0] == '*')
        return 1;
    return (dest && strlen(dest) == len && !strncasecmp(item, dest, len)) ||
           (host && strlen(host) == len && !strncasecmp(item, host, len));
}

uint64_t pace_rate_for(const char *dest, const char *host)
{
    for (size_t i = 0; i < conf->n_pacing_rate; i++) {
        const char *it = conf->pacing_rate[i], *eq = strchr(it, '=');
        uint64_t r;
        if (eq && pace_match(it, (size_t)(eq - it), dest, host) && !pace_parse_rate(eq + 1, &r))
            return r;
    }
    return 0;
}

void pace_socket(int fd)
{
    int lowat = PACE_NOTSENT_LOWAT;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat) < 0)
        log_debug("TCP_NOTSENT_LOWAT: %s", strerror(errno));
}

void pace_rate(int fd, uint64_t bytes_per_s)
{
    struct pace_tcp_info ti;
    if (!bytes_per_s)
        return;
    /* The kernel paces every segment at this rate (fq or TCP's internal
     * pacing), so bursts never exceed what the link drains. */
    uint64_t r64 = bytes_per_s;
    unsigned int r32 = bytes_per_s > 0xffffffffu ? 0xffffffffu : (unsigned int)bytes_per_s;
    if (setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &r64, sizeof r64) < 0 &&
        setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &r32, sizeof r32) < 0)
        log_debug("SO_MAX_PACING_RATE: %s", strerror(errno));
    /* In flight at most about two bandwidth-delay products: with the RTT
     * of the handshake (microseconds) and the rate; never below 16 KB. */
    if (pace_info(fd, &ti) == 0 || ti.rtt) {
        uint64_t rtt_us = ti.rtt ? ti.rtt : 100000;
        uint64_t bdp = bytes_per_s * rtt_us / 1000000;
        int sndbuf = (int)(2 * bdp < 16384 ? 16384 : 2 * bdp > (1 << 24) ? (1 << 24) : 2 * bdp);
        /* The kernel doubles the value for its bookkeeping. */
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) < 0)
            log_debug("SO_SNDBUF: %s", strerror(errno));
    }
}
