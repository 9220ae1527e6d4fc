/*
 * imap.c: the IMAP4rev1 server (RFC 3501): sessions, command reading and
 * dispatch, authentication, STARTTLS, IDLE and the change watch.  The
 * mailbox commands are in imap_mbox.c, FETCH/STORE/COPY/MOVE in
 * imap_fetch.c, SEARCH and sequence sets in imap_search.c.
 *
 * A session is a state machine (RFC 3501 3): not authenticated,
 * authenticated, selected, logout.  A command table maps each verb to the
 * states in which it is valid; the dispatcher answers BAD for the others.
 *
 * Reading: a command is a line, or lines joined by literals ({N} CRLF and
 * N octets; {N+} needs no continuation, RFC 7888).  It is collected whole,
 * literals inline, up to IMAP_CMD_MAX, and then parsed; the message
 * literal of APPEND is the exception: it streams into the store in
 * chunks, so its size is bounded by message_size_limit, not by memory.
 *
 * Writing: short replies go straight into the connection's fixed output
 * buffer; what does not fit waits in a capped queue, and long replies
 * (FETCH of message text) stream from the store as the client reads, with
 * input paused meanwhile so that pipelined commands are answered in order.
 *
 * IDLE (RFC 2177) and the other sessions' view of changes: every write to
 * the mailboxes, by this process (SMTP delivery, POP3, IMAP) or another
 * (the sendmail command), changes the folder's change counter.  A timer
 * looks twice a second whether the database changed at all
 * (sqlite3_total_changes and PRAGMA data_version), and only then lets each
 * idling session compare its folder's counter with its own.
 */
#include "internal.h"

#include <ctype.h>
#include <string.h>

#define IMAP_LINE_MAX     8192          /* one line of a command, CRLF included */
#define IMAP_CMD_MAX      (64 * 1024)   /* a command with its literals, APPEND's message aside */
#define IMAP_SASL_MAX     4096
#define IMAP_REPLY_ROOM   1024
#define IMAP_PEND_MAX     (8 * 1024 * 1024)
#define IMAP_WATCH_MS     500           /* IDLE sees changes within a second */

enum { LIT_NONE, LIT_CMD, LIT_APPEND, LIT_SKIP };

static struct imap *imap_all;
static struct timer imap_watch = { .idx = -1 };
static int64_t imap_watch_sig[2];
static int imap_started;

static void imap_input(struct conn *c);
static void imap_drain(struct conn *c);
static void imap_timeout(struct conn *c);
static void imap_close(struct conn *c);
static void imap_tls(struct conn *c, int err);

static const struct conn_ops imap_ops = {
    .on_input = imap_input,
    .on_drain = imap_drain,
    .on_timeout = imap_timeout,
    .on_close = imap_close,
    .on_tls = imap_tls,
};



/* ------------------------------------------------------------- output */

static void imap_pend_flush(struct imap *s)
{
    struct conn *c = s->c;
    while (s->pend_off < s->pend.len) {
        size_t room = conn_out_space(c), k = s->pend.len - s->pend_off;
        if (!room)
            return;
        if (k > room)
            k = room;
        conn_write(c, s->pend.s + s->pend_off, k);
        s->pend_off += k;
    }
    s->pend.len = s->pend_off = 0;
    if (s->pend.cap > 65536) {
        imap_sb_free(&s->pend);
    }
}

void imap_out(struct imap *s, const void *p, size_t n)
{
    if (!s->c || s->c->dead)
        return;
    if (s->pend.len == 0 && conn_out_space(s->c) >= n) {
        conn_write(s->c, p, n);
        return;
    }
    if (s->pend.len + n > IMAP_PEND_MAX) {
        log_warn("imap: %s: client does not read its replies, closing", s->c->peer_ip);
        conn_abort(s->c);
        return;
    }
    imap_sb_add(&s->pend, p, n);
    if (s->pend.err) {
        conn_abort(s->c);
        return;
    }
    imap_pend_flush(s);
}

static void imap_voutf(struct imap *s, const char *prefix, const char *fmt, va_list ap)
{
    char buf[1024];
    size_t k = util_strlcpy(buf, prefix, sizeof buf);
    int n = vsnprintf(buf + k, sizeof buf - k - 2, fmt, ap);
    if (n < 0)
        return;
    k += (size_t)n < sizeof buf - k - 2 ? (size_t)n : sizeof buf - k - 3;
    buf[k++] = '\r';
    buf[k++] = '\n';
    imap_out(s, buf, k);
}

void imap_outf(struct imap *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    imap_voutf(s, "", fmt, ap);
    va_end(ap);
}

void imap_tagged(struct imap *s, const char *fmt, ...)
{
    char prefix[IMAP_TAG_MAX + 2];
    va_list ap;
    snprintf(prefix, sizeof prefix, "%s ", s->tag[0] ? s->tag : "*");
    va_start(ap, fmt);
    imap_voutf(s, prefix, fmt, ap);
    va_end(ap);
}

/* A tagged reply of any length (COPYUID of a long set). */
static void imap_tagged_text(struct imap *s, const char *text)
{
    imap_out(s, s->tag[0] ? s->tag : "*", strlen(s->tag[0] ? s->tag : "*"));
    imap_out(s, " ", 1);
    imap_out(s, text, strlen(text));
    imap_out(s, "\r\n", 2);
}

static void imap_resume(struct imap *s)
{
    struct conn *c = s->c;
    conn_pause(c, 0);
    if (!c->dead && c->eof && !c->in_len)
        conn_close(c);
}

/* Runs the streaming job, and the queue before it; 1 when all is out. */
static int imap_pump(struct imap *s)
{
    imap_pend_flush(s);
    if (s->pend.len)
        return 0;
    if (!s->pump)
        return 1;
    int r = s->pump(s);
    if (r < 0)
        return -1;
    if (r == 0)
        return 0;
    if (s->job_free)
        s->job_free(s);
    s->pump = NULL;
    s->job_free = NULL;
    s->job = NULL;
    imap_pend_flush(s);
    return s->pend.len ? 0 : 1;
}

