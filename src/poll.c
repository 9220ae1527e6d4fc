/*
 * poll.c: the field node's side of on-demand relay.  One exchange with
 * the upstream: first our own queue goes out (when a relayhost is set),
 * then we ask for the mail held for our domains, by ETRN (RFC 1985: the
 * upstream connects back to our SMTP listener) or by ATRN (RFC 2645: the
 * same connection turns around and we become its SMTP server, so a site
 * behind NAT or with a changing address still gets its mail).
 *
 * An exchange starts on every link-up event, every upstream.interval,
 * and on `mailnode poll`.
 */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

/* An exchange's states, in the order an exchange goes through them:
 *
 *   IDLE -> PUSH (our queue to the relayhost, when one is set)
 *        -> RESOLVE -> GREETING -> EHLO [-> STARTTLS -> EHLO] [-> COMPRESS -> EHLO]
 *        -> [AUTH -> AUTH2] -> ETRN | ATRN [-> SERVING] -> QUIT -> IDLE
 *
 * Every change goes through poll_enter(), which logs it at debug level.
 * In SERVING the connection belongs to an SMTP server session (the ATRN
 * turnaround) and poll only waits for its end. */
enum pstate { POLL_IDLE, POLL_PUSH, POLL_RESOLVE, POLL_GREETING, POLL_EHLO, POLL_STARTTLS,
              POLL_AUTH, POLL_AUTH2, POLL_ETRN, POLL_ATRN, POLL_SERVING, POLL_QUIT,
              POLL_COMPRESS };
static const char *const poll_state_names[] = {
    "IDLE", "PUSH", "RESOLVE", "GREETING", "EHLO", "STARTTLS",
    "AUTH", "AUTH2", "ETRN", "ATRN", "SERVING", "QUIT", "COMPRESS",
};

struct pwaiter {
    poll_done_fn done;
    void *arg;
    struct pwaiter *next;
};

static struct {
    int enabled;
    int state;
    struct timer interval;
    struct timer guard;                 /* bounds a whole exchange */
    struct dns_query *dq;
    struct conn *c;
    char reply[512];
    int reply_code;
    struct smtpc_caps caps;             /* what the upstream's EHLO offered */
    char host[SMTP_DOMAIN_MAX + 1];     /* the upstream's name, for its certificate */
    size_t dom_i;                       /* ETRN: next domain to ask for */
    char summary[2048];
    size_t used;
    int rc;                             /* sysexits code of the exchange */
    int accepted;                       /* ATRN: messages taken in */
    struct pwaiter *waiters;            /* told at the end of this exchange */
    struct pwaiter *next_waiters;       /* asked during it: told after the next */
    int again;                          /* a request came while running */
    int pushed;                         /* this exchange sent our queued mail first */
} P = { .interval = { .idx = -1 }, .guard = { .idx = -1 } };

static void poll_enter(enum pstate to)
{
    assert((size_t)to < MN_NELEM(poll_state_names));
    if ((int)to != P.state)
        log_debug("poll: %s -> %s", poll_state_names[P.state], poll_state_names[to]);
    P.state = (int)to;
}

