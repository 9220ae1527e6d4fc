/*
 * cli_bs.c: `mailnode sendmail -bs`, an SMTP session on standard input
 * and output, as sendmail(8) and Postfix offer it to programs that speak
 * SMTP to a command instead of a port (swaks --pipe, MUAs and git
 * send-email set up with a pipe).
 *
 * The session is the SMTP server's own (smtpd.c) with the calling user as
 * the authenticated submitter: the same commands and checks, the same
 * store path, and 250 only once the message is committed durably (the
 * group commit at the end of the loop turn, as in the daemon).  Like
 * `mailnode sendmail`, it writes the database itself, so it works with
 * the daemon stopped, and tells a running daemon about each message.
 *
 * smtpd speaks to a socket in the event loop.  Standard input and output
 * may be pipes, a terminal or plain files, and epoll cannot watch files,
 * so a child process copies between them and the other end of a socket
 * pair (bs_pump) with poll(2), which takes any descriptor:
 *
 *     stdin  --> bs_pump --> socket pair --> smtpd (this process)
 *     stdout <--         <--             <--
 *
 * End of input (the client closed its side) reaches smtpd as end of
 * input; the end of the session (QUIT, or smtpd closing) reaches the
 * child as end of input and ends it once stdout has everything.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define BS_BUF     (16 * 1024)          /* each direction of the copy */
#define BS_TICK_MS 200                  /* a turn at least this often: the store closes its
                                           transaction within half a second */

/* ------------------------------------------------------------ the copy */

struct bs_dir {
    unsigned char buf[BS_BUF];
    size_t len;
    int open;                           /* the source may still give more */
};

static void bs_take(struct bs_dir *d, int fd)
{
    ssize_t r = read(fd, d->buf + d->len, sizeof d->buf - d->len);
    if (r > 0)
        d->len += (size_t)r;
    else if (r == 0 || (errno != EINTR && errno != EAGAIN))
        d->open = 0;
}

/* Writes what it can; -1 when the reader is gone. */
static int bs_give(struct bs_dir *d, int fd, size_t max)
{
    ssize_t w = write(fd, d->buf, d->len < max ? d->len : max);
    if (w < 0)
        return errno == EINTR || errno == EAGAIN ? 0 : -1;
    memmove(d->buf, d->buf + w, d->len - (size_t)w);
    d->len -= (size_t)w;
    return 0;
}

/* The child: stdin to sock, sock to stdout, until the server is done and
 * stdout has it all, or the client stops reading.  A write to stdout after
 * POLLOUT is at most PIPE_BUF, which a pipe takes without blocking. */
