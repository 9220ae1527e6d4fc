/* Unit tests of the core: the DATA decoder, header scanning, durations,
 * sizes, CIDR matching, the configuration file, and the store (bodies,
 * messages, the queue) on a real database file. */
#include "../../mailnode.c"
#include "unit.h"

#include <arpa/inet.h>

struct sink {
    unsigned char buf[65536];
    size_t len;
};

static int sink_emit(void *arg, const void *p, size_t n)
{
    struct sink *s = arg;
    if (s->len + n > sizeof s->buf)
        return -1;
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    return 0;
}

/* Feeds input in pieces of step bytes; returns bytes consumed at the end. */
static size_t decode(const char *in, size_t step, struct sink *out, struct mime_data *d, int *done)
{
    size_t n = strlen(in), off = 0;
    mime_data_init(d);
    out->len = 0;
    *done = 0;
    while (off < n && !*done) {
        size_t take = n - off < step ? n - off : step;
        off += mime_data_feed(d, (const unsigned char *)in + off, take, sink_emit, out, done);
    }
    return off;
}

static int decoded_is(struct sink *s, const char *want)
{
    return s->len == strlen(want) && !memcmp(s->buf, want, s->len);
}

static int rcpt_counter(void *arg, const struct store_ops_rcpt *r)
{
    struct { const char *addr; int n; } *c = arg;
    if (!c->addr || !strcmp(r->addr, c->addr))
        c->n++;
    return 0;
}

/* Recipients of a message (with that address, if not NULL). */
static int count_rcpts(int64_t msg_id, const char *addr)
{
    struct { const char *addr; int n; } c = { addr, 0 };
    if (store_ops_rcpts(msg_id, 0, rcpt_counter, &c))
        return -1;
    return c.n;
}

TEST(data_end_and_unstuffing)
{
    static const size_t steps[] = { 1, 2, 3, 7, 4096 };
    for (size_t i = 0; i < MN_NELEM(steps); i++) {
        struct sink s;
        struct mime_data d;
        int done;
        size_t used = decode("a\r\n..b\r\n.c\r\n\r\n.\r\nNEXT", steps[i], &s, &d, &done);
        CHECK(done);
        CHECK_INT(used, strlen("a\r\n..b\r\n.c\r\n\r\n.\r\n"));
        CHECK(decoded_is(&s, "a\r\n.b\r\nc\r\n\r\n"));
        /* an empty message */
        used = decode(".\r\n", steps[i], &s, &d, &done);
        CHECK(done && s.len == 0 && used == 3);
    }
}

TEST(data_smuggling_is_data)
{
    static const char *tricks[] = { "x\n.\ny\r\n.\r\n", "x\r.\ry\r\n.\r\n", "x\n.\r\ny\r\n.\r\n",
                                    "x\r\n.\ny\r\n.\r\n", "x\r\n.\rz\r\n.\r\n" };
    for (size_t i = 0; i < MN_NELEM(tricks); i++) {
        struct sink s;
        struct mime_data d;
        int done;
        size_t used = decode(tricks[i], 1, &s, &d, &done);
        CHECK(done);
        CHECK_INT(used, strlen(tricks[i]));     /* ended only at the real CRLF.CRLF */
        /* every line ending in what was stored is CRLF */
        for (size_t k = 0; k < s.len; k++) {
            if (s.buf[k] == '\n')
                CHECK(k > 0 && s.buf[k - 1] == '\r');
            if (s.buf[k] == '\r')
                CHECK(k + 1 < s.len && s.buf[k + 1] == '\n');
        }
    }
    struct sink s;
    struct mime_data d;
    int done;
    decode("a\nb\rc\r\n.\r\n", 5, &s, &d, &done);
    CHECK(decoded_is(&s, "a\r\nb\r\nc\r\n"));
}

TEST(header_scan)
{
    struct sink s;
    struct mime_data d;
    int done;
    decode("Received: a\r\nreceived: b\r\n\tReceived: folded\r\nX: y\r\n\r\nReceived: body\r\n.\r\n", 3, &s, &d,
           &done);
    CHECK_INT(d.received, 2);
    CHECK(!d.eightbit && !d.long_line);
    char big[1200];
    memset(big, 'x', 1001);
    strcpy(big + 1001, "\r\n.\r\n");
    decode(big, 100, &s, &d, &done);
    CHECK(d.long_line);
    memset(big, 'x', 998);
    strcpy(big + 998, "\r\n.\r\n");
    decode(big, 100, &s, &d, &done);
    CHECK(!d.long_line);
    decode("A: \xe9\r\n.\r\n", 2, &s, &d, &done);
    CHECK(d.eightbit);
}

