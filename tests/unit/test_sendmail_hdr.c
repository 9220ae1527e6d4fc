/* Unit tests for the input side of cli_sendmail.c: header fields, address
 * lists, line-end normalisation, the "." line, -t and Bcc. */
#include "../../mailnode.c"
#include "unit.h"

#include <string.h>
#include <unistd.h>

static struct conf test_conf;

/* Collects what sendmail_addr_list finds, joined with '|'. */
static char got[2048];

static int collect(void *arg, const char *addr)
{
    (void)arg;
    if (got[0])
        strcat(got, "|");
    strcat(got, addr);
    return 0;
}

static const char *list(const char *s)
{
    got[0] = '\0';
    if (sendmail_addr_list(s, strlen(s), collect, NULL))
        return "ERROR";
    return got;
}

/* Runs the input side (header section, its checks, body) on the given
 * bytes; the result is kept for
 * inspection and freed by the next call. */
static struct sendmail *M;
static int RC;

static struct sendmail *feed(const void *data, size_t len, int opt_t, int ignore_dots)
{
    FILE *f = tmpfile();
    int fd;

    if (M)
        sendmail_free(M);
    fwrite(data, 1, len, f);
    fflush(f);
    fd = dup(fileno(f));
    fclose(f);
    lseek(fd, 0, SEEK_SET);
    M = sendmail_new(fd);
    M->opt_t = opt_t;
    M->ignore_dots = ignore_dots;
    RC = sendmail_read(M);
    if (!RC)
        RC = sendmail_read_body(M);
    close(fd);
    M->fd = -1;
    return M;
}

static struct sendmail *feeds(const char *s, int opt_t, int ignore_dots)
{
    return feed(s, strlen(s), opt_t, ignore_dots);
}

/* The kept header fields, as they will be stored. */
static const char *header(void)
{
    static char buf[8192];
    size_t o = 0;
    for (size_t i = 0; i < M->nf; i++) {
        if (M->f[i].drop)
            continue;
        memcpy(buf + o, M->hdr + M->f[i].off, M->f[i].len);
        o += M->f[i].len;
    }
    buf[o] = '\0';
    return buf;
}

static const char *body(void)
{
    static char buf[8192];
    memcpy(buf, M->sp, M->splen);
    buf[M->splen] = '\0';
    return buf;
}

static const char *rcpts(void)
{
    got[0] = '\0';
    for (size_t i = 0; i < M->nrcpt; i++) {
        if (i)
            strcat(got, "|");
        strcat(got, M->rcpt[i]);
    }
    return got;
}

TEST(hdr_name)
{
    CHECK_INT(sendmail_hdr_name("Subject: x", 10), 7);
    CHECK_INT(sendmail_hdr_name("Subject:", 8), 7);
    CHECK_INT(sendmail_hdr_name("Subject :x", 10), 7);
    CHECK_INT(sendmail_hdr_name("X-A.b_c: x", 10), 7);
    CHECK_INT(sendmail_hdr_name(": x", 3), -1);
    CHECK_INT(sendmail_hdr_name("Subject x", 9), -1);
    CHECK_INT(sendmail_hdr_name("Sub ject: x", 11), -1);
    CHECK_INT(sendmail_hdr_name("hello world", 11), -1);
    CHECK_INT(sendmail_hdr_name("Subject", 7), -1);
    CHECK_INT(sendmail_hdr_name("Sub\x80ject: x", 11), -1);
    /* The length is what counts, not a NUL. */
    CHECK_INT(sendmail_hdr_name("To: x", 2), -1);
}

