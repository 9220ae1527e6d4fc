/*
 * imap_mime.c: what IMAP FETCH and SEARCH need to know of a message,
 * computed in one streaming pass over it: the MIME tree with the offsets
 * of every part (for BODY[section]), BODYSTRUCTURE and BODY (RFC 3501
 * 7.4.2), ENVELOPE, and the raw header values SEARCH looks at.
 *
 * The parser reads lines; it keeps only the header fields it needs (each
 * capped), a bounded number of parts and the current line's first bytes
 * (enough to recognise a boundary, RFC 2046 5.1.1: at most 70 characters),
 * so its memory does not grow with the message.  The result is stored once
 * per body (store_imap_cache_put) and shared by every copy.
 *
 * Entities: the message is an entity with a header and a body; a
 * multipart body has child entities, a message/rfc822 body has one, the
 * encapsulated message.  The part table stores, per entity in order of
 * appearance, "parent type hdr_start body_start end" (type L, M or R).
 */
#include "internal.h"

#include <ctype.h>
#include <string.h>
#include <time.h>

#define MIME_MAX_ENTS   400             /* parts of one message */
#define MIME_MAX_DEPTH  40
#define MIME_FIELD_MAX  2000            /* octets kept of one header value */
#define MIME_KEEP_MAX   (256 * 1024)    /* octets kept of all header values */
#define MIME_LINE_KEEP  200             /* octets of a line looked at */

/* --------------------------------------------------------- string buffer */

void imap_sb_add(struct imap_sb *b, const void *p, size_t n)
{
    if (b->err)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > IMAP_SB_MAX) {
            b->err = 1;
            return;
        }
        char *q = realloc(b->s, cap);
        if (!q) {
            b->err = 1;
            return;
        }
        b->s = q;
        b->cap = cap;
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = 0;
}

void imap_sb_str(struct imap_sb *b, const char *s)
{
    imap_sb_add(b, s, strlen(s));
}

void imap_sb_printf(struct imap_sb *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        b->err = 1;
        return;
    }
    imap_sb_add(b, tmp, (size_t)n);
}

/* An IMAP string: quoted when it can be (RFC 3501 4.3: 7-bit, no CR/LF,
 * quotes and backslashes escaped), else a literal. */
void imap_sb_string(struct imap_sb *b, const char *s, size_t n)
{
    int lit = n > 1000;
    for (size_t i = 0; i < n && !lit; i++)
        if ((unsigned char)s[i] >= 0x80 || s[i] == '\r' || s[i] == '\n' || !s[i])
            lit = 1;
    if (lit) {
        imap_sb_printf(b, "{%zu}\r\n", n);
        imap_sb_add(b, s, n);
        return;
    }
    imap_sb_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            imap_sb_add(b, "\\", 1);
        imap_sb_add(b, s + i, 1);
    }
    imap_sb_add(b, "\"", 1);
}

void imap_sb_nstring(struct imap_sb *b, const char *s)
{
    if (!s)
        imap_sb_str(b, "NIL");
    else
        imap_sb_string(b, s, strlen(s));
}

