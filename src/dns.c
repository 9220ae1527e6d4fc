/*
 * dns.c: MX and address lookups for the event loop, on top of c-ares.
 *
 * The wire protocol is c-ares' job: UDP to the recursive servers named by
 * the `resolver` key or by /etc/resolv.conf (RFC 1035 4.2.1), TCP when an
 * answer comes back truncated (RFC 1035 4.2.2, RFC 7766), retries and
 * failover, random query ids, and matching an answer to its question
 * (id, the question section, and the server: its UDP socket is connected,
 * so the kernel drops datagrams from any other address or port).  It keeps
 * no socket open between busy spells: when the last question is answered
 * its sockets close, and the next question goes out from a fresh
 * ephemeral port.  RFC 5452 4.5 asks for a new port per question: with
 * c-ares 1.20 or later (ARES_OPT_UDP_MAX_QUERIES) each UDP socket carries
 * one question; 1.18 (Debian bookworm) keeps one socket per server while
 * questions are in flight.
 * Nothing here blocks: c-ares reports its
 * sockets through the socket-state callback, they are watched in our
 * epoll loop, and its retry deadlines are one loop timer.
 *
 * What stays ours is mail routing (RFC 5321 5.1, RFC 7505): MX order with
 * a random tie-break, implicit MX, null MX, which failures are permanent,
 * address literals, /etc/hosts (read once at start), and bounds on what
 * an answer may make us do.
 *
 * Two levels of objects:
 *   struct dns_query  what a caller asked for (the MX hosts of a domain
 *                     with their addresses, or the addresses of one host);
 *   struct dns_tx     one question (name, type) handed to c-ares.
 * An MX lookup is one MX question, then A and AAAA questions for every
 * exchange in parallel.
 *
 * Callbacks: a result, whether known at once (address literal, /etc/hosts,
 * bad name, "resolver busy") or from the network, is delivered from a
 * zero-delay timer: never inside dns_resolve_* and never inside c-ares, so
 * a caller can store the returned handle first and may call dns_resolve_*
 * or dns_cancel from its callback.  dns_cancel() is safe until the
 * callback has run, and a no-op inside the callback itself; once the
 * callback has returned, the query is freed here and the handle is dead.
 * A cancelled query's questions cannot be withdrawn from c-ares one by one:
 * they stay as orphans until answered or timed out (or all are cancelled
 * at once when no live query is left).  dns_free() must not be called
 * from a callback.
 */
#include "internal.h"

#include <ares.h>
#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <sys/epoll.h>

#define DNS_NAME_MAX      253   /* text form, no trailing dot (RFC 1035 2.3.4: 255 on the wire) */
#define DNS_MAX_SERVERS   3     /* MAXNS of the classic resolver */
#define DNS_MAX_QUERIES   256   /* in flight; beyond: "resolver busy" */
#define DNS_MAX_CNAME     8     /* CNAME hops followed inside one answer */
#define DNS_MSG_MAX       32    /* MX or addresses kept per answer */
#define DNS_MSG_RR        64    /* answer records of interest examined per answer */
#ifdef ARES_OPT_UDP_MAX_QUERIES
/* c-ares 1.20 and later: one UDP socket per question in flight, so the
 * questions in flight are capped to what the slots hold. */
#define DNS_MAX_SOCKS     256
#define DNS_MAX_TXS       (DNS_MAX_SOCKS - 2 * DNS_MAX_SERVERS - 2 * DNS_MAX_HOSTS)
#else
#define DNS_MAX_SOCKS     16    /* one UDP and one TCP socket per server */
#define DNS_MAX_TXS       (4 * DNS_MAX_QUERIES)
#endif

#define DNS_T_A      1
#define DNS_T_CNAME  5
#define DNS_T_MX     15
#define DNS_T_AAAA   28
#define DNS_C_IN     1

/* dns_answer_* results. */
#define DNS_ANS_OK    0
#define DNS_ANS_BAD   (-1)              /* malformed answer */
#define DNS_ANS_LOOP  (-2)              /* the CNAME chain loops or is too long */

struct dns_mx {
    int pref;
    char host[DNS_NAME_MAX + 1];
};

struct dns_addr {
    int family;                         /* AF_INET or AF_INET6 */
    unsigned char a[16];
};

/* ----------------------------------------------------- answer digests */
/* c-ares delivers an answer whose id and question match; names in it are
 * expanded by c-ares (ares_expand_name: compression pointers, label
 * types); what is here decides what to keep of it.  The parse functions
 * of c-ares are not used: they differ between versions in which records
 * they accept.  These functions see whatever a server sent, so
 * tests/fuzz/fuzz_dns.c feeds them arbitrary bytes. */

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* Expands the name at p into out (lower case); the length it takes in the
 * message goes to *used.  -1 if malformed or longer than DNS_NAME_MAX. */
static int dns_name_at(const unsigned char *p, const unsigned char *msg, int len, char *out, long *used)
{
    char *s = NULL;
    size_t n;

    if (ares_expand_name(p, msg, len, &s, used) != ARES_SUCCESS)
        return -1;
    n = strlen(s);
    if (n > DNS_NAME_MAX) {
        ares_free_string(s);
        return -1;
    }
    memcpy(out, s, n + 1);
    ares_free_string(s);
    util_lower(out);
    return 0;
}

/* One record of the answer section: its owner, type and data. */
struct dns_rr {
    char owner[DNS_NAME_MAX + 1];
    uint16_t type;
    uint16_t rdlen;
    const unsigned char *rdata;
};

/* The records of interest of the last answer walked (the loop is
 * single-threaded). */
static struct dns_rr dns_rrs[DNS_MSG_RR];

/* The answer section of msg, as far as it concerns a question of type
 * qtype: the records of that type owned by the name at the end of the
 * CNAME chain that starts at the question name (RFC 1034 3.6.2, RFC 5321
 * 5.1), into rr[0..*n).  c-ares has matched id and question already and
 * expands the names; what is checked here is that every record header
 * and its data lie inside the message, that the question name leads to
 * the records (a record for a name off the chain is ignored: newer c-ares
 * parsers would take it), and that the chain ends within DNS_MAX_CNAME
 * hops without a loop.  The other sections are never read.  The records
 * kept are dns_rrs[idx[0..*n)]. */
