/*
 * cli_bundle.c: `mailnode key`, `mailnode peer` and `mailnode bundle
 * export`: moving mail with no link at all.  Everything queued for a peer
 * is written as signed, encrypted, compressed volumes (bundle.c) that any
 * carrier moves: a USB stick, a satellite terminal's file slot, a radio
 * modem, UUCP or NNCP.  Importing (and receipts) is in bundle_import.c.
 *
 * Exported recipients are marked in transit, not removed: only the
 * peer's signed receipt removes them.  Without a receipt they are
 * exported again after bundle.resend_after (at least once; the importer
 * drops what it has already delivered).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static const char cli_key_usage[] =
    "usage: mailnode key show\n"
    "Prints this node's public bundle key as one line (creating the key pair in\n"
    "bundle.key on first use); give it to a peer's `mailnode peer add --key`.\n";

static const char cli_peer_usage[] =
    "usage: mailnode peer add NAME --key LINE [--domains D,...] | list | del NAME\n"
    "A peer is another mailnode that bundles are exchanged with.  With --domains,\n"
    "its bundles carry the mail for those domains (relayed or held for it);\n"
    "without, the peer is our upstream and its bundles carry all remote mail.\n";

static const char cli_bundle_usage[] =
    "usage: mailnode bundle export --peer NAME [--max-bytes N] [-o FILE|-]\n"
    "       mailnode bundle import [--receipt-dir DIR] FILE...\n"
    "export writes everything queued for the peer, encrypted to it and signed,\n"
    "to FILE (default: standard output); with --max-bytes, as volumes FILE.001,\n"
    "FILE.002, ... of at most N bytes each.  import checks, decrypts and stores\n"
    "bundles and receipts from known peers, and writes a receipt for each mail\n"
    "volume into DIR (default: the volume's directory).\n";

static int cli_bundle_help(int argc, char **argv, const char *usage)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return 1;
        }
    return 0;
}

static int cli_bundle_bad(const char *usage)
{
    fputs(usage, stderr);
    return EX_USAGE;
}

int cli_bundle_keys(struct bundle_keys *k, int create)
{
    char err[512];
    if (bundle_keys_load(conf->bundle_key, k, create, err, sizeof err)) {
        fprintf(stderr, "mailnode: %s\n", err);
        return EX_CONFIG;
    }
    return 0;
}

/* ------------------------------------------------------------------- key */

int cli_key(int argc, char **argv)
{
    struct bundle_keys k;
    char line[256];
    int rc;

    if (cli_bundle_help(argc, argv, cli_key_usage))
        return EX_OK;
    if (argc != 2 || strcmp(argv[1], "show"))
        return cli_bundle_bad(cli_key_usage);
    if ((rc = cli_bundle_keys(&k, 1)))
        return rc;
    bundle_key_line(k.sign_pk, k.box_pk, conf->hostname, line, sizeof line);
    sodium_memzero(&k, sizeof k);
    printf("%s\n", line);
    return EX_OK;
}

/* ------------------------------------------------------------------ peer */

static int cli_peer_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (!n || n >= sizeof ((struct store_peer *)0)->name)
        return 0;
    for (; *s; s++)
        if (!addr_is_atext((unsigned char)*s) && *s != '.')
            return 0;
    return 1;
}

/* "a.example, B.example" -> "a.example,b.example" (checked). */
static int cli_peer_domains(const char *in, char *out, size_t n)
{
    char buf[1024], *items[64];
    size_t k, o = 0;

    if (strlen(in) >= sizeof buf)
        return -1;
    util_strlcpy(buf, in, sizeof buf);
    k = util_split_list(buf, items, MN_NELEM(items));
    if (!k)
        return -1;
    out[0] = '\0';
    for (size_t i = 0; i < k; i++) {
        util_lower(items[i]);
        if (!addr_domain_ok(items[i], strlen(items[i]), 0) || strchr(items[i], ','))
            return -1;
        int w = snprintf(out + o, n - o, "%s%s", o ? "," : "", items[i]);
        if (w < 0 || (size_t)w >= n - o)
            return -1;
        o += (size_t)w;
    }
    return 0;
}

