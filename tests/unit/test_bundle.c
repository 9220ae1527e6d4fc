/* Unit tests for bundle.c: keys, the envelope text, the Message-ID
 * scanner, and volumes written and read back (intact, altered, cut). */
#include "../../mailnode.c"
#include "unit.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

static struct bundle_keys A, B;
static char path[] = "/tmp/mailnode-test-bundle.XXXXXX";

static ssize_t fd_read(void *arg, void *buf, size_t n)
{
    return read(*(int *)arg, buf, n);
}

static void make_keys(struct bundle_keys *k)
{
    unsigned char seeds[64];
    randombytes_buf(seeds, sizeof seeds);
    bundle_keys_derive(k, seeds);
}

TEST(key_line)
{
    char line[256];
    unsigned char s[32], b[32];
    bundle_key_line(A.sign_pk, A.box_pk, "a.test", line, sizeof line);
    CHECK(!strncmp(line, "mnb1 ", 5));
    CHECK(bundle_key_parse(line, s, b) == 0);
    CHECK(!memcmp(s, A.sign_pk, 32) && !memcmp(b, A.box_pk, 32));
    CHECK(bundle_key_parse("mnb1 AAAA", s, b) < 0);
    CHECK(bundle_key_parse("ssh-ed25519 AAAA", s, b) < 0);
    line[10] = line[10] == 'A' ? 'B' : 'A';
    CHECK(bundle_key_parse(line, s, b) == 0 && memcmp(s, A.sign_pk, 32));
}

TEST(envelope_round_trip)
{
    struct store_out_rcpt r[2];
    struct store_out_msg m;
    static struct bundle_env e;
    char buf[4096];
    size_t len = 0;

    memset(&m, 0, sizeof m);
    memset(r, 0, sizeof r);
    util_strlcpy(m.qid, "ABCDEFGH23456789", sizeof m.qid);
    util_strlcpy(m.sender, "alice@a.test", sizeof m.sender);
    util_strlcpy(m.envid, "id+2Bx", sizeof m.envid);
    m.size = 1234;
    m.received = 1700000000;
    m.eightbit = 1;
    util_strlcpy(r[0].addr, "bob@b.test", sizeof r[0].addr);
    r[0].notify = NOTIFY_SUCCESS | NOTIFY_DELAY;
    util_strlcpy(r[0].orcpt, "rfc822;bob+2Bx@b.test", sizeof r[0].orcpt);
    util_strlcpy(r[1].addr, "carol@c.test", sizeof r[1].addr);
    r[1].notify = NOTIFY_NEVER;
    m.rcpts = r;
    m.nrcpt = 2;
    CHECK(bundle_env_format(&m, buf, sizeof buf, &len) == 0);
    CHECK(strstr(buf, "MAIL FROM:<alice@a.test> SIZE=1234 BODY=8BITMIME ENVID=id+2Bx RET=HDRS\r\n") != NULL);
    CHECK(bundle_env_parse((unsigned char *)buf, len, &e) == 0);
    CHECK_STR(e.qid, "ABCDEFGH23456789");
    CHECK_STR(e.sender, "alice@a.test");
    CHECK_STR(e.envid, "id+2Bx");
    CHECK_INT(e.size, 1234);
    CHECK_INT(e.received, 1700000000);
    CHECK_INT(e.eightbit, 1);
    CHECK_INT(e.nrcpt, 2);
    CHECK_STR(e.rcpts[0].orcpt, "rfc822;bob+2Bx@b.test");
    CHECK_INT(e.rcpts[0].notify, NOTIFY_SUCCESS | NOTIFY_DELAY);
    CHECK_INT(e.rcpts[1].notify, NOTIFY_NEVER);
    /* Null reverse-path. */
    m.sender[0] = '\0';
    CHECK(bundle_env_format(&m, buf, sizeof buf, &len) == 0 && bundle_env_parse((unsigned char *)buf, len, &e) == 0);
    CHECK_STR(e.sender, "");
}