static int dns_answer_walk(const unsigned char *msg, int len, uint16_t qtype, int *idx, int *n)
{
    struct dns_rr *all = dns_rrs;
    char name[DNS_NAME_MAX + 1];
    const unsigned char *p = msg + 12, *end = msg + len;
    unsigned an;
    int nall = 0, hops = 0;
    long used;

    *n = 0;
    if (len < 12 || get16(msg + 4) != 1 || dns_name_at(p, msg, len, name, &used) < 0 ||
        end - (p + used) < 4)
        return DNS_ANS_BAD;
    an = get16(msg + 6);
    p += used + 4;
    for (unsigned i = 0; i < an; i++) {
        struct dns_rr r;
        if (dns_name_at(p, msg, len, r.owner, &used) < 0 || end - (p + used) < 10)
            return DNS_ANS_BAD;
        p += used;
        r.type = get16(p);
        r.rdlen = get16(p + 8);
        r.rdata = p + 10;
        p += 10;
        if (end - p < r.rdlen)
            return DNS_ANS_BAD;
        p += r.rdlen;
        if (get16(r.rdata - 8) == DNS_C_IN && (r.type == qtype || r.type == DNS_T_CNAME) &&
            nall < DNS_MSG_RR)
            all[nall++] = r;
    }
    /* Follow the chain from the question name. */
    for (;;) {
        int i, cname = -1, found = 0;
        for (i = 0; i < nall; i++) {
            if (strcmp(all[i].owner, name) != 0)
                continue;
            if (all[i].type == qtype)
                found = 1;
            else if (cname < 0)
                cname = i;
        }
        if (found || cname < 0 || qtype == DNS_T_CNAME)
            break;
        if (++hops > DNS_MAX_CNAME)
            return DNS_ANS_LOOP;        /* a loop, or a chain too long */
        if (dns_name_at(all[cname].rdata, msg, len, name, &used) < 0 || used != all[cname].rdlen)
            return DNS_ANS_BAD;
    }
    for (int i = 0; i < nall && *n < DNS_MSG_MAX; i++)
        if (all[i].type == qtype && strcmp(all[i].owner, name) == 0)
            idx[(*n)++] = i;
    return DNS_ANS_OK;
}

/* The MX records of an answer (rcode NOERROR, at least one answer record)
 * into mx[0..*n), lower case; the root exchange of a null MX is "". */
static int dns_answer_mx(const unsigned char *msg, int len, struct dns_mx *mx, int cap, int *n)
{
    int idx[DNS_MSG_MAX], nrr, rc;

    *n = 0;
    if ((rc = dns_answer_walk(msg, len, DNS_T_MX, idx, &nrr)) != DNS_ANS_OK)
        return rc;
    for (int i = 0; i < nrr && *n < cap; i++) {
        const struct dns_rr *r = &dns_rrs[idx[i]];
        long used;
        /* RFC 1035 3.3.9: PREFERENCE, then EXCHANGE filling the rest. */
        if (r->rdlen < 3 || dns_name_at(r->rdata + 2, msg, len, mx[*n].host, &used) < 0 ||
            used != r->rdlen - 2) {
            *n = 0;
            return DNS_ANS_BAD;
        }
        mx[*n].pref = get16(r->rdata);
        (*n)++;
    }
    return DNS_ANS_OK;
}

/* The A (family AF_INET) or AAAA records of an answer into a[0..*n). */
static int dns_answer_addrs(const unsigned char *msg, int len, int family, struct dns_addr *a, int cap, int *n)
{
    size_t alen = family == AF_INET ? 4 : 16;
    int idx[DNS_MSG_MAX], nrr, rc;

    *n = 0;
    rc = dns_answer_walk(msg, len, family == AF_INET ? DNS_T_A : DNS_T_AAAA, idx, &nrr);
    if (rc != DNS_ANS_OK)
        return rc;
    for (int i = 0; i < nrr; i++) {
        const struct dns_rr *r = &dns_rrs[idx[i]];
        if (r->rdlen != alen) {
            *n = 0;
            return DNS_ANS_BAD;         /* RFC 1035 3.4.1, RFC 3596 2.2 */
        }
        if (*n < cap) {
            a[*n].family = family;
            memcpy(a[*n].a, r->rdata, alen);
            (*n)++;
        }
    }
    return DNS_ANS_OK;
}

/* ------------------------------------------------------------ routing */

/* 1 if s is usable as a host name: letters, digits, '-', '_' and dots. */
static int dns_hostname_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > DNS_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '-' && c != '_' && c != '.')
            return 0;
        if (c == '.' && (i == 0 || s[i - 1] == '.'))
            return 0;
    }
    return 1;
}

/* RFC 5321 5.1: lowest preference first; among equal preferences the
 * order is random, to spread the load over the exchanges. */
static void dns_mx_order(struct dns_mx *mx, int n)
{
    for (int i = 1; i < n; i++) {       /* insertion sort: n is small */
        struct dns_mx t = mx[i];
        int j = i;
        while (j > 0 && mx[j - 1].pref > t.pref) {
            mx[j] = mx[j - 1];
            j--;
        }
        mx[j] = t;
    }
    for (int s = 0; s < n;) {
        int e = s + 1;
        while (e < n && mx[e].pref == mx[s].pref)
            e++;
        for (int i = e - 1; i > s; i--) {       /* Fisher-Yates over [s, e) */
            int j = s + (int)randombytes_uniform((uint32_t)(i - s + 1));
            if (j != i) {
                struct dns_mx t = mx[i];
                mx[i] = mx[j];
                mx[j] = t;
            }
        }
        s = e;
    }
}

/* ---------------------------------------------- literals and /etc/hosts */

