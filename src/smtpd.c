/*
 * smtpd.c: the ESMTP server (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
 * ENHANCEDSTATUSCODES, CHUNKING, DSN and AUTH), one state machine per
 * connection on the SMTP and submission listeners.
 *
 * A command table maps each verb to the states where it is valid; the
 * dispatcher answers 503 for the wrong state in one place.  Message data
 * streams through the DATA decoder (mime.c) into a store body; the 250
 * after the data is sent only once the store's group commit made the
 * message durable, and input is paused until then, so pipelined commands
 * are answered in order.
 */
#include "internal.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <string.h>

enum smtpd_state {
    S_INIT = 1 << 0,    /* connected, no HELO/EHLO yet */
    S_READY = 1 << 1,   /* greeted, no transaction */
    S_MAIL = 1 << 2,    /* MAIL accepted, no recipient yet */
    S_RCPT = 1 << 3,    /* at least one recipient */
    S_BDAT = 1 << 4,    /* between BDAT chunks */
};
#define S_ANY (S_INIT | S_READY | S_MAIL | S_RCPT | S_BDAT)
static const char *const smtpd_state_names[] = { "INIT", "READY", "MAIL", "RCPT", "BDAT" };

enum smtpd_input {
    IN_COMMAND,         /* command lines */
    IN_DATA,            /* DATA text up to CRLF.CRLF */
    IN_BDAT,            /* counted BDAT octets */
    IN_SASL,            /* SASL continuation line */
    IN_SKIP,            /* rest of an over-long line */
};

/* RFC 4954 4: an AUTH line and its responses may reach 12288 octets. */
#define SMTPD_SASL_LINE 12288
#define SMTPD_MAX_ERRORS 20

struct smtpd;
static struct smtpd *all_sessions;      /* for the group commit's busy hint */

struct smtpd {
    struct conn *c;
    int state;
    int input;
    int esmtp;
    int waiting;                        /* for the commit of a message */
    int orphan;                         /* connection gone while waiting */
    int errors;
    char helo[SMTP_DOMAIN_MAX + 1];
    /* the transaction */
    char qid[QID_LEN + 1];
    char sender[ADDR_MAX];
    char envid[101];                    /* RFC 3461 4.4: at most 100 characters */
    int ret_full;
    int body_8bit;
    int64_t size_declared;              /* MAIL SIZE= (RFC 1870), 0 if none */
    int nrcpt_cmds;                     /* RCPT commands that added a recipient */
    struct rcpts rcpts;                 /* distinct routes after aliases */
    struct store_body *body;
    struct mime_data md;
    int data_error;                     /* reply code decided while reading */
    int64_t bdat_left;
    int bdat_last;
    int bdat_discard;                   /* chunk read only to stay in sync */
    int resumable;                      /* XRESUME transaction (resume.c) */
    struct resume *rs;                  /* its partial; NULL if taken over */
    /* AUTH */
    char auth_user[USER_MAX + 1];
    struct auth_sasl sasl;
    int auth_failures;
    char pending[128];                  /* reply held back by the failure delay */
    int pending_close;
    struct timer timer;
    int odmr;                           /* on the ODMR listener (RFC 2645) */
    int detached;                       /* the connection turned around (ATRN) */
    int etrns;
    int accepted;                       /* messages committed in this session */
    int quit_seen;
    int local;                          /* `sendmail -bs`: a local user on stdin/stdout */
    void (*attach_done)(void *arg, int accepted, const char *error);
    void *attach_arg;
    struct smtpd *next, *prev;
};

/* Sessions whose message may still join the current group commit: inside
 * a transaction, not yet waiting for their own acknowledgement. */
int smtpd_busy(void)
{
    int n = 0;
    for (struct smtpd *s = all_sessions; s; s = s->next)
        if (!s->waiting && (s->state & (S_MAIL | S_RCPT | S_BDAT)))
            n++;
    return n;
}

static void smtpd_input(struct conn *c);
static void bdat_chunk_done(struct smtpd *s);
static void reply_refused(struct smtpd *s, int code);

/* ---------------------------------------------------------------- replies */

static void reply(struct smtpd *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct smtpd *s, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 3)
        n = (int)sizeof line - 3;
    log_debug("%s: smtpd >>> %.*s", s->c->peer_ip, n, line);    /* log.level = debug: the wire */
    line[n++] = '\r';
    line[n++] = '\n';
    if (conn_write(s->c, line, (size_t)n))
        log_warn("%s: reply dropped, output full", s->c->peer_ip);
}

/* Every change of state goes through here: one place to trace a session
 * (log.level = debug) and to check that it is one of the states. */
static void smtpd_enter(struct smtpd *s, enum smtpd_state to)
{
    int from = 0, bit = 0;
    assert(to && !(to & (to - 1)) && (to & S_ANY));
    while (s->state >> (from + 1))
        from++;
    while (to >> (bit + 1))
        bit++;
    if (s->state != (int)to)
        log_debug("%s: smtpd %s -> %s", s->c->peer_ip, s->state ? smtpd_state_names[from] : "NEW",
                  smtpd_state_names[bit]);
    s->state = (int)to;
}

static void close_with(struct smtpd *s, const char *text)
{
    reply(s, "%s", text);
    s->input = IN_COMMAND;
    conn_close(s->c);
}

/* ------------------------------------------------------------ transaction */

static void txn_reset(struct smtpd *s)
{
    if (s->body) {
        store_body_free(s->body);
        s->body = NULL;
    }
    s->qid[0] = s->sender[0] = s->envid[0] = '\0';
    s->ret_full = s->body_8bit = 0;
    s->size_declared = 0;
    s->nrcpt_cmds = 0;
    rcpts_clear(&s->rcpts);
    s->data_error = 0;
    s->bdat_left = 0;
    s->bdat_last = s->bdat_discard = 0;
    resume_end(s->rs, 1);               /* what came is kept for the next attempt */
    s->resumable = 0;
    if (s->state & (S_MAIL | S_RCPT | S_BDAT))
        smtpd_enter(s, S_READY);
}

static void smtpd_free(struct smtpd *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else if (all_sessions == s)
        all_sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    timer_cancel(&s->timer);
    resume_end(s->rs, 1);
    if (s->body)
        store_body_free(s->body);
    rcpts_clear(&s->rcpts);
    free(s);
}

/* ------------------------------------------------------- ESMTP parameters */

/* RFC 3461 4: xtext is printable ASCII except "+" and "=", with "+XX"
 * hex escapes. */
static int xtext_valid(const char *s)
{
    for (; *s; s++) {
        if (*s == '+') {
            if (!isxdigit((unsigned char)s[1]) || !isxdigit((unsigned char)s[2]))
                return 0;
            s += 2;
        } else if (*s < 33 || *s > 126 || *s == '=') {
            return 0;
        }
    }
    return 1;
}

struct esmtp_param {
    char *key;
    char *value;                        /* NULL when there was no "=" */
};

/* Splits "KEY=VALUE KEY2" into at most max parameters (in place). */
static int split_params(char *s, struct esmtp_param *p, int max)
{
    int n = 0;
    while (*s) {
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        if (n == max)
            return -1;
        p[n].key = s;
        p[n].value = NULL;
        while (*s && *s != ' ' && *s != '=')
            s++;
        if (*s == '=') {
            *s++ = '\0';
            p[n].value = s;
            while (*s && *s != ' ')
                s++;
        }
        if (*s)
            *s++ = '\0';
        if (!*p[n].key)
            return -1;
        n++;
    }
    return n;
}