TEST(envelope_refused)
{
    static struct bundle_env e;
    static const char *bad[] = {
        "",
        "ID ABCDEFGH23456789 1\r\nMAIL FROM:<a@b.test> SIZE=1 BODY=7BIT RET=HDRS\r\n",     /* no RCPT */
        "ID ABC 1\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n",                        /* short id */
        "ID ABCDEFGH23456789 1\r\nMAIL FROM:<a@b.test> SIZE=x\r\nRCPT TO:<c@d.test>\r\n",
        "ID ABCDEFGH23456789 1\r\nMAIL FROM:<a@b.test> FOO=1\r\nRCPT TO:<c@d.test>\r\n",
        "ID ABCDEFGH23456789 1\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test> NOTIFY=NEVER,SUCCESS\r\n",
        "ID ABCDEFGH23456789 1\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test> ORCPT=rfc822;a+zz\r\n",
        "ID ABCDEFGH23456789 1\r\nMAIL FROM:<a@b.test> ENVID=a=b\r\nRCPT TO:<c@d.test>\r\n",
        "ID ABCDEFGH23456789 1\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<>\r\n",
        "ID ABCDEFGH23456789 1\r\nMAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\r\n",         /* bare LF */
        "ID ABCDEFGH23456789 1\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>",             /* no CRLF */
    };
    for (size_t i = 0; i < MN_NELEM(bad); i++) {
        int rc = bundle_env_parse((const unsigned char *)bad[i], strlen(bad[i]), &e);
        if (rc == 0)
            printf("#   accepted: %s\n", bad[i]);
        CHECK(rc < 0);
    }
}

TEST(msgid_any_split)
{
    const char *msg = "Received: x\r\nSubject: a\r\nMessage-Id:\r\n  <abc@d.test> (c)\r\nX: y\r\n\r\n"
                      "Message-ID: <body@not.header>\r\n";
    size_t n = strlen(msg);
    for (size_t cut = 0; cut <= n; cut++) {
        struct bundle_msgid m;
        bundle_msgid_init(&m);
        bundle_msgid_feed(&m, msg, cut);
        bundle_msgid_feed(&m, msg + cut, n - cut);
        bundle_msgid_finish(&m);
        CHECK(m.found && !strcmp(m.id, "<abc@d.test>"));
    }
    struct bundle_msgid m;
    bundle_msgid_init(&m);
    bundle_msgid_feed(&m, "Subject: x\r\n\r\nMessage-ID: <b@c>\r\n", 33);
    bundle_msgid_finish(&m);
    CHECK(!m.found);
}

/* A volume with the given messages (text bodies of size n each). */
static int write_volume(int nmsgs, size_t n)
{
    unsigned char id[16] = { 1, 2, 3 };
    unsigned char *body = malloc(n + 1);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    struct bundle_writer *w = bundle_writer_open(fd, &A, B.box_pk, BUNDLE_KIND_MAIL, id, 7);
    int rc = w ? 0 : -1;
    for (size_t i = 0; i < n; i++)
        body[i] = (unsigned char)('a' + i % 26);
    for (int k = 0; k < nmsgs && !rc; k++) {
        rc = bundle_write_record(w, BUNDLE_REC_ENV, "env", 3);
        for (size_t off = 0; off < n && !rc; off += BUNDLE_DATA_MAX)
            rc = bundle_write_record(w, BUNDLE_REC_DATA, body + off, n - off < BUNDLE_DATA_MAX ? n - off : BUNDLE_DATA_MAX);
        if (!rc)
            rc = bundle_write_record(w, BUNDLE_REC_END, "end", 3);
    }
    if (!rc)
        rc = bundle_writer_finish(w);
    bundle_writer_free(w);
    free(body);
    close(fd);
    return rc;
}

