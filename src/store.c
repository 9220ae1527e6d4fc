/*
 * store.c: the database.  Schema and migrations, transactions with group
 * commit, message bodies (zlib-compressed, with a BLAKE2b content hash;
 * one body shared by every recipient of a message) and the outbound
 * queue.  Every SQL statement of mailnode lives in the store_*.c files.
 *
 * Durability: the database runs in WAL mode with synchronous=FULL, so
 * COMMIT returns only after the WAL is fsynced.  The daemon opens one
 * write transaction per loop turn; every message that reaches its end in
 * that turn is inserted into it, and store_turn_end() commits once and
 * only then lets the sessions send 250.
 *
 * The write path, per relayed message (the boxes this runs on write to
 * SD cards and eMMC: every page written costs time and wear):
 *
 *   accept   body row (the compressed text inline when it fits one
 *            32 KiB chunk, else chunk rows), message row, one rcpt row per
 *            recipient; group commit with the other messages of the turn
 *   deliver  each outcome updates its rcpt row (it leaves the partial
 *            indexes); outcomes are committed together, STORE_OUTCOME_BATCH
 *            or STORE_OUTCOME_MS, whichever comes first, or with the next
 *            accept commit; the message, its rcpt rows and its body go in
 *            the same transaction (store_msg_retire)
 *   fold     SQLite's checkpoint copies each page once per 1000 log pages
 *
 * What keeps the pages few: 1 KiB pages (a commit writes every page it
 * touched whole, twice: log and checkpoint); queue ids that sort by time,
 * so the qid index grows at its right edge and shrinks at its left
 * instead of touching a random page per message; only queued recipients
 * in the scheduler's indexes; counters kept by triggers on one page, and
 * one backlog row per destination (status reads those, never the queue).
 * bench/store.sh measures it on a file system of its own (device sectors,
 * journal included), 1,000 relayed messages at 10 sessions, Postfix 3.7
 * beside it in the same run: 1 KiB messages 5.0-8.1 KB per message against
 * Postfix's 15.3-17.4 KB (0.29-0.53x), 50 KiB (compressible) 12-13 KB
 * against 67-74 KB; fsyncs 0.12-0.23 per relayed message (accept and
 * delivery) against 1.
 *
 * CPU: statements are prepared once and kept; plans never depend on bound
 * values (QPSG), or SQLite would compile the pick again for every message
 * (tests/unit/test_store.c counts re-prepares).  bench/relay.sh, 1 KiB:
 * 0.24-0.34 ms of CPU per relayed message against Postfix's 3.1-3.2 ms.
 * Draining 1,000 queued messages toward a pipelining peer costs 0.017
 * fsyncs per message (1.03 before outcomes were batched), 10x faster with
 * an 8 ms fsync.  Figures and how to repeat them: bench/README.md.
 *
 * A crash loses no acknowledged message; it may resend what a peer
 * already took, at most the uncommitted outcomes plus what was on the
 * wire (at-least-once, as every MTA; tests/proto/test_outbound.py counts
 * the duplicates after a kill -9).  Multi-row calls run inside a
 * savepoint (store_atomic_begin/end): all of their rows or none.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define STMT_SLOTS 128
#ifndef STORE_PAGE_SIZE
#define STORE_PAGE_SIZE 1024            /* bytes; new databases only */
#endif

static struct {
    sqlite3 *db;
    enum store_mode mode;
    int in_txn;
    int64_t txn_started;                /* monotonic ms */
    sqlite3_stmt **slots[STMT_SLOTS];   /* statements to finalize at close */
    int n_slots;
    struct { store_ack_fn fn; void *arg; int64_t gen; int failed; } *acks;
    int64_t gen;                        /* transactions begun so far */
    size_t n_acks, cap_acks;
    int64_t first_ack_ms;               /* when the oldest waiting ack came */
    int commit_soon;                    /* commit at the end of this turn */
    int outcomes;                       /* delivery outcomes not yet committed */
    int64_t first_outcome_ms;           /* when the oldest of them was written */
    int64_t commit_us_avg;              /* moving average of durable commits */
    struct store_body *open_bodies;
    z_stream zdef, zinf;
    int zdef_ok, zinf_ok;
    unsigned char *zbuf;                /* compressBound(STORE_CHUNK) */
    size_t zbuf_cap;
} S;

static struct timer commit_timer = { .idx = -1 };
static struct timer outcome_timer = { .idx = -1 };

static void commit_due(void *arg)
{
    MN_UNUSED(arg);                     /* the turn hook that follows commits */
}

/* Schema versions, applied in order; PRAGMA user_version says how many
 * have run.  Never edit one that has shipped: add the next. */
