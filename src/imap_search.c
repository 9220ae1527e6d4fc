/*
 * imap_search.c: sequence sets (RFC 3501 9, sequence-set) and SEARCH
 * (RFC 3501 6.4.4) with UID SEARCH.
 *
 * A search is parsed into a small tree and evaluated message by message
 * in one pass over the folder.  What each key needs is fetched only when
 * the key is reached: flags, size and dates come with the message row,
 * header fields from the cached values (imap_mime.c), any other header
 * and the text from the stored message, streamed through a window as
 * long as the string looked for, so a large message costs one chunk of
 * memory.  Matching is case-insensitive for ASCII, as RFC 3501 6.4.4
 * asks; encoded words and transfer encodings are not decoded.
 */
#include "internal.h"

#include <ctype.h>
#include <string.h>

#define SRCH_DEPTH   32                 /* nesting of NOT, OR and lists */
#define SRCH_NODES   256                /* keys in one search */
#define SRCH_STR_MAX 1024
#define SRCH_HDR_MAX (64 * 1024)

/* -------------------------------------------------------------- sets */

#define SET_STAR 0xffffffffu

static int set_p_num(struct imap_p *p, uint32_t *v)
{
    int64_t x;
    if (p->i < p->n && p->s[p->i] == '*') {
        p->i++;
        *v = SET_STAR;
        return 0;
    }
    /* nz-number: 1 .. 4294967295 */
    if (imap_p_number(p, &x) || x < 1 || x > 0xfffffffeLL)
        return -1;
    *v = (uint32_t)x;
    return 0;
}

int imap_p_set(struct imap_p *p, struct imap_set *set)
{
    size_t cap = 0;

    memset(set, 0, sizeof *set);
    for (;;) {
        uint32_t a, b;
        if (set_p_num(p, &a))
            goto bad;
        b = a;
        if (p->i < p->n && p->s[p->i] == ':') {
            p->i++;
            if (set_p_num(p, &b))
                goto bad;
        }
        if (set->n == cap) {
            if (cap >= 65536)
                goto bad;
            cap = cap ? cap * 2 : 8;
            uint32_t(*q)[2] = realloc(set->r, cap * sizeof *q);
            if (!q)
                goto bad;
            set->r = q;
        }
        set->r[set->n][0] = a;
        set->r[set->n][1] = b;
        set->n++;
        if (p->i >= p->n || p->s[p->i] != ',')
            return 0;
        p->i++;
    }
bad:
    imap_set_free(set);
    return -1;
}

void imap_set_free(struct imap_set *set)
{
    free(set->r);
    set->r = NULL;
    set->n = 0;
}

int imap_set_has(const struct imap_set *set, uint32_t v, uint32_t star)
{
    for (size_t i = 0; i < set->n; i++) {
        uint32_t a = set->r[i][0] == SET_STAR ? star : set->r[i][0];
        uint32_t b = set->r[i][1] == SET_STAR ? star : set->r[i][1];
        if (a > b) {
            uint32_t t = a;
            a = b;
            b = t;
        }
        if (v >= a && v <= b)
            return 1;
    }
    return 0;
}

/* 1 for a message number that does not exist. */
int imap_set_resolve(const struct imap *s, const struct imap_set *set, int uid, size_t **idx, size_t *n)
{
    size_t cnt = s->v.n, k = 0;
    uint32_t star = uid ? (cnt ? s->v.uids[cnt - 1] : 0) : (uint32_t)cnt;
    size_t *v;

    *idx = NULL;
    *n = 0;
    /* RFC 3501 6.4.5: a message number beyond the last is an error; a
     * UID that does not exist is not. */
    if (!uid)
        for (size_t i = 0; i < set->n; i++)
            for (int j = 0; j < 2; j++)
                if (set->r[i][j] != SET_STAR && set->r[i][j] > cnt)
                    return 1;
    if (!cnt)
        return 0;
    v = malloc(cnt * sizeof *v);
    if (!v)
        return STORE_ERR;
    for (size_t i = 0; i < cnt; i++)
        if (imap_set_has(set, uid ? s->v.uids[i] : (uint32_t)(i + 1), star))
            v[k++] = i;
    *idx = v;
    *n = k;
    return 0;
}

/* ------------------------------------------------------------ parsing */