/* After a command: if output waits, input waits for it. */
static void imap_after_command(struct imap *s)
{
    struct conn *c = s->c;
    if (c->dead || s->busy != IMAP_IDLE_NONE)
        return;
    int r = imap_pump(s);
    if (r < 0)
        return;
    if (r == 0) {
        s->busy = IMAP_BUSY_STREAM;
        c->want_drain = 1;
        conn_pause(c, 1);
    }
}

void imap_start_job(struct imap *s, int (*pump)(struct imap *), void (*job_free)(struct imap *), void *job)
{
    s->pump = pump;
    s->job_free = job_free;
    s->job = job;
}

static void imap_drain(struct conn *c)
{
    struct imap *s = c->ctx;
    int r;

    if (!s || (s->busy != IMAP_BUSY_STREAM && s->busy != IMAP_BUSY_IDLE)) {
        c->want_drain = 0;
        return;
    }
    conn_set_timeout(c, conf->imap_timeout * 1000);
    r = imap_pump(s);
    if (r <= 0)
        return;
    c->want_drain = 0;
    if (s->busy == IMAP_BUSY_STREAM) {
        s->busy = IMAP_IDLE_NONE;
        imap_resume(s);
    }
}

static void imap_committed(void *arg, int rc)
{
    struct imap *s = arg;

    if (!s->c) {
        imap_sb_free(&s->after_commit);
        free(s);
        return;
    }
    s->busy = IMAP_IDLE_NONE;
    if (rc == 0)
        imap_tagged_text(s, s->after_commit.s ? s->after_commit.s : "OK");
    else
        imap_tagged(s, "NO [SERVERBUG] the change could not be saved");
    imap_after_command(s);
    if (s->busy == IMAP_IDLE_NONE)
        imap_resume(s);
}

void imap_reply_after_commit(struct imap *s, const char *text)
{
    s->after_commit.len = 0;
    imap_sb_str(&s->after_commit, text);
    if (!store_in_txn()) {
        imap_tagged_text(s, text);
        return;
    }
    s->busy = IMAP_BUSY_COMMIT;
    conn_pause(s->c, 1);
    store_after_commit(imap_committed, s);
}

/* ------------------------------------------------------------- parser */

int imap_p_sp(struct imap_p *p)
{
    if (p->i < p->n && p->s[p->i] == ' ') {
        p->i++;
        return 0;
    }
    return -1;
}

int imap_p_end(struct imap_p *p)
{
    return p->i == p->n ? 0 : -1;
}

/* RFC 3501 9: ATOM-CHAR is any CHAR except atom-specials. */
static int imap_atom_char(int c)
{
    return c > 0x20 && c < 0x7f && !strchr("(){%*\"\\]", c);
}

int imap_p_atom(struct imap_p *p, char *out, size_t n)
{
    size_t k = 0;
    while (p->i < p->n && imap_atom_char((unsigned char)p->s[p->i])) {
        if (k + 1 >= n)
            return -1;
        out[k++] = p->s[p->i++];
    }
    out[k] = 0;
    return k ? 0 : -1;
}

/* "{N}" or "{N+}" CRLF, then N octets. */
static int imap_p_literal(struct imap_p *p, const char **data, size_t *len)
{
    int64_t v = 0;
    if (p->i >= p->n || p->s[p->i] != '{')
        return -1;
    p->i++;
    if (p->i >= p->n || !isdigit((unsigned char)p->s[p->i]))
        return -1;
    while (p->i < p->n && isdigit((unsigned char)p->s[p->i])) {
        v = v * 10 + (p->s[p->i++] - '0');
        if (v > IMAP_CMD_MAX)
            return -1;
    }
    if (p->i < p->n && p->s[p->i] == '+')
        p->i++;
    if (p->n - p->i < 3 || memcmp(p->s + p->i, "}\r\n", 3))
        return -1;
    p->i += 3;
    if ((size_t)v > p->n - p->i)
        return -1;
    *data = p->s + p->i;
    *len = (size_t)v;
    p->i += (size_t)v;
    return 0;
}

int imap_p_astring(struct imap_p *p, char *out, size_t n, size_t *len)
{
    size_t k = 0;
    if (p->i >= p->n)
        return -1;
    if (p->s[p->i] == '"') {
        for (p->i++; p->i < p->n && p->s[p->i] != '"'; p->i++) {
            char c = p->s[p->i];
            if (c == '\\') {
                if (++p->i >= p->n)
                    return -1;
                c = p->s[p->i];
            }
            if (c == '\r' || c == '\n' || k + 1 >= n)
                return -1;
            out[k++] = c;
        }
        if (p->i >= p->n)
            return -1;
        p->i++;
    } else if (p->s[p->i] == '{') {
        const char *d;
        size_t dl;
        if (imap_p_literal(p, &d, &dl) || dl + 1 > n)
            return -1;
        memcpy(out, d, dl);
        k = dl;
    } else {
        /* ASTRING-CHAR: ATOM-CHAR or "]". */
        while (p->i < p->n && (imap_atom_char((unsigned char)p->s[p->i]) || p->s[p->i] == ']')) {
            if (k + 1 >= n)
                return -1;
            out[k++] = p->s[p->i++];
        }
        if (!k)
            return -1;
    }
    out[k] = 0;
    if (len)
        *len = k;
    else if (memchr(out, 0, k))
        return -1;
    return 0;
}

int imap_p_number(struct imap_p *p, int64_t *v)
{
    int64_t x = 0;
    if (p->i >= p->n || !isdigit((unsigned char)p->s[p->i]))
        return -1;
    while (p->i < p->n && isdigit((unsigned char)p->s[p->i])) {
        x = x * 10 + (p->s[p->i++] - '0');
        if (x > 0xffffffffLL * 16)
            return -1;
    }
    *v = x;
    return 0;
}

static const struct {
    const char *name;
    unsigned bit;
} imap_sysflags[] = {
    { "\\Seen", IMAP_SEEN }, { "\\Answered", IMAP_ANSWERED }, { "\\Flagged", IMAP_FLAGGED },
    { "\\Deleted", IMAP_DELETED }, { "\\Draft", IMAP_DRAFT },
};

