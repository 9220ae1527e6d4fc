/*
 * cli.c: the daemon command (`mailnode run`) and the queue and status
 * commands.  Administration of users, domains and aliases is in
 * cli_admin.c, injection in cli_sendmail.c, mailboxes in cli_mailbox.c.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/un.h>

int cli_open_store(void)
{
    char err[512];
    if (store_open(conf->database, STORE_TOOL, err, sizeof err)) {
        fprintf(stderr, "mailnode: %s\n", err);
        return errno == EACCES || errno == EPERM ? EX_NOPERM : EX_CANTCREAT;
    }
    if (auth_init(conf->keyfile)) {
        fprintf(stderr, "mailnode: cannot use the node key %s (see the log line above)\n", conf->keyfile);
        store_close();
        return EX_CANTCREAT;
    }
    return 0;
}

static int wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return 1;
    return 0;
}

/* ------------------------------------------------------------------ run */

static volatile sig_atomic_t got_term, got_hup;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        got_hup = 1;
    else
        got_term = 1;
}

static void reload(void)
{
    struct conf *fresh = calloc(1, sizeof *fresh);
    char err[512];

    if (!fresh)
        return;
    if (!conf->path) {
        log_info("SIGHUP: no configuration file, nothing to reload");
        free(fresh);
        return;
    }
    if (conf_load(conf->path, fresh, err, sizeof err)) {
        log_err("reload refused, keeping the running configuration: %s", err);
        conf_free(fresh);
        free(fresh);
        return;
    }
    for (int i = 0; i < LISTEN_N; i++)
        if (strcmp(fresh->listen[i], conf->listen[i]))
            log_warn("reload: listener changes take effect at the next start");
    if (strcmp(fresh->database, conf->database))
        log_warn("reload: a new database path takes effect at the next start");
    conf_free(conf);
    free(conf);
    conf = fresh;
    log_info("configuration reloaded from %s", conf->path);
}

/* End of every loop turn: the group commit, then signals. */
static void daemon_turn(void)
{
    store_turn_end();
    if (got_hup) {
        got_hup = 0;
        reload();
    }
    if (got_term)
        loop_stop();
}

/* One daemon per database: a second one would race the first for the
 * same queue and remove bodies it is still writing. */
static int lock_database(void)
{
    char path[4096];
    int fd;

    snprintf(path, sizeof path, "%s.lock", conf->database);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "mailnode: cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        fprintf(stderr, "mailnode: another mailnode is running on %s\n", conf->database);
        close(fd);
        return -1;
    }
    return fd;
}

/* `user = NAME`: a daemon started as root gives root up once its ports
 * are bound.  A daemon started as anyone else cannot and need not. */
static int drop_privileges(void)
{
    struct passwd *pw;

    if (!conf->run_user[0])
        return 0;
    if (geteuid() != 0) {
        struct passwd *me = getpwuid(geteuid());
        if (me && !strcmp(me->pw_name, conf->run_user))
            return 0;
        fprintf(stderr, "mailnode: user = %s needs the daemon started as root\n", conf->run_user);
        return EX_NOPERM;
    }
    pw = getpwnam(conf->run_user);
    if (!pw) {
        fprintf(stderr, "mailnode: user = %s: no such user (create it, or change `user`)\n", conf->run_user);
        return EX_NOUSER;
    }
    if (setgroups(0, NULL) || setgid(pw->pw_gid) || setuid(pw->pw_uid) || setuid(0) == 0) {
        fprintf(stderr, "mailnode: cannot become user %s: %s\n", conf->run_user, strerror(errno));
        return EX_NOPERM;
    }
    log_info("running as user %s (uid %ld)", pw->pw_name, (long)pw->pw_uid);
    return 0;
}

/* The daemon's hold on its database: the lock, the store, the node key.
 * 0, or a sysexits code after saying what went wrong. */
static int daemon_open(int *lockfd)
{
    char err[512];

    log_init("mailnode", conf->use_syslog);
    *lockfd = lock_database();
    if (*lockfd < 0)
        return EX_TEMPFAIL;
    if (store_open(conf->database, STORE_DAEMON, err, sizeof err)) {
        fprintf(stderr, "mailnode: %s\n", err);
        close(*lockfd);
        return EX_CANTCREAT;
    }
    if (auth_init(conf->keyfile)) {
        fprintf(stderr, "mailnode: cannot use the node key %s\n", conf->keyfile);
        store_close();
        close(*lockfd);
        return EX_CANTCREAT;
    }
    return 0;
}

