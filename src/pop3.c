/*
 * pop3.c: the POP3 server (RFC 1939), with CAPA and response codes
 * (RFC 2449), SASL AUTH (RFC 5034) and the AUTH response code (RFC 3206).
 *
 * A session is a state machine: AUTHORIZATION until a login succeeds,
 * TRANSACTION while the maildrop is open, UPDATE after QUIT.  A command
 * table maps each verb to the states in which it is valid.  Messages are
 * marked by DELE and removed only in UPDATE, after QUIT; a session that
 * ends any other way removes nothing (RFC 1939 6).
 *
 * Long replies (LIST, UIDL, RETR, TOP) stream: the session writes what fits
 * into the connection's fixed output buffer and continues from on_drain, so
 * a 100 MB message costs one decompressed chunk of memory, not 100 MB.
 * While a reply streams, or while a failed login is being delayed, or while
 * the deletions of QUIT wait for their commit, the connection is paused and
 * pipelined commands wait their turn (RFC 2449 6.6: in order).
 */
#include "internal.h"

#include <assert.h>
#include <ctype.h>
#include <string.h>

/* RFC 2449 4: a command line is at most 255 octets, CRLF included. */
#define POP3_LINE_MAX       255
/* RFC 5034 4: SASL responses are not bound by that limit; this is room
 * for a PLAIN response with a long password, base64-encoded. */
#define POP3_SASL_LINE_MAX  2048
/* Free output space wanted before a command is handled: the longest
 * single-line reply, with room to spare.  Less, and the session waits for
 * the client to read (the loop resumes it when the buffer drains). */
#define POP3_REPLY_ROOM     1024
/* Stream in pieces of this many message bytes; stuffing at most doubles
 * them ("." lines), so the encoded piece fits a 16 KB output buffer. */
#define POP3_PIECE          4096

enum pop3_state {
    POP3_AUTHORIZATION = 1 << 0,
    POP3_TRANSACTION = 1 << 1,
    POP3_UPDATE = 1 << 2,
};
static const char *const pop3_state_names[] = { "AUTHORIZATION", "TRANSACTION", "UPDATE" };

/* What the paused session is waiting for. */
enum pop3_busy { BUSY_NONE, BUSY_DELAY, BUSY_STREAM, BUSY_COMMIT, BUSY_TLS };

enum pop3_stream_kind { STREAM_LIST, STREAM_UIDL, STREAM_MSG };

struct pop3_msg {
    int64_t uid;
    int64_t size;
    int deleted;
};

struct pop3_stream {
    enum pop3_stream_kind kind;
    size_t next;                        /* LIST/UIDL: next message index */
    /* STREAM_MSG */
    char prefix[ADDR_MAX + 64];
    size_t prefix_len, prefix_off;
    struct store_reader r;
    int reader_open;
    int bol;                            /* at the beginning of a line */
    int in_header;
    size_t line_len;
    unsigned char last;
    int64_t lines_left;                 /* TOP: body lines still to send; -1: all */
    int64_t sent, expect;               /* octets before stuffing; RETR's size */
    size_t msgno;
};

struct pop3 {
    struct conn *c;
    unsigned state;                     /* enum pop3_state */
    enum pop3_busy busy;
    int skipping;                       /* discarding the rest of an over-long line */
    int in_sasl;                        /* the next line answers a SASL challenge */
    int failures;
    struct timer delay;
    struct auth_sasl sasl;
    char mech[16];
    /* USER: the name waiting for PASS. */
    int have_user;
    char pending[USER_MAX + 1];
    int pending_bad;                    /* too long to be anyone's name */
    /* TRANSACTION */
    int64_t user_id;
    char user[USER_MAX + 1];
    int locked;
    struct pop3_msg *msgs;
    size_t n, cap;
    int list_err;
    unsigned retrieved;
    struct pop3_stream st;
};

struct pop3_cmd {
    const char *verb;
    unsigned allowed;                   /* states in which the verb is valid */
    void (*run)(struct pop3 *s, char *arg);
};

static void pop3_input(struct conn *c);
static void pop3_drain(struct conn *c);
static void pop3_timeout(struct conn *c);
static void pop3_close(struct conn *c);
static void pop3_tls(struct conn *c, int err);

static const struct conn_ops pop3_ops = {
    .on_input = pop3_input,
    .on_drain = pop3_drain,
    .on_timeout = pop3_timeout,
    .on_close = pop3_close,
    .on_tls = pop3_tls,
};

/* ------------------------------------------------------ mailbox locks */

/* RFC 1939 4: the maildrop is locked for the session.  The lock lives in
 * this process's memory, so it dies with the connection or the daemon,
 * never outliving a crash. */
static struct {
    int64_t *ids;
    size_t n, cap;
} pop3_locks;

static int pop3_lock_take(int64_t id)
{
    for (size_t i = 0; i < pop3_locks.n; i++)
        if (pop3_locks.ids[i] == id)
            return -1;
    if (pop3_locks.n == pop3_locks.cap) {
        size_t cap = pop3_locks.cap ? pop3_locks.cap * 2 : 16;
        int64_t *p = realloc(pop3_locks.ids, cap * sizeof *p);
        if (!p)
            return -1;
        pop3_locks.ids = p;
        pop3_locks.cap = cap;
    }
    pop3_locks.ids[pop3_locks.n++] = id;
    return 0;
}