static int imap_kw_add(char *kw, size_t kwn, const char *word)
{
    size_t wl = strlen(word), kl = strlen(kw);
    for (const char *p = kw; *p;) {
        size_t k = strcspn(p, " ");
        if (k == wl && !strncasecmp(p, word, k))
            return 0;
        p += k;
        while (*p == ' ')
            p++;
    }
    if (kl + wl + 2 > kwn)
        return -1;
    if (kl)
        kw[kl++] = ' ';
    memcpy(kw + kl, word, wl + 1);
    return 0;
}

int imap_p_flags(struct imap_p *p, unsigned *flags, char *kw, size_t kwn, int paren_optional)
{
    int paren = p->i < p->n && p->s[p->i] == '(';
    char word[128];

    *flags = 0;
    kw[0] = 0;
    if (!paren && !paren_optional)
        return -1;
    if (paren)
        p->i++;
    for (int first = 1;; first = 0) {
        if (paren && p->i < p->n && p->s[p->i] == ')') {
            p->i++;
            return 0;
        }
        if (!first && imap_p_sp(p))
            return paren ? -1 : 0;
        size_t k = 0;
        if (p->i < p->n && p->s[p->i] == '\\')
            word[k++] = p->s[p->i++];
        struct imap_p q = *p;
        if (imap_p_atom(&q, word + k, sizeof word - k))
            return -1;
        p->i = q.i;
        if (word[0] == '\\') {
            size_t i;
            for (i = 0; i < MN_NELEM(imap_sysflags); i++)
                if (!strcasecmp(word, imap_sysflags[i].name)) {
                    *flags |= imap_sysflags[i].bit;
                    break;
                }
            /* \Recent cannot be set (RFC 3501 2.3.2); other system
             * flags do not exist. */
            if (i == MN_NELEM(imap_sysflags))
                return -1;
        } else if (imap_kw_add(kw, kwn, word)) {
            return -1;
        }
        if (!paren && (p->i >= p->n || p->s[p->i] != ' '))
            return 0;
    }
}

void imap_flags_fmt(struct imap_sb *b, unsigned flags, const char *kw, int recent)
{
    size_t start = b->len;
    imap_sb_str(b, "(");
    for (size_t i = 0; i < MN_NELEM(imap_sysflags); i++)
        if (flags & imap_sysflags[i].bit) {
            if (b->len > start + 1)
                imap_sb_str(b, " ");
            imap_sb_str(b, imap_sysflags[i].name);
        }
    if (recent) {
        if (b->len > start + 1)
            imap_sb_str(b, " ");
        imap_sb_str(b, "\\Recent");
    }
    if (kw && *kw) {
        if (b->len > start + 1)
            imap_sb_str(b, " ");
        imap_sb_str(b, kw);
    }
    imap_sb_str(b, ")");
}

/* ------------------------------------------------------ authentication */

static int imap_cleartext_ok(const struct imap *s)
{
    /* RFC 3501 6.2.3 and RFC 8314: no password in the clear across a
     * network unless the administrator allows it. */
    return conf->allow_cleartext_auth || s->c->peer_loopback || tls_active(s->c);
}

static void imap_safe_name(const char *in, char *out, size_t n)
{
    size_t i;
    for (i = 0; in[i] && i + 1 < n; i++)
        out[i] = isprint((unsigned char)in[i]) && in[i] != ' ' ? in[i] : '?';
    out[i] = 0;
}

/* What every state offers; QUOTA with the STORAGE resource is RFC 9208. */
#define IMAP_CAPS "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE " \
                  "SPECIAL-USE CHILDREN CONDSTORE COMPRESS=DEFLATE QUOTA QUOTA=RES-STORAGE"

static void imap_login_ok(struct imap *s, const struct store_user *u, const char *mech)
{
    int same = 0;
    for (struct imap *o = imap_all; o; o = o->next)
        if (o != s && o->state != IMAP_NOTAUTH && o->user_id == u->id)
            same++;
    if (conf->imap_max_per_user > 0 && same >= conf->imap_max_per_user) {
        log_warn("imap: %s: user %s has %d sessions (imap.max_per_user)", s->c->peer_ip, u->name, same);
        imap_tagged(s, "NO [LIMIT] too many sessions for this user, close one and try again");
        return;
    }
    s->user_id = u->id;
    util_strlcpy(s->user, u->name, sizeof s->user);
    s->state = IMAP_AUTH;
    log_info("imap: login user=%s ip=%s mech=%s", s->user, s->c->peer_ip, mech);
    imap_tagged(s, "OK [CAPABILITY " IMAP_CAPS "] logged in");
}

static void imap_delay_done(void *arg)
{
    struct imap *s = arg;

    s->busy = IMAP_IDLE_NONE;
    /* RFC 5530: the same answer whether the name or the password was
     * wrong, so that the reply does not tell which names exist. */
    imap_tagged(s, "NO [AUTHENTICATIONFAILED] invalid user name or password");
    if (conf->auth_max_failures > 0 && s->failures >= conf->auth_max_failures) {
        log_warn("imap: %s: %d failed logins, closing the connection", s->c->peer_ip, s->failures);
        imap_outf(s, "* BYE too many failed logins");
        conn_close(s->c);
        return;
    }
    imap_resume(s);
}

static void imap_auth_failed(struct imap *s, const char *name, const char *mech)
{
    char safe[USER_MAX + 1];

    s->failures++;
    limit_auth_failed(s->c, name);
    imap_safe_name(name, safe, sizeof safe);
    log_warn("imap: authentication failed user=%s ip=%s mech=%s (failure %d)", safe, s->c->peer_ip,
             mech, s->failures);
    s->busy = IMAP_BUSY_DELAY;
    conn_pause(s->c, 1);
    timer_set(&s->delay, conf->auth_fail_delay * 1000 * s->failures, imap_delay_done, s);
}

static int imap_auth_blocked(struct imap *s)
{
    if (!limit_auth_blocked(s->c))
        return 0;
    log_warn("imap: %s: refused: too many failed logins from this address", s->c->peer_ip);
    imap_tagged(s, "NO [UNAVAILABLE] too many failed logins from your address, try again later");
    return 1;
}

