/*
 * bundle_import.c: `mailnode bundle import`, receipts, and the duplicate
 * check shared with SMTP.
 *
 * A volume is read twice.  The first pass checks everything: the sender
 * is a known peer, the header's signature, that the volume is for this
 * node, that it was not imported before, every frame's authentication
 * tag, the compressed stream, every record and every body's hash, and
 * that the mail fits on the disk.  Only a volume that passed is stored,
 * in the second pass, so bad input changes nothing.
 *
 * The second pass commits every few hundred messages (a long write
 * transaction would stall the daemon's own writes).  Each message is
 * stored whole or not at all, together with the identities of its
 * recipients; a pass cut short (kill -9, power loss) leaves whole
 * messages only, and the next import of the same volume skips them as
 * duplicates and completes it.  The volume is recorded as imported in
 * the last transaction; importing it again is a replay and is refused.
 *
 * Mail is then routed exactly as SMTP mail (queue_route): local
 * mailboxes, hold domains, relay; the daemon picks up what is queued.
 * RFC 5321 6.1: once the volume is acknowledged, a recipient that cannot
 * be delivered gets a failure notification from this node.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define IMPORT_BATCH_MSGS  500           /* messages per transaction */
#define IMPORT_BATCH_BYTES (64 << 20)    /* or raw bytes */
#define IMPORT_ROUTES      1000
/* Identities of delivered recipients are kept this long: far longer than
 * any resend interval, so a copy that arrives late is still recognised. */
#define IMPORT_SEEN_KEEP   (180 * 86400)



struct imp {
    const char *path;
    int fd;
    struct bundle_header h;
    unsigned char raw[BUNDLE_HDR_LEN];
    struct store_peer peer;
    const struct bundle_keys *keys;
    struct bundle_reader *r;
    char hex[33];
    /* pass 1 */
    int64_t raw_total;
    uint32_t nmsgs;
    /* pass 2 */
    struct bundle_env *env;
    struct store_body *b;
    struct mime_data md;
    struct bundle_msgid mid;
    crypto_generichash_state hash;
    int64_t size;
    char qid[QID_LEN + 1];
    uint32_t stored, dups, failed, batch;
    int64_t batch_bytes;
    struct store_rcpt *routes, *tmp;
    /* the receipt being written */
    const char *receipt_dir;
    char rpath[4200], rtmp[4300];
    int rfd;
    struct bundle_writer *rw;
};

static ssize_t imp_read(void *arg, void *buf, size_t n)
{
    struct imp *m = arg;
    for (;;) {
        ssize_t r = read(m->fd, buf, n);
        if (r < 0 && errno == EINTR)
            continue;
        return r;
    }
}

static int imp_fail(struct imp *m, int ex, const char *fmt, const char *detail)
{
    fprintf(stderr, "mailnode: bundle import: %s: ", m->path);
    fprintf(stderr, fmt, detail);
    fputc('\n', stderr);
    return ex;
}

/* Header, peer, signature, recipient, replay; then the reader. */
static int imp_open(struct imp *m)
{
    int rc, err;

    if (lseek(m->fd, 0, SEEK_SET) < 0)
        return imp_fail(m, EX_IOERR, "cannot rewind: %s", strerror(errno));
    rc = bundle_reader_header(imp_read, m, &m->h, m->raw);
    if (rc)
        return imp_fail(m, EX_DATAERR, "%s", bundle_strerror(rc));
    bundle_hex(m->h.bundle_id, 16, m->hex);
    rc = store_peer_by_key(m->h.sender_sign_pk, &m->peer);
    if (rc == STORE_NOTFOUND) {
        char line[256];
        bundle_key_line(m->h.sender_sign_pk, m->h.recipient_box_pk, NULL, line, sizeof line);
        return imp_fail(m, EX_NOPERM, "unknown sender: no peer has the signing key of this bundle"
                        " (its first half: %.48s...); add the sender with mailnode peer add", line + 5);
    }
    if (rc)
        return imp_fail(m, EX_TEMPFAIL, "%s", "database error looking up the sender");
    if (bundle_header_verify(m->raw, m->peer.sign_pk))
        return imp_fail(m, EX_DATAERR, "%s", bundle_strerror(BUNDLE_ESIG));
    if (sodium_memcmp(m->h.recipient_box_pk, m->keys->box_pk, 32))
        return imp_fail(m, EX_NOUSER, "%s", "this bundle is addressed to another node's key, not to"
                        " this node (see mailnode key show)");
    rc = store_volume_seen(m->h.bundle_id, m->h.volume);
    if (rc < 0)
        return imp_fail(m, EX_TEMPFAIL, "%s", "database error");
    if (rc) {
        char what[128];
        snprintf(what, sizeof what, "%s volume %u", m->hex, (unsigned)m->h.volume);
        return imp_fail(m, EX_DATAERR, "bundle %s was imported before (a replay); nothing was changed", what);
    }
    m->r = bundle_reader_open(imp_read, m, &m->h, m->keys, &err);
    if (!m->r)
        return imp_fail(m, err == BUNDLE_ENOMEM ? EX_OSERR : EX_DATAERR, "%s", bundle_strerror(err));
    return 0;
}

