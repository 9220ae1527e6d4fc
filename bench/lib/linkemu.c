/*
 * linkemu - user-space point-to-point link emulator between two network
 * namespaces, for kernels without the netem qdisc.
 *
 *   linkemu --nsA NAME --nsB NAME --rate BITS --rtt MS
 *           [--ifA tunA] [--ifB tunB] [--queue BYTES] [--pcap FILE]
 *           [--stats FILE] [--ready FILE]
 *
 * One process creates a TUN device in each namespace and forwards IP
 * packets between them. A TUN device belongs to the namespace that was
 * current when /dev/net/tun was opened, so the process enters A, opens and
 * configures tunA, enters B, does the same for tunB, and returns to its own
 * namespace; the two descriptors keep working from there. The devices are
 * not persistent: they disappear when the process exits. Addresses, MTU and
 * up/down state are left to the caller ("ip -n NS addr add ...", "ip -n NS
 * link set tunA up"); bringing a device up or down is the "link event" that
 * the programs inside the namespace see through netlink.
 *
 * Each direction is a serializer followed by a delay line, like a modem or
 * a satellite hop:
 *   start   = max(arrival, time the line is free)
 *   done    = start + bytes * 8 / rate          (the line is busy until then)
 *   deliver = done + RTT / 2                     (propagation, one way)
 * Packets waiting for the serializer form a drop-tail queue limited to
 * --queue bytes (default 64 KB); its occupancy at time t is exactly
 * (line_free - t) * rate / 8, so no per-packet bookkeeping is needed for the
 * limit. Packets keep their order. Timing uses CLOCK_MONOTONIC and ppoll()
 * with nanosecond timeouts (hrtimer), so delivery jitter is the scheduler's
 * wake-up latency, typically tens of microseconds.
 *
 * --rate accepts a plain number of bits per second or a k/M/G suffix
 * (decimal: 64k = 64000). --rtt is in milliseconds (decimals allowed).
 *
 * --pcap FILE writes every packet as seen on the A side (LINKTYPE_RAW): A->B
 * packets when they are read from tunA, B->A packets when they are written
 * to tunA, i.e. what a capture on A's interface would show. Dropped
 * packets are recorded only if they came from A (they were sent).
 *
 * Counters per direction (packets and bytes received from the TUN device,
 * delivered to the other device, dropped by the queue, dropped because the
 * other device was down) are written on SIGUSR1 and at exit (SIGTERM,
 * SIGINT) to --stats FILE (replaced atomically) or to stderr, as lines
 *   ab_in_pkts N
 *   ab_in_bytes N ...
 * SIGUSR2 zeroes the counters (e.g. at the start of a measurement).
 *
 * --ready FILE is created once both devices exist.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RING 16384          /* packets in flight per direction (power of 2) */
#define PKTMAX 65536

struct pkt {
    uint64_t due;           /* delivery time, ns, CLOCK_MONOTONIC */
    uint32_t len;
    unsigned char *data;
};

struct dir {
    const char *name;       /* "ab" or "ba" */
    int in, out;            /* descriptors: read from in, write to out */
    int out_is_a;           /* out is the A side (for pcap) */
    uint64_t line_free;     /* ns: when the serializer finishes its backlog */
    struct pkt ring[RING];
    unsigned head, tail;    /* head: next to deliver; tail: next free */
    uint64_t in_pkts, in_bytes, out_pkts, out_bytes;
    uint64_t qdrops, qdrop_bytes, down_drops, max_backlog;
};

static double rate_bps;
static uint64_t owd_ns;
static uint64_t qlimit = 65536;
static FILE *pcap;
static int64_t pcap_off_ns;     /* realtime - monotonic, for pcap timestamps */
static const char *stats_path;
static volatile sig_atomic_t want_stats, want_reset, want_exit;