static void imap_cmd_login(struct imap *s, struct imap_p *p)
{
    char name[USER_MAX * 4 + 1], pass[1024];
    struct store_user u;
    int ok;

    if (imap_p_sp(p) || imap_p_astring(p, name, sizeof name, NULL) || imap_p_sp(p) ||
        imap_p_astring(p, pass, sizeof pass, NULL) || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: LOGIN user password");
        goto out;
    }
    if (!imap_cleartext_ok(s)) {
        /* RFC 3501 6.2.3: LOGINDISABLED is announced; PRIVACYREQUIRED. */
        imap_tagged(s, "NO [PRIVACYREQUIRED] use STARTTLS first");
        goto out;
    }
    if (imap_auth_blocked(s))
        goto out;
    util_lower(name);
    memset(&u, 0, sizeof u);
    ok = auth_login(name, strlen(name) <= USER_MAX, pass, &u);
    if (ok > 0)
        imap_login_ok(s, &u, "LOGIN");
    else if (!ok)
        imap_auth_failed(s, name, "LOGIN");
    else
        imap_tagged(s, "NO [UNAVAILABLE] cannot check the password now, try again later");
    sodium_memzero(&u, sizeof u);
out:
    sodium_memzero(pass, sizeof pass);
}

static void imap_sasl_result(struct imap *s, int r, const char *out)
{
    struct store_user u;
    int rc;

    s->in_sasl = 0;
    switch (r) {
    case AUTH_CONTINUE:
        /* RFC 3501 7.5: the challenge as a continuation. */
        s->in_sasl = 1;
        imap_outf(s, "+ %s", out);
        return;
    case AUTH_OK:
        memset(&u, 0, sizeof u);
        rc = auth_sasl_account(s->sasl.user, &u);
        if (rc > 0)
            imap_login_ok(s, &u, s->mech);
        else if (!rc)
            imap_auth_failed(s, s->sasl.user, s->mech);
        else
            imap_tagged(s, "NO [UNAVAILABLE] cannot open the mailbox, try again later");
        sodium_memzero(&u, sizeof u);
        break;
    case AUTH_FAIL:
        imap_auth_failed(s, s->sasl.user, s->mech);
        break;
    case AUTH_CANCEL:
        imap_tagged(s, "BAD authentication cancelled");
        break;
    case AUTH_BADMECH:
        imap_tagged(s, "NO unsupported authentication mechanism");
        break;
    default:
        imap_tagged(s, "BAD malformed authentication exchange");
        break;
    }
    sodium_memzero(&s->sasl, sizeof s->sasl);
}

static void imap_cmd_authenticate(struct imap *s, struct imap_p *p)
{
    char mech[32], initial[IMAP_SASL_MAX], out[512];
    const char *mechs = auth_mechs(imap_cleartext_ok(s));
    int has_ir = 0;

    if (imap_p_sp(p) || imap_p_atom(p, mech, sizeof mech)) {
        imap_tagged(s, "BAD usage: AUTHENTICATE mechanism [initial-response]");
        return;
    }
    /* RFC 4959: SASL-IR, the initial response on the command line. */
    if (!imap_p_sp(p)) {
        size_t k = 0;
        while (p->i < p->n && k + 1 < sizeof initial && p->s[p->i] != ' ')
            initial[k++] = p->s[p->i++];
        initial[k] = 0;
        has_ir = 1;
    }
    if (imap_p_end(p)) {
        imap_tagged(s, "BAD usage: AUTHENTICATE mechanism [initial-response]");
        return;
    }
    for (char *q = mech; *q; q++)
        *q = (char)toupper((unsigned char)*q);
    if (!auth_mech_listed(mechs, mech)) {
        if (!imap_cleartext_ok(s) && auth_mech_listed(auth_mechs(1), mech))
            imap_tagged(s, "NO [PRIVACYREQUIRED] use STARTTLS first");
        else
            imap_tagged(s, "NO unsupported authentication mechanism");
        return;
    }
    if (imap_auth_blocked(s))
        return;
    util_strlcpy(s->mech, mech, sizeof s->mech);
    memset(&s->sasl, 0, sizeof s->sasl);
    out[0] = 0;
    imap_sasl_result(s, auth_sasl_start(&s->sasl, s->mech, has_ir ? initial : NULL, out, sizeof out), out);
    sodium_memzero(initial, sizeof initial);
}

/* ------------------------------------------------------ any-state verbs */

static void imap_capability_line(struct imap *s, struct imap_sb *b)
{
    const char *mechs = auth_mechs(imap_cleartext_ok(s));

    imap_sb_str(b, IMAP_CAPS);
    if (s->state == IMAP_NOTAUTH) {
        if (tls_available() && !s->c->tls)
            imap_sb_str(b, " STARTTLS");
        if (!imap_cleartext_ok(s))
            imap_sb_str(b, " LOGINDISABLED");
        for (const char *q = mechs; q && *q;) {
            while (*q == ' ')
                q++;
            size_t k = strcspn(q, " ");
            if (k)
                imap_sb_printf(b, " AUTH=%.*s", (int)k, q);
            q += k;
        }
    }
}

/* RFC 3501 7.1.1: the capabilities in the greeting spare a round trip. */
static void imap_greeting(struct imap *s)
{
    struct imap_sb b = { 0 };
    imap_capability_line(s, &b);
    imap_outf(s, "* OK [CAPABILITY %s] mailnode IMAP ready", b.s ? b.s : "IMAP4rev1");
    imap_sb_free(&b);
}

static void imap_cmd_capability(struct imap *s, struct imap_p *p)
{
    struct imap_sb b = { 0 };
    if (imap_p_end(p)) {
        imap_tagged(s, "BAD CAPABILITY takes no arguments");
        return;
    }
    imap_capability_line(s, &b);
    imap_outf(s, "* CAPABILITY %s", b.s ? b.s : "IMAP4rev1");
    imap_sb_free(&b);
    imap_tagged(s, "OK CAPABILITY completed");
}

static void imap_cmd_noop(struct imap *s, struct imap_p *p)
{
    MN_UNUSED(p);
    if (s->state == IMAP_SELECTED)
        imap_sync(s, 1);
    imap_tagged(s, "OK NOOP completed");
}

