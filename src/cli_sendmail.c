/*
 * cli_sendmail.c: `mailnode sendmail`, the sendmail(8)-compatible way for
 * local programs to submit mail.
 *
 *   mailnode sendmail [-t] [-i|-oi] [-f FROM] [-F NAME] [-o...] [--] [RCPT...]
 *
 * The message is read from standard input.  The header section is kept in
 * memory (at most SENDMAIL_HDR_MAX bytes) because -t needs its recipients
 * and the added fields need to know what is there; the body streams
 * through a fixed buffer into a temporary file, so a 100 MB attachment
 * costs no more memory than a one-line note.  Only when the whole input
 * has been read and checked is the database touched, in one short write
 * transaction: a slow producer never holds the write lock against the
 * daemon, and a message is either stored completely or not at all.
 *
 * The command writes the database directly, so it works while the daemon
 * is stopped; SQLite's WAL and busy timeout let it run next to a daemon.
 */
#include "internal.h"

#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SENDMAIL_HDR_MAX    (256 * 1024)  /* header section, in memory */
#define SENDMAIL_READ       (64 * 1024)   /* read(2) buffer */
#define SENDMAIL_SPOOL_MEM  (256 * 1024)  /* body bytes kept before spilling to a file */
#define SENDMAIL_ROUTES     1000          /* routes one recipient may expand to */
#define SENDMAIL_NAME_MAX   200           /* -F full name */

struct sendmail_field {
    size_t off, len;                    /* in hdr: the field with its CRLFs */
    int name_len;
    int drop;                           /* Bcc: left out of the stored copy */
};

struct sendmail {
    /* options */
    int opt_t, ignore_dots, notify, ret_full;
    int mode;                           /* 0 send; 'p' -bp, 'q' -q, 'i' -bi: another command */
    const char *from_opt, *fullname, *envid;

    /* input, normalised to CRLF lines */
    int fd;
    unsigned char *rbuf;
    size_t roff, rlen;
    int reof;
    int pending_cr;                     /* a CR ended the last line; swallow an LF */
    int at_bol, dot_pending;
    int ended;                          /* EOF or the "." line */
    int eightbit;
    int64_t limit;                      /* message_size_limit, 0 = none */
    int64_t hsize;                      /* bytes of the stored header section */

    /* the header section */
    char *hdr;
    size_t hlen;
    struct sendmail_field *f;
    size_t nf, capf;
    int have_msgid, have_date, have_from, received;

    /* the body */
    unsigned char *sp;
    size_t splen;
    int spfd;
    int64_t body_size;

    /* envelope */
    char sender[ADDR_MAX];
    char login[ADDR_MAX];               /* user@hostname of the caller */
    char (*rcpt)[ADDR_MAX];
    size_t nrcpt, caprcpt;
    const char *where;                  /* where recipients come from, for messages */

    /* what is added to the message */
    char qid[QID_LEN + 1];
    char *prefix;                       /* Received: */
    char *suffix;                       /* Message-ID:, Date:, From: when missing */
};

static void sendmail_usage(FILE *out)
{
    fprintf(out,
            "usage: mailnode sendmail [-t] [-i] [-f FROM] [-F NAME] [--] [RECIPIENT...]\n"
            "       sendmail [options] [RECIPIENT...]\n"
            "Queues the message read from standard input for the recipients.\n"
            "  -t          also take recipients from the To:, Cc: and Bcc: fields\n"
            "              (Bcc: is removed from the stored copy in any case)\n"
            "  -i, -oi     a line with a single \".\" does not end the input\n"
            "  -f FROM     envelope sender (default: your login name @ hostname; \"<>\": none)\n"
            "  -r FROM     the same as -f\n"
            "  -F NAME     full name for an added From: field\n"
            "  -N DSN      never | success,failure,delay: delivery notifications\n"
            "  -R RET      full | hdrs: what a bounce returns\n"
            "  -V ENVID    envelope id for delivery notifications\n"
            "  -bs         speak SMTP on standard input and output, as the calling user\n"
            "              (who counts as authenticated); each message is queued\n"
            "              durably before its 250 reply\n"
            "  -bp         list the queue (as mailq, or mailnode queue list)\n"
            "  -q          deliver queued mail now (as mailnode flush; -q15m and -qR... too)\n"
            "  -bi         newaliases: nothing to do, aliases are in the database\n"
            "Accepted and ignored for compatibility: -bm, -m, -n, -v, -U, -G, -oXXX,\n"
            "-O OPT=VAL, -B TYPE, -h N, -L TAG.\n"
            "Exit status: 0 queued; 64 usage; 65 bad message or address; 67 no such\n"
            "user; 75 try again later (see sysexits(3)).\n");
}

/* ------------------------------------------------------------ parsing */

/* RFC 5322 2.2: field-name = 1*ftext (printable US-ASCII except ':').
 * Returns the length of the name of a field line "NAME:" (white space
 * before the colon is the obsolete syntax of RFC 5322 4.5), or -1. */
static int sendmail_hdr_name(const char *line, size_t len)
{
    size_t i = 0, name;

    while (i < len && (unsigned char)line[i] > 32 && (unsigned char)line[i] < 127 && line[i] != ':')
        i++;
    name = i;
    if (name == 0 || name > 997)
        return -1;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i >= len || line[i] != ':')
        return -1;
    return (int)name;
}

