/*
 * slowfsync.so - LD_PRELOAD shim that makes fsync() and fdatasync() slow.
 *
 * Stand-in for a storage device with slow cache flushes when device-mapper
 * (dm-delay) is not available. Every fsync/fdatasync first sleeps for
 * SLOWFSYNC_US microseconds (default 8000) and then performs the real call,
 * so the data is still made durable. The sleep blocks only the calling
 * thread, as waiting for a real flush would; it costs no CPU.
 *
 * If SLOWFSYNC_COUNT names a file, one byte is appended to it per call, so
 * the size of that file is the number of flushes requested (all processes).
 *
 * Does not work for static binaries or set-uid/set-gid programs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void slow_down(void)
{
    const char *s = getenv("SLOWFSYNC_US");
    const char *cf = getenv("SLOWFSYNC_COUNT");
    long us = s ? atol(s) : 8000;
    struct timespec ts;
    int saved = errno;

    if (cf && *cf) {
        int fd = open(cf, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
        if (fd >= 0) {
            (void)!write(fd, "f", 1);
            close(fd);
        }
    }
    if (us > 0) {
        ts.tv_sec = us / 1000000;
        ts.tv_nsec = (us % 1000000) * 1000L;
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
            ;
    }
    errno = saved;
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow_down();
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow_down();
    return real(fd);
}
