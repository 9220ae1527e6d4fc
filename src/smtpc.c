/*
 * smtpc.c: the SMTP client.  One session carries a whole batch for one
 * destination.  Commands are written ahead and every reply is matched,
 * in order, to the command that caused it (a FIFO of expectations), so
 * with PIPELINING (RFC 2920) and CHUNKING (RFC 3030) a batch flows as
 * MAIL, RCPT..., BDAT n LAST + data, MAIL, ... without waiting for any
 * reply: on a long-latency link the time is close to bytes / bandwidth.
 * Without CHUNKING, DATA waits for its 354 once per message; without
 * PIPELINING every command waits for its reply.
 *
 * Outcomes go to the scheduler (queue_deliver.c) as they arrive; a
 * recipient counts as delivered only after the reply to its message data.
 *
 * Two machines run side by side on one connection:
 *
 * - The reader.  q[] is a FIFO of expectations, one per command written
 *   (E_MAIL, E_RCPT, E_BDAT, ...), each naming the flight slot and the
 *   recipient it is about.  A complete reply pops the head; a reply that
 *   arrives with the FIFO empty is a protocol error.  Invariant: q_len
 *   counts exactly the commands written and not yet answered.
 *
 * - The writer, for the message in slot wslot, through smtpc_wenter():
 *
 *     IDLE -> RCPT (MAIL and every RCPT written) -> DATACMD, then
 *       with CHUNKING:  -> BODY (BDAT n LAST, the chunk follows at once)
 *       without:        -> WAIT354 (DATA) -> BODY, or END if refused
 *       not 7-bit-able: -> END (RSET; the recipients fail)
 *     BODY -> END -> IDLE (the next message, while fewer than
 *     SMTPC_WINDOW are in flight; without PIPELINING only once q[] is
 *     empty, except that a body never waits)
 *
 *   Invariants (asserted): wslot is -1 only in IDLE; fl_len stays within
 *   SMTPC_WINDOW and q_len within SMTPC_EXPECT.
 */
#include "internal.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <string.h>

#define SMTPC_IN 16384
#define SMTPC_OUT 65536
#define SMTPC_WINDOW 256                /* messages written but not yet answered */
#define SMTPC_EXPECT 4096               /* replies outstanding */

enum expect { E_GREETING, E_EHLO, E_HELO, E_AUTH, E_MAIL, E_RCPT, E_DATA, E_DOT, E_BDAT, E_RSET, E_QUIT,
              E_STARTTLS, E_COMPRESS };

enum wstate { W_IDLE, W_RCPT, W_DATACMD, W_WAIT354, W_BODY, W_END };
static const char *const smtpc_wstate_names[] = { "IDLE", "RCPT", "DATACMD", "WAIT354", "BODY", "END" };

struct flight {
    struct store_out_msg m;
    int mail_code;
    char mail_text[256];
    unsigned char *ok;                  /* per recipient: accepted at RCPT */
    int naccepted;
    int convert;                        /* 8-bit text to a 7-bit peer */
    int64_t wire_size;                  /* octets sent as the body */
    int resume;                         /* XRESUME asked: BDAT waits for MAIL's reply */
    int64_t resume_at;                  /* octets the peer holds already */
};

struct smtpc {
    struct conn *c;
    const struct smtpc_ops *ops;
    void *arg;
    char peer[SMTP_DOMAIN_MAX + 1];
    char dest[SMTP_DOMAIN_MAX + 16];    /* the destination, for per-destination settings */
    struct smtpc_auth auth;
    int reached;
    int ready;                          /* greeting, EHLO, TLS and AUTH done: mail may flow */
    int ended;
    int attached;                       /* a turned-around connection (ATRN) */
    int looped;                         /* the peer greeted with our own name */
    /* peer capabilities */
    int esmtp;
    struct smtpc_caps caps;
    int tls_policy;                     /* SMTPC_TLS_* */
    /* replies being read */
    char reply[1024];
    size_t reply_len;
    int reply_code;
    /* expectations */
    struct { unsigned char kind; unsigned short slot; unsigned short idx; } q[SMTPC_EXPECT];
    int q_head, q_len;
    /* messages in flight, a ring */
    struct flight *fl[SMTPC_WINDOW];
    int fl_head, fl_len;
    /* the message being written */
    int wslot;                          /* index into fl, -1 none */
    int wstate;
    int widx;                           /* next recipient to write */
    struct store_reader rd;
    int rd_open;
    struct mime7 *m7;
    int at_bol;                         /* DATA: at the start of a line */
    unsigned char last2[2];
    int need_rset;
    int batch_over;                     /* next() said no more */
    int quit_sent;
    int compress_pipelined;             /* COMPRESS went out with what follows it */
    int ehlo_early;                     /* ... and with EHLO, on what the peer offered last time */
    struct smtpc_caps fresh;            /* what its EHLO offers this time */
    char error[300];
};

/* What mailnode peers offered last time, to pipeline COMPRESS and the mail
 * behind it (zio.c takes what follows COMPRESS as compressed): after an
 * EHLO answered in this process, without waiting for the COMPRESS reply;
 * and with EHLO itself, sent on what the peer offered the last time at the
 * same TLS state, the mail goes out one more round trip sooner.  A peer
 * that refused a pipelined COMPRESS, or no longer offers what it did, cost
 * that session (the mail behind is deferred and sent again); it is waited
 * for from then on. */
struct smtpc_known {
    char peer[SMTP_DOMAIN_MAX + 1];
    int tls;
    int waits;                          /* ask, and wait for each reply */
    struct smtpc_caps caps;
};
static struct smtpc_known smtpc_known[8];
static unsigned smtpc_known_next;

/* Kept in the store's meta table as well, so that the first session after
 * a restart (a box that lost power) saves its round trip too; written only
 * when what the peer offers changes. */
static void known_key(const struct smtpc *s, char *key, size_t n)
{
    snprintf(key, n, "smtpc.offer %s%s", s->c->tls ? "tls " : "", s->peer);
}

static struct smtpc_known *known_slot(const struct smtpc *s)
{
    struct smtpc_known *k = &smtpc_known[smtpc_known_next++ % MN_NELEM(smtpc_known)];
    memset(k, 0, sizeof *k);
    util_strlcpy(k->peer, s->peer, sizeof k->peer);
    k->tls = s->c->tls != NULL;
    return k;
}