static void pull_start(void);
static void poll_finish(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void poll_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void poll_say(const char *fmt, ...)
{
    va_list ap;
    int n;
    if (P.used >= sizeof P.summary - 1)
        return;
    va_start(ap, fmt);
    n = vsnprintf(P.summary + P.used, sizeof P.summary - P.used, fmt, ap);
    va_end(ap);
    if (n > 0)
        P.used += (size_t)n < sizeof P.summary - P.used ? (size_t)n : sizeof P.summary - P.used - 1;
}

static int atrn_mode(void)
{
    return !strcasecmp(conf->upstream_mode, "atrn");
}

/* Ends the lookup and the client connection of the exchange, if any; a
 * connection already handed to the SMTP server (ATRN) is not ours. */
static void poll_drop_connection(void)
{
    if (P.dq)
        dns_cancel(P.dq);
    P.dq = NULL;
    struct conn *c = P.c;
    P.c = NULL;
    if (c && !c->dead && P.state != POLL_SERVING)
        conn_abort(c);                  /* client_close sees it is no longer ours */
}

static void poll_finish(int rc, const char *fmt, ...)
{
    char line[512] = "";
    va_list ap;

    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(line, sizeof line, fmt, ap);
        va_end(ap);
        poll_say("%s\n", line);
    }
    poll_drop_connection();
    timer_cancel(&P.guard);
    poll_enter(POLL_IDLE);
    if (P.pushed && conf->relayhost[0]) {
        /* The exchange worked, but what we had to send did not all go:
         * cron and ifup hooks must see that (sysexits 75). */
        int64_t left = store_ops_queued_remote("");
        if (left > 0) {
            poll_say("our own mail is still queued: %lld recipient%s (see mailnode queue list)\n",
                     (long long)left, left == 1 ? "" : "s");
            if (rc == EX_OK)
                rc = EX_TEMPFAIL;
        }
    }
    P.pushed = 0;
    P.rc = rc;
    if (rc == EX_OK)
        log_info("poll: upstream exchange done: %s", line[0] ? line : "ok");
    else
        log_warn("poll: upstream exchange failed: %s", line);
    store_meta_set(rc == EX_OK ? "upstream.last_ok" : "upstream.last_fail", P.summary);
    while (P.waiters) {
        struct pwaiter *w = P.waiters;
        P.waiters = w->next;
        w->done(w->arg, P.summary, rc);
        free(w);
    }
    if (P.again) {
        P.again = 0;
        P.waiters = P.next_waiters;
        P.next_waiters = NULL;
        if (P.enabled)
            poll_kick();
        else
            poll_run(NULL, NULL);       /* standalone poll: its waiter is in the new list */
    }
}

/* ---------------------------------------------------------- the client */

static void poll_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void poll_send(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n > sizeof line - 3)
        return;
    /* log.level = debug: the wire, never a credential. */
    if (P.state == POLL_AUTH2)
        log_debug("poll >>> %s", strncmp(line, "AUTH ", 5) ? "****" : "AUTH PLAIN ****");
    else
        log_debug("poll >>> %s", line);
    memcpy(line + n, "\r\n", 2);
    conn_write(P.c, line, (size_t)n + 2);
    conn_flush(P.c);
}

static void ask_next_etrn(void)
{
    if (P.dom_i < conf->n_upstream_domains) {
        poll_send("ETRN %s", conf->upstream_domains[P.dom_i]);
        return;
    }
    poll_enter(POLL_QUIT);
    poll_send("QUIT");
}

static void served(void *arg, int accepted, const char *error)
{
    MN_UNUSED(arg);
    P.accepted = accepted;
    P.c = NULL;
    char doms[512] = "";
    size_t used = 0;
    for (size_t i = 0; i < conf->n_upstream_domains && used < sizeof doms; i++)
        used += (size_t)snprintf(doms + used, sizeof doms - used, "%s%s", i ? "," : "", conf->upstream_domains[i]);
    if (error && !accepted)
        poll_finish(EX_TEMPFAIL, "ATRN %s: connection ended after the turnaround: %s", doms, error);
    else
        poll_finish(EX_OK, "ATRN %s: %d message%s received%s%s%s", doms, accepted, accepted == 1 ? "" : "s",
                    error ? " (then: " : "",
                    error ? error : "", error ? ")" : "");
}

/* The client's SASL answers, with the password read just for the moment. */
static void auth_cram(const char *challenge64)
{
    char b64[1000], pw[256];

    if (poll_password(pw, sizeof pw)) {
        poll_finish(EX_CONFIG, "cannot read upstream.password_file %s", conf->upstream_password_file);
        return;
    }
    int rc = auth_client_cram(conf->upstream_user, pw, challenge64, b64, sizeof b64);
    sodium_memzero(pw, sizeof pw);
    if (rc) {
        poll_finish(EX_PROTOCOL, "the upstream sent a bad CRAM-MD5 challenge");
        return;
    }
    poll_send("%s", b64);
}