/* Parses the path after "FROM:" / "TO:": RFC 5321 wants no space after
 * the colon, but enough clients send one that it is tolerated. */
static int parse_path_arg(const char *arg, const char *prefix, int allow_null, struct addr *a,
                          const char **rest)
{
    size_t plen = strlen(prefix), used;
    int rc;

    if (strncasecmp(arg, prefix, plen))
        return ADDR_ESYNTAX;
    arg += plen;
    if (*arg == ' ')
        arg++;
    rc = addr_parse_path(arg, strlen(arg), allow_null, a, &used);
    if (rc)
        return rc;
    arg += used;
    if (*arg && *arg != ' ')
        return ADDR_ESYNTAX;
    *rest = arg;
    return 0;
}

static const char *addr_error_text(int rc)
{
    switch (rc) {
    case ADDR_ELOCAL:
        return "553 5.1.3 Local part of the address is longer than 64 octets";
    case ADDR_EDOMAIN:
        return "553 5.1.2 Bad domain in the address";
    case ADDR_EPATH:
        return "501 5.1.3 Path too long";
    default:
        return "501 5.1.7 Bad address syntax";
    }
}

/* --------------------------------------------------------------- commands */

static int cleartext_auth_ok(const struct smtpd *s)
{
    return s->c->peer_loopback || conf->allow_cleartext_auth || tls_active(s->c);
}

static int starttls_offered(const struct smtpd *s)
{
    return tls_available() && !s->c->tls;
}

/* COMPRESS DEFLATE (zio.c): only inside TLS when we can do TLS, so that
 * the order is always TLS first, then compression (RFC 4978 4). */
static int compress_offered(const struct smtpd *s)
{
    return !s->local && !zio_active(s->c) && (s->c->tls || !tls_available()) &&
           zio_allowed(NULL, s->c->peer_ip);
}

/* RFC 5321 4.1.1.1 and 4.1.3: the HELO/EHLO argument is a domain or an
 * address literal.  Letters, digits, hyphens, underscores (common in
 * Windows host names) and dots; or "[...]" of printable characters.
 * Nothing else, above all no CR, NUL or other control character: the
 * name goes into the Received field. */
static int helo_valid(const char *arg)
{
    size_t len = strlen(arg);
    if (!len || len > SMTP_DOMAIN_MAX)
        return 0;
    if (arg[0] == '[') {
        if (len < 3 || arg[len - 1] != ']')
            return 0;
        for (size_t i = 1; i + 1 < len; i++)
            if (arg[i] <= ' ' || arg[i] >= 0x7f || arg[i] == '[' || arg[i] == ']' || arg[i] == '\\')
                return 0;
        return 1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)arg[i];
        if (!isalnum(c) && c != '-' && c != '.' && c != '_')
            return 0;
    }
    return 1;
}

