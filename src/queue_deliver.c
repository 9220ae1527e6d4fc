/*
 * queue_deliver.c: the delivery scheduler.  Decides which destination is
 * due, finds its next hop (the relayhost, or the domain's MX hosts), runs
 * one SMTP client session per destination that carries everything queued
 * for it, records each recipient's outcome, keeps the per-destination
 * backoff, and writes delivery status notifications.
 *
 * A link that is down, a lookup that fails, a refused connection: all are
 * temporary.  Only a peer's 5xx, a domain that does not exist, a null MX
 * or queue.lifetime make a recipient fail.
 *
 * A destination's life (its dest row holds what outlives a session):
 *
 *   due        next_try <= now and a recipient due: scan() (every second,
 *              or at once on queue_kick) calls hop_start
 *   resolving  a struct hop exists (at most one per dest row, at most
 *              delivery_parallel in all); h->dq: the MX or host lookup
 *   in flight  h->sc: one SMTP session carrying every due message of the
 *              destination; hop_try_next moves on to the next address
 *              (never one of our own listeners, RFC 5321 5.1) when a
 *              host cannot be reached
 *   backoff    hop_finish: a session that reached the peer and moved
 *              something clears the backoff; otherwise backoff_next()
 *              doubles it (with jitter, up to retry.max) and next_try is
 *              set; a link-up event, `mailnode flush` or the down host
 *              connecting to us (queue_peer_seen) ends it early
 *   release    a hop of kind ROUTE_HOLD carries held mail for ETRN/ATRN
 *              (queue_release, queue_release_on); it has no schedule:
 *              what it cannot move stays held for the next request
 *
 * Invariants (asserted): a hop has at most one of dq and sc at a time,
 * and neither once hop_finish runs; hop_find(name) is unique.
 */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

#define SCAN_INTERVAL_MS 1000           /* idle rescan; new mail and link events kick at once */
#define MAINT_INTERVAL 60               /* seconds between expiry and warning scans */
#define RELAY_DEST "[relayhost]"        /* dest row of the smarthost */

struct dsn_note {                       /* an outcome that asks for a DSN */
    int64_t msg_id;
    int action;
    char addr[ADDR_MAX];
    char orcpt[ADDR_MAX + 8];
    char status[16];
    char diag[300];
};

struct hop {
    char name[SMTP_DOMAIN_MAX + 16];    /* dest row name */
    char domain[SMTP_DOMAIN_MAX + 1];   /* recipients' domain; "" = every remote (smarthost) */
    struct dns_query *dq;
    struct dns_result *res;
    int host_i, addr_i, port;
    struct smtpc *sc;
    char peer[SMTP_DOMAIN_MAX + 1];
    char peer_ip[64];                   /* the address being tried */
    struct store_cursor cur;            /* batch cursor: small messages (all if delivery.large = 0) */
    struct store_cursor cur_large;      /* batch cursor: messages above delivery.large */
    int handed;                         /* messages given to this session */
    int delivered, deferred, failed;
    int progress;                       /* the peer decided about something */
    int looped;                         /* an address or greeting was our own */
    char error[400];
    struct dsn_note *notes;
    size_t nnotes, capnotes;
    /* a release of held mail (ETRN, ATRN) */
    int kind;                           /* ROUTE_REMOTE or ROUTE_HOLD */
    char (*domains)[SMTP_DOMAIN_MAX + 1];
    size_t ndomains, dom_i;
    queue_release_done_fn rel_done;
    void *rel_arg;
    struct hop *next;
};

struct waiter {
    char domain[SMTP_DOMAIN_MAX + 1];
    queue_flush_done_fn done;
    void *arg;
    char summary[4096];
    size_t used;
    int failed;
    int started;
    struct waiter *next;
};

static struct {
    int running;
    struct timer scan;
    struct hop *hops;
    int nhops;
    int64_t last_maint;
    struct waiter *waiters;
} Q = { .scan = { .idx = -1 } };

static void scan(void *arg);

/* Addresses of destinations that could not be reached, so that a
 * connection from one of them ends its backoff (RFC 5321 4.5.4.1: a host
 * that talks to us is up).  At most once per backoff step: after an
 * early retry, the next one waits until as much time as the current
 * backoff has passed, so a host that connects to us all the time while
 * its own listener stays down cannot make us retry in a storm. */
#define DOWN_SLOTS 64
static struct {
    char dest[SMTP_DOMAIN_MAX + 16];
    char ip[64];
    int64_t early;                      /* when a connection last ended its wait */
} down[DOWN_SLOTS];
static int down_next;

static void down_note(const char *dest, const char *ip)
{
    for (int i = 0; i < DOWN_SLOTS; i++)
        if (!strcmp(down[i].ip, ip) && !strcmp(down[i].dest, dest))
            return;
    util_strlcpy(down[down_next].dest, dest, sizeof down[0].dest);
    util_strlcpy(down[down_next].ip, ip, sizeof down[0].ip);
    down[down_next].early = 0;
    down_next = (down_next + 1) % DOWN_SLOTS;
}

void queue_peer_seen(const struct conn *c)
{
    int64_t now = util_now();

    /* A loopback client is one of our own (sendmail, scripts, a local
     * filter): it says nothing about a relayhost on 127.0.0.1 being up. */
    if (c->peer_loopback)
        return;
    for (int i = 0; i < DOWN_SLOTS; i++) {
        if (!down[i].ip[0] || strcmp(down[i].ip, c->peer_ip))
            continue;
        struct store_dest d;
        if (store_dest_get(down[i].dest, &d) || d.next_try <= now)
            continue;
        if (down[i].early && now - down[i].early < d.backoff)
            continue;                   /* this backoff step had its early retry */
        /* Now, but the backoff itself stays: if the host is still not
         * taking mail, the next wait is longer. */
        down[i].early = now;
        d.next_try = 0;
        store_dest_put(&d);
        log_info("%s: %s connected to us: retrying now", down[i].dest, c->peer_ip);
        queue_kick();
    }
}

