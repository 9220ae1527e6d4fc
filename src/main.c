/*
 * main.c: the command line.  `mailnode [-c FILE] COMMAND ...`, or the
 * sendmail interface when the binary is called as `sendmail`.
 */
#include "internal.h"

#include <string.h>
#include <unistd.h>

#define DEFAULT_CONF "/etc/mailnode.conf"

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *help;
} cli_commands[] = {
    { "run", cli_run, "serve SMTP, submission, POP3 and ODMR, deliver queued mail" },
    { "sendmail", cli_sendmail, "queue a message from standard input (sendmail -t -f -i)" },
    { "queue", cli_queue, "list | count | show ID... | delete ID... | hold ID... | release ID..." },
    { "user", cli_user, "add | del | passwd | list: mailbox users" },
    { "domain", cli_domain, "add | del | list: local and hold domains" },
    { "alias", cli_alias, "add | del | list: aliases" },
    { "mailbox", cli_mailbox, "list USER | export USER: mailbox contents" },
    { "poll", cli_poll, "one upstream exchange: send queued mail, then ETRN/ATRN" },
    { "status", cli_status, "queue, mailboxes and destinations" },
    { "flush", cli_flush, "deliver now: reset retry timers (--wait: until done)" },
    { "backup", cli_backup, "FILE: consistent copy of the database and node key, daemon running" },
    { "restore", cli_restore, "FILE: put a backup back (daemon stopped)" },
    { "config", cli_config, "the configuration in effect, checked (-n: only what the file sets)" },
    { "tls", cli_tls, "selfsigned: a key and self-signed certificate for a node without a CA" },
    { "key", cli_key, "show: this node's public bundle key" },
    { "peer", cli_peer, "add | list | del: nodes that bundles are exchanged with" },
    { "bundle", cli_bundle, "export | import: signed, encrypted mail bundles (no link needed)" },
};

static void usage(FILE *f)
{
    fprintf(f, "mailnode %s: offline-first store-and-forward mail node\n\n"
               "usage: mailnode [-c FILE] COMMAND [ARGS...]\n\n"
               "options:\n"
               "  -c FILE      configuration file (also $MAILNODE_CONF; default %s if it\n"
               "               exists, else the embedded defaults)\n"
               "  -h, --help   this text; `mailnode COMMAND --help` for a command\n"
               "  --version    the version\n\ncommands:\n",
            MAILNODE_VERSION, DEFAULT_CONF);
    for (size_t i = 0; i < MN_NELEM(cli_commands); i++)
        fprintf(f, "  %-10s %s\n", cli_commands[i].name, cli_commands[i].help);
    fprintf(f, "\nExit codes follow sysexits(3). See mailnode(8) and mailnode.conf(5).\n");
}

static int load_conf(const char *path)
{
    char err[1024];

    if (!path)
        path = getenv("MAILNODE_CONF");
    if (!path && access(DEFAULT_CONF, F_OK) == 0)
        path = DEFAULT_CONF;
    conf = calloc(1, sizeof *conf);
    if (!conf)
        return EX_OSERR;
    if (conf_load(path && *path ? path : NULL, conf, err, sizeof err)) {
        fprintf(stderr, "mailnode: configuration: %s\n", err);
        return EX_CONFIG;
    }
    log_set_level(conf->log_level);
    return 0;
}

int mailnode_main(int argc, char **argv)
{
    const char *base = strrchr(argv[0], '/');
    const char *confpath = NULL;
    int rc, i = 1;

    base = base ? base + 1 : argv[0];
    if (sodium_init() < 0) {
        fprintf(stderr, "mailnode: libsodium failed to initialise\n");
        return EX_SOFTWARE;
    }
    log_init("mailnode", 0);
    /* Called as mailq(1) or newaliases(1), the sendmail package's links. */
    if (!strcmp(base, "mailq") || !strcmp(base, "newaliases")) {
        if ((rc = load_conf(NULL)))
            return rc;
        rc = cli_sendmail_mode(base[0] == 'm' ? 'p' : 'i');
        goto out;
    }
    /* Called as sendmail(8): the whole command line is sendmail's. */
    if (!strcmp(base, "sendmail")) {
        if ((rc = load_conf(NULL)))
            return rc;
        rc = cli_sendmail(argc, argv);
        goto out;
    }
    while (i < argc && argv[i][0] == '-') {
        if (!strcmp(argv[i], "-c") && i + 1 < argc) {
            confpath = argv[i + 1];
            i += 2;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return EX_OK;
        } else if (!strcmp(argv[i], "--version")) {
            printf("mailnode %s (SQLite %s, libsodium %s, zlib %s, c-ares %s)\n", MAILNODE_VERSION,
                   sqlite3_libversion(), sodium_version_string(), zlibVersion(), dns_library_version());
            return EX_OK;
        } else {
            fprintf(stderr, "mailnode: unknown option %s\n", argv[i]);
            usage(stderr);
            return EX_USAGE;
        }
    }
    if (i == argc) {
        usage(stderr);
        return EX_USAGE;
    }
    for (size_t k = 0; k < MN_NELEM(cli_commands); k++) {
        if (strcmp(argv[i], cli_commands[k].name))
            continue;
        if ((rc = load_conf(confpath))) {
            /* A broken configuration must not hide a command's usage. */
            int help = 0;
            for (int k2 = i + 1; k2 < argc; k2++)
                help |= !strcmp(argv[k2], "--help") || !strcmp(argv[k2], "-h");
            if (!help)
                goto out;
            conf_free(conf);
            if (conf_load(NULL, conf, (char[256]){0}, 256))
                goto out;
        }
        rc = cli_commands[k].run(argc - i, argv + i);
        goto out;
    }
    fprintf(stderr, "mailnode: unknown command '%s' (see mailnode --help)\n", argv[i]);
    return EX_USAGE;
out:
    if (conf) {
        conf_free(conf);
        free(conf);
        conf = NULL;
    }
    return rc;
}

#ifndef MAILNODE_TEST
int main(int argc, char **argv)
{
    return mailnode_main(argc, argv);
}
#endif
