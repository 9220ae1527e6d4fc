/*
 * util.c: small pure helpers shared by every module: clocks, durations and
 * sizes, queue ids, addresses of sockets, CIDR matching.
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>

/* ------------------------------------------------------------ queue time
 *
 * Every time the node stores (arrival, next retry, last try) and compares
 * with "now" is queue time: the wall clock plus an offset that absorbs
 * steps of the wall clock.  A field box often boots with a clock that is
 * days wrong until NTP or GPS sets it; if arrival times and retry times
 * followed such a step, a step forward would expire the whole queue and a
 * step back would push every retry days away.  So while a process runs,
 * queue time advances with CLOCK_BOOTTIME (monotonic, and counting a
 * suspend as time that passed), and a difference between the two clocks
 * larger than UTIL_CLOCK_STEP_MS is a step, taken into the offset.
 * Across a restart, the wall clock measures the downtime, but queue time
 * never starts before the newest time stored in the database (a box that
 * boots with its clock behind carries on where it stopped); the offset is
 * kept in the database (store_clock.c) so that every process of the node
 * agrees on it.  Dates shown to people go back to the wall clock
 * (util_date). */
#define UTIL_CLOCK_STEP_MS (30 * 1000)

static struct {
    int64_t offset_ms;                  /* queue time - wall clock */
    int64_t last_wall_ms, last_mono_ms; /* the previous reading of both */
    int64_t last;                       /* the last queue time returned */
    int moved;                          /* offset changed since the last save */
} util_clk;

static int64_t util_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t util_boot_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_BOOTTIME, &ts))
        clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_now(void)
{
    int64_t wall = util_wall_ms(), mono = util_boot_ms(), q;

    if (util_clk.last_mono_ms) {
        int64_t step = wall - (util_clk.last_wall_ms + (mono - util_clk.last_mono_ms));
        if (step > UTIL_CLOCK_STEP_MS || step < -UTIL_CLOCK_STEP_MS) {
            util_clk.offset_ms -= step;
            util_clk.moved = 1;
            log_warn("the wall clock stepped %s by %llds: queue times (arrival, retries, expiry) keep"
                     " counting real time", step > 0 ? "forward" : "back",
                     (long long)((step < 0 ? -step : step) / 1000));
        }
    }
    util_clk.last_wall_ms = wall;
    util_clk.last_mono_ms = mono;
    q = (wall + util_clk.offset_ms) / 1000;
    if (q < util_clk.last)              /* small slews never run it backwards */
        q = util_clk.last;
    util_clk.last = q;
    return q;
}

void util_clock_start(int64_t offset_s, int64_t floor)
{
    int64_t wall = util_wall_ms();

    util_clk.offset_ms = offset_s * 1000;
    util_clk.moved = 0;
    if ((wall + util_clk.offset_ms) / 1000 < floor) {
        /* The clock is behind what this node already wrote: it booted
         * with a wrong clock.  Carry on from there. */
        util_clk.offset_ms = floor * 1000 - wall;
        util_clk.moved = 1;
    }
    util_clk.last_wall_ms = wall;
    util_clk.last_mono_ms = util_boot_ms();
    util_clk.last = 0;
}

int64_t util_clock_offset(int *moved)
{
    util_now();                         /* notice a step first */
    if (moved) {
        *moved = util_clk.moved;
        util_clk.moved = 0;
    }
    return util_clk.offset_ms / 1000;
}

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A number followed by at most one unit letter; units scale it. */
static int parse_scaled(const char *s, const char *units, const int64_t *scale, int64_t *out)
{
    char *end;
    long long v;

    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || v < 0)
        return -1;
    if (*end) {
        const char *u = strchr(units, tolower((unsigned char)*end));
        if (!u || end[1])
            return -1;
        if (v > INT64_MAX / scale[u - units])
            return -1;
        v *= scale[u - units];
    }
    *out = v;
    return 0;
}

int util_parse_duration(const char *s, int64_t *secs)
{
    static const int64_t scale[] = { 1, 60, 3600, 86400, 604800 };
    return parse_scaled(s, "smhdw", scale, secs);
}

