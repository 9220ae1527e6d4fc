/*
 * imap_fetch.c: FETCH (RFC 3501 6.4.5), STORE (6.4.6), COPY (6.4.7) and
 * MOVE (RFC 6851), with their UID forms and COPYUID (RFC 4315).
 *
 * FETCH is a streaming job: one message at a time, its short items
 * (FLAGS, UID, ENVELOPE, BODYSTRUCTURE...) written as text, its message
 * sections as literals copied from the store while the client reads.  A
 * section starts from the part table of the message (imap_mime.c) and
 * seeks to its first chunk (store_reader_seek), so BODY[2]<1000.500> of a
 * 100 MB message inflates one or two chunks, and BODY[] of it one chunk
 * at a time.  Message coordinates are the stored prefix (Return-Path)
 * followed by the body; the part table counts from the body's start.
 */
#include "internal.h"

#include <ctype.h>
#include <string.h>
#include <time.h>

#define FETCH_ITEMS      32
#define FETCH_PATH       16
#define FETCH_FIELDS_MAX 1024           /* octets of a HEADER.FIELDS list */
#define FETCH_HDR_MAX    (256 * 1024)   /* a header filtered in memory */

enum { FI_UID, FI_FLAGS, FI_INTERNALDATE, FI_SIZE, FI_ENVELOPE, FI_BODYSTRUCTURE, FI_BODY, FI_SECTION,
       FI_MODSEQ };
enum { SP_ALL, SP_HEADER, SP_FIELDS, SP_FIELDS_NOT, SP_TEXT, SP_MIME };

struct fetch_item {
    int kind;
    int peek;
    int spec;
    uint32_t path[FETCH_PATH];
    int npath;
    char fields[FETCH_FIELDS_MAX];      /* upper case, space separated */
    int partial;
    int64_t origin, count;
    char label[FETCH_FIELDS_MAX + 64];  /* the name in the response */
};

struct fetch_job {
    int uid;                            /* UID FETCH: UID is always returned */
    int64_t changedsince;               /* RFC 7162 3.1.4.1: only messages changed after; 0 none */
    struct fetch_item items[FETCH_ITEMS];
    int nitems;
    size_t *idx, nidx, cur;
    int started, item;
    int need_sp;
    int seen_set;                        /* an item was written: a space before the next */
    struct store_imap_msg m;
    struct store_imap_cache cache;
    int cache_state;
    /* The section being streamed. */
    int streaming;
    struct store_reader r;
    int reader_open;
    int64_t pos, end;                   /* message coordinates */
    /* Rows of the next messages, read in one range query. */
    struct store_imap_msg *batch;
    size_t bfirst, bn;                  /* batch covers idx[bfirst .. bfirst + bn) */
    uint32_t *buids;                    /* their uids, 0 where expunged */
};

#define FETCH_BATCH 64

struct fetch_fill {
    struct fetch_job *j;
    const uint32_t *uids;
};

static int fetch_fill_one(void *arg, const struct store_imap_msg *m)
{
    struct fetch_fill *f = arg;
    struct fetch_job *j = f->j;
    for (size_t k = 0; k < j->bn; k++)
        if (f->uids[k] == (uint32_t)m->uid) {
            j->batch[k] = *m;
            j->buids[k] = (uint32_t)m->uid;
            break;
        }
    return 0;
}

/* The row of the message at j->cur: from the batch, read FETCH_BATCH at
 * a time.  STORE_NOTFOUND when it was expunged meanwhile. */
static int fetch_row(struct imap *s, struct fetch_job *j)
{
    uint32_t want[FETCH_BATCH];

    if (!j->batch) {
        j->batch = malloc(FETCH_BATCH * sizeof *j->batch);
        j->buids = malloc(FETCH_BATCH * sizeof *j->buids);
        if (!j->batch || !j->buids)
            return STORE_ERR;
    }
    if (j->cur < j->bfirst || j->cur >= j->bfirst + j->bn) {
        j->bfirst = j->cur;
        j->bn = j->nidx - j->cur < FETCH_BATCH ? j->nidx - j->cur : FETCH_BATCH;
        for (size_t k = 0; k < j->bn; k++) {
            want[k] = s->v.uids[j->idx[j->cur + k]];
            j->buids[k] = 0;
        }
        struct fetch_fill f = { j, want };
        if (store_imap_range(s->user_id, s->v.f.key, want[0], want[j->bn - 1], fetch_fill_one, &f))
            return STORE_ERR;
    }
    size_t k = j->cur - j->bfirst;
    if (!j->buids[k])
        return STORE_NOTFOUND;
    j->m = j->batch[k];
    return 0;
}

/* --------------------------------------------------------- the parts */

struct fetch_ent {
    int parent;
    char type;
    int64_t hdr, body, end;
};

/* The part table of a message as an array (malloc'd). */
static struct fetch_ent *fetch_parts(const char *t, int *n)
{
    int cap = 8;
    struct fetch_ent *e = malloc(cap * sizeof *e);
    *n = 0;
    while (e && t && *t) {
        long long h, b, x;
        int parent;
        char type;
        if (sscanf(t, "%d %c %lld %lld %lld", &parent, &type, &h, &b, &x) != 5)
            break;
        if (*n == cap) {
            struct fetch_ent *q = realloc(e, (size_t)(cap *= 2) * sizeof *e);
            if (!q) {
                free(e);
                return NULL;
            }
            e = q;
        }
        e[*n] = (struct fetch_ent){ parent, type, h, b, x };
        (*n)++;
        t = strchr(t, '\n');
        if (t)
            t++;
    }
    return e;
}

