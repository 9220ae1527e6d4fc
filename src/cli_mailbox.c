/*
 * cli_mailbox.c: `mailnode mailbox list|export`, the administrator's view
 * of a user's mailbox and a way out of it for local MUAs: mboxrd or
 * Maildir, streamed chunk by chunk from the store like POP3 RETR.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

static const char cli_mbox_usage[] =
    "usage: mailnode mailbox list USER\n"
    "       mailnode mailbox export USER --mbox FILE [--delete]\n"
    "       mailnode mailbox export USER --maildir DIR [--delete]\n"
    "The messages of a local mailbox: list them, or copy them to an mbox file\n"
    "or a Maildir for a local mail reader (--delete: then remove them here).\n"
    "`mailnode mailbox list --help` and `... export --help` say more.\n";

static const char cli_mbox_list_help[] =
    "usage: mailnode mailbox list USER\n"
    "\n"
    "One line per message in USER's mailbox, oldest first, fields separated\n"
    "by tabs: uid (the POP3 UIDL, never reused), size in octets (as POP3\n"
    "LIST counts them), date delivered, queue id, From, Subject.\n";

static const char cli_mbox_export_help[] =
    "usage: mailnode mailbox export USER --mbox FILE [--delete]\n"
    "       mailnode mailbox export USER --maildir DIR [--delete]\n"
    "\n"
    "Copies every message of USER's mailbox, oldest first, with LF line ends.\n"
    "  --mbox FILE     append in mboxrd format (\"From \" lines, >From quoting);\n"
    "                  FILE '-' writes to standard output\n"
    "  --maildir DIR   one file per message in DIR/new (DIR/cur, DIR/new and\n"
    "                  DIR/tmp are created as needed)\n"
    "  --delete        once the copy is safely on disk, remove the messages\n"
    "                  from the mailbox.  A POP3 client reading the mailbox\n"
    "                  at the same time then finds them gone.\n";

static int cli_mbox_want_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return 1;
    return 0;
}

/* Looks the user up; prints why not and returns a sysexits code. */
static int cli_mbox_find_user(const char *name, struct store_user *u)
{
    int rc = store_user_get(name, u);
    if (rc == STORE_NOTFOUND) {
        fprintf(stderr, "mailnode: no user '%s' (see 'mailnode user list')\n", name);
        return EX_NOUSER;
    }
    if (rc) {
        fprintf(stderr, "mailnode: cannot read user '%s' from the database\n", name);
        return EX_TEMPFAIL;
    }
    return 0;
}

/* The uids of the mailbox, oldest first. */
struct cli_mbox_uid_list {
    int64_t *uids;
    size_t n, cap;
    int err;
};

static int cli_mbox_collect_uid(void *arg, const struct store_mbox_msg *m)
{
    struct cli_mbox_uid_list *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        int64_t *p = realloc(l->uids, cap * sizeof *p);
        if (!p) {
            l->err = 1;
            return -1;
        }
        l->uids = p;
        l->cap = cap;
    }
    l->uids[l->n++] = m->uid;
    return 0;
}

static int cli_mbox_load_uids(int64_t user_id, struct cli_mbox_uid_list *l)
{
    memset(l, 0, sizeof *l);
    if (store_mbox_list(user_id, cli_mbox_collect_uid, l) || l->err) {
        fprintf(stderr, "mailnode: cannot read the mailbox from the database\n");
        free(l->uids);
        l->uids = NULL;
        return EX_TEMPFAIL;
    }
    return 0;
}

/* ------------------------------------------------------------------ list */

/* The first line of header `name` within the header part of buf, made
 * printable; folded continuation lines are joined. */
static void cli_mbox_header_value(const char *buf, size_t len, const char *name,
                                  char *out, size_t n)
{
    size_t nl = strlen(name), i = 0, o = 0;

    out[0] = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && buf[end] != '\n')
            end++;
        if (end == i || (end == i + 1 && buf[i] == '\r'))
            return;                     /* end of the header */
        if (end - i > nl && !strncasecmp(buf + i, name, nl) && buf[i + nl] == ':') {
            size_t p = i + nl + 1;
            for (;;) {
                for (; p < end && o + 1 < n; p++) {
                    unsigned char ch = (unsigned char)buf[p];
                    if (ch == '\r')
                        continue;
                    if (ch == '\t')
                        ch = ' ';
                    if (o == 0 && ch == ' ')
                        continue;
                    out[o++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
                }
                /* RFC 5322 2.2.3: a line starting with white space continues. */
                if (end + 1 < len && (buf[end + 1] == ' ' || buf[end + 1] == '\t')) {
                    p = end + 1;
                    end = p;
                    while (end < len && buf[end] != '\n')
                        end++;
                    continue;
                }
                break;
            }
            out[o] = 0;
            return;
        }
        i = end + 1;
    }
}

