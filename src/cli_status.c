/*
 * cli_status.c: `mailnode status`, what an operator looks at first: is the
 * daemon running, what waits where and why.
 *
 * The daemon is seen through its lock file (cli_db.c), which it holds
 * while it runs and in which it notes its pid, start time, version and
 * listeners; the rest comes from the database.  `--json` prints the same
 * facts for scripts and monitoring.
 */
#include "internal.h"

#include <string.h>

struct status_daemon {
    int running;                        /* 1, 0, or -1 unknown */
    long pid;
    int64_t started;
    char version[32];
    char listen[LISTEN_N][256];         /* "kind addr:port" lines, as noted */
    int nlisten;
};

static void status_read_daemon(struct status_daemon *sd)
{
    char note[4096], *save = NULL;

    memset(sd, 0, sizeof *sd);
    sd->running = cli_db_daemon(note, sizeof note);
    for (char *l = strtok_r(note, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(l, "pid ", 4))
            sd->pid = atol(l + 4);
        else if (!strncmp(l, "started ", 8))
            sd->started = atoll(l + 8);
        else if (!strncmp(l, "version ", 8))
            util_strlcpy(sd->version, l + 8, sizeof sd->version);
        else if (!strncmp(l, "listen ", 7) && sd->nlisten < LISTEN_N)
            util_strlcpy(sd->listen[sd->nlisten++], l + 7, sizeof sd->listen[0]);
    }
}

static void status_span(int64_t secs, char *out, size_t n)
{
    if (secs < 0)
        secs = 0;
    if (secs >= 86400)
        snprintf(out, n, "%lldd %lldh", (long long)(secs / 86400), (long long)(secs % 86400 / 3600));
    else if (secs >= 3600)
        snprintf(out, n, "%lldh %lldm", (long long)(secs / 3600), (long long)(secs % 3600 / 60));
    else if (secs >= 60)
        snprintf(out, n, "%lldm %llds", (long long)(secs / 60), (long long)(secs % 60));
    else
        snprintf(out, n, "%llds", (long long)secs);
}

/* ------------------------------------------------------------------ text */

static const char *status_dest_name(const struct store_dest *d, char *buf, size_t n)
{
    if (!strcmp(d->name, "[relayhost]"))
        snprintf(buf, n, "[relayhost] %s", conf->relayhost);
    else
        util_strlcpy(buf, d->name, n);
    return buf;
}

static int status_text_dest(void *arg, const struct store_dest *d)
{
    char name[SMTP_DOMAIN_MAX + 32], next[64] = "now", ok[64] = "never", when[64] = "";
    int64_t now = util_now();
    MN_UNUSED(arg);

    if (d->next_try > now)
        util_date(d->next_try, next, sizeof next);
    if (d->last_ok)
        util_date(d->last_ok, ok, sizeof ok);
    printf("  %s\n", status_dest_name(d, name, sizeof name));
    printf("    %s, backlog %lld recipient%s, next try %s, last success %s\n",
           d->failures > 0 ? "down" : "up", (long long)d->backlog, d->backlog == 1 ? "" : "s",
           d->backlog || d->failures ? next : "-", ok);
    if (d->last_error[0]) {
        if (d->last_try)
            util_date(d->last_try, when, sizeof when);
        printf("    last error%s%s: %s\n", when[0] ? " at " : "", when, d->last_error);
    }
    return 0;
}

static int status_text_held(void *arg, const char *domain, int64_t rcpts, int64_t msgs)
{
    (*(int *)arg)++;
    printf("  %-30s %lld message%s, %lld recipient%s\n", domain, (long long)msgs, msgs == 1 ? "" : "s",
           (long long)rcpts, rcpts == 1 ? "" : "s");
    return 0;
}