/* Reads the volume back: records counted, or the error. */
static int read_volume(const struct bundle_keys *me, const unsigned char *signer, int *records, int64_t *bytes)
{
    struct bundle_header h;
    unsigned char raw[BUNDLE_HDR_LEN];
    struct bundle_reader *r;
    int fd = open(path, O_RDONLY), rc, err, type;
    const unsigned char *p;
    size_t n;

    *records = 0;
    *bytes = 0;
    rc = bundle_reader_header(fd_read, &fd, &h, raw);
    if (!rc)
        rc = bundle_header_verify(raw, signer);
    if (rc) {
        close(fd);
        return rc;
    }
    r = bundle_reader_open(fd_read, &fd, &h, me, &err);
    if (!r) {
        close(fd);
        return err;
    }
    while ((rc = bundle_read_record(r, &type, &p, &n)) == 0) {
        (*records)++;
        if (type == BUNDLE_REC_DATA)
            *bytes += (int64_t)n;
    }
    bundle_reader_free(r);
    close(fd);
    return rc == 1 ? 0 : rc;
}

static void patch(off_t off, int delta)
{
    int fd = open(path, O_RDWR);
    unsigned char c;
    if (pread(fd, &c, 1, off) == 1) {
        c = (unsigned char)(c + delta);
        if (pwrite(fd, &c, 1, off) != 1)
            abort();
    }
    close(fd);
}

TEST(volume_round_trip)
{
    int records;
    int64_t bytes;
    CHECK(write_volume(3, 200000) == 0);
    CHECK(read_volume(&B, A.sign_pk, &records, &bytes) == 0);
    CHECK_INT(records, 3 * (2 + 4) + 1);
    CHECK_INT(bytes, 3 * 200000);
    /* Compressible text shrinks. */
    int fd = open(path, O_RDONLY);
    off_t size = lseek(fd, 0, SEEK_END);
    close(fd);
    CHECK(size < 3 * 200000 / 10);
    CHECK(write_volume(0, 0) == 0);
    CHECK(read_volume(&B, A.sign_pk, &records, &bytes) == 0 && records == 1);
}

TEST(volume_refused)
{
    int records;
    int64_t bytes;
    off_t size;
    int fd;

    CHECK(write_volume(2, 100000) == 0);
    fd = open(path, O_RDONLY);
    size = lseek(fd, 0, SEEK_END);
    close(fd);
    CHECK_INT(read_volume(&A, A.sign_pk, &records, &bytes), BUNDLE_EKEY);    /* not for A */
    CHECK_INT(read_volume(&B, B.sign_pk, &records, &bytes), BUNDLE_ESIG);    /* not signed by B */
    patch(BUNDLE_HDR_LEN + 100, 1);
    CHECK_INT(read_volume(&B, A.sign_pk, &records, &bytes), BUNDLE_ECRYPT);
    patch(BUNDLE_HDR_LEN + 100, -1);
    CHECK(read_volume(&B, A.sign_pk, &records, &bytes) == 0);
    patch(50, 1);
    CHECK_INT(read_volume(&B, A.sign_pk, &records, &bytes), BUNDLE_ESIG);
    patch(50, -1);
    CHECK(truncate(path, size - 1) == 0);
    CHECK_INT(read_volume(&B, A.sign_pk, &records, &bytes), BUNDLE_ETRUNC);
    CHECK(write_volume(2, 100000) == 0);
    /* Only whole frames: cut after the first frame, the FINAL one missing. */
    CHECK(truncate(path, BUNDLE_HDR_LEN + 4 + BUNDLE_FRAME_MAX + 17) == 0);
    CHECK(read_volume(&B, A.sign_pk, &records, &bytes) < 0);
    CHECK(write_volume(1, 10) == 0);
    fd = open(path, O_WRONLY | O_APPEND);
    CHECK(write(fd, "x", 1) == 1);
    close(fd);
    CHECK_INT(read_volume(&B, A.sign_pk, &records, &bytes), BUNDLE_ETRAIL);
}

TEST(size_bound)
{
    /* The writer's estimate never falls below what it writes. */
    unsigned char id[16] = { 9 };
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    struct bundle_writer *w = bundle_writer_open(fd, &A, B.box_pk, BUNDLE_KIND_MAIL, id, 1);
    unsigned char buf[5000];
    int64_t est;
    randombytes_buf(buf, sizeof buf);
    for (int i = 0; i < 50; i++)
        bundle_write_record(w, BUNDLE_REC_DATA, buf, sizeof buf);
    est = bundle_writer_size(w);
    CHECK(bundle_writer_sync(w) == 0);
    CHECK(bundle_writer_size(w) <= est);
    CHECK(bundle_writer_finish(w) == 0);
    CHECK(bundle_writer_bytes(w) <= est + 64);
    bundle_writer_free(w);
    close(fd);
}