/* Splits an RFC 5322 address-list ("Name <a@b>, c@d (comment), group: x@y;")
 * into addresses and calls cb with each, as written (quoted local parts
 * keep their quotes).  Display names, comments and group names are
 * dropped.  Line breaks of folded fields count as white space.  Returns 0,
 * -1 if quotes, comments or angle brackets do not balance or an address
 * is too long, or what cb returned when that was not 0. */
static int sendmail_addr_list(const char *s, size_t n,
                              int (*cb)(void *arg, const char *addr), void *arg)
{
    char unit[ADDR_MAX + 8];
    size_t u = 0, i;
    int inq = 0, depth = 0, angle = 0, got_angle = 0, rc;

    for (i = 0; i <= n; i++) {
        int c = i < n ? (unsigned char)s[i] : -1;

        if (c == -1 || (!inq && !depth && !angle && (c == ',' || c == ';'))) {
            if (c == -1 && (inq || depth || angle))
                return -1;
            while (u && unit[u - 1] == ' ')
                u--;
            unit[u] = '\0';
            if (u && (rc = cb(arg, unit)))
                return rc;
            u = 0;
            got_angle = 0;
            continue;
        }
        if (depth) {
            /* RFC 5322 3.2.2: comments nest and may hold quoted-pairs. */
            if (c == '\\' && i + 1 < n)
                i++;
            else if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
            continue;
        }
        if (inq) {
            if (c == '\\' && i + 1 < n) {
                if (u + 2 >= sizeof unit)
                    return -1;
                unit[u++] = (char)c;
                c = (unsigned char)s[++i];
            } else if (c == '"') {
                inq = 0;
            }
            if (u + 1 >= sizeof unit)
                return -1;
            unit[u++] = (char)c;
            continue;
        }
        if (c == '(') {
            depth = 1;
            continue;
        }
        if (got_angle)                  /* after "<addr>", only comments and space */
            continue;
        if (c == '<' && !angle) {
            u = 0;                      /* what came before was a display name */
            angle = 1;
            continue;
        }
        if (c == '>' && angle) {
            angle = 0;
            got_angle = 1;
            continue;
        }
        if (c == ':' && !angle) {
            u = 0;                      /* "group-name:" opens a group */
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            /* Kept (as one space) only between two words, where it makes
             * the address invalid instead of silently joining the words. */
            if (u && unit[u - 1] != ' ') {
                if (u + 1 >= sizeof unit)
                    return -1;
                unit[u++] = ' ';
            }
            continue;
        }
        if (c == '"')
            inq = 1;
        if (u + 1 >= sizeof unit)
            return -1;
        unit[u++] = (char)c;
    }
    return 0;
}

/* 1 if the address has an '@' outside a quoted local part. */
static int sendmail_has_domain(const char *s)
{
    int inq = 0;
    for (; *s; s++) {
        if (inq && *s == '\\' && s[1])
            s++;
        else if (*s == '"')
            inq = !inq;
        else if (!inq && *s == '@')
            return 1;
    }
    return 0;
}

/* The domain that completes a recipient written without one. */
static const char *sendmail_default_domain(void)
{
    return conf->n_local_domains ? conf->local_domains[0] : conf->hostname;
}

/* Parses text as a mailbox, adding "@domain" when it has no domain part.
 * Returns an ADDR_E* code. */
static int sendmail_qualify(const char *text, const char *domain, struct addr *a)
{
    char buf[ADDR_MAX + SMTP_DOMAIN_MAX + 8];
    size_t len = strlen(text);

    if (len >= 2 && text[0] == '<' && text[len - 1] == '>') {
        text++;
        len -= 2;
    }
    if (len >= ADDR_MAX)
        return ADDR_EPATH;
    memcpy(buf, text, len);
    buf[len] = '\0';
    if (!sendmail_has_domain(buf))
        snprintf(buf + len, sizeof buf - len, "@%s", domain);
    return addr_parse_mailbox(buf, a);
}

static const char *sendmail_addr_error(int rc)
{
    switch (rc) {
    case ADDR_ELOCAL:  return "the local part is longer than 64 characters";
    case ADDR_EDOMAIN: return "the domain is too long or not valid";
    case ADDR_EPATH:   return "the address is longer than 254 characters";
    default:           return "not a valid address";
    }
}

static int sendmail_add_rcpt(void *arg, const char *text)
{
    struct sendmail *m = arg;
    struct addr a;
    int rc;

    if ((rc = sendmail_qualify(text, sendmail_default_domain(), &a))) {
        fprintf(stderr, "sendmail: recipient '%.300s' (%s): %s\n", text, m->where,
                sendmail_addr_error(rc));
        return EX_DATAERR;
    }
    for (size_t i = 0; i < m->nrcpt; i++)
        if (!strcmp(m->rcpt[i], a.full))
            return 0;
    if (conf->max_recipients > 0 && (int64_t)m->nrcpt >= conf->max_recipients) {
        fprintf(stderr, "sendmail: more than %lld recipients (max_recipients)\n",
                (long long)conf->max_recipients);
        return EX_DATAERR;
    }
    if (m->nrcpt == m->caprcpt) {
        size_t cap = m->caprcpt ? m->caprcpt * 2 : 8;
        void *p = realloc(m->rcpt, cap * sizeof *m->rcpt);
        if (!p) {
            fprintf(stderr, "sendmail: out of memory\n");
            return EX_OSERR;
        }
        m->rcpt = p;
        m->caprcpt = cap;
    }
    util_strlcpy(m->rcpt[m->nrcpt++], a.full, ADDR_MAX);
    return 0;
}