static void pop3_lock_release(int64_t id)
{
    for (size_t i = 0; i < pop3_locks.n; i++)
        if (pop3_locks.ids[i] == id) {
            pop3_locks.ids[i] = pop3_locks.ids[--pop3_locks.n];
            break;
        }
    if (!pop3_locks.n) {
        free(pop3_locks.ids);
        pop3_locks.ids = NULL;
        pop3_locks.cap = 0;
    }
}

/* ------------------------------------------------------------ helpers */

/* RFC 1939 3: AUTHORIZATION -> TRANSACTION -> UPDATE, every change here. */
static void pop3_enter(struct pop3 *s, enum pop3_state to)
{
    int from = 0, bit = 0;
    assert(to == POP3_AUTHORIZATION || to == POP3_TRANSACTION || to == POP3_UPDATE);
    while (s->state >> (from + 1))
        from++;
    while (to >> (bit + 1))
        bit++;
    if (s->state != (unsigned)to)
        log_debug("%s: pop3 %s -> %s", s->c->peer_ip, s->state ? pop3_state_names[from] : "NEW",
                  pop3_state_names[bit]);
    s->state = (unsigned)to;
}

static void pop3_reply(struct pop3 *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void pop3_reply(struct pop3 *s, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 3)
        n = (int)(sizeof buf - 3);
    log_debug("%s: pop3 >>> %.*s", s->c->peer_ip, n, buf);     /* log.level = debug: the wire */
    buf[n++] = '\r';
    buf[n++] = '\n';
    /* POP3_REPLY_ROOM was checked before the command ran. */
    if (conn_write(s->c, buf, (size_t)n) < 0)
        log_warn("pop3: reply dropped for %s: output buffer full", s->c->peer_ip);
}

/* A name from the wire, made safe for a log line. */
static void pop3_safe_name(const char *in, char *out, size_t n)
{
    size_t i;
    for (i = 0; in[i] && i + 1 < n; i++)
        out[i] = isprint((unsigned char)in[i]) && in[i] != ' ' ? in[i] : '?';
    out[i] = 0;
}

static int pop3_cleartext_ok(const struct pop3 *s)
{
    /* RFC 2595 2.4 spirit: no passwords in the clear across a network
     * unless the administrator says so.  Loopback never leaves the host;
     * under TLS (STLS) the password travels encrypted. */
    return conf->allow_cleartext_auth || s->c->peer_loopback || tls_active(s->c);
}

/* Strict decimal: digits only, no sign, no spaces, fits in max. */
static int pop3_parse_num(const char *p, int64_t max, int64_t *out)
{
    int64_t v = 0;
    if (!*p)
        return -1;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if (v > (max - (*p - '0')) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return 0;
}

/* A message number of the maildrop, not marked deleted; replies -ERR
 * itself when there is none. */
static int pop3_msg_arg(struct pop3 *s, const char *arg, size_t *idx)
{
    int64_t v;
    if (pop3_parse_num(arg, INT32_MAX, &v) || v < 1) {
        pop3_reply(s, "-ERR invalid message number");
        return -1;
    }
    if ((uint64_t)v > s->n) {
        pop3_reply(s, "-ERR no such message, only %zu in maildrop", s->n);
        return -1;
    }
    if (s->msgs[v - 1].deleted) {
        pop3_reply(s, "-ERR message %lld already deleted", (long long)v);
        return -1;
    }
    *idx = (size_t)v - 1;
    return 0;
}

static void pop3_maildrop_totals(const struct pop3 *s, size_t *count, int64_t *octets)
{
    *count = 0;
    *octets = 0;
    for (size_t i = 0; i < s->n; i++)
        if (!s->msgs[i].deleted) {
            (*count)++;
            *octets += s->msgs[i].size;
        }
}

/* Lets pipelined input that waited during a pause be handled. */
static void pop3_resume(struct pop3 *s)
{
    struct conn *c = s->c;
    conn_pause(c, 0);
    /* A client that sent its last command and closed its side is done. */
    if (!c->dead && c->eof && !c->in_len)
        conn_close(c);
}

/* ---------------------------------------------------------- streaming */

static int pop3_stream_finish_msg(struct pop3 *s)
{
    struct pop3_stream *st = &s->st;

    /* RFC 1939 3: the terminating "." must start a line. */
    if (!st->bol && conn_write(s->c, "\r\n", 2) < 0)
        return -1;
    if (conn_write(s->c, ".\r\n", 3) < 0)
        return -1;
    if (st->lines_left < 0 && st->sent != st->expect)
        log_warn("pop3: message %zu of %s: sent %lld octets, listed %lld", st->msgno + 1,
                 s->user, (long long)st->sent, (long long)st->expect);
    if (st->reader_open)
        store_reader_close(&st->r);
    st->reader_open = 0;
    return 0;
}

/* Next piece of the message as stored (prefix, then the body): returns
 * bytes read, 0 at the end, <0 on error. */
static ssize_t pop3_stream_source(struct pop3_stream *st, unsigned char *buf, size_t n)
{
    if (st->prefix_off < st->prefix_len) {
        size_t k = st->prefix_len - st->prefix_off;
        if (k > n)
            k = n;
        memcpy(buf, st->prefix + st->prefix_off, k);
        st->prefix_off += k;
        return (ssize_t)k;
    }
    return store_reader_read(&st->r, buf, n);
}

/* Byte-stuffs raw[0..n) into enc (RFC 1939 3: a line starting with "."
 * gets one more).  Counts TOP's body lines; *stop when TOP has sent what
 * was asked.  Returns the encoded length. */
static size_t pop3_stream_encode(struct pop3_stream *st, const unsigned char *raw, size_t n,
                                 unsigned char *enc, int *stop)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char b = raw[i];
        if (st->bol && b == '.')
            enc[o++] = '.';
        enc[o++] = b;
        st->sent++;
        if (b != '\n') {
            st->bol = 0;
            st->line_len++;
            st->last = b;
            continue;
        }
        st->bol = 1;
        if (st->in_header) {
            /* RFC 5322 2.1: the first empty line ends the header. */
            if (st->line_len == 0 || (st->line_len == 1 && st->last == '\r')) {
                st->in_header = 0;
                if (st->lines_left == 0)
                    *stop = 1;
            }
        } else if (st->lines_left > 0 && --st->lines_left == 0) {
            *stop = 1;
        }
        st->line_len = 0;
        st->last = b;
        if (*stop)
            break;
    }
    return o;
}

