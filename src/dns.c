/*
 * dns.c: an asynchronous stub resolver inside the event loop.
 *
 * Questions go to the recursive servers named by the `resolver` key or by
 * /etc/resolv.conf over UDP (RFC 1035 4.2.1), and again over TCP when the
 * answer comes back truncated (RFC 1035 4.2.2, RFC 7766).  Nothing here
 * ever blocks: sockets are non-blocking, retries are timers.
 *
 * Two levels of objects:
 *   struct dns_query  what a caller asked for (the MX hosts of a domain
 *                     with their addresses, or the addresses of one host);
 *   struct dns_tx     one question (name, type) on the wire, with its own
 *                     retry schedule over the servers.
 * An MX lookup is one MX transaction, then A and AAAA transactions for
 * every exchange in parallel.
 *
 * Callbacks: a query answered without the network (address literal,
 * numeric host, /etc/hosts, "resolver busy", bad name) is delivered from a
 * zero-delay timer at the next loop turn, never inside dns_resolve_*, so a
 * caller can store the returned handle before its callback runs.  Network
 * answers are delivered from the loop.  dns_cancel() is safe until the
 * callback has run, and a no-op inside the callback itself; once the
 * callback has returned, the query is freed here and the handle is dead.
 * dns_free() must not be called from a callback.
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <net/if.h>
#include <arpa/inet.h>
#include <sys/epoll.h>

#define DNS_NAME_MAX      253   /* text form, no trailing dot (RFC 1035 2.3.4: 255 on the wire) */
#define DNS_MAX_SERVERS   3     /* MAXNS of the classic resolver */
#define DNS_MAX_QUERIES   256   /* in flight; beyond: "resolver busy" */
#define DNS_MAX_CNAME     8     /* CNAME hops followed inside one answer */
#define DNS_MAX_PTR       32    /* compression pointers followed in one name */
#define DNS_MSG_RR        64    /* answer records examined per message */
#define DNS_MSG_MAX       32    /* MX / addresses / glue kept per message */
#define DNS_UDP_MAX       4096  /* larger than any answer without EDNS (512) */
#define DNS_TCP_MAX       65535
#define DNS_SOCKET_REUSE  512   /* queries per UDP socket before a new source port */

#define DNS_T_A      1
#define DNS_T_CNAME  5
#define DNS_T_MX     15
#define DNS_T_AAAA   28
#define DNS_C_IN     1

#define DNS_R_NOERROR  0
#define DNS_R_FORMERR  1
#define DNS_R_SERVFAIL 2
#define DNS_R_NXDOMAIN 3
#define DNS_R_NOTIMP   4
#define DNS_R_REFUSED  5

/* dns_parse results. */
#define DNS_PARSE_OK       0
#define DNS_PARSE_FOREIGN  (-1)         /* not an answer to this question: ignore it */
#define DNS_PARSE_BAD      (-2)         /* an answer to it, but malformed */
#define DNS_PARSE_LOOP     (-3)         /* CNAME chain longer than DNS_MAX_CNAME */

/* ------------------------------------------------------------ messages */

struct dns_mx {
    int pref;
    char host[DNS_NAME_MAX + 1];
};

struct dns_addr {
    int family;                         /* AF_INET or AF_INET6 */
    unsigned char a[16];
};

struct dns_glue {
    char name[DNS_NAME_MAX + 1];
    struct dns_addr addr;
};

struct dns_rr {
    char owner[DNS_NAME_MAX + 1];
    uint16_t type;
    size_t rdoff;
    uint16_t rdlen;
};

/* One parsed answer.  Large (the records' names), so the resolver keeps a
 * single static one: the loop is single-threaded. */
struct dns_msg {
    uint16_t id;
    int rcode;
    int tc;
    char canon[DNS_NAME_MAX + 1];       /* the name the records belong to, after CNAMEs */
    int nmx;
    struct dns_mx mx[DNS_MSG_MAX];
    int naddr;                          /* A or AAAA of canon (the question's type) */
    struct dns_addr addr[DNS_MSG_MAX];
    int nglue;                          /* A/AAAA of the additional section */
    struct dns_glue glue[DNS_MSG_MAX];
    int nrr;                            /* scratch: answer records of interest */
    struct dns_rr rr[DNS_MSG_RR];
};

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

/* Builds a standard query with RD set for (name, qtype, IN).  Returns its
 * length, or -1 if the name is not a valid domain name or does not fit. */
static int dns_build_query(unsigned char *buf, size_t cap, uint16_t id, const char *name, uint16_t qtype)
{
    size_t len = strlen(name), pos = 12;

    if (len && name[len - 1] == '.')
        len--;                          /* "example.com." is absolute already */
    if (len == 0 || len > DNS_NAME_MAX || cap < 12 + len + 2 + 4)
        return -1;
    memset(buf, 0, 12);
    put16(buf, id);
    buf[2] = 0x01;                      /* RD: recursion desired */
    put16(buf + 4, 1);                  /* QDCOUNT */
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && name[j] != '.')
            j++;
        if (j == i || j - i > 63)
            return -1;                  /* empty label or longer than RFC 1035 2.3.4 allows */
        buf[pos++] = (unsigned char)(j - i);
        for (size_t k = i; k < j; k++) {
            unsigned char c = (unsigned char)name[k];
            if (c <= ' ' || c >= 0x7f)
                return -1;
            buf[pos++] = c;
        }
        i = j + 1;
    }
    buf[pos++] = 0;
    put16(buf + pos, qtype);
    put16(buf + pos + 2, DNS_C_IN);
    return (int)(pos + 4);
}

