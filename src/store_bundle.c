/*
 * store_bundle.c: the SQL of offline bundles.  Peers (their public keys
 * and the domains they take), recipients in transit on a bundle not yet
 * acknowledged, the identities of recipients already delivered (so that a
 * message that arrives twice, by two bundles or by a bundle and SMTP, is
 * delivered once), and the volumes already imported (replays).
 *
 * Like the other store files: writers open the transaction and leave it
 * open; the caller commits.
 */
#include "internal.h"

#include <string.h>

static int sb_step(sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return 0;
    if ((rc & 0xff) == SQLITE_CONSTRAINT)
        return STORE_EXISTS;
    log_err("database: %s: %s", what, sqlite3_errmsg(store_db()));
    return store_rc(rc);
}

static const char *sb_text(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? (const char *)t : "";
}

/* ----------------------------------------------------------------- peers */

#define PEER_COLS "id, name, sign_pk, box_pk, domains, added"

static void sb_peer_fill(sqlite3_stmt *st, struct store_peer *p)
{
    memset(p, 0, sizeof *p);
    p->id = sqlite3_column_int64(st, 0);
    util_strlcpy(p->name, sb_text(st, 1), sizeof p->name);
    if (sqlite3_column_bytes(st, 2) == 32)
        memcpy(p->sign_pk, sqlite3_column_blob(st, 2), 32);
    if (sqlite3_column_bytes(st, 3) == 32)
        memcpy(p->box_pk, sqlite3_column_blob(st, 3), 32);
    util_strlcpy(p->domains, sb_text(st, 4), sizeof p->domains);
    p->added = sqlite3_column_int64(st, 5);
}

int store_peer_add(const struct store_peer *p)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT INTO peer(name, sign_pk, box_pk, domains, added) VALUES (?,?,?,?,?)"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, p->name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, p->sign_pk, 32, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, p->box_pk, 32, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, p->domains, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, util_now());
    return sb_step(st, "add peer");
}

static int sb_peer_one(sqlite3_stmt *st, struct store_peer *p)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        sb_peer_fill(st, p);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? STORE_NOTFOUND : STORE_ERR;
}