static void auth_plain(void)
{
    char b64[1000], pw[256];

    if (poll_password(pw, sizeof pw)) {
        poll_finish(EX_CONFIG, "cannot read upstream.password_file %s", conf->upstream_password_file);
        return;
    }
    int rc = auth_client_plain(conf->upstream_user, pw, b64, sizeof b64);
    sodium_memzero(pw, sizeof pw);
    if (rc) {
        poll_finish(EX_CONFIG, "upstream credentials too long");
        return;
    }
    poll_send("AUTH PLAIN %s", b64);
}

static void poll_reply(int code, const char *text)
{
    const char *t = strlen(text) > 4 ? text + 4 : "";

    switch (P.state) {
    case POLL_GREETING:
        if (code != 220) {
            poll_finish(EX_UNAVAILABLE, "the upstream refused the session: %s", text);
            return;
        }
        poll_enter(POLL_EHLO);
        poll_send("EHLO %s", conf->hostname);
        return;
    case POLL_EHLO: {
        if (code != 250) {
            poll_finish(EX_PROTOCOL, "the upstream refused EHLO: %s", text);
            return;
        }
        /* upstream.tls: STARTTLS when offered ("may"), never ("none"), or
         * nothing at all without a verified TLS session ("require"). */
        int policy = smtpc_tls_policy(conf->upstream_tls);
        if (!P.c->tls && P.caps.starttls && policy != SMTPC_TLS_NONE) {
            poll_enter(POLL_STARTTLS);
            poll_send("STARTTLS");
            return;
        }
        if (!P.c->tls && policy == SMTPC_TLS_REQUIRE) {
            poll_finish(EX_UNAVAILABLE, "the upstream offers no TLS, which upstream.tls requires");
            return;
        }
        if (!atrn_mode()) {
            poll_enter(POLL_ETRN);
            P.dom_i = 0;
            ask_next_etrn();
            return;
        }
        if (!P.caps.atrn) {
            poll_finish(EX_PROTOCOL, "the upstream does not offer ATRN");
            return;
        }
        /* The turned-around session carries the mail: compress it when
         * the upstream (a mailnode) offers it. */
        if (P.caps.compress && !zio_active(P.c) && zio_allowed("upstream", P.host)) {
            poll_enter(POLL_COMPRESS);
            poll_send("COMPRESS DEFLATE");
            return;
        }
        /* RFC 2645 5.1.2: CRAM-MD5 is the mechanism every ODMR server has;
         * a password in the clear only to a peer on this host. */
        int mech = smtpc_auth_choose(&P.caps, P.c);
        if (mech == SMTPC_AUTH_CRAM) {
            poll_enter(POLL_AUTH);
            poll_send("AUTH CRAM-MD5");
        } else if (mech == SMTPC_AUTH_PLAIN) {
            poll_enter(POLL_AUTH2);
            auth_plain();
        } else {
            poll_finish(EX_PROTOCOL, "the upstream offers no authentication we may use without TLS");
        }
        return;
    }
    case POLL_COMPRESS:
        P.caps.compress = 0;
        if (code / 100 == 2 && zio_start(P.c)) {
            poll_finish(EX_SOFTWARE, "cannot start compression with the upstream");
            return;
        }
        poll_enter(POLL_EHLO);
        poll_reply(250, "250 continue");
        return;
    case POLL_STARTTLS:
        if (code != 220) {
            if (smtpc_tls_policy(conf->upstream_tls) == SMTPC_TLS_REQUIRE) {
                poll_finish(EX_UNAVAILABLE, "the upstream refused STARTTLS: %s", text);
                return;
            }
            poll_enter(POLL_EHLO);           /* "may": go on in the clear, as offered */
            P.caps.starttls = 0;
            poll_reply(250, "250 continue");
            return;
        }
        conn_consume(P.c, P.c->in_len);
        if (tls_start_client(P.c, P.host, smtpc_tls_policy(conf->upstream_tls) == SMTPC_TLS_REQUIRE))
            poll_finish(EX_SOFTWARE, "cannot start TLS with the upstream");
        return;
    case POLL_AUTH:
        if (code == 334) {
            poll_enter(POLL_AUTH2);
            auth_cram(t);
            return;
        }
        poll_finish(EX_PROTOCOL, "the upstream refused CRAM-MD5: %s", text);
        return;
    case POLL_AUTH2: {
        if (code != 235) {
            poll_finish(EX_NOPERM, "authentication to the upstream failed: %s", text);
            return;
        }
        char list[1024] = "";
        size_t used = 0;
        for (size_t i = 0; i < conf->n_upstream_domains; i++)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? "," : "",
                                     conf->upstream_domains[i]);
        poll_enter(POLL_ATRN);
        /* RFC 2645 5.2.1: the server may take a while to gather the mail;
         * wait at least ten minutes for the reply. */
        conn_set_timeout(P.c, 11 * 60 * 1000);
        poll_send("ATRN%s%s", list[0] ? " " : "", list);
        return;
    }
    case POLL_ATRN:
        if (code == 250) {
            /* The turnaround: from here on we are the SMTP server. */
            poll_enter(POLL_SERVING);
            poll_say("ATRN accepted: %s\n", t);
            struct conn *c = P.c;
            c->ctx = NULL;
            smtpd_attach(c, served, NULL);
            return;
        }
        if (code == 453) {
            poll_say("ATRN: no mail held for us (%s)\n", text);
            poll_enter(POLL_QUIT);
            poll_send("QUIT");
            return;
        }
        poll_finish(code / 100 == 4 ? EX_TEMPFAIL : EX_NOPERM, "ATRN refused: %s", text);
        return;
    case POLL_ETRN: {
        const char *d = conf->upstream_domains[P.dom_i];
        if (code == 250 || code == 251 || code == 252 || code == 253) {
            poll_say("%s: %s\n", d, text);
        } else {
            /* 458, 459, 5xx: this domain failed; the others are still asked. */
            poll_say("%s: failed: %s\n", d, text);
            if (P.rc == EX_OK)
                P.rc = code / 100 == 4 && code != 459 ? EX_TEMPFAIL : EX_UNAVAILABLE;
        }
        P.dom_i++;
        ask_next_etrn();
        return;
    }
    case POLL_QUIT:
        poll_finish(P.rc, NULL);
        return;
    default:
        return;
    }
}