/* Reads the name at *off of msg[0..len), following compression pointers
 * (RFC 1035 4.1.4), into lower-case dotted text ("" for the root), and
 * moves *off past the name as written at that place.  Each pointer must
 * point before the labels that led to it, so pointers cannot loop; their
 * number is capped as well.  Every read is checked against len. */
static int dns_name_read(const unsigned char *msg, size_t len, size_t *off, char *out, size_t outlen)
{
    size_t pos = *off, lowest = *off, after = 0, text = 0, wire = 1;
    int hops = 0;

    if (outlen < DNS_NAME_MAX + 1)
        return -1;
    for (;;) {
        unsigned c;
        if (pos >= len)
            return -1;
        c = msg[pos];
        if ((c & 0xc0) == 0xc0) {
            size_t target;
            if (pos + 1 >= len)
                return -1;
            target = (size_t)(c & 0x3f) << 8 | msg[pos + 1];
            if (!hops)
                after = pos + 2;
            /* Backwards only, and never into the header. */
            if (target >= lowest || target < 12 || ++hops > DNS_MAX_PTR)
                return -1;
            pos = lowest = target;
            continue;
        }
        if (c & 0xc0)
            return -1;                  /* 0x40/0x80: extended label types, obsolete */
        if (c == 0) {
            pos++;
            break;
        }
        wire += c + 1;
        if (wire > 255 || pos + 1 + c > len)
            return -1;
        if (text)
            out[text++] = '.';
        for (unsigned k = 0; k < c; k++) {
            unsigned char ch = msg[pos + 1 + k];
            /* A dot or NUL inside a label cannot be written as text. */
            if (ch == '.' || ch == 0 || text >= outlen - 1)
                return -1;
            out[text++] = (char)tolower(ch);
        }
        pos += 1 + c;
    }
    out[text] = '\0';
    *off = hops ? after : pos;
    return 0;
}

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

/* Reads one resource record header at *off: owner (decoded when owner is
 * not NULL), type, class, rdata bounds.  Moves *off past the record. */
static int dns_rr_read(const unsigned char *msg, size_t len, size_t *off, char *owner,
                       uint16_t *type, uint16_t *cls, size_t *rdoff, uint16_t *rdlen)
{
    char scratch[DNS_NAME_MAX + 1];
    size_t p = *off;

    if (dns_name_read(msg, len, &p, owner ? owner : scratch, DNS_NAME_MAX + 1) < 0)
        return -1;
    if (p + 10 > len)
        return -1;
    *type = get16(msg + p);
    *cls = get16(msg + p + 2);
    *rdlen = get16(msg + p + 8);
    p += 10;
    if (p + *rdlen > len)
        return -1;
    *rdoff = p;
    *off = p + *rdlen;
    return 0;
}

static int dns_addr_read(const unsigned char *msg, uint16_t type, size_t rdoff, uint16_t rdlen,
                         struct dns_addr *a)
{
    if (type == DNS_T_A && rdlen == 4) {
        a->family = AF_INET;
        memcpy(a->a, msg + rdoff, 4);
        return 0;
    }
    if (type == DNS_T_AAAA && rdlen == 16) {
        a->family = AF_INET6;
        memcpy(a->a, msg + rdoff, 16);
        return 0;
    }
    return -1;
}

/* Parses msg[0..len) as the answer to (id, qname, qtype).  Anything that
 * is not a response with that id and exactly that question is FOREIGN
 * (an off-path spoofer has to guess both).  On OK, m->rcode and m->tc say
 * what kind of answer it is; for NOERROR/NXDOMAIN the records of qtype at
 * the end of the CNAME chain are in m->mx or m->addr, and A/AAAA records
 * of the additional section in m->glue. */
