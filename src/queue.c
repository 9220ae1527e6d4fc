/*
 * queue.c: routing.  Where does mail for one recipient address go?
 *
 *   - a local domain: through the aliases to local mailboxes (and to
 *     whatever other addresses the aliases name);
 *   - a hold domain: kept for the site that owns it (ETRN/ATRN);
 *   - anything else: remote.
 *
 * Routing is kept apart from delivery so that the SMTP server (RCPT), the
 * sendmail command and delivery itself all decide the same way.
 *
 * Local parts are never interpreted: '%' and '!' are ordinary characters,
 * so "user%elsewhere@ours" is the local user named "user%elsewhere" and
 * cannot be used to relay through us (the old %-hack and UUCP bang paths).
 * Alias targets are addresses only; there are no program or file targets.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Nesting deeper than this is a mistake in the aliases, not a design;
 * sendmail and Postfix stop at about the same depth. */
#define QUEUE_ALIAS_DEPTH   10
#define QUEUE_ALIAS_LEN     8192    /* bytes of one alias's target list */
/* Addresses looked at for one recipient: bounds the work (database
 * look-ups) a single RCPT can cause, whatever the aliases say. */
#define QUEUE_EXPAND_MAX    1000

struct queue_exp {
    struct store_rcpt *out;
    size_t max, n;
    char (*seen)[ADDR_MAX];             /* addresses already expanded (lower case) */
    size_t nseen, capseen;
    size_t work;
    int loop;                           /* a loop or the depth limit cut something off */
};

