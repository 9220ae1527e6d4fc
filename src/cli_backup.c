/*
 * cli_backup.c: `mailnode backup FILE` and `mailnode restore FILE`.
 *
 * A backup is FILE, a consistent copy of the database taken while the
 * daemon runs (store_backup.c), FILE.key, a copy of the node key, and
 * FILE.bundle-key, a copy of the bundle key pair when there is one.  The
 * node key seals the CRAM-MD5 secrets kept in the database; it is kept
 * apart so that an operator can store it apart too (a stolen database
 * alone yields nothing that logs in).  A database restored without its key
 * still works, but users must set their passwords again for CRAM-MD5; a
 * node restored without its bundle key needs a new key given to every
 * peer.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char cli_backup_help[] =
    "usage: mailnode backup [--no-key] [--rate BYTES] FILE\n"
    "\n"
    "Writes a consistent copy of the database to FILE while the daemon runs\n"
    "and accepts mail (SQLite's online backup: one snapshot, the daemon is not\n"
    "stopped), the node key to FILE.key and the bundle key pair (if any) to\n"
    "FILE.bundle-key (mode 0600).  The copy is written\n"
    "to FILE.tmp and renamed only when complete and checked, so an interrupted\n"
    "backup leaves an earlier FILE as it was.\n"
    "  --no-key       do not copy the keys (store them apart yourself)\n"
    "  --rate BYTES   copy at most BYTES per second (k, M suffixes), to leave\n"
    "                 a slow SD card to the daemon\n";

static const char cli_restore_help[] =
    "usage: mailnode restore [--no-key] FILE\n"
    "\n"
    "Replaces the database with the backup FILE, with the daemon stopped.\n"
    "FILE is checked, copied and brought to this version's schema before it\n"
    "replaces the database; a backup made by a newer mailnode is refused.\n"
    "FILE.key and FILE.bundle-key, if present, become the node key and the\n"
    "bundle key (a different key already there is kept as KEYFILE.old).\n"
    "  --no-key   leave the keys as they are\n";

static int cli_backup_usage(const char *help, int argc, char **argv, int *i, int *no_key, const char **rate)
{
    for (*i = 1; *i < argc; (*i)++) {
        const char *a = argv[*i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(help, stdout);
            return EX_OK;
        } else if (!strcmp(a, "--no-key")) {
            *no_key = 1;
        } else if (rate && !strcmp(a, "--rate") && *i + 1 < argc) {
            *rate = argv[++*i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "mailnode: unknown option %s\n%s", a, help);
            return EX_USAGE;
        } else {
            break;
        }
    }
    if (*i != argc - 1) {
        fputs(help, stderr);
        return EX_USAGE;
    }
    return -1;
}

/* Copies src to dst through dst.tmp, fsynced, mode 0600.  0, 1 when src
 * does not exist, -1 on error (errno). */
static int cli_copy_key(const char *src, const char *dst)
{
    char tmp[4096], buf[4096];
    int in, out = -1;
    ssize_t n;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", dst) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return errno == ENOENT ? 1 : -1;
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        goto fail;
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n)
            goto fail;
    if (n < 0 || fsync(out) || close(out)) {
        out = -1;
        goto fail;
    }
    close(in);
    return rename(tmp, dst);
fail:
    {
        int e = errno;
        close(in);
        if (out >= 0)
            close(out);
        unlink(tmp);
        errno = e;
    }
    return -1;
}

/* 1 if both files exist with the same bytes. */
static int cli_same_file(const char *a, const char *b)
{
    char ba[256], bb[256];
    int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
    ssize_t na, nb;
    int same = fa >= 0 && fb >= 0;

    while (same) {
        na = read(fa, ba, sizeof ba);
        nb = read(fb, bb, sizeof bb);
        if (na != nb || na < 0 || memcmp(ba, bb, (size_t)na))
            same = 0;
        if (na <= 0)
            break;
    }
    if (fa >= 0)
        close(fa);
    if (fb >= 0)
        close(fb);
    return same;
}

/* The key files a backup carries beside the database copy: the node key
 * (CRAM-MD5 secrets) and the bundle key pair (the identity peers know). */
struct cli_key_file {
    const char *what, *suffix;
    const char *path;
};

static int cli_key_files(struct cli_key_file k[2])
{
    k[0] = (struct cli_key_file){ "node key", "key", conf->keyfile };
    k[1] = (struct cli_key_file){ "bundle key", "bundle-key", conf->bundle_key };
    return 2;
}