static int cli_peer_add(int argc, char **argv)
{
    struct store_peer p;
    const char *key = NULL, *domains = NULL;
    int rc;

    memset(&p, 0, sizeof p);
    if (argc < 3 || !cli_peer_name_ok(argv[2])) {
        fprintf(stderr, "mailnode: peer add: a name of letters, digits, '.', '-' or '_' is needed\n");
        return EX_USAGE;
    }
    util_strlcpy(p.name, argv[2], sizeof p.name);
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--key") && i + 1 < argc)
            key = argv[++i];
        else if (!strcmp(argv[i], "--domains") && i + 1 < argc)
            domains = argv[++i];
        else
            return cli_bundle_bad(cli_peer_usage);
    }
    if (!key || bundle_key_parse(key, p.sign_pk, p.box_pk)) {
        fprintf(stderr, "mailnode: peer add: --key needs the line `mailnode key show` prints on the peer"
                        " (\"%s ...\")\n", BUNDLE_KEY_PREFIX);
        return EX_DATAERR;
    }
    if (domains && cli_peer_domains(domains, p.domains, sizeof p.domains)) {
        fprintf(stderr, "mailnode: peer add: --domains: '%s' is not a list of domain names\n", domains);
        return EX_DATAERR;
    }
    if ((rc = cli_open_store()))
        return rc;
    rc = store_peer_add(&p);
    if (!rc)
        rc = store_commit();
    else
        store_rollback();
    store_close();
    if (rc == STORE_EXISTS) {
        fprintf(stderr, "mailnode: peer add: a peer named %s or with that key exists already"
                        " (mailnode peer del first)\n", p.name);
        return EX_DATAERR;
    }
    if (rc) {
        fprintf(stderr, "mailnode: peer add: database error\n");
        return EX_TEMPFAIL;
    }
    printf("peer %s added (%s)\n", p.name, p.domains[0] ? p.domains : "upstream: all remote mail");
    return EX_OK;
}

static int cli_peer_print(void *arg, const struct store_peer *p)
{
    char line[256];
    MN_UNUSED(arg);
    bundle_key_line(p->sign_pk, p->box_pk, NULL, line, sizeof line);
    printf("%s\t%s\t%s\n", p->name, p->domains[0] ? p->domains : "*", line);
    return 0;
}

int cli_peer(int argc, char **argv)
{
    int rc;

    if (cli_bundle_help(argc, argv, cli_peer_usage))
        return EX_OK;
    if (argc < 2)
        return cli_bundle_bad(cli_peer_usage);
    if (!strcmp(argv[1], "add"))
        return cli_peer_add(argc, argv);
    if (!strcmp(argv[1], "list") && argc == 2) {
        if ((rc = cli_open_store()))
            return rc;
        rc = store_peer_list(cli_peer_print, NULL);
        store_close();
        return rc ? EX_TEMPFAIL : EX_OK;
    }
    if (!strcmp(argv[1], "del") && argc == 3) {
        if ((rc = cli_open_store()))
            return rc;
        rc = store_peer_del(argv[2]);
        if (!rc)
            rc = store_commit();
        else
            store_rollback();
        store_close();
        if (rc == STORE_NOTFOUND) {
            fprintf(stderr, "mailnode: peer del: no peer named %s (see mailnode peer list)\n", argv[2]);
            return EX_NOUSER;
        }
        return rc ? EX_TEMPFAIL : EX_OK;
    }
    return cli_bundle_bad(cli_peer_usage);
}

/* ---------------------------------------------------------------- export */

struct cli_export {
    struct store_peer peer;
    struct bundle_keys keys;
    unsigned char bundle_id[16];
    int64_t max_bytes;                  /* 0: one volume */
    const char *out;                    /* path, or NULL for stdout */
    int fd;
    uint32_t volume;
    char tmp[4300], path[4200];
    struct bundle_writer *w;
    uint32_t in_volume;                 /* messages in the open volume */
    int64_t *rcpt_ids;                  /* recipients written, marked at the end */
    size_t n_ids, cap_ids;
    uint32_t messages, skipped;
    int64_t raw_bytes, file_bytes;
    char (*done_paths)[4200];           /* finished volumes, renamed at the end */
    size_t n_done;
    unsigned char *buf;
    char *env;
};