static const char *const migrations[] = {
    /* 1: the first schema. */
    "CREATE TABLE body(id INTEGER PRIMARY KEY, size INTEGER NOT NULL DEFAULT 0,"
    " hash BLOB, complete INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);"
    "CREATE TABLE chunk(body_id INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " rawlen INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY(body_id, seq)) WITHOUT ROWID;"
    "CREATE TABLE message(id INTEGER PRIMARY KEY, qid TEXT NOT NULL UNIQUE,"
    " body_id INTEGER NOT NULL, sender TEXT NOT NULL, envid TEXT,"
    " ret_full INTEGER NOT NULL DEFAULT 0, eightbit INTEGER NOT NULL DEFAULT 0,"
    " client TEXT, auth_user TEXT, size INTEGER NOT NULL, received INTEGER NOT NULL,"
    " hold INTEGER NOT NULL DEFAULT 0, warned INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX message_body ON message(body_id);"
    /* state: 0 queued, 1 delivered, 2 failed.  kind: enum route_kind. */
    "CREATE TABLE rcpt(id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL,"
    " addr TEXT NOT NULL, orcpt TEXT, notify INTEGER NOT NULL DEFAULT 0,"
    " dest TEXT NOT NULL, kind INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0,"
    " attempts INTEGER NOT NULL DEFAULT 0, next_try INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT, updated INTEGER);"
    "CREATE INDEX rcpt_message ON rcpt(message_id);"
    "CREATE INDEX rcpt_due ON rcpt(state, kind, dest, next_try);"
    "CREATE TABLE dest(name TEXT PRIMARY KEY, next_try INTEGER NOT NULL DEFAULT 0,"
    " backoff INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT, last_try INTEGER, last_ok INTEGER);"
    "CREATE TABLE mbox(uid INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL,"
    " body_id INTEGER NOT NULL, size INTEGER NOT NULL, added INTEGER NOT NULL,"
    " qid TEXT NOT NULL, prefix TEXT NOT NULL);"
    "CREATE INDEX mbox_user ON mbox(user_id, uid);"
    "CREATE INDEX mbox_body ON mbox(body_id);"
    "CREATE TABLE user(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " pwhash TEXT NOT NULL, cram BLOB, created INTEGER NOT NULL);"
    "CREATE TABLE domain(name TEXT PRIMARY KEY, kind INTEGER NOT NULL, owner TEXT, host TEXT);"
    "CREATE TABLE alias(name TEXT PRIMARY KEY, targets TEXT NOT NULL);",
    /* 2: outbound delivery: recipients due by time, whatever their domain
     * (smarthost batches), and lifetime and warning scans by age. */
    "CREATE INDEX rcpt_next ON rcpt(state, kind, next_try);"
    "CREATE INDEX message_received ON message(received);",
    /* 3: small named facts. */
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL, updated INTEGER NOT NULL);",
    /* 4: IMAP (RFC 3501).  A user's folders, each with its UIDVALIDITY,
     * UIDNEXT and a change counter (modseq); INBOX is the folder whose
     * messages have mbox.folder = 0, so that existing mail and every
     * delivery path land there unchanged.  An IMAP UID is the mbox uid:
     * unique across the database and ascending, so existing mail keeps
     * its POP3 UIDL as its IMAP UID.  Triggers keep UIDNEXT and the
     * change counter true whoever writes mbox (SMTP, sendmail, POP3). */
    "CREATE TABLE folder(id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, name TEXT NOT NULL,"
    " uidvalidity INTEGER NOT NULL, uidnext INTEGER NOT NULL DEFAULT 1,"
    " modseq INTEGER NOT NULL DEFAULT 1, recent INTEGER NOT NULL DEFAULT 0,"
    " special TEXT, subscribed INTEGER NOT NULL DEFAULT 1, UNIQUE(user_id, name));"
    "ALTER TABLE mbox ADD COLUMN folder INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE mbox ADD COLUMN flags INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE mbox ADD COLUMN keywords TEXT;"
    "ALTER TABLE mbox ADD COLUMN modseq INTEGER NOT NULL DEFAULT 1;"
    "CREATE INDEX mbox_folder ON mbox(user_id, folder, uid);"
    "CREATE TABLE imap_cache(body_id INTEGER PRIMARY KEY, envelope TEXT NOT NULL,"
    " structure TEXT NOT NULL, body TEXT NOT NULL, parts TEXT NOT NULL, sent INTEGER,"
    " hsubject TEXT, hfrom TEXT, hto TEXT, hcc TEXT, hbcc TEXT);"
    "CREATE TRIGGER body_gone AFTER DELETE ON body BEGIN"
    " DELETE FROM imap_cache WHERE body_id=OLD.id; END;"
    "CREATE TRIGGER mbox_added AFTER INSERT ON mbox BEGIN"
    " UPDATE folder SET uidnext=max(uidnext, NEW.uid+1), modseq=modseq+1"
    " WHERE user_id=NEW.user_id AND CASE WHEN NEW.folder=0 THEN name='INBOX' ELSE id=NEW.folder END;"
    " END;"
    "CREATE TRIGGER mbox_gone AFTER DELETE ON mbox BEGIN"
    " UPDATE folder SET modseq=modseq+1"
    " WHERE user_id=OLD.user_id AND CASE WHEN OLD.folder=0 THEN name='INBOX' ELSE id=OLD.folder END;"
    " END;"
    /* RFC 6154: every user has the special-use folders from the start. */
    "CREATE TRIGGER user_folders AFTER INSERT ON user BEGIN"
    " INSERT INTO folder(user_id, name, uidvalidity, special) SELECT NEW.id, n, max(CAST(strftime('%s','now') AS INTEGER),"
    " (SELECT coalesce(max(uidvalidity), 0) FROM folder)) + k, s FROM (SELECT 'INBOX' AS n, 1 AS k,"
    " NULL AS s UNION ALL SELECT 'Sent', 2, '\\Sent' UNION ALL SELECT 'Drafts', 3, '\\Drafts'"
    " UNION ALL SELECT 'Trash', 4, '\\Trash' UNION ALL SELECT 'Junk', 5, '\\Junk');"
    " END;"
    "CREATE TRIGGER user_gone AFTER DELETE ON user BEGIN"
    " DELETE FROM folder WHERE user_id=OLD.id; END;"
    "INSERT INTO folder(user_id, name, uidvalidity, uidnext, special) SELECT u.id, n,"
    " CAST(strftime('%s','now') AS INTEGER) + k, CASE WHEN n='INBOX' THEN"
    " (SELECT coalesce(max(uid), 0) + 1 FROM mbox WHERE user_id=u.id) ELSE 1 END, s"
    " FROM user u, (SELECT 'INBOX' AS n, 1 AS k, NULL AS s UNION ALL SELECT 'Sent', 2, '\\Sent'"
    " UNION ALL SELECT 'Drafts', 3, '\\Drafts' UNION ALL SELECT 'Trash', 4, '\\Trash'"
    " UNION ALL SELECT 'Junk', 5, '\\Junk');",
    /* 5: the queue as the scheduler walks it.  Only recipients still
     * queued are indexed (a delivered one leaves the indexes instead of
     * moving inside them), in the order they are picked: (next_try,
     * message_id) per destination, and across destinations for the
     * smarthost.  Counts that `queue count` and `status` show are kept
     * by triggers, so reading them costs the same at any queue size. */
    "DROP INDEX rcpt_due;"
    "DROP INDEX rcpt_next;"
    "CREATE INDEX rcpt_pick ON rcpt(kind, dest, next_try, message_id) WHERE state=0;"
    "CREATE INDEX rcpt_any ON rcpt(kind, next_try, message_id) WHERE state=0;"
    "CREATE TABLE tally(name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO tally VALUES ('msgs', (SELECT count(*) FROM message)),"
    " ('rcpts', (SELECT count(*) FROM rcpt WHERE state=0)),"
    " ('held', (SELECT count(*) FROM rcpt WHERE state=0 AND kind=3)),"
    " ('mbox', (SELECT count(*) FROM mbox));"
    "CREATE TRIGGER message_in AFTER INSERT ON message BEGIN"
    " UPDATE tally SET n=n+1 WHERE name='msgs'; END;"
    "CREATE TRIGGER message_out AFTER DELETE ON message BEGIN"
    " UPDATE tally SET n=n-1 WHERE name='msgs'; END;"
    "CREATE TRIGGER mbox_in AFTER INSERT ON mbox BEGIN"
    " UPDATE tally SET n=n+1 WHERE name='mbox'; END;"
    "CREATE TRIGGER mbox_out AFTER DELETE ON mbox BEGIN"
    " UPDATE tally SET n=n-1 WHERE name='mbox'; END;"
    "CREATE TRIGGER rcpt_in AFTER INSERT ON rcpt WHEN new.state=0 BEGIN"
    " UPDATE tally SET n=n+1 WHERE name='rcpts' OR (name='held' AND new.kind=3); END;"
    "CREATE TRIGGER rcpt_out AFTER DELETE ON rcpt WHEN old.state=0 BEGIN"
    " UPDATE tally SET n=n-1 WHERE name='rcpts' OR (name='held' AND old.kind=3); END;"
    "CREATE TRIGGER rcpt_done AFTER UPDATE OF state ON rcpt WHEN old.state=0 AND new.state<>0 BEGIN"
    " UPDATE tally SET n=n-1 WHERE name='rcpts' OR (name='held' AND old.kind=3); END;"
    "CREATE TRIGGER rcpt_again AFTER UPDATE OF state ON rcpt WHEN old.state<>0 AND new.state=0 BEGIN"
    " UPDATE tally SET n=n+1 WHERE name='rcpts' OR (name='held' AND new.kind=3); END;",
    /* 6: offline bundles: peers, recipients in transit, identities of
     * delivered recipients (duplicates), volumes imported (replays). */
    "CREATE TABLE peer(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, sign_pk BLOB NOT NULL UNIQUE,"
    " box_pk BLOB NOT NULL, domains TEXT NOT NULL DEFAULT '', added INTEGER NOT NULL);"
    "CREATE TABLE bundle_transit(rcpt_id INTEGER PRIMARY KEY, peer_id INTEGER NOT NULL,"
    " bundle_id BLOB NOT NULL, exported INTEGER NOT NULL);"
    "CREATE INDEX bundle_transit_peer ON bundle_transit(peer_id);"
    "CREATE TABLE bundle_seen(key BLOB PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX bundle_seen_at ON bundle_seen(at);"
    "CREATE TABLE bundle_volume(bundle_id BLOB NOT NULL, volume INTEGER NOT NULL,"
    " peer_id INTEGER NOT NULL, imported INTEGER NOT NULL, PRIMARY KEY(bundle_id, volume)) WITHOUT ROWID;",
    /* 7: a body that fits one chunk is kept in its body row: no chunk
     * row, so no chunk page written when it comes and when it goes. */
    "ALTER TABLE body ADD COLUMN data BLOB;",
    /* 8: CONDSTORE (RFC 7162 3.1): a new message carries the folder's
     * change number of its arrival as its mod-sequence. */
    "DROP TRIGGER mbox_added;"
    "CREATE TRIGGER mbox_added AFTER INSERT ON mbox BEGIN"
    " UPDATE folder SET uidnext=max(uidnext, NEW.uid+1), modseq=modseq+1"
    " WHERE user_id=NEW.user_id AND CASE WHEN NEW.folder=0 THEN name='INBOX' ELSE id=NEW.folder END;"
    " UPDATE mbox SET modseq=(SELECT modseq FROM folder WHERE user_id=NEW.user_id AND"
    " CASE WHEN NEW.folder=0 THEN name='INBOX' ELSE id=NEW.folder END) WHERE uid=NEW.uid;"
    " END;",
    /* 9: each destination's backlog (remote and held recipients still
     * queued, and the messages they belong to) kept by triggers, so that
     * `status` reads one row per destination instead of counting its
     * queue; a row goes when its destination has nothing queued.  Mail
     * stopped with `queue hold` is found through a partial index of the
     * few messages that are.  "+": a message's own rows through
     * rcpt_message, never its destination's range of rcpt_pick. */
    "CREATE TABLE backlog(kind INTEGER NOT NULL, dest TEXT NOT NULL, rcpts INTEGER NOT NULL,"
    " msgs INTEGER NOT NULL, PRIMARY KEY(kind, dest)) WITHOUT ROWID;"
    "INSERT INTO backlog SELECT kind, dest, count(*), count(DISTINCT message_id) FROM rcpt"
    " WHERE state=0 AND kind IN (2,3) GROUP BY kind, dest;"
    "CREATE INDEX message_hold ON message(id) WHERE hold=1;"
    "CREATE TRIGGER backlog_in AFTER INSERT ON rcpt WHEN new.state=0 AND new.kind IN (2,3) BEGIN"
    " INSERT INTO backlog VALUES (new.kind, new.dest, 1, NOT EXISTS (SELECT 1 FROM rcpt WHERE"
    " message_id=new.message_id AND +state=0 AND +kind=new.kind AND +dest=new.dest AND id<>new.id))"
    " ON CONFLICT(kind, dest) DO UPDATE SET rcpts=rcpts+1, msgs=msgs+excluded.msgs; END;"
    "CREATE TRIGGER backlog_again AFTER UPDATE OF state ON rcpt WHEN old.state<>0 AND new.state=0"
    " AND new.kind IN (2,3) BEGIN"
    " INSERT INTO backlog VALUES (new.kind, new.dest, 1, NOT EXISTS (SELECT 1 FROM rcpt WHERE"
    " message_id=new.message_id AND +state=0 AND +kind=new.kind AND +dest=new.dest AND id<>new.id))"
    " ON CONFLICT(kind, dest) DO UPDATE SET rcpts=rcpts+1, msgs=msgs+excluded.msgs; END;"
    "CREATE TRIGGER backlog_out AFTER DELETE ON rcpt WHEN old.state=0 AND old.kind IN (2,3) BEGIN"
    " UPDATE backlog SET rcpts=rcpts-1, msgs=msgs-NOT EXISTS (SELECT 1 FROM rcpt WHERE"
    " message_id=old.message_id AND +state=0 AND +kind=old.kind AND +dest=old.dest)"
    " WHERE kind=old.kind AND dest=old.dest;"
    " DELETE FROM backlog WHERE kind=old.kind AND dest=old.dest AND rcpts<=0; END;"
    "CREATE TRIGGER backlog_done AFTER UPDATE OF state ON rcpt WHEN old.state=0 AND new.state<>0"
    " AND old.kind IN (2,3) BEGIN"
    " UPDATE backlog SET rcpts=rcpts-1, msgs=msgs-NOT EXISTS (SELECT 1 FROM rcpt WHERE"
    " message_id=old.message_id AND +state=0 AND +kind=old.kind AND +dest=old.dest)"
    " WHERE kind=old.kind AND dest=old.dest;"
    " DELETE FROM backlog WHERE kind=old.kind AND dest=old.dest AND rcpts<=0; END;",
    /* 10: mailbox quotas.  user.quota is the user's own limit in octets
     * (NULL: quota.default applies, 0: none); bytes and msgs are what the
     * mailbox holds, kept by triggers whoever writes mbox (SMTP, sendmail,
     * POP3, IMAP, the CLI), so a RCPT check reads one row instead of
     * summing the mailbox. */
    "ALTER TABLE user ADD COLUMN quota INTEGER;"
    "ALTER TABLE user ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE user ADD COLUMN msgs INTEGER NOT NULL DEFAULT 0;"
    "UPDATE user SET bytes=(SELECT coalesce(sum(size), 0) FROM mbox WHERE user_id=user.id),"
    " msgs=(SELECT count(*) FROM mbox WHERE user_id=user.id);"
    "CREATE TRIGGER mbox_usage_in AFTER INSERT ON mbox BEGIN"
    " UPDATE user SET bytes=bytes+NEW.size, msgs=msgs+1 WHERE id=NEW.user_id; END;"
    "CREATE TRIGGER mbox_usage_out AFTER DELETE ON mbox BEGIN"
    " UPDATE user SET bytes=bytes-OLD.size, msgs=msgs-1 WHERE id=OLD.user_id; END;"
    "CREATE TRIGGER mbox_usage_move AFTER UPDATE OF user_id, size ON mbox"
    " WHEN OLD.user_id<>NEW.user_id OR OLD.size<>NEW.size BEGIN"
    " UPDATE user SET bytes=bytes-OLD.size, msgs=msgs-1 WHERE id=OLD.user_id;"
    " UPDATE user SET bytes=bytes+NEW.size, msgs=msgs+1 WHERE id=NEW.user_id; END;",
    /* 11: resumable transfers between mailnodes (resume.c): the octets of
     * an interrupted transfer, kept under its transfer id in a body row
     * of its own (complete=2: neither a finished body nor a crash's
     * leftover), and, once accepted, the queue id it got (done_qid) so
     * a repeat after a lost 250 is answered, not stored twice. */
    "CREATE TABLE partial(tid TEXT PRIMARY KEY, body_id INTEGER NOT NULL, size INTEGER NOT NULL,"
    " nchunks INTEGER NOT NULL, updated INTEGER NOT NULL, done_qid TEXT) WITHOUT ROWID;"
    "CREATE INDEX partial_updated ON partial(updated);",
};