/* Hold domains whose last release found only ourselves as the next hop,
 * so that the next ETRN is answered 458 at once instead of starting a
 * release that cannot go anywhere (the DNS answer behind it is not known
 * when the reply is due).  Forgotten after LOOP_MEMORY seconds, or when
 * the domain's host setting changes. */
#define LOOP_SLOTS 16
#define LOOP_MEMORY 300
static struct {
    char domain[SMTP_DOMAIN_MAX + 1];
    char host[SMTP_DOMAIN_MAX + 8];
    int64_t until;
} looped[LOOP_SLOTS];

static void loop_note(const struct store_domain *d)
{
    int k = 0;
    for (int i = 0; i < LOOP_SLOTS; i++) {
        if (!strcasecmp(looped[i].domain, d->name)) {
            k = i;
            break;
        }
        if (looped[i].until < looped[k].until)
            k = i;
    }
    util_strlcpy(looped[k].domain, d->name, sizeof looped[k].domain);
    util_strlcpy(looped[k].host, d->host, sizeof looped[k].host);
    looped[k].until = util_now() + LOOP_MEMORY;
}

static int loop_known(const struct store_domain *d)
{
    for (int i = 0; i < LOOP_SLOTS; i++)
        if (!strcasecmp(looped[i].domain, d->name))
            return looped[i].until > util_now() && !strcmp(looped[i].host, d->host);
    return 0;
}

/* A host written as a literal address that is one of our listeners. */
static int host_is_us(const char *spec)
{
    char host[SMTP_DOMAIN_MAX + 1];
    int port;
    struct sockaddr_storage ss;
    socklen_t len;

    if (util_split_hostport(spec, host, sizeof host, &port)) {
        util_strlcpy(host, spec, sizeof host);
        port = 25;
    }
    size_t l = strlen(host);
    if (host[0] == '[' && l > 2 && host[l - 1] == ']') {
        memmove(host, host + 1, l - 2);
        host[l - 2] = '\0';
    }
    return !util_sockaddr_parse(host, port, &ss, &len) && loop_is_own_listener(&ss);
}

void queue_kick(void)
{
    if (Q.running)
        timer_set(&Q.scan, 0, scan, NULL);
}

/* ----------------------------------------------------------- schedules */

/* Exponential backoff between retry.initial and retry.max, with 10%
 * jitter so that destinations that failed together do not return
 * together. */
static int64_t backoff_next(int64_t prev)
{
    int64_t b = prev ? prev * 2 : conf->retry_initial;
    if (b < conf->retry_initial)
        b = conf->retry_initial;
    if (b > conf->retry_max)
        b = conf->retry_max;
    if (b >= 10)
        b += (int64_t)randombytes_uniform((uint32_t)(b / 5 + 1)) - b / 10;
    return b > 0 ? b : 1;
}

static int64_t rcpt_retry_at(int attempts)
{
    int64_t b = conf->retry_initial;
    for (int i = 0; i < attempts && b < conf->retry_max; i++)
        b *= 2;
    if (b > conf->retry_max)
        b = conf->retry_max;
    return util_now() + backoff_next(b / 2 > 0 ? b / 2 : 0);
}

/* ---------------------------------------------------------------- DSNs */

static void note(struct hop *h, int64_t msg_id, int action, const struct store_out_rcpt *r,
                 const char *status, const char *diag)
{
    if (h->nnotes == h->capnotes) {
        size_t cap = h->capnotes ? h->capnotes * 2 : 8;
        void *p = realloc(h->notes, cap * sizeof *h->notes);
        if (!p)
            return;
        h->notes = p;
        h->capnotes = cap;
    }
    struct dsn_note *n = &h->notes[h->nnotes++];
    n->msg_id = msg_id;
    n->action = action;
    util_strlcpy(n->addr, r->addr, sizeof n->addr);
    util_strlcpy(n->orcpt, r->orcpt, sizeof n->orcpt);
    util_strlcpy(n->status, status, sizeof n->status);
    util_strlcpy(n->diag, diag ? diag : "", sizeof n->diag);
}

/* A notification that cannot be delivered (its message has the null
 * reverse-path, RFC 5321 4.5.5: no report to its sender) goes to the
 * postmaster as a double bounce, so that it is neither lost in silence
 * nor answered by another notification; the double bounce is marked, and
 * its own failure is only logged. */
static int double_bounce_to(const struct store_out_msg *m, const struct dsn_rcpt *rcpts, size_t n,
                            struct addr *pm)
{
    if (rcpts[0].action != DSN_FAILED)
        return 0;                       /* delays and successes of a notification: nobody to tell */
    if (m->id && store_ops_is_double_bounce(m->id)) {
        for (size_t i = 0; i < n; i++)
            log_warn("%s: to=<%s> double bounce undeliverable, discarded (%s)", m->qid,
                     rcpts[i].addr, rcpts[i].diagnostic ? rcpts[i].diagnostic : rcpts[i].status);
        return 0;
    }
    /* "<postmaster>" (RFC 5321 4.5.1): ours whatever local_domains says;
     * aliases, the admin or the holding mailbox take it (queue.c). */
    memset(pm, 0, sizeof *pm);
    util_strlcpy(pm->local, "postmaster", sizeof pm->local);
    util_strlcpy(pm->full, "postmaster", sizeof pm->full);
    return 1;
}

/* Queues a notification to the sender of m.  Never about a message with
 * a null reverse-path (RFC 5321 4.5.5, RFC 3461 6.2): a failed one goes
 * to the postmaster instead (double_bounce_to). */
