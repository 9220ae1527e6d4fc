/* Unit tests of the 8-bit to 7-bit converter (mime7.c): plain and MIME
 * messages, nested multiparts, encoded parts left alone, what must be
 * refused, line limits, decoding the output back to the original bytes,
 * and the same output for any split of the input. */
#include "../../mailnode.c"
#include "unit.h"

#include <stdlib.h>

struct buf {
    unsigned char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static int sink(void *arg, const void *p, size_t n)
{
    buf_add(arg, p, n);
    return 0;
}

/* Converts in[0..n) fed in pieces of step bytes (0: all at once). */
static int convert(const unsigned char *in, size_t n, size_t step, struct buf *out)
{
    struct mime7 *m = mime7_new();
    int rc = 0;
    out->len = 0;
    buf_add(out, "", 0);
    if (!step)
        step = n ? n : 1;
    for (size_t off = 0; off < n && !rc; off += step)
        rc = mime7_feed(m, in + off, n - off < step ? n - off : step, sink, out);
    if (!rc)
        rc = mime7_finish(m, sink, out);
    mime7_free(m);
    return rc;
}

/* Two pieces split at pos. */
static int convert_split(const unsigned char *in, size_t n, size_t pos, struct buf *out)
{
    struct mime7 *m = mime7_new();
    out->len = 0;
    buf_add(out, "", 0);
    int rc = mime7_feed(m, in, pos, sink, out);
    if (!rc)
        rc = mime7_feed(m, in + pos, n - pos, sink, out);
    if (!rc)
        rc = mime7_finish(m, sink, out);
    mime7_free(m);
    return rc;
}

/* Every byte 7-bit, every line CRLF-terminated and at most 998 octets. */
static int is_7bit_text(const struct buf *b)
{
    size_t line = 0;
    for (size_t i = 0; i < b->len; i++) {
        unsigned char c = b->p[i];
        if (c >= 0x80 || c == 0)
            return 0;
        if (c == '\r') {
            if (i + 1 >= b->len || b->p[i + 1] != '\n')
                return 0;
            continue;
        }
        if (c == '\n') {
            if (!i || b->p[i - 1] != '\r')
                return 0;
            line = 0;
            continue;
        }
        if (++line > 998)
            return 0;
    }
    return b->len == 0 || (b->len >= 2 && b->p[b->len - 1] == '\n');
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* RFC 2045 6.7 decoding: soft breaks vanish, "=XX" is a byte. */
static void qp_decode(const unsigned char *p, size_t n, struct buf *out)
{
    out->len = 0;
    buf_add(out, "", 0);
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '=' && i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n') {
            i += 2;
        } else if (p[i] == '=' && i + 2 < n && hexval(p[i + 1]) >= 0 && hexval(p[i + 2]) >= 0) {
            unsigned char c = (unsigned char)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
            buf_add(out, &c, 1);
            i += 2;
        } else {
            buf_add(out, p + i, 1);
        }
    }
}