/* ---------------------------------------------------------------- input */

/* Next input byte, -1 at the end, -2 on a read error. */
static int sendmail_getc(struct sendmail *m)
{
    if (m->roff == m->rlen) {
        ssize_t r;
        if (m->reof)
            return -1;
        do
            r = read(m->fd, m->rbuf, SENDMAIL_READ);
        while (r < 0 && errno == EINTR);
        if (r < 0)
            return -2;
        if (r == 0) {
            m->reof = 1;
            return -1;
        }
        m->roff = 0;
        m->rlen = (size_t)r;
    }
    return m->rbuf[m->roff++];
}

static int sendmail_hdr_append(struct sendmail *m, const char *s, size_t n)
{
    if (m->hlen + n > SENDMAIL_HDR_MAX) {
        fprintf(stderr, "sendmail: the header section is longer than %d KB\n",
                SENDMAIL_HDR_MAX / 1024);
        return EX_DATAERR;
    }
    memcpy(m->hdr + m->hlen, s, n);
    m->hlen += n;
    return 0;
}

/* One complete header line, m->hdr[ls..hlen) without its line end.
 * Returns 0 (more header), 1 (the header section ended), or an EX_ code. */
static int sendmail_hdr_line(struct sendmail *m, size_t ls, int lineno)
{
    char *line = m->hdr + ls;
    size_t len = m->hlen - ls;
    int name, rc;

    if (len == 0)
        return 1;
    if (!m->ignore_dots && len == 1 && line[0] == '.') {
        m->hlen = ls;
        m->ended = 1;
        return 1;
    }
    /* A Unix "From " line (mbox separator) is no header field; sendmail
     * and Postfix drop it too. */
    if (lineno == 1 && len >= 5 && !memcmp(line, "From ", 5)) {
        m->hlen = ls;
        return 0;
    }
    if (line[0] == ' ' || line[0] == '\t') {
        /* RFC 5322 2.2.3: a folded continuation of the field above. */
        if (!m->nf)
            goto malformed;
        if ((rc = sendmail_hdr_append(m, "\r\n", 2)))
            return rc;
        m->f[m->nf - 1].len = m->hlen - m->f[m->nf - 1].off;
        return 0;
    }
    if ((name = sendmail_hdr_name(line, len)) < 0)
        goto malformed;
    if (m->nf == m->capf) {
        size_t cap = m->capf ? m->capf * 2 : 32;
        void *p = realloc(m->f, cap * sizeof *m->f);
        if (!p) {
            fprintf(stderr, "sendmail: out of memory\n");
            return EX_OSERR;
        }
        m->f = p;
        m->capf = cap;
    }
    if ((rc = sendmail_hdr_append(m, "\r\n", 2)))
        return rc;
    m->f[m->nf].off = ls;
    m->f[m->nf].len = m->hlen - ls;
    m->f[m->nf].name_len = name;
    m->f[m->nf].drop = 0;
    m->nf++;
    return 0;
malformed:
    fprintf(stderr, "sendmail: line %d of the header section is not a header field: \"%.*s\"\n"
                    "sendmail: (each field is NAME: value; an empty line ends the header section)\n",
            lineno, len > 60 ? 60 : (int)len, line);
    return EX_DATAERR;
}

/* Reads the header section: up to the first empty line, the end of the
 * input, or (without -i) a line holding a single dot. */
static int sendmail_read_header(struct sendmail *m)
{
    size_t ls = 0;
    int lineno = 1, rc;

    for (;;) {
        int c = sendmail_getc(m);
        if (c == -2) {
            fprintf(stderr, "sendmail: reading standard input: %s\n", strerror(errno));
            return EX_IOERR;
        }
        if (m->pending_cr) {
            m->pending_cr = 0;
            if (c == '\n')
                continue;
        }
        if (c == -1 || c == '\r' || c == '\n') {
            if (c == -1) {
                m->ended = 1;
                if (m->hlen == ls)
                    return 0;
            }
            m->pending_cr = c == '\r';
            rc = sendmail_hdr_line(m, ls, lineno++);
            if (rc == 1 || (rc == 0 && m->ended))
                return 0;
            if (rc)
                return rc;
            ls = m->hlen;
            continue;
        }
        if (c == 0) {
            fprintf(stderr, "sendmail: the message contains a NUL byte\n");
            return EX_DATAERR;
        }
        if (c >= 0x80)
            m->eightbit = 1;
        /* Room for the CRLF that ends the line. */
        if (m->hlen + 2 >= SENDMAIL_HDR_MAX) {
            fprintf(stderr, "sendmail: the header section is longer than %d KB\n",
                    SENDMAIL_HDR_MAX / 1024);
            return EX_DATAERR;
        }
        m->hdr[m->hlen++] = (char)c;
    }
}

