/*
 * test_auth.c: MD5 and HMAC-MD5 against their RFCs' vectors, passwords,
 * the node key, the SASL mechanisms, and the users/domains/aliases store.
 */
#include "../../mailnode.c"
#include "unit.h"

#include <sys/stat.h>

static char tdir[] = "/tmp/mailnode-auth-XXXXXX";
static char keyfile[300], keyfile2[300];
static struct conf tconf;

static void hex(const unsigned char *d, size_t n, char *out)
{
    sodium_bin2hex(out, n * 2 + 1, d, n);
}

static const char *md5_hex(const char *s)
{
    static char out[33];
    unsigned char d[16];
    md5_digest(s, strlen(s), d);
    hex(d, 16, out);
    return out;
}

static const char *hmac_hex(const void *k, size_t kl, const void *m, size_t ml)
{
    static char out[33];
    unsigned char d[16];
    hmac_md5(k, kl, m, ml, d);
    hex(d, 16, out);
    return out;
}

static const char *b64(const void *s, size_t n)
{
    static char out[1024];
    sodium_bin2base64(out, sizeof out, s, n, sodium_base64_VARIANT_ORIGINAL);
    return out;
}

/* Adds a user with a password, committed. */
static int add_user(const char *name, const char *pw)
{
    struct store_user u;
    memset(&u, 0, sizeof u);
    util_strlcpy(u.name, name, sizeof u.name);
    if (auth_set_password(&u, pw) || store_user_add(&u))
        return -1;
    return store_commit();
}

