/*
 * limit.c: per-address and per-account abuse limits.  Small fixed tables
 * remember the recent behaviour of client addresses (authentication
 * failures, the rate of messages) and of accounts (authentication
 * failures).  Bounded memory: each table has a fixed size and the least
 * recently seen entry makes room for a new one, so a flood of addresses
 * or names cannot grow it.
 *
 * The failure counters are shared by every protocol that checks a
 * password (SMTP AUTH on every listener, POP3 USER/PASS and AUTH, and
 * IMAP when it comes): a guesser gains nothing by switching protocols.
 */
#include "internal.h"

#include <string.h>

#define LIMIT_SLOTS 256
#define LIMIT_WINDOW 600                /* seconds failures are remembered */
#define ACCOUNT_FIRST_WAIT 60           /* the account's first back-off */
#define ACCOUNT_MAX_WAIT 900            /* and its longest */

struct limit_slot {
    char ip[64];
    int64_t seen;
    int auth_failures;
    int64_t auth_first;
    double tokens;                      /* message bucket */
    int64_t tokens_at_ms;
};

struct account_slot {
    char user[USER_MAX + 1];
    int64_t seen;
    int failures;
    int64_t first;
    int64_t until;                      /* no attempt before this */
    int step;                           /* back-offs so far */
};

static struct limit_slot slots[LIMIT_SLOTS];
static struct account_slot accounts[LIMIT_SLOTS];

static struct limit_slot *slot_for(const char *ip)
{
    struct limit_slot *oldest = &slots[0];
    int64_t now = util_now();

    for (int i = 0; i < LIMIT_SLOTS; i++) {
        if (slots[i].ip[0] && !strcmp(slots[i].ip, ip)) {
            slots[i].seen = now;
            return &slots[i];
        }
        if (slots[i].seen < oldest->seen)
            oldest = &slots[i];
    }
    memset(oldest, 0, sizeof *oldest);
    util_strlcpy(oldest->ip, ip, sizeof oldest->ip);
    oldest->seen = now;
    oldest->tokens = -1;
    return oldest;
}

/* The account's entry, or NULL when it has none and create is 0.  Names
 * are compared in lower case, as they are stored. */
static struct account_slot *account_for(const char *user, int create)
{
    struct account_slot *oldest = &accounts[0];
    char name[USER_MAX + 1];
    int64_t now = util_now();

    if (!user || !*user)
        return NULL;
    util_strlcpy(name, user, sizeof name);
    util_lower(name);
    for (int i = 0; i < LIMIT_SLOTS; i++) {
        if (accounts[i].user[0] && !strcmp(accounts[i].user, name)) {
            accounts[i].seen = now;
            return &accounts[i];
        }
        if (accounts[i].seen < oldest->seen)
            oldest = &accounts[i];
    }
    if (!create)
        return NULL;
    memset(oldest, 0, sizeof *oldest);
    util_strlcpy(oldest->user, name, sizeof oldest->user);
    oldest->seen = now;
    oldest->first = now;
    return oldest;
}

/* Clients in relay_networks (by default the loopback networks) are not
 * limited per address: they are the site's own scripts and users.  The
 * account counter still protects their accounts. */
static int trusted(const struct conn *c)
{
    return conf_relay_allowed(&c->peer);
}