static struct smtpc_known *known_find(const struct smtpc *s)
{
    char key[SMTP_DOMAIN_MAX + 32], v[256];
    struct smtpc_caps c = { 0 };
    long long size;
    int waits, used = 0;

    for (size_t i = 0; i < MN_NELEM(smtpc_known); i++)
        if (!strcmp(smtpc_known[i].peer, s->peer) && smtpc_known[i].tls == (s->c->tls != NULL))
            return &smtpc_known[i];
    known_key(s, key, sizeof key);
    if (store_meta_get(key, v, sizeof v, NULL) ||
        sscanf(v, "%d %d %d %d %d %d %d %d %d %lld %n", &waits, &c.pipelining, &c.chunking, &c.eightbitmime,
               &c.dsn, &c.starttls, &c.compress, &c.resume, &c.has_size, &size, &used) < 10 || !used)
        return NULL;
    c.size_limit = size;
    util_strlcpy(c.auth_mechs, v + used, sizeof c.auth_mechs);
    struct smtpc_known *k = known_slot(s);
    k->waits = waits;
    k->caps = c;
    return k;
}

static int auth_needed(const struct smtpc *s, const struct smtpc_caps *caps)
{
    return s->auth.user && s->auth.user[0] && caps->auth_mechs[0];
}

static int compress_may_pipeline(const struct smtpc *s)
{
    const struct smtpc_known *k = known_find(s);
    return !(k && k->waits) && s->caps.pipelining && !auth_needed(s, &s->caps);
}

/* The same offer as last time, in everything the mail was written for. */
static int caps_same(const struct smtpc_caps *a, const struct smtpc_caps *b)
{
    return a->pipelining == b->pipelining && a->chunking == b->chunking && a->eightbitmime == b->eightbitmime &&
           a->dsn == b->dsn && a->starttls == b->starttls && a->compress == b->compress &&
           a->resume == b->resume && a->has_size == b->has_size && a->size_limit == b->size_limit &&
           !strcmp(a->auth_mechs, b->auth_mechs);
}

static void known_set(const struct smtpc *s, int waits)
{
    struct smtpc_known *k = known_find(s);
    char key[SMTP_DOMAIN_MAX + 32], v[256];
    const struct smtpc_caps *c = &s->caps;

    if (k && k->waits == waits && caps_same(&k->caps, c))
        return;
    if (!k)
        k = known_slot(s);
    k->waits = waits;
    k->caps = *c;
    known_key(s, key, sizeof key);
    snprintf(v, sizeof v, "%d %d %d %d %d %d %d %d %d %lld %s", waits, c->pipelining, c->chunking,
             c->eightbitmime, c->dsn, c->starttls, c->compress, c->resume, c->has_size,
             (long long)c->size_limit, c->auth_mechs);
    if (store_meta_set(key, v))
        log_debug("cannot keep what %s offers", s->peer);
}

static void pump(struct smtpc *s);

/* The writer's one transition function: logs the change at debug level. */
static void smtpc_wenter(struct smtpc *s, enum wstate to)
{
    assert((size_t)to < MN_NELEM(smtpc_wstate_names));
    if (s->wstate != (int)to)
        log_debug("smtpc %s: writer %s -> %s", s->peer, smtpc_wstate_names[s->wstate],
                  smtpc_wstate_names[to]);
    s->wstate = (int)to;
}

static int tls_client_possible(void)
{
#ifdef MAILNODE_TLS
    return 1;
#else
    return 0;                           /* TLS=none: STARTTLS is never tried */
#endif
}

int smtpc_tls_policy(const char *setting)
{
    if (setting && !strcasecmp(setting, "require"))
        return SMTPC_TLS_REQUIRE;
    if (setting && !strcasecmp(setting, "none"))
        return SMTPC_TLS_NONE;
    return SMTPC_TLS_MAY;
}

/* ------------------------------------------------------------- helpers */

static void set_error(struct smtpc *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(struct smtpc *s, const char *fmt, ...)
{
    va_list ap;
    if (s->error[0])
        return;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
}

/* Room for one more command and what may follow it at once (a RSET, the
 * BDAT or DATA, QUIT); beyond that the writer waits for replies. */
static int smtpc_q_full(const struct smtpc *s)
{
    return s->q_len > SMTPC_EXPECT - 4;
}

static int expect(struct smtpc *s, int kind, int slot, int idx)
{
    if (s->q_len == SMTPC_EXPECT)
        return -1;
    int i = (s->q_head + s->q_len) % SMTPC_EXPECT;
    s->q[i].kind = (unsigned char)kind;
    s->q[i].slot = (unsigned short)slot;
    s->q[i].idx = (unsigned short)idx;
    s->q_len++;
    return 0;
}

static int cmd(struct smtpc *s, int kind, int slot, int idx, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int cmd(struct smtpc *s, int kind, int slot, int idx, const char *fmt, ...)
{
    char line[SMTP_LINE_MAX * 2];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line - 2)
        return -1;
    /* log.level = debug: the wire, never a credential (AUTH keeps only
     * its mechanism; a CRAM-MD5 answer is not a command and not traced). */
    if (kind == E_AUTH)
        log_debug("smtpc %s >>> AUTH %.*s ****", s->peer, (int)strcspn(line + 5, " "), line + 5);
    else
        log_debug("smtpc %s >>> %.*s", s->peer, n, line);
    memcpy(line + n, "\r\n", 2);
    if (conn_write(s->c, line, (size_t)n + 2))
        return -1;
    conn_set_timeout(s->c, conf->smtp_timeout_command * 1000);
    return expect(s, kind, slot, idx);
}

static struct flight *slot_flight(struct smtpc *s, int slot)
{
    return s->fl[slot % SMTPC_WINDOW];
}

static void flight_free(struct flight *f)
{
    if (!f)
        return;
    store_out_free(&f->m);
    free(f->ok);
    free(f);
}

/* A reply line for logs and DSNs: one line, no control characters. */
static void clean_reply(const char *in, char *out, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 1 < n; i++)
        out[j++] = (unsigned char)in[i] < 0x20 || in[i] == 0x7f ? ' ' : in[i];
    out[j] = '\0';
}

