/* Unit tests of the resolver: what we keep of answers parsed by c-ares
 * (crafted messages: compression, CNAME chains and loops, truncated and
 * malformed packets), MX ordering, hosts parsing, the `resolver` key; then
 * end to end against a small DNS server (UDP and TCP on 127.0.0.1) running
 * in the same event loop, including forged answers and the promise that
 * no callback runs inside dns_resolve_*. */
#include "../../mailnode.c"
#include "unit.h"

#include <arpa/inet.h>
#include <sys/epoll.h>

/* ------------------------------------------------------ packet writer */

struct pkt {
    unsigned char b[4096];
    size_t n;
};

static void p8(struct pkt *p, unsigned v)
{
    p->b[p->n++] = (unsigned char)v;
}

static void p16(struct pkt *p, unsigned v)
{
    p8(p, v >> 8);
    p8(p, v & 0xff);
}

static void p32(struct pkt *p, uint32_t v)
{
    p16(p, v >> 16);
    p16(p, v & 0xffff);
}

/* Uncompressed name; "" is the root. */
static void pname(struct pkt *p, const char *name)
{
    while (*name) {
        size_t l = strcspn(name, ".");
        p8(p, (unsigned)l);
        memcpy(p->b + p->n, name, l);
        p->n += l;
        name += l;
        if (*name == '.')
            name++;
    }
    p8(p, 0);
}

static void pptr(struct pkt *p, size_t off)
{
    p16(p, 0xc000 | (unsigned)off);
}

/* Header of a response: flags byte 2 (QR set by the caller), rcode. */
static void phdr(struct pkt *p, uint16_t id, unsigned flags2, unsigned rcode,
                 unsigned qd, unsigned an, unsigned ns, unsigned ar)
{
    p->n = 0;
    p16(p, id);
    p8(p, flags2);
    p8(p, 0x80 | rcode);                /* RA */
    p16(p, qd);
    p16(p, an);
    p16(p, ns);
    p16(p, ar);
}

static void pquestion(struct pkt *p, const char *name, unsigned type)
{
    pname(p, name);
    p16(p, type);
    p16(p, DNS_C_IN);
}

/* Type, class, TTL; returns where RDLENGTH goes (see pend). */
static size_t prr(struct pkt *p, unsigned type)
{
    size_t at;
    p16(p, type);
    p16(p, DNS_C_IN);
    p32(p, 300);
    at = p->n;
    p16(p, 0);
    return at;
}

static void pend(struct pkt *p, size_t at)
{
    size_t len = p->n - at - 2;
    p->b[at] = (unsigned char)(len >> 8);
    p->b[at + 1] = (unsigned char)len;
}

static void pa(struct pkt *p, const char *ip)
{
    unsigned char a[16];
    if (strchr(ip, ':')) {
        inet_pton(AF_INET6, ip, a);
        memcpy(p->b + p->n, a, 16);
        p->n += 16;
    } else {
        inet_pton(AF_INET, ip, a);
        memcpy(p->b + p->n, a, 4);
        p->n += 4;
    }
}

static struct dns_mx MX[DNS_MSG_MAX];
static struct dns_addr AD[DNS_MSG_MAX];
static int N;

/* The digests read exactly len bytes from a heap copy, so that a read
 * past the end is caught by the sanitizer build. */
static int mx_exact(const unsigned char *b, size_t len)
{
    unsigned char *copy = malloc(len ? len : 1);
    int rc;
    memcpy(copy, b, len);
    rc = dns_answer_mx(copy, (int)len, MX, DNS_MSG_MAX, &N);
    free(copy);
    return rc;
}

static int addr_exact(const unsigned char *b, size_t len, int family)
{
    unsigned char *copy = malloc(len ? len : 1);
    int rc;
    memcpy(copy, b, len);
    rc = dns_answer_addrs(copy, (int)len, family, AD, DNS_MSG_MAX, &N);
    free(copy);
    return rc;
}

static char *ip_of(const struct sockaddr_storage *ss)
{
    static char buf[4][64];
    static int k;
    char *b = buf[k++ & 3];
    util_sockaddr_ip(ss, b, 64);
    return b;
}

/* --------------------------------------------------------- pure tests */

/* An MX answer written the way servers write it: every name compressed
 * against the question. */
static void mx_packet(struct pkt *p, uint16_t id)
{
    size_t at;
    phdr(p, id, 0x81, 0, 1, 3, 1, 2);
    pquestion(p, "example.test", DNS_T_MX);             /* name at 12 */
    pptr(p, 12); at = prr(p, DNS_T_MX); p16(p, 20);
    size_t mx2 = p->n;
    p8(p, 3); p->b[p->n++] = 'm'; p->b[p->n++] = 'x'; p->b[p->n++] = '2'; pptr(p, 12); pend(p, at);
    pptr(p, 12); at = prr(p, DNS_T_MX); p16(p, 10);
    size_t mx1 = p->n;
    p8(p, 3); p->b[p->n++] = 'M'; p->b[p->n++] = 'X'; p->b[p->n++] = '1'; pptr(p, 12); pend(p, at);
    pptr(p, 12); at = prr(p, DNS_T_MX); p16(p, 10);
    pname(p, "mx3.other.test"); pend(p, at);
    /* authority: NS */
    pptr(p, 12); at = prr(p, 2); pname(p, "ns.example.test"); pend(p, at);
    /* additional: glue for mx1 and mx2 */
    pptr(p, mx1); at = prr(p, DNS_T_A); pa(p, "192.0.2.1"); pend(p, at);
    pptr(p, mx2); at = prr(p, DNS_T_AAAA); pa(p, "2001:db8::2"); pend(p, at);
}

