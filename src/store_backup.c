/*
 * store_backup.c: a consistent copy of a live database, and putting one
 * back.
 *
 * The copy goes through SQLite's online backup API on a connection of its
 * own that holds one read transaction from the first page to the last.
 * In WAL mode a reader never blocks the daemon's writers (they append to
 * the log, which simply cannot be folded back past the reader's snapshot
 * until the copy ends), and the snapshot is one committed state: every
 * message the daemon acknowledged before the copy began is in it, none
 * half.  Without that read transaction a write by the daemon between two
 * steps would restart the copy from page one, and a node that never stops
 * receiving would never finish its backup.
 *
 * The copy is written to FILE.tmp, checked, fsynced and only then renamed
 * to FILE: a backup killed at any instant leaves the previous FILE (if
 * any) untouched and the live database as it was.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BACKUP_STEP_PAGES 256           /* pages per step when not paced */

static void backup_err(char *err, size_t errlen, const char *what, const char *path, sqlite3 *db)
{
    snprintf(err, errlen, "%s %s: %s", what, path, db ? sqlite3_errmsg(db) : strerror(errno));
}

/* fsync a file, then its directory, so a rename that follows (or the
 * file's creation) survives a power cut. */
static int backup_sync(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fsync(fd)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    if (!slash)
        util_strlcpy(dir, ".", sizeof dir);
    else if (slash == path)
        util_strlcpy(dir, "/", sizeof dir);
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static void backup_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

static int backup_scalar(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    int rc;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

/* PRAGMA quick_check: every page and index entry readable and in order. */
static int backup_check(sqlite3 *db, char *err, size_t errlen, const char *path)
{
    sqlite3_stmt *st;
    int rc, ok = 0;

    if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL) != SQLITE_OK) {
        backup_err(err, errlen, "cannot check", path, db);
        return -1;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        ok = r && !strcmp(r, "ok");
        if (!ok)
            snprintf(err, errlen, "%s is damaged: %s", path, r ? r : "?");
    } else {
        backup_err(err, errlen, "cannot check", path, db);
    }
    sqlite3_finalize(st);
    return ok ? 0 : -1;
}

/* Copies every page of src into the new file dst_path.  pages_per_sec > 0
 * paces the copy (a slow SD card shared with the daemon). */
static int backup_copy(sqlite3 *src, const char *dst_path, int64_t pages_per_sec, char *err, size_t errlen)
{
    sqlite3 *dst = NULL;
    sqlite3_backup *b;
    mode_t old;
    int rc, step = BACKUP_STEP_PAGES, busy = 0;
    long pause_ms = 0;

    if (pages_per_sec > 0) {
        /* Ten steps a second. */
        step = pages_per_sec / 10 > 0 ? (int)(pages_per_sec / 10) : 1;
        pause_ms = 100;
    }
    unlink(dst_path);
    old = umask(077);                   /* everyone's mail, password hashes */
    rc = sqlite3_open_v2(dst_path, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    umask(old);
    if (rc != SQLITE_OK) {
        backup_err(err, errlen, "cannot create", dst_path, dst);
        sqlite3_close(dst);
        return -1;
    }
    b = sqlite3_backup_init(dst, "main", src, "main");
    if (!b) {
        backup_err(err, errlen, "cannot copy into", dst_path, dst);
        sqlite3_close(dst);
        return -1;
    }
    do {
        rc = sqlite3_backup_step(b, step);
        if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
            /* Only the copy's own target can be locked: give up after a
             * while rather than spin for ever. */
            if (++busy > 600)
                break;
            backup_sleep_ms(50);
        } else if (rc == SQLITE_OK && pause_ms) {
            backup_sleep_ms(pause_ms);
        }
    } while (rc == SQLITE_OK || rc == SQLITE_BUSY || rc == SQLITE_LOCKED);
    sqlite3_backup_finish(b);
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "copy into %s failed: %s", dst_path,
                 sqlite3_errcode(dst) ? sqlite3_errmsg(dst) : sqlite3_errstr(rc));
        sqlite3_close(dst);
        return -1;
    }
    rc = backup_check(dst, err, errlen, dst_path);
    sqlite3_close(dst);
    return rc;
}

