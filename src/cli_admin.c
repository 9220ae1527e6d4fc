/*
 * cli_admin.c: the administration commands `mailnode user`, `mailnode
 * domain` and `mailnode alias`.
 *
 * Each checks its arguments completely before it opens the database, so a
 * typing mistake costs nothing, and each change is one transaction.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <signal.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#define CLI_PW_MAX 256                  /* as auth.c accepts */
/* An alias's target list; the router reads up to 8 KiB, keep well inside. */
#define CLI_ALIAS_TARGETS_MAX 4096

static const char cli_user_usage[] =
    "usage: mailnode user add NAME | del NAME | passwd NAME | quota NAME SIZE | list [--long|--json]\n"
    "  add NAME     create a mailbox user; the password is read from standard input\n"
    "               (one line), or asked for twice when standard input is a terminal\n"
    "  del NAME     delete the user and every message in the mailbox\n"
    "  passwd NAME  set a new password, read like the one of `add`\n"
    "  quota NAME SIZE  limit the mailbox to SIZE octets (suffix K, M or G: 500M, 2G;\n"
    "               0 = no limit; 'default' = follow quota.default); a full mailbox\n"
    "               refuses new mail for a while (SMTP 452 4.2.2, IMAP OVERQUOTA)\n"
    "  list         one user name per line\n"
    "      --long   and messages, octets used, the quota in force (0 = none) and\n"
    "               whether it is the user's own or quota.default, tab separated\n"
    "      --json   the same as a JSON array, for scripts\n"
    "User names are 1 to 64 characters: a-z, 0-9, '.', '_' and '-' (stored lower case).\n";

static const char cli_domain_usage[] =
    "usage: mailnode domain add DOMAIN --local | --hold [--owner USER] [--host HOST:PORT]\n"
    "       mailnode domain mod DOMAIN [--local | --hold] [--owner USER] [--host HOST:PORT]\n"
    "       mailnode domain del DOMAIN | list\n"
    "  add DOMAIN --local   deliver mail for DOMAIN into local mailboxes\n"
    "  add DOMAIN --hold    hold mail for DOMAIN until its site asks (ETRN, ATRN)\n"
    "      --owner USER     the user who may fetch the held mail with ATRN\n"
    "      --host HOST:PORT where ETRN delivers the held mail (default: MX lookup)\n"
    "  mod DOMAIN           change a domain in place: what is given replaces what was;\n"
    "                       --owner - and --host - remove the owner, the host\n"
    "  del DOMAIN           forget the domain (queued mail stays queued)\n"
    "  list                 domain, kind, owner, host; tab separated\n";

static const char cli_alias_usage[] =
    "usage: mailnode alias add NAME TARGET[,TARGET...] | del NAME | list\n"
    "  add NAME TARGETS  mail for NAME goes to TARGETS instead (replaces an existing alias);\n"
    "                    NAME is 'local' (every local domain) or 'local@domain', a TARGET\n"
    "                    is a local user name or an address local@domain\n"
    "  del NAME          remove the alias\n"
    "  list              name and targets, tab separated\n";

/* ------------------------------------------------------------- helpers */

static int cli_admin_help(int argc, char **argv, const char *usage)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return 1;
        }
    return 0;
}

static int cli_admin_usage(const char *usage)
{
    fputs(usage, stderr);
    return EX_USAGE;
}

/* The exit code and message of a store failure. */
static int cli_admin_store_fail(int rc, const char *what)
{
    store_rollback();
    if (rc == STORE_FULL) {
        fprintf(stderr, "mailnode: cannot %s: the disk is full; free some space and try again\n", what);
        return EX_CANTCREAT;
    }
    fprintf(stderr, "mailnode: cannot %s: database error (see the message above); try again\n", what);
    return EX_TEMPFAIL;
}

/* Commits the change; the exit code. */
static int cli_admin_commit(const char *what)
{
    int rc = store_commit();
    return rc ? cli_admin_store_fail(rc, what) : EX_OK;
}

/* A user name: 1..USER_MAX of [a-z0-9._-]; upper case is folded.  On
 * error prints why and returns -1. */