enum srch_op {
    Q_ALL, Q_FLAG, Q_UNFLAG, Q_KEYWORD, Q_UNKEYWORD, Q_NEW, Q_OLD, Q_RECENT,
    Q_FROM, Q_TO, Q_CC, Q_BCC, Q_SUBJECT, Q_HEADER, Q_BODY, Q_TEXT,
    Q_BEFORE, Q_ON, Q_SINCE, Q_SENTBEFORE, Q_SENTON, Q_SENTSINCE,
    Q_LARGER, Q_SMALLER, Q_UID, Q_SEQ, Q_NOT, Q_OR, Q_AND, Q_MODSEQ,
};

struct srch_node {
    int op;
    int64_t num;
    char *str, *field;
    struct imap_set set;
    struct srch_node *a, *b;
};

struct srch {
    struct srch_node nodes[SRCH_NODES];
    int n;
    int need_cache;
    int modseq;                         /* a MODSEQ key: the reply names the highest */
};

static const struct {
    const char *name;
    int op;
    int64_t arg;
} srch_simple[] = {
    { "ALL", Q_ALL, 0 },
    { "ANSWERED", Q_FLAG, IMAP_ANSWERED }, { "DELETED", Q_FLAG, IMAP_DELETED },
    { "DRAFT", Q_FLAG, IMAP_DRAFT }, { "FLAGGED", Q_FLAG, IMAP_FLAGGED }, { "SEEN", Q_FLAG, IMAP_SEEN },
    { "UNANSWERED", Q_UNFLAG, IMAP_ANSWERED }, { "UNDELETED", Q_UNFLAG, IMAP_DELETED },
    { "UNDRAFT", Q_UNFLAG, IMAP_DRAFT }, { "UNFLAGGED", Q_UNFLAG, IMAP_FLAGGED },
    { "UNSEEN", Q_UNFLAG, IMAP_SEEN },
    { "NEW", Q_NEW, 0 }, { "OLD", Q_OLD, 0 }, { "RECENT", Q_RECENT, 0 },
};

static const struct {
    const char *name;
    int op;
} srch_with_string[] = {
    { "FROM", Q_FROM }, { "TO", Q_TO }, { "CC", Q_CC }, { "BCC", Q_BCC }, { "SUBJECT", Q_SUBJECT },
    { "BODY", Q_BODY }, { "TEXT", Q_TEXT }, { "KEYWORD", Q_KEYWORD }, { "UNKEYWORD", Q_UNKEYWORD },
};

static const struct {
    const char *name;
    int op;
} srch_with_date[] = {
    { "BEFORE", Q_BEFORE }, { "ON", Q_ON }, { "SINCE", Q_SINCE },
    { "SENTBEFORE", Q_SENTBEFORE }, { "SENTON", Q_SENTON }, { "SENTSINCE", Q_SENTSINCE },
};

static struct srch_node *srch_new(struct srch *q, int op)
{
    if (q->n >= SRCH_NODES)
        return NULL;
    struct srch_node *n = &q->nodes[q->n++];
    memset(n, 0, sizeof *n);
    n->op = op;
    return n;
}

static void srch_free(struct srch *q)
{
    for (int i = 0; i < q->n; i++) {
        free(q->nodes[i].str);
        free(q->nodes[i].field);
        imap_set_free(&q->nodes[i].set);
    }
    q->n = 0;
}

static char *srch_p_string(struct imap_p *p)
{
    char buf[SRCH_STR_MAX + 1];
    if (imap_p_sp(p) || imap_p_astring(p, buf, sizeof buf, NULL))
        return NULL;
    return strdup(buf);
}

/* date (RFC 3501 9): "d-Mon-yyyy", quoted or not. */
static int srch_p_date(struct imap_p *p, int64_t *days)
{
    char buf[32];
    if (imap_p_sp(p) || imap_p_astring(p, buf, sizeof buf, NULL))
        return -1;
    *days = imap_date_days(buf);
    return *days < 0 ? -1 : 0;
}

static struct srch_node *srch_p_key(struct srch *q, struct imap_p *p, int depth);

/* key *(SP key), up to ")" or the end. */
static struct srch_node *srch_p_list(struct srch *q, struct imap_p *p, int depth, int paren)
{
    struct srch_node *head = NULL, **tail = &head;
    for (int first = 1;; first = 0) {
        if (paren && p->i < p->n && p->s[p->i] == ')') {
            p->i++;
            break;
        }
        if (!paren && p->i >= p->n)
            break;
        if (!first && imap_p_sp(p))
            return NULL;
        struct srch_node *k = srch_p_key(q, p, depth + 1), *and;
        if (!k || !(and = srch_new(q, Q_AND)))
            return NULL;
        and->a = k;
        *tail = and;
        tail = &and->b;
    }
    return head;
}