static void send_dsn(const struct store_out_msg *m, const struct dsn_rcpt *rcpts, size_t n, const char *remote)
{
    struct dsn_info info;
    struct store_env env;
    struct store_rcpt routes[8];
    struct store_body *b;
    struct addr a;
    size_t nroutes = 0;
    int rc, dbl = 0;
    char to[ADDR_MAX];

    MN_UNUSED(remote);
    if (!n)
        return;
    if (!m->sender[0] && !(dbl = double_bounce_to(m, rcpts, n, &a)))
        return;
    if ((!dbl && addr_parse_mailbox(m->sender, &a)) || queue_route(&a, routes, MN_NELEM(routes), &nroutes) ||
        !nroutes) {
        log_warn("%s: no notification: %s <%s> cannot be reached", m->qid, dbl ? "postmaster" : "sender",
                 dbl ? a.full : m->sender);
        return;
    }
    memset(&info, 0, sizeof info);
    info.qid = m->qid;
    info.sender = m->sender;
    info.envid = m->envid[0] ? m->envid : NULL;
    info.ret_full = m->ret_full;
    info.received = m->received;
    info.body_id = m->body_id;
    info.rcpts = rcpts;
    info.n = n;
    /* The whole failed report: it names the original message and why it
     * bounced, which is what the postmaster needs to see. */
    if (dbl)
        dsn_to_postmaster(&info, to, sizeof to);
    b = store_body_new();
    if (!b)
        return;
    memset(&env, 0, sizeof env);
    util_qid(env.qid);
    env.sender = "";
    env.client = dbl ? STORE_DOUBLE_BOUNCE : "local";
    rc = dsn_write(&info, b);
    if (!rc)
        rc = store_body_finish(b);
    env.size = b->size;
    if (!rc)
        rc = store_msg_insert(&env, b, routes, nroutes);
    if (rc)
        log_err("%s: could not queue the notification to <%s>", m->qid, dbl ? a.full : m->sender);
    else if (dbl)
        log_warn("%s: notification undeliverable: double bounce to postmaster: %s", m->qid, env.qid);
    else
        log_info("%s: sender notification (%s): %s", m->qid,
                 rcpts[0].action == DSN_FAILED ? "failure" : rcpts[0].action == DSN_DELAYED ? "delay"
                 : rcpts[0].action == DSN_RELAYED ? "relayed" : "success",
                 env.qid);
    store_body_free(b);
    queue_kick();
}

void queue_notify_delivered(const struct store_env *env, int64_t body_id, const struct store_rcpt *rcpts,
                            size_t n)
{
    struct store_out_msg m;
    struct dsn_rcpt r[64];
    size_t k = 0;

    memset(&m, 0, sizeof m);
    m.body_id = body_id;
    m.received = util_now();
    m.ret_full = env->ret_full;
    util_strlcpy(m.qid, env->qid, sizeof m.qid);
    util_strlcpy(m.sender, env->sender, sizeof m.sender);
    util_strlcpy(m.envid, env->envid ? env->envid : "", sizeof m.envid);
    for (size_t i = 0; i < n && k < MN_NELEM(r); i++) {
        const struct store_rcpt *x = &rcpts[i];
        if (x->kind != ROUTE_LOCAL || !(x->notify & NOTIFY_SUCCESS) || (x->notify & NOTIFY_NEVER))
            continue;
        r[k].addr = x->addr;
        r[k].orcpt = x->orcpt[0] ? x->orcpt : NULL;
        r[k].action = DSN_DELIVERED;
        r[k].status = "2.0.0";
        r[k].remote_mta = NULL;
        r[k].diagnostic = NULL;
        r[k].last_attempt = m.received;
        r[k].expired = 0;
        k++;
    }
    send_dsn(&m, r, k, NULL);
}

static void flush_notes(struct hop *h, const struct store_out_msg *m)
{
    struct dsn_rcpt r[64];
    size_t n = 0;

    for (int action = DSN_FAILED; action <= DSN_RELAYED; action++) {
        n = 0;
        for (size_t i = 0; i < h->nnotes && n < MN_NELEM(r); i++) {
            struct dsn_note *x = &h->notes[i];
            if (x->msg_id != m->id || x->action != action)
                continue;
            r[n].addr = x->addr;
            r[n].orcpt = x->orcpt[0] ? x->orcpt : NULL;
            r[n].action = action;
            r[n].status = x->status;
            r[n].remote_mta = h->peer[0] ? h->peer : NULL;
            r[n].diagnostic = x->diag[0] ? x->diag : NULL;
            r[n].last_attempt = util_now();
            r[n].expired = 0;
            n++;
        }
        send_dsn(m, r, n, h->peer);
    }
    /* drop this message's notes */
    size_t k = 0;
    for (size_t i = 0; i < h->nnotes; i++)
        if (h->notes[i].msg_id != m->id)
            h->notes[k++] = h->notes[i];
    h->nnotes = k;
}

/* "550 5.1.1 text" -> "5.1.1"; or a default from the code. */
static void status_of(int code, const char *text, char *out, size_t n)
{
    if (text && strlen(text) > 8 && text[3] == ' ' && (text[4] == '2' || text[4] == '4' || text[4] == '5') &&
        text[5] == '.') {
        size_t i = 4;
        while (text[i] && text[i] != ' ' && i - 4 < n - 1)
            i++;
        memcpy(out, text + 4, i - 4);
        out[i - 4] = '\0';
        return;
    }
    snprintf(out, n, "%d.0.0", code / 100);
}

/* RFC 3461 4.1: a failure is reported unless NOTIFY said otherwise. */
static int wants_failure_dsn(int notify)
{
    return !(notify & NOTIFY_NEVER) && (!notify || (notify & NOTIFY_FAILURE));
}

static void dsn_rcpt_of(struct dsn_rcpt *r, const struct store_out_rcpt *x, int action, const char *status)
{
    r->addr = x->addr;
    r->orcpt = x->orcpt[0] ? x->orcpt : NULL;
    r->action = action;
    r->status = status;
    r->remote_mta = NULL;
    r->diagnostic = NULL;
    r->last_attempt = util_now();
    r->expired = 0;
}

