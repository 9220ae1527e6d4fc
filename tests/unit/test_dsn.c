/* Unit tests of delivery status notifications (dsn.c): the RFC 3464
 * structure, every required field, RET=HDRS and RET=FULL, ENVID and
 * ORCPT, and peer text that tries to break out of its field. */
#include "../../mailnode.c"
#include "unit.h"

#include <stdlib.h>

static char dir[] = "/tmp/mailnode-unit-dsn-XXXXXX";
static struct conf cf;

static const char original_hdr[] =
    "Received: from client.test by mx.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "From: Sender <s@x.test>\r\n"
    "To: r@far.test\r\n"
    "Subject: the original\r\n"
    "\r\n";
static const char original_body[] =
    "Hello,\r\n"
    "Gr\xc3\xbc\xc3\x9f" "e.\r\n"
    "\r\n"
    "Subject: not a header\r\n";

static int64_t store_original(void)
{
    struct store_body *b;
    int64_t id;

    CHECK(!store_begin());
    b = store_body_new();
    CHECK(b != NULL);
    CHECK(!store_body_write(b, original_hdr, strlen(original_hdr)));
    CHECK(!store_body_write(b, original_body, strlen(original_body)));
    CHECK(!store_body_finish(b));
    b->linked = 1;
    id = b->id;
    CHECK(!store_commit());
    store_body_free(b);
    return id;
}

/* Runs dsn_write and reads the notification back as a string. */
static char *make_dsn(const struct dsn_info *d, size_t *len)
{
    struct store_body *b;
    struct store_reader r;
    char *text;
    size_t got = 0, cap = 1 << 20;
    ssize_t n;

    CHECK(!store_begin());
    b = store_body_new();
    CHECK(b != NULL);
    CHECK_INT(dsn_write(d, b), 0);
    CHECK(!store_body_finish(b));
    b->linked = 1;
    int64_t id = b->id;
    CHECK(!store_commit());
    store_body_free(b);

    text = malloc(cap + 1);
    CHECK(!store_reader_open(&r, id));
    while ((n = store_reader_read(&r, text + got, cap - got)) > 0)
        got += (size_t)n;
    store_reader_close(&r);
    text[got] = '\0';
    *len = got;
    return text;
}

/* The unfolded value of the first field called name in the header
 * section that starts at sec (up to its empty line), or "". */
static void field(const char *sec, const char *name, char *out, size_t n)
{
    const char *end = strstr(sec, "\r\n\r\n");
    size_t nl = strlen(name), j = 0;
    const char *p = sec;

    out[0] = '\0';
    if (!end)
        end = sec + strlen(sec);
    while (p && p < end) {
        if (!strncasecmp(p, name, nl) && p[nl] == ':') {
            p += nl + 1;
            while (*p == ' ')
                p++;
            while (p < end + 2 && j + 1 < n) {
                if (p[0] == '\r' && p[1] == '\n') {
                    if (p[2] != ' ' && p[2] != '\t')
                        break;
                    p += 2;
                    continue;
                }
                out[j++] = *p++;
            }
            out[j] = '\0';
            return;
        }
        p = strstr(p, "\r\n");
        if (p)
            p += 2;
    }
}

/* Every line ends in CRLF and is at most 998 octets; no bare CR or LF. */
static int lines_ok(const char *s, size_t len)
{
    size_t line = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\r') {
            if (i + 1 >= len || s[i + 1] != '\n')
                return 0;
        } else if (s[i] == '\n') {
            if (!i || s[i - 1] != '\r')
                return 0;
            line = 0;
        } else if (++line > 998) {
            return 0;
        }
    }
    return len >= 2 && s[len - 1] == '\n';
}

struct parsed {
    char boundary[128];
    char *part[4];                      /* header section + body of each part */
    size_t nparts;
    int closed;
};

/* Splits the multipart body at its delimiters (RFC 2046 5.1.1). */
static void parse(char *text, struct parsed *p)
{
    char ct[512], delim[160];
    memset(p, 0, sizeof *p);
    field(text, "Content-Type", ct, sizeof ct);
    char *b = strstr(ct, "boundary=\"");
    if (!b)
        return;
    b += strlen("boundary=\"");
    char *q = strchr(b, '"');
    if (!q)
        return;
    snprintf(p->boundary, sizeof p->boundary, "%.*s", (int)(q - b), b);
    snprintf(delim, sizeof delim, "\r\n--%s", p->boundary);
    char *s = strstr(text, delim);
    while (s) {
        char *after = s + strlen(delim);
        *s = '\0';                      /* ends the previous part */
        if (!strncmp(after, "--\r\n", 4)) {
            p->closed = 1;
            break;
        }
        if (strncmp(after, "\r\n", 2) || p->nparts == 4)
            break;
        p->part[p->nparts++] = after + 2;
        s = strstr(after + 2, delim);
    }
}