static void imap_cmd_logout(struct imap *s, struct imap_p *p)
{
    MN_UNUSED(p);
    imap_outf(s, "* BYE mailnode IMAP signing off");
    imap_tagged(s, "OK LOGOUT completed");
    s->state = IMAP_LOGOUT;
    if (s->user[0])
        log_info("imap: logout user=%s ip=%s", s->user, s->c->peer_ip);
    conn_close(s->c);
}

static void imap_cmd_starttls(struct imap *s, struct imap_p *p)
{
    struct conn *c = s->c;

    if (imap_p_end(p)) {
        imap_tagged(s, "BAD STARTTLS takes no arguments");
        return;
    }
    if (c->tls || !tls_available()) {
        imap_tagged(s, "NO STARTTLS not available");
        return;
    }
    imap_tagged(s, "OK begin TLS negotiation now");
    if (tls_upgrade_server(c, "imap"))
        return;
    s->busy = IMAP_BUSY_TLS;
}

static void imap_tls(struct conn *c, int err)
{
    struct imap *s = c->ctx;

    if (!s)
        return;
    s->busy = IMAP_IDLE_NONE;
    if (err)
        return;
    conn_set_timeout(c, conf->imap_timeout * 1000);
    if (c->kind == LISTEN_IMAPS)
        imap_greeting(s);
}

static void imap_cmd_id(struct imap *s, struct imap_p *p)
{
    MN_UNUSED(p);
    /* RFC 2971: the client's list is for its own logs; ours is short. */
    imap_outf(s, "* ID (\"name\" \"mailnode\" \"version\" \"%s\")", MAILNODE_VERSION);
    imap_tagged(s, "OK ID completed");
}

static void imap_cmd_enable(struct imap *s, struct imap_p *p)
{
    char word[64];
    int any = 0, on = 0;

    while (!imap_p_sp(p)) {
        if (imap_p_atom(p, word, sizeof word))
            break;
        any = 1;
        if (!strcasecmp(word, "CONDSTORE"))
            on = 1;
    }
    if (!any || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: ENABLE capability...");
        return;
    }
    /* RFC 5161: only what was enabled now is listed. */
    if (on && !s->condstore) {
        s->condstore = 1;
        imap_outf(s, "* ENABLED CONDSTORE");
    } else {
        imap_outf(s, "* ENABLED");
    }
    imap_tagged(s, "OK ENABLE completed");
}

static void imap_cmd_namespace(struct imap *s, struct imap_p *p)
{
    MN_UNUSED(p);
    imap_outf(s, "* NAMESPACE ((\"\" \"/\")) NIL NIL");
    imap_tagged(s, "OK NAMESPACE completed");
}

static void imap_cmd_idle(struct imap *s, struct imap_p *p)
{
    if (imap_p_end(p)) {
        imap_tagged(s, "BAD IDLE takes no arguments");
        return;
    }
    if (s->state == IMAP_SELECTED)
        imap_sync(s, 1);
    /* RFC 2177: a continuation, then updates as they come, until DONE. */
    imap_outf(s, "+ idling");
    s->busy = IMAP_BUSY_IDLE;
}

static void imap_idle_line(struct imap *s, const char *line)
{
    if (strcasecmp(line, "DONE")) {
        imap_tagged(s, "BAD expected DONE");
    } else {
        imap_tagged(s, "OK IDLE terminated");
    }
    s->busy = IMAP_IDLE_NONE;
    s->c->want_drain = 0;
}

static void imap_cmd_select_rw(struct imap *s, struct imap_p *p) { imap_cmd_select(s, p, 0); }
static void imap_cmd_examine(struct imap *s, struct imap_p *p) { imap_cmd_select(s, p, 1); }
static void imap_cmd_close_x(struct imap *s, struct imap_p *p) { imap_cmd_close(s, p, 1); }
static void imap_cmd_unselect(struct imap *s, struct imap_p *p) { imap_cmd_close(s, p, 0); }
static void imap_cmd_expunge_x(struct imap *s, struct imap_p *p) { imap_cmd_expunge(s, p, 0); }
static void imap_cmd_list_x(struct imap *s, struct imap_p *p) { imap_cmd_list(s, p, 0); }
static void imap_cmd_lsub(struct imap *s, struct imap_p *p) { imap_cmd_list(s, p, 1); }
static void imap_cmd_sub(struct imap *s, struct imap_p *p) { imap_cmd_subscribe(s, p, 1); }
static void imap_cmd_unsub(struct imap *s, struct imap_p *p) { imap_cmd_subscribe(s, p, 0); }
static void imap_cmd_fetch_x(struct imap *s, struct imap_p *p) { imap_cmd_fetch(s, p, 0); }
static void imap_cmd_store_x(struct imap *s, struct imap_p *p) { imap_cmd_store(s, p, 0); }
static void imap_cmd_copy_x(struct imap *s, struct imap_p *p) { imap_cmd_copy(s, p, 0, 0); }
static void imap_cmd_move_x(struct imap *s, struct imap_p *p) { imap_cmd_copy(s, p, 0, 1); }
static void imap_cmd_search_x(struct imap *s, struct imap_p *p) { imap_cmd_search(s, p, 0); }

/* RFC 4978: COMPRESS DEFLATE; the OK goes out plain, all after it
 * compressed, both ways. */
static void imap_cmd_compress(struct imap *s, struct imap_p *p)
{
    char mech[16];

    if (imap_p_sp(p) || imap_p_atom(p, mech, sizeof mech) || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: COMPRESS DEFLATE");
        return;
    }
    if (strcasecmp(mech, "DEFLATE")) {
        imap_tagged(s, "NO unknown compression mechanism");
        return;
    }
    if (s->c->zio) {
        imap_tagged(s, "NO [COMPRESSIONACTIVE] DEFLATE is active already");
        return;
    }
    /* The input loop ran this command with an empty queue and room in the
     * output buffer, so the OK is in the buffer, ahead of what follows. */
    imap_tagged(s, "OK DEFLATE active");
    if (zio_start(s->c)) {
        log_err("imap: %s: cannot start compression", s->c->peer_ip);
        conn_abort(s->c);
    }
}

static void imap_cmd_check(struct imap *s, struct imap_p *p)
{
    imap_cmd_noop(s, p);
}