TEST(addr_list)
{
    CHECK_STR(list("a@b.example"), "a@b.example");
    CHECK_STR(list("a@b.example, c@d.example"), "a@b.example|c@d.example");
    CHECK_STR(list("Alice <alice@x.example>"), "alice@x.example");
    CHECK_STR(list("\"Doe, John\" <john@x.example>, jane@x.example"),
              "john@x.example|jane@x.example");
    CHECK_STR(list("a@x.example (Alice, the <first>)"), "a@x.example");
    CHECK_STR(list("(comment (nested)) a@x.example"), "a@x.example");
    CHECK_STR(list("friends: x@y.example, Zed <z@y.example>;, w@v.example"),
              "x@y.example|z@y.example|w@v.example");
    CHECK_STR(list("undisclosed-recipients:;"), "");
    CHECK_STR(list(""), "");
    CHECK_STR(list(" , ,"), "");
    /* Folded over lines. */
    CHECK_STR(list(" a@x.example,\r\n\tb@x.example\r\n"), "a@x.example|b@x.example");
    CHECK_STR(list("Long Name\r\n <a@x.example>"), "a@x.example");
    /* Quoted local parts keep their quotes (and their commas). */
    CHECK_STR(list("\"a,b\"@x.example"), "\"a,b\"@x.example");
    CHECK_STR(list("<\"a b\"@x.example>"), "\"a b\"@x.example");
    CHECK_STR(list("\"q\\\"x\" <a@x.example>"), "a@x.example");
    /* Words without brackets stay apart, so the parse of the address fails
     * instead of gluing them into a different one. */
    CHECK_STR(list("John Smith john@x.example"), "John Smith john@x.example");
    /* Unqualified names pass through (the caller adds the domain). */
    CHECK_STR(list("root, bob"), "root|bob");
    /* A source route stays inside the brackets. */
    CHECK_STR(list("<@r.example:a@x.example>"), "@r.example:a@x.example");
    /* Unbalanced. */
    CHECK_STR(list("\"open@x.example"), "ERROR");
    CHECK_STR(list("(open a@x.example"), "ERROR");
    CHECK_STR(list("Name <a@x.example"), "ERROR");
    /* Absurdly long. */
    {
        char buf[2000];
        memset(buf, 'a', sizeof buf - 1);
        buf[sizeof buf - 1] = '\0';
        CHECK_STR(list(buf), "ERROR");
    }
}

TEST(qualify)
{
    struct addr a;
    CHECK_INT(sendmail_has_domain("a@b"), 1);
    CHECK_INT(sendmail_has_domain("a"), 0);
    CHECK_INT(sendmail_has_domain("\"a@b\""), 0);
    CHECK_INT(sendmail_has_domain("\"a\\\"@b\""), 0);
    CHECK_INT(sendmail_qualify("bob", "example.test", &a), 0);
    CHECK_STR(a.full, "bob@example.test");
    CHECK_INT(sendmail_qualify("<bob@Other.Example>", "example.test", &a), 0);
    CHECK_STR(a.full, "bob@other.example");
    CHECK_INT(sendmail_qualify("\"a b\"", "example.test", &a), 0);
    CHECK_STR(a.full, "\"a b\"@example.test");
    CHECK_INT(sendmail_qualify("a b", "example.test", &a), ADDR_ESYNTAX);
    CHECK_INT(sendmail_qualify("a@", "example.test", &a), ADDR_ESYNTAX);
    CHECK_INT(sendmail_qualify("", "example.test", &a), ADDR_ESYNTAX);
}