int store_peer_get(const char *name, struct store_peer *p)
{
    static sqlite3_stmt *st;
    if (!store_stmt(&st, "SELECT " PEER_COLS " FROM peer WHERE name=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    return sb_peer_one(st, p);
}

int store_peer_by_key(const unsigned char sign_pk[32], struct store_peer *p)
{
    static sqlite3_stmt *st;
    if (!store_stmt(&st, "SELECT " PEER_COLS " FROM peer WHERE sign_pk=?"))
        return STORE_ERR;
    sqlite3_bind_blob(st, 1, sign_pk, 32, SQLITE_TRANSIENT);
    return sb_peer_one(st, p);
}

int store_peer_del(const char *name)
{
    static sqlite3_stmt *t, *st;
    int err;

    if ((err = store_begin()))
        return err;
    /* Mail in transit to the peer becomes ordinary queued mail again. */
    if (!store_stmt(&t, "DELETE FROM bundle_transit WHERE peer_id=(SELECT id FROM peer WHERE name=?)") ||
        !store_stmt(&st, "DELETE FROM peer WHERE name=?"))
        return STORE_ERR;
    sqlite3_bind_text(t, 1, name, -1, SQLITE_TRANSIENT);
    if ((err = sb_step(t, "delete peer transit")))
        return err;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    if ((err = sb_step(st, "delete peer")))
        return err;
    return sqlite3_changes(store_db()) ? 0 : STORE_NOTFOUND;
}

int store_peer_list(int (*cb)(void *arg, const struct store_peer *p), void *arg)
{
    static sqlite3_stmt *st;
    struct store_peer p;
    int rc;

    if (!store_stmt(&st, "SELECT " PEER_COLS " FROM peer ORDER BY name"))
        return STORE_ERR;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sb_peer_fill(st, &p);
        if (cb(arg, &p))
            break;
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_peer_any(void)
{
    static sqlite3_stmt *st;
    int any = 0;

    if (!store_stmt(&st, "SELECT EXISTS (SELECT 1 FROM peer)"))
        return 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        any = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    return any;
}

/* --------------------------------------------------------------- export */

/* The recipients a peer takes: with domains, its domains (queued for
 * relay or held for it); without, every remote recipient (the peer is
 * our upstream).  Recipients in transit count once their resend time
 * has passed.  ?2 domains, ?3 resend_before. */
#define PEER_MATCH \
    " r.state=0 AND ((?2='' AND r.kind=2) OR (?2<>'' AND r.kind IN (2,3) AND" \
    " instr(','||?2||',', ','||r.dest||',')>0))" \
    " AND NOT EXISTS (SELECT 1 FROM bundle_transit t WHERE t.rcpt_id=r.id AND t.exported>=?3)"

static int sb_rcpts_fill(const struct store_peer *p, int64_t resend_before, struct store_out_msg *m)
{
    static sqlite3_stmt *st;
    int rc, cap = 0;

    if (!store_stmt(&st, "SELECT r.id, r.addr, r.orcpt, r.notify, r.attempts FROM rcpt r"
                         " WHERE r.message_id=?1 AND" PEER_MATCH " ORDER BY r.id"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, m->id);
    sqlite3_bind_text(st, 2, p->domains, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, resend_before);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && m->nrcpt < BUNDLE_RCPTS_MAX) {
        struct store_out_rcpt *r;
        if (m->nrcpt == cap) {
            int c = cap ? cap * 2 : 8;
            void *q = realloc(m->rcpts, (size_t)c * sizeof *m->rcpts);
            if (!q) {
                sqlite3_reset(st);
                return STORE_ERR;
            }
            m->rcpts = q;
            cap = c;
        }
        r = &m->rcpts[m->nrcpt++];
        memset(r, 0, sizeof *r);
        r->id = sqlite3_column_int64(st, 0);
        util_strlcpy(r->addr, sb_text(st, 1), sizeof r->addr);
        util_strlcpy(r->orcpt, sb_text(st, 2), sizeof r->orcpt);
        r->notify = sqlite3_column_int(st, 3);
        r->attempts = sqlite3_column_int(st, 4);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_bundle_next(const struct store_peer *p, int64_t after_id, int64_t resend_before,
                      struct store_out_msg *m)
{
    static sqlite3_stmt *nx, *st;
    int rc;

    memset(m, 0, sizeof *m);
    if (!store_stmt(&nx, "SELECT min(r.message_id) FROM rcpt r WHERE r.message_id>?1 AND" PEER_MATCH) ||
        !store_stmt(&st, "SELECT id, qid, body_id, sender, envid, ret_full, eightbit, size, received, hold"
                         " FROM message WHERE id=?"))
        return STORE_ERR;
    for (;;) {
        int64_t id = 0;
        sqlite3_bind_int64(nx, 1, after_id);
        sqlite3_bind_text(nx, 2, p->domains, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(nx, 3, resend_before);
        rc = sqlite3_step(nx);
        if (rc == SQLITE_ROW)
            id = sqlite3_column_int64(nx, 0);
        sqlite3_reset(nx);
        if (rc != SQLITE_ROW)
            return STORE_ERR;
        if (id <= 0)
            return 0;
        sqlite3_bind_int64(st, 1, id);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW && !sqlite3_column_int(st, 9)) {
            m->id = sqlite3_column_int64(st, 0);
            util_strlcpy(m->qid, sb_text(st, 1), sizeof m->qid);
            m->body_id = sqlite3_column_int64(st, 2);
            util_strlcpy(m->sender, sb_text(st, 3), sizeof m->sender);
            util_strlcpy(m->envid, sb_text(st, 4), sizeof m->envid);
            m->ret_full = sqlite3_column_int(st, 5);
            m->eightbit = sqlite3_column_int(st, 6);
            m->size = sqlite3_column_int64(st, 7);
            m->received = sqlite3_column_int64(st, 8);
            sqlite3_reset(st);
            return sb_rcpts_fill(p, resend_before, m) ? STORE_ERR : 1;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return STORE_ERR;
        after_id = id;                  /* held by the operator: not exported */
    }
}

int store_bundle_transit(int64_t rcpt_id, int64_t peer_id, const unsigned char bundle_id[16], int64_t now)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT OR REPLACE INTO bundle_transit(rcpt_id, peer_id, bundle_id, exported)"
                         " VALUES (?,?,?,?)"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, rcpt_id);
    sqlite3_bind_int64(st, 2, peer_id);
    sqlite3_bind_blob(st, 3, bundle_id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, now);
    return sb_step(st, "mark in transit");
}

/* -------------------------------------------------------------- receipts */

int store_bundle_ack(int64_t peer_id, const char *qid)
{
    static sqlite3_stmt *sel, *del;
    int64_t ids[BUNDLE_RCPTS_MAX], msg_id = 0;
    int n = 0, rc, err;
    char why[128];

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&sel, "SELECT r.id, r.message_id FROM bundle_transit t JOIN rcpt r ON r.id=t.rcpt_id"
                          " JOIN message m ON m.id=r.message_id WHERE t.peer_id=? AND m.qid=? AND r.state=0"))
        return STORE_ERR;
    sqlite3_bind_int64(sel, 1, peer_id);
    sqlite3_bind_text(sel, 2, qid, -1, SQLITE_TRANSIENT);
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW && n < BUNDLE_RCPTS_MAX) {
        ids[n++] = sqlite3_column_int64(sel, 0);
        msg_id = sqlite3_column_int64(sel, 1);
    }
    sqlite3_reset(sel);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return STORE_ERR;
    snprintf(why, sizeof why, "relayed by bundle, receipt received");
    for (int i = 0; i < n; i++) {
        if ((err = store_rcpt_set(ids[i], RCPT_DELIVERED, 0, why)))
            return err;
        if (!store_stmt(&del, "DELETE FROM bundle_transit WHERE rcpt_id=?"))
            return STORE_ERR;
        sqlite3_bind_int64(del, 1, ids[i]);
        if ((err = sb_step(del, "end transit")))
            return err;
    }
    if (n && (err = store_msg_retire(msg_id)) < 0)
        return err;
    return n;
}

/* ------------------------------------------------------------ duplicates */

int store_seen_check(const unsigned char key[BUNDLE_ID_LEN])
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT 1 FROM bundle_seen WHERE key=?"))
        return STORE_ERR;
    sqlite3_bind_blob(st, 1, key, BUNDLE_ID_LEN, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_seen_add(const unsigned char key[BUNDLE_ID_LEN], int64_t now)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT OR IGNORE INTO bundle_seen(key, at) VALUES (?,?)"))
        return STORE_ERR;
    sqlite3_bind_blob(st, 1, key, BUNDLE_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, now);
    return sb_step(st, "remember delivery");
}

int store_seen_prune(int64_t before)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "DELETE FROM bundle_seen WHERE at<?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, before);
    return sb_step(st, "forget old deliveries");
}

/* --------------------------------------------------------------- volumes */

int store_volume_seen(const unsigned char bundle_id[16], uint32_t volume)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT 1 FROM bundle_volume WHERE bundle_id=? AND volume=?"))
        return STORE_ERR;
    sqlite3_bind_blob(st, 1, bundle_id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, volume);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : STORE_ERR;
}

int store_volume_add(const unsigned char bundle_id[16], uint32_t volume, int64_t peer_id, int64_t now)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT INTO bundle_volume(bundle_id, volume, peer_id, imported) VALUES (?,?,?,?)"))
        return STORE_ERR;
    sqlite3_bind_blob(st, 1, bundle_id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, volume);
    sqlite3_bind_int64(st, 3, peer_id);
    sqlite3_bind_int64(st, 4, now);
    return sb_step(st, "record imported volume");
}
