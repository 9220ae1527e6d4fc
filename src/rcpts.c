/*
 * rcpts.c: the recipients of one transaction, compact and without
 * duplicates.
 *
 * A route (struct store_rcpt) has fixed fields sized for the longest
 * address, about 800 bytes; a session holding max_recipients of them
 * would cost close to a megabyte, and a hundred hostile sessions a
 * hundred.  Here each recipient costs its strings plus a small index
 * entry, and the full routes exist only while the message is written
 * to the store.
 *
 * Duplicates are merged after alias expansion (RFC 5321 3.3 lets a
 * server deliver one copy per mailbox): 1000 identical RCPT commands, or
 * several aliases of one user, make one copy, and the recipient limit
 * counts distinct recipients.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

struct rcpts_ent {
    int64_t user_id;
    uint32_t off;                       /* addr, orcpt, domain: NUL-terminated, one after the other */
    int16_t kind;
    int16_t notify;
};

/* The same destination mailbox: one local user, or one address elsewhere. */
static int same_route(const struct rcpts *l, const struct rcpts_ent *e, const struct store_rcpt *r)
{
    if (e->kind != r->kind)
        return 0;
    if (r->kind == ROUTE_LOCAL)
        return e->user_id == r->user_id;
    return !strcmp((const char *)l->arena + e->off, r->addr);
}

int rcpts_has(const struct rcpts *l, const struct store_rcpt *r)
{
    for (size_t i = 0; i < l->n; i++)
        if (same_route(l, &l->ent[i], r))
            return 1;
    return 0;
}

int rcpts_add(struct rcpts *l, const struct store_rcpt *r)
{
    size_t la = strlen(r->addr) + 1, lo = strlen(r->orcpt) + 1, ld = strlen(r->domain) + 1;

    if (rcpts_has(l, r))
        return 0;
    if (l->n == l->capn) {
        size_t c = l->capn ? l->capn * 2 : 8;
        void *p = realloc(l->ent, c * sizeof *l->ent);
        if (!p)
            return -1;
        l->ent = p;
        l->capn = c;
    }
    if (l->used + la + lo + ld > l->cap) {
        size_t c = l->cap ? l->cap : 512;
        while (c < l->used + la + lo + ld)
            c *= 2;
        if (c > UINT32_MAX)
            return -1;
        void *p = realloc(l->arena, c);
        if (!p)
            return -1;
        l->arena = p;
        l->cap = c;
    }
    struct rcpts_ent *e = &l->ent[l->n++];
    e->user_id = r->user_id;
    e->kind = (int16_t)r->kind;
    e->notify = (int16_t)r->notify;
    e->off = (uint32_t)l->used;
    memcpy(l->arena + l->used, r->addr, la);
    memcpy(l->arena + l->used + la, r->orcpt, lo);
    memcpy(l->arena + l->used + la + lo, r->domain, ld);
    l->used += la + lo + ld;
    return 1;
}

void rcpts_get(const struct rcpts *l, size_t i, struct store_rcpt *r)
{
    const struct rcpts_ent *e = &l->ent[i];
    const char *p = (const char *)l->arena + e->off;

    memset(r, 0, sizeof *r);
    r->kind = e->kind;
    r->user_id = e->user_id;
    r->notify = e->notify;
    util_strlcpy(r->addr, p, sizeof r->addr);
    p += strlen(p) + 1;
    util_strlcpy(r->orcpt, p, sizeof r->orcpt);
    p += strlen(p) + 1;
    util_strlcpy(r->domain, p, sizeof r->domain);
}

const char *rcpts_addr(const struct rcpts *l, size_t i)
{
    return (const char *)l->arena + l->ent[i].off;
}

int rcpts_kind(const struct rcpts *l, size_t i)
{
    return l->ent[i].kind;
}

int rcpts_notify(const struct rcpts *l, size_t i)
{
    return l->ent[i].notify;
}

struct store_rcpt *rcpts_expand(const struct rcpts *l)
{
    struct store_rcpt *out = malloc((l->n ? l->n : 1) * sizeof *out);
    if (!out)
        return NULL;
    for (size_t i = 0; i < l->n; i++)
        rcpts_get(l, i, &out[i]);
    return out;
}

/* The memory goes back at once: an idle session holds none. */
void rcpts_clear(struct rcpts *l)
{
    free(l->arena);
    free(l->ent);
    memset(l, 0, sizeof *l);
}
