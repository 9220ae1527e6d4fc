/*
 * mime.c: the message text as it streams in.  The DATA decoder undoes
 * dot-stuffing and finds the end of the data; the scanner watches the
 * header section (Received count for loop detection), 8-bit bytes and
 * line lengths.  Both work on any split of the input, byte by byte state,
 * so memory never depends on the message size.
 */
#include "internal.h"

#include <string.h>

enum {
    D_BOL,          /* after CRLF (or at the start): a dot here is special */
    D_TEXT,         /* inside a line */
    D_CR,           /* after a CR */
    D_DOT,          /* after CRLF "." */
    D_DOTCR,        /* after CRLF "." CR */
    D_RAW,          /* BDAT: no dot handling */
    D_RAW_CR
};

void mime_data_init(struct mime_data *d)
{
    memset(d, 0, sizeof *d);
    d->state = D_BOL;
    d->in_header = 1;
    d->hdr_line_start = 1;
}

void mime_scan(struct mime_data *d, const unsigned char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = buf[i];
        if (c >= 0x80)
            d->eightbit = 1;
        if (c == '\n') {
            d->hdr_line_start = 1;
            d->hdr_name_len = 0;
            d->line_len = 0;
            continue;
        }
        if (c != '\r' && ++d->line_len > SMTP_TEXT_MAX - 2)
            d->long_line = 1;
        if (!d->in_header)
            continue;
        if (d->hdr_line_start) {
            d->hdr_line_start = 0;
            /* RFC 5322 2.1: the header section ends at the first empty line. */
            if (c == '\r') {
                d->in_header = 0;
                continue;
            }
        }
        if (d->hdr_name_len >= 0 && d->hdr_name_len < (int)sizeof d->hdr_name) {
            d->hdr_name[d->hdr_name_len++] = (char)c;
            if (d->hdr_name_len == 9) {
                if (!strncasecmp(d->hdr_name, "received:", 9))
                    d->received++;
                d->hdr_name_len = -1;   /* decided for this line */
            }
        }
    }
}

/* Output is collected in a small buffer and handed on in runs. */
struct data_out {
    unsigned char buf[4096];
    size_t len;
    mime_emit_fn emit;
    void *arg;
    struct mime_data *d;
    int err;
};

static void data_out_flush(struct data_out *o)
{
    if (!o->len)
        return;
    mime_scan(o->d, o->buf, o->len);
    o->d->size += (int64_t)o->len;
    if (!o->err && o->emit(o->arg, o->buf, o->len))
        o->err = 1;
    o->len = 0;
}

static inline void data_out_byte(struct data_out *o, unsigned char c)
{
    if (o->len == sizeof o->buf)
        data_out_flush(o);
    o->buf[o->len++] = c;
}

static inline void data_out_crlf(struct data_out *o)
{
    data_out_byte(o, '\r');
    data_out_byte(o, '\n');
}

/* RFC 5321 4.1.1.4 and 4.5.2: only CRLF "." CRLF ends the data, and a
 * leading dot is removed only at the start of a CRLF-terminated line.  A
 * bare LF or bare CR is stored as CRLF but never starts a line where a
 * dot counts, so "\n.\n", "\r.\r" and their mixtures are plain data here
 * and can never end a message early or smuggle a second one past a relay
 * further on. */
size_t mime_data_feed(struct mime_data *d, const unsigned char *in, size_t n,
                      mime_emit_fn emit, void *arg, int *done)
{
    struct data_out o = { .len = 0, .emit = emit, .arg = arg, .d = d, .err = 0 };
    size_t i;

    *done = 0;
    for (i = 0; i < n && !*done; i++) {
        unsigned char c = in[i];
        switch (d->state) {
        case D_BOL:
            if (c == '.') {
                d->state = D_DOT;
                break;
            }
            /* fall through */
        case D_TEXT:
        text:
            if (c == '\r')
                d->state = D_CR;
            else if (c == '\n') {
                data_out_crlf(&o);           /* bare LF */
                d->state = D_TEXT;
            } else {
                data_out_byte(&o, c);
                d->state = D_TEXT;
            }
            break;
        case D_CR:
            if (c == '\n') {
                data_out_crlf(&o);
                d->state = D_BOL;
                break;
            }
            data_out_crlf(&o);               /* bare CR */
            d->state = D_TEXT;
            goto text;
        case D_DOT:
            if (c == '\r') {
                d->state = D_DOTCR;
                break;
            }
            d->state = D_TEXT;          /* the stuffed dot is dropped */
            goto text;
        case D_DOTCR:
            if (c == '\n') {
                *done = 1;
                d->state = D_BOL;
                break;
            }
            /* "." CR x: a dot line ended by a bare CR, kept as data. */
            data_out_crlf(&o);
            d->state = D_TEXT;
            goto text;
        }
    }
    data_out_flush(&o);
    return i;
}

/* BDAT chunks: the same normalisation and scanning, without dot handling
 * and without an end marker (RFC 3030 2: the octets are taken as they are
 * counted).  A CR at the end of the last chunk is completed by
 * mime_raw_finish. */
int mime_raw_feed(struct mime_data *d, const unsigned char *in, size_t n,
                  mime_emit_fn emit, void *arg)
{
    struct data_out o = { .len = 0, .emit = emit, .arg = arg, .d = d, .err = 0 };
    if (d->state != D_RAW && d->state != D_RAW_CR)
        d->state = D_RAW;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = in[i];
        if (d->state == D_RAW_CR) {
            data_out_crlf(&o);
            d->state = D_RAW;
            if (c == '\n')
                continue;
        }
        if (c == '\r')
            d->state = D_RAW_CR;
        else if (c == '\n')
            data_out_crlf(&o);
        else
            data_out_byte(&o, c);
    }
    data_out_flush(&o);
    return o.err ? -1 : 0;
}

int mime_raw_finish(struct mime_data *d, mime_emit_fn emit, void *arg)
{
    struct data_out o = { .len = 0, .emit = emit, .arg = arg, .d = d, .err = 0 };
    if (d->state == D_RAW_CR) {
        data_out_crlf(&o);
        d->state = D_RAW;
    }
    data_out_flush(&o);
    return o.err ? -1 : 0;
}