int util_parse_size(const char *s, int64_t *bytes)
{
    static const int64_t scale[] = { 1, 1024, 1024 * 1024, 1024LL * 1024 * 1024 };
    return parse_scaled(s, "bkmg", scale, bytes);
}

void util_fmt_size(int64_t bytes, char *out, size_t n)
{
    static const char *const unit[] = { "KiB", "MiB", "GiB", "TiB" };
    double v = (double)bytes;
    int u = -1;

    if (bytes < 1024) {
        snprintf(out, n, "%lld B", (long long)bytes);
        return;
    }
    while (v >= 1024 && u < 3) {
        v /= 1024;
        u++;
    }
    snprintf(out, n, v < 10 && v != (int64_t)v ? "%.1f %s" : "%.0f %s", v, unit[u]);
}

/* Queue ids are random, not sequential: they show nothing about traffic
 * volume and never collide across a database restored from a backup. */
void util_qid(char out[QID_LEN + 1])
{
    static const char alphabet[] = "0123456789BCDFGHJKLMNPQRSTVWXYZ";
    const unsigned base = sizeof alphabet - 1;
    unsigned char r[QID_LEN];
    struct timespec ts;
    uint64_t ms;
    size_t i;

    /* The first 9 characters are the time in milliseconds (base 31, in
     * the alphabet's ASCII order), the rest random: ids sort by age, so
     * the queue's qid index grows at one end and shrinks at the other
     * instead of touching a random page per message (flash wears by the
     * page written). */
    clock_gettime(CLOCK_REALTIME, &ts);
    ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    for (i = 9; i-- > 0; ms /= base)
        out[i] = alphabet[ms % base];
    randombytes_buf(r, sizeof r);
    for (i = 9; i < QID_LEN; i++)
        out[i] = alphabet[r[i] % base];
    out[QID_LEN] = '\0';
}

#ifdef MAILNODE_STATIC
/* The first /etc/passwd entry with this name (name) or uid (name NULL). */
static struct passwd *util_passwd_file(const char *name, unsigned uid)
{
    FILE *f = fopen("/etc/passwd", "re");
    struct passwd *pw = NULL;

    if (!f)
        return NULL;
    while ((pw = fgetpwent(f)) != NULL)
        if (name ? !strcmp(pw->pw_name, name) : pw->pw_uid == (uid_t)uid)
            break;
    fclose(f);
    return pw;
}
#endif

struct passwd *util_getpwnam(const char *name)
{
#ifdef MAILNODE_STATIC
    return util_passwd_file(name, 0);
#else
    return getpwnam(name);
#endif
}

struct passwd *util_getpwuid(unsigned uid)
{
#ifdef MAILNODE_STATIC
    return util_passwd_file(NULL, uid);
#else
    return getpwuid((uid_t)uid);
#endif
}

size_t util_strlcpy(char *dst, const char *src, size_t size)
{
    size_t n = strlen(src);
    if (size) {
        size_t c = n < size - 1 ? n : size - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return n;
}

void util_lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

void util_date(int64_t t, char *buf, size_t n)
{
    /* t is queue time: show the wall clock's time of it. */
    time_t tt = (time_t)(t > 0 ? t - util_clk.offset_ms / 1000 : t);
    struct tm tm;
    if (!localtime_r(&tt, &tm) || tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_wday < 0 || tm.tm_wday > 6) {
        util_strlcpy(buf, "never", n);  /* out of range: a time that is never reached */
        return;
    }
    /* RFC 5322 3.3 wants English names, whatever the locale says. */
    static const char *days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    long off = tm.tm_gmtoff / 60;
    char sign = off < 0 ? '-' : '+';
    if (off < 0)
        off = -off;
    snprintf(buf, n, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld",
             days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900,
             tm.tm_hour, tm.tm_min, tm.tm_sec, sign, off / 60, off % 60);
}

int util_split_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon;
    char *end;
    long p;
    size_t hl;

    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return -1;
        hl = (size_t)(rb - s - 1);
        s++;
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        hl = (size_t)(colon - s);
    }
    if (hl >= hostlen)
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p < 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