void imap_sb_free(struct imap_sb *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

/* -------------------------------------------------------------- parser */

enum {
    IMF_CTYPE, IMF_CTE, IMF_CID, IMF_CDESC, IMF_CDISP, IMF_CLANG, IMF_CLOC, IMF_CMD5,
    IMF_DATE, IMF_SUBJECT, IMF_FROM, IMF_SENDER, IMF_REPLYTO, IMF_TO, IMF_CC, IMF_BCC, IMF_INREPLYTO, IMF_MSGID,
    IMF_N
};

static const char *const im_field_names[IMF_N] = {
    "content-type", "content-transfer-encoding", "content-id", "content-description",
    "content-disposition", "content-language", "content-location", "content-md5",
    "date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to", "message-id",
};

struct im_ent {
    int parent;
    char type;                          /* 'L' leaf, 'M' multipart, 'R' message/rfc822 */
    int is_message;                     /* the top message or one encapsulated */
    int digest;                         /* multipart/digest: children default to message/rfc822 */
    int closed;                         /* multipart: close delimiter seen */
    int depth;
    int64_t hdr_start, body_start, end;
    int64_t body_line, lines;
    int body_set, done;
    char *f[IMF_N];
    char boundary[80];
};

struct imap_mime {
    struct im_ent *e;
    int n, cur;
    int in_header;
    int64_t off, nl;                    /* octets and line ends so far */
    char line[MIME_LINE_KEEP + 1];
    size_t line_len;                    /* octets of the line so far (not all kept) */
    int64_t line_start;
    size_t prev_len;                    /* the previous line's length without its end */
    unsigned char last;                 /* the last octet of the current line */
    int prev_close;                     /* the previous line was a close delimiter */
    int boundary_seen, boundary_close;  /* what the current line was */
    int prev_end;                       /* length of its line end (1 or 2) */
    struct imap_sb field;               /* the header field being unfolded */
    int field_id;                       /* IMF_*, or -1 for one not kept */
    size_t kept;
};

struct imap_mime *imap_mime_new(void)
{
    struct imap_mime *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->e = calloc(MIME_MAX_ENTS, sizeof *m->e);
    if (!m->e) {
        free(m);
        return NULL;
    }
    m->n = 1;
    m->e[0].parent = -1;
    m->e[0].type = 'L';
    m->e[0].is_message = 1;
    m->in_header = 1;
    m->field_id = -1;
    return m;
}

void imap_mime_free(struct imap_mime *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n; i++)
        for (int k = 0; k < IMF_N; k++)
            free(m->e[i].f[k]);
    imap_sb_free(&m->field);
    free(m->e);
    free(m);
}

static void im_field_end(struct imap_mime *m)
{
    struct im_ent *e = &m->e[m->cur];
    int id = m->field_id;

    m->field_id = -1;
    if (id < 0 || m->field.err || e->f[id])
        goto out;                       /* RFC 5322 3.6: the first one counts */
    if (!e->is_message && id >= IMF_DATE)
        goto out;
    size_t n = m->field.len;
    if (m->kept + n > MIME_KEEP_MAX)
        goto out;
    const char *v = m->field.s ? m->field.s : "";
    while (*v == ' ' || *v == '\t')
        v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r'))
        n--;
    e->f[id] = strndup(v, n);
    if (e->f[id])
        m->kept += n;
out:
    m->field.len = 0;
    m->field.err = 0;
    if (m->field.s)
        m->field.s[0] = 0;
}

/* Appends a piece of the current header line to the field being
 * unfolded, up to MIME_FIELD_MAX octets. */
static void im_field_add(struct imap_mime *m, const char *p, size_t n)
{
    if (m->field_id < 0)
        return;
    if (m->field.len + n > MIME_FIELD_MAX)
        n = MIME_FIELD_MAX > m->field.len ? MIME_FIELD_MAX - m->field.len : 0;
    imap_sb_add(&m->field, p, n);
}

static void im_field_start(struct imap_mime *m, const char *line, size_t n)
{
    const char *colon = memchr(line, ':', n);
    size_t k;

    m->field_id = -1;
    if (!colon)
        return;
    k = (size_t)(colon - line);
    while (k && (line[k - 1] == ' ' || line[k - 1] == '\t'))
        k--;
    for (int i = 0; i < IMF_N; i++)
        if (strlen(im_field_names[i]) == k && !strncasecmp(line, im_field_names[i], k)) {
            m->field_id = i;
            break;
        }
    colon++;
    im_field_add(m, colon, n - (size_t)(colon - line));
}

/* Content-Type parameter value (RFC 2045 5.1), unquoted, into out. */
int imap_mime_param(const char *v, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = v ? strchr(v, ';') : NULL;

    while (p) {
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!strncasecmp(p, name, nl)) {
            const char *q = p + nl;
            while (*q == ' ' || *q == '\t')
                q++;
            if (*q == '=') {
                size_t o = 0;
                q++;
                while (*q == ' ' || *q == '\t')
                    q++;
                if (*q == '"') {
                    for (q++; *q && *q != '"'; q++) {
                        if (*q == '\\' && q[1])
                            q++;
                        if (o + 1 < n)
                            out[o++] = *q;
                    }
                } else {
                    for (; *q && *q != ';' && *q != ' ' && *q != '\t' && *q != '('; q++)
                        if (o + 1 < n)
                            out[o++] = *q;
                }
                out[o] = 0;
                return 0;
            }
        }
        /* Skip to the next ';' outside quotes. */
        int inq = 0;
        for (; *p; p++) {
            if (*p == '\\' && inq && p[1])
                p++;
            else if (*p == '"')
                inq = !inq;
            else if (*p == ';' && !inq)
                break;
        }
        p = *p ? p : NULL;
    }
    return -1;
}