/* Outcome of every accepted recipient of f with one reply. */
static void finish_accepted(struct smtpc *s, struct flight *f, int code, const char *text)
{
    for (int i = 0; i < f->m.nrcpt; i++)
        if (f->ok[i])
            s->ops->rcpt_done(s->arg, &f->m, i, code, text);
}

/* A sequencing error (503) says nothing about the recipient: it follows
 * from an earlier failure in the pipeline, so it is never a bounce. */
static int outcome_code(int code)
{
    return code == 503 ? 451 : code;
}

static void retire_head(struct smtpc *s)
{
    struct flight *f = s->fl[s->fl_head % SMTPC_WINDOW];
    s->ops->msg_done(s->arg, &f->m);
    flight_free(f);
    s->fl[s->fl_head % SMTPC_WINDOW] = NULL;
    s->fl_head++;
    s->fl_len--;
}

/* ------------------------------------------------------------- ending */

static void end_session(struct smtpc *s, const char *why)
{
    if (s->ended)
        return;
    s->ended = 1;
    /* Whatever was not answered stays queued: the scheduler sees no
     * outcome for those recipients and tries them again later. */
    while (s->fl_len) {
        struct flight *f = s->fl[s->fl_head % SMTPC_WINDOW];
        s->fl[s->fl_head % SMTPC_WINDOW] = NULL;
        s->fl_head++;
        s->fl_len--;
        flight_free(f);
    }
    if (s->rd_open)
        store_reader_close(&s->rd);
    s->rd_open = 0;
    if (s->m7)
        mime7_free(s->m7);
    s->m7 = NULL;
    if (why)
        set_error(s, "%s", why);
    s->ops->done(s->arg, s->looped ? SMTPC_LOOP : s->reached, s->error[0] ? s->error : NULL);
}

/* Ends the session politely with the reason for the scheduler. */
static void quit_with_error(struct smtpc *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void quit_with_error(struct smtpc *s, const char *fmt, ...)
{
    va_list ap;
    if (!s->error[0]) {
        va_start(ap, fmt);
        vsnprintf(s->error, sizeof s->error, fmt, ap);
        va_end(ap);
    }
    cmd(s, E_QUIT, 0, 0, "QUIT");
    s->quit_sent = 1;
}

static void smtpc_free(struct smtpc *s)
{
    free(s);
}

/* ------------------------------------------------------- writing a message */

/* "XRESUME=<k>" in MAIL's reply (resume.c); 0 when absent or beyond
 * the message (a confused peer gets everything, and its hash check
 * then tells). */
static int64_t resume_offset(const char *text, int64_t size)
{
    const char *p = strstr(text, "XRESUME=");
    char *end;
    long long k;

    if (!p || !isdigit((unsigned char)p[8]))
        return 0;
    errno = 0;
    k = strtoll(p + 8, &end, 10);
    return errno || k < 0 || k > size ? 0 : (int64_t)k;
}

static int start_message(struct smtpc *s)
{
    struct flight *f;
    char params[256] = "";
    int slot;

    if (s->fl_len == SMTPC_WINDOW || s->batch_over || s->quit_sent)
        return 0;
    f = calloc(1, sizeof *f);
    if (!f)
        return 0;
    if (s->ops->next(s->arg, &f->m) != 1) {
        free(f);
        s->batch_over = 1;
        return 0;
    }
    f->ok = calloc((size_t)(f->m.nrcpt ? f->m.nrcpt : 1), 1);
    if (!f->ok) {
        flight_free(f);
        s->batch_over = 1;
        return 0;
    }
    if (f->m.size && s->caps.size_limit && f->m.size > s->caps.size_limit) {
        /* RFC 1870 4: the peer's fixed limit is a permanent refusal. */
        char t[160];
        snprintf(t, sizeof t, "552 5.3.4 message of %lld octets exceeds the peer's limit of %lld",
                 (long long)f->m.size, (long long)s->caps.size_limit);
        for (int i = 0; i < f->m.nrcpt; i++)
            s->ops->rcpt_done(s->arg, &f->m, i, 552, t);
        s->ops->msg_done(s->arg, &f->m);
        flight_free(f);
        return 1;
    }
    slot = s->fl_head + s->fl_len;
    s->fl[slot % SMTPC_WINDOW] = f;
    s->fl_len++;
    f->wire_size = f->m.size;
    /* RFC 6152 3: never 8-bit text to a peer that did not offer 8BITMIME. */
    f->convert = f->m.eightbit && !s->caps.eightbitmime;
    if (s->need_rset) {
        cmd(s, E_RSET, slot, 0, "RSET");
        s->need_rset = 0;
    }
    if (s->esmtp) {
        size_t used = 0;
        if (s->caps.has_size)
            used += (size_t)snprintf(params + used, sizeof params - used, " SIZE=%lld", (long long)f->m.size);
        if (f->m.eightbit && s->caps.eightbitmime)
            used += (size_t)snprintf(params + used, sizeof params - used, " BODY=8BITMIME");
        if (s->caps.dsn) {
            used += (size_t)snprintf(params + used, sizeof params - used, " RET=%s",
                                     f->m.ret_full ? "FULL" : "HDRS");
            if (f->m.envid[0] && used < sizeof params)
                used += (size_t)snprintf(params + used, sizeof params - used, " ENVID=%s", f->m.envid);
        }
        /* resume.c: a large message to a mailnode that can take it up
         * again after a drop, sent as stored (not converted). */
        char tid[RESUME_TID_MAX + 1];
        if (s->caps.resume && s->caps.chunking && conf->resume && !f->convert && f->m.size >= RESUME_MIN_SIZE &&
            used < sizeof params && !resume_tid_make(&f->m, tid, sizeof tid)) {
            snprintf(params + used, sizeof params - used, " XRESUME=%s", tid);
            f->resume = 1;
        }
    }
    cmd(s, E_MAIL, slot, 0, "MAIL FROM:<%s>%s", f->m.sender, params);
    s->wslot = slot;
    s->widx = 0;
    smtpc_wenter(s, W_RCPT);
    return 1;
}

static void write_rcpt(struct smtpc *s, struct flight *f, int i)
{
    const struct store_out_rcpt *r = &f->m.rcpts[i];
    char params[400] = "";

    if (s->caps.dsn) {
        size_t used = 0;
        if (r->notify) {
            static const struct { int bit; const char *name; } names[] = {
                { NOTIFY_NEVER, "NEVER" }, { NOTIFY_SUCCESS, "SUCCESS" },
                { NOTIFY_FAILURE, "FAILURE" }, { NOTIFY_DELAY, "DELAY" } };
            used += (size_t)snprintf(params, sizeof params, " NOTIFY=");
            for (size_t k = 0; k < MN_NELEM(names); k++)
                if (r->notify & names[k].bit)
                    used += (size_t)snprintf(params + used, sizeof params - used, "%s%s",
                                             params[used - 1] == '=' ? "" : ",", names[k].name);
        }
        if (r->orcpt[0] && used < sizeof params)
            snprintf(params + used, sizeof params - used, " ORCPT=%s", r->orcpt);
    }
    cmd(s, E_RCPT, s->wslot, i, "RCPT TO:<%s>%s", r->addr, params);
}

/* The body, converted to 7 bit when needed, counted or streamed. */
struct body_out {
    struct smtpc *s;
    int dot;                            /* DATA: dot-stuffing */
};

static int smtpc_body_emit(void *arg, const void *buf, size_t n)
{
    struct body_out *o = arg;
    struct smtpc *s = o->s;
    const unsigned char *p = buf;

    if (!o->dot)
        return conn_write(s->c, p, n);
    /* RFC 5321 4.5.2: a line starting with "." gets a second one. */
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (s->at_bol && p[i] == '.') {
            if (conn_write(s->c, p + start, i - start) || conn_write(s->c, ".", 1))
                return -1;
            start = i;
        }
        s->at_bol = p[i] == '\n';
    }
    if (conn_write(s->c, p + start, n - start))
        return -1;
    if (n >= 2) {
        s->last2[0] = p[n - 2];
        s->last2[1] = p[n - 1];
    } else if (n == 1) {
        s->last2[0] = s->last2[1];
        s->last2[1] = p[0];
    }
    return 0;
}