static void cmd_helo(struct smtpd *s, char *arg, int esmtp)
{
    if (!helo_valid(arg)) {
        reply(s, "501 5.5.4 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
        return;
    }
    txn_reset(s);
    util_strlcpy(s->helo, arg, sizeof s->helo);
    s->esmtp = esmtp;
    smtpd_enter(s, S_READY);
    if (!esmtp) {
        reply(s, "250 %s", conf->hostname);
        return;
    }
    reply(s, "250-%s Hello %s [%s]", conf->hostname, arg, s->c->peer_ip);
    if (s->odmr) {
        /* RFC 2645 5.1.1: AUTH and ATRN, CRAM-MD5 always among the mechanisms. */
        if (starttls_offered(s))
            reply(s, "250-STARTTLS");
        if (!s->auth_user[0])
            reply(s, "250-AUTH %s", auth_mechs(cleartext_auth_ok(s)));
        reply(s, "250-ATRN");
        if (compress_offered(s))
            reply(s, "250-COMPRESS DEFLATE");
        reply(s, "250-ENHANCEDSTATUSCODES");
        reply(s, "250 HELP");
        return;
    }
    reply(s, "250-PIPELINING");
    reply(s, "250-SIZE %lld", (long long)conf->message_size_limit);
    reply(s, "250-8BITMIME");
    reply(s, "250-ENHANCEDSTATUSCODES");
    reply(s, "250-CHUNKING");
    if (conf->resume)
        reply(s, "250-XRESUME");        /* resume.c: between mailnodes */
    reply(s, "250-DSN");
    if (!s->local)
        reply(s, "250-ETRN");
    if (starttls_offered(s))
        reply(s, "250-STARTTLS");
    if (compress_offered(s))
        reply(s, "250-COMPRESS DEFLATE");
    if (!s->auth_user[0])
        reply(s, "250-AUTH %s", auth_mechs(cleartext_auth_ok(s)));
    reply(s, "250 HELP");
}

/* After the 220 both directions are raw deflate streams; the session
 * state (EHLO, AUTH) is kept. */
static void cmd_compress(struct smtpd *s, char *arg)
{
    if (strcasecmp(arg, "DEFLATE")) {
        reply(s, "504 5.5.4 Unsupported compression mechanism");
        return;
    }
    if (!s->esmtp || !compress_offered(s)) {
        reply(s, zio_active(s->c) ? "503 5.5.1 Error: compression already active"
                                  : "503 5.5.1 Error: COMPRESS not available now");
        return;
    }
    reply(s, "220 2.0.0 DEFLATE active");
    if (zio_start(s->c)) {
        close_with(s, "421 4.3.0 Cannot start compression");
        return;
    }
}

static void cmd_ehlo(struct smtpd *s, char *arg) { cmd_helo(s, arg, 1); }
static void cmd_helo_only(struct smtpd *s, char *arg) { cmd_helo(s, arg, 0); }

static void cmd_mail(struct smtpd *s, char *arg)
{
    struct addr a;
    struct esmtp_param p[8];
    const char *rest, *tid = NULL;
    int rc, n;

    if (s->c->kind == LISTEN_SUBMISSION && !s->auth_user[0]) {
        /* RFC 6409 4.3: submission requires authentication. */
        reply(s, "530 5.7.0 Authentication required");
        return;
    }
    if (!s->auth_user[0] && !limit_message_ok(s->c)) {
        log_warn("[%s]: refused: message rate limit (limit.messages_per_minute)", s->c->peer_ip);
        reply(s, "421 4.7.0 Too many messages from your address, try again later");
        conn_close(s->c);
        return;
    }
    rc = parse_path_arg(arg, "FROM:", 1, &a, &rest);
    if (rc) {
        reply(s, "%s", addr_error_text(rc));
        return;
    }
    n = split_params((char *)rest, p, (int)MN_NELEM(p));
    if (n < 0) {
        reply(s, "501 5.5.4 Bad MAIL parameters");
        return;
    }
    txn_reset(s);
    for (int i = 0; i < n; i++) {
        char *k = p[i].key, *v = p[i].value;
        if (!s->esmtp) {
            reply(s, "555 5.5.4 MAIL parameters need EHLO");
            return;
        }
        if (!strcasecmp(k, "SIZE") && v) {
            char *end;
            errno = 0;
            long long size = strtoll(v, &end, 10);
            if (errno || *end || end == v || size < 0) {
                reply(s, "501 5.5.4 Bad SIZE parameter");
                return;
            }
            /* RFC 1870 6.1: refuse at MAIL what will not fit. */
            if (size > conf->message_size_limit) {
                reply(s, "552 5.3.4 Message size exceeds fixed maximum message size");
                return;
            }
            s->size_declared = size;
        } else if (!strcasecmp(k, "BODY") && v) {
            if (!strcasecmp(v, "8BITMIME"))
                s->body_8bit = 1;
            else if (strcasecmp(v, "7BIT")) {
                reply(s, "555 5.5.4 Unsupported BODY type");
                return;
            }
        } else if (!strcasecmp(k, "RET") && v) {
            if (!strcasecmp(v, "FULL"))
                s->ret_full = 1;
            else if (strcasecmp(v, "HDRS")) {
                reply(s, "501 5.5.4 Bad RET parameter");
                return;
            }
        } else if (!strcasecmp(k, "ENVID") && v) {
            if (strlen(v) > 100 || !xtext_valid(v)) {
                reply(s, "501 5.5.4 Bad ENVID parameter");
                return;
            }
            util_strlcpy(s->envid, v, sizeof s->envid);
        } else if (!strcasecmp(k, "AUTH") && v) {
            /* RFC 4954 5: accepted; we trust only our own AUTH. */
        } else if (!strcasecmp(k, "XRESUME") && v && conf->resume) {
            unsigned char h[32];
            if (resume_tid_parse(v, h)) {
                reply(s, "501 5.5.4 Bad XRESUME parameter");
                return;
            }
            tid = v;
        } else {
            reply(s, "555 5.5.4 Unsupported MAIL parameter %.64s", k);
            return;
        }
    }
    /* Like Postfix's reject_sender_login_mismatch: a submission user
     * sends as itself, its aliases or its site's domain, not as anyone. */
    if (s->c->kind == LISTEN_SUBMISSION && conf->sender_login_match && !queue_sender_owned(s->auth_user, &a)) {
        log_info("[%s]: refused: sender <%s> not owned by user %s", s->c->peer_ip, a.full, s->auth_user);
        reply(s, "553 5.7.1 <%s>: Sender address rejected: not owned by user %s", a.full, s->auth_user);
        return;
    }
    util_strlcpy(s->sender, a.full, sizeof s->sender);
    util_qid(s->qid);
    smtpd_enter(s, S_MAIL);
    if (tid) {
        int64_t held = 0;
        s->rs = resume_begin(tid, s->c, &s->rs, &held);
        s->resumable = s->rs != NULL;
        reply(s, "250 2.1.0 Ok XRESUME=%lld", (long long)held);
        return;
    }
    reply(s, "250 2.1.0 Ok");
}

static int parse_notify(const char *v)
{
    char buf[64], *items[8];
    int bits = 0;
    size_t n;

    if (util_strlcpy(buf, v, sizeof buf) >= sizeof buf)
        return -1;
    n = util_split_list(buf, items, MN_NELEM(items));
    for (size_t i = 0; i < n; i++) {
        if (!strcasecmp(items[i], "NEVER"))
            bits |= NOTIFY_NEVER;
        else if (!strcasecmp(items[i], "SUCCESS"))
            bits |= NOTIFY_SUCCESS;
        else if (!strcasecmp(items[i], "FAILURE"))
            bits |= NOTIFY_FAILURE;
        else if (!strcasecmp(items[i], "DELAY"))
            bits |= NOTIFY_DELAY;
        else
            return -1;
    }
    /* RFC 3461 4.1: NEVER stands alone. */
    if (!n || ((bits & NOTIFY_NEVER) && bits != NOTIFY_NEVER))
        return -1;
    return bits;
}

/* Distinct recipients one message may have.  A stranger (neither
 * authenticated nor in relay_networks) gets max_recipients.untrusted, so
 * that max_connections hostile sessions cannot hold more than a known
 * amount of memory (see mailnode.conf(5), max_recipients.untrusted). */
static size_t rcpt_limit(const struct smtpd *s)
{
    int64_t n = conf->max_recipients > 0 ? conf->max_recipients : 1000;
    if (!s->auth_user[0] && !conf_relay_allowed(&s->c->peer) && conf->max_recipients_untrusted > 0 &&
        conf->max_recipients_untrusted < n)
        n = conf->max_recipients_untrusted;
    return (size_t)n;
}

/* 1 if a local mailbox among the routes is over its quota (quota.c), -1
 * if that cannot be known now. */
static int rcpt_mailbox_full(const struct smtpd *s, const struct store_rcpt *routes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (routes[i].kind != ROUTE_LOCAL || rcpts_has(&s->rcpts, &routes[i]))
            continue;
        int room = quota_room(routes[i].user_id, s->size_declared);
        if (room <= 0)
            return room < 0 ? -1 : 1;
    }
    return 0;
}