sqlite3 *store_db(void)
{
    return S.db;
}

/* A full disk is SQLITE_FULL when a write runs out of room, but an I/O
 * error when the open of a journal, the growth of the -shm map or a sync
 * does (which of them comes first depends on timing): all of them are
 * a full disk to the client, RFC 3463's 4.3.1. */
int store_rc(int rc)
{
    if (rc == SQLITE_FULL)
        return STORE_FULL;
    if ((rc & 0xff) == SQLITE_IOERR && S.db) {
        int e = sqlite3_system_errno(S.db);
        if (e == ENOSPC || e == EDQUOT)
            return STORE_FULL;
    }
    return STORE_ERR;
}

static void store_log_error(const char *what)
{
    log_err("database: %s: %s", what, S.db ? sqlite3_errmsg(S.db) : "not open");
}

sqlite3_stmt *store_stmt(sqlite3_stmt **slot, const char *sql)
{
    if (*slot) {
        sqlite3_reset(*slot);
        sqlite3_clear_bindings(*slot);
        return *slot;
    }
    if (S.n_slots == STMT_SLOTS) {
        log_err("database: too many prepared statements");
        return NULL;
    }
    if (sqlite3_prepare_v3(S.db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL) != SQLITE_OK) {
        store_log_error(sql);
        return NULL;
    }
    S.slots[S.n_slots++] = slot;
    return *slot;
}

