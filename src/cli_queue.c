/*
 * cli_queue.c: `mailnode queue`, the queue as the operator sees it and
 * handles it.  For each recipient: its state, how many attempts, the last
 * error and when the next try will be, which is the later of the
 * recipient's own time and its destination's backoff (the relayhost's
 * when there is one): the scheduler waits for both.
 *
 * The daemon reads the queue from the database at every scan, so a change
 * made here is what the running daemon does next.
 */
#include "internal.h"

#include <string.h>

#define QUEUE_USAGE \
    "usage: mailnode queue [list [--domain D] | count | show ID... | delete ID... |\n" \
    "                       delete --domain D | delete --all --yes | hold ID... | release ID...]\n"

static void queue_rcpt_line(const struct store_ops_msg *m, const struct store_ops_rcpt *r)
{
    static const char *const states[] = { "queued", "delivered", "failed" };
    char next[64] = "", when[64] = "";
    int64_t now = util_now();

    printf("    %s (", r->addr);
    if (r->state == 0 && r->kind == ROUTE_HOLD) {
        printf("held)\n");                  /* for on-demand relay: ETRN/ATRN releases it */
        return;
    }
    if (r->state == 0 && m->hold)
        printf("held by queue hold, not delivered or expired until released");
    else if (r->state == 0 && r->kind == ROUTE_REMOTE) {
        if (r->next_try > now)
            util_date(r->next_try, next, sizeof next);
        printf("queued, %d attempt%s", r->attempts, r->attempts == 1 ? "" : "s");
        if (r->dest_failures)
            printf(", %s not reached in %d tr%s", conf->relayhost[0] ? "relayhost" : "destination",
                   r->dest_failures, r->dest_failures == 1 ? "y" : "ies");
        printf(", next try %s", next[0] ? next : "now (due)");
    } else {
        printf("%s", states[r->state % 3]);
        if (r->attempts)
            printf(", %d attempt%s", r->attempts, r->attempts == 1 ? "" : "s");
    }
    if (r->last_error[0]) {
        if (r->updated)
            util_date(r->updated, when, sizeof when);
        printf(", last error%s%s: %s", when[0] ? " at " : "", when, r->last_error);
    }
    printf(")\n");
}

struct queue_print {
    const struct store_ops_msg *m;
};

static int queue_print_rcpt(void *arg, const struct store_ops_rcpt *r)
{
    queue_rcpt_line(((struct queue_print *)arg)->m, r);
    return 0;
}

static int queue_print_msg(void *arg, const struct store_ops_msg *m)
{
    struct queue_print p = { m };
    char date[64];
    MN_UNUSED(arg);

    util_date(m->received, date, sizeof date);
    printf("%s  %8lld  %s  <%s>%s\n", m->qid, (long long)m->size, date, m->sender,
           m->hold ? "  ON HOLD" : "");
    store_ops_rcpts(m->id, conf->relayhost[0] != 0, queue_print_rcpt, &p);
    return 0;
}

static int queue_not_found(const char *qid)
{
    fprintf(stderr, "mailnode: no message %s in the queue (see `mailnode queue list`)\n", qid);
    return EX_DATAERR;
}