static struct srch_node *srch_p_key(struct srch *q, struct imap_p *p, int depth)
{
    char word[32];
    struct srch_node *n;

    if (depth > SRCH_DEPTH)
        return NULL;
    if (p->i < p->n && p->s[p->i] == '(') {
        p->i++;
        n = srch_p_list(q, p, depth, 1);
        return n ? n : srch_new(q, Q_ALL);
    }
    if (p->i < p->n && (isdigit((unsigned char)p->s[p->i]) || p->s[p->i] == '*')) {
        if (!(n = srch_new(q, Q_SEQ)) || imap_p_set(p, &n->set))
            return NULL;
        return n;
    }
    if (imap_p_atom(p, word, sizeof word))
        return NULL;
    for (size_t i = 0; i < MN_NELEM(srch_simple); i++)
        if (!strcasecmp(word, srch_simple[i].name)) {
            if (!(n = srch_new(q, srch_simple[i].op)))
                return NULL;
            n->num = srch_simple[i].arg;
            return n;
        }
    for (size_t i = 0; i < MN_NELEM(srch_with_string); i++)
        if (!strcasecmp(word, srch_with_string[i].name)) {
            if (!(n = srch_new(q, srch_with_string[i].op)) || !(n->str = srch_p_string(p)))
                return NULL;
            if (n->op >= Q_FROM && n->op <= Q_SUBJECT)
                q->need_cache = 1;
            return n;
        }
    for (size_t i = 0; i < MN_NELEM(srch_with_date); i++)
        if (!strcasecmp(word, srch_with_date[i].name)) {
            if (!(n = srch_new(q, srch_with_date[i].op)) || srch_p_date(p, &n->num))
                return NULL;
            if (n->op >= Q_SENTBEFORE)
                q->need_cache = 1;
            return n;
        }
    if (!strcasecmp(word, "HEADER")) {
        if (!(n = srch_new(q, Q_HEADER)) || !(n->field = srch_p_string(p)) || !(n->str = srch_p_string(p)))
            return NULL;
        q->need_cache = 1;
        return n;
    }
    if (!strcasecmp(word, "LARGER") || !strcasecmp(word, "SMALLER")) {
        if (!(n = srch_new(q, toupper((unsigned char)word[0]) == 'L' ? Q_LARGER : Q_SMALLER)) ||
            imap_p_sp(p) || imap_p_number(p, &n->num))
            return NULL;
        return n;
    }
    if (!strcasecmp(word, "MODSEQ")) {
        /* RFC 7162 3.1.5: MODSEQ [entry-name entry-type] mod-sequence; the
         * entry is accepted and not used (flags share one mod-sequence). */
        char entry[256], type[16];
        if (!(n = srch_new(q, Q_MODSEQ)) || imap_p_sp(p))
            return NULL;
        if (p->i < p->n && p->s[p->i] == '"') {
            if (imap_p_astring(p, entry, sizeof entry, NULL) || imap_p_sp(p) ||
                imap_p_atom(p, type, sizeof type) || imap_p_sp(p))
                return NULL;
        }
        if (imap_p_number(p, &n->num))
            return NULL;
        q->modseq = 1;
        return n;
    }
    if (!strcasecmp(word, "UID")) {
        if (!(n = srch_new(q, Q_UID)) || imap_p_sp(p) || imap_p_set(p, &n->set))
            return NULL;
        return n;
    }
    if (!strcasecmp(word, "NOT")) {
        if (!(n = srch_new(q, Q_NOT)) || imap_p_sp(p) || !(n->a = srch_p_key(q, p, depth + 1)))
            return NULL;
        return n;
    }
    if (!strcasecmp(word, "OR")) {
        if (!(n = srch_new(q, Q_OR)) || imap_p_sp(p) || !(n->a = srch_p_key(q, p, depth + 1)) ||
            imap_p_sp(p) || !(n->b = srch_p_key(q, p, depth + 1)))
            return NULL;
        return n;
    }
    return NULL;
}

/* --------------------------------------------------------- evaluation */

struct srch_msg {
    struct imap *s;
    const struct store_imap_msg *m;
    size_t seq;                         /* 1-based */
    struct store_imap_cache cache;
    int cache_state;                    /* 0 not loaded, 1 loaded, -1 failed */
    char *header;                       /* top-level header, read on demand */
};

