/*
 * cli_db.c: how the commands reach the database and the node key.
 *
 *   - Only the daemon and the commands that write (user/domain/alias add,
 *     sendmail, ...) may create the database and the key; a read-only
 *     command (status, queue list) pointed at a wrong path says so instead
 *     of leaving an empty database behind.
 *   - A database that cannot be opened is explained: a missing directory,
 *     a permission, a read-only file system, with the sysexits(3) code for
 *     each (73 cannot create, 77 no permission), not a bare SQLite text.
 *   - With `user = NAME`, what root creates belongs to NAME, so that the
 *     README's order (root adds users, then starts the daemon that drops
 *     to NAME) works.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pwd.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>

/* The directory part of path, "." when there is none. */
static void cli_db_dir(const char *path, char *dir, size_t n)
{
    char tmp[4096];
    util_strlcpy(tmp, path, sizeof tmp);
    util_strlcpy(dir, dirname(tmp), n);
}

/* Why path cannot be opened for reading and writing (or created): fills
 * why and returns the exit code; 0 if nothing visible is wrong. */
int cli_db_diagnose(const char *path, char *why, size_t n)
{
    char dir[4096];
    struct stat st;

    cli_db_dir(path, dir, sizeof dir);
    if (stat(dir, &st)) {
        snprintf(why, n, "the directory %.400s does not exist (create it, or correct `database`)", dir);
        return EX_CANTCREAT;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(why, n, "%.400s is not a directory", dir);
        return EX_CANTCREAT;
    }
    if (stat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            snprintf(why, n, "%s is not a regular file", path);
            return EX_CANTCREAT;
        }
        if (access(path, R_OK | W_OK) == 0 && access(dir, W_OK) == 0)
            return 0;
        if (errno == EROFS) {
            snprintf(why, n, "%s is on a read-only file system", path);
            return EX_CANTCREAT;
        }
        if (access(path, R_OK | W_OK)) {
            struct passwd *pw = util_getpwuid(st.st_uid);
            snprintf(why, n, "no permission to read and write %s (owned by %s, mode %03o; running as uid %ld)",
                     path, pw ? pw->pw_name : "?", (unsigned)(st.st_mode & 0777), (long)geteuid());
            return EX_NOPERM;
        }
    } else if (errno != ENOENT) {
        snprintf(why, n, "%s: %s", path, strerror(errno));
        return errno == EACCES ? EX_NOPERM : EX_CANTCREAT;
    }
    /* SQLite keeps its write-ahead log beside the database. */
    if (access(dir, W_OK)) {
        if (errno == EROFS) {
            snprintf(why, n, "the directory %.400s is on a read-only file system", dir);
            return EX_CANTCREAT;
        }
        struct passwd *me = util_getpwuid(geteuid());
        snprintf(why, n, "no permission to create files in %.250s (the database and its -wal and "
                 "-shm files live there): as root, run `chown %s %.250s`", dir,
                 me ? me->pw_name : "USER", dir);
        return EX_NOPERM;
    }
    return 0;
}

/* Files root made for a node whose daemon runs as `user` go to that user;
 * the daemon could not open them otherwise. */
void cli_db_chown(void)
{
    static const char *const suffixes[] = { "", "-wal", "-shm", ".lock" };
    char path[4200];
    struct passwd *pw;
    struct stat st;

    if (geteuid() != 0 || !conf->run_user[0] || !(pw = util_getpwnam(conf->run_user)))
        return;
    for (size_t i = 0; i <= MN_NELEM(suffixes); i++) {
        if (i < MN_NELEM(suffixes))
            snprintf(path, sizeof path, "%s%s", conf->database, suffixes[i]);
        else
            util_strlcpy(path, conf->keyfile, sizeof path);
        if (lstat(path, &st) || !S_ISREG(st.st_mode) || st.st_uid == pw->pw_uid)
            continue;
        if (chown(path, pw->pw_uid, pw->pw_gid))
            fprintf(stderr, "mailnode: cannot give %s to user %s: %s\n", path, pw->pw_name,
                    strerror(errno));
    }
}