static int sendmail_too_big(const struct sendmail *m)
{
    if (m->limit > 0 && m->hsize + m->body_size > m->limit) {
        fprintf(stderr, "sendmail: the message is larger than %lld bytes (message_size_limit)\n",
                (long long)m->limit);
        return 1;
    }
    return 0;
}

static int sendmail_spool_flush(struct sendmail *m)
{
    size_t off = 0;

    if (!m->splen)
        return 0;
    if (sendmail_too_big(m))
        return EX_DATAERR;
    if (m->spfd < 0) {
        const char *dir = getenv("TMPDIR");
        char path[4096];
        snprintf(path, sizeof path, "%s/mailnode-sendmail.XXXXXX", dir && *dir ? dir : "/tmp");
        m->spfd = mkstemp(path);
        if (m->spfd < 0) {
            fprintf(stderr, "sendmail: cannot create a temporary file in %s: %s\n",
                    dir && *dir ? dir : "/tmp", strerror(errno));
            return EX_CANTCREAT;
        }
        unlink(path);
    }
    while (off < m->splen) {
        ssize_t w = write(m->spfd, m->sp + off, m->splen - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "sendmail: writing the temporary file: %s\n", strerror(errno));
            return EX_TEMPFAIL;
        }
        off += (size_t)w;
    }
    m->splen = 0;
    return 0;
}

#define SENDMAIL_EMIT(m, c) do { \
        if ((m)->splen == SENDMAIL_SPOOL_MEM && (rc = sendmail_spool_flush(m))) \
            return rc; \
        (m)->sp[(m)->splen++] = (unsigned char)(c); \
        (m)->body_size++; \
    } while (0)

/* Reads the body into the spool: line ends become CRLF (a bare CR too, as
 * in the SMTP server, so no line end can hide from a later relay); without
 * -i a line holding a single dot ends the input.  No dot-unstuffing: this
 * is not SMTP. */
static int sendmail_read_body(struct sendmail *m)
{
    int rc;

    m->at_bol = 1;
    while (!m->ended) {
        const unsigned char *p, *e;
        if (m->roff == m->rlen) {
            int c = sendmail_getc(m);
            if (c == -2) {
                fprintf(stderr, "sendmail: reading standard input: %s\n", strerror(errno));
                return EX_IOERR;
            }
            if (c == -1)
                break;
            m->roff--;              /* unread: the loop below takes it */
        }
        p = m->rbuf + m->roff;
        e = m->rbuf + m->rlen;
        for (; p < e && !m->ended; p++) {
            unsigned char c = *p;
            if (m->pending_cr) {
                m->pending_cr = 0;
                if (c == '\n')
                    continue;
            }
            if (m->dot_pending) {
                m->dot_pending = 0;
                if (c == '\r' || c == '\n') {
                    m->ended = 1;
                    break;
                }
                SENDMAIL_EMIT(m, '.');
                m->at_bol = 0;
            } else if (m->at_bol && c == '.' && !m->ignore_dots) {
                m->dot_pending = 1;
                continue;
            }
            if (c == '\r' || c == '\n') {
                SENDMAIL_EMIT(m, '\r');
                SENDMAIL_EMIT(m, '\n');
                m->at_bol = 1;
                m->pending_cr = c == '\r';
                continue;
            }
            if (c == 0) {
                fprintf(stderr, "sendmail: the message contains a NUL byte\n");
                return EX_DATAERR;
            }
            if (c >= 0x80)
                m->eightbit = 1;
            SENDMAIL_EMIT(m, c);
            m->at_bol = 0;
        }
        m->roff = (size_t)(p - m->rbuf);
    }
    /* A lone "." on the last, unterminated line ends the input too. */
    if (!m->ended && !m->at_bol) {
        SENDMAIL_EMIT(m, '\r');
        SENDMAIL_EMIT(m, '\n');
    }
    m->ended = 1;
    return 0;
}

/* ------------------------------------------------------- header section */

static int sendmail_field_is(const struct sendmail *m, const struct sendmail_field *f,
                             const char *name)
{
    return (size_t)f->name_len == strlen(name) && !strncasecmp(m->hdr + f->off, name, f->name_len);
}

/* Looks at the fields read: counts Received, notes what is present,
 * drops Bcc, and with -t collects the recipients. */