static void die(const char *what)
{
    fprintf(stderr, "linkemu: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        want_stats = 1;
    else if (sig == SIGUSR2)
        want_reset = 1;
    else
        want_exit = 1;
}

static int enter_ns(const char *name)
{
    char path[512];
    int fd;

    if (strchr(name, '/'))
        snprintf(path, sizeof path, "%s", name);
    else
        snprintf(path, sizeof path, "/var/run/netns/%s", name);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    if (setns(fd, CLONE_NEWNET) < 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

static int tun_open(const char *ns, const char *ifname, int home)
{
    struct ifreq ifr;
    int fd;

    if (enter_ns(ns) < 0) {
        fprintf(stderr, "linkemu: namespace %s: %s\n", ns, strerror(errno));
        exit(1);
    }
    if ((fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC)) < 0)
        die("/dev/net/tun");
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0)
        die(ifname);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
        die("fcntl");
    if (setns(home, CLONE_NEWNET) < 0)
        die("setns back");
    return fd;
}

static void pcap_write(uint64_t t, const unsigned char *p, uint32_t len)
{
    uint64_t rt;
    uint32_t h[4];

    if (!pcap)
        return;
    rt = t + (uint64_t)pcap_off_ns;
    h[0] = (uint32_t)(rt / 1000000000u);
    h[1] = (uint32_t)(rt % 1000000000u / 1000u);
    h[2] = len;
    h[3] = len;
    fwrite(h, sizeof h, 1, pcap);
    fwrite(p, 1, len, pcap);
}

static void pcap_open(const char *path)
{
    /* classic pcap, microsecond timestamps, LINKTYPE_RAW (101) */
    uint32_t gh[6] = { 0xa1b2c3d4, 0x00040002, 0, 0, PKTMAX, 101 };
    struct timespec rt, mt;

    if (!(pcap = fopen(path, "w")))
        die(path);
    fwrite(gh, sizeof gh, 1, pcap);
    clock_gettime(CLOCK_REALTIME, &rt);
    clock_gettime(CLOCK_MONOTONIC, &mt);
    pcap_off_ns = ((int64_t)rt.tv_sec - mt.tv_sec) * 1000000000 + (rt.tv_nsec - mt.tv_nsec);
}

/* Serialization time of len bytes, ns. */
static uint64_t ser_ns(uint32_t len)
{
    return (uint64_t)((double)len * 8e9 / rate_bps + 0.5);
}

/* A packet of len bytes arrived at t: queue it or drop it. */
static void enqueue(struct dir *d, uint64_t t, unsigned char *buf, uint32_t len, int from_a)
{
    uint64_t backlog_ns = d->line_free > t ? d->line_free - t : 0;
    uint64_t backlog = (uint64_t)((double)backlog_ns * rate_bps / 8e9);
    struct pkt *p;

    d->in_pkts++;
    d->in_bytes += len;
    if (from_a)
        pcap_write(t, buf, len);
    if (backlog > d->max_backlog)
        d->max_backlog = backlog;
    if (backlog + len > qlimit || d->tail - d->head >= RING) {
        d->qdrops++;
        d->qdrop_bytes += len;
        return;
    }
    p = &d->ring[d->tail % RING];
    if (!(p->data = malloc(len)))
        die("malloc");
    memcpy(p->data, buf, len);
    p->len = len;
    d->line_free = (d->line_free > t ? d->line_free : t) + ser_ns(len);
    p->due = d->line_free + owd_ns;
    d->tail++;
}

/* Deliver every packet whose time has come; return the next due time or 0. */
static uint64_t deliver(struct dir *d, uint64_t t)
{
    while (d->head != d->tail) {
        struct pkt *p = &d->ring[d->head % RING];
        if (p->due > t)
            return p->due;
        if (write(d->out, p->data, p->len) == (ssize_t)p->len) {
            d->out_pkts++;
            d->out_bytes += p->len;
            if (d->out_is_a)
                pcap_write(t, p->data, p->len);
        } else {
            /* EIO: the receiving interface is down; the packet is lost */
            d->down_drops++;
        }
        free(p->data);
        p->data = NULL;
        d->head++;
    }
    return 0;
}

static void read_all(struct dir *d, int from_a)
{
    static unsigned char buf[PKTMAX];
    ssize_t n;

    for (;;) {
        n = read(d->in, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            die("read");
        }
        if (n == 0)
            return;
        enqueue(d, now_ns(), buf, (uint32_t)n, from_a);
    }
}

static void print_dir(FILE *f, const struct dir *d)
{
    fprintf(f, "%s_in_pkts %llu\n%s_in_bytes %llu\n%s_out_pkts %llu\n%s_out_bytes %llu\n"
               "%s_qdrops %llu\n%s_qdrop_bytes %llu\n%s_down_drops %llu\n%s_max_backlog %llu\n",
            d->name, (unsigned long long)d->in_pkts, d->name, (unsigned long long)d->in_bytes,
            d->name, (unsigned long long)d->out_pkts, d->name, (unsigned long long)d->out_bytes,
            d->name, (unsigned long long)d->qdrops, d->name, (unsigned long long)d->qdrop_bytes,
            d->name, (unsigned long long)d->down_drops, d->name, (unsigned long long)d->max_backlog);
}

static void write_stats(const struct dir *ab, const struct dir *ba)
{
    char tmp[4096];
    FILE *f;

    if (pcap)
        fflush(pcap);
    if (!stats_path) {
        print_dir(stderr, ab);
        print_dir(stderr, ba);
        return;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", stats_path);
    if (!(f = fopen(tmp, "w"))) {
        fprintf(stderr, "linkemu: %s: %s\n", tmp, strerror(errno));
        return;
    }
    print_dir(f, ab);
    print_dir(f, ba);
    fclose(f);
    rename(tmp, stats_path);
}

static void reset(struct dir *d)
{
    d->in_pkts = d->in_bytes = d->out_pkts = d->out_bytes = 0;
    d->qdrops = d->qdrop_bytes = d->down_drops = d->max_backlog = 0;
}

static double parse_rate(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    switch (*end) {
    case 'k': case 'K': v *= 1e3; end++; break;
    case 'm': case 'M': v *= 1e6; end++; break;
    case 'g': case 'G': v *= 1e9; end++; break;
    }
    if (*end || v <= 0) {
        fprintf(stderr, "linkemu: bad rate %s\n", s);
        exit(2);
    }
    return v;
}

static void usage(void)
{
    fprintf(stderr, "usage: linkemu --nsA NS --nsB NS --rate BITS[k|M] --rtt MS [--ifA tunA] [--ifB tunB]\n"
                    "               [--queue BYTES] [--pcap FILE] [--stats FILE] [--ready FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "nsA", 1, 0, 'a' }, { "nsB", 1, 0, 'b' }, { "ifA", 1, 0, 'A' }, { "ifB", 1, 0, 'B' },
        { "rate", 1, 0, 'r' }, { "rtt", 1, 0, 't' }, { "queue", 1, 0, 'q' },
        { "pcap", 1, 0, 'p' }, { "stats", 1, 0, 's' }, { "ready", 1, 0, 'R' }, { 0, 0, 0, 0 }
    };
    const char *nsa = NULL, *nsb = NULL, *ifa = "tunA", *ifb = "tunB", *ready = NULL;
    static struct dir ab, ba;
    double rtt_ms = -1;
    struct sigaction sa;
    sigset_t block, empty;
    int c, home, fa, fb;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'a': nsa = optarg; break;
        case 'b': nsb = optarg; break;
        case 'A': ifa = optarg; break;
        case 'B': ifb = optarg; break;
        case 'r': rate_bps = parse_rate(optarg); break;
        case 't': rtt_ms = strtod(optarg, NULL); break;
        case 'q': qlimit = strtoull(optarg, NULL, 10); break;
        case 'p': pcap_open(optarg); break;
        case 's': stats_path = optarg; break;
        case 'R': ready = optarg; break;
        default: usage();
        }
    }
    if (!nsa || !nsb || rate_bps <= 0 || rtt_ms < 0 || qlimit < 1500 || optind != argc)
        usage();
    owd_ns = (uint64_t)(rtt_ms * 1e6 / 2 + 0.5);

    if ((home = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0)
        die("/proc/self/ns/net");
    fa = tun_open(nsa, ifa, home);
    fb = tun_open(nsb, ifb, home);
    ab.name = "ab"; ab.in = fa; ab.out = fb; ab.out_is_a = 0;
    ba.name = "ba"; ba.in = fb; ba.out = fa; ba.out_is_a = 1;

    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, NULL);
    sigemptyset(&empty);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    if (ready) {
        FILE *f = fopen(ready, "w");
        if (!f)
            die(ready);
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }

    while (!want_exit) {
        struct pollfd pf[2] = { { fa, POLLIN, 0 }, { fb, POLLIN, 0 } };
        struct timespec ts, *tsp = NULL;
        uint64_t t = now_ns(), n1, n2, next;

        n1 = deliver(&ab, t);
        n2 = deliver(&ba, t);
        next = n1 && n2 ? (n1 < n2 ? n1 : n2) : (n1 ? n1 : n2);
        if (next) {
            uint64_t w = next > t ? next - t : 0;
            ts.tv_sec = (time_t)(w / 1000000000u);
            ts.tv_nsec = (long)(w % 1000000000u);
            tsp = &ts;
        }
        if (ppoll(pf, 2, tsp, &empty) < 0) {
            if (errno != EINTR)
                die("ppoll");
        } else {
            if (pf[0].revents & POLLIN)
                read_all(&ab, 1);
            if (pf[1].revents & POLLIN)
                read_all(&ba, 0);
            if ((pf[0].revents | pf[1].revents) & (POLLERR | POLLNVAL)) {
                fprintf(stderr, "linkemu: poll error on a TUN device\n");
                break;
            }
        }
        if (want_reset) {
            want_reset = 0;
            reset(&ab);
            reset(&ba);
        }
        if (want_stats) {
            want_stats = 0;
            write_stats(&ab, &ba);
        }
    }
    write_stats(&ab, &ba);
    if (pcap)
        fclose(pcap);
    return 0;
}