static int dns_parse(const unsigned char *msg, size_t len, uint16_t id, const char *qname,
                     uint16_t qtype, struct dns_msg *m)
{
    char name[DNS_NAME_MAX + 1], want[DNS_NAME_MAX + 1];
    size_t off = 12, rdoff;
    uint16_t type, cls, rdlen;
    unsigned qd, an, ns, ar;

    m->nmx = m->naddr = m->nglue = m->nrr = 0;
    m->canon[0] = '\0';
    if (len < 12)
        return DNS_PARSE_FOREIGN;
    m->id = get16(msg);
    if (m->id != id || !(msg[2] & 0x80) || (msg[2] & 0x78) != 0)
        return DNS_PARSE_FOREIGN;       /* wrong id, not a response, or not QUERY */
    qd = get16(msg + 4);
    an = get16(msg + 6);
    ns = get16(msg + 8);
    ar = get16(msg + 10);
    m->tc = (msg[2] & 0x02) != 0;
    m->rcode = msg[3] & 0x0f;
    if (qd != 1)
        return DNS_PARSE_FOREIGN;
    if (dns_name_read(msg, len, &off, name, sizeof name) < 0 || off + 4 > len)
        return DNS_PARSE_FOREIGN;
    util_strlcpy(want, qname, sizeof want);
    if (*want && want[strlen(want) - 1] == '.')
        want[strlen(want) - 1] = '\0';
    if (strcasecmp(name, want) != 0 || get16(msg + off) != qtype || get16(msg + off + 2) != DNS_C_IN)
        return DNS_PARSE_FOREIGN;
    off += 4;
    util_strlcpy(m->canon, name, sizeof m->canon);
    /* A truncated answer is incomplete by definition (RFC 2181 9): only
     * the header counts, the caller asks again over TCP.  Error answers
     * carry nothing we use. */
    if (m->tc || (m->rcode != DNS_R_NOERROR && m->rcode != DNS_R_NXDOMAIN))
        return DNS_PARSE_OK;

    for (unsigned i = 0; i < an; i++) {
        struct dns_rr *r = m->nrr < DNS_MSG_RR ? &m->rr[m->nrr] : NULL;
        if (dns_rr_read(msg, len, &off, name, &type, &cls, &rdoff, &rdlen) < 0)
            return DNS_PARSE_BAD;
        if (cls != DNS_C_IN || (type != qtype && type != DNS_T_CNAME) || !r)
            continue;
        util_strlcpy(r->owner, name, sizeof r->owner);
        r->type = type;
        r->rdoff = rdoff;
        r->rdlen = rdlen;
        m->nrr++;
    }
    for (unsigned i = 0; i < ns; i++)
        if (dns_rr_read(msg, len, &off, NULL, &type, &cls, &rdoff, &rdlen) < 0)
            return DNS_PARSE_BAD;
    /* The additional section is optional: a damaged one costs the glue,
     * not the answer. */
    for (unsigned i = 0; i < ar && m->nglue < DNS_MSG_MAX; i++) {
        struct dns_glue *g = &m->glue[m->nglue];
        if (dns_rr_read(msg, len, &off, name, &type, &cls, &rdoff, &rdlen) < 0)
            break;
        if (cls == DNS_C_IN && dns_addr_read(msg, type, rdoff, rdlen, &g->addr) == 0) {
            util_strlcpy(g->name, name, sizeof g->name);
            m->nglue++;
        }
    }

    /* RFC 1034 3.6.2 / RFC 5321 5.1: follow CNAMEs from the question name
     * to the records of the asked type, inside this answer only. */
    for (int hops = 0;; hops++) {
        int found = 0, cname = -1;
        for (int i = 0; i < m->nrr; i++) {
            if (strcmp(m->rr[i].owner, m->canon) != 0)
                continue;
            if (m->rr[i].type == qtype)
                found = 1;
            else if (cname < 0)
                cname = i;
        }
        if (found || cname < 0)
            break;
        if (hops >= DNS_MAX_CNAME)
            return DNS_PARSE_LOOP;
        off = m->rr[cname].rdoff;
        if (dns_name_read(msg, len, &off, name, sizeof name) < 0 ||
            off != m->rr[cname].rdoff + m->rr[cname].rdlen || !*name)
            return DNS_PARSE_BAD;
        util_strlcpy(m->canon, name, sizeof m->canon);
    }

    for (int i = 0; i < m->nrr; i++) {
        struct dns_rr *r = &m->rr[i];
        if (r->type != qtype || strcmp(r->owner, m->canon) != 0)
            continue;
        if (qtype == DNS_T_MX) {
            struct dns_mx *x = &m->mx[m->nmx];
            if (m->nmx == DNS_MSG_MAX)
                break;
            off = r->rdoff + 2;
            if (r->rdlen < 3 || dns_name_read(msg, len, &off, x->host, sizeof x->host) < 0 ||
                off != r->rdoff + r->rdlen)
                return DNS_PARSE_BAD;
            x->pref = get16(msg + r->rdoff);
            m->nmx++;
        } else {
            if (m->naddr == DNS_MSG_MAX)
                break;
            if (dns_addr_read(msg, r->type, r->rdoff, r->rdlen, &m->addr[m->naddr]) < 0)
                return DNS_PARSE_BAD;
            m->naddr++;
        }
    }
    return DNS_PARSE_OK;
}

static const char *dns_rcode_name(int rcode)
{
    static const char *names[] = { "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED" };
    return rcode >= 0 && rcode < (int)MN_NELEM(names) ? names[rcode] : "error";
}

static const char *dns_type_name(uint16_t t)
{
    return t == DNS_T_MX ? "MX" : t == DNS_T_A ? "A" : t == DNS_T_AAAA ? "AAAA" : "?";
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

/* RFC 7505 3: a single MX whose exchange is the root means no mail. */
static int dns_is_null_mx(const struct dns_msg *m)
{
    return m->nmx == 1 && m->mx[0].host[0] == '\0';
}

/* ------------------------------------------------------ configuration */

struct dns_server {
    struct sockaddr_storage ss;
    socklen_t len;
    char label[112];                    /* "addr:port" for the log */
};

struct dns_config {
    struct dns_server servers[DNS_MAX_SERVERS];
    int nservers;
    int timeout_ms;
    int attempts;
};

struct dns_hostent {
    char *name;                         /* lower case */
    struct dns_addr addr;
};

/* "addr", "addr:port", "[v6]:port", "v6", "fe80::1%eth0". */
static int dns_server_parse(const char *spec, struct dns_server *s)
{
    char host[96], *pct;
    int port = 53;
    const char *colon = strchr(spec, ':');

    if (*spec == '[') {
        if (util_split_hostport(spec, host, sizeof host, &port) < 0) {
            size_t n = strlen(spec);
            if (n < 3 || spec[n - 1] != ']' || n - 2 >= sizeof host)
                return -1;
            memcpy(host, spec + 1, n - 2);  /* "[v6]" without a port */
            host[n - 2] = '\0';
        }
    } else if (colon && !strchr(colon + 1, ':')) {
        if (util_split_hostport(spec, host, sizeof host, &port) < 0)
            return -1;
    } else if (util_strlcpy(host, spec, sizeof host) >= sizeof host) {
        return -1;
    }
    if (!*host || port <= 0)
        return -1;
    pct = strchr(host, '%');
    if (pct)
        *pct++ = '\0';
    if (util_sockaddr_parse(host, port, &s->ss, &s->len) < 0)
        return -1;
    if (pct && s->ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)(void *)&s->ss)->sin6_scope_id = if_nametoindex(pct);
    if (s->ss.ss_family == AF_INET6)
        snprintf(s->label, sizeof s->label, "[%s]:%d", host, port);
    else
        snprintf(s->label, sizeof s->label, "%s:%d", host, port);
    return 0;
}