static int cli_admin_user_name(const char *in, char out[USER_MAX + 1])
{
    size_t len = strlen(in);

    if (len < 1 || len > USER_MAX) {
        fprintf(stderr, "mailnode: user name '%s' must be 1 to %d characters long\n", in, USER_MAX);
        return -1;
    }
    for (size_t i = 0; i <= len; i++) {
        char c = in[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c && !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')) {
            fprintf(stderr, "mailnode: user name '%s' may contain only a-z, 0-9, '.', '_' and '-'\n", in);
            return -1;
        }
        out[i] = c;
    }
    return 0;
}

/* RFC 1035 2.3.1 and RFC 5321 4.1.2: labels of letters, digits and
 * hyphens, not starting or ending with a hyphen, at most 63 octets each,
 * 255 in all.  Lower-cases into out; on error prints why, returns -1. */
static int cli_admin_domain_name(const char *in, char out[SMTP_DOMAIN_MAX + 1])
{
    size_t len = strlen(in), label = 0;

    if (len < 1 || len > SMTP_DOMAIN_MAX) {
        fprintf(stderr, "mailnode: domain '%s' must be 1 to %d characters long\n", in, SMTP_DOMAIN_MAX);
        return -1;
    }
    for (size_t i = 0; i <= len; i++) {
        char c = in[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || in[i - 1] == '-') {
                fprintf(stderr, "mailnode: domain '%s': %s\n", in,
                        label == 0 ? "empty label (two dots, or a dot at the start or end)"
                                   : "a label ends with '-'");
                return -1;
            }
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   (c == '-' && label > 0)) {
            if (++label > 63) {
                fprintf(stderr, "mailnode: domain '%s': a label is longer than 63 characters\n", in);
                return -1;
            }
        } else {
            fprintf(stderr, "mailnode: domain '%s': '%c' is not allowed (letters, digits, '-' and"
                    " '.' only; a label cannot start with '-')\n", in, c);
            return -1;
        }
        out[i] = c;
    }
    util_lower(out);
    return 0;
}

/* ------------------------------------------------------------- passwords */

static volatile sig_atomic_t cli_admin_interrupted;

static void cli_admin_on_signal(int sig)
{
    MN_UNUSED(sig);
    cli_admin_interrupted = 1;
}

/* Reads one line of at most CLI_PW_MAX bytes; strips CR/LF.  0, or -1 if
 * nothing could be read, -2 if the line is too long. */
static int cli_admin_read_line(char *buf, size_t size)
{
    size_t len;

    if (!fgets(buf, (int)size, stdin))
        return -1;
    len = strlen(buf);
    if (len && buf[len - 1] != '\n' && !feof(stdin)) {
        int c;
        while ((c = getchar()) != EOF && c != '\n')
            ;
        sodium_memzero(buf, size);
        return -2;
    }
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        buf[--len] = '\0';
    return 0;
}

/* Prompts on the terminal with echo off.  SIGINT restores the echo before
 * the program ends: a terminal left silent is the user's next problem. */
static int cli_admin_prompt(const char *prompt, char *buf, size_t size)
{
    struct termios old, quiet;
    struct sigaction sa, oint, oterm;
    int rc;

    if (tcgetattr(STDIN_FILENO, &old))
        return -1;
    quiet = old;
    quiet.c_lflag &= (tcflag_t)~(ECHO | ECHONL);
    quiet.c_lflag |= ICANON;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cli_admin_on_signal;           /* no SA_RESTART: fgets returns */
    sigaction(SIGINT, &sa, &oint);
    sigaction(SIGTERM, &sa, &oterm);
    fputs(prompt, stderr);
    fflush(stderr);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    rc = cli_admin_read_line(buf, size);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
    sigaction(SIGINT, &oint, NULL);
    sigaction(SIGTERM, &oterm, NULL);
    fputc('\n', stderr);
    if (cli_admin_interrupted)
        rc = -3;
    return rc;
}

/* The new password: one line from stdin, or asked twice on a terminal.
 * 0, or an exit code after saying what is wrong. */