struct dns_hostent {
    char *name;                         /* lower case */
    struct dns_addr addr;
};


/* hosts(5): "ADDR NAME [ALIAS...]" lines.  Returns a malloc'd table (n
 * entries) or NULL when empty or out of memory. */
static struct dns_hostent *dns_hosts_parse(const char *text, size_t *n)
{
    struct dns_hostent *h = NULL;
    size_t cap = 0;
    const char *p = text;

    *n = 0;
    while (*p) {
        char line[1024], *save, *w, *name;
        struct dns_addr a;
        size_t len = strcspn(p, "\n");
        util_strlcpy(line, p, len + 1 < sizeof line ? len + 1 : sizeof line);
        p += len;
        if (*p)
            p++;
        line[strcspn(line, "#")] = '\0';
        w = strtok_r(line, " \t\r", &save);
        if (!w)
            continue;
        char *pct = strchr(w, '%');     /* fe80::1%eth0: the scope is not kept */
        if (pct)
            *pct = '\0';
        if (inet_pton(AF_INET, w, a.a) == 1)
            a.family = AF_INET;
        else if (inet_pton(AF_INET6, w, a.a) == 1)
            a.family = AF_INET6;
        else
            continue;
        while ((name = strtok_r(NULL, " \t\r", &save))) {
            size_t nl = strlen(name);
            if (nl && name[nl - 1] == '.')
                name[--nl] = '\0';
            if (!dns_hostname_ok(name))
                continue;
            if (*n == cap) {
                size_t nc = cap ? cap * 2 : 16;
                struct dns_hostent *nh = realloc(h, nc * sizeof *nh);
                if (!nh)
                    return h;
                h = nh;
                cap = nc;
            }
            h[*n].name = strdup(name);
            if (!h[*n].name)
                return h;
            util_lower(h[*n].name);
            h[*n].addr = a;
            (*n)++;
        }
    }
    return h;
}

static void dns_hosts_free(struct dns_hostent *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(h[i].name);
    free(h);
}

static void dns_sockaddr_set(struct sockaddr_storage *ss, const struct dns_addr *a)
{
    memset(ss, 0, sizeof *ss);
    if (a->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)(void *)ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, a->a, 4);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)(void *)ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, a->a, 16);
    }
}

/* Addresses of one host, collected per family and merged at the end:
 * IPv4 first, then IPv6.  When both families exist and there are more
 * addresses than slots, IPv6 keeps up to half of them, so a node with
 * IPv6 only still finds a usable address. */
struct dns_addrset {
    int n4, n6;
    struct dns_addr v4[DNS_MAX_ADDRS], v6[DNS_MAX_ADDRS];
};

static void dns_addrset_add(struct dns_addrset *s, const struct dns_addr *a)
{
    struct dns_addr *arr = a->family == AF_INET ? s->v4 : s->v6;
    int *n = a->family == AF_INET ? &s->n4 : &s->n6;
    for (int i = 0; i < *n; i++)
        if (!memcmp(arr[i].a, a->a, a->family == AF_INET ? 4 : 16))
            return;
    if (*n < DNS_MAX_ADDRS)
        arr[(*n)++] = *a;
}

static void dns_addrset_fill(const struct dns_addrset *s, struct dns_host *h)
{
    int n6 = s->n6 < DNS_MAX_ADDRS / 2 ? s->n6 : DNS_MAX_ADDRS / 2;
    int n4 = s->n4 < DNS_MAX_ADDRS - n6 ? s->n4 : DNS_MAX_ADDRS - n6;
    if (n4 + s->n6 <= DNS_MAX_ADDRS)
        n6 = s->n6;
    h->naddrs = 0;
    for (int i = 0; i < n4; i++)
        dns_sockaddr_set(&h->addrs[h->naddrs++], &s->v4[i]);
    for (int i = 0; i < n6 && h->naddrs < DNS_MAX_ADDRS; i++)
        dns_sockaddr_set(&h->addrs[h->naddrs++], &s->v6[i]);
}

/* Addresses of name in a hosts table; 1 if any. */
static int dns_hosts_lookup(const struct dns_hostent *h, size_t n, const char *name, struct dns_addrset *s)
{
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(h[i].name, name) == 0) {
            dns_addrset_add(s, &h[i].addr);
            found = 1;
        }
    }
    return found;
}

/* "[192.0.2.1]", "[IPv6:2001:db8::1]" (RFC 5321 4.1.3), or with bare 0
 * a plain numeric address.  1 if s is one (a filled), 0 if not a literal,
 * -1 if bracketed but invalid. */