static int fetch_child(const struct fetch_ent *e, int n, int parent, uint32_t k)
{
    for (int i = parent + 1; i < n; i++)
        if (e[i].parent == parent && --k == 0)
            return i;
    return -1;
}

/* RFC 3501 6.4.5: part numbers name the parts of a multipart, and part
 * 1 of a message that is not multipart is its body; a message/rfc822
 * part's numbers continue into the message it holds. */
static int fetch_resolve(const struct fetch_ent *e, int n, const uint32_t *path, int np)
{
    int cont = 0, msg_cont = 1, part = 0;
    for (int i = 0; i < np; i++) {
        if (e[cont].type == 'M')
            part = fetch_child(e, n, cont, path[i]);
        else if (msg_cont && path[i] == 1)
            part = cont;
        else
            return -1;
        if (part < 0)
            return -1;
        if (i == np - 1)
            break;
        if (e[part].type == 'M') {
            cont = part;
            msg_cont = 0;
        } else if (e[part].type == 'R') {
            cont = fetch_child(e, n, part, 1);
            msg_cont = 1;
            if (cont < 0)
                return -1;
        } else {
            return -1;
        }
    }
    return part;
}

/* The octets [a, b) a section names, in message coordinates; for the
 * HEADER.FIELDS forms, the header it filters. */
static int fetch_range(const struct fetch_item *it, const struct store_imap_cache *c, int64_t plen,
                       int64_t size, int64_t *a, int64_t *b)
{
    int n, ent = 0;
    struct fetch_ent *e = fetch_parts(c->parts, &n);
    int rc = 0;

    if (!e || !n) {
        free(e);
        return -1;
    }
    if (it->npath) {
        ent = fetch_resolve(e, n, it->path, it->npath);
        if (ent < 0) {
            free(e);
            *a = *b = 0;
            return 0;                   /* RFC 3501: a part that does not exist is empty */
        }
        if (it->spec == SP_HEADER || it->spec == SP_TEXT || it->spec == SP_FIELDS ||
            it->spec == SP_FIELDS_NOT) {
            if (e[ent].type != 'R' || (ent = fetch_child(e, n, ent, 1)) < 0) {
                free(e);
                *a = *b = 0;
                return 0;
            }
        }
    }
    switch (it->spec) {
    case SP_ALL:
        if (it->npath) {
            *a = plen + e[ent].body;
            *b = plen + e[ent].end;
        } else {
            *a = 0;
            *b = size;
        }
        break;
    case SP_MIME:
        *a = plen + e[ent].hdr;
        *b = plen + e[ent].body;
        break;
    case SP_TEXT:
        *a = plen + e[ent].body;
        *b = it->npath ? plen + e[ent].end : size;
        break;
    default:                            /* HEADER and the FIELDS forms */
        *a = ent ? plen + e[ent].hdr : 0;
        *b = plen + e[ent].body;
        break;
    }
    if (*b > size)
        *b = size;
    if (*a > *b)
        *a = *b;
    free(e);
    return rc;
}

/* --------------------------------------------------------- the parser */

static int fetch_p_fields(struct imap_p *p, char *out, size_t n)
{
    char f[256];
    size_t k = 0;
    if (imap_p_sp(p) || p->i >= p->n || p->s[p->i] != '(')
        return -1;
    p->i++;
    for (int first = 1;; first = 0) {
        if (p->i < p->n && p->s[p->i] == ')' && !first) {
            p->i++;
            break;
        }
        if ((!first && imap_p_sp(p)) || imap_p_astring(p, f, sizeof f, NULL))
            return -1;
        size_t fl = strlen(f);
        if (k + fl + 2 > n)
            return -1;
        if (k)
            out[k++] = ' ';
        for (size_t i = 0; i < fl; i++)
            out[k++] = (char)toupper((unsigned char)f[i]);
    }
    out[k] = 0;
    return 0;
}

/* section (RFC 3501 9), after "[", up to and with "]". */
static int fetch_p_section(struct imap_p *p, struct fetch_item *it)
{
    char word[32];
    it->spec = SP_ALL;
    while (p->i < p->n && isdigit((unsigned char)p->s[p->i])) {
        int64_t v;
        if (it->npath == FETCH_PATH || imap_p_number(p, &v) || v < 1 || v > 0xffffffffLL)
            return -1;
        it->path[it->npath++] = (uint32_t)v;
        if (p->i < p->n && p->s[p->i] == '.')
            p->i++;
        else
            break;
    }
    if (p->i < p->n && p->s[p->i] != ']') {
        size_t k = 0;
        while (p->i < p->n && (isalpha((unsigned char)p->s[p->i]) || p->s[p->i] == '.') && k + 1 < sizeof word)
            word[k++] = (char)toupper((unsigned char)p->s[p->i++]);
        word[k] = 0;
        if (!strcmp(word, "HEADER"))
            it->spec = SP_HEADER;
        else if (!strcmp(word, "TEXT"))
            it->spec = SP_TEXT;
        else if (!strcmp(word, "MIME") && it->npath)
            it->spec = SP_MIME;
        else if (!strcmp(word, "HEADER.FIELDS"))
            it->spec = SP_FIELDS;
        else if (!strcmp(word, "HEADER.FIELDS.NOT"))
            it->spec = SP_FIELDS_NOT;
        else
            return -1;
        if ((it->spec == SP_FIELDS || it->spec == SP_FIELDS_NOT) &&
            fetch_p_fields(p, it->fields, sizeof it->fields))
            return -1;
    }
    if (p->i >= p->n || p->s[p->i] != ']')
        return -1;
    p->i++;
    return 0;
}