/* "type/subtype" of a Content-Type value, lower case. */
static void im_type_of(const char *v, char *type, size_t tn, char *sub, size_t sn)
{
    size_t i = 0, o = 0;

    type[0] = sub[0] = 0;
    if (!v)
        return;
    while (v[i] == ' ' || v[i] == '\t')
        i++;
    for (; v[i] && v[i] != '/' && v[i] != ';' && v[i] != ' '; i++)
        if (o + 1 < tn)
            type[o++] = (char)tolower((unsigned char)v[i]);
    type[o] = 0;
    o = 0;
    if (v[i] == '/')
        for (i++; v[i] && v[i] != ';' && v[i] != ' ' && v[i] != '\t' && v[i] != '('; i++)
            if (o + 1 < sn)
                sub[o++] = (char)tolower((unsigned char)v[i]);
    sub[o] = 0;
}

static void im_header_done(struct imap_mime *m)
{
    struct im_ent *e = &m->e[m->cur];
    char type[64], sub[64];

    im_field_end(m);
    e->body_start = m->off;
    e->body_line = m->nl;
    e->body_set = 1;
    m->in_header = 0;
    im_type_of(e->f[IMF_CTYPE], type, sizeof type, sub, sizeof sub);
    if (!type[0] && e->parent >= 0 && m->e[e->parent].digest)
        strcpy(type, "message"), strcpy(sub, "rfc822");
    if (!strcmp(type, "multipart") &&
        imap_mime_param(e->f[IMF_CTYPE], "boundary", e->boundary, sizeof e->boundary) == 0 &&
        e->boundary[0] && e->depth < MIME_MAX_DEPTH) {
        e->type = 'M';
        e->digest = !strcmp(sub, "digest");
        return;
    }
    if (!strcmp(type, "message") && !strcmp(sub, "rfc822") && e->depth < MIME_MAX_DEPTH &&
        m->n < MIME_MAX_ENTS) {
        struct im_ent *c = &m->e[m->n];
        e->type = 'R';
        c->parent = m->cur;
        c->type = 'L';
        c->is_message = 1;
        c->depth = e->depth + 1;
        c->hdr_start = m->off;
        m->cur = m->n++;
        m->in_header = 1;
        return;
    }
    e->type = 'L';
}

static void im_close(struct imap_mime *m, int idx, int64_t end, int64_t nl_end, int partial)
{
    struct im_ent *e = &m->e[idx];

    if (e->done)
        return;
    e->done = 1;
    if (!e->body_set) {
        /* A header that never ended: the part has no body. */
        e->body_start = end;
        e->body_line = nl_end;
        e->body_set = 1;
        if (!e->type)
            e->type = 'L';
    }
    if (end < e->body_start)
        end = e->body_start;
    e->end = end;
    /* Lines of the body: its line ends (a last line without one is not
     * counted, as Dovecot counts). */
    MN_UNUSED(partial);
    e->lines = end > e->body_start ? nl_end - e->body_line : 0;
    if (e->lines < 0)
        e->lines = 0;
}

/* A line of a body: a boundary of an enclosing multipart ends the parts
 * inside it (RFC 2046 5.1.1: the line end before it belongs to it). */