static int srch_contains(const char *hay, size_t hn, const char *needle)
{
    size_t nn = strlen(needle);
    if (!nn)
        return 1;
    for (size_t i = 0; i + nn <= hn; i++)
        if (!strncasecmp(hay + i, needle, nn))
            return 1;
    return 0;
}

static int srch_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 0;
    return 1;
}

/* FROM, TO, CC, BCC, SUBJECT: the field as its writer meant it, RFC 2047
 * words decoded (mime_words.c), matched case-insensitively beyond ASCII. */
static int srch_field(const char *hay, const char *needle)
{
    size_t hn = strlen(hay), nn = strlen(needle);

    if (!strstr(hay, "=?") && srch_ascii(hay, hn) && srch_ascii(needle, nn))
        return srch_contains(hay, hn, needle);
    /* Decoding never grows the text more than 3x (a Latin-1 octet in Q
     * form, 3 octets, becomes 2); folding keeps the length. */
    size_t cap = hn * 3 + 16;
    char *dec = malloc(cap), *fh = malloc(cap), *fn = malloc(nn * 2 + 16);
    int found = 0;
    if (dec && fh && fn) {
        size_t dn = mime_words_decode(hay, hn, dec, cap);
        size_t fhn = mime_utf8_fold(dec, dn, fh, cap);
        size_t fnn = mime_utf8_fold(needle, nn, fn, nn * 2 + 16);
        found = !fnn || memmem(fh, fhn, fn, fnn) != NULL;
    }
    free(dec);
    free(fh);
    free(fn);
    return found;
}

static struct store_imap_cache *srch_cache(struct srch_msg *x)
{
    if (!x->cache_state)
        x->cache_state = imap_cache_load(x->m->body_id, &x->cache) ? -1 : 1;
    return x->cache_state > 0 ? &x->cache : NULL;
}

/* Streams octets [from, to) of the message (prefix, then body) through
 * fn; stops early when fn returns non-zero. */
static int srch_stream(const struct store_imap_msg *m, int64_t from, int64_t to,
                       int (*fn)(void *arg, const char *p, size_t n), void *arg)
{
    static char buf[STORE_CHUNK];
    int64_t plen = (int64_t)strlen(m->prefix);
    struct store_reader r;
    int rc = 0;

    if (from < plen) {
        int64_t e = to < plen ? to : plen;
        if ((rc = fn(arg, m->prefix + from, (size_t)(e - from))))
            return rc;
        from = e;
    }
    if (from >= to)
        return 0;
    if (store_reader_open(&r, m->body_id) || store_reader_seek(&r, from - plen)) {
        store_reader_close(&r);
        return -1;
    }
    while (from < to && !rc) {
        size_t want = (size_t)(to - from < (int64_t)sizeof buf ? to - from : (int64_t)sizeof buf);
        ssize_t k = store_reader_read(&r, buf, want);
        if (k <= 0) {
            rc = k < 0 ? -1 : 0;
            break;
        }
        from += k;
        rc = fn(arg, buf, (size_t)k);
    }
    store_reader_close(&r);
    return rc;
}

/* The top entity's header ends where its body starts: the part table's
 * first line ("-1 T hdr body end"). */
static int64_t srch_header_end(const struct store_imap_cache *c, const struct store_imap_msg *m)
{
    long long h = 0, b = 0, e = 0;
    char t;
    int parent;
    if (sscanf(c->parts, "%d %c %lld %lld %lld", &parent, &t, &h, &b, &e) != 5)
        return 0;
    return (int64_t)strlen(m->prefix) + b;
}

struct srch_grab {
    struct imap_sb b;
};

static int srch_grab(void *arg, const char *p, size_t n)
{
    struct srch_grab *g = arg;
    if (g->b.len + n > SRCH_HDR_MAX)
        n = SRCH_HDR_MAX - g->b.len;
    imap_sb_add(&g->b, p, n);
    return g->b.len >= SRCH_HDR_MAX;
}

static const char *srch_header(struct srch_msg *x)
{
    struct store_imap_cache *c = srch_cache(x);
    if (x->header || !c)
        return x->header;
    struct srch_grab g = { { 0 } };
    srch_stream(x->m, 0, srch_header_end(c, x->m), srch_grab, &g);
    x->header = g.b.s ? g.b.s : strdup("");
    return x->header;
}

