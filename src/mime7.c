/*
 * mime7.c: 8-bit MIME to 7 bit, on the way out to a peer that does not
 * offer 8BITMIME (RFC 6152 3, conversion as in RFC 2045 and RFC 2046).
 *
 * The message streams through line by line: memory is one line buffer,
 * the Content-Type and Content-Transfer-Encoding fields of the header
 * section being read, and a stack of enclosing multipart boundaries.
 *
 * Whether a part holds 8-bit bytes is known only once it has been read,
 * and the header that announces the encoding comes before the body.  So
 * every leaf part with an identity encoding (none, 7bit, 8bit, binary) is
 * encoded: quoted-printable for text and message types (which leaves 7-bit
 * text almost as it was), base64 for everything else.  Parts already in
 * quoted-printable or base64 pass through unchanged.  Multiparts and
 * message/rfc822 may not be encoded (RFC 2046 5.1.1, 5.2.1): their
 * contents are converted and their label becomes 7bit.
 *
 * What cannot be converted makes the feed fail, and the message bounces
 * with 5.6.3: 8-bit bytes in a header section (that needs SMTPUTF8), 8-bit
 * bytes in message/partial or message/external-body or in a part that
 * claims to be encoded already, a multipart without a boundary, nesting
 * deeper than MIME7_DEPTH.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MIME7_TEXT      998     /* RFC 5321 4.5.3.1.6, RFC 5322 2.1.1: octets in a line */
#define MIME7_LINE      (MIME7_TEXT + 1)        /* room for the CR; longer lines go in pieces */
#define MIME7_DEPTH     20      /* nesting of multiparts and messages */
#define MIME7_BOUNDARY  200     /* RFC 2046 5.1.1 says 70; be lenient */
#define MIME7_CT        4096    /* unfolded Content-Type value */
#define MIME7_CTE       1024    /* raw Content-Transfer-Encoding field */
#define MIME7_QP_LINE   76      /* RFC 2045 6.7 rule 5 */
#define MIME7_B64_LINE  76      /* RFC 2045 6.8 */

enum { B_COPY, B_SCRUB, B_QP, B_B64 };          /* how a body is written */
enum { F_OTHER, F_CT, F_CTE, F_DROP };          /* the header field being read */

struct mime7_level {
    char boundary[MIME7_BOUNDARY + 1];
    size_t blen;
    int digest;                         /* multipart/digest: parts default to message/rfc822 */
    int depth;
};

struct mime7 {
    int err;
    mime_emit_fn emit;
    void *arg;

    unsigned char line[MIME7_LINE];     /* the line being assembled */
    size_t len;
    int cont;                           /* earlier pieces of this line went already */

    struct mime7_level lv[MIME7_DEPTH];
    int nlv;

    /* the entity whose header section is being read */
    int in_header;
    int is_message;                     /* a message (top level, message/rfc822), not a body part */
    int depth;
    int dflt_rfc822;
    int field;
    int has_ct, has_mv, has_cte, ct_over;
    char ct[MIME7_CT];
    size_t ct_len;
    char cte[MIME7_CTE];                /* held back: it may be replaced */
    size_t cte_len;

    /* the body being written */
    int mode;
    int pending_eol;                    /* a line end not written yet: content, or the
                                         * CRLF that belongs to the next delimiter */
    int col;                            /* output column (QP, base64) */
    int held;                           /* QP: a space or tab that may be trailing */
    int soft;                           /* QP: the output line began after a soft break */
    unsigned char b64[3];
    int nb64;

    unsigned char out[4096];
    size_t olen;
    int olast;                          /* last byte written */
};

/* ------------------------------------------------------------- output */

static void out_flush(struct mime7 *m)
{
    if (m->olen && !m->err) {
        int rc = m->emit(m->arg, m->out, m->olen);
        if (rc)
            m->err = rc < 0 ? rc : -1;
    }
    m->olen = 0;
}

static void out_bytes(struct mime7 *m, const void *p, size_t n)
{
    const unsigned char *s = p;
    if (!n)
        return;
    m->olast = s[n - 1];
    while (n) {
        size_t take = sizeof m->out - m->olen;
        if (take > n)
            take = n;
        memcpy(m->out + m->olen, s, take);
        m->olen += take;
        s += take;
        n -= take;
        if (m->olen == sizeof m->out)
            out_flush(m);
    }
}

static void out_str(struct mime7 *m, const char *s)
{
    out_bytes(m, s, strlen(s));
}

