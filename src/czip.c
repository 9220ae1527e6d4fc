/*
 * czip.c: a connection's stream compression, raw DEFLATE both ways
 * (RFC 1951 without zlib header), as IMAP COMPRESS=DEFLATE (RFC 4978)
 * wants it.  This module only transforms buffers; the loop (loop.c) moves
 * the bytes between them and the socket (or TLS, which sits below:
 * RFC 4978 4 compresses before encrypting).
 *
 * Output is flushed with Z_SYNC_FLUSH whenever the connection flushes, so
 * every reply reaches the client whole (RFC 4978 4: "the server MUST flush
 * at the end of each response").  Memory per connection is bounded: the
 * two zlib streams (window 32 KB each way, deflate at memLevel 8) and two
 * staging buffers of CZIP_BUF octets.
 */
#include "internal.h"

#include <string.h>

#define CZIP_BUF (16 * 1024)

struct czip {
    z_stream in, out;
    unsigned char zin[CZIP_BUF];        /* compressed octets read, not inflated */
    size_t zin_off, zin_len;
    unsigned char zout[CZIP_BUF];       /* compressed octets not yet sent */
    size_t zout_off, zout_len;
    size_t plain;                       /* octets of the output to send as they are first */
    int more;                           /* deflate may hold output it could not stage */
    int err;
};

struct czip *czip_new(size_t plain)
{
    struct czip *z = calloc(1, sizeof *z);

    if (!z)
        return NULL;
    if (inflateInit2(&z->in, -15) != Z_OK) {
        free(z);
        return NULL;
    }
    /* Level 6 is zlib's default; for mail text it gives most of what 9
     * gives at a fraction of the CPU, which matters on small boxes. */
    if (deflateInit2(&z->out, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        inflateEnd(&z->in);
        free(z);
        return NULL;
    }
    z->plain = plain;
    return z;
}

void czip_free(struct czip *z)
{
    if (!z)
        return;
    inflateEnd(&z->in);
    deflateEnd(&z->out);
    free(z);
}

/* ------------------------------------------------------------------ in */

size_t czip_in_room(struct czip *z, unsigned char **p)
{
    if (z->zin_off == z->zin_len)
        z->zin_off = z->zin_len = 0;
    if (z->zin_off && z->zin_len == CZIP_BUF) {
        memmove(z->zin, z->zin + z->zin_off, z->zin_len - z->zin_off);
        z->zin_len -= z->zin_off;
        z->zin_off = 0;
    }
    *p = z->zin + z->zin_len;
    return CZIP_BUF - z->zin_len;
}

void czip_in_added(struct czip *z, size_t n)
{
    z->zin_len += n;
}

int czip_in_pending(const struct czip *z)
{
    return z->zin_off < z->zin_len;
}

/* Inflates buffered input into out: octets produced (0: more input is
 * needed), -1 on a corrupt stream. */
ssize_t czip_in(struct czip *z, unsigned char *out, size_t n)
{
    if (z->err)
        return -1;
    if (!n || z->zin_off == z->zin_len)
        return 0;
    z->in.next_in = z->zin + z->zin_off;
    z->in.avail_in = (uInt)(z->zin_len - z->zin_off);
    z->in.next_out = out;
    z->in.avail_out = (uInt)n;
    int rc = inflate(&z->in, Z_SYNC_FLUSH);
    z->zin_off = z->zin_len - z->in.avail_in;
    if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END) {
        z->err = 1;
        return -1;
    }
    return (ssize_t)(n - z->in.avail_out);
}

/* ----------------------------------------------------------------- out */

size_t czip_plain_left(const struct czip *z)
{
    return z->plain;
}

void czip_plain_sent(struct czip *z, size_t n)
{
    z->plain -= n < z->plain ? n : z->plain;
}

/* Compressed octets waiting to be sent. */
size_t czip_out_pending(struct czip *z, const unsigned char **p)
{
    *p = z->zout + z->zout_off;
    return z->zout_len - z->zout_off;
}

void czip_out_sent(struct czip *z, size_t n)
{
    z->zout_off += n;
    if (z->zout_off == z->zout_len)
        z->zout_off = z->zout_len = 0;
}

/* Compresses what fits of in[0..n) into the staging buffer, flushed;
 * returns the octets of in consumed, or -1. */
ssize_t czip_out(struct czip *z, const unsigned char *in, size_t n)
{
    if (z->err)
        return -1;
    if (z->zout_len)
        return 0;                       /* send what is staged first */
    if (!n && !z->more)
        return 0;
    z->out.next_in = (Bytef *)in;
    z->out.avail_in = (uInt)n;
    z->out.next_out = z->zout;
    z->out.avail_out = CZIP_BUF;
    int rc = deflate(&z->out, Z_SYNC_FLUSH);
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
        z->err = 1;
        return -1;
    }
    z->zout_len = CZIP_BUF - z->out.avail_out;
    /* A full buffer may leave part of the flush inside zlib. */
    z->more = z->out.avail_out == 0;
    return (ssize_t)(n - z->out.avail_in);
}

int czip_out_busy(const struct czip *z)
{
    return z->zout_off < z->zout_len || z->more;
}