static void cmd_rcpt(struct smtpd *s, char *arg)
{
    struct addr a;
    struct esmtp_param p[8];
    const char *rest;
    int rc, n, notify = 0;
    const char *orcpt = "";
    size_t nroutes, limit, cap;
    struct store_rcpt *routes = NULL;

    rc = parse_path_arg(arg, "TO:", 0, &a, &rest);
    if (rc) {
        reply(s, "%s", addr_error_text(rc));
        return;
    }
    n = split_params((char *)rest, p, (int)MN_NELEM(p));
    if (n < 0) {
        reply(s, "501 5.5.4 Bad RCPT parameters");
        return;
    }
    for (int i = 0; i < n; i++) {
        if (!s->esmtp) {
            reply(s, "555 5.5.4 RCPT parameters need EHLO");
            return;
        }
        if (!strcasecmp(p[i].key, "NOTIFY") && p[i].value) {
            if ((notify = parse_notify(p[i].value)) < 0) {
                reply(s, "501 5.5.4 Bad NOTIFY parameter");
                return;
            }
        } else if (!strcasecmp(p[i].key, "ORCPT") && p[i].value) {
            /* RFC 3461 4.2: addr-type ";" xtext */
            const char *semi = strchr(p[i].value, ';');
            if (!semi || semi == p[i].value || strlen(p[i].value) > ADDR_MAX || !xtext_valid(semi + 1)) {
                reply(s, "501 5.5.4 Bad ORCPT parameter");
                return;
            }
            orcpt = p[i].value;
        } else {
            reply(s, "555 5.5.4 Unsupported RCPT parameter %.64s", p[i].key);
            return;
        }
    }
    /* Relaying: only to our own domains, unless the client is trusted.
     * Addresses are taken literally: '%', '!' and source routes (already
     * dropped by the parser) never make a local domain relay anywhere. */
    if (!queue_domain_accepted(a.domain) && !s->auth_user[0] && !conf_relay_allowed(&s->c->peer)) {
        log_info("%s: refused: relay to <%s> from %s [%s] denied", s->qid, a.full, s->helo,
                 s->c->peer_ip);
        reply(s, "554 5.7.1 <%s>: Relay access denied", a.full);
        return;
    }
    /* Routes for this address, in a buffer that lives only for this
     * command: an alias may fan out, up to the distinct recipients still
     * allowed. */
    limit = rcpt_limit(s);
    limit = limit > s->rcpts.n ? limit - s->rcpts.n : 1;
    for (cap = limit < 8 ? limit : 8;; cap = cap * 8 < limit ? cap * 8 : limit) {
        free(routes);
        routes = malloc(cap * sizeof *routes);
        if (!routes) {
            reply(s, "452 4.3.1 Insufficient system resources");
            return;
        }
        rc = queue_route(&a, routes, cap, &nroutes);
        if (rc != QUEUE_ETOOMANY || cap >= limit)
            break;
    }
    switch (rc) {
    case 0:
        break;
    case QUEUE_EUNKNOWN:
        free(routes);
        log_info("%s: refused: <%s>: no such user", s->qid, a.full);
        reply(s, "550 5.1.1 <%s>: Recipient address rejected: User unknown", a.full);
        return;
    case QUEUE_ELOOP:
        free(routes);
        reply(s, "554 5.4.6 <%s>: Alias loop", a.full);
        return;
    case QUEUE_ETOOMANY:
        free(routes);
        reply(s, "452 4.5.3 Too many recipients");
        return;
    default:
        free(routes);
        reply(s, "451 4.3.0 <%s>: Temporary lookup failure", a.full);
        return;
    }
    /* A full mailbox is a temporary failure (RFC 3463 4.2.2): the sender
     * keeps the message and tries again; the other recipients of the
     * transaction are not affected.  An alias is refused as a whole while
     * one of its mailboxes is full, so that nobody loses a copy. */
    if ((rc = rcpt_mailbox_full(s, routes, nroutes))) {
        free(routes);
        if (rc > 0) {
            log_info("%s: refused: <%s>: mailbox full", s->qid, a.full);
            reply(s, "452 4.2.2 <%s>: Mailbox full", a.full);
        } else {
            reply(s, "451 4.3.0 <%s>: Temporary lookup failure", a.full);
        }
        return;
    }
    int fresh = 0;
    for (size_t i = 0; i < nroutes; i++)
        fresh += !rcpts_has(&s->rcpts, &routes[i]);
    if (fresh && (size_t)s->nrcpt_cmds >= rcpt_limit(s)) {
        /* RFC 5321 4.5.3.1.10: 452 and the client sends the rest later. */
        free(routes);
        reply(s, "452 4.5.3 Too many recipients");
        return;
    }
    int added = 0;
    for (size_t i = 0; i < nroutes && added >= 0; i++) {
        routes[i].notify = notify;
        util_strlcpy(routes[i].orcpt, orcpt, sizeof routes[i].orcpt);
        int r = rcpts_add(&s->rcpts, &routes[i]);
        added = r < 0 ? -1 : added + r;
    }
    free(routes);
    if (added < 0) {
        reply(s, "452 4.3.1 Insufficient system resources");
        return;
    }
    /* A duplicate (after aliases) is accepted and merged: one copy, and
     * it does not count against max_recipients. */
    if (added)
        s->nrcpt_cmds++;
    smtpd_enter(s, S_RCPT);
    reply(s, "250 2.1.5 Ok");
}

/* Writes decoded message text into the body, refusing past the size limit. */
static int body_emit(void *arg, const void *buf, size_t n)
{
    struct smtpd *s = arg;
    if (s->data_error || !s->body)
        return 0;
    if (s->body->size + (int64_t)n > conf->message_size_limit) {
        s->data_error = 552;
        store_body_free(s->body);       /* give the space back now */
        s->body = NULL;
        return 0;
    }
    if (store_body_write(s->body, buf, n))
        s->data_error = s->body->err == STORE_FULL ? 452 : 451;
    return 0;
}

/* RFC 5321 4.4: the trace header this node adds in front. */
static int start_body(struct smtpd *s)
{
    char hdr[1024], date[64];
    size_t used = 0;
    /* RFC 3848: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA. */
    const char *with = !s->esmtp ? "SMTP"
                       : s->c->tls ? (s->auth_user[0] ? "ESMTPSA" : "ESMTPS")
                                   : (s->auth_user[0] ? "ESMTPA" : "ESMTP");
    int n;

    s->body = store_body_new();
    if (!s->body)
        return -1;
    mime_data_init(&s->md);
    util_date(util_now(), date, sizeof date);
    if (s->local)
        /* No address and no SMTP AUTH: who the local user is (RFC 5321
         * 4.4 leaves the comment free; ESMTPA is for SMTP AUTH). */
        n = util_header(hdr, sizeof hdr, &used, "Received: from %s (local user %s)\r\n\tby %s (mailnode) "
                        "with %s id %s;\r\n\t%s\r\n", s->helo, s->auth_user, conf->hostname,
                        s->esmtp ? "ESMTP" : "SMTP", s->qid, date);
    else if (s->rcpts.n == 1)
        n = util_header(hdr, sizeof hdr, &used, "Received: from %s ([%s])\r\n\tby %s (mailnode) with %s id %s\r\n"
                        "\tfor <%s>; %s\r\n", s->helo, s->c->peer_ip, conf->hostname, with, s->qid,
                        rcpts_addr(&s->rcpts, 0), date);
    else
        n = util_header(hdr, sizeof hdr, &used, "Received: from %s ([%s])\r\n\tby %s (mailnode) with %s id %s;"
                        "\r\n\t%s\r\n", s->helo, s->c->peer_ip, conf->hostname, with, s->qid, date);
    if (n < 0)
        log_warn("%s: trace field refused: a value holds a line break or control character", s->qid);
    if (n < 0 || store_body_write(s->body, hdr, (size_t)n)) {
        store_body_free(s->body);
        s->body = NULL;
        return -1;
    }
    return 0;
}

