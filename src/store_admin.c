/*
 * store_admin.c: users, domains and aliases.
 *
 * Names are kept lower case: user names, domain names (RFC 5321 2.4: domains
 * are case-insensitive) and alias names.  The lookups lower-case their key
 * too, so a caller holding "Alice" from the wire finds "alice".
 *
 * The functions that write open the transaction (store_begin) and leave it
 * open: the daemon commits at the end of its loop turn, a command-line tool
 * calls store_commit, or store_rollback when something failed.
 */
#include "internal.h"

#include <string.h>

static void admin_db_error(const char *what)
{
    log_err("database: %s: %s", what, sqlite3_errmsg(store_db()));
}

/* Lower-case copy of name into buf; -1 if it is empty or does not fit. */
static int admin_key(const char *name, char *buf, size_t size)
{
    if (!name[0] || util_strlcpy(buf, name, size) >= size)
        return -1;
    util_lower(buf);
    return 0;
}

/* Runs a statement that returns no rows.  A UNIQUE or PRIMARY KEY clash is
 * STORE_EXISTS, not a failure. */
static int admin_exec(sqlite3_stmt *st, const char *what)
{
    if (STORE_FAULT()) {
        sqlite3_reset(st);
        return STORE_ERR;
    }
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return 0;
    if ((rc & 0xff) == SQLITE_CONSTRAINT)
        return STORE_EXISTS;
    admin_db_error(what);
    return store_rc(rc);
}

static const char *admin_col_text(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? (const char *)t : "";
}

/* ----------------------------------------------------------------- users */

/* Columns: id, name, pwhash, cram, quota, bytes, msgs. */
static void admin_user_fill(sqlite3_stmt *st, struct store_user *u)
{
    const void *cram = sqlite3_column_blob(st, 3);
    int cram_len = sqlite3_column_bytes(st, 3);

    memset(u, 0, sizeof *u);
    u->id = sqlite3_column_int64(st, 0);
    util_strlcpy(u->name, admin_col_text(st, 1), sizeof u->name);
    util_strlcpy(u->pwhash, admin_col_text(st, 2), sizeof u->pwhash);
    /* A secret of the wrong size is left out: CRAM-MD5 then fails for
     * this user and says why, PLAIN and LOGIN still work. */
    if (cram && cram_len > 0 && (size_t)cram_len <= sizeof u->cram) {
        memcpy(u->cram, cram, (size_t)cram_len);
        u->cram_len = (size_t)cram_len;
    }
    u->quota = sqlite3_column_type(st, 4) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 4);
    u->bytes = sqlite3_column_int64(st, 5);
    u->msgs = sqlite3_column_int64(st, 6);
}

/* Steps a query for at most one user row. */
static int admin_user_one(sqlite3_stmt *st, struct store_user *u)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_ROW)
        admin_user_fill(st, u);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_DONE)
        return STORE_NOTFOUND;
    admin_db_error("read user");
    return store_rc(rc);
}

int store_user_get(const char *name, struct store_user *u)
{
    static sqlite3_stmt *st;
    char key[USER_MAX + 1];

    if (admin_key(name, key, sizeof key))
        return STORE_NOTFOUND;
    if (!store_stmt(&st, "SELECT id, name, pwhash, cram, quota, bytes, msgs FROM user WHERE name=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    return admin_user_one(st, u);
}

MN_FOR_TESTS int store_user_get_id(int64_t id, struct store_user *u)
{
    static sqlite3_stmt *st;

    if (!store_stmt(&st, "SELECT id, name, pwhash, cram, quota, bytes, msgs FROM user WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, id);
    return admin_user_one(st, u);
}

static void admin_bind_cram(sqlite3_stmt *st, int i, const struct store_user *u)
{
    if (u->cram_len)
        sqlite3_bind_blob(st, i, u->cram, (int)u->cram_len, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

int store_user_add(const struct store_user *u)
{
    static sqlite3_stmt *st;
    char key[USER_MAX + 1];
    int err;

    if (admin_key(u->name, key, sizeof key))
        return STORE_ERR;
    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT INTO user(name, pwhash, cram, created) VALUES (?,?,?,?)"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, u->pwhash, -1, SQLITE_TRANSIENT);
    admin_bind_cram(st, 3, u);
    sqlite3_bind_int64(st, 4, util_now());
    return admin_exec(st, "add user");
}

int store_user_update(const struct store_user *u)
{
    static sqlite3_stmt *st;
    char key[USER_MAX + 1];
    int err;

    if (admin_key(u->name, key, sizeof key))
        return STORE_NOTFOUND;
    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "UPDATE user SET pwhash=?, cram=? WHERE name=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, u->pwhash, -1, SQLITE_TRANSIENT);
    admin_bind_cram(st, 2, u);
    sqlite3_bind_text(st, 3, key, -1, SQLITE_TRANSIENT);
    if ((err = admin_exec(st, "change password")))
        return err;
    return sqlite3_changes(store_db()) ? 0 : STORE_NOTFOUND;
}

int store_user_set_quota(const char *name, int64_t quota)
{
    static sqlite3_stmt *st;
    char key[USER_MAX + 1];
    int err;

    if (admin_key(name, key, sizeof key))
        return STORE_NOTFOUND;
    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "UPDATE user SET quota=? WHERE name=?"))
        return STORE_ERR;
    if (quota < 0)
        sqlite3_bind_null(st, 1);
    else
        sqlite3_bind_int64(st, 1, quota);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_TRANSIENT);
    if ((err = admin_exec(st, "set quota")))
        return err;
    return sqlite3_changes(store_db()) ? 0 : STORE_NOTFOUND;
}

int store_user_usage(int64_t id, int64_t *bytes, int64_t *msgs, int64_t *quota)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT bytes, msgs, quota FROM user WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *bytes = sqlite3_column_int64(st, 0);
        *msgs = sqlite3_column_int64(st, 1);
        *quota = sqlite3_column_type(st, 2) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 2);
    }
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_DONE)
        return STORE_NOTFOUND;
    admin_db_error("read mailbox usage");
    return store_rc(rc);
}