static int im_boundary(struct imap_mime *m, const char *line, size_t len)
{
    if (len < 3 || line[0] != '-' || line[1] != '-')
        return 0;
    for (int i = m->cur; i >= 0; i = m->e[i].parent) {
        struct im_ent *e = &m->e[i];
        size_t bl = strlen(e->boundary);
        if (e->type != 'M' || e->closed || !bl || len < bl + 2 || memcmp(line + 2, e->boundary, bl))
            continue;
        const char *rest = line + 2 + bl;
        size_t rn = len - 2 - bl;
        int close = rn >= 2 && rest[0] == '-' && rest[1] == '-';
        for (size_t k = close ? 2 : 0; k < rn; k++)
            if (rest[k] != ' ' && rest[k] != '\t')
                return 0;
        /* The line end before the delimiter belongs to it; after a close
         * delimiter that line end already went with the close delimiter
         * (Dovecot counts so too). */
        int64_t end = m->line_start - (m->prev_close ? 0 : m->prev_end);
        int64_t nl_end = m->nl - (m->prev_close ? 1 : 2);
        for (int j = m->cur; j != i; j = m->e[j].parent)
            im_close(m, j, end, nl_end, m->prev_len > 0);
        m->boundary_seen = 1;
        m->boundary_close = close;
        if (close) {
            e->closed = 1;
            m->cur = i;
        } else if (m->n < MIME_MAX_ENTS) {
            struct im_ent *c = &m->e[m->n];
            c->parent = i;
            c->type = 'L';
            c->depth = e->depth + 1;
            c->hdr_start = m->off;
            m->cur = m->n++;
            m->in_header = 1;
        } else {
            m->cur = i;
        }
        return 1;
    }
    return 0;
}

static void im_line(struct imap_mime *m, int ended, int crlf)
{
    size_t len = m->line_len < MIME_LINE_KEEP ? m->line_len : MIME_LINE_KEEP;
    char *line = m->line;
    size_t full = m->line_len;

    if (crlf) {
        if (full == len)
            len--;
        full--;
    }
    if (m->in_header) {
        if (full == 0 && ended) {
            im_header_done(m);
        } else if (line[0] == ' ' || line[0] == '\t') {
            im_field_add(m, line, len);
        } else {
            im_field_end(m);
            im_field_start(m, line, len);
        }
    } else {
        m->boundary_seen = 0;
        im_boundary(m, line, full == len ? len : 0);
    }
    m->prev_close = !m->in_header && m->boundary_seen && m->boundary_close;
    m->boundary_seen = 0;
    m->prev_len = full;
}

/* Header lines longer than MIME_LINE_KEEP: the rest goes to the field. */
static void im_long_piece(struct imap_mime *m, const unsigned char *p, size_t n)
{
    if (m->in_header && m->line_len >= MIME_LINE_KEEP)
        im_field_add(m, (const char *)p, n);
}

int imap_mime_feed(struct imap_mime *m, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        const unsigned char *lf = memchr(p + i, '\n', n - i);
        size_t k = lf ? (size_t)(lf - (p + i)) : n - i;

        if (m->line_len == 0)
            m->line_start = m->off;
        if (k)
            m->last = p[i + k - 1];
        if (m->line_len < MIME_LINE_KEEP) {
            size_t take = MIME_LINE_KEEP - m->line_len;
            if (take > k)
                take = k;
            memcpy(m->line + m->line_len, p + i, take);
            if (k > take)
                im_long_piece(m, p + i + take, k - take - (lf && p[i + k - 1] == '\r'));
        } else {
            im_long_piece(m, p + i, k - (lf && k && p[i + k - 1] == '\r'));
        }
        m->line_len += k;
        m->off += (int64_t)k;
        i += k;
        if (!lf)
            break;
        m->off++;
        m->nl++;
        i++;
        int crlf = m->line_len && m->last == '\r';
        im_line(m, 1, crlf);
        m->prev_end = crlf ? 2 : 1;
        m->line_len = 0;
    }
    return 0;
}

/* ------------------------------------------------------------ envelope */

/* An address list (RFC 5322 3.4) as IMAP address structures (RFC 3501
 * 7.4.2): ((name adl mailbox host) ...), groups as a start marker with
 * the group name as mailbox and an end marker with all NIL. */