static int sendmail_scan_header(struct sendmail *m)
{
    int rc;

    for (size_t i = 0; i < m->nf; i++) {
        struct sendmail_field *f = &m->f[i];
        int rcpt_field = 0;

        if (sendmail_field_is(m, f, "Received"))
            m->received++;
        else if (sendmail_field_is(m, f, "Message-ID"))
            m->have_msgid = 1;
        else if (sendmail_field_is(m, f, "Date"))
            m->have_date = 1;
        else if (sendmail_field_is(m, f, "From"))
            m->have_from = 1;
        else if (sendmail_field_is(m, f, "To") || sendmail_field_is(m, f, "Cc"))
            rcpt_field = 1;
        else if (sendmail_field_is(m, f, "Bcc")) {
            /* RFC 5322 3.6.3: Bcc recipients must not be shown to the
             * others; the field goes whatever the options. */
            rcpt_field = 1;
            f->drop = 1;
        } else if (sendmail_field_is(m, f, "Resent-Bcc"))
            f->drop = 1;

        if (rcpt_field && m->opt_t) {
            const char *v = memchr(m->hdr + f->off, ':', f->len);
            char where[16];
            v++;
            snprintf(where, sizeof where, "%.*s: field", f->name_len, m->hdr + f->off);
            m->where = where;
            rc = sendmail_addr_list(v, f->len - (size_t)(v - (m->hdr + f->off)),
                                    sendmail_add_rcpt, m);
            m->where = NULL;
            if (rc == -1) {
                fprintf(stderr, "sendmail: the %.*s: field is not a valid address list\n",
                        f->name_len, m->hdr + f->off);
                return EX_DATAERR;
            }
            if (rc)
                return rc;
        }
    }
    /* RFC 5321 6.3: a message that has passed this many hops is looping. */
    if (m->received >= conf->max_received) {
        fprintf(stderr, "sendmail: the message has %d Received: fields, a mail loop? "
                        "(max_received is %lld)\n", m->received, (long long)conf->max_received);
        return EX_DATAERR;
    }
    return 0;
}

/* The display name of an added From: as a quoted-string, with control
 * characters removed so that -F cannot add header lines. */
static void sendmail_quote_name(const char *name, char *out, size_t n)
{
    size_t o = 0, k = 0;

    out[o++] = '"';
    for (const char *p = name; *p && k < SENDMAIL_NAME_MAX && o + 4 < n; p++, k++) {
        unsigned char c = (unsigned char)*p;
        if (c < 32 || c == 127)
            continue;
        if (c == '"' || c == '\\')
            out[o++] = '\\';
        out[o++] = (char)c;
    }
    out[o++] = '"';
    out[o] = '\0';
}

/* Builds the Received: field that goes first and the fields that are
 * added at the end of the header section when the message lacks them. */
static int sendmail_added_fields(struct sendmail *m)
{
    char date[64], name[SENDMAIL_NAME_MAX * 2 + 8];
    unsigned char rnd[8];
    size_t cap = 2048, o = 0;
    int w;

    util_date(util_now(), date, sizeof date);
    m->prefix = malloc(cap);
    m->suffix = malloc(cap);
    if (!m->prefix || !m->suffix) {
        fprintf(stderr, "sendmail: out of memory\n");
        return EX_OSERR;
    }
    /* RFC 5321 4.4 trace field, folded before the date so that the line
     * stays short with the longest host name. */
    size_t p = 0;
    if (util_header(m->prefix, cap, &p, "Received: by %s (mailnode) id %s (uid %lu);\r\n\t%s\r\n",
                    conf->hostname, m->qid, (unsigned long)getuid(), date) < 0)
        goto bad;
    m->suffix[0] = '\0';
    /* RFC 5322 3.6.4 and 3.6.1: a local submission gets the Message-ID
     * and Date the originator should have given. */
    if (!m->have_msgid) {
        char hex[2 * sizeof rnd + 1];
        randombytes_buf(rnd, sizeof rnd);
        for (size_t i = 0; i < sizeof rnd; i++)
            snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
        if (util_header(m->suffix, cap, &o, "Message-ID: <%s.%s@%s>\r\n", m->qid, hex, conf->hostname) < 0)
            goto bad;
    }
    if (!m->have_date && util_header(m->suffix, cap, &o, "Date: %s\r\n", date) < 0)
        goto bad;
    if (!m->have_from) {
        const char *addr = m->sender[0] ? m->sender : m->login;
        if (m->fullname && *m->fullname) {
            sendmail_quote_name(m->fullname, name, sizeof name);
            w = util_header(m->suffix, cap, &o, "From: %s <%s>\r\n", name, addr);
        } else {
            w = util_header(m->suffix, cap, &o, "From: %s\r\n", addr);
        }
        if (w < 0)
            goto bad;
    }
    return 0;
bad:
    fprintf(stderr, "sendmail: a header field would hold a line break or control character\n");
    return EX_DATAERR;
}

/* ---------------------------------------------------------------- store */

static int sendmail_merge(struct store_rcpt **routes, size_t *n, size_t *cap,
                          const struct store_rcpt *r)
{
    for (size_t i = 0; i < *n; i++) {
        const struct store_rcpt *o = &(*routes)[i];
        if (o->kind == r->kind &&
            (r->kind == ROUTE_LOCAL ? o->user_id == r->user_id : !strcmp(o->addr, r->addr)))
            return 0;
    }
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        void *p = realloc(*routes, c * sizeof **routes);
        if (!p)
            return -1;
        *routes = p;
        *cap = c;
    }
    (*routes)[(*n)++] = *r;
    return 0;
}