static void cmd_data(struct smtpd *s, char *arg)
{
    if (*arg) {
        reply(s, "501 5.5.4 Syntax: DATA");
        return;
    }
    if (s->state == S_MAIL) {
        /* RFC 2920 3.1: every RCPT of the pipelined group failed. */
        reply(s, "554 5.5.1 Error: no valid recipients");
        return;
    }
    if (start_body(s)) {
        reply_refused(s, 451);
        return;
    }
    s->input = IN_DATA;
    conn_set_timeout(s->c, conf->smtp_timeout_data * 1000);
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void cmd_bdat(struct smtpd *s, char *arg)
{
    char *end;
    long long size;

    errno = 0;
    size = strtoll(arg, &end, 10);
    if (!isdigit((unsigned char)*arg) || errno || size < 0 || (*end && *end != ' ')) {
        /* Without a size the chunk cannot be skipped: the session is lost. */
        close_with(s, "501 5.5.4 Syntax: BDAT size [LAST]; closing to stay in sync");
        return;
    }
    while (*end == ' ')
        end++;
    if (*end && strcasecmp(end, "LAST")) {
        close_with(s, "501 5.5.4 Syntax: BDAT size [LAST]; closing to stay in sync");
        return;
    }
    s->bdat_left = size;
    s->bdat_last = *end != '\0';
    s->bdat_discard = 0;
    s->input = IN_BDAT;
    conn_set_timeout(s->c, conf->smtp_timeout_data * 1000);
    if (!(s->state & (S_RCPT | S_BDAT))) {
        /* RFC 3030 2: the chunk is read anyway, then refused. */
        s->bdat_discard = s->state == S_MAIL ? 554 : 503;
    } else if (s->state == S_RCPT) {
        if (start_body(s))
            s->data_error = 451;
        smtpd_enter(s, S_BDAT);
    }
    if (!size)
        bdat_chunk_done(s);             /* "BDAT 0 LAST" has no octets to wait for */
}

static void cmd_rset(struct smtpd *s, char *arg)
{
    MN_UNUSED(arg);
    txn_reset(s);
    reply(s, "250 2.0.0 Ok");
}

static void cmd_noop(struct smtpd *s, char *arg)
{
    MN_UNUSED(arg);
    reply(s, "250 2.0.0 Ok");
}

static void cmd_quit(struct smtpd *s, char *arg)
{
    MN_UNUSED(arg);
    s->quit_seen = 1;
    txn_reset(s);
    close_with(s, "221 2.0.0 Bye");
}

static void cmd_help(struct smtpd *s, char *arg)
{
    MN_UNUSED(arg);
    reply(s, "214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT");
    reply(s, "214 2.0.0 VRFY EXPN HELP AUTH");
}

static void cmd_vrfy(struct smtpd *s, char *arg)
{
    struct addr a;
    struct store_rcpt r[1];
    size_t n;
    int rc;

    if (!*arg) {
        reply(s, "501 5.5.4 Syntax: VRFY address");
        return;
    }
    /* RFC 5321 7.3: confirming addresses helps harvesters; only an
     * authenticated client of a node that allows it gets an answer. */
    if (!conf->allow_vrfy || !s->auth_user[0]) {
        reply(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
        return;
    }
    rc = *arg == '<' ? addr_parse_path(arg, strlen(arg), 0, &a, &n) : addr_parse_mailbox(arg, &a);
    if (rc || !queue_domain_is_local(a.domain)) {
        reply(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
        return;
    }
    rc = queue_route(&a, r, 1, &n);
    if (rc == QUEUE_EUNKNOWN)
        reply(s, "550 5.1.1 <%s>: User unknown", a.full);
    else if (rc == 0 || rc == QUEUE_ETOOMANY)
        reply(s, "250 2.1.5 <%s>", a.full);
    else
        reply(s, "252 2.5.0 Cannot VRFY user");
}

static void cmd_expn(struct smtpd *s, char *arg)
{
    struct addr a;
    struct store_rcpt r[32];
    size_t n;

    if (!conf->allow_expn || !s->auth_user[0]) {
        reply(s, "502 5.5.1 EXPN not available");
        return;
    }
    if (addr_parse_mailbox(arg, &a) || !queue_domain_is_local(a.domain) ||
        queue_route(&a, r, MN_NELEM(r), &n) || !n) {
        reply(s, "550 5.1.1 No such list");
        return;
    }
    for (size_t i = 0; i < n; i++)
        reply(s, "250%c2.1.5 <%s>", i + 1 < n ? '-' : ' ', r[i].addr);
}

/* ETRN (RFC 1985): never releases mail to the requester itself, so it
 * needs no AUTH; the mail goes to the domain's own host.  A session may
 * ask a bounded number of times. */
static void cmd_etrn(struct smtpd *s, char *arg)
{
    char line[512];

    if (s->local) {
        /* This process has no delivery scheduler; the daemon does. */
        reply(s, "502 5.5.1 ETRN is not available here: run mailnode flush");
        return;
    }
    if (++s->etrns > 100) {
        close_with(s, "421 4.7.0 Too many ETRN requests, closing");
        return;
    }
    odmr_etrn(arg, line, sizeof line);
    reply(s, "%s", line);
    log_info("ETRN %.255s from [%s]: %.3s", arg, s->c->peer_ip, line);
}

static void atrn_done(void *arg, int delivered, const char *error)
{
    char *what = arg;
    log_info("ATRN %s: %d recipients delivered%s%s", what, delivered, error ? ": " : "", error ? error : "");
    free(what);
}

/* ATRN (RFC 2645 5.2): after the 250 this connection carries the held
 * mail back to the site, with us as the SMTP client. */
static void cmd_atrn(struct smtpd *s, char *arg)
{
    char domains[32][SMTP_DOMAIN_MAX + 1], line[512], *what;
    size_t n;

    if (!s->auth_user[0]) {
        reply(s, "530 5.7.0 Authentication required");
        return;
    }
    int code = odmr_atrn_check(s->auth_user, arg, domains, MN_NELEM(domains), &n, line, sizeof line);
    log_info("ATRN %.255s by %s from [%s]: %.3s", *arg ? arg : "(all)", s->auth_user, s->c->peer_ip, line);
    if (code != 250) {
        reply(s, "%s", line);
        return;
    }
    /* The 250 is one line: fetchmail reads exactly one. */
    reply(s, "%s", line);
    conn_flush(s->c);
    what = strdup(*arg ? arg : s->auth_user);
    if (s->c->dead || queue_release_on(s->c, domains, n, atrn_done, what)) {
        free(what);
        if (!s->c->dead)
            close_with(s, "421 4.3.0 Cannot turn the connection around");
        return;
    }
    s->detached = 1;
}

/* RFC 3207 4.2: after the handshake the session starts over: no HELO,
 * no AUTH, nothing the client said in the clear. */
static void smtpd_tls_done(struct conn *c, int err)
{
    struct smtpd *s = c->ctx;
    if (!s || err)
        return;                         /* the loop closes a failed handshake */
    txn_reset(s);
    smtpd_enter(s, S_INIT);
    s->esmtp = 0;
    s->auth_user[0] = '\0';
    util_strlcpy(s->helo, "unknown", sizeof s->helo);
    conn_pause(c, 0);
    conn_set_timeout(c, conf->smtp_timeout_command * 1000);
}

static void cmd_starttls(struct smtpd *s, char *arg)
{
    if (*arg) {
        reply(s, "501 5.5.4 Syntax: STARTTLS");
        return;
    }
    if (s->c->tls) {
        reply(s, "503 5.5.1 Error: TLS already active");
        return;
    }
    if (!tls_available()) {
        reply(s, "454 4.7.0 TLS not available");
        return;
    }
    reply(s, "220 2.0.0 Ready to start TLS");
    if (tls_upgrade_server(s->c, "smtpd"))
        return;
    s->input = IN_COMMAND;
}

static void cmd_obsolete(struct smtpd *s, char *arg)
{
    MN_UNUSED(arg);
    reply(s, "502 5.5.1 Command not implemented");
}

/* AUTH failures are answered late, and more so each time; the session
 * reads nothing meanwhile, so a guesser gets one try per delay. */
static void auth_delay_done(void *arg)
{
    struct smtpd *s = arg;
    reply(s, "%s", s->pending);
    if (s->pending_close)
        conn_close(s->c);
    else
        conn_pause(s->c, 0);
    conn_flush(s->c);
}

static void auth_finish(struct smtpd *s, int rc, char *out)
{
    switch (rc) {
    case AUTH_CONTINUE:
        s->input = IN_SASL;
        reply(s, "334 %s", out);
        return;
    case AUTH_OK:
        if (limit_account_wait(s->sasl.user) > 0) {
            /* The account is backing off after many failures: even the
             * right password is refused now, and nothing tells a guesser
             * that it was right. */
            log_warn("%s: authentication for '%s' refused: the account is backing off", s->c->peer_ip,
                     s->sasl.user);
            break;
        }
        limit_auth_ok(s->sasl.user);
        s->input = IN_COMMAND;
        util_strlcpy(s->auth_user, s->sasl.user, sizeof s->auth_user);
        log_info("%s: authenticated as %s", s->c->peer_ip, s->auth_user);
        reply(s, "235 2.7.0 Authentication successful");
        return;
    case AUTH_BADMECH:
        s->input = IN_COMMAND;
        reply(s, "504 5.5.4 Unrecognized authentication type");
        return;
    case AUTH_CANCEL:
        s->input = IN_COMMAND;
        reply(s, "501 5.0.0 Authentication cancelled");
        return;
    case AUTH_SYNTAX:
        s->input = IN_COMMAND;
        reply(s, "501 5.5.2 Cannot decode the response");
        return;
    default:
        break;
    }
    s->input = IN_COMMAND;
    s->auth_failures++;
    limit_auth_failed(s->c, s->sasl.user);
    log_warn("%s: authentication failed for '%s' (%d)", s->c->peer_ip, s->sasl.user, s->auth_failures);
    if (s->auth_failures >= conf->auth_max_failures) {
        util_strlcpy(s->pending, "421 4.7.0 Too many authentication failures", sizeof s->pending);
        s->pending_close = 1;
    } else {
        util_strlcpy(s->pending, "535 5.7.8 Authentication credentials invalid", sizeof s->pending);
    }
    conn_pause(s->c, 1);
    timer_set(&s->timer, conf->auth_fail_delay * 1000 * s->auth_failures, auth_delay_done, s);
}

static void cmd_auth(struct smtpd *s, char *arg)
{
    char out[256], *sp;
    const char *initial = NULL;
    int rc;

    if (!s->esmtp) {
        reply(s, "503 5.5.1 Error: send EHLO first");
        return;
    }
    if (s->auth_user[0]) {
        reply(s, "503 5.5.1 Error: already authenticated");
        return;
    }
    if (!*arg) {
        reply(s, "501 5.5.4 Syntax: AUTH mechanism [initial-response]");
        return;
    }
    if (limit_auth_blocked(s->c)) {
        log_warn("[%s]: AUTH refused: too many failures from this address", s->c->peer_ip);
        close_with(s, "421 4.7.0 Too many authentication failures from your address, try later");
        return;
    }
    sp = strchr(arg, ' ');
    if (sp) {
        *sp = '\0';
        initial = sp + 1;
    }
    if (strcasecmp(arg, "CRAM-MD5") && !cleartext_auth_ok(s)) {
        /* RFC 4954 4: no passwords in the clear over an open network. */
        reply(s, "538 5.7.11 Encryption required for requested authentication mechanism");
        return;
    }
    memset(&s->sasl, 0, sizeof s->sasl);
    rc = auth_sasl_start(&s->sasl, arg, initial, out, sizeof out);
    auth_finish(s, rc, out);
}

typedef void (*smtpd_fn)(struct smtpd *, char *);

/* Which listeners offer a verb.  RFC 2645 5.1: the ODMR service speaks
 * EHLO, AUTH, ATRN and QUIT (and the harmless NOOP, RSET, HELP, STARTTLS);
 * ATRN exists only there. */
enum { SV_SMTP = 1 << 0, SV_ODMR = 1 << 1, SV_BOTH = SV_SMTP | SV_ODMR };

/* S_ANY includes S_BDAT, but RFC 3030 2 allows only BDAT, RSET, QUIT and
 * NOOP between chunks: the others list the states without it. */
#define S_NOBDAT (S_ANY & ~S_BDAT)

static const struct smtpd_cmd {
    const char *verb;
    unsigned allowed;                   /* states where the verb is valid */
    unsigned services;                  /* SV_*: listeners that offer it */
    smtpd_fn run;
} commands[] = {
    { "EHLO", S_NOBDAT, SV_BOTH, cmd_ehlo },
    { "HELO", S_NOBDAT, SV_SMTP, cmd_helo_only },
    { "MAIL", S_READY, SV_SMTP, cmd_mail },
    { "RCPT", S_MAIL | S_RCPT, SV_SMTP, cmd_rcpt },
    { "DATA", S_MAIL | S_RCPT, SV_SMTP, cmd_data },
    { "BDAT", S_ANY, SV_SMTP, cmd_bdat },       /* reads its chunk even when refused */
    { "RSET", S_ANY, SV_BOTH, cmd_rset },
    { "NOOP", S_ANY, SV_BOTH, cmd_noop },
    { "QUIT", S_ANY, SV_BOTH, cmd_quit },
    { "HELP", S_NOBDAT, SV_BOTH, cmd_help },
    { "VRFY", S_NOBDAT, SV_SMTP, cmd_vrfy },
    { "EXPN", S_NOBDAT, SV_SMTP, cmd_expn },
    { "AUTH", S_READY, SV_BOTH, cmd_auth },
    { "ETRN", S_INIT | S_READY, SV_SMTP, cmd_etrn },
    { "STARTTLS", S_INIT | S_READY, SV_BOTH, cmd_starttls },
    { "COMPRESS", S_READY, SV_BOTH, cmd_compress },
    { "ATRN", S_READY, SV_ODMR, cmd_atrn },
    { "TURN", S_NOBDAT, SV_SMTP, cmd_obsolete },
    { "SEND", S_NOBDAT, SV_SMTP, cmd_obsolete },
    { "SOML", S_NOBDAT, SV_SMTP, cmd_obsolete },
    { "SAML", S_NOBDAT, SV_SMTP, cmd_obsolete },
};

static void out_of_sequence(struct smtpd *s, const struct smtpd_cmd *cmd)
{
    if (s->state == S_BDAT)
        reply(s, "503 5.5.1 Error: BDAT transfer in progress");
    else if (s->state == S_INIT)
        reply(s, "503 5.5.1 Error: send HELO/EHLO first");
    else if (!strcmp(cmd->verb, "MAIL"))
        reply(s, "503 5.5.1 Error: nested MAIL command");
    else if (!strcmp(cmd->verb, "AUTH"))
        reply(s, "503 5.5.1 Error: AUTH not allowed in a mail transaction");
    else
        reply(s, "503 5.5.1 Error: need MAIL command");
}

static void dispatch(struct smtpd *s, char *line)
{
    char *arg = line;
    size_t vlen;

    while (*arg && *arg != ' ')
        arg++;
    vlen = (size_t)(arg - line);
    while (*arg == ' ')
        arg++;
    /* The wire trace never shows credentials: AUTH keeps its mechanism
     * only (its continuation lines are not traced at all). */
    if (vlen == 4 && !strncasecmp(line, "AUTH", 4))
        log_debug("%s: smtpd <<< AUTH %.*s ****", s->c->peer_ip, (int)strcspn(arg, " "), arg);
    else
        log_debug("%s: smtpd <<< %s", s->c->peer_ip, line);
    for (size_t i = 0; i < MN_NELEM(commands); i++) {
        const struct smtpd_cmd *cmd = &commands[i];
        if (strlen(cmd->verb) != vlen || strncasecmp(cmd->verb, line, vlen))
            continue;
        if (!(cmd->services & (s->odmr ? SV_ODMR : SV_SMTP))) {
            reply(s, "502 5.5.1 Command not available on this service");
            return;
        }
        if (!(cmd->allowed & s->state)) {
            out_of_sequence(s, cmd);
            return;
        }
        cmd->run(s, arg);
        return;
    }
    if (++s->errors >= SMTPD_MAX_ERRORS) {
        close_with(s, "421 4.7.0 Too many errors, closing");
        return;
    }
    reply(s, "500 5.5.2 Error: command not recognized");
}

/* -------------------------------------------------------- message end */

static void log_delivery(struct smtpd *s)
{
    log_info("%s: accepted from=<%s> size=%lld nrcpt=%d client=%s [%s]%s%s", s->qid, s->sender,
             (long long)s->md.size, s->nrcpt_cmds, s->helo, s->c->peer_ip,
             s->auth_user[0] ? " user=" : "", s->auth_user);
    for (size_t i = 0; i < s->rcpts.n; i++) {
        struct store_rcpt r;
        rcpts_get(&s->rcpts, i, &r);
        if (r.kind == ROUTE_LOCAL)
            log_info("%s: to=<%s> delivered to mailbox", s->qid, r.addr);
        else
            log_info("%s: to=<%s> queued for %s%s", s->qid, r.addr, r.domain,
                     r.kind == ROUTE_HOLD ? " (held)" : "");
    }
}

/* The one wording of each reason a message is not taken: code is a
 * data_error (552, 554, 500, 452, 451) or a store error (STORE_FULL is
 * RFC 3463's 4.3.1 like a full disk anywhere else). */
static void reply_refused(struct smtpd *s, int code)
{
    switch (code) {
    case 552:
        reply(s, "552 5.3.4 Message size exceeds fixed maximum message size");
        break;
    case 554:
        reply(s, "554 5.4.6 Too many \"Received\" headers: possible mail loop");
        break;
    case 500:
        reply(s, "500 5.5.2 Message refused: a text line is longer than 1000 octets");
        break;
    case 452:
    case STORE_FULL:
        reply(s, "452 4.3.1 Insufficient system storage");
        break;
    default:
        reply(s, "451 4.3.0 Local error in processing, try again later");
        break;
    }
}

static void message_committed(void *arg, int rc)
{
    struct smtpd *s = arg;

    s->waiting = 0;
    if (s->orphan) {
        /* The client left before the commit; the message is kept if the
         * commit worked (a duplicate at worst, never a loss). */
        if (!rc)
            log_info("%s: accepted from=<%s> (client gone before the reply)", s->qid, s->sender);
        smtpd_free(s);
        return;
    }
    if (!rc) {
        s->accepted++;
        log_delivery(s);
        reply(s, "250 2.0.0 Ok: queued as %s", s->qid);
        if (s->local)
            ctl_tell_queued(s->qid);    /* the daemon logs it and delivers it */
        for (size_t i = 0; i < s->rcpts.n; i++)
            if (rcpts_kind(&s->rcpts, i) == ROUTE_REMOTE) {
                queue_kick();
                break;
            }
    } else {
        log_warn("%s: not accepted: storage failed", s->qid);
        reply_refused(s, rc);
    }
    store_body_free(s->body);
    s->body = NULL;
    txn_reset(s);
    conn_pause(s->c, 0);
    conn_flush(s->c);
}

/* A success notification carries the message back to its sender; with
 * RET=FULL from a client that neither authenticated nor is in
 * relay_networks, that sender may be anyone (a forged MAIL FROM), and the
 * notification would relay the content to it.  Such a message is kept
 * with RET=HDRS (RFC 3461 4.3 leaves the amount returned to the MTA's
 * policy), for every notification about it and when passed on. */
static int success_dsn_untrusted(const struct smtpd *s)
{
    if (s->auth_user[0] || conf_relay_allowed(&s->c->peer))
        return 0;
    for (size_t i = 0; i < s->rcpts.n; i++)
        if (rcpts_notify(&s->rcpts, i) & NOTIFY_SUCCESS)
            return 1;
    return 0;
}

static void message_end(struct smtpd *s)
{
    struct store_env env;
    int rc = s->data_error;

    s->input = IN_COMMAND;
    conn_set_timeout(s->c, conf->smtp_timeout_command * 1000);
    if (!rc && s->md.received >= conf->max_received)
        rc = 554;
    if (!rc && s->md.long_line)
        rc = 500;
    if (!rc && s->body) {
        memset(&env, 0, sizeof env);
        util_strlcpy(env.qid, s->qid, sizeof env.qid);
        env.sender = s->sender;
        env.envid = s->envid[0] ? s->envid : NULL;
        env.ret_full = s->ret_full && !success_dsn_untrusted(s);
        env.eightbit = s->body_8bit || s->md.eightbit;
        env.client = s->c->peer_ip;
        env.auth_user = s->auth_user[0] ? s->auth_user : NULL;
        env.size = s->body->size;
        int err = store_body_finish(s->body);
        struct store_rcpt *routes = err ? NULL : rcpts_expand(&s->rcpts);
        if (!err && !routes)
            err = STORE_ERR;
        size_t nroutes = s->rcpts.n;
        if (!err)
            err = bundle_dedup(s->body, routes, &nroutes, s->qid);
        if (!err && s->rs)
            err = resume_done(s->rs, s->qid);   /* same transaction: both or neither */
        if (!err)
            err = store_msg_insert(&env, s->body, routes, nroutes);
        if (!err)
            queue_notify_delivered(&env, s->body->id, routes, nroutes);
        free(routes);
        if (err)
            rc = err == STORE_FULL ? 452 : 451;
    } else if (!rc) {
        rc = 451;
    }
    if (!rc) {
        s->waiting = 1;
        conn_pause(s->c, 1);
        store_after_commit(message_committed, s);
        return;
    }
    reply_refused(s, rc);
    log_info("%s: refused from=<%s> client=[%s]: data refused with %d", s->qid, s->sender,
             s->c->peer_ip, rc);
    if (s->rs && !resume_done_qid(s->rs))
        resume_end(s->rs, 0);           /* refused whole: the next attempt starts from zero */
    txn_reset(s);
}

static int replay_emit(void *arg, const void *buf, size_t n)
{
    struct smtpd *s = arg;
    if (s->body && !s->data_error)
        mime_raw_feed(&s->md, buf, n, body_emit, s);
    return 0;
}

/* The end of an XRESUME transfer (resume.c): a repeat of one already
 * accepted gets its queue id again; otherwise the octets held and those
 * just received become the message, if their hash is the one named. */
static void bdat_resumed_last(struct smtpd *s)
{
    const char *done = s->rs ? resume_done_qid(s->rs) : NULL;

    if (done && !s->data_error) {
        log_info("%s: from=<%s> client=[%s]: already accepted as %s (a repeat after a lost reply)", s->qid,
                 s->sender, s->c->peer_ip, done);
        reply(s, "250 2.0.0 Ok: queued as %s", done);
        txn_reset(s);
        return;
    }
    if (!s->data_error && (!s->rs || !s->body))
        s->data_error = 451;
    if (!s->data_error && !done)
        s->data_error = resume_replay(s->rs, replay_emit, s);
    if (s->body && !s->data_error)
        mime_raw_finish(&s->md, body_emit, s);
    message_end(s);
}

static void bdat_chunk_done(struct smtpd *s)
{
    s->input = IN_COMMAND;
    if (s->bdat_discard) {
        reply(s, s->bdat_discard == 554 ? "554 5.5.1 Error: no valid recipients"
                                        : "503 5.5.1 Error: need MAIL and RCPT before BDAT");
        s->bdat_discard = 0;
        return;
    }
    if (s->bdat_last) {
        if (s->resumable)
            bdat_resumed_last(s);
        else {
            if (s->body && !s->data_error)
                mime_raw_finish(&s->md, body_emit, s);
            message_end(s);
        }
        return;
    }
    conn_set_timeout(s->c, conf->smtp_timeout_command * 1000);
    if (s->data_error)
        reply_refused(s, s->data_error);
    else
        reply(s, "250 2.0.0 %lld octets received",
              (long long)(s->resumable && s->rs ? resume_octets(s->rs) : s->md.size));
    if (s->data_error)
        txn_reset(s);
}

/* ------------------------------------------------------------- input */

static void smtpd_input(struct conn *c)
{
    struct smtpd *s = c->ctx;

    int stalled = 0;

    while (!c->dead && !c->paused && !c->closing && c->in_len) {
        /* Back-pressure: a client that pipelines without reading its
         * replies waits until it does. */
        if (conn_out_space(c) < 2048) {
            stalled = 1;
            break;
        }
        if (s->input == IN_DATA) {
            int done;
            size_t used = mime_data_feed(&s->md, c->in, c->in_len, body_emit, s, &done);
            conn_consume(c, used);
            if (done)
                message_end(s);
            continue;
        }
        if (s->input == IN_BDAT) {
            size_t take = c->in_len < (uint64_t)s->bdat_left ? c->in_len : (size_t)s->bdat_left;
            if (s->resumable && !s->bdat_discard) {
                /* Held until the last octet (resume.c); NULL: taken over. */
                if (!s->data_error)
                    s->data_error = s->rs ? resume_feed(s->rs, c->in, take) : 451;
            } else if (!s->bdat_discard && s->body && !s->data_error)
                mime_raw_feed(&s->md, c->in, take, body_emit, s);
            else if (!s->bdat_discard && !s->data_error)
                s->data_error = 451;
            conn_consume(c, take);
            s->bdat_left -= (int64_t)take;
            if (!s->bdat_left)
                bdat_chunk_done(s);
            continue;
        }
        unsigned char *lf = memchr(c->in, '\n', c->in_len);
        size_t max = s->input == IN_SASL || (c->in_len >= 5 && !strncasecmp((char *)c->in, "AUTH ", 5))
                         ? SMTPD_SASL_LINE : SMTP_LINE_MAX;
        if (!lf) {
            if (s->input == IN_SKIP) {
                conn_consume(c, c->in_len);
            } else if (c->in_len >= max || c->in_len == c->in_cap) {
                /* RFC 5321 4.5.3.1.4: 500 for a line that is too long;
                 * the rest of it is skipped, up to its end. */
                reply(s, "500 5.5.2 Error: line too long");
                conn_consume(c, c->in_len);
                s->input = IN_SKIP;
            }
            break;
        }
        size_t len = (size_t)(lf - c->in) + 1;
        if (s->input == IN_SKIP) {
            conn_consume(c, len);
            s->input = IN_COMMAND;
            continue;
        }
        if (len > max) {
            reply(s, "500 5.5.2 Error: line too long");
            conn_consume(c, len);
            if (s->input == IN_SASL)
                s->input = IN_COMMAND;
            continue;
        }
        char line[SMTPD_SASL_LINE + 1];
        size_t l = len - 1;
        if (l && c->in[l - 1] == '\r')
            l--;
        memcpy(line, c->in, l);
        line[l] = '\0';
        conn_consume(c, len);
        if (memchr(line, '\0', l)) {
            reply(s, "500 5.5.2 Error: NUL character in command");
            continue;
        }
        conn_set_timeout(c, conf->smtp_timeout_command * 1000);
        if (s->input == IN_SASL) {
            char out[256];
            int rc = auth_sasl_step(&s->sasl, line, out, sizeof out);
            auth_finish(s, rc, out);
            continue;
        }
        dispatch(s, line);
        if (c->tls && tls_io_handshaking(c))
            return;                     /* nothing more until the handshake is over */
        if (s->detached) {
            /* The connection belongs to the client session now. */
            smtpd_free(s);
            return;
        }
    }
    if (c->dead)
        return;
    conn_flush(c);
    /* The flush may have emptied the output at once, and then no writable
     * event will come to resume the commands still waiting: go on now. */
    if (stalled && !c->dead && c->in_len && conn_out_space(c) >= 2048)
        conn_kick(c);
}

static void smtpd_timeout(struct conn *c)
{
    struct smtpd *s = c->ctx;
    /* RFC 5321 4.5.3.2.7 / 4.5.3.2.5: the server times out and closes. */
    log_info("%s: timeout from [%s] %s", s->qid[0] ? s->qid : "-", c->peer_ip,
             s->input == IN_DATA || s->input == IN_BDAT ? "during data" : "waiting for a command");
    txn_reset(s);
    close_with(s, "421 4.4.2 Error: timeout exceeded");
}

static void smtpd_close(struct conn *c)
{
    struct smtpd *s = c->ctx;
    c->ctx = NULL;
    if (!s)
        return;
    if (s->attach_done) {
        s->attach_done(s->attach_arg, s->accepted, s->quit_seen ? NULL : "connection closed without QUIT");
        s->attach_done = NULL;
    }
    if (s->waiting) {
        s->orphan = 1;                  /* freed by message_committed */
        s->c = NULL;                    /* the connection is freed at the end of this turn */
        return;
    }
    smtpd_free(s);
}

static const struct conn_ops smtpd_ops = {
    .on_tls = smtpd_tls_done,
    .on_input = smtpd_input,
    .on_timeout = smtpd_timeout,
    .on_close = smtpd_close,
};

int smtpd_attach(struct conn *c, void (*done)(void *arg, int accepted, const char *error), void *arg)
{
    /* Anything the upstream sent before our greeting is out of turn. */
    conn_consume(c, c->in_len);
    smtpd_accept(c);
    struct smtpd *s = c->ctx;
    if (c->ctx == NULL || c->dead)
        return -1;
    s->attach_done = done;
    s->attach_arg = arg;
    return 0;
}

/* `sendmail -bs`: the session on c is the local user's, who counts as
 * authenticated (as `mailnode sendmail` trusts its caller). */
int smtpd_local(struct conn *c, const char *user, void (*done)(void *arg, int accepted, const char *error),
                void *arg)
{
    struct smtpd *s;

    if (smtpd_attach(c, done, arg))
        return -1;
    s = c->ctx;
    s->local = 1;
    util_strlcpy(s->auth_user, user, sizeof s->auth_user);
    return 0;
}

void smtpd_accept(struct conn *c)
{
    struct smtpd *s = calloc(1, sizeof *s);
    if (!s) {
        conn_abort(c);
        return;
    }
    s->c = c;
    s->next = all_sessions;
    if (all_sessions)
        all_sessions->prev = s;
    all_sessions = s;
    smtpd_enter(s, S_INIT);
    s->input = IN_COMMAND;
    s->timer.idx = -1;
    util_strlcpy(s->helo, "unknown", sizeof s->helo);
    c->ctx = s;
    c->ops = &smtpd_ops;
    conn_set_timeout(c, conf->smtp_timeout_command * 1000);
    if (c->kind == LISTEN_SMTP)
        queue_peer_seen(c);
    s->odmr = c->kind == LISTEN_ODMR;
    if (s->odmr)
        reply(s, "220 %s ODMR service ready", conf->hostname);
    else
        reply(s, "220 %s ESMTP mailnode", conf->hostname);
    conn_flush(c);
}