static int cli_admin_get_password(const char *user, char *pw, size_t size)
{
    char again[CLI_PW_MAX + 2], prompt[128];
    int tty = isatty(STDIN_FILENO), rc;

    if (tty) {
        snprintf(prompt, sizeof prompt, "New password for %s: ", user);
        rc = cli_admin_prompt(prompt, pw, size);
        if (rc == 0) {
            rc = cli_admin_prompt("Repeat the password: ", again, sizeof again);
            if (rc == 0 && strcmp(pw, again)) {
                fprintf(stderr, "mailnode: the passwords differ; nothing changed\n");
                rc = -4;
            }
            sodium_memzero(again, sizeof again);
        }
    } else {
        rc = cli_admin_read_line(pw, size);
    }
    if (rc == 0 && !pw[0]) {
        fprintf(stderr, "mailnode: the password is empty; nothing changed\n");
        return EX_DATAERR;
    }
    if (rc == -1)
        fprintf(stderr, "mailnode: no password on standard input (give it as one line)\n");
    else if (rc == -2)
        fprintf(stderr, "mailnode: the password is longer than %d bytes\n", CLI_PW_MAX);
    else if (rc == -3)
        fprintf(stderr, "mailnode: interrupted; nothing changed\n");
    return rc ? EX_DATAERR : 0;
}

/* Reads the password and fills u->pwhash and u->cram. */
static int cli_admin_new_password(struct store_user *u)
{
    char pw[CLI_PW_MAX + 2];
    int rc = cli_admin_get_password(u->name, pw, sizeof pw);

    if (rc)
        return rc;
    if (strpbrk(pw, "\r\n")) {
        /* Unreachable from a line read, kept for the rule's sake. */
        sodium_memzero(pw, sizeof pw);
        return EX_DATAERR;
    }
    rc = auth_set_password(u, pw) ? EX_SOFTWARE : 0;
    sodium_memzero(pw, sizeof pw);
    if (rc)
        fprintf(stderr, "mailnode: could not hash the password (see the message above)\n");
    return rc;
}

/* ----------------------------------------------------------------- users */

/* Postmaster mail kept while the node had no admin goes to the admin. */
static void cli_admin_adopt(void)
{
    struct store_user a;
    int rc = queue_admin_adopt();

    if (rc == 1 && !store_commit() && !queue_admin(&a)) {
        printf("mail held for the postmaster moved to %s's mailbox\n", a.name);
        sodium_memzero(&a, sizeof a);
    } else if (rc) {
        store_rollback();
    }
}

static int cli_user_add(const char *name)
{
    struct store_user u;
    int rc;

    memset(&u, 0, sizeof u);
    util_strlcpy(u.name, name, sizeof u.name);
    rc = store_user_get(name, &u);
    if (rc == 0 && !u.pwhash[0]) {
        /* The mailbox that held postmaster mail gets a password: it is an
         * ordinary user from now on, with the mail kept so far. */
        if ((rc = cli_admin_new_password(&u)))
            return rc;
        rc = store_user_update(&u);
        sodium_memzero(&u, sizeof u);
        if (rc)
            return cli_admin_store_fail(rc, "add the user");
        if ((rc = cli_admin_commit("add the user")))
            return rc;
        printf("user %s added (with the mail held for the postmaster so far)\n", name);
        return EX_OK;
    }
    if (rc == 0) {
        fprintf(stderr, "mailnode: user %s already exists (use `mailnode user passwd %s` to change"
                " the password)\n", name, name);
        return EX_DATAERR;
    }
    if (rc != STORE_NOTFOUND)
        return cli_admin_store_fail(rc, "read the user table");
    util_strlcpy(u.name, name, sizeof u.name);
    if ((rc = cli_admin_new_password(&u)))
        return rc;
    rc = store_user_add(&u);
    sodium_memzero(&u, sizeof u);
    if (rc == STORE_EXISTS) {
        store_rollback();
        fprintf(stderr, "mailnode: user %s was just created by someone else\n", name);
        return EX_DATAERR;
    }
    if (rc)
        return cli_admin_store_fail(rc, "add the user");
    if ((rc = cli_admin_commit("add the user")))
        return rc;
    printf("user %s added\n", name);
    cli_admin_adopt();
    return EX_OK;
}

static int cli_user_passwd(const char *name)
{
    struct store_user u;
    int rc = store_user_get(name, &u);

    if (rc == STORE_NOTFOUND) {
        fprintf(stderr, "mailnode: no user %s (see `mailnode user list`)\n", name);
        return EX_NOUSER;
    }
    if (rc)
        return cli_admin_store_fail(rc, "read the user table");
    if ((rc = cli_admin_new_password(&u)))
        return rc;
    rc = store_user_update(&u);
    sodium_memzero(&u, sizeof u);
    if (rc == STORE_NOTFOUND) {
        store_rollback();
        fprintf(stderr, "mailnode: user %s was deleted meanwhile\n", name);
        return EX_NOUSER;
    }
    if (rc)
        return cli_admin_store_fail(rc, "change the password");
    if ((rc = cli_admin_commit("change the password")))
        return rc;
    printf("password of %s changed\n", name);
    return EX_OK;
}