static int cli_db_open(int create)
{
    char err[512], why[1024];
    struct stat st;
    int rc;

    if (!create && stat(conf->database, &st) && errno == ENOENT) {
        fprintf(stderr, "mailnode: no database %s (check `database` in %s; `mailnode run` or a "
                        "command that writes, such as `mailnode user add`, creates it)\n",
                conf->database, conf->path ? conf->path : "the configuration");
        return EX_NOINPUT;
    }
    if (store_open(conf->database, STORE_TOOL, err, sizeof err)) {
        rc = cli_db_diagnose(conf->database, why, sizeof why);
        fprintf(stderr, "mailnode: %s%s%s\n", err, rc ? ": " : "", rc ? why : "");
        return rc ? rc : EX_CANTCREAT;
    }
    /* Only a command that may create the database may create the key. */
    if ((create || access(conf->keyfile, F_OK) == 0) && auth_init(conf->keyfile)) {
        fprintf(stderr, "mailnode: cannot use the node key %s (see the log line above)\n", conf->keyfile);
        store_close();
        return EX_CANTCREAT;
    }
    cli_db_chown();
    return 0;
}

int cli_open_store(void)
{
    return cli_db_open(1);
}

int cli_open_store_ro(void)
{
    return cli_db_open(0);
}

/* ----------------------------------------------------------------- lock */

static void cli_db_lock_path(char *path, size_t n)
{
    snprintf(path, n, "%s.lock", conf->database);
}

/* One daemon per database: a second one would race the first for the
 * same queue and remove bodies it is still writing.  The lock file names
 * the holder, so that the second one can say who it is.  The fd, or minus
 * a sysexits code after saying what is wrong. */
int cli_db_lock(void)
{
    char path[4200], why[1024], text[64] = "";
    int fd, rc;
    ssize_t n;

    cli_db_lock_path(path, sizeof path);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = cli_db_diagnose(conf->database, why, sizeof why);
        fprintf(stderr, "mailnode: cannot create %s: %s\n", path, rc ? why : strerror(errno));
        return -(rc ? rc : EX_CANTCREAT);
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        n = pread(fd, text, sizeof text - 1, 0);
        text[n > 0 ? n : 0] = '\0';
        if (!strncmp(text, "pid ", 4))
            fprintf(stderr, "mailnode: another mailnode (pid %ld) is running on %s\n", atol(text + 4),
                    conf->database);
        else
            fprintf(stderr, "mailnode: another mailnode is running on %s\n", conf->database);
        close(fd);
        return -EX_TEMPFAIL;
    }
    snprintf(text, sizeof text, "pid %ld\n", (long)getpid());
    if (ftruncate(fd, 0) || pwrite(fd, text, strlen(text), 0) < 0)
        fprintf(stderr, "mailnode: cannot write %s: %s\n", path, strerror(errno));
    return fd;
}

/* What `status` shows of the running daemon, written once it serves. */
void cli_db_lock_note(int fd)
{
    char text[4096];
    int len = snprintf(text, sizeof text, "pid %ld\nstarted %lld\nversion %s\n", (long)getpid(),
                       (long long)util_now(), MAILNODE_VERSION);
    static const char *const kinds[LISTEN_N] = { "smtp", "submission", "odmr", "pop3", "imap", "imaps" };

    for (int i = 0; i < LISTEN_N && len > 0 && (size_t)len < sizeof text; i++)
        if (conf->listen[i][0])
            len += snprintf(text + len, sizeof text - (size_t)len, "listen %s %s\n", kinds[i],
                            conf->listen[i]);
    if (len < 0 || (size_t)len >= sizeof text)
        return;
    if (ftruncate(fd, 0) || pwrite(fd, text, (size_t)len, 0) < 0)
        log_warn("cannot write the lock file: %s", strerror(errno));
}

/* The running daemon's note into buf: 1 if a daemon holds the lock, 0 if
 * none does, -1 if that cannot be told (no permission). */
int cli_db_daemon(char *buf, size_t n)
{
    char path[4200];
    ssize_t got;
    int fd, running;

    buf[0] = '\0';
    cli_db_lock_path(path, sizeof path);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    running = flock(fd, LOCK_SH | LOCK_NB) != 0;
    got = pread(fd, buf, n - 1, 0);
    buf[got > 0 ? got : 0] = '\0';
    close(fd);
    return running;
}
