/*
 * zio.c: the compression layer between mailnodes, an ESMTP extension
 * modelled on IMAP COMPRESS (RFC 4978).  The server advertises
 * "COMPRESS DEFLATE" in EHLO (only inside TLS when it can do TLS); the
 * client sends "COMPRESS DEFLATE", and after the 220 reply each direction
 * is one raw deflate stream (RFC 1951, no zlib or gzip wrapper) that lasts
 * as long as the connection.  The sender flushes (Z_SYNC_FLUSH) whenever
 * its output buffer has been taken in, so every command and every reply
 * reaches the peer complete.
 *
 * Like TLS, the layer sits under the connection's buffers: loop.c moves
 * octets through zio_io_read/zio_io_flush, and above it the protocol
 * modules see plain text.  Under it is TLS or the socket
 * (conn_raw_read/conn_raw_write in loop.c): compression inside
 * encryption, as RFC 4978 4 orders it.
 *
 * Bombs: inflated output only ever fills the connection's fixed input
 * buffer, and the stream as a whole may not inflate to more than
 * ZIO_RATIO times its compressed size (plus ZIO_SLACK); a peer that tries
 * is cut off.  Our own sender keeps well inside that bound: when its
 * stream approaches half the ratio it switches deflate to Huffman coding
 * only (at most about 8:1) until it is back under a quarter.  All limits
 * of the protocols above (message_size_limit, line lengths) count the
 * inflated octets, since they apply to what the session reads.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#define ZIO_RBUF (16 * 1024)            /* compressed input not yet inflated */
#define ZIO_WBUF (64 * 1024 + 1024)     /* compressed output not yet sent */
#define ZIO_RATIO 128                   /* inflated octets per compressed octet, at most */
#define ZIO_SLACK (1024 * 1024)
#define ZIO_LEVEL 6
/* A fast link: this many compressed octets written without the socket
 * pushing back once.  Then the compressor is what limits the session, and
 * level 1 (about 4x faster, 20% larger on text) is the better trade; the
 * first push-back returns to ZIO_LEVEL, where the link is what limits. */
#define ZIO_FAST_RUN (256 * 1024)
#define ZIO_FAST_LEVEL 1

struct zio {
    z_stream in, out;
    int in_ok, out_ok;
    unsigned char rbuf[ZIO_RBUF];
    size_t rlen;
    int more;                           /* the inflater may hold output */
    unsigned char wbuf[ZIO_WBUF];
    size_t wlen;
    size_t plain;                       /* octets at the head of c->out that go out uncompressed */
    int flush_pending;                  /* the last sync flush did not fit */
    int huffman;                        /* deflate is in Huffman-only mode */
    int level;                          /* deflate's level now */
    int reply_plain;                    /* replies of the peer still to come plain (pipelined COMPRESS) */
    int reply_col;                      /* where in a plain reply line we are */
    int reply_last;                     /* that line ends its reply ("250 ", not "250-") */
    uint64_t free_run;                  /* octets written since the socket last pushed back */
    struct zio_stats st;
};

static void zio_free(struct zio *z)
{
    if (!z)
        return;
    if (z->in_ok)
        inflateEnd(&z->in);
    if (z->out_ok)
        deflateEnd(&z->out);
    free(z);
}

/* The client's side of a COMPRESS sent with what follows it (the commands
 * after it are compressed at once, saving a round trip): the peer's next
 * `replies` replies (to COMPRESS, and to an EHLO sent with it) arrive
 * plain, and its stream begins after them. */
int zio_start_pipelined(struct conn *c, int replies)
{
    if (zio_start(c))
        return -1;
    struct zio *z = c->zio;
    z->reply_plain = replies;
    return 0;
}