TEST(read_simple)
{
    feeds("Subject: hi\nTo: a@x.example\n\nline 1\nline 2\n", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_STR(header(), "Subject: hi\r\nTo: a@x.example\r\n");
    CHECK_STR(body(), "line 1\r\nline 2\r\n");
    CHECK_INT(M->body_size, 16);
    CHECK_INT(M->have_from + M->have_date + M->have_msgid, 0);
    CHECK_INT(M->nrcpt, 0);             /* no -t */
}

TEST(line_ends)
{
    /* CRLF, LF and bare CR all become CRLF; a last line without a line
     * end gets one. */
    feeds("A: 1\r\nB: 2\rC: 3\n\r\nx\ry\r\nz\n\nw", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_STR(header(), "A: 1\r\nB: 2\r\nC: 3\r\n");
    CHECK_STR(body(), "x\r\ny\r\nz\r\n\r\nw\r\n");
    /* A CR at the very end. */
    feeds("A: 1\n\nx\r", 0, 0);
    CHECK_STR(body(), "x\r\n");
    /* CR LF split across reads is one line end (the reader works on any
     * split; here the header/body boundary is the split). */
    feeds("A: 1\r\n\r\n\r\n", 0, 0);
    CHECK_STR(body(), "\r\n");
}

TEST(folding)
{
    feeds("Subject: a\n  folded\n\tagain\nTo: x@y.example\n\nb\n", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_INT(M->nf, 2);
    CHECK_STR(header(), "Subject: a\r\n  folded\r\n\tagain\r\nTo: x@y.example\r\n");
}

TEST(dot_line)
{
    /* Without -i a line with a single dot ends the input. */
    feeds("S: 1\n\nbefore\n.\nafter\n", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_STR(body(), "before\r\n");
    feeds("S: 1\n\nbefore\r\n.\r\nafter\r\n", 0, 0);
    CHECK_STR(body(), "before\r\n");
    /* ...also in the header section, and as the last unterminated line. */
    feeds("S: 1\n.\nT: 2\n", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_STR(header(), "S: 1\r\n");
    CHECK_STR(body(), "");
    feeds("S: 1\n\nx\n.", 0, 0);
    CHECK_STR(body(), "x\r\n");
    /* Other lines starting with a dot are kept as they are (no SMTP
     * dot-stuffing here). */
    feeds("S: 1\n\n..\n.x\n. \n", 0, 0);
    CHECK_STR(body(), "..\r\n.x\r\n. \r\n");
    /* With -i the dot is data. */
    feeds("S: 1\n\nbefore\n.\nafter\n", 0, 1);
    CHECK_STR(body(), "before\r\n.\r\nafter\r\n");
    feeds("S: 1\n.\nT: 2\n", 0, 1);
    CHECK_INT(RC, EX_DATAERR);          /* "." is no header field */
}

TEST(no_header)
{
    /* Empty input, or a body without header fields. */
    feeds("", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_INT(M->nf, 0);
    CHECK_STR(body(), "");
    feeds("\nonly body\n", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_INT(M->nf, 0);
    CHECK_STR(body(), "only body\r\n");
    /* Header fields only, no empty line. */
    feeds("Subject: x\n", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_STR(header(), "Subject: x\r\n");
    CHECK_STR(body(), "");
    /* A Unix "From " line in front is dropped. */
    feeds("From someone Mon Jan  1 00:00:00 2024\nSubject: x\n\nb\n", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_STR(header(), "Subject: x\r\n");
}

TEST(malformed)
{
    feeds("hello world\n\nbody\n", 0, 0);
    CHECK_INT(RC, EX_DATAERR);
    feeds("Subject: x\ngarbage line\n\nbody\n", 0, 0);
    CHECK_INT(RC, EX_DATAERR);
    feeds(" continuation first\n\nbody\n", 0, 0);
    CHECK_INT(RC, EX_DATAERR);
    feeds("Subject x\n\n", 0, 0);
    CHECK_INT(RC, EX_DATAERR);
    feeds(": x\n\n", 0, 0);
    CHECK_INT(RC, EX_DATAERR);
    /* NUL bytes, in the header and in the body. */
    feed("Subject: a\0b\n\nx\n", 16, 0, 0);
    CHECK_INT(RC, EX_DATAERR);
    feed("Subject: ab\n\nx\0y\n", 17, 0, 0);
    CHECK_INT(RC, EX_DATAERR);
}

TEST(header_limit)
{
    static char big[300 * 1024];
    size_t o = 0;
    while (o < 260 * 1024) {
        memcpy(big + o, "X-Filler: 0123456789012345678901234567890123456789\n", 51);
        o += 51;
    }
    memcpy(big + o, "\nbody\n", 6);
    feed(big, o + 6, 0, 0);
    CHECK_INT(RC, EX_DATAERR);
    /* One long line is no better. */
    memcpy(big, "Subject: ", 9);
    memset(big + 9, 'x', 270 * 1024);
    feed(big, 9 + 270 * 1024, 0, 0);
    CHECK_INT(RC, EX_DATAERR);
    /* A big body is fine and spills to a file. */
    o = 0;
    memcpy(big, "Subject: big\n\n", 14);
    o = 14;
    while (o < sizeof big - 100) {
        memcpy(big + o, "0123456789012345678901234567890123456789\n", 41);
        o += 41;
    }
    feed(big, o, 0, 0);
    CHECK_INT(RC, 0);
    CHECK(M->spfd >= 0);
    CHECK_INT(M->body_size, (int64_t)(o - 14) / 41 * 42);
}

TEST(eightbit)
{
    feeds("Subject: plain\n\nplain\n", 0, 0);
    CHECK_INT(M->eightbit, 0);
    feeds("Subject: caf\xc3\xa9\n\nplain\n", 0, 0);
    CHECK_INT(M->eightbit, 1);
    feeds("Subject: plain\n\ncaf\xc3\xa9\n", 0, 0);
    CHECK_INT(M->eightbit, 1);
}

TEST(scan_t_and_bcc)
{
    feeds("From: me@x.example\n"
          "To: Alice <alice@example.test>, bob\n"
          "Cc: carol@remote.example,\n alice@example.test\n"
          "Bcc: secret@remote.example\n"
          "Resent-Bcc: other@remote.example\n"
          "Date: Mon, 1 Jan 2024 00:00:00 +0000\n"
          "Message-ID: <x@y>\n"
          "\nbody\n", 1, 0);
    CHECK_INT(RC, 0);
    CHECK_STR(rcpts(), "alice@example.test|bob@example.test|carol@remote.example|"
                       "secret@remote.example");
    CHECK_INT(M->have_from, 1);
    CHECK_INT(M->have_date, 1);
    CHECK_INT(M->have_msgid, 1);
    CHECK(!strstr(header(), "Bcc"));
    CHECK(!strstr(header(), "secret"));
    CHECK(strstr(header(), "Cc: carol@remote.example,\r\n alice@example.test\r\n") != NULL);

    /* Without -t the Bcc field still goes, but gives no recipients. */
    feeds("To: a@x.example\nbcc: b@x.example\n\nbody\n", 0, 0);
    CHECK_INT(RC, 0);
    CHECK_INT(M->nrcpt, 0);
    CHECK_STR(header(), "To: a@x.example\r\n");

    /* A bad address in a field is an error with -t. */
    feeds("To: a b c\n\nbody\n", 1, 0);
    CHECK_INT(RC, EX_DATAERR);
    feeds("To: \"unbalanced\n\nbody\n", 1, 0);
    CHECK_INT(RC, EX_DATAERR);
    /* Group syntax with nobody in it. */
    feeds("To: undisclosed-recipients:;\n\nbody\n", 1, 0);
    CHECK_INT(RC, 0);
    CHECK_INT(M->nrcpt, 0);
}

TEST(received_limit)
{
    char buf[8192];
    size_t o = 0;
    for (int i = 0; i < 100; i++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "Received: from h%d\n", i);
    memcpy(buf + o, "\nx\n", 3);
    feed(buf, o + 3, 0, 0);
    CHECK_INT(RC, EX_DATAERR);
    CHECK_INT(M->received, 100);
    feed(buf + strlen("Received: from h0\n"), o + 3 - strlen("Received: from h0\n"), 0, 0);
    CHECK_INT(RC, 0);
    CHECK_INT(M->received, 99);
}

TEST(added_fields)
{
    feeds("Subject: x\n\nb\n", 0, 0);
    CHECK_INT(RC, 0);
    util_strlcpy(M->qid, "ABCDEFGHJKLMNPQR", sizeof M->qid);
    util_strlcpy(M->login, "joe@node.test", sizeof M->login);
    util_strlcpy(M->sender, "joe@node.test", sizeof M->sender);
    M->fullname = "Joe \"J\" \r\nBcc: evil@x.example";
    CHECK_INT(sendmail_added_fields(M), 0);
    CHECK(!strncmp(M->prefix, "Received: by node.test (mailnode) id ABCDEFGHJKLMNPQR (uid ", 59));
    CHECK(strstr(M->prefix, ");\r\n\t") != NULL);
    CHECK(!strncmp(M->suffix, "Message-ID: <ABCDEFGHJKLMNPQR.", 30));
    CHECK(strstr(M->suffix, "@node.test>\r\nDate: ") != NULL);
    CHECK(strstr(M->suffix, "\r\nFrom: \"Joe \\\"J\\\" Bcc: evil@x.example\" <joe@node.test>\r\n") != NULL);
    /* Every added line ends in CRLF and no line starts a new field
     * except the ones meant. */
    CHECK_INT((int)(strstr(M->suffix, "\r\nBcc") == NULL), 1);
}

int main(void)
{
    char err[256], path[] = "/tmp/mailnode-test-conf.XXXXXX";
    int fd = mkstemp(path);
    const char *text = "hostname = node.test\nlocal_domains = example.test, other.test\n";
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        printf("FAIL setup: cannot write %s\n", path);
        return 1;
    }
    close(fd);
    if (conf_load(path, &test_conf, err, sizeof err)) {
        printf("FAIL setup: %s\n", err);
        unlink(path);
        return 1;
    }
    unlink(path);
    conf = &test_conf;

    RUN(hdr_name);
    RUN(addr_list);
    RUN(qualify);
    RUN(read_simple);
    RUN(line_ends);
    RUN(folding);
    RUN(dot_line);
    RUN(no_header);
    RUN(malformed);
    RUN(header_limit);
    RUN(eightbit);
    RUN(scan_t_and_bcc);
    RUN(received_limit);
    RUN(added_fields);
    if (M)
        sendmail_free(M);
    conf_free(&test_conf);
    return unit_done();
}
