/*
 * mime_words.c: header text as people wrote it.  RFC 2047 encoded words
 * ("=?utf-8?B?...?=", "=?iso-8859-1?Q?...?=") decoded to UTF-8, and a
 * simple case folding of UTF-8 text, so that IMAP SEARCH FROM/TO/CC/
 * SUBJECT (RFC 3501 6.4.4: case-insensitive substring) finds "Grüße" in
 * "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=" and "über" in "ÜBER".
 *
 * Bounded: the caller gives the output buffer; text that does not fit is
 * cut.  A malformed encoded word is left as it stands (RFC 2047 6.3: it
 * is then ordinary text).
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <iconv.h>
#include <string.h>
#include <strings.h>

struct mw_out {
    char *p;
    size_t len, cap;                    /* cap excludes the NUL */
};

static void mw_put(struct mw_out *o, const char *s, size_t n)
{
    if (n > o->cap - o->len)
        n = o->cap - o->len;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static int mw_hex(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
           c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int mw_b64(int c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 :
           c >= '0' && c <= '9' ? c - '0' + 52 : c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* The encoded text of one word into raw octets (RFC 2047 4.1 B, 4.2 Q);
 * -1 if it is not valid. */
static long mw_decode_text(int enc, const char *t, size_t n, char *out)
{
    size_t k = 0;

    if (enc == 'Q') {
        for (size_t i = 0; i < n; i++) {
            if (t[i] == '_') {
                out[k++] = ' ';
            } else if (t[i] == '=') {
                int h, l;
                if (i + 2 >= n || (h = mw_hex(t[i + 1])) < 0 || (l = mw_hex(t[i + 2])) < 0)
                    return -1;
                out[k++] = (char)(h * 16 + l);
                i += 2;
            } else {
                out[k++] = t[i];
            }
        }
        return (long)k;
    }
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i] == '=')
            break;
        int v = mw_b64((unsigned char)t[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[k++] = (char)((acc >> bits) & 0xff);
        }
    }
    return (long)k;
}

/* Raw octets in charset cs, as UTF-8 into o. */
static void mw_convert(struct mw_out *o, const char *cs, char *raw, size_t n)
{
    if (!strcasecmp(cs, "utf-8") || !strcasecmp(cs, "utf8") || !strcasecmp(cs, "us-ascii")) {
        mw_put(o, raw, n);
        return;
    }
    iconv_t cd = iconv_open("UTF-8", cs);
    if (cd == (iconv_t)-1) {
        mw_put(o, raw, n);              /* unknown charset: the octets as they are */
        return;
    }
    char *in = raw, *out = o->p + o->len;
    size_t inleft = n, outleft = o->cap - o->len;
    while (inleft && iconv(cd, &in, &inleft, &out, &outleft) == (size_t)-1) {
        if (errno != EILSEQ && errno != EINVAL)
            break;                      /* E2BIG: the output is full */
        in++;                           /* an octet the charset has not: skip it */
        inleft--;
    }
    o->len = o->cap - outleft;
    iconv_close(cd);
}

/* One encoded word at in[0] ("=?"): its length, or 0 if it is not one. */
static size_t mw_word(const char *in, size_t n, struct mw_out *o)
{
    char cs[64];
    size_t i = 2, c0 = 2;

    while (i < n && in[i] != '?' && !isspace((unsigned char)in[i]))
        i++;
    if (i >= n || in[i] != '?' || i - c0 == 0 || i - c0 >= sizeof cs)
        return 0;
    memcpy(cs, in + c0, i - c0);
    cs[i - c0] = '\0';
    char *star = strchr(cs, '*');       /* RFC 2231 5: charset*language */
    if (star)
        *star = '\0';
    if (i + 3 > n || in[i + 2] != '?')
        return 0;
    int enc = toupper((unsigned char)in[i + 1]);
    if (enc != 'B' && enc != 'Q')
        return 0;
    size_t t0 = i + 3, t = t0;
    while (t + 1 < n && !(in[t] == '?' && in[t + 1] == '=') && !isspace((unsigned char)in[t]))
        t++;
    if (t + 1 >= n || in[t] != '?' || in[t + 1] != '=')
        return 0;
    char raw[256];
    if (t - t0 > sizeof raw)
        return 0;                       /* RFC 2047 2: a word is at most 75 characters */
    long k = mw_decode_text(enc, in + t0, t - t0, raw);
    if (k < 0)
        return 0;
    mw_convert(o, cs, raw, (size_t)k);
    return t + 2;
}

size_t mime_words_decode(const char *in, size_t n, char *out, size_t cap)
{
    struct mw_out o = { out, 0, cap ? cap - 1 : 0 };
    int after_word = 0;                 /* the last thing copied was an encoded word */

    for (size_t i = 0; i < n && cap;) {
        size_t w = in[i] == '=' && i + 1 < n && in[i + 1] == '?' ? mw_word(in + i, n - i, &o) : 0;
        if (w) {
            i += w;
            after_word = 1;
            continue;
        }
        if (after_word && isspace((unsigned char)in[i])) {
            /* RFC 2047 6.2: white space between two encoded words goes. */
            size_t j = i;
            while (j < n && isspace((unsigned char)in[j]))
                j++;
            if (j + 1 < n && in[j] == '=' && in[j + 1] == '?') {
                size_t w2 = mw_word(in + j, n - j, &o);
                if (w2) {
                    i = j + w2;
                    continue;
                }
            }
        }
        after_word = 0;
        mw_put(&o, in + i, 1);
        i++;
    }
    if (cap)
        out[o.len] = '\0';
    return o.len;
}

/* The lower-case partner of code point c, for the scripts a field site's
 * mail is likely in (Latin, Greek, Cyrillic); others are left alone. */
static unsigned mw_lower(unsigned c)
{
    if (c < 0x80)
        return c >= 'A' && c <= 'Z' ? c + 32 : c;
    if ((c >= 0xc0 && c <= 0xde && c != 0xd7) || (c >= 0x391 && c <= 0x3ab && c != 0x3a2) ||
        (c >= 0x410 && c <= 0x42f))
        return c + 32;
    if (c >= 0x400 && c <= 0x40f)
        return c + 80;
    if (((c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177)) && !(c & 1))
        return c + 1;
    if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) && (c & 1))
        return c + 1;
    return c;
}

