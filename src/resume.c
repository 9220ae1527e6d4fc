/*
 * resume.c: transfers between mailnodes that go on after a link drop
 * where they stopped, instead of from zero (the XRESUME extension, used
 * with CHUNKING, RFC 3030).
 *
 *   S: 250-XRESUME                      (EHLO, when `resume` is on)
 *   C: MAIL FROM:<a@b> SIZE=n XRESUME=<tid>
 *   S: 250 2.1.0 Ok XRESUME=<k>         (k octets of this transfer held)
 *   C: RCPT TO:...
 *   C: BDAT <n-k> LAST                  (the octets from k on)
 *   S: 250 2.0.0 Ok: queued as <qid>
 *
 * The transfer id is the sender's queue id, a digest of the recipients
 * it is sending to, and the hash of the message (crypto_generichash, 64
 * hex digits): "QID.RRRRRRRRRRRRRRRR.HHHH...".  The same message to the
 * same recipients has the same id in every attempt; a retry for the
 * recipients left over from a partly accepted attempt has another one.
 *
 * The receiver keeps what it got under the id in the store
 * (store_resume.c), durably as of each save: at the end of every session
 * that carried part of it (link gone, timeout, RSET).  Nothing is
 * accepted before the last octet: at BDAT LAST the held octets and the
 * rest are read back into the message body as any message, the hash is
 * checked (a mismatch: 451, the partial goes, the next attempt starts
 * from zero), and the 250 comes after the commit, as always.  The id is
 * then kept with the queue id it got until resume.lifetime: a sender
 * whose 250 was lost with the link is told the whole transfer is held
 * (k = n), sends "BDAT 0 LAST" and gets the same queue id, and the
 * message is not stored twice.  Partials expire after resume.lifetime
 * and are bounded to resume.max_size octets in all (oldest go first).
 *
 * A session that takes up an id another (dead, not yet timed out)
 * session still holds saves and ends that one first.
 */
#include "internal.h"

#include <string.h>

#define RESUME_HASH_HEX 64

struct resume {
    char tid[RESUME_TID_MAX + 1];
    unsigned char want[32];             /* hash of the whole transfer, from the id */
    int64_t offset;                     /* octets held when the transaction began */
    int64_t got;                        /* octets received in this transaction */
    char done_qid[QID_LEN + 1];         /* already accepted as this */
    struct store_body *b;               /* the partial body, appended to */
    struct conn *c;                     /* the session's connection */
    struct resume **owner;              /* the session's pointer to us */
    int finished;                       /* became a message: nothing to save */
    struct resume *next;
};

static struct resume *resume_active;

static int resume_hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Letters, digits and dots, ending in ".<64 hex digits>": nothing that
 * could break the reply line or a log line. */