/* The holding mailbox has an empty password hash: nobody logs in as it. */
int store_user_first(struct store_user *u)
{
    static sqlite3_stmt *st;

    if (!store_stmt(&st, "SELECT id, name, pwhash, cram, quota, bytes, msgs FROM user WHERE pwhash<>'' ORDER BY id LIMIT 1"))
        return STORE_ERR;
    return admin_user_one(st, u);
}

int store_user_adopt(int64_t from, int64_t to)
{
    static sqlite3_stmt *mv, *del;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&mv, "UPDATE mbox SET user_id=? WHERE user_id=?") ||
        !store_stmt(&del, "DELETE FROM user WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(mv, 1, to);
    sqlite3_bind_int64(mv, 2, from);
    if ((err = admin_exec(mv, "move the postmaster mailbox")))
        return err;
    sqlite3_bind_int64(del, 1, from);
    return admin_exec(del, "remove the postmaster mailbox");
}

/* Removes the user with the mailbox, in one transaction, then the bodies
 * nobody refers to any more.  Hold domains the user owned lose their
 * owner: a new user who happens to get the same name must not inherit the
 * right to fetch that domain's mail. */
static int user_del(const char *key)
{
    static sqlite3_stmt *mb, *dom, *us;
    struct store_user u;
    int err;

    if ((err = store_user_get(key, &u)))
        return err;
    if (!store_stmt(&mb, "DELETE FROM mbox WHERE user_id=?") ||
        !store_stmt(&dom, "UPDATE domain SET owner=NULL WHERE owner=?") ||
        !store_stmt(&us, "DELETE FROM user WHERE id=?"))
        return STORE_ERR;
    sqlite3_bind_int64(mb, 1, u.id);
    if ((err = admin_exec(mb, "delete mailbox")))
        return err;
    sqlite3_bind_text(dom, 1, key, -1, SQLITE_TRANSIENT);
    if ((err = admin_exec(dom, "release owned domains")))
        return err;
    sqlite3_bind_int64(us, 1, u.id);
    if ((err = admin_exec(us, "delete user")))
        return err;
    sodium_memzero(&u, sizeof u);
    return store_gc();
}

int store_user_del(const char *name)
{
    char key[USER_MAX + 1];
    int err;

    if (admin_key(name, key, sizeof key))
        return STORE_NOTFOUND;
    if ((err = store_atomic_begin()))
        return err;
    return store_atomic_end(user_del(key));
}