static void client_input(struct conn *c)
{
    char line[512];
    int code, last, rc;

    while (!c->dead && c->in_len && P.c == c && (rc = smtpc_reply_line(c, &code, &last, line, sizeof line))) {
        if (rc < 0) {
            poll_finish(EX_PROTOCOL, rc == SMTPC_ELONG ? "the upstream sent an over-long line"
                                                       : "the upstream sent a malformed reply");
            return;
        }
        log_debug("poll <<< %s", line);
        if (P.state == POLL_EHLO && strlen(line) > 4)
            smtpc_caps_keyword(&P.caps, line + 4);
        if (last)
            poll_reply(code, line);
    }
}

static void client_close(struct conn *c)
{
    if (P.c != c)
        return;
    P.c = NULL;
    if (P.state == POLL_QUIT)
        poll_finish(P.rc, NULL);
    else
        poll_finish(EX_TEMPFAIL, "the upstream closed the connection");
}

static void client_timeout(struct conn *c)
{
    MN_UNUSED(c);
    poll_finish(EX_TEMPFAIL, "the upstream did not answer in time");
}

static void client_connected(struct conn *c, int err)
{
    if (err) {
        char why[300];
        snprintf(why, sizeof why, "cannot connect to the upstream %s: %s", conf->upstream, strerror(err));
        c->ctx = NULL;
        P.c = NULL;
        conn_abort(c);
        poll_finish(EX_UNAVAILABLE, "%s", why);
        return;
    }
    conn_set_timeout(c, conf->smtp_timeout_command * 1000);
    char host[SMTP_DOMAIN_MAX + 1];
    int port;
    if (!util_split_hostport(conf->upstream, host, sizeof host, &port))
        pace_rate(c->fd, pace_rate_for("upstream", host));
}