static int cli_mbox_list_one(int64_t user_id, int64_t uid)
{
    struct store_mbox_msg m;
    struct store_reader r;
    char date[64], from[128] = "", subject[128] = "";
    static char head[STORE_CHUNK + ADDR_MAX + 64];
    size_t len;
    ssize_t got;

    if (store_mbox_get(user_id, uid, &m))
        return 0;                       /* gone meanwhile */
    util_date(m.added, date, sizeof date);
    /* One chunk holds the header of nearly every message: cheap enough. */
    len = util_strlcpy(head, m.prefix, sizeof head);
    if (store_reader_open(&r, m.body_id) == 0) {
        while (len < sizeof head &&
               (got = store_reader_read(&r, head + len, sizeof head - len)) > 0) {
            len += (size_t)got;
            if (len >= STORE_CHUNK)
                break;
        }
        cli_mbox_header_value(head, len, "From", from, sizeof from);
        cli_mbox_header_value(head, len, "Subject", subject, sizeof subject);
    }
    store_reader_close(&r);
    printf("%lld\t%lld\t%s\t%s\t%s\t%s\n", (long long)m.uid, (long long)m.size, date, m.qid,
           from, subject);
    return 0;
}

static int cli_mbox_list(int argc, char **argv)
{
    struct store_user u;
    struct cli_mbox_uid_list l;
    int rc;

    if (cli_mbox_want_help(argc, argv)) {
        fputs(cli_mbox_list_help, stdout);
        return 0;
    }
    if (argc != 3) {
        fputs(cli_mbox_list_help, stderr);
        return EX_USAGE;
    }
    if ((rc = cli_open_store_ro()))
        return rc;
    if ((rc = cli_mbox_find_user(argv[2], &u)) || (rc = cli_mbox_load_uids(u.id, &l)))
        return rc;
    for (size_t i = 0; i < l.n; i++)
        cli_mbox_list_one(u.id, l.uids[i]);
    free(l.uids);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "mailnode: writing the list: %s\n", strerror(errno));
        return EX_IOERR;
    }
    return 0;
}

/* ---------------------------------------------------------------- export */

/* CRLF to LF, and for mboxrd the quoting of lines matching ^>*From (one
 * more ">"), so that a reader can undo it exactly.  Byte by byte, so that
 * chunk boundaries do not matter. */
struct cli_mbox_xform {
    FILE *f;
    int mboxrd;
    int pending_cr;
    int matching;                       /* still at the start of a line: ">"* "From " */
    int gt;                             /* ">" seen in it */
    int from;                           /* octets of "From " matched */
    int last;                           /* last octet written */
};

static void cli_mbox_xf_put(struct cli_mbox_xform *x, int b)
{
    putc_unlocked(b, x->f);
    x->last = b;
}

static void cli_mbox_xf_unmatch(struct cli_mbox_xform *x)
{
    for (int i = 0; i < x->gt; i++)
        cli_mbox_xf_put(x, '>');
    for (int i = 0; i < x->from; i++)
        cli_mbox_xf_put(x, "From "[i]);
    x->matching = 0;
    x->gt = x->from = 0;
}

static void cli_mbox_xf_text(struct cli_mbox_xform *x, int b)
{
    if (x->matching) {
        if (b == '>' && x->from == 0) {
            x->gt++;
            return;
        }
        if (b == "From "[x->from]) {
            if (++x->from == 5) {
                cli_mbox_xf_put(x, '>');
                cli_mbox_xf_unmatch(x);
            }
            return;
        }
        cli_mbox_xf_unmatch(x);
    }
    cli_mbox_xf_put(x, b);
    if (b == '\n') {
        x->matching = x->mboxrd;
        x->gt = x->from = 0;
    }
}

