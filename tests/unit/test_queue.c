/* Unit tests for queue.c routing: domains, aliases, loops, users. */
#include "../../mailnode.c"
#include "unit.h"

#include <string.h>
#include <unistd.h>

static struct conf test_conf;
static char dir[] = "/tmp/mailnode-test-queue.XXXXXX";
static int64_t uid_alice, uid_bob, uid_pct, uid_pm;

static struct store_rcpt R[64];
static size_t N;

static int64_t add_user(const char *name)
{
    struct store_user u;
    memset(&u, 0, sizeof u);
    util_strlcpy(u.name, name, sizeof u.name);
    util_strlcpy(u.pwhash, "x", sizeof u.pwhash);
    if (store_user_add(&u) || store_user_get(name, &u))
        return -1;
    return u.id;
}

static void add_domain(const char *name, int kind)
{
    struct store_domain d;
    memset(&d, 0, sizeof d);
    util_strlcpy(d.name, name, sizeof d.name);
    d.kind = kind;
    store_domain_add(&d);
}

/* Routes s (a bare mailbox, or a path when it starts with '<'). */
static int route(const char *s, size_t max)
{
    struct addr a;
    size_t used;
    int rc = s[0] == '<' ? addr_parse_path(s, strlen(s), 0, &a, &used) : addr_parse_mailbox(s, &a);
    N = 99;
    if (rc)
        return 1000 + rc;
    return queue_route(&a, R, max, &N);
}

/* 1 if the routes hold a local delivery to user id. */
static int has_local(int64_t id)
{
    for (size_t i = 0; i < N; i++)
        if (R[i].kind == ROUTE_LOCAL && R[i].user_id == id)
            return 1;
    return 0;
}

static int has(int kind, const char *addr, const char *domain)
{
    for (size_t i = 0; i < N; i++)
        if (R[i].kind == kind && !strcmp(R[i].addr, addr) && !strcmp(R[i].domain, domain))
            return 1;
    return 0;
}

TEST(domains)
{
    CHECK_INT(queue_domain_is_local("example.test"), 1);
    CHECK_INT(queue_domain_is_local("EXAMPLE.test"), 1);
    CHECK_INT(queue_domain_is_local("db-local.test"), 1);
    CHECK_INT(queue_domain_is_local(""), 1);
    CHECK_INT(queue_domain_is_local("hold.test"), 0);
    CHECK_INT(queue_domain_is_local("elsewhere.test"), 0);
    CHECK_INT(queue_domain_accepted("hold.test"), 1);
    CHECK_INT(queue_domain_accepted("example.test"), 1);
    CHECK_INT(queue_domain_accepted("elsewhere.test"), 0);
}

TEST(users)
{
    CHECK_INT(route("alice@example.test", 64), 0);
    CHECK_INT(N, 1);
    CHECK_INT(R[0].kind, ROUTE_LOCAL);
    CHECK_INT(R[0].user_id, uid_alice);
    CHECK_STR(R[0].addr, "alice@example.test");
    CHECK_STR(R[0].domain, "example.test");
    CHECK_INT(R[0].notify, 0);
    CHECK_STR(R[0].orcpt, "");
    /* User names are case-insensitive; any local domain will do. */
    CHECK_INT(route("ALICE@Db-Local.test", 64), 0);
    CHECK(has_local(uid_alice));
    CHECK_INT(route("nobody@example.test", 64), QUEUE_EUNKNOWN);
    CHECK_INT(N, 0);
    /* '%' and '!' are taken literally. */
    CHECK_INT(route("user%elsewhere.test@example.test", 64), 0);
    CHECK_INT(N, 1);
    CHECK(has_local(uid_pct));
    CHECK_INT(route("bob%elsewhere.test@example.test", 64), QUEUE_EUNKNOWN);
    CHECK_INT(route("elsewhere.test!bob@example.test", 64), QUEUE_EUNKNOWN);
}

