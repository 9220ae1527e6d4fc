/*
 * store_imap.c: the SQL of the IMAP server.  Folders (table folder) and
 * per-message IMAP state (mbox.folder, flags, keywords, modseq), and the
 * cache of what FETCH and SEARCH need of a body (imap_cache), computed
 * once per body and shared by all its copies.
 *
 * UIDs are mbox uids: unique in the database and only ever growing, so a
 * folder's UIDs ascend in the order its messages arrived (RFC 3501
 * 2.3.1.1), COPY and APPEND simply insert rows, and UIDNEXT is kept by
 * the trigger that also counts every change in folder.modseq.
 */
#include "internal.h"

#include <string.h>

static int simap_done(sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_err("database: %s: %s", what, sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    return 0;
}

static void simap_text(sqlite3_stmt *st, int i, char *out, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    util_strlcpy(out, t ? (const char *)t : "", n);
}

/* ------------------------------------------------------------- folders */

#define FOLDER_COLS "id, name, uidvalidity, uidnext, modseq, recent, special, subscribed"

static void simap_folder_fill(sqlite3_stmt *st, struct store_folder *f)
{
    f->id = sqlite3_column_int64(st, 0);
    simap_text(st, 1, f->name, sizeof f->name);
    f->key = strcmp(f->name, "INBOX") ? f->id : 0;
    f->uidvalidity = sqlite3_column_int64(st, 2);
    f->uidnext = sqlite3_column_int64(st, 3);
    f->modseq = sqlite3_column_int64(st, 4);
    f->recent = sqlite3_column_int64(st, 5);
    simap_text(st, 6, f->special, sizeof f->special);
    f->subscribed = sqlite3_column_int(st, 7);
}

int store_folder_get(int64_t user_id, const char *name, struct store_folder *f)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT " FOLDER_COLS " FROM folder WHERE user_id=? AND name=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        simap_folder_fill(st, f);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_DONE)
        return STORE_NOTFOUND;
    log_err("database: read folder: %s", sqlite3_errmsg(store_db()));
    return store_rc(rc);
}