static void im_env_addr_one(struct imap_sb *b, const char *s, size_t n)
{
    char name[512], addr[512];
    size_t nn = 0, an = 0;
    const char *lt = NULL, *gt = NULL;
    int inq = 0, depth = 0;

    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            i++;
            continue;
        }
        if (s[i] == '"')
            inq = !inq;
        else if (!inq && s[i] == '(')
            depth++;
        else if (!inq && s[i] == ')' && depth)
            depth--;
        else if (!inq && !depth && s[i] == '<' && !lt)
            lt = s + i;
        else if (!inq && !depth && s[i] == '>' && lt && !gt)
            gt = s + i;
    }
    /* The display name: the phrase before "<", quotes undone. */
    if (lt) {
        inq = 0;
        for (const char *p = s; p < lt && nn + 1 < sizeof name; p++) {
            if (*p == '"') {
                inq = !inq;
                continue;
            }
            if (*p == '\\' && inq && p + 1 < lt)
                p++;
            name[nn++] = *p;
        }
        while (nn && (name[nn - 1] == ' ' || name[nn - 1] == '\t'))
            nn--;
        size_t st = 0;
        while (st < nn && (name[st] == ' ' || name[st] == '\t'))
            st++;
        memmove(name, name + st, nn - st);
        nn -= st;
    }
    const char *a = lt ? lt + 1 : s, *ae = lt ? (gt ? gt : s + n) : s + n;
    depth = 0;
    inq = 0;
    for (const char *p = a; p < ae && an + 1 < sizeof addr; p++) {
        if (*p == '"')
            inq = !inq;
        if (!inq && *p == '(') {
            depth++;
            continue;
        }
        if (!inq && *p == ')' && depth) {
            depth--;
            continue;
        }
        if (depth || (!inq && (*p == ' ' || *p == '\t')))
            continue;
        addr[an++] = *p;
    }
    addr[an] = 0;
    if (!an && !nn)
        return;
    /* A source route "@a,@b:" before the address (RFC 5322 4.4). */
    char *adl = NULL, *mbox = addr, *at;
    if (addr[0] == '@') {
        char *colon = strchr(addr, ':');
        if (colon) {
            *colon = 0;
            adl = addr;
            mbox = colon + 1;
        }
    }
    at = strrchr(mbox, '@');
    if (at)
        *at = 0;
    imap_sb_str(b, "(");
    if (nn)
        imap_sb_string(b, name, nn);
    else
        imap_sb_str(b, "NIL");
    imap_sb_str(b, " ");
    imap_sb_nstring(b, adl);
    imap_sb_str(b, " ");
    imap_sb_nstring(b, mbox);
    imap_sb_str(b, " ");
    /* RFC 3501 7.4.2: a missing host is "[host name unknown]"... clients
     * cope better with the local part alone and NIL. */
    imap_sb_nstring(b, at ? at + 1 : NULL);
    imap_sb_str(b, ")");
}

static void im_env_addrs(struct imap_sb *b, const char *v)
{
    size_t start = b->len;
    int inq = 0, depth = 0, angle = 0, in_group = 0;
    const char *item = v;

    if (!v) {
        imap_sb_str(b, "NIL");
        return;
    }
    imap_sb_str(b, "(");
    for (const char *p = v;; p++) {
        char c = *p;
        if (c && c == '\\' && p[1]) {
            p++;
            continue;
        }
        if (c == '"' && !depth)
            inq = !inq;
        if (inq && c)
            continue;
        if (c == '(')
            depth++;
        else if (c == ')' && depth)
            depth--;
        if (depth && c)
            continue;
        if (c == '<')
            angle = 1;
        else if (c == '>')
            angle = 0;
        if (angle && c)
            continue;
        if (c == ':' && !in_group) {
            /* A group: its name, then the members, then the end marker. */
            const char *s = item;
            size_t n = (size_t)(p - item);
            while (n && (*s == ' ' || *s == '\t'))
                s++, n--;
            while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
                n--;
            imap_sb_str(b, "(NIL NIL ");
            imap_sb_string(b, s, n);
            imap_sb_str(b, " NIL)");
            in_group = 1;
            item = p + 1;
            continue;
        }
        if (c == ',' || c == ';' || !c) {
            im_env_addr_one(b, item, (size_t)(p - item));
            item = p + 1;
            if ((c == ';' || !c) && in_group) {
                imap_sb_str(b, "(NIL NIL NIL NIL)");
                in_group = 0;
            }
            if (!c)
                break;
        }
    }
    if (b->len == start + 1) {
        b->len = start;
        imap_sb_str(b, "NIL");
        return;
    }
    imap_sb_str(b, ")");
}