static void cli_mbox_xf_byte(struct cli_mbox_xform *x, int b)
{
    if (x->pending_cr) {
        x->pending_cr = 0;
        if (b == '\n') {
            cli_mbox_xf_text(x, '\n');
            return;
        }
        cli_mbox_xf_text(x, '\r');      /* a bare CR stays */
    }
    if (b == '\r') {
        x->pending_cr = 1;
        return;
    }
    cli_mbox_xf_text(x, b);
}

static void cli_mbox_xf_init(struct cli_mbox_xform *x, FILE *f, int mboxrd)
{
    memset(x, 0, sizeof *x);
    x->f = f;
    x->mboxrd = mboxrd;
    x->matching = mboxrd;
    x->last = '\n';
}

static void cli_mbox_xf_end(struct cli_mbox_xform *x)
{
    if (x->pending_cr)
        cli_mbox_xf_text(x, '\r');
    x->pending_cr = 0;
    if (x->matching)
        cli_mbox_xf_unmatch(x);
    if (x->last != '\n')
        cli_mbox_xf_put(x, '\n');
}

/* Writes the message (prefix, then body) through x.  Returns 0, or a
 * sysexits code after saying what failed. */
static int cli_mbox_export_body(const struct store_mbox_msg *m, struct cli_mbox_xform *x)
{
    static unsigned char buf[STORE_CHUNK];
    struct store_reader r;
    ssize_t got;

    for (const char *p = m->prefix; *p; p++)
        cli_mbox_xf_byte(x, (unsigned char)*p);
    if (store_reader_open(&r, m->body_id)) {
        store_reader_close(&r);
        fprintf(stderr, "mailnode: cannot read message uid %lld from the database\n",
                (long long)m->uid);
        return EX_TEMPFAIL;
    }
    while ((got = store_reader_read(&r, buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < got; i++)
            cli_mbox_xf_byte(x, buf[i]);
    store_reader_close(&r);
    if (got < 0) {
        fprintf(stderr, "mailnode: message uid %lld is damaged in the database\n",
                (long long)m->uid);
        return EX_DATAERR;
    }
    cli_mbox_xf_end(x);
    return 0;
}

/* The reverse-path recorded in the prefix ("Return-Path: <a@b>"). */
static void cli_mbox_prefix_sender(const char *prefix, char *out, size_t n)
{
    const char *lt = strchr(prefix, '<'), *gt = lt ? strchr(lt, '>') : NULL;
    size_t k = lt && gt ? (size_t)(gt - lt - 1) : 0;

    if (!k || k >= n) {
        /* The null reverse-path: the traditional name for it. */
        util_strlcpy(out, "MAILER-DAEMON", n);
        return;
    }
    for (size_t i = 0; i < k; i++) {
        unsigned char ch = (unsigned char)lt[1 + i];
        out[i] = ch <= ' ' || ch == 0x7f ? '_' : (char)ch;
    }
    out[k] = 0;
}

/* The mbox file, often in a shared directory such as /tmp or a spool: a
 * new file is created with O_EXCL (mode 0600: everyone's mail deserves
 * it), an existing one is appended to only if it is a regular file of
 * ours with one link.  O_NOFOLLOW throughout: a symbolic link planted
 * under the name (to another user's file, to /etc/...) is refused, never
 * followed, as is a hard link to someone else's file. */
static int cli_mbox_open_append(const char *path)
{
    struct stat st;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);

    if (fd < 0 && errno == EEXIST)
        fd = open(path, O_WRONLY | O_APPEND | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "mailnode: cannot open %s: %s%s\n", path, strerror(errno),
                errno == ELOOP ? " (a symbolic link: refused)" : "");
        return -1;
    }
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || st.st_nlink != 1) {
        fprintf(stderr, "mailnode: %s is not a regular file of this user with one link: refused\n", path);
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

static int cli_mbox_export_mbox(int64_t user_id, const struct cli_mbox_uid_list *l,
                                const char *path, size_t *done)
{
    FILE *f;
    int fd, rc = 0, to_stdout = !strcmp(path, "-");

    if (to_stdout) {
        f = stdout;
    } else {
        fd = cli_mbox_open_append(path);
        if (fd < 0)
            return EX_CANTCREAT;
        if (!(f = fdopen(fd, "a"))) {
            fprintf(stderr, "mailnode: cannot open %s: %s\n", path, strerror(errno));
            close(fd);
            return EX_CANTCREAT;
        }
    }
    for (size_t i = 0; i < l->n && !rc; i++) {
        struct store_mbox_msg m;
        struct cli_mbox_xform x;
        char sender[ADDR_MAX], date[64];
        time_t t;
        struct tm tm;

        if (store_mbox_get(user_id, l->uids[i], &m))
            continue;
        cli_mbox_prefix_sender(m.prefix, sender, sizeof sender);
        t = (time_t)m.added;
        localtime_r(&t, &tm);
        /* The From_ line carries an asctime() date. */
        strftime(date, sizeof date, "%a %b %e %H:%M:%S %Y", &tm);
        fprintf(f, "From %s %s\n", sender, date);
        cli_mbox_xf_init(&x, f, 1);
        rc = cli_mbox_export_body(&m, &x);
        /* mboxrd: an empty line ends each message. */
        putc('\n', f);
        if (!rc)
            (*done)++;
        if (ferror(f))
            break;
    }
    if (fflush(f) || ferror(f) || (!to_stdout && fsync(fileno(f)))) {
        fprintf(stderr, "mailnode: writing %s: %s\n", to_stdout ? "standard output" : path,
                strerror(errno));
        rc = EX_IOERR;
    }
    if (!to_stdout && fclose(f) && !rc) {
        fprintf(stderr, "mailnode: writing %s: %s\n", path, strerror(errno));
        rc = EX_IOERR;
    }
    return rc;
}

/* A directory of the Maildir, made if missing and opened without
 * following a symbolic link: a planted "new -> /elsewhere" is refused,
 * and everything below is reached through the descriptor (openat,
 * linkat), so the tree cannot be swapped for a link half-way. */
static int cli_mbox_open_dir(int at, const char *name, const char *shown)
{
    struct stat st;
    int fd;

    if (mkdirat(at, name, 0700) && errno != EEXIST) {
        fprintf(stderr, "mailnode: cannot create %s: %s\n", shown, strerror(errno));
        return -1;
    }
    fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "mailnode: cannot open %s: %s%s\n", shown, strerror(errno),
                errno == ELOOP || errno == ENOTDIR ? " (not a directory, or a symbolic link: refused)" : "");
        return -1;
    }
    if (fstat(fd, &st) || st.st_uid != geteuid()) {
        fprintf(stderr, "mailnode: %s belongs to another user: refused\n", shown);
        close(fd);
        return -1;
    }
    return fd;
}