static int queue_show(const char *qid)
{
    struct store_ops_msg m;
    struct store_reader r;
    char buf[8192];
    ssize_t n;
    int rc = store_ops_msg_get(qid, &m);

    if (rc == STORE_NOTFOUND)
        return queue_not_found(qid);
    if (rc)
        return EX_SOFTWARE;
    queue_print_msg(NULL, &m);
    printf("\n");
    if (store_reader_open(&r, m.body_id))
        return EX_SOFTWARE;
    while ((n = store_reader_read(&r, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    store_reader_close(&r);
    return n < 0 ? EX_SOFTWARE : EX_OK;
}

/* delete, hold or release one message, committed on its own: a bad id in
 * a list does not undo the others. */
static int queue_change(const char *sub, const char *qid)
{
    int del = !strcmp(sub, "delete"), hold = !strcmp(sub, "hold");
    int rc = del ? store_queue_delete(qid) : store_queue_hold(qid, hold);

    if (!rc)
        rc = store_commit();
    else
        store_rollback();
    if (rc == STORE_NOTFOUND)
        return queue_not_found(qid);
    if (rc) {
        fprintf(stderr, "mailnode: could not %s %s: database error\n", sub, qid);
        return EX_TEMPFAIL;
    }
    printf("%s %s\n", qid, del ? "deleted" : hold ? "held" : "released");
    return EX_OK;
}

static int queue_collect(void *arg, const struct store_ops_msg *m)
{
    FILE *f = arg;
    fprintf(f, "%s\n", m->qid);
    return 0;
}

/* delete --all: the ids first, then one delete each (the listing
 * statement must not run while its rows go). */
static int queue_delete_all(void)
{
    char *ids = NULL, line[QID_LEN + 8];
    size_t len = 0;
    int rc = EX_OK, n = 0;
    FILE *f = open_memstream(&ids, &len);

    if (!f)
        return EX_OSERR;
    if (store_ops_msgs(NULL, queue_collect, f)) {
        fclose(f);
        free(ids);
        return EX_SOFTWARE;
    }
    fclose(f);
    f = fmemopen(ids, len ? len : 1, "r");
    while (f && len && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        int r = queue_change("delete", line);
        if (r)
            rc = r;
        else
            n++;
    }
    if (f)
        fclose(f);
    free(ids);
    printf("%d message%s deleted\n", n, n == 1 ? "" : "s");
    return rc;
}

static int queue_delete_domain(const char *domain)
{
    char lower[SMTP_DOMAIN_MAX + 1];
    int64_t n;
    int rc;

    util_strlcpy(lower, domain, sizeof lower);
    util_lower(lower);
    rc = store_ops_delete_domain(lower, &n);
    if (!rc)
        rc = store_commit();
    else
        store_rollback();
    if (rc) {
        fprintf(stderr, "mailnode: could not delete the mail for %s: database error\n", lower);
        return EX_TEMPFAIL;
    }
    printf("%lld recipient%s for %s deleted\n", (long long)n, n == 1 ? "" : "s", lower);
    return EX_OK;
}

static int queue_help(void)
{
    printf(QUEUE_USAGE
           "  list [--domain D]   messages waiting, each recipient with its state, attempts,\n"
           "                      next try and last error (only those with mail for D)\n"
           "  count               one number: messages not yet delivered\n"
           "  show ID...          the envelope, recipients and text of messages\n"
           "  delete ID...        remove messages from the queue without a bounce\n"
           "  delete --domain D   remove every queued recipient for domain D\n"
           "  delete --all --yes  empty the queue\n"
           "  hold ID...          keep messages from delivery and expiry until released\n"
           "  release ID...       make held messages due for delivery at once\n");
    return EX_OK;
}

static int queue_usage(void)
{
    fputs(QUEUE_USAGE, stderr);
    return EX_USAGE;
}

/* Which form of the command this is; 0 after a usage error. */
static int queue_parse(int argc, char **argv, const char **domain, int *all)
{
    const char *sub = argc > 1 ? argv[1] : "list";
    int with_ids = !strcmp(sub, "show") || !strcmp(sub, "delete") || !strcmp(sub, "hold") ||
                   !strcmp(sub, "release");

    *domain = NULL;
    *all = 0;
    if (argc >= 4 && !strcmp(argv[2], "--domain") && (!strcmp(sub, "list") || !strcmp(sub, "delete"))) {
        *domain = argv[3];
        return argc == 4;
    }
    if (!strcmp(sub, "delete") && argc >= 3 && !strcmp(argv[2], "--all")) {
        *all = argc == 4 && !strcmp(argv[3], "--yes") ? 1 : -1;
        return argc <= 4;
    }
    if (with_ids)
        return argc >= 3;
    return (!strcmp(sub, "list") || !strcmp(sub, "count")) && argc <= 2;
}

int cli_queue(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "list", *domain;
    int rc, all;

    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return queue_help();
    if (!queue_parse(argc, argv, &domain, &all)) {
        if (argc > 1 && strcmp(sub, "list") && strcmp(sub, "count") && strcmp(sub, "show") &&
            strcmp(sub, "delete") && strcmp(sub, "hold") && strcmp(sub, "release")) {
            fprintf(stderr, "mailnode: unknown queue command '%s' (try `mailnode queue --help`)\n", sub);
            return EX_USAGE;
        }
        return queue_usage();
    }
    if (all < 0) {
        fprintf(stderr, "mailnode: queue delete --all removes every queued message without a bounce;"
                        " add --yes to do it\n");
        return EX_USAGE;
    }
    if ((rc = cli_open_store_ro()))
        return rc;
    if (!strcmp(sub, "list")) {
        rc = store_ops_msgs(domain, queue_print_msg, NULL) ? EX_SOFTWARE : EX_OK;
    } else if (!strcmp(sub, "count")) {
        int64_t n = store_queue_count();
        rc = n < 0 ? EX_SOFTWARE : EX_OK;
        if (n >= 0)
            printf("%lld\n", (long long)n);
    } else if (domain) {
        rc = queue_delete_domain(domain);
    } else if (all) {
        rc = queue_delete_all();
    } else {
        rc = EX_OK;
        for (int i = 2; i < argc; i++) {
            int r = !strcmp(sub, "show") ? queue_show(argv[i]) : queue_change(sub, argv[i]);
            if (r)
                rc = r;
            if (!strcmp(sub, "show") && i + 1 < argc)
                printf("\n");
        }
    }
    store_close();
    return rc;
}