static int dns_literal(const char *s, struct dns_addr *a)
{
    char buf[64];
    size_t n = strlen(s);

    if (*s == '[') {
        if (n < 3 || s[n - 1] != ']' || n - 2 >= sizeof buf)
            return -1;
        memcpy(buf, s + 1, n - 2);
        buf[n - 2] = '\0';
        if (!strncasecmp(buf, "IPv6:", 5)) {
            a->family = AF_INET6;
            return inet_pton(AF_INET6, buf + 5, a->a) == 1 ? 1 : -1;
        }
        a->family = AF_INET;
        return inet_pton(AF_INET, buf, a->a) == 1 ? 1 : -1;
    }
    if (inet_pton(AF_INET, s, a->a) == 1) {
        a->family = AF_INET;
        return 1;
    }
    if (inet_pton(AF_INET6, s, a->a) == 1) {
        a->family = AF_INET6;
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------ resolver */

enum dns_kind { Q_MX = 1, Q_HOST };
enum dns_phase { P_MX = 1, P_ADDR, P_DONE };

/* What became of one A or AAAA question. */
enum { LOOK_NONE = 0, LOOK_OK, LOOK_NODATA, LOOK_NXDOMAIN, LOOK_TEMP };

struct dns_hostlook {
    char name[DNS_NAME_MAX + 1];
    int pref;
    int st4, st6;                       /* LOOK_* of A and AAAA */
    struct dns_addrset as;
};

struct dns_query {
    int kind;                           /* enum dns_kind */
    int phase;                          /* enum dns_phase */
    char name[DNS_NAME_MAX + 1];
    dns_cb cb;
    void *arg;
    int pending;                        /* questions not answered yet */
    int implicit;                       /* RFC 5321 5.1 implicit MX */
    int in_cb;                          /* the callback is running: cancel is a no-op */
    int nlook;
    struct dns_hostlook look[DNS_MAX_HOSTS];
    char temp_err[320];                 /* the last temporary failure */
    struct dns_result res;
    struct timer timer;                 /* delivers the result */
    struct dns_query *next, *prev;
};

/* One question with c-ares; q is NULL once its query is gone (orphan). */
struct dns_tx {
    struct dns_query *q;
    int look;                           /* index in q->look, -1 for the MX question */
    int qtype;
    char qname[DNS_NAME_MAX + 1];
    struct dns_tx *next, *prev;
};

/* A socket of c-ares, watched in the loop.  The slots never move or get
 * freed, so an event still queued for a slot whose socket closed earlier
 * in the same loop turn finds fd -1 (or a new socket, for which a
 * spurious readiness costs one EAGAIN) and never freed memory. */
struct dns_sock {
    struct watch w;
    int used;
};

static struct {
    int ready;
    ares_channel ch;
    struct dns_sock socks[DNS_MAX_SOCKS];
    struct timer timer;                 /* c-ares' next retry deadline */
    struct timer sweep;                 /* drops orphans when no query is live */
    struct dns_hostent *hosts;
    size_t nhosts;
    struct dns_query *queries;
    int nqueries;
    struct dns_tx *txs;                 /* every question c-ares holds */
    int ntxs;
} D = { .timer = { .idx = -1 }, .sweep = { .idx = -1 } };

/* Test knobs (the unit tests include this file). */
static const char *dns_hosts_path = "/etc/hosts";
static int dns_force_timeout_ms, dns_force_attempts;

#ifdef MAILNODE_TEST
__attribute__((unused)) static void dns_set_timeout_ms(int ms, int attempts)
{
    dns_force_timeout_ms = ms;
    dns_force_attempts = attempts;
}
#endif

static void query_tx_done(struct dns_query *q, int look, int qtype, int status,
                          const unsigned char *msg, int len);

static const char *dns_type_name(int t)
{
    return t == DNS_T_MX ? "MX" : t == DNS_T_A ? "A" : t == DNS_T_AAAA ? "AAAA" : "?";
}

/* Short words for the log and DSNs; the rcode names are those of RFC 1035
 * 4.1.1, which an operator can look up. */
static const char *dns_status_text(int status)
{
    switch (status) {
    case ARES_ESERVFAIL:    return "SERVFAIL from every server";
    case ARES_EREFUSED:     return "REFUSED by every server";
    case ARES_EFORMERR:     return "FORMERR: the server did not understand the question";
    case ARES_ENOTIMP:      return "NOTIMP from the server";
    case ARES_ETIMEOUT:     return "timeout: no answer from the DNS servers";
    /* c-ares reports a question every server failed (SERVFAIL, REFUSED,
     * connection refused or closed) as ECONNREFUSED. */
    case ARES_ECONNREFUSED: return "no usable answer from any DNS server (SERVFAIL, REFUSED or unreachable)";
    case ARES_EBADRESP:     return "malformed answer";
    case ARES_ENOMEM:       return "out of memory";
    default:                return ares_strerror(status);
    }
}

static char *dns_read_file(const char *path, size_t max)
{
    FILE *f = fopen(path, "r");
    char *buf;
    size_t n;

    if (!f)
        return NULL;
    buf = malloc(max + 1);
    if (!buf) {
        fclose(f);
        return NULL;
    }
    n = fread(buf, 1, max, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* ------------------------------------------------- c-ares in the loop */

static void dns_timer_fire(void *arg);

/* While c-ares has transactions out and its deadlines cannot be asked
 * (below), the loop looks at them this often. */
#define DNS_TICK_MS 100

/* c-ares keeps its own retry deadlines: one loop timer at the nearest.
 * ares_timeout() answers in a struct timeval, whose layout follows time_t.
 * A 32-bit build with a 64-bit time_t (_TIME_BITS=64, as on armhf) may
 * run against a c-ares built with a 32-bit time_t (Debian 12 armhf): the
 * library's 8-byte answer read as a 16-byte struct is garbage, and a
 * lookup whose server never answers would wait forever.  There the timer
 * ticks instead while transactions are out; ares_process_fd() checks the
 * deadlines itself, through no time_t of ours. */
static void dns_timer_arm(void)
{
    struct timeval tv, *t;

    if (!D.ready)
        return;
    if (sizeof(time_t) != sizeof(long)) {
        if (D.ntxs > 0)
            timer_set(&D.timer, DNS_TICK_MS, dns_timer_fire, NULL);
        else
            timer_cancel(&D.timer);
        return;
    }
    t = ares_timeout(D.ch, NULL, &tv);
    if (!t) {
        timer_cancel(&D.timer);
        return;
    }
    timer_set(&D.timer, (int64_t)t->tv_sec * 1000 + (t->tv_usec + 999) / 1000, dns_timer_fire, NULL);
}

static void dns_timer_fire(void *arg)
{
    MN_UNUSED(arg);
    ares_process_fd(D.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    dns_timer_arm();
}

static void dns_sock_ready(struct watch *w, uint32_t events)
{
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;

    if (w->fd < 0 || !D.ready)
        return;                         /* closed earlier in this turn */
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        rfd = w->fd;
    if (events & EPOLLOUT)
        wfd = w->fd;
    ares_process_fd(D.ch, rfd, wfd);
    dns_timer_arm();
}

/* ARES_OPT_SOCK_STATE_CB: c-ares opened, changed or is about to close a
 * socket. */
static void dns_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    uint32_t ev = (readable ? EPOLLIN : 0) | (writable ? EPOLLOUT : 0);
    struct dns_sock *s = NULL, *spare = NULL;

    MN_UNUSED(data);
    for (int i = 0; i < DNS_MAX_SOCKS; i++) {
        if (D.socks[i].used && D.socks[i].w.fd == fd)
            s = &D.socks[i];
        else if (!D.socks[i].used && !spare)
            spare = &D.socks[i];
    }
    if (!ev) {
        if (s) {
            loop_watch_del(&s->w);
            s->w.fd = -1;
            s->used = 0;
        }
        return;
    }
    if (s) {
        loop_watch_mod(&s->w, ev);
        return;
    }
    /* Without a slot the socket is never watched: its questions time out
     * and fail temporarily.  DNS_MAX_TXS and the cap on servers keep us
     * from getting here. */
    if (!spare) {
        log_err("dns: more than %d resolver sockets; answers on socket %d are not read",
                DNS_MAX_SOCKS, (int)fd);
        return;
    }
    spare->w.fd = fd;
    spare->w.events = ev;
    spare->w.fn = dns_sock_ready;
    spare->w.arg = NULL;
    if (loop_watch_add(&spare->w) < 0) {
        log_err("dns: cannot watch resolver socket: %s", strerror(errno));
        spare->w.fd = -1;
        return;
    }
    spare->used = 1;
}

/* --------------------------------------------------------- questions */

static void tx_unlink(struct dns_tx *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        D.txs = t->next;
    if (t->next)
        t->next->prev = t->prev;
    D.ntxs--;
}

/* The c-ares callback of a question.  It runs inside ares_process_fd (or
 * inside ares_query, ares_cancel or ares_destroy), so it only records the
 * outcome; callers hear of it from their query's timer. */
static void tx_answered(void *arg, int status, int timeouts, unsigned char *msg, int len)
{
    struct dns_tx *t = arg;
    struct dns_query *q = t->q;
    int look = t->look, qtype = t->qtype;

    MN_UNUSED(timeouts);
    tx_unlink(t);
    if (q)
        log_debug("dns: %s %s: %s", dns_type_name(qtype), t->qname,
                  status == ARES_SUCCESS ? "answer" : dns_status_text(status));
    free(t);
    if (!q)
        return;                         /* an orphan of a cancelled query */
    q->pending--;
    query_tx_done(q, look, qtype, status, msg, len);
}

/* Asks one question for q.  The answer may come at once (c-ares fails some
 * questions inside ares_query): q->pending guards the caller. */
static int tx_start(struct dns_query *q, int look, const char *name, int qtype)
{
    struct dns_tx *t = calloc(1, sizeof *t);

    if (!t)
        return -1;
    t->q = q;
    t->look = look;
    t->qtype = qtype;
    util_strlcpy(t->qname, name, sizeof t->qname);
    t->next = D.txs;
    if (D.txs)
        D.txs->prev = t;
    D.txs = t;
    D.ntxs++;
    q->pending++;
    log_debug("dns: query %s %s", dns_type_name(qtype), name);
    ares_query(D.ch, name, DNS_C_IN, qtype, tx_answered, t);
    dns_timer_arm();
    return 0;
}

/* ----------------------------------------------------------- queries */

static void query_unlink(struct dns_query *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        D.queries = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->next = q->prev = NULL;
    D.nqueries--;
}

/* With no live query left, c-ares drops every orphan at once (their
 * callbacks free them).  Never from inside c-ares: ares_cancel() within a
 * callback would free the question c-ares is still finishing. */
static void dns_sweep(void *arg)
{
    MN_UNUSED(arg);
    for (struct dns_tx *t = D.txs; t; t = t->next)
        if (t->q)
            return;
    if (D.txs && D.ready) {
        ares_cancel(D.ch);
        dns_timer_arm();
    }
}

/* The query's questions become orphans. */
static void query_drop_txs(struct dns_query *q)
{
    for (struct dns_tx *t = D.txs; t; t = t->next)
        if (t->q == q)
            t->q = NULL;
    q->pending = 0;
    if (D.txs)
        timer_set(&D.sweep, 0, dns_sweep, NULL);
}

/* Runs the callback and frees the query. */
static void query_callback(void *arg)
{
    struct dns_query *q = arg;
    query_unlink(q);
    if (q->res.status == DNS_OK)
        log_debug("dns: %s %s: %d host(s)", q->kind == Q_MX ? "MX" : "host", q->name, q->res.nhosts);
    else
        log_debug("dns: %s %s: %s", q->kind == Q_MX ? "MX" : "host", q->name, q->res.error);
    q->in_cb = 1;
    q->cb(q->arg, &q->res);
    free(q);
}

/* The query has its result: its questions stop, and the callback runs
 * from the loop, after whatever called us has returned. */
static void query_deliver(struct dns_query *q)
{
    q->phase = P_DONE;
    query_drop_txs(q);
    timer_set(&q->timer, 0, query_callback, q);
}

static void query_fail(struct dns_query *q, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void query_fail(struct dns_query *q, int status, const char *fmt, ...)
{
    va_list ap;
    q->res.status = status;
    q->res.nhosts = 0;
    va_start(ap, fmt);
    vsnprintf(q->res.error, sizeof q->res.error, fmt, ap);
    va_end(ap);
    query_deliver(q);
}

/* All address questions are answered: build the result. */
static void query_finish_addrs(struct dns_query *q)
{
    int nx = 1, nodata = 1, temp = 0;

    q->res.nhosts = 0;
    for (int i = 0; i < q->nlook; i++) {
        struct dns_hostlook *l = &q->look[i];
        if (l->as.n4 + l->as.n6 > 0) {
            struct dns_host *h = &q->res.hosts[q->res.nhosts++];
            util_strlcpy(h->name, l->name, sizeof h->name);
            h->pref = l->pref;
            dns_addrset_fill(&l->as, h);
            continue;
        }
        if (l->st4 == LOOK_TEMP || l->st6 == LOOK_TEMP)
            temp = 1;
        if (l->st4 != LOOK_NXDOMAIN || l->st6 != LOOK_NXDOMAIN)
            nx = 0;
        if (l->st4 == LOOK_NXDOMAIN || l->st6 == LOOK_NXDOMAIN ||
            l->st4 == LOOK_TEMP || l->st6 == LOOK_TEMP)
            nodata = 0;
    }
    if (q->res.nhosts > 0) {
        q->res.status = DNS_OK;
        q->res.error[0] = '\0';
        query_deliver(q);
        return;
    }
    /* RFC 5321 5.1: MX hosts without addresses are a temporary trouble of
     * the destination; a domain that has neither MX nor address records,
     * or does not exist, gets no mail at all. */
    if (q->kind == Q_MX && !q->implicit) {
        query_fail(q, DNS_TEMP, "no address for MX hosts of %s%s%s", q->name,
                   temp ? ": " : "", temp ? q->temp_err : "");
    } else if (temp) {
        query_fail(q, DNS_TEMP, "DNS lookup of %s failed: %s", q->name, q->temp_err);
    } else if (nx) {
        if (q->kind == Q_MX)
            query_fail(q, DNS_PERM, "domain does not exist (%s)", q->name);
        else
            query_fail(q, DNS_PERM, "host does not exist (%s)", q->name);
    } else if (nodata) {
        if (q->kind == Q_MX)
            query_fail(q, DNS_PERM, "domain has no MX and no address records (%s)", q->name);
        else
            query_fail(q, DNS_PERM, "host has no address records (%s)", q->name);
    } else {
        query_fail(q, DNS_PERM, "no address for %s", q->name);
    }
}

/* Starts the A and AAAA questions of every host not answered already. */
static void query_start_addrs(struct dns_query *q)
{
    q->phase = P_ADDR;
    /* q->pending keeps the query from finishing while questions start,
     * even if some are answered at once. */
    q->pending++;
    for (int i = 0; i < q->nlook && q->phase != P_DONE; i++) {
        struct dns_hostlook *l = &q->look[i];
        if (l->st4 != LOOK_NONE)
            continue;
        l->st4 = l->st6 = LOOK_TEMP;    /* until answered */
        if (tx_start(q, i, l->name, DNS_T_A) < 0 || tx_start(q, i, l->name, DNS_T_AAAA) < 0)
            util_strlcpy(q->temp_err, "cannot start a DNS question", sizeof q->temp_err);
    }
    if (q->phase == P_DONE)
        return;
    q->pending--;
    if (q->pending == 0)
        query_finish_addrs(q);
}

/* The exchanges of an MX answer, in order, become the hosts to look up. */
static void query_take_mx(struct dns_query *q, struct dns_mx *mx, int n)
{
    dns_mx_order(mx, n);
    q->nlook = 0;
    for (int i = 0; i < n && q->nlook < DNS_MAX_HOSTS; i++) {
        struct dns_hostlook *l = &q->look[q->nlook];
        struct dns_addr lit;
        int dup = 0;
        /* The root ("." among other exchanges) and names that cannot be
         * host names are not exchanges we can reach.  Nor is an address
         * written as a name: RFC 1035 3.3.9 wants a domain name, and RFC
         * 1123 2.1 says a host name never has the dotted-decimal form, so
         * "MX 10 192.0.2.1" is a broken record, not a route. */
        if (!dns_hostname_ok(mx[i].host) || dns_literal(mx[i].host, &lit) != 0) {
            log_warn("dns: MX of %s: exchange \"%s\" is not a host name, ignored", q->name, mx[i].host);
            continue;
        }
        for (int k = 0; k < q->nlook; k++)
            dup |= !strcmp(q->look[k].name, mx[i].host);
        if (dup)
            continue;
        memset(l, 0, sizeof *l);
        util_strlcpy(l->name, mx[i].host, sizeof l->name);
        l->pref = mx[i].pref;
        q->nlook++;
        /* Known without asking: /etc/hosts. */
        dns_hosts_lookup(D.hosts, D.nhosts, l->name, &l->as);
        if (l->as.n4 + l->as.n6 > 0)
            l->st4 = l->st6 = LOOK_OK;
    }
}

static void query_on_mx(struct dns_query *q, int status, const unsigned char *msg, int len)
{
    static struct dns_mx mx[DNS_MSG_MAX];
    int n = 0, rc;

    if (status == ARES_ENOTFOUND) {
        query_fail(q, DNS_PERM, "domain does not exist (%s: NXDOMAIN)", q->name);
        return;
    }
    if (status != ARES_SUCCESS && status != ARES_ENODATA) {
        query_fail(q, DNS_TEMP, "DNS lookup of MX for %s failed: %s", q->name, dns_status_text(status));
        return;
    }
    if (status == ARES_SUCCESS && (rc = dns_answer_mx(msg, len, mx, DNS_MSG_MAX, &n)) != DNS_ANS_OK) {
        query_fail(q, DNS_TEMP, "DNS lookup of MX for %s failed: %s", q->name,
                   rc == DNS_ANS_LOOP ? "CNAME chain loops or is too long" : "malformed answer");
        return;
    }
    /* RFC 7505 3: a single MX whose exchange is the root means no mail. */
    if (n == 1 && mx[0].host[0] == '\0') {
        query_fail(q, DNS_PERM, "domain accepts no mail (null MX) (%s)", q->name);
        return;
    }
    if (n == 0) {
        /* RFC 5321 5.1: no MX, the domain itself is the one exchange. */
        q->implicit = 1;
        q->nlook = 1;
        util_strlcpy(q->look[0].name, q->name, sizeof q->look[0].name);
        q->look[0].pref = 0;
        query_start_addrs(q);
        return;
    }
    query_take_mx(q, mx, n);
    if (q->nlook == 0) {
        query_fail(q, DNS_TEMP, "no address for MX hosts of %s (no usable exchange name)", q->name);
        return;
    }
    query_start_addrs(q);
}

static void query_on_addr(struct dns_query *q, struct dns_hostlook *l, int qtype, int status,
                          const unsigned char *msg, int len)
{
    int *st = qtype == DNS_T_A ? &l->st4 : &l->st6;
    struct dns_addr a[DNS_MAX_ADDRS * 2];
    int n = 0, rc = DNS_ANS_OK;

    if (status == ARES_SUCCESS)
        rc = dns_answer_addrs(msg, len, qtype == DNS_T_A ? AF_INET : AF_INET6, a, (int)MN_NELEM(a), &n);
    if (status == ARES_ENOTFOUND) {
        *st = LOOK_NXDOMAIN;
    } else if (status == ARES_ENODATA || (status == ARES_SUCCESS && rc == DNS_ANS_OK && n == 0)) {
        *st = LOOK_NODATA;
    } else if (status == ARES_SUCCESS && rc == DNS_ANS_OK) {
        *st = LOOK_OK;
        for (int i = 0; i < n; i++)
            dns_addrset_add(&l->as, &a[i]);
    } else {
        *st = LOOK_TEMP;
        snprintf(q->temp_err, sizeof q->temp_err, "%s %s: %s", dns_type_name(qtype), l->name,
                 status != ARES_SUCCESS ? dns_status_text(status) :
                 rc == DNS_ANS_LOOP ? "CNAME chain loops or is too long" : "malformed answer");
    }
}

static void query_tx_done(struct dns_query *q, int look, int qtype, int status,
                          const unsigned char *msg, int len)
{
    if (q->phase == P_DONE)
        return;
    if (look < 0) {
        query_on_mx(q, status, msg, len);
        return;
    }
    query_on_addr(q, &q->look[look], qtype, status, msg, len);
    if (q->pending == 0)
        query_finish_addrs(q);
}

static struct dns_query *query_new(int kind, const char *name, dns_cb cb, void *arg)
{
    struct dns_query *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->kind = kind;
    q->cb = cb;
    q->arg = arg;
    q->timer.idx = -1;
    util_strlcpy(q->name, name, sizeof q->name);
    if (*q->name && q->name[strlen(q->name) - 1] == '.')
        q->name[strlen(q->name) - 1] = '\0';
    util_lower(q->name);
    q->next = D.queries;
    if (D.queries)
        D.queries->prev = q;
    D.queries = q;
    D.nqueries++;
    return q;
}

/* Answers known at once (the callback goes out at the next loop turn). */
static struct dns_query *query_later(struct dns_query *q, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static struct dns_query *query_later(struct dns_query *q, int status, const char *fmt, ...)
{
    q->res.status = status;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(q->res.error, sizeof q->res.error, fmt, ap);
        va_end(ap);
    }
    query_deliver(q);
    return q;
}

static struct dns_query *query_one_host(struct dns_query *q, const struct dns_addrset *as)
{
    struct dns_host *h = &q->res.hosts[0];
    util_strlcpy(h->name, q->name, sizeof h->name);
    h->pref = 0;
    dns_addrset_fill(as, h);
    q->res.nhosts = 1;
    return query_later(q, DNS_OK, NULL);
}

/* Common start: the literal and limit checks of both kinds. */
static struct dns_query *query_begin(int kind, const char *name, dns_cb cb, void *arg, int *started)
{
    struct dns_query *q;
    struct dns_addrset as;
    struct dns_addr lit;
    int rc;

    *started = 0;
    if (!name)
        name = "";
    q = query_new(kind, name, cb, arg);
    if (!q)
        return NULL;
    if (!D.ready && dns_init() < 0)
        return query_later(q, DNS_TEMP, "resolver not initialised");
    memset(&as, 0, sizeof as);
    rc = dns_literal(q->name, &lit);
    if (rc < 0)
        return query_later(q, DNS_PERM, "invalid address literal %s", q->name);
    if (rc == 1) {
        dns_addrset_add(&as, &lit);
        return query_one_host(q, &as);
    }
    if (!dns_hostname_ok(q->name))
        return query_later(q, DNS_PERM, "invalid domain name \"%s\"", q->name);
    /* Orphans count too: they hold c-ares memory until they time out. */
    if (D.nqueries > DNS_MAX_QUERIES || D.ntxs > DNS_MAX_TXS)
        return query_later(q, DNS_TEMP, "resolver busy");
    *started = 1;
    return q;
}

struct dns_query *dns_resolve_mx(const char *domain, dns_cb cb, void *arg)
{
    int started;
    struct dns_query *q = query_begin(Q_MX, domain, cb, arg, &started);

    if (!q || !started)
        return q;
    q->phase = P_MX;
    if (tx_start(q, -1, q->name, DNS_T_MX) < 0)
        return query_later(q, DNS_TEMP, "cannot start a DNS question for %s", q->name);
    return q;
}

struct dns_query *dns_resolve_host(const char *host, dns_cb cb, void *arg)
{
    int started;
    struct dns_query *q = query_begin(Q_HOST, host, cb, arg, &started);
    struct dns_hostlook *l;

    if (!q || !started)
        return q;
    l = &q->look[0];
    q->nlook = 1;
    util_strlcpy(l->name, q->name, sizeof l->name);
    if (dns_hosts_lookup(D.hosts, D.nhosts, q->name, &l->as))
        return query_one_host(q, &l->as);
    if (!strcmp(q->name, "localhost") || (strlen(q->name) > 10 &&
        !strcmp(q->name + strlen(q->name) - 10, ".localhost"))) {
        /* RFC 6761 6.3: localhost is the loopback, hosts file or not. */
        struct dns_addr a = { .family = AF_INET, .a = { 127, 0, 0, 1 } };
        dns_addrset_add(&l->as, &a);
        return query_one_host(q, &l->as);
    }
    query_start_addrs(q);
    return q;
}

void dns_cancel(struct dns_query *q)
{
    /* Cancelling from inside its own callback is harmless: the query is
     * freed when the callback returns. */
    if (!q || q->in_cb)
        return;
    timer_cancel(&q->timer);
    query_drop_txs(q);
    query_unlink(q);
    free(q);
}

/* The `resolver` key: "addr", "addr:port", "[v6]:port" or "v6", comma or
 * space separated, into the list c-ares takes. */
static int dns_servers_set(const char *spec)
{
    struct ares_addr_port_node nodes[DNS_MAX_SERVERS];
    char buf[512], *items[DNS_MAX_SERVERS];
    size_t n;

    util_strlcpy(buf, spec, sizeof buf);
    n = util_split_list(buf, items, MN_NELEM(items));
    memset(nodes, 0, sizeof nodes);
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage ss;
        socklen_t sl;
        char host[96];
        int port = 53;
        const char *colon = strchr(items[i], ':');
        int ok;
        size_t il = strlen(items[i]);
        if (*items[i] == '[' && items[i][il - 1] == ']' && il - 2 < sizeof host) {
            memcpy(host, items[i] + 1, il - 2);        /* "[v6]" without a port */
            host[il - 2] = '\0';
            ok = 1;
        } else if (*items[i] == '[' || (colon && !strchr(colon + 1, ':')))
            ok = util_split_hostport(items[i], host, sizeof host, &port) == 0;
        else
            ok = util_strlcpy(host, items[i], sizeof host) < sizeof host;
        if (!ok || !*host || port <= 0 || port > 65535 || util_sockaddr_parse(host, port, &ss, &sl) < 0) {
            log_err("resolver: '%s' is not addr, addr:port or [v6]:port with a numeric address", items[i]);
            return -1;
        }
        nodes[i].family = ss.ss_family;
        nodes[i].udp_port = nodes[i].tcp_port = port;
        if (ss.ss_family == AF_INET)
            memcpy(&nodes[i].addr.addr4, &((struct sockaddr_in *)(void *)&ss)->sin_addr, 4);
        else
            memcpy(&nodes[i].addr.addr6, &((struct sockaddr_in6 *)(void *)&ss)->sin6_addr, 16);
        if (i > 0)
            nodes[i - 1].next = &nodes[i];
    }
    if (n == 0)
        return 0;
    return ares_set_servers_ports(D.ch, nodes) == ARES_SUCCESS ? 0 : -1;
}

/* The servers c-ares found in /etc/resolv.conf: the first DNS_MAX_SERVERS
 * (MAXNS of the classic resolver), so that its sockets fit our slots. */
static int dns_servers_cap(void)
{
    struct ares_addr_port_node *list = NULL, *p;
    int n = 1, rc = 0;

    if (ares_get_servers_ports(D.ch, &list) != ARES_SUCCESS)
        return -1;
    for (p = list; p && p->next && n < DNS_MAX_SERVERS; p = p->next)
        n++;
    if (p && p->next) {
        struct ares_addr_port_node *tail = p->next;
        p->next = NULL;
        rc = ares_set_servers_ports(D.ch, list) == ARES_SUCCESS ? 0 : -1;
        p->next = tail;                 /* ares_free_data frees the whole chain */
    }
    ares_free_data(list);
    return rc;
}

int dns_init(void)
{
    struct ares_options o;
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS, rc;
    char *text;

    if (D.ready)
        return 0;
    if ((rc = ares_library_init(ARES_LIB_INIT_ALL)) != ARES_SUCCESS) {
        log_err("dns: %s", ares_strerror(rc));
        return -1;
    }
    memset(&o, 0, sizeof o);
    o.sock_state_cb = dns_sock_state;
    /* Each try waits longer than the last (c-ares doubles the timeout per
     * round over the servers): 5 s then 10 s with one server. */
    o.timeout = dns_force_timeout_ms > 0 ? dns_force_timeout_ms : 5000;
    o.tries = dns_force_attempts > 0 ? dns_force_attempts : 2;
    /* No search list (mail domains are absolute) and no EDNS: a 512-byte
     * answer that does not fit comes back truncated and is asked again
     * over TCP. */
    o.flags = ARES_FLAG_NOSEARCH;
#ifdef ARES_OPT_UDP_MAX_QUERIES
    /* RFC 5452 4.5: a fresh source port for every question. */
    o.udp_max_queries = 1;
    mask |= ARES_OPT_UDP_MAX_QUERIES;
#endif
    for (int i = 0; i < DNS_MAX_SOCKS; i++)
        D.socks[i].w.fd = -1;
    if ((rc = ares_init_options(&D.ch, &o, mask)) != ARES_SUCCESS) {
        log_err("dns: cannot start the resolver: %s", ares_strerror(rc));
        ares_library_cleanup();
        return -1;
    }
    if (conf && conf->resolver && *conf->resolver ? dns_servers_set(conf->resolver) < 0
                                                    : dns_servers_cap() < 0) {
        ares_destroy(D.ch);
        ares_library_cleanup();
        return -1;
    }
    D.ready = 1;
    text = dns_read_file(dns_hosts_path, 1024 * 1024);
    if (text) {
        D.hosts = dns_hosts_parse(text, &D.nhosts);
        free(text);
    }
    log_debug("dns: c-ares %s, timeout %d ms, %d tries, %zu hosts entries", ares_version(NULL),
              o.timeout, o.tries, D.nhosts);
    return 0;
}

const char *dns_library_version(void)
{
    return ares_version(NULL);
}

/* Drops every query without calling back, closes the sockets. */
void dns_free(void)
{
    while (D.queries)
        dns_cancel(D.queries);
    if (D.ready) {
        ares_destroy(D.ch);             /* frees the orphans through their callbacks */
        ares_library_cleanup();
    }
    D.ready = 0;
    timer_cancel(&D.timer);
    timer_cancel(&D.sweep);
    for (int i = 0; i < DNS_MAX_SOCKS; i++) {
        if (D.socks[i].used)
            loop_watch_del(&D.socks[i].w);
        D.socks[i].used = 0;
        D.socks[i].w.fd = -1;
    }
    dns_hosts_free(D.hosts, D.nhosts);
    D.hosts = NULL;
    D.nhosts = 0;
}
