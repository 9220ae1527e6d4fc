/*
 * md5.c: the MD5 message digest (RFC 1321) and HMAC-MD5 (RFC 2104).
 *
 * MD5 is broken for collision resistance and is used here only because
 * CRAM-MD5 (RFC 2195) is defined with it; HMAC-MD5 does not depend on
 * collision resistance.  Nothing else in mailnode may use it.
 */
#include "internal.h"

#include <string.h>

struct md5_ctx {
    uint32_t a, b, c, d;                /* RFC 1321 3.3: the MD buffer */
    uint64_t len;                       /* bytes hashed so far */
    unsigned char block[64];
    size_t fill;                        /* bytes waiting in block */
};

/* RFC 1321 3.4: T[i] is the integer part of 4294967296 * abs(sin(i)),
 * i = 1..64, listed here so the result does not depend on libm. */
static const uint32_t md5_t[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

/* The shift amounts of each round, four per round (RFC 1321 3.4). */
static const unsigned char md5_s[4][4] = {
    { 7, 12, 17, 22 }, { 5, 9, 14, 20 }, { 4, 11, 16, 23 }, { 6, 10, 15, 21 },
};

static uint32_t md5_rotl32(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32 - n));
}

/* RFC 1321 3.4: the block is sixteen little-endian words. */
static uint32_t md5_load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void md5_store_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* One 64-byte block: four rounds of sixteen steps.  Round r uses the
 * auxiliary function F, G, H or I and visits the words in the order the
 * RFC gives (k, 5k+1, 3k+5, 7k, all mod 16). */
static void md5_block(struct md5_ctx *m, const unsigned char *p)
{
    uint32_t x[16], a = m->a, b = m->b, c = m->c, d = m->d;

    for (int i = 0; i < 16; i++)
        x[i] = md5_load_le32(p + 4 * i);
    for (int i = 0; i < 64; i++) {
        int round = i / 16;
        uint32_t f, tmp;
        int k;
        switch (round) {
        case 0:  f = (b & c) | (~b & d);  k = i; break;
        case 1:  f = (b & d) | (c & ~d);  k = (5 * i + 1) % 16; break;
        case 2:  f = b ^ c ^ d;           k = (3 * i + 5) % 16; break;
        default: f = c ^ (b | ~d);        k = (7 * i) % 16; break;
        }
        tmp = d;
        d = c;
        c = b;
        b = b + md5_rotl32(a + f + x[k] + md5_t[i], md5_s[round][i % 4]);
        a = tmp;
    }
    m->a += a;
    m->b += b;
    m->c += c;
    m->d += d;
}

static void md5_init(struct md5_ctx *m)
{
    /* RFC 1321 3.3: the initial buffer, low-order bytes first. */
    m->a = 0x67452301;
    m->b = 0xefcdab89;
    m->c = 0x98badcfe;
    m->d = 0x10325476;
    m->len = 0;
    m->fill = 0;
}

static void md5_update(struct md5_ctx *m, const void *data, size_t len)
{
    const unsigned char *p = data;

    m->len += len;
    if (m->fill) {
        size_t take = 64 - m->fill < len ? 64 - m->fill : len;
        memcpy(m->block + m->fill, p, take);
        m->fill += take;
        p += take;
        len -= take;
        if (m->fill < 64)
            return;
        md5_block(m, m->block);
        m->fill = 0;
    }
    for (; len >= 64; p += 64, len -= 64)
        md5_block(m, p);
    memcpy(m->block, p, len);
    m->fill = len;
}

/* RFC 1321 3.1 and 3.2: a 1 bit, zeros up to 56 mod 64 bytes, then the
 * length in bits as a little-endian 64-bit number. */
static void md5_final(struct md5_ctx *m, unsigned char out[16])
{
    static const unsigned char pad[64] = { 0x80 };
    unsigned char lenbuf[8];
    uint64_t bits = m->len * 8;
    size_t padlen = m->fill < 56 ? 56 - m->fill : 120 - m->fill;

    md5_store_le32(lenbuf, (uint32_t)bits);
    md5_store_le32(lenbuf + 4, (uint32_t)(bits >> 32));
    md5_update(m, pad, padlen);
    md5_update(m, lenbuf, 8);
    md5_store_le32(out, m->a);
    md5_store_le32(out + 4, m->b);
    md5_store_le32(out + 8, m->c);
    md5_store_le32(out + 12, m->d);
    sodium_memzero(m, sizeof *m);
}

void md5_digest(const void *data, size_t len, unsigned char out[16])
{
    struct md5_ctx m;
    md5_init(&m);
    md5_update(&m, data, len);
    md5_final(&m, out);
}

/* RFC 2104 2: H(K XOR opad, H(K XOR ipad, text)), with B = 64; a key
 * longer than B is first replaced by its digest. */
void hmac_md5(const void *key, size_t keylen, const void *msg, size_t msglen,
              unsigned char out[16])
{
    unsigned char k[64], pad[64], inner[16];
    struct md5_ctx m;

    memset(k, 0, sizeof k);
    if (keylen > sizeof k)
        md5_digest(key, keylen, k);
    else if (keylen)
        memcpy(k, key, keylen);

    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = k[i] ^ 0x36;
    md5_init(&m);
    md5_update(&m, pad, sizeof pad);
    md5_update(&m, msg, msglen);
    md5_final(&m, inner);

    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = k[i] ^ 0x5c;
    md5_init(&m);
    md5_update(&m, pad, sizeof pad);
    md5_update(&m, inner, sizeof inner);
    md5_final(&m, out);

    sodium_memzero(k, sizeof k);
    sodium_memzero(pad, sizeof pad);
    sodium_memzero(inner, sizeof inner);
}