/* 1 when the message is complete, 0 when the buffer is full, -1 when the
 * connection was aborted (the session is gone). */
static int pop3_stream_msg(struct pop3 *s)
{
    static unsigned char raw[POP3_PIECE], enc[2 * POP3_PIECE];
    struct pop3_stream *st = &s->st;
    struct conn *c = s->c;

    for (;;) {
        size_t space = conn_out_space(c), want;
        int stop = 0;
        ssize_t r;

        /* Room for a piece fully stuffed plus CRLF "." CRLF. */
        if (space < 64)
            return 0;
        want = (space - 8) / 2;
        if (want > sizeof raw)
            want = sizeof raw;
        r = pop3_stream_source(st, raw, want);
        if (r < 0) {
            /* The +OK is out and part of the message with it: the only
             * honest signal left is to drop the connection, so that the
             * client sees no terminating "." and keeps the message. */
            log_err("pop3: cannot read message %zu (uid %lld) of %s, closing the connection",
                    st->msgno + 1, (long long)s->msgs[st->msgno].uid, s->user);
            conn_abort(c);
            return -1;
        }
        if (r == 0)
            return pop3_stream_finish_msg(s) ? -1 : 1;
        size_t o = pop3_stream_encode(st, raw, (size_t)r, enc, &stop);
        if (conn_write(c, enc, o) < 0)
            return -1;
        if (stop)
            return pop3_stream_finish_msg(s) ? -1 : 1;
    }
}

static int pop3_stream_list(struct pop3 *s)
{
    struct pop3_stream *st = &s->st;
    struct conn *c = s->c;

    for (; st->next < s->n; st->next++) {
        const struct pop3_msg *m = &s->msgs[st->next];
        if (m->deleted)
            continue;
        if (conn_out_space(c) < 64)
            return 0;
        if (st->kind == STREAM_LIST)
            conn_printf(c, "%zu %lld\r\n", st->next + 1, (long long)m->size);
        else
            conn_printf(c, "%zu %lld\r\n", st->next + 1, (long long)m->uid);
    }
    if (conn_out_space(c) < 3)
        return 0;
    conn_write(c, ".\r\n", 3);
    return 1;
}

static int pop3_stream_pump(struct pop3 *s)
{
    return s->st.kind == STREAM_MSG ? pop3_stream_msg(s) : pop3_stream_list(s);
}

/* Sends what fits now; the rest follows from on_drain with input paused. */
static void pop3_stream_start(struct pop3 *s)
{
    struct conn *c = s->c;
    int r = pop3_stream_pump(s);
    if (r < 0)
        return;
    if (r == 0) {
        s->busy = BUSY_STREAM;
        c->want_drain = 1;
        conn_pause(c, 1);
    }
}

static void pop3_drain(struct conn *c)
{
    struct pop3 *s = c->ctx;
    int r;

    if (!s || s->busy != BUSY_STREAM) {
        c->want_drain = 0;
        return;
    }
    /* A slow link moving a big message is not idle. */
    conn_set_timeout(c, conf->pop3_timeout * 1000);
    r = pop3_stream_pump(s);
    if (r <= 0)
        return;
    c->want_drain = 0;
    s->busy = BUSY_NONE;
    pop3_resume(s);
}

/* -------------------------------------------------------------- login */

static int pop3_add_msg(void *arg, const struct store_mbox_msg *m)
{
    struct pop3 *s = arg;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct pop3_msg *p = realloc(s->msgs, cap * sizeof *p);
        if (!p) {
            s->list_err = 1;
            return -1;
        }
        s->msgs = p;
        s->cap = cap;
    }
    s->msgs[s->n].uid = m->uid;
    s->msgs[s->n].size = m->size;
    s->msgs[s->n].deleted = 0;
    s->n++;
    return 0;
}