static int exec(const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(S.db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        log_err("database: %s: %s", sql, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return store_rc(rc);
    }
    return 0;
}

static int migrate(char *err, size_t errlen)
{
    sqlite3_stmt *st;
    int version = 0;
    int target = (int)MN_NELEM(migrations);

    if (sqlite3_prepare_v2(S.db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
        return -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version > target) {
        snprintf(err, errlen, "database schema %d is newer than this mailnode (%d): upgrade mailnode",
                 version, target);
        return -1;
    }
    if (version == target)
        return 0;
    if (exec("BEGIN IMMEDIATE"))
        goto fail;
    for (int v = version; v < target; v++) {
        char pragma[64];
        if (exec(migrations[v]))
            goto rollback;
        snprintf(pragma, sizeof pragma, "PRAGMA user_version=%d", v + 1);
        if (exec(pragma))
            goto rollback;
    }
    if (exec("COMMIT"))
        goto rollback;
    if (version)
        log_info("database schema migrated from %d to %d", version, target);
    return 0;
rollback:
    exec("ROLLBACK");
fail:
    snprintf(err, errlen, "cannot set up the database schema: %s", sqlite3_errmsg(S.db));
    return -1;
}

int store_open(const char *path, enum store_mode mode, char *err, size_t errlen)
{
    mode_t old;
    int rc;

    memset(&S, 0, sizeof S);
    S.mode = mode;
    /* The database holds password hashes and everyone's mail: 0600. */
    old = umask(077);
    rc = sqlite3_open_v2(path, &S.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    umask(old);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open database %s: %s", path,
                 S.db ? sqlite3_errmsg(S.db) : sqlite3_errstr(rc));
        goto fail;
    }
    /* The daemon must not stall its loop for long behind a command-line
     * tool's write; tools wait patiently for the daemon's short turns. */
    sqlite3_busy_timeout(S.db, mode == STORE_DAEMON ? 2000 : 15000);
    /* Plans must not depend on bound values: without this, SQLite
     * re-prepares (parses and plans again) a statement whose parameter
     * it once compared with a literal of a partial index, every time that
     * parameter changes: the pick and its recipients cost a full compile
     * per message.  Every statement here is written to be indexed as
     * prepared (tests/unit/test_store.c explains them unbound). */
    sqlite3_db_config(S.db, SQLITE_DBCONFIG_ENABLE_QPSG, 1, (int *)NULL);
    /* Every commit writes each page it touched whole into the log, and a
     * checkpoint again into the database: small pages write less per
     * message (bench/store.sh).  Only a new database takes it (before
     * WAL mode and the first table); an older one keeps its size. */
    char ps[48];
    snprintf(ps, sizeof ps, "PRAGMA page_size=%d", STORE_PAGE_SIZE);
    if (exec(ps) || exec("PRAGMA journal_mode=WAL") || exec("PRAGMA foreign_keys=OFF") ||
        exec("PRAGMA cache_size=-1024") || exec("PRAGMA temp_store=MEMORY") ||
        exec("PRAGMA synchronous=FULL")) {
        snprintf(err, errlen, "cannot set up database %s: %s (is it a mailnode database?)", path,
                 sqlite3_errmsg(S.db));
        goto fail;
    }
    if (migrate(err, errlen))
        goto fail;
    store_clock_load();
    if (mode == STORE_DAEMON) {
        /* Bodies left incomplete by a crash were never acknowledged. */
        if (exec("DELETE FROM chunk WHERE body_id IN (SELECT id FROM body WHERE complete=0);"
                 "DELETE FROM body WHERE complete=0;"))
            log_warn("could not remove incomplete bodies left by a crash");
        store_gc();
    }
    return 0;
fail:
    if (S.db)
        sqlite3_close(S.db);
    S.db = NULL;
    return -1;
}

void store_close(void)
{
    if (!S.db)
        return;
    timer_cancel(&commit_timer);
    timer_cancel(&outcome_timer);
    if (S.in_txn)
        store_rollback();
    for (int i = 0; i < S.n_slots; i++) {
        sqlite3_finalize(*S.slots[i]);
        *S.slots[i] = NULL;
    }
    S.n_slots = 0;
    sqlite3_close(S.db);
    S.db = NULL;
    free(S.acks);
    if (S.zdef_ok)
        deflateEnd(&S.zdef);
    if (S.zinf_ok)
        inflateEnd(&S.zinf);
    free(S.zbuf);
    memset(&S, 0, sizeof S);
}

/* ---------------------------------------------------------- transactions */

MN_FOR_TESTS int store_in_txn(void)
{
    return S.in_txn;
}

int store_begin(void)
{
    static sqlite3_stmt *st;
    int rc;

    if (S.in_txn)
        return 0;
    if (!store_stmt(&st, "BEGIN IMMEDIATE"))
        return STORE_ERR;
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        store_log_error("BEGIN");
        return store_rc(rc);
    }
    S.in_txn = 1;
    S.gen++;
    S.txn_started = util_now_ms();
    /* An idle loop must still wake to commit what this transaction will
     * hold (delivery records, deletions): at most half a second later. */
    if (S.mode == STORE_DAEMON)
        timer_set(&commit_timer, 510, commit_due, NULL);
    return 0;
}

/* Every open body lost its rows with the transaction. */
static void bodies_lost(int err)
{
    for (struct store_body *b = S.open_bodies; b; b = b->next)
        if (!b->err)
            b->err = err;
}

/* After a full disk: fold the WAL back into the database and shrink it,
 * so that the space the log held is there for the next messages. */
static void reclaim_wal(void)
{
    int log = 0, done = 0;
    if (sqlite3_wal_checkpoint_v2(S.db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &done) == SQLITE_OK)
        log_warn("database: disk full; write-ahead log folded back (%d frames)", done);
}

/* Roll back; what the transaction held failed with err (STORE_FULL when
 * the disk filled, so that its clients hear 452 4.3.1, not 451). */
static void rollback_err(int err)
{
    static sqlite3_stmt *st;
    if (!S.in_txn)
        return;
    /* Outcomes lost with it: those messages are sent again (at-least-once). */
    S.outcomes = 0;
    if (store_stmt(&st, "ROLLBACK")) {
        sqlite3_step(st);
        sqlite3_reset(st);
    }
    S.in_txn = 0;
    bodies_lost(err);
    /* Messages this transaction held are gone: their acknowledgements
     * must say so, whatever later transactions of the turn do. */
    for (size_t i = 0; i < S.n_acks; i++)
        if (S.acks[i].gen == S.gen && !S.acks[i].failed)
            S.acks[i].failed = err;
}