int store_user_list(int (*cb)(void *arg, const struct store_user *u), void *arg)
{
    static sqlite3_stmt *st;
    struct store_user u;
    int rc;

    if (!store_stmt(&st, "SELECT id, name, pwhash, cram, quota, bytes, msgs FROM user ORDER BY name"))
        return STORE_ERR;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        admin_user_fill(st, &u);
        if (cb(arg, &u)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    sodium_memzero(&u, sizeof u);
    if (rc != SQLITE_DONE) {
        admin_db_error("list users");
        return store_rc(rc);
    }
    return 0;
}

/* --------------------------------------------------------------- domains */

/* Columns: name, kind, owner, host. */
static void admin_domain_fill(sqlite3_stmt *st, struct store_domain *d)
{
    memset(d, 0, sizeof *d);
    util_strlcpy(d->name, admin_col_text(st, 0), sizeof d->name);
    d->kind = sqlite3_column_int(st, 1);
    util_strlcpy(d->owner, admin_col_text(st, 2), sizeof d->owner);
    util_strlcpy(d->host, admin_col_text(st, 3), sizeof d->host);
}

int store_domain_get(const char *name, struct store_domain *d)
{
    static sqlite3_stmt *st;
    char key[SMTP_DOMAIN_MAX + 1];
    int rc;

    if (admin_key(name, key, sizeof key))
        return STORE_NOTFOUND;
    if (!store_stmt(&st, "SELECT name, kind, owner, host FROM domain WHERE name=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        admin_domain_fill(st, d);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_DONE)
        return STORE_NOTFOUND;
    admin_db_error("read domain");
    return store_rc(rc);
}

int store_domain_add(const struct store_domain *d)
{
    static sqlite3_stmt *st;
    char key[SMTP_DOMAIN_MAX + 1], owner[USER_MAX + 1] = "";
    int err;

    if (admin_key(d->name, key, sizeof key) ||
        (d->owner[0] && admin_key(d->owner, owner, sizeof owner)))
        return STORE_ERR;
    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT INTO domain(name, kind, owner, host) VALUES (?,?,?,?)"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, d->kind);
    if (owner[0])
        sqlite3_bind_text(st, 3, owner, -1, SQLITE_TRANSIENT);
    if (d->host[0])
        sqlite3_bind_text(st, 4, d->host, -1, SQLITE_TRANSIENT);
    return admin_exec(st, "add domain");
}

/* Deletes the row selected by "WHERE name=?" with a lower-cased key. */
static int admin_delete_named(sqlite3_stmt **slot, const char *sql, const char *name, size_t keymax,
                        const char *what)
{
    char key[SMTP_PATH_MAX + 1];
    sqlite3_stmt *st;
    int err;

    if (keymax > sizeof key || admin_key(name, key, keymax))
        return STORE_NOTFOUND;
    if ((err = store_begin()))
        return err;
    if (!(st = store_stmt(slot, sql)))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    if ((err = admin_exec(st, what)))
        return err;
    return sqlite3_changes(store_db()) ? 0 : STORE_NOTFOUND;
}

int store_domain_del(const char *name)
{
    static sqlite3_stmt *st;
    return admin_delete_named(&st, "DELETE FROM domain WHERE name=?", name, SMTP_DOMAIN_MAX + 1,
                        "delete domain");
}

int store_domain_list(int (*cb)(void *arg, const struct store_domain *d), void *arg)
{
    static sqlite3_stmt *st;
    struct store_domain d;
    int rc;

    if (!store_stmt(&st, "SELECT name, kind, owner, host FROM domain ORDER BY name"))
        return STORE_ERR;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        admin_domain_fill(st, &d);
        if (cb(arg, &d)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        admin_db_error("list domains");
        return store_rc(rc);
    }
    return 0;
}

/* --------------------------------------------------------------- aliases */

/* An alias name is "local" or "local@domain": at most a whole address. */
#define ALIAS_NAME_MAX ADDR_MAX

int store_alias_get(const char *name, char *targets, size_t n)
{
    static sqlite3_stmt *st;
    char key[ALIAS_NAME_MAX];
    int rc, err = 0;

    if (admin_key(name, key, sizeof key))
        return STORE_NOTFOUND;
    if (!store_stmt(&st, "SELECT targets FROM alias WHERE name=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    /* A cut-off target list would deliver to the wrong place: refuse. */
    if (rc == SQLITE_ROW && util_strlcpy(targets, admin_col_text(st, 0), n) >= n) {
        log_err("alias %s: its target list is longer than %zu bytes", key, n - 1);
        err = STORE_ERR;
    }
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return err;
    if (rc == SQLITE_DONE)
        return STORE_NOTFOUND;
    admin_db_error("read alias");
    return store_rc(rc);
}

/* Adds the alias or replaces its targets. */
int store_alias_set(const char *name, const char *targets)
{
    static sqlite3_stmt *st;
    char key[ALIAS_NAME_MAX];
    int err;

    if (admin_key(name, key, sizeof key) || !targets[0])
        return STORE_ERR;
    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT OR REPLACE INTO alias(name, targets) VALUES (?,?)"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, targets, -1, SQLITE_TRANSIENT);
    return admin_exec(st, "set alias");
}

int store_alias_del(const char *name)
{
    static sqlite3_stmt *st;
    return admin_delete_named(&st, "DELETE FROM alias WHERE name=?", name, ALIAS_NAME_MAX, "delete alias");
}

int store_alias_list(int (*cb)(void *arg, const char *name, const char *targets), void *arg)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT name, targets FROM alias ORDER BY name"))
        return STORE_ERR;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (cb(arg, admin_col_text(st, 0), admin_col_text(st, 1))) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        admin_db_error("list aliases");
        return store_rc(rc);
    }
    return 0;
}

/* Changes a domain in place, in one statement: mail routed meanwhile sees
 * either the old row or the new one, never no domain at all. */
int store_domain_mod(const struct store_domain *d)
{
    static sqlite3_stmt *st;
    char key[SMTP_DOMAIN_MAX + 1], owner[USER_MAX + 1] = "";
    int err;

    if (admin_key(d->name, key, sizeof key) ||
        (d->owner[0] && admin_key(d->owner, owner, sizeof owner)))
        return STORE_ERR;
    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "UPDATE domain SET kind=?, owner=?, host=? WHERE name=?"))
        return STORE_ERR;
    sqlite3_bind_int(st, 1, d->kind);
    if (owner[0])
        sqlite3_bind_text(st, 2, owner, -1, SQLITE_TRANSIENT);
    if (d->host[0])
        sqlite3_bind_text(st, 3, d->host, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, key, -1, SQLITE_TRANSIENT);
    if ((err = admin_exec(st, "change domain")))
        return err;
    return sqlite3_changes(store_db()) ? 0 : STORE_NOTFOUND;
}
