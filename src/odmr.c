/*
 * odmr.c: on-demand relay, the upstream's side of the two requests a
 * sometimes-connected site makes.  ETRN (RFC 1985) asks us to start
 * delivering a held domain's mail over a new connection to the site;
 * ATRN (RFC 2645) asks for it over the site's own, authenticated
 * connection, which then turns around.  The SMTP server (smtpd.c) parses
 * the command lines and calls these for the decisions and the replies.
 */
#include "internal.h"

#include <string.h>

struct etrn_walk {
    const char *parent;                 /* "@domain": it and its subdomains */
    int matched, held, started, failed, refused;
};

static int etrn_each(void *arg, const struct store_domain *d)
{
    struct etrn_walk *w = arg;
    size_t dl = strlen(d->name), pl = strlen(w->parent);

    if (d->kind != DOMAIN_HOLD)
        return 0;
    if (strcasecmp(d->name, w->parent) &&
        !(dl > pl && d->name[dl - pl - 1] == '.' && !strcasecmp(d->name + dl - pl, w->parent)))
        return 0;
    w->matched++;
    int started, n = queue_release(d->name, &started);
    if (n == QUEUE_REL_ATRN_ONLY || n == QUEUE_REL_LOOP)
        w->refused++;
    else if (n < 0)
        w->failed++;
    else
        w->held += n;
    w->started += started;
    return 0;
}

/* RFC 1985 5: the reply codes and their texts. */
void odmr_etrn(const char *arg, char *reply, size_t n)
{
    char dom[SMTP_DOMAIN_MAX + 2];
    int sub = 0;

    if (!*arg) {
        snprintf(reply, n, "501 5.5.4 Syntax: ETRN [@|#]domain");
        return;
    }
    if (*arg == '@' || *arg == '#') {
        sub = *arg == '@';              /* "#queue": our queues are named by domain */
        arg++;
    }
    if (!addr_domain_ok(arg, strlen(arg), 0)) {
        snprintf(reply, n, "501 5.5.4 Syntax: ETRN [@|#]domain");
        return;
    }
    util_strlcpy(dom, arg, sizeof dom);
    util_lower(dom);
    if (sub) {
        struct etrn_walk w = { .parent = dom };
        if (store_domain_list(etrn_each, &w) || w.failed) {
            snprintf(reply, n, "458 4.0.0 Unable to queue messages for node %s", dom);
            return;
        }
        if (!w.matched)
            snprintf(reply, n, "459 4.7.1 Node %s not allowed: no domain held here", dom);
        else if (w.refused == w.matched)
            snprintf(reply, n, "459 4.7.1 Node %s not allowed: its domains are released only by ATRN or "
                     "would loop back here", dom);
        else if (!w.held)
            snprintf(reply, n, "251 2.0.0 OK, no messages waiting for node %s", dom);
        else
            snprintf(reply, n, "253 2.0.0 OK, %d pending messages for node %s started", w.held, dom);
        return;
    }
    int started, held = queue_release(dom, &started);
    if (held == -1)
        snprintf(reply, n, "459 4.7.1 Node %s not allowed: not a domain held here", dom);
    else if (held == QUEUE_REL_ATRN_ONLY)
        snprintf(reply, n, "459 4.7.1 Node %s not allowed: released only by ATRN to its owner", dom);
    else if (held == QUEUE_REL_LOOP)
        snprintf(reply, n, "458 4.4.6 Unable to queue messages for node %s: its host is this node, "
                 "mail would loop back here", dom);
    else if (held < 0)
        snprintf(reply, n, "458 4.0.0 Unable to queue messages for node %s", dom);
    else if (!held)
        snprintf(reply, n, "251 2.0.0 OK, no messages waiting for node %s", dom);
    else if (!started)
        snprintf(reply, n, "250 2.0.0 OK, queuing for node %s started", dom);
    else
        snprintf(reply, n, "253 2.0.0 OK, %d pending messages for node %s started", held, dom);
}

struct owned {
    const char *user;
    char (*domains)[SMTP_DOMAIN_MAX + 1];
    size_t max, n;
};

static int owned_each(void *arg, const struct store_domain *d)
{
    struct owned *o = arg;
    if (d->kind == DOMAIN_HOLD && !strcmp(d->owner, o->user) && o->n < o->max)
        util_strlcpy(o->domains[o->n++], d->name, SMTP_DOMAIN_MAX + 1);
    return 0;
}

int odmr_atrn_check(const char *user, const char *arg, char domains[][SMTP_DOMAIN_MAX + 1], size_t max,
                    size_t *n, char *reply, size_t rn)
{
    *n = 0;
    if (!*arg) {
        /* RFC 2645 5.2.1: no argument means every domain of the user. */
        struct owned o = { .user = user, .domains = domains, .max = max };
        if (store_domain_list(owned_each, &o)) {
            snprintf(reply, rn, "451 4.3.0 Temporary failure, try again later");
            return 451;
        }
        if (!o.n) {
            snprintf(reply, rn, "453 4.7.0 You have no mail");
            return 453;
        }
        *n = o.n;
    } else {
        /* "d1,d2": a comma list without spaces (RFC 2645 5.2.1). */
        const char *p = arg;
        while (*p) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            if (!addr_domain_ok(p, len, 0) || *n == max || (comma && !comma[1])) {
                snprintf(reply, rn, "501 5.5.4 Syntax: ATRN [domain[,domain...]]");
                return 501;
            }
            memcpy(domains[*n], p, len);
            domains[*n][len] = '\0';
            util_lower(domains[*n]);
            (*n)++;
            p += len + (comma ? 1 : 0);
        }
        for (size_t i = 0; i < *n; i++) {
            struct store_domain d;
            if (store_domain_get(domains[i], &d) || d.kind != DOMAIN_HOLD || strcmp(d.owner, user)) {
                snprintf(reply, rn, "450 4.7.1 Access denied to %.255s", domains[i]);
                return 450;
            }
        }
    }
    int held = 0;
    for (size_t i = 0; i < *n; i++) {
        /* One session per domain at a time (RFC 2645 5.2.1: 451). */
        if (queue_release_busy(domains[i])) {
            snprintf(reply, rn, "451 4.3.0 %.255s is being delivered by another session", domains[i]);
            return 451;
        }
        int c = store_held_count(domains[i]);
        if (c > 0)
            held += c;
    }
    if (!held) {
        snprintf(reply, rn, "453 4.7.0 You have no mail");
        return 453;
    }
    snprintf(reply, rn, "250 2.0.0 OK now reversing the connection (%d message%s)", held, held == 1 ? "" : "s");
    return 250;
}