void store_rollback(void)
{
    rollback_err(STORE_ERR);
}

static int commit(void)
{
    static sqlite3_stmt *st;
    int rc;

    if (!S.in_txn)
        return 0;
    if (!store_stmt(&st, "COMMIT"))
        goto fail;
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        store_log_error("COMMIT");
        int err = store_rc(rc);
        rollback_err(err);
        if (err == STORE_FULL)
            reclaim_wal();
        return err;
    }
    S.in_txn = 0;
    S.outcomes = 0;
    timer_cancel(&outcome_timer);
    return 0;
fail:
    store_rollback();
    return STORE_ERR;
}

int store_commit(void)
{
    return commit();
}

void store_after_commit(store_ack_fn fn, void *arg)
{
    if (S.n_acks == S.cap_acks) {
        size_t cap = S.cap_acks ? S.cap_acks * 2 : 32;
        void *p = realloc(S.acks, cap * sizeof *S.acks);
        if (!p) {
            /* Cannot wait for the commit: fail this one now, it was not
             * acknowledged and will be retried by the client. */
            fn(arg, STORE_ERR);
            return;
        }
        S.acks = p;
        S.cap_acks = cap;
    }
    if (!S.n_acks)
        S.first_ack_ms = util_now_ms();
    S.acks[S.n_acks].fn = fn;
    S.acks[S.n_acks].arg = arg;
    S.acks[S.n_acks].gen = S.gen;
    S.acks[S.n_acks].failed = 0;
    S.n_acks++;
}

/* The group commit: one COMMIT (one WAL fsync) for everything the turn
 * wrote, then the acknowledgements.  A turn that only streamed body chunks
 * of unfinished messages does not commit; the transaction is closed every
 * half second anyway, so that command-line tools get their turn to write.
 *
 * On slow storage (SD cards and eMMC flush in 2-20 ms) the commit is held
 * back while other sessions are inside a mail transaction, for at most as
 * long as a commit takes: their messages join this fsync instead of each
 * paying for one of their own.  On fast storage the wait is negligible.
 * The busy hint comes from the protocol layer (store_set_busy_hint). */
static int (*busy_hint)(void);
static struct timer holdoff_timer = { .idx = -1 };

void store_commit_soon(void)
{
    S.commit_soon = 1;
}

/* Delivery outcomes (a peer's 250, 4xx, 5xx) are not acknowledged to
 * anyone, so they need not be durable at once: losing them in a crash
 * only sends those messages again.  Committing each alone cost one fsync
 * per delivered message; batching them bounds both the fsyncs and the
 * duplicates a crash can cause (STORE_OUTCOME_BATCH plus what was in
 * flight on the wire). */
static void outcome_due(void *arg)
{
    MN_UNUSED(arg);                     /* the turn hook that follows commits */
}

void store_outcome(void)
{
    int64_t now = util_now_ms();
    if (!S.outcomes++) {
        S.first_outcome_ms = now;
        if (S.mode == STORE_DAEMON)
            timer_set(&outcome_timer, STORE_OUTCOME_MS, outcome_due, NULL);
    }
    if (S.outcomes >= STORE_OUTCOME_BATCH)
        S.commit_soon = 1;
}

static int outcomes_due(int64_t now)
{
    return S.outcomes && (S.outcomes >= STORE_OUTCOME_BATCH || now - S.first_outcome_ms >= STORE_OUTCOME_MS);
}

void store_set_busy_hint(int (*fn)(void))
{
    busy_hint = fn;
}

static void holdoff_expired(void *arg)
{
    MN_UNUSED(arg);                     /* the turn hook that follows commits */
}

