/*
 * fuzz_bundle.c: the bundle reader (bundle.c) on hostile input.
 *
 * The first byte chooses what the rest is:
 *   0: a whole volume file, read as an importer would (header, signature
 *      against the fixed sender key, sealed key, frames, zlib, records,
 *      envelopes, Message-ID scan);
 *   1: the compressed plaintext inside a volume: the harness seals it
 *      into valid frames (split at every 4096 bytes) so that inflate and
 *      the record parser are reached past the cryptography;
 *   2: an envelope record (bundle_env_parse);
 *   3: a message header for the Message-ID scanner, fed in two pieces.
 * Nothing may crash, leak or read out of bounds, and no record may be
 * longer than the format allows.
 *
 * The keys are fixed (seeded), so the seed corpus holds real volumes:
 * FUZZ_BUNDLE_SEEDS=DIR writes them at start-up.
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

static struct bundle_keys fb_a, fb_b;   /* a: sender, b: recipient */

struct fb_mem {
    const uint8_t *p;
    size_t n, off;
};

static ssize_t fb_read(void *arg, void *buf, size_t n)
{
    struct fb_mem *m = arg;
    if (n > m->n - m->off)
        n = m->n - m->off;
    memcpy(buf, m->p + m->off, n);
    m->off += n;
    return (ssize_t)n;
}

static void fb_records(struct bundle_reader *r)
{
    static struct bundle_env e;
    struct bundle_msgid mid;
    const unsigned char *p;
    size_t n;
    int type, count = 0;

    bundle_msgid_init(&mid);
    while (bundle_read_record(r, &type, &p, &n) == 0 && count++ < 100000) {
        if (n > BUNDLE_RECORD_MAX || (type == BUNDLE_REC_DATA && n > BUNDLE_DATA_MAX))
            abort();
        if (type == BUNDLE_REC_ENV) {
            bundle_env_parse(p, n, &e);
            bundle_msgid_init(&mid);
        } else if (type == BUNDLE_REC_DATA) {
            bundle_msgid_feed(&mid, p, n);
        }
    }
}

static void fb_volume(const uint8_t *data, size_t size)
{
    struct fb_mem m = { data, size, 0 };
    struct bundle_header h;
    unsigned char raw[BUNDLE_HDR_LEN];
    struct bundle_reader *r;
    int err;

    if (bundle_reader_header(fb_read, &m, &h, raw) || bundle_header_verify(raw, fb_a.sign_pk))
        return;
    r = bundle_reader_open(fb_read, &m, &h, &fb_b, &err);
    if (!r)
        return;
    fb_records(r);
    bundle_reader_free(r);
}

/* Seals data as the content of a volume from a to b, into a memory file. */
static uint8_t *fb_seal(const uint8_t *data, size_t size, size_t *outlen)
{
    unsigned char id[16] = { 0 };
    FILE *f = tmpfile();
    struct bundle_writer *w;
    uint8_t *out = NULL;
    long len;

    if (!f)
        fuzz_die("tmpfile");
    w = bundle_writer_open(fileno(f), &fb_a, fb_b.box_pk, BUNDLE_KIND_MAIL, id, 1);
    if (!w)
        fuzz_die("bundle_writer_open");
    do {
        size_t take = size > 4096 ? 4096 : size;
        if (bw_frame(w, data, take, take == size ? crypto_secretstream_xchacha20poly1305_TAG_FINAL : 0))
            fuzz_die("bw_frame");
        data += take;
        size -= take;
    } while (size);
    bundle_writer_free(w);
    len = lseek(fileno(f), 0, SEEK_END);
    out = malloc((size_t)len);
    if (!out || pread(fileno(f), out, (size_t)len, 0) != len)
        fuzz_die("reading the sealed volume");
    fclose(f);
    *outlen = (size_t)len;
    return out;
}

static void fb_write(const char *dir, const char *name, const void *p, size_t n)
{
    char path[1024];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n)
        fuzz_die(path);
    fclose(f);
}