/* Routes every recipient; refuses the message if one cannot be. */
static int sendmail_route(struct sendmail *m, struct store_rcpt **routes, size_t *nroutes)
{
    struct store_rcpt *tmp = malloc(SENDMAIL_ROUTES * sizeof *tmp);
    size_t cap = 0;
    int ex = 0;

    *routes = NULL;
    *nroutes = 0;
    if (!tmp) {
        fprintf(stderr, "sendmail: out of memory\n");
        return EX_OSERR;
    }
    for (size_t i = 0; i < m->nrcpt && !ex; i++) {
        struct addr a;
        size_t k = 0;
        int rc = addr_parse_mailbox(m->rcpt[i], &a);
        if (!rc)
            rc = queue_route(&a, tmp, SENDMAIL_ROUTES, &k);
        switch (rc) {
        case 0:
            break;
        case QUEUE_EUNKNOWN:
            fprintf(stderr, "sendmail: <%s>: no such user here\n", m->rcpt[i]);
            ex = EX_NOUSER;
            continue;
        case QUEUE_ELOOP:
            fprintf(stderr, "sendmail: <%s>: the aliases for this address loop or nest "
                            "too deeply (see mailnode alias list)\n", m->rcpt[i]);
            ex = EX_CONFIG;
            continue;
        case QUEUE_ETOOMANY:
            fprintf(stderr, "sendmail: <%s>: expands to more than %d addresses\n",
                    m->rcpt[i], SENDMAIL_ROUTES);
            ex = EX_DATAERR;
            continue;
        case ADDR_ESYNTAX: case ADDR_ELOCAL: case ADDR_EDOMAIN: case ADDR_EPATH:
            fprintf(stderr, "sendmail: <%s>: %s\n", m->rcpt[i], sendmail_addr_error(rc));
            ex = EX_DATAERR;
            continue;
        default:
            fprintf(stderr, "sendmail: <%s>: cannot route: database error\n", m->rcpt[i]);
            ex = EX_TEMPFAIL;
            continue;
        }
        for (size_t j = 0; j < k; j++) {
            tmp[j].notify = m->notify;
            tmp[j].orcpt[0] = '\0';
            if (sendmail_merge(routes, nroutes, &cap, &tmp[j])) {
                fprintf(stderr, "sendmail: out of memory\n");
                ex = EX_OSERR;
                break;
            }
        }
    }
    free(tmp);
    if (ex) {
        free(*routes);
        *routes = NULL;
        *nroutes = 0;
    }
    return ex;
}

/* Writes the message and its recipients in one transaction. */
static int sendmail_store(struct sendmail *m, const struct store_rcpt *routes, size_t nroutes)
{
    struct store_body *b = NULL;
    struct store_env env;
    unsigned char *buf = NULL;
    int rc;

    if ((rc = store_begin()) || !(b = store_body_new()))
        goto fail;
    if ((rc = store_body_write(b, m->prefix, strlen(m->prefix))))
        goto fail;
    for (size_t i = 0; i < m->nf; i++)
        if (!m->f[i].drop && (rc = store_body_write(b, m->hdr + m->f[i].off, m->f[i].len)))
            goto fail;
    if ((rc = store_body_write(b, m->suffix, strlen(m->suffix))) ||
        (rc = store_body_write(b, "\r\n", 2)))
        goto fail;
    if (m->spfd >= 0) {
        buf = malloc(STORE_CHUNK);
        if (!buf || lseek(m->spfd, 0, SEEK_SET) < 0)
            goto fail;
        for (;;) {
            ssize_t r = read(m->spfd, buf, STORE_CHUNK);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                fprintf(stderr, "sendmail: reading the temporary file: %s\n", strerror(errno));
                goto fail;
            }
            if (r == 0)
                break;
            if ((rc = store_body_write(b, buf, (size_t)r)))
                goto fail;
        }
    }
    if ((m->splen && (rc = store_body_write(b, m->sp, m->splen))) || (rc = store_body_finish(b)))
        goto fail;

    memset(&env, 0, sizeof env);
    util_strlcpy(env.qid, m->qid, sizeof env.qid);
    env.sender = m->sender;
    env.envid = m->envid;
    env.ret_full = m->ret_full;
    env.eightbit = m->eightbit;
    env.client = "local";
    env.size = b->size;
    if ((rc = store_msg_insert(&env, b, routes, nroutes)) || (rc = store_commit()))
        goto fail;
    log_info("%s: accepted from=<%s> size=%lld nrcpt=%zu (sendmail, uid %lu)", m->qid,
             m->sender, (long long)env.size, m->nrcpt, (unsigned long)getuid());
    ctl_tell_queued(m->qid);
    store_body_free(b);
    free(buf);
    return 0;
fail:
    store_rollback();
    store_body_free(b);
    free(buf);
    if (rc == STORE_FULL) {
        fprintf(stderr, "sendmail: the disk holding %s is full; nothing was queued\n",
                conf->database);
        return EX_TEMPFAIL;
    }
    fprintf(stderr, "sendmail: cannot store the message in %s; nothing was queued, "
                    "try again later\n", conf->database);
    return EX_TEMPFAIL;
}

/* ------------------------------------------------------------- options */