static int smtpc_count_emit(void *arg, const void *buf, size_t n)
{
    MN_UNUSED(buf);
    *(int64_t *)arg += (int64_t)n;
    return 0;
}

/* Converting is a second pass over the text: first to learn whether it can
 * be done and how long the result is (BDAT needs the size up front). */
static int convert_size(struct flight *f, int64_t *size)
{
    struct store_reader r;
    unsigned char buf[4096];
    struct mime7 *m = mime7_new();
    ssize_t n;
    int rc = -1;

    *size = 0;
    if (!m || store_reader_open(&r, f->m.body_id)) {
        mime7_free(m);
        return -1;
    }
    while ((n = store_reader_read(&r, buf, sizeof buf)) > 0)
        if (mime7_feed(m, buf, (size_t)n, smtpc_count_emit, size))
            break;
    if (n == 0 && !mime7_finish(m, smtpc_count_emit, size))
        rc = 0;
    store_reader_close(&r);
    mime7_free(m);
    return rc;
}

static int open_body(struct smtpc *s, struct flight *f)
{
    if (store_reader_open(&s->rd, f->m.body_id))
        return -1;
    s->rd_open = 1;
    s->at_bol = 1;
    s->last2[0] = '\r';
    s->last2[1] = '\n';
    if (f->convert) {
        s->m7 = mime7_new();
        if (!s->m7)
            return -1;
    }
    return 0;
}

/* Streams body bytes while the output has room; 1 when the body is done. */
static int write_body(struct smtpc *s, struct flight *f, int dot)
{
    struct body_out o = { .s = s, .dot = dot };
    unsigned char buf[8192];

    for (;;) {
        /* Dot-stuffing and 7-bit encoding can multiply the text by up to
         * four: read only what will surely fit. */
        size_t room = conn_out_space(s->c);
        size_t want = room > 64 ? (room - 64) / 4 : 0;
        if (want < 256)
            break;
        if (want > sizeof buf)
            want = sizeof buf;
        ssize_t n = store_reader_read(&s->rd, buf, want);
        if (n < 0) {
            set_error(s, "cannot read message %s from the store", f->m.qid);
            return -1;
        }
        if (n == 0) {
            if (s->m7 && mime7_finish(s->m7, smtpc_body_emit, &o))
                return -1;
            store_reader_close(&s->rd);
            s->rd_open = 0;
            if (s->m7)
                mime7_free(s->m7);
            s->m7 = NULL;
            return 1;
        }
        if (s->m7 ? mime7_feed(s->m7, buf, (size_t)n, smtpc_body_emit, &o) : smtpc_body_emit(&o, buf, (size_t)n))
            return -1;
    }
    return 0;
}

static void write_data_end(struct smtpc *s)
{
    /* The text ends with CRLF before the final dot, whatever it was. */
    if (s->last2[0] != '\r' || s->last2[1] != '\n')
        conn_write(s->c, "\r\n", 2);
    conn_write(s->c, ".\r\n", 3);
    conn_set_timeout(s->c, 600 * 1000);  /* RFC 5321 4.5.3.2.6: 10 minutes for the final reply */
    expect(s, E_DOT, s->wslot, 0);
}