static int backup_open(const char *path, int flags, sqlite3 **db, char *err, size_t errlen)
{
    struct stat st;

    if (stat(path, &st)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (sqlite3_open_v2(path, db, flags, NULL) != SQLITE_OK) {
        backup_err(err, errlen, "cannot open", path, *db);
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    sqlite3_busy_timeout(*db, 15000);
    return 0;
}

int store_backup(const char *db_path, const char *file, int64_t bytes_per_sec, struct store_backup_info *info,
                 char *err, size_t errlen)
{
    char tmp[4096];
    sqlite3 *src = NULL;
    int64_t page_size = 4096;
    int rc = -1;

    memset(info, 0, sizeof *info);
    if (snprintf(tmp, sizeof tmp, "%s.tmp", file) >= (int)sizeof tmp) {
        snprintf(err, errlen, "%s: name too long", file);
        return -1;
    }
    if (backup_open(db_path, SQLITE_OPEN_READWRITE, &src, err, errlen))
        return -1;
    /* The snapshot: one read transaction for the whole copy. */
    if (sqlite3_exec(src, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
        backup_scalar(src, "PRAGMA user_version", &info->schema) ||
        backup_scalar(src, "PRAGMA page_size", &page_size) ||
        backup_scalar(src, "PRAGMA page_count", &info->pages)) {
        backup_err(err, errlen, "cannot read", db_path, src);
        goto out;
    }
    if (info->schema <= 0) {
        snprintf(err, errlen, "%s is not a mailnode database (no schema version)", db_path);
        goto out;
    }
    backup_scalar(src, "SELECT count(*) FROM message", &info->messages);
    backup_scalar(src, "SELECT count(*) FROM mbox", &info->mailbox_messages);
    info->bytes = info->pages * page_size;
    if (backup_copy(src, tmp, bytes_per_sec > 0 ? (bytes_per_sec + page_size - 1) / page_size : 0, err, errlen))
        goto out;
    if (backup_sync(tmp)) {
        snprintf(err, errlen, "cannot sync %.800s: %s", tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, file) || backup_sync(file)) {
        snprintf(err, errlen, "cannot rename %.400s to %.400s: %s", tmp, file, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (rc)
        unlink(tmp);
    sqlite3_exec(src, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(src);
    return rc;
}

/* Restore: file is copied (backup API again, so a file that is itself in
 * WAL mode with a log beside it is read whole) to DB.restore, checked,
 * migrated to this version's schema by an ordinary open (which also
 * refuses a newer schema), and renamed over the database.  The old
 * database's -wal and -shm files go first: a log left beside a
 * different database would be replayed into it. */
int store_restore(const char *file, const char *db_path, struct store_backup_info *info, char *err, size_t errlen)
{
    char tmp[4096], side[4200];
    sqlite3 *src = NULL;
    int rc = -1;

    memset(info, 0, sizeof *info);
    if (snprintf(tmp, sizeof tmp, "%s.restore", db_path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "%s: name too long", db_path);
        return -1;
    }
    if (backup_open(file, SQLITE_OPEN_READONLY, &src, err, errlen))
        return -1;
    if (backup_check(src, err, errlen, file))
        goto out;
    if (backup_scalar(src, "PRAGMA user_version", &info->schema) || info->schema <= 0) {
        snprintf(err, errlen, "%s is not a mailnode database (no schema version)", file);
        goto out;
    }
    if (backup_copy(src, tmp, 0, err, errlen))
        goto out;
    sqlite3_close(src);
    src = NULL;
    if (store_open(tmp, STORE_TOOL, err, errlen))
        goto out;
    store_close();
    if (backup_open(tmp, SQLITE_OPEN_READONLY, &src, err, errlen))
        goto out;
    backup_scalar(src, "SELECT count(*) FROM message", &info->messages);
    backup_scalar(src, "SELECT count(*) FROM mbox", &info->mailbox_messages);
    sqlite3_close(src);
    src = NULL;
    if (backup_sync(tmp)) {
        snprintf(err, errlen, "cannot sync %.800s: %s", tmp, strerror(errno));
        goto out;
    }
    snprintf(side, sizeof side, "%s-wal", db_path);
    if (unlink(side) && errno != ENOENT)
        goto side_fail;
    snprintf(side, sizeof side, "%s-shm", db_path);
    if (unlink(side) && errno != ENOENT)
        goto side_fail;
    if (rename(tmp, db_path) || backup_sync(db_path)) {
        snprintf(err, errlen, "cannot rename %.400s to %.400s: %s", tmp, db_path, strerror(errno));
        goto out;
    }
    rc = 0;
    goto out;
side_fail:
    snprintf(err, errlen, "cannot remove %.800s: %s", side, strerror(errno));
out:
    if (rc)
        unlink(tmp);
    sqlite3_close(src);
    return rc;
}