static int sendmail_notify(const char *v, int *out)
{
    char buf[64], *save = NULL, *tok;

    if (strlen(v) >= sizeof buf)
        return -1;
    util_strlcpy(buf, v, sizeof buf);
    *out = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        tok = util_trim(tok);
        if (!strcasecmp(tok, "never"))
            *out |= NOTIFY_NEVER;
        else if (!strcasecmp(tok, "success"))
            *out |= NOTIFY_SUCCESS;
        else if (!strcasecmp(tok, "failure"))
            *out |= NOTIFY_FAILURE;
        else if (!strcasecmp(tok, "delay"))
            *out |= NOTIFY_DELAY;
        else
            return -1;
    }
    /* RFC 3461 4.1: NEVER stands alone. */
    if (!*out || ((*out & NOTIFY_NEVER) && *out != NOTIFY_NEVER))
        return -1;
    return 0;
}

/* Parses the options; *first gets the index of the first recipient.
 * Returns 0, -1 for --help (done), or an EX_ code. */
static int sendmail_options(struct sendmail *m, int argc, char **argv, int *first)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0')
            break;
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (!strcmp(a, "--help")) {
            sendmail_usage(stdout);
            return -1;
        }
        if (a[1] == '-')
            goto unknown;
        for (int j = 1; a[j]; j++) {
            const char *v;
            int o = a[j];
            switch (o) {
            case 't':
                m->opt_t = 1;
                continue;
            case 'i':
                m->ignore_dots = 1;
                continue;
            case 'm': case 'n': case 'v': case 'U': case 'G':
                continue;                           /* no meaning here */
            case 'o':
                /* -oi is -i; the other sendmail -oXvalue options (-odb,
                 * -oem, -oQ...) tune a queue we do not have. */
                if (!a[j + 1] && ++i >= argc)
                    goto novalue;
                v = a[j + 1] ? a + j + 1 : argv[i];
                if (!strcmp(v, "i"))
                    m->ignore_dots = 1;
                goto next;
            case 'b':
                v = a + j + 1;
                if (!strcmp(v, "m"))
                    goto next;
                if (!strcmp(v, "p") || !strcmp(v, "i") || !strcmp(v, "s")) {
                    m->mode = *v;       /* mailq, newaliases, SMTP on stdin/stdout */
                    goto next;
                }
                fprintf(stderr, "sendmail: -b%s is not supported (-bm, -bs, -bp, -bi are)\n", v);
                return EX_USAGE;
            case 'q':
                /* -q, -q15m, -qR...: one delivery run now (a running daemon
                 * already retries on its own schedule). */
                m->mode = 'q';
                goto next;
            case 'f': case 'r': case 'F': case 'N': case 'R': case 'V':
            case 'O': case 'B': case 'h': case 'L':
                if (!a[j + 1] && ++i >= argc)
                    goto novalue;
                v = a[j + 1] ? a + j + 1 : argv[i];
                if (o == 'f' || o == 'r') {
                    m->from_opt = v;
                } else if (o == 'F') {
                    m->fullname = v;
                } else if (o == 'N') {
                    if (sendmail_notify(v, &m->notify)) {
                        fprintf(stderr, "sendmail: -N %s: want never, or a list of "
                                        "success, failure, delay\n", v);
                        return EX_USAGE;
                    }
                } else if (o == 'R') {
                    if (!strcasecmp(v, "full"))
                        m->ret_full = 1;
                    else if (!strcasecmp(v, "hdrs"))
                        m->ret_full = 0;
                    else {
                        fprintf(stderr, "sendmail: -R %s: want full or hdrs\n", v);
                        return EX_USAGE;
                    }
                } else if (o == 'V') {
                    /* RFC 3461 4.4: ENVID is at most 100 characters of xtext. */
                    size_t len = strlen(v);
                    int ok = len > 0 && len <= 100;
                    for (const char *p = v; ok && *p; p++)
                        ok = *p > 32 && *p < 127 && *p != '+' && *p != '=';
                    if (!ok) {
                        fprintf(stderr, "sendmail: -V: the envelope id must be 1 to 100 "
                                        "printable characters without '+' or '='\n");
                        return EX_USAGE;
                    }
                    m->envid = v;
                }
                goto next;
            default:
                goto unknown;
            }
        }
next:
        ;
    }
    *first = i;
    return 0;
novalue:
    fprintf(stderr, "sendmail: option %s needs a value (see mailnode sendmail --help)\n", argv[i - 1]);
    return EX_USAGE;
unknown:
    fprintf(stderr, "sendmail: unknown option %s (see mailnode sendmail --help)\n", argv[i]);
    return EX_USAGE;
}

/* The envelope sender: -f, or the caller's login name at our host name. */
static int sendmail_sender(struct sendmail *m)
{
    struct passwd *pw = util_getpwuid(getuid());
    struct addr a;
    char name[USER_MAX * 2];
    int rc;

    if (pw && pw->pw_name && *pw->pw_name)
        snprintf(name, sizeof name, "%s", pw->pw_name);
    else
        snprintf(name, sizeof name, "uid%lu", (unsigned long)getuid());
    if (sendmail_qualify(name, conf->hostname, &a))
        sendmail_qualify("nobody", conf->hostname, &a);
    util_strlcpy(m->login, a.full, sizeof m->login);

    if (!m->from_opt) {
        util_strlcpy(m->sender, m->login, sizeof m->sender);
        return 0;
    }
    /* "-f <>" (or an empty -f) gives the null reverse-path, as for a
     * notification that must not cause another. */
    if (!strcmp(m->from_opt, "") || !strcmp(m->from_opt, "<>")) {
        m->sender[0] = '\0';
        return 0;
    }
    if ((rc = sendmail_qualify(m->from_opt, conf->hostname, &a))) {
        fprintf(stderr, "sendmail: -f '%.300s': %s\n", m->from_opt, sendmail_addr_error(rc));
        return EX_DATAERR;
    }
    util_strlcpy(m->sender, a.full, sizeof m->sender);
    return 0;
}