/* RFC 3501 6.4.4 HEADER: the field's value contains the string. */
static int srch_header_field(const char *hdr, const char *field, const char *str)
{
    size_t fl = strlen(field);
    for (const char *line = hdr; line && *line;) {
        const char *eol = strchr(line, '\n');
        if (!strncasecmp(line, field, fl) && line[fl] == ':') {
            /* The value with its continuation lines. */
            const char *v = line + fl + 1, *end = eol;
            while (end && (end[1] == ' ' || end[1] == '\t'))
                end = strchr(end + 1, '\n');
            if (srch_contains(v, end ? (size_t)(end - v) : strlen(v), str))
                return 1;
        }
        line = eol ? eol + 1 : NULL;
    }
    return 0;
}

struct srch_scan {
    const char *needle;
    size_t nn;
    char carry[SRCH_STR_MAX * 2 + 2];
    size_t cn;
    int found;
};

static int srch_scan(void *arg, const char *p, size_t n)
{
    struct srch_scan *sc = arg;
    /* The window: the tail of the previous piece, then this one. */
    while (n) {
        size_t take = sizeof sc->carry - sc->cn;
        if (take > n)
            take = n;
        memcpy(sc->carry + sc->cn, p, take);
        sc->cn += take;
        p += take;
        n -= take;
        if (srch_contains(sc->carry, sc->cn, sc->needle)) {
            sc->found = 1;
            return 1;
        }
        size_t keep = sc->nn > 1 ? sc->nn - 1 : 0;
        if (keep > sc->cn)
            keep = sc->cn;
        memmove(sc->carry, sc->carry + sc->cn - keep, keep);
        sc->cn = keep;
    }
    return 0;
}

static int srch_text(struct srch_msg *x, const char *needle, int body_only)
{
    struct store_imap_cache *c = srch_cache(x);
    struct srch_scan sc;
    int64_t from = 0;

    if (body_only) {
        if (!c)
            return 0;
        from = srch_header_end(c, x->m);
    }
    memset(&sc, 0, sizeof sc);
    sc.needle = needle;
    sc.nn = strlen(needle);
    if (!sc.nn)
        return 1;
    srch_stream(x->m, from, x->m->size, srch_scan, &sc);
    return sc.found;
}

static int srch_kw_has(const char *kw, const char *word)
{
    size_t wl = strlen(word);
    for (const char *p = kw; *p;) {
        size_t k = strcspn(p, " ");
        if (k == wl && !strncasecmp(p, word, k))
            return 1;
        p += k;
        while (*p == ' ')
            p++;
    }
    return 0;
}

static int srch_eval(struct srch_msg *x, const struct srch_node *n)
{
    const struct store_imap_msg *m = x->m;
    struct store_imap_cache *c;
    struct imap *s = x->s;
    uint32_t star;

    switch (n->op) {
    case Q_ALL: return 1;
    case Q_FLAG: return (m->flags & n->num) != 0;
    case Q_UNFLAG: return (m->flags & n->num) == 0;
    case Q_KEYWORD: return srch_kw_has(m->keywords, n->str);
    case Q_UNKEYWORD: return !srch_kw_has(m->keywords, n->str);
    case Q_RECENT: return imap_is_recent(s, m->uid);
    case Q_NEW: return imap_is_recent(s, m->uid) && !(m->flags & IMAP_SEEN);
    case Q_OLD: return !imap_is_recent(s, m->uid);
    case Q_FROM: return (c = srch_cache(x)) && srch_field(c->hfrom, n->str);
    case Q_TO: return (c = srch_cache(x)) && srch_field(c->hto, n->str);
    case Q_CC: return (c = srch_cache(x)) && srch_field(c->hcc, n->str);
    case Q_BCC: return (c = srch_cache(x)) && srch_field(c->hbcc, n->str);
    case Q_SUBJECT: return (c = srch_cache(x)) && srch_field(c->hsubject, n->str);
    case Q_HEADER: {
        const char *h = srch_header(x);
        return h && srch_header_field(h, n->field, n->str);
    }
    case Q_BODY: return srch_text(x, n->str, 1);
    case Q_TEXT: return srch_text(x, n->str, 0);
    case Q_BEFORE: return imap_days_of(m->added) < n->num;
    case Q_ON: return imap_days_of(m->added) == n->num;
    case Q_SINCE: return imap_days_of(m->added) >= n->num;
    case Q_SENTBEFORE: return (c = srch_cache(x)) && c->sent >= 0 && c->sent < n->num;
    case Q_SENTON: return (c = srch_cache(x)) && c->sent == n->num;
    case Q_SENTSINCE: return (c = srch_cache(x)) && c->sent >= n->num;
    case Q_LARGER: return m->size > n->num;
    case Q_SMALLER: return m->size < n->num;
    case Q_UID:
        star = s->v.n ? s->v.uids[s->v.n - 1] : 0;
        return imap_set_has(&n->set, (uint32_t)m->uid, star);
    case Q_SEQ: return imap_set_has(&n->set, (uint32_t)x->seq, (uint32_t)s->v.n);
    case Q_MODSEQ: return m->modseq >= n->num;
    case Q_NOT: return !srch_eval(x, n->a);
    case Q_OR: return srch_eval(x, n->a) || srch_eval(x, n->b);
    case Q_AND:
        for (; n; n = n->b)
            if (!srch_eval(x, n->a))
                return 0;
        return 1;
    }
    return 0;
}