/* ------------------------------------------------------ session callbacks */

/* Small before large: a session hands out every due message of at most
 * delivery.large octets first, and a large one only when no small one is
 * due, so one long attachment on a slow link does not hold back the short
 * mail behind it (small mail that arrives meanwhile still goes first).
 * Two cursors, one per size class, each moving forward only. */
static int hop_pick(struct hop *h, const char *domain, int kind, int64_t now, struct store_out_msg *m)
{
    int64_t large = conf->delivery_large;

    if (large <= 0)
        return store_out_next(domain, kind, &h->cur, now, m);
    int rc = store_out_next_sized(domain, kind, &h->cur, now, 0, large, m);
    if (rc != 0)
        return rc;
    return store_out_next_sized(domain, kind, &h->cur_large, now, large + 1, INT64_MAX, m);
}

static int hop_next(void *arg, struct store_out_msg *m)
{
    struct hop *h = arg;
    int rc;

    if (h->kind == ROUTE_HOLD) {
        /* A release carries everything held for its domains, domain by
         * domain: only the recipients in those domains. */
        while (h->dom_i < h->ndomains) {
            rc = hop_pick(h, h->domains[h->dom_i], ROUTE_HOLD, INT64_MAX, m);
            if (rc == 1) {
                h->handed++;
                return 1;
            }
            h->dom_i++;
            memset(&h->cur, 0, sizeof h->cur);
            memset(&h->cur_large, 0, sizeof h->cur_large);
        }
        return 0;
    }
    if (h->handed >= conf->delivery_per_connection)
        return 0;
    rc = hop_pick(h, h->domain[0] ? h->domain : NULL, ROUTE_REMOTE, util_now(), m);
    if (rc != 1)
        return 0;
    h->handed++;
    return 1;
}

static void hop_rcpt_done(void *arg, const struct store_out_msg *m, int idx, int code, const char *text)
{
    struct hop *h = arg;
    const struct store_out_rcpt *r = &m->rcpts[idx];
    char status[16];

    h->progress = 1;
    status_of(code, text, status, sizeof status);
    if (code / 100 == 2) {
        store_rcpt_set(r->id, RCPT_DELIVERED, 0, text);
        h->delivered++;
        log_info("%s: to=<%s> relay=%s status=sent (%s)", m->qid, r->addr, h->peer, text);
        /* RFC 3461 6.2: a next hop that offers DSN got NOTIFY with the
         * recipient and reports itself; one that does not gets the mail,
         * and the sender a "relayed" notice from us (never "delivered",
         * which only the final delivery says).  Never both. */
        if ((r->notify & NOTIFY_SUCCESS) && !(r->notify & NOTIFY_NEVER) && !smtpc_peer_dsn(h->sc))
            note(h, m->id, DSN_RELAYED, r, status, text);
    } else if (code / 100 == 4) {
        /* Held mail stays held for the next request; queued mail waits. */
        store_rcpt_set(r->id, RCPT_QUEUED, h->kind == ROUTE_HOLD ? 0 : rcpt_retry_at(r->attempts), text);
        h->deferred++;
        log_info("%s: to=<%s> relay=%s status=deferred (%s)", m->qid, r->addr, h->peer, text);
    } else {
        store_rcpt_set(r->id, RCPT_FAILED, 0, text);
        h->failed++;
        log_info("%s: to=<%s> relay=%s status=bounced (%s)", m->qid, r->addr, h->peer, text);
        if (wants_failure_dsn(r->notify))
            note(h, m->id, DSN_FAILED, r, status, text);
    }
}

static void hop_msg_done(void *arg, const struct store_out_msg *m)
{
    struct hop *h = arg;
    flush_notes(h, m);
    if (store_msg_retire(m->id) == 1)
        log_info("%s: removed", m->qid);
}

static void waiters_account(struct hop *h);
static void hop_try_next(struct hop *h);

static void hop_free(struct hop *h)
{
    struct hop **pp;
    for (pp = &Q.hops; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            *pp = h->next;
            break;
        }
    Q.nhops--;
    if (h->rel_done) {
        /* A release that ends without finishing (the daemon stops). */
        h->rel_done(h->rel_arg, h->delivered, "stopped");
        h->rel_done = NULL;
    }
    if (h->dq)
        dns_cancel(h->dq);
    free(h->res);
    free(h->notes);
    free(h->domains);
    free(h);
}

/* The destination's fate after a session: success resets its backoff; a
 * failure to reach anyone backs off (once per destination, not per
 * message). */
static void hop_finish(struct hop *h, int ok)
{
    struct store_dest d;
    int64_t now = util_now();

    assert(!h->sc && !h->dq);

    if (h->kind == ROUTE_HOLD) {
        /* A release has no schedule: what it could not move stays held
         * until the next request. */
        if (h->looped && !h->delivered && h->ndomains == 1 && !h->rel_done) {
            struct store_domain d;
            if (!store_domain_get(h->domains[0], &d))
                loop_note(&d);
        }
        log_info("%s: released %d message recipients, %d deferred, %d failed%s%s", h->name, h->delivered,
                 h->deferred, h->failed, h->error[0] ? ": " : "", h->error);
        if (h->rel_done)
            h->rel_done(h->rel_arg, h->delivered, ok && !h->error[0] ? NULL : h->error);
        h->rel_done = NULL;
        store_commit_soon();            /* the release's outcomes, at its end */
        hop_free(h);
        queue_kick();
        return;
    }
    store_dest_get(h->name, &d);
    d.last_try = now;
    if (ok) {
        d.backoff = 0;
        d.next_try = 0;
        d.failures = 0;
        d.last_ok = now;
        d.last_error[0] = '\0';
    } else {
        d.backoff = backoff_next(d.backoff);
        d.next_try = now + d.backoff;
        d.failures++;
        util_strlcpy(d.last_error, h->error, sizeof d.last_error);
        log_info("%s: deferred: %s; next try in %llds", h->name, h->error, (long long)d.backoff);
    }
    store_dest_put(&d);
    store_commit_soon();                /* `mailnode status` shows it at once */
    waiters_account(h);
    hop_free(h);
    queue_kick();
}

