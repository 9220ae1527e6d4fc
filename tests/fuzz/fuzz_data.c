/*
 * fuzz_data.c: the SMTP DATA decoder and the BDAT normaliser (mime.c).
 *
 * The first two bytes choose where the rest of the input is split in two
 * feeds.  Checked: the decoder never consumes more than it was given;
 * its output has no bare CR or LF (every line end is CRLF, whatever the
 * client sent: that is the smuggling defence); the output, what was
 * consumed and where the end was found do not depend on the split; the
 * byte count it keeps is the byte count it emitted; and after the end
 * marker the decoder stops.
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
    if (n == 0)
        abort();                        /* an empty run is never emitted */
    if (o->len + n > o->cap) {
        o->cap = (o->len + n) * 2;
        o->p = realloc(o->p, o->cap);
        if (!o->p)
            abort();
    }
    memcpy(o->p + o->len, buf, n);
    o->len += n;
    return 0;
}

/* Every CR is followed by LF and every LF preceded by CR. */
static void fuzz_check_crlf(const struct out *o)
{
    for (size_t i = 0; i < o->len; i++) {
        if (o->p[i] == '\r' && (i + 1 >= o->len || o->p[i + 1] != '\n'))
            abort();
        if (o->p[i] == '\n' && (i == 0 || o->p[i - 1] != '\r'))
            abort();
    }
}

/* DATA: feeds in[0..split) then the rest (unless done); returns the bytes
 * consumed in all and whether the end was found. */
static size_t fuzz_data_run(const uint8_t *in, size_t n, size_t split, struct out *o, int *done)
{
    struct mime_data d;
    size_t used;

    mime_data_init(&d);
    used = mime_data_feed(&d, in, split, fuzz_emit, o, done);
    if (used > split)
        abort();
    if (*done) {
        if (used < 3 || memcmp(in + used - 3, ".\r\n", 3))
            abort();
    } else {
        if (used != split)
            abort();
        size_t more = mime_data_feed(&d, in + split, n - split, fuzz_emit, o, done);
        if (more > n - split)
            abort();
        used += more;
        if (!*done && used != n)
            abort();
    }
    if (d.size != (int64_t)o->len || d.received < 0)
        abort();
    return used;
}

static void fuzz_raw_run(const uint8_t *in, size_t n, size_t split, struct out *o)
{
    struct mime_data d;

    mime_data_init(&d);
    if (mime_raw_feed(&d, in, split, fuzz_emit, o) ||
        mime_raw_feed(&d, in + split, n - split, fuzz_emit, o) ||
        mime_raw_finish(&d, fuzz_emit, o))
        abort();
    if (d.size != (int64_t)o->len)
        abort();
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
    struct out a = { 0 }, b = { 0 };
    size_t split, used_a, used_b;
    int done_a, done_b;

    if (size < 2)
        return 0;
    split = ((size_t)data[0] << 8 | data[1]);
    data += 2;
    size -= 2;
    split = size ? split % (size + 1) : 0;

    used_a = fuzz_data_run(data, size, size, &a, &done_a);
    used_b = fuzz_data_run(data, size, split, &b, &done_b);
    fuzz_check_crlf(&a);
    fuzz_check_crlf(&b);
    if (used_a != used_b || done_a != done_b || a.len != b.len || (a.len && memcmp(a.p, b.p, a.len)))
        abort();

    a.len = b.len = 0;
    fuzz_raw_run(data, size, size, &a);
    fuzz_raw_run(data, size, split, &b);
    fuzz_check_crlf(&a);
    if (a.len != b.len || (a.len && memcmp(a.p, b.p, a.len)))
        abort();
    free(a.p);
    free(b.p);
    return 0;
}