/* Warns about aliases that still name a deleted user: their mail would
 * bounce from now on. */
static int cli_user_alias_check(void *arg, const char *name, const char *targets)
{
    const char *user = arg;
    size_t ul = strlen(user);

    for (const char *p = targets; *p;) {
        size_t n = strcspn(p, ", \t");
        if (n == ul && !strncmp(p, user, n))
            fprintf(stderr, "mailnode: note: alias %s still names %s (`mailnode alias add %s ...`"
                    " to change it)\n", name, user, name);
        p += n;
        p += strspn(p, ", \t");
    }
    return 0;
}

static int cli_user_del(const char *name)
{
    int rc = store_user_del(name);

    if (rc == STORE_NOTFOUND) {
        store_rollback();
        fprintf(stderr, "mailnode: no user %s (see `mailnode user list`)\n", name);
        return EX_NOUSER;
    }
    if (rc)
        return cli_admin_store_fail(rc, "delete the user");
    if ((rc = cli_admin_commit("delete the user")))
        return rc;
    printf("user %s deleted with the mailbox\n", name);
    store_alias_list(cli_user_alias_check, (void *)name);
    return EX_OK;
}

static int cli_user_quota(const char *name, const char *size)
{
    int64_t q = -1;
    int rc;

    if (strcmp(size, "default") && util_parse_size(size, &q)) {
        fprintf(stderr, "mailnode: quota '%s' is not a size (examples: 500M, 2G, 0 for none, default)\n", size);
        return EX_USAGE;
    }
    rc = store_user_set_quota(name, q);
    if (rc == STORE_NOTFOUND) {
        store_rollback();
        fprintf(stderr, "mailnode: no user %s (see `mailnode user list`)\n", name);
        return EX_NOUSER;
    }
    if (rc)
        return cli_admin_store_fail(rc, "set the quota");
    if ((rc = cli_admin_commit("set the quota")))
        return rc;
    if (q < 0)
        printf("user %s follows quota.default\n", name);
    else if (!q)
        printf("user %s has no quota\n", name);
    else
        printf("user %s: quota %lld octets\n", name, (long long)q);
    return EX_OK;
}

enum { LIST_NAMES, LIST_LONG, LIST_JSON };

struct cli_user_listing {
    int mode;
    int n;                              /* users printed so far */
};

static int cli_user_print(void *arg, const struct store_user *u)
{
    struct cli_user_listing *l = arg;

    if (l->mode == LIST_NAMES)
        printf("%s%s\n", u->name, u->pwhash[0] ? "" : "  (holds postmaster mail until there is an admin; no login)");
    else if (l->mode == LIST_LONG)
        printf("%s\t%lld\t%lld\t%lld\t%s\n", u->name, (long long)u->msgs, (long long)u->bytes,
               (long long)quota_limit(u->quota), u->quota < 0 ? "default" : "own");
    else    /* user names are [a-z0-9._-]: nothing to escape */
        printf("%s{\"name\":\"%s\",\"login\":%s,\"messages\":%lld,\"bytes\":%lld,\"quota\":%lld,"
               "\"quota_from\":\"%s\"}", l->n ? "," : "", u->name, u->pwhash[0] ? "true" : "false",
               (long long)u->msgs, (long long)u->bytes, (long long)quota_limit(u->quota),
               u->quota < 0 ? "default" : "own");
    l->n++;
    return 0;
}

/* `user list [--long|--json]`: names only by default, as scripts read it. */
static int cli_user_list(const char *opt)
{
    struct cli_user_listing l = { !opt ? LIST_NAMES : !strcmp(opt, "--long") ? LIST_LONG : LIST_JSON, 0 };

    if (l.mode == LIST_JSON)
        printf("[");
    if (store_user_list(cli_user_print, &l))
        return cli_admin_store_fail(STORE_ERR, "list users");
    if (l.mode == LIST_JSON)
        printf("]\n");
    return EX_OK;
}