/* resolv.conf(5): "nameserver ADDR" (the first DNS_MAX_SERVERS) and
 * "options timeout:N attempts:N"; everything else is ignored. */
static void dns_resolv_conf_parse(const char *text, struct dns_config *c)
{
    const char *p = text;
    while (*p) {
        char line[512], *save, *w;
        size_t n = strcspn(p, "\n");
        util_strlcpy(line, p, n + 1 < sizeof line ? n + 1 : sizeof line);
        p += n;
        if (*p)
            p++;
        line[strcspn(line, "#;")] = '\0';
        w = strtok_r(line, " \t\r", &save);
        if (!w)
            continue;
        if (!strcmp(w, "nameserver")) {
            w = strtok_r(NULL, " \t\r", &save);
            if (w && c->nservers < DNS_MAX_SERVERS &&
                dns_server_parse(w, &c->servers[c->nservers]) == 0)
                c->nservers++;
        } else if (!strcmp(w, "options")) {
            while ((w = strtok_r(NULL, " \t\r", &save))) {
                if (!strncmp(w, "timeout:", 8)) {
                    int v = atoi(w + 8);
                    c->timeout_ms = (v < 1 ? 1 : v > 30 ? 30 : v) * 1000;
                } else if (!strncmp(w, "attempts:", 9)) {
                    int v = atoi(w + 9);
                    c->attempts = v < 1 ? 1 : v > 5 ? 5 : v;
                }
            }
        }
    }
}

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
    int pending;                        /* live transactions */
    int implicit;                       /* RFC 5321 5.1 implicit MX */
    int in_cb;                          /* the callback is running: cancel is a no-op */
    int nlook;
    struct dns_hostlook look[DNS_MAX_HOSTS];
    char temp_err[200];                 /* the last temporary failure */
    struct dns_result res;
    struct timer timer;                 /* delivers answers known at once */
    struct dns_query *next, *prev;
};

enum { TCP_NONE = 0, TCP_WRITE, TCP_READ };

struct dns_tx {
    struct dns_query *q;
    int look;                           /* index in q->look, -1 for the MX question */
    uint16_t qtype;
    char qname[DNS_NAME_MAX + 1];
    unsigned char pkt[DNS_NAME_MAX + 2 + 16];
    size_t pktlen;
    int tries, max_tries;
    int cur;                            /* server of the last UDP send */
    uint16_t ids[DNS_MAX_SERVERS];      /* id last sent to each server */
    unsigned sent, bad, silent;         /* server bit masks */
    struct timer timer;
    int tcp;                            /* TCP_* */
    int tcp_server;
    uint16_t tcp_id;
    int had_watch;                      /* freed only at a later turn */
    struct watch tw;
    unsigned char *tbuf;
    size_t tlen, toff;
    char err[160];
    struct dns_tx *next, *prev;
};

static struct {
    int ready;
    struct dns_config cfg;
    int fd[2];                          /* UDP: [0] IPv4, [1] IPv6 */
    struct watch w[2];
    unsigned uses[2];
    struct dns_hostent *hosts;
    size_t nhosts;
    struct dns_query *queries;
    int nqueries;
    struct dns_tx *txs;
    struct dns_tx *reap;                /* freed at the next turn */
    struct timer reap_timer;
    struct dns_msg msg;                 /* parse scratch */
    int in_api;                         /* inside dns_resolve_*: defer callbacks */
} D = { .fd = { -1, -1 }, .reap_timer = { .idx = -1 } };

/* Test knobs (the unit tests include this file). */
static const char *dns_resolv_path = "/etc/resolv.conf";
static const char *dns_hosts_path = "/etc/hosts";
static int dns_force_timeout_ms, dns_force_attempts;

#ifdef MAILNODE_TEST
static void dns_set_timeout_ms(int ms, int attempts)
{
    dns_force_timeout_ms = ms;
    dns_force_attempts = attempts;
}
#endif

static void query_tx_done(struct dns_query *q, int look, uint16_t qtype, int ok,
                          const struct dns_msg *m, const char *err);

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

static int fam_index(int family)
{
    return family == AF_INET6 ? 1 : 0;
}

static int dns_same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, 16);
    }
    return 0;
}

static void udp_ready(struct watch *w, uint32_t events);

static void udp_close(int f)
{
    if (D.fd[f] < 0)
        return;
    loop_watch_del(&D.w[f]);
    close(D.fd[f]);
    D.fd[f] = -1;
    D.w[f].fd = -1;
}

/* The UDP socket of a family, opened on first use and replaced now and
 * then while idle, so the source port does not stay the same for ever
 * (RFC 5452 4.5: the port is half of what a spoofer must guess). */