/* RFC 1321 appendix A.5. */
TEST(md5_rfc1321)
{
    CHECK_STR(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
    CHECK_STR(md5_hex("a"), "0cc175b9c0f1b6a831c399e269772661");
    CHECK_STR(md5_hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
    CHECK_STR(md5_hex("message digest"), "f96b697d7cb7938d525a2f31aaf161d0");
    CHECK_STR(md5_hex("abcdefghijklmnopqrstuvwxyz"), "c3fcd3d76192e4007dfb496cca67e13b");
    CHECK_STR(md5_hex("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
              "d174ab98d277d9f5a5611c2c9f419d9f");
    CHECK_STR(md5_hex("1234567890123456789012345678901234567890"
                      "1234567890123456789012345678901234567890"),
              "57edf4a22be3c955ac49da2e2107b67a");
}

/* Feeding in pieces gives the digest of the whole. */
TEST(md5_incremental)
{
    unsigned char data[1000], a[16], b[16];
    struct md5_ctx m;
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 31);
    md5_digest(data, sizeof data, a);
    md5_init(&m);
    for (size_t off = 0, step = 1; off < sizeof data; off += step, step = step * 2 + 1)
        md5_update(&m, data + off, off + step > sizeof data ? sizeof data - off : step);
    md5_final(&m, b);
    CHECK(memcmp(a, b, 16) == 0);
}

/* RFC 2202 section 2. */
TEST(hmac_md5_rfc2202)
{
    unsigned char k[80], d[50];

    memset(k, 0x0b, 16);
    CHECK_STR(hmac_hex(k, 16, "Hi There", 8), "9294727a3638bb1c13f48ef8158bfc9d");
    CHECK_STR(hmac_hex("Jefe", 4, "what do ya want for nothing?", 28), "750c783e6ab0b503eaa86e310a5db738");
    memset(k, 0xaa, 16);
    memset(d, 0xdd, 50);
    CHECK_STR(hmac_hex(k, 16, d, 50), "56be34521d144c88dbb8c733f0e8b3f6");
    for (int i = 0; i < 25; i++)
        k[i] = (unsigned char)(i + 1);
    memset(d, 0xcd, 50);
    CHECK_STR(hmac_hex(k, 25, d, 50), "697eaf0aca3a3aea3a75164746ffaa79");
    memset(k, 0x0c, 16);
    CHECK_STR(hmac_hex(k, 16, "Test With Truncation", 20), "56461ef2342edc00f9bab995690efd4c");
    memset(k, 0xaa, 80);
    CHECK_STR(hmac_hex(k, 80, "Test Using Larger Than Block-Size Key - Hash Key First", 54),
              "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd");
    CHECK_STR(hmac_hex(k, 80, "Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data",
                       73),
              "6f630fad67cda0ee1fb1f562db3aa53e");
}

/* RFC 2195 section 2: the digest of the example exchange. */
TEST(cram_md5_rfc2195_digest)
{
    const char *ch = "<1896.697170952@postoffice.reston.mci.net>";
    CHECK_STR(hmac_hex("tanstaaftanstaaf", 16, ch, strlen(ch)), "b913a602c7eda7a495b4e6e7334d3890");
}

TEST(node_key)
{
    struct stat st;
    char bad[300];
    int fd;

    CHECK(stat(keyfile, &st) == 0);
    CHECK_INT(st.st_size, crypto_secretbox_KEYBYTES);
    CHECK_INT(st.st_mode & 0777, 0600);
    /* A key file of the wrong size is refused, not replaced. */
    snprintf(bad, sizeof bad, "%s/short.key", tdir);
    fd = open(bad, O_WRONLY | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, "0123456789", 10) == 10);
    close(fd);
    CHECK(auth_init(bad) == -1);
    CHECK(stat(bad, &st) == 0 && st.st_size == 10);
    unlink(bad);
    CHECK(auth_init(keyfile) == 0);
}

TEST(passwords)
{
    struct store_user u;
    char longpw[300];

    memset(&u, 0, sizeof u);
    CHECK_INT(auth_set_password(&u, "correct horse"), 0);
    CHECK(strncmp(u.pwhash, "$argon2id$", 10) == 0);
    CHECK(strstr(u.pwhash, "m=8192,t=3,") != NULL);
    CHECK_INT(u.cram_len, crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + 64);
    CHECK_INT(auth_check_password(&u, "correct horse"), 1);
    CHECK_INT(auth_check_password(&u, "correct horsE"), 0);
    CHECK_INT(auth_check_password(&u, ""), 0);

    CHECK_INT(auth_set_password(&u, ""), -1);
    CHECK_INT(auth_set_password(&u, "a\rb"), -1);
    CHECK_INT(auth_set_password(&u, "a\nb"), -1);
    memset(longpw, 'x', sizeof longpw);
    longpw[257] = '\0';
    CHECK_INT(auth_set_password(&u, longpw), -1);
    longpw[256] = '\0';
    CHECK_INT(auth_set_password(&u, longpw), 0);
    CHECK_INT(auth_check_password(&u, longpw), 1);
}

TEST(sealed_secret_needs_node_key)
{
    struct store_user u;
    unsigned char k[64], want[64] = "secret";

    memset(&u, 0, sizeof u);
    CHECK_INT(auth_set_password(&u, "secret"), 0);
    CHECK_INT(auth_cram_open(&u, k), 0);
    CHECK(memcmp(k, want, 64) == 0);
    /* The stored form does not show the password. */
    CHECK(memmem(u.cram, u.cram_len, "secret", 6) == NULL);
    CHECK_INT(auth_init(keyfile2), 0);
    CHECK(auth_cram_open(&u, k) != 0);
    CHECK_INT(auth_init(keyfile), 0);
    CHECK_INT(auth_cram_open(&u, k), 0);
    /* A tampered secret does not open. */
    u.cram[u.cram_len - 1] ^= 1;
    CHECK(auth_cram_open(&u, k) != 0);
}

TEST(sasl_plain)
{
    struct auth_sasl s;
    char out[256];

    CHECK_INT(auth_sasl_start(&s, "PLAIN", b64("\0tim\0tanstaaftanstaaf", 21), out, sizeof out), AUTH_OK);
    CHECK_STR(s.user, "tim");
    /* An authzid equal to the authcid is the same identity. */
    CHECK_INT(auth_sasl_start(&s, "plain", b64("tim\0TIM\0tanstaaftanstaaf", 24), out, sizeof out),
              AUTH_OK);
    CHECK_STR(s.user, "tim");
    /* No initial response: an empty challenge, then the response. */
    CHECK_INT(auth_sasl_start(&s, "PLAIN", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK_STR(out, "");
    CHECK_INT(auth_sasl_step(&s, b64("\0tim\0tanstaaftanstaaf", 21), out, sizeof out), AUTH_OK);

    CHECK_INT(auth_sasl_start(&s, "PLAIN", b64("\0tim\0wrong", 10), out, sizeof out), AUTH_FAIL);
    CHECK_STR(s.user, "tim");
    CHECK_INT(auth_sasl_start(&s, "PLAIN", b64("\0nobody\0tanstaaftanstaaf", 24), out, sizeof out),
              AUTH_FAIL);
    CHECK_INT(auth_sasl_start(&s, "PLAIN", b64("alice\0tim\0tanstaaftanstaaf", 26), out, sizeof out),
              AUTH_FAIL);
    CHECK_INT(auth_sasl_start(&s, "PLAIN", "AHRpbQB0YW5z!GFhZnRhbnN0YWFm", out, sizeof out), AUTH_SYNTAX);
    CHECK_INT(auth_sasl_start(&s, "PLAIN", b64("tim\0tanstaaftanstaaf", 20), out, sizeof out),
              AUTH_SYNTAX);
    CHECK_INT(auth_sasl_start(&s, "PLAIN", b64("\0tim\0tanstaaf\0tanstaaf", 23), out, sizeof out),
              AUTH_SYNTAX);
    CHECK_INT(auth_sasl_start(&s, "PLAIN", "=", out, sizeof out), AUTH_SYNTAX);
    CHECK_INT(auth_sasl_start(&s, "PLAIN", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, "*", out, sizeof out), AUTH_CANCEL);
    /* A name with control characters is logged harmlessly. */
    CHECK_INT(auth_sasl_start(&s, "PLAIN", b64("\0a\nb\0x", 6), out, sizeof out), AUTH_FAIL);
    CHECK_STR(s.user, "a?b");
    CHECK_INT(auth_sasl_start(&s, "DIGEST-MD5", NULL, out, sizeof out), AUTH_BADMECH);
}

TEST(sasl_login)
{
    struct auth_sasl s;
    char out[256];

    CHECK_INT(auth_sasl_start(&s, "LOGIN", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK_STR(out, "VXNlcm5hbWU6");
    CHECK_INT(auth_sasl_step(&s, b64("Tim", 3), out, sizeof out), AUTH_CONTINUE);
    CHECK_STR(out, "UGFzc3dvcmQ6");
    CHECK_INT(auth_sasl_step(&s, b64("tanstaaftanstaaf", 16), out, sizeof out), AUTH_OK);
    CHECK_STR(s.user, "tim");

    /* The user name as initial response. */
    CHECK_INT(auth_sasl_start(&s, "LOGIN", b64("tim", 3), out, sizeof out), AUTH_CONTINUE);
    CHECK_STR(out, "UGFzc3dvcmQ6");
    CHECK_INT(auth_sasl_step(&s, b64("nope", 4), out, sizeof out), AUTH_FAIL);
    /* Base64 without its padding is understood too. */
    CHECK_INT(auth_sasl_start(&s, "LOGIN", "dGlt", out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, "dGFuc3RhYWZ0YW5zdGFhZg", out, sizeof out), AUTH_OK);

    CHECK_INT(auth_sasl_start(&s, "LOGIN", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, b64("nobody", 6), out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, b64("tanstaaftanstaaf", 16), out, sizeof out), AUTH_FAIL);

    CHECK_INT(auth_sasl_start(&s, "LOGIN", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, "not base64!", out, sizeof out), AUTH_SYNTAX);
    CHECK_INT(auth_sasl_start(&s, "LOGIN", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, b64("tim", 3), out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, "*", out, sizeof out), AUTH_CANCEL);
}

TEST(sasl_cram_md5)
{
    struct auth_sasl s;
    char out[256], resp[128], digest[33];
    unsigned char ch[200], d[16];
    size_t chlen;

    CHECK_INT(auth_sasl_start(&s, "CRAM-MD5", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK(sodium_base642bin(ch, sizeof ch - 1, out, strlen(out), NULL, &chlen, NULL,
                            sodium_base64_VARIANT_ORIGINAL) == 0);
    ch[chlen] = '\0';
    CHECK_STR((char *)ch, s.challenge);
    CHECK(ch[0] == '<' && strstr((char *)ch, "@node.test>") != NULL);

    /* The RFC 2195 example, with its challenge. */
    util_strlcpy(s.challenge, "<1896.697170952@postoffice.reston.mci.net>", sizeof s.challenge);
    CHECK_INT(auth_sasl_step(&s, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw", out, sizeof out),
              AUTH_OK);
    CHECK_STR(s.user, "tim");
    /* The challenge is spent: the same answer again is refused. */
    CHECK(auth_sasl_step(&s, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw", out, sizeof out) != AUTH_OK);

    /* A fresh challenge, answered by computing the digest. */
    CHECK_INT(auth_sasl_start(&s, "CRAM-MD5", NULL, out, sizeof out), AUTH_CONTINUE);
    hmac_md5("tanstaaftanstaaf", 16, s.challenge, strlen(s.challenge), d);
    hex(d, 16, digest);
    snprintf(resp, sizeof resp, "tim %s", digest);
    CHECK_INT(auth_sasl_step(&s, b64(resp, strlen(resp)), out, sizeof out), AUTH_OK);

    /* Wrong digest, unknown user, malformed answer, cancel. */
    CHECK_INT(auth_sasl_start(&s, "CRAM-MD5", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw", out, sizeof out),
              AUTH_FAIL);
    CHECK_INT(auth_sasl_start(&s, "CRAM-MD5", NULL, out, sizeof out), AUTH_CONTINUE);
    snprintf(resp, sizeof resp, "nobody %s", digest);
    CHECK_INT(auth_sasl_step(&s, b64(resp, strlen(resp)), out, sizeof out), AUTH_FAIL);
    CHECK_INT(auth_sasl_start(&s, "CRAM-MD5", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, b64("tim b913", 8), out, sizeof out), AUTH_SYNTAX);
    CHECK_INT(auth_sasl_start(&s, "CRAM-MD5", NULL, out, sizeof out), AUTH_CONTINUE);
    CHECK_INT(auth_sasl_step(&s, "*", out, sizeof out), AUTH_CANCEL);
    /* RFC 4954 4: no initial response with a server-first mechanism. */
    CHECK_INT(auth_sasl_start(&s, "CRAM-MD5", "dGlt", out, sizeof out), AUTH_SYNTAX);

    /* Under another node key the secret does not open: refused. */
    CHECK_INT(auth_init(keyfile2), 0);
    CHECK_INT(auth_sasl_start(&s, "CRAM-MD5", NULL, out, sizeof out), AUTH_CONTINUE);
    util_strlcpy(s.challenge, "<1896.697170952@postoffice.reston.mci.net>", sizeof s.challenge);
    CHECK_INT(auth_sasl_step(&s, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw", out, sizeof out),
              AUTH_FAIL);
    CHECK_INT(auth_init(keyfile), 0);
}

/* A password longer than the HMAC block is keyed by its digest (RFC 2104). */
TEST(sasl_cram_md5_long_password)
{
    struct auth_sasl s;
    char pw[101], out[256], resp[128], digest[33];
    unsigned char d[16];

    memset(pw, 'p', 100);
    pw[100] = '\0';
    CHECK_INT(add_user("longpw", pw), 0);
    CHECK_INT(auth_sasl_start(&s, "CRAM-MD5", NULL, out, sizeof out), AUTH_CONTINUE);
    hmac_md5(pw, 100, s.challenge, strlen(s.challenge), d);
    hex(d, 16, digest);
    snprintf(resp, sizeof resp, "longpw %s", digest);
    CHECK_INT(auth_sasl_step(&s, b64(resp, strlen(resp)), out, sizeof out), AUTH_OK);
}

TEST(mechs)
{
    CHECK_STR(auth_mechs(1), "PLAIN LOGIN CRAM-MD5");
    CHECK_STR(auth_mechs(0), "CRAM-MD5");
}

static int count_cb(void *arg, const struct store_user *u)
{
    MN_UNUSED(u);
    return ++*(int *)arg >= 2;      /* stop after two */
}

static int domain_cb(void *arg, const struct store_domain *d)
{
    char *acc = arg, line[700];
    size_t n = strlen(acc);
    snprintf(line, sizeof line, "%s:%d:%s:%s;", d->name, d->kind, d->owner, d->host);
    util_strlcpy(acc + n, line, 256 - n);
    return 0;
}

static int alias_cb(void *arg, const char *name, const char *targets)
{
    char *acc = arg;
    size_t n = strlen(acc);
    if (n < 256)
        n += util_strlcpy(acc + n, name, 256 - n);
    if (n < 256)
        n += util_strlcpy(acc + n, "=", 256 - n);
    if (n < 256)
        n += util_strlcpy(acc + n, targets, 256 - n);
    if (n < 256)
        util_strlcpy(acc + n, ";", 256 - n);
    return 0;
}

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

TEST(store_users)
{
    struct store_user u, v;
    char sql[200];
    int n = 0;

    CHECK_INT(store_user_get("Tim", &u), 0);
    CHECK_STR(u.name, "tim");
    CHECK_INT(store_user_get_id(u.id, &v), 0);
    CHECK_STR(v.name, "tim");
    CHECK_INT(v.cram_len, u.cram_len);
    CHECK_INT(store_user_get("nobody", &v), STORE_NOTFOUND);
    CHECK_INT(store_user_get_id(999999, &v), STORE_NOTFOUND);
    CHECK_INT(store_user_add(&u), STORE_EXISTS);
    store_rollback();

    CHECK_INT(add_user("zed", "zzzzzz"), 0);
    CHECK_INT(add_user("alice", "aaaaaa"), 0);
    CHECK_INT(store_user_list(count_cb, &n), 0);
    CHECK_INT(n, 2);

    /* Password change. */
    CHECK_INT(store_user_get("alice", &u), 0);
    CHECK_INT(auth_set_password(&u, "newpass"), 0);
    CHECK_INT(store_user_update(&u), 0);
    CHECK_INT(store_commit(), 0);
    CHECK_INT(store_user_get("alice", &v), 0);
    CHECK_INT(auth_check_password(&v, "newpass"), 1);
    CHECK_INT(auth_check_password(&v, "aaaaaa"), 0);

    /* Deleting a user empties the mailbox and releases owned domains. */
    struct store_domain d = { .name = "site.test", .kind = DOMAIN_HOLD, .owner = "alice" };
    CHECK_INT(store_domain_add(&d), 0);
    snprintf(sql, sizeof sql, "INSERT INTO mbox(user_id, body_id, size, added, qid, prefix)"
                              " VALUES (%lld, 1, 10, 0, 'Q', 'P'), (%lld, 1, 10, 0, 'Q', 'P')",
             (long long)v.id, (long long)v.id);
    CHECK(sqlite3_exec(store_db(), sql, NULL, NULL, NULL) == SQLITE_OK);
    CHECK_INT(store_commit(), 0);
    CHECK_INT(count_rows("SELECT count(*) FROM mbox"), 2);
    CHECK_INT(store_user_del("ALICE"), 0);
    CHECK_INT(store_commit(), 0);
    CHECK_INT(count_rows("SELECT count(*) FROM mbox"), 0);
    CHECK_INT(store_user_get("alice", &u), STORE_NOTFOUND);
    CHECK_INT(store_domain_get("site.test", &d), 0);
    CHECK_STR(d.owner, "");
    CHECK_INT(store_user_del("alice"), STORE_NOTFOUND);
    store_rollback();
    CHECK_INT(store_domain_del("site.test"), 0);
    CHECK_INT(store_commit(), 0);
}

TEST(store_domains)
{
    struct store_domain d = { .name = "B.Example", .kind = DOMAIN_LOCAL };
    struct store_domain h = { .name = "a.example", .kind = DOMAIN_HOLD, .owner = "tim",
                              .host = "10.0.0.1:25" };
    char acc[256] = "";

    CHECK_INT(store_domain_add(&d), 0);
    CHECK_INT(store_domain_add(&h), 0);
    CHECK_INT(store_commit(), 0);
    CHECK_INT(store_domain_add(&d), STORE_EXISTS);
    store_rollback();
    CHECK_INT(store_domain_get("b.EXAMPLE", &d), 0);
    CHECK_STR(d.name, "b.example");
    CHECK_INT(d.kind, DOMAIN_LOCAL);
    CHECK_INT(store_domain_list(domain_cb, acc), 0);
    CHECK_STR(acc, "a.example:2:tim:10.0.0.1:25;b.example:1::;");
    CHECK_INT(store_domain_del("a.example"), 0);
    CHECK_INT(store_domain_del("b.example"), 0);
    CHECK_INT(store_commit(), 0);
    CHECK_INT(store_domain_del("b.example"), STORE_NOTFOUND);
    store_rollback();
    CHECK_INT(store_domain_get("b.example", &d), STORE_NOTFOUND);
}

TEST(store_aliases)
{
    char t[64], acc[256] = "";

    CHECK_INT(store_alias_set("Postmaster", "tim"), 0);
    CHECK_INT(store_alias_set("info@b.example", "tim,bob@elsewhere.example"), 0);
    CHECK_INT(store_commit(), 0);
    CHECK_INT(store_alias_get("POSTMASTER", t, sizeof t), 0);
    CHECK_STR(t, "tim");
    CHECK_INT(store_alias_set("postmaster", "zed"), 0);
    CHECK_INT(store_commit(), 0);
    CHECK_INT(store_alias_get("postmaster", t, sizeof t), 0);
    CHECK_STR(t, "zed");
    /* A target list that does not fit is an error, never cut short. */
    CHECK_INT(store_alias_get("info@b.example", t, 8), STORE_ERR);
    CHECK_INT(store_alias_get("nobody", t, sizeof t), STORE_NOTFOUND);
    CHECK_INT(store_alias_list(alias_cb, acc), 0);
    CHECK_STR(acc, "info@b.example=tim,bob@elsewhere.example;postmaster=zed;");
    CHECK_INT(store_alias_del("postmaster"), 0);
    CHECK_INT(store_commit(), 0);
    CHECK_INT(store_alias_del("postmaster"), STORE_NOTFOUND);
    store_rollback();
}

int main(void)
{
    char err[512], db[300];

    if (sodium_init() < 0 || !mkdtemp(tdir))
        return 1;
    log_init("test_auth", 0);
    log_set_level(LOG_ERR - 1);         /* the tests provoke errors on purpose */
    if (conf_load(NULL, &tconf, err, sizeof err))
        return 1;
    free(tconf.hostname);
    tconf.hostname = strdup("node.test");
    conf = &tconf;
    snprintf(db, sizeof db, "%s/t.db", tdir);
    snprintf(keyfile, sizeof keyfile, "%s/t.db.key", tdir);
    snprintf(keyfile2, sizeof keyfile2, "%s/other.key", tdir);
    if (store_open(db, STORE_TOOL, err, sizeof err) || auth_init(keyfile2) || auth_init(keyfile)) {
        fprintf(stderr, "setup: %s\n", err);
        return 1;
    }
    if (add_user("tim", "tanstaaftanstaaf"))
        return 1;

    RUN(md5_rfc1321);
    RUN(md5_incremental);
    RUN(hmac_md5_rfc2202);
    RUN(cram_md5_rfc2195_digest);
    RUN(node_key);
    RUN(passwords);
    RUN(sealed_secret_needs_node_key);
    RUN(sasl_plain);
    RUN(sasl_login);
    RUN(sasl_cram_md5);
    RUN(sasl_cram_md5_long_password);
    RUN(mechs);
    RUN(store_users);
    RUN(store_domains);
    RUN(store_aliases);

    auth_free();
    store_close();
    conf = NULL;
    conf_free(&tconf);
    {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tdir);
        if (system(cmd) != 0)
            return 1;
    }
    return unit_done();
}