static void client_tls(struct conn *c, int err)
{
    if (P.c != c)
        return;
    if (err) {
        poll_finish(EX_UNAVAILABLE, "TLS with the upstream failed (certificate not verified?)");
        return;
    }
    /* RFC 3207 4.2: learn the capabilities again, under TLS. */
    poll_enter(POLL_EHLO);
    memset(&P.caps, 0, sizeof P.caps);
    poll_send("EHLO %s", conf->hostname);
}

static const struct conn_ops client_ops = {
    .on_tls = client_tls,
    .on_input = client_input,
    .on_timeout = client_timeout,
    .on_close = client_close,
    .on_connect = client_connected,
};

static void poll_resolved(void *arg, const struct dns_result *r)
{
    char host[SMTP_DOMAIN_MAX + 1];
    int port;

    MN_UNUSED(arg);
    P.dq = NULL;
    if (r->status != DNS_OK || !r->nhosts || !r->hosts[0].naddrs) {
        poll_finish(EX_UNAVAILABLE, "cannot find the upstream %s: %s", conf->upstream, r->error);
        return;
    }
    util_split_hostport(conf->upstream, host, sizeof host, &port);
    struct sockaddr_storage ss = r->hosts[0].addrs[0];
    socklen_t len;
    if (ss.ss_family == AF_INET) {
        ((struct sockaddr_in *)(void *)&ss)->sin_port = htons((uint16_t)port);
        len = sizeof(struct sockaddr_in);
    } else {
        ((struct sockaddr_in6 *)(void *)&ss)->sin6_port = htons((uint16_t)port);
        len = sizeof(struct sockaddr_in6);
    }
    poll_enter(POLL_GREETING);
    memset(&P.caps, 0, sizeof P.caps);
    P.c = conn_connect(&ss, len, LISTEN_N, &client_ops, NULL, 16384, 16384);
    if (!P.c) {
        poll_finish(EX_UNAVAILABLE, "cannot connect to the upstream %s: %s", conf->upstream, strerror(errno));
        return;
    }
    pace_socket(P.c->fd);
    conn_set_timeout(P.c, conf->smtp_timeout_connect * 1000);
}

static void pull_start(void)
{
    char host[SMTP_DOMAIN_MAX + 1];
    int port;

    if (!conf->n_upstream_domains && !atrn_mode()) {
        poll_finish(EX_CONFIG, "upstream.domains is empty: nothing to ask for");
        return;
    }
    if (util_split_hostport(conf->upstream, host, sizeof host, &port)) {
        poll_finish(EX_CONFIG, "upstream '%s' is not host:port", conf->upstream);
        return;
    }
    size_t l = strlen(host);
    if (host[0] == '[' && l > 2 && host[l - 1] == ']') {
        memmove(host, host + 1, l - 2);
        host[l - 2] = '\0';
    }
    util_strlcpy(P.host, host, sizeof P.host);
    poll_enter(POLL_RESOLVE);
    P.dq = dns_resolve_host(host, poll_resolved, NULL);
    if (!P.dq)
        poll_finish(EX_TEMPFAIL, "resolver unavailable");
}

static void push_done(void *arg, const char *summary, int failed)
{
    MN_UNUSED(arg);
    MN_UNUSED(failed);                  /* poll_finish counts what is left */
    poll_say("sent: %s", summary);
    if (P.state == POLL_PUSH)
        pull_start();
}