/* Advances the message being written as far as the rules allow. */
static void write_current(struct smtpc *s)
{
    struct flight *f = slot_flight(s, s->wslot);

    assert(s->wslot >= 0 && s->wstate != W_IDLE);
    assert(s->fl_len <= SMTPC_WINDOW && s->q_len <= SMTPC_EXPECT);

    for (;;) {
        if (conn_out_space(s->c) < 1024)
            return;
        /* Without PIPELINING every command waits for its reply; with it,
         * for room to remember the reply (a message's commands may need
         * more than the window of messages leaves: 100 recipients each). */
        if (s->wstate != W_BODY && ((!s->caps.pipelining && s->q_len) || smtpc_q_full(s)))
            return;
        switch (s->wstate) {
        case W_RCPT:
            if (s->widx < f->m.nrcpt) {
                write_rcpt(s, f, s->widx++);
                continue;
            }
            smtpc_wenter(s, W_DATACMD);
            continue;
        case W_DATACMD:
            if (s->caps.chunking && f->resume && !f->mail_code)
                return;                 /* how much the peer holds comes with it */
            if (f->resume && f->mail_code / 100 != 2) {
                /* MAIL was refused and its recipients have their outcome:
                 * the body it waited for is owed to nobody. */
                cmd(s, E_RSET, s->wslot, 2, "RSET");
                smtpc_wenter(s, W_END);
                continue;
            }
            if (s->caps.chunking) {
                if (f->convert && convert_size(f, &f->wire_size)) {
                    /* Cannot be made 7-bit: the recipients fail (RFC 6152 3)
                     * once their RCPT replies are in; the peer gets RSET. */
                    cmd(s, E_RSET, s->wslot, 1, "RSET");
                    smtpc_wenter(s, W_END);
                    continue;
                }
                if (open_body(s, f) || (f->resume_at && store_reader_seek(&s->rd, f->resume_at))) {
                    set_error(s, "cannot read message %s from the store", f->m.qid);
                    conn_abort(s->c);
                    return;
                }
                if (f->resume_at)
                    log_info("%s: resuming at octet %lld of %lld (%s)", f->m.qid, (long long)f->resume_at,
                             (long long)f->wire_size, s->peer);
                cmd(s, E_BDAT, s->wslot, 0, "BDAT %lld LAST", (long long)(f->wire_size - f->resume_at));
                /* RFC 5321 4.5.3.2.5: the data block timeout, an idle
                 * timer: a peer that keeps reading keeps the session. */
                conn_set_timeout(s->c, conf->smtp_timeout_data * 1000);
                smtpc_wenter(s, W_BODY);
                continue;
            }
            cmd(s, E_DATA, s->wslot, 0, "DATA");
            smtpc_wenter(s, W_WAIT354);
            return;
        case W_WAIT354:
            return;                     /* the reply handler moves on */
        case W_BODY: {
            int done = write_body(s, f, !s->caps.chunking);
            if (done < 0) {
                conn_abort(s->c);
                return;
            }
            if (!done) {
                s->c->want_drain = 1;
                return;
            }
            if (!s->caps.chunking)
                write_data_end(s);
            smtpc_wenter(s, W_END);
            continue;
        }
        case W_END:
        case W_IDLE:
            smtpc_wenter(s, W_IDLE);
            s->wslot = -1;
            return;
        }
    }
}

/* Writes whatever can be written now: the current message, then more. */
static void pump(struct smtpc *s)
{
    if (s->ended || s->c->dead || !s->ready)
        return;
    for (int guard = 0; guard < SMTPC_WINDOW + 1; guard++) {
        if (s->wslot >= 0) {
            write_current(s);
            if (s->wslot >= 0)
                break;
        }
        if ((!s->caps.pipelining && s->q_len) || smtpc_q_full(s))
            break;
        if (conn_out_space(s->c) < 4096)
            break;
        if (!start_message(s))
            break;
    }
    if (s->batch_over && s->wslot < 0 && !s->fl_len && !s->quit_sent && !s->q_len) {
        cmd(s, E_QUIT, 0, 0, "QUIT");
        s->quit_sent = 1;
    }
    s->c->want_drain = s->wslot >= 0 || (!s->batch_over && s->fl_len < SMTPC_WINDOW);
    conn_flush(s->c);
}

/* ----------------------------------------------------------- replies */

void smtpc_caps_keyword(struct smtpc_caps *caps, const char *kw)
{
    if (!strcasecmp(kw, "PIPELINING"))
        caps->pipelining = 1;
    else if (!strcasecmp(kw, "CHUNKING"))
        caps->chunking = 1;
    else if (!strcasecmp(kw, "8BITMIME"))
        caps->eightbitmime = 1;
    else if (!strcasecmp(kw, "DSN"))
        caps->dsn = 1;
    else if (!strcasecmp(kw, "STARTTLS"))
        caps->starttls = 1;
    else if (!strcasecmp(kw, "ATRN"))
        caps->atrn = 1;
    else if (!strcasecmp(kw, "COMPRESS DEFLATE"))
        caps->compress = 1;
    else if (!strcasecmp(kw, "XRESUME"))
        caps->resume = 1;
    else if (!strncasecmp(kw, "SIZE", 4) && (kw[4] == ' ' || !kw[4])) {
        /* RFC 1870 4: SIZE [1*DIGIT]; anything else ("SIZE -1", "SIZE x",
         * an overflow) is treated as no announcement at all, so that a
         * broken peer cannot make every message look too large. */
        const char *p = kw + 4;
        int64_t v = 0;
        int ok = 1;
        while (*p == ' ')
            p++;
        for (; *p; p++) {
            if (*p < '0' || *p > '9' || v > (INT64_MAX - 9) / 10) {
                ok = 0;
                break;
            }
            v = v * 10 + (*p - '0');
        }
        caps->has_size = ok;
        caps->size_limit = ok ? v : 0;
    }
    else if (!strncasecmp(kw, "AUTH ", 5))
        util_strlcpy(caps->auth_mechs, kw + 5, sizeof caps->auth_mechs);
    /* The pre-RFC 2554 form some servers add beside the standard one. */
    else if (!strncasecmp(kw, "AUTH=", 5) && !caps->auth_mechs[0])
        util_strlcpy(caps->auth_mechs, kw + 5, sizeof caps->auth_mechs);
}

int smtpc_caps_mech(const struct smtpc_caps *caps, const char *mech)
{
    char buf[sizeof caps->auth_mechs], *items[16];
    size_t n;
    util_strlcpy(buf, caps->auth_mechs, sizeof buf);
    n = util_split_list(buf, items, MN_NELEM(items));
    for (size_t i = 0; i < n; i++)
        if (!strcasecmp(items[i], mech))
            return 1;
    return 0;
}

int smtpc_auth_choose(const struct smtpc_caps *caps, const struct conn *c)
{
    if (smtpc_caps_mech(caps, "CRAM-MD5"))
        return SMTPC_AUTH_CRAM;
    /* A password in the clear only to a peer on this host, under TLS, or
     * when the administrator said so. */
    if (smtpc_caps_mech(caps, "PLAIN") && (c->peer_loopback || conf->allow_cleartext_auth || c->tls))
        return SMTPC_AUTH_PLAIN;
    return SMTPC_AUTH_NONE;
}