int resume_tid_parse(const char *tid, unsigned char hash[32])
{
    size_t len = strlen(tid);

    if (len < RESUME_HASH_HEX + 2 || len > RESUME_TID_MAX || tid[len - RESUME_HASH_HEX - 1] != '.')
        return -1;
    for (size_t i = 0; i < len; i++)
        if (!((tid[i] >= '0' && tid[i] <= '9') || (tid[i] >= 'a' && tid[i] <= 'z') ||
              (tid[i] >= 'A' && tid[i] <= 'Z') || tid[i] == '.'))
            return -1;
    const char *h = tid + len - RESUME_HASH_HEX;
    for (size_t i = 0; i < 32; i++) {
        int hi = resume_hexval(h[2 * i]), lo = resume_hexval(h[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        hash[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static void resume_unlink(struct resume *r)
{
    for (struct resume **pp = &resume_active; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            return;
        }
}

/* The session is done with r: with keep, what arrived is saved to go on
 * from next time; without, the partial goes. */
void resume_end(struct resume *r, int keep)
{
    if (!r)
        return;
    resume_unlink(r);
    if (r->owner)
        *r->owner = NULL;
    if (!keep) {
        /* Also a record of acceptance written in a transaction whose
         * message then failed: nothing may answer for it later. */
        store_partial_drop(r->tid);
    } else if (!r->finished && r->b && !r->b->err && !store_body_checkpoint(r->b) &&
               !store_partial_save(r->tid, r->b->size, r->b->seq)) {
        store_commit_soon();            /* held across a restart too */
        if (r->b->size)
            log_info("resume %.16s: %lld octets held for the next attempt", r->tid, (long long)r->b->size);
    }
    if (r->b)
        store_body_free(r->b);      /* linked: the rows stay */
    free(r);
}

/* An id still held by another session: that one is gone (its link
 * dropped) but has not noticed yet. */
static void resume_take_over(const char *tid)
{
    for (struct resume *r = resume_active; r; r = r->next)
        if (!strcmp(r->tid, tid)) {
            struct conn *c = r->c;
            log_info("resume %.16s: taken over by a new session", tid);
            resume_end(r, 1);
            if (c)
                conn_abort(c);
            return;
        }
}

static int resume_open_partial(struct resume *r)
{
    struct store_partial p;

    if (store_partial_get(r->tid, &p))
        return -1;
    if (p.found && p.done_qid[0]) {
        util_strlcpy(r->done_qid, p.done_qid, sizeof r->done_qid);
        r->offset = p.size;
        r->finished = 1;
        return 0;
    }
    if (p.found) {
        r->b = store_body_reopen(p.body_id, p.size, p.nchunks);
        r->offset = p.size;
        return r->b ? 0 : -1;
    }
    /* A new transfer, if there is room for it. */
    if (store_partial_octets() >= conf->resume_max_size)
        return -1;
    r->b = store_body_new();
    if (!r->b)
        return -1;
    r->b->linked = 1;
    return store_partial_new(r->tid, r->b->id);
}

struct resume *resume_begin(const char *tid, struct conn *c, struct resume **owner, int64_t *offset)
{
    struct resume *r;

    *offset = 0;
    if (!conf->resume)
        return NULL;
    r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (resume_tid_parse(tid, r->want)) {
        free(r);
        return NULL;
    }
    util_strlcpy(r->tid, tid, sizeof r->tid);
    resume_take_over(tid);
    store_partial_expire(util_now() - conf->resume_lifetime, conf->resume_max_size);
    if (resume_open_partial(r)) {
        /* No partial to be had: an ordinary transfer from zero. */
        if (r->b)
            store_body_free(r->b);
        free(r);
        return NULL;
    }
    r->c = c;
    r->owner = owner;
    r->next = resume_active;
    resume_active = r;
    *offset = r->offset;
    if (r->offset)
        log_info("resume %.16s: %s at octet %lld", tid, r->done_qid[0] ? "already accepted, complete" : "going on",
                 (long long)r->offset);
    return r;
}

/* Octets of the transfer: held until the last one.  0, or the reply
 * code that refuses the message. */
int resume_feed(struct resume *r, const void *p, size_t n)
{
    r->got += (int64_t)n;
    if (r->offset + r->got > conf->message_size_limit)
        return 552;
    if (r->finished)
        return 451;                     /* more than the whole transfer: not the same message */
    if (store_body_write(r->b, p, n))
        return r->b->err == STORE_FULL ? 452 : 451;
    return 0;
}

const char *resume_done_qid(const struct resume *r)
{
    return r->done_qid[0] ? r->done_qid : NULL;
}

int64_t resume_octets(const struct resume *r)
{
    return r->offset + r->got;
}

/* The whole transfer, from the first octet, to emit(); 0 when its hash
 * is the one the id named, 451 when not or when it cannot be read. */
int resume_replay(struct resume *r, int (*emit)(void *arg, const void *buf, size_t n), void *arg)
{
    struct store_reader rd;
    crypto_generichash_state h;
    unsigned char buf[8192], got[32];
    ssize_t n;

    if (!r->b || store_body_checkpoint(r->b) || store_reader_open(&rd, r->b->id))
        return 451;
    crypto_generichash_init(&h, NULL, 0, sizeof got);
    while ((n = store_reader_read(&rd, buf, sizeof buf)) > 0) {
        crypto_generichash_update(&h, buf, (size_t)n);
        emit(arg, buf, (size_t)n);
    }
    store_reader_close(&rd);
    if (n < 0)
        return 451;
    crypto_generichash_final(&h, got, sizeof got);
    if (sodium_memcmp(got, r->want, sizeof got)) {
        log_warn("resume %.16s: the %lld octets held and received do not match the transfer's hash;"
                 " dropped, the next attempt starts from zero", r->tid, (long long)resume_octets(r));
        return 451;
    }
    return 0;
}

/* In the transaction that stores the message: the partial goes, the id
 * stays with the queue id. */
int resume_done(struct resume *r, const char *qid)
{
    int err = store_partial_done(r->tid, qid, resume_octets(r));
    if (!err)
        r->finished = 1;
    return err;
}

/* ------------------------------------------------------------ sender */

/* The digest of the recipients of this attempt, in id order (as picked).
 * Each id is hashed as 8 bytes, least significant first, written out byte
 * by byte: the same id on any host gives the same digest (hashing the
 * int64_t's memory would differ on a big-endian one). */
static void resume_rcpt_digest(const struct store_out_msg *m, unsigned char rd[8])
{
    crypto_generichash_state h;
    unsigned char le[8];

    crypto_generichash_init(&h, NULL, 0, 8);
    for (int i = 0; i < m->nrcpt; i++) {
        uint64_t id = (uint64_t)m->rcpts[i].id;
        for (int j = 0; j < 8; j++)
            le[j] = (unsigned char)(id >> (8 * j));
        crypto_generichash_update(&h, le, sizeof le);
    }
    crypto_generichash_final(&h, rd, 8);
}

int resume_tid_make(const struct store_out_msg *m, char *out, size_t n)
{
    unsigned char hash[32], rd[8];
    char hex[2 * sizeof hash + 1], rhex[2 * sizeof rd + 1];

    if (store_body_hash(m->body_id, hash))
        return -1;
    resume_rcpt_digest(m, rd);
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    sodium_bin2hex(rhex, sizeof rhex, rd, sizeof rd);
    int len = snprintf(out, n, "%s.%s.%s", m->qid, rhex, hex);
    return len < 0 || (size_t)len >= n ? -1 : 0;
}