static void guard_expired(void *arg)
{
    MN_UNUSED(arg);
    if (P.state == POLL_SERVING)
        return;                         /* the SMTP session has its own timeouts */
    poll_finish(EX_TEMPFAIL, "the exchange took too long");
}

/* ------------------------------------------------------------- control */

int poll_password(char *buf, size_t n)
{
    FILE *f = conf->upstream_password_file[0] ? fopen(conf->upstream_password_file, "r") : NULL;
    if (!f)
        return -1;
    if (!fgets(buf, (int)n, f)) {
        fclose(f);
        return -1;
    }
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

int poll_run(poll_done_fn done, void *arg)
{
    if (!conf->upstream[0])
        return -1;
    if (done) {
        struct pwaiter *w = calloc(1, sizeof *w);
        if (!w)
            return -1;
        w->done = done;
        w->arg = arg;
        /* A request made while an exchange runs wants a fresh one: the
         * running exchange may have passed the point that request cares
         * about. */
        struct pwaiter **list = P.state != POLL_IDLE ? &P.next_waiters : &P.waiters;
        w->next = *list;
        *list = w;
    }
    if (P.state != POLL_IDLE) {
        P.again = 1;                    /* one more exchange after this one */
        return 0;
    }
    P.used = 0;
    P.summary[0] = '\0';
    P.rc = EX_OK;
    P.accepted = 0;
    timer_set(&P.guard, 30 * 60 * 1000, guard_expired, NULL);
    store_meta_set("upstream.last_try", "");
    if (conf->relayhost[0]) {
        poll_enter(POLL_PUSH);
        P.pushed = 1;
        if (queue_flush_wait(NULL, push_done, NULL)) {
            poll_enter(POLL_IDLE);
            pull_start();
        }
        return 0;
    }
    pull_start();
    return 0;
}

static void interval_fired(void *arg)
{
    MN_UNUSED(arg);
    poll_kick();
}

void poll_kick(void)
{
    if (!P.enabled)
        return;
    if (P.state == POLL_IDLE)
        poll_run(NULL, NULL);
    else if (P.state != POLL_PUSH)         /* our own push flushes the queue too */
        P.again = 1;
    if (conf->upstream_interval > 0)
        timer_set(&P.interval, conf->upstream_interval * 1000, interval_fired, NULL);
}

int poll_start(void)
{
    if (!conf->upstream[0])
        return 0;
    if (strcasecmp(conf->upstream_mode, "etrn") && strcasecmp(conf->upstream_mode, "atrn")) {
        log_err("upstream.mode must be etrn or atrn, not '%s'", conf->upstream_mode);
        return -1;
    }
    P.enabled = 1;
    log_info("upstream %s (%s) for %zu domains, every %llds and on link events", conf->upstream,
             conf->upstream_mode, conf->n_upstream_domains, (long long)conf->upstream_interval);
    /* The first exchange soon after start: the link may just have come up. */
    timer_set(&P.interval, 1000, interval_fired, NULL);
    return 0;
}

void poll_stop(void)
{
    P.enabled = 0;
    timer_cancel(&P.interval);
    timer_cancel(&P.guard);
    poll_drop_connection();
    struct pwaiter **lists[] = { &P.waiters, &P.next_waiters };
    for (size_t l = 0; l < MN_NELEM(lists); l++)
        while (*lists[l]) {
            struct pwaiter *w = *lists[l];
            *lists[l] = w->next;
            w->done(w->arg, "stopped\n", EX_TEMPFAIL);
            free(w);
        }
    poll_enter(POLL_IDLE);
}

void poll_cancel(void *arg)
{
    struct pwaiter **lists[] = { &P.waiters, &P.next_waiters };
    for (size_t l = 0; l < MN_NELEM(lists); l++)
        for (struct pwaiter **pp = lists[l]; *pp; pp = &(*pp)->next)
            if ((*pp)->arg == arg) {
                struct pwaiter *w = *pp;
                *pp = w->next;
                free(w);
                return;
            }
}