static int bs_pump(int sock)
{
    static struct bs_dir up, down;      /* client -> server, server -> client */
    int shut = 0;

    signal(SIGPIPE, SIG_IGN);
    up.open = down.open = 1;
    for (;;) {
        struct pollfd p[3];
        int n = 0, iin = -1, isock = -1, iout = -1;
        short ev = 0;

        if (!up.open && !up.len && !shut) {
            shutdown(sock, SHUT_WR);    /* the client is done: so is smtpd's input */
            shut = 1;
        }
        if (!down.open && !down.len)
            return 0;
        if (up.open && up.len < sizeof up.buf) {
            p[n] = (struct pollfd){ .fd = STDIN_FILENO, .events = POLLIN };
            iin = n++;
        }
        if (down.open && down.len < sizeof down.buf)
            ev |= POLLIN;
        if (up.len)
            ev |= POLLOUT;
        if (ev) {
            p[n] = (struct pollfd){ .fd = sock, .events = ev };
            isock = n++;
        }
        if (down.len) {
            p[n] = (struct pollfd){ .fd = STDOUT_FILENO, .events = POLLOUT };
            iout = n++;
        }
        if (poll(p, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (iin >= 0 && p[iin].revents)
            bs_take(&up, STDIN_FILENO);
        if (isock >= 0 && (p[isock].revents & (POLLIN | POLLHUP | POLLERR)) && (ev & POLLIN))
            bs_take(&down, sock);
        if (isock >= 0 && (p[isock].revents & (POLLOUT | POLLERR)) && up.len && bs_give(&up, sock, up.len)) {
            up.len = 0;                 /* smtpd is gone: nothing more goes up */
            up.open = 0;
        }
        if (iout >= 0 && p[iout].revents && bs_give(&down, STDOUT_FILENO, PIPE_BUF))
            return 0;                   /* the client stopped reading: end the session */
    }
}

/* ---------------------------------------------------------- the server */

static struct timer bs_tick = { .idx = -1 };

static void bs_tick_fn(void *arg)
{
    MN_UNUSED(arg);                     /* the turn hook that follows commits */
    timer_set(&bs_tick, BS_TICK_MS, bs_tick_fn, NULL);
}

static void bs_done(void *arg, int accepted, const char *error)
{
    MN_UNUSED(arg);
    MN_UNUSED(accepted);
    MN_UNUSED(error);
    loop_stop();
}

/* The caller's login name, who submits the mail. */
static void bs_user(char *out, size_t n)
{
    struct passwd *pw = util_getpwuid(getuid());

    if (pw && pw->pw_name && *pw->pw_name && strlen(pw->pw_name) < n)
        util_strlcpy(out, pw->pw_name, n);
    else
        snprintf(out, n, "uid%lu", (unsigned long)getuid());
}

/* Stdin and stdout belong to the copy: this process must not hold them
 * (the client sees the end of output when the child ends). */
static void bs_release_stdio(void)
{
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return;
    dup2(fd, STDIN_FILENO);
    dup2(fd, STDOUT_FILENO);
    if (fd > STDOUT_FILENO)
        close(fd);
}

/* No session: the client reads why (RFC 5321 3.1: a 421 greeting may
 * refuse service), and the copy ends when sock closes. */
static int bs_refuse(int sock, int rc)
{
    static const char line[] = "421 4.3.0 mailnode: cannot serve now (see the error output)\r\n";
    if (write(sock, line, sizeof line - 1) < 0)
        log_debug("sendmail -bs: the client is gone");
    close(sock);
    return rc;
}

static int bs_serve(int sock)
{
    char user[USER_MAX + 1];
    struct conn *c;
    int rc;

    if ((rc = cli_open_store()))
        return bs_refuse(sock, rc);
    if (loop_init()) {
        fprintf(stderr, "sendmail: epoll: %s\n", strerror(errno));
        store_close();
        return bs_refuse(sock, EX_OSERR);
    }
    loop_set_turn_hook(store_turn_end);
    bs_user(user, sizeof user);
    c = conn_new(sock, LISTEN_SMTP, NULL, NULL, 16 * 1024, 16 * 1024);
    if (!c) {
        fprintf(stderr, "sendmail: cannot start the session: %s\n", strerror(errno));
        loop_free();
        store_close();
        return bs_refuse(sock, EX_OSERR);
    }
    util_strlcpy(c->peer_ip, "local", sizeof c->peer_ip);
    c->peer_loopback = 1;
    if (smtpd_local(c, user, bs_done, NULL)) {
        fprintf(stderr, "sendmail: cannot start the session\n");
        rc = EX_OSERR;
        goto out;
    }
    timer_set(&bs_tick, BS_TICK_MS, bs_tick_fn, NULL);
    if (loop_run())
        rc = EX_SOFTWARE;
    timer_cancel(&bs_tick);
    /* A message whose data ended as the client left is kept if its
     * commit works (the daemon does the same): at least once. */
    store_turn_end();
    store_commit();
out:
    loop_free();
    store_close();
    return rc;
}

int cli_sendmail_bs(void)
{
    int sv[2], rc, status = 0;
    pid_t pid;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
        fprintf(stderr, "sendmail: socketpair: %s\n", strerror(errno));
        return EX_OSERR;
    }
    fflush(stdout);
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "sendmail: fork: %s\n", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return EX_OSERR;
    }
    if (pid == 0) {
        close(sv[0]);
        fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK);
        _exit(bs_pump(sv[1]));
    }
    close(sv[1]);
    bs_release_stdio();
    signal(SIGPIPE, SIG_IGN);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    rc = bs_serve(sv[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return rc;
}