static void start_auth(struct smtpc *s)
{
    char b64[900];

    switch (smtpc_auth_choose(&s->caps, s->c)) {
    case SMTPC_AUTH_CRAM:
        cmd(s, E_AUTH, 0, 1, "AUTH CRAM-MD5");
        return;
    case SMTPC_AUTH_PLAIN:
        if (!auth_client_plain(s->auth.user, s->auth.password, b64, sizeof b64)) {
            cmd(s, E_AUTH, 0, 0, "AUTH PLAIN %s", b64);
            return;
        }
        break;
    }
    quit_with_error(s, "%s offers no authentication mechanism we may use without TLS", s->peer);
}

static void cram_answer(struct smtpc *s, const char *challenge64)
{
    char b64[900];

    if (auth_client_cram(s->auth.user, s->auth.password, challenge64, b64, sizeof b64)) {
        set_error(s, "%s sent a bad CRAM-MD5 challenge", s->peer);
        conn_abort(s->c);
        return;
    }
    conn_write(s->c, b64, strlen(b64));
    conn_write(s->c, "\r\n", 2);
    expect(s, E_AUTH, 0, 0);
}

/* RFC 3207: TLS when the peer offers it (unless told not to). */
static int starttls_due(const struct smtpc *s, const struct smtpc_caps *caps)
{
    return !s->c->tls && caps->starttls && s->tls_policy != SMTPC_TLS_NONE && tls_client_possible();
}

/* Compression only toward a peer that offers it (another mailnode), after
 * TLS, and unless compress.never names the destination.  Not on an ATRN
 * turnaround: the ODMR client may be a proxy such as fetchmail that passes
 * the site's EHLO reply through but cannot carry a deflate stream; a
 * mailnode client compressed the connection before ATRN, and it stays
 * compressed. */
static int compress_wanted(const struct smtpc *s)
{
    return !s->attached && !zio_active(s->c) && zio_allowed(s->dest, s->peer);
}

/* Both directions deflate from here on; `replies` plain replies of the
 * peer still to come (pipelined COMPRESS), or none.  -1: the session is
 * given up (and s freed). */
static int compress_begin(struct smtpc *s, int replies)
{
    if (replies ? zio_start_pipelined(s->c, replies) : zio_start(s->c)) {
        set_error(s, "cannot start compression with %s", s->peer);
        conn_abort(s->c);
        return -1;
    }
    return 0;
}

static void on_reply_ehlo_done(struct smtpc *s)
{
    /* No delivery at all without TLS when the policy requires it. */
    if (starttls_due(s, &s->caps)) {
        cmd(s, E_STARTTLS, 0, 0, "STARTTLS");
        return;
    }
    if (!s->c->tls && s->tls_policy == SMTPC_TLS_REQUIRE) {
        quit_with_error(s, "%s does not offer TLS, which is required", s->peer);
        return;
    }
    if (s->caps.compress && compress_wanted(s)) {
        cmd(s, E_COMPRESS, 0, 0, "COMPRESS DEFLATE");
        if (!compress_may_pipeline(s))
            return;
        known_set(s, 0);
        s->caps.compress = 0;
        s->compress_pipelined = 1;
        if (compress_begin(s, 1))
            return;
    }
    if (auth_needed(s, &s->caps)) {
        start_auth(s);
        return;
    }
    s->ready = 1;
    pump(s);
}

/* EHLO; to a mailnode that offered COMPRESS last time (and needs no
 * STARTTLS or AUTH first) also COMPRESS and the mail, on that offer. */
static void send_ehlo(struct smtpc *s)
{
    const struct smtpc_known *k = known_find(s);

    cmd(s, E_EHLO, 0, 0, "EHLO %s", conf->hostname);
    if (!k || k->waits || !k->caps.compress || !k->caps.pipelining || !compress_wanted(s) ||
        auth_needed(s, &k->caps) || starttls_due(s, &k->caps) ||
        (!s->c->tls && s->tls_policy == SMTPC_TLS_REQUIRE))
        return;
    memset(&s->fresh, 0, sizeof s->fresh);
    s->caps = k->caps;
    s->esmtp = 1;
    s->ehlo_early = 1;
    s->compress_pipelined = 1;
    cmd(s, E_COMPRESS, 0, 0, "COMPRESS DEFLATE");
    if (compress_begin(s, 2))
        return;
    s->ready = 1;
    pump(s);
}

/* RFC 5321 5.1: a peer that names itself with our hostname in its
 * greeting or EHLO reply is this node (another of its addresses, a port
 * forwarded back to us): delivering there would only queue the mail here
 * again.  Not asked of a turned-around ATRN connection, which we did not
 * choose. */
static int peer_is_us(const struct smtpc *s, const char *text)
{
    size_t n = strlen(conf->hostname);
    if (s->attached || !n || strlen(text) < 4)
        return 0;
    text += 4;
    return !strncasecmp(text, conf->hostname, n) && (!text[n] || text[n] == ' ');
}