TEST(parse_mx_compressed)
{
    struct pkt p;
    mx_packet(&p, 0xbeef);
    CHECK_INT(mx_exact(p.b, p.n), DNS_ANS_OK);
    CHECK_INT(N, 3);
    CHECK_STR(MX[0].host, "mx2.example.test");
    CHECK_INT(MX[0].pref, 20);
    CHECK_STR(MX[1].host, "mx1.example.test");     /* lower case */
    CHECK_STR(MX[2].host, "mx3.other.test");
    /* An address question's answer with MX records only: no address. */
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_OK);
    CHECK_INT(N, 0);
}

TEST(parse_every_prefix_is_safe)
{
    struct pkt p;
    mx_packet(&p, 7);
    /* No cut may read out of bounds (the heap copy is exactly len bytes)
     * or yield a name that is not text; a cut inside the answer section
     * is malformed. */
    for (size_t len = 0; len < p.n; len++) {
        int rc = mx_exact(p.b, len);
        if (rc == DNS_ANS_OK)
            for (int i = 0; i < N; i++)
                CHECK(strlen(MX[i].host) <= DNS_NAME_MAX);
        addr_exact(p.b, len, AF_INET6);
    }
    CHECK_INT(mx_exact(p.b, 40), DNS_ANS_BAD);
    /* Random damage: never a crash, never a name that is not text. */
    for (int round = 0; round < 20000; round++) {
        struct pkt d = p;
        int flips = 1 + (int)randombytes_uniform(4);
        for (int k = 0; k < flips; k++)
            d.b[12 + randombytes_uniform((uint32_t)(d.n - 12))] = (unsigned char)randombytes_uniform(256);
        if (mx_exact(d.b, d.n - randombytes_uniform(3)) == DNS_ANS_OK)
            for (int i = 0; i < N; i++)
                CHECK(strlen(MX[i].host) <= DNS_NAME_MAX);
        addr_exact(d.b, d.n, AF_INET);
    }
}

TEST(parse_bad_pointers_and_lengths)
{
    struct pkt p;
    size_t at;
    /* A pointer to itself in the answer owner. */
    phdr(&p, 1, 0x81, 0, 1, 1, 0, 0);
    pquestion(&p, "a.test", DNS_T_A);
    size_t self = p.n;
    pptr(&p, self); at = prr(&p, DNS_T_A); pa(&p, "192.0.2.1"); pend(&p, at);
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_BAD);
    CHECK_INT(N, 0);
    /* A pointer past the end. */
    p.b[self + 1] = 250;
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_BAD);
    /* The good pointer, for contrast. */
    p.b[self + 1] = 12;
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_OK);
    CHECK_INT(N, 1);

    /* RDLENGTH beyond the end. */
    phdr(&p, 1, 0x81, 0, 1, 1, 0, 0);
    pquestion(&p, "a.test", DNS_T_A);
    pptr(&p, 12); at = prr(&p, DNS_T_A); pa(&p, "192.0.2.1"); pend(&p, at);
    p.b[at + 1] = 40;
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_BAD);
    /* An A record of 5 bytes is malformed. */
    p.b[at + 1] = 5;
    p.b[p.n++] = 0;
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_BAD);
    CHECK_INT(N, 0);
    /* More answers announced than present. */
    phdr(&p, 1, 0x81, 0, 1, 2, 0, 0);
    pquestion(&p, "a.test", DNS_T_A);
    pptr(&p, 12); at = prr(&p, DNS_T_A); pa(&p, "192.0.2.1"); pend(&p, at);
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_BAD);
    CHECK_INT(mx_exact(p.b, p.n), DNS_ANS_BAD);
    /* A label with the obsolete 0x40 type, and one with 0x80. */
    for (unsigned bits = 0x40; bits <= 0x80; bits += 0x40) {
        phdr(&p, 1, 0x81, 0, 1, 1, 0, 0);
        pquestion(&p, "a.test", DNS_T_A);
        p8(&p, bits | 1); p8(&p, 'x'); p8(&p, 0); at = prr(&p, DNS_T_A); pa(&p, "192.0.2.1"); pend(&p, at);
        addr_exact(p.b, p.n, AF_INET);
        CHECK_INT(N, 0);
    }
    /* An owner longer than 255 bytes on the wire, built from pointers:
     * not the question's name, so no address of it. */
    phdr(&p, 1, 0x81, 0, 1, 1, 0, 0);
    pquestion(&p, "a.test", DNS_T_A);
    size_t prev = 12;
    for (int i = 0; i < 5; i++) {
        size_t here = p.n;
        p8(&p, 63);
        memset(p.b + p.n, 'x', 63);
        p.n += 63;
        pptr(&p, prev);
        prev = here;
    }
    pptr(&p, prev); at = prr(&p, DNS_T_A); pa(&p, "192.0.2.1"); pend(&p, at);
    addr_exact(p.b, p.n, AF_INET);
    CHECK_INT(N, 0);
    /* The same name as an exchange: dropped, never truncated. */
    phdr(&p, 1, 0x81, 0, 1, 1, 0, 0);
    pquestion(&p, "a.test", DNS_T_MX);
    prev = 12;
    size_t start = p.n;
    for (int i = 0; i < 5; i++) {
        size_t here = p.n;
        p8(&p, 63);
        memset(p.b + p.n, 'x', 63);
        p.n += 63;
        pptr(&p, prev);
        prev = here;
    }
    MN_UNUSED(start);
    pptr(&p, 12); at = prr(&p, DNS_T_MX); p16(&p, 10); pptr(&p, prev); pend(&p, at);
    p.b[7] = 1;
    if (mx_exact(p.b, p.n) == DNS_ANS_OK)
        CHECK_INT(N, 0);
}

