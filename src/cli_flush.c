/*
 * cli_flush.c: `mailnode flush [--wait] [--timeout DURATION] [DOMAIN]`.
 *
 * Asks the running daemon, over its control socket (ctl.c), to reset the
 * retry timers and deliver now: what an interface hook (ppp ip-up,
 * if-up.d, a cron job after the modem dials) runs when the link is up.
 * With --wait the command stays until the run is over and prints what
 * happened to each destination, so a script can hang up the link after.
 */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <sys/un.h>

#define FLUSH_DEFAULT_TIMEOUT  (10 * 60)   /* seconds, --wait */
#define FLUSH_REPLY_TIMEOUT    30          /* seconds, without --wait */
#define FLUSH_LINE_MAX         4096

static void flush_usage(FILE *f)
{
    fprintf(f, "usage: mailnode flush [--wait] [--timeout DURATION] [DOMAIN]\n"
               "Asks the running daemon to deliver queued mail now: the retry timers of\n"
               "every destination (or only DOMAIN's) are reset and a delivery run starts.\n"
               "  --wait              stay until the run is over and print its outcome\n"
               "  --timeout DURATION  with --wait: give up waiting after this long\n"
               "                      (default 10m; the run goes on in the daemon)\n"
               "Exit status: 0 done; 75 some destination did not take all its mail;\n"
               "69 the daemon is not running, or the wait timed out.\n");
}

/* Connects to the control socket; returns the descriptor, or a negative
 * sysexits code after printing why. */
static int flush_connect(const char *path)
{
    int fd = ctl_connect();

    if (fd >= 0)
        return fd;
    switch (errno) {
    case ENAMETOOLONG:
        fprintf(stderr, "mailnode: control socket path %s is too long; set `control` to a shorter path\n",
                path);
        return -EX_CONFIG;
    case ENOENT:
    case ECONNREFUSED:
        fprintf(stderr, "mailnode: the daemon is not running (no control socket at %s); "
                        "queued mail goes out when it starts\n", path);
        return -EX_UNAVAILABLE;
    case EACCES:
    case EPERM:
        fprintf(stderr, "mailnode: permission denied on the control socket %s: run this as root "
                        "or as the user the daemon runs as\n", path);
        return -EX_NOPERM;
    default:
        fprintf(stderr, "mailnode: cannot connect to the control socket %s: %s\n", path, strerror(errno));
        return -EX_UNAVAILABLE;
    }
}

static int flush_send(int fd, const char *buf, size_t n)
{
    while (n) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one line (without the newline) into line.  1: a line; 0: the
 * daemon closed; -1: error; -2: the deadline passed. */
static int flush_read_line(int fd, char *buf, size_t *len, char *line, size_t linecap,
                           int64_t deadline)
{
    for (;;) {
        char *nl = memchr(buf, '\n', *len);
        if (nl) {
            size_t n = (size_t)(nl - buf);
            size_t keep = n < linecap - 1 ? n : linecap - 1;
            memcpy(line, buf, keep);
            line[keep] = '\0';
            memmove(buf, nl + 1, *len - n - 1);
            *len -= n + 1;
            return 1;
        }
        if (*len >= FLUSH_LINE_MAX - 1) {
            /* An overlong line: pass it on in pieces. */
            memcpy(line, buf, linecap - 1);
            line[linecap - 1] = '\0';
            memmove(buf, buf + linecap - 1, *len - (linecap - 1));
            *len -= linecap - 1;
            return 1;
        }
        int64_t left = deadline - util_now_ms();
        if (left <= 0)
            return -2;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (r < 0 && errno != EINTR)
            return -1;
        if (r <= 0)
            continue;
        ssize_t got = recv(fd, buf + *len, FLUSH_LINE_MAX - 1 - *len, 0);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -1;
        }
        if (got == 0) {
            if (*len) {
                /* The last line had no newline. */
                memcpy(line, buf, *len < linecap ? *len : linecap - 1);
                line[*len < linecap ? *len : linecap - 1] = '\0';
                *len = 0;
                return 1;
            }
            return 0;
        }
        *len += (size_t)got;
    }
}