static int cli_export_open(struct cli_export *x)
{
    x->volume++;
    if (!x->out) {
        x->fd = STDOUT_FILENO;
    } else {
        if (x->max_bytes)
            snprintf(x->path, sizeof x->path, "%s.%03u", x->out, (unsigned)x->volume);
        else
            snprintf(x->path, sizeof x->path, "%s", x->out);
        snprintf(x->tmp, sizeof x->tmp, "%s.tmp", x->path);
        x->fd = open(x->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (x->fd < 0) {
            fprintf(stderr, "mailnode: bundle export: cannot create %s: %s\n", x->tmp, strerror(errno));
            return EX_CANTCREAT;
        }
    }
    x->w = bundle_writer_open(x->fd, &x->keys, x->peer.box_pk, BUNDLE_KIND_MAIL, x->bundle_id, x->volume);
    x->in_volume = 0;
    if (!x->w) {
        fprintf(stderr, "mailnode: bundle export: cannot write %s: %s\n", x->out ? x->tmp : "standard output",
                strerror(errno));
        return EX_IOERR;
    }
    return 0;
}

/* Ends the open volume: final frame, fsync; renamed only once all are. */
static int cli_export_close(struct cli_export *x)
{
    int rc = bundle_writer_finish(x->w);

    x->file_bytes += bundle_writer_bytes(x->w);
    bundle_writer_free(x->w);
    x->w = NULL;
    if (!rc && x->out && fsync(x->fd))
        rc = BUNDLE_EIO;
    if (x->out && close(x->fd) && !rc)
        rc = BUNDLE_EIO;
    x->fd = -1;
    if (rc) {
        fprintf(stderr, "mailnode: bundle export: writing %s: %s (%s)\n", x->out ? x->tmp : "standard output",
                bundle_strerror(rc), strerror(errno));
        return EX_IOERR;
    }
    if (x->out) {
        void *p = realloc(x->done_paths, (x->n_done + 1) * sizeof *x->done_paths);
        if (!p)
            return EX_OSERR;
        x->done_paths = p;
        util_strlcpy(x->done_paths[x->n_done++], x->path, sizeof x->done_paths[0]);
    }
    return 0;
}

static int cli_export_ids(struct cli_export *x, const struct store_out_msg *m)
{
    if (x->n_ids + (size_t)m->nrcpt > x->cap_ids) {
        size_t c = (x->cap_ids + (size_t)m->nrcpt) * 2;
        void *p = realloc(x->rcpt_ids, c * sizeof *x->rcpt_ids);
        if (!p)
            return -1;
        x->rcpt_ids = p;
        x->cap_ids = c;
    }
    for (int i = 0; i < m->nrcpt; i++)
        x->rcpt_ids[x->n_ids++] = m->rcpts[i].id;
    return 0;
}

/* One message: ENV, DATA..., END (BLAKE2b-256 of the body and its size). */
static int cli_export_msg(struct cli_export *x, const struct store_out_msg *m, size_t envlen)
{
    struct store_reader rd;
    crypto_generichash_state h;
    unsigned char end[40];
    int64_t size = 0;
    ssize_t n;
    int rc;

    if ((rc = bundle_write_record(x->w, BUNDLE_REC_ENV, x->env, envlen)))
        return rc;
    if (store_reader_open(&rd, m->body_id))
        return STORE_ERR;
    crypto_generichash_init(&h, NULL, 0, 32);
    while ((n = store_reader_read(&rd, x->buf, BUNDLE_DATA_MAX)) > 0) {
        /* store_reader_read hands out at most one stored chunk at a time. */
        crypto_generichash_update(&h, x->buf, (size_t)n);
        size += n;
        if ((rc = bundle_write_record(x->w, BUNDLE_REC_DATA, x->buf, (size_t)n)))
            break;
    }
    store_reader_close(&rd);
    if (n < 0)
        return STORE_ERR;
    if (rc)
        return rc;
    crypto_generichash_final(&h, end, 32);
    end[32] = 0;
    for (int i = 0; i < 8; i++)
        end[32 + i] = (unsigned char)((uint64_t)size >> (56 - 8 * i));
    return bundle_write_record(x->w, BUNDLE_REC_END, end, sizeof end);
}

/* Room for a message of raw bytes in the open volume?  Starts the next
 * volume when not; 1 when the message cannot fit even an empty one. */
static int cli_export_room(struct cli_export *x, int64_t raw, int *ex)
{
    int64_t need = bundle_bound(raw) + 128;    /* and the FIN record, final frame */

    *ex = 0;
    if (!x->max_bytes || bundle_writer_size(x->w) + need <= x->max_bytes)
        return 0;
    if (bundle_writer_sync(x->w)) {
        *ex = EX_IOERR;
        return -1;
    }
    if (bundle_writer_size(x->w) + need <= x->max_bytes)
        return 0;
    if (!x->in_volume) {
        /* Even an empty volume is too small: header, and the bound. */
        return 1;
    }
    if ((*ex = cli_export_close(x)) || (*ex = cli_export_open(x)))
        return -1;
    return bundle_writer_size(x->w) + need <= x->max_bytes ? 0 : 1;
}

static int cli_export_run(struct cli_export *x)
{
    struct store_out_msg m;
    int64_t after = 0, resend_before = util_now() - conf->bundle_resend_after;
    int rc, ex;

    if ((ex = cli_export_open(x)))
        return ex;
    while ((rc = store_bundle_next(&x->peer, after, resend_before, &m)) == 1) {
        size_t envlen = 0;
        after = m.id;
        if (bundle_env_format(&m, x->env, BUNDLE_RECORD_MAX, &envlen)) {
            fprintf(stderr, "mailnode: bundle export: %s: envelope too large, left queued\n", m.qid);
            x->skipped++;
            store_out_free(&m);
            continue;
        }
        rc = cli_export_room(x, m.size + (int64_t)envlen + 64, &ex);
        if (rc < 0) {
            store_out_free(&m);
            return ex;
        }
        if (rc > 0) {
            fprintf(stderr, "mailnode: bundle export: %s (%lld bytes) does not fit in a volume of"
                            " %lld bytes; left queued\n", m.qid, (long long)m.size, (long long)x->max_bytes);
            x->skipped++;
            store_out_free(&m);
            continue;
        }
        rc = cli_export_msg(x, &m, envlen);
        if (!rc && cli_export_ids(x, &m))
            rc = BUNDLE_ENOMEM;
        store_out_free(&m);
        if (rc) {
            fprintf(stderr, "mailnode: bundle export: %s: %s\n", m.qid,
                    rc == STORE_ERR ? "cannot read the message from the database" : bundle_strerror(rc));
            return rc == STORE_ERR ? EX_TEMPFAIL : EX_IOERR;
        }
        x->in_volume++;
        x->messages++;
        x->raw_bytes += m.size;
    }
    if (rc < 0) {
        fprintf(stderr, "mailnode: bundle export: cannot read the queue from the database\n");
        return EX_TEMPFAIL;
    }
    return cli_export_close(x);
}

/* The volumes are complete on disk: give them their names, then record
 * the recipients as in transit.  A crash before the commit leaves them
 * queued as before: they are exported again, and the importer drops the
 * duplicates. */
static int cli_export_commit(struct cli_export *x)
{
    int64_t now = util_now();
    int rc = 0;

    for (size_t i = 0; i < x->n_done; i++) {
        char tmp[4300];
        snprintf(tmp, sizeof tmp, "%s.tmp", x->done_paths[i]);
        if (rename(tmp, x->done_paths[i])) {
            fprintf(stderr, "mailnode: bundle export: cannot rename %s: %s\n", tmp, strerror(errno));
            return EX_CANTCREAT;
        }
    }
    if (x->n_done) {
        char dir[4200], *slash;
        util_strlcpy(dir, x->done_paths[0], sizeof dir);
        slash = strrchr(dir, '/');
        if (slash)
            *(slash == dir ? slash + 1 : slash) = '\0';
        else
            util_strlcpy(dir, ".", sizeof dir);
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    for (size_t i = 0; i < x->n_ids && !rc; i++)
        rc = store_bundle_transit(x->rcpt_ids[i], x->peer.id, x->bundle_id, now);
    if (!rc)
        rc = store_commit();
    if (rc) {
        store_rollback();
        fprintf(stderr, "mailnode: bundle export: the bundle is written but the queue could not record"
                        " it; the messages stay queued and will be exported again\n");
        return EX_TEMPFAIL;
    }
    return 0;
}

static void cli_export_abort(struct cli_export *x)
{
    if (x->w) {
        bundle_writer_free(x->w);
        x->w = NULL;
        if (x->out) {
            close(x->fd);
            unlink(x->tmp);
        }
    }
    for (size_t i = 0; i < x->n_done; i++) {
        char tmp[4300];
        snprintf(tmp, sizeof tmp, "%s.tmp", x->done_paths[i]);
        unlink(tmp);
    }
}

static int cli_export_args(struct cli_export *x, int argc, char **argv, const char **peer)
{
    *peer = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--peer") && i + 1 < argc) {
            *peer = argv[++i];
        } else if (!strcmp(argv[i], "--max-bytes") && i + 1 < argc) {
            if (util_parse_size(argv[++i], &x->max_bytes) || x->max_bytes < 4096) {
                fprintf(stderr, "mailnode: bundle export: --max-bytes: '%s' is not a size of at least"
                                " 4096 bytes\n", argv[i]);
                return EX_USAGE;
            }
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            x->out = strcmp(argv[++i], "-") ? argv[i] : NULL;
        } else {
            return cli_bundle_bad(cli_bundle_usage);
        }
    }
    if (!*peer)
        return cli_bundle_bad(cli_bundle_usage);
    if (x->max_bytes && !x->out) {
        fprintf(stderr, "mailnode: bundle export: --max-bytes writes volumes FILE.001, ...: give -o FILE\n");
        return EX_USAGE;
    }
    if (!x->out && isatty(STDOUT_FILENO)) {
        fprintf(stderr, "mailnode: bundle export: standard output is a terminal: give -o FILE\n");
        return EX_USAGE;
    }
    return 0;
}