int store_folder_list(int64_t user_id, int (*cb)(void *arg, const struct store_folder *f), void *arg)
{
    static sqlite3_stmt *st;
    struct store_folder f;
    int rc;

    if (!store_stmt(&st, "SELECT " FOLDER_COLS " FROM folder WHERE user_id=? ORDER BY name"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        simap_folder_fill(st, &f);
        if (cb(arg, &f)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_err("database: list folders: %s", sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    return 0;
}

int store_folder_create(int64_t user_id, const char *name)
{
    static sqlite3_stmt *st;
    struct store_folder f;
    int err;

    if ((err = store_folder_get(user_id, name, &f)) != STORE_NOTFOUND)
        return err ? err : STORE_EXISTS;
    if ((err = store_begin()))
        return err;
    /* RFC 3501 2.3.1.1: a name used again gets a UIDVALIDITY never used
     * before, so clients drop what they cached of the old folder. */
    if (!store_stmt(&st, "INSERT INTO folder(user_id, name, uidvalidity) VALUES (?1, ?2,"
                         " max(CAST(strftime('%s','now') AS INTEGER),"
                         " (SELECT coalesce(max(uidvalidity), 0) + 1 FROM folder)))"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    return simap_done(st, "create folder");
}

static int simap_folder_purge(int64_t user_id, int64_t key)
{
    uint32_t *uids = NULL;
    int64_t *ids = NULL;
    size_t n = 0;
    int err = store_imap_uids(user_id, key, &uids, &n);

    if (err || !n)
        goto out;
    ids = malloc(n * sizeof *ids);
    if (!ids) {
        err = STORE_ERR;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        ids[i] = uids[i];
    err = store_mbox_delete(user_id, ids, n);
out:
    free(ids);
    free(uids);
    return err;
}

int store_folder_delete(int64_t user_id, const struct store_folder *f)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()) || (err = simap_folder_purge(user_id, f->key)))
        return err;
    if (!store_stmt(&st, "DELETE FROM folder WHERE id=? AND user_id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, f->id);
    sqlite3_bind_int64(st, 2, user_id);
    return simap_done(st, "delete folder");
}

int store_folder_rename(int64_t user_id, const char *from, const char *to)
{
    static sqlite3_stmt *st, *mv;
    struct store_folder f;
    int err;

    if ((err = store_begin()))
        return err;
    if (!strcmp(from, "INBOX")) {
        /* RFC 3501 6.3.5: the messages move, INBOX stays (empty). */
        if ((err = store_folder_create(user_id, to)) || (err = store_folder_get(user_id, to, &f)))
            return err;
        if (!store_stmt(&mv, "UPDATE mbox SET folder=? WHERE user_id=? AND folder=0"))
            return STORE_ERR;
        sqlite3_bind_int64(mv, 1, f.id);
        sqlite3_bind_int64(mv, 2, user_id);
        if ((err = simap_done(mv, "rename INBOX")))
            return err;
        return store_folder_bump(user_id, 0, NULL);
    }
    /* The folder and its inferiors ("from/...") in one statement; a name
     * taken already makes it fail whole (UNIQUE). */
    if (!store_stmt(&st, "UPDATE folder SET name=?3 || substr(name, length(?2) + 1) WHERE user_id=?1 AND (name=?2 OR substr(name, 1, length(?2) + 1)=?2 || '/')"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_text(st, 2, from, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, to, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_CONSTRAINT) {
        sqlite3_reset(st);
        return STORE_EXISTS;
    }
    sqlite3_reset(st);
    return sqlite3_changes(store_db()) ? 0 : STORE_NOTFOUND;
}

int store_folder_subscribe(int64_t user_id, const char *name, int on)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "UPDATE folder SET subscribed=? WHERE user_id=? AND name=?"))
        return STORE_ERR;
    sqlite3_bind_int(st, 1, on);
    sqlite3_bind_int64(st, 2, user_id);
    sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
    if ((err = simap_done(st, "subscribe")))
        return err;
    return sqlite3_changes(store_db()) ? 0 : STORE_NOTFOUND;
}

int store_folder_take_recent(const struct store_folder *f)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "UPDATE folder SET recent=uidnext WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, f->id);
    return simap_done(st, "recent");
}

int store_folder_counts(int64_t user_id, const struct store_folder *f, int64_t *messages,
                        int64_t *unseen, int64_t *recent)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT count(*), coalesce(sum(flags & 1 = 0), 0), coalesce(sum(uid >= ?3), 0)"
                         " FROM mbox WHERE user_id=?1 AND folder=?2"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_int64(st, 2, f->key);
    sqlite3_bind_int64(st, 3, f->recent);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *messages = sqlite3_column_int64(st, 0);
        *unseen = sqlite3_column_int64(st, 1);
        *recent = sqlite3_column_int64(st, 2);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW) {
        log_err("database: folder counts: %s", sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    return 0;
}

int store_folder_deleted_bytes(int64_t user_id, int64_t key, int64_t *bytes)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT coalesce(sum(size), 0) FROM mbox WHERE user_id=? AND folder=? AND flags & 8"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_int64(st, 2, key);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *bytes = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW) {
        log_err("database: deleted size: %s", sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    return 0;
}

int store_folder_bump(int64_t user_id, int64_t key, int64_t *modseq)
{
    static sqlite3_stmt *st;
    int err, rc;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "UPDATE folder SET modseq=modseq+1 WHERE user_id=?1 AND"
                         " CASE WHEN ?2=0 THEN name='INBOX' ELSE id=?2 END RETURNING modseq"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_int64(st, 2, key);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (modseq)
            *modseq = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_err("database: folder change: %s", sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    return 0;
}

/* ------------------------------------------------------------ messages */

#define MSG_COLS "uid, body_id, size, added, modseq, flags, keywords, prefix"

static void simap_msg_fill(sqlite3_stmt *st, struct store_imap_msg *m)
{
    m->uid = sqlite3_column_int64(st, 0);
    m->body_id = sqlite3_column_int64(st, 1);
    m->size = sqlite3_column_int64(st, 2);
    m->added = sqlite3_column_int64(st, 3);
    m->modseq = sqlite3_column_int64(st, 4);
    m->flags = (unsigned)sqlite3_column_int(st, 5);
    simap_text(st, 6, m->keywords, sizeof m->keywords);
    simap_text(st, 7, m->prefix, sizeof m->prefix);
}

int store_imap_uids(int64_t user_id, int64_t key, uint32_t **uids, size_t *n)
{
    static sqlite3_stmt *st;
    size_t cap = 0;
    uint32_t *v = NULL;
    int rc;

    *uids = NULL;
    *n = 0;
    if (!store_stmt(&st, "SELECT uid FROM mbox WHERE user_id=? AND folder=? ORDER BY uid"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_int64(st, 2, key);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            uint32_t *p = realloc(v, nc * sizeof *p);
            if (!p) {
                rc = SQLITE_NOMEM;
                break;
            }
            v = p;
            cap = nc;
        }
        v[(*n)++] = (uint32_t)sqlite3_column_int64(st, 0);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        free(v);
        *n = 0;
        log_err("database: list folder: %s", sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    *uids = v;
    return 0;
}

int store_imap_get(int64_t user_id, int64_t uid, struct store_imap_msg *m)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT " MSG_COLS " FROM mbox WHERE uid=? AND user_id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, uid);
    sqlite3_bind_int64(st, 2, user_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        simap_msg_fill(st, m);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_DONE)
        return STORE_NOTFOUND;
    log_err("database: read message: %s", sqlite3_errmsg(store_db()));
    return store_rc(rc);
}

static int simap_msg_each(sqlite3_stmt *st, int (*cb)(void *arg, const struct store_imap_msg *m), void *arg)
{
    struct store_imap_msg m;
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        simap_msg_fill(st, &m);
        if (cb(arg, &m)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_err("database: read folder: %s", sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    return 0;
}

int store_imap_changed(int64_t user_id, int64_t key, int64_t modseq,
                       int (*cb)(void *arg, const struct store_imap_msg *m), void *arg)
{
    static sqlite3_stmt *st;

    if (!store_stmt(&st, "SELECT " MSG_COLS " FROM mbox WHERE user_id=? AND folder=? AND modseq>?"
                         " ORDER BY uid"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_int64(st, 2, key);
    sqlite3_bind_int64(st, 3, modseq);
    return simap_msg_each(st, cb, arg);
}

int store_imap_each(int64_t user_id, int64_t key, int (*cb)(void *arg, const struct store_imap_msg *m),
                    void *arg)
{
    static sqlite3_stmt *st;

    if (!store_stmt(&st, "SELECT " MSG_COLS " FROM mbox WHERE user_id=? AND folder=? ORDER BY uid"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_int64(st, 2, key);
    return simap_msg_each(st, cb, arg);
}

int store_imap_range(int64_t user_id, int64_t key, int64_t lo, int64_t hi,
                     int (*cb)(void *arg, const struct store_imap_msg *m), void *arg)
{
    static sqlite3_stmt *st;

    /* One statement for a run of messages: a FETCH of 10,000 flags is a
     * few range scans, not 10,000 lookups each taking the file lock. */
    if (!store_stmt(&st, "SELECT " MSG_COLS " FROM mbox WHERE user_id=? AND folder=? AND uid BETWEEN ? AND ?"
                         " ORDER BY uid"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_int64(st, 2, key);
    sqlite3_bind_int64(st, 3, lo);
    sqlite3_bind_int64(st, 4, hi);
    return simap_msg_each(st, cb, arg);
}

int store_imap_set_flags(int64_t user_id, int64_t uid, unsigned flags, const char *keywords, int64_t modseq)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "UPDATE mbox SET flags=?, keywords=?, modseq=? WHERE uid=? AND user_id=?"))
        return STORE_ERR;
    sqlite3_bind_int(st, 1, (int)flags);
    if (keywords && *keywords)
        sqlite3_bind_text(st, 2, keywords, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, modseq);
    sqlite3_bind_int64(st, 4, uid);
    sqlite3_bind_int64(st, 5, user_id);
    return simap_done(st, "set flags");
}

int store_imap_copy(int64_t user_id, int64_t uid, int64_t key, int64_t *new_uid)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    /* RFC 3501 6.4.7: flags and internal date go with the copy; the body
     * is shared, not duplicated. */
    if (!store_stmt(&st, "INSERT INTO mbox(user_id, body_id, size, added, qid, prefix, folder, flags,"
                         " keywords) SELECT user_id, body_id, size, added, qid, prefix, ?3, flags, keywords"
                         " FROM mbox WHERE uid=?1 AND user_id=?2"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, uid);
    sqlite3_bind_int64(st, 2, user_id);
    sqlite3_bind_int64(st, 3, key);
    if ((err = simap_done(st, "copy message")))
        return err;
    if (!sqlite3_changes(store_db()))
        return STORE_NOTFOUND;
    *new_uid = sqlite3_last_insert_rowid(store_db());
    return 0;
}

int store_imap_append(int64_t user_id, int64_t key, struct store_body *b, unsigned flags,
                      const char *keywords, int64_t date, int64_t *uid)
{
    static sqlite3_stmt *st;
    int err;

    if (b->err)
        return b->err;
    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT INTO mbox(user_id, body_id, size, added, qid, prefix, folder, flags,"
                         " keywords) VALUES (?,?,?,?,'',?,?,?,?)"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_int64(st, 2, b->id);
    sqlite3_bind_int64(st, 3, b->size);
    sqlite3_bind_int64(st, 4, date);
    sqlite3_bind_text(st, 5, "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, key);
    sqlite3_bind_int(st, 7, (int)flags);
    if (keywords && *keywords)
        sqlite3_bind_text(st, 8, keywords, -1, SQLITE_STATIC);
    if ((err = simap_done(st, "append message")))
        return err;
    b->linked = 1;
    *uid = sqlite3_last_insert_rowid(store_db());
    return 0;
}

/* --------------------------------------------------------------- cache */

static char *simap_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return strdup(t ? (const char *)t : "");
}

void store_imap_cache_free(struct store_imap_cache *c)
{
    free(c->envelope);
    free(c->structure);
    free(c->body);
    free(c->parts);
    free(c->hsubject);
    free(c->hfrom);
    free(c->hto);
    free(c->hcc);
    free(c->hbcc);
    memset(c, 0, sizeof *c);
}

int store_imap_cache_get(int64_t body_id, struct store_imap_cache *c)
{
    static sqlite3_stmt *st;
    int rc;

    memset(c, 0, sizeof *c);
    if (!store_stmt(&st, "SELECT envelope, structure, body, parts, sent, hsubject, hfrom, hto, hcc, hbcc"
                         " FROM imap_cache WHERE body_id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, body_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        c->envelope = simap_dup(st, 0);
        c->structure = simap_dup(st, 1);
        c->body = simap_dup(st, 2);
        c->parts = simap_dup(st, 3);
        c->sent = sqlite3_column_int64(st, 4);
        c->hsubject = simap_dup(st, 5);
        c->hfrom = simap_dup(st, 6);
        c->hto = simap_dup(st, 7);
        c->hcc = simap_dup(st, 8);
        c->hbcc = simap_dup(st, 9);
    }
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return STORE_NOTFOUND;
    if (rc != SQLITE_ROW) {
        log_err("database: read message cache: %s", sqlite3_errmsg(store_db()));
        return store_rc(rc);
    }
    if (!c->envelope || !c->structure || !c->body || !c->parts || !c->hsubject || !c->hfrom ||
        !c->hto || !c->hcc || !c->hbcc) {
        store_imap_cache_free(c);
        return STORE_ERR;
    }
    return 0;
}

int store_imap_cache_put(int64_t body_id, const struct store_imap_cache *c)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT OR REPLACE INTO imap_cache(body_id, envelope, structure, body, parts,"
                         " sent, hsubject, hfrom, hto, hcc, hbcc) VALUES (?,?,?,?,?,?,?,?,?,?,?)"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, body_id);
    sqlite3_bind_text(st, 2, c->envelope, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->structure, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, c->body, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, c->parts, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, c->sent);
    sqlite3_bind_text(st, 7, c->hsubject, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, c->hfrom, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, c->hto, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, c->hcc, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 11, c->hbcc, -1, SQLITE_STATIC);
    return simap_done(st, "store message cache");
}
