/*
 * log.c: one line per event, to stderr (with a timestamp) or to syslog.
 */
#include "internal.h"

#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_syslog;
static int log_level = LOG_INFO;
static const char *log_ident = "mailnode";

void log_init(const char *ident, int use_syslog)
{
    log_ident = ident;
    log_syslog = use_syslog;
    if (use_syslog)
        openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_set_level(int level)
{
    log_level = level;
}

void log_msg(int level, const char *fmt, ...)
{
    static const char *names[] = { "emerg", "alert", "crit", "error",
                                   "warning", "notice", "info", "debug" };
    char line[1024];
    va_list ap;

    if (level > log_level)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* Text from the wire can carry control characters; a log line must
     * stay one line. */
    for (char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (log_syslog) {
        syslog(level, "%s", line);
        return;
    }
    struct timespec ts;
    struct tm tm;
    char stamp[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ld %s[%ld] %s: %s\n", stamp, ts.tv_nsec / 1000000, log_ident,
            (long)getpid(), names[level & 7], line);
}