static void cname_chain(struct pkt *p, int hops, int loop)
{
    char from[32], to[32];
    size_t at;
    phdr(p, 9, 0x81, 0, 1, (unsigned)hops + 1, 0, 0);
    pquestion(p, "h0.test", DNS_T_A);
    for (int i = 0; i < hops; i++) {
        snprintf(from, sizeof from, "h%d.test", i);
        snprintf(to, sizeof to, "h%d.test", loop && i == hops - 1 ? 0 : i + 1);
        pname(p, from); at = prr(p, DNS_T_CNAME); pname(p, to); pend(p, at);
    }
    snprintf(to, sizeof to, "h%d.test", hops);
    pname(p, to); at = prr(p, DNS_T_A); pa(p, "192.0.2.8"); pend(p, at);
}

TEST(parse_cname_chains)
{
    struct pkt p;
    cname_chain(&p, 2, 0);
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_OK);
    CHECK_INT(N, 1);
    cname_chain(&p, 8, 0);
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_OK);
    CHECK_INT(N, 1);
    /* A loop, and a chain too long, without the records at the end. */
    cname_chain(&p, 3, 1);
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_LOOP);
    CHECK_INT(mx_exact(p.b, p.n), DNS_ANS_LOOP);
    cname_chain(&p, 9, 0);
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_LOOP);   /* 9 hops: too long */
    p.b[7]--;                           /* without the A record at the end */
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_LOOP);
    cname_chain(&p, 8, 0);
    p.b[7]--;
    CHECK_INT(addr_exact(p.b, p.n, AF_INET), DNS_ANS_OK);      /* 8 hops, then NODATA */
    CHECK_INT(N, 0);
    /* A record of the right type for a name off the chain is not ours. */
    struct pkt q;
    size_t at;
    phdr(&q, 9, 0x81, 0, 1, 2, 0, 0);
    pquestion(&q, "h0.test", DNS_T_A);
    pname(&q, "h0.test"); at = prr(&q, DNS_T_CNAME); pname(&q, "h1.test"); pend(&q, at);
    pname(&q, "evil.test"); at = prr(&q, DNS_T_A); pa(&q, "6.6.6.6"); pend(&q, at);
    CHECK_INT(addr_exact(q.b, q.n, AF_INET), DNS_ANS_OK);
    CHECK_INT(N, 0);                    /* a dangling CNAME: no data */
}

TEST(parse_nullmx)
{
    struct pkt p;
    size_t at;
    /* RFC 7505: MX 0 "." */
    phdr(&p, 3, 0x81, 0, 1, 1, 0, 0);
    pquestion(&p, "null.test", DNS_T_MX);
    pptr(&p, 12); at = prr(&p, DNS_T_MX); p16(&p, 0); p8(&p, 0); pend(&p, at);
    CHECK_INT(mx_exact(p.b, p.n), DNS_ANS_OK);
    CHECK_INT(N, 1);
    CHECK_STR(MX[0].host, "");
    /* An MX of one byte has no exchange name. */
    phdr(&p, 3, 0x81, 0, 1, 1, 0, 0);
    pquestion(&p, "null.test", DNS_T_MX);
    pptr(&p, 12); at = prr(&p, DNS_T_MX); p8(&p, 0); pend(&p, at);
    CHECK_INT(mx_exact(p.b, p.n), DNS_ANS_BAD);
}

TEST(mx_order_and_shuffle)
{
    int first_b = 0, first_c = 0;
    for (int round = 0; round < 200; round++) {
        struct dns_mx mx[5] = { { 20, "d" }, { 10, "b" }, { 5, "a" }, { 10, "c" }, { 30, "e" } };
        dns_mx_order(mx, 5);
        CHECK_STR(mx[0].host, "a");
        for (int i = 1; i < 5; i++)
            CHECK(mx[i - 1].pref <= mx[i].pref);
        CHECK(!strcmp(mx[1].host, "b") || !strcmp(mx[1].host, "c"));
        CHECK_STR(mx[3].host, "d");
        CHECK_STR(mx[4].host, "e");
        first_b += !strcmp(mx[1].host, "b");
        first_c += !strcmp(mx[1].host, "c");
    }
    CHECK(first_b > 40 && first_c > 40);    /* random among equals, both seen */
    dns_mx_order(NULL, 0);
}

TEST(hosts_file)
{
    size_t n;
    struct dns_hostent *h = dns_hosts_parse("127.0.0.1\tlocalhost\n"
                                            "::1 localhost ip6-localhost # v6\n"
                                            "# 10.0.0.1 commented.example\n"
                                            "192.0.2.7 Relay.Example.  relay\n"
                                            "not-an-address name.example\n"
                                            "192.0.2.8 bad!name good.example\n", &n);
    struct dns_addrset as;
    struct dns_host host;

    CHECK(h != NULL);
    memset(&as, 0, sizeof as);
    CHECK(dns_hosts_lookup(h, n, "LOCALHOST", &as));
    CHECK_INT(as.n4, 1);
    CHECK_INT(as.n6, 1);
    dns_addrset_fill(&as, &host);
    CHECK_INT(host.naddrs, 2);
    CHECK_STR(ip_of(&host.addrs[0]), "127.0.0.1");   /* IPv4 first */
    CHECK_STR(ip_of(&host.addrs[1]), "::1");
    memset(&as, 0, sizeof as);
    CHECK(dns_hosts_lookup(h, n, "relay.example", &as));
    CHECK(dns_hosts_lookup(h, n, "relay", &as));
    CHECK_INT(as.n4, 1);                 /* the same address once */
    memset(&as, 0, sizeof as);
    CHECK(!dns_hosts_lookup(h, n, "commented.example", &as));
    CHECK(!dns_hosts_lookup(h, n, "name.example", &as));
    CHECK(!dns_hosts_lookup(h, n, "bad!name", &as));
    CHECK(dns_hosts_lookup(h, n, "good.example", &as));
    dns_hosts_free(h, n);
}