static void pop3_login(struct pop3 *s, const struct store_user *u, const char *mech)
{
    size_t count;
    int64_t octets;

    /* RFC 2449 8.1.1: IN-USE tells the client that waiting may help. */
    if (pop3_lock_take(u->id)) {
        log_info("pop3: %s: mailbox of %s in use by another session", s->c->peer_ip, u->name);
        pop3_reply(s, "-ERR [IN-USE] mailbox locked by another session");
        return;
    }
    s->n = 0;
    s->list_err = 0;
    if (store_mbox_list(u->id, pop3_add_msg, s) || s->list_err) {
        pop3_lock_release(u->id);
        free(s->msgs);
        s->msgs = NULL;
        s->n = s->cap = 0;
        log_err("pop3: %s: cannot open the mailbox of %s", s->c->peer_ip, u->name);
        pop3_reply(s, "-ERR [SYS/TEMP] cannot open the mailbox, try again later");
        return;
    }
    s->locked = 1;
    s->user_id = u->id;
    util_strlcpy(s->user, u->name, sizeof s->user);
    pop3_enter(s, POP3_TRANSACTION);
    pop3_maildrop_totals(s, &count, &octets);
    log_info("pop3: login user=%s ip=%s mech=%s messages=%zu octets=%lld", s->user,
             s->c->peer_ip, mech, count, (long long)octets);
    pop3_reply(s, "+OK %s has %zu messages (%lld octets)", s->user, count, (long long)octets);
}

static void pop3_delay_done(void *arg)
{
    struct pop3 *s = arg;

    s->busy = BUSY_NONE;
    /* RFC 3206 4: [AUTH], whether the name or the password was wrong, so
     * the reply does not tell which names exist. */
    pop3_reply(s, "-ERR [AUTH] invalid user name or password");
    if (conf->auth_max_failures > 0 && s->failures >= conf->auth_max_failures) {
        log_warn("pop3: %s: %d failed logins, closing the connection", s->c->peer_ip, s->failures);
        conn_close(s->c);
        return;
    }
    pop3_resume(s);
}

/* Every failed login waits longer before its answer; input waits too, so
 * pipelining guesses gains nothing. */
static void pop3_auth_failed(struct pop3 *s, const char *name, const char *mech)
{
    char safe[USER_MAX + 1];

    s->failures++;
    limit_auth_failed(s->c, name);
    pop3_safe_name(name, safe, sizeof safe);
    log_warn("pop3: authentication failed user=%s ip=%s mech=%s (failure %d)", safe,
             s->c->peer_ip, mech, s->failures);
    s->busy = BUSY_DELAY;
    conn_pause(s->c, 1);
    timer_set(&s->delay, conf->auth_fail_delay * 1000 * s->failures, pop3_delay_done, s);
}

/* ----------------------------------------------------------- commands */

/* The failure counter of the client's address, shared with SMTP AUTH:
 * past limit.auth_failures_per_ip, no more logins from it (1: refused and
 * closing). */
static int pop3_address_blocked(struct pop3 *s)
{
    if (!limit_auth_blocked(s->c))
        return 0;
    log_warn("pop3: %s: login refused: too many failures from this address", s->c->peer_ip);
    pop3_reply(s, "-ERR [SYS/TEMP] too many failed logins from your address, try later");
    conn_close(s->c);
    return 1;
}

static void pop3_cmd_user(struct pop3 *s, char *arg)
{
    if (!pop3_cleartext_ok(s)) {
        pop3_reply(s, "-ERR [AUTH] cleartext authentication disabled");
        return;
    }
    if (!*arg) {
        pop3_reply(s, "-ERR USER needs a name");
        return;
    }
    if (pop3_address_blocked(s))
        return;
    s->have_user = 1;
    s->pending_bad = util_strlcpy(s->pending, arg, sizeof s->pending) >= sizeof s->pending;
    /* Names are stored in lower case, as SASL looks them up. */
    util_lower(s->pending);
    /* RFC 1939 7: the same answer for every name; PASS decides. */
    pop3_reply(s, "+OK send PASS");
}

static void pop3_cmd_pass(struct pop3 *s, char *arg)
{
    struct store_user u;
    int ok;

    if (!pop3_cleartext_ok(s)) {
        pop3_reply(s, "-ERR [AUTH] cleartext authentication disabled");
        return;
    }
    if (!s->have_user) {
        pop3_reply(s, "-ERR send USER first");
        return;
    }
    s->have_user = 0;
    if (pop3_address_blocked(s))
        return;
    memset(&u, 0, sizeof u);
    ok = auth_login(s->pending, !s->pending_bad, arg, &u);
    if (ok > 0)
        pop3_login(s, &u, "USER");
    else if (!ok)
        pop3_auth_failed(s, s->pending, "USER");
    else
        pop3_reply(s, "-ERR [SYS/TEMP] cannot check the password now, try again later");
    sodium_memzero(&u, sizeof u);
}