/* Kind of a domain: DOMAIN_LOCAL, DOMAIN_HOLD, or 0 (remote). */
static int queue_domain_kind(const char *domain, int *kind)
{
    struct store_domain d;
    char lower[SMTP_DOMAIN_MAX + 1];
    int rc;

    *kind = 0;
    /* "<postmaster>" (RFC 5321 4.5.1) has no domain and is ours. */
    if (!domain[0]) {
        *kind = DOMAIN_LOCAL;
        return 0;
    }
    if (strlen(domain) > SMTP_DOMAIN_MAX)
        return 0;
    util_strlcpy(lower, domain, sizeof lower);
    util_lower(lower);
    if (conf_is_local_domain(lower)) {
        *kind = DOMAIN_LOCAL;
        return 0;
    }
    rc = store_domain_get(lower, &d);
    if (rc == STORE_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (d.kind == DOMAIN_LOCAL || d.kind == DOMAIN_HOLD)
        *kind = d.kind;
    return 0;
}

int queue_domain_is_local(const char *domain)
{
    int kind;
    return queue_domain_kind(domain, &kind) == 0 && kind == DOMAIN_LOCAL;
}

int queue_domain_accepted(const char *domain)
{
    int kind;
    return queue_domain_kind(domain, &kind) == 0 &&
           (kind == DOMAIN_LOCAL || kind == DOMAIN_HOLD);
}

/* local@domain, the local part quoted when RFC 5321 requires it. */
static void queue_format_addr(const char *local, const char *domain, char *out, size_t n)
{
    int quote = !local[0] || local[0] == '.';
    size_t o = 0;

    for (const char *p = local; *p && !quote; p++)
        if (*p == '.' ? (p[1] == '.' || p[1] == '\0') : !addr_is_atext((unsigned char)*p))
            quote = 1;
    if (n < 4) {
        if (n)
            out[0] = '\0';
        return;
    }
    if (quote)
        out[o++] = '"';
    for (const char *p = local; *p && o + 3 < n; p++) {
        if (quote && (*p == '"' || *p == '\\'))
            out[o++] = '\\';
        out[o++] = *p;
    }
    if (quote)
        out[o++] = '"';
    if (domain[0]) {
        int w = snprintf(out + o, n - o, "@%s", domain);
        if (w < 0 || (size_t)w >= n - o)
            out[n - 1] = '\0';
    } else {
        out[o] = '\0';
    }
}

/* Adds a route unless the same destination is already there: two
 * addresses that end in the same mailbox get one copy. */
static int queue_add(struct queue_exp *x, int kind, int64_t user_id, const char *addr,
                     const char *domain)
{
    struct store_rcpt *r;

    for (size_t i = 0; i < x->n; i++) {
        r = &x->out[i];
        if (r->kind != kind)
            continue;
        if (kind == ROUTE_LOCAL ? r->user_id == user_id : !strcmp(r->addr, addr))
            return 0;
    }
    if (x->n >= x->max)
        return QUEUE_ETOOMANY;
    r = &x->out[x->n++];
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->user_id = user_id;
    util_strlcpy(r->addr, addr, sizeof r->addr);
    util_strlcpy(r->domain, domain, sizeof r->domain);
    util_lower(r->domain);
    return 0;
}

static int queue_seen(struct queue_exp *x, const char *key)
{
    for (size_t i = 0; i < x->nseen; i++)
        if (!strcmp(x->seen[i], key))
            return 1;
    if (x->nseen == x->capseen) {
        size_t cap = x->capseen ? x->capseen * 2 : 16;
        void *p = realloc(x->seen, cap * sizeof *x->seen);
        if (!p)
            return -1;
        x->seen = p;
        x->capseen = cap;
    }
    util_strlcpy(x->seen[x->nseen++], key, ADDR_MAX);
    return 0;
}

/* The mailbox of the user named by the local part, if there is one. */
static int queue_user(struct queue_exp *x, const char *local, const char *domain, int *found)
{
    struct store_user u;
    char name[USER_MAX + 1], addr[ADDR_MAX];
    int rc;

    *found = 0;
    if (strlen(local) > USER_MAX)
        return 0;
    util_strlcpy(name, local, sizeof name);
    util_lower(name);
    rc = store_user_get(name, &u);
    if (rc == STORE_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    *found = 1;
    queue_format_addr(local, domain, addr, sizeof addr);
    return queue_add(x, ROUTE_LOCAL, u.id, addr, domain);
}

/* RFC 5321 4.5.1 requires postmaster; root (cron), abuse (RFC 2142) and
 * MAILER-DAEMON (replies to bounces) are where mail about the node goes. */
static int queue_is_admin_name(const char *local)
{
    static const char *const names[] = { "postmaster", "root", "abuse", "mailer-daemon" };
    for (size_t i = 0; i < MN_NELEM(names); i++)
        if (!strcasecmp(local, names[i]))
            return 1;
    return 0;
}

int queue_admin(struct store_user *u)
{
    if (conf->admin && conf->admin[0])
        return store_user_get(conf->admin, u);
    return store_user_first(u);
}

/* Mail for the admin names when no alias or user of that name exists:
 * the admin, or, until there is one, a mailbox of its own so that
 * nothing is refused (cron's `sendmail root` must not lose its report). */
static int queue_admin_route(struct queue_exp *x, const char *local, const char *domain)
{
    struct store_user u;
    char addr[ADDR_MAX];
    int rc = queue_admin(&u);

    if (rc == STORE_NOTFOUND) {
        rc = store_user_get(QUEUE_HOLDING_BOX, &u);
        if (rc == STORE_NOTFOUND) {
            memset(&u, 0, sizeof u);
            util_strlcpy(u.name, QUEUE_HOLDING_BOX, sizeof u.name);
            if ((rc = store_user_add(&u)))
                return rc;
            rc = store_user_get(QUEUE_HOLDING_BOX, &u);
        }
    }
    if (rc)
        return rc;
    queue_format_addr(local, domain, addr, sizeof addr);
    rc = queue_add(x, ROUTE_LOCAL, u.id, addr, domain);
    sodium_memzero(&u, sizeof u);
    return rc;
}

int queue_admin_adopt(void)
{
    struct store_user admin, box;
    int rc = store_user_get(QUEUE_HOLDING_BOX, &box);

    if (rc == STORE_NOTFOUND || (rc == 0 && box.pwhash[0]))
        return 0;                       /* no holding box, or a real user */
    if (rc)
        return rc;
    rc = queue_admin(&admin);
    if (rc == STORE_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    rc = store_user_adopt(box.id, admin.id);
    sodium_memzero(&admin, sizeof admin);
    sodium_memzero(&box, sizeof box);
    return rc ? rc : 1;
}

static int queue_expand(struct queue_exp *x, const char *local, const char *domain, int depth);

/* One alias target: "user", "user@domain" or "<user@domain>". */
static int queue_target(struct queue_exp *x, const char *t, const char *self_key,
                        const char *local, const char *domain, int depth)
{
    struct addr a;
    int rc, found;

    if (!strchr(t, '@')) {
        /* A bare name is a local part in the alias's own domain. */
        char key[ADDR_MAX];
        if (strlen(t) > SMTP_LOCAL_MAX) {
            log_warn("alias %s: target '%s' is too long, skipped", self_key, t);
            return 0;
        }
        for (const char *p = t; *p; p++)
            if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f || *p == '"') {
                log_warn("alias %s: target '%s' is not an address, skipped", self_key, t);
                return 0;
            }
        queue_format_addr(t, domain, key, sizeof key);
        util_lower(key);
        /* "bob: bob, bob@elsewhere" keeps a copy in bob's own mailbox (as
         * sendmail and Postfix do); with no such user it yields nothing. */
        if (!strcmp(key, self_key)) {
            if ((rc = queue_user(x, local, domain, &found)))
                return rc;
            if (!found)
                x->loop = 1;
            return 0;
        }
        return queue_expand(x, t, domain, depth + 1);
    }
    if (addr_parse_mailbox(t, &a)) {
        log_warn("alias %s: target '%s' is not an address, skipped", self_key, t);
        return 0;
    }
    {
        char key[ADDR_MAX];
        util_strlcpy(key, a.full, sizeof key);
        util_lower(key);
        if (!strcmp(key, self_key)) {
            if ((rc = queue_user(x, local, domain, &found)))
                return rc;
            if (!found)
                x->loop = 1;
            return 0;
        }
    }
    return queue_expand(x, a.local, a.domain, depth + 1);
}

static int queue_expand(struct queue_exp *x, const char *local, const char *domain, int depth)
{
    char key[ADDR_MAX], bare[SMTP_LOCAL_MAX * 2 + 3], addr[ADDR_MAX];
    char *targets = NULL, *p;
    int kind, rc, found;

    if (++x->work > QUEUE_EXPAND_MAX)
        return QUEUE_ETOOMANY;
    if ((rc = queue_domain_kind(domain, &kind)))
        return rc;
    queue_format_addr(local, domain, addr, sizeof addr);
    if (kind == DOMAIN_HOLD)
        return queue_add(x, ROUTE_HOLD, 0, addr, domain);
    if (kind != DOMAIN_LOCAL)
        return queue_add(x, ROUTE_REMOTE, 0, addr, domain);

    util_strlcpy(key, addr, sizeof key);
    util_lower(key);
    rc = queue_seen(x, key);
    if (rc < 0)
        return STORE_ERR;
    if (rc == 1 || depth > QUEUE_ALIAS_DEPTH) {
        /* Already expanded: a loop, or the same address reached twice
         * (it was routed the first time). */
        x->loop = 1;
        return 0;
    }

    targets = malloc(QUEUE_ALIAS_LEN);
    if (!targets)
        return STORE_ERR;
    /* The full address first, so a domain can have its own aliases; then
     * the bare name, which applies to every local domain. */
    rc = domain[0] ? store_alias_get(key, targets, QUEUE_ALIAS_LEN) : STORE_NOTFOUND;
    if (rc == STORE_NOTFOUND) {
        util_strlcpy(bare, local, sizeof bare);
        util_lower(bare);
        rc = store_alias_get(bare, targets, QUEUE_ALIAS_LEN);
    }
    if (rc == STORE_NOTFOUND) {
        free(targets);
        if ((rc = queue_user(x, local, domain, &found)))
            return rc;
        if (!found && queue_is_admin_name(local))
            return queue_admin_route(x, local, domain);
        return 0;
    }
    if (rc)
        goto out;

    /* Targets are separated by commas or white space; a quoted local
     * part may contain either. */
    p = targets;
    for (;;) {
        char *t, *o;
        int inq = 0;
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (!*p)
            break;
        t = o = p;
        while (*p) {
            if (*p == '"')
                inq = !inq;
            else if (!inq && (*p == ',' || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
                break;
            else if (inq && *p == '\\' && p[1])
                *o++ = *p++;
            *o++ = *p++;
        }
        if (*p)
            p++;
        *o = '\0';
        if ((rc = queue_target(x, t, key, local, domain, depth)))
            goto out;
    }
    rc = 0;
out:
    free(targets);
    return rc;
}

int queue_route(const struct addr *a, struct store_rcpt *out, size_t max, size_t *n)
{
    struct queue_exp x;
    int rc;

    *n = 0;
    if (a->null_path)
        return QUEUE_EUNKNOWN;
    memset(&x, 0, sizeof x);
    x.out = out;
    x.max = max;
    rc = queue_expand(&x, a->local, a->domain, 0);
    free(x.seen);
    if (rc)
        return rc;
    *n = x.n;
    if (x.n == 0)
        return x.loop ? QUEUE_ELOOP : QUEUE_EUNKNOWN;
    return 0;
}

/* submission.sender_login_match: may user send with reverse-path a?  Yes
 * for <>, for the user's own name in a local domain, for an alias whose
 * every target is the user's own mailbox, and for any address in a hold
 * domain the user owns (or below it: the site's own mail going out). */
int queue_sender_owned(const char *user, const struct addr *a)
{
    struct store_rcpt routes[8];
    struct store_user u;
    struct store_domain d;
    size_t n = 0;
    char local[sizeof a->local];

    if (a->null_path)
        return 1;
    util_strlcpy(local, a->local, sizeof local);
    util_lower(local);
    if (queue_domain_is_local(a->domain) && !strcmp(local, user))
        return 1;
    if (queue_domain_is_local(a->domain) && !store_user_get(user, &u) &&
        !queue_route(a, routes, MN_NELEM(routes), &n) && n) {
        size_t mine = 0;
        for (size_t i = 0; i < n; i++)
            mine += routes[i].kind == ROUTE_LOCAL && routes[i].user_id == u.id;
        sodium_memzero(&u, sizeof u);
        if (mine == n)
            return 1;
    }
    for (const char *dom = a->domain; dom && *dom; dom = strchr(dom, '.') ? strchr(dom, '.') + 1 : NULL)
        if (!store_domain_get(dom, &d) && d.kind == DOMAIN_HOLD && !strcmp(d.owner, user))
            return 1;
    return 0;
}