static int cli_backup_keys(const char *file)
{
    struct cli_key_file k[2];
    char copy[4096];
    int n = cli_key_files(k);

    for (int j = 0; j < n; j++) {
        if (!k[j].path || !*k[j].path)
            continue;
        snprintf(copy, sizeof copy, "%s.%s", file, k[j].suffix);
        int rc = cli_copy_key(k[j].path, copy);
        if (rc < 0) {
            fprintf(stderr, "mailnode: backup: cannot copy the %s %s to %s: %s\n", k[j].what, k[j].path, copy,
                    strerror(errno));
            return EX_CANTCREAT;
        }
        if (rc == 1) {
            unlink(copy);               /* not one of an older backup of this name */
            printf("backup: no %s at %s (none made yet): nothing to copy\n", k[j].what, k[j].path);
        } else {
            printf("backup: %s copied to %s (keep it as safe as the database)\n", k[j].what, copy);
        }
    }
    return EX_OK;
}

int cli_backup(int argc, char **argv)
{
    struct store_backup_info info;
    const char *rate = NULL, *file;
    char err[1024];
    int64_t bytes_per_sec = 0;
    int i, no_key = 0, rc;

    if ((rc = cli_backup_usage(cli_backup_help, argc, argv, &i, &no_key, &rate)) >= 0)
        return rc;
    file = argv[i];
    if (rate && (util_parse_size(rate, &bytes_per_sec) || bytes_per_sec <= 0)) {
        fprintf(stderr, "mailnode: --rate %s: not a size (e.g. 512k, 2M)\n", rate);
        return EX_USAGE;
    }
    if (store_backup(conf->database, file, bytes_per_sec, &info, err, sizeof err)) {
        fprintf(stderr, "mailnode: backup: %s\n", err);
        return errno == EACCES || errno == EPERM ? EX_NOPERM : EX_CANTCREAT;
    }
    printf("backup: %s: schema %lld, %lld bytes, %lld queued messages, %lld mailbox messages\n", file,
           (long long)info.schema, (long long)info.bytes, (long long)info.messages,
           (long long)info.mailbox_messages);
    return no_key ? EX_OK : cli_backup_keys(file);
}

/* Installs FILE.SUFFIX as the key file, keeping a different one as .old. */
static int cli_restore_keys(const char *file)
{
    struct cli_key_file k[2];
    char copy[4096], old[4096];
    int n = cli_key_files(k);

    for (int j = 0; j < n; j++) {
        if (!k[j].path || !*k[j].path)
            continue;
        snprintf(copy, sizeof copy, "%s.%s", file, k[j].suffix);
        if (access(copy, F_OK) != 0) {
            printf("restore: no %s: the %s stays as it is%s\n", copy, k[j].what,
                   j == 0 ? " (users may need to set their passwords again for CRAM-MD5)" : "");
            continue;
        }
        if (cli_same_file(copy, k[j].path))
            continue;
        snprintf(old, sizeof old, "%s.old", k[j].path);
        if (access(k[j].path, F_OK) == 0 && rename(k[j].path, old)) {
            fprintf(stderr, "mailnode: restore: cannot keep the old %s as %s: %s\n", k[j].what, old,
                    strerror(errno));
            return EX_CANTCREAT;
        }
        if (cli_copy_key(copy, k[j].path)) {
            fprintf(stderr, "mailnode: restore: cannot install the %s %s: %s\n", k[j].what, k[j].path,
                    strerror(errno));
            return EX_CANTCREAT;
        }
        printf("restore: %s %s installed from %s%s\n", k[j].what, k[j].path, copy,
               access(old, F_OK) == 0 ? " (the previous one kept as .old)" : "");
    }
    return EX_OK;
}

int cli_restore(int argc, char **argv)
{
    struct store_backup_info info;
    const char *file;
    char err[1024];
    int i, no_key = 0, rc, lockfd;

    if ((rc = cli_backup_usage(cli_restore_help, argc, argv, &i, &no_key, NULL)) >= 0)
        return rc;
    file = argv[i];
    /* The daemon's lock: nothing may have the database open meanwhile. */
    lockfd = cli_db_lock();
    if (lockfd < 0) {
        if (-lockfd == EX_TEMPFAIL)
            fprintf(stderr, "mailnode: restore: stop the daemon first\n");
        return -lockfd;
    }
    if (store_restore(file, conf->database, &info, err, sizeof err)) {
        fprintf(stderr, "mailnode: restore: %s\n", err);
        close(lockfd);
        return strstr(err, "newer than") || strstr(err, "damaged") || strstr(err, "not a mailnode")
                   ? EX_DATAERR : EX_CANTCREAT;
    }
    printf("restore: %s now holds %s: %lld queued messages, %lld mailbox messages\n", conf->database, file,
           (long long)info.messages, (long long)info.mailbox_messages);
    rc = no_key ? EX_OK : cli_restore_keys(file);
    close(lockfd);
    return rc;
}