void limit_auth_failed(const struct conn *c, const char *user)
{
    int64_t now = util_now();

    if (!trusted(c)) {
        struct limit_slot *s = slot_for(c->peer_ip);
        if (now - s->auth_first > LIMIT_WINDOW) {
            s->auth_first = now;
            s->auth_failures = 0;
        }
        s->auth_failures++;
    }
    struct account_slot *a = account_for(user, 1);
    if (!a || a->until > now)
        return;                         /* refused while backing off: not counted again */
    if (now - a->first > LIMIT_WINDOW) {
        a->first = now;
        a->failures = 0;
        a->step = 0;
    }
    a->failures++;
    if (conf->limit_auth_failures_per_user > 0 && a->failures >= conf->limit_auth_failures_per_user) {
        /* Slower than the address limit: one more attempt after a minute,
         * then after two, four... up to fifteen, so that guessing one
         * account from many addresses stays slow, while its owner is
         * locked out for minutes, not for good. */
        int64_t wait = ACCOUNT_FIRST_WAIT << (a->step < 8 ? a->step : 8);
        a->until = now + (wait < ACCOUNT_MAX_WAIT ? wait : ACCOUNT_MAX_WAIT);
        a->step++;
        a->first = now;
        log_warn("account %s: %d failed logins, next attempt in %llds", a->user, a->failures,
                 (long long)(a->until - now));
    }
}

void limit_auth_ok(const char *user)
{
    struct account_slot *a = account_for(user, 0);
    if (a)
        memset(a, 0, sizeof *a);
}

int64_t limit_account_wait(const char *user)
{
    struct account_slot *a = account_for(user, 0);
    int64_t now = util_now();
    return a && a->until > now ? a->until - now : 0;
}

int limit_auth_blocked(const struct conn *c)
{
    if (trusted(c))
        return 0;
    struct limit_slot *s = slot_for(c->peer_ip);
    if (util_now() - s->auth_first > LIMIT_WINDOW)
        return 0;
    /* Failures counted over all of the address's connections: a guesser
     * that reconnects after each refusal gains nothing. */
    return conf->limit_auth_failures_per_ip > 0 && s->auth_failures >= conf->limit_auth_failures_per_ip;
}

int limit_message_ok(const struct conn *c)
{
    struct limit_slot *s;
    int64_t now_ms = util_now_ms();
    double rate;

    if (trusted(c) || conf->limit_messages_per_minute <= 0)
        return 1;
    s = slot_for(c->peer_ip);
    rate = (double)conf->limit_messages_per_minute / 60000.0;   /* per ms */
    if (s->tokens < 0)
        s->tokens = (double)conf->limit_messages_per_minute;    /* a full minute's burst */
    else
        s->tokens += (double)(now_ms - s->tokens_at_ms) * rate;
    if (s->tokens > (double)conf->limit_messages_per_minute)
        s->tokens = (double)conf->limit_messages_per_minute;
    s->tokens_at_ms = now_ms;
    if (s->tokens < 1.0)
        return 0;
    s->tokens -= 1.0;
    return 1;
}

/* Asked before a connection gets a slot, with the counts of live inbound
 * connections (in total, on this kind of listener, from this address).
 * A refused connection is closed at once and never holds a slot.  The
 * last limit.connections_reserved slots (at most half of them) are kept
 * for clients in relay_networks and for the submission, POP3 and IMAP
 * listeners, where every client must log in: idle strangers on port 25
 * cannot lock out the site's own users. */
const char *limit_admit(int kind, const struct sockaddr_storage *peer, int total, int on_listener, int same)
{
    int trust = conf_relay_allowed(peer);

    if (!trust && conf->limit_connections_per_ip > 0 && same >= conf->limit_connections_per_ip)
        return "limit.connections_per_ip";
    if (kind >= 0 && kind < LISTEN_N && conf->max_connections_on[kind] > 0 &&
        on_listener >= conf->max_connections_on[kind])
        return "max_connections per listener";
    if (conf->max_connections > 0) {
        int64_t reserve = conf->limit_connections_reserved;
        if (reserve > conf->max_connections / 2)
            reserve = conf->max_connections / 2;
        if (reserve < 0 || trust || kind == LISTEN_SUBMISSION || kind == LISTEN_POP3 || kind == LISTEN_IMAP ||
            kind == LISTEN_IMAPS)
            reserve = 0;
        if (total >= conf->max_connections - reserve)
            return reserve && total < conf->max_connections ? "limit.connections_reserved" : "max_connections";
    }
    return NULL;
}