static inline void out_byte(struct mime7 *m, unsigned char c)
{
    if (m->olen == sizeof m->out)
        out_flush(m);
    m->out[m->olen++] = c;
    m->olast = c;
}

/* Text that goes out as it came (header fields, parts already encoded,
 * preamble and epilogue).  A bare CR or a NUL has no place in a 7-bit
 * line (RFC 5322 2.3, RFC 2045 2.7) and a CR might be taken for a line
 * end further on, so it becomes a space. */
static void out_text(struct mime7 *m, const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && p[j] != '\r' && p[j] != '\0')
            j++;
        out_bytes(m, p + i, j - i);
        if (j < n)
            out_byte(m, ' ');
        i = j + 1;
    }
}

/* ------------------------------------------------------------ encoders */

static const char hexdig[] = "0123456789ABCDEF";
static const char b64dig[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* One quoted-printable token: the byte itself or "=XX".  A soft line
 * break ("=" CRLF) keeps every line within 76 characters. */
static void qp_token(struct mime7 *m, unsigned char c, int encode)
{
    int tl = encode ? 3 : 1;
    if (m->col + tl > MIME7_QP_LINE - 1) {
        out_str(m, "=\r\n");
        m->col = 0;
        m->soft = 1;
    }
    /* A soft break could make the next line start with "--" followed by an
     * enclosing boundary, which would end the part early. */
    if (!encode && m->col == 0 && m->soft && c == '-') {
        encode = 1;
        tl = 3;
    }
    if (encode) {
        out_byte(m, '=');
        out_byte(m, (unsigned char)hexdig[c >> 4]);
        out_byte(m, (unsigned char)hexdig[c & 15]);
    } else {
        out_byte(m, c);
    }
    m->col += tl;
    m->soft = 0;
}

/* RFC 2045 6.7: '=' and anything but printable ASCII are encoded; a
 * space or tab is literal unless it ends a line, where a gateway might
 * strip it (rule 3), so it is held until the next byte tells. */
static void qp_byte(struct mime7 *m, unsigned char c)
{
    if (m->held) {
        qp_token(m, (unsigned char)m->held, 0);
        m->held = 0;
    }
    if (c == ' ' || c == '\t') {
        m->held = c;
        return;
    }
    qp_token(m, c, c == '=' || c < 0x20 || c >= 0x7f);
}

static void qp_end_of_text(struct mime7 *m)
{
    if (m->held) {
        qp_token(m, (unsigned char)m->held, 1);
        m->held = 0;
    }
}

static void b64_group(struct mime7 *m, int n)
{
    unsigned v = (unsigned)m->b64[0] << 16 | (unsigned)(n > 1 ? m->b64[1] : 0) << 8 |
                 (unsigned)(n > 2 ? m->b64[2] : 0);
    if (m->col >= MIME7_B64_LINE) {
        out_str(m, "\r\n");
        m->col = 0;
    }
    out_byte(m, (unsigned char)b64dig[(v >> 18) & 63]);
    out_byte(m, (unsigned char)b64dig[(v >> 12) & 63]);
    out_byte(m, n > 1 ? (unsigned char)b64dig[(v >> 6) & 63] : '=');
    out_byte(m, n > 2 ? (unsigned char)b64dig[v & 63] : '=');
    m->col += 4;
}

static void b64_byte(struct mime7 *m, unsigned char c)
{
    m->b64[m->nb64++] = c;
    if (m->nb64 == 3) {
        b64_group(m, 3);
        m->nb64 = 0;
    }
}

/* Content bytes of the current body (never a line end). */
static void enc_bytes(struct mime7 *m, const unsigned char *p, size_t n)
{
    switch (m->mode) {
    case B_COPY:
        for (size_t i = 0; i < n; i++)
            if (p[i] >= 0x80) {
                m->err = -1;
                return;
            }
        out_text(m, p, n);
        break;
    case B_SCRUB:
        /* preamble, epilogue, delimiter lines: readers ignore the text,
         * so an 8-bit byte there is replaced rather than refused */
        for (size_t i = 0; i < n; i++)
            out_byte(m, p[i] >= 0x80 ? '?' : p[i] == '\r' || !p[i] ? ' ' : p[i]);
        break;
    case B_QP:
        for (size_t i = 0; i < n; i++)
            qp_byte(m, p[i]);
        break;
    case B_B64:
        for (size_t i = 0; i < n; i++)
            b64_byte(m, p[i]);
        break;
    }
}

/* A line end inside the content: a hard line break in quoted-printable,
 * CRLF octets in base64 (the canonical form, RFC 2049 4). */
static void enc_eol(struct mime7 *m)
{
    switch (m->mode) {
    case B_QP:
        qp_end_of_text(m);
        out_str(m, "\r\n");
        m->col = 0;
        m->soft = 0;
        break;
    case B_B64:
        b64_byte(m, '\r');
        b64_byte(m, '\n');
        break;
    default:
        out_str(m, "\r\n");
        break;
    }
}

/* The content is over (a delimiter or the end follows). */
static void enc_finish(struct mime7 *m)
{
    if (m->mode == B_QP) {
        qp_end_of_text(m);
    } else if (m->mode == B_B64 && m->nb64) {
        b64_group(m, m->nb64);
        m->nb64 = 0;
    }
}

static void body_start(struct mime7 *m, int mode)
{
    m->in_header = 0;
    m->mode = mode;
    m->pending_eol = 0;
    m->col = 0;
    m->held = 0;
    m->soft = 0;
    m->nb64 = 0;
}

/* ------------------------------------------------------- header fields */

static void entity_start(struct mime7 *m, int is_message, int depth, int dflt_rfc822)
{
    m->in_header = 1;
    m->is_message = is_message;
    m->depth = depth;
    m->dflt_rfc822 = dflt_rfc822;
    m->field = F_OTHER;
    m->has_ct = m->has_mv = m->has_cte = m->ct_over = 0;
    m->ct_len = m->cte_len = 0;
}

static const char *skip_cfws(const char *s, const char *e)
{
    while (s < e) {
        if (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') {
            s++;
        } else if (*s == '(') {
            /* RFC 822 comments nest and may hold quoted pairs */
            int depth = 0;
            while (s < e) {
                if (*s == '\\' && s + 1 < e)
                    s++;
                else if (*s == '(')
                    depth++;
                else if (*s == ')' && --depth == 0) {
                    s++;
                    break;
                }
                s++;
            }
        } else {
            break;
        }
    }
    return s;
}

/* RFC 2045 5.1: token, lower-cased into out. */
static const char *get_token(const char *s, const char *e, char *out, size_t n)
{
    size_t j = 0;
    while (s < e) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c >= 0x7f || strchr("()<>@,;:\\\"/[]?=", c))
            break;
        if (j + 1 < n)
            out[j++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        s++;
    }
    out[j] = '\0';
    return s;
}