TEST(raw_chunks)
{
    struct sink s = { .len = 0 };
    struct mime_data d;
    mime_data_init(&d);
    CHECK(!mime_raw_feed(&d, (const unsigned char *)"a\r", 2, sink_emit, &s));
    CHECK(!mime_raw_feed(&d, (const unsigned char *)"\nb\r", 3, sink_emit, &s));
    CHECK(!mime_raw_finish(&d, sink_emit, &s));
    CHECK(decoded_is(&s, "a\r\nb\r\n"));
}

TEST(durations_and_sizes)
{
    int64_t v;
    CHECK(!util_parse_duration("30s", &v) && v == 30);
    CHECK(!util_parse_duration("5m", &v) && v == 300);
    CHECK(!util_parse_duration("4h", &v) && v == 14400);
    CHECK(!util_parse_duration("5d", &v) && v == 432000);
    CHECK(!util_parse_duration("17", &v) && v == 17);
    CHECK(util_parse_duration("5x", &v));
    CHECK(util_parse_duration("-1s", &v));
    CHECK(util_parse_duration("", &v));
    CHECK(util_parse_duration("5mm", &v));
    CHECK(!util_parse_size("10M", &v) && v == 10485760);
    CHECK(!util_parse_size("512K", &v) && v == 524288);
    CHECK(util_parse_size("99999999999999999999G", &v));
}

TEST(cidr)
{
    struct cidr c;
    struct sockaddr_storage ss;
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

    memset(&ss, 0, sizeof ss);
    in->sin_family = AF_INET;
    inet_pton(AF_INET, "192.168.1.77", &in->sin_addr);
    CHECK(!util_cidr_parse("192.168.1.0/24", &c) && util_cidr_match(&c, &ss));
    CHECK(!util_cidr_parse("192.168.0.0/24", &c) && !util_cidr_match(&c, &ss));
    CHECK(!util_cidr_parse("192.168.1.77", &c) && util_cidr_match(&c, &ss));
    CHECK(!util_cidr_parse("0.0.0.0/0", &c) && util_cidr_match(&c, &ss));
    CHECK(util_cidr_parse("192.168.1.0/33", &c));
    CHECK(util_cidr_parse("bogus", &c));
    memset(&ss, 0, sizeof ss);
    in6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:10.1.2.3", &in6->sin6_addr);
    CHECK(!util_cidr_parse("10.0.0.0/8", &c) && util_cidr_match(&c, &ss));
    inet_pton(AF_INET6, "2001:db8::1", &in6->sin6_addr);
    CHECK(!util_cidr_parse("2001:db8::/32", &c) && util_cidr_match(&c, &ss));
    CHECK(!util_cidr_parse("2001:db9::/32", &c) && !util_cidr_match(&c, &ss));
}

