/*
 * limit.c: per-address abuse limits.  A small fixed table remembers the
 * recent behaviour of client addresses: authentication failures and the
 * rate of messages.  Bounded memory: the table has a fixed size and the
 * least recently seen address makes room for a new one, so a flood of
 * addresses cannot grow it.
 */
#include "internal.h"

#include <string.h>

#define LIMIT_SLOTS 256
#define LIMIT_WINDOW 600                /* seconds an address's failures are remembered */

struct limit_slot {
    char ip[64];
    int64_t seen;
    int auth_failures;
    int64_t auth_first;
    double tokens;                      /* message bucket */
    int64_t tokens_at_ms;
};

static struct limit_slot slots[LIMIT_SLOTS];

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

/* Clients in relay_networks (by default the loopback networks) are not
 * limited: they are the site's own scripts and users. */
static int trusted(const struct conn *c)
{
    return conf_relay_allowed(&c->peer);
}

void limit_auth_failed(const struct conn *c)
{
    struct limit_slot *s = slot_for(c->peer_ip);
    int64_t now = util_now();
    if (now - s->auth_first > LIMIT_WINDOW) {
        s->auth_first = now;
        s->auth_failures = 0;
    }
    s->auth_failures++;
}

int limit_auth_blocked(const struct conn *c)
{
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

int limit_connections_ok(const struct conn *c, int current)
{
    return trusted(c) || conf->limit_connections_per_ip <= 0 || current <= conf->limit_connections_per_ip;
}