int cli_user(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    char name[USER_MAX + 1];
    int rc;

    if (cli_admin_help(argc, argv, cli_user_usage))
        return EX_OK;
    if (!strcmp(sub, "list") ? argc > 3 || (argc == 3 && strcmp(argv[2], "--long") && strcmp(argv[2], "--json")) :
        !strcmp(sub, "quota") ? argc != 4 :
        (strcmp(sub, "add") && strcmp(sub, "del") && strcmp(sub, "passwd")) || argc != 3)
        return cli_admin_usage(cli_user_usage);
    if (strcmp(sub, "list") && cli_admin_user_name(argv[2], name))
        return EX_DATAERR;
    if ((rc = strcmp(sub, "list") && strcmp(sub, "del") ? cli_open_store() : cli_open_store_ro()))
        return rc;
    if (!strcmp(sub, "add"))
        rc = cli_user_add(name);
    else if (!strcmp(sub, "del"))
        rc = cli_user_del(name);
    else if (!strcmp(sub, "passwd"))
        rc = cli_user_passwd(name);
    else if (!strcmp(sub, "quota"))
        rc = cli_user_quota(name, argv[3]);
    else
        rc = cli_user_list(argc == 3 ? argv[2] : NULL);
    store_close();
    return rc;
}

/* --------------------------------------------------------------- domains */

/* Parses the options of `domain add` after DOMAIN into d.  0, or an exit
 * code after saying what is wrong. */
static int cli_domain_options(int argc, char **argv, struct store_domain *d)
{
    for (int i = 3; i < argc; i++) {
        const char *opt = argv[i];
        if (!strcmp(opt, "--local") || !strcmp(opt, "--hold")) {
            int kind = opt[2] == 'l' ? DOMAIN_LOCAL : DOMAIN_HOLD;
            if (d->kind && d->kind != kind) {
                fprintf(stderr, "mailnode: a domain is either --local or --hold, not both\n");
                return EX_USAGE;
            }
            d->kind = kind;
        } else if ((!strcmp(opt, "--owner") || !strcmp(opt, "--host")) && i + 1 < argc) {
            const char *val = argv[++i];
            if (opt[3] == 'w') {
                if (cli_admin_user_name(val, d->owner))
                    return EX_DATAERR;
            } else if (util_strlcpy(d->host, val, sizeof d->host) >= sizeof d->host) {
                fprintf(stderr, "mailnode: --host %s is too long\n", val);
                return EX_DATAERR;
            }
        } else {
            fprintf(stderr, "mailnode: domain add: unexpected '%s'\n", opt);
            return cli_admin_usage(cli_domain_usage);
        }
    }
    if (!d->kind) {
        fprintf(stderr, "mailnode: domain add: say --local or --hold\n");
        return cli_admin_usage(cli_domain_usage);
    }
    if (d->kind == DOMAIN_LOCAL && (d->owner[0] || d->host[0])) {
        fprintf(stderr, "mailnode: --owner and --host apply to --hold domains only\n");
        return EX_USAGE;
    }
    return 0;
}

/* --host HOST:PORT, where HOST is a domain name or an IP address. */
/* --owner names a user that exists: 0, or the exit status (said why). */
static int cli_domain_owner_check(const struct store_domain *d)
{
    struct store_user u;
    int rc;

    if (!d->owner[0])
        return 0;
    rc = store_user_get(d->owner, &u);
    sodium_memzero(&u, sizeof u);       /* it holds the password hash */
    if (!rc)
        return 0;
    if (rc == STORE_NOTFOUND) {
        fprintf(stderr, "mailnode: --owner %s: no such user (create it first with"
                " `mailnode user add %s`)\n", d->owner, d->owner);
        return EX_NOUSER;
    }
    return cli_admin_store_fail(rc, "read the user table");
}

static int cli_domain_check_host(const char *spec)
{
    char host[SMTP_DOMAIN_MAX + 1], lower[SMTP_DOMAIN_MAX + 1];
    struct in6_addr ip;
    int port;

    if (util_split_hostport(spec, host, sizeof host, &port) || !host[0] || port < 1) {
        fprintf(stderr, "mailnode: --host %s: write HOST:PORT, for example mail.example.org:25\n", spec);
        return EX_DATAERR;
    }
    if (inet_pton(AF_INET, host, &ip) == 1 || inet_pton(AF_INET6, host, &ip) == 1)
        return 0;
    return cli_admin_domain_name(host, lower) ? EX_DATAERR : 0;
}