void store_turn_end(void)
{
    int rc = 0;
    size_t n;
    int64_t now = util_now_ms();

    if (!S.in_txn && !S.n_acks)
        return;
    if (S.in_txn) {
        if (!S.n_acks && !S.commit_soon && !outcomes_due(now) && now - S.txn_started < 500)
            return;
        if (S.n_acks && busy_hint && busy_hint() > 0) {
            /* Wait up to one commit's duration (0.1 ms granularity). */
            int64_t wait_us = S.commit_us_avg > 20000 ? 20000 : S.commit_us_avg;
            if (wait_us >= 1000 && (now - S.first_ack_ms) * 1000 < wait_us) {
                timer_set(&holdoff_timer, S.first_ack_ms + wait_us / 1000 - now, holdoff_expired, NULL);
                return;
            }
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        rc = commit();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        int64_t us = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
        if (S.n_acks)
            S.commit_us_avg = (S.commit_us_avg * 7 + us) / 8;
    }
    timer_cancel(&holdoff_timer);
    S.commit_soon = 0;
    n = S.n_acks;
    S.n_acks = 0;
    for (size_t i = 0; i < n; i++)
        S.acks[i].fn(S.acks[i].arg, S.acks[i].failed ? S.acks[i].failed : rc);
}

/* ---------------------------------------------------------------- bodies */

static int z_init(void)
{
    if (!S.zbuf) {
        S.zbuf_cap = compressBound(STORE_CHUNK);
        S.zbuf = malloc(S.zbuf_cap);
        if (!S.zbuf)
            return STORE_ERR;
    }
    /* Level 1: on a small CPU, compressing costs more time than the disk
     * saves past the first level; mail text still shrinks by half or more. */
    if (!S.zdef_ok) {
        if (deflateInit2(&S.zdef, 1, Z_DEFLATED, 15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            return STORE_ERR;
        S.zdef_ok = 1;
    }
    return 0;
}

struct store_body *store_body_new(void)
{
    static sqlite3_stmt *st;
    struct store_body *b = NULL;
    void *mem = NULL;

    if (z_init())
        return NULL;
    /* crypto_generichash_state wants 64-byte alignment. */
    if (posix_memalign(&mem, 64, sizeof *b))
        return NULL;
    b = memset(mem, 0, sizeof *b);
    b->buf = malloc(STORE_CHUNK);
    if (!b->buf)
        goto fail;
    crypto_generichash_init(&b->hash, NULL, 0, crypto_generichash_BYTES);
    if (store_begin())
        goto fail;
    if (!store_stmt(&st, "INSERT INTO body(created) VALUES (?)"))
        goto fail;
    sqlite3_bind_int64(st, 1, util_now());
    if (sqlite3_step(st) != SQLITE_DONE) {
        store_log_error("new body");
        goto fail;
    }
    b->id = sqlite3_last_insert_rowid(S.db);
    b->next = S.open_bodies;
    S.open_bodies = b;
    return b;
fail:
    if (b)
        free(b->buf);
    free(b);
    return NULL;
}

/* b's buffered bytes, compressed into S.zbuf; their length. */
static int body_deflate(struct store_body *b, int *zlen)
{
    deflateReset(&S.zdef);
    S.zdef.next_in = b->buf;
    S.zdef.avail_in = (uInt)b->len;
    S.zdef.next_out = S.zbuf;
    S.zdef.avail_out = (uInt)S.zbuf_cap;
    if (deflate(&S.zdef, Z_FINISH) != Z_STREAM_END)
        return b->err = STORE_ERR;
    *zlen = (int)(S.zbuf_cap - S.zdef.avail_out);
    return 0;
}

static int body_flush(struct store_body *b)
{
    static sqlite3_stmt *st;
    int rc, zlen;

    if (!b->len)
        return 0;
    if (body_deflate(b, &zlen))
        return b->err;
    if ((rc = store_begin()))
        return b->err = rc;
    if (!store_stmt(&st, "INSERT INTO chunk(body_id, seq, rawlen, data) VALUES (?,?,?,?)"))
        return b->err = STORE_ERR;
    sqlite3_bind_int64(st, 1, b->id);
    sqlite3_bind_int64(st, 2, b->seq);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)b->len);
    sqlite3_bind_blob(st, 4, S.zbuf, zlen, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        store_log_error("write chunk");
        b->err = store_rc(rc);
        if (b->err == STORE_FULL) {
            /* Roll back now: the transaction cannot commit, and the
             * log space it holds is needed by everyone else. */
            rollback_err(STORE_FULL);
            reclaim_wal();
        }
        return b->err;
    }
    b->seq++;
    b->len = 0;
    return 0;
}

/* A partial body (resume.c) taken up again: size raw octets in nchunks
 * chunks, more appended after them.  Its rows are kept when it is freed
 * (linked): they outlive the session. */
struct store_body *store_body_reopen(int64_t id, int64_t size, int64_t nchunks)
{
    struct store_body *b = NULL;
    void *mem = NULL;

    if (z_init() || posix_memalign(&mem, 64, sizeof *b))
        return NULL;
    b = memset(mem, 0, sizeof *b);
    b->buf = malloc(STORE_CHUNK);
    if (!b->buf) {
        free(b);
        return NULL;
    }
    crypto_generichash_init(&b->hash, NULL, 0, crypto_generichash_BYTES);
    b->id = id;
    b->size = size;
    b->seq = nchunks;
    b->linked = 1;
    b->next = S.open_bodies;
    S.open_bodies = b;
    return b;
}

/* What is buffered goes into a (short) chunk now: a partial body's
 * chunks need not be full, since it is only ever read from the start. */
int store_body_checkpoint(struct store_body *b)
{
    return b->err ? b->err : body_flush(b);
}

int store_body_write(struct store_body *b, const void *data, size_t n)
{
    const unsigned char *p = data;

    if (b->err)
        return b->err;
    crypto_generichash_update(&b->hash, p, n);
    b->size += (int64_t)n;
    while (n) {
        size_t take = STORE_CHUNK - b->len;
        if (take > n)
            take = n;
        memcpy(b->buf + b->len, p, take);
        b->len += take;
        p += take;
        n -= take;
        if (b->len == STORE_CHUNK && body_flush(b))
            return b->err;
    }
    return 0;
}

int store_body_finish(struct store_body *b)
{
    static sqlite3_stmt *st;
    unsigned char hash[crypto_generichash_BYTES];
    int rc, zlen = 0;
    /* A body that fits one chunk (most mail) is kept in its own row:
     * no chunk row, so no chunk page written when it comes or goes. */
    int inline_data = b->seq == 0 && b->len > 0;

    if (b->err)
        return b->err;
    if (inline_data ? body_deflate(b, &zlen) : body_flush(b))
        return b->err;
    crypto_generichash_final(&b->hash, hash, sizeof hash);
    if (store_begin() || !store_stmt(&st, "UPDATE body SET size=?, hash=?, complete=1, data=? WHERE id=?"))
        return b->err = STORE_ERR;
    sqlite3_bind_int64(st, 1, b->size);
    sqlite3_bind_blob(st, 2, hash, sizeof hash, SQLITE_TRANSIENT);
    if (inline_data)
        sqlite3_bind_blob(st, 3, S.zbuf, zlen, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, b->id);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        store_log_error("finish body");
        return b->err = store_rc(rc);
    }
    return 0;
}

static void body_delete(int64_t id)
{
    static sqlite3_stmt *c, *b;
    if (store_begin())
        return;
    if (store_stmt(&c, "DELETE FROM chunk WHERE body_id=?")) {
        sqlite3_bind_int64(c, 1, id);
        sqlite3_step(c);
        sqlite3_reset(c);
    }
    if (store_stmt(&b, "DELETE FROM body WHERE id=?")) {
        sqlite3_bind_int64(b, 1, id);
        sqlite3_step(b);
        sqlite3_reset(b);
    }
}

void store_body_free(struct store_body *b)
{
    struct store_body **pp;

    if (!b)
        return;
    for (pp = &S.open_bodies; *pp; pp = &(*pp)->next)
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    /* An abandoned body still in this transaction goes; one whose
     * transaction already rolled back has no rows left. */
    if (!b->linked && !b->err && S.db)
        body_delete(b->id);
    free(b->buf);
    free(b);
}

int store_reader_open(struct store_reader *r, int64_t body_id)
{
    static sqlite3_stmt *st;

    memset(r, 0, sizeof *r);
    r->body_id = body_id;
    if (!S.zinf_ok) {
        if (inflateInit(&S.zinf) != Z_OK)
            return STORE_ERR;
        S.zinf_ok = 1;
    }
    if (!store_stmt(&st, "SELECT (SELECT count(*) FROM chunk WHERE body_id=?1), data IS NOT NULL"
                         " FROM body WHERE id=?1"))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, body_id);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_reset(st);
        return STORE_ERR;
    }
    r->nchunks = sqlite3_column_int64(st, 0);
    r->inline_data = sqlite3_column_int(st, 1);
    if (r->inline_data)
        r->nchunks = 1;
    sqlite3_reset(st);
    r->buf = malloc(STORE_CHUNK);
    return r->buf ? 0 : STORE_ERR;
}

static int reader_load(struct store_reader *r)
{
    static sqlite3_stmt *chunk, *inl;
    sqlite3_stmt *st;
    int rc = STORE_ERR;

    if (r->inline_data)
        st = store_stmt(&inl, "SELECT size, data FROM body WHERE id=?");
    else
        st = store_stmt(&chunk, "SELECT rawlen, data FROM chunk WHERE body_id=? AND seq=?");
    if (!st)
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, r->body_id);
    if (!r->inline_data)
        sqlite3_bind_int64(st, 2, r->seq);
    if (sqlite3_step(st) == SQLITE_ROW) {
        int64_t rawlen = sqlite3_column_int64(st, 0);
        const void *data = sqlite3_column_blob(st, 1);
        int len = sqlite3_column_bytes(st, 1);
        if (rawlen > 0 && rawlen <= STORE_CHUNK) {
            inflateReset(&S.zinf);
            S.zinf.next_in = (Bytef *)data;
            S.zinf.avail_in = (uInt)len;
            S.zinf.next_out = r->buf;
            S.zinf.avail_out = STORE_CHUNK;
            if (inflate(&S.zinf, Z_FINISH) == Z_STREAM_END &&
                STORE_CHUNK - S.zinf.avail_out == (uInt)rawlen) {
                r->len = (size_t)rawlen;
                r->off = 0;
                r->seq++;
                rc = 0;
            }
        }
    }
    sqlite3_reset(st);
    if (rc)
        log_err("database: body %lld chunk %lld is damaged", (long long)r->body_id, (long long)r->seq);
    return rc;
}

ssize_t store_reader_read(struct store_reader *r, void *dst, size_t n)
{
    if (r->err)
        return r->err;
    if (r->off == r->len) {
        if (r->seq >= r->nchunks)
            return 0;
        if ((r->err = reader_load(r)))
            return r->err;
    }
    if (n > r->len - r->off)
        n = r->len - r->off;
    memcpy(dst, r->buf + r->off, n);
    r->off += n;
    return (ssize_t)n;
}