struct mime7_ct {
    char type[64], sub[64];
    char boundary[MIME7_BOUNDARY + 1];
    size_t blen;
    int bad_boundary;                   /* too long */
};

/* RFC 2045 5.1: type "/" subtype *(";" attribute "=" value).  A value is
 * a token or a quoted string; unquoted values are taken up to ';' or
 * white space, since boundaries with '=' or '/' left unquoted are common.
 * An invalid field means text/plain (RFC 2045 5.2). */
static void parse_ct(const char *s, size_t len, struct mime7_ct *ct)
{
    const char *e = s + len;
    char attr[32];

    memset(ct, 0, sizeof *ct);
    s = get_token(skip_cfws(s, e), e, ct->type, sizeof ct->type);
    s = skip_cfws(s, e);
    if (s < e && *s == '/')
        s = get_token(skip_cfws(s + 1, e), e, ct->sub, sizeof ct->sub);
    if (!ct->type[0] || !ct->sub[0]) {
        strcpy(ct->type, "text");
        strcpy(ct->sub, "plain");
        return;
    }
    while (s < e) {
        char val[MIME7_BOUNDARY + 2];
        size_t vl = 0;
        int over = 0;

        s = skip_cfws(s, e);
        if (s >= e)
            break;
        if (*s != ';') {                /* junk: resynchronise at the next ';' */
            while (s < e && *s != ';')
                s++;
            continue;
        }
        s = get_token(skip_cfws(s + 1, e), e, attr, sizeof attr);
        s = skip_cfws(s, e);
        if (s >= e || *s != '=')
            continue;
        s = skip_cfws(s + 1, e);
        if (s < e && *s == '"') {
            for (s++; s < e && *s != '"'; s++) {
                if (*s == '\\' && s + 1 < e)
                    s++;
                if (*s == '\r' || *s == '\n')
                    continue;
                if (vl < sizeof val - 1)
                    val[vl++] = *s;
                else
                    over = 1;
            }
            if (s < e)
                s++;
        } else {
            for (; s < e && *s != ';' && *s != ' ' && *s != '\t' && *s != '\r' && *s != '\n'; s++) {
                if (vl < sizeof val - 1)
                    val[vl++] = *s;
                else
                    over = 1;
            }
        }
        if (!strcmp(attr, "boundary") && !ct->blen && !ct->bad_boundary) {
            if (over || vl > MIME7_BOUNDARY || !vl) {
                ct->bad_boundary = 1;
            } else {
                memcpy(ct->boundary, val, vl);
                ct->boundary[vl] = '\0';
                ct->blen = vl;
            }
        }
    }
}