static int cli_domain_add(int argc, char **argv, const char *name)
{
    struct store_domain d;
    int rc;

    memset(&d, 0, sizeof d);
    util_strlcpy(d.name, name, sizeof d.name);
    if ((rc = cli_domain_options(argc, argv, &d)))
        return rc;
    if (d.host[0] && (rc = cli_domain_check_host(d.host)))
        return rc;
    if ((rc = cli_open_store()))
        return rc;
    if ((rc = cli_domain_owner_check(&d)))
        goto out;
    rc = store_domain_add(&d);
    if (rc == STORE_EXISTS) {
        store_rollback();
        fprintf(stderr, "mailnode: domain %s exists already (`mailnode domain mod %s` changes it)\n",
                d.name, d.name);
        rc = EX_DATAERR;
    } else if (rc) {
        rc = cli_admin_store_fail(rc, "add the domain");
    } else if (!(rc = cli_admin_commit("add the domain"))) {
        printf("domain %s added (%s)\n", d.name, d.kind == DOMAIN_LOCAL ? "local" : "hold");
        if (d.kind == DOMAIN_HOLD && conf_is_local_domain(d.name))
            fprintf(stderr, "mailnode: note: %s is also in local_domains of the configuration,"
                    " which delivers it locally\n", d.name);
    }
out:
    store_close();
    return rc;
}

/* Options of `domain mod` over the domain's row d: each one given
 * replaces its field ("-" or "" clears owner and host). */
static int cli_domain_mod_options(int argc, char **argv, struct store_domain *d)
{
    for (int i = 3; i < argc; i++) {
        const char *opt = argv[i];
        if (!strcmp(opt, "--local") || !strcmp(opt, "--hold")) {
            d->kind = opt[2] == 'l' ? DOMAIN_LOCAL : DOMAIN_HOLD;
        } else if ((!strcmp(opt, "--owner") || !strcmp(opt, "--host")) && i + 1 < argc) {
            const char *val = argv[++i];
            int clear = !val[0] || !strcmp(val, "-");
            if (opt[3] == 'w') {
                d->owner[0] = '\0';
                if (!clear && cli_admin_user_name(val, d->owner))
                    return EX_DATAERR;
            } else {
                d->host[0] = '\0';
                if (clear)
                    continue;
                if (util_strlcpy(d->host, val, sizeof d->host) >= sizeof d->host) {
                    fprintf(stderr, "mailnode: --host %s is too long\n", val);
                    return EX_DATAERR;
                }
                if (cli_domain_check_host(d->host))
                    return EX_DATAERR;
            }
        } else {
            fprintf(stderr, "mailnode: domain mod: unexpected '%s'\n", opt);
            return cli_admin_usage(cli_domain_usage);
        }
    }
    if (d->kind == DOMAIN_LOCAL && (d->owner[0] || d->host[0])) {
        fprintf(stderr, "mailnode: domain %s: --owner and --host apply to --hold domains only"
                " (remove them with --owner - --host -)\n", d->name);
        return EX_USAGE;
    }
    return 0;
}

static int cli_domain_mod(int argc, char **argv, const char *name)
{
    struct store_domain d;
    int rc;

    if (argc < 4) {
        fprintf(stderr, "mailnode: domain mod %s: nothing to change\n", name);
        return cli_admin_usage(cli_domain_usage);
    }
    if ((rc = cli_open_store_ro()))
        return rc;
    rc = store_domain_get(name, &d);
    if (rc == STORE_NOTFOUND) {
        fprintf(stderr, "mailnode: no domain %s (see `mailnode domain list`; `domain add` makes one)\n",
                name);
        rc = EX_DATAERR;
        goto out;
    }
    if (rc) {
        rc = cli_admin_store_fail(rc, "read the domain");
        goto out;
    }
    if ((rc = cli_domain_mod_options(argc, argv, &d)))
        goto out;
    if ((rc = cli_domain_owner_check(&d)))
        goto out;
    rc = store_domain_mod(&d);
    if (rc == STORE_NOTFOUND) {
        store_rollback();
        fprintf(stderr, "mailnode: no domain %s (deleted meanwhile?)\n", name);
        rc = EX_DATAERR;
    } else if (rc) {
        rc = cli_admin_store_fail(rc, "change the domain");
    } else if (!(rc = cli_admin_commit("change the domain"))) {
        printf("domain %s changed: %s, owner %s, host %s\n", d.name, d.kind == DOMAIN_LOCAL ? "local" : "hold",
               d.owner[0] ? d.owner : "-", d.host[0] ? d.host : "-");
    }
out:
    store_close();
    return rc;
}