/* One message into the Maildir: written in tmp/ (O_EXCL, O_NOFOLLOW),
 * fsynced, then linked into new/ under the same unique name, so a reader
 * never sees half a message. */
static int cli_mbox_maildir_one(int tmpfd, int newfd, const char *name, const struct store_mbox_msg *m,
                                const char *dir)
{
    struct cli_mbox_xform x;
    FILE *f;
    int rc, fd = openat(tmpfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);

    if (fd < 0 || !(f = fdopen(fd, "w"))) {
        fprintf(stderr, "mailnode: cannot create %s/tmp/%s: %s\n", dir, name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return EX_CANTCREAT;
    }
    cli_mbox_xf_init(&x, f, 0);
    rc = cli_mbox_export_body(m, &x);
    if (!rc && (fflush(f) || ferror(f) || fsync(fileno(f)))) {
        fprintf(stderr, "mailnode: writing %s/tmp/%s: %s\n", dir, name, strerror(errno));
        rc = EX_IOERR;
    }
    if (fclose(f) && !rc) {
        fprintf(stderr, "mailnode: writing %s/tmp/%s: %s\n", dir, name, strerror(errno));
        rc = EX_IOERR;
    }
    if (!rc && (linkat(tmpfd, name, newfd, name, 0) || unlinkat(tmpfd, name, 0))) {
        fprintf(stderr, "mailnode: cannot move %s/tmp/%s to new/: %s\n", dir, name, strerror(errno));
        rc = EX_CANTCREAT;
    }
    if (rc)
        unlinkat(tmpfd, name, 0);
    return rc;
}

static int cli_mbox_export_maildir(int64_t user_id, const struct cli_mbox_uid_list *l,
                                   const char *dir, size_t *done)
{
    char name[512], host[256];
    int rc = 0, top, fds[3] = { -1, -1, -1 };
    const char *subs[] = { "tmp", "new", "cur" };

    top = cli_mbox_open_dir(AT_FDCWD, dir, dir);
    if (top < 0)
        return EX_CANTCREAT;
    for (size_t i = 0; i < MN_NELEM(subs) && !rc; i++) {
        fds[i] = cli_mbox_open_dir(top, subs[i], subs[i]);
        if (fds[i] < 0)
            rc = EX_CANTCREAT;
    }
    if (gethostname(host, sizeof host))
        util_strlcpy(host, "localhost", sizeof host);
    host[sizeof host - 1] = 0;
    for (char *p = host; *p; p++)
        if (*p == '/' || *p == ':')
            *p = '_';
    for (size_t i = 0; i < l->n && !rc; i++) {
        struct store_mbox_msg m;

        if (store_mbox_get(user_id, l->uids[i], &m))
            continue;
        snprintf(name, sizeof name, "%lld.P%dU%lld.%s", (long long)m.added, (int)getpid(), (long long)m.uid,
                 host);
        rc = cli_mbox_maildir_one(fds[0], fds[1], name, &m, dir);
        if (!rc)
            (*done)++;
    }
    if (!rc && fsync(fds[1])) {
        fprintf(stderr, "mailnode: cannot sync %s/new: %s\n", dir, strerror(errno));
        rc = EX_IOERR;
    }
    for (size_t i = 0; i < MN_NELEM(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    close(top);
    return rc;
}

static int cli_mbox_export(int argc, char **argv)
{
    const char *mbox = NULL, *maildir = NULL, *user = NULL;
    int del = 0, rc;
    struct store_user u;
    struct cli_mbox_uid_list l;
    size_t done = 0;

    if (cli_mbox_want_help(argc, argv)) {
        fputs(cli_mbox_export_help, stdout);
        return 0;
    }
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--mbox") && i + 1 < argc)
            mbox = argv[++i];
        else if (!strcmp(argv[i], "--maildir") && i + 1 < argc)
            maildir = argv[++i];
        else if (!strcmp(argv[i], "--delete"))
            del = 1;
        else if (argv[i][0] != '-' && !user)
            user = argv[i];
        else {
            fprintf(stderr, "mailnode: mailbox export: unexpected '%s'\n", argv[i]);
            fputs(cli_mbox_export_help, stderr);
            return EX_USAGE;
        }
    }
    if (!user || !!mbox == !!maildir) {
        fputs(cli_mbox_export_help, stderr);
        return EX_USAGE;
    }
    if (del && mbox && !strcmp(mbox, "-")) {
        fprintf(stderr, "mailnode: --delete needs --mbox FILE or --maildir DIR: "
                        "standard output cannot be made durable\n");
        return EX_USAGE;
    }
    if ((rc = cli_open_store_ro()))
        return rc;
    if ((rc = cli_mbox_find_user(user, &u)) || (rc = cli_mbox_load_uids(u.id, &l)))
        return rc;
    if (mbox)
        rc = cli_mbox_export_mbox(u.id, &l, mbox, &done);
    else
        rc = cli_mbox_export_maildir(u.id, &l, maildir, &done);
    if (!rc && del && l.n) {
        /* Only what was listed and written is removed: mail delivered
         * during the export stays for the next one. */
        if (store_mbox_delete(u.id, l.uids, l.n) || store_commit()) {
            store_rollback();
            fprintf(stderr, "mailnode: the messages were exported but could not be removed from "
                            "the mailbox; they are still there\n");
            rc = EX_TEMPFAIL;
        }
    }
    free(l.uids);
    if (!rc)
        fprintf(stderr, "mailnode: exported %zu messages of %s to %s%s\n", done, user,
                mbox ? mbox : maildir, del ? " and removed them from the mailbox" : "");
    return rc;
}

int cli_mailbox(int argc, char **argv)
{
    if (argc < 2) {
        fputs(cli_mbox_usage, stderr);
        return EX_USAGE;
    }
    if (!strcmp(argv[1], "list"))
        return cli_mbox_list(argc, argv);
    if (!strcmp(argv[1], "export"))
        return cli_mbox_export(argc, argv);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(cli_mbox_usage, stdout);
        return 0;
    }
    fprintf(stderr, "mailnode: mailbox: unknown command '%s'\n", argv[1]);
    fputs(cli_mbox_usage, stderr);
    return EX_USAGE;
}