/* The mechanism named by the held Content-Transfer-Encoding field. */
static void cte_token(const struct mime7 *m, char *out, size_t n)
{
    const char *s = m->cte, *e = m->cte + m->cte_len;
    out[0] = '\0';
    while (s < e && *s != ':')
        s++;
    if (s < e)
        get_token(skip_cfws(s + 1, e), e, out, n);
}

static int name_is(const unsigned char *p, size_t n, const char *name)
{
    size_t l = strlen(name);
    return n == l && !strncasecmp((const char *)p, name, l);
}

static void header_field(struct mime7 *m, const unsigned char *p, size_t len, int eol, int first)
{
    const unsigned char *v = p;
    size_t vl = len;

    for (size_t i = 0; i < len; i++)
        if (p[i] >= 0x80) {
            /* RFC 6152 3 and RFC 6532: 8-bit header text cannot go to a
             * peer without 8BITMIME/SMTPUTF8; the message bounces. */
            m->err = -1;
            return;
        }
    if (first && len && p[0] != ' ' && p[0] != '\t') {
        const unsigned char *colon = memchr(p, ':', len);
        m->field = F_OTHER;
        if (colon) {
            size_t nl = (size_t)(colon - p);
            while (nl && (p[nl - 1] == ' ' || p[nl - 1] == '\t'))
                nl--;
            if (name_is(p, nl, "content-type") && !m->has_ct) {
                m->field = F_CT;
                m->has_ct = 1;
                v = colon + 1;
                vl = len - (size_t)(v - p);
            } else if (name_is(p, nl, "content-transfer-encoding")) {
                /* a second one would contradict the one we write */
                m->field = m->has_cte ? F_DROP : F_CTE;
                m->has_cte = 1;
            } else if (name_is(p, nl, "mime-version")) {
                m->has_mv = 1;
            }
        }
    }
    switch (m->field) {
    case F_CT:
        if (m->ct_len + vl > sizeof m->ct) {
            m->ct_over = 1;
            vl = sizeof m->ct - m->ct_len;
        }
        memcpy(m->ct + m->ct_len, v, vl);
        m->ct_len += vl;
        /* the field itself goes out unchanged */
        /* fall through */
    case F_OTHER:
        if (first) {
            out_text(m, p, len);
        } else {
            /* RFC 5322 2.2.3: an overlong field is folded; the pieces go
             * on continuation lines, short enough for the added space */
            for (size_t off = 0; off < len; off += MIME7_TEXT / 2) {
                size_t n = len - off < MIME7_TEXT / 2 ? len - off : MIME7_TEXT / 2;
                out_str(m, "\r\n ");
                out_text(m, p + off, n);
            }
        }
        if (eol)
            out_str(m, "\r\n");
        break;
    case F_CTE:
        if (m->cte_len + len + 2 > sizeof m->cte) {
            m->err = -1;
            return;
        }
        for (size_t i = 0; i < len; i++)
            m->cte[m->cte_len++] = p[i] == '\r' || !p[i] ? ' ' : (char)p[i];
        if (eol) {
            memcpy(m->cte + m->cte_len, "\r\n", 2);
            m->cte_len += 2;
        }
        break;
    case F_DROP:
        break;
    }
}

static void put_held_cte(struct mime7 *m)
{
    out_bytes(m, m->cte, m->cte_len);
    if (m->cte_len && m->cte[m->cte_len - 1] != '\n')
        out_str(m, "\r\n");
}

/* The empty line that ends a header section: decide how the body goes
 * out, write the fields that say so, then the empty line. */