static void hop_done(void *arg, int reached, const char *error)
{
    struct hop *h = arg;

    h->sc = NULL;
    if (reached == SMTPC_LOOP) {
        /* RFC 5321 5.1: the peer is this node under another address;
         * never a delivery to ourselves, try the next host. */
        h->looped = 1;
        util_strlcpy(h->error, error ? error : "mail loops back to myself", sizeof h->error);
        log_warn("%s: %s", h->name, h->error);
        hop_try_next(h);
        return;
    }
    if (!reached) {
        util_strlcpy(h->error, error ? error : "no answer", sizeof h->error);
        log_info("%s: %s", h->name, h->error);
        if (h->kind == ROUTE_REMOTE && h->peer_ip[0])
            down_note(h->name, h->peer_ip);
        hop_try_next(h);
        return;
    }
    if (error)
        util_strlcpy(h->error, error, sizeof h->error);
    /* Reached and made progress: the host is up even if the session ended
     * early; what is left is retried at once by the next scan. */
    hop_finish(h, !error || h->progress);
}

static const struct smtpc_ops hop_ops = {
    .next = hop_next,
    .rcpt_done = hop_rcpt_done,
    .msg_done = hop_msg_done,
    .done = hop_done,
};

/* Every queued recipient of the destination fails: the domain itself is
 * undeliverable (no such domain, null MX). */
static void fail_destination(struct hop *h, const char *status, const char *text)
{
    struct store_out_msg m;
    struct store_cursor cur = { 0, 0 };

    while (store_out_next(h->domain[0] ? h->domain : NULL, ROUTE_REMOTE, &cur, INT64_MAX, &m) == 1) {
        for (int i = 0; i < m.nrcpt; i++) {
            store_rcpt_set(m.rcpts[i].id, RCPT_FAILED, 0, text);
            log_info("%s: to=<%s> status=bounced (%s)", m.qid, m.rcpts[i].addr, text);
            h->failed++;
            if (wants_failure_dsn(m.rcpts[i].notify))
                note(h, m.id, DSN_FAILED, &m.rcpts[i], status, text);
        }
        flush_notes(h, &m);
        store_msg_retire(m.id);
        store_out_free(&m);
    }
}

/* RFC 5321 5.1: try the addresses in order, all of them if need be. */
static void hop_try_next(struct hop *h)
{
    while (h->res && h->host_i < h->res->nhosts) {
        struct dns_host *dh = &h->res->hosts[h->host_i];
        if (h->addr_i >= dh->naddrs) {
            h->host_i++;
            h->addr_i = 0;
            continue;
        }
        struct sockaddr_storage ss = dh->addrs[h->addr_i++];
        socklen_t len;
        if (ss.ss_family == AF_INET) {
            ((struct sockaddr_in *)(void *)&ss)->sin_port = htons((uint16_t)h->port);
            len = sizeof(struct sockaddr_in);
        } else {
            ((struct sockaddr_in6 *)(void *)&ss)->sin6_port = htons((uint16_t)h->port);
            len = sizeof(struct sockaddr_in6);
        }
        util_strlcpy(h->peer, dh->name, sizeof h->peer);
        util_sockaddr_ip(&ss, h->peer_ip, sizeof h->peer_ip);
        if (loop_is_own_listener(&ss)) {
            /* RFC 5321 5.1: an MX or host that is ourselves is dropped;
             * delivering there would only queue the mail here again. */
            h->looped = 1;
            snprintf(h->error, sizeof h->error, "mail for %s loops back to myself: %s [%s]:%d is this node",
                     h->domain[0] ? h->domain : h->ndomains ? h->domains[0] : conf->relayhost, dh->name,
                     h->peer_ip, h->port);
            log_warn("%s: %s", h->name, h->error);
            continue;
        }
        struct smtpc_auth auth = { NULL, NULL }, *ap = NULL;
        static char pw[256];
        if (!h->domain[0] && conf->relayhost_user[0] && conf->relayhost_password_file[0]) {
            FILE *f = fopen(conf->relayhost_password_file, "r");
            if (f && fgets(pw, sizeof pw, f)) {
                pw[strcspn(pw, "\r\n")] = '\0';
                auth.user = conf->relayhost_user;
                auth.password = pw;
                ap = &auth;
            } else {
                log_warn("relayhost.password_file %s cannot be read", conf->relayhost_password_file);
            }
            if (f)
                fclose(f);
        }
        /* relayhost.tls for the smarthost; opportunistic TLS for MX hosts. */
        int policy = !h->domain[0] && h->kind == ROUTE_REMOTE ? smtpc_tls_policy(conf->relayhost_tls)
                                                              : SMTPC_TLS_MAY;
        h->sc = smtpc_start(&ss, len, dh->name, &hop_ops, h, ap, policy);
        if (h->sc) {
            smtpc_set_dest(h->sc, h->name);
            return;
        }
        char ip[64];
        util_sockaddr_ip(&ss, ip, sizeof ip);
        snprintf(h->error, sizeof h->error, "cannot connect to %s [%s]: %s", dh->name, ip, strerror(errno));
        log_info("%s: %s", h->name, h->error);
        if (h->kind == ROUTE_REMOTE)
            down_note(h->name, ip);
    }
    if (!h->error[0])
        util_strlcpy(h->error, "no address to try", sizeof h->error);
    hop_finish(h, 0);
}