/* Real volumes and pieces of them as seeds. */
static void fb_seeds(const char *dir)
{
    static const char env[] = "ID ABCDEFGH23456789 1700000000\r\n"
                              "MAIL FROM:<alice@a.test> SIZE=64 BODY=8BITMIME ENVID=x+2By RET=FULL\r\n"
                              "RCPT TO:<bob@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@b.test\r\n"
                              "RCPT TO:<carol@c.test> NOTIFY=NEVER\r\n";
    static const char body[] = "Subject: hi\r\nMessage-ID: <1@a.test>\r\n\r\nhello\r\n";
    unsigned char id[16] = { 7 }, end[40] = { 0 }, fin[4] = { 0, 0, 0, 3 };
    unsigned char buf[1 << 16], *p = buf;
    FILE *f = tmpfile();
    struct bundle_writer *w = bundle_writer_open(fileno(f), &fb_a, fb_b.box_pk, BUNDLE_KIND_MAIL, id, 1);
    long len;
    uLongf zlen = sizeof buf;
    unsigned char plain[2048], *q = plain;

    bundle_write_record(w, BUNDLE_REC_ENV, env, sizeof env - 1);
    bundle_write_record(w, BUNDLE_REC_DATA, body, sizeof body - 1);
    crypto_generichash(end, 32, (const unsigned char *)body, sizeof body - 1, NULL, 0);
    end[39] = sizeof body - 1;
    bundle_write_record(w, BUNDLE_REC_END, end, sizeof end);
    bundle_writer_finish(w);
    bundle_writer_free(w);
    len = lseek(fileno(f), 0, SEEK_END);
    buf[0] = 0;
    if (pread(fileno(f), buf + 1, (size_t)len, 0) != len)
        fuzz_die("seed");
    fclose(f);
    fb_write(dir, "volume", buf, (size_t)len + 1);
    /* The plaintext records, compressed, for mode 1. */
    *q++ = BUNDLE_REC_ENV, bundle_put32(q, sizeof env - 1), q += 4, memcpy(q, env, sizeof env - 1), q += sizeof env - 1;
    *q++ = BUNDLE_REC_DATA, bundle_put32(q, sizeof body - 1), q += 4, memcpy(q, body, sizeof body - 1), q += sizeof body - 1;
    *q++ = BUNDLE_REC_END, bundle_put32(q, 40), q += 4, memcpy(q, end, 40), q += 40;
    *q++ = BUNDLE_REC_FIN, bundle_put32(q, 4), q += 4, memcpy(q, fin, 4), q += 4;
    p[0] = 1;
    if (compress2(buf + 1, &zlen, plain, (uLong)(q - plain), 6) != Z_OK)
        fuzz_die("compress2");
    fb_write(dir, "content", buf, zlen + 1);
    buf[0] = 2;
    memcpy(buf + 1, env, sizeof env - 1);
    fb_write(dir, "envelope", buf, sizeof env);
    buf[0] = 3;
    buf[1] = 10;
    memcpy(buf + 2, body, sizeof body - 1);
    fb_write(dir, "msgid", buf, sizeof body + 1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    unsigned char seeds[64];
    const char *dir = getenv("FUZZ_BUNDLE_SEEDS");

    MN_UNUSED(argc);
    MN_UNUSED(argv);
    if (sodium_init() < 0)
        abort();
    for (int i = 0; i < 64; i++)
        seeds[i] = (unsigned char)i;
    bundle_keys_derive(&fb_a, seeds);
    for (int i = 0; i < 64; i++)
        seeds[i] = (unsigned char)(200 - i);
    bundle_keys_derive(&fb_b, seeds);
    if (dir)
        fb_seeds(dir);
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct bundle_env e;
    struct bundle_msgid m;
    size_t n;
    uint8_t *vol;

    if (size < 1)
        return 0;
    switch (data[0] & 3) {
    case 0:
        fb_volume(data + 1, size - 1);
        break;
    case 1:
        vol = fb_seal(data + 1, size - 1, &n);
        fb_volume(vol, n);
        free(vol);
        break;
    case 2:
        bundle_env_parse(data + 1, size - 1, &e);
        break;
    case 3:
        if (size < 2)
            return 0;
        n = data[1] < size - 2 ? data[1] : size - 2;
        bundle_msgid_init(&m);
        bundle_msgid_feed(&m, data + 2, n);
        bundle_msgid_feed(&m, data + 2 + n, size - 2 - n);
        bundle_msgid_finish(&m);
        if (m.found && (m.id[0] != '<' || strlen(m.id) >= sizeof m.id))
            abort();
        break;
    }
    return 0;
}