TEST(remote_and_hold)
{
    CHECK_INT(route("Someone@Elsewhere.TEST", 64), 0);
    CHECK_INT(N, 1);
    CHECK_INT(R[0].kind, ROUTE_REMOTE);
    CHECK_STR(R[0].addr, "Someone@elsewhere.test");
    CHECK_STR(R[0].domain, "elsewhere.test");
    CHECK_INT(route("x@hold.test", 64), 0);
    CHECK_INT(N, 1);
    CHECK_INT(R[0].kind, ROUTE_HOLD);
    CHECK_STR(R[0].domain, "hold.test");
    CHECK_INT(route("\"a b\"@elsewhere.test", 64), 0);
    CHECK_STR(R[0].addr, "\"a b\"@elsewhere.test");
    CHECK_INT(route("a@[192.0.2.1]", 64), 0);
    CHECK_INT(R[0].kind, ROUTE_REMOTE);
    CHECK_STR(R[0].domain, "[192.0.2.1]");
}

TEST(postmaster)
{
    /* No alias, no user of that name: the admin, here the first user
     * created (RFC 5321 4.5.1 requires postmaster); root, abuse and
     * MAILER-DAEMON too, at any local domain. */
    CHECK_INT(route("<postmaster>", 64), 0);
    CHECK(has_local(uid_alice));
    CHECK_INT(route("ROOT@example.test", 64), 0);
    CHECK(has_local(uid_alice));
    CHECK_INT(route("mailer-daemon@example.test", 64), 0);
    CHECK(has_local(uid_alice));
    CHECK_INT(route("abuse@db-local.test", 64), 0);
    CHECK(has_local(uid_alice));
    CHECK_INT(route("rootx@example.test", 64), QUEUE_EUNKNOWN);
    /* The admin key names another user. */
    char *saved = test_conf.admin;
    test_conf.admin = (char *)"bob";
    CHECK_INT(route("root@example.test", 64), 0);
    CHECK(has_local(uid_bob));
    test_conf.admin = saved;
    store_alias_set("postmaster", "bob");
    CHECK_INT(route("<postmaster>", 64), 0);
    CHECK_INT(N, 1);
    CHECK(has_local(uid_bob));
    CHECK_INT(route("<PostMaster>", 64), 0);
    CHECK(has_local(uid_bob));
    CHECK_INT(route("postmaster@example.test", 64), 0);
    CHECK(has_local(uid_bob));
    store_alias_del("postmaster");
    /* A user named postmaster. */
    uid_pm = add_user("postmaster");
    CHECK_INT(route("<postmaster>", 64), 0);
    CHECK(has_local(uid_pm));
    store_user_del("postmaster");
}

TEST(aliases)
{
    store_alias_set("team", "alice, bob,carol@elsewhere.test  x@hold.test");
    CHECK_INT(route("team@example.test", 64), 0);
    CHECK_INT(N, 4);
    CHECK(has_local(uid_alice));
    CHECK(has_local(uid_bob));
    CHECK(has(ROUTE_REMOTE, "carol@elsewhere.test", "elsewhere.test"));
    CHECK(has(ROUTE_HOLD, "x@hold.test", "hold.test"));
    /* A full-address alias wins over the bare name, per domain. */
    store_alias_set("team@db-local.test", "alice");
    CHECK_INT(route("team@db-local.test", 64), 0);
    CHECK_INT(N, 1);
    CHECK(has_local(uid_alice));
    /* Nested, with duplicates removed. */
    store_alias_set("all", "team, alice, <alice@example.test>, ALICE@db-local.test");
    CHECK_INT(route("all@example.test", 64), 0);
    CHECK_INT(N, 4);
    /* More routes than room. */
    CHECK_INT(route("all@example.test", 3), QUEUE_ETOOMANY);
    /* An alias to unknown users and garbage alone gives nothing. */
    store_alias_set("broken", "nosuchuser, |/bin/sh, /etc/passwd");
    CHECK_INT(route("broken@example.test", 64), QUEUE_EUNKNOWN);
    /* ...but the good targets still count. */
    store_alias_set("partly", "nosuchuser, bob");
    CHECK_INT(route("partly@example.test", 64), 0);
    CHECK_INT(N, 1);
    CHECK(has_local(uid_bob));
}