static int udp_socket(int family)
{
    int f = fam_index(family);
    struct sockaddr_storage any;
    socklen_t len;

    if (D.fd[f] >= 0 && D.uses[f] >= DNS_SOCKET_REUSE) {
        int busy = 0;
        for (struct dns_tx *t = D.txs; t && !busy; t = t->next)
            busy = t->sent != 0;
        if (!busy)
            udp_close(f);
    }
    if (D.fd[f] >= 0)
        return D.fd[f];
    D.fd[f] = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (D.fd[f] < 0)
        return -1;
    memset(&any, 0, sizeof any);
    util_sockaddr_parse(family == AF_INET6 ? "::" : "", 0, &any, &len);
    D.w[f].fd = D.fd[f];
    D.w[f].events = EPOLLIN;
    D.w[f].fn = udp_ready;
    D.w[f].arg = NULL;
    if (bind(D.fd[f], (struct sockaddr *)&any, len) < 0 || loop_watch_add(&D.w[f]) < 0) {
        int e = errno;
        close(D.fd[f]);
        D.fd[f] = D.w[f].fd = -1;
        errno = e;
        return -1;
    }
    D.uses[f] = 0;
    return D.fd[f];
}

static void reap_run(void *arg)
{
    MN_UNUSED(arg);
    while (D.reap) {
        struct dns_tx *t = D.reap;
        D.reap = t->next;
        free(t->tbuf);
        free(t);
    }
}

static void tcp_close(struct dns_tx *t)
{
    if (t->tcp == TCP_NONE)
        return;
    loop_watch_del(&t->tw);
    close(t->tw.fd);
    t->tw.fd = -1;
    t->tcp = TCP_NONE;
}

/* Unlinks and frees a transaction.  One that had a descriptor watch may
 * still have an event waiting in this turn's batch: it is freed from a
 * timer, after the batch. */
static void tx_free(struct dns_tx *t)
{
    timer_cancel(&t->timer);
    tcp_close(t);
    if (t->prev)
        t->prev->next = t->next;
    else
        D.txs = t->next;
    if (t->next)
        t->next->prev = t->prev;
    if (t->had_watch) {
        t->next = D.reap;
        D.reap = t;
        timer_set(&D.reap_timer, 0, reap_run, NULL);
        return;
    }
    free(t->tbuf);
    free(t);
}

/* A transaction is over: tell its query, which may start others or finish. */
static void tx_done(struct dns_tx *t, int ok, const struct dns_msg *m)
{
    struct dns_query *q = t->q;
    int look = t->look;
    uint16_t qtype = t->qtype;
    char err[sizeof t->err];

    util_strlcpy(err, t->err, sizeof err);
    tx_free(t);
    q->pending--;
    query_tx_done(q, look, qtype, ok, m, err);
}

static uint16_t dns_new_id(void)
{
    return (uint16_t)randombytes_uniform(65536);
}

static void tx_timeout(void *arg);

/* The next try: next server in turn, skipping those that answered with an
 * error; fails the transaction when the tries are used up. */
static void tx_send(struct dns_tx *t)
{
    while (t->tries < t->max_tries) {
        int s = t->tries % D.cfg.nservers, fd;
        struct dns_server *sv = &D.cfg.servers[s];
        uint16_t id = dns_new_id();

        t->tries++;
        if (t->bad & (1u << s))
            continue;
        fd = udp_socket(sv->ss.ss_family);
        put16(t->pkt, id);
        if (fd < 0 || sendto(fd, t->pkt, t->pktlen, MSG_NOSIGNAL, (struct sockaddr *)&sv->ss, sv->len) < 0) {
            snprintf(t->err, sizeof t->err, "cannot send to %s: %s", sv->label, strerror(errno));
            log_warn("dns: %s", t->err);
            t->bad |= 1u << s;
            continue;
        }
        D.uses[fam_index(sv->ss.ss_family)]++;
        t->ids[s] = id;
        t->sent |= 1u << s;
        t->cur = s;
        log_debug("dns: query %s %s to %s (id %u, try %d)", dns_type_name(t->qtype), t->qname,
                  sv->label, id, t->tries);
        timer_set(&t->timer, D.cfg.timeout_ms, tx_timeout, t);
        return;
    }
    if (!t->err[0])
        snprintf(t->err, sizeof t->err, "no DNS server to ask");
    if (t->silent && !t->bad) {
        /* Only timeouts: name every server that stayed silent. */
        size_t n = (size_t)snprintf(t->err, sizeof t->err, "timeout: no answer from");
        const char *sep = " ";
        for (int s = 0; s < D.cfg.nservers && n < sizeof t->err; s++) {
            if (t->silent & (1u << s)) {
                n += (size_t)snprintf(t->err + n, sizeof t->err - n, "%s%s", sep, D.cfg.servers[s].label);
                sep = ", ";
            }
        }
    }
    log_warn("dns: %s %s failed: %s", dns_type_name(t->qtype), t->qname, t->err);
    tx_done(t, 0, NULL);
}

static void tx_timeout(void *arg)
{
    struct dns_tx *t = arg;
    int s = t->tcp ? t->tcp_server : t->cur;
    t->silent |= 1u << s;
    snprintf(t->err, sizeof t->err, "timeout: no answer from %s%s", D.cfg.servers[s].label,
             t->tcp ? " over TCP" : "");
    log_debug("dns: %s %s: %s", dns_type_name(t->qtype), t->qname, t->err);
    tcp_close(t);
    tx_send(t);
}

static void tcp_ready(struct watch *w, uint32_t events);

/* RFC 1035 4.2.2 / RFC 7766: a truncated UDP answer is asked again over
 * TCP, from the same server, each message behind a 2-byte length. */
