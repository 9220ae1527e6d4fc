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
    log_set_level(conf->log_level);
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

/* `user = NAME`: a daemon started as root gives root up once its ports
 * are bound.  A daemon started as anyone else cannot and need not. */
static int drop_privileges(void)
{
    struct passwd *pw;

    if (!conf->run_user[0])
        return 0;
    if (geteuid() != 0) {
        struct passwd *me = util_getpwuid(geteuid());
        if (me && !strcmp(me->pw_name, conf->run_user))
            return 0;
        fprintf(stderr, "mailnode: user = %s needs the daemon started as root\n", conf->run_user);
        return EX_NOPERM;
    }
    pw = util_getpwnam(conf->run_user);
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

/* The daemon's hold on its database: the store and the node key, under
 * the lock taken before.  0, or a sysexits code after saying what went
 * wrong. */
static int daemon_open_store(void)
{
    char err[512];

    if (store_open(conf->database, STORE_DAEMON, err, sizeof err)) {
        char why[1024];
        int rc = cli_db_diagnose(conf->database, why, sizeof why);
        fprintf(stderr, "mailnode: %s%s%s\n", err, rc ? ": " : "", rc ? why : "");
        return rc ? rc : EX_CANTCREAT;
    }
    if (auth_init(conf->keyfile)) {
        fprintf(stderr, "mailnode: cannot use the node key %s\n", conf->keyfile);
        store_close();
        return EX_CANTCREAT;
    }
    return 0;
}

/* The lock, then the store: 0 or a sysexits code. */
static int daemon_open(int *lockfd)
{
    int rc;

    log_init("mailnode", conf->use_syslog);
    *lockfd = cli_db_lock();
    if (*lockfd < 0)
        return -*lockfd;
    if ((rc = daemon_open_store()))
        close(*lockfd);
    return rc;
}

/* RFC 5321 4.5.1: a node must take postmaster mail.  It always does (into
 * a holding mailbox if need be); say so while nobody reads it. */
static void daemon_check_admin(void)
{
    struct store_user u;
    int rc = queue_admin_adopt();

    if (rc == 1 && !store_commit() && !queue_admin(&u))
        log_info("mail held for the postmaster moved to %s's mailbox", u.name);
    else if (rc < 0)
        store_rollback();
    rc = queue_admin(&u);
    sodium_memzero(&u, sizeof u);
    if (rc == STORE_NOTFOUND && conf->admin[0])
        log_warn("admin = %s: no such user; postmaster, root and abuse mail is kept in the "
                 "mailbox '%s' until it exists (mailnode user add %s)", conf->admin, QUEUE_HOLDING_BOX,
                 conf->admin);
    else if (rc == STORE_NOTFOUND)
        log_warn("no user yet: postmaster, root and abuse mail is kept in the mailbox '%s' until "
                 "the first user is created (or set admin = USER)", QUEUE_HOLDING_BOX);
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
    /* The lock first: a second daemon on the same database says so rather
     * than failing to bind.  Then listeners: privileged ports are bound
     * while still root; then the daemon becomes `user`, and everything it
     * creates (database, key, control socket) belongs to that user. */
    log_init("mailnode", conf->use_syslog);
    lockfd = cli_db_lock();
    if (lockfd < 0)
        return -lockfd;
    if (loop_init()) {
        fprintf(stderr, "mailnode: epoll: %s\n", strerror(errno));
        close(lockfd);
        return EX_OSERR;
    }
    if (tls_init()) {
        /* The certificate is configuration: say which line names it. */
        const char *e = tls_io_error();
        char where[4200];
        conf_where(conf, strncmp(e, "tls.key", 7) ? "tls.cert" : "tls.key", where, sizeof where);
        fprintf(stderr, "mailnode: configuration: %s: %s\n", where, e);
        loop_free();
        close(lockfd);
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
        close(lockfd);
        return EX_UNAVAILABLE;
    }
    cli_db_chown();
    if ((rc = drop_privileges()) || (rc = daemon_open_store())) {
        loop_free();
        close(lockfd);
        return rc;
    }
    cli_db_lock_note(lockfd);
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
    daemon_check_admin();
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

/* --------------------------------------------------------------- config */

static int config_domain(void *arg, const struct store_domain *d)
{
    MN_UNUSED(arg);
    if (d->kind == DOMAIN_LOCAL)
        printf("#   %s  local\n", d->name);
    else
        printf("#   %s  held for %s%s%s\n", d->name, d->owner[0] ? d->owner : "(no owner)",
               d->host[0] ? ", released to " : "", d->host);
    return 0;
}

int cli_config(int argc, char **argv)
{
    int only_set = argc == 2 && !strcmp(argv[1], "-n");

    if (wants_help(argc, argv) || (argc > 1 && !only_set)) {
        fprintf(wants_help(argc, argv) ? stdout : stderr,
                "usage: mailnode config [-n]\n"
                "Prints the configuration in effect, every key as `key = value`, after\n"
                "checking it; keys the file does not set are marked `# default` (or\n"
                "`# derived`), domains added with `mailnode domain add` follow as comments.\n"
                "  -n   only the keys the file sets (as `postconf -n`)\n");
        return wants_help(argc, argv) ? EX_OK : EX_USAGE;
    }
    printf("# %s%s\n", conf->path ? "configuration file " : "no configuration file: ",
           conf->path ? conf->path : "the embedded defaults");
    conf_print(conf, stdout, only_set);
    if (only_set || access(conf->database, F_OK))
        return EX_OK;
    if (cli_open_store_ro())
        return EX_OK;                   /* said why; the file's part was shown */
    printf("# domains in the database (mailnode domain list):\n");
    store_domain_list(config_domain, NULL);
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