static void im_env_build(struct imap_sb *b, struct im_ent *e)
{
    imap_sb_str(b, "(");
    imap_sb_nstring(b, e->f[IMF_DATE]);
    imap_sb_str(b, " ");
    imap_sb_nstring(b, e->f[IMF_SUBJECT]);
    imap_sb_str(b, " ");
    im_env_addrs(b, e->f[IMF_FROM]);
    imap_sb_str(b, " ");
    /* RFC 3501 7.4.2: sender and reply-to default to from. */
    im_env_addrs(b, e->f[IMF_SENDER] ? e->f[IMF_SENDER] : e->f[IMF_FROM]);
    imap_sb_str(b, " ");
    im_env_addrs(b, e->f[IMF_REPLYTO] ? e->f[IMF_REPLYTO] : e->f[IMF_FROM]);
    imap_sb_str(b, " ");
    im_env_addrs(b, e->f[IMF_TO]);
    imap_sb_str(b, " ");
    im_env_addrs(b, e->f[IMF_CC]);
    imap_sb_str(b, " ");
    im_env_addrs(b, e->f[IMF_BCC]);
    imap_sb_str(b, " ");
    imap_sb_nstring(b, e->f[IMF_INREPLYTO]);
    imap_sb_str(b, " ");
    imap_sb_nstring(b, e->f[IMF_MSGID]);
    imap_sb_str(b, ")");
}

/* ------------------------------------------------------- bodystructure */

/* ("name" "value" ...) of the parameters after the first ';', or NIL;
 * text parts without a charset get the default one (RFC 2045 5.2), as
 * Dovecot does. */
static void im_bs_params(struct imap_sb *b, const char *v, int text)
{
    const char *p = v ? strchr(v, ';') : NULL;
    size_t start = b->len;
    char cs[8];

    imap_sb_str(b, "(");
    while (p && *p) {
        char name[128], val[1024];
        size_t nn = 0, vn = 0;
        p++;
        while (*p == ' ' || *p == '\t' || *p == ';')
            p++;
        for (; *p && *p != '=' && *p != ';' && *p != ' ' && *p != '\t'; p++)
            if (nn + 1 < sizeof name)
                name[nn++] = (char)tolower((unsigned char)*p);
        name[nn] = 0;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '=') {
            p = strchr(p, ';');
            continue;
        }
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                if (vn + 1 < sizeof val)
                    val[vn++] = *p;
            }
            if (*p)
                p++;
        } else {
            for (; *p && *p != ';' && *p != ' ' && *p != '\t'; p++)
                if (vn + 1 < sizeof val)
                    val[vn++] = *p;
        }
        val[vn] = 0;
        if (nn) {
            if (b->len > start + 1)
                imap_sb_str(b, " ");
            imap_sb_string(b, name, nn);
            imap_sb_str(b, " ");
            imap_sb_string(b, val, vn);
        }
        p = strchr(p, ';');
    }
    if (text && imap_mime_param(v, "charset", cs, sizeof cs))
        imap_sb_str(b, b->len > start + 1 ? " \"charset\" \"us-ascii\"" : "\"charset\" \"us-ascii\"");
    if (b->len == start + 1) {
        b->len = start;
        imap_sb_str(b, "NIL");
        return;
    }
    imap_sb_str(b, ")");
}

/* The first word of a header value (the disposition type, the
 * encoding), as an IMAP string. */
static void im_bs_word(struct imap_sb *b, const char *v, const char *def)
{
    size_t n = 0;
    if (!v) {
        imap_sb_nstring(b, def);
        return;
    }
    while (*v == ' ')
        v++;
    while (v[n] && v[n] != ';' && v[n] != ' ' && v[n] != '\t' && v[n] != '(')
        n++;
    if (!n && !def) {
        imap_sb_str(b, "NIL");
        return;
    }
    if (!n)
        imap_sb_nstring(b, def);
    else
        imap_sb_string(b, v, n);
}