/* ----------------------------------------------------------------- main */

static void sendmail_free(struct sendmail *m)
{
    if (m->spfd >= 0)
        close(m->spfd);
    free(m->rbuf);
    free(m->hdr);
    free(m->f);
    free(m->sp);
    free(m->rcpt);
    free(m->prefix);
    free(m->suffix);
    free(m);
}

static struct sendmail *sendmail_new(int fd)
{
    struct sendmail *m = calloc(1, sizeof *m);

    if (!m)
        return NULL;
    m->fd = fd;
    m->spfd = -1;
    m->limit = conf->message_size_limit;
    m->rbuf = malloc(SENDMAIL_READ);
    m->hdr = malloc(SENDMAIL_HDR_MAX);
    m->sp = malloc(SENDMAIL_SPOOL_MEM);
    if (!m->rbuf || !m->hdr || !m->sp) {
        sendmail_free(m);
        return NULL;
    }
    return m;
}

/* Reads and checks the whole input: header section, recipients, body. */
static int sendmail_read(struct sendmail *m)
{
    int rc;

    if ((rc = sendmail_read_header(m)) || (rc = sendmail_scan_header(m)))
        return rc;
    return 0;
}

/* The other jobs of sendmail(8) that scripts and admins call it for:
 * -bp (mailq) lists the queue, -q runs it, -bi (newaliases) has nothing
 * to rebuild, since aliases live in the database. */
int cli_sendmail_mode(int mode)
{
    static char *list[] = { "queue", "list", NULL }, *flush[] = { "flush", NULL };

    if (mode == 'p')
        return cli_queue(2, list);
    if (mode == 'q')
        return cli_flush(1, flush);
    printf("newaliases: aliases are kept in the database and used at once; nothing to rebuild "
           "(see mailnode alias list)\n");
    return EX_OK;
}

int cli_sendmail(int argc, char **argv)
{
    struct sendmail *m;
    struct store_rcpt *routes = NULL;
    size_t nroutes = 0;
    int rc, first = argc;

    /* Success is silent (cron mails whatever a job prints); the accepted
     * line goes to syslog when the node logs there. */
    if (!conf->use_syslog)
        log_set_level(LOG_WARNING);
    m = sendmail_new(STDIN_FILENO);
    if (!m) {
        fprintf(stderr, "sendmail: out of memory\n");
        return EX_OSERR;
    }
    rc = sendmail_options(m, argc, argv, &first);
    if (rc) {
        sendmail_free(m);
        return rc < 0 ? EX_OK : rc;
    }
    if (m->mode) {
        int mode = m->mode;
        sendmail_free(m);
        return mode == 's' ? cli_sendmail_bs() : cli_sendmail_mode(mode);
    }
    if ((rc = sendmail_sender(m)))
        goto out;
    m->where = "command line";
    for (int i = first; i < argc; i++) {
        rc = sendmail_addr_list(argv[i], strlen(argv[i]), sendmail_add_rcpt, m);
        if (rc == -1) {
            fprintf(stderr, "sendmail: '%.300s' is not a valid address list\n", argv[i]);
            rc = EX_DATAERR;
        }
        if (rc)
            goto out;
    }
    m->where = NULL;
    if (!m->nrcpt && !m->opt_t) {
        fprintf(stderr, "sendmail: no recipients (give them as arguments or use -t)\n");
        rc = EX_USAGE;
        goto out;
    }

    if ((rc = sendmail_read(m)))
        goto out;
    if (!m->nrcpt) {
        fprintf(stderr, "sendmail: no recipients (give them as arguments or use -t)\n");
        rc = EX_USAGE;
        goto out;
    }
    util_qid(m->qid);
    if ((rc = sendmail_added_fields(m)))
        goto out;
    m->hsize = (int64_t)strlen(m->prefix) + (int64_t)strlen(m->suffix) + 2;
    for (size_t i = 0; i < m->nf; i++)
        if (!m->f[i].drop)
            m->hsize += (int64_t)m->f[i].len;
    if (sendmail_too_big(m)) {
        rc = EX_DATAERR;
        goto out;
    }

    /* Recipients are checked before the body is read: a mistyped user
     * name should not cost reading a large attachment first. */
    if ((rc = cli_open_store()))
        goto out;
    if ((rc = sendmail_route(m, &routes, &nroutes)))
        goto close;
    if ((rc = sendmail_read_body(m)))
        goto close;
    if (sendmail_too_big(m)) {
        rc = EX_DATAERR;
        goto close;
    }
    rc = sendmail_store(m, routes, nroutes);
close:
    store_close();
out:
    free(routes);
    sendmail_free(m);
    return rc;
}
