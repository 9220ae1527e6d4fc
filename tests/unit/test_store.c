/*
 * test_store.c: the store's multi-row calls are all-or-nothing (each write
 * step made to fail in turn), the queue counters follow the rows, and no
 * statement of the hot paths scans a table that grows with the queue or
 * the mailboxes (EXPLAIN QUERY PLAN of every statement they prepared).
 */
#include "../../mailnode.c"
#include "unit.h"

static char tdir[] = "/tmp/mailnode-store-XXXXXX";
static struct conf tconf;
static int64_t uid_bob;

static int64_t count_rows(const char *sql)
{
    sqlite3_stmt *st;
    int64_t n = -1;
    if (sqlite3_prepare_v2(store_db(), sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* Every row count the store keeps, and the counters, as one string. */
static void snapshot(char *out, size_t n)
{
    snprintf(out, n, "body=%lld chunk=%lld message=%lld rcpt=%lld mbox=%lld dest=%lld tally=%lld,%lld,%lld,%lld backlog=%lld",
             (long long)count_rows("SELECT count(*) FROM body"), (long long)count_rows("SELECT count(*) FROM chunk"),
             (long long)count_rows("SELECT count(*) FROM message"), (long long)count_rows("SELECT count(*) FROM rcpt"),
             (long long)count_rows("SELECT count(*) FROM mbox"), (long long)count_rows("SELECT count(*) FROM dest"),
             (long long)count_rows("SELECT n FROM tally WHERE name='msgs'"),
             (long long)count_rows("SELECT n FROM tally WHERE name='rcpts'"),
             (long long)count_rows("SELECT n FROM tally WHERE name='held'"),
             (long long)count_rows("SELECT n FROM tally WHERE name='mbox'"),
             (long long)count_rows("SELECT total(rcpts * 1000 + msgs) FROM backlog"));
}

/* The counters agree with the rows they count. */
static void check_tally(void)
{
    CHECK_INT(count_rows("SELECT n FROM tally WHERE name='msgs'"), count_rows("SELECT count(*) FROM message"));
    CHECK_INT(count_rows("SELECT n FROM tally WHERE name='rcpts'"),
              count_rows("SELECT count(*) FROM rcpt WHERE state=0"));
    CHECK_INT(count_rows("SELECT n FROM tally WHERE name='held'"),
              count_rows("SELECT count(*) FROM rcpt WHERE state=0 AND kind=3"));
    CHECK_INT(count_rows("SELECT n FROM tally WHERE name='mbox'"), count_rows("SELECT count(*) FROM mbox"));
    /* each destination's backlog row: its queued recipients and messages,
     * and no row without one */
    CHECK_INT(count_rows("SELECT count(*) FROM (SELECT kind, dest, count(*) AS r, count(DISTINCT message_id) AS m"
                         " FROM rcpt WHERE state=0 AND kind IN (2,3) GROUP BY kind, dest) q"
                         " FULL JOIN backlog b ON b.kind=q.kind AND b.dest=q.dest"
                         " WHERE b.rcpts IS NOT q.r OR b.msgs IS NOT q.m"), 0);
    CHECK(count_rows("SELECT count(*) FROM backlog") > 0);
}

static struct store_body *make_body(const char *text)
{
    struct store_body *b = store_body_new();
    if (!b)
        return NULL;
    if (store_body_write(b, text, strlen(text)) || store_body_finish(b)) {
        store_body_free(b);
        return NULL;
    }
    return b;
}

static void rcpt_fill(struct store_rcpt *r, int kind, const char *addr, const char *domain)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->user_id = kind == ROUTE_LOCAL ? uid_bob : 0;
    util_strlcpy(r->addr, addr, sizeof r->addr);
    util_strlcpy(r->domain, domain, sizeof r->domain);
}

/* A message to two mailboxes, two remote recipients and a held one. */
static int insert_message(struct store_body *b, char *qid)
{
    struct store_env env;
    struct store_rcpt r[5];

    memset(&env, 0, sizeof env);
    util_qid(env.qid);
    if (qid)
        strcpy(qid, env.qid);
    env.sender = "alice@example.test";
    env.client = "127.0.0.1";
    env.size = b->size;
    rcpt_fill(&r[0], ROUTE_LOCAL, "bob@local.test", "local.test");
    rcpt_fill(&r[1], ROUTE_REMOTE, "x@far.test", "far.test");
    rcpt_fill(&r[2], ROUTE_LOCAL, "bob@local.test", "local.test");
    rcpt_fill(&r[3], ROUTE_REMOTE, "y@other.test", "other.test");
    rcpt_fill(&r[4], ROUTE_HOLD, "z@site.test", "site.test");
    return store_msg_insert(&env, b, r, 5);
}

/* Each write step of the call fails in turn: the call fails and leaves
 * no row behind; past the last step it succeeds.  run() returns <0 on
 * failure. */
static void each_step_fails(const char *name, int (*run)(void *arg), void *arg, int want_steps)
{
    char before[512], after[512];
    int k, rc = -1;

    for (k = 0; k < 64; k++) {
        snapshot(before, sizeof before);
        store_fault_after = k;
        rc = run(arg);
        int injected = store_fault_after < 0;
        store_fault_after = -1;
        if (!injected)
            break;                      /* fewer steps than k: it ran through */
        snapshot(after, sizeof after);
        if (rc >= 0 || strcmp(before, after)) {
            printf("#   %s: step %d failed: rc %d\n#     before %s\n#     after  %s\n", name, k, rc, before, after);
            CHECK(rc < 0);
            CHECK_STR(after, before);
        }
        CHECK(store_in_txn());          /* the turn's transaction lives on */
    }
    if (k < want_steps)
        printf("#   %s: only %d write steps, want at least %d\n", name, k, want_steps);
    CHECK(k >= want_steps);
    CHECK(rc >= 0);
    check_tally();
}

static struct store_body *cur_body;

static int run_insert(void *arg)
{
    MN_UNUSED(arg);
    return insert_message(cur_body, NULL);
}

TEST(msg_insert_all_or_nothing)
{
    cur_body = make_body("Subject: atomic\r\n\r\nhello\r\n");
    CHECK(cur_body != NULL);
    if (!cur_body)
        return;
    /* 2 mailbox rows, message, 3 x (recipient, destination) */
    each_step_fails("store_msg_insert", run_insert, NULL, 9);
    CHECK(cur_body->linked);
    store_body_free(cur_body);
    CHECK_INT(store_commit(), 0);
    CHECK_INT(count_rows("SELECT count(*) FROM rcpt"), 3);
}

static int64_t last_msg_id(void)
{
    return count_rows("SELECT max(id) FROM message");
}

static int run_retire(void *arg)
{
    return store_msg_retire(*(int64_t *)arg);
}

static int run_delete(void *arg)
{
    return store_queue_delete(arg);
}

static int run_hold(void *arg)
{
    return store_queue_hold(arg, 1);
}

static int run_flush(void *arg)
{
    return store_flush(arg, util_now());
}

TEST(queue_calls_all_or_nothing)
{
    char qid[QID_LEN + 1];
    struct store_body *b = make_body("Subject: retire\r\n\r\nbye\r\n");
    CHECK(b && insert_message(b, qid) == 0);
    store_body_free(b);
    int64_t id = last_msg_id();
    /* every recipient done: retiring deletes recipients, message, body */
    CHECK_INT(store_commit(), 0);
    sqlite3_exec(store_db(), "UPDATE rcpt SET state=1 WHERE message_id=(SELECT max(id) FROM message)", 0, 0, 0);
    each_step_fails("store_queue_hold", run_hold, qid, 2);
    each_step_fails("store_flush", run_flush, "far.test", 2);
    each_step_fails("store_msg_retire", run_retire, &id, 3);
    CHECK_INT(count_rows("SELECT count(*) FROM message WHERE id=(SELECT max(id) FROM message)") >= 0, 1);
    CHECK_INT(store_commit(), 0);

    b = make_body("Subject: delete\r\n\r\nbye\r\n");
    CHECK(b && insert_message(b, qid) == 0);
    store_body_free(b);
    CHECK_INT(store_commit(), 0);
    each_step_fails("store_queue_delete", run_delete, qid, 3);
    CHECK_INT(store_ops_msg_get(qid, &(struct store_ops_msg){ 0 }), STORE_NOTFOUND);
    CHECK_INT(store_commit(), 0);
    check_tally();
}

static int run_mbox_delete(void *arg)
{
    const int64_t *uids = arg;
    return store_mbox_delete(uid_bob, uids, 2);
}

static int first_uids(void *arg, const struct store_mbox_msg *m)
{
    int64_t *u = arg;
    if (!u[0])
        u[0] = m->uid;
    else if (!u[1])
        u[1] = m->uid;
    return 0;
}

TEST(mailbox_delete_all_or_nothing)
{
    int64_t uids[2] = { 0, 0 };
    CHECK_INT(store_mbox_list(uid_bob, first_uids, uids), 0);
    CHECK(uids[0] && uids[1]);
    each_step_fails("store_mbox_delete", run_mbox_delete, uids, 2);
    CHECK_INT(store_commit(), 0);
}

/* ------------------------------------------------------ query plans */

struct plan_check {
    int statements, bad;
};

static int plan_cb(void *arg, const char *sql, const char *plan)
{
    struct plan_check *pc = arg;
    static const char *const big[] = { "rcpt", "message", "mbox", "chunk" };
    static const char *last;
    if (sql != last) {
        pc->statements++;
        last = sql;
    }
    char what[32];
    /* A LIMITed query that sorts reads every row that matches before
     * the first comes out: a range over the queue where a seek was meant
     * (listings, which return all they read, may sort). */
    if (strstr(plan, "TEMP B-TREE FOR ORDER BY") && strstr(sql, "LIMIT") &&
        (strstr(sql, "FROM rcpt") || strstr(sql, "FROM message") || strstr(sql, "FROM mbox"))) {
        printf("#   sorts: %s\n#     in: %s\n", plan, sql);
        pc->bad++;
    }
    /* "SCAN rcpt", "SCAN rcpt USING INDEX ...", "SCAN m" for an alias */
    if (strncmp(plan, "SCAN ", 5))
        return 0;
    /* message_hold holds only the messages stopped with `queue hold`:
     * walking it costs what it returns */
    if (strstr(plan, "INDEX message_hold"))
        return 0;
    snprintf(what, sizeof what, "%s", plan + 5);
    what[strcspn(what, " ")] = '\0';
    if (!strcmp(what, "m") && strstr(sql, "message m"))
        strcpy(what, "message");
    if (!strcmp(what, "r") && strstr(sql, "rcpt r"))
        strcpy(what, "rcpt");
    for (size_t i = 0; i < MN_NELEM(big); i++)
        if (!strcmp(what, big[i])) {
            printf("#   full scan: %s\n#     in: %s\n", plan, sql);
            pc->bad++;
        }
    return 0;
}

static int noop_dest(void *arg, const char *d)
{
    MN_UNUSED(arg);
    MN_UNUSED(d);
    return 0;
}

static int noop_exp(void *arg, int64_t a, int64_t b)
{
    MN_UNUSED(arg);
    MN_UNUSED(a);
    MN_UNUSED(b);
    return 0;
}

static int noop_warn(void *arg, int64_t a)
{
    MN_UNUSED(arg);
    MN_UNUSED(a);
    return 0;
}

static int noop_held(void *arg, const char *domain, int64_t rcpts, int64_t msgs)
{
    MN_UNUSED(arg);
    MN_UNUSED(domain);
    MN_UNUSED(rcpts);
    MN_UNUSED(msgs);
    return 0;
}

static int noop_msg(void *arg, const struct store_ops_msg *m)
{
    MN_UNUSED(arg);
    MN_UNUSED(m);
    return 0;
}

static int noop_rcpt(void *arg, const struct store_ops_rcpt *r)
{
    MN_UNUSED(arg);
    MN_UNUSED(r);
    return 0;
}

static int noop_dlist(void *arg, const struct store_dest *d)
{
    MN_UNUSED(arg);
    MN_UNUSED(d);
    return 0;
}

static int noop_mbox(void *arg, const struct store_mbox_msg *m)
{
    MN_UNUSED(arg);
    MN_UNUSED(m);
    return 0;
}

/* Runs every hot-path call of accepting, delivering, releasing, counting
 * and reading mailboxes, then checks the plan of every statement they
 * prepared.  (Administration that lists everything, and the start-up
 * collection of stray bodies, are not hot paths and are not called.) */
TEST(hot_paths_use_indexes)
{
    struct store_body *b;
    struct store_out_msg m;
    struct store_cursor cur = { 0, 0 };
    struct store_status st;
    struct store_dest d;
    struct store_mbox_msg mm;
    struct store_reader rd;
    struct store_ops_msg q;
    char qid[QID_LEN + 1], buf[256];
    int64_t now = util_now();

    /* a queue with some content, so that the planner has something to plan for */
    for (int i = 0; i < 50; i++) {
        b = make_body("Subject: plan\r\n\r\nplan\r\n");
        CHECK(b && insert_message(b, qid) == 0);
        store_body_free(b);
    }
    CHECK_INT(store_commit(), 0);

    CHECK_INT(store_due_domains(now, noop_dest, NULL), 0);
    CHECK(store_any_due(now) >= 0);
    CHECK_INT(store_out_next("far.test", ROUTE_REMOTE, &cur, now, &m), 1);
    int64_t mid = m.id, rid = m.rcpts[0].id;
    store_out_free(&m);
    memset(&cur, 0, sizeof cur);
    CHECK_INT(store_out_next(NULL, ROUTE_REMOTE, &cur, now, &m), 1);
    store_out_free(&m);
    memset(&cur, 0, sizeof cur);
    CHECK_INT(store_out_next("site.test", ROUTE_HOLD, &cur, INT64_MAX, &m), 1);
    store_out_free(&m);
    CHECK_INT(store_out_get(mid, &m), 0);
    store_out_free(&m);
    CHECK_INT(store_rcpt_set(rid, RCPT_DELIVERED, 0, "250 ok"), 0);
    CHECK(store_msg_retire(mid) >= 0);
    CHECK_INT(store_dest_get("far.test", &d), 0);
    CHECK_INT(store_dest_put(&d), 0);
    CHECK_INT(store_flush("far.test", now), 0);
    CHECK_INT(store_flush(NULL, now), 0);
    CHECK_INT(store_queue_hold(qid, 1), 0);
    CHECK_INT(store_queue_hold(qid, 0), 0);
    CHECK(store_held_count("site.test") > 0);
    CHECK(store_queue_count() > 0);
    CHECK_INT(store_status(&st), 0);
    CHECK_INT(store_ops_dests(0, noop_dlist, NULL), 0);
    CHECK_INT(store_ops_dests(1, noop_dlist, NULL), 0);
    CHECK_INT(store_ops_held(noop_held, NULL), 0);
    CHECK(store_ops_on_hold() >= 0);
    CHECK(store_ops_queued_remote("") >= 0);
    CHECK(store_ops_queued_remote("far.test") >= 0);
    CHECK_INT(store_ops_msgs(NULL, noop_msg, NULL), 0);
    CHECK_INT(store_ops_msgs("far.test", noop_msg, NULL), 0);
    int64_t ndel = -1;
    CHECK_INT(store_ops_delete_domain("nowhere.test", &ndel), 0);
    CHECK_INT(ndel, 0);
    CHECK_INT(store_expired(now - 3600, noop_exp, NULL), 0);
    CHECK_INT(store_unwarned(now - 3600, noop_warn, NULL), 0);
    CHECK_INT(store_msg_set_warned(mid), 0);
    CHECK_INT(store_ops_msg_get(qid, &q), 0);
    int64_t body_id = q.body_id;
    CHECK_INT(store_ops_rcpts(q.id, 0, noop_rcpt, NULL), 0);
    CHECK_INT(store_ops_rcpts(q.id, 1, noop_rcpt, NULL), 0);
    CHECK_INT(store_reader_open(&rd, body_id), 0);
    CHECK(store_reader_read(&rd, buf, sizeof buf) > 0);
    store_reader_close(&rd);
    CHECK_INT(store_mbox_list(uid_bob, noop_mbox, NULL), 0);
    int64_t uids[2] = { 0, 0 };
    store_mbox_list(uid_bob, first_uids, uids);
    CHECK_INT(store_mbox_get(uid_bob, uids[0], &mm), 0);
    CHECK_INT(store_mbox_delete(uid_bob, uids, 1), 0);
    CHECK_INT(store_queue_delete(qid), 0);
    CHECK_INT(store_commit(), 0);
    check_tally();

    /* The scheduler's pick with the cursor moving, as a drain does: each
     * statement is compiled once, never again for new parameter values
     * (a re-prepare is a full parse and plan: it cost more CPU than the
     * rest of relaying a message). */
    for (int i = 0; i < 10; i++) {
        b = make_body("Subject: again\r\n\r\nagain\r\n");
        CHECK(b && insert_message(b, qid) == 0);
        store_body_free(b);
    }
    CHECK_INT(store_commit(), 0);
    int picked = 0, before = store_reprepares();
    memset(&cur, 0, sizeof cur);
    while (picked < 10 && store_out_next("far.test", ROUTE_REMOTE, &cur, now, &m) == 1) {
        store_out_free(&m);
        picked++;
    }
    memset(&cur, 0, sizeof cur);
    for (int i = 0; i < 10 && store_out_next(NULL, ROUTE_REMOTE, &cur, now, &m) == 1; i++)
        store_out_free(&m);
    CHECK_INT(picked, 10);
    CHECK_INT(store_reprepares() - before, 0);

    struct plan_check pc = { 0, 0 };
    CHECK_INT(store_explain(plan_cb, &pc), 0);
    printf("#   %d statements explained\n", pc.statements);
    CHECK(pc.statements >= 30);
    CHECK_INT(pc.bad, 0);
}

int main(void)
{
    char err[512], db[300];
    struct store_user u;

    if (sodium_init() < 0 || !mkdtemp(tdir))
        return 1;
    log_init("test_store", 0);
    log_set_level(LOG_ERR - 1);         /* the tests provoke errors on purpose */
    if (conf_load(NULL, &tconf, err, sizeof err))
        return 1;
    conf = &tconf;
    snprintf(db, sizeof db, "%s/t.db", tdir);
    if (store_open(db, STORE_TOOL, err, sizeof err)) {
        fprintf(stderr, "setup: %s\n", err);
        return 1;
    }
    memset(&u, 0, sizeof u);
    util_strlcpy(u.name, "bob", sizeof u.name);
    util_strlcpy(u.pwhash, "x", sizeof u.pwhash);
    if (store_user_add(&u) || store_commit() || store_user_get("bob", &u))
        return 1;
    uid_bob = u.id;

    RUN(msg_insert_all_or_nothing);
    RUN(queue_calls_all_or_nothing);
    RUN(mailbox_delete_all_or_nothing);
    RUN(hot_paths_use_indexes);
    store_close();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tdir);
    if (system(cmd))
        return 1;
    return unit_done();
}