/* "DONE <n>": returns n, or -1 if the line is not one. */
static int flush_done_line(const char *line)
{
    char *end;
    long n;

    if (strncmp(line, "DONE ", 5))
        return -1;
    errno = 0;
    n = strtol(line + 5, &end, 10);
    if (errno || end == line + 5 || *end || n < 0 || n > 1000000)
        return -1;
    return (int)n;
}

int cli_flush(int argc, char **argv)
{
    const char *domain = NULL, *timeout_arg = NULL;
    int wait = 0, fd, rc;
    int64_t timeout = FLUSH_DEFAULT_TIMEOUT;
    char req[SMTP_DOMAIN_MAX + 32], buf[FLUSH_LINE_MAX], line[FLUSH_LINE_MAX];
    size_t len = 0;
    int64_t deadline;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flush_usage(stdout);
            return EX_OK;
        } else if (!strcmp(argv[i], "--wait") || !strcmp(argv[i], "-w")) {
            wait = 1;
        } else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            timeout_arg = argv[++i];
        } else if (!strncmp(argv[i], "--timeout=", 10)) {
            timeout_arg = argv[i] + 10;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "mailnode: flush: unknown option %s\n", argv[i]);
            flush_usage(stderr);
            return EX_USAGE;
        } else if (!domain) {
            domain = argv[i];
        } else {
            fprintf(stderr, "mailnode: flush takes one domain at most\n");
            flush_usage(stderr);
            return EX_USAGE;
        }
    }
    if (timeout_arg && (util_parse_duration(timeout_arg, &timeout) || timeout <= 0)) {
        fprintf(stderr, "mailnode: flush: --timeout '%s' is not a duration like 30s, 10m or 1h\n",
                timeout_arg);
        return EX_USAGE;
    }
    if (domain && !addr_domain_ok(domain, strlen(domain), 1)) {
        fprintf(stderr, "mailnode: flush: '%s' is not a domain name\n", domain);
        return EX_USAGE;
    }

    fd = flush_connect(conf->control);
    if (fd < 0)
        return -fd;
    snprintf(req, sizeof req, "%s%s%s\n", wait ? "FLUSH-WAIT" : "FLUSH", domain ? " " : "",
             domain ? domain : "");
    /* A failed send is not the end: a daemon that refuses us answers and
     * closes at once, and its answer is still there to read. */
    if (flush_send(fd, req, strlen(req)) && errno != EPIPE && errno != ECONNRESET) {
        fprintf(stderr, "mailnode: cannot talk to the daemon on %s: %s\n", conf->control, strerror(errno));
        close(fd);
        return EX_UNAVAILABLE;
    }
    deadline = util_now_ms() + (wait ? timeout : FLUSH_REPLY_TIMEOUT) * 1000;
    for (;;) {
        int r = flush_read_line(fd, buf, &len, line, sizeof line, deadline);
        if (r == -2) {
            if (wait)
                fprintf(stderr, "mailnode: the delivery run is still going after %s; it goes on in the "
                                "daemon (see `mailnode status`)\n", timeout_arg ? timeout_arg : "10m");
            else
                fprintf(stderr, "mailnode: the daemon did not answer within %d seconds\n",
                        FLUSH_REPLY_TIMEOUT);
            rc = EX_UNAVAILABLE;
            break;
        }
        if (r <= 0) {
            fprintf(stderr, "mailnode: the daemon closed the control connection without an answer%s%s\n",
                    r < 0 ? ": " : " (is it stopping?)", r < 0 ? strerror(errno) : "");
            rc = EX_UNAVAILABLE;
            break;
        }
        if (!strncmp(line, "ERR", 3) && (line[3] == ' ' || !line[3])) {
            const char *why = line[3] ? line + 4 : "refused";
            fprintf(stderr, "mailnode: the daemon refused the flush: %s\n", why);
            rc = !strcmp(why, "permission denied") ? EX_NOPERM : EX_SOFTWARE;
            break;
        }
        if (!wait) {
            if (!strcmp(line, "OK")) {
                printf("flush requested\n");
                rc = EX_OK;
            } else {
                fprintf(stderr, "mailnode: unexpected answer from the daemon: %s\n", line);
                rc = EX_PROTOCOL;
            }
            break;
        }
        int failed = flush_done_line(line);
        if (failed >= 0) {
            rc = failed ? EX_TEMPFAIL : EX_OK;
            break;
        }
        printf("%s\n", line);
        fflush(stdout);
    }
    close(fd);
    return rc;
}
