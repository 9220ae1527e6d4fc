/*
 * store_resume.c: the partial bodies of interrupted transfers between
 * mailnodes (resume.c has the protocol).  A row of `partial` names a
 * transfer id, the body row that holds the octets received so far
 * (complete=2, written in chunks of any length) and how many of them are
 * durable; once the transfer became a message, only the id and the queue
 * id stay, until they expire.  Rows and octets are bounded by
 * resume.lifetime and resume.max_size (store_partial_expire).
 */
#include "internal.h"

#include <string.h>

/* Chunks from seq on (all: 0) and, with them gone, the body row. */
static int sr_drop_octets(int64_t body_id, int64_t from_seq, int body_too)
{
    static sqlite3_stmt *c, *b;
    int err;

    if (!body_id)
        return 0;
    if (!store_stmt(&c, "DELETE FROM chunk WHERE body_id=? AND seq>=?"))
        return STORE_ERR;
    sqlite3_bind_int64(c, 1, body_id);
    sqlite3_bind_int64(c, 2, from_seq);
    if ((err = store_step_done(c, "drop partial chunks")) || !body_too)
        return err;
    if (!store_stmt(&b, "DELETE FROM body WHERE id=? AND complete=2"))
        return STORE_ERR;
    sqlite3_bind_int64(b, 1, body_id);
    return store_step_done(b, "drop partial body");
}

int store_partial_get(const char *tid, struct store_partial *p)
{
    static sqlite3_stmt *st;
    int rc;

    memset(p, 0, sizeof *p);
    if (store_begin() || !store_stmt(&st, "SELECT body_id, size, nchunks, updated, done_qid FROM partial WHERE tid=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, tid, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        p->found = 1;
        p->body_id = sqlite3_column_int64(st, 0);
        p->size = sqlite3_column_int64(st, 1);
        p->nchunks = sqlite3_column_int64(st, 2);
        p->updated = sqlite3_column_int64(st, 3);
        const char *q = (const char *)sqlite3_column_text(st, 4);
        util_strlcpy(p->done_qid, q ? q : "", sizeof p->done_qid);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return STORE_ERR;
    /* Chunks written after the last save (and committed by a group
     * commit before a crash) are not counted: they go. */
    if (p->found && !p->done_qid[0])
        return sr_drop_octets(p->body_id, p->nchunks, 0);
    return 0;
}

int store_partial_new(const char *tid, int64_t body_id)
{
    static sqlite3_stmt *mark, *ins;
    int err;

    if (store_begin() || !store_stmt(&mark, "UPDATE body SET complete=2 WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(mark, 1, body_id);
    if ((err = store_step_done(mark, "mark partial body")))
        return err;
    if (!store_stmt(&ins, "INSERT OR REPLACE INTO partial(tid, body_id, size, nchunks, updated) VALUES (?,?,0,0,?)"))
        return STORE_ERR;
    sqlite3_bind_text(ins, 1, tid, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(ins, 2, body_id);
    sqlite3_bind_int64(ins, 3, util_now());
    return store_step_done(ins, "new partial");
}

int store_partial_save(const char *tid, int64_t size, int64_t nchunks)
{
    static sqlite3_stmt *st;

    if (store_begin() || !store_stmt(&st, "UPDATE partial SET size=?, nchunks=?, updated=? WHERE tid=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, size);
    sqlite3_bind_int64(st, 2, nchunks);
    sqlite3_bind_int64(st, 3, util_now());
    sqlite3_bind_text(st, 4, tid, -1, SQLITE_TRANSIENT);
    return store_step_done(st, "save partial");
}

int store_partial_done(const char *tid, const char *qid, int64_t size)
{
    static sqlite3_stmt *st;
    struct store_partial p;
    int err;

    if ((err = store_partial_get(tid, &p)))
        return err;
    if (p.found && (err = sr_drop_octets(p.body_id, 0, 1)))
        return err;
    if (!store_stmt(&st, "INSERT OR REPLACE INTO partial(tid, body_id, size, nchunks, updated, done_qid)"
                         " VALUES (?,0,?,0,?,?)"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, tid, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, size);
    sqlite3_bind_int64(st, 3, util_now());
    sqlite3_bind_text(st, 4, qid, -1, SQLITE_TRANSIENT);
    return store_step_done(st, "partial done");
}

static int sr_drop_row(const char *tid, int64_t body_id)
{
    static sqlite3_stmt *st;
    int err = sr_drop_octets(body_id, 0, 1);

    if (err)
        return err;
    if (!store_stmt(&st, "DELETE FROM partial WHERE tid=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, tid, -1, SQLITE_TRANSIENT);
    return store_step_done(st, "drop partial");
}

int store_partial_drop(const char *tid)
{
    struct store_partial p;
    int err;

    if ((err = store_partial_get(tid, &p)))
        return err;
    return p.found ? sr_drop_row(tid, p.body_id) : 0;
}

/* The oldest row updated before `before`, or, with before = INT64_MAX,
 * the oldest holding octets: one index step each. */
static int sr_oldest(int64_t before, int with_octets, char *tid, size_t n, int64_t *body_id)
{
    static sqlite3_stmt *any, *octets;
    sqlite3_stmt *st = with_octets
                           ? store_stmt(&octets, "SELECT tid, body_id FROM partial WHERE updated<? AND body_id<>0"
                                                 " ORDER BY updated LIMIT 1")
                           : store_stmt(&any, "SELECT tid, body_id FROM partial WHERE updated<?"
                                              " ORDER BY updated LIMIT 1");
    int rc;

    if (!st)
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, before);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        util_strlcpy(tid, t ? t : "", n);
        *body_id = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_partial_expire(int64_t before, int64_t max_octets)
{
    char tid[128];
    int64_t body_id;
    int n = 0, rc;

    if (store_begin())
        return STORE_ERR;
    /* Bounded per call: what is left goes on the next one. */
    while (n < 64 && (rc = sr_oldest(before, 0, tid, sizeof tid, &body_id)) == 1) {
        if (sr_drop_row(tid, body_id))
            return STORE_ERR;
        n++;
    }
    while (n < 64 && store_partial_octets() > max_octets &&
           (rc = sr_oldest(INT64_MAX, 1, tid, sizeof tid, &body_id)) == 1) {
        if (sr_drop_row(tid, body_id))
            return STORE_ERR;
        n++;
    }
    return n;
}

int64_t store_partial_octets(void)
{
    static sqlite3_stmt *st;
    int64_t n = 0;

    if (!store_stmt(&st, "SELECT coalesce(sum(size), 0) FROM partial WHERE body_id<>0"))
        return 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return n;
}

int store_body_hash(int64_t body_id, unsigned char out[32])
{
    static sqlite3_stmt *st;
    int rc = STORE_NOTFOUND;

    if (!store_stmt(&st, "SELECT hash FROM body WHERE id=? AND complete=1"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, body_id);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) == 32) {
        memcpy(out, sqlite3_column_blob(st, 0), 32);
        rc = 0;
    }
    sqlite3_reset(st);
    return rc;
}
