/*
 * bundle.c: the offline bundle format (docs/bundle-format.md), keys, and
 * the envelope text.  No SQL and no policy: the commands that export and
 * import (cli_bundle.c, bundle_import.c) decide what goes in and what a
 * record means for the queue.
 *
 * A volume is a signed clear header followed by frames of one
 * XChaCha20-Poly1305 secretstream whose key is sealed (crypto_box_seal) to
 * the recipient node's X25519 key; the stream carries one zlib stream
 * whose content is a sequence of typed records.  The Ed25519 signature
 * covers the header, which holds the sealed key and the stream header:
 * only the signer (or the recipient itself) can produce frames that
 * decrypt, every frame is authenticated, and the FINAL tag on the last
 * frame makes truncation detectable (a reader that ends without it
 * refuses the volume).
 *
 * Memory is bounded whatever the input: one frame (64 KiB + tag), the
 * inflated window and one record (the largest, an envelope, is capped at
 * BUNDLE_ENV_MAX).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define SS_ABYTES crypto_secretstream_xchacha20poly1305_ABYTES
#define SS_HBYTES crypto_secretstream_xchacha20poly1305_HEADERBYTES
#define SS_KEYBYTES crypto_secretstream_xchacha20poly1305_KEYBYTES
#define SEALED_KEY_LEN (crypto_box_SEALBYTES + SS_KEYBYTES)

_Static_assert(BUNDLE_HDR_SIGNED == 8 + 1 + 1 + 2 + 8 + 16 + 4 + 32 + 32 + SEALED_KEY_LEN + SS_HBYTES,
               "bundle header layout");

static const unsigned char bundle_magic[8] = { 'M', 'N', 'B', 'U', 'N', 'D', 'L', 'E' };

static void bundle_put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t bundle_get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void bundle_put64(unsigned char *p, uint64_t v)
{
    bundle_put32(p, (uint32_t)(v >> 32));
    bundle_put32(p + 4, (uint32_t)v);
}

static uint64_t bundle_get64(const unsigned char *p)
{
    return (uint64_t)bundle_get32(p) << 32 | bundle_get32(p + 4);
}

/* ------------------------------------------------------------------ keys */

/* The key file holds two 32-byte seeds: Ed25519 (signing) then X25519
 * (sealed boxes).  Separate keys for separate jobs; both are derived
 * from their seed, so the file is small and has no structure to damage. */
static void bundle_keys_derive(struct bundle_keys *k, const unsigned char seeds[64])
{
    crypto_sign_seed_keypair(k->sign_pk, k->sign_sk, seeds);
    crypto_box_seed_keypair(k->box_pk, k->box_sk, seeds + 32);
}

static int bundle_keys_create(const char *path, struct bundle_keys *k, char *err, size_t errlen)
{
    unsigned char seeds[64];
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    size_t off = 0;

    if (fd < 0) {
        snprintf(err, errlen, "cannot create bundle key %s: %s", path, strerror(errno));
        return -1;
    }
    randombytes_buf(seeds, sizeof seeds);
    while (off < sizeof seeds) {
        ssize_t n = write(fd, seeds + off, sizeof seeds - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail;
        off += (size_t)n;
    }
    if (fsync(fd))
        goto fail;
    close(fd);
    bundle_keys_derive(k, seeds);
    sodium_memzero(seeds, sizeof seeds);
    log_info("created bundle key %s", path);
    return 0;
fail:
    snprintf(err, errlen, "cannot write bundle key %s: %s", path, strerror(errno));
    close(fd);
    unlink(path);
    sodium_memzero(seeds, sizeof seeds);
    return -1;
}

int bundle_keys_load(const char *path, struct bundle_keys *k, int create, char *err, size_t errlen)
{
    unsigned char seeds[65];
    struct stat st;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 && errno == ENOENT && create)
        return bundle_keys_create(path, k, err, errlen);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open bundle key %s: %s%s", path, strerror(errno),
                 errno == ENOENT ? " (`mailnode key show` creates it)" : "");
        return -1;
    }
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size != 64) {
        snprintf(err, errlen, "bundle key %s: must be a regular file of 64 bytes; restore it from"
                 " a backup (a new key means every peer must learn it again)", path);
        close(fd);
        return -1;
    }
    do
        n = read(fd, seeds, sizeof seeds);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n != 64) {
        snprintf(err, errlen, "bundle key %s: short read", path);
        return -1;
    }
    if (st.st_mode & 077)
        log_warn("bundle key %s is readable by group or others: run chmod 600 %s", path, path);
    bundle_keys_derive(k, seeds);
    sodium_memzero(seeds, sizeof seeds);
    return 0;
}