static void fetch_label(struct fetch_item *it, const char *name)
{
    static const char *const specs[] = { "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME" };
    struct imap_sb b = { 0 };
    int fields = it->spec == SP_FIELDS || it->spec == SP_FIELDS_NOT;

    imap_sb_printf(&b, "%s[", name);
    for (int i = 0; i < it->npath; i++)
        imap_sb_printf(&b, "%s%u", i ? "." : "", it->path[i]);
    if (it->npath && it->spec)
        imap_sb_str(&b, ".");
    imap_sb_str(&b, specs[it->spec]);
    if (fields) {
        imap_sb_str(&b, " (");
        imap_sb_str(&b, it->fields);
        imap_sb_str(&b, ")");
    }
    imap_sb_str(&b, "]");
    util_strlcpy(it->label, b.s && !b.err ? b.s : "BODY[]", sizeof it->label);
    imap_sb_free(&b);
}

static int fetch_p_item(struct imap_p *p, struct fetch_job *j)
{
    char word[32];
    size_t k = 0;
    struct fetch_item *it;

    if (j->nitems == FETCH_ITEMS)
        return -1;
    it = &j->items[j->nitems];
    memset(it, 0, sizeof *it);
    while (p->i < p->n && (isalnum((unsigned char)p->s[p->i]) || p->s[p->i] == '.') && k + 1 < sizeof word)
        word[k++] = (char)toupper((unsigned char)p->s[p->i++]);
    word[k] = 0;
    if (!strcmp(word, "UID"))
        it->kind = FI_UID;
    else if (!strcmp(word, "FLAGS"))
        it->kind = FI_FLAGS;
    else if (!strcmp(word, "INTERNALDATE"))
        it->kind = FI_INTERNALDATE;
    else if (!strcmp(word, "RFC822.SIZE"))
        it->kind = FI_SIZE;
    else if (!strcmp(word, "ENVELOPE"))
        it->kind = FI_ENVELOPE;
    else if (!strcmp(word, "BODYSTRUCTURE"))
        it->kind = FI_BODYSTRUCTURE;
    else if (!strcmp(word, "MODSEQ"))
        it->kind = FI_MODSEQ;
    else if (!strcmp(word, "RFC822") || !strcmp(word, "RFC822.HEADER") || !strcmp(word, "RFC822.TEXT")) {
        it->kind = FI_SECTION;
        it->spec = word[6] == 0 ? SP_ALL : word[7] == 'H' ? SP_HEADER : SP_TEXT;
        it->peek = it->spec == SP_HEADER;   /* RFC 3501 6.4.5: RFC822.HEADER does not set \Seen */
        util_strlcpy(it->label, word, sizeof it->label);
    } else if (!strcmp(word, "BODY") || !strcmp(word, "BODY.PEEK")) {
        if (p->i >= p->n || p->s[p->i] != '[') {
            if (word[4])
                return -1;
            it->kind = FI_BODY;
        } else {
            p->i++;
            it->kind = FI_SECTION;
            it->peek = word[4] != 0;
            if (fetch_p_section(p, it))
                return -1;
            if (p->i < p->n && p->s[p->i] == '<') {
                p->i++;
                if (imap_p_number(p, &it->origin) || p->i >= p->n || p->s[p->i] != '.')
                    return -1;
                p->i++;
                if (imap_p_number(p, &it->count) || it->count < 1 || p->i >= p->n || p->s[p->i] != '>')
                    return -1;
                p->i++;
                it->partial = 1;
            }
            fetch_label(it, "BODY");
        }
    } else {
        return -1;
    }
    j->nitems++;
    return 0;
}

static int fetch_add(struct fetch_job *j, int kind)
{
    if (j->nitems == FETCH_ITEMS)
        return -1;
    memset(&j->items[j->nitems], 0, sizeof j->items[0]);
    j->items[j->nitems++].kind = kind;
    return 0;
}

static int fetch_p_items(struct imap_p *p, struct fetch_job *j)
{
    char word[16];
    struct imap_p q = *p;

    /* RFC 3501 6.4.5: the macros. */
    if (!imap_p_atom(&q, word, sizeof word) && (q.i == q.n)) {
        if (!strcasecmp(word, "ALL") || !strcasecmp(word, "FAST") || !strcasecmp(word, "FULL")) {
            p->i = q.i;
            fetch_add(j, FI_FLAGS);
            fetch_add(j, FI_INTERNALDATE);
            fetch_add(j, FI_SIZE);
            if (toupper((unsigned char)word[1]) != 'A')
                fetch_add(j, FI_ENVELOPE);
            if (toupper((unsigned char)word[0]) == 'F' && toupper((unsigned char)word[1]) == 'U')
                fetch_add(j, FI_BODY);
            return 0;
        }
    }
    if (p->i < p->n && p->s[p->i] == '(') {
        p->i++;
        for (int first = 1;; first = 0) {
            if (p->i < p->n && p->s[p->i] == ')' && !first) {
                p->i++;
                return 0;
            }
            if ((!first && imap_p_sp(p)) || fetch_p_item(p, j))
                return -1;
        }
    }
    return fetch_p_item(p, j);
}