static void daemon_close(int lockfd)
{
    auth_free();
    store_close();
    close(lockfd);
}

int cli_run(int argc, char **argv)
{
    char err[512];
    struct sigaction sa;
    int lockfd, rc = EX_OK;

    if (wants_help(argc, argv) || argc > 1) {
        fprintf(argc > 1 && !wants_help(argc, argv) ? stderr : stdout,
                "usage: mailnode [-c FILE] run\n"
                "Serves SMTP, submission, POP3, IMAP and ODMR (the listen.* keys) and delivers\n"
                "queued mail, in the foreground until SIGTERM.\n"
                "SIGHUP reloads the configuration file.\n");
        return wants_help(argc, argv) ? EX_OK : EX_USAGE;
    }
    /* Listeners first: privileged ports are bound while still root; then
     * the daemon becomes `user`, and everything it creates (database,
     * key, lock, control socket) belongs to that user. */
    if (loop_init()) {
        fprintf(stderr, "mailnode: epoll: %s\n", strerror(errno));
        return EX_OSERR;
    }
    if (conf->listen[LISTEN_IMAPS][0] && (!conf->tls_cert[0] || !conf->tls_key[0])) {
        fprintf(stderr, "mailnode: listen.imaps needs tls.cert and tls.key\n");
        loop_free();
        return EX_CONFIG;
    }
    if (loop_listen(conf->listen[LISTEN_SMTP], LISTEN_SMTP, smtpd_accept, err, sizeof err) ||
        loop_listen(conf->listen[LISTEN_SUBMISSION], LISTEN_SUBMISSION, smtpd_accept, err, sizeof err) ||
        loop_listen(conf->listen[LISTEN_POP3], LISTEN_POP3, pop3_accept, err, sizeof err) ||
        loop_listen(conf->listen[LISTEN_IMAP], LISTEN_IMAP, imap_accept, err, sizeof err) ||
        loop_listen(conf->listen[LISTEN_IMAPS], LISTEN_IMAPS, imap_accept, err, sizeof err) ||
        loop_listen(conf->listen[LISTEN_ODMR], LISTEN_ODMR, smtpd_accept, err, sizeof err)) {
        fprintf(stderr, "mailnode: %s\n", err);
        loop_free();
        return EX_UNAVAILABLE;
    }
    if ((rc = drop_privileges())) {
        loop_free();
        return rc;
    }
    if ((rc = daemon_open(&lockfd))) {
        loop_free();
        return rc;
    }
    if (ctl_start()) {
        fprintf(stderr, "mailnode: cannot open the control socket %s (see the log)\n",
                conf->control);
        rc = EX_UNAVAILABLE;
        goto out_loop;
    }
    if (link_watch_start())
        log_warn("link changes are not watched; run `mailnode flush` when the link comes up");
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    loop_set_turn_hook(daemon_turn);
    store_set_busy_hint(smtpd_busy);
    queue_start();
    imap_start();
    if (poll_start()) {
        rc = EX_CONFIG;
        goto out_loop;
    }
    if (loop_listen_start(err, sizeof err)) {
        fprintf(stderr, "mailnode: %s\n", err);
        rc = EX_UNAVAILABLE;
        goto out_loop;
    }
    log_info("mailnode %s started: database %s, %lld queued", MAILNODE_VERSION, conf->database,
             (long long)store_queue_count());
    if (loop_run())
        rc = EX_SOFTWARE;
    log_info("stopping");
    link_watch_stop();
    ctl_stop();
    imap_stop();
    queue_stop();
    store_turn_end();
out_loop:
    loop_free();
    daemon_close(lockfd);
    return rc;
}

/* ---------------------------------------------------------------- queue */