static void on_reply(struct smtpc *s, int code, const char *text)
{
    char clean[512];
    if (!s->q_len) {
        set_error(s, "%s sent a reply nobody asked for: %.100s", s->peer, text);
        conn_abort(s->c);
        return;
    }
    int kind = s->q[s->q_head].kind, slot = s->q[s->q_head].slot, idx = s->q[s->q_head].idx;
    s->q_head = (s->q_head + 1) % SMTPC_EXPECT;
    s->q_len--;
    clean_reply(text, clean, sizeof clean);

    switch (kind) {
    case E_GREETING:
        if (code != 220) {
            quit_with_error(s, "%s greeted with: %s", s->peer, clean);
            break;
        }
        if (peer_is_us(s, text)) {
            s->looped = 1;
            quit_with_error(s, "mail loops back to myself: %s greets as %s", s->peer, conf->hostname);
            break;
        }
        s->reached = 1;
        send_ehlo(s);
        break;
    case E_EHLO:
    case E_HELO:
        if (code / 100 == 2 && peer_is_us(s, text)) {
            s->looped = 1;
            s->reached = 0;
            quit_with_error(s, "mail loops back to myself: %s answers EHLO as %s", s->peer, conf->hostname);
            break;
        }
        if (s->ehlo_early) {
            /* The mail went out on last time's offer: it must stand. */
            s->ehlo_early = 0;
            if (code / 100 != 2 || !caps_same(&s->fresh, &s->caps)) {
                s->caps = s->fresh;
                known_set(s, 0);
                set_error(s, "%s no longer offers what it did: %s", s->peer, clean);
                conn_abort(s->c);       /* frees s */
                return;
            }
            s->caps.compress = 0;
            break;
        }
        if (code / 100 != 2) {
            if (kind == E_EHLO) {       /* RFC 5321 3.2: fall back to HELO */
                cmd(s, E_HELO, 0, 0, "HELO %s", conf->hostname);
                break;
            }
            quit_with_error(s, "%s refused HELO: %s", s->peer, clean);
            break;
        }
        s->esmtp = kind == E_EHLO;
        on_reply_ehlo_done(s);
        break;
    case E_AUTH:
        if (code == 334 && idx == 1) {
            cram_answer(s, text + (strlen(text) > 4 ? 4 : strlen(text)));
            break;
        }
        if (code != 235) {
            quit_with_error(s, "authentication to %s failed: %s", s->peer, clean);
            break;
        }
        s->ready = 1;
        pump(s);
        break;
    case E_MAIL: {
        struct flight *f = slot_flight(s, slot);
        f->mail_code = code;
        util_strlcpy(f->mail_text, clean, sizeof f->mail_text);
        if (f->resume && code / 100 == 2)
            f->resume_at = resume_offset(clean, f->wire_size);
        if (code / 100 != 2)
            for (int i = 0; i < f->m.nrcpt; i++)
                s->ops->rcpt_done(s->arg, &f->m, i, outcome_code(code), clean);
        break;
    }
    case E_RCPT: {
        struct flight *f = slot_flight(s, slot);
        if (f->mail_code / 100 != 2)
            break;                      /* already decided by MAIL */
        if (code / 100 == 2) {
            f->ok[idx] = 1;
            f->naccepted++;
        } else {
            s->ops->rcpt_done(s->arg, &f->m, idx, outcome_code(code), clean);
        }
        break;
    }
    case E_DATA: {
        struct flight *f = slot_flight(s, slot);
        if (code == 354) {
            if (open_body(s, f)) {
                set_error(s, "cannot read message %s from the store", f->m.qid);
                conn_abort(s->c);
                return;
            }
            smtpc_wenter(s, W_BODY);
            conn_set_timeout(s->c, conf->smtp_timeout_data * 1000);
            if (!f->naccepted) {
                /* Nothing to deliver: end the text at once. */
                store_reader_close(&s->rd);
                s->rd_open = 0;
                write_data_end(s);
                smtpc_wenter(s, W_END);
            }
            pump(s);
            break;
        }
        finish_accepted(s, f, outcome_code(code), clean);
        s->need_rset = 1;
        smtpc_wenter(s, W_END);
        while (s->fl_len && s->fl[s->fl_head % SMTPC_WINDOW] == f)
            retire_head(s);
        pump(s);
        break;
    }
    case E_DOT:
    case E_BDAT: {
        struct flight *f = slot_flight(s, slot);
        if (f->naccepted)
            finish_accepted(s, f, code / 100 == 2 ? 250 : outcome_code(code), clean);
        if (code / 100 != 2)
            s->need_rset = 1;
        retire_head(s);
        pump(s);
        break;
    }
    case E_RSET:
        if (idx == 1) {                 /* the message that could not be converted */
            struct flight *f = slot_flight(s, slot);
            finish_accepted(s, f, 554, "554 5.6.3 conversion to 7 bit required but not possible");
            retire_head(s);
            pump(s);
        } else if (idx == 2) {          /* a resumable message whose MAIL was refused */
            retire_head(s);
            pump(s);
        }
        break;
    case E_STARTTLS:
        if (code != 220) {
            if (s->tls_policy == SMTPC_TLS_REQUIRE) {
                quit_with_error(s, "%s refused STARTTLS: %s", s->peer, clean);
                break;
            }
            s->caps.starttls = 0;            /* "may": go on in the clear */
            on_reply_ehlo_done(s);
            break;
        }
        /* Everything the peer said before is forgotten (RFC 3207 4.2). */
        conn_consume(s->c, s->c->in_len);
        if (tls_start_client(s->c, s->peer, s->tls_policy == SMTPC_TLS_REQUIRE)) {
            set_error(s, "cannot start TLS with %s", s->peer);
            conn_abort(s->c);
        }
        break;
    case E_QUIT:
        conn_close(s->c);
        break;
    case E_COMPRESS:
        if (s->compress_pipelined) {
            s->compress_pipelined = 0;
            if (code / 100 == 2)
                break;
            known_set(s, 1);
            set_error(s, "%s offered COMPRESS but refused it: %d %s", s->peer, code, text);
            conn_abort(s->c);
            break;
        }
        s->caps.compress = 0;
        if (code / 100 == 2 && compress_begin(s, 0))
            break;
        on_reply_ehlo_done(s);
        break;
    }
}

static void smtpc_tls_done(struct conn *c, int err)
{
    struct smtpc *s = c->ctx;
    if (!s)
        return;
    if (err) {
        set_error(s, "TLS handshake with %s failed%s", s->peer,
                  s->tls_policy == SMTPC_TLS_REQUIRE ? " (certificate not verified?)" : "");
        return;                         /* the loop closes the connection */
    }
    s->ready = 0;
    s->esmtp = s->caps.pipelining = s->caps.chunking = s->caps.eightbitmime = s->caps.dsn = s->caps.starttls = s->caps.compress = 0;
    s->caps.has_size = 0;
    s->caps.size_limit = 0;
    s->caps.auth_mechs[0] = '\0';
    send_ehlo(s);
    conn_flush(c);
}