int store_reader_seek(struct store_reader *r, int64_t off)
{
    /* Every chunk but the last holds STORE_CHUNK raw bytes (body_flush
     * writes only full ones before the end), so the chunk holding off is
     * known without reading any: a partial FETCH near the end of a large
     * message inflates one chunk, not all before it. */
    int64_t seq = off / STORE_CHUNK;

    if (r->err)
        return r->err;
    if (off < 0 || seq > r->nchunks)
        return STORE_ERR;
    if (seq == r->nchunks) {
        r->seq = seq;
        r->len = r->off = 0;
        return 0;
    }
    if (r->len && r->seq == seq + 1) {
        r->off = (size_t)(off % STORE_CHUNK);
        if (r->off > r->len)
            r->off = r->len;
        return 0;
    }
    r->seq = seq;
    if ((r->err = reader_load(r)))
        return r->err;
    r->off = (size_t)(off % STORE_CHUNK);
    if (r->off > r->len)
        r->off = r->len;
    return 0;
}

void store_reader_close(struct store_reader *r)
{
    free(r->buf);
    r->buf = NULL;
}

/* -------------------------------------------------------------- messages */

#ifdef MAILNODE_TEST
/* Every statement prepared so far, with each line of its query plan. */
int store_explain(int (*cb)(void *arg, const char *sql, const char *plan), void *arg)
{
    for (int i = 0; i < S.n_slots; i++) {
        const char *sql = sqlite3_sql(*S.slots[i]);
        char *q = sqlite3_mprintf("EXPLAIN QUERY PLAN %s", sql);
        sqlite3_stmt *st = NULL;
        if (!q || sqlite3_prepare_v2(S.db, q, -1, &st, NULL) != SQLITE_OK) {
            sqlite3_free(q);
            return STORE_ERR;
        }
        sqlite3_free(q);
        while (sqlite3_step(st) == SQLITE_ROW)
            if (cb(arg, sql, (const char *)sqlite3_column_text(st, 3)))
                break;
        sqlite3_finalize(st);
    }
    return 0;
}

/* Times a prepared statement was compiled again since it was prepared. */
int store_reprepares(void)
{
    int n = 0;
    for (int i = 0; i < S.n_slots; i++)
        n += sqlite3_stmt_status(*S.slots[i], SQLITE_STMTSTATUS_REPREPARE, 0);
    return n;
}

int store_fault_after = -1;

int store_fault(void)
{
    return store_fault_after >= 0 && store_fault_after-- == 0;
}
#endif

/* Multi-row calls are all-or-nothing inside the turn's transaction: a
 * savepoint around them, rolled back to at the first failed step, so that
 * the turn's COMMIT never carries half of one (a message without its
 * recipients, recipients of a body that a refused message deleted). */
static int sp_exec(sqlite3_stmt **slot, const char *sql)
{
    sqlite3_stmt *st = store_stmt(slot, sql);
    int rc;
    if (!st)
        return STORE_ERR;
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        store_log_error(sql);
        return store_rc(rc);
    }
    return 0;
}

int store_atomic_begin(void)
{
    static sqlite3_stmt *st;
    int err = store_begin();
    return err ? err : sp_exec(&st, "SAVEPOINT atomic");
}

int store_atomic_end(int err)
{
    static sqlite3_stmt *rel, *undo;

    if (!S.in_txn)
        return err < 0 ? err : STORE_ERR;
    if (err < 0) {
        /* A full disk or an I/O error may have ended the whole
         * transaction already: then everything of the turn is gone. */
        if (sqlite3_get_autocommit(S.db) || sp_exec(&undo, "ROLLBACK TO atomic")) {
            store_rollback();
            return err;
        }
    }
    int rc = sp_exec(&rel, "RELEASE atomic");
    if (rc) {
        store_rollback();
        return err < 0 ? err : rc;
    }
    return err;
}

int store_step_done(sqlite3_stmt *st, const char *what)
{
    if (STORE_FAULT()) {
        sqlite3_reset(st);
        return STORE_ERR;
    }
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        store_log_error(what);
        return store_rc(rc);
    }
    return 0;
}

/* A message that reaches a mailbox gets its IMAP structure (ENVELOPE,
 * BODYSTRUCTURE, part offsets) computed once now, while its chunks are
 * fresh; a failure only leaves it to be computed at the first FETCH. */
static void store_index_local(int64_t body_id, const struct store_rcpt *rcpts, size_t n)
{
    struct store_imap_cache c;

    for (size_t i = 0; i < n; i++)
        if (rcpts[i].kind == ROUTE_LOCAL) {
            if (imap_mime_compute(body_id, &c) == 0)
                store_imap_cache_free(&c);
            return;
        }
}

static int msg_insert(const struct store_env *env, struct store_body *b,
                      const struct store_rcpt *rcpts, size_t n)
{
    static sqlite3_stmt *msg, *rc_st, *mb, *dest;
    int64_t now = util_now(), msg_id = 0;
    char prefix[ADDR_MAX + 32];
    int err;

    /* RFC 5321 4.4: the final delivery records the reverse-path. */
    size_t plen = 0;
    if (util_header(prefix, sizeof prefix, &plen, "Return-Path: <%s>\r\n", env->sender) < 0)
        return STORE_ERR;
    for (size_t i = 0; i < n; i++) {
        const struct store_rcpt *r = &rcpts[i];
        if (r->kind == ROUTE_LOCAL) {
            if (!store_stmt(&mb, "INSERT INTO mbox(user_id, body_id, size, added, qid, prefix)"
                                 " VALUES (?,?,?,?,?,?)"))
                return STORE_ERR;
            sqlite3_bind_int64(mb, 1, r->user_id);
            sqlite3_bind_int64(mb, 2, b->id);
            sqlite3_bind_int64(mb, 3, b->size + (int64_t)strlen(prefix));
            sqlite3_bind_int64(mb, 4, now);
            sqlite3_bind_text(mb, 5, env->qid, -1, SQLITE_STATIC);
            sqlite3_bind_text(mb, 6, prefix, -1, SQLITE_STATIC);
            if ((err = store_step_done(mb, "deliver to mailbox")))
                return err;
            continue;
        }
        if (!msg_id) {
            if (!store_stmt(&msg, "INSERT INTO message(qid, body_id, sender, envid, ret_full,"
                                  " eightbit, client, auth_user, size, received)"
                                  " VALUES (?,?,?,?,?,?,?,?,?,?)"))
                return STORE_ERR;
            sqlite3_bind_text(msg, 1, env->qid, -1, SQLITE_STATIC);
            sqlite3_bind_int64(msg, 2, b->id);
            sqlite3_bind_text(msg, 3, env->sender, -1, SQLITE_STATIC);
            if (env->envid)
                sqlite3_bind_text(msg, 4, env->envid, -1, SQLITE_STATIC);
            sqlite3_bind_int(msg, 5, env->ret_full);
            sqlite3_bind_int(msg, 6, env->eightbit);
            if (env->client)
                sqlite3_bind_text(msg, 7, env->client, -1, SQLITE_STATIC);
            if (env->auth_user)
                sqlite3_bind_text(msg, 8, env->auth_user, -1, SQLITE_STATIC);
            sqlite3_bind_int64(msg, 9, b->size);
            sqlite3_bind_int64(msg, 10, now);
            if ((err = store_step_done(msg, "queue message")))
                return err;
            msg_id = sqlite3_last_insert_rowid(S.db);
        }
        if (!store_stmt(&rc_st, "INSERT INTO rcpt(message_id, addr, orcpt, notify, dest, kind,"
                                " next_try, updated) VALUES (?,?,?,?,?,?,?,?)"))
            return STORE_ERR;
        sqlite3_bind_int64(rc_st, 1, msg_id);
        sqlite3_bind_text(rc_st, 2, r->addr, -1, SQLITE_STATIC);
        if (r->orcpt[0])
            sqlite3_bind_text(rc_st, 3, r->orcpt, -1, SQLITE_STATIC);
        sqlite3_bind_int(rc_st, 4, r->notify);
        sqlite3_bind_text(rc_st, 5, r->domain, -1, SQLITE_STATIC);
        sqlite3_bind_int(rc_st, 6, r->kind);
        sqlite3_bind_int64(rc_st, 7, now);
        sqlite3_bind_int64(rc_st, 8, now);
        if ((err = store_step_done(rc_st, "queue recipient")))
            return err;
        if (!store_stmt(&dest, "INSERT OR IGNORE INTO dest(name) VALUES (?)"))
            return STORE_ERR;
        sqlite3_bind_text(dest, 1, r->domain, -1, SQLITE_STATIC);
        if ((err = store_step_done(dest, "queue destination")))
            return err;
    }
    return 0;
}