TEST(address_sets_and_literals)
{
    struct dns_addrset as;
    struct dns_host h;
    struct dns_addr a;
    memset(&as, 0, sizeof as);
    for (int i = 1; i <= 6; i++) {
        a.family = AF_INET;
        memcpy(a.a, (unsigned char[]){ 192, 0, 2, (unsigned char)i }, 4);
        dns_addrset_add(&as, &a);
    }
    dns_addrset_fill(&as, &h);
    CHECK_INT(h.naddrs, DNS_MAX_ADDRS);
    a.family = AF_INET6;
    inet_pton(AF_INET6, "2001:db8::1", a.a);
    dns_addrset_add(&as, &a);
    dns_addrset_fill(&as, &h);
    CHECK_INT(h.naddrs, DNS_MAX_ADDRS);
    CHECK_INT(h.addrs[0].ss_family, AF_INET);
    CHECK_INT(h.addrs[DNS_MAX_ADDRS - 1].ss_family, AF_INET6);  /* room for IPv6 */
    CHECK_INT(((struct sockaddr_in *)(void *)&h.addrs[0])->sin_port, 0);

    CHECK_INT(dns_literal("[192.0.2.1]", &a), 1);
    CHECK_INT(a.family, AF_INET);
    CHECK_INT(dns_literal("[IPv6:2001:db8::1]", &a), 1);
    CHECK_INT(a.family, AF_INET6);
    CHECK_INT(dns_literal("[ipv6:2001:db8::1]", &a), 1);
    CHECK_INT(dns_literal("[2001:db8::1]", &a), -1);
    CHECK_INT(dns_literal("[192.0.2.300]", &a), -1);
    CHECK_INT(dns_literal("[", &a), -1);
    CHECK_INT(dns_literal("192.0.2.1", &a), 1);
    CHECK_INT(dns_literal("example.com", &a), 0);
    CHECK(dns_hostname_ok("mx-1.example_x.com"));
    CHECK(!dns_hostname_ok(""));
    CHECK(!dns_hostname_ok("a..b"));
    CHECK(!dns_hostname_ok("a b"));
}

/* ------------------------------------------------ the in-process server */

struct zrec {
    const char *name;
    int type;
    int pref;
    const char *data;
};

static const struct zrec zone[] = {
    { "mx.test", DNS_T_MX, 10, "b.mx.test" },
    { "mx.test", DNS_T_MX, 5, "a.mx.test" },
    { "mx.test", DNS_T_MX, 10, "c.mx.test" },
    { "mx.test", DNS_T_MX, 20, "gone.mx.test" },
    { "a.mx.test", DNS_T_A, 0, "192.0.2.1" },
    { "a.mx.test", DNS_T_AAAA, 0, "2001:db8::1" },
    { "b.mx.test", DNS_T_A, 0, "192.0.2.2" },
    { "c.mx.test", DNS_T_AAAA, 0, "2001:db8::3" },
    { "implicit.test", DNS_T_A, 0, "192.0.2.9" },
    { "nullmx.test", DNS_T_MX, 0, "" },
    { "noaddr.test", DNS_T_MX, 10, "nowhere.test" },
    { "alias.test", DNS_T_CNAME, 0, "mx.test" },
    { "glue.test", DNS_T_MX, 10, "g.glue.test" },
    { "g.glue.test", DNS_T_A, 0, "192.0.2.50" },
    { "tc.test", DNS_T_A, 0, "192.0.2.77" },
    { "spoof.test", DNS_T_A, 0, "192.0.2.88" },
    { "relay.test", DNS_T_A, 0, "192.0.2.25" },
    { "relay.test", DNS_T_AAAA, 0, "2001:db8::25" },
    { "nodata.test", 16, 0, NULL },             /* exists (TXT), no MX, A or AAAA */
};

static struct {
    int udp, udp2, tcp;                 /* udp2: another port, for spoofed packets */
    struct watch wu, wt;
    int port;
    int queries, tcp_queries;
    int glue_asked;                     /* A/AAAA questions for g.glue.test */
} FS = { .udp = -1, .udp2 = -1, .tcp = -1 };

/* The question name of a query (uncompressed, as c-ares writes it). */
static int qname_read(const unsigned char *q, size_t len, size_t *off, char *out, size_t cap)
{
    size_t pos = *off, text = 0;
    while (pos < len && q[pos]) {
        unsigned l = q[pos];
        if (l > 63 || pos + 1 + l > len || text + l + 2 > cap)
            return -1;
        if (text)
            out[text++] = '.';
        for (unsigned k = 0; k < l; k++)
            out[text++] = (char)tolower(q[pos + 1 + k]);
        pos += 1 + l;
    }
    if (pos >= len)
        return -1;
    out[text] = '\0';
    *off = pos + 1;
    return 0;
}

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static int zone_has(const char *name)
{
    for (size_t i = 0; i < MN_NELEM(zone); i++)
        if (!strcasecmp(zone[i].name, name))
            return 1;
    return 0;
}