static void hop_resolved(void *arg, const struct dns_result *r)
{
    struct hop *h = arg;

    h->dq = NULL;
    if (r->status == DNS_PERM && h->domain[0]) {
        int nullmx = strstr(r->error, "null MX") != NULL;
        char text[400];
        snprintf(text, sizeof text, "%s %s %s", nullmx ? "556" : "550", nullmx ? "5.1.10" : "5.1.2", r->error);
        log_info("%s: undeliverable: %s", h->name, r->error);
        fail_destination(h, nullmx ? "5.1.10" : "5.1.2", text);
        hop_finish(h, 1);
        return;
    }
    if (r->status != DNS_OK) {
        snprintf(h->error, sizeof h->error, "lookup of %.100s failed: %.180s",
                 h->domain[0] ? h->domain : conf->relayhost, r->error);
        hop_finish(h, 0);
        return;
    }
    h->res = malloc(sizeof *h->res);
    if (!h->res) {
        util_strlcpy(h->error, "out of memory", sizeof h->error);
        hop_finish(h, 0);
        return;
    }
    *h->res = *r;
    hop_try_next(h);
}

static struct hop *hop_find(const char *name)
{
    for (struct hop *h = Q.hops; h; h = h->next)
        if (!strcmp(h->name, name))
            return h;
    return NULL;
}

static struct hop *hop_new(const char *name, const char *domain, int kind)
{
    struct hop *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    util_strlcpy(h->name, name, sizeof h->name);
    util_strlcpy(h->domain, domain, sizeof h->domain);
    h->kind = kind;
    h->next = Q.hops;
    Q.hops = h;
    Q.nhops++;
    return h;
}

/* A next hop written "host:port", "[host]:port" or "host" (port 25):
 * resolved by name only, no MX ("[name]" is the name itself). */
static void hop_resolve_host(struct hop *h, const char *spec)
{
    char host[SMTP_DOMAIN_MAX + 1];

    if (util_split_hostport(spec, host, sizeof host, &h->port)) {
        util_strlcpy(host, spec, sizeof host);
        h->port = 25;
    }
    size_t l = strlen(host);
    if (host[0] == '[' && l > 2 && host[l - 1] == ']') {
        memmove(host, host + 1, l - 2);
        host[l - 2] = '\0';
    }
    h->dq = dns_resolve_host(host, hop_resolved, h);
}

static void hop_start(const char *name, const char *domain)
{
    struct hop *h;

    if (hop_find(name) || Q.nhops >= conf->delivery_parallel)
        return;
    h = hop_new(name, domain, ROUTE_REMOTE);
    if (!h)
        return;
    if (!domain[0]) {
        hop_resolve_host(h, conf->relayhost);
    } else {
        h->port = (int)conf->delivery_port;
        h->dq = dns_resolve_mx(domain, hop_resolved, h);
    }
}

/* -------------------------------------------------- expiry and warnings */

/* Where an SMTP reply starts in an error text: the text itself ("451
 * 4.3.0 ...", a peer's answer to the recipient) or after a ": " (a
 * session error that quotes the peer, "relay greeted with: 421 ..."). */
static int is_reply(const char *p)
{
    return p[0] >= '2' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9' &&
           (p[3] == ' ' || p[3] == '-' || !p[3]);
}

static const char *reply_in(const char *t)
{
    if (is_reply(t))
        return t;
    for (const char *p = strstr(t, ": "); p; p = strstr(p + 2, ": "))
        if (is_reply(p + 2))
            return p + 2;
    return NULL;
}

/* The enhanced status code after a reply's code ("421 4.3.2 busy"), if
 * it has one of class 4 or 5 (RFC 3463 2). */
static int reply_status(const char *reply, char *out, size_t n)
{
    const char *p = reply + 4;
    size_t len = strcspn(p, " ");
    int dots = 0;

    if (strlen(reply) < 9 || reply[3] != ' ' || (p[0] != '4' && p[0] != '5') || p[1] != '.' || len >= n)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '.')
            dots++;
        else if (p[i] < '0' || p[i] > '9')
            return 0;
    }
    if (dots != 2 || p[len - 1] == '.')
        return 0;
    memcpy(out, p, len);
    out[len] = '\0';
    return 1;
}

/* RFC 3463 X.4.7: a message that stayed too long fails with "delivery
 * time expired", but "if possible, the code for the actual problem found
 * when delivery was attempted should be returned": the status is the one
 * the peer gave in its last reply (4.2.2 mailbox full, 5.7.8 for a
 * relayhost refusing our credentials), and 4.4.7 when the last error has
 * none (a connection refused, a lookup that failed, a bare "451").  The
 * Diagnostic-Code (RFC 3464 2.3.6) carries the last error itself: type
 * "smtp" for a peer's reply to the recipient, "X-mailnode" for what this
 * node saw (it may quote a reply: "relay greeted with: 421 ..."). */
struct expiry {
    char status[16];
    char diag[620];
    int64_t when;
};

static void expiry_reason(const struct store_out_rcpt *x, struct expiry *e)
{
    char err[512];
    int of_dest = 0;
    const char *reply;

    util_strlcpy(e->status, "4.4.7", sizeof e->status);
    e->when = 0;
    if (store_ops_rcpt_error(x->id, conf->relayhost[0] != 0, err, sizeof err, &e->when, &of_dest)) {
        util_strlcpy(e->diag, "X-mailnode; delivery time expired before any error was recorded",
                     sizeof e->diag);
        return;
    }
    reply = reply_in(err);
    if (reply)
        reply_status(reply, e->status, sizeof e->status);
    snprintf(e->diag, sizeof e->diag, "%s; %s", reply == err && !of_dest ? "smtp" : "X-mailnode", err);
}

