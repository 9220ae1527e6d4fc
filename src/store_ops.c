/*
 * store_ops.c: the queries behind the operator's commands (status, queue
 * list/show/delete, poll's account of what stayed queued).  Read-mostly
 * and kept apart from the delivery path's SQL in store.c and
 * store_deliver.c.
 */
#include "internal.h"

#include <string.h>

/* Remote recipients still queued and not held by `queue hold`: for one
 * destination domain, or ("" ) for every one (all go to the relayhost). */
int64_t store_ops_queued_remote(const char *domain)
{
    static sqlite3_stmt *one, *all;
    sqlite3_stmt *st;
    int64_t n = -1;

    if (domain[0]) {
        st = store_stmt(&one, "SELECT count(*) FROM rcpt r WHERE state=0 AND kind=2 AND dest=? AND NOT EXISTS"
                              " (SELECT 1 FROM message m WHERE m.id=r.message_id AND m.hold=1)");
        if (st)
            sqlite3_bind_text(st, 1, domain, -1, SQLITE_TRANSIENT);
    } else {
        st = store_stmt(&all, "SELECT count(*) FROM rcpt r WHERE state=0 AND kind=2 AND NOT EXISTS"
                              " (SELECT 1 FROM message m WHERE m.id=r.message_id AND m.hold=1)");
    }
    if (!st)
        return -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return n;
}

/* Columns: name, next_try, backoff, failures, last_try, last_ok,
 * last_error, backlog. */
static void ops_dest_fill(sqlite3_stmt *q, struct store_dest *d)
{
    const char *e = (const char *)sqlite3_column_text(q, 6);
    const char *name = (const char *)sqlite3_column_text(q, 0);

    memset(d, 0, sizeof *d);
    util_strlcpy(d->name, name ? name : "", sizeof d->name);
    d->next_try = sqlite3_column_int64(q, 1);
    d->backoff = sqlite3_column_int64(q, 2);
    d->failures = sqlite3_column_int64(q, 3);
    d->last_try = sqlite3_column_int64(q, 4);
    d->last_ok = sqlite3_column_int64(q, 5);
    util_strlcpy(d->last_error, e ? e : "", sizeof d->last_error);
    d->backlog = sqlite3_column_int64(q, 7);
}

/* Where queued remote mail waits.  With a relayhost every remote
 * recipient waits for it, whatever its domain, so there is one line, the
 * relayhost's ("[relayhost]"); without one, a line per destination domain,
 * also for domains not tried yet. */
int store_ops_dests(int relay, int (*cb)(void *arg, const struct store_dest *d), void *arg)
{
    static sqlite3_stmt *viarelay, *direct;
    sqlite3_stmt *q;
    struct store_dest d;
    int rc;

    if (relay)
        q = store_stmt(&viarelay,
                       "SELECT '[relayhost]', d.next_try, d.backoff, d.failures, d.last_try, d.last_ok,"
                       " d.last_error, (SELECT coalesce(sum(rcpts), 0) FROM backlog WHERE kind=2)"
                       " FROM (SELECT 1) LEFT JOIN dest d ON d.name='[relayhost]'");
    else
        q = store_stmt(&direct,
                       "SELECT name, next_try, backoff, failures, last_try, last_ok, last_error,"
                       " coalesce((SELECT rcpts FROM backlog b WHERE b.kind=2 AND b.dest=dest.name), 0)"
                       " FROM dest WHERE name<>'[relayhost]'"
                       " UNION ALL SELECT dest, 0, 0, 0, 0, 0, NULL, rcpts FROM backlog"
                       " WHERE kind=2 AND dest NOT IN (SELECT name FROM dest)"
                       " ORDER BY 1");
    if (!q)
        return STORE_ERR;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        ops_dest_fill(q, &d);
        if (cb(arg, &d))
            break;
    }
    sqlite3_reset(q);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

/* Mail held for on-demand relay (hold domains), per domain. */
int store_ops_held(int (*cb)(void *arg, const char *domain, int64_t rcpts, int64_t msgs), void *arg)
{
    static sqlite3_stmt *q;
    int rc;

    if (!store_stmt(&q, "SELECT dest, rcpts, msgs FROM backlog WHERE kind=3 ORDER BY dest"))
        return STORE_ERR;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW)
        if (cb(arg, (const char *)sqlite3_column_text(q, 0), sqlite3_column_int64(q, 1),
               sqlite3_column_int64(q, 2)))
            break;
    sqlite3_reset(q);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

/* Messages stopped with `queue hold`. */
int64_t store_ops_on_hold(void)
{
    static sqlite3_stmt *q;
    int64_t n = -1;

    if (!store_stmt(&q, "SELECT count(*) FROM message m WHERE m.hold=1 AND EXISTS (SELECT 1 FROM rcpt r"
                        " WHERE r.message_id=m.id AND r.state=0 AND r.kind IN (1,2,3))"))
        return -1;
    if (sqlite3_step(q) == SQLITE_ROW)
        n = sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    return n;
}