int store_msg_insert(const struct store_env *env, struct store_body *b,
                     const struct store_rcpt *rcpts, size_t n)
{
    int err;

    if (b->err)
        return b->err;
    if ((err = store_atomic_begin()))
        return err;
    if ((err = store_atomic_end(msg_insert(env, b, rcpts, n))))
        return err;
    b->linked = 1;
    store_index_local(b->id, rcpts, n);
    return 0;
}

/* ----------------------------------------------------------------- queue */

/* The listings the operator sees are in store_ops.c. */

static int queue_delete(const char *qid)
{
    static sqlite3_stmt *r, *m, *bq;
    int64_t body_id = 0;
    int err;

    if (!store_stmt(&bq, "SELECT body_id FROM message WHERE qid=?"))
        return STORE_ERR;
    sqlite3_bind_text(bq, 1, qid, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(bq) == SQLITE_ROW)
        body_id = sqlite3_column_int64(bq, 0);
    sqlite3_reset(bq);
    if (!store_stmt(&r, "DELETE FROM rcpt WHERE message_id=(SELECT id FROM message WHERE qid=?)") ||
        !store_stmt(&m, "DELETE FROM message WHERE qid=?"))
        return STORE_ERR;
    sqlite3_bind_text(r, 1, qid, -1, SQLITE_TRANSIENT);
    if ((err = store_step_done(r, "delete recipients")))
        return err;
    sqlite3_bind_text(m, 1, qid, -1, SQLITE_TRANSIENT);
    if ((err = store_step_done(m, "delete message")))
        return err;
    if (!sqlite3_changes(S.db))
        return STORE_NOTFOUND;
    return store_gc_body(body_id);
}

int store_queue_delete(const char *qid)
{
    int err = store_atomic_begin();
    return err ? err : store_atomic_end(queue_delete(qid));
}

int64_t store_queue_count(void)
{
    static sqlite3_stmt *st;
    int64_t n = -1;

    if (!store_stmt(&st, "SELECT n FROM tally WHERE name='msgs'"))
        return -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return n;
}

int store_status(struct store_status *st)
{
    static sqlite3_stmt *q;
    int rc;

    memset(st, 0, sizeof *st);
    if (!store_stmt(&q, "SELECT (SELECT n FROM tally WHERE name='msgs'),"
                        " (SELECT n FROM tally WHERE name='rcpts'),"
                        " (SELECT n FROM tally WHERE name='held'),"
                        " (SELECT n FROM tally WHERE name='mbox'), (SELECT count(*) FROM user)"))
        return STORE_ERR;
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        st->queued_msgs = sqlite3_column_int64(q, 0);
        st->queued_rcpts = sqlite3_column_int64(q, 1);
        st->held_rcpts = sqlite3_column_int64(q, 2);
        st->mbox_msgs = sqlite3_column_int64(q, 3);
        st->users = sqlite3_column_int64(q, 4);
    }
    sqlite3_reset(q);
    return rc == SQLITE_ROW ? 0 : STORE_ERR;
}

int store_meta_set(const char *key, const char *value)
{
    static sqlite3_stmt *st;
    int err;

    if ((err = store_begin()))
        return err;
    if (!store_stmt(&st, "INSERT INTO meta(key, value, updated) VALUES (?,?,?) ON CONFLICT(key)"
                         " DO UPDATE SET value=excluded.value, updated=excluded.updated"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, util_now());
    err = sqlite3_step(st);
    sqlite3_reset(st);
    return err == SQLITE_DONE ? 0 : store_rc(err);
}

int store_meta_get(const char *key, char *value, size_t n, int64_t *updated)
{
    static sqlite3_stmt *st;
    int rc;

    if (!store_stmt(&st, "SELECT value, updated FROM meta WHERE key=?"))
        return STORE_ERR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        util_strlcpy(value, (const char *)sqlite3_column_text(st, 0), n);
        if (updated)
            *updated = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? STORE_NOTFOUND : STORE_ERR;
}

static int gc_body(int64_t body_id)
{
    static sqlite3_stmt *c, *b;
    int err;

    /* Only when nothing refers to it: both look-ups use an index, so the
     * cost does not grow with the number of messages stored. */
    if (!store_stmt(&c, "DELETE FROM chunk WHERE body_id=?1 AND NOT EXISTS (SELECT 1 FROM message WHERE"
                        " body_id=?1) AND NOT EXISTS (SELECT 1 FROM mbox WHERE body_id=?1)") ||
        !store_stmt(&b, "DELETE FROM body WHERE id=?1 AND NOT EXISTS (SELECT 1 FROM message WHERE"
                        " body_id=?1) AND NOT EXISTS (SELECT 1 FROM mbox WHERE body_id=?1)"))
        return STORE_ERR;
    sqlite3_bind_int64(c, 1, body_id);
    if ((err = store_step_done(c, "collect chunks")))
        return err;
    sqlite3_bind_int64(b, 1, body_id);
    return store_step_done(b, "collect body");
}

int store_gc_body(int64_t body_id)
{
    int err = store_atomic_begin();
    return err ? err : store_atomic_end(gc_body(body_id));
}

static int gc_all(void)
{
    static sqlite3_stmt *c, *b;
    int err;

    if (!store_stmt(&c, "DELETE FROM chunk WHERE body_id IN (SELECT id FROM body WHERE complete=1"
                        " AND NOT EXISTS (SELECT 1 FROM message WHERE body_id=body.id)"
                        " AND NOT EXISTS (SELECT 1 FROM mbox WHERE body_id=body.id))") ||
        !store_stmt(&b, "DELETE FROM body WHERE id IN (SELECT id FROM body WHERE complete=1"
                        " AND NOT EXISTS (SELECT 1 FROM message WHERE body_id=body.id)"
                        " AND NOT EXISTS (SELECT 1 FROM mbox WHERE body_id=body.id))"))
        return STORE_ERR;
    if ((err = store_step_done(c, "collect chunks")))
        return err;
    return store_step_done(b, "collect bodies");
}

int store_gc(void)
{
    int err = store_atomic_begin();
    return err ? err : store_atomic_end(gc_all());
}
