/*
 * log.c: one line per event, to stderr (with a timestamp) or to syslog.
 */
#include "internal.h"

#include <pthread.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

static int log_syslog;
static int log_level = LOG_INFO;
static const char *log_ident = "mailnode";
/* Every stderr line names the process; getpid is a system call each time,
 * so the number is kept, and forgotten in a child after fork. */
static pid_t log_pid;

static void log_forget_pid(void)
{
    log_pid = 0;
}

#ifndef _PATH_LOG
#define _PATH_LOG "/dev/log"
#endif

/* 1 if a syslog daemon listens on /dev/log (datagram or stream). */
static int log_syslog_listens(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int types[] = { SOCK_DGRAM, SOCK_STREAM };

    util_strlcpy(sa.sun_path, _PATH_LOG, sizeof sa.sun_path);
    for (size_t i = 0; i < MN_NELEM(types); i++) {
        int fd = socket(AF_UNIX, types[i] | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        close(fd);
        if (ok)
            return 1;
    }
    return 0;
}

void log_init(const char *ident, int use_syslog)
{
    log_ident = ident;
    log_syslog = use_syslog;
    /* syslog(3) drops lines silently when no daemon listens (a container,
     * a minimal image): standard error is better than nothing. */
    if (use_syslog && !log_syslog_listens()) {
        log_syslog = 0;
        log_warn("log = syslog, but no syslog daemon listens on %s: logging to standard error", _PATH_LOG);
    }
    if (log_syslog)
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
    if (!log_pid) {
        static int hooked;
        if (!hooked)
            hooked = pthread_atfork(NULL, NULL, log_forget_pid) == 0;
        if (hooked)
            log_pid = getpid();
    }
    fprintf(stderr, "%s.%03ld %s[%ld] %s: %s\n", stamp, ts.tv_nsec / 1000000, log_ident,
            (long)(log_pid ? log_pid : getpid()), names[level & 7], line);
}