static int print_qinfo(void *arg, const struct store_qinfo *q)
{
    char date[64], *line, *save = NULL, rcpts[sizeof q->rcpts];
    MN_UNUSED(arg);
    util_date(q->received, date, sizeof date);
    printf("%s  %8lld  %s  <%s>\n", q->qid, (long long)q->size, date, q->sender);
    util_strlcpy(rcpts, q->rcpts, sizeof rcpts);
    for (line = strtok_r(rcpts, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        printf("    %s\n", line);
    return 0;
}

static int queue_show(const char *qid)
{
    struct store_qinfo q;
    struct store_reader r;
    int64_t body_id;
    char buf[8192];
    ssize_t n;
    int rc = store_queue_get(qid, &q, &body_id);

    if (rc == STORE_NOTFOUND) {
        fprintf(stderr, "mailnode: no message %s in the queue (see `mailnode queue list`)\n", qid);
        return EX_DATAERR;
    }
    if (rc)
        return EX_SOFTWARE;
    print_qinfo(NULL, &q);
    printf("\n");
    if (store_reader_open(&r, body_id))
        return EX_SOFTWARE;
    while ((n = store_reader_read(&r, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    store_reader_close(&r);
    return n < 0 ? EX_SOFTWARE : EX_OK;
}

int cli_queue(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "list";
    int rc;

    if (wants_help(argc, argv)) {
        printf("usage: mailnode queue [list | count | show ID | delete ID | hold ID | release ID]\n"
               "  list        messages waiting for delivery, with each recipient's state\n"
               "  count       one number: messages not yet delivered\n"
               "  show ID     the envelope and the text of one message\n"
               "  delete ID   remove a message from the queue without a bounce\n"
               "  hold ID     keep a message from being delivered until released\n"
               "  release ID  make a held message due for delivery at once\n");
        return EX_OK;
    }
    int with_id = !strcmp(sub, "show") || !strcmp(sub, "delete") || !strcmp(sub, "hold") ||
                  !strcmp(sub, "release");
    if (with_id ? argc != 3 : argc > 2) {
        fprintf(stderr, "usage: mailnode queue [list | count | show ID | delete ID | hold ID | release ID]\n");
        return EX_USAGE;
    }
    if (!with_id && strcmp(sub, "list") && strcmp(sub, "count")) {
        fprintf(stderr, "mailnode: unknown queue command '%s' (try `mailnode queue --help`)\n", sub);
        return EX_USAGE;
    }
    if ((rc = cli_open_store()))
        return rc;
    if (!strcmp(sub, "list")) {
        rc = store_queue_list(print_qinfo, NULL) ? EX_SOFTWARE : EX_OK;
    } else if (!strcmp(sub, "count")) {
        int64_t n = store_queue_count();
        rc = n < 0 ? EX_SOFTWARE : EX_OK;
        if (n >= 0)
            printf("%lld\n", (long long)n);
    } else if (!strcmp(sub, "show")) {
        rc = queue_show(argv[2]);
    } else {
        int hold = !strcmp(sub, "hold");
        /* The daemon reads the queue from the database at every scan, so a
         * change made here is what the running daemon does next. */
        rc = !strcmp(sub, "delete") ? store_queue_delete(argv[2]) : store_queue_hold(argv[2], hold);
        if (!rc)
            rc = store_commit();
        else
            store_rollback();
        if (rc == STORE_NOTFOUND) {
            fprintf(stderr, "mailnode: no message %s in the queue (see `mailnode queue list`)\n", argv[2]);
            rc = EX_DATAERR;
        } else if (rc) {
            fprintf(stderr, "mailnode: could not %s %s: database error\n", sub, argv[2]);
            rc = EX_TEMPFAIL;
        } else {
            printf("%s %s\n", argv[2], !strcmp(sub, "delete") ? "deleted" : hold ? "held" : "released");
        }
    }
    store_close();
    return rc;
}

/* --------------------------------------------------------------- status */

static int print_dest(void *arg, const struct store_dest *d)
{
    char next[64] = "-", ok[64] = "never";
    MN_UNUSED(arg);
    if (d->next_try)
        util_date(d->next_try, next, sizeof next);
    if (d->last_ok)
        util_date(d->last_ok, ok, sizeof ok);
    int down = d->failures > 0 && d->next_try > util_now();
    printf("  %-30s %s, backlog %lld, next try %s, last success %s%s%s\n", d->name, down ? "down" : "up",
           (long long)d->backlog, next, ok, d->last_error[0] ? ", last error: " : "", d->last_error);
    return 0;
}

int cli_status(int argc, char **argv)
{
    struct store_status st;
    int rc;

    if (wants_help(argc, argv)) {
        printf("usage: mailnode status\nShows the queue, the mailboxes and every destination.\n");
        return EX_OK;
    }
    if (argc > 1) {
        fprintf(stderr, "usage: mailnode status\n");
        return EX_USAGE;
    }
    if ((rc = cli_open_store()))
        return rc;
    if (store_status(&st)) {
        store_close();
        return EX_SOFTWARE;
    }
    printf("database      %s\n", conf->database);
    printf("queued        %lld messages, %lld recipients (%lld held for on-demand relay)\n",
           (long long)st.queued_msgs, (long long)st.queued_rcpts, (long long)st.held_rcpts);
    printf("mailboxes     %lld messages for %lld users\n", (long long)st.mbox_msgs, (long long)st.users);
    printf("destinations\n");
    store_dest_list(print_dest, NULL);
    if (conf->upstream[0]) {
        char text[2048], date[64];
        int64_t when;
        printf("upstream      %s (%s) for %zu domains\n", conf->upstream, conf->upstream_mode,
               conf->n_upstream_domains);
        if (!store_meta_get("upstream.last_ok", text, sizeof text, &when)) {
            util_date(when, date, sizeof date);
            printf("  last successful exchange %s:\n", date);
            for (char *l = strtok(text, "\n"); l; l = strtok(NULL, "\n"))
                printf("    %s\n", l);
        } else {
            printf("  no successful exchange yet\n");
        }
        if (!store_meta_get("upstream.last_fail", text, sizeof text, &when)) {
            util_date(when, date, sizeof date);
            printf("  last failed exchange %s:\n", date);
            for (char *l = strtok(text, "\n"); l; l = strtok(NULL, "\n"))
                printf("    %s\n", l);
        }
    }
    store_close();
    return EX_OK;
}

/* ----------------------------------------------------------------- poll */

static int poll_exit = EX_TEMPFAIL;

static void poll_printed(void *arg, const char *summary, int exitcode)
{
    MN_UNUSED(arg);
    fputs(summary, stdout);
    poll_exit = exitcode;
    loop_stop();
}

/* Asks the running daemon; 1 if there is none to ask. */
static int poll_via_daemon(int *exitcode)
{
    char line[1024];
    int fd = ctl_connect();
    FILE *f;

    if (fd < 0)
        return 1;
    f = fdopen(fd, "r+");
    if (!f) {
        close(fd);
        return 1;
    }
    fputs("POLL\n", f);
    fflush(f);
    *exitcode = EX_TEMPFAIL;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "DONE ", 5)) {
            *exitcode = atoi(line + 5);
            break;
        }
        if (!strncmp(line, "ERR ", 4)) {
            fprintf(stderr, "mailnode: %s", line + 4);
            *exitcode = EX_SOFTWARE;
            break;
        }
        fputs(line, stdout);
    }
    fclose(f);
    return 0;
}

int cli_poll(int argc, char **argv)
{
    int lockfd, rc;

    if (wants_help(argc, argv) || argc > 1) {
        fprintf(argc > 1 && !wants_help(argc, argv) ? stderr : stdout,
                "usage: mailnode poll\n"
                "One exchange with the upstream: send our queued mail (when a relayhost is set),\n"
                "then ask for the mail held for upstream.domains by ETRN or ATRN.\n"
                "Prints what moved.  Exit status: 0 success (also when nothing was held),\n"
                "75 temporary failure, 69 upstream unreachable or refusing, 76 protocol\n"
                "error, 77 authentication failed or ATRN refused, 78 configuration problem\n"
                "(no upstream, unreadable password file).  For cron and ppp/ifup hooks.\n");
        return wants_help(argc, argv) ? EX_OK : EX_USAGE;
    }
    if (!conf->upstream[0]) {
        fprintf(stderr, "mailnode: no upstream is configured (set upstream = host:port in %s)\n",
                conf->path ? conf->path : "the configuration file");
        return EX_CONFIG;
    }
    if (!poll_via_daemon(&rc))
        return rc;
    /* No daemon: do the exchange here, with the same code. */
    if ((rc = daemon_open(&lockfd)))
        return rc;
    rc = EX_OSERR;
    if (loop_init())
        goto out;
    if (!strcasecmp(conf->upstream_mode, "etrn"))
        fprintf(stderr, "mailnode: note: the daemon is not running, so the upstream's connection back "
                        "after ETRN finds no listener; mail stays held there until the next poll\n");
    loop_set_turn_hook(store_turn_end);
    signal(SIGPIPE, SIG_IGN);
    queue_start();
    if (poll_run(poll_printed, NULL) == 0)
        loop_run();
    rc = poll_exit;
    poll_stop();
    queue_stop();
    store_turn_end();
    store_commit();                     /* what the exchange recorded, now */
    loop_free();
out:
    daemon_close(lockfd);
    return rc;
}