static void pop3_sasl_result(struct pop3 *s, int r, const char *out)
{
    struct store_user u;
    int rc;

    s->in_sasl = 0;
    switch (r) {
    case AUTH_CONTINUE:
        /* RFC 5034 4: "+" SP base64 challenge. */
        s->in_sasl = 1;
        pop3_reply(s, "+ %s", out);
        return;
    case AUTH_OK:
        memset(&u, 0, sizeof u);
        rc = auth_sasl_account(s->sasl.user, &u);
        if (rc > 0)
            pop3_login(s, &u, s->mech);
        else if (!rc)
            pop3_auth_failed(s, s->sasl.user, s->mech);
        else
            pop3_reply(s, "-ERR [SYS/TEMP] cannot open the mailbox, try again later");
        sodium_memzero(&u, sizeof u);
        break;
    case AUTH_FAIL:
        pop3_auth_failed(s, s->sasl.user, s->mech);
        break;
    case AUTH_CANCEL:
        /* RFC 5034 4: "*" cancels; the server answers -ERR. */
        pop3_reply(s, "-ERR authentication cancelled");
        break;
    case AUTH_BADMECH:
        pop3_reply(s, "-ERR unsupported authentication mechanism");
        break;
    default:
        pop3_reply(s, "-ERR malformed authentication exchange");
        break;
    }
    sodium_memzero(&s->sasl, sizeof s->sasl);
}

static void pop3_cmd_auth(struct pop3 *s, char *arg)
{
    char out[512], *initial;
    const char *mechs = auth_mechs(pop3_cleartext_ok(s));
    int r;

    if (!*arg) {
        /* RFC 1734 clients (Outlook among them) send a bare AUTH to learn
         * the mechanisms; answer as RFC 1734 servers did. */
        pop3_reply(s, "+OK mechanisms follow");
        for (const char *p = mechs; *p;) {
            while (*p == ' ')
                p++;
            size_t k = strcspn(p, " ");
            if (k)
                pop3_reply(s, "%.*s", (int)k, p);
            p += k;
        }
        pop3_reply(s, ".");
        return;
    }
    initial = strchr(arg, ' ');
    if (initial) {
        *initial++ = 0;
        while (*initial == ' ')
            initial++;
        if (!*initial)
            initial = NULL;
    }
    if (strlen(arg) >= sizeof s->mech) {
        pop3_reply(s, "-ERR unsupported authentication mechanism");
        return;
    }
    if (pop3_address_blocked(s))
        return;
    util_strlcpy(s->mech, arg, sizeof s->mech);
    for (char *p = s->mech; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    if (!auth_mech_listed(mechs, s->mech)) {
        if (!pop3_cleartext_ok(s) && auth_mech_listed(auth_mechs(1), s->mech))
            pop3_reply(s, "-ERR [AUTH] cleartext authentication disabled");
        else
            pop3_reply(s, "-ERR unsupported authentication mechanism");
        return;
    }
    memset(&s->sasl, 0, sizeof s->sasl);
    out[0] = 0;
    r = auth_sasl_start(&s->sasl, s->mech, initial, out, sizeof out);
    pop3_sasl_result(s, r, out);
}

static void pop3_cmd_capa(struct pop3 *s, char *arg)
{
    const char *mechs = auth_mechs(pop3_cleartext_ok(s));

    MN_UNUSED(arg);
    /* RFC 2449 5: capabilities of the AUTHORIZATION state are announced
     * in both states.  USER only where a password may travel (RFC 2595 4). */
    pop3_reply(s, "+OK capability list follows");
    pop3_reply(s, "TOP");
    pop3_reply(s, "UIDL");
    /* RFC 2595 4: STLS is an AUTHORIZATION command, and only once. */
    if (s->state == POP3_AUTHORIZATION && tls_available() && !s->c->tls)
        pop3_reply(s, "STLS");
    if (pop3_cleartext_ok(s))
        pop3_reply(s, "USER");
    if (mechs && *mechs)
        pop3_reply(s, "SASL %s", mechs);
    pop3_reply(s, "RESP-CODES");
    pop3_reply(s, "AUTH-RESP-CODE");
    pop3_reply(s, "PIPELINING");
    pop3_reply(s, "IMPLEMENTATION mailnode");
    pop3_reply(s, ".");
}

static void pop3_quit_committed(void *arg, int rc)
{
    struct pop3 *s = arg;
    struct conn *c = s->c;
    size_t count, deleted = 0;
    int64_t octets;

    s->busy = BUSY_NONE;
    pop3_maildrop_totals(s, &count, &octets);
    for (size_t i = 0; i < s->n; i++)
        deleted += s->msgs[i].deleted;
    if (rc == 0)
        log_info("pop3: logout user=%s ip=%s retrieved=%u deleted=%zu left=%zu", s->user,
                 c ? c->peer_ip : "gone", s->retrieved, deleted, count);
    else
        log_err("pop3: user=%s: deleting %zu messages failed, none deleted", s->user, deleted);
    if (!c) {
        /* The connection went while the commit was pending. */
        if (s->locked)
            pop3_lock_release(s->user_id);
        free(s->msgs);
        free(s);
        return;
    }
    if (rc == 0)
        pop3_reply(s, "+OK mailnode POP3 signing off (%zu messages left)", count);
    else
        /* RFC 1939 6: the lock is released and the connection closed
         * whether the removal succeeded or not. */
        pop3_reply(s, "-ERR [SYS/TEMP] could not delete the messages, none were deleted");
    conn_close(c);
}

static void pop3_cmd_quit(struct pop3 *s, char *arg)
{
    int64_t *uids;
    size_t k = 0;
    int err;

    MN_UNUSED(arg);
    if (s->state == POP3_AUTHORIZATION) {
        pop3_reply(s, "+OK mailnode POP3 signing off");
        conn_close(s->c);
        return;
    }
    pop3_enter(s, POP3_UPDATE);
    for (size_t i = 0; i < s->n; i++)
        k += s->msgs[i].deleted;
    if (!k) {
        pop3_quit_committed(s, 0);
        return;
    }
    uids = malloc(k * sizeof *uids);
    if (!uids) {
        pop3_quit_committed(s, STORE_ERR);
        return;
    }
    k = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->msgs[i].deleted)
            uids[k++] = s->msgs[i].uid;
    /* The deletions join this loop turn's transaction; the reply waits
     * until it is durable, so "+OK" means the messages are gone. */
    err = store_mbox_delete(s->user_id, uids, k);
    free(uids);
    if (err) {
        pop3_quit_committed(s, err);
        return;
    }
    s->busy = BUSY_COMMIT;
    conn_pause(s->c, 1);
    store_after_commit(pop3_quit_committed, s);
}