int zio_start(struct conn *c)
{
    struct zio *z;

    if (c->zio)
        return -1;
    z = calloc(1, sizeof *z);
    if (!z)
        return -1;
    /* RFC 4978 3: raw deflate, windowBits negative. */
    z->in_ok = inflateInit2(&z->in, -15) == Z_OK;
    z->out_ok = z->in_ok && deflateInit2(&z->out, ZIO_LEVEL, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK;
    z->level = ZIO_LEVEL;
    if (!z->in_ok || !z->out_ok) {
        zio_free(z);
        return -1;
    }
    /* What was written before the switch (the 220 that announced it) is
     * still plain text; what the peer sent after its command is already
     * compressed. */
    z->plain = c->out_len;
    if (c->in_len > sizeof z->rbuf) {
        zio_free(z);
        return -1;
    }
    memcpy(z->rbuf, c->in, c->in_len);
    z->rlen = c->in_len;
    c->zio = z;
    c->in_len = 0;
    if (z->rlen)
        conn_kick(c);
    return 0;
}

int zio_allowed(const char *dest, const char *host)
{
    if (!conf->compress)
        return 0;
    for (size_t i = 0; i < conf->n_compress_never; i++) {
        const char *d = conf->compress_never[i];
        if (!strcmp(d, "*") || (dest && !strcasecmp(d, dest)) || (host && !strcasecmp(d, host)))
            return 0;
    }
    return 1;
}

int zio_active(const struct conn *c)
{
    return c->zio != NULL;
}

const struct zio_stats *zio_stats(const struct conn *c)
{
    return c->zio ? &((struct zio *)c->zio)->st : NULL;
}

void zio_conn_free(struct conn *c)
{
    const struct zio *z = c->zio;
    if (z)
        log_info("[%s]: compressed session: sent %llu octets as %llu, received %llu as %llu, deflate %llu ms, "
                 "fast level %llu times",
                 c->peer_ip, (unsigned long long)z->st.plain_out, (unsigned long long)z->st.raw_out,
                 (unsigned long long)z->st.plain_in, (unsigned long long)z->st.raw_in,
                 (unsigned long long)(z->st.cpu_us / 1000), (unsigned long long)z->st.fast_switches);
    zio_free(c->zio);
    c->zio = NULL;
}

int zio_io_pending_in(const struct conn *c)
{
    const struct zio *z = c->zio;
    return z && (z->rlen || z->more);
}

size_t zio_io_pending_out(const struct conn *c)
{
    const struct zio *z = c->zio;
    return z ? z->wlen + z->flush_pending : 0;
}

/* Inflates what is buffered into buf; the octets produced (0: needs more). */
static ssize_t zio_inflate(struct conn *c, struct zio *z, unsigned char *buf, size_t n)
{
    z->in.next_in = z->rbuf;
    z->in.avail_in = (uInt)z->rlen;
    z->in.next_out = buf;
    z->in.avail_out = (uInt)n;
    int rc = inflate(&z->in, Z_SYNC_FLUSH);
    size_t used = z->rlen - z->in.avail_in, made = n - z->in.avail_out;
    if (rc == Z_STREAM_END || (rc != Z_OK && rc != Z_BUF_ERROR)) {
        /* The stream lasts as long as the connection (RFC 4978 4). */
        log_info("[%s]: compressed stream %s", c->peer_ip, rc == Z_STREAM_END ? "ended early" : "is corrupt");
        errno = EPROTO;
        return -1;
    }
    memmove(z->rbuf, z->rbuf + used, z->rlen - used);
    z->rlen -= used;
    z->more = z->in.avail_out == 0;
    z->st.raw_in += used;
    z->st.plain_in += made;
    if (z->st.plain_in > ZIO_SLACK && z->st.plain_in / ZIO_RATIO > z->st.raw_in) {
        log_warn("[%s]: compressed stream inflates beyond %d:1, closing", c->peer_ip, ZIO_RATIO);
        errno = EPROTO;
        return -1;
    }
    return (ssize_t)made;
}

/* Passes the peer's plain replies through, up to the LF of the last line
 * of the last of them (RFC 5321 4.2.1: "250-" goes on, "250 " ends). */
static ssize_t zio_plain_reply(struct conn *c, struct zio *z, unsigned char *buf, size_t n)
{
    if (!z->rlen) {
        ssize_t r = conn_raw_read(c, z->rbuf, sizeof z->rbuf);
        if (r <= 0)
            return r;
        z->rlen = (size_t)r;
    }
    size_t k = 0;
    while (k < z->rlen && k < n && z->reply_plain) {
        unsigned char ch = z->rbuf[k++];
        if (ch == '\n') {
            if (z->reply_last || z->reply_col < 4)
                z->reply_plain--;
            z->reply_col = z->reply_last = 0;
            continue;
        }
        if (z->reply_col++ == 3)
            z->reply_last = ch != '-';      /* "250 text", or "250" alone */
    }
    memcpy(buf, z->rbuf, k);
    memmove(z->rbuf, z->rbuf + k, z->rlen - k);
    z->rlen -= k;
    return (ssize_t)k;
}

ssize_t zio_io_read(struct conn *c, void *buf, size_t n)
{
    struct zio *z = c->zio;

    if (z->reply_plain)
        return zio_plain_reply(c, z, buf, n);

    for (int guard = 0; guard < 64; guard++) {
        if (z->rlen || z->more) {
            ssize_t made = zio_inflate(c, z, buf, n);
            if (made != 0)
                return made;
            if (z->rlen == sizeof z->rbuf) {
                errno = EPROTO;         /* a full buffer that yields nothing */
                return -1;
            }
        }
        ssize_t r = conn_raw_read(c, z->rbuf + z->rlen, sizeof z->rbuf - z->rlen);
        if (r <= 0)
            return r;
        z->rlen += (size_t)r;
    }
    errno = EAGAIN;
    return -1;
}

/* Keeps our own stream inside the ratio the peer enforces. */
static void zio_guard(struct zio *z)
{
    uint64_t plain = z->st.plain_out, raw = z->st.raw_out;
    int huff = z->huffman;
    if (!z->huffman && plain > ZIO_SLACK / 2 && plain / (ZIO_RATIO / 2) > raw)
        huff = 1;
    else if (z->huffman && plain / (ZIO_RATIO / 4) <= raw)
        huff = 0;
    int level = huff ? 1 : z->free_run >= ZIO_FAST_RUN ? ZIO_FAST_LEVEL : ZIO_LEVEL;
    if ((huff == z->huffman && level == z->level) || z->flush_pending || sizeof z->wbuf - z->wlen < 4096)
        return;
    z->out.next_in = NULL;
    z->out.avail_in = 0;
    z->out.next_out = z->wbuf + z->wlen;
    z->out.avail_out = (uInt)(sizeof z->wbuf - z->wlen);
    if (deflateParams(&z->out, level, huff ? Z_HUFFMAN_ONLY : Z_DEFAULT_STRATEGY) == Z_OK) {
        size_t made = sizeof z->wbuf - z->wlen - z->out.avail_out;
        z->wlen += made;
        z->st.raw_out += made;
        z->huffman = huff;
        z->level = level;
        if (level == ZIO_FAST_LEVEL && !huff)
            z->st.fast_switches++;
    }
}

/* Moves c->out into the compressed buffer: plain prefix first, then
 * deflate with a sync flush at the end of what there is. */
static int zio_compress(struct conn *c, struct zio *z)
{
    size_t space = sizeof z->wbuf - z->wlen;

    if (z->plain) {
        size_t k = z->plain < space ? z->plain : space;
        memcpy(z->wbuf + z->wlen, c->out, k);
        z->wlen += k;
        memmove(c->out, c->out + k, c->out_len - k);
        c->out_len -= k;
        z->plain -= k;
        if (z->plain)
            return 0;
        space -= k;                     /* the compressed rest goes in the same write */
    }
    if ((!c->out_len && !z->flush_pending) || space < 64)
        return 0;
    zio_guard(z);
    space = sizeof z->wbuf - z->wlen;
    z->out.next_in = c->out;
    z->out.avail_in = (uInt)c->out_len;
    z->out.next_out = z->wbuf + z->wlen;
    z->out.avail_out = (uInt)space;
    clock_t t0 = clock();
    int rc = deflate(&z->out, Z_SYNC_FLUSH);
    z->st.cpu_us += (uint64_t)((clock() - t0) * 1000000.0 / CLOCKS_PER_SEC);
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
        errno = EPROTO;
        return -1;
    }
    size_t used = c->out_len - z->out.avail_in, made = space - z->out.avail_out;
    memmove(c->out, c->out + used, c->out_len - used);
    c->out_len -= used;
    z->wlen += made;
    z->st.plain_out += used;
    z->st.raw_out += made;
    /* Output space ran out: the flush goes on when there is room. */
    z->flush_pending = z->out.avail_out == 0;
    return 0;
}

int zio_io_flush(struct conn *c)
{
    struct zio *z = c->zio;

    for (;;) {
        if (zio_compress(c, z) < 0)
            return -1;
        if (!z->wlen)
            return c->out_len || z->flush_pending ? 1 : 0;
        ssize_t w = conn_raw_write(c, z->wbuf, z->wlen);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                z->free_run = 0;
                return 1;
            }
            return -1;
        }
        z->free_run += (uint64_t)w;
        memmove(z->wbuf, z->wbuf + w, z->wlen - (size_t)w);
        z->wlen -= (size_t)w;
    }
}