int util_sockaddr_parse(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *in = (struct sockaddr_in *)(void *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)(void *)ss;

    memset(ss, 0, sizeof *ss);
    if (!*host || inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        *len = sizeof *in;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof *in6;
        return 0;
    }
    return -1;
}

int util_sockaddr_is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)ss;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return 1;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return in6->sin6_addr.s6_addr[12] == 127;
        return 0;
    }
    return ss->ss_family == AF_UNIX;
}

void util_sockaddr_ip(const struct sockaddr_storage *ss, char *buf, size_t n)
{
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)ss)->sin_addr, buf, (socklen_t)n);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr, buf, (socklen_t)n);
    else
        util_strlcpy(buf, "local", n);
}

char *util_trim(char *s)
{
    char *e;
    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

size_t util_split_list(char *s, char **items, size_t max)
{
    size_t n = 0;
    char *save = NULL, *tok;
    for (tok = strtok_r(s, ", \t", &save); tok && n < max; tok = strtok_r(NULL, ", \t", &save))
        items[n++] = tok;
    return n;
}

int util_cidr_parse(const char *s, struct cidr *out)
{
    char buf[64];
    char *slash;
    long bits = -1;

    if (util_strlcpy(buf, s, sizeof buf) >= sizeof buf)
        return -1;
    slash = strchr(buf, '/');
    if (slash) {
        char *end;
        *slash = '\0';
        bits = strtol(slash + 1, &end, 10);
        if (*end || end == slash + 1)
            return -1;
    }
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        if (bits < 0)
            bits = 32;
        if (bits > 32)
            return -1;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        if (bits < 0)
            bits = 128;
        if (bits > 128)
            return -1;
    } else {
        return -1;
    }
    out->bits = (int)bits;
    return 0;
}

static int prefix_equal(const unsigned char *a, const unsigned char *b, int bits)
{
    int full = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)full))
        return 0;
    if (rest) {
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        return (a[full] & mask) == (b[full] & mask);
    }
    return 1;
}

int util_cidr_match(const struct cidr *c, const struct sockaddr_storage *ss)
{
    const unsigned char *ip;
    int family = ss->ss_family;

    if (family == AF_INET) {
        ip = (const unsigned char *)&((const struct sockaddr_in *)(const void *)ss)->sin_addr;
    } else if (family == AF_INET6) {
        ip = ((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr.s6_addr;
        /* A v4 client on a dual-stack socket arrives v4-mapped. */
        if (c->family == AF_INET && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)(const void *)ip)) {
            ip += 12;
            family = AF_INET;
        }
    } else {
        return 0;
    }
    return c->family == family && prefix_equal(c->addr, ip, c->bits);
}

/* Appends one or more header fields formatted from fmt to out[*used..cap).
 * Safe by construction: whatever the arguments hold, the result may
 * contain CR and LF only as CRLF, each CRLF followed by SP or HTAB
 * (folding, RFC 5322 2.2.3) or ending the text, no other control
 * character than HTAB, and no NUL; otherwise nothing is appended and -1
 * is returned.  So no value (a HELO name, an address, an identity) can
 * end a field early, add one, or end the header section. */
int util_header(char *out, size_t cap, size_t *used, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (*used >= cap)
        return -1;
    va_start(ap, fmt);
    n = vsnprintf(out + *used, cap - *used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *used || n < 2)
        goto refuse;
    const unsigned char *p = (const unsigned char *)out + *used;
    if (p[n - 2] != '\r' || p[n - 1] != '\n')
        goto refuse;
    for (int i = 0; i < n; i++) {
        if (p[i] == '\r') {
            if (p[i + 1] != '\n' || (i + 2 < n && p[i + 2] != ' ' && p[i + 2] != '\t'))
                goto refuse;
            i++;
        } else if ((p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f) {
            goto refuse;
        }
    }
    *used += (size_t)n;
    return n;
refuse:
    out[*used] = '\0';
    return -1;
}