static void im_bs_ext(struct imap_sb *b, struct im_ent *e, int multi)
{
    if (multi) {
        imap_sb_str(b, " ");
        im_bs_params(b, e->f[IMF_CTYPE], 0);
    } else {
        imap_sb_str(b, " ");
        imap_sb_nstring(b, e->f[IMF_CMD5]);
    }
    imap_sb_str(b, " ");
    if (e->f[IMF_CDISP]) {
        imap_sb_str(b, "(");
        im_bs_word(b, e->f[IMF_CDISP], NULL);
        imap_sb_str(b, " ");
        im_bs_params(b, e->f[IMF_CDISP], 0);
        imap_sb_str(b, ")");
    } else {
        imap_sb_str(b, "NIL");
    }
    imap_sb_str(b, " ");
    imap_sb_nstring(b, e->f[IMF_CLANG]);
    imap_sb_str(b, " ");
    imap_sb_nstring(b, e->f[IMF_CLOC]);
}

static void im_bs_build(struct imap_mime *m, struct imap_sb *b, int idx, int ext, int depth)
{
    struct im_ent *e = &m->e[idx];
    char type[64], sub[64];

    if (depth > MIME_MAX_DEPTH + 2) {
        b->err = 1;
        return;
    }
    im_type_of(e->f[IMF_CTYPE], type, sizeof type, sub, sizeof sub);
    imap_sb_str(b, "(");
    if (e->type == 'M') {
        int any = 0;
        for (int i = idx + 1; i < m->n; i++)
            if (m->e[i].parent == idx) {
                im_bs_build(m, b, i, ext, depth + 1);
                any = 1;
            }
        if (!any)       /* RFC 3501: a multipart has at least one part */
            imap_sb_str(b, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)");
        imap_sb_str(b, " ");
        imap_sb_string(b, sub, strlen(sub));
        if (ext)
            im_bs_ext(b, e, 1);
        imap_sb_str(b, ")");
        return;
    }
    if (!type[0] || !sub[0]) {
        int digest = e->parent >= 0 && m->e[e->parent].digest;
        strcpy(type, digest ? "message" : "text");
        strcpy(sub, digest ? "rfc822" : "plain");
    }
    imap_sb_string(b, type, strlen(type));
    imap_sb_str(b, " ");
    imap_sb_string(b, sub, strlen(sub));
    imap_sb_str(b, " ");
    im_bs_params(b, e->f[IMF_CTYPE], !strcmp(type, "text"));
    imap_sb_str(b, " ");
    imap_sb_nstring(b, e->f[IMF_CID]);
    imap_sb_str(b, " ");
    imap_sb_nstring(b, e->f[IMF_CDESC]);
    imap_sb_str(b, " ");
    im_bs_word(b, e->f[IMF_CTE], "7bit");
    imap_sb_printf(b, " %lld", (long long)(e->end - e->body_start));
    if (e->type == 'R') {
        int child = -1;
        for (int i = idx + 1; i < m->n; i++)
            if (m->e[i].parent == idx) {
                child = i;
                break;
            }
        imap_sb_str(b, " ");
        if (child >= 0) {
            im_env_build(b, &m->e[child]);
            imap_sb_str(b, " ");
            im_bs_build(m, b, child, ext, depth + 1);
        } else {
            imap_sb_str(b, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) "
                           "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)");
        }
        imap_sb_printf(b, " %lld", (long long)e->lines);
    } else if (!strcmp(type, "text")) {
        imap_sb_printf(b, " %lld", (long long)e->lines);
    }
    if (ext)
        im_bs_ext(b, e, 0);
    imap_sb_str(b, ")");
}

/* ---------------------------------------------------------------- dates */

static int64_t im_days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static const char *const im_months[12] = { "jan", "feb", "mar", "apr", "may", "jun",
                                        "jul", "aug", "sep", "oct", "nov", "dec" };

int imap_month(const char *s)
{
    for (int i = 0; i < 12; i++)
        if (!strncasecmp(s, im_months[i], 3))
            return i + 1;
    return 0;
}

/* The day of an RFC 5322 date ("[Day,] 1 Jul 2003 ..."), as days since
 * the epoch; SENTBEFORE and friends disregard time and zone (RFC 3501
 * 6.4.4).  -1 when there is no date. */