static int cli_domain_del(const char *name)
{
    int rc;

    if ((rc = cli_open_store_ro()))
        return rc;
    rc = store_domain_del(name);
    if (rc == STORE_NOTFOUND) {
        store_rollback();
        fprintf(stderr, "mailnode: no domain %s (see `mailnode domain list`)\n", name);
        rc = EX_DATAERR;
    } else if (rc) {
        rc = cli_admin_store_fail(rc, "delete the domain");
    } else if (!(rc = cli_admin_commit("delete the domain"))) {
        printf("domain %s deleted\n", name);
        if (conf_is_local_domain(name))
            fprintf(stderr, "mailnode: note: %s stays local through local_domains in the"
                    " configuration\n", name);
    }
    store_close();
    return rc;
}

static int cli_domain_print(void *arg, const struct store_domain *d)
{
    MN_UNUSED(arg);
    printf("%s\t%s\t%s\t%s\n", d->name, d->kind == DOMAIN_LOCAL ? "local" : d->kind == DOMAIN_HOLD ? "hold" : "?",
           d->owner[0] ? d->owner : "-", d->host[0] ? d->host : "-");
    return 0;
}

int cli_domain(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    char name[SMTP_DOMAIN_MAX + 1];
    int rc;

    if (cli_admin_help(argc, argv, cli_domain_usage))
        return EX_OK;
    if (!strcmp(sub, "list")) {
        if (argc != 2)
            return cli_admin_usage(cli_domain_usage);
        if ((rc = cli_open_store_ro()))
            return rc;
        rc = store_domain_list(cli_domain_print, NULL) ? cli_admin_store_fail(STORE_ERR, "list domains") : EX_OK;
        store_close();
        return rc;
    }
    if (!strcmp(sub, "add") ? argc < 4 : !strcmp(sub, "mod") ? argc < 3 : strcmp(sub, "del") || argc != 3)
        return cli_admin_usage(cli_domain_usage);
    if (cli_admin_domain_name(argv[2], name))
        return EX_DATAERR;
    if (!strcmp(sub, "add"))
        return cli_domain_add(argc, argv, name);
    if (!strcmp(sub, "mod"))
        return cli_domain_mod(argc, argv, name);
    return cli_domain_del(name);
}

/* --------------------------------------------------------------- aliases */

/* An alias name: "local" (any local domain) or "local@domain", lower case. */
static int cli_alias_name(const char *in, char *out, size_t size)
{
    struct addr a;
    size_t len = strlen(in);

    if (strchr(in, '@')) {
        if (addr_parse_mailbox(in, &a) || a.ip_literal) {
            fprintf(stderr, "mailnode: alias name '%s' is not an address local@domain\n", in);
            return -1;
        }
        util_strlcpy(out, a.full, size);
    } else {
        if (len < 1 || len > SMTP_LOCAL_MAX) {
            fprintf(stderr, "mailnode: alias name '%s' must be 1 to %d characters long\n", in, SMTP_LOCAL_MAX);
            return -1;
        }
        for (size_t i = 0; i < len; i++)
            if (!addr_is_atext((unsigned char)in[i]) && in[i] != '.') {
                fprintf(stderr, "mailnode: alias name '%s': '%c' is not allowed in a local part\n",
                        in, in[i]);
                return -1;
            }
        util_strlcpy(out, in, size);
    }
    util_lower(out);
    return 0;
}

/* Appends one checked target to the list in out (comma separated). */
static int cli_alias_target(const char *t, char *out, size_t size)
{
    char norm[ADDR_MAX];
    struct addr a;
    size_t used = strlen(out);

    if (strchr(t, '@')) {
        if (addr_parse_mailbox(t, &a)) {
            fprintf(stderr, "mailnode: alias target '%s' is not an address local@domain\n", t);
            return -1;
        }
        util_strlcpy(norm, a.full, sizeof norm);
    } else if (cli_admin_user_name(t, norm)) {
        fprintf(stderr, "mailnode: alias target '%s' is neither a user name nor an address\n", t);
        return -1;
    }
    if (used + strlen(norm) + 2 > size) {
        fprintf(stderr, "mailnode: the target list is longer than %zu bytes; split it over"
                " several aliases\n", size - 1);
        return -1;
    }
    snprintf(out + used, size - used, "%s%s", used ? "," : "", norm);
    return 0;
}