static void pop3_cmd_stls(struct pop3 *s, char *arg)
{
    struct conn *c = s->c;

    if (*arg) {
        pop3_reply(s, "-ERR STLS takes no argument");
        return;
    }
    if (c->tls) {
        /* RFC 2595 4: no second negotiation. */
        pop3_reply(s, "-ERR command not permitted when TLS active");
        return;
    }
    if (!tls_available()) {
        pop3_reply(s, "-ERR STLS not available");
        return;
    }
    if (s->have_user) {
        /* The name would have been sent in the clear; start over. */
        pop3_reply(s, "-ERR STLS not permitted after USER");
        return;
    }
    pop3_reply(s, "+OK Begin TLS negotiation");
    if (tls_upgrade_server(c, "pop3"))
        return;
    s->busy = BUSY_TLS;
}

/* The handshake is over.  On failure the loop closes the connection. */
static void pop3_tls(struct conn *c, int err)
{
    struct pop3 *s = c->ctx;

    if (!s)
        return;
    s->busy = BUSY_NONE;
    if (err)
        return;
    /* RFC 2595 4: the client learns the capabilities again with CAPA;
     * nothing said before the switch carries over. */
    s->have_user = 0;
    s->skipping = 0;
    conn_set_timeout(c, conf->pop3_timeout * 1000);
}

static void pop3_cmd_stat(struct pop3 *s, char *arg)
{
    size_t count;
    int64_t octets;

    if (*arg) {
        pop3_reply(s, "-ERR STAT takes no argument");
        return;
    }
    pop3_maildrop_totals(s, &count, &octets);
    pop3_reply(s, "+OK %zu %lld", count, (long long)octets);
}

static void pop3_cmd_list(struct pop3 *s, char *arg)
{
    size_t i, count;
    int64_t octets;

    if (*arg) {
        if (pop3_msg_arg(s, arg, &i) == 0)
            pop3_reply(s, "+OK %zu %lld", i + 1, (long long)s->msgs[i].size);
        return;
    }
    pop3_maildrop_totals(s, &count, &octets);
    pop3_reply(s, "+OK %zu messages (%lld octets)", count, (long long)octets);
    memset(&s->st, 0, sizeof s->st);
    s->st.kind = STREAM_LIST;
    pop3_stream_start(s);
}

static void pop3_cmd_uidl(struct pop3 *s, char *arg)
{
    size_t i;

    /* RFC 1939 7: the unique-id is the uid in decimal; the store never
     * hands the same uid out twice, across restarts too. */
    if (*arg) {
        if (pop3_msg_arg(s, arg, &i) == 0)
            pop3_reply(s, "+OK %zu %lld", i + 1, (long long)s->msgs[i].uid);
        return;
    }
    pop3_reply(s, "+OK unique-id listing follows");
    memset(&s->st, 0, sizeof s->st);
    s->st.kind = STREAM_UIDL;
    pop3_stream_start(s);
}

static void pop3_send_msg(struct pop3 *s, size_t i, int64_t lines)
{
    struct store_mbox_msg m;
    struct pop3_stream *st = &s->st;
    int rc;

    rc = store_mbox_get(s->user_id, s->msgs[i].uid, &m);
    if (rc == STORE_NOTFOUND) {
        /* Removed behind our back (an administrator's export --delete). */
        pop3_reply(s, "-ERR message %zu is no longer available", i + 1);
        return;
    }
    memset(st, 0, sizeof *st);
    if (rc || store_reader_open(&st->r, m.body_id)) {
        if (!rc)
            store_reader_close(&st->r);
        log_err("pop3: cannot open message %zu (uid %lld) of %s", i + 1,
                (long long)s->msgs[i].uid, s->user);
        pop3_reply(s, "-ERR [SYS/TEMP] cannot read the message now, try again later");
        return;
    }
    st->reader_open = 1;
    st->kind = STREAM_MSG;
    st->msgno = i;
    st->prefix_len = util_strlcpy(st->prefix, m.prefix, sizeof st->prefix);
    if (st->prefix_len >= sizeof st->prefix)
        st->prefix_len = sizeof st->prefix - 1;
    st->bol = 1;
    st->in_header = 1;
    st->lines_left = lines;
    st->expect = m.size;
    if (lines < 0) {
        s->retrieved++;
        pop3_reply(s, "+OK %lld octets", (long long)m.size);
    } else {
        pop3_reply(s, "+OK top of message follows");
    }
    pop3_stream_start(s);
}