static int expired_cb(void *arg, int64_t msg_id, int64_t rcpt_id)
{
    int64_t *last = arg;
    MN_UNUSED(rcpt_id);
    if (msg_id == *last)
        return 0;
    *last = msg_id;
    struct store_out_msg m;
    if (store_out_get(msg_id, &m))
        return 0;
    struct dsn_rcpt r[64];
    struct expiry *why = calloc(MN_NELEM(r), sizeof *why);
    size_t n = 0;
    for (int i = 0; i < m.nrcpt; i++) {
        char text[700];
        struct expiry one, *e = why && n < MN_NELEM(r) ? &why[n] : &one;
        expiry_reason(&m.rcpts[i], e);
        snprintf(text, sizeof text, "4.4.7 delivery time expired; last error: %s", e->diag);
        store_rcpt_set(m.rcpts[i].id, RCPT_FAILED, 0, text);
        log_info("%s: to=<%s> status=expired (queued for more than %llds; last error: %s)", m.qid,
                 m.rcpts[i].addr, (long long)conf->queue_lifetime, e->diag);
        if (why && n < MN_NELEM(r) && wants_failure_dsn(m.rcpts[i].notify)) {
            dsn_rcpt_of(&r[n], &m.rcpts[i], DSN_FAILED, e->status);
            r[n].diagnostic = e->diag;
            r[n].expired = 1;
            if (e->when > 0)
                r[n].last_attempt = e->when;
            n++;
        }
    }
    send_dsn(&m, r, n, NULL);
    free(why);
    store_msg_retire(m.id);
    store_out_free(&m);
    return 0;
}

static int warn_cb(void *arg, int64_t msg_id)
{
    struct store_out_msg m;
    struct dsn_rcpt r[64];
    size_t n = 0;

    MN_UNUSED(arg);
    store_msg_set_warned(msg_id);
    if (store_out_get(msg_id, &m))
        return 0;
    for (int i = 0; i < m.nrcpt && n < MN_NELEM(r); i++) {
        int nt = m.rcpts[i].notify;
        if (nt & NOTIFY_NEVER || (nt && !(nt & NOTIFY_DELAY)))
            continue;
        dsn_rcpt_of(&r[n++], &m.rcpts[i], DSN_DELAYED, "4.4.1");
    }
    send_dsn(&m, r, n, NULL);
    store_out_free(&m);
    return 0;
}

static void maintenance(int64_t now)
{
    int64_t last = 0, every = MAINT_INTERVAL;
    /* Short lifetimes (tests, urgent traffic) are checked more often. */
    if (conf->queue_lifetime > 0 && conf->queue_lifetime / 4 < every)
        every = conf->queue_lifetime / 4;
    if (conf->queue_warn_after > 0 && conf->queue_warn_after / 4 < every)
        every = conf->queue_warn_after / 4;
    if (every < 1)
        every = 1;
    /* A step of the wall clock changed queue time's offset: every process
     * of the node must agree on it. */
    store_clock_save();
    if (now - Q.last_maint < every)
        return;
    Q.last_maint = now;
    if (conf->queue_lifetime > 0)
        store_expired(now - conf->queue_lifetime, expired_cb, &last);
    if (conf->queue_warn_after > 0 && conf->queue_warn_after < conf->queue_lifetime)
        store_unwarned(now - conf->queue_warn_after, warn_cb, NULL);
}

/* ---------------------------------------------------------------- scan */

static int due_cb(void *arg, const char *domain)
{
    MN_UNUSED(arg);
    if (Q.nhops >= conf->delivery_parallel)
        return 1;
    hop_start(domain, domain);
    return 0;
}

static void waiters_check(void);

static void scan(void *arg)
{
    int64_t now = util_now();

    MN_UNUSED(arg);
    maintenance(now);
    if (conf->relayhost[0]) {
        struct store_dest d;
        store_dest_get(RELAY_DEST, &d);
        if (d.next_try <= now && store_any_due(now) == 1)
            hop_start(RELAY_DEST, "");
    } else {
        store_due_domains(now, due_cb, NULL);
    }
    waiters_check();
    timer_set(&Q.scan, SCAN_INTERVAL_MS, scan, NULL);
}

/* ------------------------------------------------------ on-demand relay */

int queue_release_busy(const char *domain)
{
    for (struct hop *h = Q.hops; h; h = h->next)
        if (h->kind == ROUTE_HOLD)
            for (size_t i = 0; i < h->ndomains; i++)
                if (!strcasecmp(h->domains[i], domain))
                    return 1;
    return 0;
}

static int hop_set_domains(struct hop *h, char domains[][SMTP_DOMAIN_MAX + 1], size_t n)
{
    h->domains = calloc(n ? n : 1, sizeof *h->domains);
    if (!h->domains)
        return -1;
    memcpy(h->domains, domains, n * sizeof *h->domains);
    h->ndomains = n;
    return 0;
}

int queue_release(const char *domain, int *started)
{
    struct store_domain d;
    char name[SMTP_DOMAIN_MAX + 16];
    int n;

    *started = 0;
    if (store_domain_get(domain, &d) || d.kind != DOMAIN_HOLD)
        return -1;
    /* A site with an owner and no host fetches by ATRN (RFC 2645); its
     * MX is usually this node, so ETRN has nowhere to deliver to. */
    if (d.owner[0] && !d.host[0]) {
        log_info("release %s refused: it has an owner and no --host, only the owner's ATRN releases it",
                 d.name);
        return QUEUE_REL_ATRN_ONLY;
    }
    if ((d.host[0] && host_is_us(d.host)) || loop_known(&d)) {
        log_warn("release %s refused: its next hop %s is this node (mail would loop back to myself)", d.name,
                 d.host[0] ? d.host : "(MX)");
        return QUEUE_REL_LOOP;
    }
    n = store_held_count(d.name);
    if (n <= 0 || queue_release_busy(d.name))
        return n;
    snprintf(name, sizeof name, "release %s", d.name);
    struct hop *h = hop_new(name, "", ROUTE_HOLD);
    if (!h || hop_set_domains(h, &d.name, 1)) {
        if (h)
            hop_free(h);
        return STORE_ERR;
    }
    *started = 1;
    log_info("%s: %d held messages, delivery started", name, n);
    /* The domain's own host when the administrator named one, else MX. */
    if (d.host[0]) {
        hop_resolve_host(h, d.host);
    } else {
        h->port = (int)conf->delivery_port;
        h->dq = dns_resolve_mx(d.name, hop_resolved, h);
    }
    return n;
}