static void add_rdata(struct pkt *p, const struct zrec *z)
{
    size_t at = prr(p, (unsigned)z->type);
    if (z->type == DNS_T_MX) {
        p16(p, (unsigned)z->pref);
        pname(p, z->data);
    } else if (z->type == DNS_T_CNAME) {
        pname(p, z->data);
    } else {
        pa(p, z->data);
    }
    pend(p, at);
}

/* The answer to query q; tcp says whether it came over TCP.  0: do not
 * answer. */
static size_t fake_answer(const unsigned char *q, size_t qlen, struct pkt *p, int tcp, int spoof)
{
    char name[DNS_NAME_MAX + 1], cur[DNS_NAME_MAX + 1];
    size_t off = 12;
    unsigned type, an = 0, ar = 0;
    unsigned rcode = 0;
    uint16_t id;

    if (qlen < 12 || qname_read(q, qlen, &off, name, sizeof name) < 0 || off + 4 > qlen)
        return 0;
    id = get16(q);
    type = get16(q + off);
    if (!strcmp(name, "silent.test"))
        return 0;
    if (!strcmp(name, "servfail.test"))
        rcode = 2;                      /* SERVFAIL */
    else if (!zone_has(name))
        rcode = 3;                      /* NXDOMAIN */
    if (type != DNS_T_MX && !strcmp(name, "g.glue.test"))
        FS.glue_asked++;
    if (spoof == 1) {                   /* right question, wrong id */
        id ^= 0x5555;
    } else if (spoof == 2) {            /* right id, other question */
        strcpy(name, "spoofed.test");
    }
    phdr(p, id, 0x81 | 0x04, rcode, 1, 0, 0, 0);
    pquestion(p, name, type);
    if (rcode)
        return p->n;
    if (!strcmp(name, "tc.test") && !tcp) {
        p->b[2] |= 0x02;                /* TC: ask again over TCP */
        return p->n;
    }
    strcpy(cur, name);
    for (int hop = 0; hop < 8; hop++) {
        int cname = -1;
        for (size_t i = 0; i < MN_NELEM(zone); i++) {
            if (strcasecmp(zone[i].name, cur))
                continue;
            if (zone[i].type == (int)type) {
                pname(p, cur);
                add_rdata(p, &zone[i]);
                an++;
            } else if (zone[i].type == DNS_T_CNAME) {
                cname = (int)i;
            }
        }
        if (an || cname < 0)
            break;
        pname(p, cur);
        add_rdata(p, &zone[cname]);
        an++;
        strcpy(cur, zone[cname].data);
    }
    /* Additional section: glue for glue.test only. */
    if (type == DNS_T_MX && !strcmp(cur, "glue.test")) {
        pname(p, "g.glue.test");
        add_rdata(p, &zone[13]);
        ar++;
    }
    p->b[6] = (unsigned char)(an >> 8);
    p->b[7] = (unsigned char)an;
    p->b[10] = (unsigned char)(ar >> 8);
    p->b[11] = (unsigned char)ar;
    return p->n;
}

static void fake_udp(struct watch *w, uint32_t ev)
{
    unsigned char q[512];
    struct sockaddr_storage from;
    MN_UNUSED(ev);
    for (;;) {
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(w->fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
        struct pkt p;
        char name[DNS_NAME_MAX + 1];
        size_t off = 12;
        if (n < 0)
            return;
        FS.queries++;
        if (n > 12 && qname_read(q, (size_t)n, &off, name, sizeof name) == 0 && !strcmp(name, "spoof.test")) {
            /* Three forgeries first: wrong id, wrong question, wrong port. */
            if (fake_answer(q, (size_t)n, &p, 0, 1))
                sendto(w->fd, p.b, p.n, 0, (struct sockaddr *)&from, fl);
            if (fake_answer(q, (size_t)n, &p, 0, 2))
                sendto(w->fd, p.b, p.n, 0, (struct sockaddr *)&from, fl);
            if (fake_answer(q, (size_t)n, &p, 0, 0)) {
                memcpy(p.b + p.n - 4, (unsigned char[]){ 6, 6, 6, 6 }, 4);
                sendto(FS.udp2, p.b, p.n, 0, (struct sockaddr *)&from, fl);
            }
        }
        if (fake_answer(q, (size_t)n, &p, 0, 0))
            sendto(w->fd, p.b, p.n, 0, (struct sockaddr *)&from, fl);
    }
}

static void fake_tcp_conn(struct watch *w, uint32_t ev)
{
    unsigned char buf[600];
    ssize_t n;
    struct pkt p;
    MN_UNUSED(ev);
    /* Small queries arrive in one piece on loopback; a client may send
     * several on one connection (RFC 7766 6.2.1.1). */
    n = recv(w->fd, buf, sizeof buf, 0);
    for (ssize_t off = 0; n > 2 && off + 2 <= n && off + 2 + get16(buf + off) <= n;
         off += 2 + get16(buf + off)) {
        size_t len = fake_answer(buf + off + 2, get16(buf + off), &p, 1, 0);
        unsigned char out[4098];
        FS.tcp_queries++;
        put16(out, (unsigned)len);
        memcpy(out + 2, p.b, len);
        if (send(w->fd, out, len + 2, MSG_NOSIGNAL) < 0)
            perror("fake tcp send");
    }
    if (n == 0 || n > 2 || (n < 0 && errno != EAGAIN)) {
        loop_watch_del(w);
        close(w->fd);
        free(w);
    }
}

static void fake_tcp_accept(struct watch *w, uint32_t ev)
{
    MN_UNUSED(ev);
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct watch *c;
        if (fd < 0)
            return;
        c = calloc(1, sizeof *c);
        c->fd = fd;
        c->events = EPOLLIN;
        c->fn = fake_tcp_conn;
        loop_watch_add(c);
    }
}