size_t mime_utf8_fold(const char *in, size_t n, char *out, size_t cap)
{
    size_t k = 0;

    for (size_t i = 0; i < n && cap;) {
        unsigned char b = (unsigned char)in[i];
        unsigned c;
        size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
        int ok = len && i + len <= n;
        for (size_t j = 1; ok && j < len; j++)
            ok = ((unsigned char)in[i + j] >> 6) == 2;
        if (!ok) {                      /* not UTF-8: the octet as it is */
            if (k + 1 >= cap)
                break;
            out[k++] = (char)b;
            i++;
            continue;
        }
        c = len == 1 ? b : len == 2 ? b & 0x1f : len == 3 ? b & 0x0f : b & 0x07;
        for (size_t j = 1; j < len; j++)
            c = (c << 6) | ((unsigned char)in[i + j] & 0x3f);
        c = mw_lower(c);
        /* Folding keeps each character in its UTF-8 length class here. */
        char enc[4];
        size_t el = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
        if (el == 1) {
            enc[0] = (char)c;
        } else {
            for (size_t j = el; j-- > 1; c >>= 6)
                enc[j] = (char)(0x80 | (c & 0x3f));
            enc[0] = (char)((el == 2 ? 0xc0 : el == 3 ? 0xe0 : 0xf0) | c);
        }
        if (k + el >= cap)
            break;
        memcpy(out + k, enc, el);
        k += el;
        i += len;
    }
    if (cap)
        out[k] = '\0';
    return k;
}