int smtpc_reply_line(struct conn *c, int *code, int *last, char *line, size_t n)
{
    unsigned char *lf = memchr(c->in, '\n', c->in_len);
    if (!lf)
        return c->in_len == c->in_cap ? SMTPC_ELONG : 0;
    size_t len = (size_t)(lf - c->in) + 1, l = len - 1;
    if (l && c->in[l - 1] == '\r')
        l--;
    /* RFC 5321 4.2: Reply-code [ ("-" / SP) textstring ]. */
    if (l < 3 || !isdigit(c->in[0]) || !isdigit(c->in[1]) || !isdigit(c->in[2]) ||
        (l > 3 && c->in[3] != ' ' && c->in[3] != '-'))
        return SMTPC_EMALFORMED;
    *code = (c->in[0] - '0') * 100 + (c->in[1] - '0') * 10 + (c->in[2] - '0');
    *last = l == 3 || c->in[3] == ' ';
    size_t k = l < n - 1 ? l : n - 1;
    memcpy(line, c->in, k);
    line[k] = '\0';
    /* The text reaches logs and delivery reports: one line, always. */
    for (size_t i = 0; i < k; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = ' ';
    conn_consume(c, len);
    return 1;
}

static void smtpc_input(struct conn *c)
{
    struct smtpc *s = c->ctx;
    char line[sizeof s->reply];
    int code, last, rc;

    while (!c->dead && c->in_len && (rc = smtpc_reply_line(c, &code, &last, line, sizeof line))) {
        if (rc < 0) {
            set_error(s, rc == SMTPC_ELONG ? "%s sent an over-long reply line" : "%s sent a malformed reply",
                      s->peer);
            conn_abort(c);
            return;
        }
        log_debug("smtpc %s <<< %s", s->peer, line);
        /* Keep the first line of a reply (and EHLO keywords as they come). */
        if (!s->reply_len) {
            s->reply_len = util_strlcpy(s->reply, line, sizeof s->reply);
            s->reply_code = code;
        } else if (s->q_len && s->q[s->q_head].kind == E_EHLO && strlen(line) > 4) {
            smtpc_caps_keyword(s->ehlo_early ? &s->fresh : &s->caps, line + 4);
        }
        if (last) {
            char text[sizeof s->reply];
            util_strlcpy(text, s->reply, sizeof text);
            s->reply_len = 0;
            on_reply(s, code, text);
        }
    }
    /* Without PIPELINING each reply releases the next command. */
    if (!c->dead && c->ctx == s && !s->ended)
        pump(s);
}

static void smtpc_drain(struct conn *c)
{
    pump(c->ctx);
}

static void smtpc_timeout(struct conn *c)
{
    struct smtpc *s = c->ctx;
    set_error(s, "%s did not answer in time", s->peer);
    conn_abort(c);
}

static void smtpc_closed(struct conn *c)
{
    struct smtpc *s = c->ctx;
    if (!s)
        return;
    c->ctx = NULL;
    if (!s->ended)
        end_session(s, s->quit_sent && !s->q_len ? NULL : "connection lost");
    smtpc_free(s);
}

static void smtpc_connected(struct conn *c, int err)
{
    struct smtpc *s = c->ctx;
    if (err) {
        set_error(s, "cannot connect to %s [%s]: %s", s->peer, c->peer_ip, strerror(err));
        conn_abort(c);
        return;
    }
    /* RFC 5321 4.5.3.2.1: 5 minutes for the greeting. */
    conn_set_timeout(c, conf->smtp_timeout_command * 1000);
    pace_rate(c->fd, pace_rate_for(s->dest, s->peer));
}

static const struct conn_ops smtpc_conn_ops = {
    .on_tls = smtpc_tls_done,
    .on_input = smtpc_input,
    .on_drain = smtpc_drain,
    .on_timeout = smtpc_timeout,
    .on_close = smtpc_closed,
    .on_connect = smtpc_connected,
};

/* A session waiting for the peer's greeting, not yet on a connection. */
static struct smtpc *smtpc_new(const char *peer_name, const struct smtpc_ops *ops, void *arg, int tls_policy)
{
    struct smtpc *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->ops = ops;
    s->arg = arg;
    s->wslot = -1;
    s->tls_policy = tls_policy;
    util_strlcpy(s->peer, peer_name, sizeof s->peer);
    expect(s, E_GREETING, 0, 0);
    return s;
}

struct smtpc *smtpc_start(const struct sockaddr_storage *ss, socklen_t len, const char *peer_name,
                          const struct smtpc_ops *ops, void *arg, const struct smtpc_auth *auth, int tls_policy)
{
    struct smtpc *s = smtpc_new(peer_name, ops, arg, tls_policy);
    if (!s)
        return NULL;
    if (auth)
        s->auth = *auth;
    s->c = conn_connect(ss, len, LISTEN_N, &smtpc_conn_ops, s, SMTPC_IN, SMTPC_OUT);
    if (!s->c) {
        free(s);
        return NULL;
    }
    pace_socket(s->c->fd);
    conn_set_timeout(s->c, conf->smtp_timeout_connect * 1000);
    return s;
}

struct smtpc *smtpc_attach(struct conn *c, const char *peer_name, const struct smtpc_ops *ops, void *arg)
{
    /* No STARTTLS here: the ODMR session chose its own. */
    struct smtpc *s = smtpc_new(peer_name, ops, arg, SMTPC_TLS_NONE);
    if (!s)
        return NULL;
    s->c = c;
    s->attached = 1;
    /* Whatever the peer sent before the turnaround is not a reply to us. */
    conn_consume(c, c->in_len);
    c->ops = &smtpc_conn_ops;
    c->ctx = s;
    conn_set_timeout(c, conf->smtp_timeout_command * 1000);
    return s;
}

int smtpc_peer_dsn(const struct smtpc *s)
{
    return s && s->caps.dsn;
}

void smtpc_set_dest(struct smtpc *s, const char *dest)
{
    util_strlcpy(s->dest, dest, sizeof s->dest);
    if (!s->c->connecting)
        pace_rate(s->c->fd, pace_rate_for(s->dest, s->peer));
}

void smtpc_abort(struct smtpc *s)
{
    if (!s || s->ended)
        return;
    s->ended = 1;
    while (s->fl_len) {
        flight_free(s->fl[s->fl_head % SMTPC_WINDOW]);
        s->fl[s->fl_head % SMTPC_WINDOW] = NULL;
        s->fl_head++;
        s->fl_len--;
    }
    if (s->rd_open)
        store_reader_close(&s->rd);
    if (s->m7)
        mime7_free(s->m7);
    s->m7 = NULL;
    s->rd_open = 0;
    conn_abort(s->c);
}