static const char *part_body(const char *part)
{
    const char *e = strstr(part, "\r\n\r\n");
    return e ? e + 4 : "";
}

static const char *blocks(const char *status, int n)
{
    /* the n-th block (0: per-message fields) of message/delivery-status */
    const char *p = part_body(status);
    while (n-- > 0) {
        p = strstr(p, "\r\n\r\n");
        if (!p)
            return "";
        p += 4;
    }
    return p;
}

TEST(failure_report_headers_only)
{
    int64_t body_id = store_original();
    struct dsn_rcpt r[2] = {
        { .addr = "r@far.test", .orcpt = "rfc822;R+2Bx@far.test", .action = DSN_FAILED,
          .status = "5.1.1", .remote_mta = "mx.far.test",
          .diagnostic = "smtp; 550 5.1.1 <r@far.test>: no such user", .last_attempt = 1700000000 },
        { .addr = "q@far.test", .action = DSN_FAILED, .status = "5.7.1", .remote_mta = NULL,
          .diagnostic = "550 policy\r\nInjected: yes\r\n\r\n--evil\r\nX: \x01\xff end",
          .last_attempt = 1700000000 },
    };
    struct dsn_info d = { .qid = "ABCDEFGHJKLMNPQR", .sender = "s@x.test", .envid = "ENV+3D1",
                          .ret_full = 0, .received = 1699990000, .body_id = body_id,
                          .rcpts = r, .n = 2 };
    size_t len;
    char *text = make_dsn(&d, &len), v[1024];
    struct parsed p;

    CHECK(lines_ok(text, len));
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)text[i] >= 0x80) {
            CHECK(!"8-bit byte in a headers-only report of 7-bit headers");
            break;
        }
    field(text, "From", v, sizeof v);
    CHECK_STR(v, "Mail Delivery System <MAILER-DAEMON@mx.test>");
    field(text, "To", v, sizeof v);
    CHECK_STR(v, "<s@x.test>");
    field(text, "Subject", v, sizeof v);
    CHECK_STR(v, "Undelivered Mail Returned to Sender");
    field(text, "Date", v, sizeof v);
    CHECK(strlen(v) > 20);
    field(text, "Message-ID", v, sizeof v);
    CHECK(!strncmp(v, "<ABCDEFGHJKLMNPQR.dsn.", 22) && strstr(v, "@mx.test>") != NULL);
    field(text, "Auto-Submitted", v, sizeof v);
    CHECK_STR(v, "auto-replied");
    field(text, "MIME-Version", v, sizeof v);
    CHECK_STR(v, "1.0");
    field(text, "Content-Type", v, sizeof v);
    CHECK(!strncmp(v, "multipart/report; report-type=delivery-status;", 46));
    field(text, "Content-Transfer-Encoding", v, sizeof v);
    CHECK_STR(v, "");

    parse(text, &p);
    CHECK(strlen(p.boundary) > 30);
    CHECK_INT(p.nparts, 3);
    CHECK(p.closed);
    if (p.nparts != 3)
        goto out;
    /* the boundary is nowhere in the text of the parts */
    for (size_t i = 0; i < p.nparts; i++)
        CHECK(strstr(p.part[i], p.boundary) == NULL);

    /* part 1: for people */
    field(p.part[0], "Content-Type", v, sizeof v);
    CHECK_STR(v, "text/plain; charset=us-ascii");
    const char *human = part_body(p.part[0]);
    CHECK(strstr(human, "<r@far.test>: delivery failed permanently (status 5.1.1).") != NULL);
    CHECK(strstr(human, "The mail server mx.far.test said:") != NULL);
    CHECK(strstr(human, "550 5.1.1 <r@far.test>: no such user") != NULL);
    CHECK(strstr(human, "typing mistakes") != NULL);
    CHECK(strstr(human, "<q@far.test>") != NULL);

    /* part 2: for programs */
    field(p.part[1], "Content-Type", v, sizeof v);
    CHECK_STR(v, "message/delivery-status");
    const char *per_msg = blocks(p.part[1], 0);
    field(per_msg, "Reporting-MTA", v, sizeof v);
    CHECK_STR(v, "dns; mx.test");
    field(per_msg, "Original-Envelope-Id", v, sizeof v);
    CHECK_STR(v, "ENV=1");
    field(per_msg, "Arrival-Date", v, sizeof v);
    CHECK(v[0] != '\0');

    const char *b1 = blocks(p.part[1], 1);
    field(b1, "Original-Recipient", v, sizeof v);
    CHECK_STR(v, "rfc822;R+x@far.test");
    field(b1, "Final-Recipient", v, sizeof v);
    CHECK_STR(v, "rfc822; r@far.test");
    field(b1, "Action", v, sizeof v);
    CHECK_STR(v, "failed");
    field(b1, "Status", v, sizeof v);
    CHECK_STR(v, "5.1.1");
    field(b1, "Remote-MTA", v, sizeof v);
    CHECK_STR(v, "dns; mx.far.test");
    field(b1, "Diagnostic-Code", v, sizeof v);
    CHECK_STR(v, "smtp; 550 5.1.1 <r@far.test>: no such user");
    field(b1, "Last-Attempt-Date", v, sizeof v);
    CHECK(v[0] != '\0');

    const char *b2 = blocks(p.part[1], 2);
    field(b2, "Original-Recipient", v, sizeof v);
    CHECK_STR(v, "");
    field(b2, "Final-Recipient", v, sizeof v);
    CHECK_STR(v, "rfc822; q@far.test");
    field(b2, "Status", v, sizeof v);
    CHECK_STR(v, "5.7.1");
    field(b2, "Remote-MTA", v, sizeof v);
    CHECK_STR(v, "");
    /* the peer's CR LF became spaces: no field, no blank line, no boundary */
    field(b2, "Diagnostic-Code", v, sizeof v);
    CHECK_STR(v, "smtp; 550 policy Injected: yes --evil X: ? end");
    CHECK(strstr(text, "\r\nInjected:") == NULL);
    CHECK(strstr(text, "\r\n--evil") == NULL);
    CHECK(!strcmp(blocks(p.part[1], 3), ""));

    /* part 3: only the header section (RET=HDRS) */
    field(p.part[2], "Content-Type", v, sizeof v);
    CHECK_STR(v, "text/rfc822-headers");
    field(p.part[2], "Content-Transfer-Encoding", v, sizeof v);
    CHECK_STR(v, "");
    const char *h = part_body(p.part[2]);
    /* the fields with their CRLF, without the empty line */
    CHECK_INT(strlen(h), strlen(original_hdr) - 2);
    CHECK(!strncmp(h, original_hdr, strlen(original_hdr) - 2));
    CHECK(strstr(h, "Hello") == NULL);