TEST(loops)
{
    /* a -> b -> a: nothing deliverable. */
    store_alias_set("la", "lb");
    store_alias_set("lb", "la");
    CHECK_INT(route("la@example.test", 64), QUEUE_ELOOP);
    CHECK_INT(N, 0);
    /* A loop that also reaches a user delivers to the user. */
    store_alias_set("lb", "la, bob");
    CHECK_INT(route("la@example.test", 64), 0);
    CHECK_INT(N, 1);
    CHECK(has_local(uid_bob));
    /* Alias to itself, no such user: nothing, reported as a loop. */
    store_alias_set("self", "self");
    CHECK_INT(route("self@example.test", 64), QUEUE_ELOOP);
    /* Alias to itself and elsewhere, with a user of that name: the
     * user keeps a copy. */
    store_alias_set("alice", "alice, carol@elsewhere.test");
    CHECK_INT(route("alice@example.test", 64), 0);
    CHECK_INT(N, 2);
    CHECK(has_local(uid_alice));
    CHECK(has(ROUTE_REMOTE, "carol@elsewhere.test", "elsewhere.test"));
    store_alias_del("alice");
    /* Too deep: d0 -> d1 -> ... -> d12 -> bob. */
    for (int i = 0; i < 12; i++) {
        char name[16], target[16];
        snprintf(name, sizeof name, "d%d", i);
        snprintf(target, sizeof target, "d%d", i + 1);
        store_alias_set(name, target);
    }
    store_alias_set("d12", "bob");
    CHECK_INT(route("d0@example.test", 64), QUEUE_ELOOP);
    CHECK_INT(route("d5@example.test", 64), 0);
    CHECK(has_local(uid_bob));
}

TEST(null_path)
{
    struct addr a;
    memset(&a, 0, sizeof a);
    a.null_path = 1;
    CHECK_INT(queue_route(&a, R, 64, &N), QUEUE_EUNKNOWN);
    CHECK_INT(N, 0);
}

int main(void)
{
    char err[512], path[600];
    const char *text;
    FILE *f;

    if (!mkdtemp(dir) || sodium_init() < 0) {
        printf("FAIL setup: mkdtemp or sodium_init\n");
        return 1;
    }
    snprintf(path, sizeof path, "%s/mailnode.conf", dir);
    f = fopen(path, "w");
    text = "hostname = node.test\nlocal_domains = example.test\n";
    if (!f || fputs(text, f) < 0 || fprintf(f, "database = %s/m.db\n", dir) < 0 || fclose(f)) {
        printf("FAIL setup: cannot write %s\n", path);
        return 1;
    }
    if (conf_load(path, &test_conf, err, sizeof err)) {
        printf("FAIL setup: %s\n", err);
        return 1;
    }
    conf = &test_conf;
    if (store_open(conf->database, STORE_TOOL, err, sizeof err)) {
        printf("FAIL setup: %s\n", err);
        return 1;
    }
    uid_alice = add_user("alice");
    uid_bob = add_user("bob");
    uid_pct = add_user("user%elsewhere.test");
    add_domain("db-local.test", DOMAIN_LOCAL);
    add_domain("hold.test", DOMAIN_HOLD);
    if (uid_alice < 0 || uid_bob < 0 || uid_pct < 0) {
        printf("FAIL setup: adding users\n");
        return 1;
    }

    RUN(domains);
    RUN(users);
    RUN(remote_and_hold);
    RUN(postmaster);
    RUN(aliases);
    RUN(loops);
    RUN(null_path);

    store_rollback();
    store_close();
    conf_free(&test_conf);
    snprintf(path, sizeof path, "rm -rf '%s'", dir);
    if (system(path) != 0)
        printf("# could not remove %s\n", dir);
    return unit_done();
}