static int64_t exp_rcpt;
static int exp_n;

static int exp_cb(void *arg, int64_t msg_id, int64_t rcpt_id)
{
    MN_UNUSED(arg);
    MN_UNUSED(msg_id);
    exp_rcpt = rcpt_id;
    exp_n++;
    return 0;
}

/* The queue side: a peer's mail is found for export, in transit it is
 * neither exported again (before resend_after) nor expired, and the
 * receipt delivers and retires it. */
TEST(transit_and_receipt)
{
    static struct conf c;
    char dir[] = "/tmp/mailnode-test-bundle-db.XXXXXX", db[128], err[256];
    struct store_peer p, got;
    struct store_env env;
    struct store_rcpt r;
    struct store_out_msg m;
    struct store_body *b;
    unsigned char id[16] = { 5 };
    int64_t now = util_now();

    CHECK(mkdtemp(dir) != NULL);
    snprintf(db, sizeof db, "%s/db", dir);
    conf = &c;
    CHECK(store_open(db, STORE_TOOL, err, sizeof err) == 0);
    memset(&p, 0, sizeof p);
    util_strlcpy(p.name, "up", sizeof p.name);
    memcpy(p.sign_pk, A.sign_pk, 32);
    memcpy(p.box_pk, A.box_pk, 32);
    CHECK(store_peer_add(&p) == 0 && store_commit() == 0);
    CHECK(store_peer_by_key(A.sign_pk, &got) == 0 && !strcmp(got.name, "up"));
    CHECK(store_peer_any() == 1);
    b = store_body_new();
    CHECK(b && store_body_write(b, "Subject: x\r\n\r\nx\r\n", 17) == 0 && store_body_finish(b) == 0);
    memset(&env, 0, sizeof env);
    util_strlcpy(env.qid, "QQQQQQQQQQQQQQQQ", sizeof env.qid);
    env.sender = "a@a.test";
    env.client = "local";
    env.size = b->size;
    memset(&r, 0, sizeof r);
    r.kind = ROUTE_REMOTE;
    util_strlcpy(r.addr, "x@far.test", sizeof r.addr);
    util_strlcpy(r.domain, "far.test", sizeof r.domain);
    CHECK(store_msg_insert(&env, b, &r, 1) == 0 && store_commit() == 0);
    store_body_free(b);
    CHECK(store_bundle_next(&got, 0, now - 10, &m) == 1 && m.nrcpt == 1);
    store_out_free(&m);
    exp_n = 0;
    CHECK(store_expired(now + 100, exp_cb, NULL) == 0 && exp_n == 1);
    CHECK(store_bundle_transit(exp_rcpt, got.id, id, now) == 0 && store_commit() == 0);
    CHECK(store_bundle_next(&got, 0, now - 10, &m) == 0);
    CHECK(store_bundle_next(&got, 0, now + 10, &m) == 1);    /* resend time passed */
    store_out_free(&m);
    exp_n = 0;
    CHECK(store_expired(now + 100, exp_cb, NULL) == 0 && exp_n == 0);
    CHECK_INT(store_bundle_ack(got.id + 1, "QQQQQQQQQQQQQQQQ"), 0);    /* another peer's receipt */
    CHECK_INT(store_bundle_ack(got.id, "QQQQQQQQQQQQQQQQ"), 1);
    CHECK(store_commit() == 0);
    CHECK_INT(store_queue_count(), 0);
    store_close();
    conf = NULL;
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    log_set_level(-1);
    close(mkstemp(path));
    make_keys(&A);
    make_keys(&B);
    RUN(key_line);
    RUN(envelope_round_trip);
    RUN(envelope_refused);
    RUN(msgid_any_split);
    RUN(volume_round_trip);
    RUN(volume_refused);
    RUN(size_bound);
    RUN(transit_and_receipt);
    unlink(path);
    return unit_done();
}