static void imp_close_reader(struct imp *m)
{
    bundle_reader_free(m->r);
    m->r = NULL;
}

/* ---------------------------------------------------------------- pass 1 */

/* Order of records in a mail volume: (ENV DATA* END)* FIN; in a receipt:
 * ACK* FIN. */
static int imp_check_records(struct imp *m)
{
    const unsigned char *p;
    size_t n;
    int type, rc, in_msg = 0;
    int64_t size = 0;
    crypto_generichash_state h;
    unsigned char sum[32];

    while ((rc = bundle_read_record(m->r, &type, &p, &n)) == 0) {
        if (type == BUNDLE_REC_FIN)
            return in_msg ? BUNDLE_ERECORD : 0;
        if (m->h.kind == BUNDLE_KIND_RECEIPT) {
            if (type != BUNDLE_REC_ACK || n != QID_LEN)
                return BUNDLE_ERECORD;
            m->nmsgs++;
            continue;
        }
        switch (type) {
        case BUNDLE_REC_ENV:
            if (in_msg || bundle_env_parse(p, n, m->env))
                return BUNDLE_ERECORD;
            in_msg = 1;
            size = 0;
            crypto_generichash_init(&h, NULL, 0, 32);
            break;
        case BUNDLE_REC_DATA:
            if (!in_msg)
                return BUNDLE_ERECORD;
            crypto_generichash_update(&h, p, n);
            size += (int64_t)n;
            break;
        case BUNDLE_REC_END:
            if (!in_msg || n != 40)
                return BUNDLE_ERECORD;
            crypto_generichash_final(&h, sum, 32);
            if (sodium_memcmp(sum, p, 32) || p[32] != 0)
                return BUNDLE_ERECORD;
            for (int i = 0; i < 8; i++)
                if (p[32 + i] != (unsigned char)((uint64_t)size >> (56 - 8 * i)))
                    return BUNDLE_ERECORD;
            in_msg = 0;
            m->nmsgs++;
            m->raw_total += size;
            break;
        default:
            return BUNDLE_ERECORD;
        }
    }
    return rc == 1 ? BUNDLE_ERECORD : rc;
}

/* The mail must fit where the database is, with room to spare: an
 * import that fills the disk would stall every other delivery. */
static int imp_check_space(struct imp *m)
{
    struct statvfs vfs;
    char dir[4096], *slash;
    int64_t avail, need;

    util_strlcpy(dir, conf->database, sizeof dir);
    slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    else
        util_strlcpy(dir, ".", sizeof dir);
    if (statvfs(dir, &vfs))
        return 0;
    avail = (int64_t)vfs.f_bavail * (int64_t)vfs.f_frsize;
    /* Stored bodies are compressed, but the write-ahead log holds each
     * batch once more until it is folded back: the raw size is a fair
     * upper bound of what the import needs. */
    need = m->raw_total + (16 << 20);
    if (need > avail) {
        char what[160];
        snprintf(what, sizeof what, "%lld bytes of mail need about %lld bytes on the disk of %s, %lld are free",
                 (long long)m->raw_total, (long long)need, conf->database, (long long)avail);
        imp_fail(m, EX_TEMPFAIL, "the bundle is bigger than the free disk space: %s; nothing was changed",
                 what);
        return -1;
    }
    return 0;
}