void bundle_key_line(const unsigned char sign_pk[32], const unsigned char box_pk[32],
                     const char *comment, char *out, size_t n)
{
    unsigned char both[64];
    char b64[sodium_base64_ENCODED_LEN(64, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];

    memcpy(both, sign_pk, 32);
    memcpy(both + 32, box_pk, 32);
    sodium_bin2base64(b64, sizeof b64, both, sizeof both, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(out, n, "%s %s%s%s", BUNDLE_KEY_PREFIX, b64, comment && *comment ? " " : "",
             comment ? comment : "");
}

int bundle_key_parse(const char *line, unsigned char sign_pk[32], unsigned char box_pk[32])
{
    unsigned char both[64];
    size_t len = 0;
    const char *p = line, *end;
    size_t plen = strlen(BUNDLE_KEY_PREFIX);

    while (*p == ' ' || *p == '\t')
        p++;
    if (strncmp(p, BUNDLE_KEY_PREFIX, plen) || (p[plen] != ' ' && p[plen] != '\t'))
        return -1;
    p += plen;
    while (*p == ' ' || *p == '\t')
        p++;
    for (end = p; *end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r'; end++)
        ;
    if (sodium_base642bin(both, sizeof both, p, (size_t)(end - p), NULL, &len, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) || len != 64)
        return -1;
    memcpy(sign_pk, both, 32);
    memcpy(box_pk, both + 32, 32);
    return 0;
}

/* ---------------------------------------------------------------- header */

void bundle_header_encode(const struct bundle_header *h, unsigned char out[BUNDLE_HDR_SIGNED])
{
    unsigned char *p = out;

    memcpy(p, bundle_magic, 8), p += 8;
    *p++ = BUNDLE_VERSION;
    *p++ = (unsigned char)h->kind;
    *p++ = 0, *p++ = 0;                 /* flags: none defined in version 1 */
    bundle_put64(p, (uint64_t)h->created), p += 8;
    memcpy(p, h->bundle_id, 16), p += 16;
    bundle_put32(p, h->volume), p += 4;
    memcpy(p, h->sender_sign_pk, 32), p += 32;
    memcpy(p, h->recipient_box_pk, 32), p += 32;
    memcpy(p, h->sealed_key, SEALED_KEY_LEN), p += SEALED_KEY_LEN;
    memcpy(p, h->ss_header, SS_HBYTES);
}

int bundle_header_decode(const unsigned char *in, size_t n, struct bundle_header *h)
{
    const unsigned char *p = in;

    memset(h, 0, sizeof *h);
    if (n < BUNDLE_HDR_LEN || memcmp(p, bundle_magic, 8))
        return BUNDLE_ENOTBUNDLE;
    p += 8;
    if (*p != BUNDLE_VERSION)
        return BUNDLE_EVERSION;
    p++;
    h->kind = *p++;
    if ((h->kind != BUNDLE_KIND_MAIL && h->kind != BUNDLE_KIND_RECEIPT) || p[0] || p[1])
        return BUNDLE_EFORMAT;
    p += 2;
    h->created = (int64_t)bundle_get64(p), p += 8;
    memcpy(h->bundle_id, p, 16), p += 16;
    h->volume = bundle_get32(p), p += 4;
    memcpy(h->sender_sign_pk, p, 32), p += 32;
    memcpy(h->recipient_box_pk, p, 32), p += 32;
    memcpy(h->sealed_key, p, SEALED_KEY_LEN), p += SEALED_KEY_LEN;
    memcpy(h->ss_header, p, SS_HBYTES), p += SS_HBYTES;
    memcpy(h->signature, p, crypto_sign_BYTES);
    return 0;
}

const char *bundle_strerror(int e)
{
    switch (e) {
    case BUNDLE_ENOTBUNDLE: return "not a mailnode bundle (bad magic or too short)";
    case BUNDLE_EVERSION:   return "bundle format version not supported by this mailnode";
    case BUNDLE_EFORMAT:    return "malformed bundle";
    case BUNDLE_ESIG:       return "bad signature: the header was altered or not signed by that peer";
    case BUNDLE_EKEY:       return "the bundle key cannot be opened with this node's key";
    case BUNDLE_ECRYPT:     return "a frame does not decrypt: the volume was altered or damaged";
    case BUNDLE_ETRUNC:     return "the volume is truncated (no final frame)";
    case BUNDLE_ETRAIL:     return "data after the final frame";
    case BUNDLE_EZLIB:      return "the compressed content is damaged";
    case BUNDLE_ERECORD:    return "malformed record";
    case BUNDLE_EIO:        return "read or write error";
    case BUNDLE_ENOMEM:     return "out of memory";
    default:                return "bundle error";
    }
}

/* ---------------------------------------------------------------- writer */

struct bundle_writer {
    int fd;
    int err;
    crypto_secretstream_xchacha20poly1305_state ss;
    z_stream z;
    int z_ok;
    unsigned char *plain;               /* compressed bytes waiting for a frame */
    size_t plain_len;
    unsigned char *frame;               /* 4 + BUNDLE_FRAME_MAX + ABYTES */
    int64_t out_bytes;                  /* written to fd so far */
    int64_t raw_since_sync;             /* given to deflate since its output was last complete */
    uint32_t records;
};

static int bw_write_all(struct bundle_writer *w, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n) {
        ssize_t r = write(w->fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return w->err = BUNDLE_EIO;
        p += r;
        n -= (size_t)r;
        w->out_bytes += r;
    }
    return 0;
}

/* One frame: a 4-byte length, then the sealed chunk. */
static int bw_frame(struct bundle_writer *w, const unsigned char *m, size_t n, unsigned char tag)
{
    unsigned long long clen = 0;

    if (crypto_secretstream_xchacha20poly1305_push(&w->ss, w->frame + 4, &clen, m, n, NULL, 0, tag))
        return w->err = BUNDLE_ECRYPT;
    bundle_put32(w->frame, (uint32_t)clen);
    return bw_write_all(w, w->frame, (size_t)clen + 4);
}

/* Compressed output arrives here and leaves in full frames. */
static int bw_plain(struct bundle_writer *w, const unsigned char *p, size_t n)
{
    while (n) {
        size_t take = BUNDLE_FRAME_MAX - w->plain_len;
        if (take > n)
            take = n;
        memcpy(w->plain + w->plain_len, p, take);
        w->plain_len += take;
        p += take;
        n -= take;
        if (w->plain_len == BUNDLE_FRAME_MAX) {
            if (bw_frame(w, w->plain, w->plain_len, 0))
                return w->err;
            w->plain_len = 0;
        }
    }
    return 0;
}

static int bw_deflate(struct bundle_writer *w, const void *in, size_t n, int flush)
{
    unsigned char out[16384];
    int zr;

    w->z.next_in = (Bytef *)in;
    w->z.avail_in = (uInt)n;
    do {
        w->z.next_out = out;
        w->z.avail_out = sizeof out;
        zr = deflate(&w->z, flush);
        if (zr == Z_STREAM_ERROR)
            return w->err = BUNDLE_EZLIB;
        if (bw_plain(w, out, sizeof out - w->z.avail_out))
            return w->err;
    } while (w->z.avail_out == 0 || (flush == Z_FINISH && zr != Z_STREAM_END));
    return 0;
}

struct bundle_writer *bundle_writer_open(int fd, const struct bundle_keys *me, const unsigned char peer_box_pk[32],
                                         int kind, const unsigned char bundle_id[16], uint32_t volume)
{
    struct bundle_writer *w = calloc(1, sizeof *w);
    struct bundle_header h;
    unsigned char key[SS_KEYBYTES], hdr[BUNDLE_HDR_SIGNED];

    if (!w)
        return NULL;
    w->fd = fd;
    w->plain = malloc(BUNDLE_FRAME_MAX);
    w->frame = malloc(4 + BUNDLE_FRAME_MAX + SS_ABYTES);
    if (!w->plain || !w->frame)
        goto fail;
    /* Level 6 (not the store's 1): a bundle crosses a slow or costly
     * medium once, and its size is what the carrier pays for. */
    if (deflateInit2(&w->z, 6, Z_DEFLATED, 15, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        goto fail;
    w->z_ok = 1;
    memset(&h, 0, sizeof h);
    h.kind = kind;
    h.created = util_now();
    memcpy(h.bundle_id, bundle_id, 16);
    h.volume = volume;
    memcpy(h.sender_sign_pk, me->sign_pk, 32);
    memcpy(h.recipient_box_pk, peer_box_pk, 32);
    crypto_secretstream_xchacha20poly1305_keygen(key);
    if (crypto_box_seal(h.sealed_key, key, sizeof key, peer_box_pk) ||
        crypto_secretstream_xchacha20poly1305_init_push(&w->ss, h.ss_header, key))
        goto fail;
    sodium_memzero(key, sizeof key);
    bundle_header_encode(&h, hdr);
    if (crypto_sign_detached(h.signature, NULL, hdr, sizeof hdr, me->sign_sk))
        goto fail;
    if (bw_write_all(w, hdr, sizeof hdr) || bw_write_all(w, h.signature, sizeof h.signature))
        goto fail;
    return w;
fail:
    sodium_memzero(key, sizeof key);
    bundle_writer_free(w);
    return NULL;
}

int bundle_write_record(struct bundle_writer *w, int type, const void *payload, size_t n)
{
    unsigned char rh[5];

    if (w->err)
        return w->err;
    if (n > BUNDLE_RECORD_MAX)
        return w->err = BUNDLE_ERECORD;
    rh[0] = (unsigned char)type;
    bundle_put32(rh + 1, (uint32_t)n);
    if (bw_deflate(w, rh, sizeof rh, Z_NO_FLUSH) || (n && bw_deflate(w, payload, n, Z_NO_FLUSH)))
        return w->err;
    w->raw_since_sync += (int64_t)n + 5;
    w->records++;
    return 0;
}

/* The most that n more raw bytes (in records) can add to the file:
 * zlib's own bound, the record headers, the frame headers and tags. */
int64_t bundle_bound(int64_t n)
{
    int64_t recs = n / BUNDLE_DATA_MAX + 3;
    int64_t z = n + recs * 5;
    z = z + (z >> 12) + (z >> 14) + (z >> 25) + 13 + 64;
    return z + (z / BUNDLE_FRAME_MAX + 2) * (4 + SS_ABYTES);
}

int64_t bundle_writer_size(struct bundle_writer *w)
{
    return w->out_bytes + (int64_t)w->plain_len + 4 + SS_ABYTES + bundle_bound(w->raw_since_sync);
}

/* Pushes everything deflate holds into the output so that the size is
 * known exactly; costs a few bytes, so only done near the size limit. */
int bundle_writer_sync(struct bundle_writer *w)
{
    if (w->err || bw_deflate(w, NULL, 0, Z_SYNC_FLUSH))
        return w->err;
    w->raw_since_sync = 0;
    return 0;
}

int bundle_writer_finish(struct bundle_writer *w)
{
    unsigned char fin[4];

    if (w->err)
        return w->err;
    bundle_put32(fin, w->records);
    if (bundle_write_record(w, BUNDLE_REC_FIN, fin, sizeof fin) || bw_deflate(w, NULL, 0, Z_FINISH))
        return w->err;
    if (bw_frame(w, w->plain, w->plain_len, crypto_secretstream_xchacha20poly1305_TAG_FINAL))
        return w->err;
    w->plain_len = 0;
    return 0;
}

int64_t bundle_writer_bytes(const struct bundle_writer *w)
{
    return w->out_bytes;
}

void bundle_writer_free(struct bundle_writer *w)
{
    if (!w)
        return;
    if (w->z_ok)
        deflateEnd(&w->z);
    sodium_memzero(&w->ss, sizeof w->ss);
    free(w->plain);
    free(w->frame);
    free(w);
}

/* ---------------------------------------------------------------- reader */

struct bundle_reader {
    bundle_read_fn read;
    void *arg;
    int err;
    int final;                          /* the FINAL frame was read */
    int z_end;                          /* the zlib stream ended */
    int fin;                            /* the FIN record was returned */
    crypto_secretstream_xchacha20poly1305_state ss;
    z_stream z;
    int z_ok;
    unsigned char *frame;               /* ciphertext of one frame */
    unsigned char *plain;               /* its plaintext: compressed bytes */
    size_t plain_len;
    unsigned char *inf;                 /* inflated bytes not yet parsed */
    size_t inf_off, inf_len;
    unsigned char *rec;                 /* the record being returned */
    uint32_t records;                   /* records before FIN */
    int64_t in_bytes;
};

#define INF_BUF (64 * 1024)

static int br_read_exact(struct bundle_reader *r, void *buf, size_t n, int *eof)
{
    unsigned char *p = buf;
    size_t got = 0;

    while (got < n) {
        ssize_t k = r->read(r->arg, p + got, n - got);
        if (k < 0)
            return r->err = BUNDLE_EIO;
        if (k == 0)
            break;
        got += (size_t)k;
    }
    r->in_bytes += (int64_t)got;
    if (eof)
        *eof = got == 0;
    return got == n ? 0 : (r->err = BUNDLE_ETRUNC);
}

int bundle_reader_header(bundle_read_fn fn, void *arg, struct bundle_header *h,
                         unsigned char raw[BUNDLE_HDR_LEN])
{
    size_t got = 0;

    while (got < BUNDLE_HDR_LEN) {
        ssize_t k = fn(arg, raw + got, BUNDLE_HDR_LEN - got);
        if (k < 0)
            return BUNDLE_EIO;
        if (k == 0)
            break;
        got += (size_t)k;
    }
    if (got >= 8 && memcmp(raw, bundle_magic, 8))
        return BUNDLE_ENOTBUNDLE;
    if (got < BUNDLE_HDR_LEN)
        return got < 8 ? BUNDLE_ENOTBUNDLE : BUNDLE_ETRUNC;
    return bundle_header_decode(raw, got, h);
}

int bundle_header_verify(const unsigned char raw[BUNDLE_HDR_LEN], const unsigned char sign_pk[32])
{
    return crypto_sign_verify_detached(raw + BUNDLE_HDR_SIGNED, raw, BUNDLE_HDR_SIGNED, sign_pk)
           ? BUNDLE_ESIG : 0;
}

struct bundle_reader *bundle_reader_open(bundle_read_fn fn, void *arg, const struct bundle_header *h,
                                         const struct bundle_keys *me, int *err)
{
    struct bundle_reader *r = calloc(1, sizeof *r);
    unsigned char key[SS_KEYBYTES];

    *err = BUNDLE_ENOMEM;
    if (!r)
        return NULL;
    r->read = fn;
    r->arg = arg;
    r->frame = malloc(BUNDLE_FRAME_MAX + SS_ABYTES);
    r->plain = malloc(BUNDLE_FRAME_MAX);
    r->inf = malloc(INF_BUF);
    r->rec = malloc(BUNDLE_RECORD_MAX + 1);
    if (!r->frame || !r->plain || !r->inf || !r->rec)
        goto fail;
    if (inflateInit(&r->z) != Z_OK)
        goto fail;
    r->z_ok = 1;
    *err = BUNDLE_EKEY;
    if (crypto_box_seal_open(key, h->sealed_key, SEALED_KEY_LEN, me->box_pk, me->box_sk))
        goto fail;
    if (crypto_secretstream_xchacha20poly1305_init_pull(&r->ss, h->ss_header, key)) {
        *err = BUNDLE_EFORMAT;
        goto fail;
    }
    sodium_memzero(key, sizeof key);
    *err = 0;
    return r;
fail:
    sodium_memzero(key, sizeof key);
    bundle_reader_free(r);
    return NULL;
}

/* The next frame's plaintext into r->plain. */
static int br_frame(struct bundle_reader *r)
{
    unsigned char lb[4], tag = 0;
    unsigned long long mlen = 0;
    uint32_t clen;
    int eof = 0;

    if (r->final)
        return r->err = BUNDLE_EFORMAT;
    if (br_read_exact(r, lb, 4, &eof))
        return r->err;
    clen = bundle_get32(lb);
    if (clen < SS_ABYTES || clen > BUNDLE_FRAME_MAX + SS_ABYTES)
        return r->err = BUNDLE_EFORMAT;
    if (br_read_exact(r, r->frame, clen, NULL))
        return r->err;
    if (crypto_secretstream_xchacha20poly1305_pull(&r->ss, r->plain, &mlen, &tag, r->frame, clen, NULL, 0))
        return r->err = BUNDLE_ECRYPT;
    if (tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL)
        r->final = 1;
    else if (tag != 0)
        return r->err = BUNDLE_EFORMAT;
    r->plain_len = (size_t)mlen;
    r->z.next_in = r->plain;
    r->z.avail_in = (uInt)mlen;
    return 0;
}

/* Refills r->inf with more inflated bytes (keeping the unparsed rest). */
static int br_inflate(struct bundle_reader *r)
{
    int zr;

    if (r->inf_off) {
        memmove(r->inf, r->inf + r->inf_off, r->inf_len - r->inf_off);
        r->inf_len -= r->inf_off;
        r->inf_off = 0;
    }
    while (r->inf_len < INF_BUF) {
        if (r->z_end)
            return r->inf_len ? 0 : (r->err = BUNDLE_ERECORD);
        if (r->z.avail_in == 0 && br_frame(r))
            return r->err;
        r->z.next_out = r->inf + r->inf_len;
        r->z.avail_out = (uInt)(INF_BUF - r->inf_len);
        zr = inflate(&r->z, Z_NO_FLUSH);
        r->inf_len = INF_BUF - r->z.avail_out;
        if (zr == Z_STREAM_END) {
            r->z_end = 1;
            /* Compressed bytes after the end of the zlib stream, or more
             * frames: not something a writer produces. */
            if (r->z.avail_in || !r->final)
                return r->err = BUNDLE_EZLIB;
            return 0;
        }
        if (zr == Z_BUF_ERROR && r->z.avail_in == 0) {
            if (r->final)
                return r->err = BUNDLE_EZLIB;   /* the stream stops short */
            continue;
        }
        if (zr != Z_OK)
            return r->err = BUNDLE_EZLIB;
        if (r->inf_len > 0)
            return 0;
    }
    return 0;
}

/* Ensures n unparsed inflated bytes are available. */
static int br_need(struct bundle_reader *r, size_t n)
{
    while (r->inf_len - r->inf_off < n) {
        size_t before = r->inf_len - r->inf_off;
        if (br_inflate(r))
            return r->err;
        if (r->inf_len - r->inf_off == before)
            return r->err = BUNDLE_ERECORD;
    }
    return 0;
}

int bundle_read_record(struct bundle_reader *r, int *type, const unsigned char **payload, size_t *n)
{
    uint32_t len;
    size_t got = 0;
    unsigned char t;

    if (r->err)
        return r->err;
    if (r->fin)
        return 1;
    if (br_need(r, 5))
        return r->err;
    t = r->inf[r->inf_off];
    len = bundle_get32(r->inf + r->inf_off + 1);
    r->inf_off += 5;
    if (len > BUNDLE_RECORD_MAX || (t == BUNDLE_REC_DATA && len > BUNDLE_DATA_MAX))
        return r->err = BUNDLE_ERECORD;
    while (got < len) {
        size_t avail;
        if (r->inf_off == r->inf_len && br_need(r, 1))
            return r->err;
        avail = r->inf_len - r->inf_off;
        if (avail > len - got)
            avail = len - got;
        memcpy(r->rec + got, r->inf + r->inf_off, avail);
        r->inf_off += avail;
        got += avail;
    }
    r->rec[len] = '\0';
    if (t == BUNDLE_REC_FIN) {
        /* The end: the record count agrees, the zlib stream and the frames
         * end here, and nothing follows in the file. */
        unsigned char extra;
        int eof = 0;
        if (len != 4 || bundle_get32(r->rec) != r->records)
            return r->err = BUNDLE_ERECORD;
        if (r->inf_off != r->inf_len)
            return r->err = BUNDLE_ERECORD;
        if (!r->z_end) {
            if (br_inflate(r))
                return r->err;
            if (!r->z_end || r->inf_len)
                return r->err = BUNDLE_ERECORD;
        }
        if (!r->final)
            return r->err = BUNDLE_ETRUNC;
        if (r->read(r->arg, &extra, 1) != 0)
            return r->err = BUNDLE_ETRAIL;
        (void)eof;
        r->fin = 1;
    } else {
        r->records++;
    }
    *type = t;
    *payload = r->rec;
    *n = len;
    return 0;
}

void bundle_reader_free(struct bundle_reader *r)
{
    if (!r)
        return;
    if (r->z_ok)
        inflateEnd(&r->z);
    sodium_memzero(&r->ss, sizeof r->ss);
    free(r->frame);
    free(r->plain);
    free(r->inf);
    free(r->rec);
    free(r);
}

/* -------------------------------------------------------------- envelope */

/* RFC 3461 4: xtext is "!" .. "~" except "+" and "=", and "+" with two
 * upper-case hex digits.  The store keeps ENVID and ORCPT as they travel
 * in SMTP, xtext-encoded; so does the bundle.  Decodes to check. */
static int bundle_unxtext(const char *s, size_t len, char *out, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned c = (unsigned char)s[i];
        if (c == '+') {
            unsigned v;
            char hex[3];
            if (i + 2 >= len)
                return -1;
            hex[0] = s[i + 1], hex[1] = s[i + 2], hex[2] = '\0';
            if (!((hex[0] >= '0' && hex[0] <= '9') || (hex[0] >= 'A' && hex[0] <= 'F')) ||
                !((hex[1] >= '0' && hex[1] <= '9') || (hex[1] >= 'A' && hex[1] <= 'F')))
                return -1;
            if (sscanf(hex, "%2X", &v) != 1 || v == 0)
                return -1;
            c = v;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return -1;
        }
        if (o + 1 >= n)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

static const char *bundle_notify_text(int notify, char *buf, size_t n)
{
    buf[0] = '\0';
    if (notify & NOTIFY_NEVER)
        return "NEVER";
    if (notify & NOTIFY_SUCCESS)
        util_strlcpy(buf, "SUCCESS", n);
    if (notify & NOTIFY_FAILURE)
        snprintf(buf + strlen(buf), n - strlen(buf), "%sFAILURE", buf[0] ? "," : "");
    if (notify & NOTIFY_DELAY)
        snprintf(buf + strlen(buf), n - strlen(buf), "%sDELAY", buf[0] ? "," : "");
    return buf;
}

/* The envelope record: RFC 5321 command syntax with the RFC 1870, 6152
 * and 3461 parameters, one command per CRLF line, after an ID line. */
int bundle_env_format(const struct store_out_msg *m, char *out, size_t n, size_t *len)
{
    size_t o = 0;
    char nb[64];
    int w;

    w = snprintf(out, n, "ID %s %lld\r\nMAIL FROM:<%s> SIZE=%lld BODY=%s", m->qid, (long long)m->received,
                 m->sender, (long long)m->size, m->eightbit ? "8BITMIME" : "7BIT");
    if (w < 0 || (size_t)w >= n)
        return -1;
    o = (size_t)w;
    if (m->envid[0]) {
        w = snprintf(out + o, n - o, " ENVID=%s", m->envid);
        if (w < 0 || (size_t)w >= n - o)
            return -1;
        o += (size_t)w;
    }
    w = snprintf(out + o, n - o, " RET=%s\r\n", m->ret_full ? "FULL" : "HDRS");
    if (w < 0 || (size_t)w >= n - o)
        return -1;
    o += (size_t)w;
    for (int i = 0; i < m->nrcpt; i++) {
        const struct store_out_rcpt *r = &m->rcpts[i];
        w = snprintf(out + o, n - o, "RCPT TO:<%s>", r->addr);
        if (w < 0 || (size_t)w >= n - o)
            return -1;
        o += (size_t)w;
        if (r->notify) {
            w = snprintf(out + o, n - o, " NOTIFY=%s", bundle_notify_text(r->notify, nb, sizeof nb));
            if (w < 0 || (size_t)w >= n - o)
                return -1;
            o += (size_t)w;
        }
        if (r->orcpt[0]) {
            w = snprintf(out + o, n - o, " ORCPT=%s", r->orcpt);
            if (w < 0 || (size_t)w >= n - o)
                return -1;
            o += (size_t)w;
        }
        if (o + 2 >= n)
            return -1;
        out[o++] = '\r';
        out[o++] = '\n';
    }
    out[o] = '\0';
    *len = o;
    return 0;
}

static int bundle_param(const char *p, size_t len, const char *name, const char **val, size_t *vlen)
{
    size_t nl = strlen(name);
    if (len <= nl || strncasecmp(p, name, nl) || p[nl] != '=')
        return 0;
    *val = p + nl + 1;
    *vlen = len - nl - 1;
    return 1;
}

static int bundle_env_mail(struct bundle_env *e, const char *line, size_t len)
{
    struct addr a;
    size_t used, i;
    const char *v;
    size_t vl;

    if (len < 10 || strncmp(line, "MAIL FROM:", 10))
        return -1;
    if (addr_parse_path(line + 10, len - 10, 1, &a, &used))
        return -1;
    util_strlcpy(e->sender, a.full, sizeof e->sender);
    for (i = 10 + used; i < len;) {
        size_t s, t;
        while (i < len && line[i] == ' ')
            i++;
        s = i;
        while (i < len && line[i] != ' ')
            i++;
        t = i - s;
        if (!t)
            break;
        if (bundle_param(line + s, t, "SIZE", &v, &vl)) {
            char num[24];
            char *end;
            if (vl == 0 || vl >= sizeof num)
                return -1;
            memcpy(num, v, vl), num[vl] = '\0';
            e->size = strtoll(num, &end, 10);
            if (*end || e->size < 0)
                return -1;
        } else if (bundle_param(line + s, t, "BODY", &v, &vl)) {
            if (vl == 8 && !strncasecmp(v, "8BITMIME", 8))
                e->eightbit = 1;
            else if (!(vl == 4 && !strncasecmp(v, "7BIT", 4)))
                return -1;
        } else if (bundle_param(line + s, t, "ENVID", &v, &vl)) {
            char dec[101];
            if (vl >= sizeof e->envid || bundle_unxtext(v, vl, dec, sizeof dec))
                return -1;
            memcpy(e->envid, v, vl);
            e->envid[vl] = '\0';
        } else if (bundle_param(line + s, t, "RET", &v, &vl)) {
            if (vl == 4 && !strncasecmp(v, "FULL", 4))
                e->ret_full = 1;
            else if (!(vl == 4 && !strncasecmp(v, "HDRS", 4)))
                return -1;
        } else {
            return -1;
        }
    }
    e->have_mail = 1;
    return 0;
}

static int bundle_notify_parse(const char *v, size_t vl, int *out)
{
    size_t i = 0;
    *out = 0;
    while (i < vl) {
        size_t s = i;
        while (i < vl && v[i] != ',')
            i++;
        if (i - s == 5 && !strncasecmp(v + s, "NEVER", 5))
            *out |= NOTIFY_NEVER;
        else if (i - s == 7 && !strncasecmp(v + s, "SUCCESS", 7))
            *out |= NOTIFY_SUCCESS;
        else if (i - s == 7 && !strncasecmp(v + s, "FAILURE", 7))
            *out |= NOTIFY_FAILURE;
        else if (i - s == 5 && !strncasecmp(v + s, "DELAY", 5))
            *out |= NOTIFY_DELAY;
        else
            return -1;
        i++;
    }
    /* RFC 3461 4.1: NEVER stands alone. */
    if (!*out || ((*out & NOTIFY_NEVER) && *out != NOTIFY_NEVER))
        return -1;
    return 0;
}

static int bundle_env_rcpt(struct bundle_env *e, const char *line, size_t len)
{
    struct bundle_env_rcpt *r;
    struct addr a;
    size_t used, i;
    const char *v;
    size_t vl;

    if (len < 8 || strncmp(line, "RCPT TO:", 8) || e->nrcpt >= BUNDLE_RCPTS_MAX)
        return -1;
    if (addr_parse_path(line + 8, len - 8, 0, &a, &used))
        return -1;
    r = &e->rcpts[e->nrcpt];
    memset(r, 0, sizeof *r);
    util_strlcpy(r->addr, a.full, sizeof r->addr);
    for (i = 8 + used; i < len;) {
        size_t s, t;
        while (i < len && line[i] == ' ')
            i++;
        s = i;
        while (i < len && line[i] != ' ')
            i++;
        t = i - s;
        if (!t)
            break;
        if (bundle_param(line + s, t, "NOTIFY", &v, &vl)) {
            if (bundle_notify_parse(v, vl, &r->notify))
                return -1;
        } else if (bundle_param(line + s, t, "ORCPT", &v, &vl)) {
            const char *semi = memchr(v, ';', vl);
            size_t tl;
            char dec[ADDR_MAX + 1];
            if (!semi)
                return -1;
            tl = (size_t)(semi - v);
            if (!tl || tl > 20 || vl > ADDR_MAX || bundle_unxtext(semi + 1, vl - tl - 1, dec, sizeof dec))
                return -1;
            memcpy(r->orcpt, v, vl);
            r->orcpt[vl] = '\0';
            for (size_t k = 0; k < tl; k++)
                if (!addr_is_atext((unsigned char)v[k]) && v[k] != '-')
                    return -1;
        } else {
            return -1;
        }
    }
    e->nrcpt++;
    return 0;
}

int bundle_env_parse(const unsigned char *p, size_t n, struct bundle_env *e)
{
    size_t i = 0;

    memset(e, 0, offsetof(struct bundle_env, rcpts));
    while (i < n) {
        const char *line = (const char *)p + i;
        const unsigned char *cr = memchr(p + i, '\r', n - i);
        size_t len;
        if (!cr || (size_t)(cr - p) + 1 >= n || cr[1] != '\n')
            return -1;
        len = (size_t)(cr - (p + i));
        if (memchr(line, '\0', len) || memchr(line, '\n', len))
            return -1;
        if (i == 0) {
            /* "ID QID RECEIVED" */
            char qid[QID_LEN + 2];
            long long recv;
            char tail;
            if (len < 4 || len > 64 || strncmp(line, "ID ", 3))
                return -1;
            char tmp[65];
            memcpy(tmp, line, len), tmp[len] = '\0';
            if (sscanf(tmp, "ID %17s %lld%c", qid, &recv, &tail) != 2 || strlen(qid) != QID_LEN)
                return -1;
            for (int k = 0; k < QID_LEN; k++)
                if (!((qid[k] >= 'A' && qid[k] <= 'Z') || (qid[k] >= '2' && qid[k] <= '7') ||
                      (qid[k] >= 'a' && qid[k] <= 'z') || (qid[k] >= '0' && qid[k] <= '9')))
                    return -1;
            memcpy(e->qid, qid, QID_LEN + 1);
            e->received = recv;
        } else if (!e->have_mail) {
            if (bundle_env_mail(e, line, len))
                return -1;
        } else if (bundle_env_rcpt(e, line, len)) {
            return -1;
        }
        i += len + 2;
    }
    return e->qid[0] && e->have_mail && e->nrcpt ? 0 : -1;
}

/* ------------------------------------------------------------ Message-ID */

/* Finds the Message-ID field of a header streamed in pieces (RFC 5322
 * 3.6.4), unfolded, angle brackets kept, for duplicate detection. */
void bundle_msgid_init(struct bundle_msgid *m)
{
    memset(m, 0, sizeof *m);
    m->bol = 1;
}

static void bundle_msgid_line(struct bundle_msgid *m)
{
    static const char name[] = "message-id:";
    size_t nl = sizeof name - 1;
    const char *v, *lt, *gt;

    if (m->found || m->len < nl || strncasecmp(m->line, name, nl))
        return;
    m->line[m->len] = '\0';
    v = m->line + nl;
    lt = strchr(v, '<');
    gt = lt ? strchr(lt, '>') : NULL;
    if (!lt || !gt || (size_t)(gt - lt + 1) >= sizeof m->id || gt - lt < 3)
        return;
    memcpy(m->id, lt, (size_t)(gt - lt + 1));
    m->id[gt - lt + 1] = '\0';
    m->found = 1;
}

void bundle_msgid_feed(struct bundle_msgid *m, const void *buf, size_t n)
{
    const unsigned char *p = buf;

    for (size_t i = 0; i < n && !m->done; i++) {
        unsigned char c = p[i];
        if (m->bol && c != ' ' && c != '\t') {
            /* A new field starts (or the header ends): the previous one
             * is complete. */
            bundle_msgid_line(m);
            m->len = 0;
            if (c == '\r' || c == '\n') {
                m->done = 1;
                break;
            }
        }
        m->bol = c == '\n';
        if (c == '\r' || c == '\n')
            continue;
        if (m->len < sizeof m->line - 1)
            m->line[m->len++] = (char)c;
    }
}

void bundle_msgid_finish(struct bundle_msgid *m)
{
    if (!m->done)
        bundle_msgid_line(m);
    m->done = 1;
}

/* Identity keys (BLAKE2b-128) under which a delivered recipient is
 * remembered: the message's origin (the exporting node's key and queue
 * id), and its Message-ID; either one seen again means a duplicate. */
void bundle_identity(char kind, const void *a, size_t alen, const char *b, const char *rcpt,
                     unsigned char out[BUNDLE_ID_LEN])
{
    crypto_generichash_state st;
    char lower[ADDR_MAX];
    unsigned char k = (unsigned char)kind, z = 0;

    util_strlcpy(lower, rcpt, sizeof lower);
    util_lower(lower);
    crypto_generichash_init(&st, NULL, 0, BUNDLE_ID_LEN);
    crypto_generichash_update(&st, &k, 1);
    crypto_generichash_update(&st, a, alen);
    crypto_generichash_update(&st, &z, 1);
    if (b)
        crypto_generichash_update(&st, (const unsigned char *)b, strlen(b));
    crypto_generichash_update(&st, &z, 1);
    crypto_generichash_update(&st, (const unsigned char *)lower, strlen(lower));
    crypto_generichash_final(&st, out, BUNDLE_ID_LEN);
}

void bundle_hex(const unsigned char *p, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[p[i] >> 4];
        out[2 * i + 1] = hx[p[i] & 15];
    }
    out[2 * n] = '\0';
}