/* ----------------------------------------------------------- output */

static void fetch_internaldate(struct imap_sb *b, int64_t t)
{
    static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    long off = tm.tm_gmtoff / 60;
    imap_sb_printf(b, "\"%02d-%s-%04d %02d:%02d:%02d %c%02ld%02ld\"", tm.tm_mday, mon[tm.tm_mon],
                   tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec, off < 0 ? '-' : '+',
                   labs(off) / 60, labs(off) % 60);
}

static struct store_imap_cache *fetch_cache(struct fetch_job *j)
{
    if (!j->cache_state)
        j->cache_state = imap_cache_load(j->m.body_id, &j->cache) ? -1 : 1;
    return j->cache_state > 0 ? &j->cache : NULL;
}

struct fetch_grab {
    struct imap_sb b;
    int64_t left;
};

/* Copies [a, b) of the message into memory (at most FETCH_HDR_MAX). */
static int fetch_read(const struct store_imap_msg *m, int64_t a, int64_t b, struct imap_sb *out)
{
    static char buf[STORE_CHUNK];
    int64_t plen = (int64_t)strlen(m->prefix);
    struct store_reader r;

    if (b - a > FETCH_HDR_MAX)
        b = a + FETCH_HDR_MAX;
    if (a < plen) {
        int64_t e = b < plen ? b : plen;
        imap_sb_add(out, m->prefix + a, (size_t)(e - a));
        a = e;
    }
    if (a >= b)
        return out->err ? -1 : 0;
    if (store_reader_open(&r, m->body_id) || store_reader_seek(&r, a - plen)) {
        store_reader_close(&r);
        return -1;
    }
    while (a < b) {
        ssize_t k = store_reader_read(&r, buf, (size_t)(b - a < (int64_t)sizeof buf ? b - a : (int64_t)sizeof buf));
        if (k <= 0)
            break;
        imap_sb_add(out, buf, (size_t)k);
        a += k;
    }
    store_reader_close(&r);
    return out->err ? -1 : 0;
}

static int fetch_field_listed(const char *fields, const char *name, size_t n)
{
    for (const char *p = fields; *p;) {
        size_t k = strcspn(p, " ");
        if (k == n && !strncasecmp(p, name, n))
            return 1;
        p += k;
        while (*p == ' ')
            p++;
    }
    return 0;
}

/* RFC 3501 6.4.5 HEADER.FIELDS [.NOT]: the fields listed (or the
 * others), each with its continuation lines, and the blank line. */
static void fetch_filter(const char *h, size_t n, const char *fields, int not, struct imap_sb *out)
{
    size_t i = 0;
    int keep = 0;
    while (i < n) {
        const char *eol = memchr(h + i, '\n', n - i);
        size_t len = eol ? (size_t)(eol - (h + i)) + 1 : n - i;
        const char *line = h + i;
        if (len <= 2 && (line[0] == '\r' || line[0] == '\n'))
            break;                      /* the end of the header */
        if (line[0] != ' ' && line[0] != '\t') {
            const char *colon = memchr(line, ':', len);
            size_t nl = colon ? (size_t)(colon - line) : 0;
            while (nl && (line[nl - 1] == ' ' || line[nl - 1] == '\t'))
                nl--;
            keep = colon && fetch_field_listed(fields, line, nl) != not;
        }
        if (keep)
            imap_sb_add(out, line, len);
        i += len;
    }
    imap_sb_add(out, "\r\n", 2);
}

/* Starts the literal of a section: text for FIELDS, a stream otherwise. */
static int fetch_section(struct fetch_job *j, const struct fetch_item *it, struct imap_sb *b)
{
    struct store_imap_cache *c = fetch_cache(j);
    int64_t a, e, plen = (int64_t)strlen(j->m.prefix);

    if (!c || fetch_range(it, c, plen, j->m.size, &a, &e))
        return -1;
    imap_sb_str(b, it->label);
    if (it->partial)
        imap_sb_printf(b, "<%lld>", (long long)it->origin);
    if (it->spec == SP_FIELDS || it->spec == SP_FIELDS_NOT) {
        struct imap_sb raw = { 0 }, f = { 0 };
        if (fetch_read(&j->m, a, e, &raw)) {
            imap_sb_free(&raw);
            return -1;
        }
        fetch_filter(raw.s ? raw.s : "", raw.len, it->fields, it->spec == SP_FIELDS_NOT, &f);
        imap_sb_free(&raw);
        size_t from = 0, len = f.len;
        if (it->partial) {
            from = (size_t)it->origin < f.len ? (size_t)it->origin : f.len;
            len = f.len - from < (size_t)it->count ? f.len - from : (size_t)it->count;
        }
        imap_sb_printf(b, " {%zu}\r\n", len);
        imap_sb_add(b, f.s ? f.s + from : "", len);
        imap_sb_free(&f);
        return b->err ? -1 : 0;
    }
    if (it->partial) {
        a = a + it->origin < e ? a + it->origin : e;
        if (e - a > it->count)
            e = a + it->count;
    }
    imap_sb_printf(b, " {%lld}\r\n", (long long)(e - a));
    j->pos = a;
    j->end = e;
    j->streaming = e > a;
    return 0;
}