static int cli_bundle_export(int argc, char **argv)
{
    struct cli_export x;
    const char *peer;
    int rc;

    memset(&x, 0, sizeof x);
    x.fd = -1;
    if ((rc = cli_export_args(&x, argc, argv, &peer)))
        return rc;
    if ((rc = cli_bundle_keys(&x.keys, 1)) || (rc = cli_open_store()))
        return rc;
    rc = store_peer_get(peer, &x.peer);
    if (rc) {
        store_close();
        fprintf(stderr, "mailnode: bundle export: %s\n", rc == STORE_NOTFOUND
                ? "no such peer (see mailnode peer list)" : "database error");
        return rc == STORE_NOTFOUND ? EX_NOUSER : EX_TEMPFAIL;
    }
    randombytes_buf(x.bundle_id, sizeof x.bundle_id);
    x.buf = malloc(BUNDLE_DATA_MAX);
    x.env = malloc(BUNDLE_RECORD_MAX);
    rc = !x.buf || !x.env ? EX_OSERR : cli_export_run(&x);
    if (!rc)
        rc = cli_export_commit(&x);
    else
        cli_export_abort(&x);
    if (!rc) {
        char hex[33];
        bundle_hex(x.bundle_id, 16, hex);
        fprintf(stderr, "mailnode: bundle %s for %s: %u messages, %u volume%s, %lld bytes"
                        " (%lld bytes of mail)%s\n", hex, x.peer.name, x.messages, x.volume,
                x.volume == 1 ? "" : "s", (long long)x.file_bytes, (long long)x.raw_bytes,
                x.skipped ? "; some messages were left queued (see above)" : "");
        log_info("bundle %s exported to %s: %u messages, %u volumes", hex, x.peer.name, x.messages, x.volume);
    }
    store_close();
    sodium_memzero(&x.keys, sizeof x.keys);
    free(x.rcpt_ids);
    free(x.done_paths);
    free(x.buf);
    free(x.env);
    return rc;
}

int cli_bundle(int argc, char **argv)
{
    if (cli_bundle_help(argc, argv, cli_bundle_usage))
        return EX_OK;
    /* One log line per message is for syslog; on a terminal the summary
     * lines say what happened. */
    if (!conf->use_syslog)
        log_set_level(LOG_WARNING);
    if (argc >= 2 && !strcmp(argv[1], "export"))
        return cli_bundle_export(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "import"))
        return cli_bundle_import(argc, argv);
    return cli_bundle_bad(cli_bundle_usage);
}