static void imap_cmd_append_plain(struct imap *s, struct imap_p *p)
{
    MN_UNUSED(p);
    /* A complete APPEND has its message as a literal, which the reader
     * handles before the command reaches here. */
    imap_tagged(s, "BAD usage: APPEND mailbox [(flags)] [date-time] {size}");
}

static void imap_cmd_uid(struct imap *s, struct imap_p *p)
{
    char verb[16];
    if (imap_p_sp(p) || imap_p_atom(p, verb, sizeof verb)) {
        imap_tagged(s, "BAD usage: UID FETCH|STORE|COPY|MOVE|SEARCH|EXPUNGE ...");
        return;
    }
    if (!strcasecmp(verb, "FETCH"))
        imap_cmd_fetch(s, p, 1);
    else if (!strcasecmp(verb, "STORE"))
        imap_cmd_store(s, p, 1);
    else if (!strcasecmp(verb, "COPY"))
        imap_cmd_copy(s, p, 1, 0);
    else if (!strcasecmp(verb, "MOVE"))
        imap_cmd_copy(s, p, 1, 1);
    else if (!strcasecmp(verb, "SEARCH"))
        imap_cmd_search(s, p, 1);
    else if (!strcasecmp(verb, "EXPUNGE"))
        imap_cmd_expunge(s, p, 1);
    else
        imap_tagged(s, "BAD unknown UID command");
}

struct imap_cmd {
    const char *verb;
    unsigned allowed;
    void (*run)(struct imap *s, struct imap_p *p);
};

#define N IMAP_NOTAUTH
#define A IMAP_AUTH
#define S IMAP_SELECTED

static const struct imap_cmd imap_cmds[] = {
    { "CAPABILITY", N | A | S, imap_cmd_capability },
    { "NOOP", N | A | S, imap_cmd_noop },
    { "LOGOUT", N | A | S, imap_cmd_logout },
    { "ID", N | A | S, imap_cmd_id },
    { "STARTTLS", N, imap_cmd_starttls },
    { "LOGIN", N, imap_cmd_login },
    { "AUTHENTICATE", N, imap_cmd_authenticate },
    { "ENABLE", A, imap_cmd_enable },
    { "NAMESPACE", A | S, imap_cmd_namespace },
    { "SELECT", A | S, imap_cmd_select_rw },
    { "EXAMINE", A | S, imap_cmd_examine },
    { "CREATE", A | S, imap_cmd_create },
    { "DELETE", A | S, imap_cmd_delete },
    { "RENAME", A | S, imap_cmd_rename },
    { "SUBSCRIBE", A | S, imap_cmd_sub },
    { "UNSUBSCRIBE", A | S, imap_cmd_unsub },
    { "LIST", A | S, imap_cmd_list_x },
    { "LSUB", A | S, imap_cmd_lsub },
    { "STATUS", A | S, imap_cmd_status },
    { "GETQUOTA", A | S, imap_cmd_getquota },
    { "GETQUOTAROOT", A | S, imap_cmd_getquotaroot },
    { "SETQUOTA", A | S, imap_cmd_setquota },
    { "APPEND", A | S, imap_cmd_append_plain },
    { "IDLE", A | S, imap_cmd_idle },
    { "CHECK", S, imap_cmd_check },
    { "COMPRESS", A | S, imap_cmd_compress },
    { "CLOSE", S, imap_cmd_close_x },
    { "UNSELECT", S, imap_cmd_unselect },
    { "EXPUNGE", S, imap_cmd_expunge_x },
    { "SEARCH", S, imap_cmd_search_x },
    { "FETCH", S, imap_cmd_fetch_x },
    { "STORE", S, imap_cmd_store_x },
    { "COPY", S, imap_cmd_copy_x },
    { "MOVE", S, imap_cmd_move_x },
    { "UID", S, imap_cmd_uid },
};

#undef N
#undef A
#undef S

/* ------------------------------------------------------------ reading */

/* "tag SP verb": the tag into s->tag; p is left after the verb. */
static int imap_p_head(struct imap *s, struct imap_p *p, char *verb, size_t vn)
{
    size_t k = 0;
    s->tag[0] = 0;
    while (p->i < p->n && p->s[p->i] != ' ' && p->s[p->i] != '\r') {
        char ch = p->s[p->i];
        /* RFC 3501 9: tag = 1*<any ASTRING-CHAR except "+">. */
        if (k >= IMAP_TAG_MAX || ch == '+' || !(imap_atom_char((unsigned char)ch) || ch == ']'))
            return -1;
        s->tag[k++] = p->s[p->i++];
    }
    s->tag[k] = 0;
    if (!k || imap_p_sp(p) || imap_p_atom(p, verb, vn))
        return -1;
    return 0;
}

static void imap_run_command(struct imap *s)
{
    struct imap_p p = { s->cmd.s ? s->cmd.s : "", s->cmd.len, 0 };
    char verb[32];

    if (s->cmd.len && memchr(s->cmd.s, 0, s->cmd.len) && !strstr(s->cmd.s, "{")) {
        s->tag[0] = 0;
        imap_outf(s, "* BAD NUL in command");
        return;
    }
    if (imap_p_head(s, &p, verb, sizeof verb)) {
        if (!s->tag[0] || strlen(s->tag) >= IMAP_TAG_MAX)
            util_strlcpy(s->tag, "*", sizeof s->tag);
        imap_tagged(s, "BAD invalid command line");
        return;
    }
    for (size_t i = 0; i < MN_NELEM(imap_cmds); i++) {
        const struct imap_cmd *cmd = &imap_cmds[i];
        if (strcasecmp(verb, cmd->verb))
            continue;
        if (!(cmd->allowed & s->state)) {
            imap_tagged(s, "BAD %s not valid %s", cmd->verb,
                        s->state == IMAP_NOTAUTH ? "before login"
                        : s->state == IMAP_AUTH  ? "without a selected mailbox"
                                                 : "after login");
            return;
        }
        cmd->run(s, &p);
        return;
    }
    imap_tagged(s, "BAD unknown command");
}

/* Where a line of a command ends with "{N}" or "{N+}": the size, and
 * whether the client waits for a continuation. */