static void pop3_cmd_retr(struct pop3 *s, char *arg)
{
    size_t i;
    if (pop3_msg_arg(s, arg, &i) == 0)
        pop3_send_msg(s, i, -1);
}

static void pop3_cmd_top(struct pop3 *s, char *arg)
{
    char *sp = strchr(arg, ' ');
    int64_t lines;
    size_t i;

    if (!sp) {
        pop3_reply(s, "-ERR usage: TOP message lines");
        return;
    }
    *sp++ = 0;
    while (*sp == ' ')
        sp++;
    if (pop3_parse_num(sp, INT64_MAX, &lines)) {
        pop3_reply(s, "-ERR invalid line count");
        return;
    }
    if (pop3_msg_arg(s, arg, &i) == 0)
        pop3_send_msg(s, i, lines);
}

static void pop3_cmd_dele(struct pop3 *s, char *arg)
{
    size_t i;
    if (pop3_msg_arg(s, arg, &i))
        return;
    s->msgs[i].deleted = 1;
    pop3_reply(s, "+OK message %zu deleted", i + 1);
}

static void pop3_cmd_noop(struct pop3 *s, char *arg)
{
    MN_UNUSED(arg);
    pop3_reply(s, "+OK");
}

static void pop3_cmd_rset(struct pop3 *s, char *arg)
{
    size_t count;
    int64_t octets;

    MN_UNUSED(arg);
    for (size_t i = 0; i < s->n; i++)
        s->msgs[i].deleted = 0;
    pop3_maildrop_totals(s, &count, &octets);
    pop3_reply(s, "+OK maildrop has %zu messages (%lld octets)", count, (long long)octets);
}

#define A POP3_AUTHORIZATION
#define T POP3_TRANSACTION

/* APOP is not offered: it needs the password stored in the clear. */
static const struct pop3_cmd pop3_cmds[] = {
    { "STLS", A, pop3_cmd_stls },
    { "USER", A, pop3_cmd_user },
    { "PASS", A, pop3_cmd_pass },
    { "AUTH", A, pop3_cmd_auth },
    { "CAPA", A | T, pop3_cmd_capa },
    { "QUIT", A | T, pop3_cmd_quit },
    { "STAT", T, pop3_cmd_stat },
    { "LIST", T, pop3_cmd_list },
    { "RETR", T, pop3_cmd_retr },
    { "DELE", T, pop3_cmd_dele },
    { "NOOP", T, pop3_cmd_noop },
    { "RSET", T, pop3_cmd_rset },
    { "TOP", T, pop3_cmd_top },
    { "UIDL", T, pop3_cmd_uidl },
};

#undef A
#undef T

/* ------------------------------------------------------------ session */

static void pop3_handle_line(struct pop3 *s, char *line, size_t len)
{
    char out[512];
    char *arg;
    size_t vlen;

    if (s->in_sasl) {
        log_debug("%s: pop3 <<< ****", s->c->peer_ip);         /* a SASL response */
        out[0] = 0;
        pop3_sasl_result(s, auth_sasl_step(&s->sasl, line, out, sizeof out), out);
        return;
    }
    if (memchr(line, 0, len)) {
        pop3_reply(s, "-ERR invalid command");
        return;
    }
    vlen = strcspn(line, " ");
    /* The wire, never a credential: PASS and AUTH keep their first word. */
    if ((vlen == 4 && !strncasecmp(line, "PASS", 4)) || (vlen == 4 && !strncasecmp(line, "AUTH", 4)))
        log_debug("%s: pop3 <<< %.*s%s", s->c->peer_ip,
                  (int)(vlen == 4 && line[vlen] && !strncasecmp(line, "AUTH", 4)
                            ? vlen + 1 + strcspn(line + vlen + 1, " ") : vlen),
                  line, line[vlen] ? " ****" : "");
    else
        log_debug("%s: pop3 <<< %s", s->c->peer_ip, line);
    arg = line + vlen;
    if (*arg) {
        *arg++ = 0;
        /* RFC 1939 7: PASS has one argument, spaces and all. */
        if (strcasecmp(line, "PASS") != 0) {
            while (*arg == ' ')
                arg++;
            for (char *e = arg + strlen(arg); e > arg && e[-1] == ' ';)
                *--e = 0;
        }
    }
    for (size_t i = 0; i < MN_NELEM(pop3_cmds); i++) {
        const struct pop3_cmd *cmd = &pop3_cmds[i];
        if (strcasecmp(line, cmd->verb) != 0)
            continue;
        /* RFC 1939 3: a command in the wrong state is answered -ERR, and
         * nothing changes. */
        if (!(cmd->allowed & s->state)) {
            pop3_reply(s, "-ERR %s not valid in the %s state", cmd->verb,
                       s->state == POP3_AUTHORIZATION ? "AUTHORIZATION" : "TRANSACTION");
            return;
        }
        cmd->run(s, arg);
        return;
    }
    pop3_reply(s, "-ERR unknown command");
}