struct srch_run {
    struct imap *s;
    struct srch_node *root;
    int uid;
    struct imap_sb out;
    int64_t top_modseq;
};

static int srch_each(void *arg, const struct store_imap_msg *m)
{
    struct srch_run *r = arg;
    struct imap *s = r->s;
    uint32_t uid = (uint32_t)m->uid;
    size_t lo = 0, hi = s->v.n;

    /* The message's number in this session's view (a message that
     * arrived since the last sync has none yet). */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->v.uids[mid] < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo >= s->v.n || s->v.uids[lo] != uid)
        return 0;
    struct srch_msg x = { s, m, lo + 1, { 0 }, 0, NULL };
    if (srch_eval(&x, r->root)) {
        imap_sb_printf(&r->out, " %lu", r->uid ? (unsigned long)uid : (unsigned long)(lo + 1));
        if (m->modseq > r->top_modseq)
            r->top_modseq = m->modseq;
    }
    if (x.cache_state > 0)
        store_imap_cache_free(&x.cache);
    free(x.header);
    return r->out.err;
}

void imap_cmd_search(struct imap *s, struct imap_p *p, int uid)
{
    struct srch *q = calloc(1, sizeof *q);
    struct srch_run r = { s, NULL, uid, { 0 }, 0 };
    char word[32];

    if (!q) {
        imap_tagged(s, "NO [UNAVAILABLE] out of memory");
        return;
    }
    if (imap_p_sp(p))
        goto bad;
    /* RFC 3501 6.4.4: CHARSET; US-ASCII and UTF-8 are understood. */
    size_t save = p->i;
    if (!imap_p_atom(p, word, sizeof word) && !strcasecmp(word, "CHARSET")) {
        char cs[64];
        if (imap_p_sp(p) || imap_p_astring(p, cs, sizeof cs, NULL) || imap_p_sp(p))
            goto bad;
        if (strcasecmp(cs, "US-ASCII") && strcasecmp(cs, "UTF-8")) {
            imap_tagged(s, "NO [BADCHARSET (US-ASCII UTF-8)] charset not supported");
            free(q);
            return;
        }
    } else {
        p->i = save;
    }
    r.root = srch_p_list(q, p, 0, 0);
    if (!r.root)
        goto bad;
    /* UID SEARCH may report expunges; SEARCH may not (RFC 3501 7.4.1). */
    imap_sync(s, uid);
    imap_sb_str(&r.out, "* SEARCH");
    if (store_imap_each(s->user_id, s->v.f.key, srch_each, &r) || r.out.err) {
        imap_tagged(s, "NO [UNAVAILABLE] cannot search now");
    } else {
        if (q->modseq && r.top_modseq) {
            /* RFC 7162 3.1.5: the highest mod-sequence of the matches. */
            imap_sb_printf(&r.out, " (MODSEQ %lld)", (long long)r.top_modseq);
        }
        if (q->modseq)
            s->condstore = 1;
        imap_sb_str(&r.out, "\r\n");
        imap_out(s, r.out.s, r.out.len);
        imap_tagged(s, "OK %sSEARCH completed", uid ? "UID " : "");
    }
    imap_sb_free(&r.out);
    srch_free(q);
    free(q);
    return;
bad:
    srch_free(q);
    free(q);
    imap_tagged(s, "BAD invalid search criteria");
}
