/*
 * addr.c: RFC 5321 4.1.2 paths and mailboxes.
 *
 *   Path          = "<" [ A-d-l ":" ] Mailbox ">"
 *   Mailbox       = Local-part "@" ( Domain / address-literal )
 *   Local-part    = Dot-string / Quoted-string
 *
 * The input comes off the wire, so it is a (pointer, length) pair and is
 * read strictly left to right with every step bounds-checked; nothing here
 * looks past s + n or relies on a NUL terminator.  Whatever the grammar
 * does not allow is refused: an address that two programs could read two
 * ways is how mail gets routed where it should not go.
 *
 * What the parser deliberately does not do: interpret '%' or '!' in the
 * local part (user%host@ours is the local user "user%host", never a relay
 * request), or accept 8-bit bytes (SMTPUTF8, RFC 6531, is not offered).
 */
#include "internal.h"

#include <string.h>
#include <strings.h>
#include <arpa/inet.h>

int addr_is_atext(int c)
{
    /* RFC 5322 3.2.3 atext: ALPHA / DIGIT and these printable specials. */
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
    case '+': case '-': case '/': case '=': case '?': case '^': case '_':
    case '`': case '{': case '|': case '}': case '~':
        return 1;
    default:
        return 0;
    }
}

static int addr_let_dig(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static char addr_lc(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Domain = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str],
 * or (when literal_ok) an address literal.  On success *pp is advanced
 * and, if out is not NULL, the domain is copied there in lower case. */
static int addr_domain(const char **pp, const char *end, char *out, int literal_ok,
                       int *is_literal)
{
    const char *start = *pp, *p = *pp;

    if (p < end && *p == '[') {
        char inner[SMTP_DOMAIN_MAX + 1];
        unsigned char bin[16];
        const char *q = p + 1;
        size_t len;

        if (!literal_ok)
            return ADDR_ESYNTAX;
        /* RFC 5321 4.1.3 dcontent: printable US-ASCII except "[", "]", "\". */
        while (q < end && *q != ']') {
            unsigned char c = (unsigned char)*q;
            if (c < 33 || c > 126 || c == '[' || c == '\\')
                return ADDR_ESYNTAX;
            if (q - start >= SMTP_DOMAIN_MAX)
                return ADDR_EDOMAIN;
            q++;
        }
        if (q >= end)
            return ADDR_ESYNTAX;
        len = (size_t)(q - (p + 1));
        if (len == 0)
            return ADDR_ESYNTAX;
        memcpy(inner, p + 1, len);
        inner[len] = '\0';
        /* Only literals we could connect to are worth accepting; a
         * General-address-literal (RFC 5321 4.1.3) names no known
         * protocol, so it is refused like an unparseable one. */
        if (len > 5 && !strncasecmp(inner, "IPv6:", 5)) {
            if (inet_pton(AF_INET6, inner + 5, bin) != 1)
                return ADDR_EDOMAIN;
        } else if (inet_pton(AF_INET, inner, bin) != 1) {
            return ADDR_EDOMAIN;
        }
        p = q + 1;
        if (is_literal)
            *is_literal = 1;
    } else {
        for (;;) {
            const char *label = p;
            if (p >= end || !addr_let_dig((unsigned char)*p))
                return ADDR_ESYNTAX;    /* empty label, leading or double dot */
            while (p < end && (addr_let_dig((unsigned char)*p) || *p == '-')) {
                p++;
                /* RFC 1035 2.3.4: labels of 63 octets, names of 255. */
                if (p - label > 63 || p - start > SMTP_DOMAIN_MAX)
                    return ADDR_EDOMAIN;
            }
            if (p[-1] == '-')
                return ADDR_ESYNTAX;
            if (p < end && *p == '.') {
                p++;
                continue;
            }
            break;
        }
        if (is_literal)
            *is_literal = 0;
    }
    if (out) {
        size_t len = (size_t)(p - start);
        for (size_t i = 0; i < len; i++)
            out[i] = addr_lc(start[i]);
        out[len] = '\0';
    }
    *pp = p;
    return 0;
}

/* The one check of a bare domain off the wire or the command line (ETRN
 * and ATRN arguments, control requests, `flush DOMAIN`): exactly one
 * Domain, or with literal_ok an address literal, and nothing after it. */
int addr_domain_ok(const char *d, size_t n, int literal_ok)
{
    const char *p = d;
    return n && n <= SMTP_DOMAIN_MAX && !addr_domain(&p, d + n, NULL, literal_ok, NULL) &&
           p == d + n;
}

/* Local-part = Dot-string / Quoted-string.  out gets the part with the
 * quoting removed (it is never longer than the wire form, which is at
 * most SMTP_LOCAL_MAX octets). */
static int addr_local(const char **pp, const char *end, char *out)
{
    const char *start = *pp, *p = *pp;
    size_t o = 0;

    if (p < end && *p == '"') {
        p++;
        for (;;) {
            unsigned char c;
            if (p >= end)
                return ADDR_ESYNTAX;
            c = (unsigned char)*p;
            if (c == '"') {
                p++;
                break;
            }
            if (c == '\\') {
                /* quoted-pairSMTP = %d92 %d32-126 */
                if (++p >= end)
                    return ADDR_ESYNTAX;
                c = (unsigned char)*p;
            }
            /* qtextSMTP: %d32-33 / %d35-91 / %d93-126 (the two excluded
             * octets were handled above); no controls, no 8-bit. */
            if (c < 32 || c > 126)
                return ADDR_ESYNTAX;
            if (p - start >= SMTP_LOCAL_MAX)
                return ADDR_ELOCAL;
            out[o++] = (char)c;
            p++;
        }
        if (p - start > SMTP_LOCAL_MAX)
            return ADDR_ELOCAL;
        /* RFC 5321 4.1.2 permits "" but it names no mailbox anyone has. */
        if (o == 0)
            return ADDR_ESYNTAX;
    } else {
        for (;;) {
            const char *atom = p;
            while (p < end && addr_is_atext((unsigned char)*p)) {
                if (p - start >= SMTP_LOCAL_MAX)
                    return ADDR_ELOCAL;
                out[o++] = *p++;
            }
            if (p == atom)
                return ADDR_ESYNTAX;    /* empty atom: leading, trailing or double dot */
            if (p < end && *p == '.') {
                if (p - start >= SMTP_LOCAL_MAX)
                    return ADDR_ELOCAL;
                out[o++] = *p++;
                continue;
            }
            break;
        }
    }
    out[o] = '\0';
    *pp = p;
    return 0;
}

/* 1 if the local part must be written as a Quoted-string. */
static int addr_needs_quotes(const char *local)
{
    const char *p = local;

    if (!*p || *p == '.')
        return 1;
    for (; *p; p++) {
        if (*p == '.') {
            if (p[1] == '.' || p[1] == '\0')
                return 1;
        } else if (!addr_is_atext((unsigned char)*p)) {
            return 1;
        }
    }
    return 0;
}

static void addr_make_full(struct addr *a)
{
    char *o = a->full, *e = a->full + sizeof a->full - 1;

    if (addr_needs_quotes(a->local)) {
        *o++ = '"';
        for (const char *p = a->local; *p && o < e - 2; p++) {
            if (*p == '"' || *p == '\\')
                *o++ = '\\';
            *o++ = *p;
        }
        *o++ = '"';
    } else {
        for (const char *p = a->local; *p && o < e; p++)
            *o++ = *p;
    }
    if (a->domain[0] && o < e) {
        *o++ = '@';
        for (const char *p = a->domain; *p && o < e; p++)
            *o++ = *p;
    }
    *o = '\0';
}

/* Local-part "@" Domain-or-literal, starting at *pp. */
static int addr_mailbox(const char **pp, const char *end, struct addr *a)
{
    const char *p = *pp;
    int rc;

    if ((rc = addr_local(&p, end, a->local)))
        return rc;
    if (p >= end || *p != '@')
        return ADDR_ESYNTAX;
    p++;
    if ((rc = addr_domain(&p, end, a->domain, 1, &a->ip_literal)))
        return rc;
    *pp = p;
    return 0;
}

int addr_parse_path(const char *s, size_t n, int allow_null, struct addr *a, size_t *used)
{
    const char *p, *end;
    int rc;

    memset(a, 0, sizeof *a);
    if (!s || n < 2 || s[0] != '<')
        return ADDR_ESYNTAX;
    end = s + n;
    p = s + 1;
    if (*p == '>') {
        if (!allow_null)
            return ADDR_ESYNTAX;
        a->null_path = 1;
        *used = 2;
        return 0;
    }
    /* RFC 5321 4.5.1: "<Postmaster>" without a domain must be accepted as
     * a recipient (never as a sender, where it means nothing). */
    if (!allow_null && end - p >= 11 && !strncasecmp(p, "postmaster>", 11)) {
        util_strlcpy(a->local, "postmaster", sizeof a->local);
        util_strlcpy(a->full, "postmaster", sizeof a->full);
        *used = 12;
        return 0;
    }
    if (*p == '@') {
        /* RFC 5321 appendix C: a source route is accepted and ignored; the
         * mailbox after the colon is where the mail goes. */
        for (;;) {
            p++;                        /* the '@' */
            if ((rc = addr_domain(&p, end, NULL, 0, NULL)))
                return rc;
            if (p - s > SMTP_PATH_MAX)
                return ADDR_EPATH;
            if (p < end && *p == ',' && p + 1 < end && p[1] == '@') {
                p++;
                continue;
            }
            if (p < end && *p == ':') {
                p++;
                break;
            }
            return ADDR_ESYNTAX;
        }
    }
    if ((rc = addr_mailbox(&p, end, a)))
        return rc;
    if (p >= end || *p != '>')
        return ADDR_ESYNTAX;
    p++;
    /* RFC 5321 4.5.3.1.3: 256 octets, brackets and route included. */
    if (p - s > SMTP_PATH_MAX)
        return ADDR_EPATH;
    addr_make_full(a);
    *used = (size_t)(p - s);
    return 0;
}

int addr_parse_mailbox(const char *s, struct addr *a)
{
    size_t len, used;
    const char *p, *end;
    int rc;

    memset(a, 0, sizeof *a);
    if (!s)
        return ADDR_ESYNTAX;
    len = strlen(s);
    if (len && s[0] == '<') {
        if ((rc = addr_parse_path(s, len, 0, a, &used)))
            return rc;
        if (used != len || !a->domain[0]) {
            memset(a, 0, sizeof *a);
            return ADDR_ESYNTAX;
        }
        return 0;
    }
    p = s;
    end = s + len;
    if ((rc = addr_mailbox(&p, end, a)))
        return rc;
    if (p != end) {
        memset(a, 0, sizeof *a);
        return ADDR_ESYNTAX;
    }
    /* The same limit as on the wire, where the brackets count. */
    if (len + 2 > SMTP_PATH_MAX) {
        memset(a, 0, sizeof *a);
        return ADDR_EPATH;
    }
    addr_make_full(a);
    return 0;
}