int64_t imap_date_days(const char *v)
{
    int d = 0, y = 0, mon;
    const char *p = v;

    if (!v)
        return -1;
    while (*p && !isdigit((unsigned char)*p))
        p++;
    while (isdigit((unsigned char)*p))
        d = d * 10 + (*p++ - '0');
    while (*p == ' ' || *p == '-')
        p++;
    mon = imap_month(p);
    if (!mon || d < 1 || d > 31)
        return -1;
    p += 3;
    while (*p == ' ' || *p == '-')
        p++;
    if (!isdigit((unsigned char)*p))
        return -1;
    while (isdigit((unsigned char)*p) && y < 100000)
        y = y * 10 + (*p++ - '0');
    if (y < 50)
        y += 2000;
    else if (y < 1000)
        y += 1900;
    return im_days_from_civil(y, mon, d);
}

int64_t imap_days_of(int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    return im_days_from_civil(tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

/* --------------------------------------------------------------- finish */

int imap_mime_finish(struct imap_mime *m, struct store_imap_cache *out)
{
    struct imap_sb env = { 0 }, bs = { 0 }, body = { 0 }, parts = { 0 };
    struct im_ent *top = &m->e[0];
    int partial = m->line_len > 0;

    memset(out, 0, sizeof *out);
    if (m->line_len) {
        im_line(m, 0, 0);
        m->line_len = 0;
    }
    if (m->in_header) {
        im_field_end(m);
        m->in_header = 0;
    }
    for (int i = m->cur; i >= 0; i = m->e[i].parent)
        im_close(m, i, m->off, m->nl, partial);
    for (int i = 0; i < m->n; i++)
        im_close(m, i, m->off, m->nl, partial);
    im_env_build(&env, top);
    im_bs_build(m, &bs, 0, 1, 0);
    im_bs_build(m, &body, 0, 0, 0);
    for (int i = 0; i < m->n; i++)
        imap_sb_printf(&parts, "%d %c %lld %lld %lld\n", m->e[i].parent, m->e[i].type,
                       (long long)m->e[i].hdr_start, (long long)m->e[i].body_start,
                       (long long)m->e[i].end);
    if (env.err || bs.err || body.err || parts.err)
        goto fail;
    out->envelope = env.s;
    out->structure = bs.s;
    out->body = body.s;
    out->parts = parts.s;
    out->sent = imap_date_days(top->f[IMF_DATE]);
    out->hsubject = strdup(top->f[IMF_SUBJECT] ? top->f[IMF_SUBJECT] : "");
    out->hfrom = strdup(top->f[IMF_FROM] ? top->f[IMF_FROM] : "");
    out->hto = strdup(top->f[IMF_TO] ? top->f[IMF_TO] : "");
    out->hcc = strdup(top->f[IMF_CC] ? top->f[IMF_CC] : "");
    out->hbcc = strdup(top->f[IMF_BCC] ? top->f[IMF_BCC] : "");
    if (!out->hsubject || !out->hfrom || !out->hto || !out->hcc || !out->hbcc) {
        store_imap_cache_free(out);
        return -1;
    }
    return 0;
fail:
    imap_sb_free(&env);
    imap_sb_free(&bs);
    imap_sb_free(&body);
    imap_sb_free(&parts);
    return -1;
}

/* Reads the body, computes and stores its cache entry. */
int imap_mime_compute(int64_t body_id, struct store_imap_cache *c)
{
    struct store_reader r;
    struct imap_mime *m;
    static unsigned char buf[16384];
    ssize_t n;
    int err = STORE_ERR;

    if (store_reader_open(&r, body_id)) {
        store_reader_close(&r);
        return STORE_ERR;
    }
    m = imap_mime_new();
    if (!m)
        goto out;
    while ((n = store_reader_read(&r, buf, sizeof buf)) > 0)
        imap_mime_feed(m, buf, (size_t)n);
    if (n < 0 || imap_mime_finish(m, c))
        goto out;
    err = store_imap_cache_put(body_id, c);
    if (err)
        store_imap_cache_free(c);
out:
    imap_mime_free(m);
    store_reader_close(&r);
    return err;
}

int imap_cache_load(int64_t body_id, struct store_imap_cache *c)
{
    int err = store_imap_cache_get(body_id, c);
    if (err == STORE_NOTFOUND)
        err = imap_mime_compute(body_id, c);
    return err;
}