/* Copies the section into the output while there is room; 1 when done. */
static int fetch_stream(struct imap *s, struct fetch_job *j)
{
    struct conn *c = s->c;
    int64_t plen = (int64_t)strlen(j->m.prefix);

    while (j->pos < j->end) {
        size_t room = conn_out_space(c);
        if (room < 512)
            return 0;
        if (j->pos < plen) {
            size_t k = (size_t)((j->end < plen ? j->end : plen) - j->pos);
            if (k > room)
                k = room;
            conn_write(c, j->m.prefix + j->pos, k);
            j->pos += (int64_t)k;
            continue;
        }
        if (!j->reader_open) {
            if (store_reader_open(&j->r, j->m.body_id) || store_reader_seek(&j->r, j->pos - plen)) {
                store_reader_close(&j->r);
                return -1;
            }
            j->reader_open = 1;
        }
        unsigned char buf[8192];
        size_t want = room < sizeof buf ? room : sizeof buf;
        if ((int64_t)want > j->end - j->pos)
            want = (size_t)(j->end - j->pos);
        ssize_t k = store_reader_read(&j->r, buf, want);
        if (k <= 0)
            return -1;
        conn_write(c, buf, (size_t)k);
        j->pos += k;
    }
    if (j->reader_open) {
        store_reader_close(&j->r);
        j->reader_open = 0;
    }
    j->streaming = 0;
    return 1;
}

static void fetch_job_free(struct imap *s)
{
    struct fetch_job *j = s->job;
    if (!j)
        return;
    if (j->reader_open)
        store_reader_close(&j->r);
    if (j->cache_state > 0)
        store_imap_cache_free(&j->cache);
    free(j->idx);
    free(j->batch);
    free(j->buids);
    free(j);
    s->job = NULL;
}

/* \Seen for a body fetched without PEEK (RFC 3501 6.4.5). */
static int fetch_mark_seen(struct imap *s, struct fetch_job *j)
{
    int64_t modseq;
    int wants = 0;
    for (int i = 0; i < j->nitems; i++)
        wants |= j->items[i].kind == FI_SECTION && !j->items[i].peek;
    if (!wants || s->v.readonly || (j->m.flags & IMAP_SEEN))
        return 0;
    if (store_folder_bump(s->user_id, s->v.f.key, &modseq))
        return 0;
    if (modseq - 1 == s->v.modseq)
        s->v.modseq = modseq;
    j->m.flags |= IMAP_SEEN;
    store_imap_set_flags(s->user_id, j->m.uid, j->m.flags, j->m.keywords, modseq);
    return 1;
}

/* One item of the current message: text into b, or a section stream. */
static int fetch_item_out(struct imap *s, struct fetch_job *j, const struct fetch_item *it, struct imap_sb *b)
{
    struct store_imap_cache *c;

    switch (it->kind) {
    case FI_UID:
        imap_sb_printf(b, "UID %lld", (long long)j->m.uid);
        return 0;
    case FI_FLAGS:
        imap_sb_str(b, "FLAGS ");
        imap_flags_fmt(b, j->m.flags, j->m.keywords, imap_is_recent(s, j->m.uid));
        return 0;
    case FI_INTERNALDATE:
        imap_sb_str(b, "INTERNALDATE ");
        fetch_internaldate(b, j->m.added);
        return 0;
    case FI_SIZE:
        imap_sb_printf(b, "RFC822.SIZE %lld", (long long)j->m.size);
        return 0;
    case FI_MODSEQ:
        imap_sb_printf(b, "MODSEQ (%lld)", (long long)j->m.modseq);
        return 0;
    case FI_ENVELOPE:
    case FI_BODYSTRUCTURE:
    case FI_BODY:
        if (!(c = fetch_cache(j)))
            return -1;
        imap_sb_str(b, it->kind == FI_ENVELOPE ? "ENVELOPE " : it->kind == FI_BODY ? "BODY " : "BODYSTRUCTURE ");
        imap_sb_str(b, it->kind == FI_ENVELOPE ? c->envelope : it->kind == FI_BODY ? c->body : c->structure);
        return 0;
    default:
        return fetch_section(j, it, b);
    }
}

/* FLAGS already written because the fetch set \Seen. */
static int seen_flags_dup(const struct fetch_job *j, const struct fetch_item *it)
{
    return it->kind == FI_FLAGS && j->seen_set;
}