static void tcp_start(struct dns_tx *t, int s)
{
    struct dns_server *sv = &D.cfg.servers[s];
    int fd;

    tcp_close(t);
    if (!t->tbuf && !(t->tbuf = malloc(DNS_TCP_MAX + 2)))
        goto fail;
    fd = socket(sv->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    if (connect(fd, (struct sockaddr *)&sv->ss, sv->len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        goto fail;
    }
    t->tcp_id = dns_new_id();
    put16(t->pkt, t->tcp_id);
    put16(t->tbuf, (unsigned)t->pktlen);
    memcpy(t->tbuf + 2, t->pkt, t->pktlen);
    t->tlen = t->pktlen + 2;
    t->toff = 0;
    t->tw.fd = fd;
    t->tw.events = EPOLLOUT;
    t->tw.fn = tcp_ready;
    t->tw.arg = t;
    if (loop_watch_add(&t->tw) < 0) {
        int e = errno;
        close(fd);
        t->tw.fd = -1;
        errno = e;
        goto fail;
    }
    t->had_watch = 1;
    t->tcp = TCP_WRITE;
    t->tcp_server = s;
    log_debug("dns: %s %s: truncated answer, asking %s over TCP (id %u)", dns_type_name(t->qtype),
              t->qname, sv->label, t->tcp_id);
    timer_set(&t->timer, D.cfg.timeout_ms, tx_timeout, t);
    return;
fail:
    snprintf(t->err, sizeof t->err, "TCP to %s: %s", sv->label, strerror(errno));
    log_warn("dns: %s", t->err);
    tx_send(t);
}

/* An answer that matched the transaction's question, from server s. */
static void tx_answer(struct dns_tx *t, int s, int via_tcp, const struct dns_msg *m)
{
    const char *label = D.cfg.servers[s].label;

    if (m->tc) {
        if (!via_tcp) {
            if (t->tcp == TCP_NONE)
                tcp_start(t, s);
            return;                     /* a TCP exchange is running: wait for it */
        }
        snprintf(t->err, sizeof t->err, "truncated answer over TCP from %s", label);
    } else if (m->rcode == DNS_R_NOERROR || m->rcode == DNS_R_NXDOMAIN) {
        tx_done(t, 1, m);
        return;
    } else {
        snprintf(t->err, sizeof t->err, "%s from %s", dns_rcode_name(m->rcode), label);
    }
    /* A server that fails this question is not asked it again; the others
     * are, at once. */
    log_warn("dns: %s %s: %s", dns_type_name(t->qtype), t->qname, t->err);
    t->bad |= 1u << s;
    if ((t->bad & ((1u << D.cfg.nservers) - 1)) == (1u << D.cfg.nservers) - 1) {
        tx_done(t, 0, NULL);
        return;
    }
    tcp_close(t);
    tx_send(t);
}

/* Parse failures of a matched answer count as a failure of the server. */
static void tx_bad_answer(struct dns_tx *t, int s, int rc)
{
    snprintf(t->err, sizeof t->err, "%s from %s",
             rc == DNS_PARSE_LOOP ? "CNAME chain too long" : "malformed answer", D.cfg.servers[s].label);
    log_warn("dns: %s %s: %s", dns_type_name(t->qtype), t->qname, t->err);
    t->bad |= 1u << s;
    if ((t->bad & ((1u << D.cfg.nservers) - 1)) == (1u << D.cfg.nservers) - 1) {
        tx_done(t, 0, NULL);
        return;
    }
    tcp_close(t);
    tx_send(t);
}

static void udp_ready(struct watch *w, uint32_t events)
{
    static unsigned char buf[DNS_UDP_MAX];
    MN_UNUSED(events);

    for (int i = 0; i < 64 && w->fd >= 0; i++) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(w->fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        uint16_t id;

        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (n < 12)
            continue;
        id = get16(buf);
        for (struct dns_tx *t = D.txs; t; t = t->next) {
            int s, rc;
            for (s = 0; s < D.cfg.nservers; s++)
                if ((t->sent & (1u << s)) && t->ids[s] == id && dns_same_addr(&from, &D.cfg.servers[s].ss))
                    break;
            if (s == D.cfg.nservers)
                continue;
            rc = dns_parse(buf, (size_t)n, id, t->qname, t->qtype, &D.msg);
            if (rc == DNS_PARSE_FOREIGN)
                continue;
            /* One answer per id: a copy arriving later is ignored. */
            t->sent &= ~(1u << s);
            if (rc == DNS_PARSE_OK)
                tx_answer(t, s, 0, &D.msg);
            else
                tx_bad_answer(t, s, rc);
            break;                      /* the list may have changed */
        }
    }
}

static void tcp_fail(struct dns_tx *t, const char *why)
{
    snprintf(t->err, sizeof t->err, "TCP to %s: %s", D.cfg.servers[t->tcp_server].label, why);
    log_warn("dns: %s %s: %s", dns_type_name(t->qtype), t->qname, t->err);
    tcp_close(t);
    tx_send(t);
}

static void tcp_ready(struct watch *w, uint32_t events)
{
    struct dns_tx *t = w->arg;

    if (t->tcp == TCP_NONE || w->fd < 0)
        return;                         /* closed earlier in this turn */
    if (t->tcp == TCP_WRITE) {
        int err = 0;
        socklen_t sl = sizeof err;
        if (getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &sl) == 0 && err) {
            tcp_fail(t, strerror(err));
            return;
        }
        while (t->toff < t->tlen) {
            ssize_t n = send(w->fd, t->tbuf + t->toff, t->tlen - t->toff, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                tcp_fail(t, strerror(errno));
                return;
            }
            t->toff += (size_t)n;
        }
        t->tcp = TCP_READ;
        t->tlen = t->toff = 0;
        loop_watch_mod(&t->tw, EPOLLIN);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        size_t want = t->tlen < 2 ? 2 : 2 + (size_t)get16(t->tbuf);
        ssize_t n;
        if (t->tlen >= 2 && want == 2) {
            tcp_fail(t, "empty answer");
            return;
        }
        if (t->tlen == want)
            break;
        n = recv(w->fd, t->tbuf + t->tlen, want - t->tlen, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            tcp_fail(t, strerror(errno));
            return;
        }
        if (n == 0) {
            tcp_fail(t, "connection closed before the answer");
            return;
        }
        t->tlen += (size_t)n;
    }
    int s = t->tcp_server;
    int rc = dns_parse(t->tbuf + 2, t->tlen - 2, t->tcp_id, t->qname, t->qtype, &D.msg);
    tcp_close(t);
    if (rc == DNS_PARSE_OK)
        tx_answer(t, s, 1, &D.msg);
    else if (rc == DNS_PARSE_FOREIGN)
        tcp_fail(t, "answer to another question");
    else
        tx_bad_answer(t, s, rc);
}

/* Starts one question for q.  On failure the question counts as failed
 * temporarily; the caller checks q->pending. */
static int tx_start(struct dns_query *q, int look, const char *name, uint16_t qtype)
{
    struct dns_tx *t = calloc(1, sizeof *t);
    int len;

    if (!t)
        return -1;
    len = dns_build_query(t->pkt, sizeof t->pkt, 0, name, qtype);
    if (len < 0) {
        free(t);
        return -1;
    }
    t->pktlen = (size_t)len;
    t->q = q;
    t->look = look;
    t->qtype = qtype;
    util_strlcpy(t->qname, name, sizeof t->qname);
    t->max_tries = D.cfg.attempts * D.cfg.nservers;
    t->timer.idx = -1;
    t->tw.fd = -1;
    t->next = D.txs;
    if (D.txs)
        D.txs->prev = t;
    D.txs = t;
    q->pending++;
    tx_send(t);                         /* may finish t (and q) at once */
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

static void query_drop_txs(struct dns_query *q)
{
    struct dns_tx *t, *next;
    for (t = D.txs; t; t = next) {
        next = t->next;
        if (t->q == q)
            tx_free(t);
    }
    q->pending = 0;
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
 * now, or at the next turn when we are still inside dns_resolve_*. */
static void query_deliver(struct dns_query *q)
{
    q->phase = P_DONE;
    query_drop_txs(q);
    if (D.in_api)
        timer_set(&q->timer, 0, query_callback, q);
    else
        query_callback(q);
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
    for (int i = 0; i < q->nlook; i++) {
        struct dns_hostlook *l = &q->look[i];
        if (l->st4 != LOOK_NONE)
            continue;
        l->st4 = l->st6 = LOOK_TEMP;    /* until answered */
        /* q->pending keeps the query alive while the second one starts,
         * even if the first failed at once. */
        q->pending++;
        if (tx_start(q, i, l->name, DNS_T_A) < 0)
            util_strlcpy(q->temp_err, "cannot start a DNS question", sizeof q->temp_err);
        if (tx_start(q, i, l->name, DNS_T_AAAA) < 0)
            util_strlcpy(q->temp_err, "cannot start a DNS question", sizeof q->temp_err);
        q->pending--;
        if (q->phase == P_DONE)
            return;
    }
    if (q->pending == 0 && q->phase != P_DONE)
        query_finish_addrs(q);
}

static void query_on_mx(struct dns_query *q, int ok, const struct dns_msg *m, const char *err)
{
    struct dns_mx *mx;
    int n;

    if (!ok) {
        query_fail(q, DNS_TEMP, "DNS lookup of MX for %s failed: %s", q->name, err);
        return;
    }
    if (m->rcode == DNS_R_NXDOMAIN) {
        query_fail(q, DNS_PERM, "domain does not exist (%s: NXDOMAIN)", q->name);
        return;
    }
    if (dns_is_null_mx(m)) {
        query_fail(q, DNS_PERM, "domain accepts no mail (null MX) (%s)", q->name);
        return;
    }
    if (m->nmx == 0) {
        /* RFC 5321 5.1: no MX, the domain itself is the one exchange. */
        q->implicit = 1;
        q->nlook = 1;
        util_strlcpy(q->look[0].name, q->name, sizeof q->look[0].name);
        q->look[0].pref = 0;
        query_start_addrs(q);
        return;
    }
    /* The static parse scratch is overwritten by the next answer: order a
     * copy. */
    n = m->nmx;
    mx = malloc((size_t)n * sizeof *mx);
    if (!mx) {
        query_fail(q, DNS_TEMP, "out of memory resolving %s", q->name);
        return;
    }
    memcpy(mx, m->mx, (size_t)n * sizeof *mx);
    dns_mx_order(mx, n);
    q->nlook = 0;
    for (int i = 0; i < n && q->nlook < DNS_MAX_HOSTS; i++) {
        struct dns_hostlook *l = &q->look[q->nlook];
        struct dns_addr lit;
        int dup = 0;
        /* The root ("." among other exchanges) and names that cannot be
         * host names are not exchanges we can reach. */
        if (!dns_hostname_ok(mx[i].host))
            continue;
        for (int k = 0; k < q->nlook; k++)
            dup |= !strcmp(q->look[k].name, mx[i].host);
        if (dup)
            continue;
        memset(l, 0, sizeof *l);
        util_strlcpy(l->name, mx[i].host, sizeof l->name);
        l->pref = mx[i].pref;
        q->nlook++;
        /* Known without asking: a numeric exchange (wrong, but common),
         * /etc/hosts, or glue in the additional section. */
        if (dns_literal(l->name, &lit) == 1) {
            dns_addrset_add(&l->as, &lit);
        } else if (!dns_hosts_lookup(D.hosts, D.nhosts, l->name, &l->as)) {
            for (int g = 0; g < m->nglue; g++)
                if (!strcmp(m->glue[g].name, l->name))
                    dns_addrset_add(&l->as, &m->glue[g].addr);
        }
        if (l->as.n4 + l->as.n6 > 0)
            l->st4 = l->st6 = LOOK_OK;
    }
    free(mx);
    if (q->nlook == 0) {
        query_fail(q, DNS_TEMP, "no address for MX hosts of %s (no usable exchange name)", q->name);
        return;
    }
    query_start_addrs(q);
}

static void query_tx_done(struct dns_query *q, int look, uint16_t qtype, int ok,
                          const struct dns_msg *m, const char *err)
{
    if (q->phase == P_DONE)
        return;
    if (look < 0) {
        query_on_mx(q, ok, m, err);
        return;
    }
    struct dns_hostlook *l = &q->look[look];
    int *st = qtype == DNS_T_A ? &l->st4 : &l->st6;
    if (!ok) {
        *st = LOOK_TEMP;
        snprintf(q->temp_err, sizeof q->temp_err, "%s %s: %s", dns_type_name(qtype), l->name, err);
    } else if (m->rcode == DNS_R_NXDOMAIN) {
        *st = LOOK_NXDOMAIN;
    } else {
        *st = m->naddr ? LOOK_OK : LOOK_NODATA;
        for (int i = 0; i < m->naddr; i++)
            dns_addrset_add(&l->as, &m->addr[i]);
    }
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

/* Answers known at once (called inside dns_resolve_*, so the callback
 * goes out at the next loop turn). */
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
    if (D.nqueries > DNS_MAX_QUERIES)
        return query_later(q, DNS_TEMP, "resolver busy");
    *started = 1;
    return q;
}

static struct dns_query *resolve_mx(const char *domain, dns_cb cb, void *arg)
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

struct dns_query *dns_resolve_mx(const char *domain, dns_cb cb, void *arg)
{
    int saved = D.in_api;
    struct dns_query *q;
    D.in_api = 1;
    q = resolve_mx(domain, cb, arg);
    D.in_api = saved;
    return q;
}

static struct dns_query *resolve_host(const char *host, dns_cb cb, void *arg)
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

struct dns_query *dns_resolve_host(const char *host, dns_cb cb, void *arg)
{
    int saved = D.in_api;
    struct dns_query *q;
    D.in_api = 1;
    q = resolve_host(host, cb, arg);
    D.in_api = saved;
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

int dns_init(void)
{
    char *text;

    if (D.ready)
        return 0;
    memset(&D.cfg, 0, sizeof D.cfg);
    D.cfg.timeout_ms = 5000;
    D.cfg.attempts = 2;
    text = dns_read_file(dns_resolv_path, 64 * 1024);
    if (text) {
        dns_resolv_conf_parse(text, &D.cfg);
        free(text);
    }
    if (conf && conf->resolver && *conf->resolver) {
        char buf[512], *items[DNS_MAX_SERVERS];
        size_t n;
        util_strlcpy(buf, conf->resolver, sizeof buf);
        n = util_split_list(buf, items, MN_NELEM(items));
        D.cfg.nservers = 0;
        for (size_t i = 0; i < n; i++) {
            if (dns_server_parse(items[i], &D.cfg.servers[D.cfg.nservers]) < 0) {
                log_err("resolver: '%s' is not addr, addr:port or [v6]:port with a numeric address",
                        items[i]);
                return -1;
            }
            D.cfg.nservers++;
        }
    }
    if (D.cfg.nservers == 0)
        dns_server_parse("127.0.0.1:53", &D.cfg.servers[D.cfg.nservers++]);
    if (dns_force_timeout_ms > 0)
        D.cfg.timeout_ms = dns_force_timeout_ms;
    if (dns_force_attempts > 0)
        D.cfg.attempts = dns_force_attempts;
    text = dns_read_file(dns_hosts_path, 1024 * 1024);
    if (text) {
        D.hosts = dns_hosts_parse(text, &D.nhosts);
        free(text);
    }
    D.ready = 1;
    log_debug("dns: %d server(s), first %s, timeout %d ms, %d attempt(s), %zu hosts entries",
              D.cfg.nservers, D.cfg.servers[0].label, D.cfg.timeout_ms, D.cfg.attempts, D.nhosts);
    return 0;
}

/* Drops every query without calling back, closes the sockets. */
void dns_free(void)
{
    while (D.queries)
        dns_cancel(D.queries);
    while (D.txs)
        tx_free(D.txs);
    timer_cancel(&D.reap_timer);
    reap_run(NULL);
    udp_close(0);
    udp_close(1);
    dns_hosts_free(D.hosts, D.nhosts);
    D.hosts = NULL;
    D.nhosts = 0;
    D.ready = 0;
}