static void header_end(struct mime7 *m)
{
    struct mime7_ct ct;
    char cte[32];
    int identity;

    cte_token(m, cte, sizeof cte);
    identity = !m->has_cte || !cte[0] || !strcmp(cte, "7bit") || !strcmp(cte, "8bit") ||
               !strcmp(cte, "binary");
    if (m->has_ct) {
        parse_ct(m->ct, m->ct_len, &ct);
    } else {
        memset(&ct, 0, sizeof ct);
        strcpy(ct.type, m->dflt_rfc822 ? "message" : "text");
        strcpy(ct.sub, m->dflt_rfc822 ? "rfc822" : "plain");
    }

    if (!identity) {
        /* already encoded (or an encoding we do not know): as it is */
        put_held_cte(m);
        out_str(m, "\r\n");
        body_start(m, B_COPY);
        return;
    }
    if (m->depth >= MIME7_DEPTH) {
        m->err = -1;
        return;
    }

    int composite = !strcmp(ct.type, "multipart") ||
                    (!strcmp(ct.type, "message") &&
                     (!strcmp(ct.sub, "rfc822") || !strcmp(ct.sub, "partial") ||
                      !strcmp(ct.sub, "external-body")));
    if (composite) {
        /* RFC 2046 5.1.1, 5.2: never encoded; the label says what the
         * contents will be once converted: 7bit. */
        if (!strcmp(cte, "7bit")) {
            put_held_cte(m);
        } else if (m->has_cte) {
            if (m->is_message && !m->has_mv)
                out_str(m, "MIME-Version: 1.0\r\n");
            out_str(m, "Content-Transfer-Encoding: 7bit\r\n");
        }
        out_str(m, "\r\n");
        if (!strcmp(ct.type, "multipart")) {
            if (!ct.blen || ct.bad_boundary || m->ct_over || m->nlv >= MIME7_DEPTH) {
                m->err = -1;
                return;
            }
            struct mime7_level *l = &m->lv[m->nlv++];
            memcpy(l->boundary, ct.boundary, ct.blen + 1);
            l->blen = ct.blen;
            l->digest = !strcmp(ct.sub, "digest");
            l->depth = m->depth;
            body_start(m, B_SCRUB);     /* the preamble */
        } else if (!strcmp(ct.sub, "rfc822")) {
            /* RFC 6152 3: the enclosed message is converted in turn */
            entity_start(m, 1, m->depth + 1, 0);
        } else {
            /* partial and external-body must be 7bit already (RFC 2046 5.2.2, 5.2.3) */
            body_start(m, B_COPY);
        }
        return;
    }

    int qp = !strcmp(ct.type, "text") || !strcmp(ct.type, "message");
    if (m->is_message && !m->has_mv)
        out_str(m, "MIME-Version: 1.0\r\n");
    if (m->is_message && !m->has_ct && !m->has_mv)
        /* A plain RFC 5322 message with 8-bit text: its character set is
         * not known (RFC 1428). */
        out_str(m, "Content-Type: text/plain; charset=\"unknown-8bit\"\r\n");
    out_str(m, qp ? "Content-Transfer-Encoding: quoted-printable\r\n"
                  : "Content-Transfer-Encoding: base64\r\n");
    out_str(m, "\r\n");
    body_start(m, qp ? B_QP : B_B64);
}

/* -------------------------------------------------------------- lines */

/* RFC 2046 5.1.1: a line that starts with "--" and the boundary of any
 * enclosing multipart (the innermost is tried first; an outer one also
 * ends the inner parts that were not closed).  *close for "--b--". */
static int match_delimiter(const struct mime7 *m, const unsigned char *p, size_t len, int *close)
{
    if (len < 3 || p[0] != '-' || p[1] != '-')
        return -1;
    for (int k = m->nlv - 1; k >= 0; k--) {
        const struct mime7_level *l = &m->lv[k];
        if (len >= 2 + l->blen && !memcmp(p + 2, l->boundary, l->blen)) {
            *close = len >= 4 + l->blen && p[2 + l->blen] == '-' && p[3 + l->blen] == '-';
            return k;
        }
    }
    return -1;
}

/* The entity being written is cut off by a delimiter or the end. */
static void entity_cut(struct mime7 *m)
{
    if (m->in_header) {
        /* no empty line came: no body, nothing to convert */
        put_held_cte(m);
        m->cte_len = 0;
        return;
    }
    enc_finish(m);
}

static void delimiter(struct mime7 *m, int k, int close, const unsigned char *p, size_t len)
{
    entity_cut(m);
    /* The CRLF before a delimiter belongs to the delimiter (RFC 2046
     * 5.1.1), so a held line end is written now, outside the encoding. */
    if (!m->in_header && m->pending_eol)
        out_str(m, "\r\n");
    m->nlv = k + 1;
    m->mode = B_SCRUB;
    enc_bytes(m, p, len);
    out_str(m, "\r\n");
    if (close) {
        m->nlv = k;
        body_start(m, B_SCRUB);         /* the epilogue */
    } else {
        entity_start(m, 0, m->lv[k].depth + 1, m->lv[k].digest);
    }
}