static void status_text_upstream(void)
{
    char text[2048], date[64];
    int64_t when;

    if (!conf->upstream[0])
        return;
    printf("upstream      %s (%s) for %zu domain%s\n", conf->upstream, conf->upstream_mode,
           conf->n_upstream_domains, conf->n_upstream_domains == 1 ? "" : "s");
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

/* One line per mailbox: messages, octets, and the quota in force. */
static int status_text_user(void *arg, const struct store_user *u)
{
    char used[32], lim[32];
    int64_t limit = quota_limit(u->quota);
    MN_UNUSED(arg);

    util_fmt_size(u->bytes, used, sizeof used);
    printf("  %-20s %lld message%s, %s", u->name, (long long)u->msgs, u->msgs == 1 ? "" : "s", used);
    if (limit) {
        util_fmt_size(limit, lim, sizeof lim);
        printf(" of %s (%lld%%)%s", lim, (long long)(u->bytes * 100 / limit), u->bytes >= limit ? ", FULL" : "");
    }
    printf("\n");
    return 0;
}

static void status_text(const struct status_daemon *sd, const struct store_status *st, int64_t on_hold)
{
    char span[64];
    int nheld = 0;

    if (sd->running == 1) {
        status_span(util_now() - sd->started, span, sizeof span);
        printf("daemon        running, pid %ld, up %s, mailnode %s\n", sd->pid, span,
               sd->version[0] ? sd->version : "?");
        for (int i = 0; i < sd->nlisten; i++)
            printf("%s %s\n", i ? "             " : "listening    ", sd->listen[i]);
    } else {
        printf("daemon        %s\n", sd->running ? "unknown (cannot read the lock file)" : "not running");
    }
    printf("database      %s\n", conf->database);
    printf("queued        %lld message%s, %lld recipient%s (%lld held for on-demand relay, "
           "%lld message%s stopped by queue hold)\n",
           (long long)st->queued_msgs, st->queued_msgs == 1 ? "" : "s", (long long)st->queued_rcpts,
           st->queued_rcpts == 1 ? "" : "s", (long long)st->held_rcpts, (long long)on_hold,
           on_hold == 1 ? "" : "s");
    printf("mailboxes     %lld message%s for %lld user%s\n", (long long)st->mbox_msgs,
           st->mbox_msgs == 1 ? "" : "s", (long long)st->users, st->users == 1 ? "" : "s");
    store_user_list(status_text_user, NULL);
    printf("destinations\n");
    store_ops_dests(conf->relayhost[0] != 0, status_text_dest, NULL);
    printf("held for on-demand relay\n");
    store_ops_held(status_text_held, &nheld);
    if (!nheld)
        printf("  nothing\n");
    status_text_upstream();
}

/* ------------------------------------------------------------------ json */

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void json_time(int64_t t)
{
    if (t > 0)
        printf("%lld", (long long)t);
    else
        printf("null");
}

static int status_json_dest(void *arg, const struct store_dest *d)
{
    int *first = arg;
    char name[SMTP_DOMAIN_MAX + 32];

    printf("%s{\"name\":", *first ? "" : ",");
    *first = 0;
    json_str(status_dest_name(d, name, sizeof name));
    printf(",\"relayhost\":%s,\"state\":\"%s\",\"backlog\":%lld,\"failures\":%lld,\"next_try\":",
           strcmp(d->name, "[relayhost]") ? "false" : "true", d->failures > 0 ? "down" : "up",
           (long long)d->backlog, (long long)d->failures);
    json_time(d->next_try);
    printf(",\"last_ok\":");
    json_time(d->last_ok);
    printf(",\"last_error\":");
    if (d->last_error[0]) {
        json_str(d->last_error);
        printf(",\"last_error_at\":");
        json_time(d->last_try);
    } else {
        printf("null,\"last_error_at\":null");
    }
    printf("}");
    return 0;
}

static int status_json_held(void *arg, const char *domain, int64_t rcpts, int64_t msgs)
{
    int *first = arg;
    printf("%s{\"domain\":", *first ? "" : ",");
    *first = 0;
    json_str(domain);
    printf(",\"messages\":%lld,\"recipients\":%lld}", (long long)msgs, (long long)rcpts);
    return 0;
}

static void status_json_meta(const char *key, const char *name)
{
    char text[2048];
    int64_t when;

    printf(",\"%s\":", name);
    if (store_meta_get(key, text, sizeof text, &when)) {
        printf("null");
        return;
    }
    printf("{\"at\":%lld,\"summary\":", (long long)when);
    json_str(text);
    printf("}");
}

static int status_json_user(void *arg, const struct store_user *u)
{
    int64_t limit = quota_limit(u->quota);

    /* user names are [a-z0-9._-]: nothing to escape */
    printf("%s{\"name\":\"%s\",\"messages\":%lld,\"bytes\":%lld,\"quota\":%lld,\"full\":%s}",
           (*(int *)arg)++ ? "," : "", u->name, (long long)u->msgs, (long long)u->bytes, (long long)limit,
           limit && u->bytes >= limit ? "true" : "false");
    return 0;
}

static void status_json(const struct status_daemon *sd, const struct store_status *st, int64_t on_hold)
{
    int first = 1;

    printf("{\"daemon\":{\"running\":%s", sd->running == 1 ? "true" : sd->running ? "null" : "false");
    if (sd->running == 1) {
        printf(",\"pid\":%ld,\"started\":%lld,\"uptime\":%lld,\"version\":", sd->pid,
               (long long)sd->started, (long long)(util_now() - sd->started));
        json_str(sd->version);
        printf(",\"listen\":[");
        for (int i = 0; i < sd->nlisten; i++) {
            printf("%s", i ? "," : "");
            json_str(sd->listen[i]);
        }
        printf("]");
    }
    printf("},\"database\":");
    json_str(conf->database);
    printf(",\"queue\":{\"messages\":%lld,\"recipients\":%lld,\"held_for_relay\":%lld,\"on_hold\":%lld}",
           (long long)st->queued_msgs, (long long)st->queued_rcpts, (long long)st->held_rcpts,
           (long long)on_hold);
    printf(",\"mailboxes\":{\"messages\":%lld,\"users\":%lld,\"quota_default\":%lld,\"by_user\":[",
           (long long)st->mbox_msgs, (long long)st->users, (long long)quota_limit(-1));
    int n = 0;
    store_user_list(status_json_user, &n);
    printf("]}");
    printf(",\"destinations\":[");
    store_ops_dests(conf->relayhost[0] != 0, status_json_dest, &first);
    printf("],\"held\":[");
    first = 1;
    store_ops_held(status_json_held, &first);
    printf("],\"upstream\":");
    if (conf->upstream[0]) {
        printf("{\"host\":");
        json_str(conf->upstream);
        printf(",\"mode\":");
        json_str(conf->upstream_mode);
        status_json_meta("upstream.last_ok", "last_ok");
        status_json_meta("upstream.last_fail", "last_fail");
        printf("}");
    } else {
        printf("null");
    }
    printf("}\n");
}

int cli_status(int argc, char **argv)
{
    struct status_daemon sd;
    struct store_status st;
    int json = argc == 2 && !strcmp(argv[1], "--json");
    int64_t on_hold;
    int rc;

    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: mailnode status [--json]\n"
               "Shows whether the daemon runs (pid, uptime, version, listeners), the queue,\n"
               "the mailboxes, every destination with its backlog, state and last error,\n"
               "the mail held for on-demand relay and the last upstream exchanges.\n"
               "  --json   the same as one JSON object, for scripts\n");
        return EX_OK;
    }
    if (argc > 2 || (argc == 2 && !json)) {
        fprintf(stderr, "usage: mailnode status [--json]\n");
        return EX_USAGE;
    }
    status_read_daemon(&sd);
    if ((rc = cli_open_store_ro()))
        return rc;
    if (store_status(&st) || (on_hold = store_ops_on_hold()) < 0) {
        store_close();
        return EX_SOFTWARE;
    }
    if (json)
        status_json(&sd, &st, on_hold);
    else
        status_text(&sd, &st, on_hold);
    store_close();
    return EX_OK;
}