static int fetch_pump(struct imap *s)
{
    struct fetch_job *j = s->job;
    struct imap_sb b = { 0 };

    /* b keeps its buffer across messages: every return frees it. */
    while (j->cur < j->nidx) {
        if (s->c->dead) {
            imap_sb_free(&b);
            return -1;
        }
        if (j->streaming) {
            int r = fetch_stream(s, j);
            if (r < 0) {
                imap_sb_free(&b);
                log_err("imap: user=%s: cannot read message uid %lld, closing", s->user, (long long)j->m.uid);
                conn_abort(s->c);
                return -1;
            }
            if (!r) {
                imap_sb_free(&b);
                return 0;
            }
            j->item++;
        }
        if (!j->started) {
            size_t i = j->idx[j->cur];
            if (j->cache_state > 0)
                store_imap_cache_free(&j->cache);
            j->cache_state = 0;
            if (fetch_row(s, j)) {
                j->cur++;               /* expunged by another session meanwhile */
                continue;
            }
            if (j->changedsince && j->m.modseq <= j->changedsince) {
                j->cur++;
                continue;
            }
            int seen = j->seen_set = fetch_mark_seen(s, j);
            j->started = 1;
            j->item = 0;
            imap_sb_printf(&b, "* %zu FETCH (", i + 1);
            j->need_sp = 0;
            if (j->uid) {
                imap_sb_printf(&b, "UID %lld", (long long)j->m.uid);
                j->need_sp = 1;
            }
            if (seen) {
                imap_sb_str(&b, j->need_sp ? " FLAGS " : "FLAGS ");
                imap_flags_fmt(&b, j->m.flags, j->m.keywords, imap_is_recent(s, j->m.uid));
                j->need_sp = 1;
            }
        }
        for (; j->item < j->nitems; j->item++) {
            const struct fetch_item *it = &j->items[j->item];
            if (j->uid && it->kind == FI_UID)
                continue;
            if (seen_flags_dup(j, it))
                continue;
            if (j->need_sp)
                imap_sb_str(&b, " ");
            j->need_sp = 1;
            if (fetch_item_out(s, j, it, &b)) {
                imap_sb_free(&b);
                log_err("imap: user=%s: cannot read message uid %lld, closing", s->user, (long long)j->m.uid);
                conn_abort(s->c);
                return -1;
            }
            if (j->streaming)
                break;
        }
        if (b.err) {
            imap_sb_free(&b);
            conn_abort(s->c);
            return -1;
        }
        if (b.len)
            imap_out(s, b.s, b.len);
        b.len = 0;
        if (j->streaming) {
            if (s->pend.len) {
                imap_sb_free(&b);
                return 0;
            }
            continue;
        }
        imap_out(s, ")\r\n", 3);
        j->started = 0;
        j->cur++;
        if (s->pend.len) {
            imap_sb_free(&b);
            return 0;
        }
    }
    imap_sb_free(&b);
    imap_tagged(s, "OK %sFETCH completed", j->uid ? "UID " : "");
    return 1;
}

/* " (CHANGEDSINCE n)" after the items (RFC 7162 3.1.4.1): implies MODSEQ. */
static int fetch_p_changedsince(struct imap_p *p, struct fetch_job *j)
{
    if (p->n - p->i < 15 || strncasecmp(p->s + p->i, " (CHANGEDSINCE ", 15))
        return 0;
    p->i += 15;
    if (imap_p_number(p, &j->changedsince) || p->i >= p->n || p->s[p->i] != ')')
        return -1;
    p->i++;
    for (int i = 0; i < j->nitems; i++)
        if (j->items[i].kind == FI_MODSEQ)
            return 0;
    return fetch_add(j, FI_MODSEQ);
}

void imap_cmd_fetch(struct imap *s, struct imap_p *p, int uid)
{
    struct fetch_job *j = calloc(1, sizeof *j);
    struct imap_set set = { 0 };

    if (!j) {
        imap_tagged(s, "NO [UNAVAILABLE] out of memory");
        return;
    }
    j->uid = uid;
    if (imap_p_sp(p) || imap_p_set(p, &set) || imap_p_sp(p) || fetch_p_items(p, j) ||
        fetch_p_changedsince(p, j) || imap_p_end(p)) {
        imap_set_free(&set);
        free(j);
        imap_tagged(s, "BAD invalid FETCH arguments");
        return;
    }
    for (int i = 0; i < j->nitems; i++)
        if (j->items[i].kind == FI_MODSEQ)
            s->condstore = 1;           /* RFC 7162 3.1: FETCH MODSEQ enables CONDSTORE */
    /* UID FETCH may report expunges first; FETCH may not (RFC 3501 7.4.1). */
    imap_sync(s, uid);
    int r = imap_set_resolve(s, &set, uid, &j->idx, &j->nidx);
    imap_set_free(&set);
    if (r) {
        free(j);
        imap_tagged(s, r > 0 ? "BAD invalid message number" : "NO [UNAVAILABLE] out of memory");
        return;
    }
    s->job = j;
    imap_start_job(s, fetch_pump, fetch_job_free, j);
}

/* -------------------------------------------------------------- STORE */

static void store_kw_apply(char *kw, size_t n, const char *change, int mode)
{
    char out[IMAP_KEYWORDS_MAX + 1], word[128];
    size_t o = 0;

    out[0] = 0;
    if (mode == 0) {
        util_strlcpy(kw, change, n);
        return;
    }
    /* Keep the old ones not removed, then add the new ones. */
    for (const char *p = kw; *p;) {
        size_t k = strcspn(p, " ");
        int listed = 0;
        for (const char *q = change; *q && !listed;) {
            size_t m = strcspn(q, " ");
            listed = m == k && !strncasecmp(p, q, k);
            q += m;
            while (*q == ' ')
                q++;
        }
        if (!(mode < 0 && listed) && !(mode > 0 && listed) && k < sizeof word && o + k + 2 < sizeof out) {
            if (o)
                out[o++] = ' ';
            memcpy(out + o, p, k);
            o += k;
            out[o] = 0;
        }
        p += k;
        while (*p == ' ')
            p++;
    }
    if (mode > 0 && *change && o + strlen(change) + 2 < sizeof out) {
        if (o)
            out[o++] = ' ';
        util_strlcpy(out + o, change, sizeof out - o);
    }
    util_strlcpy(kw, out, n);
}