static const char *write_file(const char *text)
{
    static char path[64];
    strcpy(path, "/tmp/mailnode-unit-conf-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, text, strlen(text)) < 0)
        return NULL;
    close(fd);
    return path;
}

TEST(config_file)
{
    struct conf c;
    char err[512];
    const char *p;

    CHECK(!conf_load(NULL, &c, err, sizeof err));
    CHECK_STR(c.database, "./mailnode.db");
    CHECK_STR(c.listen[LISTEN_SMTP], "127.0.0.1:2525");
    CHECK_INT(c.message_size_limit, 25 * 1024 * 1024);
    CHECK_INT(c.max_received, 100);
    conf_free(&c);

    p = write_file("# comment\nhostname = Node.Example\nlocal_domains = a.test, B.test\n"
                   "message_size_limit = 10M\nretry.initial = 30s\nlisten.pop3 =\nvrfy = yes\n");
    CHECK(!conf_load(p, &c, err, sizeof err));
    CHECK_STR(c.hostname, "node.example");
    CHECK_INT(c.n_local_domains, 2);
    CHECK_STR(c.local_domains[1], "b.test");
    CHECK_INT(c.message_size_limit, 10 * 1024 * 1024);
    CHECK_INT(c.retry_initial, 30);
    CHECK_STR(c.listen[LISTEN_POP3], "");
    CHECK(c.allow_vrfy);
    conf_free(&c);
    unlink(p);

    p = write_file("hostname = x\nbogus.key = 1\n");
    CHECK(conf_load(p, &c, err, sizeof err));
    CHECK(strstr(err, ":2: unknown key 'bogus.key'") != NULL);
    conf_free(&c);
    unlink(p);
    p = write_file("retry.max = soon\n");
    CHECK(conf_load(p, &c, err, sizeof err));
    CHECK(strstr(err, "retry.max: not a duration") != NULL);
    conf_free(&c);
    unlink(p);
    p = write_file("no equals sign\n");
    CHECK(conf_load(p, &c, err, sizeof err));
    conf_free(&c);
    unlink(p);
}

TEST(store_bodies_and_queue)
{
    char dir[] = "/tmp/mailnode-unit-store-XXXXXX", path[256], err[256];
    struct conf c;
    struct store_body *b;
    struct store_reader r;
    struct store_env env;
    struct store_rcpt rc[2];
    static unsigned char data[100000], back[100000];
    size_t got = 0;
    ssize_t n;

    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/t.db", dir);
    conf_load(NULL, &c, err, sizeof err);
    conf = &c;
    CHECK(!store_open(path, STORE_TOOL, err, sizeof err));
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 7 + i / 300);

    CHECK(!store_begin());
    b = store_body_new();
    CHECK(b != NULL);
    CHECK(!store_body_write(b, data, 12345));
    CHECK(!store_body_write(b, data + 12345, sizeof data - 12345));
    CHECK(!store_body_finish(b));
    CHECK_INT(b->size, sizeof data);
    memset(&env, 0, sizeof env);
    util_qid(env.qid);
    env.sender = "s@x.test";
    memset(rc, 0, sizeof rc);
    rc[0].kind = ROUTE_REMOTE;
    strcpy(rc[0].addr, "a@far.test");
    strcpy(rc[0].domain, "far.test");
    rc[1].kind = ROUTE_REMOTE;
    strcpy(rc[1].addr, "b@far.test");
    strcpy(rc[1].domain, "far.test");
    CHECK(!store_msg_insert(&env, b, rc, 2));
    CHECK(!store_commit());
    int64_t body_id = b->id;
    store_body_free(b);

    CHECK_INT(store_queue_count(), 1);
    CHECK(!store_reader_open(&r, body_id));
    while ((n = store_reader_read(&r, back + got, 777)) > 0)
        got += (size_t)n;
    store_reader_close(&r);
    CHECK_INT(got, sizeof data);
    CHECK(!memcmp(back, data, sizeof data));

    struct store_ops_msg q;
    CHECK(!store_ops_msg_get(env.qid, &q));
    CHECK_INT(q.body_id, body_id);
    CHECK_INT(count_rcpts(q.id, "b@far.test"), 1);
    CHECK_INT(count_rcpts(q.id, NULL), 2);

    /* an abandoned body leaves nothing behind */
    CHECK(!store_begin());
    b = store_body_new();
    CHECK(!store_body_write(b, data, 50000));
    store_body_free(b);
    CHECK(!store_commit());

    /* a rolled back transaction takes its message with it */
    CHECK(!store_begin());
    b = store_body_new();
    CHECK(!store_body_write(b, "hello\r\n", 7));
    CHECK(!store_body_finish(b));
    util_qid(env.qid);
    CHECK(!store_msg_insert(&env, b, rc, 1));
    store_rollback();
    CHECK(b->err != 0);
    store_body_free(b);
    CHECK_INT(store_queue_count(), 1);

    CHECK(!store_begin());
    CHECK(store_queue_delete("NOSUCHQID") == STORE_NOTFOUND);
    store_rollback();
    CHECK(!store_begin());
    CHECK(!store_queue_delete(q.qid));
    CHECK(!store_commit());
    CHECK_INT(store_queue_count(), 0);

    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(store_db(), "SELECT (SELECT count(*) FROM body) + (SELECT count(*) FROM chunk)", -1, &st,
                       NULL);
    CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 0);
    sqlite3_finalize(st);
    store_close();
    conf_free(&c);
    conf = NULL;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