static int imp_pass1(struct imp *m)
{
    int rc, ex;

    if ((ex = imp_open(m)))
        return ex;
    rc = imp_check_records(m);
    imp_close_reader(m);
    if (rc)
        return imp_fail(m, rc == BUNDLE_EIO ? EX_IOERR : EX_DATAERR, "%s; nothing was changed",
                        bundle_strerror(rc));
    if (m->h.kind == BUNDLE_KIND_MAIL && imp_check_space(m))
        return EX_TEMPFAIL;
    return 0;
}

/* --------------------------------------------------------------- receipt */

static int imp_receipt_open(struct imp *m)
{
    char dir[4096];
    const char *slash;

    if (m->receipt_dir) {
        util_strlcpy(dir, m->receipt_dir, sizeof dir);
    } else {
        slash = strrchr(m->path, '/');
        if (slash)
            snprintf(dir, sizeof dir, "%.*s", (int)(slash - m->path) ? (int)(slash - m->path) : 1, m->path);
        else
            util_strlcpy(dir, ".", sizeof dir);
    }
    snprintf(m->rpath, sizeof m->rpath, "%s/receipt-%s-%03u.mnb", dir, m->hex, (unsigned)m->h.volume);
    snprintf(m->rtmp, sizeof m->rtmp, "%s.tmp", m->rpath);
    m->rfd = open(m->rtmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (m->rfd < 0)
        return imp_fail(m, EX_CANTCREAT, "cannot create the receipt: %s (give --receipt-dir DIR)",
                        strerror(errno));
    m->rw = bundle_writer_open(m->rfd, m->keys, m->peer.box_pk, BUNDLE_KIND_RECEIPT, m->h.bundle_id,
                               m->h.volume);
    if (!m->rw) {
        close(m->rfd);
        unlink(m->rtmp);
        return imp_fail(m, EX_IOERR, "cannot write the receipt: %s", strerror(errno));
    }
    return 0;
}

static void imp_receipt_drop(struct imp *m)
{
    if (!m->rw)
        return;
    bundle_writer_free(m->rw);
    m->rw = NULL;
    close(m->rfd);
    unlink(m->rtmp);
}

static int imp_receipt_finish(struct imp *m)
{
    int rc = bundle_writer_finish(m->rw);

    bundle_writer_free(m->rw);
    m->rw = NULL;
    if (!rc && fsync(m->rfd))
        rc = BUNDLE_EIO;
    if (close(m->rfd) && !rc)
        rc = BUNDLE_EIO;
    if (!rc && rename(m->rtmp, m->rpath))
        rc = BUNDLE_EIO;
    if (rc) {
        unlink(m->rtmp);
        return imp_fail(m, EX_IOERR, "the mail is stored, but the receipt could not be written (%s);"
                        " the sender will send these messages again and they will be dropped as"
                        " duplicates", strerror(errno));
    }
    printf("receipt for %s: %s\n", m->peer.name, m->rpath);
    return 0;
}

/* ---------------------------------------------------------------- pass 2 */

static int imp_body_start(struct imp *m)
{
    char hdr[1024], date[64];
    int n;

    util_qid(m->qid);
    m->b = store_body_new();
    if (!m->b)
        return STORE_ERR;
    mime_data_init(&m->md);
    bundle_msgid_init(&m->mid);
    crypto_generichash_init(&m->hash, NULL, 0, 32);
    m->size = 0;
    util_date(util_now(), date, sizeof date);
    /* RFC 5321 4.4: the trace field names where the message came from:
     * the peer, the bundle and its volume. */
    if (m->env->nrcpt == 1)
        n = snprintf(hdr, sizeof hdr, "Received: from %s (bundle %s volume %u)\r\n\tby %s (mailnode)"
                     " with BUNDLE id %s\r\n\tfor <%s>; %s\r\n", m->peer.name, m->hex, (unsigned)m->h.volume,
                     conf->hostname, m->qid, m->env->rcpts[0].addr, date);
    else
        n = snprintf(hdr, sizeof hdr, "Received: from %s (bundle %s volume %u)\r\n\tby %s (mailnode)"
                     " with BUNDLE id %s;\r\n\t%s\r\n", m->peer.name, m->hex, (unsigned)m->h.volume,
                     conf->hostname, m->qid, date);
    if (n < 0 || (size_t)n >= sizeof hdr)
        return STORE_ERR;
    return store_body_write(m->b, hdr, (size_t)n);
}

static int imp_body_data(struct imp *m, const unsigned char *p, size_t n)
{
    crypto_generichash_update(&m->hash, p, n);
    m->size += (int64_t)n;
    mime_scan(&m->md, p, n);
    bundle_msgid_feed(&m->mid, p, n);
    return store_body_write(m->b, p, n);
}

/* The key a recipient is remembered under: its mailbox or its address. */
static void imp_rcpt_key(const struct store_rcpt *r, char *out, size_t n)
{
    if (r->kind == ROUTE_LOCAL)
        snprintf(out, n, "mailbox:%lld", (long long)r->user_id);
    else
        util_strlcpy(out, r->addr, n);
}

/* 1 if the recipient was delivered before (by bundle or SMTP); else its
 * identities are remembered with this message. */
static int imp_seen(const unsigned char *origin, size_t olen, const char *oqid, const char *msgid,
                    const struct store_rcpt *r)
{
    unsigned char k1[BUNDLE_ID_LEN], k2[BUNDLE_ID_LEN];
    char key[ADDR_MAX + 32];
    int rc;
    int64_t now = util_now();

    imp_rcpt_key(r, key, sizeof key);
    if (origin) {
        bundle_identity('Q', origin, olen, oqid, key, k1);
        if ((rc = store_seen_check(k1)))
            return rc;
    }
    if (msgid) {
        bundle_identity('M', msgid, strlen(msgid), NULL, key, k2);
        if ((rc = store_seen_check(k2)))
            return rc;
    }
    if (origin && (rc = store_seen_add(k1, now)))
        return rc;
    if (msgid && (rc = store_seen_add(k2, now)))
        return rc;
    return 0;
}

/* Routes the envelope's recipients; those that cannot be routed are
 * collected for a failure notification. */
static int imp_route(struct imp *m, size_t *nroutes, struct dsn_rcpt *fails, char (*why)[64], size_t *nfail)
{
    *nroutes = 0;
    *nfail = 0;
    for (int i = 0; i < m->env->nrcpt; i++) {
        const struct bundle_env_rcpt *er = &m->env->rcpts[i];
        struct addr a;
        size_t k = 0;
        int rc = addr_parse_mailbox(er->addr, &a);
        if (!rc)
            rc = queue_route(&a, m->tmp, IMPORT_ROUTES, &k);
        if (rc == STORE_ERR)
            return STORE_ERR;
        if (rc || m->md.received >= conf->max_received) {
            fails[*nfail].addr = er->addr;
            fails[*nfail].orcpt = er->orcpt[0] ? er->orcpt : NULL;
            fails[*nfail].action = DSN_FAILED;
            fails[*nfail].status = m->md.received >= conf->max_received ? "5.4.6"
                                   : rc == QUEUE_EUNKNOWN ? "5.1.1" : rc == QUEUE_ELOOP ? "5.4.6" : "5.1.3";
            snprintf(why[*nfail], 64, "%s", m->md.received >= conf->max_received ? "x-mailnode; mail loop"
                     : rc == QUEUE_EUNKNOWN ? "x-mailnode; no such user here" : "x-mailnode; cannot route");
            fails[*nfail].diagnostic = why[*nfail];
            fails[*nfail].last_attempt = util_now();
            if (!(er->notify & NOTIFY_NEVER) && (!er->notify || (er->notify & NOTIFY_FAILURE)))
                (*nfail)++;
            m->failed++;
            continue;
        }
        for (size_t j = 0; j < k; j++) {
            size_t d;
            m->tmp[j].notify = er->notify;
            util_strlcpy(m->tmp[j].orcpt, er->orcpt, sizeof m->tmp[j].orcpt);
            for (d = 0; d < *nroutes; d++)
                if (m->routes[d].kind == m->tmp[j].kind &&
                    (m->tmp[j].kind == ROUTE_LOCAL ? m->routes[d].user_id == m->tmp[j].user_id
                                                   : !strcmp(m->routes[d].addr, m->tmp[j].addr)))
                    break;
            if (d == *nroutes && *nroutes < IMPORT_ROUTES)
                m->routes[(*nroutes)++] = m->tmp[j];
        }
    }
    return 0;
}

/* RFC 3464 failure notification to the original sender.  A message with
 * the null reverse-path gets none (RFC 5321 4.5.5); its failure goes to
 * the postmaster as a double bounce, marked as such, as queue_deliver.c
 * does for the queue, so that it is neither lost in silence nor answered. */
static int imp_bounce(struct imp *m, const struct dsn_rcpt *fails, size_t n)
{
    struct dsn_info info;
    struct store_env env;
    struct store_rcpt back[8];
    struct store_body *b;
    struct addr a;
    size_t nb = 0;
    int rc, dbl = !m->env->sender[0];
    char to[ADDR_MAX];

    if (!n)
        return 0;
    if (dbl) {
        memset(&a, 0, sizeof a);
        util_strlcpy(a.local, "postmaster", sizeof a.local);
        util_strlcpy(a.full, "postmaster", sizeof a.full);
    } else if (addr_parse_mailbox(m->env->sender, &a)) {
        return 0;
    }
    if (queue_route(&a, back, MN_NELEM(back), &nb) || !nb) {
        log_warn("%s: no notification: %s <%s> cannot be reached", m->qid, dbl ? "postmaster" : "sender",
                 a.full);
        return 0;
    }
    memset(&info, 0, sizeof info);
    info.qid = m->qid;
    info.sender = m->env->sender;
    info.envid = m->env->envid[0] ? m->env->envid : NULL;
    info.ret_full = m->env->ret_full;
    info.received = util_now();
    info.body_id = m->b->id;
    info.rcpts = fails;
    info.n = n;
    if (dbl)
        dsn_to_postmaster(&info, to, sizeof to);
    if (!(b = store_body_new()))
        return STORE_ERR;
    memset(&env, 0, sizeof env);
    util_qid(env.qid);
    env.sender = "";
    env.client = dbl ? STORE_DOUBLE_BOUNCE : "local";
    rc = dsn_write(&info, b);
    if (!rc)
        rc = store_body_finish(b);
    env.size = b->size;
    if (!rc)
        rc = store_msg_insert(&env, b, back, nb);
    store_body_free(b);
    return rc;
}

static int imp_msg_end(struct imp *m, const unsigned char *p, size_t n)
{
    struct store_env env;
    struct dsn_rcpt fails[64];
    char why[64][64];
    unsigned char sum[32];
    size_t nroutes = 0, nfail = 0, kept = 0;
    int rc;

    memset(fails, 0, sizeof fails);     /* remote_mta, expired: none here */
    crypto_generichash_final(&m->hash, sum, 32);
    if (n != 40 || sodium_memcmp(sum, p, 32))
        return BUNDLE_ERECORD;          /* changed since the first pass */
    bundle_msgid_finish(&m->mid);
    if ((rc = store_body_finish(m->b)) || (rc = imp_route(m, &nroutes, fails, why, &nfail)))
        return rc;
    if (nfail > MN_NELEM(fails))
        nfail = MN_NELEM(fails);
    for (size_t i = 0; i < nroutes; i++) {
        rc = imp_seen(m->h.sender_sign_pk, 32, m->env->qid, m->mid.found ? m->mid.id : NULL, &m->routes[i]);
        if (rc < 0)
            return rc;
        if (rc == 0)
            m->routes[kept++] = m->routes[i];
        else
            m->dups++;
    }
    memset(&env, 0, sizeof env);
    util_strlcpy(env.qid, m->qid, sizeof env.qid);
    env.sender = m->env->sender;
    env.envid = m->env->envid[0] ? m->env->envid : NULL;
    env.ret_full = m->env->ret_full;
    env.eightbit = m->env->eightbit || m->md.eightbit;
    env.client = m->peer.name;
    env.size = m->b->size;
    if (kept && (rc = store_msg_insert(&env, m->b, m->routes, kept)))
        return rc;
    if (nfail && (rc = imp_bounce(m, fails, nfail)))
        return rc;
    if (kept)
        log_info("%s: accepted from=<%s> size=%lld nrcpt=%zu (bundle %s volume %u from %s, origin id %s)",
                 m->qid, m->env->sender, (long long)m->size, kept, m->hex, (unsigned)m->h.volume,
                 m->peer.name, m->env->qid);
    else
        log_info("%s: duplicate from=<%s> origin id %s (bundle %s from %s): already delivered, dropped",
                 m->qid, m->env->sender, m->env->qid, m->hex, m->peer.name);
    if (kept)
        m->stored++;
    /* The body stays (a message or the notification refers to it) or
     * goes with the transaction's other unreferenced rows. */
    if (!kept)
        store_gc_body(m->b->id);
    store_body_free(m->b);
    m->b = NULL;
    return bundle_write_record(m->rw, BUNDLE_REC_ACK, m->env->qid, QID_LEN) ? BUNDLE_EIO : 0;
}

static int imp_batch(struct imp *m)
{
    int rc;
    if (++m->batch < IMPORT_BATCH_MSGS && m->batch_bytes < IMPORT_BATCH_BYTES)
        return 0;
    m->batch = 0;
    m->batch_bytes = 0;
    rc = store_commit();
    return rc;
}

static int imp_store_mail(struct imp *m)
{
    const unsigned char *p;
    size_t n;
    int type, rc;

    while ((rc = bundle_read_record(m->r, &type, &p, &n)) == 0 && type != BUNDLE_REC_FIN) {
        switch (type) {
        case BUNDLE_REC_ENV:
            if (bundle_env_parse(p, n, m->env))
                return BUNDLE_ERECORD;
            rc = imp_body_start(m);
            break;
        case BUNDLE_REC_DATA:
            rc = imp_body_data(m, p, n);
            m->batch_bytes += (int64_t)n;
            break;
        case BUNDLE_REC_END:
            rc = imp_msg_end(m, p, n);
            if (!rc)
                rc = imp_batch(m);
            break;
        default:
            rc = BUNDLE_ERECORD;
        }
        if (rc)
            return rc;
    }
    return rc < 0 ? rc : 0;
}

static int imp_store_receipt(struct imp *m)
{
    const unsigned char *p;
    size_t n;
    int type, rc;

    while ((rc = bundle_read_record(m->r, &type, &p, &n)) == 0 && type != BUNDLE_REC_FIN) {
        char qid[QID_LEN + 1];
        if (type != BUNDLE_REC_ACK || n != QID_LEN)
            return BUNDLE_ERECORD;
        memcpy(qid, p, QID_LEN);
        qid[QID_LEN] = '\0';
        rc = store_bundle_ack(m->peer.id, qid);
        if (rc < 0)
            return rc;
        if (rc > 0) {
            m->stored++;
            log_info("%s: delivered to %d recipient%s by bundle %s (receipt from %s)", qid, rc,
                     rc == 1 ? "" : "s", m->hex, m->peer.name);
        }
    }
    return rc < 0 ? rc : 0;
}

static int imp_pass2(struct imp *m)
{
    int rc, ex;

    if ((ex = imp_open(m)))
        return ex;
    if (m->h.kind == BUNDLE_KIND_MAIL && (ex = imp_receipt_open(m))) {
        imp_close_reader(m);
        return ex;
    }
    store_seen_prune(util_now() - IMPORT_SEEN_KEEP);
    rc = m->h.kind == BUNDLE_KIND_MAIL ? imp_store_mail(m) : imp_store_receipt(m);
    if (!rc)
        rc = store_volume_add(m->h.bundle_id, m->h.volume, m->peer.id, util_now());
    if (!rc)
        rc = store_commit();
    imp_close_reader(m);
    if (m->b) {
        store_body_free(m->b);
        m->b = NULL;
    }
    if (rc) {
        store_rollback();
        imp_receipt_drop(m);
        if (rc == STORE_FULL)
            return imp_fail(m, EX_TEMPFAIL, "%s", "the disk is full; what was stored is whole, import"
                            " the volume again when there is space to complete it");
        if (rc <= BUNDLE_ENOTBUNDLE && rc >= BUNDLE_ENOMEM)
            return imp_fail(m, EX_DATAERR, "%s (the file changed while it was imported?)", bundle_strerror(rc));
        return imp_fail(m, EX_TEMPFAIL, "%s", "database error; import the volume again to complete it");
    }
    if (m->h.kind == BUNDLE_KIND_MAIL) {
        printf("%s: bundle %s volume %u from %s: %u messages, %u stored, %u duplicates dropped,"
               " %u recipients failed\n", m->path, m->hex, (unsigned)m->h.volume, m->peer.name,
               (unsigned)m->nmsgs, (unsigned)m->stored, (unsigned)m->dups, (unsigned)m->failed);
        return imp_receipt_finish(m);
    }
    printf("%s: receipt from %s for bundle %s volume %u: %u messages acknowledged\n", m->path,
           m->peer.name, m->hex, (unsigned)m->h.volume, (unsigned)m->stored);
    return 0;
}

static int imp_one(const char *path, const struct bundle_keys *keys, const char *receipt_dir,
                   struct bundle_env *env, struct store_rcpt *routes, struct store_rcpt *tmp)
{
    struct imp m;
    int ex;

    memset(&m, 0, sizeof m);
    m.path = path;
    m.keys = keys;
    m.env = env;
    m.routes = routes;
    m.tmp = tmp;
    m.receipt_dir = receipt_dir;
    m.rfd = -1;
    m.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (m.fd < 0)
        return imp_fail(&m, errno == ENOENT ? EX_NOINPUT : EX_NOINPUT, "cannot open: %s", strerror(errno));
    ex = imp_pass1(&m);
    if (!ex)
        ex = imp_pass2(&m);
    close(m.fd);
    return ex;
}

int cli_bundle_import(int argc, char **argv)
{
    struct bundle_keys keys;
    struct bundle_env *env = NULL;
    struct store_rcpt *routes = NULL, *tmp = NULL;
    const char *rdir = NULL;
    int first = 2, rc, worst = EX_OK;

    if (argc > 3 && !strcmp(argv[2], "--receipt-dir")) {
        rdir = argv[3];
        first = 4;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: mailnode bundle import [--receipt-dir DIR] FILE...\n");
        return EX_USAGE;
    }
    if ((rc = cli_bundle_keys(&keys, 1)) || (rc = cli_open_store()))
        return rc;
    env = malloc(sizeof *env);
    routes = malloc(IMPORT_ROUTES * sizeof *routes);
    tmp = malloc(IMPORT_ROUTES * sizeof *tmp);
    if (!env || !routes || !tmp) {
        worst = EX_OSERR;
        goto out;
    }
    for (int i = first; i < argc; i++) {
        rc = imp_one(argv[i], &keys, rdir, env, routes, tmp);
        if (rc && worst == EX_OK)
            worst = rc;
    }
out:
    store_close();
    sodium_memzero(&keys, sizeof keys);
    free(env);
    free(routes);
    free(tmp);
    return worst;
}

/* ------------------------------------------------------ SMTP duplicates */

int bundle_dedup(struct store_body *b, struct store_rcpt *rcpts, size_t *n, const char *qid)
{
    struct store_reader rd;
    struct bundle_msgid mid;
    unsigned char buf[4096];
    size_t kept = 0, dropped = 0;
    int64_t total = 0;
    ssize_t r;
    int rc;

    if (!*n || !store_peer_any())
        return 0;
    /* The Message-ID is in the header, near the start of the body. */
    if (store_reader_open(&rd, b->id))
        return STORE_ERR;
    bundle_msgid_init(&mid);
    while (!mid.done && total < 256 * 1024 && (r = store_reader_read(&rd, buf, sizeof buf)) > 0) {
        bundle_msgid_feed(&mid, buf, (size_t)r);
        total += r;
    }
    store_reader_close(&rd);
    bundle_msgid_finish(&mid);
    if (!mid.found)
        return 0;
    for (size_t i = 0; i < *n; i++) {
        rc = imp_seen(NULL, 0, NULL, mid.id, &rcpts[i]);
        if (rc < 0)
            return rc;
        if (rc == 0)
            rcpts[kept++] = rcpts[i];
        else
            dropped++;
    }
    if (dropped)
        log_info("%s: %zu recipient%s dropped: %s already delivered by bundle", qid, dropped,
                 dropped == 1 ? "" : "s", mid.id);
    *n = kept;
    return 0;
}
