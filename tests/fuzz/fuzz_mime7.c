/*
 * fuzz_mime7.c: the 8-bit to 7-bit converter (mime7.c).
 *
 * The first byte chooses whether the rest is first normalised the way
 * stored bodies are (CRLF line ends, as mime_raw_feed leaves them) and
 * the next two where it is split in two feeds.  Checked: when conversion
 * succeeds, every output byte is 7-bit; when moreover every input line
 * fits the 998-octet limit, so does every output line (a peer without
 * 8BITMIME may cut longer ones); and the result does not depend on the
 * split.
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

struct out {
    unsigned char *p;
    size_t len, cap;
};

static int fuzz_emit(void *arg, const void *buf, size_t n)
{
    struct out *o = arg;
    if (o->len + n > o->cap) {
        o->cap = (o->len + n) * 2 + 16;
        o->p = realloc(o->p, o->cap);
        if (!o->p)
            abort();
    }
    memcpy(o->p + o->len, buf, n);
    o->len += n;
    return 0;
}

static int fuzz_convert(const unsigned char *in, size_t n, size_t split, struct out *o)
{
    struct mime7 *m = mime7_new();
    int rc;

    if (!m)
        abort();
    rc = mime7_feed(m, in, split, fuzz_emit, o);
    if (!rc)
        rc = mime7_feed(m, in + split, n - split, fuzz_emit, o);
    if (!rc)
        rc = mime7_finish(m, fuzz_emit, o);
    mime7_free(m);
    return rc;
}

/* Longest line (octets before the LF, CR not counted). */
static size_t fuzz_longest_line(const unsigned char *p, size_t n)
{
    size_t best = 0, cur = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            if (cur && p[i - 1] == '\r')
                cur--;
            if (cur > best)
                best = cur;
            cur = 0;
        } else {
            cur++;
        }
    }
    if (cur && n && p[n - 1] == '\r')
        cur--;
    return cur > best ? cur : best;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MN_UNUSED(argc);
    MN_UNUSED(argv);
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct out norm = { 0 }, a = { 0 }, b = { 0 };
    const unsigned char *in = data + 3;
    size_t n, split;
    int rc_a, rc_b;

    if (size < 3)
        return 0;
    n = size - 3;
    if (data[0] & 1) {
        struct mime_data d;
        mime_data_init(&d);
        mime_raw_feed(&d, in, n, fuzz_emit, &norm);
        mime_raw_finish(&d, fuzz_emit, &norm);
        in = norm.p ? norm.p : in;
        n = norm.len;
    }
    split = ((size_t)data[1] << 8 | data[2]) % (n + 1);

    rc_a = fuzz_convert(in, n, n, &a);
    rc_b = fuzz_convert(in, n, split, &b);
    if (rc_a != rc_b)
        abort();
    if (rc_a == 0) {
        if (a.len != b.len || (a.len && memcmp(a.p, b.p, a.len)))
            abort();
        for (size_t i = 0; i < a.len; i++)
            if (a.p[i] >= 0x80)
                abort();
        if (fuzz_longest_line(in, n) <= 998 && fuzz_longest_line(a.p, a.len) > 998)
            abort();
    }
    free(norm.p);
    free(a.p);
    free(b.p);
    return 0;
}