TEST(smtp_command_arguments)
{
    struct esmtp_param p[8];
    char buf[256];
    struct addr a;
    const char *rest;

    /* ESMTP parameters (RFC 5321 4.1.2: esmtp-keyword ["=" esmtp-value]) */
    strcpy(buf, " SIZE=100  BODY=8BITMIME RET=HDRS");
    CHECK_INT(split_params(buf, p, 8), 3);
    CHECK_STR(p[0].key, "SIZE");
    CHECK_STR(p[0].value, "100");
    CHECK_STR(p[2].value, "HDRS");
    strcpy(buf, "FLAG");
    CHECK_INT(split_params(buf, p, 8), 1);
    CHECK(p[0].value == NULL);
    strcpy(buf, "=x");
    CHECK(split_params(buf, p, 8) < 0);
    strcpy(buf, "A B C D E F G H I");
    CHECK(split_params(buf, p, 8) < 0);
    /* RFC 3461 4: xtext and NOTIFY */
    CHECK(xtext_valid("abc+2Bdef"));
    CHECK(!xtext_valid("a=b"));
    CHECK(!xtext_valid("a+zz"));
    CHECK(!xtext_valid("caf\xc3\xa9"));
    CHECK_INT(parse_notify("SUCCESS,FAILURE"), NOTIFY_SUCCESS | NOTIFY_FAILURE);
    CHECK_INT(parse_notify("never"), NOTIFY_NEVER);
    CHECK(parse_notify("NEVER,DELAY") < 0);
    CHECK(parse_notify("SOMETIMES") < 0);
    CHECK(parse_notify("") < 0);
    /* MAIL FROM:/RCPT TO: with the tolerated space after the colon */
    CHECK(!parse_path_arg("FROM:<a@b.test> SIZE=1", "FROM:", 1, &a, &rest));
    CHECK_STR(a.full, "a@b.test");
    CHECK_STR(rest, " SIZE=1");
    CHECK(!parse_path_arg("from: <>", "FROM:", 1, &a, &rest) && a.null_path);
    CHECK(parse_path_arg("TO:<>", "TO:", 0, &a, &rest));
    CHECK(parse_path_arg("FROM:<a@b.test>junk", "FROM:", 1, &a, &rest));
    CHECK(parse_path_arg("FROMAGE:<a@b.test>", "FROM:", 1, &a, &rest));
}

TEST(on_demand_arguments)
{
    char line[256];
    /* ETRN syntax is refused before anything is looked up. */
    odmr_etrn("", line, sizeof line);
    CHECK(!strncmp(line, "501 ", 4));
    odmr_etrn("bad..domain", line, sizeof line);
    CHECK(!strncmp(line, "501 ", 4));
    odmr_etrn("@", line, sizeof line);
    CHECK(!strncmp(line, "501 ", 4));
    CHECK(addr_domain_ok("site.test", 9, 0));
    CHECK(!addr_domain_ok("site_test", 9, 0));
    CHECK(!addr_domain_ok(".site", 5, 0));
    CHECK(!addr_domain_ok("a b", 3, 0));
}

TEST(client_capabilities)
{
    struct smtpc_caps c;
    struct conn fake;
    memset(&c, 0, sizeof c);
    smtpc_caps_keyword(&c, "PIPELINING");
    smtpc_caps_keyword(&c, "chunking");
    smtpc_caps_keyword(&c, "SIZE 10240000");
    smtpc_caps_keyword(&c, "AUTH LOGIN PLAIN");
    smtpc_caps_keyword(&c, "AUTH=LOGIN");           /* the old form does not replace the list */
    smtpc_caps_keyword(&c, "ATRN");
    CHECK(c.pipelining && c.chunking && c.atrn && !c.dsn && !c.starttls);
    CHECK(c.has_size && c.size_limit == 10240000);
    CHECK(smtpc_caps_mech(&c, "plain") && !smtpc_caps_mech(&c, "CRAM-MD5"));
    /* A hostile or broken SIZE is no SIZE: nothing looks too large. */
    static const char *bad[] = { "SIZE -1", "SIZE x", "SIZE 99999999999999999999", "SIZE 12k" };
    for (size_t i = 0; i < MN_NELEM(bad); i++) {
        smtpc_caps_keyword(&c, bad[i]);
        CHECK(!c.has_size && c.size_limit == 0);
    }
    smtpc_caps_keyword(&c, "SIZE");
    CHECK(c.has_size && c.size_limit == 0);
    /* PLAIN only where the password may travel; CRAM-MD5 first. */
    struct conf cf;
    char err[256];
    CHECK(!conf_load(NULL, &cf, err, sizeof err));
    conf = &cf;
    memset(&fake, 0, sizeof fake);
    CHECK_INT(smtpc_auth_choose(&c, &fake), SMTPC_AUTH_NONE);
    fake.peer_loopback = 1;
    CHECK_INT(smtpc_auth_choose(&c, &fake), SMTPC_AUTH_PLAIN);
    smtpc_caps_keyword(&c, "AUTH PLAIN CRAM-MD5");
    fake.peer_loopback = 0;
    CHECK_INT(smtpc_auth_choose(&c, &fake), SMTPC_AUTH_CRAM);
    conf = NULL;
    conf_free(&cf);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    log_set_level(LOG_ERR);
    RUN(data_end_and_unstuffing);
    RUN(data_smuggling_is_data);
    RUN(header_scan);
    RUN(raw_chunks);
    RUN(durations_and_sizes);
    RUN(cidr);
    RUN(config_file);
    RUN(store_bodies_and_queue);
    RUN(smtp_command_arguments);
    RUN(on_demand_arguments);
    RUN(client_capabilities);
    return unit_done();
}