int queue_release_on(struct conn *c, char domains[][SMTP_DOMAIN_MAX + 1], size_t n,
                     queue_release_done_fn done, void *arg)
{
    char name[SMTP_DOMAIN_MAX + 16];
    snprintf(name, sizeof name, "atrn %.255s%s", domains[0], n > 1 ? ",..." : "");
    struct hop *h = hop_new(name, "", ROUTE_HOLD);
    if (!h)
        return -1;
    if (hop_set_domains(h, domains, n)) {
        hop_free(h);
        return -1;
    }
    h->rel_done = done;
    h->rel_arg = arg;
    util_strlcpy(h->peer, c->peer_ip, sizeof h->peer);
    h->sc = smtpc_attach(c, c->peer_ip, &hop_ops, h);
    if (!h->sc) {
        hop_free(h);
        return -1;
    }
    smtpc_set_dest(h->sc, domains[0]);
    return 0;
}

int queue_start(void)
{
    if (dns_init())
        log_warn("resolver: no name servers; MX lookups will fail until one is configured");
    Q.running = 1;
    Q.last_maint = 0;
    timer_set(&Q.scan, 200, scan, NULL);
    return 0;
}

void queue_stop(void)
{
    Q.running = 0;
    timer_cancel(&Q.scan);
    while (Q.hops) {
        struct hop *h = Q.hops;
        if (h->sc)
            smtpc_abort(h->sc);
        hop_free(h);
    }
    while (Q.waiters) {
        struct waiter *w = Q.waiters;
        Q.waiters = w->next;
        free(w);
    }
    dns_free();
}

/* ---------------------------------------------------------------- flush */

void queue_flush(const char *domain)
{
    if (store_flush(domain && *domain ? domain : NULL, util_now()))
        log_err("flush: database error");
    if (conf->relayhost[0] && (!domain || !*domain)) {
        struct store_dest d;
        store_dest_get(RELAY_DEST, &d);
        d.next_try = 0;
        d.backoff = 0;
        store_dest_put(&d);
    }
    log_info("flush requested%s%s: retry timers reset, delivery run started", domain && *domain ? " for " : "",
             domain ? domain : "");
    /* `flush DOMAIN` of a hold domain releases it, as ETRN would. */
    if (domain && *domain) {
        int started;
        queue_release(domain, &started);
    }
    queue_kick();
}

static int waiter_matches(const struct waiter *w, const struct hop *h)
{
    return !w->domain[0] || !h->domain[0] || !strcasecmp(w->domain, h->domain);
}

static void waiters_account(struct hop *h)
{
    for (struct waiter *w = Q.waiters; w; w = w->next) {
        if (!waiter_matches(w, h))
            continue;
        /* A destination not reached deferred everything queued for it. */
        int64_t deferred = h->deferred;
        if (h->error[0] && !h->progress && !deferred)
            deferred = store_ops_queued_remote(h->domain);
        int n = snprintf(w->summary + w->used, sizeof w->summary - w->used,
                         "%s: %d delivered, %lld deferred, %d failed%s%s\n",
                         h->domain[0] ? h->domain : conf->relayhost, h->delivered,
                         (long long)(deferred > 0 ? deferred : 0), h->failed, h->error[0] ? ": " : "", h->error);
        if (n > 0 && (size_t)n < sizeof w->summary - w->used)
            w->used += (size_t)n;
        if (h->deferred || (h->error[0] && !h->progress))
            w->failed++;
    }
}

/* A waiter is done when nothing for it is being delivered and nothing
 * for it is due any more (the rest waits for a later retry). */
static int any_due_cb(void *arg, const char *domain)
{
    MN_UNUSED(domain);
    *(int *)arg = 1;
    return 1;
}

static void waiters_check(void)
{
    struct waiter **pp = &Q.waiters;
    int64_t now = util_now();

    while (*pp) {
        struct waiter *w = *pp;
        int busy = 0;
        for (struct hop *h = Q.hops; h; h = h->next)
            if (waiter_matches(w, h))
                busy = 1;
        if (!busy) {
            if (conf->relayhost[0]) {
                struct store_dest d;
                store_dest_get(RELAY_DEST, &d);
                busy = d.next_try <= now && store_any_due(now) == 1;
            } else if (w->domain[0]) {
                struct store_dest d;
                store_dest_get(w->domain, &d);
                struct store_out_msg m;
                struct store_cursor cur = { 0, 0 };
                if (d.next_try <= now && store_out_next(w->domain, ROUTE_REMOTE, &cur, now, &m) == 1) {
                    busy = 1;
                    store_out_free(&m);
                }
            } else {
                store_due_domains(now, any_due_cb, &busy);
            }
        }
        if (busy && w->started < 1000) {
            w->started++;
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        if (!w->used)
            snprintf(w->summary, sizeof w->summary, "nothing to deliver\n");
        w->done(w->arg, w->summary, w->failed);
        free(w);
    }
}

int queue_flush_wait(const char *domain, queue_flush_done_fn done, void *arg)
{
    struct waiter *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    util_strlcpy(w->domain, domain ? domain : "", sizeof w->domain);
    util_lower(w->domain);
    w->done = done;
    w->arg = arg;
    w->next = Q.waiters;
    Q.waiters = w;
    queue_flush(domain);
    return 0;
}

void queue_flush_cancel(void *arg)
{
    for (struct waiter **pp = &Q.waiters; *pp; pp = &(*pp)->next)
        if ((*pp)->arg == arg) {
            struct waiter *w = *pp;
            *pp = w->next;
            free(w);
            return;
        }
}