out:
    free(text);
}

TEST(full_return_and_delay)
{
    int64_t body_id = store_original();
    struct dsn_rcpt r[1] = {
        { .addr = "r@far.test", .action = DSN_DELAYED, .status = "4.4.1",
          .remote_mta = "mx.far.test", .diagnostic = "connection refused",
          .last_attempt = 1700000000 },
    };
    struct dsn_info d = { .qid = "ABCDEFGHJKLMNPQR", .sender = "s@x.test", .envid = NULL,
                          .ret_full = 1, .received = 1699990000, .body_id = body_id,
                          .rcpts = r, .n = 1 };
    size_t len;
    char *text = make_dsn(&d, &len), v[1024], want[1024];
    struct parsed p;

    CHECK(lines_ok(text, len));
    field(text, "Subject", v, sizeof v);
    CHECK_STR(v, "Delayed Mail (still being retried)");
    /* the returned message has 8-bit text: labelled as such */
    field(text, "Content-Transfer-Encoding", v, sizeof v);
    CHECK_STR(v, "8bit");
    parse(text, &p);
    CHECK_INT(p.nparts, 3);
    CHECK(p.closed);
    if (p.nparts != 3)
        goto out;
    const char *human = part_body(p.part[0]);
    CHECK(strstr(human, "delivery is delayed (status 4.4.1)") != NULL);
    CHECK(strstr(human, "connection refused") != NULL);
    CHECK(strstr(human, "5 days after it was received") != NULL);
    CHECK(strstr(human, "do not need to send") != NULL);

    const char *per_msg = blocks(p.part[1], 0);
    field(per_msg, "Original-Envelope-Id", v, sizeof v);
    CHECK_STR(v, "");
    const char *b1 = blocks(p.part[1], 1);
    field(b1, "Action", v, sizeof v);
    CHECK_STR(v, "delayed");
    field(b1, "Status", v, sizeof v);
    CHECK_STR(v, "4.4.1");
    field(b1, "Diagnostic-Code", v, sizeof v);
    CHECK_STR(v, "smtp; connection refused");
    field(b1, "Will-Retry-Until", v, sizeof v);
    util_date(1699990000 + cf.queue_lifetime, want, sizeof want);
    CHECK_STR(v, want);

    field(p.part[2], "Content-Type", v, sizeof v);
    CHECK_STR(v, "message/rfc822");
    field(p.part[2], "Content-Transfer-Encoding", v, sizeof v);
    CHECK_STR(v, "8bit");
    const char *m = part_body(p.part[2]);
    CHECK_INT(strlen(m), strlen(original_hdr) + strlen(original_body));
    CHECK(!strncmp(m, original_hdr, strlen(original_hdr)));
    CHECK(!strcmp(m + strlen(original_hdr), original_body));
out:
    free(text);
}