/* ----------------------------------------------------------------- queue */

/* Columns: id, qid, sender, received, size, hold, body_id. */
static void ops_msg_fill(sqlite3_stmt *q, struct store_ops_msg *m)
{
    const char *t;

    memset(m, 0, sizeof *m);
    m->id = sqlite3_column_int64(q, 0);
    t = (const char *)sqlite3_column_text(q, 1);
    util_strlcpy(m->qid, t ? t : "", sizeof m->qid);
    t = (const char *)sqlite3_column_text(q, 2);
    util_strlcpy(m->sender, t ? t : "", sizeof m->sender);
    m->received = sqlite3_column_int64(q, 3);
    m->size = sqlite3_column_int64(q, 4);
    m->hold = sqlite3_column_int(q, 5);
    m->body_id = sqlite3_column_int64(q, 6);
}

int store_ops_msgs(const char *domain, int (*cb)(void *arg, const struct store_ops_msg *m), void *arg)
{
    static sqlite3_stmt *all, *dom;
    struct store_ops_msg m;
    sqlite3_stmt *q;
    int rc;

    if (domain && domain[0]) {
        q = store_stmt(&dom, "SELECT DISTINCT m.id, m.qid, m.sender, m.received, m.size, m.hold, m.body_id"
                             " FROM rcpt r CROSS JOIN message m ON m.id=r.message_id"
                             " WHERE r.state=0 AND r.kind IN (1,2,3) AND r.dest=? ORDER BY m.id");
        if (q)
            sqlite3_bind_text(q, 1, domain, -1, SQLITE_TRANSIENT);
    } else {
        q = store_stmt(&all, "SELECT DISTINCT m.id, m.qid, m.sender, m.received, m.size, m.hold, m.body_id"
                             " FROM rcpt r CROSS JOIN message m ON m.id=r.message_id"
                             " WHERE r.state=0 AND r.kind IN (1,2,3) ORDER BY m.id");
    }
    if (!q)
        return STORE_ERR;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        ops_msg_fill(q, &m);
        if (cb(arg, &m))
            break;
    }
    sqlite3_reset(q);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_ops_msg_get(const char *qid, struct store_ops_msg *m)
{
    static sqlite3_stmt *q;
    int rc;

    if (!store_stmt(&q, "SELECT id, qid, sender, received, size, hold, body_id FROM message WHERE qid=?"))
        return STORE_ERR;
    sqlite3_bind_text(q, 1, qid, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW)
        ops_msg_fill(q, m);
    sqlite3_reset(q);
    return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? STORE_NOTFOUND : STORE_ERR;
}

/* A recipient's next try is the later of its own and its destination's:
 * the scheduler waits for both (the destination's backoff is per next
 * hop, the relayhost's when there is one). */
int store_ops_rcpts(int64_t msg_id, int relay, int (*cb)(void *arg, const struct store_ops_rcpt *r), void *arg)
{
    static sqlite3_stmt *q;
    struct store_ops_rcpt r;
    int rc;

    if (!store_stmt(&q, "SELECT r.addr, r.state, r.kind, r.attempts, r.next_try, r.last_error, r.dest,"
                        " d.next_try, r.updated, d.failures, d.last_error, d.last_try"
                        " FROM rcpt r LEFT JOIN dest d ON d.name=CASE WHEN ?2 THEN '[relayhost]' ELSE r.dest END"
                        " WHERE r.message_id=?1 ORDER BY r.id"))
        return STORE_ERR;
    sqlite3_bind_int64(q, 1, msg_id);
    sqlite3_bind_int(q, 2, relay);
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        const char *t;
        int64_t dest_next = sqlite3_column_int64(q, 7);
        memset(&r, 0, sizeof r);
        t = (const char *)sqlite3_column_text(q, 0);
        util_strlcpy(r.addr, t ? t : "", sizeof r.addr);
        r.state = sqlite3_column_int(q, 1);
        r.kind = sqlite3_column_int(q, 2);
        r.attempts = sqlite3_column_int(q, 3);
        r.next_try = sqlite3_column_int64(q, 4);
        if (dest_next > r.next_try)
            r.next_try = dest_next;
        t = (const char *)sqlite3_column_text(q, 5);
        util_strlcpy(r.last_error, t ? t : "", sizeof r.last_error);
        t = (const char *)sqlite3_column_text(q, 6);
        util_strlcpy(r.dest, t ? t : "", sizeof r.dest);
        r.updated = sqlite3_column_int64(q, 8);
        /* A destination that was not reached never saw the recipient:
         * its failures and error are the recipient's news. */
        r.dest_failures = sqlite3_column_int(q, 9);
        t = (const char *)sqlite3_column_text(q, 10);
        if (r.state == 0 && r.dest_failures && t && sqlite3_column_int64(q, 11) >= r.updated) {
            util_strlcpy(r.last_error, t, sizeof r.last_error);
            r.updated = sqlite3_column_int64(q, 11);
        }
        if (cb(arg, &r))
            break;
    }
    sqlite3_reset(q);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