static int imap_literal_at_end(const char *s, size_t n, int64_t *size, int *sync, size_t *at)
{
    size_t i;
    int64_t v = 0, mul = 1;
    if (n < 3 || s[n - 1] != '}')
        return 0;
    i = n - 2;
    *sync = 1;
    if (s[i] == '+') {
        *sync = 0;
        i--;
    }
    if (!isdigit((unsigned char)s[i]))
        return 0;
    while (i > 0 && isdigit((unsigned char)s[i])) {
        if (mul > 1000000000000LL)
            return 0;
        v += (s[i] - '0') * mul;
        mul *= 10;
        i--;
    }
    if (s[i] != '{')
        return 0;
    *size = v;
    *at = i;
    return 1;
}

static int imap_is_append(const char *s, size_t n)
{
    struct imap_p p = { s, n, 0 };
    while (p.i < p.n && p.s[p.i] != ' ')
        p.i++;
    return p.n - p.i > 7 && !strncasecmp(p.s + p.i, " APPEND ", 8);
}

static void imap_reset_cmd(struct imap *s)
{
    s->cmd.len = 0;
    if (s->cmd.cap > 16384)
        imap_sb_free(&s->cmd);
}

/* A line of a command is in s->cmd (without its CRLF). */
static void imap_line_done(struct imap *s)
{
    int64_t size;
    int sync;
    size_t at;

    if (s->append_tail) {
        /* Only the line end may follow APPEND's message (no MULTIAPPEND). */
        s->append_tail = 0;
        if (s->cmd.len)
            imap_tagged(s, "BAD unexpected data after the message");
        else
            imap_append_end(s);
        imap_reset_cmd(s);
        return;
    }
    if (!imap_literal_at_end(s->cmd.s ? s->cmd.s : "", s->cmd.len, &size, &sync, &at)) {
        imap_run_command(s);
        imap_reset_cmd(s);
        return;
    }
    if (imap_is_append(s->cmd.s, s->cmd.len)) {
        struct imap_p p = { s->cmd.s, at, 0 };
        char verb[16];
        if (imap_p_head(s, &p, verb, sizeof verb) == 0 && !strcasecmp(verb, "APPEND") &&
            s->state != IMAP_NOTAUTH) {
            int r = imap_append_begin(s, &p, size, s->lit_reply, sizeof s->lit_reply);
            if (r == 1) {
                /* The message literal follows. */
                s->lit_mode = LIT_APPEND;
                s->lit_left = size;
                if (sync)
                    imap_outf(s, "+ Ready for the message");
                imap_reset_cmd(s);
                return;
            }
            if (r < 0) {
                /* Refused: a synchronizing literal is not sent at all; a
                 * non-synchronizing one is read and dropped. */
                if (sync) {
                    imap_tagged(s, "%s", s->lit_reply);
                    imap_reset_cmd(s);
                } else {
                    s->lit_mode = LIT_SKIP;
                    s->lit_left = size;
                    s->skipping = 1;
                    imap_reset_cmd(s);
                }
                return;
            }
        }
    }
    if (size > IMAP_CMD_MAX || s->cmd.len + (size_t)size + 2 > IMAP_CMD_MAX) {
        struct imap_p p = { s->cmd.s, s->cmd.len, 0 };
        char verb[32];
        if (imap_p_head(s, &p, verb, sizeof verb))
            util_strlcpy(s->tag, "*", sizeof s->tag);
        if (sync) {
            imap_tagged(s, "BAD [TOOBIG] literal too large");
            imap_reset_cmd(s);
            return;
        }
        snprintf(s->lit_reply, sizeof s->lit_reply, "BAD [TOOBIG] literal too large");
        s->lit_mode = LIT_SKIP;
        s->lit_left = size;
        s->skipping = 1;
        imap_reset_cmd(s);
        return;
    }
    imap_sb_add(&s->cmd, "\r\n", 2);
    s->lit_mode = LIT_CMD;
    s->lit_left = size;
    if (sync)
        imap_outf(s, "+ Ready for literal data");
}

/* Literal octets: into the command, into APPEND's message, or away. */
static void imap_literal_input(struct imap *s)
{
    struct conn *c = s->c;
    size_t k = c->in_len < (uint64_t)s->lit_left ? c->in_len : (size_t)s->lit_left;

    if (s->lit_mode == LIT_CMD)
        imap_sb_add(&s->cmd, c->in, k);
    else if (s->lit_mode == LIT_APPEND && s->ab)
        store_body_write(s->ab, c->in, k);
    conn_consume(c, k);
    s->lit_left -= (int64_t)k;
    if (s->lit_left)
        return;
    if (s->lit_mode == LIT_APPEND)
        s->append_tail = 1;
    s->lit_mode = LIT_NONE;
}

static void imap_sasl_line(struct imap *s, char *line)
{
    char out[512];
    out[0] = 0;
    imap_sasl_result(s, auth_sasl_step(&s->sasl, line, out, sizeof out), out);
}

static void imap_too_long(struct imap *s)
{
    if (s->in_sasl) {
        s->in_sasl = 0;
        sodium_memzero(&s->sasl, sizeof s->sasl);
    }
    if (s->append_tail) {
        s->append_tail = 0;
        imap_append_end(s);
    }
    imap_reset_cmd(s);
    imap_outf(s, "* BAD [TOOBIG] command line too long");
}

/* One line from the input (CRLF removed): the end of a skipped command,
 * a SASL response, DONE of IDLE, or a piece of a command. */
static void imap_take_line(struct imap *s, char *line, size_t len)
{

    if (s->skipping) {
        s->skipping = 0;
        if (s->lit_reply[0]) {
            imap_tagged(s, "%s", s->lit_reply);
            s->lit_reply[0] = 0;
        }
        return;
    }
    if (s->in_sasl) {
        imap_sasl_line(s, line);
        return;
    }
    if (s->busy == IMAP_BUSY_IDLE) {
        imap_idle_line(s, line);
        return;
    }
    if (s->cmd.len + len > IMAP_CMD_MAX) {
        imap_too_long(s);
        return;
    }
    imap_sb_add(&s->cmd, line, len);
    if (s->cmd.err) {
        imap_too_long(s);
        return;
    }
    imap_line_done(s);
}