TEST(success_and_long_diagnostic)
{
    int64_t body_id = store_original();
    char diag[6000];
    size_t k = 0;
    k += (size_t)snprintf(diag, sizeof diag, "smtp; 250 ");
    for (int i = 0; i < 300; i++)
        k += (size_t)snprintf(diag + k, sizeof diag - k, "word%d ", i);
    memset(diag + k, 'z', 2500);
    diag[k + 2500] = '\0';
    struct dsn_rcpt r[2] = {
        { .addr = "r@far.test", .action = DSN_DELIVERED, .status = "2.0.0",
          .remote_mta = "mx.far.test", .diagnostic = diag, .last_attempt = 1700000000 },
        { .addr = "t@far.test", .action = DSN_RELAYED, .status = "bogus", .last_attempt = 0 },
    };
    struct dsn_info d = { .qid = "ABCDEFGHJKLMNPQR", .sender = "s@x.test", .ret_full = 0,
                          .received = 1699990000, .body_id = body_id, .rcpts = r, .n = 2 };
    size_t len;
    char *text = make_dsn(&d, &len), *v = malloc(8192);
    struct parsed p;

    CHECK(lines_ok(text, len));
    field(text, "Subject", v, 8192);
    CHECK_STR(v, "Successful Mail Delivery Report");
    parse(text, &p);
    CHECK_INT(p.nparts, 3);
    if (p.nparts == 3) {
        const char *b1 = blocks(p.part[1], 1);
        field(b1, "Action", v, 8192);
        CHECK_STR(v, "delivered");
        /* folded: unfolding gives the words back, the long word cut once */
        field(b1, "Diagnostic-Code", v, 8192);
        CHECK(!strncmp(v, "smtp; 250 word0 word1 word2", 27));
        CHECK(strstr(v, "word299 zzzz") != NULL);
        const char *b2 = blocks(p.part[1], 2);
        field(b2, "Action", v, 8192);
        CHECK_STR(v, "relayed");
        field(b2, "Status", v, 8192);
        CHECK_STR(v, "2.0.0");          /* an invalid status is replaced */
        field(b2, "Last-Attempt-Date", v, 8192);
        CHECK_STR(v, "");
        /* folded lines of the diagnostic stay short where they can */
        const char *f = strstr(b1, "Diagnostic-Code:");
        const char *e = strstr(f, "zzzz");
        for (const char *q = f, *nl; (nl = strstr(q, "\r\n")) && nl < e; q = nl + 2)
            CHECK(nl - q <= 78);
    }
    free(v);
    free(text);
}

/* The empty line that ends the header section falls on every position
 * around the reader's buffer size: the returned section is still exact. */
TEST(header_section_across_reads)
{
    for (size_t hlen = 4090; hlen <= 4100; hlen++) {
        char *hdr = malloc(hlen + 64);
        struct store_body *b;
        size_t k = (size_t)snprintf(hdr, hlen + 64, "Subject: x\r\nX-Fill: ");
        while (k < hlen - 2)
            hdr[k++] = 'f';
        memcpy(hdr + k, "\r\n", 3);               /* hlen bytes of fields */
        CHECK(!store_begin());
        b = store_body_new();
        CHECK(!store_body_write(b, hdr, hlen));
        CHECK(!store_body_write(b, "\r\nbody\r\n", 8));
        CHECK(!store_body_finish(b));
        b->linked = 1;
        int64_t id = b->id;
        CHECK(!store_commit());
        store_body_free(b);

        struct dsn_rcpt r = { .addr = "r@far.test", .action = DSN_FAILED, .status = "5.0.0" };
        struct dsn_info d = { .qid = "Q", .sender = "s@x.test", .body_id = id, .rcpts = &r, .n = 1 };
        size_t len;
        char *text = make_dsn(&d, &len);
        struct parsed p;
        parse(text, &p);
        CHECK_INT(p.nparts, 3);
        if (p.nparts == 3) {
            const char *h = part_body(p.part[2]);
            CHECK_INT(strlen(h), hlen);
            CHECK(!strncmp(h, hdr, hlen));
        }
        free(text);
        free(hdr);
    }
}

int main(void)
{
    char path[256], err[256];

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/t.db", dir);
    conf_load(NULL, &cf, err, sizeof err);
    free(cf.hostname);
    cf.hostname = strdup("mx.test");
    conf = &cf;
    if (store_open(path, STORE_TOOL, err, sizeof err)) {
        printf("FAIL store_open: %s\n", err);
        return 1;
    }
    RUN(failure_report_headers_only);
    RUN(full_return_and_delay);
    RUN(success_and_long_diagnostic);
    RUN(header_section_across_reads);
    store_close();
    conf_free(&cf);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        return 1;
    return unit_done();
}