/* Removes the queued recipients for one domain (no bounce, as `queue
 * delete`); a message left with nothing queued goes with them. */
int store_ops_delete_domain(const char *domain, int64_t *rcpts)
{
    static sqlite3_stmt *ids, *del, *left;
    struct { int64_t id; char qid[QID_LEN + 1]; } *msgs = NULL;
    size_t n = 0, cap = 0;
    int err, rc;

    *rcpts = 0;
    if ((err = store_begin()))
        return err;
    if (!store_stmt(&ids, "SELECT DISTINCT m.id, m.qid FROM rcpt r CROSS JOIN message m ON m.id=r.message_id"
                          " WHERE r.state=0 AND r.kind IN (2,3) AND r.dest=?") ||
        !store_stmt(&del, "DELETE FROM rcpt WHERE state=0 AND kind IN (2,3) AND dest=?") ||
        !store_stmt(&left, "SELECT count(*) FROM rcpt WHERE message_id=? AND state=0"))
        return STORE_ERR;
    /* The messages concerned, before their recipients go. */
    sqlite3_bind_text(ids, 1, domain, -1, SQLITE_TRANSIENT);
    while ((rc = sqlite3_step(ids)) == SQLITE_ROW) {
        if (n == cap) {
            void *p = realloc(msgs, (cap = cap ? cap * 2 : 64) * sizeof *msgs);
            if (!p) {
                rc = SQLITE_NOMEM;
                break;
            }
            msgs = p;
        }
        msgs[n].id = sqlite3_column_int64(ids, 0);
        util_strlcpy(msgs[n++].qid, (const char *)sqlite3_column_text(ids, 1), sizeof msgs[0].qid);
    }
    sqlite3_reset(ids);
    err = rc == SQLITE_DONE ? 0 : STORE_ERR;
    if (!err) {
        sqlite3_bind_text(del, 1, domain, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(del);
        sqlite3_reset(del);
        err = rc == SQLITE_DONE ? 0 : store_rc(rc);
        *rcpts = err ? 0 : sqlite3_changes(store_db());
    }
    /* A message that kept nothing queued ends as a delete would end it. */
    for (size_t i = 0; i < n && !err; i++) {
        int64_t still = 1;
        sqlite3_bind_int64(left, 1, msgs[i].id);
        if (sqlite3_step(left) == SQLITE_ROW)
            still = sqlite3_column_int64(left, 0);
        sqlite3_reset(left);
        if (!still)
            err = store_queue_delete(msgs[i].qid);
    }
    free(msgs);
    return err;
}

/* The last error a queued recipient met, for its expiry notice: its own
 * (a peer's reply to it) or, when later, its destination's (a connection
 * or a lookup that failed before any peer saw the recipient).  *when gets
 * the time it was recorded, *of_dest whether it is the destination's.
 * STORE_NOTFOUND when nothing was recorded. */
int store_ops_rcpt_error(int64_t rcpt_id, int relay, char *err, size_t n, int64_t *when, int *of_dest)
{
    static sqlite3_stmt *q;
    int rc;

    err[0] = '\0';
    *when = 0;
    *of_dest = 0;
    if (!store_stmt(&q, "SELECT r.last_error, r.updated, d.last_error, d.last_try FROM rcpt r"
                        " LEFT JOIN dest d ON d.name=CASE WHEN ?2 THEN '[relayhost]' ELSE r.dest END"
                        " WHERE r.id=?1"))
        return STORE_ERR;
    sqlite3_bind_int64(q, 1, rcpt_id);
    sqlite3_bind_int(q, 2, relay);
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        const char *own = (const char *)sqlite3_column_text(q, 0);
        const char *dest = (const char *)sqlite3_column_text(q, 2);
        int64_t own_at = sqlite3_column_int64(q, 1), dest_at = sqlite3_column_int64(q, 3);
        if (dest && dest[0] && (!own || !own[0] || dest_at >= own_at)) {
            util_strlcpy(err, dest, n);
            *when = dest_at;
            *of_dest = 1;
        } else if (own && own[0]) {
            util_strlcpy(err, own, n);
            *when = own_at;
        }
    }
    sqlite3_reset(q);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return STORE_ERR;
    return err[0] ? 0 : STORE_NOTFOUND;
}

/* A notification about an undeliverable notification is marked by its
 * client column, so that its own failure ends there (never a third). */
int store_ops_is_double_bounce(int64_t msg_id)
{
    static sqlite3_stmt *q;
    int yes = 0;

    if (!store_stmt(&q, "SELECT 1 FROM message WHERE id=? AND client='" STORE_DOUBLE_BOUNCE "'"))
        return 0;
    sqlite3_bind_int64(q, 1, msg_id);
    yes = sqlite3_step(q) == SQLITE_ROW;
    sqlite3_reset(q);
    return yes;
}
