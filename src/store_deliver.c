/*
 * store_deliver.c: the outbound queue as the delivery scheduler sees it:
 * which destinations have mail due, the messages of one batch, the
 * outcome of each recipient, destination backoff, expiry and warnings.
 * Every scan is an indexed query whose cost does not grow with the number
 * of messages waiting.
 */
#include "internal.h"

#include <string.h>

static int sd_step(sqlite3_stmt *st)
{
    if (STORE_FAULT()) {
        sqlite3_reset(st);
        return STORE_ERR;
    }
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_err("database: %s", sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    return 0;
}

static void copy_text(char *dst, size_t n, sqlite3_stmt *st, int col)
{
    const char *t = (const char *)sqlite3_column_text(st, col);
    util_strlcpy(dst, t ? t : "", n);
}

int store_due_domains(int64_t now, int (*cb)(void *arg, const char *domain), void *arg)
{
    static sqlite3_stmt *st;
    int rc;

    /* One probe of the rcpt_due index per destination that is not backing
     * off: the cost follows the number of destinations, not of messages. */
    if (!store_stmt(&st, "SELECT name FROM dest WHERE next_try<=?1 AND EXISTS (SELECT 1 FROM rcpt"
                         " WHERE state=0 AND kind=2 AND dest=dest.name AND next_try<=?1)"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, now);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (cb(arg, (const char *)sqlite3_column_text(st, 0)))
            break;
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_any_due(int64_t now)
{
    static sqlite3_stmt *st;
    int found = 0;

    if (!store_stmt(&st, "SELECT 1 FROM rcpt WHERE state=0 AND kind=2 AND next_try<=? LIMIT 1"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, now);
    found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    return found;
}

static void envelope_fill(sqlite3_stmt *st, struct store_out_msg *m)
{
    memset(m, 0, sizeof *m);
    m->id = sqlite3_column_int64(st, 0);
    copy_text(m->qid, sizeof m->qid, st, 1);
    m->body_id = sqlite3_column_int64(st, 2);
    copy_text(m->sender, sizeof m->sender, st, 3);
    copy_text(m->envid, sizeof m->envid, st, 4);
    m->ret_full = sqlite3_column_int(st, 5);
    m->eightbit = sqlite3_column_int(st, 6);
    m->size = sqlite3_column_int64(st, 7);
    m->received = sqlite3_column_int64(st, 8);
}

#define ENVELOPE_COLS "m.id, m.qid, m.body_id, m.sender, m.envid, m.ret_full, m.eightbit, m.size, m.received"

void store_out_free(struct store_out_msg *m)
{
    free(m->rcpts);
    m->rcpts = NULL;
    m->nrcpt = 0;
}

/* The recipients of m to hand out: due, of the kind, in the destination
 * (domain NULL: any).  exact_try >= 0 keeps only those whose next_try is
 * exactly that, i.e. the ones of the index entry that was picked: others
 * of the same message have entries of their own further on. */
static int rcpts_fill(struct store_out_msg *m, const char *domain, int kind, int64_t now, int64_t exact_try)
{
    static sqlite3_stmt *st;
    int rc;

    m->rcpts = calloc(STORE_OUT_RCPTS, sizeof *m->rcpts);
    if (!m->rcpts)
        return STORE_ERR;
    /* "+": the message's own rows through rcpt_message, never a range of
     * the scheduler's indexes (that would visit every queued recipient). */
    if (!store_stmt(&st, "SELECT id, addr, orcpt, notify, attempts FROM rcpt WHERE message_id=?1"
                         " AND state=0 AND +kind=?4 AND +next_try<=?2 AND (?3 IS NULL OR dest=?3)"
                         " AND (?5 < 0 OR next_try=?5) ORDER BY id LIMIT " "100"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, m->id);
    sqlite3_bind_int(st, 4, kind);
    sqlite3_bind_int64(st, 2, now);
    if (domain)
        sqlite3_bind_text(st, 3, domain, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, exact_try);
    m->nrcpt = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && m->nrcpt < STORE_OUT_RCPTS) {
        struct store_out_rcpt *r = &m->rcpts[m->nrcpt++];
        r->id = sqlite3_column_int64(st, 0);
        copy_text(r->addr, sizeof r->addr, st, 1);
        copy_text(r->orcpt, sizeof r->orcpt, st, 2);
        r->notify = sqlite3_column_int(st, 3);
        r->attempts = sqlite3_column_int(st, 4);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        store_out_free(m);
        return STORE_ERR;
    }
    /* Keep only what is used: a batch holds many messages in flight. */
    void *p = realloc(m->rcpts, (m->nrcpt ? (size_t)m->nrcpt : 1) * sizeof *m->rcpts);
    if (p)
        m->rcpts = p;
    return 0;
}

/* The pick walks the partial index rcpt_pick (or rcpt_any) from the
 * cursor: one seek, then the first entry, whatever the queue's size.
 * The cursor is (next_try, message_id), the index order, so a session
 * never sees a message twice for the same entry, and mail that becomes
 * due while it runs (new mail, a flush) sorts after the cursor.
 * A size class [size_lo, size_hi] keeps the index as the outer loop
 * (CROSS JOIN) and looks each entry's message up by its key: a walk
 * steps over the entries of the other class only, and each cursor moves
 * forward, so a whole session costs one pass over its due entries. */
int store_out_next_sized(const char *domain, int kind, struct store_cursor *cur, int64_t now, int64_t size_lo,
                         int64_t size_hi, struct store_out_msg *m)
{
    static sqlite3_stmt *by_dest, *any;
    sqlite3_stmt *st;
    int64_t at;
    int rc;

    if (domain) {
        st = store_stmt(&by_dest, "SELECT " ENVELOPE_COLS ", r.next_try FROM (SELECT x.message_id, x.next_try"
                                  " FROM rcpt x CROSS JOIN message y ON y.id=x.message_id"
                                  " WHERE x.state=0 AND x.kind=?4 AND x.dest=?1 AND x.next_try<=?2"
                                  " AND (x.next_try, x.message_id)>(?5, ?3) AND y.size BETWEEN ?6 AND ?7"
                                  " ORDER BY x.next_try, x.message_id LIMIT 1) r"
                                  " JOIN message m ON m.id=r.message_id");
    } else {
        st = store_stmt(&any, "SELECT " ENVELOPE_COLS ", r.next_try FROM (SELECT x.message_id, x.next_try"
                              " FROM rcpt x CROSS JOIN message y ON y.id=x.message_id"
                              " WHERE x.state=0 AND x.kind=?4 AND x.next_try<=?2"
                              " AND (x.next_try, x.message_id)>(?5, ?3) AND y.size BETWEEN ?6 AND ?7"
                              " ORDER BY x.next_try, x.message_id LIMIT 1) r"
                              " JOIN message m ON m.id=r.message_id");
    }
    if (!st)
        return STORE_ERR;
    sqlite3_bind_int(st, 4, kind);
    if (domain)
        sqlite3_bind_text(st, 1, domain, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int64(st, 3, cur->msg_id);
    sqlite3_bind_int64(st, 5, cur->next_try);
    sqlite3_bind_int64(st, 6, size_lo);
    sqlite3_bind_int64(st, 7, size_hi);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        envelope_fill(st, m);
        at = sqlite3_column_int64(st, 9);
    }
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc != SQLITE_ROW)
        return STORE_ERR;
    cur->next_try = at;
    cur->msg_id = m->id;
    if (rcpts_fill(m, domain, kind, now, at))
        return STORE_ERR;
    return 1;
}

int store_out_next(const char *domain, int kind, struct store_cursor *cur, int64_t now, struct store_out_msg *m)
{
    return store_out_next_sized(domain, kind, cur, now, 0, INT64_MAX, m);
}

int store_out_get(int64_t msg_id, struct store_out_msg *m)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT " ENVELOPE_COLS " FROM message m WHERE m.id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, msg_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        envelope_fill(st, m);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? STORE_NOTFOUND : STORE_ERR;
    /* every queued remote recipient, whenever due */
    return rcpts_fill(m, NULL, ROUTE_REMOTE, INT64_MAX, -1);
}

int store_rcpt_set(int64_t rcpt_id, int state, int64_t next_try, const char *error)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "UPDATE rcpt SET state=?, next_try=?, last_error=?, updated=?,"
                         " attempts=attempts+1 WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int(st, 1, state);
    sqlite3_bind_int64(st, 2, next_try);
    if (error)
        sqlite3_bind_text(st, 3, error, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, util_now());
    sqlite3_bind_int64(st, 5, rcpt_id);
    /* Committed with the other outcomes of the batch (store_outcome). */
    store_outcome();
    return sd_step(st);
}

static int msg_retire(int64_t msg_id)
{
    static sqlite3_stmt *left, *dr, *dm, *bq;
    int64_t body_id = 0;
    int n = 1, err;

    if (!store_stmt(&left, "SELECT count(*) FROM rcpt WHERE message_id=? AND state=0"))
        return STORE_ERR;
    sqlite3_bind_int64(left, 1, msg_id);
    if (sqlite3_step(left) == SQLITE_ROW)
        n = sqlite3_column_int(left, 0);
    sqlite3_reset(left);
    if (n)
        return 0;
    if ((err = store_begin()))
        return err;
    if (!store_stmt(&bq, "SELECT body_id FROM message WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(bq, 1, msg_id);
    if (sqlite3_step(bq) == SQLITE_ROW)
        body_id = sqlite3_column_int64(bq, 0);
    sqlite3_reset(bq);
    if (!store_stmt(&dr, "DELETE FROM rcpt WHERE message_id=?") ||
        !store_stmt(&dm, "DELETE FROM message WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(dr, 1, msg_id);
    if ((err = sd_step(dr)))
        return err;
    sqlite3_bind_int64(dm, 1, msg_id);
    if ((err = sd_step(dm)))
        return err;
    if ((err = store_gc_body(body_id)))
        return err;
    return 1;
}

int store_msg_retire(int64_t msg_id)
{
    int err = store_atomic_begin();
    return err ? err : store_atomic_end(msg_retire(msg_id));
}

int store_dest_get(const char *name, struct store_dest *d)
{
    static sqlite3_stmt *st;
    int rc;

    memset(d, 0, sizeof *d);
    util_strlcpy(d->name, name, sizeof d->name);
    if (!store_stmt(&st, "SELECT next_try, backoff, failures, last_try, last_ok, last_error FROM dest WHERE name=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        d->next_try = sqlite3_column_int64(st, 0);
        d->backoff = sqlite3_column_int64(st, 1);
        d->failures = sqlite3_column_int64(st, 2);
        d->last_try = sqlite3_column_int64(st, 3);
        d->last_ok = sqlite3_column_int64(st, 4);
        copy_text(d->last_error, sizeof d->last_error, st, 5);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_dest_put(const struct store_dest *d)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT INTO dest(name, next_try, backoff, failures, last_try, last_ok, last_error)"
                         " VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET next_try=excluded.next_try,"
                         " backoff=excluded.backoff, failures=excluded.failures, last_try=excluded.last_try,"
                         " last_ok=excluded.last_ok, last_error=excluded.last_error"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, d->name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, d->next_try);
    sqlite3_bind_int64(st, 3, d->backoff);
    sqlite3_bind_int64(st, 4, d->failures);
    sqlite3_bind_int64(st, 5, d->last_try);
    if (d->last_ok)
        sqlite3_bind_int64(st, 6, d->last_ok);
    if (d->last_error[0])
        sqlite3_bind_text(st, 7, d->last_error, -1, SQLITE_TRANSIENT);
    return sd_step(st);
}

static int flush(const char *domain, int64_t now)
{
    static sqlite3_stmt *d_all, *d_one, *r_all, *r_one;
    sqlite3_stmt *d, *r;
    int err;

    if (domain) {
        d = store_stmt(&d_one, "UPDATE dest SET next_try=0, backoff=0 WHERE name=?1");
        r = store_stmt(&r_one, "UPDATE rcpt SET next_try=?2 WHERE state=0 AND kind=2 AND dest=?1 AND next_try>?2"
                               " AND NOT EXISTS (SELECT 1 FROM message WHERE id=rcpt.message_id AND hold=1)");
    } else {
        d = store_stmt(&d_all, "UPDATE dest SET next_try=0, backoff=0 WHERE next_try>0 OR backoff>0");
        r = store_stmt(&r_all, "UPDATE rcpt SET next_try=?2 WHERE state=0 AND kind=2 AND next_try>?2"
                               " AND NOT EXISTS (SELECT 1 FROM message WHERE id=rcpt.message_id AND hold=1)");
    }
    if (!d || !r)
        return STORE_ERR;
    if (domain) {
        sqlite3_bind_text(d, 1, domain, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(r, 1, domain, -1, SQLITE_TRANSIENT);
    }
    sqlite3_bind_int64(r, 2, now);
    if ((err = sd_step(d)))
        return err;
    return sd_step(r);
}

int store_flush(const char *domain, int64_t now)
{
    int err = store_atomic_begin();
    return err ? err : store_atomic_end(flush(domain, now));
}

int store_expired(int64_t before, int (*cb)(void *arg, int64_t msg_id, int64_t rcpt_id), void *arg)
{
    static sqlite3_stmt *st;
    int rc;

    /* A recipient in transit on an offline bundle waits for the peer's
     * receipt (or its resend), however long the carrier takes: bouncing
     * it could report as failed a message the peer has delivered. */
    if (!store_stmt(&st, "SELECT r.message_id, r.id FROM message m JOIN rcpt r ON r.message_id=m.id"
                         " WHERE m.received<? AND r.state=0 AND +r.kind=2 AND m.hold=0 AND NOT EXISTS"
                         " (SELECT 1 FROM bundle_transit t WHERE t.rcpt_id=r.id) ORDER BY m.received LIMIT 1000"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, before);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (cb(arg, sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1)))
            break;
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_unwarned(int64_t before, int (*cb)(void *arg, int64_t msg_id), void *arg)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT m.id FROM message m WHERE m.received<? AND m.warned=0 AND m.hold=0 AND EXISTS"
                         " (SELECT 1 FROM rcpt r WHERE r.message_id=m.id AND r.state=0 AND r.kind=2) LIMIT 1000"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, before);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (cb(arg, sqlite3_column_int64(st, 0)))
            break;
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_msg_set_warned(int64_t msg_id)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "UPDATE message SET warned=1 WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, msg_id);
    return sd_step(st);
}

static int queue_hold(const char *qid, int hold)
{
    static sqlite3_stmt *m, *r;
    int err;

    if (!store_stmt(&m, "UPDATE message SET hold=?2 WHERE qid=?1") ||
        !store_stmt(&r, "UPDATE rcpt SET next_try=?2 WHERE state=0 AND kind=2 AND message_id="
                        "(SELECT id FROM message WHERE qid=?1)"))
        return STORE_ERR;
    sqlite3_bind_text(m, 1, qid, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(m, 2, hold);
    if ((err = sd_step(m)))
        return err;
    if (!sqlite3_changes(store_db()))
        return STORE_NOTFOUND;
    /* A held message is never due; a released one is due at once. */
    sqlite3_bind_text(r, 1, qid, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(r, 2, hold ? INT64_MAX : 0);
    return sd_step(r);
}

int store_queue_hold(const char *qid, int hold)
{
    int err = store_atomic_begin();
    return err ? err : store_atomic_end(queue_hold(qid, hold));
}

int store_held_count(const char *domain)
{
    static sqlite3_stmt *st;
    int n = STORE_ERR;

    if (!store_stmt(&st, "SELECT count(DISTINCT message_id) FROM rcpt WHERE state=0 AND kind=3 AND dest=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, domain, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    return n;
}