static int fake_start(void)
{
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t sl = sizeof sin;
    int one = 1;

    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    FS.udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    FS.udp2 = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (FS.udp < 0 || bind(FS.udp, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        getsockname(FS.udp, (struct sockaddr *)&sin, &sl) < 0)
        return -1;
    FS.port = ntohs(sin.sin_port);
    /* TCP on the same port number. */
    FS.tcp = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(FS.tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (FS.tcp < 0 || bind(FS.tcp, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(FS.tcp, 8) < 0)
        return -1;
    FS.wu = (struct watch){ .fd = FS.udp, .events = EPOLLIN, .fn = fake_udp };
    FS.wt = (struct watch){ .fd = FS.tcp, .events = EPOLLIN, .fn = fake_tcp_accept };
    if (loop_watch_add(&FS.wu) < 0 || loop_watch_add(&FS.wt) < 0)
        return -1;
    return 0;
}

/* ----------------------------------------------------- end to end */

static struct conf test_conf;
static char resolver_spec[128];
static struct dns_result R;
static int callbacks;
static struct timer safety = { .idx = -1 };

static void on_result(void *arg, const struct dns_result *r)
{
    MN_UNUSED(arg);
    R = *r;
    callbacks++;
    loop_stop();
}

static struct dns_query *self_q;

static void on_result_cancel(void *arg, const struct dns_result *r)
{
    dns_cancel(self_q);
    on_result(arg, r);
}

static void on_safety(void *arg)
{
    MN_UNUSED(arg);
    loop_stop();
}

static void run_loop(int ms)
{
    timer_set(&safety, ms, on_safety, NULL);
    loop_run();
    timer_cancel(&safety);
}

/* (Re)starts the resolver on the given servers. */
static void use_resolver(const char *spec, int timeout_ms, int attempts)
{
    dns_free();
    util_strlcpy(resolver_spec, spec, sizeof resolver_spec);
    test_conf.resolver = resolver_spec;
    conf = &test_conf;
    dns_set_timeout_ms(timeout_ms, attempts);
    dns_init();
}

static int mx(const char *domain)
{
    callbacks = 0;
    memset(&R, 0, sizeof R);
    struct dns_query *q = dns_resolve_mx(domain, on_result, NULL);
    if (!q)
        return -1;
    if (callbacks)
        return -2;                      /* never inside dns_resolve_mx */
    run_loop(5000);
    return callbacks == 1 ? R.status : -3;
}

static int host(const char *name)
{
    callbacks = 0;
    memset(&R, 0, sizeof R);
    struct dns_query *q = dns_resolve_host(name, on_result, NULL);
    if (!q)
        return -1;
    if (callbacks)
        return -2;
    run_loop(5000);
    return callbacks == 1 ? R.status : -3;
}

TEST(e2e_mx_order)
{
    char spec[64];
    int a_then_b = 0, a_then_c = 0;
    snprintf(spec, sizeof spec, "127.0.0.1:%d", FS.port);
    use_resolver(spec, 1000, 2);
    for (int round = 0; round < 16; round++) {
        CHECK_INT(mx("mx.test"), DNS_OK);
        CHECK_INT(R.nhosts, 3);         /* gone.mx.test has no address: dropped */
        if (R.nhosts != 3)
            return;
        CHECK_STR(R.hosts[0].name, "a.mx.test");
        CHECK_INT(R.hosts[0].pref, 5);
        CHECK_INT(R.hosts[0].naddrs, 2);
        CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.1");
        CHECK_STR(ip_of(&R.hosts[0].addrs[1]), "2001:db8::1");
        CHECK_INT(R.hosts[1].pref, 10);
        CHECK_INT(R.hosts[2].pref, 10);
        a_then_b += !strcmp(R.hosts[1].name, "b.mx.test");
        a_then_c += !strcmp(R.hosts[1].name, "c.mx.test");
        for (int i = 1; i < 3; i++) {
            CHECK_INT(R.hosts[i].naddrs, 1);
            if (!strcmp(R.hosts[i].name, "c.mx.test"))
                CHECK_STR(ip_of(&R.hosts[i].addrs[0]), "2001:db8::3");
        }
    }
    CHECK(a_then_b > 0 && a_then_c > 0);
    /* Through a CNAME, and with a trailing dot and capitals. */
    CHECK_INT(mx("Alias.TEST."), DNS_OK);
    CHECK_INT(R.nhosts, 3);
}

TEST(e2e_implicit_null_nxdomain)
{
    CHECK_INT(mx("implicit.test"), DNS_OK);
    CHECK_INT(R.nhosts, 1);
    CHECK_STR(R.hosts[0].name, "implicit.test");
    CHECK_INT(R.hosts[0].pref, 0);
    CHECK_INT(R.hosts[0].naddrs, 1);
    CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.9");

    CHECK_INT(mx("nullmx.test"), DNS_PERM);
    CHECK(strstr(R.error, "domain accepts no mail (null MX)") != NULL);
    CHECK_INT(R.nhosts, 0);

    CHECK_INT(mx("missing.test"), DNS_PERM);
    CHECK(strstr(R.error, "domain does not exist") != NULL);

    CHECK_INT(mx("noaddr.test"), DNS_TEMP);
    CHECK(strstr(R.error, "no address for MX hosts") != NULL);

    CHECK_INT(mx("nodata.test"), DNS_PERM);     /* no MX, no A, no AAAA */
    CHECK_INT(mx("servfail.test"), DNS_TEMP);
    CHECK(strstr(R.error, "SERVFAIL") != NULL);     /* among the possible causes */
}

TEST(e2e_glue_tcp_spoof)
{
    FS.glue_asked = 0;
    CHECK_INT(mx("glue.test"), DNS_OK);
    CHECK_INT(R.nhosts, 1);
    CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.50");
    /* The additional section is not trusted (RFC 5452 6: data a server
     * volunteers is what a spoofer would plant): the exchange is asked. */
    CHECK(FS.glue_asked > 0);

    FS.tcp_queries = 0;
    CHECK_INT(host("tc.test"), DNS_OK);
    CHECK_INT(FS.tcp_queries, 2);        /* A and AAAA both came back truncated */
    CHECK_INT(R.nhosts, 1);
    CHECK_INT(R.hosts[0].naddrs, 1);
    CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.77");

    CHECK_INT(host("spoof.test"), DNS_OK);
    CHECK_INT(R.hosts[0].naddrs, 1);
    CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.88");

    CHECK_INT(host("relay.test"), DNS_OK);
    CHECK_STR(R.hosts[0].name, "relay.test");
    CHECK_INT(R.hosts[0].naddrs, 2);
    CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.25");
    CHECK_STR(ip_of(&R.hosts[0].addrs[1]), "2001:db8::25");
    CHECK_INT(host("missing.test"), DNS_PERM);
}

TEST(e2e_literals_hosts_cancel)
{
    CHECK_INT(mx("[192.0.2.1]"), DNS_OK);
    CHECK_INT(R.nhosts, 1);
    CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.1");
    CHECK_INT(mx("[IPv6:2001:db8::1]"), DNS_OK);
    CHECK_INT(R.hosts[0].addrs[0].ss_family, AF_INET6);
    CHECK_INT(mx("[bogus]"), DNS_PERM);
    CHECK_INT(mx("bad name"), DNS_PERM);
    CHECK_INT(host("192.0.2.44"), DNS_OK);
    CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.44");
    CHECK_INT(host("localhost"), DNS_OK);
    CHECK(R.hosts[0].naddrs >= 1);
    CHECK(util_sockaddr_is_loopback(&R.hosts[0].addrs[0]));
    CHECK_INT(host("Files.Example"), DNS_OK);   /* from the test hosts file */
    CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.99");

    /* Cancelling from inside the callback (a caller tidying up) is harmless. */
    callbacks = 0;
    self_q = dns_resolve_mx("mx.test", on_result_cancel, NULL);
    CHECK(self_q != NULL);
    run_loop(5000);
    CHECK_INT(callbacks, 1);
    CHECK_INT(R.status, DNS_OK);
    CHECK(D.queries == NULL && D.txs == NULL && D.nqueries == 0);

    /* Cancelled: never called back, nothing left behind. */
    callbacks = 0;
    struct dns_query *q1 = dns_resolve_mx("silent.test", on_result, NULL);
    struct dns_query *q2 = dns_resolve_mx("[192.0.2.1]", on_result, NULL);
    struct dns_query *q3 = dns_resolve_mx("mx.test", on_result, NULL);
    CHECK(q1 && q2 && q3);
    dns_cancel(q1);
    dns_cancel(q2);
    dns_cancel(q3);
    run_loop(300);
    CHECK_INT(callbacks, 0);
    CHECK(D.queries == NULL && D.txs == NULL);
}

TEST(e2e_timeout_and_failover)
{
    char spec[128];
    int dead = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t sl = sizeof sin;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(dead, (struct sockaddr *)&sin, sizeof sin);
    getsockname(dead, (struct sockaddr *)&sin, &sl);

    /* A server that never answers. */
    snprintf(spec, sizeof spec, "127.0.0.1:%d", ntohs(sin.sin_port));
    use_resolver(spec, 200, 2);
    int64_t t0 = util_now_ms();
    CHECK_INT(mx("mx.test"), DNS_TEMP);
    CHECK(strstr(R.error, "timeout") != NULL);
    CHECK(util_now_ms() - t0 >= 350);   /* two tries of 200 ms */

    /* The same dead server first, then the good one. */
    snprintf(spec, sizeof spec, "127.0.0.1:%d, 127.0.0.1:%d", ntohs(sin.sin_port), FS.port);
    use_resolver(spec, 200, 1);
    CHECK_INT(mx("implicit.test"), DNS_OK);
    CHECK_STR(ip_of(&R.hosts[0].addrs[0]), "192.0.2.9");
    CHECK_INT(host("silent.test"), DNS_TEMP);

    /* Busy: more queries (or, with one socket per question, more
     * questions) than the limit fail fast. */
    snprintf(spec, sizeof spec, "127.0.0.1:%d", ntohs(sin.sin_port));
    use_resolver(spec, 5000, 1);
    static struct dns_query *qs[DNS_MAX_QUERIES + 1];
    int fill = DNS_MAX_TXS < DNS_MAX_QUERIES ? DNS_MAX_TXS + 1 : DNS_MAX_QUERIES;
    callbacks = 0;
    for (int i = 0; i < fill; i++)
        qs[i] = dns_resolve_mx("silent.test", on_result, NULL);
    CHECK_INT(mx("one-more.test"), DNS_TEMP);
    CHECK_STR(R.error, "resolver busy");
    for (int i = 0; i < fill; i++)
        dns_cancel(qs[i]);
    close(dead);
    run_loop(100);                      /* the orphans go at the next turn */
    CHECK(D.txs == NULL && D.ntxs == 0);
}

/* The contract of internal.h: the callback never runs before
 * dns_resolve_* has returned (so the handle is stored by then), and it
 * may start another lookup. */
static struct dns_query *stored;
static int seen_stored, chained;

static void on_result_chain(void *arg, const struct dns_result *r);

static void on_result_stored(void *arg, const struct dns_result *r)
{
    seen_stored += stored != NULL;
    on_result(arg, r);
}

static void on_result_chain(void *arg, const struct dns_result *r)
{
    seen_stored += stored != NULL;
    if (!chained++) {
        stored = NULL;
        stored = dns_resolve_host("relay.test", on_result_chain, arg);
        return;
    }
    on_result(arg, r);
}

TEST(callback_after_return)
{
    static const char *names[] = { "[192.0.2.1]", "192.0.2.44", "Files.Example", "localhost",
                                   "bad name", "[bogus]", "mx.test", "missing.test", "silent.test" };
    char spec[64];
    snprintf(spec, sizeof spec, "127.0.0.1:%d", FS.port);
    use_resolver(spec, 200, 1);
    for (size_t i = 0; i < MN_NELEM(names); i++) {
        for (int kind = 0; kind < 2; kind++) {
            callbacks = seen_stored = 0;
            stored = NULL;
            stored = kind ? dns_resolve_host(names[i], on_result_stored, NULL)
                          : dns_resolve_mx(names[i], on_result_stored, NULL);
            CHECK(stored != NULL);
            CHECK_INT(callbacks, 0);
            run_loop(5000);
            CHECK_INT(callbacks, 1);
            CHECK_INT(seen_stored, 1);
        }
    }
    /* A lookup started from a callback works, and is called back too. */
    callbacks = seen_stored = chained = 0;
    stored = NULL;
    stored = dns_resolve_mx("mx.test", on_result_chain, NULL);
    run_loop(5000);
    CHECK_INT(chained, 2);
    CHECK_INT(callbacks, 1);
    CHECK_INT(seen_stored, 2);
    CHECK_INT(R.status, DNS_OK);
    CHECK_STR(R.hosts[0].name, "relay.test");
}

TEST(resolver_key)
{
    static const char *good[] = { "192.0.2.1", "192.0.2.1:5353", "[::1]:5353", "[::1]", "::1",
                                  "192.0.2.1, 192.0.2.2:54 [::1]:55" };
    static const char *bad[] = { "dns.example", "192.0.2.1:0", "192.0.2.1:x", "192.0.2.1:70000" };
    for (size_t i = 0; i < MN_NELEM(good); i++) {
        use_resolver(good[i], 1000, 1);
        CHECK(D.ready);
    }
    struct ares_addr_port_node *list = NULL;
    CHECK_INT(ares_get_servers_ports(D.ch, &list), ARES_SUCCESS);
    CHECK(list && list->family == AF_INET && list->udp_port == 53);
    CHECK(list && list->next && list->next->udp_port == 54 && list->next->next &&
          list->next->next->family == AF_INET6 && list->next->next->tcp_port == 55);
    ares_free_data(list);
    /* Servers from resolv.conf: only the first three are kept. */
    CHECK_INT(ares_set_servers_ports_csv(D.ch, "192.0.2.1,192.0.2.2,192.0.2.3,192.0.2.4,192.0.2.5"),
              ARES_SUCCESS);
    CHECK_INT(dns_servers_cap(), 0);
    list = NULL;
    CHECK_INT(ares_get_servers_ports(D.ch, &list), ARES_SUCCESS);
    int nserv = 0;
    for (struct ares_addr_port_node *p = list; p; p = p->next)
        nserv++;
    CHECK_INT(nserv, DNS_MAX_SERVERS);
    ares_free_data(list);
    CHECK_INT(dns_servers_cap(), 0);    /* already short enough: unchanged */
    for (size_t i = 0; i < MN_NELEM(bad); i++) {
        use_resolver(bad[i], 1000, 1);
        CHECK(!D.ready);
    }
    /* Not ready: a lookup fails temporarily, and is still called back. */
    CHECK_INT(mx("mx.test"), DNS_TEMP);
}

int main(void)
{
    char dir[] = "/tmp/test_dns.XXXXXX", path[256];
    FILE *f;

    if (sodium_init() < 0 || loop_init() < 0)
        return 1;
    log_init("test_dns", 0);
    if (getenv("TEST_DNS_DEBUG"))
        log_set_level(LOG_DEBUG);
    else
        log_set_level(LOG_ERR);
    RUN(parse_mx_compressed);
    RUN(parse_every_prefix_is_safe);
    RUN(parse_bad_pointers_and_lengths);
    RUN(parse_cname_chains);
    RUN(parse_nullmx);
    RUN(mx_order_and_shuffle);
    RUN(hosts_file);
    RUN(address_sets_and_literals);

    if (!mkdtemp(dir) || fake_start() < 0) {
        printf("FAIL e2e_setup: %s\n", strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/hosts", dir);
    f = fopen(path, "w");
    fputs("127.0.0.1 localhost\n192.0.2.99 files.example\n", f);
    fclose(f);
    dns_hosts_path = path;
    RUN(e2e_mx_order);
    RUN(e2e_implicit_null_nxdomain);
    RUN(e2e_glue_tcp_spoof);
    RUN(e2e_literals_hosts_cancel);
    RUN(e2e_timeout_and_failover);
    RUN(callback_after_return);
    RUN(resolver_key);
    dns_free();
    loop_free();
    unlink(path);
    rmdir(dir);
    return unit_done();
}