/* Splits TARGET[,TARGET...] (spaces after commas are fine) and checks each. */
static int cli_alias_targets(const char *in, char *out, size_t size)
{
    char buf[CLI_ALIAS_TARGETS_MAX], *items[512];
    size_t n;

    out[0] = '\0';
    if (util_strlcpy(buf, in, sizeof buf) >= sizeof buf) {
        fprintf(stderr, "mailnode: the target list is longer than %zu bytes\n", sizeof buf - 1);
        return -1;
    }
    n = util_split_list(buf, items, MN_NELEM(items));
    if (n == 0) {
        fprintf(stderr, "mailnode: the alias needs at least one target\n");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (cli_alias_target(items[i], out, size))
            return -1;
    return 0;
}

/* A bare target with no such user or alias is allowed (it may be created
 * next) but said, since until then its mail bounces. */
static void cli_alias_note_unknown(const char *targets)
{
    char buf[CLI_ALIAS_TARGETS_MAX], *items[512], dummy[8];
    struct store_user u;
    size_t n;

    util_strlcpy(buf, targets, sizeof buf);
    n = util_split_list(buf, items, MN_NELEM(items));
    for (size_t i = 0; i < n; i++) {
        if (strchr(items[i], '@') || store_user_get(items[i], &u) == 0)
            continue;
        if (store_alias_get(items[i], dummy, sizeof dummy) != STORE_NOTFOUND)
            continue;
        fprintf(stderr, "mailnode: note: no user or alias %s yet; its mail bounces until one exists\n",
                items[i]);
    }
    sodium_memzero(&u, sizeof u);
}

/* The targets may come as one argument or several ("a, b" unquoted). */
static int cli_alias_add(const char *name, int argc, char **argv)
{
    char list[CLI_ALIAS_TARGETS_MAX] = "", targets[CLI_ALIAS_TARGETS_MAX];
    size_t used = 0;
    int rc;

    for (int i = 3; i < argc; i++) {
        int w = snprintf(list + used, sizeof list - used, "%s%s", used ? "," : "", argv[i]);
        if (w < 0 || (size_t)w >= sizeof list - used) {
            fprintf(stderr, "mailnode: the target list is longer than %zu bytes\n", sizeof list - 1);
            return EX_DATAERR;
        }
        used += (size_t)w;
    }
    if (cli_alias_targets(list, targets, sizeof targets))
        return EX_DATAERR;
    if ((rc = cli_open_store()))
        return rc;
    rc = store_alias_set(name, targets);
    if (rc) {
        rc = cli_admin_store_fail(rc, "set the alias");
    } else if (!(rc = cli_admin_commit("set the alias"))) {
        printf("alias %s -> %s\n", name, targets);
        cli_alias_note_unknown(targets);
    }
    store_close();
    return rc;
}

static int cli_alias_del(const char *name)
{
    int rc;

    if ((rc = cli_open_store_ro()))
        return rc;
    rc = store_alias_del(name);
    if (rc == STORE_NOTFOUND) {
        store_rollback();
        fprintf(stderr, "mailnode: no alias %s (see `mailnode alias list`)\n", name);
        rc = EX_DATAERR;
    } else if (rc) {
        rc = cli_admin_store_fail(rc, "delete the alias");
    } else if (!(rc = cli_admin_commit("delete the alias"))) {
        printf("alias %s deleted\n", name);
    }
    store_close();
    return rc;
}

static int cli_alias_print(void *arg, const char *name, const char *targets)
{
    MN_UNUSED(arg);
    printf("%s\t%s\n", name, targets);
    return 0;
}

int cli_alias(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    char name[ADDR_MAX];
    int rc;

    if (cli_admin_help(argc, argv, cli_alias_usage))
        return EX_OK;
    if (!strcmp(sub, "list")) {
        if (argc != 2)
            return cli_admin_usage(cli_alias_usage);
        if ((rc = cli_open_store_ro()))
            return rc;
        rc = store_alias_list(cli_alias_print, NULL) ? cli_admin_store_fail(STORE_ERR, "list aliases") : EX_OK;
        store_close();
        return rc;
    }
    if (!strcmp(sub, "add") ? argc < 4 : strcmp(sub, "del") || argc != 3)
        return cli_admin_usage(cli_alias_usage);
    if (cli_alias_name(argv[2], name, sizeof name))
        return EX_DATAERR;
    if (!strcmp(sub, "add"))
        return cli_alias_add(name, argc, argv);
    return cli_alias_del(name);
}