/* One line, or a piece of a line longer than the buffer (first: the
 * line's first piece; eol: its last). */
static void process_line(struct mime7 *m, const unsigned char *p, size_t len, int eol, int first)
{
    int close = 0, k;

    if (first && eol && m->nlv && (k = match_delimiter(m, p, len, &close)) >= 0) {
        delimiter(m, k, close, p, len);
        return;
    }
    if (m->in_header) {
        if (first && eol && len == 0)
            header_end(m);
        else
            header_field(m, p, len, eol, first);
        return;
    }
    if (first && m->pending_eol)
        enc_eol(m);
    /* Text that goes out as it is must still fit the 998-octet limit: the
     * pieces of an overlong line become lines (in an encoded part, a
     * base64 decoder skips the line break; such a line was broken anyway). */
    if (!first && (m->mode == B_COPY || m->mode == B_SCRUB))
        out_str(m, "\r\n");
    m->pending_eol = 0;
    enc_bytes(m, p, len);
    if (eol)
        m->pending_eol = 1;
}

/* The end of the buffered line (l octets, its CR removed).  Without a CR
 * it can be one octet longer than a line may be. */
static void last_piece(struct mime7 *m, size_t l, int eol)
{
    if (l > MIME7_TEXT) {
        process_line(m, m->line, MIME7_TEXT, 0, !m->cont);
        process_line(m, m->line + MIME7_TEXT, l - MIME7_TEXT, eol, 0);
    } else {
        process_line(m, m->line, l, eol, !m->cont);
    }
}

/* ---------------------------------------------------------------- API */

struct mime7 *mime7_new(void)
{
    struct mime7 *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->olast = '\n';
    entity_start(m, 1, 0, 0);
    return m;
}

void mime7_free(struct mime7 *m)
{
    free(m);
}

int mime7_feed(struct mime7 *m, const unsigned char *in, size_t n, mime_emit_fn emit, void *arg)
{
    size_t i = 0;

    m->emit = emit;
    m->arg = arg;
    while (i < n && !m->err) {
        if (in[i] == '\n') {
            size_t l = m->len;
            if (l && m->line[l - 1] == '\r')
                l--;
            last_piece(m, l, 1);
            m->len = 0;
            m->cont = 0;
            i++;
            continue;
        }
        if (m->len == sizeof m->line) {
            /* Longer than any line may be: on in pieces of MIME7_TEXT
             * octets.  Decided only on seeing that no LF follows, so that
             * any split of the input gives the same pieces; the last byte
             * stays, so the final piece of a line is never empty. */
            process_line(m, m->line, MIME7_TEXT, 0, !m->cont);
            memmove(m->line, m->line + MIME7_TEXT, m->len - MIME7_TEXT);
            m->len -= MIME7_TEXT;
            m->cont = 1;
        }
        const unsigned char *lf = memchr(in + i, '\n', n - i);
        size_t take = (lf ? (size_t)(lf - in) : n) - i;
        if (take > sizeof m->line - m->len)
            take = sizeof m->line - m->len;
        memcpy(m->line + m->len, in + i, take);
        m->len += take;
        i += take;
    }
    out_flush(m);
    return m->err;
}

int mime7_finish(struct mime7 *m, mime_emit_fn emit, void *arg)
{
    m->emit = emit;
    m->arg = arg;
    if (m->err)
        return m->err;
    if (m->len || m->cont) {
        size_t l = m->len;
        int eol = l && m->line[l - 1] == '\r';
        last_piece(m, eol ? l - 1 : l, eol);
        m->len = 0;
        m->cont = 0;
    }
    if (!m->err) {
        if (m->in_header) {
            if (m->olast != '\n')
                out_str(m, "\r\n");
            entity_cut(m);
        } else {
            /* at the end, a held line end is content */
            if (m->pending_eol)
                enc_eol(m);
            m->pending_eol = 0;
            enc_finish(m);
            if (m->olast != '\n')
                /* the transport needs a final line end; in
                 * quoted-printable a soft break adds no content */
                out_str(m, m->mode == B_QP ? "=\r\n" : "\r\n");
        }
    }
    out_flush(m);
    return m->err;
}