static void imap_input(struct conn *c)
{
    struct imap *s = c->ctx;
    char *line = NULL;

    while (!c->dead && !c->closing && c->in_len &&
           (s->busy == IMAP_IDLE_NONE || s->busy == IMAP_BUSY_IDLE)) {
            unsigned char *lf;
        size_t len;

        if (s->lit_mode != LIT_NONE) {
            imap_literal_input(s);
            continue;
        }
        if (conn_out_space(c) < IMAP_REPLY_ROOM || s->pend.len)
            break;                      /* resumed when the client reads */
        lf = memchr(c->in, '\n', c->in_len);
        if (!lf) {
            if (c->in_len >= IMAP_LINE_MAX) {
                imap_too_long(s);
                conn_consume(c, c->in_len);
                s->skipping = 1;
            }
            break;
        }
        len = (size_t)(lf - c->in) + 1;
        if (len > IMAP_LINE_MAX) {
            conn_consume(c, len);
            imap_too_long(s);
            continue;
        }
        if (!line && !(line = malloc(IMAP_LINE_MAX + 1))) {
            conn_abort(c);
            break;
        }
        memcpy(line, c->in, len);
        conn_consume(c, len);
        len--;
        if (len && line[len - 1] == '\r')
            len--;
        line[len] = 0;
        conn_set_timeout(c, conf->imap_timeout * 1000);
        imap_take_line(s, line, len);
        sodium_memzero(line, len);
        if (!c->dead)
            imap_after_command(s);
    }
    free(line);
}

/* ------------------------------------------------------------- watch */

static int imap_is_watched(const struct imap *s)
{
    return s->c && s->busy == IMAP_BUSY_IDLE && s->state == IMAP_SELECTED;
}

static void imap_watch_tick(void *arg)
{
    int64_t sig[2] = { sqlite3_total_changes64(store_db()), 0 };
    static sqlite3_stmt *st;
    int any = 0;

    MN_UNUSED(arg);
    for (struct imap *s = imap_all; s; s = s->next)
        any |= imap_is_watched(s);
    if (any) {
        /* data_version changes when another connection (the sendmail
         * command) committed; total_changes counts our own writes. */
        if (!st && sqlite3_prepare_v3(store_db(), "PRAGMA data_version", -1, SQLITE_PREPARE_PERSISTENT,
                                      &st, NULL) != SQLITE_OK)
            st = NULL;
        if (st) {
            if (sqlite3_step(st) == SQLITE_ROW)
                sig[1] = sqlite3_column_int64(st, 0);
            sqlite3_reset(st);
        }
        if (sig[0] != imap_watch_sig[0] || sig[1] != imap_watch_sig[1]) {
            imap_watch_sig[0] = sig[0];
            imap_watch_sig[1] = sig[1];
            for (struct imap *s = imap_all; s; s = s->next)
                if (imap_is_watched(s)) {
                    imap_sync(s, 1);
                    if (s->pend.len) {
                        s->c->want_drain = 1;
                        imap_pend_flush(s);
                    }
                }
        }
    }
    if (imap_started)
        timer_set(&imap_watch, IMAP_WATCH_MS, imap_watch_tick, NULL);
}

int imap_start(void)
{
    imap_started = 1;
    timer_set(&imap_watch, IMAP_WATCH_MS, imap_watch_tick, NULL);
    return 0;
}

void imap_stop(void)
{
    imap_started = 0;
    timer_cancel(&imap_watch);
}

/* ----------------------------------------------------------- session */

static void imap_timeout(struct conn *c)
{
    struct imap *s = c->ctx;

    if (s && s->busy == IMAP_BUSY_TLS) {
        log_info("imap: %s: TLS handshake timed out", c->peer_ip);
        conn_abort(c);
        return;
    }
    if (s && s->busy == IMAP_BUSY_COMMIT) {
        conn_set_timeout(c, conf->imap_timeout * 1000);
        return;
    }
    if (s && s->busy == IMAP_BUSY_STREAM) {
        log_info("imap: %s: no progress sending to a client, closing", c->peer_ip);
        conn_abort(c);
        return;
    }
    /* RFC 3501 5.4: the autologout timer, at least 30 minutes. */
    if (conn_out_space(c) > 64)
        conn_printf(c, "* BYE autologout; idle for too long\r\n");
    conn_close(c);
}

static void imap_close(struct conn *c)
{
    struct imap *s = c->ctx;

    if (!s)
        return;
    c->ctx = NULL;
    timer_cancel(&s->delay);
    if (s->job_free)
        s->job_free(s);
    s->pump = NULL;
    if (s->ab) {
        store_body_free(s->ab);
        s->ab = NULL;
    }
    imap_view_free(s);
    imap_sb_free(&s->cmd);
    imap_sb_free(&s->pend);
    sodium_memzero(&s->sasl, sizeof s->sasl);
    if (s->busy != IMAP_BUSY_COMMIT)
        imap_sb_free(&s->after_commit);
    if (s->prev)
        s->prev->next = s->next;
    else
        imap_all = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->busy == IMAP_BUSY_COMMIT) {
        /* imap_committed frees it. */
        s->c = NULL;
        return;
    }
    free(s);
}

void imap_accept(struct conn *c)
{
    struct imap *s = calloc(1, sizeof *s);

    if (!s) {
        log_err("imap: out of memory for a session from %s", c->peer_ip);
        conn_abort(c);
        return;
    }
    s->c = c;
    s->state = IMAP_NOTAUTH;
    s->delay.idx = -1;
    c->ctx = s;
    c->ops = &imap_ops;
    s->next = imap_all;
    if (imap_all)
        imap_all->prev = s;
    imap_all = s;
    conn_set_timeout(c, conf->imap_timeout * 1000);
    /* limit.connections_per_ip was applied at accept (limit_admit). */
    log_debug("imap: connection from %s", c->peer_ip);
    if (c->kind == LISTEN_IMAPS) {
        /* RFC 8314: TLS from the first octet; the greeting follows it. */
        if (!tls_available() || tls_start_server(c)) {
            log_err("imap: %s: cannot start TLS (is tls.cert set?)", c->peer_ip);
            conn_abort(c);
            return;
        }
        s->busy = IMAP_BUSY_TLS;
        return;
    }
    imap_greeting(s);
}