static void b64_decode(const unsigned char *p, size_t n, struct buf *out)
{
    static const char dig[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned v = 0;
    int bits = 0;
    out->len = 0;
    buf_add(out, "", 0);
    for (size_t i = 0; i < n; i++) {
        const char *d = p[i] ? strchr(dig, p[i]) : NULL;
        if (!d)
            continue;
        v = v << 6 | (unsigned)(d - dig);
        bits += 6;
        if (bits >= 8) {
            unsigned char c = (unsigned char)(v >> (bits - 8));
            buf_add(out, &c, 1);
            bits -= 8;
        }
    }
}

static const unsigned char *find(const unsigned char *h, size_t hn, const char *needle)
{
    size_t nn = strlen(needle);
    for (size_t i = 0; i + nn <= hn; i++)
        if (!memcmp(h + i, needle, nn))
            return h + i;
    return NULL;
}

/* The body of the part whose header section holds marker, up to the
 * next "CRLF--boundary" (or the end), and its transfer encoding. */
static int part_body(const struct buf *b, const char *marker, const char *boundary,
                     const unsigned char **body, size_t *len, char *cte, size_t ctelen)
{
    char delim[256];
    const unsigned char *m = find(b->p, b->len, marker), *hdr_end, *end, *c;
    if (!m)
        return -1;
    hdr_end = find(m, b->len - (size_t)(m - b->p), "\r\n\r\n");
    if (!hdr_end)
        return -1;
    /* the marker is the first field of the part's header section */
    const unsigned char *hs = m;
    cte[0] = '\0';
    c = find(hs, (size_t)(hdr_end - hs), "Content-Transfer-Encoding: ");
    if (c) {
        size_t i = 0;
        c += strlen("Content-Transfer-Encoding: ");
        while (c[i] != '\r' && i + 1 < ctelen) {
            cte[i] = (char)c[i];
            i++;
        }
        cte[i] = '\0';
    }
    *body = hdr_end + 4;
    snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    end = boundary ? find(*body, b->len - (size_t)(*body - b->p), delim) : NULL;
    *len = end ? (size_t)(end - *body) : b->len - (size_t)(*body - b->p);
    return 0;
}

/* The decoded body of a part in out equals the raw body of the same part
 * in in, and its encoding is the one expected. */
static int part_roundtrip(const struct buf *in, const struct buf *out, const char *marker,
                          const char *boundary, const char *want_cte)
{
    const unsigned char *ib, *ob;
    size_t il, ol;
    char icte[64], octe[64];
    struct buf dec = { 0 };
    int ok;

    if (part_body(in, marker, boundary, &ib, &il, icte, sizeof icte) ||
        part_body(out, marker, boundary, &ob, &ol, octe, sizeof octe))
        return 0;
    if (strcmp(octe, want_cte)) {
        printf("#   %s: encoding \"%s\", want \"%s\"\n", marker, octe, want_cte);
        return 0;
    }
    if (!strcmp(octe, "quoted-printable") && strcmp(icte, "quoted-printable"))
        qp_decode(ob, ol, &dec);
    else if (!strcmp(octe, "base64") && strcmp(icte, "base64"))
        b64_decode(ob, ol, &dec);
    else
        buf_add(&dec, ob, ol);
    ok = dec.len == il && !memcmp(dec.p, ib, il);
    if (!ok)
        printf("#   %s: decoded %zu bytes, want %zu\n", marker, dec.len, il);
    free(dec.p);
    return ok;
}

static size_t count(const struct buf *b, const char *needle)
{
    size_t n = 0, nn = strlen(needle);
    for (size_t i = 0; i + nn <= b->len; i++)
        if (!memcmp(b->p + i, needle, nn))
            n++;
    return n;
}

/* Same output for 1-byte pieces, 7-byte pieces and the whole. */
static int split_invariant(const struct buf *in, const struct buf *whole)
{
    static const size_t steps[] = { 1, 2, 7, 999, 1000, 1001 };
    struct buf o = { 0 };
    int ok = 1;
    for (size_t i = 0; i < MN_NELEM(steps); i++) {
        if (convert(in->p, in->len, steps[i], &o) || o.len != whole->len ||
            memcmp(o.p, whole->p, o.len))
            ok = 0;
    }
    free(o.p);
    return ok;
}

TEST(plain_8bit_message)
{
    struct buf in = { 0 }, out = { 0 }, dec = { 0 };
    buf_str(&in, "From: a@x.test\r\nTo: b@y.test\r\nSubject: hello\r\n\r\n");
    size_t body_off = in.len;
    buf_str(&in, "Gr\xc3\xbc\xc3\x9f" "e = equal, trailing space \r\n");
    buf_str(&in, "tab at end\t\r\n\r\n.\r\n");
    for (int i = 0; i < 300; i++)
        buf_str(&in, i % 10 ? "x" : "\xe9");
    buf_str(&in, "\r\nlast line\r\n");

    CHECK_INT(convert(in.p, in.len, 0, &out), 0);
    CHECK(is_7bit_text(&out));
    CHECK(find(out.p, out.len, "From: a@x.test\r\nTo: b@y.test\r\nSubject: hello\r\n") == out.p);
    CHECK(find(out.p, out.len, "\r\nMIME-Version: 1.0\r\n") != NULL);
    CHECK(find(out.p, out.len, "\r\nContent-Type: text/plain; charset=\"unknown-8bit\"\r\n") != NULL);
    CHECK(find(out.p, out.len, "\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n") != NULL);
    const unsigned char *b = find(out.p, out.len, "\r\n\r\n") + 4;
    qp_decode(b, out.len - (size_t)(b - out.p), &dec);
    CHECK_INT(dec.len, in.len - body_off);
    CHECK(!memcmp(dec.p, in.p + body_off, in.len - body_off));
    CHECK(find(out.p, out.len, "space=20\r\n") != NULL);
    CHECK(find(out.p, out.len, "end=09\r\n") != NULL);
    CHECK(find(out.p, out.len, "=3D equal") != NULL);
    CHECK(split_invariant(&in, &out));
    free(in.p);
    free(out.p);
    free(dec.p);
}

TEST(plain_message_without_final_newline)
{
    struct buf in = { 0 }, out = { 0 }, dec = { 0 };
    buf_str(&in, "Subject: x\r\n\r\ncaf\xc3\xa9 ");
    CHECK_INT(convert(in.p, in.len, 0, &out), 0);
    CHECK(is_7bit_text(&out));
    const unsigned char *b = find(out.p, out.len, "\r\n\r\n") + 4;
    qp_decode(b, out.len - (size_t)(b - out.p), &dec);
    CHECK_INT(dec.len, 6);
    CHECK(!memcmp(dec.p, "caf\xc3\xa9 ", 6));
    CHECK(split_invariant(&in, &out));
    free(in.p);
    free(out.p);
    free(dec.p);
}

static void build_mixed(struct buf *in)
{
    buf_str(in, "From: a@x.test\r\nMIME-Version: 1.0\r\n"
                "Content-Type: multipart/mixed;\r\n\tboundary=\"=_outer (1)\" ; x=y\r\n"
                "Content-Transfer-Encoding: 8bit\r\nSubject: parts\r\n\r\n"
                "This is the preamble, caf\xc3\xa9.\r\n"
                "--=_outer (1)\r\n"
                "X-Part: 1\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n"
                "Gr\xc3\xbc\xc3\x9f" "e aus K\xc3\xb6ln\r\n"
                "--not-the-boundary\r\n"
                "\r\n"
                "--=_outer (1)\r\n"
                "X-Part: 2\r\nContent-Type: application/octet-stream\r\n\r\n");
    for (int i = 0; i < 2000; i++) {
        unsigned char c = (unsigned char)(i * 37 + 11);
        if (c == '\r' || c == '\n')
            c = 0xff;
        buf_add(in, &c, 1);
        if (i % 300 == 299)
            buf_str(in, "\r\n");
    }
    buf_str(in, "\r\n--=_outer (1)\r\n"
                "X-Part: 3\r\nContent-Type: application/pdf\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n"
                "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0\r\n"
                "ZURlY29kZT4+CnN0cmVhbQp4nDPQM1Qo5ypUMFAwALJMLU31jBQsTAz1LBSKUrnCtRTyuAIB\r\n"
                "--=_outer (1)--\r\n"
                "epilogue \xff\r\n");
}

TEST(multipart_mixed)
{
    struct buf in = { 0 }, out = { 0 };
    build_mixed(&in);
    CHECK_INT(convert(in.p, in.len, 0, &out), 0);
    CHECK(is_7bit_text(&out));
    /* the multipart itself is never encoded: its label becomes 7bit */
    CHECK(find(out.p, out.len, "Content-Transfer-Encoding: 7bit\r\n") != NULL);
    CHECK(find(out.p, out.len, "Content-Transfer-Encoding: 8bit") == NULL);
    CHECK(find(out.p, out.len, "\tboundary=\"=_outer (1)\" ; x=y\r\n") != NULL);
    CHECK_INT(count(&out, "\r\n--=_outer (1)\r\n"), 3);
    CHECK_INT(count(&out, "\r\n--=_outer (1)--\r\n"), 1);
    CHECK(find(out.p, out.len, "preamble, caf??.\r\n") != NULL);
    CHECK(part_roundtrip(&in, &out, "X-Part: 1", "=_outer (1)", "quoted-printable"));
    CHECK(part_roundtrip(&in, &out, "X-Part: 2", "=_outer (1)", "base64"));
    CHECK(part_roundtrip(&in, &out, "X-Part: 3", "=_outer (1)", "base64"));
    /* the part that was base64 already is the same, byte for byte */
    CHECK(find(out.p, out.len, "X-Part: 3\r\nContent-Type: application/pdf\r\n"
                               "Content-Transfer-Encoding: base64\r\n\r\n"
                               "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0\r\n"
                               "ZURlY29kZT4+CnN0cmVhbQp4nDPQM1Qo5ypUMFAwALJMLU31jBQsTAz1LBSKUrnCtRTyuAIB\r\n"
                               "--=_outer (1)--") != NULL);
    CHECK(split_invariant(&in, &out));
    free(in.p);
    free(out.p);
}

TEST(every_split_position)
{
    struct buf in = { 0 }, whole = { 0 }, o = { 0 };
    buf_str(&in, "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n"
                 "--b1\r\nX-Part: 1\r\nContent-Type: text/plain;\r\n charset=latin1\r\n\r\n"
                 "d\xe9j\xe0 vu =  \r\n--b1\r\nX-Part: 2\r\nContent-Type: image/x\r\n\r\n\x80\x81\r\n"
                 "--b1--\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &whole), 0);
    CHECK(is_7bit_text(&whole));
    CHECK(part_roundtrip(&in, &whole, "X-Part: 1", "b1", "quoted-printable"));
    CHECK(part_roundtrip(&in, &whole, "X-Part: 2", "b1", "base64"));
    for (size_t pos = 0; pos <= in.len; pos++) {
        int rc = convert_split(in.p, in.len, pos, &o);
        if (rc || o.len != whole.len || memcmp(o.p, whole.p, o.len)) {
            printf("#   split at %zu differs\n", pos);
            CHECK(0);
            break;
        }
    }
    free(in.p);
    free(whole.p);
    free(o.p);
}

TEST(nested_multipart_and_message)
{
    struct buf in = { 0 }, out = { 0 }, dec = { 0 };
    buf_str(&in, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"A\"\r\n\r\n"
                 "--A\r\nContent-Type: multipart/alternative; boundary=\"B\"\r\n\r\n"
                 "--B\r\nX-Part: 1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                 "\xe2\x82\xac 5\r\n"
                 "--B\r\nX-Part: 2\r\nContent-Type: text/html; charset=utf-8\r\n"
                 "Content-Transfer-Encoding: 8bit\r\n\r\n<p>\xe2\x82\xac 5</p>\r\n"
                 "--B--\r\n"
                 "--A\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                 "From: inner@x.test\r\nSubject: inner\r\n\r\n"
                 "X-Part: 3\r\n\xc3\xa5ngstr\xc3\xb6m\r\n"
                 "--A\r\nX-Part: 4\r\nContent-Type: message/delivery-status\r\n\r\n"
                 "Reporting-MTA: dns; \xc3\xa9.test\r\n"
                 "--A--\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), 0);
    CHECK(is_7bit_text(&out));
    CHECK(part_roundtrip(&in, &out, "X-Part: 1", "B", "quoted-printable"));
    CHECK(part_roundtrip(&in, &out, "X-Part: 2", "B", "quoted-printable"));
    CHECK(part_roundtrip(&in, &out, "X-Part: 4", "A", "quoted-printable"));
    /* message/rfc822: relabelled 7bit, the inner message converted */
    CHECK(find(out.p, out.len, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                               "From: inner@x.test\r\nSubject: inner\r\nMIME-Version: 1.0\r\n"
                               "Content-Type: text/plain; charset=\"unknown-8bit\"\r\n"
                               "Content-Transfer-Encoding: quoted-printable\r\n\r\n") != NULL);
    const unsigned char *ib = find(out.p, out.len, "Subject: inner\r\n");
    ib = find(ib, out.len - (size_t)(ib - out.p), "\r\n\r\n") + 4;
    const unsigned char *ie = find(ib, out.len - (size_t)(ib - out.p), "\r\n--A\r\n");
    CHECK(ie != NULL);
    if (ie) {
        qp_decode(ib, (size_t)(ie - ib), &dec);
        CHECK(dec.len == strlen("X-Part: 3\r\n\xc3\xa5ngstr\xc3\xb6m") &&
              !memcmp(dec.p, "X-Part: 3\r\n\xc3\xa5ngstr\xc3\xb6m", dec.len));
    }
    CHECK_INT(count(&out, "\r\n--B\r\n"), 2);
    CHECK_INT(count(&out, "--A\r\n"), 3);
    CHECK(split_invariant(&in, &out));
    free(in.p);
    free(out.p);
    free(dec.p);
}

TEST(digest_parts_are_messages)
{
    struct buf in = { 0 }, out = { 0 };
    buf_str(&in, "MIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=D\r\n\r\n"
                 "--D\r\n\r\nSubject: one\r\n\r\nbody \xe9\r\n--D--\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), 0);
    CHECK(is_7bit_text(&out));
    CHECK(find(out.p, out.len, "--D\r\n\r\nSubject: one\r\nMIME-Version: 1.0\r\n"
                               "Content-Type: text/plain; charset=\"unknown-8bit\"\r\n"
                               "Content-Transfer-Encoding: quoted-printable\r\n\r\nbody =E9\r\n--D--\r\n") != NULL);
    free(in.p);
    free(out.p);
}

TEST(refused)
{
    struct buf in = { 0 }, out = { 0 };
    /* 8-bit header text needs SMTPUTF8 */
    buf_str(&in, "Subject: caf\xc3\xa9\r\n\r\nbody\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), -1);
    CHECK_INT(convert(in.p, in.len, 1, &out), -1);
    /* ... also in a part's header section */
    in.len = 0;
    buf_str(&in, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                 "--b\r\nContent-Type: text/plain; name=\"\xe9.txt\"\r\n\r\nx\r\n--b--\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), -1);
    /* a part that says it is base64 but holds 8-bit bytes */
    in.len = 0;
    buf_str(&in, "MIME-Version: 1.0\r\nContent-Type: image/png\r\n"
                 "Content-Transfer-Encoding: base64\r\n\r\niVBO\xff\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), -1);
    /* a multipart without a boundary */
    in.len = 0;
    buf_str(&in, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n\xe9\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), -1);
    /* message/partial must be 7bit */
    in.len = 0;
    buf_str(&in, "MIME-Version: 1.0\r\nContent-Type: message/partial; id=x; number=1\r\n\r\n\xe9\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), -1);
    /* nesting beyond the limit */
    in.len = 0;
    buf_str(&in, "MIME-Version: 1.0\r\n");
    for (int i = 0; i < 30; i++) {
        char line[128];
        snprintf(line, sizeof line, "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i);
        buf_str(&in, line);
    }
    buf_str(&in, "\r\n\xe9\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), -1);
    /* but a few levels are fine */
    in.len = 0;
    buf_str(&in, "MIME-Version: 1.0\r\n");
    for (int i = 0; i < 5; i++) {
        char line[128];
        snprintf(line, sizeof line, "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i);
        buf_str(&in, line);
    }
    buf_str(&in, "\r\n\xe9\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), 0);
    CHECK(is_7bit_text(&out));
    free(in.p);
    free(out.p);
}

TEST(long_lines_and_boundaries)
{
    struct buf in = { 0 }, out = { 0 };
    buf_str(&in, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"--zz\"\r\n"
                 "X-Long: ");
    for (int i = 0; i < 1500; i++)
        buf_str(&in, "h");
    buf_str(&in, "\r\n\r\n");
    for (int i = 0; i < 999; i++)       /* a preamble line ended by a bare LF */
        buf_str(&in, "p");
    buf_str(&in, "\n----zz\r\nX-Part: 1\r\nContent-Type: text/plain\r\n\r\n");
    /* a 5000-byte line with "----zz" at every position modulo the QP line:
     * a soft break must never make an output line start a delimiter */
    for (int i = 0; i < 700; i++)
        buf_str(&in, i % 3 ? "----zz-" : "\xe9----zz");
    buf_str(&in, "\r\n");
    for (int i = 0; i < 3000; i++)
        buf_str(&in, "=");
    buf_str(&in, "\r\n----zz\r\nX-Part: 2\r\nContent-Type: application/x-thing\r\n\r\n");
    for (int i = 0; i < 4000; i++)
        buf_str(&in, i % 2 ? "\x80" : "a");
    buf_str(&in, "\r\n----zz--\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), 0);
    /* overlong lines are folded (header) or broken (preamble) */
    CHECK(is_7bit_text(&out));
    CHECK(find(out.p, out.len, "\r\n hhhh") != NULL);
    const unsigned char *after = find(out.p, out.len, "\r\n\r\n");
    struct buf rest = { 0 };
    buf_add(&rest, after + 4, out.len - (size_t)(after + 4 - out.p));
    after = find(rest.p, rest.len, "----zz\r\n");
    memmove(rest.p, after, rest.len - (size_t)(after - rest.p));
    rest.len -= (size_t)(after - rest.p);
    CHECK_INT(count(&out, "\r\n----zz"), 3);
    CHECK(part_roundtrip(&in, &out, "X-Part: 1", "--zz", "quoted-printable"));
    CHECK(part_roundtrip(&in, &out, "X-Part: 2", "--zz", "base64"));
    /* quoted-printable and base64 lines are at most 76 characters */
    size_t line = 0, maxline = 0;
    for (size_t i = 0; i < rest.len; i++) {
        if (rest.p[i] == '\n') {
            line = 0;
        } else if (rest.p[i] != '\r' && ++line > maxline) {
            maxline = line;
        }
    }
    CHECK(maxline <= 76);
    CHECK(split_invariant(&in, &out));
    free(in.p);
    free(out.p);
    free(rest.p);
}

TEST(encoded_parts_unchanged)
{
    struct buf in = { 0 }, out = { 0 };
    buf_str(&in, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n"
                 "--q\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                 "caf=C3=A9 =\r\nsoft   \r\n"
                 "--q\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xe9\r\n"
                 "--q--\r\n");
    CHECK_INT(convert(in.p, in.len, 0, &out), 0);
    CHECK(is_7bit_text(&out));
    CHECK(find(out.p, out.len, "--q\r\nContent-Type: text/plain; charset=utf-8\r\n"
                               "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                               "caf=C3=A9 =\r\nsoft   \r\n--q\r\n") != NULL);
    CHECK(find(out.p, out.len, "--q\r\nContent-Type: text/plain\r\n"
                               "Content-Transfer-Encoding: quoted-printable\r\n\r\n=E9\r\n--q--\r\n") != NULL);
    free(in.p);
    free(out.p);
}

int main(void)
{
    RUN(plain_8bit_message);
    RUN(plain_message_without_final_newline);
    RUN(multipart_mixed);
    RUN(every_split_position);
    RUN(nested_multipart_and_message);
    RUN(digest_parts_are_messages);
    RUN(refused);
    RUN(long_lines_and_boundaries);
    RUN(encoded_parts_unchanged);
    return unit_done();
}
