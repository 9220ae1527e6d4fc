/*
 * store_mbox.c: mailboxes.  A mailbox entry points at a stored body (shared
 * with the message's other recipients) and carries the small header prefix
 * of its final delivery (Return-Path).  uid comes from an AUTOINCREMENT
 * key, so a uid is never handed out twice, even after the highest entry was
 * deleted: POP3 UIDL (RFC 1939 7) depends on that, and IMAP uses the same
 * number as its UID.  POP3 sees the INBOX (folder 0) only; the other IMAP
 * folders live in the same table (store_imap.c).
 */
#include "internal.h"

#include <string.h>

static void store_mbox_fill(sqlite3_stmt *st, struct store_mbox_msg *m)
{
    const unsigned char *qid = sqlite3_column_text(st, 4);
    const unsigned char *prefix = sqlite3_column_text(st, 5);

    m->uid = sqlite3_column_int64(st, 0);
    m->body_id = sqlite3_column_int64(st, 1);
    m->size = sqlite3_column_int64(st, 2);
    m->added = sqlite3_column_int64(st, 3);
    util_strlcpy(m->qid, qid ? (const char *)qid : "", sizeof m->qid);
    util_strlcpy(m->prefix, prefix ? (const char *)prefix : "", sizeof m->prefix);
}

int store_mbox_list(int64_t user_id, int (*cb)(void *arg, const struct store_mbox_msg *m), void *arg)
{
    static sqlite3_stmt *st;
    struct store_mbox_msg m;
    int rc;

    /* The (user_id, uid) index gives the rows in uid order without a sort,
     * so a 10,000-message maildrop lists in one index range scan. */
    if (!store_stmt(&st, "SELECT uid, body_id, size, added, qid, prefix FROM mbox"
                         " WHERE user_id=? AND folder=0 ORDER BY uid"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        store_mbox_fill(st, &m);
        if (cb(arg, &m)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_err("database: list mailbox: %s", sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    return 0;
}

int store_mbox_get(int64_t user_id, int64_t uid, struct store_mbox_msg *m)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT uid, body_id, size, added, qid, prefix FROM mbox"
                         " WHERE uid=? AND user_id=? AND folder=0"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, uid);
    sqlite3_bind_int64(st, 2, user_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        store_mbox_fill(st, m);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_DONE)
        return STORE_NOTFOUND;
    log_err("database: read mailbox entry: %s", sqlite3_errmsg(store_db()));
    return store_rc(rc);
}

static int store_mbox_savepoint(sqlite3_stmt **slot, const char *sql)
{
    sqlite3_stmt *st = store_stmt(slot, sql);
    int rc;

    if (!st)
        return STORE_ERR;
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_err("database: %s: %s", sql, sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    return 0;
}

/* Deletes the entries in the current transaction, then the bodies nobody
 * refers to any more.  All or nothing: in the daemon the transaction is
 * shared by everything else done in this loop turn, so a failure here must
 * not leave half a deletion behind, nor roll back the others' work; a
 * savepoint undoes exactly this call. */
int store_mbox_delete(int64_t user_id, const int64_t *uids, size_t n)
{
    static sqlite3_stmt *sp, *rel, *undo, *del;
    int err, rc;

    if (!n)
        return 0;
    if ((err = store_begin()))
        return err;
    if ((err = store_mbox_savepoint(&sp, "SAVEPOINT mbox_delete")))
        return err;
    for (size_t i = 0; i < n; i++) {
        if (!store_stmt(&del, "DELETE FROM mbox WHERE uid=? AND user_id=? RETURNING body_id")) {
            err = STORE_ERR;
            goto fail;
        }
        if (STORE_FAULT()) {
            err = STORE_ERR;
            goto fail;
        }
        sqlite3_bind_int64(del, 1, uids[i]);
        sqlite3_bind_int64(del, 2, user_id);
        int64_t body_id = -1;
        while ((rc = sqlite3_step(del)) == SQLITE_ROW)
            body_id = sqlite3_column_int64(del, 0);
        sqlite3_reset(del);
        if (rc != SQLITE_DONE) {
            log_err("database: delete mailbox entry: %s", sqlite3_errmsg(store_db()));
            err = store_rc(rc);
            goto fail;
        }
        /* The body goes with its last reference (other recipients of the
         * same message may still have it). */
        if (body_id >= 0 && (err = store_gc_body(body_id)))
            goto fail;
    }
    if ((err = store_mbox_savepoint(&rel, "RELEASE mbox_delete")))
        goto fail;
    return 0;
fail:
    /* ROLLBACK TO keeps the savepoint open; RELEASE then ends it. */
    if (store_mbox_savepoint(&undo, "ROLLBACK TO mbox_delete") == 0)
        store_mbox_savepoint(&rel, "RELEASE mbox_delete");
    return err;
}