/* The longest line acceptable now: SASL responses may be longer than
 * commands (RFC 5034 4). */
static size_t pop3_line_limit(const struct pop3 *s)
{
    const struct conn *c = s->c;
    if (s->in_sasl)
        return POP3_SASL_LINE_MAX;
    if (c->in_len >= 5 && !strncasecmp((const char *)c->in, "AUTH ", 5))
        return POP3_SASL_LINE_MAX;
    return POP3_LINE_MAX;
}

static void pop3_too_long(struct pop3 *s)
{
    if (s->in_sasl) {
        s->in_sasl = 0;
        sodium_memzero(&s->sasl, sizeof s->sasl);
    }
    pop3_reply(s, "-ERR line too long");
}

static void pop3_input(struct conn *c)
{
    struct pop3 *s = c->ctx;
    char line[POP3_SASL_LINE_MAX + 1];

    while (!c->dead && !c->closing && c->in_len && !s->busy) {
        unsigned char *lf;
        size_t len, limit;

        if (conn_out_space(c) < POP3_REPLY_ROOM)
            break;                      /* resumed when the client reads */
        lf = memchr(c->in, '\n', c->in_len);
        if (s->skipping) {
            if (!lf) {
                conn_consume(c, c->in_len);
                break;
            }
            conn_consume(c, (size_t)(lf - c->in) + 1);
            s->skipping = 0;
            continue;
        }
        limit = pop3_line_limit(s);
        if (!lf) {
            if (c->in_len >= limit) {
                pop3_too_long(s);
                conn_consume(c, c->in_len);
                s->skipping = 1;
            }
            break;
        }
        len = (size_t)(lf - c->in) + 1;
        if (len > limit) {
            pop3_too_long(s);
            conn_consume(c, len);
            continue;
        }
        memcpy(line, c->in, len);
        conn_consume(c, len);
        /* CRLF ends a line; a bare LF is taken as one too. */
        len--;
        if (len && line[len - 1] == '\r')
            len--;
        line[len] = 0;
        conn_set_timeout(c, conf->pop3_timeout * 1000);
        pop3_handle_line(s, line, len);
        /* Passwords do not linger on the stack. */
        sodium_memzero(line, len);
    }
}

static void pop3_timeout(struct conn *c)
{
    struct pop3 *s = c->ctx;

    if (s && s->busy == BUSY_TLS) {
        /* A handshake that stalls: nothing can be said in the clear. */
        log_info("pop3: %s: TLS handshake timed out", c->peer_ip);
        conn_abort(c);
        return;
    }
    if (s && s->busy == BUSY_COMMIT) {
        /* The reply is due at the end of this turn. */
        conn_set_timeout(c, conf->pop3_timeout * 1000);
        return;
    }
    if (s && s->busy == BUSY_STREAM) {
        /* Mid-reply there is no room for another line: just go. */
        log_info("pop3: %s: no progress sending to a client for %llds, closing", c->peer_ip,
                 (long long)conf->pop3_timeout);
        conn_abort(c);
        return;
    }
    if (s)
        timer_cancel(&s->delay);
    /* RFC 1939 3: autologout timer; UPDATE is not entered, nothing is
     * deleted. */
    if (conn_out_space(c) > 64)
        conn_printf(c, "-ERR autologout; idle for too long\r\n");
    conn_close(c);
}

static void pop3_close(struct conn *c)
{
    struct pop3 *s = c->ctx;

    if (!s)
        return;
    c->ctx = NULL;
    timer_cancel(&s->delay);
    if (s->st.reader_open)
        store_reader_close(&s->st.r);
    s->st.reader_open = 0;
    sodium_memzero(&s->sasl, sizeof s->sasl);
    if (s->busy == BUSY_COMMIT) {
        /* pop3_quit_committed frees it, and releases the lock only once the
         * deletions are durable or failed. */
        s->c = NULL;
        return;
    }
    if (s->locked)
        pop3_lock_release(s->user_id);
    free(s->msgs);
    free(s);
}

void pop3_accept(struct conn *c)
{
    struct pop3 *s = calloc(1, sizeof *s);

    if (!s) {
        log_err("pop3: out of memory for a session from %s", c->peer_ip);
        conn_abort(c);
        return;
    }
    s->c = c;
    pop3_enter(s, POP3_AUTHORIZATION);
    s->delay.idx = -1;
    c->ctx = s;
    c->ops = &pop3_ops;
    conn_set_timeout(c, conf->pop3_timeout * 1000);
    log_debug("pop3: connection from %s", c->peer_ip);
    pop3_reply(s, "+OK mailnode POP3 ready");
}