void imap_cmd_store(struct imap *s, struct imap_p *p, int uid)
{
    struct imap_set set = { 0 };
    char item[32], kw[IMAP_KEYWORDS_MAX + 1];
    unsigned flags;
    size_t *idx = NULL, n = 0;
    int mode = 0, silent = 0, err = 0;
    int64_t modseq = 0, unchangedsince = -1;
    struct imap_sb b = { 0 }, modified = { 0 };

    if (imap_p_sp(p) || imap_p_set(p, &set) || imap_p_sp(p))
        goto bad;
    /* RFC 7162 3.1.3: STORE set (UNCHANGEDSINCE n) ... */
    if (p->n - p->i > 16 && !strncasecmp(p->s + p->i, "(UNCHANGEDSINCE ", 16)) {
        p->i += 16;
        if (imap_p_number(p, &unchangedsince) || p->i >= p->n || p->s[p->i] != ')')
            goto bad;
        p->i++;
        if (imap_p_sp(p))
            goto bad;
        s->condstore = 1;
    }
    size_t k = 0;
    while (p->i < p->n && p->s[p->i] != ' ' && k + 1 < sizeof item)
        item[k++] = (char)toupper((unsigned char)p->s[p->i++]);
    item[k] = 0;
    char *it = item;
    if (*it == '+' || *it == '-')
        mode = *it++ == '+' ? 1 : -1;
    if (!strcmp(it, "FLAGS.SILENT"))
        silent = 1;
    else if (strcmp(it, "FLAGS"))
        goto bad;
    if (imap_p_sp(p) || imap_p_flags(p, &flags, kw, sizeof kw, 1) || imap_p_end(p))
        goto bad;
    if (s->v.readonly) {
        imap_set_free(&set);
        imap_tagged(s, "NO [READ-ONLY] mailbox is read-only");
        return;
    }
    imap_sync(s, uid);
    int r = imap_set_resolve(s, &set, uid, &idx, &n);
    imap_set_free(&set);
    if (r) {
        imap_tagged(s, r > 0 ? "BAD invalid message number" : "NO [UNAVAILABLE] out of memory");
        return;
    }
    if (n && (err = store_folder_bump(s->user_id, s->v.f.key, &modseq)) == 0 && modseq - 1 == s->v.modseq)
        s->v.modseq = modseq;
    for (size_t i = 0; i < n && !err; i++) {
        struct store_imap_msg m;
        if (store_imap_get(s->user_id, s->v.uids[idx[i]], &m))
            continue;
        if (unchangedsince >= 0 && m.modseq > unchangedsince) {
            imap_sb_printf(&modified, "%s%lld", modified.len ? "," : "",
                           uid ? (long long)m.uid : (long long)(idx[i] + 1));
            continue;
        }
        unsigned nf = mode == 0 ? flags : mode > 0 ? m.flags | flags : m.flags & ~flags;
        char nkw[IMAP_KEYWORDS_MAX + 1];
        util_strlcpy(nkw, m.keywords, sizeof nkw);
        store_kw_apply(nkw, sizeof nkw, kw, mode);
        if (nf != m.flags || strcmp(nkw, m.keywords))
            err = store_imap_set_flags(s->user_id, m.uid, nf, nkw, modseq);
        if (silent)
            continue;
        b.len = 0;
        imap_sb_printf(&b, "* %zu FETCH (FLAGS ", idx[i] + 1);
        imap_flags_fmt(&b, nf, nkw, imap_is_recent(s, m.uid));
        if (uid)
            imap_sb_printf(&b, " UID %lld", (long long)m.uid);
        if (s->condstore)
            imap_sb_printf(&b, " MODSEQ (%lld)", (long long)(nf != m.flags || strcmp(nkw, m.keywords)
                                                             ? modseq : m.modseq));
        imap_sb_str(&b, ")\r\n");
        if (!b.err)
            imap_out(s, b.s, b.len);
    }
    imap_sb_free(&b);
    free(idx);
    if (err) {
        imap_tagged(s, "NO [UNAVAILABLE] the flags could not be saved");
    } else if (modified.len) {
        /* RFC 7162 3.1.3: the messages changed since are named. */
        struct imap_sb t = { 0 };
        imap_sb_printf(&t, "OK [MODIFIED ");
        imap_sb_add(&t, modified.s, modified.len);
        imap_sb_str(&t, "] conditional STORE failed for some");
        imap_reply_after_commit(s, t.s ? t.s : "OK");
        imap_sb_free(&t);
    } else {
        imap_reply_after_commit(s, uid ? "OK UID STORE completed" : "OK STORE completed");
    }
    imap_sb_free(&modified);
    return;
bad:
    imap_set_free(&set);
    imap_tagged(s, "BAD usage: STORE set [+|-]FLAGS[.SILENT] (flags)");
}

/* ------------------------------------------------------- COPY, MOVE */

/* A UID list as a compact set "1:3,7". */
static void copy_set_fmt(struct imap_sb *b, const int64_t *v, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = i;
        while (k + 1 < n && v[k + 1] == v[k] + 1)
            k++;
        imap_sb_printf(b, "%s%lld", i ? "," : "", (long long)v[i]);
        if (k > i)
            imap_sb_printf(b, ":%lld", (long long)v[k]);
        i = k + 1;
    }
}

/* After a COPY: 1 if the mailbox went over its quota, -1 if unknown.  The
 * copies are counted as they are made (store triggers), so the sizes need
 * not be summed beforehand. */
static int copy_over_quota(const struct imap *s)
{
    struct quota q;

    if (quota_get(s->user_id, &q))
        return -1;
    return q.limit && q.bytes > q.limit;
}

void imap_cmd_copy(struct imap *s, struct imap_p *p, int uid, int move)
{
    struct imap_set set = { 0 };
    char name[IMAP_NAME_MAX * 2 + 1];
    struct store_folder f;
    size_t *idx = NULL, n = 0, done = 0;
    int64_t *src = NULL, *dst = NULL;
    struct imap_sb b = { 0 };
    int err = 0, over = 0;

    if (imap_p_sp(p) || imap_p_set(p, &set) || imap_p_sp(p) || imap_p_astring(p, name, sizeof name, NULL) ||
        imap_p_end(p)) {
        imap_set_free(&set);
        imap_tagged(s, "BAD usage: %s set mailbox", move ? "MOVE" : "COPY");
        return;
    }
    if (move && s->v.readonly) {
        imap_set_free(&set);
        imap_tagged(s, "NO [READ-ONLY] mailbox is read-only");
        return;
    }
    err = imap_folder_get(s, name, &f);
    if (err) {
        imap_set_free(&set);
        imap_tagged(s, err == STORE_NOTFOUND ? "NO [TRYCREATE] no such mailbox"
                                             : "NO [UNAVAILABLE] cannot open the mailbox now");
        return;
    }
    imap_sync(s, uid || move);
    int r = imap_set_resolve(s, &set, uid, &idx, &n);
    imap_set_free(&set);
    if (r) {
        imap_tagged(s, r > 0 ? "BAD invalid message number" : "NO [UNAVAILABLE] out of memory");
        return;
    }
    src = malloc((n ? n : 1) * sizeof *src);
    dst = malloc((n ? n : 1) * sizeof *dst);
    if (!src || !dst)
        err = STORE_ERR;
    for (size_t i = 0; i < n && !err; i++) {
        int rc = store_imap_copy(s->user_id, s->v.uids[idx[i]], f.key, &dst[done]);
        if (rc == STORE_NOTFOUND)
            continue;
        if (rc)
            err = rc;
        else
            src[done++] = s->v.uids[idx[i]];
    }
    if (!err && !move && done && (over = copy_over_quota(s)) != 0) {
        /* RFC 9208 4.3: all or nothing, so the copies made go again. */
        int e = store_mbox_delete(s->user_id, dst, done);
        err = e ? e : over < 0 ? STORE_ERR : 0;
    }
    if (!err && move && done)
        err = store_mbox_delete(s->user_id, src, done);
    if (over > 0 && !err) {
        imap_tagged(s, "NO [OVERQUOTA] the mailbox is over its quota");
        goto out;
    }
    if (err) {
        /* RFC 3501 6.4.7: all or nothing; the store rolls this turn back
         * only as a whole, so say so and let the client retry. */
        imap_tagged(s, err == STORE_FULL ? "NO [OVERQUOTA] the disk is full" : "NO [UNAVAILABLE] copy failed");
        goto out;
    }
    if (done) {
        imap_sb_printf(&b, "%s[COPYUID %lld ", move ? "* OK " : "OK ", (long long)f.uidvalidity);
        copy_set_fmt(&b, src, done);
        imap_sb_str(&b, " ");
        copy_set_fmt(&b, dst, done);
        imap_sb_str(&b, "]");
    }
    if (move) {
        if (done) {
            imap_sb_str(&b, " moved\r\n");
            imap_out(s, b.s, b.len);
            b.len = 0;
        }
        for (size_t i = s->v.n; i > 0; i--) {
            int hit = 0;
            for (size_t k = 0; k < done && !hit; k++)
                hit = src[k] == s->v.uids[i - 1];
            if (!hit)
                continue;
            imap_outf(s, "* %zu EXPUNGE", i);
            memmove(s->v.uids + i - 1, s->v.uids + i, (s->v.n - i) * sizeof *s->v.uids);
            s->v.n--;
        }
        if (s->v.f.key == f.key && done)
            imap_sync(s, 0);
        imap_reply_after_commit(s, uid ? "OK UID MOVE completed" : "OK MOVE completed");
    } else {
        if (s->v.f.key == f.key && done)
            imap_sync(s, 0);
        imap_sb_str(&b, done ? " COPY completed" : "OK COPY completed");
        imap_reply_after_commit(s, b.s ? b.s : "OK COPY completed");
    }
out:
    imap_sb_free(&b);
    free(idx);
    free(src);
    free(dst);
}
